// Attention-kernel benchmark behind `kvroute bench attention`: the routed causal attention
// op alone (self-attention, every sequence reading its own layer), forward and backward
// timed separately on random inputs, so its TFLOP/s compare with FlashAttention-2's
// published figures (causal, batch x seq_len = 16k tokens, hidden size 2048).
#pragma once

#include <cstdint>
#include <vector>

#include "kvroute/backend.h"

namespace kvroute {

struct AttentionBenchSpec {
  int batch = 16;
  int seq_len = 1024;
  int d_model = 2048;  // heads = d_model / head_dim (query and kv heads alike)
  int warmup = 2;      // untimed forward + backward pairs first
  int repeats = 10;    // timed calls of each direction (medians reported)
  uint64_t seed = 1;
};

struct AttentionBenchRow {
  int head_dim = 0, heads = 0, batch = 0, seq_len = 0;
  // Per call. Forward: 4 * head_dim * heads * batch per visible (query, key) pair (QK^T and PV,
  // as the profiler counts). Backward: 2.5 x forward, FlashAttention-2's count (five matmuls of
  // the same size against the forward's two), so the figures compare with its paper's.
  double forward_flops = 0, backward_flops = 0;
  std::vector<double> forward_seconds, backward_seconds;  // each timed call
  double forward_median_seconds = 0, backward_median_seconds = 0;
  double forward_tflops = 0, backward_tflops = 0;  // FLOPs / median seconds / 1e12
};

// Runs the benchmark for one head_dim (d_model must be a multiple of it) on `backend`.
// Throws std::invalid_argument for a bad spec.
AttentionBenchRow benchmark_attention(Backend* backend, const AttentionBenchSpec& spec, int head_dim);

}  // namespace kvroute
