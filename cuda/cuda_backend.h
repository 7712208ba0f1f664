// The CUDA backend (fp32): cuBLAS for matmul, hand-written kernels for the rest.
// Every op is enqueued on one stream owned by the backend; copy_to_host and
// sum_squares (which returns a host value) synchronise with it, the rest are
// asynchronous. Every op is deterministic: no atomics, and every reduction runs
// in a fixed order for a given problem size.
//
// Each op's kernels live in their own file (matmul_cuda.cu, elementwise_cuda.cu,
// embedding_cuda.cu, rmsnorm_cuda.cu, rope_cuda.cu, cross_entropy_cuda.cu,
// adamw_cuda.cu, attention_cuda.cu); memory, streams and scratch live in
// cuda_backend.cu. This header is for .cu files only (it includes CUDA headers).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <vector>

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

class CudaBackend final : public Backend {
 public:
  CudaBackend();
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
  void rope_forward(float* x, int B, int T, int H, int D, int pos0, float theta) override;
  void rope_backward(float* dx, int B, int T, int H, int D, int pos0, float theta) override;

  // attention_cuda.cu
  void attention_forward(const AttentionForward& p) override;
  void attention_backward(const AttentionBackward& p) override;

  // cross_entropy_cuda.cu
  void cross_entropy(const float* logits, const int32_t* targets, float* losses, float* dlogits, int N, int V,
                     float grad_scale) override;

  // adamw_cuda.cu
  void adamw_step(float* param, const float* grad, float* m, float* v, std::size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int step, float grad_scale) override;

  cudaStream_t stream() const { return stream_; }

 private:
  void release() noexcept;

  // Grow-only device scratch buffers, one per purpose, so ops never allocate
  // in the steady state. Growing frees the old buffer; cudaFree synchronises
  // the device, so no kernel still in flight can be using it.
  enum ScratchSlot { kScratchReduce, kScratchNormDw, kScratchAttnDelta, kScratchCount };
  void* scratch(ScratchSlot slot, std::size_t bytes);

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
