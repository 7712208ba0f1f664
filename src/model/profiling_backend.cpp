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
  inner()->synchronize();
  const auto t0 = clock::now();
  fn();
  inner()->synchronize();
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

void ProfilingBackend::around(const char* op, const OpCall& call) { timed(op, 0, call); }
void ProfilingBackend::matmul(const float* A, const float* B, float* C, int M, int N, int K, bool trans_a,
                              bool trans_b, float alpha, float beta) {
  // Split by transposes: the model's forward projections are [nt], input gradients [nn],
  // weight gradients [tn].
  static const char* const kinds[2][2] = {{"matmul[nn]", "matmul[nt]"}, {"matmul[tn]", "matmul[tt]"}};
  timed(kinds[trans_a][trans_b], 2.0 * M * N * K,
        [&] { inner()->matmul(A, B, C, M, N, K, trans_a, trans_b, alpha, beta); });
}
void ProfilingBackend::attention_forward(const AttentionForward& p) {
  timed("attention_forward", attention_forward_flops(p.shape), [&] { inner()->attention_forward(p); });
}
void ProfilingBackend::attention_backward(const AttentionBackward& p) {
  timed("attention_backward", 2 * attention_forward_flops(p.shape), [&] { inner()->attention_backward(p); });
}

}  // namespace kvroute
