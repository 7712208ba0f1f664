// One training step of a small model on any backend, for the tests that compare backends or
// precisions (test_cuda_ops: GPU against CPU; test_bf16_cpu: bf16 against fp32).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "kvroute/backend.h"
#include "kvroute/config.h"
#include "kvroute/model.h"
#include "kvroute/optimizer.h"
#include "kvroute/routing.h"

namespace kvroute::testing_step {

struct StepResult {
  float loss = 0;
  std::vector<float> grads, params_after;
};

// Weights from `seed`, random tokens and targets, random stochastic routes (p 0.7, any, per
// sequence); one forward_backward, then one AdamW step at rate lr.
inline StepResult model_step(Backend* be, const ModelConfig& mc, int B, int T, uint64_t seed, double lr = 1e-3) {
  Model model(mc, be);
  model.init_weights(seed);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_int_distribution<int32_t> token(0, mc.vocab_size - 1);
  std::vector<int32_t> tokens(static_cast<std::size_t>(B) * T), targets(tokens.size());
  for (auto& t : tokens) t = token(rng);
  for (auto& t : targets) t = token(rng);
  RoutingConfig rc;
  rc.mode = "stochastic";
  rc.p = 0.7;
  rc.scheme = "any";
  rc.granularity = "sequence";
  const RouteTable routes = sample_routes(rc, B, mc.n_layers, seed, 1, 0);
  model.zero_grads();
  StepResult r;
  r.loss = model.forward_backward(tokens.data(), targets.data(), B, T, routes, 1.f);
  r.grads = model.grads_to_host();
  TrainConfig tc;
  AdamW opt(tc, model);
  opt.step(lr);
  r.params_after = model.params_to_host();
  return r;
}

}  // namespace kvroute::testing_step
