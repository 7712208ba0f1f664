// The transformer's forward and backward, side by side, against the op interface.
//
// Per layer (N = B*T tokens, C = d_model):
//   ln1  = rmsnorm(x)                 q = rope(ln1 Wq^T)
//   k,v  = rope(ln1 Wk^T), ln1 Wv^T   only if some sequence reads this layer's K/V
//   att  = attention(q, K/V of src[b])   (stochastic KV routing)
//   mid  = x + att Wo^T
//   ln2  = rmsnorm(mid)               act = silu(ln2 Wg^T) * (ln2 Wu^T)
//   x'   = mid + act Wd^T
// Backward walks the layers top-down. Layer l's attention backward adds dK/dV
// into its source layer's buffers; since sources are never above l, by the time
// the walk reaches layer s every reader of s has contributed, and s can push
// its complete dK/dV through its own projections.
#include "kvroute/model.h"

#include <cmath>
#include <stdexcept>

#include "kvroute/rng.h"

namespace kvroute {

namespace {
std::string layer_name(int l, const char* what) { return "layers/" + std::to_string(l) + "/" + what; }
}  // namespace

std::size_t Model::add_tensor(const std::string& name, std::vector<int> shape, bool decay) {
  ParamTensor t;
  t.name = name;
  t.shape = std::move(shape);
  t.numel = 1;
  for (int d : t.shape) t.numel *= static_cast<std::size_t>(d);
  t.offset = n_params_;
  t.weight_decay = decay;
  n_params_ += t.numel;
  tensors_.push_back(t);
  return t.offset;
}

Model::Model(const ModelConfig& cfg, Backend* backend) : cfg_(cfg), be_(backend) {
  if (cfg.n_heads <= 0 || cfg.n_kv_heads <= 0 || cfg.n_heads % cfg.n_kv_heads != 0)
    throw std::invalid_argument("model: n_kv_heads must divide n_heads");
  if (cfg.d_model % cfg.n_heads != 0 || (cfg.d_model / cfg.n_heads) % 2 != 0)
    throw std::invalid_argument("model: d_model / n_heads must be an even integer (RoPE pairs)");
  const int C = cfg.d_model, F = cfg.d_ff, D = head_dim();
  const int HD = cfg.n_heads * D, KD = cfg.n_kv_heads * D;
  off_embed_ = add_tensor("embed", {cfg.vocab_size, C}, true);
  for (int l = 0; l < cfg.n_layers; ++l) {
    LayerOffsets o;
    o.attn_norm = add_tensor(layer_name(l, "attn_norm"), {C}, false);
    o.wq = add_tensor(layer_name(l, "attn/wq"), {HD, C}, true);
    o.wk = add_tensor(layer_name(l, "attn/wk"), {KD, C}, true);
    o.wv = add_tensor(layer_name(l, "attn/wv"), {KD, C}, true);
    o.wo = add_tensor(layer_name(l, "attn/wo"), {C, HD}, true);
    o.mlp_norm = add_tensor(layer_name(l, "mlp_norm"), {C}, false);
    o.w_gate = add_tensor(layer_name(l, "mlp/w_gate"), {F, C}, true);
    o.w_up = add_tensor(layer_name(l, "mlp/w_up"), {F, C}, true);
    o.w_down = add_tensor(layer_name(l, "mlp/w_down"), {C, F}, true);
    layers_.push_back(o);
  }
  off_final_norm_ = add_tensor("final_norm", {C}, false);
  off_head_ = cfg.tie_embeddings ? off_embed_ : add_tensor("lm_head", {cfg.vocab_size, C}, true);
  params_ = DeviceBuffer<float>(be_, n_params_);
  grads_ = DeviceBuffer<float>(be_, n_params_);
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
  a.resid_mid = DeviceBuffer<float>(be_, L * N * C);
  a.ln1 = DeviceBuffer<float>(be_, L * N * C);
  a.ln2 = DeviceBuffer<float>(be_, L * N * C);
  a.rstd1 = DeviceBuffer<float>(be_, L * N);
  a.rstd2 = DeviceBuffer<float>(be_, L * N);
  a.q = DeviceBuffer<float>(be_, L * N * HD);
  a.att = DeviceBuffer<float>(be_, L * N * HD);
  a.k = DeviceBuffer<float>(be_, L * N * KD);
  a.v = DeviceBuffer<float>(be_, L * N * KD);
  a.lse = DeviceBuffer<float>(be_, L * N * cfg_.n_heads);
  a.gate = DeviceBuffer<float>(be_, L * N * F);
  a.up = DeviceBuffer<float>(be_, L * N * F);
  a.act = DeviceBuffer<float>(be_, L * N * F);
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
                                       &a.k, &a.v, &a.lse, &a.gate, &a.up, &a.act, &a.lnf, &a.rstdf, &a.logits,
                                       &a.losses, &a.dresid, &a.dln, &a.datt, &a.dq, &a.dk, &a.dv, &a.dact,
                                       &a.dgate, &a.dup})
    total += b->bytes();
  return total + a.tokens.bytes() + a.targets.bytes();
}

float Model::forward(const int32_t* tokens, const int32_t* targets, int B, int T, const RouteTable& routes) {
  return run_forward(tokens, targets, B, T, routes, false, 1.f);
}

float Model::forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T,
                              const RouteTable& routes, float loss_scale) {
  if (!targets) throw std::invalid_argument("forward_backward needs targets");
  const float loss = run_forward(tokens, targets, B, T, routes, true, loss_scale);
  run_backward(B, T, routes);
  return loss;
}

float Model::run_forward(const int32_t* tokens, const int32_t* targets, int B, int T, const RouteTable& routes,
                         bool keep_grad, float loss_scale) {
  if (T > cfg_.context)
    throw std::invalid_argument("sequence length " + std::to_string(T) + " exceeds model context " +
                                std::to_string(cfg_.context));
  if (routes.B != B || routes.L != cfg_.n_layers) throw std::invalid_argument("route table shape mismatch");
  for (int i = 0; i < B * T; ++i)
    if (tokens[i] < 0 || tokens[i] >= cfg_.vocab_size)
      throw std::invalid_argument("token id " + std::to_string(tokens[i]) + " outside vocabulary of " +
                                  std::to_string(cfg_.vocab_size));
  ensure_activations(B, T);
  Activations& a = act_;
  const int N = B * T, C = cfg_.d_model, F = cfg_.d_ff, D = head_dim(), L = cfg_.n_layers;
  const int H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, HD = H * D, KD = Hkv * D, V = cfg_.vocab_size;
  const float eps = static_cast<float>(cfg_.norm_eps), theta = static_cast<float>(cfg_.rope_theta);
  const std::size_t NC = static_cast<std::size_t>(N) * C, NF = static_cast<std::size_t>(N) * F;

  be_->copy_to_device(a.tokens.get(), tokens, sizeof(int32_t) * N);
  be_->embedding_forward(a.resid.get(), a.tokens.get(), W(off_embed_), N, C);

  std::vector<const float*> k_layers(L), v_layers(L);
  for (int l = 0; l < L; ++l) {
    k_layers[l] = a.k.get() + static_cast<std::size_t>(l) * N * KD;
    v_layers[l] = a.v.get() + static_cast<std::size_t>(l) * N * KD;
  }
  for (int l = 0; l < L; ++l) {
    const LayerOffsets& w = layers_[l];
    float* x = a.resid.get() + l * NC;
    float* ln1 = a.ln1.get() + l * NC;
    float* q = a.q.get() + static_cast<std::size_t>(l) * N * HD;
    float* att = a.att.get() + static_cast<std::size_t>(l) * N * HD;
    float* mid = a.resid_mid.get() + l * NC;
    be_->rmsnorm_forward(ln1, a.rstd1.get() + static_cast<std::size_t>(l) * N, x, W(w.attn_norm), N, C, eps);
    be_->matmul(ln1, W(w.wq), q, N, HD, C, false, true, 1.f, 0.f);
    be_->rope_forward(q, B, T, H, D, 0, theta);
    if (routes.is_source(l)) {
      float* k = const_cast<float*>(k_layers[l]);
      float* v = const_cast<float*>(v_layers[l]);
      be_->matmul(ln1, W(w.wk), k, N, KD, C, false, true, 1.f, 0.f);
      be_->rope_forward(k, B, T, Hkv, D, 0, theta);
      be_->matmul(ln1, W(w.wv), v, N, KD, C, false, true, 1.f, 0.f);
      ++kv_projections_;
    }
    const std::vector<int32_t> src = routes.layer(l);
    AttentionForward p;
    p.shape = AttentionShape{B, T, T, H, Hkv, D, 0, 1.f / std::sqrt(static_cast<float>(D)), 0};
    p.q = q;
    p.k_layers = k_layers.data();
    p.v_layers = v_layers.data();
    p.src = src.data();
    p.out = att;
    p.lse = a.lse.get() + static_cast<std::size_t>(l) * N * H;
    be_->attention_forward(p);
    be_->copy(mid, x, NC * sizeof(float));
    be_->matmul(att, W(w.wo), mid, N, C, HD, false, true, 1.f, 1.f);

    float* ln2 = a.ln2.get() + l * NC;
    float* gate = a.gate.get() + l * NF;
    float* up = a.up.get() + l * NF;
    float* act = a.act.get() + l * NF;
    float* x_next = a.resid.get() + (l + 1) * NC;
    be_->rmsnorm_forward(ln2, a.rstd2.get() + static_cast<std::size_t>(l) * N, mid, W(w.mlp_norm), N, C, eps);
    be_->matmul(ln2, W(w.w_gate), gate, N, F, C, false, true, 1.f, 0.f);
    be_->matmul(ln2, W(w.w_up), up, N, F, C, false, true, 1.f, 0.f);
    be_->swiglu_forward(act, gate, up, NF);
    be_->copy(x_next, mid, NC * sizeof(float));
    be_->matmul(act, W(w.w_down), x_next, N, C, F, false, true, 1.f, 1.f);
  }
  be_->rmsnorm_forward(a.lnf.get(), a.rstdf.get(), a.resid.get() + L * NC, W(off_final_norm_), N, C, eps);
  be_->matmul(a.lnf.get(), W(off_head_), a.logits.get(), N, V, C, false, true, 1.f, 0.f);
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

void Model::run_backward(int B, int T, const RouteTable& routes) {
  Activations& a = act_;
  const int N = B * T, C = cfg_.d_model, F = cfg_.d_ff, D = head_dim(), L = cfg_.n_layers;
  const int H = cfg_.n_heads, Hkv = cfg_.n_kv_heads, HD = H * D, KD = Hkv * D, V = cfg_.vocab_size;
  const float theta = static_cast<float>(cfg_.rope_theta);
  const std::size_t NC = static_cast<std::size_t>(N) * C, NF = static_cast<std::size_t>(N) * F;
  const float* dlogits = a.logits.get();

  // Output head and final norm.
  be_->matmul(dlogits, W(off_head_), a.dln.get(), N, C, V, false, false, 1.f, 0.f);
  be_->matmul(dlogits, a.lnf.get(), dW(off_head_), V, C, N, true, false, 1.f, 1.f);
  be_->fill_zero(a.dresid.get(), a.dresid.bytes());
  be_->rmsnorm_backward(a.dresid.get(), dW(off_final_norm_), a.dln.get(), a.resid.get() + L * NC,
                        W(off_final_norm_), a.rstdf.get(), N, C);

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

  for (int l = L - 1; l >= 0; --l) {
    const LayerOffsets& w = layers_[l];
    // MLP: x' = mid + act Wd^T. dresid holds dL/dx', which is also the residual part of dL/dmid.
    const float* mid = a.resid_mid.get() + l * NC;
    const float* ln2 = a.ln2.get() + l * NC;
    const float* gate = a.gate.get() + l * NF;
    const float* up = a.up.get() + l * NF;
    const float* act = a.act.get() + l * NF;
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
                          a.rstd2.get() + static_cast<std::size_t>(l) * N, N, C);

    // Attention: mid = x + att Wo^T. dresid now holds dL/dmid.
    const float* x = a.resid.get() + l * NC;
    const float* ln1 = a.ln1.get() + l * NC;
    const float* q = a.q.get() + static_cast<std::size_t>(l) * N * HD;
    const float* att = a.att.get() + static_cast<std::size_t>(l) * N * HD;
    be_->matmul(a.dresid.get(), W(w.wo), a.datt.get(), N, HD, C, false, false, 1.f, 0.f);
    be_->matmul(a.dresid.get(), att, dW(w.wo), C, HD, N, true, false, 1.f, 1.f);
    be_->fill_zero(a.dq.get(), a.dq.bytes());
    const std::vector<int32_t> src = routes.layer(l);
    AttentionBackward p;
    p.shape = AttentionShape{B, T, T, H, Hkv, D, 0, 1.f / std::sqrt(static_cast<float>(D)), 0};
    p.q = q;
    p.k_layers = k_layers.data();
    p.v_layers = v_layers.data();
    p.src = src.data();
    p.out = att;
    p.lse = a.lse.get() + static_cast<std::size_t>(l) * N * H;
    p.dout = a.datt.get();
    p.dq = a.dq.get();
    p.dk_layers = dk_layers.data();
    p.dv_layers = dv_layers.data();
    be_->attention_backward(p);

    be_->rope_backward(a.dq.get(), B, T, H, D, 0, theta);
    be_->matmul(a.dq.get(), W(w.wq), a.dln.get(), N, C, HD, false, false, 1.f, 0.f);
    be_->matmul(a.dq.get(), ln1, dW(w.wq), HD, C, N, true, false, 1.f, 1.f);
    if (routes.is_source(l)) {
      // Every reader of layer l (all above it, and l itself) has now added its dK/dV.
      be_->rope_backward(dk_layers[l], B, T, Hkv, D, 0, theta);
      be_->matmul(dk_layers[l], W(w.wk), a.dln.get(), N, C, KD, false, false, 1.f, 1.f);
      be_->matmul(dk_layers[l], ln1, dW(w.wk), KD, C, N, true, false, 1.f, 1.f);
      be_->matmul(dv_layers[l], W(w.wv), a.dln.get(), N, C, KD, false, false, 1.f, 1.f);
      be_->matmul(dv_layers[l], ln1, dW(w.wv), KD, C, N, true, false, 1.f, 1.f);
    }
    be_->rmsnorm_backward(a.dresid.get(), dW(w.attn_norm), a.dln.get(), x, W(w.attn_norm),
                          a.rstd1.get() + static_cast<std::size_t>(l) * N, N, C);
  }
  be_->embedding_backward(dW(off_embed_), a.dresid.get(), a.tokens.get(), N, C);
}

}  // namespace kvroute
