// A Backend decorator that times every op call of the backend it wraps, for
// `kvroute bench train --profile`. Each call is bracketed by synchronize() so an
// asynchronous backend (CUDA) is timed too; the model code is unchanged.
// Memory management (alloc/free) is forwarded untimed.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "kvroute/backend.h"

namespace kvroute {

struct OpTiming {
  std::string op;      // the Backend method, e.g. "attention_backward"; matmul is split by
                       // transposes: "matmul[nt]" (A B^T), "matmul[nn]", "matmul[tn]" (A^T B)
  long calls = 0;
  double seconds = 0;  // wall time summed over calls
  // Model FLOPs of those calls, 0 for ops counted as memory-bound: matmul 2*M*N*K; attention
  // forward 4*head_dim*n_heads per visible (query, key) pair, backward twice that (the same
  // accounting as the 6*L*T*d_model per-token term of the bench's FLOP formula).
  double flops = 0;
};

class ProfilingBackend final : public Backend {
 public:
  // inner must outlive this object.
  explicit ProfilingBackend(Backend* inner) : inner_(inner) {}

  // Totals per op since construction or the last reset(), slowest first.
  std::vector<OpTiming> timings() const;
  void reset() { totals_.clear(); }
  // While disabled, calls are forwarded without timing (e.g. during warm-up).
  void set_enabled(bool on) { enabled_ = on; }

  Device device() const override { return inner_->device(); }
  std::string name() const override { return inner_->name(); }
  void* alloc_bytes(std::size_t bytes) override { return inner_->alloc_bytes(bytes); }
  void free_bytes(void* p) override { inner_->free_bytes(p); }
  void copy_to_device(void* dst, const void* host_src, std::size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, std::size_t bytes) override;
  void copy(void* dst, const void* src, std::size_t bytes) override;
  void fill_zero(void* p, std::size_t bytes) override;
  void synchronize() override { inner_->synchronize(); }
  BackendMemory memory() const override { return inner_->memory(); }
  double peak_gemm_flops(int n) override { return inner_->peak_gemm_flops(n); }  // not timed as an op
  std::string peak_gemm_label() const override { return inner_->peak_gemm_label(); }
  void register_weights(const float* w, std::size_t n) override { inner_->register_weights(w, n); }

  void matmul(const float* A, const float* B, float* C, int M, int N, int K, bool trans_a, bool trans_b,
              float alpha, float beta) override;
  void accumulate(float* y, const float* x, std::size_t n) override;
  void add(float* y, const float* a, const float* b, std::size_t n) override;
  void scale(float* x, std::size_t n, float s) override;
  double sum_squares(const float* x, std::size_t n) override;
  void embedding_forward(float* out, const int32_t* ids, const float* table, int N, int C) override;
  void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int N, int C) override;
  void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps) override;
  void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w, const float* rstd,
                        int N, int C) override;
  void rope_forward(float* x, int B, int T, int H, int D, int pos0, float theta) override;
  void rope_backward(float* dx, int B, int T, int H, int D, int pos0, float theta) override;
  void swiglu_forward(float* out, const float* gate, const float* up, std::size_t n) override;
  void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                       std::size_t n) override;
  void attention_forward(const AttentionForward& p) override;
  void attention_backward(const AttentionBackward& p) override;
  void cross_entropy(const float* logits, const int32_t* targets, float* losses, float* dlogits, int N, int V,
                     float grad_scale) override;
  void adamw_step(float* param, const float* grad, float* m, float* v, std::size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int step, float grad_scale) override;

 private:
  // Runs fn between two synchronize() calls and adds its time to op's total.
  template <typename Fn>
  void timed(const char* op, double flops, Fn&& fn);

  Backend* inner_;
  bool enabled_ = true;
  std::map<std::string, OpTiming> totals_;
};

// Model FLOPs of one attention forward: 4 * head_dim * n_heads per visible (query, key) pair.
double attention_forward_flops(const AttentionShape& s);

}  // namespace kvroute
