// RMSNorm: out = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps).
#include <cmath>

#include "cpu/cpu_backend.h"

namespace kvroute {

void CpuBackend::rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C,
                                 float eps) {
  cpu::require(N >= 0 && C > 0, "rmsnorm_forward", "need N >= 0 and C > 0");
#pragma omp parallel for schedule(static)
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
void CpuBackend::rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                                  const float* rstd, int N, int C) {
  cpu::require(N >= 0 && C > 0, "rmsnorm_backward", "need N >= 0 and C > 0");
  cpu::require(rstd != nullptr, "rmsnorm_backward", "rstd from the forward pass is required");
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
      const std::size_t off = static_cast<std::size_t>(n) * C;
      const float* xr = x + off;
      const float* gr = dout + off;
      float* dxr = dx + off;
      const float r = rstd[n];
      float dot = 0.f;  // sum_c dout*w*x
#pragma omp simd reduction(+ : dot)
      for (int c = 0; c < C; ++c) dot += gr[c] * w[c] * xr[c];
      const float k = dot * r * r / C;
#pragma omp simd
      for (int c = 0; c < C; ++c) dxr[c] += r * (gr[c] * w[c] - xr[c] * k);
    }
  }
  if (dw) {
    // Parallel over channel blocks so each dw[c] is summed over rows by one thread, in order.
    constexpr int kChannelBlock = 64;
    const int n_blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int c0 = blk * kChannelBlock;
      const int c1 = c0 + kChannelBlock < C ? c0 + kChannelBlock : C;
      float acc[kChannelBlock] = {};
      for (int n = 0; n < N; ++n) {
        const std::size_t off = static_cast<std::size_t>(n) * C;
        const float r = rstd[n];
#pragma omp simd
        for (int c = c0; c < c1; ++c) acc[c - c0] += dout[off + c] * x[off + c] * r;
      }
      for (int c = c0; c < c1; ++c) dw[c] += acc[c - c0];
    }
  }
}

}  // namespace kvroute
