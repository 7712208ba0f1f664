// The training data loader: windows of seq_len + 1 tokens drawn from token
// segments (memory-mapped shards, or tokens held in memory), for one
// data-parallel rank.
//
// Windows. Each segment of n tokens is cut into floor((n - 1) / T) windows at
// stride T (T = seq_len): window k reads tokens [s + k*T, s + k*T + T], its
// inputs the first T and its targets the last T. s is the segment's shift, in
// [0, (n - 1) mod T]. Windows never straddle two segments. One pass over all
// windows of all segments is an epoch (W windows).
//
// Order. The rank's d-th draw (d = 0, 1, ...) is global draw g = d * world_size +
// rank, in epoch e = g / W at position p = g mod W.
//   sequential: window p, shift 0: the segments walked front to back.
//   random:     window perm_e(p), where perm_e is a bijection of [0, W) drawn
//               from (seed, e) (a Feistel network), and each segment's shift is
//               drawn from (seed, e, segment): every epoch visits every window
//               once, in a new order and at new offsets.
// Disjoint ranks: within an epoch the ranks take disjoint sets of positions p,
// so they read disjoint windows, i.e. no input token position is read by two
// ranks (or twice by one), and together they cover the epoch exactly once.
//
// State. A window is a pure function of (segments, T, order, seed, rank,
// world_size, d), so the loader's whole position is the draw counter d:
// LoaderState{draws, fingerprint}. The fingerprint hashes everything else that
// the stream depends on; restore() refuses a state saved under other settings.
// The trainer draws grad_accum * batch_size windows per step, so before step s
// (1-based) the state is draws = (s - 1) * grad_accum * batch_size.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace kvroute {

struct Batch {
  int B = 0, T = 0;
  std::vector<int32_t> inputs;   // [B*T]
  std::vector<int32_t> targets;  // [B*T], inputs shifted by one
};

// A read-only run of token ids, 2 or 4 bytes each (little-endian).
struct TokenSegment {
  std::string name;  // shard path, or a description ("data/kjv.txt (train split)")
  const unsigned char* bytes = nullptr;
  uint64_t count = 0;
  uint32_t width = 4;
  std::shared_ptr<const void> owner;  // keeps the mapping or the vector alive
  int32_t operator[](uint64_t i) const;
};

// Tokens held in memory, as a segment.
TokenSegment memory_segment(std::string name, std::vector<int32_t> ids);

struct TokenStore {
  std::vector<TokenSegment> segments;
  uint64_t size() const;  // tokens over all segments
  std::vector<int32_t> head(uint64_t n) const;  // the first n tokens (fewer if there are fewer), in order
};

// Entropy (nats) of the unigram distribution of the first max_tokens tokens:
// the loss of a model that ignores context.
double unigram_entropy(const TokenStore& store, int vocab_size, uint64_t max_tokens = uint64_t(1) << 28);

enum class WindowOrder { random, sequential };
// "random" | "sequential"; throws std::invalid_argument naming data.order otherwise.
WindowOrder parse_window_order(const std::string& name);

struct LoaderOptions {
  int seq_len = 128;
  uint64_t seed = 0;
  WindowOrder order = WindowOrder::random;
  int rank = 0;
  int world_size = 1;
};

struct LoaderState {
  uint64_t draws = 0;        // windows this rank has taken
  uint64_t fingerprint = 0;  // hash of the settings and segment sizes the draws refer to
  // As named int64 fields (the fingerprint's bits reinterpreted), for checkpoints.
  std::vector<std::pair<std::string, int64_t>> fields() const;
  static LoaderState from_fields(const std::vector<std::pair<std::string, int64_t>>& fields);
};

class WindowLoader {
 public:
  // Throws std::runtime_error naming the segment when one is shorter than one
  // window (seq_len + 1 tokens), or on bad rank/world_size.
  WindowLoader(TokenStore store, int vocab_size, const LoaderOptions& options);

  struct Window {
    std::size_t segment = 0;
    uint64_t start = 0;  // tokens [start, start + seq_len] of the segment
  };
  // The rank's d-th window (pure).
  Window window(uint64_t draw) const;
  // Windows draw .. draw+B-1 as a batch (pure). An id >= vocab_size throws,
  // naming the segment and position.
  Batch batch_at(uint64_t draw, int B) const;
  // The next B windows; advances the state by B.
  Batch next_batch(int B);

  LoaderState state() const { return {draws_, fingerprint_}; }
  // Continues from a saved state; throws when it was saved under other settings.
  void restore(const LoaderState& state);
  // Continues from draw d (no fingerprint check; e.g. d from the step number).
  void seek(uint64_t draws) { draws_ = draws; }

  uint64_t windows_per_epoch() const { return total_windows_; }
  uint64_t epoch() const { return (draws_ * opt_.world_size + opt_.rank) / total_windows_; }
  const TokenStore& store() const { return store_; }
  const LoaderOptions& options() const { return opt_; }

 private:
  TokenStore store_;
  int vocab_size_;
  LoaderOptions opt_;
  std::vector<uint64_t> first_window_;  // prefix sums of windows per segment (size segments + 1)
  uint64_t total_windows_ = 0;
  uint64_t fingerprint_ = 0;
  uint64_t draws_ = 0;
};

// Bijection of [0, n) keyed by `key` (a Feistel network with cycle walking).
uint64_t permute_index(uint64_t i, uint64_t n, uint64_t key);

// Validation batch i of n_batches over a fixed token sequence: B * n_batches
// evenly spaced windows, the same every call, so every evaluation sees the same tokens.
Batch val_batch(const std::vector<int32_t>& tokens, int B, int T, int i, int n_batches);

}  // namespace kvroute
