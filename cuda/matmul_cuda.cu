// Row-major GEMM on column-major cuBLAS (the mapping: gemm_layout.h).
//
// fp32 precision: one cublasSgemm (no TF32).
// bf16 precision: A and B are rounded to bf16 (bf16_cuda.cu) into two grow-only
// scratch buffers, then one cublasLtMatmul with bf16 operands, fp32 accumulation
// (CUBLAS_COMPUTE_32F) and fp32 C, so callers keep fp32 buffers and the op's
// contract. Each problem shape's descriptors and algorithm (the heuristic's
// first choice) are cached: a training step reuses a handful of shapes. With
// train.deterministic (the default) the heuristic may only choose algorithms
// without a split-K reduction (CUBLASLT_REDUCTION_SCHEME_NONE, gemm_layout.h). There
// is no epilogue: the model has no biases, and the activation (SwiGLU) takes two
// GEMM outputs, so there is nothing to fuse into one GEMM.
#include <stdexcept>
#include <string>

#include "cuda_backend.h"
#include "gemm_layout.h"

namespace kvroute {

static_assert(kLtReductionSchemeNone == CUBLASLT_REDUCTION_SCHEME_NONE, "gemm_layout.h: reduction scheme numbers");
static_assert(kLtReductionSchemeAll == CUBLASLT_REDUCTION_SCHEME_MASK, "gemm_layout.h: reduction scheme numbers");

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
  if (options_.precision == "bf16") {
    const std::size_t na = static_cast<std::size_t>(M) * K, nb = static_cast<std::size_t>(K) * N;
    auto* a16 = static_cast<uint16_t*>(scratch(kScratchBf16A, na * sizeof(uint16_t)));
    auto* b16 = static_cast<uint16_t*>(scratch(kScratchBf16B, nb * sizeof(uint16_t)));
    launch_float_to_bf16(A, a16, na, stream_);
    launch_float_to_bf16(B, b16, nb, stream_);
    lt_matmul_bf16(a16, b16, C, M, N, K, trans_a, trans_b, alpha, beta);
    return;
  }
  const ColMajorGemm g = col_major_gemm_for_row_major(M, N, K, trans_a, trans_b);
  KVR_CUBLAS_CHECK(cublasSgemm(cublas_, g.a.transpose ? CUBLAS_OP_T : CUBLAS_OP_N,
                               g.b.transpose ? CUBLAS_OP_T : CUBLAS_OP_N, g.m, g.n, g.k, &alpha, B, g.a.ld, A,
                               g.b.ld, &beta, C, g.ldc));
}

const CudaBackend::LtPlan& CudaBackend::lt_plan(const LtKey& key) {
  const auto found = lt_plans_.find(key);
  if (found != lt_plans_.end()) return found->second;
  const auto [M, N, K, trans_a, trans_b, align_a, align_b, align_c] = key;
  const ColMajorGemm g = col_major_gemm_for_row_major(M, N, K, trans_a, trans_b);
  LtPlan plan;
  cublasLtMatmulPreference_t pref = nullptr;
  auto destroy = [&] {
    if (pref) (void)cublasLtMatmulPreferenceDestroy(pref);
    if (plan.a) (void)cublasLtMatrixLayoutDestroy(plan.a);
    if (plan.b) (void)cublasLtMatrixLayoutDestroy(plan.b);
    if (plan.c) (void)cublasLtMatrixLayoutDestroy(plan.c);
    if (plan.op) (void)cublasLtMatmulDescDestroy(plan.op);
  };
  try {
    KVR_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = g.a.transpose ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = g.b.transpose ? CUBLAS_OP_T : CUBLAS_OP_N;
    KVR_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
    KVR_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
    // cuBLASLt's A is the row-major B and its B the row-major A (gemm_layout.h).
    KVR_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_16BF, g.a.rows, g.a.cols, g.a.ld));
    KVR_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_16BF, g.b.rows, g.b.cols, g.b.ld));
    KVR_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, CUDA_R_32F, g.m, g.n, g.ldc));
    KVR_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t workspace = kLtWorkspaceBytes;
    KVR_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                          &workspace, sizeof workspace));
    const uint32_t lt_align_a = static_cast<uint32_t>(align_b), lt_align_b = static_cast<uint32_t>(align_a);
    const uint32_t lt_align_c = static_cast<uint32_t>(align_c);
    KVR_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                          &lt_align_a, sizeof lt_align_a));
    KVR_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                          &lt_align_b, sizeof lt_align_b));
    KVR_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                          &lt_align_c, sizeof lt_align_c));
    KVR_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                          &lt_align_c, sizeof lt_align_c));
    // train.deterministic: no split-K reduction (gemm_layout.h), so each output is summed in
    // one fixed sequence.
    const uint32_t reductions = lt_reduction_scheme_mask(options_.deterministic);
    KVR_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                          &reductions, sizeof reductions));
    // The first of the heuristic's choices whose reduction scheme fits the mask (it should
    // offer no other; checked rather than trusted).
    constexpr int kCandidates = 8;
    cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
    int count = 0;
    KVR_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt_, plan.op, plan.a, plan.b, plan.c, plan.c, pref, kCandidates,
                                                    results, &count));
    int chosen = -1;
    for (int i = 0; i < count && chosen < 0; ++i) {
      // An algorithm whose scheme cannot be read is taken on the preference's word (the filter above).
      uint32_t scheme = kLtReductionSchemeNone;
      std::size_t written = 0;
      if (cublasLtMatmulAlgoConfigGetAttribute(&results[i].algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                               sizeof scheme, &written) != CUBLAS_STATUS_SUCCESS)
        scheme = kLtReductionSchemeNone;
      if (results[i].state == CUBLAS_STATUS_SUCCESS && lt_reduction_scheme_allowed(scheme, reductions)) chosen = i;
    }
    if (chosen < 0)
      throw std::runtime_error("matmul (bf16): cuBLASLt offers no algorithm for M=" + std::to_string(M) +
                               " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                               " with C aligned to " + std::to_string(align_c) + " bytes" +
                               (options_.deterministic ? " without a split-K reduction (train.deterministic)" : ""));
    plan.algo = results[chosen].algo;
    (void)cublasLtMatmulPreferenceDestroy(pref);
    pref = nullptr;
  } catch (...) {
    destroy();
    throw;
  }
  return lt_plans_.emplace(key, plan).first->second;
}

void CudaBackend::lt_matmul_bf16(const uint16_t* A, const uint16_t* B, float* C, int M, int N, int K,
                                 bool trans_a, bool trans_b, float alpha, float beta) {
  const LtKey key{M,
                  N,
                  K,
                  trans_a,
                  trans_b,
                  pointer_alignment(reinterpret_cast<std::uintptr_t>(A)),
                  pointer_alignment(reinterpret_cast<std::uintptr_t>(B)),
                  pointer_alignment(reinterpret_cast<std::uintptr_t>(C))};
  const LtPlan& plan = lt_plan(key);
  KVR_CUBLAS_CHECK(cublasLtMatmul(lt_, plan.op, &alpha, B, plan.a, A, plan.b, &beta, C, plan.c, C, plan.c,
                                  &plan.algo, lt_workspace_, kLtWorkspaceBytes, stream_));
}

std::string CudaBackend::peak_gemm_label() const {
  return options_.precision == "bf16" ? "bf16 GEMM (cuBLASLt, fp32 accumulate)" : "sgemm";
}

double CudaBackend::peak_gemm_flops(int n) {
  if (n <= 0) throw std::invalid_argument("peak_gemm_flops: n must be > 0");
  // fp32: bench train's own sgemm probe measures exactly what matmul runs.
  if (options_.precision != "bf16") return 0;
  const std::size_t nn = static_cast<std::size_t>(n) * n;
  const std::size_t op_bytes = (nn * sizeof(uint16_t) + 255) / 256 * 256;
  char* base = static_cast<char*>(scratch(kScratchPeak, 2 * op_bytes + nn * sizeof(float)));
  auto* a = reinterpret_cast<uint16_t*>(base);
  auto* b = reinterpret_cast<uint16_t*>(base + op_bytes);
  auto* c = reinterpret_cast<float*>(base + 2 * op_bytes);
  if (peak_n_ != n) {
    launch_bf16_pattern(a, 2 * op_bytes / sizeof(uint16_t), stream_);  // a and b (and the padding between)
    lt_matmul_bf16(a, b, c, n, n, n, false, false, 1.f, 0.f);        // untimed: plan and first-call setup
    peak_n_ = n;
  }
  cudaEvent_t start = nullptr, stop = nullptr;
  KVR_CUDA_CHECK(cudaEventCreate(&start));
  float ms = 0.f;
  try {
    KVR_CUDA_CHECK(cudaEventCreate(&stop));
    KVR_CUDA_CHECK(cudaEventRecord(start, stream_));
    lt_matmul_bf16(a, b, c, n, n, n, false, false, 1.f, 0.f);
    KVR_CUDA_CHECK(cudaEventRecord(stop, stream_));
    KVR_CUDA_CHECK(cudaEventSynchronize(stop));
    KVR_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  } catch (...) {
    (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
    throw;
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  return ms > 0.f ? 2.0 * n * double(n) * n / (ms * 1e-3) : 0.0;
}

}  // namespace kvroute
