// Token embedding lookup and its scatter-add backward.
#include <string>

#include "cpu/cpu_backend.h"

namespace kvroute {
namespace {

void check_ids(const int32_t* ids, int N, int C, const char* op) {
  cpu::require(N >= 0 && C >= 0, op, "negative dimension");
  cpu::require(N == 0 || ids != nullptr, op, "null ids");
}

}  // namespace

void CpuBackend::embedding_forward(float* out, const int32_t* ids, const float* table, int N, int C) {
  check_ids(ids, N, C, "embedding_forward");
  // The vocabulary size is not passed, so only negative ids can be rejected here.
  for (int n = 0; n < N; ++n)
    cpu::require(ids[n] >= 0, "embedding_forward", "negative token id " + std::to_string(ids[n]));
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* row = table + static_cast<std::size_t>(ids[n]) * C;
    float* dst = out + static_cast<std::size_t>(n) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) dst[c] = row[c];
  }
}

void CpuBackend::embedding_backward(float* dtable, const float* dout, const int32_t* ids, int N, int C) {
  check_ids(ids, N, C, "embedding_backward");
  for (int n = 0; n < N; ++n)
    cpu::require(ids[n] >= 0, "embedding_backward", "negative token id " + std::to_string(ids[n]));
  // Each thread owns a block of channels and walks all tokens in order: repeated ids
  // never race and the summation order is fixed.
  constexpr int kChannelBlock = 64;
  const int n_blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int c0 = blk * kChannelBlock;
    const int c1 = c0 + kChannelBlock < C ? c0 + kChannelBlock : C;
    for (int n = 0; n < N; ++n) {
      float* dst = dtable + static_cast<std::size_t>(ids[n]) * C;
      const float* src = dout + static_cast<std::size_t>(n) * C;
#pragma omp simd
      for (int c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

}  // namespace kvroute
