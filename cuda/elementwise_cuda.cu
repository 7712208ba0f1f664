// Element-wise vector ops, the sum-of-squares reduction and SwiGLU.
//
// No __restrict__: callers may run these in place (y == x, out == gate).
//
// sum_squares is deterministic: a fixed grid of kReduceBlocks blocks, each
// thread summing a fixed grid-stride subset in double, a fixed-shape tree in
// shared memory per block, then one block summing the per-block partials with the
// same fixed tree. The result depends only on n and the data.
#include <cmath>

#include "cuda_backend.h"

namespace kvroute {
namespace {

constexpr int kBlock = 256;
constexpr int kReduceBlocks = 256;  // fixed: part of the summation order

__global__ void accumulate_kernel(float* y, const float* x, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

// y may alias a or b.
__global__ void add_kernel(float* y, const float* a, const float* b, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    y[i] = a[i] + b[i];
}

__global__ void scale_kernel(float* x, std::size_t n, float s) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    x[i] *= s;
}

// In-block tree sum of one double per thread (blockDim.x == kBlock); result in buf[0].
__device__ double block_sum(double v, double* buf) {
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  return buf[0];
}

// Pass 1: partial[blockIdx.x] = sum of x[i]^2 over this block's grid-stride elements.
__global__ void sum_squares_partial_kernel(const float* x, std::size_t n, double* partial) {
  __shared__ double buf[kBlock];
  double acc = 0.0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(kBlock) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(kReduceBlocks) * kBlock) {
    const double v = x[i];
    acc += v * v;
  }
  const double total = block_sum(acc, buf);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// Pass 2 (one block of kReduceBlocks == kBlock threads): result = sum of the partials.
__global__ void sum_squares_final_kernel(const double* partial, double* result) {
  __shared__ double buf[kBlock];
  const double total = block_sum(partial[threadIdx.x], buf);
  if (threadIdx.x == 0) *result = total;
}
static_assert(kReduceBlocks == kBlock, "the final pass maps one partial to one thread");

__device__ __forceinline__ float sigmoidf_(float g) { return 1.0f / (1.0f + expf(-g)); }

__global__ void swiglu_forward_kernel(float* out, const float* gate,
                                      const float* up, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// dgate += dout * up * silu'(gate), silu'(g) = sig(g) (1 + g (1 - sig(g))); dup += dout * silu(gate).
__global__ void swiglu_backward_kernel(float* dgate, float* dup,
                                       const float* dout, const float* gate,
                                       const float* up, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    const float sig = sigmoidf_(g);
    const float d = dout[i];
    dgate[i] += d * up[i] * sig * (1.0f + g * (1.0f - sig));
    dup[i] += d * (g * sig);
  }
}

}  // namespace

void CudaBackend::accumulate(float* y, const float* x, std::size_t n) {
  if (n == 0) return;
  accumulate_kernel<<<grid_for(n, kBlock), kBlock, 0, stream_>>>(y, x, n);
  KVR_KERNEL_CHECK();
}

void CudaBackend::add(float* y, const float* a, const float* b, std::size_t n) {
  if (n == 0) return;
  add_kernel<<<grid_for(n, kBlock), kBlock, 0, stream_>>>(y, a, b, n);
  KVR_KERNEL_CHECK();
}

void CudaBackend::scale(float* x, std::size_t n, float s) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n, kBlock), kBlock, 0, stream_>>>(x, n, s);
  KVR_KERNEL_CHECK();
}

double CudaBackend::sum_squares(const float* x, std::size_t n) {
  if (n == 0) return 0.0;
  auto* partial = static_cast<double*>(scratch(kScratchReduce, (kReduceBlocks + 1) * sizeof(double)));
  double* result = partial + kReduceBlocks;
  sum_squares_partial_kernel<<<kReduceBlocks, kBlock, 0, stream_>>>(x, n, partial);
  KVR_KERNEL_CHECK();
  sum_squares_final_kernel<<<1, kBlock, 0, stream_>>>(partial, result);
  KVR_KERNEL_CHECK();
  double host = 0.0;
  copy_to_host(&host, result, sizeof(double));
  return host;
}

void CudaBackend::swiglu_forward(float* out, const float* gate, const float* up, std::size_t n) {
  if (n == 0) return;
  swiglu_forward_kernel<<<grid_for(n, kBlock), kBlock, 0, stream_>>>(out, gate, up, n);
  KVR_KERNEL_CHECK();
}

void CudaBackend::swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                                  const float* up, std::size_t n) {
  if (n == 0) return;
  swiglu_backward_kernel<<<grid_for(n, kBlock), kBlock, 0, stream_>>>(dgate, dup, dout, gate, up, n);
  KVR_KERNEL_CHECK();
}

}  // namespace kvroute
