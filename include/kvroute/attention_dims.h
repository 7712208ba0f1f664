// The front of every attention implementation (CPU fp32 and bf16 in src/cpu/, the CUDA kernels
// and cuDNN in cuda/): an AttentionForward / AttentionBackward is checked here, once, and turned
// into AttentionDims, the one description of the problem the kernels index with. So every
// backend refuses the same inputs with the same messages.
//
// Plain C++ that nvcc also compiles: the index helpers run on the host and on the device.
#pragma once

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kvroute/attention.h"

#ifndef KVR_HOST_DEVICE  // as in kvroute/bf16.h
#if defined(__CUDACC__)
#define KVR_HOST_DEVICE __host__ __device__
#else
#define KVR_HOST_DEVICE
#endif
#endif

namespace kvroute {

struct AttentionDims {
  int B, Tq, Tk, H, Hkv, D;
  int group;   // query heads per kv head: H / Hkv
  int q_pos0;  // absolute position of query 0
  float scale;
  int q_row;   // elements between time steps in q/out/dq: H * D
  int kv_row;  // elements between time steps in K/V: Hkv * D
  long kv_seq; // elements between sequences in K/V (kv_seq_stride, or dense Tk * kv_row)

  KVR_HOST_DEVICE bool empty() const { return B == 0 || Tq == 0; }
  // Query i (relative to query 0) sees keys [0, keys_visible(i)).
  KVR_HOST_DEVICE int keys_visible(long i) const {
    const long n = q_pos0 + i + 1;
    return n < Tk ? static_cast<int>(n) : Tk;
  }
  KVR_HOST_DEVICE std::size_t q_offset(int b, int i, int h) const {
    return (static_cast<std::size_t>(b) * Tq + i) * q_row + static_cast<std::size_t>(h) * D;
  }
  KVR_HOST_DEVICE std::size_t kv_offset(int b, int kv_head) const {
    return static_cast<std::size_t>(b) * kv_seq + static_cast<std::size_t>(kv_head) * D;
  }
  KVR_HOST_DEVICE std::size_t lse_offset(int b, int h, int i) const {
    return (static_cast<std::size_t>(b) * H + h) * Tq + i;
  }
};

namespace attention_front_detail {
inline void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}
}  // namespace attention_front_detail

// The shape and the routing tables of one call, checked. op names the call in the messages.
inline AttentionDims attention_dims(const AttentionShape& s, const int32_t* src, const float* const* k_layers,
                                    const float* const* v_layers, const char* op) {
  using attention_front_detail::require;
  require(s.B >= 0 && s.Tq >= 0, op, "B and Tq must be >= 0");
  AttentionDims a{};
  a.B = s.B;
  a.Tq = s.Tq;
  a.Tk = s.Tk;
  a.H = s.n_heads;
  a.Hkv = s.n_kv_heads;
  a.D = s.head_dim;
  a.q_pos0 = s.q_pos0;
  a.scale = s.scale;
  if (a.empty()) return a;
  require(s.Tk >= 1, op, "Tk must be >= 1");
  require(s.n_heads >= 1 && s.n_kv_heads >= 1 && s.head_dim >= 1, op, "heads and head_dim must be >= 1");
  require(s.n_heads % s.n_kv_heads == 0, op,
          "n_kv_heads (" + std::to_string(s.n_kv_heads) + ") must divide n_heads (" + std::to_string(s.n_heads) +
              ")");
  require(s.q_pos0 >= 0, op, "q_pos0 must be >= 0");
  require(std::isfinite(s.scale) && s.scale != 0.f, op, "shape.scale must be set (usually 1/sqrt(head_dim))");
  // The kernels index within one sequence in int.
  const long q_row = static_cast<long>(s.n_heads) * s.head_dim, kv_row = static_cast<long>(s.n_kv_heads) * s.head_dim;
  require(q_row * s.Tq <= INT_MAX && kv_row * s.Tk <= INT_MAX, op,
          "one sequence of q or K/V holds more than 2^31 - 1 elements");
  a.group = s.n_heads / s.n_kv_heads;
  a.q_row = static_cast<int>(q_row);
  a.kv_row = static_cast<int>(kv_row);
  const long dense_seq = kv_row * s.Tk;
  require(s.kv_seq_stride == 0 || s.kv_seq_stride >= dense_seq, op,
          "kv_seq_stride " + std::to_string(s.kv_seq_stride) + " is smaller than Tk * n_kv_heads * head_dim");
  a.kv_seq = s.kv_seq_stride ? s.kv_seq_stride : dense_seq;
  require(src && k_layers && v_layers, op, "null src / k_layers / v_layers");
  for (int b = 0; b < a.B; ++b) {
    require(src[b] >= 0, op, "negative source layer for sequence " + std::to_string(b));
    require(k_layers[src[b]] && v_layers[src[b]], op, "null K/V for source layer " + std::to_string(src[b]));
  }
  return a;
}

// attention_forward's inputs, checked.
inline AttentionDims forward_dims(const AttentionForward& p) {
  const AttentionDims a = attention_dims(p.shape, p.src, p.k_layers, p.v_layers, "attention_forward");
  if (!a.empty()) attention_front_detail::require(p.q && p.out, "attention_forward", "null q or out");
  return a;
}

// attention_backward's inputs, checked.
inline AttentionDims backward_dims(const AttentionBackward& p) {
  using attention_front_detail::require;
  const char* op = "attention_backward";
  const AttentionDims a = attention_dims(p.shape, p.src, p.k_layers, p.v_layers, op);
  if (a.empty()) return a;
  require(p.q && p.out && p.lse && p.dout, op, "null q, out, lse or dout");
  require(p.dq && p.dk_layers && p.dv_layers, op, "null dq, dk_layers or dv_layers");
  for (int b = 0; b < a.B; ++b)
    require(p.dk_layers[p.src[b]] && p.dv_layers[p.src[b]], op,
            "null dK/dV for source layer " + std::to_string(p.src[b]));
  return a;
}

}  // namespace kvroute
