// Naive double-precision reference ops for tests/test_ops.cpp: slow and
// obviously correct, written straight from the definitions in backend.h and
// attention.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace kvroute::ref {

using Vec = std::vector<double>;

// C[M,N] = alpha * op(A) op(B) + beta * C
inline void matmul(const Vec& A, const Vec& B, Vec& C, int M, int N, int K, bool trans_a, bool trans_b,
                   double alpha, double beta) {
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double s = 0;
      for (int k = 0; k < K; ++k) {
        const double a = trans_a ? A[k * M + m] : A[m * K + k];
        const double b = trans_b ? B[n * K + k] : B[k * N + n];
        s += a * b;
      }
      C[m * N + n] = alpha * s + beta * C[m * N + n];
    }
}

inline Vec rmsnorm(const Vec& x, const Vec& w, int N, int C, double eps, Vec* rstd = nullptr) {
  Vec out(x.size());
  if (rstd) rstd->assign(N, 0);
  for (int n = 0; n < N; ++n) {
    double ss = 0;
    for (int c = 0; c < C; ++c) ss += x[n * C + c] * x[n * C + c];
    const double r = 1.0 / std::sqrt(ss / C + eps);
    if (rstd) (*rstd)[n] = r;
    for (int c = 0; c < C; ++c) out[n * C + c] = x[n * C + c] * r * w[c];
  }
  return out;
}

// Rotate-half RoPE on x[B,T,H,D]; inverse rotates by -angle.
inline Vec rope(const Vec& x, int B, int T, int H, int D, int pos0, double theta, bool inverse = false) {
  Vec y(x);
  const int half = D / 2;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < half; ++i) {
          const double angle = (pos0 + t) * std::pow(theta, -2.0 * i / D) * (inverse ? -1 : 1);
          const std::size_t base = ((static_cast<std::size_t>(b) * T + t) * H + h) * D;
          const double a = x[base + i], c = x[base + i + half];
          y[base + i] = a * std::cos(angle) - c * std::sin(angle);
          y[base + i + half] = a * std::sin(angle) + c * std::cos(angle);
        }
  return y;
}

inline double silu(double g) { return g / (1.0 + std::exp(-g)); }

inline Vec swiglu(const Vec& gate, const Vec& up) {
  Vec out(gate.size());
  for (std::size_t i = 0; i < gate.size(); ++i) out[i] = silu(gate[i]) * up[i];
  return out;
}

// losses[n] = logsumexp(logits[n]) - logits[n][t]; 0 for t < 0.
inline Vec cross_entropy(const Vec& logits, const std::vector<int32_t>& targets, int N, int V) {
  Vec losses(N, 0.0);
  for (int n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    double mx = logits[n * V];
    for (int j = 0; j < V; ++j) mx = std::max(mx, logits[n * V + j]);
    double s = 0;
    for (int j = 0; j < V; ++j) s += std::exp(logits[n * V + j] - mx);
    losses[n] = std::log(s) + mx - logits[n * V + targets[n]];
  }
  return losses;
}

struct AttnShape {
  int B, Tq, Tk, H, Hkv, D, q_pos0;
  double scale;
  long kv_seq_stride;  // 0 = dense
  long seq_stride() const { return kv_seq_stride ? kv_seq_stride : static_cast<long>(Tk) * Hkv * D; }
};

// Materialised-softmax routed attention. k_layers[l] / v_layers[l] are whole layer buffers.
inline void attention(const AttnShape& s, const Vec& q, const std::vector<Vec>& k_layers,
                      const std::vector<Vec>& v_layers, const std::vector<int32_t>& src, Vec& out, Vec& lse) {
  out.assign(static_cast<std::size_t>(s.B) * s.Tq * s.H * s.D, 0.0);
  lse.assign(static_cast<std::size_t>(s.B) * s.H * s.Tq, 0.0);
  const int group = s.H / s.Hkv;
  for (int b = 0; b < s.B; ++b) {
    const Vec& K = k_layers[src[b]];
    const Vec& V = v_layers[src[b]];
    for (int h = 0; h < s.H; ++h) {
      const int kvh = h / group;
      for (int i = 0; i < s.Tq; ++i) {
        const int n_keys = std::min(s.Tk, s.q_pos0 + i + 1);
        std::vector<double> scores(n_keys);
        const double* qi = &q[((static_cast<std::size_t>(b) * s.Tq + i) * s.H + h) * s.D];
        for (int j = 0; j < n_keys; ++j) {
          const double* kj = &K[b * s.seq_stride() + (static_cast<long>(j) * s.Hkv + kvh) * s.D];
          double dot = 0;
          for (int d = 0; d < s.D; ++d) dot += qi[d] * kj[d];
          scores[j] = dot * s.scale;
        }
        double mx = scores[0];
        for (double x : scores) mx = std::max(mx, x);
        double sum = 0;
        for (double& x : scores) sum += (x = std::exp(x - mx));
        double* oi = &out[((static_cast<std::size_t>(b) * s.Tq + i) * s.H + h) * s.D];
        for (int j = 0; j < n_keys; ++j) {
          const double* vj = &V[b * s.seq_stride() + (static_cast<long>(j) * s.Hkv + kvh) * s.D];
          for (int d = 0; d < s.D; ++d) oi[d] += scores[j] / sum * vj[d];
        }
        lse[(static_cast<std::size_t>(b) * s.H + h) * s.Tq + i] = mx + std::log(sum);
      }
    }
  }
}

}  // namespace kvroute::ref
