// Fused softmax cross-entropy, one block per row.
//
// Each thread keeps an online (max, sum of exp(x - max)) over its strided
// slice of the row; the pairs are merged by warp shuffles and then across
// warps in shared memory, in a fixed order. loss = max + log(sum) - x[target];
// dlogits = grad_scale * (softmax - onehot) overwrites the row. dlogits may
// alias logits: every thread reads x[target] before the reductions, and the
// barriers inside them order that read before any write; each later element
// is read and then written by the same thread.
// Targets < 0 (and, since device data cannot be checked from the host,
// targets >= V) are ignored: loss 0, gradient row 0.
#include <cmath>
#include <stdexcept>

#include "cuda_backend.h"

namespace kvroute {
namespace {

constexpr int kBlock = 512;
constexpr int kWarps = kBlock / 32;

struct MaxSum {
  float m;
  float s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.f};
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// No __restrict__: dlogits may alias logits.
__global__ void __launch_bounds__(kBlock) cross_entropy_kernel(const float* logits, const int32_t* targets,
                                                               float* losses, float* dlogits, int V,
                                                               float grad_scale) {
  __shared__ MaxSum warp_part[kWarps];
  __shared__ MaxSum row_stats;
  const int n = blockIdx.x;
  const std::size_t off = static_cast<std::size_t>(n) * V;
  const float* x = logits + off;
  const int target = targets[n];
  if (target < 0 || target >= V) {  // uniform over the block
    if (losses && threadIdx.x == 0) losses[n] = 0.f;
    if (dlogits)
      for (int j = threadIdx.x; j < V; j += kBlock) dlogits[off + j] = 0.f;
    return;
  }
  const float x_target = x[target];

  MaxSum acc{-INFINITY, 0.f};
  for (int j = threadIdx.x; j < V; j += kBlock) {
    const float v = x[j];
    if (v > acc.m) {
      acc.s = acc.s * expf(acc.m - v) + 1.f;  // exp(-inf) == 0 on the first element
      acc.m = v;
    } else if (v != -INFINITY) {
      acc.s += expf(v - acc.m);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum other;
    other.m = __shfl_xor_sync(0xffffffffu, acc.m, o);
    other.s = __shfl_xor_sync(0xffffffffu, acc.s, o);
    acc = merge(acc, other);
  }
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) warp_part[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    MaxSum total = warp_part[0];
    for (int w = 1; w < kWarps; ++w) total = merge(total, warp_part[w]);
    row_stats = total;
  }
  __syncthreads();
  const float lse = row_stats.m + logf(row_stats.s);
  if (losses && threadIdx.x == 0) losses[n] = lse - x_target;
  if (dlogits) {
    float* d = dlogits + off;
    for (int j = threadIdx.x; j < V; j += kBlock) {
      const float p = expf(x[j] - lse);
      d[j] = grad_scale * (j == target ? p - 1.f : p);
    }
  }
}

}  // namespace

void CudaBackend::cross_entropy(const float* logits, const int32_t* targets, float* losses, float* dlogits,
                                int N, int V, float grad_scale) {
  if (N < 0 || V <= 0) throw std::invalid_argument("cross_entropy: need N >= 0 and V > 0");
  if (N == 0) return;
  cross_entropy_kernel<<<N, kBlock, 0, stream_>>>(logits, targets, losses, dlogits, V, grad_scale);
  KVR_KERNEL_CHECK();
}

}  // namespace kvroute
