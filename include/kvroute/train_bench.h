// Training-speed benchmark behind `kvroute bench train`: warm-up steps, then timed
// optimizer steps on synthetic random tokens (no dataset), each followed by a large
// sgemm on the same backend that measures the machine's achievable peak under the
// same load, so MFU is a ratio measured in one run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvroute/backend.h"
#include "kvroute/config.h"
#include "kvroute/profiling_backend.h"

namespace kvroute {

struct TrainBenchSpec {
  int warmup_steps = 1;
  int steps = 5;          // timed optimizer steps (medians reported)
  int peak_size = 2048;   // n of the n x n x n sgemm that measures the peak; 0 = skip
  bool profile = false;   // time every backend op (ProfilingBackend)
  uint64_t seed = 1;      // weights and synthetic tokens
};

// Model FLOPs per trained token (forward + backward), the bench's accounting:
//   6 * P  +  6 * L * T * d_model
// P: parameters that take part in a matmul (all but an untied input embedding, whose
// lookup is a copy; norm gains included, negligible). The second term is attention
// (QK^T and PV, causal so each query sees T/2 keys on average: 2*T*d forward and
// 4*T*d backward per layer). K/V projections skipped by routing still count: the
// figure is the same for every routing mode.
double training_flops_per_token(const ModelConfig& m, long params, int seq_len);

struct TrainBenchResult {
  long params = 0;
  long tokens_per_step = 0;            // batch_size * seq_len * grad_accum
  double flops_per_token = 0;
  std::vector<double> step_seconds;    // each timed step
  std::vector<double> peak_flops;      // each sgemm peak measurement (FLOP/s)
  std::vector<float> losses;           // each timed step's mean loss
  double median_step_seconds = 0;
  double tokens_per_second = 0;        // tokens_per_step / median_step_seconds
  double achieved_flops = 0;           // flops_per_token * tokens_per_second (FLOP/s)
  double peak_flops_median = 0;        // 0 when peak_size == 0
  double mfu = 0;                      // achieved_flops / peak_flops_median
  // With bf16 precision: an fp32 sgemm peak too, on an fp32 backend of the same kind (the
  // MFU stays against the bf16 peak; this shows what bf16 bought).
  std::vector<double> fp32_peak_flops;
  double fp32_peak_flops_median = 0;
  std::size_t activation_bytes = 0;    // Model::activation_bytes() at (batch_size, seq_len)
  double activation_bytes_per_token = 0;
  long peak_rss_kib = 0;               // VmHWM after the run
  BackendMemory device_memory;         // the backend's device allocations after the run (zeros on the CPU)
  std::vector<OpTiming> profile;       // with --profile: totals over the timed steps
};

// Runs the benchmark on `backend` with cfg's model, routing and train settings
// (batch_size, seq_len, grad_accum, recompute, AdamW). Threads are the caller's business.
TrainBenchResult benchmark_training(const Config& cfg, Backend* backend, const TrainBenchSpec& spec);

// Median FLOP/s of `repeats` n x n x n matmuls on backend (after one untimed call).
double measure_matmul_flops(Backend* backend, int n, int repeats);

}  // namespace kvroute
