// The windowed training data loader (loader.h).
#include "kvroute/loader.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "kvroute/rng.h"
#include "kvroute/shard.h"

namespace kvroute {

int32_t TokenSegment::operator[](uint64_t i) const {
  if (width == 2) {
    uint16_t v;
    std::memcpy(&v, bytes + i * 2, 2);
    return v;
  }
  int32_t v;
  std::memcpy(&v, bytes + i * 4, 4);
  return v;
}

TokenSegment memory_segment(std::string name, std::vector<int32_t> ids) {
  auto owned = std::make_shared<std::vector<int32_t>>(std::move(ids));
  TokenSegment s;
  s.name = std::move(name);
  s.bytes = reinterpret_cast<const unsigned char*>(owned->data());
  s.count = owned->size();
  s.width = 4;
  s.owner = owned;
  return s;
}

uint64_t TokenStore::size() const {
  uint64_t n = 0;
  for (const TokenSegment& s : segments) n += s.count;
  return n;
}

std::vector<int32_t> TokenStore::head(uint64_t n) const {
  std::vector<int32_t> out;
  out.reserve(static_cast<std::size_t>(std::min(n, size())));
  for (const TokenSegment& s : segments)
    for (uint64_t i = 0; i < s.count && out.size() < n; ++i) out.push_back(s[i]);
  return out;
}

double unigram_entropy(const TokenStore& store, int vocab_size, uint64_t max_tokens) {
  std::vector<uint64_t> counts(static_cast<std::size_t>(vocab_size), 0);
  uint64_t total = 0;
  for (const TokenSegment& s : store.segments) {
    const uint64_t n = std::min(s.count, max_tokens - total);
    for (uint64_t i = 0; i < n; ++i) {
      const int32_t id = s[i];
      if (id >= 0 && id < vocab_size) ++counts[static_cast<std::size_t>(id)];
    }
    total += n;
    if (total == max_tokens) break;
  }
  double h = 0;
  for (uint64_t c : counts)
    if (c) {
      const double p = double(c) / double(total);
      h -= p * std::log(p);
    }
  return h;
}

WindowOrder parse_window_order(const std::string& name) {
  if (name == "random") return WindowOrder::random;
  if (name == "sequential") return WindowOrder::sequential;
  throw std::invalid_argument("data.order: '" + name + "' is not one of random, sequential");
}

std::vector<std::pair<std::string, int64_t>> LoaderState::fields() const {
  return {{"draws", static_cast<int64_t>(draws)}, {"fingerprint", std::bit_cast<int64_t>(fingerprint)}};
}

LoaderState LoaderState::from_fields(const std::vector<std::pair<std::string, int64_t>>& fields) {
  LoaderState s;
  bool have_draws = false, have_fp = false;
  for (const auto& [k, v] : fields) {
    if (k == "draws")
      s.draws = static_cast<uint64_t>(v), have_draws = true;
    else if (k == "fingerprint")
      s.fingerprint = std::bit_cast<uint64_t>(v), have_fp = true;
  }
  if (!have_draws || !have_fp)
    throw std::runtime_error("data loader state: needs the fields 'draws' and 'fingerprint'");
  return s;
}

// ---------------------------------------------------------------- permutation

uint64_t permute_index(uint64_t i, uint64_t n, uint64_t key) {
  if (n <= 1) return 0;
  // A balanced Feistel network on 2*half bits >= bits of n-1; walk the cycle until
  // the value lands in [0, n) (fewer than 4 rounds on average: 2^(2*half) < 4n).
  int bits = std::bit_width(n - 1);
  bits += bits & 1;
  if (bits < 2) bits = 2;
  const int half = bits / 2;
  const uint64_t mask = (uint64_t(1) << half) - 1;
  uint64_t x = i;
  do {
    uint64_t left = x >> half, right = x & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      const uint64_t f = hash_u64(key, round, right) & mask;
      const uint64_t next = left ^ f;
      left = right;
      right = next;
    }
    x = (left << half) | right;
  } while (x >= n);
  return x;
}

// ---------------------------------------------------------------- loader

WindowLoader::WindowLoader(TokenStore store, int vocab_size, const LoaderOptions& options)
    : store_(std::move(store)), vocab_size_(vocab_size), opt_(options) {
  const uint64_t T = static_cast<uint64_t>(opt_.seq_len);
  if (opt_.seq_len < 1) throw std::invalid_argument("data loader: seq_len must be at least 1");
  if (opt_.world_size < 1 || opt_.rank < 0 || opt_.rank >= opt_.world_size)
    throw std::invalid_argument("data loader: rank " + std::to_string(opt_.rank) + " is not in 0.." +
                                std::to_string(opt_.world_size - 1) + " (world size " +
                                std::to_string(opt_.world_size) + ")");
  if (store_.segments.empty()) throw std::runtime_error("data loader: no training tokens (no segments)");
  first_window_.push_back(0);
  uint64_t fp =
      hash_u64(T, opt_.order == WindowOrder::random ? 1 : 2, opt_.order == WindowOrder::random ? opt_.seed : 0);
  fp = hash_u64(fp, static_cast<uint64_t>(opt_.rank), static_cast<uint64_t>(opt_.world_size));
  for (const TokenSegment& s : store_.segments) {
    if (s.count < T + 1)
      throw std::runtime_error("training data '" + s.name + "' has " + std::to_string(s.count) +
                               " tokens, fewer than one window of train.seq_len + 1 = " + std::to_string(T + 1) +
                               " (lower train.seq_len, or encode with fewer, larger shards)");
    first_window_.push_back(first_window_.back() + (s.count - 1) / T);
    fp = hash_u64(fp, kStreamData, s.count);
  }
  total_windows_ = first_window_.back();
  fingerprint_ = fp;
}

WindowLoader::Window WindowLoader::window(uint64_t draw) const {
  const uint64_t T = static_cast<uint64_t>(opt_.seq_len);
  const uint64_t g = draw * static_cast<uint64_t>(opt_.world_size) + static_cast<uint64_t>(opt_.rank);
  const uint64_t epoch = g / total_windows_;
  uint64_t p = g % total_windows_;
  const bool random = opt_.order == WindowOrder::random;
  if (random) p = permute_index(p, total_windows_, hash_u64(opt_.seed, kStreamData, epoch));
  const auto it = std::upper_bound(first_window_.begin(), first_window_.end(), p);
  const std::size_t seg = static_cast<std::size_t>(it - first_window_.begin()) - 1;
  const uint64_t k = p - first_window_[seg];
  uint64_t shift = 0;
  if (random) {
    const uint64_t slack = (store_.segments[seg].count - 1) % T;
    shift = uniform_int(hash_u64(opt_.seed, epoch, seg), kStreamData, 0, slack + 1);
  }
  return {seg, shift + k * T};
}

Batch WindowLoader::batch_at(uint64_t draw, int B) const {
  const int T = opt_.seq_len;
  Batch b{B, T, std::vector<int32_t>(static_cast<std::size_t>(B) * T),
          std::vector<int32_t>(static_cast<std::size_t>(B) * T)};
  for (int r = 0; r < B; ++r) {
    const Window w = window(draw + static_cast<uint64_t>(r));
    const TokenSegment& s = store_.segments[w.segment];
    int32_t* in = b.inputs.data() + static_cast<std::size_t>(r) * T;
    int32_t* tg = b.targets.data() + static_cast<std::size_t>(r) * T;
    for (int t = 0; t <= T; ++t) {
      const int32_t id = s[w.start + static_cast<uint64_t>(t)];
      if (id < 0 || id >= vocab_size_)
        throw std::runtime_error("training data '" + s.name + "': token " + std::to_string(w.start + t) + " has id " +
                                 std::to_string(id) + ", not below the vocabulary size " + std::to_string(vocab_size_));
      if (t < T) in[t] = id;
      if (t > 0) tg[t - 1] = id;
    }
  }
  return b;
}

Batch WindowLoader::next_batch(int B) {
  Batch b = batch_at(draws_, B);
  draws_ += static_cast<uint64_t>(B);
  return b;
}

void WindowLoader::restore(const LoaderState& state) {
  if (state.fingerprint != fingerprint_)
    throw std::runtime_error(
        "data loader state was saved for other data or settings (shard sizes, train.seq_len, train.seed, data.order, "
        "rank or world size differ), so its position means nothing here");
  draws_ = state.draws;
}

// ---------------------------------------------------------------- validation

Batch val_batch(const std::vector<int32_t>& tokens, int B, int T, int i, int n_batches) {
  if (tokens.size() < static_cast<std::size_t>(T) + 1)
    throw std::runtime_error("validation split has " + std::to_string(tokens.size()) +
                             " tokens, fewer than one window of " + std::to_string(T + 1));
  Batch b{B, T, std::vector<int32_t>(static_cast<std::size_t>(B) * T),
          std::vector<int32_t>(static_cast<std::size_t>(B) * T)};
  const std::size_t n_windows = static_cast<std::size_t>(B) * n_batches;
  const std::size_t span = tokens.size() - T - 1;
  for (int r = 0; r < B; ++r) {
    const std::size_t w = static_cast<std::size_t>(i) * B + r;
    const std::size_t start = n_windows > 1 ? span * w / (n_windows - 1) : 0;
    for (int t = 0; t < T; ++t) {
      b.inputs[static_cast<std::size_t>(r) * T + t] = tokens[start + t];
      b.targets[static_cast<std::size_t>(r) * T + t] = tokens[start + t + 1];
    }
  }
  return b;
}

}  // namespace kvroute
