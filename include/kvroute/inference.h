// Serving with a depth-wise shared KV cache.
//
// A sharing strategy maps each layer l to the source layer src[l] whose K/V it
// reads. KvCache allocates storage for the source layers only (src[l] == l);
// InferenceEngine runs Model::layer_forward (the same routine training runs)
// over that cache, so a layer that reads another layer's cache keeps none of its
// own and computes no K/V projection.
//
// Batches of prompts of different lengths: each prompt is prefilled on its own
// (consecutive prompts of equal length share one call), into its own cache slot,
// starting at position 0 - no padding and no mask. Decode then runs all active
// sequences in one step, each at its own position.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvroute/config.h"
#include "kvroute/model.h"
#include "kvroute/strategy.h"

namespace kvroute {

// K and V for the cache layers of one strategy:
// [n_cache_layers][max_batch][max_len][n_kv_heads][head_dim], float32, one buffer each.
class KvCache {
 public:
  KvCache(Backend* backend, const ModelConfig& mc, const SharingStrategy& strategy, int max_batch, int max_len);

  int max_batch() const { return max_batch_; }
  int max_len() const { return max_len_; }
  int n_cache_layers() const { return n_cache_layers_; }
  // Per-layer view for Model::layer_forward; a non-source layer has null pointers.
  const KvStore& store() const { return store_; }
  // Bytes allocated for K and V together: 2 * n_cache_layers * max_batch * max_len * n_kv_heads * head_dim * 4.
  std::size_t bytes() const { return k_.bytes() + v_.bytes(); }
  // Bytes one token of one sequence occupies: 2 * n_cache_layers * n_kv_heads * head_dim * 4.
  std::size_t bytes_per_token() const { return bytes_per_token_; }

 private:
  int max_batch_, max_len_, n_cache_layers_;
  std::size_t bytes_per_token_;
  DeviceBuffer<float> k_, v_;
  KvStore store_;
};

// KV bytes per token of a strategy for a model, without allocating anything.
std::size_t kv_bytes_per_token(const ModelConfig& mc, const SharingStrategy& strategy);

struct SamplingOptions {
  double temperature = 0;  // 0 = greedy (argmax); otherwise logits / temperature
  int top_k = 0;           // keep the k most likely tokens; 0 = all
  double top_p = 1;        // keep the smallest most-likely set with probability >= top_p; 1 = all
  uint64_t seed = 0;
};
// Throws std::invalid_argument naming the option for a negative temperature or top_k,
// or top_p outside (0, 1].
void validate_sampling(const SamplingOptions& opt);

// Picks the next token from logits[V]. Deterministic: the only randomness is
// uniform01(seed, kStreamSample, counter). Greedy and ties pick the lowest id.
int sample_token(const float* logits, int V, const SamplingOptions& opt, uint64_t counter);
// The draw counter of sequence `seq` (its index in the request) at generated token `step`.
inline uint64_t sample_counter(int seq, int step) {
  return (static_cast<uint64_t>(seq) << 32) | static_cast<uint32_t>(step);
}
// The distribution sample_token draws from (after temperature, top-k, top-p), for tests.
std::vector<double> sampling_distribution(const float* logits, int V, const SamplingOptions& opt);

struct GenerateOptions {
  int max_new_tokens = 64;
  int stop_token = -1;  // generation of a sequence stops after it emits this id; -1 = none
  SamplingOptions sampling;
};

enum class StopReason { EndToken, MaxNewTokens, Context };
const char* stop_reason_name(StopReason r);

struct GenerationResult {
  std::vector<std::vector<int32_t>> tokens;  // the generated tokens of each prompt (stop token included)
  std::vector<StopReason> stop;
  double ttft_s = 0;       // prefill of every prompt + sampling each first token
  double decode_s = 0;     // the decode steps after that
  long decode_tokens = 0;  // tokens produced by decode steps (all sequences)
  double decode_tokens_per_s() const { return decode_s > 0 ? decode_tokens / decode_s : 0; }
};

class InferenceEngine {
 public:
  // Validates the strategy for the model's depth and allocates a cache for max_batch
  // sequences of up to max_len tokens (max_len <= model context).
  InferenceEngine(Model& model, const SharingStrategy& strategy, int max_batch, int max_len);

  const SharingStrategy& strategy() const { return strategy_; }
  const KvCache& cache() const { return cache_; }
  Model& model() { return model_; }
  // K/V projections this engine computed (one per layer call that computes K/V).
  long kv_projections() const { return kv_projections_; }

  // Forgets every cached sequence.
  void reset();
  // Prefill at most `tokens` tokens of each prompt per forward step (0, the default: the whole
  // prompt in one step). Same logits up to summation order; bounds prefill activations, which
  // otherwise grow with batch x prompt length. Throws std::invalid_argument for tokens < 0.
  void set_prefill_chunk(int tokens);
  // Tokens held in the cache for a slot.
  int length(int slot) const { return lengths_.at(slot); }

  // Prefills prompt i into slot i (the cache is reset first). Returns the logits of each
  // prompt's last token, [n_prompts * V]; with all_logits, those of every token instead,
  // prompt after prompt ([sum of lengths * V]). Throws std::invalid_argument for an empty
  // prompt, one longer than the cache, too many prompts, or a token outside the vocabulary.
  std::vector<float> prefill(const std::vector<std::vector<int32_t>>& prompts, bool all_logits = false);
  // Appends tokens[i] to slot slots[i] (all distinct) in one step; returns logits [n * V].
  std::vector<float> decode(const std::vector<int32_t>& tokens, const std::vector<int>& slots);

  // Prefill, then sample and decode until every sequence stops.
  GenerationResult generate(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& opt);

  // Mean cross-entropy of targets (>= 0 counted) for B sequences of T tokens, each prefilled
  // through the cache under this engine's strategy (teacher forcing).
  double teacher_forced_loss(const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets, int B, int T);

 private:
  // Runs one forward step over the rows (token ids on host) and leaves the final residual in x_.
  void run_step(const std::vector<int32_t>& ids, const ForwardStep& step);
  void ensure_scratch(int N);
  void ensure_head(int n_rows);
  std::vector<float> logits_of_rows(const std::vector<int>& rows);

  Model& model_;
  SharingStrategy strategy_;
  KvCache cache_;
  std::vector<int> lengths_;
  long kv_projections_ = 0;
  int scratch_rows_ = 0, head_rows_ = 0, prefill_chunk_ = 0;
  DeviceBuffer<int32_t> ids_;
  DeviceBuffer<float> x_, ln1_, rstd1_, q_, att_, mid_, ln2_, rstd2_, gate_, up_, act_, k_new_, v_new_;
  DeviceBuffer<float> rows_, lnf_, rstdf_, logits_, losses_;
  DeviceBuffer<float> q_pre_, rstd_q_, k_pre_, rstd_k_;  // model.qk_norm only
  DeviceBuffer<int32_t> targets_;
};

// ---- timing of prefill and decode, shared by `kvroute eval` and `kvroute bench generate` ----
struct GenerationBenchSpec {
  int prompt_len = 128;   // TTFT: one prompt of this many tokens
  int decode_batch = 1;   // decode: this many sequences ...
  int decode_len = 32;    // ... each producing this many tokens (after a short prefill)
  int repeats = 5;        // timed runs after one warm-up; medians are reported
  uint64_t seed = 1;      // the synthetic prompt tokens
  int prefill_chunk = 0;  // InferenceEngine::set_prefill_chunk (0 = whole prompts)
};

struct GenerationBench {
  SharingStrategy strategy;
  std::size_t kv_bytes = 0;           // cache allocated for the measurement
  std::size_t kv_bytes_per_token = 0;
  std::vector<double> ttft_ms;        // every timed run
  std::vector<double> decode_tokens_per_s;
  double median_ttft_ms() const;
  double median_decode_tokens_per_s() const;
};

// Measures every strategy, interleaving the strategies within each repeat so that a
// change in machine load hits them alike. Throws std::invalid_argument when the prompt
// or the decode length does not fit the model's context.
std::vector<GenerationBench> benchmark_generation(Model& model, const std::vector<SharingStrategy>& strategies,
                                                  const GenerationBenchSpec& spec);

double median(std::vector<double> v);

}  // namespace kvroute
