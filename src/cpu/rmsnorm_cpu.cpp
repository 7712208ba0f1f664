// RMSNorm: out = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_backend.h"

namespace kvroute {
namespace {

// dw partial sums cover fixed blocks of this many rows, so dw does not depend on the thread count.
constexpr int kRowsPerPartial = 64;

}  // namespace

void CpuBackend::rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C,
                                 float eps) {
  cpu::require(N >= 0 && C > 0, "rmsnorm_forward", "need N >= 0 and C > 0");
  const bool parallel = static_cast<std::size_t>(N) * C >= cpu::kParallelMinElements;
#pragma omp parallel for schedule(static) if (parallel)
  for (int n = 0; n < N; ++n) {
    const float* xr = x + static_cast<std::size_t>(n) * C;
    float* yr = out + static_cast<std::size_t>(n) * C;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; ++c) ss += xr[c] * xr[c];
    const float r = 1.0f / std::sqrt(ss / C + eps);
    if (rstd) rstd[n] = r;
#pragma omp simd
    for (int c = 0; c < C; ++c) yr[c] = xr[c] * r * w[c];
  }
}

// With xhat = x * rstd:  dx = rstd * (dout*w - xhat * mean(dout*w*xhat)),  dw = sum_n dout * xhat.
// One pass over the rows: each block of kRowsPerPartial rows adds its dx and sums its own dw
// partial; the partials are then added per channel in block order.
void CpuBackend::rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                                  const float* rstd, int N, int C) {
  cpu::require(N >= 0 && C > 0, "rmsnorm_backward", "need N >= 0 and C > 0");
  cpu::require(rstd != nullptr, "rmsnorm_backward", "rstd from the forward pass is required");
  if (!dx && !dw) return;
  const int n_blocks = (N + kRowsPerPartial - 1) / kRowsPerPartial;
  std::vector<float> partial(dw ? static_cast<std::size_t>(n_blocks) * C : 0);
  const bool parallel = static_cast<std::size_t>(N) * C >= cpu::kParallelMinElements;
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static)
    for (int blk = 0; blk < n_blocks; ++blk) {
      float* pw = dw ? partial.data() + static_cast<std::size_t>(blk) * C : nullptr;
      const int n1 = std::min(N, (blk + 1) * kRowsPerPartial);
      for (int n = blk * kRowsPerPartial; n < n1; ++n) {
        const std::size_t off = static_cast<std::size_t>(n) * C;
        const float* xr = x + off;
        const float* gr = dout + off;
        const float r = rstd[n];
        if (dx) {
          float* dxr = dx + off;
          float dot = 0.f;  // sum_c dout*w*x
#pragma omp simd reduction(+ : dot)
          for (int c = 0; c < C; ++c) dot += gr[c] * w[c] * xr[c];
          const float k = dot * r * r / C;
#pragma omp simd
          for (int c = 0; c < C; ++c) dxr[c] += r * (gr[c] * w[c] - xr[c] * k);
        }
        if (pw) {
          if (n == blk * kRowsPerPartial) {
#pragma omp simd
            for (int c = 0; c < C; ++c) pw[c] = gr[c] * xr[c] * r;
          } else {
#pragma omp simd
            for (int c = 0; c < C; ++c) pw[c] += gr[c] * xr[c] * r;
          }
        }
      }
    }
    if (dw) {
#pragma omp for simd schedule(static)
      for (int c = 0; c < C; ++c) {
        float s = 0.f;
        for (int blk = 0; blk < n_blocks; ++blk) s += partial[static_cast<std::size_t>(blk) * C + c];
        dw[c] += s;
      }
    }
  }
}

}  // namespace kvroute
