// The shape of one routed attention call with its derived strides, validated once per call:
// shared by the fp32 kernels (attention_cpu.cpp) and the bf16 ones (attention_bf16_cpu.cpp),
// so both refuse the same inputs with the same messages.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>

#include "cpu/cpu_backend.h"
#include "kvroute/attention.h"

namespace kvroute::cpu {

struct AttentionGeometry {
  int B, Tq, Tk, H, Hkv, D, group;
  long q_pos0;
  float scale;
  std::size_t q_row;   // elements between time steps in q/out/dq: H * D
  std::size_t kv_row;  // elements between time steps in K/V: Hkv * D
  std::size_t kv_seq;  // elements between sequences in K/V

  bool empty() const { return B == 0 || Tq == 0; }
  // Query i (relative) sees keys [0, keys_visible(i)).
  int keys_visible(long i) const { return static_cast<int>(std::min<long>(Tk, q_pos0 + i + 1)); }
  std::size_t q_offset(int b, int i, int h) const {
    return (static_cast<std::size_t>(b) * Tq + i) * q_row + static_cast<std::size_t>(h) * D;
  }
  std::size_t kv_offset(int b, int kv_head) const {
    return static_cast<std::size_t>(b) * kv_seq + static_cast<std::size_t>(kv_head) * D;
  }
  std::size_t lse_offset(int b, int h, int i) const {
    return (static_cast<std::size_t>(b) * H + h) * Tq + i;
  }
};

inline AttentionGeometry make_attention_geometry(const AttentionShape& s, const int32_t* src,
                                                 const float* const* k_layers, const float* const* v_layers,
                                                 const char* op) {
  require(s.B >= 0 && s.Tq >= 0, op, "B and Tq must be >= 0");
  AttentionGeometry g{};
  g.B = s.B;
  g.Tq = s.Tq;
  g.Tk = s.Tk;
  g.H = s.n_heads;
  g.Hkv = s.n_kv_heads;
  g.D = s.head_dim;
  g.q_pos0 = s.q_pos0;
  g.scale = s.scale;
  if (g.empty()) return g;
  require(s.Tk >= 1, op, "Tk must be >= 1");
  require(s.n_heads >= 1 && s.n_kv_heads >= 1 && s.head_dim >= 1, op, "heads and head_dim must be >= 1");
  require(s.n_heads % s.n_kv_heads == 0, op,
          "n_kv_heads (" + std::to_string(s.n_kv_heads) + ") must divide n_heads (" +
              std::to_string(s.n_heads) + ")");
  require(s.q_pos0 >= 0, op, "q_pos0 must be >= 0");
  require(std::isfinite(s.scale) && s.scale != 0.f, op,
          "shape.scale must be set (usually 1/sqrt(head_dim))");
  g.group = s.n_heads / s.n_kv_heads;
  g.q_row = static_cast<std::size_t>(g.H) * g.D;
  g.kv_row = static_cast<std::size_t>(g.Hkv) * g.D;
  const std::size_t dense_seq = static_cast<std::size_t>(g.Tk) * g.kv_row;
  require(s.kv_seq_stride == 0 || s.kv_seq_stride >= static_cast<long>(dense_seq), op,
          "kv_seq_stride " + std::to_string(s.kv_seq_stride) + " is smaller than Tk * n_kv_heads * head_dim");
  g.kv_seq = s.kv_seq_stride ? static_cast<std::size_t>(s.kv_seq_stride) : dense_seq;
  require(src && k_layers && v_layers, op, "null src / k_layers / v_layers");
  for (int b = 0; b < g.B; ++b) {
    require(src[b] >= 0, op, "negative source layer for sequence " + std::to_string(b));
    require(k_layers[src[b]] && v_layers[src[b]], op,
            "null K/V for source layer " + std::to_string(src[b]));
  }
  return g;
}

// attention_forward's inputs, checked.
inline AttentionGeometry forward_geometry(const AttentionForward& p) {
  const AttentionGeometry g = make_attention_geometry(p.shape, p.src, p.k_layers, p.v_layers, "attention_forward");
  if (!g.empty()) require(p.q && p.out, "attention_forward", "null q or out");
  return g;
}

// attention_backward's inputs, checked.
inline AttentionGeometry backward_geometry(const AttentionBackward& p) {
  const AttentionGeometry g =
      make_attention_geometry(p.shape, p.src, p.k_layers, p.v_layers, "attention_backward");
  if (g.empty()) return g;
  require(p.q && p.out && p.lse && p.dout, "attention_backward", "null q, out, lse or dout");
  require(p.dq && p.dk_layers && p.dv_layers, "attention_backward", "null dq, dk_layers or dv_layers");
  for (int b = 0; b < g.B; ++b)
    require(p.dk_layers[p.src[b]] && p.dv_layers[p.src[b]], "attention_backward",
            "null dK/dV for source layer " + std::to_string(p.src[b]));
  return g;
}

inline int round_up(int x, int multiple) { return (x + multiple - 1) / multiple * multiple; }

}  // namespace kvroute::cpu
