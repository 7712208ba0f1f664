// Dense matmul through oneDNN's row-major sgemm.
#include <oneapi/dnnl/dnnl.h>

#include <stdexcept>
#include <string>

#include "cpu/cpu_backend.h"

namespace kvroute {

void CpuBackend::matmul(const float* A, const float* B, float* C, int M, int N, int K, bool trans_a,
                        bool trans_b, float alpha, float beta) {
  cpu::require(M >= 0 && N >= 0 && K >= 0, "matmul", "negative dimension");
  if (M == 0 || N == 0) return;
  cpu::require(C != nullptr, "matmul", "null C");
  if (K == 0) {  // op(A)*op(B) is all zeros; sgemm may reject K == 0
    const std::size_t n = static_cast<std::size_t>(M) * N;
    if (beta == 0.f) {
      fill_zero(C, n * sizeof(float));
    } else {
      scale(C, n, beta);
    }
    return;
  }
  cpu::require(A && B, "matmul", "null A or B");
  const dnnl_dim_t lda = trans_a ? M : K;
  const dnnl_dim_t ldb = trans_b ? K : N;
  const dnnl_dim_t ldc = N;
  const dnnl_status_t status = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda,
                                          B, ldb, beta, C, ldc);
  if (status != dnnl_success)
    throw std::runtime_error("matmul: dnnl_sgemm failed with status " + std::to_string(status));
}

}  // namespace kvroute
