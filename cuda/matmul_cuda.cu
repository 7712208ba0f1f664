// Row-major fp32 GEMM through column-major cublasSgemm.
//
// A row-major [R, C] matrix is, byte for byte, a column-major [C, R] matrix:
// its transpose. So row-major C = op(A) op(B) is column-major
// C^T = op(B)^T op(A)^T, i.e. one sgemm with the operands swapped and M, N
// exchanged. The leading dimensions are the row lengths of the stored arrays.
#include <stdexcept>
#include <string>

#include "cuda_backend.h"

namespace kvroute {

void CudaBackend::matmul(const float* A, const float* B, float* C, int M, int N, int K, bool trans_a,
                         bool trans_b, float alpha, float beta) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("matmul: negative dimension");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // op(A) op(B) is all zeros; sgemm rejects K == 0 leading dimensions
    const std::size_t n = static_cast<std::size_t>(M) * N;
    if (beta == 0.f) {
      fill_zero(C, n * sizeof(float));
    } else {
      scale(C, n, beta);
    }
    return;
  }
  // Stored A: [M, K] (lda = K) or, transposed, [K, M] (lda = M).
  // Stored B: [K, N] (ldb = N) or, transposed, [N, K] (ldb = K).
  const int lda = trans_a ? M : K;
  const int ldb = trans_b ? K : N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  // Column-major: C^T [N, M] = op(B)^T [N, K] * op(A)^T [K, M], ldc = N.
  KVR_CUBLAS_CHECK(cublasSgemm(cublas_, op_b, op_a, N, M, K, &alpha, B, ldb, A, lda, &beta, C, N));
}

}  // namespace kvroute
