// fp32 -> bf16 casts for the bf16 matmul path. The per-element rounding is
// bf16_from_float (kvroute/bf16.h), shared with the CPU tests.
#include "cuda_backend.h"
#include "kvroute/bf16.h"

namespace kvroute {
namespace {

constexpr int kBlock = 256;

// Four elements per thread: one 16-byte load, one 8-byte store (both pointers aligned, n % 4 == 0).
__global__ void float_to_bf16_x4_kernel(const float4* __restrict__ x, uint2* __restrict__ y, std::size_t n4) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const float4 v = x[i];
    uint2 out;
    out.x = static_cast<uint32_t>(bf16_from_float(v.x)) | (static_cast<uint32_t>(bf16_from_float(v.y)) << 16);
    out.y = static_cast<uint32_t>(bf16_from_float(v.z)) | (static_cast<uint32_t>(bf16_from_float(v.w)) << 16);
    y[i] = out;
  }
}

__global__ void float_to_bf16_kernel(const float* __restrict__ x, uint16_t* __restrict__ y, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    y[i] = bf16_from_float(x[i]);
}

__global__ void bf16_pattern_kernel(uint16_t* __restrict__ y, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u;  // Knuth's multiplicative hash
    h ^= h >> 15;
    y[i] = bf16_from_float(static_cast<float>(h >> 8) * (1.0f / 16777216.0f) - 0.5f);
  }
}

}  // namespace

void launch_float_to_bf16(const float* x, uint16_t* y, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  const bool vector = n % 4 == 0 && reinterpret_cast<std::uintptr_t>(x) % 16 == 0 &&
                      reinterpret_cast<std::uintptr_t>(y) % 8 == 0;
  if (vector) {
    const std::size_t n4 = n / 4;
    float_to_bf16_x4_kernel<<<grid_for(n4, kBlock), kBlock, 0, stream>>>(reinterpret_cast<const float4*>(x),
                                                                         reinterpret_cast<uint2*>(y), n4);
  } else {
    float_to_bf16_kernel<<<grid_for(n, kBlock), kBlock, 0, stream>>>(x, y, n);
  }
  KVR_KERNEL_CHECK();
}

void launch_bf16_pattern(uint16_t* y, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  bf16_pattern_kernel<<<grid_for(n, kBlock), kBlock, 0, stream>>>(y, n);
  KVR_KERNEL_CHECK();
}

}  // namespace kvroute
