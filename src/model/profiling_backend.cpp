#include "kvroute/profiling_backend.h"

#include <algorithm>
#include <chrono>

namespace kvroute {

double attention_forward_flops(const AttentionShape& s) {
  // Query i sees keys [0, min(Tk, q_pos0 + i + 1)).
  double pairs = 0;
  for (long i = 0; i < s.Tq; ++i) pairs += std::min<long>(s.Tk, static_cast<long>(s.q_pos0) + i + 1);
  return 4.0 * s.head_dim * s.n_heads * s.B * pairs;
}

template <typename Fn>
void ProfilingBackend::timed(const char* op, double flops, Fn&& fn) {
  if (!enabled_) {
    fn();
    return;
  }
  using clock = std::chrono::steady_clock;
  inner_->synchronize();
  const auto t0 = clock::now();
  fn();
  inner_->synchronize();
  const double dt = std::chrono::duration<double>(clock::now() - t0).count();
  OpTiming& t = totals_[op];
  t.op = op;
  ++t.calls;
  t.seconds += dt;
  t.flops += flops;
}

std::vector<OpTiming> ProfilingBackend::timings() const {
  std::vector<OpTiming> out;
  for (const auto& [name, t] : totals_) out.push_back(t);
  std::stable_sort(out.begin(), out.end(), [](const OpTiming& a, const OpTiming& b) { return a.seconds > b.seconds; });
  return out;
}

void ProfilingBackend::copy_to_device(void* dst, const void* host_src, std::size_t bytes) {
  timed("copy_to_device", 0, [&] { inner_->copy_to_device(dst, host_src, bytes); });
}
void ProfilingBackend::copy_to_host(void* host_dst, const void* src, std::size_t bytes) {
  timed("copy_to_host", 0, [&] { inner_->copy_to_host(host_dst, src, bytes); });
}
void ProfilingBackend::copy(void* dst, const void* src, std::size_t bytes) {
  timed("copy", 0, [&] { inner_->copy(dst, src, bytes); });
}
void ProfilingBackend::fill_zero(void* p, std::size_t bytes) {
  timed("fill_zero", 0, [&] { inner_->fill_zero(p, bytes); });
}
void ProfilingBackend::matmul(const float* A, const float* B, float* C, int M, int N, int K, bool trans_a,
                              bool trans_b, float alpha, float beta) {
  // Split by transposes: the model's forward projections are [nt], input gradients [nn],
  // weight gradients [tn].
  static const char* const kinds[2][2] = {{"matmul[nn]", "matmul[nt]"}, {"matmul[tn]", "matmul[tt]"}};
  timed(kinds[trans_a][trans_b], 2.0 * M * N * K, [&] { inner_->matmul(A, B, C, M, N, K, trans_a, trans_b, alpha, beta); });
}
void ProfilingBackend::accumulate(float* y, const float* x, std::size_t n) {
  timed("accumulate", 0, [&] { inner_->accumulate(y, x, n); });
}
void ProfilingBackend::add(float* y, const float* a, const float* b, std::size_t n) {
  timed("add", 0, [&] { inner_->add(y, a, b, n); });
}
void ProfilingBackend::scale(float* x, std::size_t n, float s) {
  timed("scale", 0, [&] { inner_->scale(x, n, s); });
}
double ProfilingBackend::sum_squares(const float* x, std::size_t n) {
  double r = 0;
  timed("sum_squares", 0, [&] { r = inner_->sum_squares(x, n); });
  return r;
}
void ProfilingBackend::embedding_forward(float* out, const int32_t* ids, const float* table, int N, int C) {
  timed("embedding_forward", 0, [&] { inner_->embedding_forward(out, ids, table, N, C); });
}
void ProfilingBackend::embedding_backward(float* dtable, const float* dout, const int32_t* ids, int N, int C) {
  timed("embedding_backward", 0, [&] { inner_->embedding_backward(dtable, dout, ids, N, C); });
}
void ProfilingBackend::rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C,
                                       float eps) {
  timed("rmsnorm_forward", 0, [&] { inner_->rmsnorm_forward(out, rstd, x, w, N, C, eps); });
}
void ProfilingBackend::rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                                        const float* rstd, int N, int C) {
  timed("rmsnorm_backward", 0, [&] { inner_->rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C); });
}
void ProfilingBackend::rope_forward(float* x, int B, int T, int H, int D, int pos0, float theta) {
  timed("rope_forward", 0, [&] { inner_->rope_forward(x, B, T, H, D, pos0, theta); });
}
void ProfilingBackend::rope_backward(float* dx, int B, int T, int H, int D, int pos0, float theta) {
  timed("rope_backward", 0, [&] { inner_->rope_backward(dx, B, T, H, D, pos0, theta); });
}
void ProfilingBackend::swiglu_forward(float* out, const float* gate, const float* up, std::size_t n) {
  timed("swiglu_forward", 0, [&] { inner_->swiglu_forward(out, gate, up, n); });
}
void ProfilingBackend::swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                                       const float* up, std::size_t n) {
  timed("swiglu_backward", 0, [&] { inner_->swiglu_backward(dgate, dup, dout, gate, up, n); });
}
void ProfilingBackend::attention_forward(const AttentionForward& p) {
  timed("attention_forward", attention_forward_flops(p.shape), [&] { inner_->attention_forward(p); });
}
void ProfilingBackend::attention_backward(const AttentionBackward& p) {
  timed("attention_backward", 2 * attention_forward_flops(p.shape), [&] { inner_->attention_backward(p); });
}
void ProfilingBackend::cross_entropy(const float* logits, const int32_t* targets, float* losses, float* dlogits,
                                     int N, int V, float grad_scale) {
  timed("cross_entropy", 0, [&] { inner_->cross_entropy(logits, targets, losses, dlogits, N, V, grad_scale); });
}
void ProfilingBackend::adamw_step(float* param, const float* grad, float* m, float* v, std::size_t n, float lr,
                                  float beta1, float beta2, float eps, float weight_decay, int step,
                                  float grad_scale) {
  timed("adamw_step", 0,
        [&] { inner_->adamw_step(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, step, grad_scale); });
}

}  // namespace kvroute
