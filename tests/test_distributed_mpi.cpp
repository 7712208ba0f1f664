// Data-parallel building blocks under `mpirun -np 2` (ctest starts this binary with 2 ranks):
// bucketed gradient all-reduce, and ZeRO-1 AdamW against the unsharded optimizer that
// every rank also runs locally as the reference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kvroute/backend.h"
#include "kvroute/comm.h"
#include "kvroute/config.h"
#include "kvroute/grad_allreduce.h"
#include "kvroute/model.h"
#include "kvroute/optimizer.h"
#include "kvroute/routing.h"
#include "mpi_test_main.h"

using namespace kvroute;
using testing_mpi::g_backend;
using testing_mpi::g_comm;

namespace {

std::vector<float> rank_values(std::size_t n, int rank) {
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>((i % 97) * 0.25 + rank * 1000.0 + 1);
  return x;
}

// Same on every rank (seeded by `seed` only).
std::vector<float> shared_gradients(std::size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, 0.05f);
  std::vector<float> g(n);
  for (float& x : g) x = dist(gen);
  return g;
}

ModelConfig small_model(int vocab) {
  ModelConfig m;
  m.vocab_size = vocab;
  m.d_model = 8;
  m.n_layers = 2;
  m.n_heads = 2;
  m.n_kv_heads = 1;
  m.d_ff = 12;
  m.context = 8;
  return m;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST(GradAllreduce, SumsEveryElementAcrossRanksInBucketsOfTheGivenSize) {
  const int r = g_comm->rank();
  const std::size_t n = 1003;
  std::vector<float> x = rank_values(n, r);
  const std::vector<float> a = rank_values(n, 0), b = rank_values(n, 1);
  // 10 floats per bucket: 100 full buckets and one of 3.
  EXPECT_EQ(allreduce_in_buckets(*g_comm, x.data(), n, 10 * sizeof(float)), 101u);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(x[i], a[i] + b[i]) << i;
}

TEST(GradAllreduce, TheDefaultBucketTakesOneCallUpTo25MiB) {
  std::vector<float> x = rank_values(5000, g_comm->rank());
  EXPECT_EQ(allreduce_in_buckets(*g_comm, x.data(), x.size()), 1u);
  EXPECT_EQ(x[4999], rank_values(5000, 0)[4999] + rank_values(5000, 1)[4999]);
  // 25 MiB of floats and one more: two calls.
  std::vector<float> y(kGradBucketBytes / sizeof(float) + 1, 1.f);
  EXPECT_EQ(allreduce_in_buckets(*g_comm, y.data(), y.size()), 2u);
  EXPECT_EQ(y.front(), 2.f);
  EXPECT_EQ(y[y.size() - 2], 2.f);
  EXPECT_EQ(y.back(), 2.f);
}

// Sums started from backward's GradsReady hook (in small buckets, so most start while backward
// still runs) give the bits of summing after backward, and of one blocking sum of the whole buffer.
TEST(GradAllreduce, SumsStartedDuringBackwardEqualSumsAfterIt) {
  ModelConfig mc = small_model(64);
  mc.n_layers = 3;
  Model model(mc, g_backend.get());
  model.init_weights(5);
  const int r = g_comm->rank(), B = 2, T = 6;
  std::mt19937 gen(100 + r);  // each rank its own batch and routes
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (auto& t : tokens) t = gen() % mc.vocab_size;
  for (auto& t : targets) t = gen() % mc.vocab_size;
  RoutingConfig rc;
  rc.mode = "stochastic";
  rc.granularity = "sequence";
  rc.p = 0.8;
  const RouteTable routes = sample_routes(rc, B, mc.n_layers, 9, 1, r);
  const std::size_t P = model.num_params(), bucket_bytes = 64 * sizeof(float);

  model.zero_grads();
  model.forward_backward(tokens.data(), targets.data(), B, T, routes, 1.f);
  std::vector<float> reference = model.grads_to_host();
  g_comm->allreduce_sum(reference.data(), P);

  model.zero_grads();
  model.forward_backward(tokens.data(), targets.data(), B, T, routes, 1.f);
  allreduce_in_buckets(*g_comm, model.grads(), P, bucket_bytes);
  EXPECT_TRUE(same_bits(model.grads_to_host(), reference));

  GradAllreduce sum(*g_comm, model.grads(), P, bucket_bytes);
  ASSERT_GT(sum.buckets(), 10u);
  for (int step = 0; step < 2; ++step) {  // and again, reusing it as the trainer does
    model.zero_grads();
    model.forward_backward(tokens.data(), targets.data(), B, T, routes, 1.f,
                           [&](std::size_t begin) { sum.ready_from(begin); });
    EXPECT_EQ(sum.finish(), sum.buckets());
    EXPECT_EQ(sum.started_early(), sum.buckets());  // the hook's last call reports everything final
    EXPECT_TRUE(same_bits(model.grads_to_host(), reference)) << "step " << step;
  }
}

// ZeRO-1 keeps 1/N of the moments per rank and must give the same weights and (gathered)
// moments as unsharded AdamW. (Every valid model has an even parameter count, since d_model
// is even, so 2 ranks never pad; the padded path runs end to end with 3 ranks in
// test_distributed.cpp.)
TEST(ZeroOne, MatchesUnshardedAdamWWithGlobalNormClipping) {
  const ModelConfig mc = small_model(64);
  TrainConfig tc;
  tc.lr = 1e-2;
  tc.grad_clip = 0.5;  // the random gradients' norm is well above: clipping is active
  tc.weight_decay = 0.1;
  Model sharded_model(mc, g_backend.get()), reference_model(mc, g_backend.get());
  sharded_model.init_weights(11);
  reference_model.init_weights(11);
  const std::size_t P = sharded_model.num_params();

  tc.zero = 1;
  AdamW sharded(tc, sharded_model, g_comm.get());
  tc.zero = 0;
  AdamW reference(tc, reference_model, nullptr);
  ASSERT_TRUE(sharded.sharded());
  const std::size_t S = (P + 1) / 2;
  EXPECT_EQ(sharded.shard_begin(), g_comm->rank() * S);
  EXPECT_EQ(sharded.shard_end(), std::min(P, (g_comm->rank() + 1) * S));

  for (int step = 1; step <= 3; ++step) {
    const std::vector<float> g = shared_gradients(P, 100 + step);
    g_backend->copy_to_device(sharded_model.grads(), g.data(), P * sizeof(float));
    g_backend->copy_to_device(reference_model.grads(), g.data(), P * sizeof(float));
    const double norm = sharded.step(1e-2);
    EXPECT_EQ(norm, reference.step(1e-2));
    EXPECT_GT(norm, tc.grad_clip);
  }
  // Elementwise AdamW on a sub-range is the same arithmetic: the bits agree.
  EXPECT_TRUE(same_bits(sharded_model.params_to_host(), reference_model.params_to_host()));
  EXPECT_TRUE(same_bits(sharded.m_to_host(), reference.m_to_host()));
  EXPECT_TRUE(same_bits(sharded.v_to_host(), reference.v_to_host()));

  // Full moments in, this rank's shard kept, the same full moments out.
  const std::vector<float> m = shared_gradients(P, 7), v = shared_gradients(P, 8);
  sharded.moments_from_host(m, v);
  EXPECT_TRUE(same_bits(sharded.m_to_host(), m));
  EXPECT_TRUE(same_bits(sharded.v_to_host(), v));
  std::vector<float> own(sharded.shard_end() - sharded.shard_begin());
  g_backend->copy_to_host(own.data(), sharded.m(), own.size() * sizeof(float));
  EXPECT_TRUE(same_bits(own, std::vector<float>(m.begin() + sharded.shard_begin(), m.begin() + sharded.shard_end())));
}

TEST(ZeroOne, AWrongSizedMomentVectorIsRefused) {
  Model model(small_model(64), g_backend.get());
  TrainConfig tc;
  tc.zero = 1;
  AdamW opt(tc, model, g_comm.get());
  const std::vector<float> short_m(model.num_params() - 1);
  try {
    opt.moments_from_host(short_m, short_m);
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("the model has " + std::to_string(model.num_params()) + " parameters"),
              std::string::npos)
        << e.what();
  }
}

int main(int argc, char** argv) { return testing_mpi::run_tests_on_two_ranks(argc, argv, "test_distributed_mpi"); }
