// Register-blocked GEMM on small tiles, for the attention kernels: small
// enough that calling oneDNN per tile would cost more than the arithmetic.
#pragma once

#include "cpu/cpu_math.h"

namespace kvroute::cpu {
namespace {

constexpr int kTileRows = 4;             // M must be a multiple of this
constexpr int kTileCols = 2 * kLanes;    // N must be a multiple of this

// GCC otherwise folds the B loads into each of the four FMAs that use them, which makes the
// kernel load-bound (~45 instead of ~65 GFLOP/s per core on Zen 3).
[[gnu::always_inline]] inline void keep_in_register(floatv& v) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(v));
#else
  (void)v;
#endif
}

// C[M,N] += A[M,K] * B[K,N] (or C = A * B with accumulate = false), row-major with leading
// dimensions lda, ldb, ldc. Each 4 x (2 vectors) block of C stays in registers across the K loop.
template <bool accumulate = true>
inline void tile_gemm(float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int N,
                      int K) {
  for (int m0 = 0; m0 < M; m0 += kTileRows) {
    for (int n0 = 0; n0 < N; n0 += kTileCols) {
      floatv acc[kTileRows][2] = {};
      for (int r = 0; r < kTileRows && accumulate; ++r) {
        acc[r][0] = load_vec(C + (m0 + r) * ldc + n0);
        acc[r][1] = load_vec(C + (m0 + r) * ldc + n0 + kLanes);
      }
      const float* b = B + n0;
      for (int k = 0; k < K; ++k, b += ldb) {
        floatv b0 = load_vec(b), b1 = load_vec(b + kLanes);
        keep_in_register(b0);
        keep_in_register(b1);
        for (int r = 0; r < kTileRows; ++r) {
          const float a = A[(m0 + r) * lda + k];
          acc[r][0] += a * b0;
          acc[r][1] += a * b1;
        }
      }
      for (int r = 0; r < kTileRows; ++r) {
        store_vec(C + (m0 + r) * ldc + n0, acc[r][0]);
        store_vec(C + (m0 + r) * ldc + n0 + kLanes, acc[r][1]);
      }
    }
  }
}

}  // namespace
}  // namespace kvroute::cpu
