// How a row-major GEMM of the Backend interface maps onto column-major cuBLAS(Lt).
// Plain C++ (no CUDA headers) so tests/test_bf16_math.cpp checks the mapping on the CPU.
//
// A row-major [R, C] array is, byte for byte, a column-major [C, R] array: its transpose.
// So row-major C[M,N] = op(A) op(B) is column-major C^T[N,M] = op(B)^T op(A)^T: one GEMM
// with the operands swapped and M, N exchanged; leading dimensions are the row lengths of
// the stored arrays.
#pragma once

#include <cstdint>

namespace kvroute {

// One operand as cuBLAS sees it: a column-major rows x cols array with leading dimension ld,
// used transposed or not.
struct ColMajorOperand {
  bool transpose = false;
  int rows = 0, cols = 0, ld = 0;
};

// D[m, n] = op(a)[m, k] * op(b)[k, n], all column-major; D has leading dimension ldc.
struct ColMajorGemm {
  int m = 0, n = 0, k = 0;
  ColMajorOperand a, b;  // a is the row-major B, b the row-major A
  int ldc = 0;
};

// A stored [M,K] (or [K,M] if trans_a), B stored [K,N] (or [N,K] if trans_b), C [M,N], all row-major.
inline ColMajorGemm col_major_gemm_for_row_major(int M, int N, int K, bool trans_a, bool trans_b) {
  ColMajorGemm g;
  g.m = N;
  g.n = M;
  g.k = K;
  g.a.transpose = trans_b;  // stored B is column-major [N,K] (ld N), or [K,N] (ld K) when trans_b
  g.a.rows = trans_b ? K : N;
  g.a.cols = trans_b ? N : K;
  g.a.ld = g.a.rows;
  g.b.transpose = trans_a;  // stored A is column-major [K,M] (ld K), or [M,K] (ld M) when trans_a
  g.b.rows = trans_a ? M : K;
  g.b.cols = trans_a ? K : M;
  g.b.ld = g.b.rows;
  g.ldc = N;
  return g;
}

// Largest power of two (at most 256) dividing the address: what cuBLASLt's heuristic is told
// about a buffer's alignment (its default assumption is 256 bytes).
inline int pointer_alignment(std::uintptr_t address) {
  int a = 1;
  while (a < 256 && address % (2u * a) == 0) a *= 2;
  return a;
}

// cuBLASLt's reduction schemes for a dot product split over K ("split-K"), as
// cublasLtReductionScheme_t numbers them (matmul_cuda.cu static_asserts the values).
// NONE: each output element is summed in one sequence over K. The other three add
// partial sums computed in parallel (in place with counters, or through workspace).
inline constexpr uint32_t kLtReductionSchemeNone = 0;
inline constexpr uint32_t kLtReductionSchemeAll = 0x7;

// CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK for the bf16 GEMMs. With
// train.deterministic (the default) only NONE: one summation order per output element,
// which no scheduling of split-K parts can change, whatever algorithm the heuristic
// picks. Otherwise every scheme (cuBLASLt's default).
inline uint32_t lt_reduction_scheme_mask(bool deterministic) {
  return deterministic ? kLtReductionSchemeNone : kLtReductionSchemeAll;
}

// Whether an algorithm whose CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME is `scheme` fits the
// mask: NONE always does; any other scheme only when its bit is in the mask. The heuristic
// should offer nothing else; matmul_cuda.cu checks what it offers instead of trusting it.
inline bool lt_reduction_scheme_allowed(uint32_t scheme, uint32_t mask) {
  return scheme == kLtReductionSchemeNone || ((scheme & ~kLtReductionSchemeAll) == 0 && (scheme & mask) == scheme);
}

}  // namespace kvroute
