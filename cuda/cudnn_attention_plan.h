// The host logic of cuDNN fused attention (cudnn_attention.cpp, cudnn_attention_cuda.cu), in
// plain C++ without CUDA or cuDNN headers, so tests/test_cudnn_attention_plan.cpp checks it on
// any machine: which attention path a call takes and why, the graph cache key, the dims and
// strides that describe kvroute's [B, T, H, D] tensors to cuDNN, the scratch layout around
// cuDNN's workspace, and where each sequence's K/V come from and its dK/dV go.
//
// The cuDNN path: train.precision bf16, head_dim 64 or 128, training shapes (Tq == Tk, query 0
// at position 0). cuDNN's SDPA takes bf16 Q/K/V/O/dO and writes bf16 O/dQ/dK/dV, with fp32
// softmax statistics (the log-sum-exp kvroute's backward keeps, [B, H, T] as lse) and fp32
// compute. kvroute's activations are fp32, so each call casts its operands into scratch (the
// K/V cast reads the source layer: with one source for the whole batch straight from its
// buffer, else through the per-sequence pointer table) and casts or adds the results back.
// Decode, prefill chunks, other head dims, fp32 precision and a build or machine without cuDNN
// keep kvroute's own kernels (attention_plan.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "attention_plan.h"
#include "kvroute/attention_dims.h"

namespace kvroute {

// ---- which path ----

enum class AttentionPath { Fp32Kernels, Bf16Kernels, Cudnn };

inline const char* attention_path_name(AttentionPath p) {
  switch (p) {
    case AttentionPath::Fp32Kernels: return "fp32 kernels";
    case AttentionPath::Bf16Kernels: return "bf16 tensor-core (WMMA) kernels";
    case AttentionPath::Cudnn: return "cuDNN fused attention";
  }
  return "?";
}

struct AttentionPathInputs {
  bool bf16 = false;                  // train.precision is bf16
  int head_dim = 0, Tq = 0, Tk = 0, q_pos0 = 0;
  std::size_t smem_optin_limit = 0;   // cudaDevAttrMaxSharedMemoryPerBlockOptin
  // Empty when cuDNN can run here; else why not (built without it, no handle, switched off).
  std::string cudnn_unavailable;
};

struct AttentionPathChoice {
  AttentionPath path = AttentionPath::Fp32Kernels;
  std::string why;    // one line for stderr
  std::string error;  // non-empty: no path fits this GPU (choose_attention_kernel's error)
};

// The calls cuDNN runs when it can: bf16 at head_dim 64 or 128, training shapes (query 0 at
// position 0, as many queries as keys).
inline bool cudnn_attention_shape(bool bf16, int head_dim, int Tq, int Tk, int q_pos0) {
  return bf16 && attention_bf16_head_dim(head_dim) && Tq == Tk && q_pos0 == 0;
}

inline AttentionPathChoice choose_attention_path(const AttentionPathInputs& in) {
  AttentionPathChoice c;
  const std::string at = "attention at head_dim " + std::to_string(in.head_dim) + ": ";
  if (cudnn_attention_shape(in.bf16, in.head_dim, in.Tq, in.Tk, in.q_pos0)) {
    if (in.cudnn_unavailable.empty()) {
      c.path = AttentionPath::Cudnn;
      c.why = at + "cuDNN fused attention (bf16 I/O, fp32 softmax and sums)";
      return c;
    }
  }
  const AttentionKernelChoice k = choose_attention_kernel(in.bf16, in.head_dim, in.smem_optin_limit);
  if (!k.error.empty()) {
    c.error = k.error;
    return c;
  }
  c.path = k.tensor_cores ? AttentionPath::Bf16Kernels : AttentionPath::Fp32Kernels;
  std::string reason;
  if (!in.bf16) {
    reason = "train.precision is fp32";
  } else if (!attention_bf16_head_dim(in.head_dim)) {
    reason = "cuDNN and the tensor-core kernels run head_dim 64 and 128 only";
  } else if (in.Tq != in.Tk || in.q_pos0 != 0) {
    reason = "decode or a prefill chunk (Tq " + std::to_string(in.Tq) + ", Tk " + std::to_string(in.Tk) +
             "): cuDNN runs training shapes only";
  } else {
    reason = "no cuDNN: " + in.cudnn_unavailable;
  }
  if (!k.fallback.empty()) reason += "; " + k.fallback;
  c.why = at + attention_path_name(c.path) + " (" + reason + ")";
  return c;
}

// ---- the graph cache key ----

// Everything a built cuDNN graph depends on: graphs are built once per key and cached.
struct CudnnSdpaKey {
  int B = 0, T = 0, H = 0, Hkv = 0, D = 0;
  uint32_t scale_bits = 0;     // the softmax scale's bits (a graph bakes the scale in)
  bool backward = false;
  bool deterministic = false;  // backward only: cuDNN's deterministic algorithm

  static CudnnSdpaKey of(const AttentionDims& a, bool backward, bool deterministic) {
    CudnnSdpaKey k;
    k.B = a.B;
    k.T = a.Tq;
    k.H = a.H;
    k.Hkv = a.Hkv;
    k.D = a.D;
    std::memcpy(&k.scale_bits, &a.scale, sizeof k.scale_bits);
    k.backward = backward;
    k.deterministic = backward && deterministic;
    return k;
  }
  float scale() const {
    float s;
    std::memcpy(&s, &scale_bits, sizeof s);
    return s;
  }
  auto tie() const { return std::tie(B, T, H, Hkv, D, scale_bits, backward, deterministic); }
  bool operator==(const CudnnSdpaKey& o) const { return tie() == o.tie(); }
  bool operator<(const CudnnSdpaKey& o) const { return tie() < o.tie(); }
};

// ---- dims and strides ----

// cuDNN describes every SDPA tensor as [batch, heads, seq, dim]; kvroute stores q/out/dq as
// [B, T, H, D] and K/V as [B, T, Hkv, D] (dense, in scratch), and the log-sum-exp as [B, H, T].
struct CudnnTensorLayout {
  int64_t dim[4];
  int64_t stride[4];
};
inline CudnnTensorLayout cudnn_bthd_layout(int B, int T, int heads, int D) {
  const int64_t row = static_cast<int64_t>(heads) * D;
  return {{B, heads, T, D}, {T * row, D, row, 1}};
}
inline CudnnTensorLayout cudnn_stats_layout(int B, int H, int T) {
  return {{B, H, T, 1}, {static_cast<int64_t>(H) * T, T, 1, 1}};
}

// ---- scratch ----

// The device scratch of one cuDNN call, carved out of one buffer: bf16 copies of the operands
// and results, then cuDNN's workspace. Every region starts on a 256-byte boundary.
struct CudnnScratchLayout {
  static constexpr std::size_t kAlign = 256;
  std::size_t q = 0, k = 0, v = 0, o = 0;  // bf16 [B, T, H or Hkv, D]
  std::size_t dout = 0, dq = 0, dk = 0, dv = 0;  // backward only (else equal to `workspace`)
  std::size_t workspace = 0;  // cuDNN's
  std::size_t total = 0;      // bytes
};
inline CudnnScratchLayout cudnn_scratch_layout(const CudnnSdpaKey& key, std::size_t cudnn_workspace_bytes) {
  auto align = [](std::size_t x) { return (x + CudnnScratchLayout::kAlign - 1) / CudnnScratchLayout::kAlign * CudnnScratchLayout::kAlign; };
  const std::size_t q_bytes = static_cast<std::size_t>(key.B) * key.T * key.H * key.D * 2;
  const std::size_t kv_bytes = static_cast<std::size_t>(key.B) * key.T * key.Hkv * key.D * 2;
  CudnnScratchLayout s;
  std::size_t at = 0;
  auto take = [&](std::size_t bytes) {
    const std::size_t off = at;
    at = align(at + bytes);
    return off;
  };
  s.q = take(q_bytes);
  s.k = take(kv_bytes);
  s.v = take(kv_bytes);
  s.o = take(q_bytes);
  if (key.backward) {
    s.dout = take(q_bytes);
    s.dq = take(q_bytes);
    s.dk = take(kv_bytes);
    s.dv = take(kv_bytes);
  } else {
    s.dout = s.dq = s.dk = s.dv = at;
  }
  s.workspace = take(cudnn_workspace_bytes);
  s.total = at;
  return s;
}

// ---- where K/V come from, where dK/dV go ----

// With routing.granularity batch every sequence of a call reads one source layer; when its K/V
// are dense (no KV-cache stride) the B sequences are one contiguous block of that layer's
// buffer, read (and its dK/dV added into) as one tensor. Otherwise sequence by sequence,
// through the table of per-sequence base pointers.
struct CudnnKvSource {
  bool contiguous = false;  // one block: layer's buffer, elements [0, B * seq_elems)
  int layer = -1;           // the one source layer when contiguous
  long seq_elems = 0;       // elements of one sequence's K (or V): Tk * Hkv * D
};
inline CudnnKvSource cudnn_kv_source(const AttentionDims& a, const int32_t* src) {
  CudnnKvSource s;
  s.seq_elems = static_cast<long>(a.Tk) * a.kv_row;
  bool one_layer = a.B > 0;
  for (int b = 1; b < a.B && one_layer; ++b) one_layer = src[b] == src[0];
  s.contiguous = one_layer && a.kv_seq == s.seq_elems;
  s.layer = s.contiguous ? src[0] : -1;
  return s;
}

// The additions of a routed layer's dK (or dV), which cuDNN writes into scratch, into the
// source layers' gradients: addition i adds scratch elements [scratch_offset, + elements) into
// layer `layer` at elements [dst_offset, + elements). In a fixed order (sequence order), each
// scratch element added exactly once, and no two additions of one call touch the same
// gradient element (sequences own disjoint slices b * kv_seq even when they share a source), so
// one thread per element adds with no atomics, and calls (layers) are ordered by the stream.
struct CudnnGradAddition {
  int layer;
  long dst_offset, scratch_offset, elements;
};
inline std::vector<CudnnGradAddition> cudnn_grad_additions(const AttentionDims& a, const int32_t* src) {
  const CudnnKvSource s = cudnn_kv_source(a, src);
  if (s.contiguous) return {{s.layer, 0, 0, s.seq_elems * a.B}};
  std::vector<CudnnGradAddition> adds;
  adds.reserve(a.B);
  for (int b = 0; b < a.B; ++b) adds.push_back({src[b], b * a.kv_seq, b * s.seq_elems, s.seq_elems});
  return adds;
}

}  // namespace kvroute
