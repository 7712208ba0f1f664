// Register-blocked GEMM on small bf16 tiles, for the bf16 attention kernels
// (attention_bf16_cpu.cpp): bf16 x bf16 products accumulated in fp32.
//
// Operands are "pair-packed" along the summed dimension k, as AVX512-BF16's VDPBF16PS reads
// them: one uint32_t holds two bf16 values, element k in its low half and k + 1 in its high
// half. A[m][k/2] and B[k/2][n] are row-major (leading dimensions in uint32_t), odd K padded
// with a zero element.
//
// Two kernels, the same numbers:
// - native: VDPBF16PS, where the CPU has AVX512-BF16 (Zen 4/5, Xeon since Cooper Lake).
// - emulated, everywhere: each pair widened to fp32 and added with two FMAs, high half first,
//   in the order VDPBF16PS adds them (c += a1 * b1; c += a0 * b0, each rounded to nearest
//   even). The products of two bf16 values are exact in fp32, so the two kernels agree bit for
//   bit where the instruction adds in that order (checked on an AMD EPYC with avx512_bf16: it does), except that the
//   instruction flushes subnormal inputs and results to zero.
#pragma once

#include <immintrin.h>

#include <bit>
#include <cstdint>

#include "cpu/cpu_math.h"
#include "kvroute/bf16.h"

namespace kvroute::cpu {
namespace {

constexpr int kBf16TileRows = 4;   // M must be a multiple of this
constexpr int kBf16TileCols = 32;  // N must be a multiple of this

// The pair {lo, hi}, each rounded to bf16 (round to nearest even).
[[gnu::always_inline]] inline uint32_t bf16_pair(float lo, float hi) {
  return static_cast<uint32_t>(bf16_from_float(lo)) | static_cast<uint32_t>(bf16_from_float(hi)) << 16;
}

// True where this CPU has the AVX512-BF16 instructions the native kernel needs.
inline bool cpu_has_avx512_bf16() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

// C[M,N] += A[M,K] * B[K,N] (C = A * B with accumulate = false); K2 = ceil(K / 2) pairs.
// Each 4 x 32 block of C stays in registers across the k loop.
#if defined(__x86_64__)
[[gnu::target("avx512f,avx512bf16")]] inline void bf16_tile_gemm_native(float* C, int ldc, const uint32_t* A,
                                                                       int lda, const uint32_t* B, int ldb,
                                                                       int M, int N, int K2, bool accumulate) {
  for (int m0 = 0; m0 < M; m0 += kBf16TileRows) {
    for (int n0 = 0; n0 < N; n0 += kBf16TileCols) {
      __m512 acc[kBf16TileRows][2];
      for (int r = 0; r < kBf16TileRows; ++r) {
        float* c = C + (m0 + r) * ldc + n0;
        acc[r][0] = accumulate ? _mm512_loadu_ps(c) : _mm512_setzero_ps();
        acc[r][1] = accumulate ? _mm512_loadu_ps(c + 16) : _mm512_setzero_ps();
      }
      const uint32_t* b = B + n0;
      for (int k = 0; k < K2; ++k, b += ldb) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 16);
        for (int r = 0; r < kBf16TileRows; ++r) {
          const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(A[(m0 + r) * lda + k]));
          acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
          acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
        }
      }
      for (int r = 0; r < kBf16TileRows; ++r) {
        float* c = C + (m0 + r) * ldc + n0;
        _mm512_storeu_ps(c, acc[r][0]);
        _mm512_storeu_ps(c + 16, acc[r][1]);
      }
    }
  }
}
#else
inline void bf16_tile_gemm_native(float*, int, const uint32_t*, int, const uint32_t*, int, int, int, int, bool) {}
#endif

// The same product on fp32 vectors (any CPU).
inline void bf16_tile_gemm_emulated(float* C, int ldc, const uint32_t* A, int lda, const uint32_t* B, int ldb,
                                    int M, int N, int K2, bool accumulate) {
  const intv high_mask = intv{} + static_cast<int32_t>(0xffff0000u);
  for (int m0 = 0; m0 < M; m0 += kBf16TileRows) {
    for (int n0 = 0; n0 < N; n0 += 2 * kLanes) {
      floatv acc[kBf16TileRows][2] = {};
      for (int r = 0; r < kBf16TileRows && accumulate; ++r) {
        acc[r][0] = load_vec(C + (m0 + r) * ldc + n0);
        acc[r][1] = load_vec(C + (m0 + r) * ldc + n0 + kLanes);
      }
      const uint32_t* b = B + n0;
      for (int k = 0; k < K2; ++k, b += ldb) {
        intv p0, p1;
        std::memcpy(&p0, b, sizeof p0);
        std::memcpy(&p1, b + kLanes, sizeof p1);
        floatv b0_lo = std::bit_cast<floatv>(p0 << 16), b0_hi = std::bit_cast<floatv>(p0 & high_mask);
        floatv b1_lo = std::bit_cast<floatv>(p1 << 16), b1_hi = std::bit_cast<floatv>(p1 & high_mask);
        for (int r = 0; r < kBf16TileRows; ++r) {
          const uint32_t a = A[(m0 + r) * lda + k];
          const float a_lo = std::bit_cast<float>(a << 16), a_hi = std::bit_cast<float>(a & 0xffff0000u);
          acc[r][0] += a_hi * b0_hi;
          acc[r][0] += a_lo * b0_lo;
          acc[r][1] += a_hi * b1_hi;
          acc[r][1] += a_lo * b1_lo;
        }
      }
      for (int r = 0; r < kBf16TileRows; ++r) {
        store_vec(C + (m0 + r) * ldc + n0, acc[r][0]);
        store_vec(C + (m0 + r) * ldc + n0 + kLanes, acc[r][1]);
      }
    }
  }
}

}  // namespace
}  // namespace kvroute::cpu
