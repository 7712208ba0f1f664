// Data-parallel training end to end: `mpirun -np N kvroute train ...` started as a
// subprocess, compared with the same binary run without mpirun (one rank). N ranks with
// grad_accum 1 see the same global batch as one rank with grad_accum N (loader.h: rank r's
// draw d is global draw d * N + r), so their losses and weights agree within fp32
// rounding; ZeRO-1 agrees with ZeRO-0 bit for bit; checkpoints move between world sizes;
// a killed or failing rank ends the whole job.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kvroute/backend.h"
#include "kvroute/checkpoint.h"
#include "kvroute/model.h"
#include "kvroute/run_checkpoints.h"
#include "data_fixtures.h"
#include "run_kvroute.h"

namespace fs = std::filesystem;
using namespace kvroute;
using ::testing::HasSubstr;
using ::testing::Not;

namespace {

// OpenMPI refuses to run as root (containers) without these; one OpenMP thread per rank;
// idle OpenMP threads sleep rather than spin (the tests share 2 cores).
const bool kEnvironment = [] {
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  ::setenv("OMP_NUM_THREADS", "1", 1);
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
  return true;
}();

constexpr double kTimeoutS = 180;  // generous: the machine is shared; a hang is what this catches

fs::path temp_dir(const std::string& name) { return testing_data::fresh_temp_dir("kvroute_dist_" + name); }

// The command line of `kvroute args...` on `ranks` ranks (1: the binary alone, no launcher).
std::vector<std::string> kvroute_on(int ranks, const std::vector<std::string>& args) {
  std::vector<std::string> argv;
  if (ranks > 1) argv = {KVROUTE_MPIEXEC, "-np", std::to_string(ranks), "--oversubscribe"};
  argv.push_back(KVROUTE_BINARY);
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

using kvroute::testing_cli::kTimedOut;
using kvroute::testing_cli::Result;
using kvroute::testing_cli::spawn;
using kvroute::testing_cli::SpawnOptions;
using kvroute::testing_cli::wait_for;

// Every job starts in its own process group (a timeout kills mpirun with its ranks), with
// mpirun looked up on PATH.
constexpr SpawnOptions kJob{.new_process_group = true, .search_path = true};

// Waits for a job (killed after timeout_s: status kTimedOut), then reads its log.
Result wait_and_read(pid_t pid, const fs::path& log_path, double timeout_s = kTimeoutS) {
  const int status = wait_for(pid, timeout_s);
  return {status, testing_data::read_file_bytes(log_path)};
}

Result run(int ranks, const std::vector<std::string>& args, const fs::path& log_path) {
  return wait_and_read(spawn(kvroute_on(ranks, args), log_path, kJob), log_path);
}

// The kvroute processes mpirun started (its children), from /proc/<pid>/stat: "pid (comm) state ppid ...".
std::vector<pid_t> ranks_of(pid_t mpirun) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;  // not a process
    const std::string stat = testing_data::read_file_bytes(e.path() / "stat");
    const auto close = stat.rfind(')');
    if (close == std::string::npos || stat.find("(kvroute)") == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 2));
    char state;
    pid_t ppid;
    rest >> state >> ppid;
    if (ppid == mpirun) out.push_back(std::stoi(name));
  }
  return out;
}

// Once the job has written its first checkpoint and `ranks` ranks run: the last of them
// (waits up to kTimeoutS; -1 if that never happens).
pid_t rank_after_first_checkpoint(pid_t mpirun, const fs::path& run_dir, std::size_t ranks) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  while (std::chrono::duration<double>(clock::now() - t0).count() < kTimeoutS) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!fs::exists(run_dir / "checkpoints" / "latest")) continue;
    const std::vector<pid_t> found = ranks_of(mpirun);
    if (found.size() >= ranks) return found.back();
  }
  return -1;
}

// The MPI rank of a running kvroute process (OpenMPI sets it in the environment), or -1.
int rank_number(pid_t pid) {
  const std::string env = testing_data::read_file_bytes("/proc/" + std::to_string(pid) + "/environ");
  const std::string key = std::string("OMPI_COMM_WORLD_RANK=");
  for (std::size_t at = 0; at < env.size();) {
    if (env.compare(at, key.size(), key) == 0) return std::atoi(env.c_str() + at + key.size());
    const std::size_t end = env.find('\0', at);
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return -1;
}

// A small corpus and a tiny model: a few seconds per run.
struct RunSetup {
  fs::path dir, config;
};

RunSetup make_setup(const std::string& name, const std::string& routing = "{mode: none}") {
  RunSetup s;
  s.dir = temp_dir(name);
  std::ofstream text(s.dir / "corpus.txt");
  for (int i = 0; i < 300; ++i)
    text << "In the beginning was the Word " << i % 13 << ", and the Word was with God, verse " << i << ".\n";
  text.close();
  s.config = s.dir / "tiny.yaml";
  std::ofstream(s.config)
      << "model: {vocab_size: 256, d_model: 32, n_layers: 3, n_heads: 2, n_kv_heads: 1, d_ff: 64, context: 32}\n"
      << "routing: " << routing << "\n"
      << "train: {batch_size: 2, seq_len: 32, steps: 6, lr: 0.01, warmup_steps: 2, log_interval: 1, eval_batches: 3,\n"
      << "        grad_clip: 0.5}\n"
      << "data: {train_path: " << (s.dir / "corpus.txt").string() << "}\n";
  return s;
}

// `train CONFIG --set out_dir=RUN --set extra...`
std::vector<std::string> train_args(const RunSetup& s, const fs::path& run_dir, const std::vector<std::string>& extra) {
  std::vector<std::string> a = {"train", s.config.string(), "--set", "train.out_dir=" + run_dir.string()};
  for (const std::string& e : extra) a.insert(a.end(), {"--set", e});
  return a;
}

// step -> the exact loss (metrics.jsonl "loss_hex"); a later line for a step replaces an earlier one.
std::map<long, double> losses_by_step(const fs::path& run_dir) {
  std::map<long, double> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto hex = line.find("\"loss_hex\": \"");
    const auto step = line.find("\"step\": ");
    if (hex == std::string::npos || step == std::string::npos) continue;
    out[std::stol(line.substr(step + 8))] = std::strtod(line.c_str() + hex + 13, nullptr);
  }
  return out;
}

std::vector<float> weights_of(const fs::path& ckpt) {
  const CheckpointInfo info = read_checkpoint_info(ckpt.string());
  auto be = make_backend("cpu");
  Model model(info.config.model, be.get());
  return read_checkpoint(ckpt.string(), model, false).params;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float d = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

std::size_t count(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = haystack.find(needle); p != std::string::npos; p = haystack.find(needle, p + 1)) ++n;
  return n;
}

// fp32 tolerance: the same sums in another order (the all-reduce adds the ranks' halves
// instead of backward accumulating micro-batches), through 6 AdamW steps.
constexpr double kLossTolerance = 1e-5;   // relative
constexpr float kWeightTolerance = 2e-5;  // absolute, weights of magnitude ~0.02..1

// b trained steps first_step.. of a's run.
void expect_same_training(const fs::path& a, const fs::path& b, long first_step = 1) {
  const std::map<long, double> la = losses_by_step(a), lb = losses_by_step(b);
  ASSERT_EQ(lb.size(), la.size() - (first_step - 1));
  ASSERT_GE(lb.size(), 1u);
  for (const auto& [step, loss] : lb) {
    ASSERT_TRUE(la.count(step)) << step;
    EXPECT_NEAR(la.at(step), loss, kLossTolerance * loss) << "step " << step;
  }
  EXPECT_LT(max_abs_diff(weights_of(a / "model.h5"), weights_of(b / "model.h5")), kWeightTolerance);
}

}  // namespace

TEST(Distributed, TwoRanksMatchOneRankAccumulatingTheSameGlobalBatch) {
  const RunSetup s = make_setup("match");
  const Result two = run(2, train_args(s, s.dir / "two", {}), s.dir / "two.log");
  ASSERT_EQ(two.status, 0) << two.output;
  const Result one = run(1, train_args(s, s.dir / "one", {"train.grad_accum=2"}), s.dir / "one.log");
  ASSERT_EQ(one.status, 0) << one.output;
  expect_same_training(s.dir / "two", s.dir / "one");

  // Rank 0 alone logs: one line per step, and the world size and global batch up front.
  EXPECT_THAT(two.output, HasSubstr("data parallel: 2 ranks (MPI), global batch 2 ranks x 1 micro-batches x 2 x 32 = "
                                    "128 tokens per step"));
  EXPECT_EQ(count(two.output, "step      3/6 |"), 1u) << two.output;
  EXPECT_THAT(two.output, HasSubstr("| all-reduce "));
  EXPECT_THAT(one.output, ::testing::Not(HasSubstr("data parallel")));
  // The validation loss is sharded over the ranks and summed: the same mean as one rank's.
  const auto final_val = [](const std::string& out) {
    const auto p = out.find("final | val loss ");
    return p == std::string::npos ? -1.0 : std::stod(out.substr(p + 17));
  };
  EXPECT_NEAR(final_val(two.output), final_val(one.output), 1e-3);
  EXPECT_GT(final_val(two.output), 0);
  // So is the loss under each of train.eval_strategies (default full, cla:2).
  const auto final_cla2 = [](const std::string& out) {
    const auto p = out.rfind("| cla:2 ");
    return p == std::string::npos ? -1.0 : std::stod(out.substr(p + 8));
  };
  EXPECT_NEAR(final_cla2(two.output), final_cla2(one.output), 1e-3);
  EXPECT_GT(final_cla2(two.output), 0);
}

TEST(Distributed, StochasticRoutesAreDrawnPerGlobalMicroBatch) {
  // One sequence per micro-batch: rank r's micro-batch is exactly micro-batch r of the one-rank
  // run, with the same routes (drawn for global micro-batch index r), so even stochastic
  // routing trains the same model.
  const RunSetup s = make_setup("routes", "{mode: stochastic, p: 0.5, scheme: any}");
  const Result two = run(2, train_args(s, s.dir / "two", {"train.batch_size=1"}), s.dir / "two.log");
  ASSERT_EQ(two.status, 0) << two.output;
  const Result one =
      run(1, train_args(s, s.dir / "one", {"train.batch_size=1", "train.grad_accum=2"}), s.dir / "one.log");
  ASSERT_EQ(one.status, 0) << one.output;
  expect_same_training(s.dir / "two", s.dir / "one");
}

TEST(Distributed, ZeroOneMatchesZeroZeroBitForBitEvenWithPaddedShards) {
  const RunSetup s = make_setup("zero");
  {  // test premise: 3 ranks cannot split this model's parameters evenly (the padded path)
    auto be = make_backend("cpu");
    ModelConfig mc;
    mc.vocab_size = 256, mc.d_model = 32, mc.n_layers = 3, mc.n_heads = 2, mc.n_kv_heads = 1, mc.d_ff = 64;
    mc.context = 32;
    ASSERT_NE(Model(mc, be.get()).num_params() % 3, 0u);
  }
  for (int ranks : {2, 3}) {
    const std::string n = std::to_string(ranks);
    const Result z0 = run(ranks, train_args(s, s.dir / ("z0_" + n), {"train.zero=0"}), s.dir / ("z0_" + n + ".log"));
    ASSERT_EQ(z0.status, 0) << z0.output;
    const Result z1 = run(ranks, train_args(s, s.dir / ("z1_" + n), {"train.zero=1"}), s.dir / ("z1_" + n + ".log"));
    ASSERT_EQ(z1.status, 0) << z1.output;
    EXPECT_THAT(z1.output, HasSubstr("ZeRO-1: each rank holds 1/" + n + " of the AdamW state"));
    EXPECT_EQ(losses_by_step(s.dir / ("z0_" + n)), losses_by_step(s.dir / ("z1_" + n))) << ranks << " ranks";
    EXPECT_EQ(weights_of(s.dir / ("z0_" + n) / "model.h5"), weights_of(s.dir / ("z1_" + n) / "model.h5"));
    // The final checkpoint holds the full (gathered) AdamW state either way.
    const std::string c0 = find_latest_checkpoint((s.dir / ("z0_" + n)).string());
    const std::string c1 = find_latest_checkpoint((s.dir / ("z1_" + n)).string());
    auto be = make_backend("cpu");
    Model model(read_checkpoint_info(c0).config.model, be.get());
    const CheckpointContents a = read_checkpoint(c0, model, true), b = read_checkpoint(c1, model, true);
    EXPECT_EQ(a.state.adam_m, b.state.adam_m);
    EXPECT_EQ(a.state.adam_v, b.state.adam_v);
    EXPECT_EQ(b.state.adam_m.size(), model.num_params());
  }
  // In bf16 too: the all-gathered weights are the ones the next matmuls round (backend.h, register_weights).
  const Result b0 = run(2, train_args(s, s.dir / "bf16_z0", {"train.zero=0", "train.precision=bf16"}), s.dir / "b0.log");
  ASSERT_EQ(b0.status, 0) << b0.output;
  const Result b1 = run(2, train_args(s, s.dir / "bf16_z1", {"train.zero=1", "train.precision=bf16"}), s.dir / "b1.log");
  ASSERT_EQ(b1.status, 0) << b1.output;
  EXPECT_EQ(losses_by_step(s.dir / "bf16_z0"), losses_by_step(s.dir / "bf16_z1"));
  EXPECT_NE(losses_by_step(s.dir / "bf16_z0"), losses_by_step(s.dir / "z0_2")) << "bf16 changed nothing";
}

// Summing each gradient bucket as soon as backward finishes it (the default) must train the same
// model, bit for bit, as summing them all after backward: same buckets, same sums. Small buckets
// (10 KiB: the model's gradients take 15) and 3 ranks, so most sums overlap backward.
TEST(Distributed, OverlappingTheAllreduceWithBackwardChangesNoBit) {
  const RunSetup s = make_setup("overlap", "{mode: stochastic, p: 0.5, scheme: any}");
  const std::vector<std::string> common = {"train.grad_accum=2", "train.allreduce_bucket_mb=0.009765625"};
  auto with = [&](const std::string& overlap) {
    std::vector<std::string> extra = common;
    extra.push_back("train.overlap_allreduce=" + overlap);
    return extra;
  };
  const Result on = run(3, train_args(s, s.dir / "on", with("true")), s.dir / "on.log");
  ASSERT_EQ(on.status, 0) << on.output;
  const Result off = run(3, train_args(s, s.dir / "off", with("false")), s.dir / "off.log");
  ASSERT_EQ(off.status, 0) << off.output;
  EXPECT_THAT(on.output, HasSubstr("15 bucket(s) of up to 10.0 KiB, each summed as soon as backward finishes it"));
  EXPECT_THAT(off.output, HasSubstr("15 bucket(s) of up to 10.0 KiB, summed after backward"));
  EXPECT_EQ(losses_by_step(s.dir / "on"), losses_by_step(s.dir / "off"));
  EXPECT_EQ(losses_by_step(s.dir / "on").size(), 6u);
  EXPECT_EQ(weights_of(s.dir / "on" / "model.h5"), weights_of(s.dir / "off" / "model.h5"));
}

TEST(Distributed, ACheckpointWrittenByTwoRanksResumesWithTwoAndWithOne) {
  const RunSetup s = make_setup("resume");
  const std::vector<std::string> zero1 = {"train.zero=1", "train.checkpoint.interval=3"};
  // The reference: 2 ranks, 6 steps uninterrupted.
  const Result full = run(2, train_args(s, s.dir / "full", zero1), s.dir / "full.log");
  ASSERT_EQ(full.status, 0) << full.output;
  // Two copies of the run, each continued from its step-3 checkpoint.
  const std::string step3 = "checkpoints/" + checkpoint_file_name(3);
  for (const char* d : {"again2", "again1"}) {
    fs::copy(s.dir / "full", s.dir / d, fs::copy_options::recursive);
    fs::remove(s.dir / d / "metrics.jsonl");  // so every loss and weight compared below is the resumed run's
    fs::remove(s.dir / d / "model.h5");
  }
  // Resume with 2 ranks: exactly the uninterrupted run.
  const Result two = run(2, {"train", "--resume", (s.dir / "again2" / step3).string()}, s.dir / "again2.log");
  ASSERT_EQ(two.status, 0) << two.output;
  EXPECT_THAT(two.output, HasSubstr("resumed from "));
  const std::map<long, double> lf = losses_by_step(s.dir / "full"), l2 = losses_by_step(s.dir / "again2");
  ASSERT_EQ(l2.size(), 3u);
  for (long step = 4; step <= 6; ++step) EXPECT_EQ(lf.at(step), l2.at(step)) << "step " << step;
  EXPECT_EQ(weights_of(s.dir / "full" / "model.h5"), weights_of(s.dir / "again2" / "model.h5"));

  // Resume with 1 rank accumulating 2 micro-batches: the same global batches, so the same
  // training within fp32 rounding; the log says what changed.
  const Result one =
      run(1, {"train", "--resume", (s.dir / "again1" / step3).string(), "--set", "train.grad_accum=2"},
          s.dir / "again1.log");
  ASSERT_EQ(one.status, 0) << one.output;
  EXPECT_THAT(one.output, HasSubstr("the checkpoint was written by 2 rank(s), this run has 1: the global batch is now "
                                    "1 x 4 sequences; the data continues at global window 12"));
  expect_same_training(s.dir / "full", s.dir / "again1", 4);
}

TEST(Distributed, KillingOneRankEndsTheJobNonZeroAndKeepsTheLastCheckpoint) {
  const RunSetup s = make_setup("kill");
  const fs::path run_dir = s.dir / "run", log = s.dir / "kill.log";
  const pid_t mpirun =
      spawn(kvroute_on(2, train_args(s, run_dir, {"train.steps=100000", "train.checkpoint.interval=2"})), log, kJob);
  // Wait for a checkpoint, then SIGKILL one rank (a child of mpirun running kvroute).
  const pid_t victim = rank_after_first_checkpoint(mpirun, run_dir, 1);
  ASSERT_GT(victim, 0) << "no rank found\n" << testing_data::read_file_bytes(log);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  const Result r = wait_and_read(mpirun, log, 60);
  ASSERT_NE(r.status, kTimedOut) << "the job did not end within 60 s after a rank was killed\n" << r.output;
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("signal 9")) << r.output;  // mpirun names the killed rank's signal
  // The newest checkpoint is complete and loads with its AdamW state.
  const std::string latest = find_latest_checkpoint(run_dir.string());
  auto be = make_backend("cpu");
  Model model(read_checkpoint_info(latest).config.model, be.get());
  EXPECT_EQ(read_checkpoint(latest, model, true).state.adam_m.size(), model.num_params());
}

// kill -STOP on one rank used to leave the other spinning in the all-reduce forever: the
// collective watchdog (train.collective_timeout_s) ends the job, naming the step and the
// last checkpoint.
TEST(Distributed, AFrozenRankEndsTheJobAfterTheCollectiveTimeoutNamingTheLastCheckpoint) {
  const RunSetup s = make_setup("frozen");
  const fs::path run_dir = s.dir / "run", log = s.dir / "frozen.log";
  const pid_t mpirun = spawn(kvroute_on(2, train_args(s, run_dir, {"train.steps=100000", "train.checkpoint.interval=2",
                                                                    "train.collective_timeout_s=3"})),
                             log, kJob);
  using clock = std::chrono::steady_clock;
  const pid_t victim = rank_after_first_checkpoint(mpirun, run_dir, 2);
  ASSERT_GT(victim, 0) << "no rank found\n" << testing_data::read_file_bytes(log);
  const int victim_rank = rank_number(victim);
  ASSERT_EQ(::kill(victim, SIGSTOP), 0);
  const auto stopped_at = clock::now();
  const Result r = wait_and_read(mpirun, log, 60);
  const double took = std::chrono::duration<double>(clock::now() - stopped_at).count();
  ::kill(victim, SIGKILL);  // should mpirun have left it behind, stopped
  ASSERT_NE(r.status, kTimedOut) << "the job still ran 60 s after a rank was frozen\n" << r.output;
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("did not complete within 3 s (train.collective_timeout_s) at step "));
  // The message names the rank that froze, not only the one that noticed.
  EXPECT_GE(victim_rank, 0) << "OMPI_COMM_WORLD_RANK not found in the environment of pid " << victim;
  if (victim_rank >= 0) {
    EXPECT_THAT(r.output, HasSubstr("rank " + std::to_string(1 - victim_rank) + " arrived there and noticed; rank " +
                                    std::to_string(victim_rank) + " did not arrive"));
    // The frozen rank, continued by mpirun to end the job, does not blame the one that waited.
    EXPECT_THAT(r.output, Not(HasSubstr("rank " + std::to_string(victim_rank) + " arrived there")));
  }
  EXPECT_THAT(r.output, HasSubstr("resume: kvroute train --resume " + run_dir.string()));
  EXPECT_LT(took, 30) << r.output;
  std::cout << "the job ended " << took << " s after one rank was frozen (timeout 3 s)\n";
  // The newest checkpoint loads.
  const std::string latest = find_latest_checkpoint(run_dir.string());
  EXPECT_GE(read_checkpoint_info(latest).step, 2);
}

TEST(Distributed, ARankThatFailsEndsTheWholeJobWithItsMessage) {
  // Rank 0's checkpoint write fails (a file size limit on the ranks, as a full disk) while
  // rank 1 goes on to the next step's all-reduce; rank 0 must take the job down rather than
  // leave rank 1 waiting. (The limit is set in a shell between mpirun and kvroute: mpirun's
  // own shared-memory files must not hit it.) orte_abort_on_non_zero_status 0 stops mpirun from
  // ending the job by itself when a rank exits non-zero (as some launchers do not): then only
  // kvroute's MPI_Abort ends it; without that, rank 1 would wait in its all-reduce forever.
  const RunSetup s = make_setup("fail");
  const fs::path log = s.dir / "fail.log";
  std::vector<std::string> argv = {KVROUTE_MPIEXEC, "-np", "2", "--oversubscribe", "--mca",
                                   "orte_abort_on_non_zero_status", "0", "sh", "-c",
                                   "trap '' XFSZ; ulimit -f 400; exec \"$0\" \"$@\"", KVROUTE_BINARY};
  for (const std::string& a : train_args(s, s.dir / "run", {"train.steps=100000", "train.checkpoint.interval=2"}))
    argv.push_back(a);
  const pid_t mpirun = spawn(argv, log, kJob);
  const Result r = wait_and_read(mpirun, log, 60);
  ASSERT_NE(r.status, kTimedOut) << "the job hung\n" << r.output;
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("rank 0: error: "));
  EXPECT_THAT(r.output, HasSubstr("step_00000002.h5"));
  // (OpenMPI usually adds its "MPI_ABORT was invoked on rank 0" banner, but not reliably: not asserted.)
}

TEST(Distributed, SigtermToOneRankStopsAllAfterTheSameStepWithACheckpointAndTheRunResumes) {
  // A scheduler's SIGTERM reaches the ranks at different moments (here: only rank 1). They
  // agree on the step to stop after (Communicator::any), so rank 0's checkpoint and every
  // rank's state belong to one step, and the job exits 0.
  const RunSetup s = make_setup("sigterm");
  const fs::path run_dir = s.dir / "run", log = s.dir / "term.log";
  const pid_t mpirun = spawn(kvroute_on(2, train_args(s, run_dir, {"train.steps=100000", "train.zero=1"})), log, kJob);
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  while (testing_data::read_file_bytes(run_dir / "train.log").find("step      1/") == std::string::npos &&
         std::chrono::duration<double>(clock::now() - t0).count() < kTimeoutS)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const std::vector<pid_t> ranks = ranks_of(mpirun);
  ASSERT_EQ(ranks.size(), 2u) << testing_data::read_file_bytes(log);
  pid_t rank1 = -1;  // the process whose environment says OMPI_COMM_WORLD_RANK=1
  for (pid_t p : ranks)
    if (testing_data::read_file_bytes(fs::path("/proc") / std::to_string(p) / "environ").find(std::string("OMPI_COMM_WORLD_RANK=1") + '\0') !=
        std::string::npos)
      rank1 = p;
  ASSERT_GT(rank1, 0);
  ASSERT_EQ(::kill(rank1, SIGTERM), 0);
  const Result r = wait_and_read(mpirun, log, 60);
  ASSERT_NE(r.status, kTimedOut) << "the job did not stop within 60 s of SIGTERM\n" << r.output;
  EXPECT_EQ(r.status, 0) << r.output;
  const std::string said = "another rank received SIGINT or SIGTERM: stopped after step ";
  const auto at = r.output.find(said);
  ASSERT_NE(at, std::string::npos) << r.output;
  const long stopped = std::stol(r.output.substr(at + said.size()));
  EXPECT_THAT(r.output, HasSubstr("checkpoint " + (run_dir / "checkpoints" / checkpoint_file_name(stopped)).string()));

  const Result resumed = run(2, {"train", "--resume", run_dir.string(), "--set", "train.steps=" + std::to_string(stopped + 2)},
                             s.dir / "resume.log");
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  EXPECT_THAT(resumed.output, HasSubstr("at step " + std::to_string(stopped)));
  EXPECT_TRUE(fs::exists(run_dir / "model.h5"));
}

TEST(Distributed, AOneRankCheckpointResumesOnTwoRanksAtTheNextGlobalWindowThatBothCanStartFrom) {
  // One rank, one sequence per step: 3 windows drawn by step 3. Two ranks continue from global
  // window 4 (3 rounded up to a multiple of 2: window 3 is skipped, and the log says so).
  const RunSetup s = make_setup("regrow");
  const Result one = run(1, train_args(s, s.dir / "run", {"train.batch_size=1", "train.steps=3"}), s.dir / "one.log");
  ASSERT_EQ(one.status, 0) << one.output;
  const Result two = run(2, {"train", "--resume", (s.dir / "run").string(), "--set", "train.steps=5"}, s.dir / "two.log");
  ASSERT_EQ(two.status, 0) << two.output;
  EXPECT_THAT(two.output, HasSubstr("the checkpoint was written by 1 rank(s), this run has 2: the global batch is now 2 x 1 "
                                    "sequences; the data continues at global window 4 (the saved position 3 rounded up to a "
                                    "multiple of the world size: 1 window(s) skipped)"));
  const std::map<long, double> losses = losses_by_step(s.dir / "run");
  EXPECT_EQ(losses.size(), 5u);
  // The 2-rank checkpoint at step 5 records the global position 4 + 2 * 2 = 8.
  const CheckpointInfo info = read_checkpoint_info(find_latest_checkpoint((s.dir / "run").string()));
  EXPECT_EQ(info.step, 5);
  std::map<std::string, int64_t> loader(info.state.data_loader.begin(), info.state.data_loader.end());
  EXPECT_EQ(loader["draws"], 8);
  EXPECT_EQ(loader["world_size"], 2);
}
