// Whole-model tests: finite-difference gradients with KV routing on, K/V
// projections skipped for layers nobody reads, determinism, overfitting.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "finite_difference.h"
#include "kvroute/memory_estimate.h"
#include "kvroute/model.h"
#include "kvroute/optimizer.h"
#include "kvroute/routing.h"

using namespace kvroute;

namespace {

using testing_fd::Data;
using testing_fd::make_batch;

ModelConfig tiny_model(int n_kv_heads = 1, bool tied = true) {
  ModelConfig m;
  m.vocab_size = 11;
  m.d_model = 8;
  m.n_layers = 4;
  m.n_heads = 2;
  m.n_kv_heads = n_kv_heads;
  m.d_ff = 12;
  m.context = 8;
  m.tie_embeddings = tied;
  m.init_std = 0.3;  // larger weights give gradients well above float rounding
  return m;
}

RouteTable table(int B, int L, std::vector<std::vector<int>> rows) {
  RouteTable r = identity_routes(B, L);
  for (int b = 0; b < B; ++b)
    for (int l = 0; l < L; ++l) r.src[b * L + l] = rows[b][l];
  return r;
}

// For each parameter tensor, compares the directional derivative along a random
// direction confined to that tensor against a central finite difference.
void check_gradients(const ModelConfig& mc, const RouteTable& routes, uint32_t seed) {
  auto be = make_backend("cpu");
  Model model(mc, be.get());
  model.init_weights(seed);
  const Data d = make_batch(mc.vocab_size, seed + 1);
  const int checked = testing_fd::check_directional_derivatives(model, d.tokens.data(), d.targets.data(), d.B, d.T,
                                                                routes, seed + 2, /*h=*/1e-2);
  EXPECT_EQ(checked, static_cast<int>(model.tensors().size()));
}

}  // namespace

TEST(ModelGradients, FullCache) { check_gradients(tiny_model(), identity_routes(3, 4), 1); }

TEST(ModelGradients, RandomSourceTablesPerSequence) {
  // Each sequence routes differently; two sequences share a source layer.
  check_gradients(tiny_model(), table(3, 4, {{0, 0, 1, 2}, {0, 1, 0, 3}, {0, 0, 0, 0}}), 2);
  check_gradients(tiny_model(2), table(3, 4, {{0, 1, 1, 1}, {0, 0, 2, 0}, {0, 1, 2, 1}}), 3);
}

TEST(ModelGradients, ChainGroupsAndGqa) {
  // cla:2-like chains and an all-first map, with grouped KV heads (2 query heads per kv head).
  check_gradients(tiny_model(1), table(3, 4, {{0, 0, 2, 2}, {0, 0, 0, 0}, {0, 0, 2, 2}}), 4);
  check_gradients(tiny_model(1, false), table(3, 4, {{0, 0, 0, 3}, {0, 1, 1, 3}, {0, 1, 2, 3}}), 5);
}

TEST(ModelGradients, SampledStochasticRoutes) {
  RoutingConfig rc;
  rc.mode = "stochastic";
  rc.granularity = "sequence";  // different routes within the batch
  rc.p = 0.7;
  for (const char* scheme : {"previous", "chain", "any"}) {
    rc.scheme = scheme;
    check_gradients(tiny_model(2), sample_routes(rc, 3, 4, 7, 11, 0), 6);
  }
}

// The GradsReady hook's promise: at each call, grads[begin, n) already hold their final values
// for this forward_backward (so an all-reduce may start on them); begins fall, ending at 0.
TEST(Model, GradsReadyReportsOnlyFinalGradients) {
  auto be = make_backend("cpu");
  for (const bool tied : {true, false}) {
    const ModelConfig mc = tiny_model(2, tied);
    // Layer 3 reads layer 0's K/V in row 1: a lower layer's gradient gets contributions from above.
    const RouteTable routes = table(3, 4, {{0, 1, 2, 3}, {0, 1, 1, 0}, {0, 0, 2, 2}});
    Model model(mc, be.get());
    model.init_weights(21);
    const Data d = make_batch(mc.vocab_size, 22);
    const std::size_t n = model.num_params();
    std::vector<std::size_t> begins;
    std::vector<std::vector<float>> snapshots;
    model.zero_grads();
    model.forward_backward(d.tokens.data(), d.targets.data(), d.B, d.T, routes, 1.f, [&](std::size_t begin) {
      begins.push_back(begin);
      snapshots.push_back(model.grads_to_host());
    });
    const std::vector<float> final_grads = model.grads_to_host();
    ASSERT_EQ(begins.size(), static_cast<std::size_t>(mc.n_layers) + 2) << "tied " << tied;
    EXPECT_EQ(begins.front(), model.tensor("final_norm").offset);
    for (int l = 0; l < mc.n_layers; ++l)
      EXPECT_EQ(begins[1 + l], model.tensor("layers/" + std::to_string(mc.n_layers - 1 - l) + "/attn_norm").offset);
    EXPECT_EQ(begins.back(), 0u);
    for (std::size_t c = 0; c < begins.size(); ++c) {
      if (c > 0) EXPECT_LT(begins[c], begins[c - 1]);
      for (std::size_t i = begins[c]; i < n; ++i)
        ASSERT_EQ(snapshots[c][i], final_grads[i]) << "tied " << tied << ", call " << c << ", element " << i;
    }
    // And the hook changes nothing: the same gradients without it.
    model.zero_grads();
    model.forward_backward(d.tokens.data(), d.targets.data(), d.B, d.T, routes, 1.f);
    EXPECT_EQ(model.grads_to_host(), final_grads);
  }
}

TEST(Model, NonSourceLayersComputeNoKv) {
  auto be = make_backend("cpu");
  const ModelConfig mc = tiny_model();
  Model model(mc, be.get());
  model.init_weights(1);
  const Data d = make_batch(mc.vocab_size, 2);
  model.forward(d.tokens.data(), d.targets.data(), d.B, d.T, identity_routes(3, 4));
  EXPECT_EQ(model.kv_projections(), 4);
  model.forward(d.tokens.data(), d.targets.data(), d.B, d.T, fixed_routes(3, {0, 0, 2, 2}));
  EXPECT_EQ(model.kv_projections(), 4 + 2);
  model.forward(d.tokens.data(), d.targets.data(), d.B, d.T, fixed_routes(3, {0, 0, 0, 0}));
  EXPECT_EQ(model.kv_projections(), 4 + 2 + 1);
}

TEST(Model, RoutingChangesTheOutputOnlyWhereItShould) {
  auto be = make_backend("cpu");
  const ModelConfig mc = tiny_model();
  Model model(mc, be.get());
  model.init_weights(3);
  const Data d = make_batch(mc.vocab_size, 4);
  const float full = model.forward(d.tokens.data(), d.targets.data(), d.B, d.T, identity_routes(3, 4));
  const float again = model.forward(d.tokens.data(), d.targets.data(), d.B, d.T, identity_routes(3, 4));
  const float shared = model.forward(d.tokens.data(), d.targets.data(), d.B, d.T, fixed_routes(3, {0, 0, 0, 0}));
  EXPECT_EQ(full, again);
  EXPECT_NE(full, shared);
}

TEST(Model, SameSeedGivesIdenticalLosses) {
  auto run = [] {
    auto be = make_backend("cpu");
    const ModelConfig mc = tiny_model(2);
    Model model(mc, be.get());
    model.init_weights(42);
    TrainConfig tc;
    tc.lr = 1e-2;
    tc.steps = 5;
    tc.warmup_steps = 1;
    AdamW opt(tc, model);
    RoutingConfig rc;
    rc.mode = "stochastic";
    rc.scheme = "any";
    std::vector<float> losses;
    for (int step = 1; step <= 5; ++step) {
      const Data d = make_batch(mc.vocab_size, step);
      model.zero_grads();
      losses.push_back(model.forward_backward(d.tokens.data(), d.targets.data(), d.B, d.T,
                                              sample_routes(rc, d.B, mc.n_layers, 42, step, 0), 1.f));
      opt.step(learning_rate(tc, step));
    }
    return losses;
  };
  const auto a = run(), b = run();
  ASSERT_EQ(a.size(), 5u);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;
}

TEST(Model, OverfitsOneBatchWithRouting) {
  auto be = make_backend("cpu");
  ModelConfig mc = tiny_model(2);
  mc.d_model = 32;
  mc.d_ff = 64;
  mc.init_std = 0.02;
  Model model(mc, be.get());
  model.init_weights(7);
  TrainConfig tc;
  tc.lr = 1e-2;
  tc.steps = 150;
  tc.warmup_steps = 10;
  tc.weight_decay = 0;
  AdamW opt(tc, model);
  RoutingConfig rc;
  rc.mode = "stochastic";
  rc.p = 0.5;
  const Data d = make_batch(mc.vocab_size, 9);
  float first = 0, last = 0;
  for (int step = 1; step <= tc.steps; ++step) {
    model.zero_grads();
    last = model.forward_backward(d.tokens.data(), d.targets.data(), d.B, d.T,
                                  sample_routes(rc, d.B, mc.n_layers, 1, step, 0), 1.f);
    if (step == 1) first = last;
    opt.step(learning_rate(tc, step));
  }
  EXPECT_GT(first, 2.0f);  // about log(11) at init
  EXPECT_LT(last, 0.1f);
}

TEST(Model, RejectsBadInput) {
  auto be = make_backend("cpu");
  const ModelConfig mc = tiny_model();
  Model model(mc, be.get());
  std::vector<int32_t> tokens(3 * 6, 1);
  tokens[4] = 11;  // == vocab_size
  EXPECT_THROW(model.forward(tokens.data(), nullptr, 3, 6, identity_routes(3, 4)), std::invalid_argument);
  std::vector<int32_t> ok(3 * 9, 1);
  EXPECT_THROW(model.forward(ok.data(), nullptr, 3, 9, identity_routes(3, 4)), std::invalid_argument);  // > context
  EXPECT_THROW(model.forward(ok.data(), nullptr, 3, 6, identity_routes(2, 4)), std::invalid_argument);
  std::vector<int32_t> targets(3 * 6, -1);  // negative targets are ignored...
  targets[0] = 2;
  EXPECT_NO_THROW(model.forward(ok.data(), targets.data(), 3, 6, identity_routes(3, 4)));
  targets[7] = 11;  // ...one at vocab_size is refused before any op runs, on every backend
  try {
    model.forward_backward(ok.data(), targets.data(), 3, 6, identity_routes(3, 4), 1.f);
    ADD_FAILURE() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("target id 11 at position 7 outside vocabulary of 11"), std::string::npos)
        << e.what();
  }
  ModelConfig bad = mc;
  bad.n_kv_heads = 3;
  EXPECT_THROW(Model(bad, be.get()), std::invalid_argument);
}

// ---- activation recomputation (train.recompute) ----

namespace {

// Loss and gradients of one forward_backward with the given recompute mode.
std::pair<float, std::vector<float>> loss_and_grads(const ModelConfig& mc, const RouteTable& routes,
                                                    const std::string& recompute, uint32_t seed,
                                                    std::size_t* activation_bytes = nullptr) {
  auto be = make_backend("cpu");
  Model model(mc, be.get());
  model.set_recompute(recompute);
  model.init_weights(seed);
  const Data d = make_batch(mc.vocab_size, seed + 1);
  model.zero_grads();
  const float loss = model.forward_backward(d.tokens.data(), d.targets.data(), d.B, d.T, routes, 1.f);
  if (activation_bytes) *activation_bytes = model.activation_bytes();
  return {loss, model.grads_to_host()};
}

}  // namespace

TEST(ModelRecompute, GradientsBitwiseEqualToKeepingActivations) {
  // Recomputation re-runs the same deterministic ops on the same inputs, so the gradients
  // must match the kept-activation path (checked against finite differences above) exactly.
  struct Case {
    ModelConfig mc;
    RouteTable routes;
  };
  RoutingConfig rc;
  rc.mode = "stochastic";
  rc.granularity = "sequence";  // different routes within the batch
  rc.p = 0.7;
  const std::vector<Case> cases = {
      {tiny_model(), identity_routes(3, 4)},
      {tiny_model(2), table(3, 4, {{0, 1, 1, 1}, {0, 0, 2, 0}, {0, 1, 2, 1}})},
      {tiny_model(1, false), table(3, 4, {{0, 0, 0, 3}, {0, 1, 1, 3}, {0, 1, 2, 3}})},
      {tiny_model(2), sample_routes(rc, 3, 4, 7, 11, 0)},
  };
  int i = 0;
  for (const Case& c : cases) {
    const auto [loss, grads] = loss_and_grads(c.mc, c.routes, "none", 10 + i);
    for (const char* mode : {"attention", "layer"}) {
      const auto [loss_r, grads_r] = loss_and_grads(c.mc, c.routes, mode, 10 + i);
      EXPECT_EQ(loss, loss_r) << "case " << i << ", recompute " << mode;
      ASSERT_EQ(grads.size(), grads_r.size());
      std::size_t differing = 0;
      for (std::size_t j = 0; j < grads.size(); ++j) differing += grads[j] != grads_r[j];
      EXPECT_EQ(differing, 0u) << "case " << i << ", recompute " << mode;
    }
    ++i;
  }
}

TEST(ModelRecompute, FiniteDifferenceGradientsWithRecompute) {
  // Independent of the test above: the directional derivative of one tensor per kind
  // against a central difference, with every recompute mode and routing on.
  const ModelConfig mc = tiny_model(2);
  const RouteTable routes = table(3, 4, {{0, 0, 1, 2}, {0, 1, 0, 3}, {0, 0, 0, 0}});
  for (const char* mode : {"attention", "layer"}) {
    auto be = make_backend("cpu");
    Model model(mc, be.get());
    model.set_recompute(mode);
    model.init_weights(21);
    const Data d = make_batch(mc.vocab_size, 22);
    model.zero_grads();
    model.forward_backward(d.tokens.data(), d.targets.data(), d.B, d.T, routes, 1.f);
    const std::vector<float> grads = model.grads_to_host(), theta = model.params_to_host();
    for (const char* name : {"layers/0/attn/wk", "layers/1/attn/wq", "layers/2/attn/wo", "layers/2/mlp/w_gate",
                             "layers/3/mlp_norm", "layers/3/mlp/w_down", "embed"}) {
      const ParamTensor& t = model.tensor(name);
      std::mt19937 rng(5);
      std::normal_distribution<double> normal;
      std::vector<double> u(t.numel);
      double unorm = 0;
      for (double& x : u) x = normal(rng), unorm += x * x;
      unorm = std::sqrt(unorm);
      double analytic = 0;
      for (std::size_t i = 0; i < t.numel; ++i) analytic += grads[t.offset + i] * u[i] / unorm;
      auto loss_at = [&](double eps) {
        std::vector<float> p = theta;
        for (std::size_t i = 0; i < t.numel; ++i) p[t.offset + i] += static_cast<float>(eps * u[i] / unorm);
        model.params_from_host(p);
        return static_cast<double>(model.forward(d.tokens.data(), d.targets.data(), d.B, d.T, routes));
      };
      const double numeric = (loss_at(1e-2) - loss_at(-1e-2)) / 2e-2;
      EXPECT_NEAR(analytic, numeric, 2e-3 + 3e-2 * std::abs(numeric)) << name << ", recompute " << mode;
    }
  }
}

TEST(ModelRecompute, KeepsLessActivationMemory) {
  const ModelConfig mc = tiny_model(2);
  std::size_t none = 0, attention = 0, layer = 0;
  loss_and_grads(mc, identity_routes(3, 4), "none", 1, &none);
  loss_and_grads(mc, identity_routes(3, 4), "attention", 1, &attention);
  loss_and_grads(mc, identity_routes(3, 4), "layer", 1, &layer);
  // Per layer per token: attention drops ln1 (C), q, att (H*D each) and lse (H); layer also drops
  // mid, ln2 (C each) and gate, up, act (F each); one shared buffer of each remains.
  const std::size_t N = 3 * 6, L = mc.n_layers, C = mc.d_model, HD = mc.d_model;
  EXPECT_EQ(none - attention, (L - 1) * N * (C + 2 * HD + mc.n_heads) * sizeof(float));
  EXPECT_EQ(attention - layer, (L - 1) * N * (2 * C + 3 * mc.d_ff) * sizeof(float));
}

TEST(ModelRecompute, RejectsUnknownMode) {
  auto be = make_backend("cpu");
  Model model(tiny_model(), be.get());
  try {
    model.set_recompute("everything");
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("train.recompute"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("everything"), std::string::npos) << e.what();
  }
  EXPECT_EQ(model.recompute(), "none");
}

// The memory check before training (memory_estimate.h) computes parameters and activation
// buffers from the config alone: it must agree with what Model allocates.
TEST(MemoryEstimate, ParamsAndActivationsMatchWhatTheModelAllocates) {
  auto be = make_backend("cpu");
  for (const bool tied : {true, false}) {
    for (const char* recompute : {"none", "attention", "layer"}) {
      const ModelConfig mc = tiny_model(/*n_kv_heads=*/1, tied);
      Model model(mc, be.get());
      model.init_weights(3);
      model.set_recompute(recompute);
      EXPECT_EQ(param_count(mc), model.num_params()) << "tied " << tied;
      const Data d = make_batch(mc.vocab_size, 5);
      model.zero_grads();
      model.forward_backward(d.tokens.data(), d.targets.data(), d.B, d.T, identity_routes(d.B, mc.n_layers), 1.f);
      EXPECT_EQ(training_activation_bytes(mc, d.B, d.T, recompute), double(model.activation_bytes()))
          << "recompute " << recompute;
    }
  }
}
