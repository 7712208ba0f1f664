// `kvroute bench train` and its parts: the FLOP count against a hand count, the
// thread-count decision, the profiling decorator (results unchanged, calls and FLOPs
// counted), and the CLI's JSON and --profile output on a very small model.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <string>

#include <omp.h>
#include <unistd.h>

#include "kvroute/attention_bench.h"
#include "kvroute/cpu_threads.h"
#include "kvroute/model.h"
#include "kvroute/profiling_backend.h"
#include "kvroute/train_bench.h"
#include "run_kvroute.h"

namespace fs = std::filesystem;
using namespace kvroute;
using ::testing::HasSubstr;

namespace {

using kvroute::testing_cli::Result;
using kvroute::testing_cli::run;

// The number after "key": in a JSON text; NaN if the key is missing or not a number.
double json_field(const std::string& json, const std::string& key) {
  const std::regex re("\"" + key + "\": (-?[0-9.eE+-]+)");
  std::smatch m;
  if (!std::regex_search(json, m, re)) return std::nan("");
  return std::stod(m[1]);
}

// A small model config file in a per-process temp dir.
std::string small_config() {
  const fs::path dir = fs::path(::testing::TempDir()) / ("kvroute_bench_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path cfg = dir / "small.yaml";
  std::ofstream f(cfg);
  f << "model: {vocab_size: 64, d_model: 32, n_layers: 3, n_heads: 2, n_kv_heads: 1, d_ff: 48, context: 16}\n"
    << "routing: {mode: stochastic, p: 0.5, scheme: any}\n"
    << "train: {batch_size: 2, seq_len: 16, threads: 1}\n";
  return cfg.string();
}

}  // namespace

TEST(TrainFlops, MatchesAHandCount) {
  ModelConfig m;
  m.vocab_size = 100, m.d_model = 16, m.n_layers = 2, m.n_heads = 4, m.n_kv_heads = 2, m.d_ff = 24;
  m.tie_embeddings = true;
  auto be = make_backend("cpu");
  const Model model(m, be.get());
  // Per layer: wq 16x16, wk/wv 8x16 each, wo 16x16, gate/up 24x16, down 16x24, two norms 16.
  const long per_layer = 256 + 2 * 128 + 256 + 3 * 384 + 2 * 16;
  const long params = 100 * 16 + 2 * per_layer + 16;
  ASSERT_EQ(static_cast<long>(model.num_params()), params);
  EXPECT_DOUBLE_EQ(training_flops_per_token(m, params, 10), 6.0 * params + 6.0 * 2 * 10 * 16);
  // An untied input embedding is a lookup, not a matmul: it is not counted.
  m.tie_embeddings = false;
  const long untied = params + 100 * 16;
  EXPECT_DOUBLE_EQ(training_flops_per_token(m, untied, 10), 6.0 * params + 6.0 * 2 * 10 * 16);
}

TEST(CpuThreads, ChoiceFollowsTheRules) {
  // An explicit request wins.
  EXPECT_EQ(choose_cpu_threads(3, "5", 5, 8, 8, 4).threads, 3);
  // OMP_NUM_THREADS is left to the runtime (which parsed it).
  EXPECT_EQ(choose_cpu_threads(0, "5", 5, 8, 8, 4).threads, 5);
  EXPECT_EQ(choose_cpu_threads(0, "5", 5, 8, 8, 4).reason, "OMP_NUM_THREADS");
  // Unbound ranks share the machine's CPUs.
  EXPECT_EQ(choose_cpu_threads(0, nullptr, 8, 8, 8, 4).threads, 2);
  EXPECT_EQ(choose_cpu_threads(0, "", 8, 8, 8, 3).threads, 2);
  EXPECT_EQ(choose_cpu_threads(0, nullptr, 2, 2, 2, 4).threads, 1);  // never 0
  // A rank the launcher bound to 2 of 8 CPUs uses those 2, whatever the rank count.
  EXPECT_EQ(choose_cpu_threads(0, nullptr, 2, 2, 8, 4).threads, 2);
  // One process alone: all CPUs it may run on.
  EXPECT_EQ(choose_cpu_threads(0, nullptr, 8, 8, 8, 1).threads, 8);
}

TEST(CpuThreads, ConfigureSetsTheOpenMpPool) {
  const ThreadChoice c = configure_cpu_threads(1);
  EXPECT_EQ(c.threads, 1);
  EXPECT_EQ(c.reason, "requested");
  EXPECT_EQ(omp_get_max_threads(), 1);
}

TEST(ProfilingBackend, ForwardsResultsAndCountsCallsAndFlops) {
  auto cpu = make_backend("cpu");
  ProfilingBackend prof(cpu.get());
  const int M = 5, N = 7, K = 3;
  std::vector<float> a(M * K), b(K * N), c1(M * N), c2(M * N);
  for (int i = 0; i < M * K; ++i) a[i] = 0.25f * i - 1;
  for (int i = 0; i < K * N; ++i) b[i] = 0.5f - 0.125f * i;
  cpu->matmul(a.data(), b.data(), c1.data(), M, N, K, false, false, 1.f, 0.f);
  prof.matmul(a.data(), b.data(), c2.data(), M, N, K, false, false, 1.f, 0.f);
  prof.matmul(a.data(), b.data(), c2.data(), M, N, K, false, false, 1.f, 0.f);
  EXPECT_EQ(c1, c2);
  std::vector<float> x(8, 2.f);
  prof.scale(x.data(), x.size(), 0.5f);
  EXPECT_EQ(x, std::vector<float>(8, 1.f));
  prof.set_enabled(false);
  prof.scale(x.data(), x.size(), 2.f);  // forwarded, not counted
  EXPECT_EQ(x, std::vector<float>(8, 2.f));

  const std::vector<OpTiming> t = prof.timings();
  ASSERT_EQ(t.size(), 2u);
  auto find = [&](const std::string& op) {
    for (const OpTiming& o : t)
      if (o.op == op) return o;
    ADD_FAILURE() << "no op " << op;
    return OpTiming{};
  };
  EXPECT_EQ(find("matmul[nn]").calls, 2);
  EXPECT_DOUBLE_EQ(find("matmul[nn]").flops, 2 * 2.0 * M * N * K);
  EXPECT_EQ(find("scale").calls, 1);
  EXPECT_EQ(find("scale").flops, 0);
  for (const OpTiming& o : t) EXPECT_GE(o.seconds, 0);
  prof.reset();
  EXPECT_TRUE(prof.timings().empty());
}

// A decorator that only overrides around(): every op of KVROUTE_BACKEND_OPS reaches it once,
// by name, with the inner backend's result; memory management does not.
class OpNameRecorder final : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  std::vector<std::string> ops;

 protected:
  void around(const char* op, const OpCall& call) override {
    ops.push_back(op);
    call();
  }
};

TEST(ForwardingBackend, EveryListedOpPassesThroughAroundWithItsResult) {
  OpNameRecorder rec(make_backend("cpu"));
  EXPECT_EQ(rec.name(), "cpu");
  auto* x = static_cast<float*>(rec.alloc_bytes(4 * sizeof(float)));
  const std::vector<float> host = {1, 2, 3, 4};
  rec.copy_to_device(x, host.data(), 4 * sizeof(float));
  rec.scale(x, 4, 2.f);
  EXPECT_EQ(rec.sum_squares(x, 4), 4.0 * (1 + 4 + 9 + 16));
  rec.free_bytes(x);
  EXPECT_EQ(rec.ops, (std::vector<std::string>{"copy_to_device", "scale", "sum_squares"}));
#define KVROUTE_OP_NAME(ret, name, params, args) #name,
  const std::vector<std::string> listed = {KVROUTE_BACKEND_OPS(KVROUTE_OP_NAME)};
#undef KVROUTE_OP_NAME
  EXPECT_EQ(std::set<std::string>(listed.begin(), listed.end()).size(), listed.size());  // each op once
  for (const std::string& op : rec.ops) EXPECT_NE(std::find(listed.begin(), listed.end(), op), listed.end()) << op;
}

TEST(ProfilingBackend, AttentionFlopsCountVisiblePairs) {
  AttentionShape s;
  s.B = 2, s.Tq = 3, s.Tk = 3, s.n_heads = 4, s.head_dim = 8;
  // Causal, q_pos0 0: queries see 1, 2, 3 keys.
  EXPECT_DOUBLE_EQ(attention_forward_flops(s), 4.0 * 8 * 4 * 2 * 6);
  // Decode: one query at position 9 sees all 10 keys.
  s.Tq = 1, s.Tk = 10, s.q_pos0 = 9;
  EXPECT_DOUBLE_EQ(attention_forward_flops(s), 4.0 * 8 * 4 * 2 * 10);
}

TEST(BenchTrainCli, JsonHasEveryFieldAndProfileListsOps) {
  const Result r = run("bench train " + small_config() + " --warmup 1 --steps 2 --peak-size 128 --json --profile");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string& j = r.output;
  EXPECT_GT(json_field(j, "tokens_per_s_median"), 0) << j;
  EXPECT_GT(json_field(j, "achieved_flops"), 0) << j;
  EXPECT_GT(json_field(j, "peak_flops_median"), 0) << j;
  EXPECT_GT(json_field(j, "mfu"), 0) << j;
  EXPECT_GT(json_field(j, "peak_rss_kib"), 0) << j;
  EXPECT_GT(json_field(j, "activation_bytes_per_token"), 0) << j;
  EXPECT_EQ(json_field(j, "tokens_per_step"), 32) << j;
  EXPECT_EQ(json_field(j, "threads"), 1) << j;
  // tokens/s * FLOPs per token is the achieved rate.
  EXPECT_NEAR(json_field(j, "achieved_flops"), json_field(j, "tokens_per_s_median") * json_field(j, "flops_per_token"),
              1e-6 * json_field(j, "achieved_flops"));
  for (const char* op : {"matmul[nt]", "matmul[nn]", "matmul[tn]", "attention_forward", "attention_backward",
                         "rmsnorm_forward", "cross_entropy", "adamw_step"})
    EXPECT_THAT(j, HasSubstr(std::string("{\"op\": \"") + op + "\"")) << op;
  EXPECT_THAT(j, HasSubstr("\"step_seconds\": ["));
}

TEST(BenchTrainCli, TableAndRecomputeSetting) {
  const Result r = run("bench train " + small_config() +
                       " --warmup 0 --steps 1 --peak-size 64 --set train.recompute=layer --profile");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("recompute layer"));
  EXPECT_THAT(r.output, HasSubstr("| MFU |"));
  EXPECT_THAT(r.output, HasSubstr("| attention_backward |"));
  EXPECT_THAT(r.output, HasSubstr("(outside ops)"));
}

TEST(BenchTrainCli, BadInputIsRefusedClearly) {
  Result r = run("bench train " + small_config() + " --steps 0");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--steps must be >= 1"));
  r = run("bench train " + small_config() + " --set train.recompute=all");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("train.recompute"));
  r = run("bench train /nonexistent/cfg.yaml");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("/nonexistent/cfg.yaml"));
}

TEST(AttentionBench, CountsFlopsAndTimesBothDirections) {
  auto be = make_backend("cpu");
  AttentionBenchSpec spec;
  spec.batch = 2, spec.seq_len = 16, spec.d_model = 32, spec.warmup = 1, spec.repeats = 3;
  const AttentionBenchRow r = benchmark_attention(be.get(), spec, 16);
  EXPECT_EQ(r.heads, 2);
  // Causal: query i sees i + 1 keys, 16 * 17 / 2 = 136 pairs per (sequence, head).
  EXPECT_DOUBLE_EQ(r.forward_flops, 4.0 * 16 * 2 * 2 * 136);
  EXPECT_DOUBLE_EQ(r.backward_flops, 2.5 * r.forward_flops);
  ASSERT_EQ(r.forward_seconds.size(), 3u);
  ASSERT_EQ(r.backward_seconds.size(), 3u);
  for (double s : r.forward_seconds) EXPECT_GT(s, 0);
  EXPECT_GT(r.forward_median_seconds, 0);
  EXPECT_NEAR(r.forward_tflops, r.forward_flops / r.forward_median_seconds / 1e12, 1e-9 * r.forward_tflops);
  EXPECT_NEAR(r.backward_tflops, r.backward_flops / r.backward_median_seconds / 1e12, 1e-9 * r.backward_tflops);
  EXPECT_THROW(benchmark_attention(be.get(), spec, 24), std::invalid_argument);  // 24 does not divide 32
  spec.repeats = 0;
  EXPECT_THROW(benchmark_attention(be.get(), spec, 16), std::invalid_argument);
}

TEST(BenchAttentionCli, TableRowPerHeadDimAndJson) {
  const std::string args = "bench attention --backend cpu --precision fp32 --threads 1 --batch 1 --seq-len 32 "
                           "--d-model 64 --warmup 1 --repeats 2 --head-dims 16,32";
  Result r = run(args);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("| head_dim | heads | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |"));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("\\| 16 \\| 4 \\| [0-9.]+ \\| [0-9.]+ \\| [0-9.]+ \\| [0-9.]+ \\|"));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("\\| 32 \\| 2 \\| [0-9.]+ \\| [0-9.]+ \\| [0-9.]+ \\| [0-9.]+ \\|"));
  r = run(args + " --json");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(json_field(r.output, "seq_len"), 32) << r.output;
  EXPECT_GT(json_field(r.output, "forward_tflops"), 0) << r.output;
  EXPECT_GT(json_field(r.output, "backward_tflops"), 0) << r.output;
  r = run("bench attention --backend cpu --precision fp32 --head-dims 64,x");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--head-dims"));
}

TEST(CpuThreads, OneDnnSharesTheOpenMpPool) {
  // The thread settings above assume oneDNN's sgemm runs on the same OpenMP pool.
  EXPECT_EQ(onednn_threading_runtime(), "OpenMP");
}
