// The transformer's forward and backward, side by side, against the op interface.
//
// Per layer (N = B*T tokens, C = d_model; [+ b], [qnorm] only with qkv_bias, qk_norm):
//   ln1  = rmsnorm(x)                 q = rope(qnorm(ln1 Wq^T [+ bq]))
//   k,v  = rope(knorm(ln1 Wk^T [+ bk])), ln1 Wv^T [+ bv]
//                                     only if some sequence reads this layer's K/V
//   att  = attention(q, K/V of src[b])   (stochastic KV routing)
//   mid  = x + att Wo^T
//   ln2  = rmsnorm(mid)               act = silu(ln2 Wg^T) * (ln2 Wu^T)
//   x'   = mid + act Wd^T
// layer_forward is the only copy of this: the training forward runs it over
// activation buffers, the inference engine (src/inference) over its KV cache.
// Backward walks the layers top-down, first rebuilding what the forward did not keep
// (train.recompute; see Model::set_recompute). Layer l's attention backward adds dK/dV
// into its source layer's buffers; since sources are never above l, by the time
// the walk reaches layer s every reader of s has contributed, and s can push
// its complete dK/dV through its own projections.
#include "kvroute/model.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "kvroute/rng.h"

namespace kvroute {

namespace {
std::string layer_name(int l, const char* what) { return "layers/" + std::to_string(l) + "/" + what; }
}  // namespace

std::vector<ParamTensor> parameter_layout(const ModelConfig& cfg) {
  std::vector<ParamTensor> out;
  std::size_t n = 0;
  auto add = [&](const std::string& name, std::vector<int> shape, bool decay) {
    ParamTensor t;
    t.name = name;
    t.shape = std::move(shape);
    t.numel = 1;
    for (int d : t.shape) t.numel *= static_cast<std::size_t>(d);
    t.offset = n;
    t.weight_decay = decay;
    n += t.numel;
    out.push_back(std::move(t));
  };
  const int C = cfg.d_model, F = cfg.d_ff, D = resolved_head_dim(cfg);
  const int HD = cfg.n_heads * D, KD = cfg.n_kv_heads * D;
  // This order is what makes backward finish the gradients a suffix at a time (GradsReady):
  // a layer's first tensor is attn_norm.
  add("embed", {cfg.vocab_size, C}, true);
  for (int l = 0; l < cfg.n_layers; ++l) {
    add(layer_name(l, "attn_norm"), {C}, false);
    add(layer_name(l, "attn/wq"), {HD, C}, true);
    add(layer_name(l, "attn/wk"), {KD, C}, true);
    add(layer_name(l, "attn/wv"), {KD, C}, true);
    if (cfg.qkv_bias) {
      add(layer_name(l, "attn/bq"), {HD}, false);
      add(layer_name(l, "attn/bk"), {KD}, false);
      add(layer_name(l, "attn/bv"), {KD}, false);
    }
    if (cfg.qk_norm) {
      add(layer_name(l, "attn/q_norm"), {D}, false);
      add(layer_name(l, "attn/k_norm"), {D}, false);
    }
    add(layer_name(l, "attn/wo"), {C, HD}, true);
    add(layer_name(l, "mlp_norm"), {C}, false);
    add(layer_name(l, "mlp/w_gate"), {F, C}, true);
    add(layer_name(l, "mlp/w_up"), {F, C}, true);
    add(layer_name(l, "mlp/w_down"), {C, F}, true);
  }
  add("final_norm", {C}, false);
  if (!cfg.tie_embeddings) add("lm_head", {cfg.vocab_size, C}, true);
  return out;
}

std::string model_features_text(const ModelConfig& cfg) {
  const ModelConfig defaults;
  auto number = [](double x) {
    std::ostringstream os;
    os << x;
    return os.str();
  };
  std::string s;
  if (cfg.head_dim > 0) s += ", head_dim " + std::to_string(cfg.head_dim);
  if (cfg.qkv_bias) s += ", q/k/v biases";
  if (cfg.qk_norm) s += ", q/k norm";
  if (cfg.rope_theta != defaults.rope_theta) s += ", rope_theta " + number(cfg.rope_theta);
  if (cfg.rope_scaling != "none")
    s += ", rope " + cfg.rope_scaling + " (factor " + number(cfg.rope_factor) + ", original context " +
         std::to_string(cfg.rope_original_context) + ")";
  if (cfg.norm_eps != defaults.norm_eps) s += ", norm_eps " + number(cfg.norm_eps);
  return s;
}

RopeSpec rope_spec(const ModelConfig& cfg) {
  RopeSpec r;
  r.theta = cfg.rope_theta;
  if (cfg.rope_scaling == "llama3") r.scaling = RopeScaling::Llama3;
  else if (cfg.rope_scaling != "none")
    throw std::invalid_argument("model.rope_scaling: unknown '" + cfg.rope_scaling + "' (none or llama3)");
  r.factor = cfg.rope_factor;
  r.low_freq_factor = cfg.rope_low_freq_factor;
  r.high_freq_factor = cfg.rope_high_freq_factor;
  r.original_context = cfg.rope_original_context;
  if (const std::string problem = rope_spec_problem(r); !problem.empty())
    throw std::invalid_argument("model RoPE: " + problem);
  return r;
}

Model::Model(const ModelConfig& cfg, Backend* backend) : cfg_(cfg), rope_(rope_spec(cfg)), be_(backend) {
  if (cfg.n_heads <= 0 || cfg.n_kv_heads <= 0 || cfg.n_heads % cfg.n_kv_heads != 0)
    throw std::invalid_argument("model: n_kv_heads must divide n_heads");
  if (cfg.head_dim < 0 || (cfg.head_dim == 0 && cfg.d_model % cfg.n_heads != 0) || head_dim() % 2 != 0 ||
      head_dim() <= 0)
    throw std::invalid_argument("model: head_dim (model.head_dim, or d_model / n_heads when 0) must be an even "
                                "integer > 0 (RoPE pairs), got " + std::to_string(head_dim()));
  tensors_ = parameter_layout(cfg);
  n_params_ = tensors_.back().offset + tensors_.back().numel;
  auto at = [&](const std::string& name) { return tensor(name).offset; };
  off_embed_ = at("embed");
  for (int l = 0; l < cfg.n_layers; ++l) {
    LayerOffsets o;
    o.attn_norm = at(layer_name(l, "attn_norm"));
    o.wq = at(layer_name(l, "attn/wq"));
    o.wk = at(layer_name(l, "attn/wk"));
    o.wv = at(layer_name(l, "attn/wv"));
    if (cfg.qkv_bias) {
      o.bq = at(layer_name(l, "attn/bq"));
      o.bk = at(layer_name(l, "attn/bk"));
      o.bv = at(layer_name(l, "attn/bv"));
    }
    if (cfg.qk_norm) {
      o.q_norm = at(layer_name(l, "attn/q_norm"));
      o.k_norm = at(layer_name(l, "attn/k_norm"));
    }
    o.wo = at(layer_name(l, "attn/wo"));
    o.mlp_norm = at(layer_name(l, "mlp_norm"));
    o.w_gate = at(layer_name(l, "mlp/w_gate"));
    o.w_up = at(layer_name(l, "mlp/w_up"));
    o.w_down = at(layer_name(l, "mlp/w_down"));
    layers_.push_back(o);
  }
  off_final_norm_ = at("final_norm");
  off_head_ = cfg.tie_embeddings ? off_embed_ : at("lm_head");
  params_ = DeviceBuffer<float>(be_, n_params_);
  grads_ = DeviceBuffer<float>(be_, n_params_);
  // A bf16 backend keeps one rounded copy of the weights per optimizer step (backend.h).
  be_->register_weights(params_.get(), n_params_);
}

Model::~Model() = default;

const ParamTensor& Model::tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return t;
  throw std::out_of_range("model has no parameter '" + name + "'");
}

void Model::init_weights(uint64_t seed) {
  std::vector<float> host(n_params_);
  const double out_scale = 1.0 / std::sqrt(2.0 * cfg_.n_layers);
  uint64_t counter = 0;
  for (const auto& t : tensors_) {
    const bool is_bias = t.name.ends_with("attn/bq") || t.name.ends_with("attn/bk") || t.name.ends_with("attn/bv");
    const bool is_qk_norm = t.name.ends_with("attn/q_norm") || t.name.ends_with("attn/k_norm");
    if (is_bias || is_qk_norm) {
      // Constants that draw no random numbers: with qkv_bias or qk_norm on, every other tensor
      // gets the values it gets without them (and zero biases leave the function unchanged).
      std::fill(host.begin() + t.offset, host.begin() + t.offset + t.numel, is_bias ? 0.f : 1.f);
      continue;
    }
    const bool is_norm = t.shape.size() == 1;
    const bool is_out_proj = t.name.ends_with("attn/wo") || t.name.ends_with("mlp/w_down");
    const double std = cfg_.init_std * (is_out_proj ? out_scale : 1.0);
    for (std::size_t i = 0; i < t.numel; ++i, ++counter)
      host[t.offset + i] = is_norm ? 1.f : static_cast<float>(std * normal01(seed, kStreamInit, counter));
  }
  params_.upload(host);
}

void Model::params_from_host(const std::vector<float>& host) {
  if (host.size() != n_params_)
    throw std::invalid_argument("parameter count mismatch: got " + std::to_string(host.size()) + ", model has " +
                                std::to_string(n_params_));
  params_.upload(host);
}

void Model::zero_grads() { be_->fill_zero(grads_.get(), grads_.bytes()); }

void Model::set_recompute(const std::string& mode) {
  if (mode != "none" && mode != "attention" && mode != "layer")
    throw std::invalid_argument("train.recompute: unknown mode '" + mode + "' (none, attention or layer)");
  if (mode == recompute_) return;
  recompute_ = mode;
  act_ = Activations{};  // reallocated for the new mode by the next forward
}

void Model::ensure_activations(int B, int T) {
  if (act_.B == B && act_.T == T) return;
  const std::size_t N = static_cast<std::size_t>(B) * T, L = cfg_.n_layers, C = cfg_.d_model, F = cfg_.d_ff;
  const std::size_t HD = static_cast<std::size_t>(cfg_.n_heads) * head_dim();
  const std::size_t KD = static_cast<std::size_t>(cfg_.n_kv_heads) * head_dim();
  const std::size_t V = cfg_.vocab_size;
  Activations& a = act_;
  a = Activations{};
  a.B = B;
  a.T = T;
  a.tokens = DeviceBuffer<int32_t>(be_, N);
  a.targets = DeviceBuffer<int32_t>(be_, N);
  a.resid = DeviceBuffer<float>(be_, (L + 1) * N * C);
  // Tensors kept per layer, or one buffer that every layer reuses when backward recomputes them.
  const std::size_t La = keeps_attention() ? L : 1, Lm = keeps_mlp() ? L : 1;
  a.resid_mid = DeviceBuffer<float>(be_, Lm * N * C);
  a.ln1 = DeviceBuffer<float>(be_, La * N * C);
  a.ln2 = DeviceBuffer<float>(be_, Lm * N * C);
  a.rstd1 = DeviceBuffer<float>(be_, L * N);
  a.rstd2 = DeviceBuffer<float>(be_, L * N);
  a.q = DeviceBuffer<float>(be_, La * N * HD);
  a.att = DeviceBuffer<float>(be_, La * N * HD);
  a.k = DeviceBuffer<float>(be_, L * N * KD);
  a.v = DeviceBuffer<float>(be_, L * N * KD);
  a.lse = DeviceBuffer<float>(be_, La * N * cfg_.n_heads);
  if (cfg_.qk_norm) {
    a.q_pre = DeviceBuffer<float>(be_, La * N * HD);
    a.rstd_q = DeviceBuffer<float>(be_, La * N * cfg_.n_heads);
    a.k_pre = DeviceBuffer<float>(be_, L * N * KD);
    a.rstd_k = DeviceBuffer<float>(be_, L * N * cfg_.n_kv_heads);
  }
  a.gate = DeviceBuffer<float>(be_, Lm * N * F);
  a.up = DeviceBuffer<float>(be_, Lm * N * F);
  a.act = DeviceBuffer<float>(be_, Lm * N * F);
  a.lnf = DeviceBuffer<float>(be_, N * C);
  a.rstdf = DeviceBuffer<float>(be_, N);
  a.logits = DeviceBuffer<float>(be_, N * V);
  a.losses = DeviceBuffer<float>(be_, N);
  a.dresid = DeviceBuffer<float>(be_, N * C);
  a.dln = DeviceBuffer<float>(be_, N * C);
  a.datt = DeviceBuffer<float>(be_, N * HD);
  a.dq = DeviceBuffer<float>(be_, N * HD);
  a.dk = DeviceBuffer<float>(be_, L * N * KD);
  a.dv = DeviceBuffer<float>(be_, L * N * KD);
  a.dact = DeviceBuffer<float>(be_, N * F);
  a.dgate = DeviceBuffer<float>(be_, N * F);
  a.dup = DeviceBuffer<float>(be_, N * F);
}

std::size_t Model::activation_bytes() const {
  const Activations& a = act_;
  std::size_t total = 0;
  for (const DeviceBuffer<float>* b : {&a.resid, &a.resid_mid, &a.ln1, &a.ln2, &a.rstd1, &a.rstd2, &a.q, &a.att,
                                       &a.k, &a.v, &a.lse, &a.q_pre, &a.rstd_q, &a.k_pre, &a.rstd_k, &a.gate, &a.up,
                                       &a.act, &a.lnf, &a.rstdf, &a.logits, &a.losses, &a.dresid, &a.dln, &a.datt, &a.dq, &a.dk, &a.dv, &a.dact,
                                       &a.dgate, &a.dup})
    total += b->bytes();
  return total + a.tokens.bytes() + a.targets.bytes();
}

KvStore Model::training_kv() {
  // Every layer's K/V slice is dense [B, T, Hkv, D], so layers write their K/V in place.
  Activations& a = act_;
  const std::size_t N = static_cast<std::size_t>(a.B) * a.T, KD = static_cast<std::size_t>(cfg_.n_kv_heads) * head_dim();
  KvStore kv;
  for (int l = 0; l < cfg_.n_layers; ++l) {
    kv.k_layers.push_back(a.k.get() + l * N * KD);
    kv.v_layers.push_back(a.v.get() + l * N * KD);
  }
  kv.seq_stride = static_cast<long>(a.T * KD);
  kv.n_slots = a.B;
  kv.max_len = a.T;
  return kv;
}

LayerBuffers Model::training_buffers(int l) {
  Activations& a = act_;
  const std::size_t N = static_cast<std::size_t>(a.B) * a.T, C = cfg_.d_model, F = cfg_.d_ff, H = cfg_.n_heads;
  const std::size_t HD = H * head_dim();
  const std::size_t la = keeps_attention() ? l : 0, lm = keeps_mlp() ? l : 0;  // buffer index
  LayerBuffers b;
  b.x = a.resid.get() + l * N * C;
  b.out = a.resid.get() + (l + 1) * N * C;
  b.ln1 = a.ln1.get() + la * N * C;
  b.ln2 = a.ln2.get() + lm * N * C;
  b.act = a.act.get() + lm * N * F;
  b.rstd1 = a.rstd1.get() + l * N;
  b.rstd2 = a.rstd2.get() + l * N;
  b.q = a.q.get() + la * N * HD;
  b.att = a.att.get() + la * N * HD;
  b.lse = a.lse.get() + la * N * H;
  if (cfg_.qk_norm) {
    const std::size_t KD = static_cast<std::size_t>(cfg_.n_kv_heads) * head_dim();
    b.q_pre = a.q_pre.get() + la * N * HD;
    b.rstd_q = a.rstd_q.get() + la * N * H;
    b.k_pre = a.k_pre.get() + l * N * KD;
    b.rstd_k = a.rstd_k.get() + l * N * cfg_.n_kv_heads;
  }
  b.mid = a.resid_mid.get() + lm * N * C;
  b.gate = a.gate.get() + lm * N * F;
  b.up = a.up.get() + lm * N * F;
  return b;
}

float Model::forward(const int32_t* tokens, const int32_t* targets, int B, int T, const RouteTable& routes) {
  return run_forward(tokens, targets, B, T, routes, false, 1.f);
}

float Model::forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T,
                              const RouteTable& routes, float loss_scale, const GradsReady& on_grads_ready) {
  if (!targets) throw std::invalid_argument("forward_backward needs targets");
  const float loss = run_forward(tokens, targets, B, T, routes, true, loss_scale);
  run_backward(B, T, routes, on_grads_ready);
  return loss;
}

void Model::check_tokens(const int32_t* tokens, std::size_t n) const {
  for (std::size_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= cfg_.vocab_size)
      throw std::invalid_argument("token id " + std::to_string(tokens[i]) + " outside vocabulary of " +
                                  std::to_string(cfg_.vocab_size));
}

void Model::embed(const int32_t* ids, float* x, int N) { be_->embedding_forward(x, ids, W(off_embed_), N, cfg_.d_model); }

void Model::head_forward(const float* x, float* lnf, float* rstd, float* logits, int N) {
  const int C = cfg_.d_model;
  be_->rmsnorm_forward(lnf, rstd, x, W(off_final_norm_), N, C, static_cast<float>(cfg_.norm_eps));
  be_->matmul(lnf, W(off_head_), logits, N, cfg_.vocab_size, C, false, true, 1.f, 0.f);
}

namespace {

// Calls fn(b0, n) for each maximal run of rows [b0, b0+n) that share pos0 and, if
// contiguous_slots, occupy consecutive slots (so one op call with a slot offset covers them).
template <typename Fn>
void for_each_run(const ForwardStep& s, bool contiguous_slots, Fn fn) {
  if (!s.pos0 && (!s.slot || !contiguous_slots)) {
    fn(0, s.B);
    return;
  }
  auto pos = [&](int b) { return s.pos0 ? s.pos0[b] : 0; };
  auto slot = [&](int b) { return s.slot ? s.slot[b] : b; };
  int b0 = 0;
  for (int b = 1; b <= s.B; ++b) {
    const bool breaks = b == s.B || pos(b) != pos(b0) || (contiguous_slots && slot(b) != slot(b - 1) + 1);
    if (breaks) {
      fn(b0, b - b0);
      b0 = b;
    }
  }
}

}  // namespace

void Model::layer_forward(int l, const ForwardStep& s, const KvStore& kv, const int32_t* src, bool compute_kv,
                          const LayerBuffers& a) {
  attention_half(l, s, kv, src, compute_kv, a);
  mlp_half(l, s, a, true);
}

void Model::attention_half(int l, const ForwardStep& s, const KvStore& kv, const int32_t* src, bool compute_kv,
                           const LayerBuffers& a) {
  const LayerOffsets& w = layers_[l];
  const int B = s.B, Tq = s.Tq, N = B * Tq, C = cfg_.d_model, D = head_dim();
  const int H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, HD = H * D, KD = Hkv * D;
  const float eps = static_cast<float>(cfg_.norm_eps);
  auto pos = [&](int b) { return s.pos0 ? s.pos0[b] : 0; };
  auto slot = [&](int b) { return s.slot ? s.slot[b] : b; };
  for (int b = 0; b < B; ++b)
    if (slot(b) < 0 || slot(b) >= kv.n_slots || pos(b) < 0 || pos(b) + Tq > kv.max_len)
      throw std::invalid_argument("layer_forward: row " + std::to_string(b) + " (slot " + std::to_string(slot(b)) +
                                  ", positions " + std::to_string(pos(b)) + ".." + std::to_string(pos(b) + Tq - 1) +
                                  ") is outside the K/V storage (" + std::to_string(kv.n_slots) + " slots x " +
                                  std::to_string(kv.max_len) + " positions)");

  if (cfg_.qk_norm && (!a.q_pre || !a.rstd_q || (compute_kv && (!a.k_pre || !a.rstd_k))))
    throw std::invalid_argument("layer_forward: a qk_norm model needs the q_pre, rstd_q, k_pre and rstd_k buffers");

  // The projection (+ bias) into `pre` (= out without qk_norm), then the per-head norm into out.
  auto project = [&](std::size_t wt, std::size_t bias, std::size_t norm, int width, int heads, float* pre,
                     float* rstd, float* out) {
    be_->matmul(a.ln1, W(wt), pre, N, width, C, false, true, 1.f, 0.f);
    if (cfg_.qkv_bias) be_->bias_forward(pre, W(bias), N, width);
    if (cfg_.qk_norm && norm) be_->rmsnorm_forward(out, rstd, pre, W(norm), N * heads, D, eps);
  };
  be_->rmsnorm_forward(a.ln1, a.rstd1, a.x, W(w.attn_norm), N, C, eps);
  project(w.wq, w.bq, w.q_norm, HD, H, cfg_.qk_norm ? a.q_pre : a.q, a.rstd_q, a.q);
  for_each_run(s, false, [&](int b0, int n) {
    be_->rope_forward(a.q + static_cast<std::size_t>(b0) * Tq * HD, n, Tq, H, D, pos(b0), rope_);
  });
  if (compute_kv) {
    if (!kv.k_layers[l] || !kv.v_layers[l])
      throw std::invalid_argument("layer_forward: layer " + std::to_string(l) + " computes K/V but has no storage");
    const bool in_place = !s.slot && !s.pos0 && kv.seq_stride == static_cast<long>(Tq) * KD;
    float* k = in_place ? kv.k_layers[l] : a.k_new;
    float* v = in_place ? kv.v_layers[l] : a.v_new;
    project(w.wk, w.bk, w.k_norm, KD, Hkv, cfg_.qk_norm ? a.k_pre : k, a.rstd_k, k);
    for_each_run(s, false, [&](int b0, int n) {
      be_->rope_forward(k + static_cast<std::size_t>(b0) * Tq * KD, n, Tq, Hkv, D, pos(b0), rope_);
    });
    project(w.wv, w.bv, 0, KD, Hkv, v, nullptr, v);
    if (!in_place) {
      const std::size_t row_bytes = static_cast<std::size_t>(Tq) * KD * sizeof(float);
      for (int b = 0; b < B; ++b) {
        const std::size_t dst = static_cast<std::size_t>(slot(b)) * kv.seq_stride + static_cast<std::size_t>(pos(b)) * KD;
        const std::size_t from = static_cast<std::size_t>(b) * Tq * KD;
        be_->copy(kv.k_layers[l] + dst, k + from, row_bytes);
        be_->copy(kv.v_layers[l] + dst, v + from, row_bytes);
      }
    }
    ++kv_projections_;
  }

  const int L = cfg_.n_layers;
  std::vector<const float*> k_layers(L), v_layers(L);
  for_each_run(s, true, [&](int b0, int n) {
    const std::size_t shift = static_cast<std::size_t>(slot(b0)) * kv.seq_stride;
    for (int j = 0; j < L; ++j) {
      k_layers[j] = kv.k_layers[j] ? kv.k_layers[j] + shift : nullptr;
      v_layers[j] = kv.v_layers[j] ? kv.v_layers[j] + shift : nullptr;
    }
    AttentionForward p;
    p.shape = AttentionShape{n, Tq, pos(b0) + Tq, H, Hkv, D, pos(b0), 1.f / std::sqrt(static_cast<float>(D)),
                             kv.seq_stride};
    p.q = a.q + static_cast<std::size_t>(b0) * Tq * HD;
    p.k_layers = k_layers.data();
    p.v_layers = v_layers.data();
    p.src = src + b0;
    p.out = a.att + static_cast<std::size_t>(b0) * Tq * HD;
    p.lse = a.lse ? a.lse + static_cast<std::size_t>(b0) * H * Tq : nullptr;
    be_->attention_forward(p);
  });
}

void Model::mlp_half(int l, const ForwardStep& s, const LayerBuffers& a, bool to_output) {
  const LayerOffsets& w = layers_[l];
  const int N = s.B * s.Tq, C = cfg_.d_model, F = cfg_.d_ff, HD = cfg_.n_heads * head_dim();
  const float eps = static_cast<float>(cfg_.norm_eps);
  const std::size_t NC = static_cast<std::size_t>(N) * C, NF = static_cast<std::size_t>(N) * F;
  be_->copy(a.mid, a.x, NC * sizeof(float));
  be_->matmul(a.att, W(w.wo), a.mid, N, C, HD, false, true, 1.f, 1.f);

  be_->rmsnorm_forward(a.ln2, a.rstd2, a.mid, W(w.mlp_norm), N, C, eps);
  be_->matmul(a.ln2, W(w.w_gate), a.gate, N, F, C, false, true, 1.f, 0.f);
  be_->matmul(a.ln2, W(w.w_up), a.up, N, F, C, false, true, 1.f, 0.f);
  be_->swiglu_forward(a.act, a.gate, a.up, NF);
  if (!to_output) return;
  be_->copy(a.out, a.mid, NC * sizeof(float));
  be_->matmul(a.act, W(w.w_down), a.out, N, C, F, false, true, 1.f, 1.f);
}

float Model::run_forward(const int32_t* tokens, const int32_t* targets, int B, int T, const RouteTable& routes,
                         bool keep_grad, float loss_scale) {
  if (T > cfg_.context)
    throw std::invalid_argument("sequence length " + std::to_string(T) + " exceeds model context " +
                                std::to_string(cfg_.context));
  if (routes.B != B || routes.L != cfg_.n_layers) throw std::invalid_argument("route table shape mismatch");
  check_tokens(tokens, static_cast<std::size_t>(B) * T);
  // Checked here, on the host, so every backend refuses the same input (a device kernel cannot throw).
  if (targets)
    for (int i = 0; i < B * T; ++i)
      if (targets[i] >= cfg_.vocab_size)
        throw std::invalid_argument("target id " + std::to_string(targets[i]) + " at position " + std::to_string(i) +
                                    " outside vocabulary of " + std::to_string(cfg_.vocab_size) +
                                    " (negative targets are ignored)");
  ensure_activations(B, T);
  Activations& a = act_;
  const int N = B * T, C = cfg_.d_model, L = cfg_.n_layers, V = cfg_.vocab_size;
  const std::size_t NC = static_cast<std::size_t>(N) * C;

  be_->copy_to_device(a.tokens.get(), tokens, sizeof(int32_t) * N);
  embed(a.tokens.get(), a.resid.get(), N);

  const KvStore kv = training_kv();
  const ForwardStep step{B, T, nullptr, nullptr};
  for (int l = 0; l < L; ++l) {
    const std::vector<int32_t> src = routes.layer(l);
    layer_forward(l, step, kv, src.data(), routes.is_source(l), training_buffers(l));
  }
  head_forward(a.resid.get() + L * NC, a.lnf.get(), a.rstdf.get(), a.logits.get(), N);
  if (!targets) return 0.f;

  int n_valid = 0;
  for (int i = 0; i < N; ++i) n_valid += targets[i] >= 0;
  if (n_valid == 0) throw std::invalid_argument("batch has no valid targets");
  be_->copy_to_device(a.targets.get(), targets, sizeof(int32_t) * N);
  // The mean loss's gradient is (softmax - onehot) / n_valid, times the caller's scale.
  be_->cross_entropy(a.logits.get(), a.targets.get(), a.losses.get(), keep_grad ? a.logits.get() : nullptr, N, V,
                     loss_scale / n_valid);
  std::vector<float> losses(N);
  be_->copy_to_host(losses.data(), a.losses.get(), sizeof(float) * N);
  double sum = 0;
  for (float x : losses) sum += x;
  return static_cast<float>(sum / n_valid);
}

void Model::run_backward(int B, int T, const RouteTable& routes, const GradsReady& on_grads_ready) {
  auto grads_ready_from = [&](std::size_t begin) {
    if (on_grads_ready) on_grads_ready(begin);
  };
  Activations& a = act_;
  const int N = B * T, C = cfg_.d_model, F = cfg_.d_ff, D = head_dim(), L = cfg_.n_layers;
  const int H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, HD = H * D, KD = Hkv * D, V = cfg_.vocab_size;
  const std::size_t NC = static_cast<std::size_t>(N) * C, NF = static_cast<std::size_t>(N) * F;
  const float* dlogits = a.logits.get();

  // Output head and final norm.
  be_->matmul(dlogits, W(off_head_), a.dln.get(), N, C, V, false, false, 1.f, 0.f);
  be_->matmul(dlogits, a.lnf.get(), dW(off_head_), V, C, N, true, false, 1.f, 1.f);
  be_->fill_zero(a.dresid.get(), a.dresid.bytes());
  be_->rmsnorm_backward(a.dresid.get(), dW(off_final_norm_), a.dln.get(), a.resid.get() + L * NC,
                        W(off_final_norm_), a.rstdf.get(), N, C);
  grads_ready_from(off_final_norm_);  // final norm and an untied head; a tied head's gradient is the embedding's

  be_->fill_zero(a.dk.get(), a.dk.bytes());
  be_->fill_zero(a.dv.get(), a.dv.bytes());
  std::vector<const float*> k_layers(L), v_layers(L);
  std::vector<float*> dk_layers(L), dv_layers(L);
  for (int l = 0; l < L; ++l) {
    const std::size_t off = static_cast<std::size_t>(l) * N * KD;
    k_layers[l] = a.k.get() + off;
    v_layers[l] = a.v.get() + off;
    dk_layers[l] = a.dk.get() + off;
    dv_layers[l] = a.dv.get() + off;
  }

  const KvStore kv = training_kv();
  const ForwardStep step{B, T, nullptr, nullptr};
  for (int l = L - 1; l >= 0; --l) {
    const LayerOffsets& w = layers_[l];
    const LayerBuffers buf = training_buffers(l);
    const std::vector<int32_t> src = routes.layer(l);
    // Rebuild what the forward did not keep. K/V are always kept: layers above read them.
    if (!keeps_attention()) attention_half(l, step, kv, src.data(), false, buf);
    if (!keeps_mlp()) mlp_half(l, step, buf, false);

    // MLP: x' = mid + act Wd^T. dresid holds dL/dx', which is also the residual part of dL/dmid.
    const float *mid = buf.mid, *ln2 = buf.ln2, *gate = buf.gate, *up = buf.up, *act = buf.act;
    be_->matmul(a.dresid.get(), W(w.w_down), a.dact.get(), N, F, C, false, false, 1.f, 0.f);
    be_->matmul(a.dresid.get(), act, dW(w.w_down), C, F, N, true, false, 1.f, 1.f);
    be_->fill_zero(a.dgate.get(), a.dgate.bytes());
    be_->fill_zero(a.dup.get(), a.dup.bytes());
    be_->swiglu_backward(a.dgate.get(), a.dup.get(), a.dact.get(), gate, up, NF);
    be_->matmul(a.dgate.get(), W(w.w_gate), a.dln.get(), N, C, F, false, false, 1.f, 0.f);
    be_->matmul(a.dup.get(), W(w.w_up), a.dln.get(), N, C, F, false, false, 1.f, 1.f);
    be_->matmul(a.dgate.get(), ln2, dW(w.w_gate), F, C, N, true, false, 1.f, 1.f);
    be_->matmul(a.dup.get(), ln2, dW(w.w_up), F, C, N, true, false, 1.f, 1.f);
    be_->rmsnorm_backward(a.dresid.get(), dW(w.mlp_norm), a.dln.get(), mid, W(w.mlp_norm),
                          buf.rstd2, N, C);

    // Attention: mid = x + att Wo^T. dresid now holds dL/dmid.
    const float *x = buf.x, *ln1 = buf.ln1, *q = buf.q, *att = buf.att;
    be_->matmul(a.dresid.get(), W(w.wo), a.datt.get(), N, HD, C, false, false, 1.f, 0.f);
    be_->matmul(a.dresid.get(), att, dW(w.wo), C, HD, N, true, false, 1.f, 1.f);
    be_->fill_zero(a.dq.get(), a.dq.bytes());
    AttentionBackward p;
    p.shape = AttentionShape{B, T, T, H, Hkv, D, 0, 1.f / std::sqrt(static_cast<float>(D)), 0};
    p.q = q;
    p.k_layers = k_layers.data();
    p.v_layers = v_layers.data();
    p.src = src.data();
    p.out = att;
    p.lse = buf.lse;
    p.dout = a.datt.get();
    p.dq = a.dq.get();
    p.dk_layers = dk_layers.data();
    p.dv_layers = dv_layers.data();
    be_->attention_backward(p);

    // From the gradient of the projection's output (after its norm, if any) to the gradient of
    // the projection itself (and the norm gains, the bias); datt, spent, holds the pre-norm gradient.
    auto unproject = [&](float* dout, std::size_t bias, std::size_t norm, int width, int heads, const float* pre,
                         const float* rstd) -> float* {
      float* dpre = dout;
      if (cfg_.qk_norm && norm) {
        dpre = a.datt.get();
        be_->fill_zero(dpre, static_cast<std::size_t>(N) * width * sizeof(float));
        be_->rmsnorm_backward(dpre, dW(norm), dout, pre, W(norm), rstd, N * heads, D);
      }
      if (cfg_.qkv_bias) be_->bias_backward(dW(bias), dpre, N, width);
      return dpre;
    };
    be_->rope_backward(a.dq.get(), B, T, H, D, 0, rope_);
    const float* dq = unproject(a.dq.get(), w.bq, w.q_norm, HD, H, buf.q_pre, buf.rstd_q);
    be_->matmul(dq, W(w.wq), a.dln.get(), N, C, HD, false, false, 1.f, 0.f);
    be_->matmul(dq, ln1, dW(w.wq), HD, C, N, true, false, 1.f, 1.f);
    if (routes.is_source(l)) {
      // Every reader of layer l (all above it, and l itself) has now added its dK/dV.
      be_->rope_backward(dk_layers[l], B, T, Hkv, D, 0, rope_);
      const float* dk = unproject(dk_layers[l], w.bk, w.k_norm, KD, Hkv, buf.k_pre, buf.rstd_k);
      const float* dv = unproject(dv_layers[l], w.bv, 0, KD, Hkv, nullptr, nullptr);
      be_->matmul(dk, W(w.wk), a.dln.get(), N, C, KD, false, false, 1.f, 1.f);
      be_->matmul(dk, ln1, dW(w.wk), KD, C, N, true, false, 1.f, 1.f);
      be_->matmul(dv, W(w.wv), a.dln.get(), N, C, KD, false, false, 1.f, 1.f);
      be_->matmul(dv, ln1, dW(w.wv), KD, C, N, true, false, 1.f, 1.f);
    }
    be_->rmsnorm_backward(a.dresid.get(), dW(w.attn_norm), a.dln.get(), x, W(w.attn_norm),
                          buf.rstd1, N, C);
    grads_ready_from(w.attn_norm);  // the layer's first tensor: all of layer l is final
  }
  be_->embedding_backward(dW(off_embed_), a.dresid.get(), a.tokens.get(), N, C);
  grads_ready_from(0);
}

}  // namespace kvroute
