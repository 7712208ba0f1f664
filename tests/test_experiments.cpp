// experiments/lib.sh and experiments/summarize.sh, run on a tiny model in a scratch copy of the
// experiments folder: a finished run of the same config is kept, a changed config trains anew,
// a run stopped mid-way continues from its checkpoint and ends bit for bit where an uninterrupted
// run ends; the claims table's verdicts on made-up results whose answer is known.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "run_kvroute.h"

namespace fs = std::filesystem;
using kvroute::testing_cli::run_shell;

namespace {

std::string read_all(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

// The last "loss_hex" value in a run's metrics.jsonl (bit-exact loss of its last logged step).
std::string last_loss_hex(const fs::path& run) {
  std::ifstream in(run / "metrics.jsonl");
  std::string line, last;
  while (std::getline(in, line)) {
    const auto k = line.find("\"loss_hex\"");
    if (k != std::string::npos) last = line.substr(k, line.find(',', k) - k);
  }
  return last;
}

// A scratch repository: experiments/{lib.sh,summarize.sh}, common/{base,smoke}.yaml for a tiny
// byte-level model, an experiment "t" that trains one run LABEL__s1, and a text corpus.
class ExperimentsLib : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kvroute_experiments_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    const fs::path src = fs::path(KVROUTE_SOURCE_DIR) / "experiments";
    fs::create_directories(root_ / "experiments/common");
    fs::copy_file(src / "lib.sh", root_ / "experiments/lib.sh");
    fs::copy_file(src / "summarize.sh", root_ / "experiments/summarize.sh");
    fs::create_directories(root_ / "data/kjv-sp2048-shards");  // init_experiment checks for it
    std::string text;
    for (int i = 0; i < 400; ++i) text += "line " + std::to_string(i * 7919 % 1000) + " of the tiny corpus\n";
    write(root_ / "data/tiny.txt", text);
    write(root_ / "experiments/common/base.yaml", "routing:\n  mode: none\n");
    write(root_ / "experiments/common/smoke.yaml",
          "model:\n  vocab_size: 256\n  d_model: 16\n  n_layers: 2\n  n_heads: 2\n  n_kv_heads: 1\n  d_ff: 32\n"
          "  context: 32\ntrain:\n  batch_size: 2\n  seq_len: 32\n  steps: 2000\n  warmup_steps: 5\n  threads: 1\n"
          "  log_interval: 1\n  eval_batches: 1\n  checkpoint:\n    interval: 20\n    keep_last: 1\n"
          "data:\n  tokenizer: byte\n  train_path: " + (root_ / "data/tiny.txt").string() + "\n");
    write(root_ / "experiments/t/run.sh",
          "#!/usr/bin/env bash\nsource \"$(dirname \"${BASH_SOURCE[0]}\")/../lib.sh\"\ninit_experiment t \"$@\"\n"
          "extra=(); read -ra extra <<< \"${EXTRA:-}\"\n"
          "train_run \"$RUNS/${LABEL}__s1\" \"$BASE_CFG\" \"$SIZE_CFG\" \"${extra[@]}\"\nfinish_experiment\n");
    fs::permissions(root_ / "experiments/t/run.sh", fs::perms::owner_all, fs::perm_options::add);
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string env(const std::string& label, const std::string& extra = "") const {
    return "KVROUTE_BIN=" + std::string(KVROUTE_BINARY) + " KVROUTE_REUSE=1 LABEL=" + label + " EXTRA='" + extra + "' ";
  }
  kvroute::testing_cli::Result experiment(const std::string& label, const std::string& extra = "") const {
    return run_shell(env(label, extra) + (root_ / "experiments/t/run.sh").string());
  }
  fs::path run_dir(const std::string& label) const { return root_ / "experiments/t/runs/smoke" / (label + "__s1"); }
  std::string provenance() const { return read_all(root_ / "experiments/t/results/smoke/provenance.md"); }

  fs::path root_;
};

TEST_F(ExperimentsLib, KeepsFinishedRunsRetrainsChangedOnesAndContinuesStoppedOnes) {
  // Reference: one uninterrupted run.
  auto r = experiment("ref");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string ref_loss = last_loss_hex(run_dir("ref"));
  ASSERT_FALSE(ref_loss.empty());

  // The same command again keeps it (model.h5 untouched).
  const auto mtime = fs::last_write_time(run_dir("ref") / "model.h5");
  r = experiment("ref");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(provenance().find("- kept `experiments/t/runs/smoke/ref__s1/model.h5` (same config)"), std::string::npos)
      << provenance();
  EXPECT_EQ(fs::last_write_time(run_dir("ref") / "model.h5"), mtime);

  // A changed config trains anew.
  r = experiment("ref", "--set train.lr=1e-3");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(provenance().find("- kept"), std::string::npos) << provenance();
  EXPECT_NE(read_all(run_dir("ref").string() + ".config.yaml").find("lr: 0.001"), std::string::npos);

  // Stopped by SIGTERM once its first checkpoint exists (the trainer saves and exits).
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    setpgid(0, 0);
    execl("/bin/bash", "bash", "-c", (env("int") + (root_ / "experiments/t/run.sh").string() + " > /dev/null 2>&1").c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  bool have_checkpoint = false;
  while (!have_checkpoint && std::chrono::steady_clock::now() < deadline) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(run_dir("int") / "checkpoints", ec))
      if (e.path().filename().string().starts_with("step_")) have_checkpoint = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(have_checkpoint);
  kill(-pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  // The shell exits at once; the trainer first writes its stop checkpoint. Wait for the group.
  while (kill(-pid, 0) == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_FALSE(fs::exists(run_dir("int") / "model.h5")) << "the run finished before it was stopped";

  r = experiment("int");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(provenance().find("- continuing `experiments/t/runs/smoke/int__s1` from its latest checkpoint"),
            std::string::npos)
      << provenance();
  EXPECT_NE(r.output.find("train --resume"), std::string::npos) << r.output;
  ASSERT_TRUE(fs::exists(run_dir("int") / "model.h5"));
  EXPECT_EQ(last_loss_hex(run_dir("int")), ref_loss);
}

// The provenance names the data a result set was trained on: two result sets made from
// different corpora (the documentation packages change with Debian's updates) can be told apart.
TEST_F(ExperimentsLib, ProvenanceNamesTheDataItTrainedOn) {
  const std::string manifest =
      "format: 1\ntokenizer:\n  identity: sentencepiece-2048-abc\n  fingerprint: 00ff\n  vocab_size: 2048\n"
      "tokens: {train: 900, val: 100}\n";
  write(root_ / "data/kjv-sp2048-shards/manifest.yaml", manifest);
  fs::create_directories(root_ / "data/docs-sp2048-shards");
  write(root_ / "data/docs-sp2048-shards/manifest.yaml", manifest);
  fs::create_directories(root_ / "data/docs");
  write(root_ / "data/docs/SOURCES", "linux-doc 6.1.1-1\nperl-doc 5.36.0-7\n");
  const std::string describe = "cd " + root_.string() + " && bash -c 'source experiments/lib.sh; SIZE=";
  auto r = run_shell(describe + "smoke; data_description'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("`data/kjv-sp2048-shards`: tokenizer sentencepiece-2048-abc, tokens {train: 900, val: 100}"),
            std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("linux-doc"), std::string::npos) << r.output;
  r = run_shell(describe + "small; data_description'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("`data/docs-sp2048-shards`: tokenizer sentencepiece-2048-abc"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("text from linux-doc 6.1.1-1, perl-doc 5.36.0-7"), std::string::npos) << r.output;

  // A missing manifest is said, not an error.
  fs::remove(root_ / "data/docs-sp2048-shards/manifest.yaml");
  r = run_shell(describe + "small; data_description'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("`data/docs-sp2048-shards` (no manifest)"), std::string::npos) << r.output;

  // And init_experiment writes it into the provenance.
  r = run_shell(env("d") + "bash -c 'source " + (root_ / "experiments/lib.sh").string() + "; init_experiment t'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(provenance().find("- data: `data/kjv-sp2048-shards`: tokenizer sentencepiece-2048-abc"), std::string::npos)
      << provenance();
}

// summarize.sh on made-up pretrain results (3 seeds): p_route 0 loses 5% +- 0.5 under cla:2 (a
// rise, reproduced), p 0.5 loses 0.2% (within 1%: reproduced), p 0.75 loses 0.8% +- 0.6 (mean + 2 sd
// over 1%, mean - 2 sd under it: inconclusive). Other experiments have no results: said so.
TEST_F(ExperimentsLib, SummarizeGivesEachClaimItsVerdict) {
  std::string csv = "checkpoint,strategy,kv_fraction,kv_bytes_per_token,val_loss\n";
  const double rise[3][3] = {{0.045, 0.050, 0.055}, {0.001, 0.002, 0.003}, {0.002, 0.008, 0.014}};
  const char* labels[3] = {"p0", "p0.5", "p0.75"};
  for (int p = 0; p < 3; ++p)
    for (int s = 1; s <= 3; ++s) {
      const std::string ck = "runs/small/" + std::string(labels[p]) + "__s" + std::to_string(s) + "/model.h5";
      const double full = 4.0 + 0.01 * s + 0.02 * p;
      for (const char* st : {"full", "cla:2", "cla:4"}) {
        const double f = std::string(st) == "full" ? 1.0 : 1.0 + rise[p][s - 1];
        csv += ck + "," + st + ",1," + "1024," + std::to_string(full * f) + "\n";
      }
    }
  write(root_ / "experiments/pretrain/results/small/eval-routed.csv", csv);
  write(root_ / "experiments/common/small.yaml", "model:\n  n_layers: 8\n");
  auto r = run_shell("cd " + root_.string() + " && experiments/summarize.sh --size small");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string md = read_all(root_ / "experiments/results-small.md");
  EXPECT_NE(md.find("| (a) no routing: loss rises under cla:2 | p_route 0, cla:2 vs full: rise > 0 | +5.00% ± 0.50 (n=3) | reproduced |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| (a) p_route 0.5 stays within 1% under cla:2 | p_route 0.5, cla:2 vs its own full: mean + 2 sd <= 1% | "
                    "+0.20% ± 0.10 (n=3) | reproduced |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| (a) p_route 0.75 stays within 1% under cla:2 | p_route 0.75, cla:2 vs its own full: mean + 2 sd <= 1% | "
                    "+0.80% ± 0.60 (n=3) | inconclusive |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("(d), (e) fine-tuning and the probe | - | experiment not run at this size yet"), std::string::npos) << md;
  EXPECT_NE(md.find("(g) serving | - | experiment not run at this size yet"), std::string::npos) << md;
}

}  // namespace
