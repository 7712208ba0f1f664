// scripts/gpu_check.sh and its summary (scripts/gpu_check_summary.sh), checked without a GPU:
// the summary's parsing on real `kvroute bench train` / `bench attention` output (CPU backend,
// so a change of the tables' format shows here) and on ctest and GoogleTest logs in the form
// they take (captured from this build's GPU tests); gpu_check.sh's exit 2 when there is no GPU;
// and its whole flow against a stand-in nvidia-smi and a stand-in prebuilt bundle.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <regex>
#include <string>

#include "data_fixtures.h"
#include "run_kvroute.h"

namespace {

namespace fs = std::filesystem;
using kvroute::testing_data::fresh_temp_dir;
using kvroute::testing_data::read_file_bytes;
using kvroute::testing_data::write_file_bytes;
using ::testing::HasSubstr;

using Shell = kvroute::testing_cli::Result;
Shell shell(const std::string& cmd) { return kvroute::testing_cli::run_shell(cmd); }

const std::string kSource = KVROUTE_SOURCE_DIR;
const std::string kSummary = "bash " + kSource + "/scripts/gpu_check_summary.sh ";

// The line of `text` that starts with `prefix` ("" if none).
std::string line_starting(const std::string& text, const std::string& prefix) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(prefix, 0) == 0) return line;
  return "";
}

// The value cell of a `| label | value |` table row.
std::string table_value(const std::string& text, const std::string& label) {
  const std::regex re("\\| " + label + " \\| ([^|]*) \\|");
  std::smatch m;
  return std::regex_search(text, m, re) ? m[1].str() : "";
}

// A ctest run of the GPU tests as ctest prints it: 29 passed, one failed, one skipped.
const char* kCtestLog = R"(Test project /work/kvroute/build-cuda
      Start 77: CudaOps.MemoryRoundTrip
 1/31 Test  #77: CudaOps.MemoryRoundTrip ..................................   Passed    0.31 sec
      Start 78: CudaOps.MatmulAllTransposes
 2/31 Test  #78: CudaOps.MatmulAllTransposes ..............................***Failed    1.02 sec
      Start 79: CudaOps.ElementwiseAccumulateAddScale
 3/31 Test  #79: CudaOps.ElementwiseAccumulateAddScale ....................***Skipped   0.14 sec

97% tests passed, 1 tests failed out of 31

Label Time Summary:
gpu    =  24.76 sec*proc (31 tests)

Total Test time (real) =  24.78 sec

The following tests did not run:
	 79 - CudaOps.ElementwiseAccumulateAddScale (Skipped)

The following tests FAILED:
	 78 - CudaOps.MatmulAllTransposes (Failed)
)";

// test_cuda_ops run directly (the bundle path): 28 passed, 2 failed, 1 skipped.
const char* kGtestLog = R"(Running main() from ./googletest/src/gtest_main.cc
[==========] Running 31 tests from 1 test suite.
[ RUN      ] CudaOps.MemoryRoundTrip
[       OK ] CudaOps.MemoryRoundTrip (310 ms)
[ RUN      ] CudaOps.MatmulAllTransposes
/work/kvroute/tests/test_cuda_ops.cpp:190: Failure
[  FAILED  ] CudaOps.MatmulAllTransposes (1020 ms)
[==========] 31 tests from 1 test suite ran. (24780 ms total)
[  PASSED  ] 28 tests.
[  SKIPPED ] 1 test, listed below:
[  SKIPPED ] CudaOps.PeakGemmProbe
[  FAILED  ] 2 tests, listed below:
[  FAILED  ] CudaOps.MatmulAllTransposes
[  FAILED  ] CudaOps.AttentionBf16MatchesCpu

 2 FAILED TESTS
)";

// A run cut short (killed by timeout, or a crash): no summary lines, only per-test ones.
const char* kGtestCutShort = R"([==========] Running 31 tests from 1 test suite.
[ RUN      ] CudaOps.MemoryRoundTrip
[       OK ] CudaOps.MemoryRoundTrip (310 ms)
[ RUN      ] CudaOps.SumSquares
[  SKIPPED ] CudaOps.SumSquares (0 ms)
[ RUN      ] CudaOps.MatmulAllTransposes
[  FAILED  ] CudaOps.MatmulAllTransposes (1020 ms)
[ RUN      ] CudaOps.AttentionBf16MatchesCpu
)";

std::string small_config(const fs::path& dir) {
  const fs::path cfg = dir / "small.yaml";
  write_file_bytes(cfg,
                   "model: {vocab_size: 64, d_model: 32, n_layers: 2, n_heads: 2, n_kv_heads: 1, d_ff: 48, context: 16}\n"
                   "routing: {mode: stochastic, p: 0.5, scheme: any}\n"
                   "train: {batch_size: 2, seq_len: 16, threads: 1}\n");
  return cfg.string();
}

// One bench row as gpu_check.sh keeps it.
void bench_row(const fs::path& dir, int row, const std::string& name, const std::string& kvroute_args) {
  char base[32];
  std::snprintf(base, sizeof base, "bench-%02d", row);
  write_file_bytes(dir / (std::string(base) + ".name"), name + "\n");
  const Shell r = shell(std::string(KVROUTE_BINARY) + " " + kvroute_args);
  write_file_bytes(dir / (std::string(base) + ".log"), r.output);
  write_file_bytes(dir / (std::string(base) + ".rc"), std::to_string(r.status) + "\n");
  ASSERT_EQ(r.status, 0) << r.output;
}

TEST(GpuCheckSummary, ParsesRealBenchOutputAndACtestLog) {
  const fs::path dir = fresh_temp_dir("gpu_check_summary");
  const std::string cfg = small_config(dir);
  write_file_bytes(dir / "gpu.txt", "NVIDIA H200, 143771 MiB, 570.124.06, 9.0\n");
  write_file_bytes(dir / "tests.log", kCtestLog);
  write_file_bytes(dir / "tests.how", "ctest -L gpu\n");
  write_file_bytes(dir / "bench.what", "tiny shape\n");
  const std::string train = "bench train " + cfg + " --threads 1 --warmup 0 --steps 2 --peak-size 32";
  bench_row(dir, 1, "bf16, stochastic routing", train);
  bench_row(dir, 2, "bf16, routing none", train + " --set routing.mode=none");
  write_file_bytes(dir / "bench-03.name", "fp32, stochastic routing\n");
  write_file_bytes(dir / "bench-03.rc", "1\n");
  write_file_bytes(dir / "bench-03.log", "error: something broke\n");
  write_file_bytes(dir / "bench-04.name", "fp32, deterministic=false\n");
  write_file_bytes(dir / "bench-04.rc", "timeout\n");
  bench_row(dir, 5, "bf16 --profile (synced per op)", "bench train " + cfg + " --threads 1 --warmup 0 --steps 1 --peak-size 0 --profile");
  const Shell att = shell(std::string(KVROUTE_BINARY) +
                          " bench attention --backend cpu --precision fp32 --threads 1 --batch 1 --seq-len 32 "
                          "--d-model 128 --warmup 0 --repeats 1 --head-dims 64,128");
  ASSERT_EQ(att.status, 0) << att.output;
  write_file_bytes(dir / "attention.log", att.output);
  write_file_bytes(dir / "attention.rc", "0\n");
  write_file_bytes(dir / "failed.txt", "ctest -L gpu\nbench fp32, stochastic routing\n");
  write_file_bytes(dir / "elapsed", "412\n");

  const Shell r = shell(kSummary + dir.string());
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string& s = r.output;
  EXPECT_EQ(line_starting(s, "GPU "), "GPU         NVIDIA H200, 143771 MiB, 570.124.06, 9.0");
  EXPECT_EQ(line_starting(s, "tests "), "tests       29 passed, 1 failed, 1 skipped (ctest -L gpu)");
  EXPECT_THAT(line_starting(s, "benchmarks "), HasSubstr("tiny shape"));
  // Each row carries the values of its own bench output.
  const std::string routed_log = read_file_bytes(dir / "bench-01.log");
  const std::string routed = line_starting(s, "  bf16, stochastic routing ");
  EXPECT_THAT(routed, HasSubstr(" " + table_value(routed_log, "step time") + " ")) << s;
  EXPECT_THAT(routed, HasSubstr(" " + table_value(routed_log, "tokens/s") + " ")) << s;
  EXPECT_THAT(routed, HasSubstr(" " + table_value(routed_log, "MFU") + " ")) << s;
  EXPECT_THAT(routed, ::testing::ContainsRegex("[0-9]+\\.[0-9]%  -$")) << "datasheet MFU, no device memory: " << s;
  const std::string unrouted_log = read_file_bytes(dir / "bench-02.log");
  EXPECT_THAT(line_starting(s, "  bf16, routing none "), HasSubstr(" " + table_value(unrouted_log, "tokens/s") + " "));
  EXPECT_THAT(line_starting(s, "  fp32, stochastic routing "), HasSubstr("FAILED (exit 1)"));
  EXPECT_THAT(line_starting(s, "  fp32, deterministic=false "), HasSubstr("not run (out of time)"));
  // The profile row has no peak GEMM, so no MFU, but a step time.
  EXPECT_THAT(line_starting(s, "  bf16 --profile (synced per op) "),
              ::testing::ContainsRegex("[0-9.]+ s +[0-9.]+ +- "));
  // Routing cost from the two bf16 rows' tokens/s.
  const double tok_routed = std::stod(table_value(routed_log, "tokens/s"));
  const double tok_none = std::stod(table_value(unrouted_log, "tokens/s"));
  char cost[32];
  std::snprintf(cost, sizeof cost, "%+.2f%%", 100 * (tok_none / tok_routed - 1));
  EXPECT_THAT(line_starting(s, "routing "), HasSubstr(std::string("against none: ") + cost)) << s;
  // Attention: one line per head_dim with both directions' TFLOP/s and times.
  EXPECT_THAT(line_starting(s, "attention "), HasSubstr("precision fp32"));
  EXPECT_THAT(line_starting(s, "  head_dim 64 "),
              ::testing::ContainsRegex("forward +[0-9.]+ TFLOP/s \\([0-9.]+ ms\\) +backward +[0-9.]+ TFLOP/s"));
  EXPECT_THAT(line_starting(s, "  head_dim 128 "), HasSubstr("backward"));
  EXPECT_EQ(line_starting(s, "result "), "result      FAILED after 412s: ctest -L gpu; bench fp32, stochastic routing");
}

TEST(GpuCheckSummary, GoogleTestLogsWholeAndCutShort) {
  const fs::path dir = fresh_temp_dir("gpu_check_gtest");
  write_file_bytes(dir / "tests.log", kGtestLog);
  write_file_bytes(dir / "tests.how", "test_cuda_ops\n");
  write_file_bytes(dir / "elapsed", "200\n");
  Shell r = shell(kSummary + dir.string());
  EXPECT_EQ(line_starting(r.output, "tests "), "tests       28 passed, 2 failed, 1 skipped (test_cuda_ops)");
  EXPECT_EQ(line_starting(r.output, "GPU "), "GPU         -");
  EXPECT_EQ(line_starting(r.output, "result "), "result      all passed in 200s");
  EXPECT_EQ(line_starting(r.output, "benchmarks"), "");  // no rows: no table
  write_file_bytes(dir / "tests.log", kGtestCutShort);
  r = shell(kSummary + dir.string());
  EXPECT_EQ(line_starting(r.output, "tests "),
            "tests       1 passed, 1 failed, 1 skipped (incomplete: the run did not finish) (test_cuda_ops)");
  write_file_bytes(dir / "tests.log", "");
  r = shell(kSummary + dir.string());
  EXPECT_THAT(line_starting(r.output, "tests "), HasSubstr("no results"));
  fs::remove(dir / "tests.log");
  r = shell(kSummary + dir.string());
  EXPECT_EQ(line_starting(r.output, "tests "), "tests       not run");
}

TEST(GpuCheck, WithoutAGpuExitsTwoWithAClearMessage) {
  const Shell r = shell("KVROUTE_NVIDIA_SMI=/nonexistent/nvidia-smi bash " + kSource + "/scripts/gpu_check.sh");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("gpu_check: no NVIDIA GPU on this machine"));
  EXPECT_THAT(r.output, HasSubstr("nothing checked"));
}

// The whole script on a stand-in nvidia-smi and a stand-in bundle whose test_cuda_ops prints a
// passing run, with a budget of one second: the benchmarks are out of time, the run fails, and
// the summary block is the last thing printed.
TEST(GpuCheck, FlowEndsWithTheSummaryBlock) {
  const fs::path dir = fresh_temp_dir("gpu_check_flow");
  const fs::path smi = dir / "nvidia-smi", bundle = dir / "bundle";
  write_file_bytes(smi,
                   "#!/bin/sh\n"
                   "case \"$*\" in\n"
                   "  -L) echo 'GPU 0: Stand-in GPU';;\n"
                   "  *query-gpu*) echo 'Stand-in GPU, 81920 MiB, 570.00, 8.0';;\n"
                   "  *) echo 'CUDA Version: 13.0';;\n"
                   "esac\n");
  fs::create_directories(bundle / "bin");
  fs::create_directories(bundle / "lib");
  fs::create_symlink(KVROUTE_BINARY, bundle / "bin" / "kvroute");
  write_file_bytes(dir / "gtest.log", kGtestLog);
  write_file_bytes(bundle / "bin" / "test_cuda_ops", "#!/bin/sh\ncat '" + (dir / "gtest.log").string() + "'\n");
  fs::permissions(smi, fs::perms::owner_all);
  fs::permissions(bundle / "bin" / "test_cuda_ops", fs::perms::owner_all);
  const Shell r = shell("cd '" + dir.string() + "' && TMPDIR='" + dir.string() + "' GPU_CHECK_SECONDS=1 KVROUTE_NVIDIA_SMI='" +
                        smi.string() + "' KVROUTE_PREBUILT=bundle bash " + kSource + "/scripts/gpu_check.sh");
  EXPECT_EQ(r.status, 1) << r.output;
  const std::size_t summary = r.output.rfind("] summary\n");
  ASSERT_NE(summary, std::string::npos) << r.output;
  const std::string block = r.output.substr(summary);
  EXPECT_EQ(line_starting(block, "GPU "), "GPU         Stand-in GPU, 81920 MiB, 570.00, 8.0");
  EXPECT_EQ(line_starting(block, "tests "), "tests       28 passed, 2 failed, 1 skipped (test_cuda_ops)");
  EXPECT_THAT(line_starting(block, "  bf16, stochastic routing "), HasSubstr("not run (out of time)"));
  EXPECT_THAT(line_starting(block, "attention "), HasSubstr("not run (out of time)"));
  EXPECT_THAT(line_starting(block, "result "), HasSubstr("FAILED after"));
  EXPECT_THAT(line_starting(block, "result "), HasSubstr("bench bf16, stochastic routing (out of time)"));
  // Nothing but the block and the one closing line follows the summary stamp.
  EXPECT_EQ(r.output.find("=== [", summary + 1), std::string::npos);
  EXPECT_THAT(r.output.substr(r.output.rfind("\nresult ")), HasSubstr("gpu_check: FAILED (the result line above"));
}

}  // namespace
