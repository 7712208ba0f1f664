// The CUDA backend: cuBLAS(Lt) for matmul, hand-written kernels for the rest.
// Every op is enqueued on one stream owned by the backend; copy_to_host and
// sum_squares (which returns a host value) synchronise with it, the rest are
// asynchronous. With options.deterministic (the default) every op is
// deterministic: no atomics, and every reduction runs in a fixed order for a
// given problem size (bf16 GEMMs: no cuBLASLt split-K reduction, matmul_cuda.cu).
// deterministic = false changes attention backward (dQ accumulated with float
// atomics, see attention_cuda.cu) and lets cuBLASLt split K.
//
// Precision (BackendOptions::precision): "fp32" multiplies with cublasSgemm (no
// TF32). "bf16" rounds both matmul operands to bf16 (round to nearest even) into
// scratch and runs cublasLtMatmul with fp32 accumulation and an fp32 output,
// alpha/beta as in fp32 (matmul_cuda.cu), and runs attention forward and backward
// on tensor cores for head_dim 64 and 128 (attention_bf16_cuda.cu,
// attention_bf16_backward_cuda.cu) where the device has the shared memory for them
// (attention_plan.h; else the fp32 kernels, said once on stderr), or through cuDNN's fused
// attention at training shapes where cuDNN is there (cudnn_attention_plan.h). Weights,
// gradients, AdamW state, activations and all other ops stay fp32.
//
// Each op's kernels live in their own file (matmul_cuda.cu, elementwise_cuda.cu,
// embedding_cuda.cu, rmsnorm_cuda.cu, rope_cuda.cu, bias_cuda.cu, cross_entropy_cuda.cu,
// adamw_cuda.cu, attention_cuda.cu, cudnn_attention*); memory, streams and scratch live in
// cuda_backend.cu. This header is for .cu files only (it includes CUDA headers).
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "cudnn_attention.h"
#include "kvroute/attention_dims.h"
#include "kvroute/backend.h"

namespace kvroute {

// Throw std::runtime_error("<file>:<line>: <expr> failed: <CUDA/cuBLAS message>").
[[noreturn]] void cuda_fail(const char* expr, const char* message, const char* file, int line);

#define KVR_CUDA_CHECK(expr)                                                             \
  do {                                                                                   \
    const cudaError_t kvr_err_ = (expr);                                                 \
    if (kvr_err_ != cudaSuccess)                                                         \
      ::kvroute::cuda_fail(#expr, cudaGetErrorString(kvr_err_), __FILE__, __LINE__);     \
  } while (0)

#define KVR_CUBLAS_CHECK(expr)                                                           \
  do {                                                                                   \
    const cublasStatus_t kvr_st_ = (expr);                                               \
    if (kvr_st_ != CUBLAS_STATUS_SUCCESS)                                                \
      ::kvroute::cuda_fail(#expr, cublasGetStatusString(kvr_st_), __FILE__, __LINE__);   \
  } while (0)

// After a kernel launch: reports bad launch configurations immediately.
#define KVR_KERNEL_CHECK() KVR_CUDA_CHECK(cudaGetLastError())

// Number of blocks for a grid-stride loop over n elements (n > 0).
inline unsigned grid_for(std::size_t n, int block, std::size_t max_blocks = 65535u * 16u) {
  const std::size_t blocks = (n + block - 1) / block;
  return static_cast<unsigned>(blocks < max_blocks ? blocks : max_blocks);
}

// bf16_cuda.cu: y[i] = bf16_from_float(x[i]) (kvroute/bf16.h), on `stream`.
void launch_float_to_bf16(const float* x, uint16_t* y, std::size_t n, cudaStream_t stream);
// y[i] = a bf16 value in [-0.5, 0.5) hashed from i (operands for peak_gemm_flops: zeros would be unrealistic).
void launch_bf16_pattern(uint16_t* y, std::size_t n, cudaStream_t stream);

// attention_bf16_cuda.cu: the tensor-core attention forward used in bf16 precision (AttentionDims:
// kvroute/attention_dims.h, the front every attention implementation shares).
// table: [K base of b = 0..B-1, V base of b = 0..B-1] on the device, as the fp32 kernel.
void launch_attention_forward_bf16(const AttentionDims& a, const float* q, float* const* table, float* out,
                                   float* lse, cudaStream_t stream);
// attention_bf16_backward_cuda.cu: its backward (dq, dK, dV added into; delta = dout . out per
// row [B, H, Tq]). table: [K..., V..., dK..., dV...] bases per sequence.
void launch_attention_backward_bf16(const AttentionDims& a, const float* q, float* const* table,
                                    const float* dout, const float* lse, const float* delta, float* dq,
                                    cudaStream_t stream);

// cudnn_attention_cuda.cu: the casts around cuDNN attention. dst[i * per + r] = bf16(bases[i][r]);
// y = float(x); bases[i][r] += float(src[i * per + r]). n elements in all; bases is a device table.
void launch_gather_to_bf16(float* const* bases, long per, std::size_t n, uint16_t* dst, cudaStream_t stream);
void launch_bf16_to_float(const uint16_t* x, float* y, std::size_t n, cudaStream_t stream);
void launch_add_bf16(float* const* bases, long per, std::size_t n, const uint16_t* src, cudaStream_t stream);

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const BackendOptions& options);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::CUDA; }
  std::string name() const override { return "cuda"; }

  // cuda_backend.cu
  void* alloc_bytes(std::size_t bytes) override;
  void free_bytes(void* p) override;
  void copy_to_device(void* dst, const void* host_src, std::size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, std::size_t bytes) override;
  void copy(void* dst, const void* src, std::size_t bytes) override;
  void fill_zero(void* p, std::size_t bytes) override;
  void synchronize() override;
  BackendMemory memory() const override;

  // matmul_cuda.cu: one n^3 GEMM in the matmul precision on kept operands (bf16 in, fp32 out; or sgemm).
  double peak_gemm_flops(int n) override;
  std::string peak_gemm_label() const override;
  const BackendOptions& options() const { return options_; }

  // matmul_cuda.cu
  void matmul(const float* A, const float* B, float* C, int M, int N, int K, bool trans_a, bool trans_b,
              float alpha, float beta) override;

  // elementwise_cuda.cu
  void accumulate(float* y, const float* x, std::size_t n) override;
  void add(float* y, const float* a, const float* b, std::size_t n) override;
  void scale(float* x, std::size_t n, float s) override;
  double sum_squares(const float* x, std::size_t n) override;
  void swiglu_forward(float* out, const float* gate, const float* up, std::size_t n) override;
  void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                       std::size_t n) override;

  // embedding_cuda.cu
  void embedding_forward(float* out, const int32_t* ids, const float* table, int N, int C) override;
  void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int N, int C) override;

  // rmsnorm_cuda.cu
  void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C,
                       float eps) override;
  void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                        const float* rstd, int N, int C) override;

  // rope_cuda.cu
  void rope_forward(float* x, int B, int T, int H, int D, int pos0, const RopeSpec& rope) override;
  void rope_backward(float* dx, int B, int T, int H, int D, int pos0, const RopeSpec& rope) override;

  // bias_cuda.cu
  void bias_forward(float* y, const float* b, int N, int C) override;
  void bias_backward(float* db, const float* dy, int N, int C) override;

  // attention_cuda.cu
  void attention_forward(const AttentionForward& p) override;
  void attention_backward(const AttentionBackward& p) override;

  // cross_entropy_cuda.cu. A target >= V is reported by the next copy_to_host, synchronize or
  // sum_squares (throw_device_errors).
  void cross_entropy(const float* logits, const int32_t* targets, float* losses, float* dlogits, int N, int V,
                     float grad_scale) override;

  // adamw_cuda.cu
  void adamw_step(float* param, const float* grad, float* m, float* v, std::size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int step, float grad_scale) override;

  cudaStream_t stream() const { return stream_; }
  int device_ordinal() const { return device_; }  // the CUDA device this backend runs on

 private:
  void release() noexcept;

  // Grow-only device scratch buffers, one per purpose, so ops never allocate
  // in the steady state. Growing frees the old buffer; cudaFree synchronises
  // the device, so no kernel still in flight can be using it.
  enum ScratchSlot {
    kScratchReduce,
    kScratchNormDw,
    kScratchBiasDb,
    kScratchAttnDelta,
    kScratchBf16A,   // bf16 copy of matmul's A
    kScratchBf16B,   // bf16 copy of matmul's B
    kScratchPeak,    // peak_gemm_flops operands
    kScratchCudnn,   // cuDNN attention: bf16 operands and results, then cuDNN's workspace
    kScratchCount
  };
  void* scratch(ScratchSlot slot, std::size_t bytes);

  // bf16 GEMM through cuBLASLt on bf16 operands laid out as matmul's A and B; fp32 C.
  void lt_matmul_bf16(const uint16_t* A, const uint16_t* B, float* C, int M, int N, int K, bool trans_a,
                      bool trans_b, float alpha, float beta);
  // One cuBLASLt plan per problem: descriptors and the heuristic's algorithm.
  struct LtPlan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // (M, N, K, trans_a, trans_b, alignment in bytes of A, B and C)
  using LtKey = std::tuple<int, int, int, bool, bool, int, int, int>;
  const LtPlan& lt_plan(const LtKey& key);
  void track_alloc(void* p, std::size_t bytes);
  // cross_entropy_cuda.cu: after the stream has been synchronised, throws (and clears) the
  // first target >= V a cross_entropy call since the last check has met, as the CPU backend would.
  void throw_device_errors();
  void track_free(void* p);
  // cudnn_attention_cuda.cu: the attention path of a call (cudnn_attention_plan.h), said once per
  // distinct reason on stderr; throws when no path fits this GPU.
  AttentionPath attention_path(const AttentionDims& a);
  // Empty when cuDNN runs this shape (starting cuDNN and building both directions' graphs at
  // the first call), else why not.
  std::string cudnn_unavailable_for(const AttentionDims& a);
  void attention_forward_cudnn(const AttentionForward& p, const AttentionDims& a);
  void attention_backward_cudnn(const AttentionBackward& p, const AttentionDims& a);
  void kv_to_bf16(const float* const* layers, const int32_t* src, const AttentionDims& a, uint16_t* dst);
  void add_kv_grad(float* const* layers, const int32_t* src, const AttentionDims& a, const uint16_t* grad);

  BackendOptions options_;
  cublasLtHandle_t lt_ = nullptr;
  void* lt_workspace_ = nullptr;
  static constexpr std::size_t kLtWorkspaceBytes = 32u << 20;  // NVIDIA's recommendation for Hopper
  std::map<LtKey, LtPlan> lt_plans_;
  int peak_n_ = 0;  // size of the operands in kScratchPeak
  int device_ = 0;
  // Bad cross_entropy targets: device words [call's smallest (row << 32 | target), latched
  // key, its V] (~0 = none), and a pinned host copy of the last two, refreshed after every call.
  unsigned long long* ce_error_ = nullptr;
  unsigned long long* ce_error_host_ = nullptr;
  bool ce_error_pending_ = false;  // a cross_entropy ran since the last check
  std::size_t smem_optin_ = 0;          // cudaDevAttrMaxSharedMemoryPerBlockOptin of device_
  std::set<std::string> attention_path_said_;  // attention path lines already on stderr
  std::unique_ptr<CudnnAttention> cudnn_;       // null until asked, or where cuDNN cannot run
  bool cudnn_tried_ = false;
  std::string cudnn_unavailable_;               // why cudnn_ is null
  std::map<CudnnSdpaKey, std::string> cudnn_shape_unavailable_;  // per forward key: empty, or cuDNN's refusal

  std::unordered_map<void*, std::size_t> allocations_;  // every device allocation and its size
  std::size_t in_use_bytes_ = 0, peak_bytes_ = 0;
  long n_allocations_ = 0;

  // Copies a small host table of device pointers to device memory, in stream
  // order, and returns the device copy. The tables go through a ring of pinned
  // staging slots: a slot's host side is reused only after the event recorded
  // behind its previous copy has completed, and its device side is rewritten
  // by a copy that the stream orders after every kernel that read it. So the
  // host may run up to kPtrSlots calls ahead of the GPU without waiting.
  void* const* upload_pointers(const std::vector<void*>& ptrs);

  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;

  void* scratch_[kScratchCount] = {};
  std::size_t scratch_bytes_[kScratchCount] = {};

  static constexpr int kPtrSlots = 32;
  std::size_t ptr_cap_ = 0;       // pointers per slot
  void** ptr_host_ = nullptr;     // pinned, kPtrSlots * ptr_cap_
  void** ptr_dev_ = nullptr;      // device, kPtrSlots * ptr_cap_
  cudaEvent_t ptr_events_[kPtrSlots] = {};
  bool ptr_pending_[kPtrSlots] = {};
  int ptr_next_ = 0;
};

}  // namespace kvroute
