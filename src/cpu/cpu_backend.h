// The CPU backend: oneDNN sgemm for matmul (or, with precision bf16, oneDNN's bf16 matmul:
// bf16_matmul_cpu.h), OpenMP loops for everything else.
// Every op is deterministic: each output element is written by one thread in a
// fixed order, so results do not depend on the thread count or schedule.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/bf16_matmul_cpu.h"
#include "kvroute/backend.h"

namespace kvroute {

class CpuBackend final : public Backend {
 public:
  // options.precision: "fp32" or "bf16" ("auto" is resolved by make_backend).
  explicit CpuBackend(const BackendOptions& options = {});
  // With bf16, a chosen path (tests: the emulated path on a CPU that has the native one).
  CpuBackend(const BackendOptions& options, cpu::Bf16Path bf16_path);
  Device device() const override { return Device::CPU; }
  std::string name() const override { return "cpu"; }
  const BackendOptions& options() const { return options_; }
  // Which bf16 path matmul takes; nullptr with fp32.
  const cpu::Bf16Matmul* bf16() const { return bf16_.get(); }

  // cpu_backend.cpp
  void* alloc_bytes(std::size_t bytes) override;
  void free_bytes(void* p) override;
  void copy_to_device(void* dst, const void* host_src, std::size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, std::size_t bytes) override;
  void copy(void* dst, const void* src, std::size_t bytes) override;
  void fill_zero(void* p, std::size_t bytes) override;
  void synchronize() override {}
  void register_weights(const float* w, std::size_t n) override;
  void accumulate(float* y, const float* x, std::size_t n) override;
  void add(float* y, const float* a, const float* b, std::size_t n) override;
  void scale(float* x, std::size_t n, float s) override;
  double sum_squares(const float* x, std::size_t n) override;

  // matmul_cpu.cpp
  void matmul(const float* A, const float* B, float* C, int M, int N, int K, bool trans_a, bool trans_b,
              float alpha, float beta) override;
  // With bf16: the bf16 GEMM's own FLOP/s on operands kept between calls, and its kernel.
  double peak_gemm_flops(int n) override;
  std::string peak_gemm_label() const override;

  // embedding_cpu.cpp
  void embedding_forward(float* out, const int32_t* ids, const float* table, int N, int C) override;
  void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int N, int C) override;

  // rmsnorm_cpu.cpp
  void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C,
                       float eps) override;
  void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                        const float* rstd, int N, int C) override;

  // rope_cpu.cpp
  void rope_forward(float* x, int B, int T, int H, int D, int pos0, const RopeSpec& rope) override;
  void rope_backward(float* dx, int B, int T, int H, int D, int pos0, const RopeSpec& rope) override;

  // bias_cpu.cpp
  void bias_forward(float* y, const float* b, int N, int C) override;
  void bias_backward(float* db, const float* dy, int N, int C) override;

  // swiglu_cpu.cpp
  void swiglu_forward(float* out, const float* gate, const float* up, std::size_t n) override;
  void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                       std::size_t n) override;

  // attention_cpu.cpp (fp32), or with bf16 at head_dim 64 and 128 attention_bf16_cpu.cpp, as on CUDA
  void attention_forward(const AttentionForward& p) override;
  void attention_backward(const AttentionBackward& p) override;
  // Which path the bf16 attention takes (the native one needs AVX512-BF16).
  cpu::Bf16Path bf16_attention_path() const { return bf16_attention_path_; }

  // cross_entropy_cpu.cpp
  void cross_entropy(const float* logits, const int32_t* targets, float* losses, float* dlogits, int N,
                     int V, float grad_scale) override;

  // adamw_cpu.cpp
  void adamw_step(float* param, const float* grad, float* m, float* v, std::size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int step, float grad_scale) override;

 private:
  // Tells the bf16 matmul that bytes at dst were written (its copy of the weights may be stale).
  void written(const void* dst, std::size_t bytes) {
    if (bf16_) bf16_->written(dst, bytes);
  }

  // Whether attention of this shape runs the bf16 kernels.
  bool bf16_attention(const AttentionShape& s) const { return bf16_ && attention_bf16_head_dim(s.head_dim); }

  BackendOptions options_;
  std::unique_ptr<cpu::Bf16Matmul> bf16_;
  cpu::Bf16Path bf16_attention_path_ = cpu::Bf16Path::Emulated;
  std::vector<float> peak_operands_;  // peak_gemm_flops' n x n operands
  std::unique_ptr<cpu::Bf16Matmul> peak_probe_;  // and its bf16 GEMM
};

namespace cpu {

// Argument checks shared by the CPU ops: throw with the op's name in the message.
inline void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

// Element-wise loops below this size run on one thread (fork/join costs more).
constexpr std::size_t kParallelMinElements = 1 << 15;

}  // namespace cpu
}  // namespace kvroute
