// Bias: y[N,C] += b[C] on every row; backward db[C] += the column sums of dy.
//
// db (deterministic, no atomics), as rmsnorm's dw: pass 1 splits the N rows into
// n_chunks fixed chunks, block (column range, chunk) writes partial[chunk][c] summing
// its rows in order; pass 2 adds the chunk partials in chunk order into db[c].
#include <stdexcept>

#include "cuda_backend.h"

namespace kvroute {
namespace {

constexpr int kBlock = 256;
constexpr int kMaxChunks = 128;

__global__ void bias_forward_kernel(float* __restrict__ y, const float* __restrict__ b, std::size_t n, int C) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    y[i] += b[i % C];
}

// grid: (ceil(C / kBlock), n_chunks)
__global__ void bias_partial_kernel(float* __restrict__ partial, const float* __restrict__ dy, int N, int C,
                                    int rows_per_chunk) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int n0 = blockIdx.y * rows_per_chunk;
  const int n1 = min(N, n0 + rows_per_chunk);
  float acc = 0.f;
  for (int n = n0; n < n1; ++n) acc += dy[static_cast<std::size_t>(n) * C + c];
  partial[static_cast<std::size_t>(blockIdx.y) * C + c] = acc;
}

__global__ void bias_final_kernel(float* __restrict__ db, const float* __restrict__ partial, int C, int n_chunks) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0.f;
  for (int k = 0; k < n_chunks; ++k) acc += partial[static_cast<std::size_t>(k) * C + c];
  db[c] += acc;
}

}  // namespace

void CudaBackend::bias_forward(float* y, const float* b, int N, int C) {
  if (N < 0 || C <= 0) throw std::invalid_argument("bias_forward: need N >= 0 and C > 0");
  if (N == 0) return;
  const std::size_t n = static_cast<std::size_t>(N) * C;
  const std::size_t blocks = (n + kBlock - 1) / kBlock;
  bias_forward_kernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), kBlock, 0, stream_>>>(y, b, n, C);
  KVR_KERNEL_CHECK();
}

void CudaBackend::bias_backward(float* db, const float* dy, int N, int C) {
  if (N < 0 || C <= 0) throw std::invalid_argument("bias_backward: need N >= 0 and C > 0");
  if (N == 0) return;
  const int rows_per_chunk = (N + kMaxChunks - 1) / kMaxChunks;
  const int n_chunks = (N + rows_per_chunk - 1) / rows_per_chunk;
  auto* partial = static_cast<float*>(scratch(kScratchBiasDb, static_cast<std::size_t>(n_chunks) * C * sizeof(float)));
  const int col_blocks = (C + kBlock - 1) / kBlock;
  bias_partial_kernel<<<dim3(col_blocks, n_chunks), kBlock, 0, stream_>>>(partial, dy, N, C, rows_per_chunk);
  KVR_KERNEL_CHECK();
  bias_final_kernel<<<col_blocks, kBlock, 0, stream_>>>(db, partial, C, n_chunks);
  KVR_KERNEL_CHECK();
}

}  // namespace kvroute
