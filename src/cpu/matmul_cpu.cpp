// Dense matmul: oneDNN's row-major sgemm (fp32), or its bf16 matmul (bf16_matmul_cpu.h).
#include <oneapi/dnnl/dnnl.h>

#include <chrono>
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
  written(C, static_cast<std::size_t>(M) * N * sizeof(float));
  if (bf16_) {
    bf16_->matmul(A, B, C, M, N, K, trans_a, trans_b, alpha, beta);
    return;
  }
  const dnnl_dim_t lda = trans_a ? M : K;
  const dnnl_dim_t ldb = trans_b ? K : N;
  const dnnl_dim_t ldc = N;
  const dnnl_status_t status = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda,
                                          B, ldb, beta, C, ldc);
  if (status != dnnl_success)
    throw std::runtime_error("matmul: dnnl_sgemm failed with status " + std::to_string(status));
}

double CpuBackend::peak_gemm_flops(int n) {
  if (!bf16_ || n <= 0) return 0;  // fp32: bench train times matmul() itself (an sgemm)
  // The weights-like operand B is registered, as the model's weights are, so the probe times
  // the GEMM and the rounding of one operand, as a training matmul does.
  const std::size_t nn = static_cast<std::size_t>(n) * n;
  if (peak_operands_.size() != 3 * nn) {
    peak_operands_.assign(3 * nn, 0.f);
    peak_probe_.reset();  // its registered operand and primitive are for the old size
    for (std::size_t i = 0; i < 2 * nn; ++i) peak_operands_[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.f - 0.5f;
  }
  float* a = peak_operands_.data();
  float* b = a + nn;
  float* c = b + nn;
  if (!peak_probe_) {  // kept between calls: its primitive and rounded operand are made once
    peak_probe_ = std::make_unique<cpu::Bf16Matmul>(bf16_->path());
    peak_probe_->register_weights(b, nn);
    peak_probe_->matmul(a, b, c, n, n, n, false, false, 1.f, 0.f);  // untimed: creates the primitive
  }
  cpu::Bf16Matmul& probe = *peak_probe_;
  const auto t0 = std::chrono::steady_clock::now();
  probe.matmul(a, b, c, n, n, n, false, false, 1.f, 0.f);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * n * n * n / s;
}

std::string CpuBackend::peak_gemm_label() const {
  if (!bf16_) return "sgemm";
  return bf16_->path() == cpu::Bf16Path::Native ? "bf16 GEMM (oneDNN, " + cpu::onednn_cpu_isa() + ")"
                                                : "bf16-rounded sgemm";
}

}  // namespace kvroute
