// The model features the Llama / Mistral / Qwen2 / Qwen3 families need: q/k/v biases
// (model.qkv_bias), per-head q/k RMSNorm (model.qk_norm), a head_dim other than
// d_model / n_heads (model.head_dim), Llama 3.1 RoPE scaling (model.rope_scaling) and an
// untied head; each against finite differences with KV routing and every recompute mode.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "finite_difference.h"
#include "kvroute/memory_estimate.h"
#include "kvroute/model.h"
#include "kvroute/routing.h"

using namespace kvroute;

namespace {

using testing_fd::Data;
using testing_fd::make_batch;

ModelConfig tiny_model() {
  ModelConfig m;
  m.vocab_size = 11;
  m.d_model = 8;
  m.n_layers = 4;
  m.n_heads = 2;
  m.n_kv_heads = 1;
  m.d_ff = 12;
  m.context = 8;
  m.init_std = 0.3;  // larger weights give gradients well above float rounding
  return m;
}

ModelConfig with_bias() {
  ModelConfig m = tiny_model();
  m.qkv_bias = true;
  return m;
}
ModelConfig with_qk_norm() {
  ModelConfig m = tiny_model();
  m.qk_norm = true;
  return m;
}
ModelConfig with_head_dim() {
  ModelConfig m = tiny_model();
  m.n_heads = 4;
  m.n_kv_heads = 2;
  m.head_dim = 6;  // d_model / n_heads would be 2
  return m;
}
ModelConfig with_llama3_rope() {
  ModelConfig m = tiny_model();
  m.rope_scaling = "llama3";
  // head_dim 4: inverse frequencies 1 and 0.01, wavelengths 6.3 and 628. With an original
  // context of 16 the first lies on the smooth ramp (between 16/4 and 16/1), the second is
  // divided by the factor: both change.
  m.rope_original_context = 16;
  m.rope_factor = 4;
  m.rope_theta = 10000;
  return m;
}
ModelConfig with_untied_head() {
  ModelConfig m = tiny_model();
  m.tie_embeddings = false;
  return m;
}
ModelConfig with_everything() {
  ModelConfig m = with_llama3_rope();
  m.qkv_bias = m.qk_norm = true;
  m.n_heads = 4;
  m.n_kv_heads = 2;
  m.head_dim = 6;
  m.tie_embeddings = false;
  return m;
}

struct Named {
  const char* name;
  ModelConfig mc;
};
std::vector<Named> feature_models() {
  return {{"qkv_bias", with_bias()},         {"qk_norm", with_qk_norm()},         {"head_dim", with_head_dim()},
          {"llama3", with_llama3_rope()},    {"untied", with_untied_head()},      {"everything", with_everything()}};
}

// A route table with sharing: row 0 chains, row 1 reads layer 0 from layer 3, row 2 is a
// sampled stochastic table (different per sequence).
RouteTable routed(int L) {
  RoutingConfig rc;
  rc.mode = "stochastic";
  rc.granularity = "sequence";
  rc.p = 0.7;
  rc.scheme = "any";
  RouteTable r = sample_routes(rc, 3, L, 7, 11, 0);
  const std::vector<int> row0 = {0, 0, 2, 2}, row1 = {0, 1, 1, 0};
  for (int l = 0; l < L; ++l) r.src[0 * L + l] = row0[l], r.src[1 * L + l] = row1[l];
  return r;
}

// Random weights, and norm gains and biases away from their init (1, 0), so every term of
// the backward is exercised.
void randomize(Model& model, uint32_t seed) {
  model.init_weights(seed);
  std::vector<float> p = model.params_to_host();
  std::mt19937 rng(seed + 100);
  std::normal_distribution<float> normal(0.f, 0.3f);
  for (const ParamTensor& t : model.tensors())
    if (t.shape.size() == 1)
      for (std::size_t i = 0; i < t.numel; ++i) p[t.offset + i] += normal(rng);
  model.params_from_host(p);
}

// For each parameter tensor, the directional derivative along a random direction confined to
// it against a central finite difference (tests/finite_difference.h).
void check_gradients(const ModelConfig& mc, const RouteTable& routes, const std::string& recompute, uint32_t seed,
                     const std::string& what) {
  auto be = make_backend("cpu");
  Model model(mc, be.get());
  model.set_recompute(recompute);
  randomize(model, seed);
  const Data d = make_batch(mc.vocab_size, seed + 1);
  // h smaller than test_model.cpp's 1e-2: with q/k norms the loss curves more.
  testing_fd::check_directional_derivatives(model, d.tokens.data(), d.targets.data(), d.B, d.T, routes, seed + 2,
                                            /*h=*/3e-3, what);
}

std::vector<std::string> layer_tensor_names(const Model& model, int l) {
  const std::string prefix = "layers/" + std::to_string(l) + "/";
  std::vector<std::string> names;
  for (const ParamTensor& t : model.tensors())
    if (t.name.starts_with(prefix)) names.push_back(t.name.substr(prefix.size()));
  return names;
}

}  // namespace

TEST(ModelFeatures, FiniteDifferenceGradientsWithRoutingAndEveryRecomputeMode) {
  uint32_t seed = 30;
  for (const Named& m : feature_models())
    for (const char* recompute : {"none", "attention", "layer"})
      check_gradients(m.mc, routed(m.mc.n_layers), recompute, seed++, std::string(m.name) + ", recompute " + recompute);
}

TEST(ModelFeatures, FullCacheGradients) {
  check_gradients(with_everything(), identity_routes(3, 4), "none", 60, "everything, no routing");
}

TEST(ModelFeatures, RecomputeGivesBitwiseTheSameGradients) {
  for (const Named& m : feature_models()) {
    auto run = [&](const std::string& recompute) {
      auto be = make_backend("cpu");
      Model model(m.mc, be.get());
      model.set_recompute(recompute);
      randomize(model, 70);
      const Data d = make_batch(m.mc.vocab_size, 71);
      model.zero_grads();
      const float loss = model.forward_backward(d.tokens.data(), d.targets.data(), d.B, d.T, routed(4), 1.f);
      return std::make_pair(loss, model.grads_to_host());
    };
    const auto none = run("none");
    for (const char* mode : {"attention", "layer"}) {
      const auto r = run(mode);
      EXPECT_EQ(none.first, r.first) << m.name << ", recompute " << mode;
      EXPECT_TRUE(none.second == r.second) << m.name << ", recompute " << mode;
    }
  }
}

TEST(ModelFeatures, TensorNamesShapesOrderAndInit) {
  auto be = make_backend("cpu");
  const ModelConfig mc = with_everything();
  Model model(mc, be.get());
  model.init_weights(1);
  EXPECT_EQ(model.head_dim(), 6);
  EXPECT_EQ(layer_tensor_names(model, 2),
            (std::vector<std::string>{"attn_norm", "attn/wq", "attn/wk", "attn/wv", "attn/bq", "attn/bk", "attn/bv",
                                      "attn/q_norm", "attn/k_norm", "attn/wo", "mlp_norm", "mlp/w_gate", "mlp/w_up",
                                      "mlp/w_down"}));
  const int HD = 4 * 6, KD = 2 * 6, C = 8;
  auto shape = [&](const std::string& name) { return model.tensor("layers/1/" + name).shape; };
  EXPECT_EQ(shape("attn/wq"), (std::vector<int>{HD, C}));
  EXPECT_EQ(shape("attn/wk"), (std::vector<int>{KD, C}));
  EXPECT_EQ(shape("attn/wv"), (std::vector<int>{KD, C}));
  EXPECT_EQ(shape("attn/wo"), (std::vector<int>{C, HD}));
  EXPECT_EQ(shape("attn/bq"), (std::vector<int>{HD}));
  EXPECT_EQ(shape("attn/bk"), (std::vector<int>{KD}));
  EXPECT_EQ(shape("attn/bv"), (std::vector<int>{KD}));
  EXPECT_EQ(shape("attn/q_norm"), (std::vector<int>{6}));
  EXPECT_EQ(shape("attn/k_norm"), (std::vector<int>{6}));
  EXPECT_EQ(model.tensors().back().name, "lm_head");
  const std::vector<float> p = model.params_to_host();
  for (const char* name : {"attn/bq", "attn/bk", "attn/bv", "attn/q_norm", "attn/k_norm"}) {
    const ParamTensor& t = model.tensor(std::string("layers/3/") + name);
    EXPECT_FALSE(t.weight_decay) << name;
    const float want = std::string(name).ends_with("norm") ? 1.f : 0.f;
    for (std::size_t i = 0; i < t.numel; ++i) ASSERT_EQ(p[t.offset + i], want) << name;
  }
  EXPECT_TRUE(model.tensor("layers/3/attn/wq").weight_decay);

  // Defaults: the layer is what it always was.
  Model plain(tiny_model(), be.get());
  EXPECT_EQ(layer_tensor_names(plain, 0), (std::vector<std::string>{"attn_norm", "attn/wq", "attn/wk", "attn/wv", "attn/wo",
                                                                    "mlp_norm", "mlp/w_gate", "mlp/w_up", "mlp/w_down"}));
  EXPECT_EQ(plain.head_dim(), 4);
}

TEST(ModelFeatures, EachFeatureChangesTheOutput) {
  // A feature that silently did nothing would pass the gradient checks.
  auto be = make_backend("cpu");
  const Data d = make_batch(11, 3);
  auto loss_of = [&](const ModelConfig& mc, bool perturb) {
    Model model(mc, be.get());
    if (perturb) randomize(model, 5);
    else model.init_weights(5);
    return model.forward(d.tokens.data(), d.targets.data(), d.B, d.T, identity_routes(3, 4));
  };
  const float base = loss_of(tiny_model(), false);
  EXPECT_EQ(loss_of(with_bias(), false), base);  // zero biases: the same function...
  EXPECT_NE(loss_of(with_bias(), true), loss_of(tiny_model(), true));  // ...until they are not
  EXPECT_NE(loss_of(with_qk_norm(), false), base);
  EXPECT_NE(loss_of(with_llama3_rope(), false), base);
  ModelConfig far = with_llama3_rope();
  far.rope_original_context = 100000;  // every wavelength below context / high_freq_factor: unscaled
  EXPECT_EQ(loss_of(far, false), base);
}

TEST(ModelFeatures, RejectsBadHeadDimAndRope) {
  auto be = make_backend("cpu");
  ModelConfig mc = tiny_model();
  mc.head_dim = 5;
  EXPECT_THROW(Model(mc, be.get()), std::invalid_argument);
  mc = tiny_model();
  mc.rope_scaling = "yarn";
  EXPECT_THROW(Model(mc, be.get()), std::invalid_argument);
  mc = with_llama3_rope();
  mc.rope_high_freq_factor = mc.rope_low_freq_factor;
  EXPECT_THROW(Model(mc, be.get()), std::invalid_argument);
}

TEST(ModelFeatures, MemoryEstimateMatchesWhatTheModelAllocates) {
  auto be = make_backend("cpu");
  for (const Named& m : feature_models())
    for (const char* recompute : {"none", "attention", "layer"}) {
      Model model(m.mc, be.get());
      model.set_recompute(recompute);
      model.init_weights(3);
      EXPECT_EQ(param_count(m.mc), model.num_params()) << m.name;
      const Data d = make_batch(m.mc.vocab_size, 5);
      model.zero_grads();
      model.forward_backward(d.tokens.data(), d.targets.data(), d.B, d.T, routed(4), 1.f);
      EXPECT_EQ(training_activation_bytes(m.mc, d.B, d.T, recompute), double(model.activation_bytes()))
          << m.name << ", recompute " << recompute;
    }
}
