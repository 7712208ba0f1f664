// End-to-end tests of the `kvroute` binary: train a tiny model on a small text
// file, then evaluate sharing strategies on its checkpoint; bad input gives a
// clear message and a non-zero exit, never a crash.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <unistd.h>

#include "kvroute/strategy.h"
#include "run_kvroute.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

namespace {

using kvroute::testing_cli::Result;
using kvroute::testing_cli::run;

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // One directory per process: ctest runs each test as its own process, in parallel.
    dir_ = fs::path(::testing::TempDir()) / ("kvroute_cli_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream text(dir_ / "corpus.txt");
    for (int i = 0; i < 400; ++i)
      text << "In the beginning " << i % 7 << " the quick brown fox jumps over the lazy dog.\n";
    std::ofstream cfg(dir_ / "tiny.yaml");
    cfg << "model: {vocab_size: 256, d_model: 32, n_layers: 4, n_heads: 2, n_kv_heads: 1, d_ff: 64, context: 32}\n"
        << "routing: {mode: stochastic, p: 0.5, scheme: any}\n"
        << "train: {batch_size: 4, seq_len: 32, steps: 30, lr: 0.01, warmup_steps: 5, log_interval: 10,\n"
        << "        eval_batches: 2, out_dir: " << (dir_ / "run").string() << "}\n"
        << "data: {train_path: " << (dir_ / "corpus.txt").string() << "}\n";
  }
  static std::string cfg() { return (dir_ / "tiny.yaml").string(); }
  static fs::path dir_;
};
fs::path Cli::dir_;

}  // namespace

TEST_F(Cli, TrainThenEvalPrintsStrategyTable) {
  const Result t = run("train " + cfg());
  ASSERT_EQ(t.status, 0) << t.output;
  EXPECT_THAT(t.output, HasSubstr("step     30/30"));
  EXPECT_THAT(t.output, HasSubstr("final | val loss"));
  for (const char* f : {"model.h5", "config.yaml", "metrics.jsonl", "train.log", "checkpoints/latest"})
    EXPECT_TRUE(fs::exists(dir_ / "run" / f)) << f;
  std::ifstream saved(dir_ / "run" / "config.yaml");
  std::string yaml((std::istreambuf_iterator<char>(saved)), {});
  EXPECT_THAT(yaml, HasSubstr("stochastic"));

  const Result e = run("eval " + (dir_ / "run" / "model.h5").string() + " --strategies full,cla:2,first,list:0,0,2,2");
  ASSERT_EQ(e.status, 0) << e.output;
  EXPECT_THAT(e.output, HasSubstr("| strategy |"));
  EXPECT_THAT(e.output, HasSubstr("| cla:2 | 0,0,2,2 | 2/4 | 50.0% |"));
  EXPECT_THAT(e.output, HasSubstr("| first | 0,0,0,0 | 1/4 | 25.0% |"));

  const Result bad = run("eval " + (dir_ / "run" / "model.h5").string() + " --strategies list:0,1,1,2");
  EXPECT_NE(bad.status, 0);
  EXPECT_THAT(bad.output, HasSubstr("layer 3 reads layer 2"));
  const Result unknown = run("eval " + (dir_ / "run" / "model.h5").string() + " --strategies yoco");
  EXPECT_NE(unknown.status, 0);
  EXPECT_THAT(unknown.output, HasSubstr("unknown strategy 'yoco'"));
}

TEST_F(Cli, HelpOfEveryStrategyCommandListsTheRegistry) {
  // Searches (greedy:N) only where they are resolved: kvroute eval.
  for (const auto& [command, searches] : {std::pair{"eval --help", true}, std::pair{"generate --help", false},
                                          std::pair{"bench generate --help", false}}) {
    const Result r = run(command);
    ASSERT_EQ(r.status, 0) << command << "\n" << r.output;
    for (const kvroute::StrategyKind& k : kvroute::strategy_kinds()) {
      const bool listed = r.output.find(std::string(k.form)) != std::string::npos &&
                          r.output.find(std::string(k.doc)) != std::string::npos;
      EXPECT_EQ(listed, k.parse != nullptr || searches) << command << ": " << k.form << "\n" << r.output;
    }
  }
}

TEST_F(Cli, DumpConfigShowsOverrides) {
  const Result r = run("train " + cfg() + " --set routing.p=0.25 --dump-config");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("p: 0.25"));
}

TEST_F(Cli, ConfigErrorsNameTheKey) {
  const Result typo = run("train " + cfg() + " --set model.d_modl=64");
  EXPECT_EQ(typo.status, 1);
  EXPECT_THAT(typo.output, HasSubstr("model.d_modl"));
  EXPECT_THAT(typo.output, HasSubstr("did you mean 'model.d_model'"));
  const Result range = run("train " + cfg() + " --set routing.p=1.5");
  EXPECT_EQ(range.status, 1);
  EXPECT_THAT(range.output, HasSubstr("routing.p"));
  const Result gqa = run("train " + cfg() + " --set model.n_kv_heads=3");
  EXPECT_EQ(gqa.status, 1);
  EXPECT_THAT(gqa.output, HasSubstr("n_kv_heads"));
  // An empty run directory used to reach the filesystem and fail there with a raw error.
  const Result no_dir = run("train " + cfg() + " --set train.out_dir=");
  EXPECT_EQ(no_dir.status, 1);
  EXPECT_THAT(no_dir.output, HasSubstr("train.out_dir"));
  EXPECT_THAT(no_dir.output, HasSubstr("must not be empty"));
  EXPECT_THAT(no_dir.output, Not(HasSubstr("filesystem error")));
}

// A huge model or batch used to end in a bare std::bad_alloc after the run directory existed.
TEST_F(Cli, ARunThatCannotFitInMemoryIsRefusedBeforeAnythingIsCreated) {
  const fs::path run_dir = dir_ / "too_big";
  const Result wide = run("train " + cfg() + " --set model.d_model=131072 --set model.n_heads=2 --set model.n_kv_heads=1" +
                          " --set train.out_dir=" + run_dir.string());
  EXPECT_EQ(wide.status, 1) << wide.output;
  EXPECT_THAT(wide.output, HasSubstr("training this model ("));
  EXPECT_THAT(wide.output, HasSubstr("of memory (estimated before allocating anything), but this machine has"));
  EXPECT_THAT(wide.output, HasSubstr("lower model.d_model, model.n_layers, model.d_ff or model.vocab_size"));
  EXPECT_THAT(wide.output, Not(HasSubstr("bad_alloc")));
  const Result batch = run("train " + cfg() + " --set train.batch_size=100000000 --set train.out_dir=" + run_dir.string());
  EXPECT_EQ(batch.status, 1) << batch.output;
  EXPECT_THAT(batch.output, HasSubstr("train.batch_size 100000000 x train.seq_len 32"));
  EXPECT_THAT(batch.output, HasSubstr("lower train.batch_size or train.seq_len"));
  EXPECT_FALSE(fs::exists(run_dir));
}

TEST_F(Cli, BadDataAndCheckpointsAreRefused) {
  const Result missing = run("train " + cfg() + " --set data.train_path=/nonexistent/file.txt");
  EXPECT_EQ(missing.status, 1);
  EXPECT_THAT(missing.output, HasSubstr("/nonexistent/file.txt"));
  const Result strategy = run("train " + cfg() + " --set routing.mode=fixed --set routing.strategy=cla:0");
  EXPECT_EQ(strategy.status, 1);
  EXPECT_THAT(strategy.output, HasSubstr("cla:0"));
  std::ofstream(dir_ / "garbage.h5") << "not a checkpoint";
  const Result garbage = run("eval " + (dir_ / "garbage.h5").string());
  EXPECT_EQ(garbage.status, 1);
  EXPECT_THAT(garbage.output, HasSubstr("garbage.h5"));
  const Result absent = run("eval " + (dir_ / "absent.h5").string());
  EXPECT_EQ(absent.status, 1);
  EXPECT_THAT(absent.output, HasSubstr("does not exist"));
}
