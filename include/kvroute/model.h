// Decoder-only transformer: pre-norm RMSNorm, RoPE (optionally Llama 3.1 scaled), grouped-query
// attention (optional q/k/v biases, per-head q/k RMSNorm, any head_dim) with stochastic KV
// routing, SwiGLU MLP, tied or untied output head.
// Written once against the Backend op interface; forward and backward live
// side by side in src/model/model.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kvroute/backend.h"
#include "kvroute/config.h"
#include "kvroute/rope.h"
#include "kvroute/routing.h"

namespace kvroute {

// A named view into the single contiguous parameter buffer.
struct ParamTensor {
  std::string name;          // e.g. "layers/3/attn/wq"
  std::vector<int> shape;    // [out, in] for matrices
  std::size_t offset = 0;    // in floats, into the parameter buffer
  std::size_t numel = 0;
  bool weight_decay = false; // matrices decay; norm gains do not
};

// The parameter buffer of a model of this config: every tensor's name, shape and offset, in
// buffer order (the order Model::tensors() has). Needs no backend: importers and checkpoint
// tools lay out weights with it without building a model.
std::vector<ParamTensor> parameter_layout(const ModelConfig& cfg);

// The model features that differ from kvroute's defaults, for logs and `ckpt info`, e.g.
// ", head_dim 128, q/k norm, rope_theta 1e+06" ("" for a model with none).
std::string model_features_text(const ModelConfig& cfg);

// ---- the pieces of one forward pass, shared by training and the inference engine ----

// The token grid of one forward call: B rows of Tq consecutive tokens each.
struct ForwardStep {
  int B = 0, Tq = 0;
  const int32_t* pos0 = nullptr;  // host [B]: absolute position of row b's first token; null = all 0
  const int32_t* slot = nullptr;  // host [B]: the K/V slot (sequence) row b writes and reads; null = b
};

// Per-layer K/V storage. K of layer l, slot s, position t, kv head h lives at
// k_layers[l][s * seq_stride + t * n_kv_heads * head_dim + h * head_dim]; V likewise.
// Training passes its activation buffers (seq_stride = T * n_kv_heads * head_dim); the
// inference engine passes its KV cache, where a layer that keeps no cache has null pointers.
struct KvStore {
  std::vector<float*> k_layers, v_layers;  // [n_layers]
  long seq_stride = 0;                     // elements between slots
  int n_slots = 0;
  int max_len = 0;                         // positions per slot
};

// What one layer's forward reads and writes; each buffer is [N, width] for N = B * Tq rows.
struct LayerBuffers {
  const float* x = nullptr;  // residual stream entering the layer
  float* out = nullptr;      // residual stream leaving it (may alias x)
  float *ln1 = nullptr, *rstd1 = nullptr, *q = nullptr, *att = nullptr, *mid = nullptr;
  float *ln2 = nullptr, *rstd2 = nullptr, *gate = nullptr, *up = nullptr, *act = nullptr;
  float* lse = nullptr;  // [B, H, Tq]; may be null when no backward follows
  // model.qk_norm only (else unused): the projections before the per-head norm, [N, n_heads *
  // head_dim] and [N, n_kv_heads * head_dim], and the norm's rstd, [N * n_heads] and
  // [N * n_kv_heads]. Backward reads them; k_pre and rstd_k are written only with compute_kv.
  float *q_pre = nullptr, *rstd_q = nullptr, *k_pre = nullptr, *rstd_k = nullptr;
  // [N, n_kv_heads * head_dim] scratch for fresh K/V rows. Unused (may be null) when they can be
  // written in place: slot and pos0 null and seq_stride == Tq * n_kv_heads * head_dim.
  float *k_new = nullptr, *v_new = nullptr;
};

// The RoPE of a model config (model.rope_theta, model.rope_scaling and its rope_* keys).
// Throws std::invalid_argument for an unknown scaling or unusable values.
RopeSpec rope_spec(const ModelConfig& cfg);

class Model {
 public:
  Model(const ModelConfig& cfg, Backend* backend);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return cfg_; }
  Backend* backend() const { return be_; }
  int head_dim() const { return resolved_head_dim(cfg_); }
  // RoPE as model.rope_theta and model.rope_scaling say.
  const RopeSpec& rope() const { return rope_; }

  // ---- parameters: one buffer, named views ----
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  const ParamTensor& tensor(const std::string& name) const;
  std::size_t num_params() const { return n_params_; }
  float* params() { return params_.get(); }
  float* grads() { return grads_.get(); }
  // Normal(0, init_std) matrices (output projections scaled by 1/sqrt(2 n_layers)), unit norm
  // gains, zero biases.
  void init_weights(uint64_t seed);
  std::vector<float> params_to_host() const { return params_.download(); }
  std::vector<float> grads_to_host() const { return grads_.download(); }
  void params_from_host(const std::vector<float>& host);
  void zero_grads();

  // ---- forward / backward ----
  // tokens, targets: host arrays [B*T]. Routes: [B][n_layers]. Returns the mean
  // cross-entropy over targets >= 0. With targets == nullptr only logits are computed.
  float forward(const int32_t* tokens, const int32_t* targets, int B, int T, const RouteTable& routes);
  // Called by backward each time more gradients are final: grads()[begin, num_params()) will not
  // change again before forward_backward returns (begin only decreases, down to 0). Backward runs
  // from the output head to the embedding, and the buffer is laid out embedding, layers 0..L-1,
  // final norm (, untied head), so what is done is always a suffix. Data parallelism starts each
  // gradient bucket's all-reduce from here.
  using GradsReady = std::function<void(std::size_t begin)>;
  // Same forward, then backward: grads += d(loss * loss_scale)/d(params).
  // Activations are kept only for this call's backward.
  float forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T,
                         const RouteTable& routes, float loss_scale, const GradsReady& on_grads_ready = {});
  // Logits [B*T, vocab] of the last forward (device memory); valid until the next call.
  const float* logits() const { return act_.logits.get(); }

  // ---- forward building blocks: the training forward and the inference engine both run
  // these, so the transformer layer is written once ----
  // x[N, C] = embedding rows of the device token ids.
  void embed(const int32_t* ids, float* x, int N);
  // Layer l over the step's tokens. If compute_kv, projects K/V and stores them into kv at
  // each row's (slot, positions pos0 .. pos0+Tq-1); otherwise computes no K/V at all. The
  // queries of row b attend (causally) to layer src[b]'s K/V at positions 0 .. pos0[b]+Tq-1.
  // src: host [B].
  void layer_forward(int l, const ForwardStep& step, const KvStore& kv, const int32_t* src, bool compute_kv,
                     const LayerBuffers& buf);
  // logits[N, V] = final_norm(x) W_head^T; lnf [N, C] and rstd [N] are scratch.
  void head_forward(const float* x, float* lnf, float* rstd, float* logits, int N);
  // Throws std::invalid_argument naming the first token id outside the vocabulary.
  void check_tokens(const int32_t* tokens, std::size_t n) const;

  // Number of K/V projections (one per layer_forward call with compute_kv) since construction,
  // for tests: a layer that is no sequence's source computes none.
  long kv_projections() const { return kv_projections_; }
  // Bytes of activation memory held for the current (B, T).
  std::size_t activation_bytes() const;
  // Activation recomputation in backward (train.recompute). "none": keep every activation backward
  // reads; "attention": re-run each layer's attention half (norm, queries, attention output and
  // log-sum-exp) in backward instead of keeping it; "layer": keep only each layer's input and K/V
  // and re-run the layer (minus its output projection) in backward. K/V are always kept.
  // Throws std::invalid_argument for any other value.
  void set_recompute(const std::string& mode);
  const std::string& recompute() const { return recompute_; }

 private:
  // Offsets (in floats) of one layer's tensors in the parameter buffer. bq, bk, bv (qkv_bias)
  // and q_norm, k_norm (qk_norm) are 0 when the model has no such tensors.
  struct LayerOffsets {
    std::size_t attn_norm = 0, wq = 0, wk = 0, wv = 0, bq = 0, bk = 0, bv = 0, q_norm = 0, k_norm = 0, wo = 0,
                mlp_norm = 0, w_gate = 0, w_up = 0, w_down = 0;
  };
  float run_forward(const int32_t* tokens, const int32_t* targets, int B, int T, const RouteTable& routes,
                    bool keep_grad, float loss_scale);
  void run_backward(int B, int T, const RouteTable& routes, const GradsReady& on_grads_ready);
  void ensure_activations(int B, int T);
  // The two halves of layer_forward; backward re-runs them to recompute activations.
  // attention_half: ln1, q, K/V (if compute_kv), attention -> att, lse.
  void attention_half(int l, const ForwardStep& step, const KvStore& kv, const int32_t* src, bool compute_kv,
                      const LayerBuffers& buf);
  // mlp_half: mid = x + att Wo^T, ln2, gate, up, act; with to_output also out = mid + act Wd^T.
  void mlp_half(int l, const ForwardStep& step, const LayerBuffers& buf, bool to_output);
  // Training: the per-layer activation buffers (kept per layer, or shared scratch that backward
  // refills, per recompute mode) and the K/V store over the activation buffers.
  LayerBuffers training_buffers(int l);
  KvStore training_kv();
  bool keeps_attention() const { return recompute_ == "none"; }  // ln1, q, att, lse per layer
  bool keeps_mlp() const { return recompute_ != "layer"; }       // mid, ln2, gate, up, act per layer
  const float* W(std::size_t off) const { return params_.get() + off; }
  float* dW(std::size_t off) { return grads_.get() + off; }

  ModelConfig cfg_;
  RopeSpec rope_;
  Backend* be_;
  std::vector<ParamTensor> tensors_;
  std::size_t n_params_ = 0;
  DeviceBuffer<float> params_, grads_;
  std::vector<LayerOffsets> layers_;
  std::size_t off_embed_ = 0, off_final_norm_ = 0, off_head_ = 0;

  struct Activations {
    int B = 0, T = 0;
    DeviceBuffer<int32_t> tokens, targets;
    DeviceBuffer<float> resid;      // [L+1][N,C] residual stream entering each layer (+ final)
    // [L] = one per layer; [L or 1] = one per layer unless the recompute mode rebuilds it.
    DeviceBuffer<float> resid_mid;  // [L or 1][N,C] after attention
    DeviceBuffer<float> ln1, ln2;   // [L or 1][N,C]
    DeviceBuffer<float> rstd1, rstd2;  // [L][N]
    DeviceBuffer<float> q, att;     // [L or 1][N,H*D]
    DeviceBuffer<float> k, v;       // [L][N,Hkv*D], always kept: other layers read them
    DeviceBuffer<float> lse;        // [L or 1][B,H,T]
    // qk_norm only (else empty): q before its norm and the norm's rstd; K likewise, always kept.
    DeviceBuffer<float> q_pre, rstd_q;  // [L or 1][N,H*D], [L or 1][N*H]
    DeviceBuffer<float> k_pre, rstd_k;  // [L][N,Hkv*D], [L][N*Hkv]
    DeviceBuffer<float> gate, up, act;  // [L or 1][N,F]
    DeviceBuffer<float> lnf, rstdf; // [N,C], [N]
    DeviceBuffer<float> logits;     // [N,V], becomes dlogits in training
    DeviceBuffer<float> losses;     // [N]
    // backward scratch
    DeviceBuffer<float> dresid, dln;        // [N,C]
    DeviceBuffer<float> datt, dq;           // [N,H*D]
    DeviceBuffer<float> dk, dv;             // [L][N,Hkv*D]
    DeviceBuffer<float> dact, dgate, dup;   // [N,F]
  } act_;
  long kv_projections_ = 0;
  std::string recompute_ = "none";
};

}  // namespace kvroute
