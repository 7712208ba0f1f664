// Fused softmax cross-entropy, one block per row.
//
// Each thread keeps an online (max, sum of exp(x - max)) over its strided
// slice of the row; the pairs are merged by warp shuffles and then across
// warps in shared memory, in a fixed order. loss = max + log(sum) - x[target];
// dlogits = grad_scale * (softmax - onehot) overwrites the row. dlogits may
// alias logits: every thread reads x[target] before the reductions, and the
// barriers inside them order that read before any write; each later element
// is read and then written by the same thread.
// Targets < 0 are ignored: loss 0, gradient row 0. A target >= V is an error
// (Backend::cross_entropy), but the targets are device data the host does not
// read: such a row also gets loss 0 and gradient 0, and the kernel keeps the
// smallest (row, target) of the call in a device word; a one-thread kernel then
// latches the first failing call's error with its V, and an async copy brings
// that record to pinned host memory. The backend throws it, with the CPU
// backend's message, when it next waits for its stream (throw_device_errors).
#include <cmath>
#include <stdexcept>

#include "cuda_backend.h"

namespace kvroute {
namespace {

constexpr int kBlock = 512;
constexpr int kWarps = kBlock / 32;

// (row, target) as one word ordered by row: atomicMin keeps the call's first bad row.
__device__ __forceinline__ unsigned long long bad_target_key(int row, int target) {
  return (static_cast<unsigned long long>(row) << 32) | static_cast<unsigned int>(target);
}

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
                                                               float grad_scale, unsigned long long* bad) {
  __shared__ MaxSum warp_part[kWarps];
  __shared__ MaxSum row_stats;
  const int n = blockIdx.x;
  const std::size_t off = static_cast<std::size_t>(n) * V;
  const float* x = logits + off;
  const int target = targets[n];
  if (target < 0 || target >= V) {  // uniform over the block
    if (target >= V && threadIdx.x == 0) atomicMin(bad, bad_target_key(n, target));
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


// One thread, after cross_entropy_kernel: err[0] is the call's smallest bad key (~0: none).
// The first error since the host last looked is kept in err[1] (key) and err[2] (its V);
// err[0] is reset for the next call.
__global__ void latch_bad_target_kernel(unsigned long long* err, int V) {
  if (err[0] == ~0ull) return;
  if (err[1] == ~0ull) {
    err[1] = err[0];
    err[2] = static_cast<unsigned long long>(V);
  }
  err[0] = ~0ull;
}

}  // namespace

void CudaBackend::cross_entropy(const float* logits, const int32_t* targets, float* losses, float* dlogits,
                                int N, int V, float grad_scale) {
  if (N < 0 || V <= 0) throw std::invalid_argument("cross_entropy: need N >= 0 and V > 0");
  if (N == 0) return;
  cross_entropy_kernel<<<N, kBlock, 0, stream_>>>(logits, targets, losses, dlogits, V, grad_scale, ce_error_);
  KVR_KERNEL_CHECK();
  latch_bad_target_kernel<<<1, 1, 0, stream_>>>(ce_error_, V);
  KVR_KERNEL_CHECK();
  KVR_CUDA_CHECK(cudaMemcpyAsync(ce_error_host_, ce_error_ + 1, 2 * sizeof(unsigned long long),
                                 cudaMemcpyDeviceToHost, stream_));
  ce_error_pending_ = true;
}

void CudaBackend::throw_device_errors() {
  if (!ce_error_pending_) return;
  ce_error_pending_ = false;
  const unsigned long long key = ce_error_host_[0];  // the stream is synchronised: the copy has landed
  if (key == ~0ull) return;
  const long row = static_cast<long>(key >> 32);
  const long target = static_cast<int32_t>(static_cast<uint32_t>(key & 0xffffffffu));
  const long V = static_cast<long>(ce_error_host_[1]);
  ce_error_host_[0] = ce_error_host_[1] = ~0ull;
  KVR_CUDA_CHECK(cudaMemsetAsync(ce_error_ + 1, 0xff, sizeof(unsigned long long), stream_));  // clear the latch
  throw std::invalid_argument(cross_entropy_target_error(row, target, V));
}

}  // namespace kvroute
