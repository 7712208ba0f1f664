// RMSNorm: out = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps).
//
// Forward and dx: one warp per row (8 rows per 256-thread block); the row sums
// are warp shuffles in a fixed order.
// dw (deterministic, no atomics): pass 1 splits the N rows into n_chunks fixed
// chunks, block (column range, chunk) writes partial[chunk][c] summing its rows
// in order; pass 2 adds the chunk partials in chunk order into dw[c].
#include <stdexcept>

#include "cuda_backend.h"

namespace kvroute {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kBlock = 32 * kWarpsPerBlock;
constexpr int kMaxChunks = 128;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void rmsnorm_forward_kernel(float* __restrict__ out, float* __restrict__ rstd,
                                       const float* __restrict__ x, const float* __restrict__ w, int N, int C,
                                       float eps) {
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N) return;  // whole warp leaves together
  const float* xr = x + static_cast<std::size_t>(n) * C;
  float* yr = out + static_cast<std::size_t>(n) * C;
  float ss = 0.f;
  for (int c = lane; c < C; c += 32) ss += xr[c] * xr[c];
  ss = warp_sum(ss);
  const float r = 1.0f / sqrtf(ss / C + eps);
  for (int c = lane; c < C; c += 32) yr[c] = xr[c] * r * w[c];
  if (rstd && lane == 0) rstd[n] = r;
}

// dx += r * (dout*w - x * r^2 * mean(dout*w*x))
__global__ void rmsnorm_backward_dx_kernel(float* __restrict__ dx, const float* __restrict__ dout,
                                           const float* __restrict__ x, const float* __restrict__ w,
                                           const float* __restrict__ rstd, int N, int C) {
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N) return;
  const std::size_t off = static_cast<std::size_t>(n) * C;
  const float* xr = x + off;
  const float* gr = dout + off;
  float* dxr = dx + off;
  const float r = rstd[n];
  float dot = 0.f;
  for (int c = lane; c < C; c += 32) dot += gr[c] * w[c] * xr[c];
  dot = warp_sum(dot);
  const float k = dot * r * r / C;
  for (int c = lane; c < C; c += 32) dxr[c] += r * (gr[c] * w[c] - xr[c] * k);
}

// grid: (ceil(C / kBlock), n_chunks); partial[chunk * C + c] = sum over the chunk's rows of dout*x*rstd.
__global__ void rmsnorm_dw_partial_kernel(float* __restrict__ partial, const float* __restrict__ dout,
                                          const float* __restrict__ x, const float* __restrict__ rstd, int N,
                                          int C, int rows_per_chunk) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int n0 = blockIdx.y * rows_per_chunk;
  const int n1 = min(N, n0 + rows_per_chunk);
  float acc = 0.f;
  for (int n = n0; n < n1; ++n) {
    const std::size_t i = static_cast<std::size_t>(n) * C + c;
    acc += dout[i] * x[i] * rstd[n];
  }
  partial[static_cast<std::size_t>(blockIdx.y) * C + c] = acc;
}

__global__ void rmsnorm_dw_final_kernel(float* __restrict__ dw, const float* __restrict__ partial, int C,
                                        int n_chunks) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0.f;
  for (int k = 0; k < n_chunks; ++k) acc += partial[static_cast<std::size_t>(k) * C + c];
  dw[c] += acc;
}

}  // namespace

void CudaBackend::rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C,
                                  float eps) {
  if (N < 0 || C <= 0) throw std::invalid_argument("rmsnorm_forward: need N >= 0 and C > 0");
  if (N == 0) return;
  const int blocks = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
  rmsnorm_forward_kernel<<<blocks, kBlock, 0, stream_>>>(out, rstd, x, w, N, C, eps);
  KVR_KERNEL_CHECK();
}

void CudaBackend::rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                                   const float* rstd, int N, int C) {
  if (N < 0 || C <= 0) throw std::invalid_argument("rmsnorm_backward: need N >= 0 and C > 0");
  if (!rstd) throw std::invalid_argument("rmsnorm_backward: rstd from the forward pass is required");
  if (N == 0) return;
  if (dx) {
    const int blocks = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
    rmsnorm_backward_dx_kernel<<<blocks, kBlock, 0, stream_>>>(dx, dout, x, w, rstd, N, C);
    KVR_KERNEL_CHECK();
  }
  if (dw) {
    const int rows_per_chunk = (N + kMaxChunks - 1) / kMaxChunks;
    const int n_chunks = (N + rows_per_chunk - 1) / rows_per_chunk;
    auto* partial = static_cast<float*>(
        scratch(kScratchNormDw, static_cast<std::size_t>(n_chunks) * C * sizeof(float)));
    const int col_blocks = (C + kBlock - 1) / kBlock;
    rmsnorm_dw_partial_kernel<<<dim3(col_blocks, n_chunks), kBlock, 0, stream_>>>(partial, dout, x, rstd, N, C,
                                                                                  rows_per_chunk);
    KVR_KERNEL_CHECK();
    rmsnorm_dw_final_kernel<<<col_blocks, kBlock, 0, stream_>>>(dw, partial, C, n_chunks);
    KVR_KERNEL_CHECK();
  }
}

}  // namespace kvroute
