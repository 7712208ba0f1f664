// train.precision: bf16 on the CPU backend (src/cpu/bf16_matmul_cpu.h): the bf16 matmul
// against the fp32 matmul on bf16-rounded operands, on both paths (oneDNN's native bf16 kernels
// where this CPU has them, the emulated sgemm path everywhere); the kept copy of the weights
// never goes stale; a whole model step against fp32; precision auto; and bit-exact resume.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cpu/bf16_matmul_cpu.h"
#include "cpu/cpu_backend.h"
#include "data_fixtures.h"
#include "kvroute/bf16.h"
#include "kvroute/checkpoint.h"
#include "kvroute/model.h"
#include "kvroute/optimizer.h"
#include "kvroute/routing.h"
#include "model_step.h"
#include "run_kvroute.h"

namespace kvroute {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing_data::random_floats;

std::vector<float> rounded(const std::vector<float>& x) {
  std::vector<float> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = float_from_bf16(bf16_from_float(x[i]));
  return r;
}

std::vector<cpu::Bf16Path> paths_here() {
  std::vector<cpu::Bf16Path> p = {cpu::Bf16Path::Emulated};
  if (cpu::native_bf16_available()) p.push_back(cpu::Bf16Path::Native);
  return p;
}

const char* path_name(cpu::Bf16Path p) { return p == cpu::Bf16Path::Native ? "native" : "emulated"; }

// Products of two bf16 values are exact in fp32 (8 + 8 significant bits), so the bf16 matmul
// and an fp32 matmul of the rounded operands differ only in summation order: per element at
// most K * 2^-24 * sum_k |a_ik b_kj| (a loose bound for any order), checked here with 2x margin.
TEST(Bf16Matmul, EqualsFp32MatmulOfRoundedOperandsOnEveryPath) {
  CpuBackend fp32;
  const int M = 37, N = 29, K = 70;
  for (cpu::Bf16Path path : paths_here())
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (auto [alpha, beta] : {std::pair{1.f, 0.f}, std::pair{0.5f, 1.f}, std::pair{2.f, -0.25f}}) {
          SCOPED_TRACE(std::string(path_name(path)) + (ta ? " A^T" : " A") + (tb ? " B^T" : " B") +
                       " alpha " + std::to_string(alpha) + " beta " + std::to_string(beta));
          const auto a = random_floats(std::size_t(M) * K, 1), b = random_floats(std::size_t(K) * N, 2);
          const auto c0 = random_floats(std::size_t(M) * N, 3);
          const auto ar = rounded(a), br = rounded(b);
          std::vector<float> want = c0, got = c0, abs_ab(std::size_t(M) * N, 0.f);
          fp32.matmul(ar.data(), br.data(), want.data(), M, N, K, ta, tb, alpha, beta);
          cpu::Bf16Matmul mm(path);
          mm.matmul(a.data(), b.data(), got.data(), M, N, K, ta, tb, alpha, beta);
          for (int i = 0; i < M; ++i)
            for (int j = 0; j < N; ++j) {
              double s = 0;
              for (int k = 0; k < K; ++k)
                s += std::fabs(double(ar[ta ? k * M + i : i * K + k]) * br[tb ? j * K + k : k * N + j]);
              const double bound = 2.0 * K * std::ldexp(1.0, -24) * (std::fabs(alpha) * s + std::fabs(beta * c0[i * N + j])) + 1e-30;
              ASSERT_LE(std::fabs(double(got[i * N + j]) - want[i * N + j]), bound) << "element " << i << "," << j;
            }
        }
}

// The weights are rounded once and kept; every way the backend writes into them (an
// optimizer step, a copy, a load) must make the next matmul see the new values.
TEST(Bf16Matmul, TheKeptWeightCopyFollowsEveryWriteIntoTheWeights) {
  for (cpu::Bf16Path path : paths_here()) {
    SCOPED_TRACE(path_name(path));
    CpuBackend be(BackendOptions{"bf16", true});
    CpuBackend fp32;
    const int M = 8, N = 16, K = 24;
    DeviceBuffer<float> w(&be, std::size_t(K) * N + 5), x(&be, std::size_t(M) * K), y(&be, std::size_t(M) * N);
    DeviceBuffer<float> grad(&be, w.size()), m(&be, w.size()), v(&be, w.size());
    w.upload(random_floats(w.size(), 4));
    x.upload(random_floats(x.size(), 5));
    grad.upload(random_floats(w.size(), 6));
    be.register_weights(w.get(), w.size());
    auto check = [&](const std::string& after) {
      be.matmul(x.get(), w.get() + 5, y.get(), M, N, K, false, false, 1.f, 0.f);  // an offset into the weights
      const auto xr = rounded(x.download()), wr = rounded(w.download());
      std::vector<float> want(std::size_t(M) * N);
      fp32.matmul(xr.data(), wr.data() + 5, want.data(), M, N, K, false, false, 1.f, 0.f);
      const auto got = y.download();
      for (std::size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(got[i], want[i], 1e-4 * (1 + std::fabs(want[i]))) << "after " << after << ", element " << i;
    };
    check("registration");
    be.adamw_step(w.get(), grad.get(), m.get(), v.get(), w.size(), 0.05f, 0.9f, 0.99f, 1e-8f, 0.f, 1, 1.f);
    check("adamw_step");
    const auto fresh = random_floats(w.size(), 7);
    be.copy_to_device(w.get(), fresh.data(), fresh.size() * sizeof(float));
    check("copy_to_device");
    be.scale(w.get() + 100, 50, -3.f);
    check("scale of a part");
    be.accumulate(w.get() + 7, grad.get(), 20);
    check("accumulate into a part");
    be.fill_zero(w.get() + 200, 40 * sizeof(float));
    check("fill_zero of a part");
    // A freed buffer's registration is dropped: a new allocation at the same address is not
    // served the old copy.
    w.reset();
    DeviceBuffer<float> w2(&be, std::size_t(K) * N + 5);
    w2.upload(random_floats(w2.size(), 8));
    be.matmul(x.get(), w2.get() + 5, y.get(), M, N, K, false, false, 1.f, 0.f);
    const auto xr = rounded(x.download()), w2r = rounded(w2.download());
    std::vector<float> want(std::size_t(M) * N);
    fp32.matmul(xr.data(), w2r.data() + 5, want.data(), M, N, K, false, false, 1.f, 0.f);
    const auto got = y.download();
    for (std::size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-4 * (1 + std::fabs(want[i])));
  }
}

using testing_step::StepResult;

// A three-layer model with grouped KV heads, one training step (model_step.h).
StepResult model_step(Backend* be, uint64_t seed) {
  ModelConfig mc;
  mc.vocab_size = 96;
  mc.d_model = 64;
  mc.n_layers = 3;
  mc.n_heads = 4;
  mc.n_kv_heads = 2;
  mc.d_ff = 160;
  mc.context = 32;
  const int B = 3, T = 32;
  return testing_step::model_step(be, mc, B, T, seed, 1e-2);
}

double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    n += double(b[i]) * b[i];
  }
  return std::sqrt(d / n);
}

// bf16 keeps 8 significant bits: each rounded operand is off by at most 2^-9 (0.2%) of itself,
// and the errors of a few hundred rounded products average out in each fp32 sum. Through three
// layers forward and backward that leaves the loss within 1% and the gradient vector within
// 5% (relative L2) of fp32; a bug (stale weights, a wrong transpose) is off by 100%.
TEST(Bf16Model, AStepInBf16IsCloseToFp32AndTheTwoPathsAgreeClosely) {
  auto fp32 = make_backend("cpu", BackendOptions{"fp32", true});
  const StepResult want = model_step(fp32.get(), 11);
  auto bf16 = make_backend("cpu", BackendOptions{"bf16", true});
  const StepResult got = model_step(bf16.get(), 11);
  EXPECT_NEAR(got.loss, want.loss, 0.01 * std::fabs(want.loss));
  EXPECT_LT(relative_l2(got.grads, want.grads), 0.05);
  EXPECT_GT(relative_l2(got.grads, want.grads), 0.0) << "bf16 changed nothing: is the bf16 path taken at all?";
  // AdamW's first step moves each weight by about lr times the sign of its gradient: where
  // bf16 flips the sign of a near-zero gradient, that weight moves the other way.
  EXPECT_LT(relative_l2(got.params_after, want.params_after), 0.05);
  // Native and emulated paths compute the same products in another order: much closer to
  // each other than either is to fp32.
  if (cpu::native_bf16_available()) {
    CpuBackend emulated(BackendOptions{"bf16", true}, cpu::Bf16Path::Emulated);
    const StepResult e = model_step(&emulated, 11);
    EXPECT_NEAR(e.loss, got.loss, 1e-4 * std::fabs(got.loss));
    EXPECT_LT(relative_l2(e.grads, got.grads), 2e-3);
  }
}

// Same seed, same thread count: a bf16 step is bitwise reproducible.
TEST(Bf16Model, AStepIsBitwiseReproducible) {
  auto a = make_backend("cpu", BackendOptions{"bf16", true});
  auto b = make_backend("cpu", BackendOptions{"bf16", true});
  const StepResult x = model_step(a.get(), 12), y = model_step(b.get(), 12);
  EXPECT_EQ(std::memcmp(&x.loss, &y.loss, sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(x.grads.data(), y.grads.data(), x.grads.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(x.params_after.data(), y.params_after.data(), x.params_after.size() * sizeof(float)), 0);
}

TEST(Bf16Precision, AutoIsBf16ExactlyWhereTheCpuMultipliesBf16Natively) {
  const ResolvedPrecision r = resolve_precision("cpu", "auto");
  EXPECT_EQ(r.precision, cpu::native_bf16_available() ? "bf16" : "fp32");
  EXPECT_THAT(r.reason, HasSubstr(cpu::onednn_cpu_isa()));
  EXPECT_EQ(resolve_precision("cpu", "bf16").precision, "bf16");
  EXPECT_EQ(resolve_precision("cpu", "fp32").precision, "fp32");
  EXPECT_EQ(resolve_precision("cuda", "auto").precision, "bf16");
  auto be = make_backend("cpu", BackendOptions{"auto", true});
  const auto* cpu_be = dynamic_cast<const CpuBackend*>(be.get());
  ASSERT_NE(cpu_be, nullptr);
  EXPECT_EQ(cpu_be->bf16() != nullptr, cpu::native_bf16_available());
  EXPECT_THROW(resolve_precision("cpu", "fp16"), std::runtime_error);
}

// The bf16 GEMM peak is the backend's own probe, labelled with the kernel family.
TEST(Bf16Precision, Bf16BackendMeasuresItsOwnGemmPeak) {
  auto be = make_backend("cpu", BackendOptions{"bf16", true});
  EXPECT_GT(be->peak_gemm_flops(64), 0.0);
  EXPECT_THAT(be->peak_gemm_label(), HasSubstr("bf16"));
}

}  // namespace
}  // namespace kvroute

namespace kvroute {
namespace {

using testing_cli::losses_by_step;
using testing_cli::Result;
using testing_cli::run;

// A bf16 run stopped at a checkpoint and resumed logs the same losses, bit for bit, as one that
// never stopped: the resumed run rounds the loaded weights afresh, as the other did after its
// optimizer step. (Same machine, ISA and thread count: oneDNN's kernels differ across ISAs.)
TEST(Bf16Resume, AResumedBf16RunMatchesAnUninterruptedOneBitForBit) {
  const fs::path dir = testing_data::fresh_temp_dir("bf16_resume");
  {
    std::ofstream text(dir / "corpus.txt");
    for (int i = 0; i < 300; ++i) text << "In the beginning " << i % 13 << " was the word, verse " << i << ".\n";
    std::ofstream cfg(dir / "bf16.yaml");
    cfg << "model: {vocab_size: 256, d_model: 64, n_layers: 3, n_heads: 4, n_kv_heads: 2, d_ff: 128, context: 32}\n"
        << "routing: {mode: stochastic, p: 0.5, scheme: any, granularity: batch}\n"
        << "train: {batch_size: 4, seq_len: 32, steps: 12, lr: 0.01, warmup_steps: 3, log_interval: 1, threads: 2,\n"
        << "        min_lr_ratio: 1.0, precision: bf16, eval_batches: 2, eval_interval: 0, checkpoint: {interval: 6, keep_last: 2}}\n"
        << "data: {train_path: " << (dir / "corpus.txt").string() << "}\n";
  }
  // min_lr_ratio 1: a constant rate after warm-up, so a 6-step run follows the 12-step schedule.
  const std::string cfg = (dir / "bf16.yaml").string();
  const Result whole = run("train " + cfg + " --set train.out_dir=" + (dir / "whole").string());
  ASSERT_EQ(whole.status, 0) << whole.output;
  EXPECT_THAT(whole.output, HasSubstr("precision bf16"));
  const Result first = run("train " + cfg + " --set train.steps=6 --set train.out_dir=" + (dir / "split").string());
  ASSERT_EQ(first.status, 0) << first.output;
  const Result resumed = run("train --resume " + (dir / "split").string() + " --set train.steps=12");
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  const auto want = losses_by_step(dir / "whole"), got = losses_by_step(dir / "split");
  ASSERT_EQ(want.size(), 12u);
  ASSERT_EQ(got.size(), 12u);
  for (const auto& [step, loss] : want) EXPECT_EQ(got.at(step), loss) << "step " << step;
  auto final_weights = [](const fs::path& ckpt) {
    auto be = make_backend("cpu");
    Model model(read_checkpoint_info(ckpt.string()).config.model, be.get());
    return read_checkpoint(ckpt.string(), model, false).params;
  };
  const auto a = final_weights(dir / "whole" / "model.h5"), b = final_weights(dir / "split" / "model.h5");
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "final weights differ";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kvroute
