// Token embedding lookup and its deterministic scatter-add backward.
//
// Backward without atomics: thread (c, part) owns column c of every vocabulary
// row whose id satisfies id % n_parts == part, and walks all N tokens in order,
// adding the ones it owns. Each dtable element therefore has exactly one
// writer, and its contributions are summed in token order (the same order as
// the CPU backend), whatever n_parts is. n_parts only spreads the work of
// heavily repeated ids over more threads; it costs n_parts extra reads of the
// (cached, warp-uniform) id array.
#include <stdexcept>

#include "cuda_backend.h"

namespace kvroute {
namespace {

constexpr int kBlock = 256;
constexpr int kBackwardBlock = 64;  // small blocks: more of them, spread over the SMs

__global__ void embedding_forward_kernel(float* __restrict__ out, const int32_t* __restrict__ ids,
                                         const float* __restrict__ table, int N, int C) {
  const std::size_t total = static_cast<std::size_t>(N) * C;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::size_t n = i / C;
    const std::size_t c = i % C;
    const int32_t id = ids[n];
    out[i] = id >= 0 ? table[static_cast<std::size_t>(id) * C + c] : 0.f;  // negative ids: zero row
  }
}

// grid: (ceil(C / kBackwardBlock), n_parts)
__global__ void embedding_backward_kernel(float* __restrict__ dtable, const float* __restrict__ dout,
                                          const int32_t* __restrict__ ids, int N, int C, int n_parts) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int part = blockIdx.y;
  if (c >= C) return;
  for (int n = 0; n < N; ++n) {
    const int32_t id = ids[n];
    if (id >= 0 && id % n_parts == part)
      dtable[static_cast<std::size_t>(id) * C + c] += dout[static_cast<std::size_t>(n) * C + c];
  }
}

}  // namespace

void CudaBackend::embedding_forward(float* out, const int32_t* ids, const float* table, int N, int C) {
  if (N < 0 || C < 0) throw std::invalid_argument("embedding_forward: negative dimension");
  if (N == 0 || C == 0) return;
  embedding_forward_kernel<<<grid_for(static_cast<std::size_t>(N) * C, kBlock), kBlock, 0, stream_>>>(
      out, ids, table, N, C);
  KVR_KERNEL_CHECK();
}

void CudaBackend::embedding_backward(float* dtable, const float* dout, const int32_t* ids, int N, int C) {
  if (N < 0 || C < 0) throw std::invalid_argument("embedding_backward: negative dimension");
  if (N == 0 || C == 0) return;
  // Aim for ~32k threads in all; the result does not depend on this choice.
  int n_parts = 32768 / C;
  n_parts = n_parts < 1 ? 1 : (n_parts > 64 ? 64 : n_parts);
  const dim3 grid((C + kBackwardBlock - 1) / kBackwardBlock, n_parts);
  embedding_backward_kernel<<<grid, kBackwardBlock, 0, stream_>>>(dtable, dout, ids, N, C, n_parts);
  KVR_KERNEL_CHECK();
}

}  // namespace kvroute
