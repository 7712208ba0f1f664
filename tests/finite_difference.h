// Gradient checks by finite differences and their batch, shared by the model tests (test_model,
// test_model_features): along one random unit direction per tensor, the analytic directional
// derivative (grads . u) must match the central difference (L(theta + h u) - L(theta - h u)) / 2h.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kvroute/model.h"
#include "kvroute/routing.h"

namespace kvroute::testing_fd {

// A small batch of random token ids and targets (B = 3 rows of T = 6).
struct Data {
  int B = 3, T = 6;
  std::vector<int32_t> tokens, targets;
};

inline Data make_batch(int vocab, uint32_t seed) {
  Data d;
  std::mt19937 rng(seed);
  for (int i = 0; i < d.B * d.T; ++i) {
    d.tokens.push_back(rng() % vocab);
    d.targets.push_back(rng() % vocab);
  }
  return d;
}

// `model` holds the weights at which the gradient is checked; they are restored afterwards.
// Returns the number of tensors checked (every tensor of the model).
inline int check_directional_derivatives(Model& model, const int32_t* tokens, const int32_t* targets, int B, int T,
                                         const RouteTable& routes, uint32_t seed, double h,
                                         const std::string& what = "") {
  model.zero_grads();
  model.forward_backward(tokens, targets, B, T, routes, 1.f);
  const std::vector<float> grads = model.grads_to_host();
  const std::vector<float> theta = model.params_to_host();
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  int checked = 0;
  for (const ParamTensor& t : model.tensors()) {
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
      return static_cast<double>(model.forward(tokens, targets, B, T, routes));
    };
    const double numeric = (loss_at(h) - loss_at(-h)) / (2 * h);
    EXPECT_NEAR(analytic, numeric, 2e-3 + 3e-2 * std::abs(numeric)) << what << (what.empty() ? "" : ", ")
                                                                       << "tensor " << t.name;
    ++checked;
  }
  model.params_from_host(theta);
  return checked;
}

}  // namespace kvroute::testing_fd
