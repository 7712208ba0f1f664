// Fused softmax cross-entropy over the vocabulary, one row per thread.
#include <cmath>
#include <limits>
#include <string>

#include "cpu/cpu_backend.h"
#include "cpu/cpu_math.h"

namespace kvroute {

void CpuBackend::cross_entropy(const float* logits, const int32_t* targets, float* losses, float* dlogits,
                               int N, int V, float grad_scale) {
  cpu::require(N >= 0 && V > 0, "cross_entropy", "need N >= 0 and V > 0");
  cpu::require(N == 0 || (logits && targets), "cross_entropy", "null logits or targets");
  // Validate up front: nothing may throw inside the parallel region.
  for (int n = 0; n < N; ++n)
    if (targets[n] >= V) throw std::invalid_argument(cross_entropy_target_error(n, targets[n], V));
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const std::size_t off = static_cast<std::size_t>(n) * V;
    const float* x = logits + off;
    const int target = targets[n];
    if (target < 0) {  // ignored position
      if (losses) losses[n] = 0.f;
      if (dlogits) {
        float* d = dlogits + off;
#pragma omp simd
        for (int j = 0; j < V; ++j) d[j] = 0.f;
      }
      continue;
    }
    float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < V; ++j) mx = x[j] > mx ? x[j] : mx;  // not std::fmax: that is a libm call per element
    const float log_sum = std::log(cpu::sum_exp_shifted(x, V, mx));
    // Read the target logit before dlogits (which may alias logits) overwrites it.
    if (losses) losses[n] = log_sum + mx - x[target];
    if (dlogits) {
      float* d = dlogits + off;
      cpu::exp_shifted(d, x, V, mx + log_sum, grad_scale);  // grad_scale * softmax
      d[target] -= grad_scale;
    }
  }
}

}  // namespace kvroute
