// Parameters of the routed causal attention op.
//
// Queries of one layer attend to the K/V of a per-sequence *source layer*:
// sequence b reads k_layers[src[b]] / v_layers[src[b]]. With src[b] == this
// layer it is ordinary self-attention; with src[b] < this layer it is
// cross-layer KV sharing. Backward adds dK/dV into the source layer's gradient
// buffers, so the gradient reaches that layer's K/V projections.
//
// Layouts: q, out, dq  [B, Tq, H, D]
//          k, v, dk, dv [B, Tk, Hkv, D]   (Hkv divides H: grouped-query attention,
//                                         query head h reads kv head h / (H/Hkv))
//          lse           [B, H, Tq]        log-sum-exp of each query's scores
// Causality: query i (absolute position q_pos0 + i) sees keys 0..q_pos0 + i.
// Training uses Tq == Tk and q_pos0 == 0; decode uses Tq == 1, q_pos0 == Tk - 1.
#pragma once

#include <cstdint>

namespace kvroute {

struct AttentionShape {
  int B = 0;
  int Tq = 0;
  int Tk = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int q_pos0 = 0;      // absolute position of query 0
  float scale = 0.f;   // usually 1/sqrt(head_dim)
  // Row strides (in elements) between consecutive time steps of one sequence in K/V.
  // 0 means dense: n_kv_heads * head_dim. A KV cache with room for T_max tokens
  // uses the same stride but a larger per-sequence stride, given below.
  long kv_seq_stride = 0;  // elements between sequences in K/V; 0 means Tk * n_kv_heads * head_dim
};

// Head dims at which train.precision bf16 runs attention in bf16 (Q, K, V, dout, P and dS
// rounded; fp32 softmax and sums): CUDA's tensor-core kernels and their CPU twin
// (src/cpu/attention_bf16_cpu.h). Other head dims run the fp32 attention on both backends.
constexpr bool attention_bf16_head_dim(int head_dim) { return head_dim == 64 || head_dim == 128; }

// What a forward call reads, and so what its backward reads too: the one copy of these fields.
struct AttentionInputs {
  AttentionShape shape;
  const float* q = nullptr;
  const float* const* k_layers = nullptr;  // host array of per-layer K pointers, indexed by source layer
  const float* const* v_layers = nullptr;
  const int32_t* src = nullptr;            // host array [B]: source layer of each sequence
};

struct AttentionForward : AttentionInputs {
  float* out = nullptr;
  float* lse = nullptr;                    // may be null when no backward follows
};

// The backward of a forward call: that call's inputs, and its results (out, lse) read only.
struct AttentionBackward : AttentionInputs {
  const float* out = nullptr;
  const float* lse = nullptr;
  const float* dout = nullptr;
  float* dq = nullptr;                     // +=
  float* const* dk_layers = nullptr;       // += into dk_layers[src[b]]
  float* const* dv_layers = nullptr;
};

// The backward parameters of forward call f, gradients left to fill in.
inline AttentionBackward backward_of(const AttentionForward& f) {
  AttentionBackward b;
  static_cast<AttentionInputs&>(b) = f;
  b.out = f.out;
  b.lse = f.lse;
  return b;
}

}  // namespace kvroute
