// Bias: y[N,C] += b[C] on every row; backward db[C] += the column sums of dy.
#include <algorithm>
#include <vector>

#include "cpu/cpu_backend.h"

namespace kvroute {
namespace {

// db partial sums cover fixed blocks of this many rows, so db does not depend on the thread count.
constexpr int kRowsPerPartial = 64;

}  // namespace

void CpuBackend::bias_forward(float* y, const float* b, int N, int C) {
  cpu::require(N >= 0 && C > 0, "bias_forward", "need N >= 0 and C > 0");
  const bool parallel = static_cast<std::size_t>(N) * C >= cpu::kParallelMinElements;
#pragma omp parallel for schedule(static) if (parallel)
  for (int n = 0; n < N; ++n) {
    float* yr = y + static_cast<std::size_t>(n) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) yr[c] += b[c];
  }
}

// Each block of kRowsPerPartial rows sums its own partial; the partials are then added per
// column in block order.
void CpuBackend::bias_backward(float* db, const float* dy, int N, int C) {
  cpu::require(N >= 0 && C > 0, "bias_backward", "need N >= 0 and C > 0");
  const int n_blocks = (N + kRowsPerPartial - 1) / kRowsPerPartial;
  std::vector<float> partial(static_cast<std::size_t>(n_blocks) * C, 0.f);
  const bool parallel = static_cast<std::size_t>(N) * C >= cpu::kParallelMinElements;
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static)
    for (int blk = 0; blk < n_blocks; ++blk) {
      float* p = partial.data() + static_cast<std::size_t>(blk) * C;
      const int n1 = std::min(N, (blk + 1) * kRowsPerPartial);
      for (int n = blk * kRowsPerPartial; n < n1; ++n) {
        const float* g = dy + static_cast<std::size_t>(n) * C;
#pragma omp simd
        for (int c = 0; c < C; ++c) p[c] += g[c];
      }
    }
#pragma omp for simd schedule(static)
    for (int c = 0; c < C; ++c) {
      float s = 0.f;
      for (int blk = 0; blk < n_blocks; ++blk) s += partial[static_cast<std::size_t>(blk) * C + c];
      db[c] += s;
    }
  }
}

}  // namespace kvroute
