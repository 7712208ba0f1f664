// kvroute bench train CFG: training throughput, model FLOP/s and MFU against a sgemm peak
// measured in the same run (see train_bench.h), peak memory, and with --profile the time
// per backend op.
#include <omp.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "kvroute/config.h"
#include "kvroute/cpu_threads.h"
#include "kvroute/json_text.h"
#include "kvroute/train_bench.h"

namespace kvroute::cli {

namespace {

// 1-minute load average (the machine may be shared; timings depend on it), -1 if unknown.
double load_average() {
  std::ifstream f("/proc/loadavg");
  double v = -1;
  if (!(f >> v)) return -1;
  return v;
}

std::string format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

void print_profile(std::ostream& os, const TrainBenchResult& r, int steps) {
  double in_ops = 0;
  for (const OpTiming& t : r.profile) in_ops += t.seconds;
  double total = 0;  // the timed steps, so shares add up to 100%
  for (double s : r.step_seconds) total += s;
  const double step = total / steps, mean_step_in_ops = in_ops / steps;
  os << "\nper-op time (--profile; per step = totals over the " << steps
     << " timed steps / " << steps << ", each call between two synchronize(); share of the mean step):\n\n"
     << "| op | calls/step | ms/step | share | model GFLOP/s |\n|---|---:|---:|---:|---:|\n";
  for (const OpTiming& t : r.profile) {
    char line[200];
    std::snprintf(line, sizeof line, "| %s | %.1f | %.1f | %.1f%% | %s |\n", t.op.c_str(), double(t.calls) / steps,
                  1e3 * t.seconds / steps, 100 * t.seconds / steps / step,
                  t.flops > 0 ? format("%.1f", t.flops / t.seconds / 1e9).c_str() : "");
    os << line;
  }
  os << "| (outside ops) | | " << format("%.1f", 1e3 * (step - mean_step_in_ops)) << " | "
     << format("%.1f%%", 100 * (step - mean_step_in_ops) / step) << " | |\n";
}

}  // namespace

void add_bench_train(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "train", "Training tokens/s, model FLOP/s and MFU against a measured sgemm peak, on synthetic tokens");
  static std::vector<std::string> configs, overrides;
  static TrainBenchSpec spec;
  static int threads = 0;
  static bool json = false;
  cmd->add_option("config", configs, "Config file(s), layered left to right")->required()->check(CLI::ExistingFile);
  cmd->add_option("--set", overrides, "Override a config key, e.g. --set train.grad_accum=1");
  cmd->add_option("--warmup", spec.warmup_steps, "Untimed optimizer steps first")->capture_default_str();
  cmd->add_option("--steps", spec.steps, "Timed optimizer steps (medians reported)")->capture_default_str();
  cmd->add_option("--peak-size", spec.peak_size, "n of the n^3 sgemm that measures the peak (0: skip)")
      ->capture_default_str();
  cmd->add_option("--seed", spec.seed, "Seed of the weights and the synthetic tokens")->capture_default_str();
  cmd->add_option("--threads", threads, "CPU threads (default: train.threads, else OMP_NUM_THREADS, else the CPUs)");
  cmd->add_flag("--profile", spec.profile, "Time every backend op and print the breakdown");
  cmd->add_flag("--json", json, "Print JSON instead of tables");
  cmd->callback([] {
    const Config cfg = load_config(configs, overrides);
    const ModelConfig& mc = cfg.model;
    const TrainConfig& tc = cfg.train;
    const ThreadChoice tchoice = configure_cpu_threads(threads > 0 ? threads : tc.threads);
    auto backend = make_backend(tc.backend, BackendOptions{tc.precision, tc.deterministic});
    const double load_start = load_average();
    const TrainBenchResult r = benchmark_training(cfg, backend.get(), spec);
    const double load_end = load_average();
    const int n_threads = omp_get_max_threads();
    std::string routing = cfg.routing.mode;
    if (cfg.routing.mode == "stochastic")
      routing += " p " + format("%g", cfg.routing.p) + ", " + cfg.routing.scheme + ", per " + cfg.routing.granularity;
    else if (cfg.routing.mode == "fixed")
      routing += " " + cfg.routing.strategy;

    if (json) {
      std::ostringstream os;
      auto list = [&](const auto& v) {
        std::string s = "[";
        for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + json_number(v[i]);
        return s + "]";
      };
      os << "{\"model\": {\"n_layers\": " << mc.n_layers << ", \"d_model\": " << mc.d_model
         << ", \"n_heads\": " << mc.n_heads << ", \"n_kv_heads\": " << mc.n_kv_heads << ", \"d_ff\": " << mc.d_ff
         << ", \"vocab_size\": " << mc.vocab_size << ", \"params\": " << r.params << "},\n \"settings\": {\"backend\": "
         << json_string(backend->name()) << ", \"threads\": " << n_threads
         << ", \"threads_from\": " << json_string(tchoice.reason)
         << ", \"onednn_runtime\": " << json_string(onednn_threading_runtime()) << ", \"batch_size\": " << tc.batch_size
         << ", \"seq_len\": " << tc.seq_len << ", \"grad_accum\": " << tc.grad_accum
         << ", \"tokens_per_step\": " << r.tokens_per_step << ", \"routing\": " << json_string(routing)
         << ", \"recompute\": " << json_string(tc.recompute) << ", \"precision\": " << json_string(tc.precision) << ", \"precision_resolved\": "
         << json_string(resolve_precision(tc.backend, tc.precision).reason)
         << ", \"deterministic\": " << (tc.deterministic ? "true" : "false")
         << ", \"peak_gemm\": " << json_string(backend->peak_gemm_label()) << ", \"warmup_steps\": " << spec.warmup_steps
         << ", \"steps\": " << spec.steps << ", \"peak_size\": " << spec.peak_size
         << ", \"load_average_start\": " << json_number(load_start) << ", \"load_average_end\": "
         << json_number(load_end) << "},\n \"results\": {\"step_seconds_median\": " << json_number(r.median_step_seconds)
         << ", \"tokens_per_s_median\": " << json_number(r.tokens_per_second)
         << ", \"flops_per_token\": " << json_number(r.flops_per_token)
         << ", \"achieved_flops\": " << json_number(r.achieved_flops)
         << ", \"peak_flops_median\": " << json_number(r.peak_flops_median)
         << ", \"fp32_peak_flops_median\": " << json_number(r.fp32_peak_flops_median) << ", \"mfu\": " << json_number(r.mfu)
         << ", \"activation_bytes\": " << r.activation_bytes
         << ", \"activation_bytes_per_token\": " << json_number(r.activation_bytes_per_token)
         << ", \"peak_rss_kib\": " << r.peak_rss_kib << ", \"device_memory_peak_bytes\": " << r.device_memory.peak_bytes
         << ", \"device_memory_in_use_bytes\": " << r.device_memory.in_use_bytes
         << ", \"device_allocations\": " << r.device_memory.allocations << ",\n  \"step_seconds\": " << list(r.step_seconds)
         << ", \"peak_flops\": " << list(r.peak_flops) << ", \"losses\": " << list(r.losses) << "}";
      if (spec.profile) {
        os << ",\n \"profile\": [";
        for (std::size_t i = 0; i < r.profile.size(); ++i) {
          const OpTiming& t = r.profile[i];
          os << (i ? "," : "") << "\n  {\"op\": " << json_string(t.op) << ", \"calls_per_step\": "
             << json_number(double(t.calls) / spec.steps) << ", \"seconds_per_step\": "
             << json_number(t.seconds / spec.steps) << ", \"flops_per_s\": "
             << json_number(t.flops > 0 ? t.flops / t.seconds : 0) << "}";
        }
        os << "\n ]";
      }
      os << "}\n";
      std::cout << os.str();
      return;
    }

    std::ostringstream os;
    os << "model: " << mc.n_layers << " layers, d_model " << mc.d_model << ", heads " << mc.n_heads << "/"
       << mc.n_kv_heads << " kv, d_ff " << mc.d_ff << ", vocab " << mc.vocab_size << ", "
       << format("%.2f", r.params / 1e6) << "M parameters; routing " << routing << "; recompute " << tc.recompute
       << "\nprecision " << resolve_precision(tc.backend, tc.precision).reason << (tc.deterministic ? ", deterministic" : ", non-deterministic (atomics)")
       << "\nstep: " << tc.batch_size << " x " << tc.seq_len << " tokens x grad_accum " << tc.grad_accum << " = "
       << r.tokens_per_step << " tokens (synthetic), AdamW included; backend " << backend->name() << ", "
       << n_threads << " threads (" << tchoice.reason << "; oneDNN on " << onednn_threading_runtime()
       << "); load average " << format("%.2f", load_start) << " -> "
       << format("%.2f", load_end) << "\nmedian of " << spec.steps << " timed steps after " << spec.warmup_steps
       << " warm-up\n\n| measure | value |\n|---|---:|\n"
       << "| step time | " << format("%.3f s", r.median_step_seconds) << " |\n"
       << "| tokens/s | " << format("%.1f", r.tokens_per_second) << " |\n"
       << "| model FLOP/s | " << format("%.2f G", r.achieved_flops / 1e9) << " |\n";
    if (spec.peak_size > 0)
      os << "| " << backend->peak_gemm_label() << " peak (" << spec.peak_size << "^3, median of " << r.peak_flops.size() << ", one after each step) | "
         << format("%.2f G", r.peak_flops_median / 1e9) << " |\n"
         << "| MFU | " << format("%.1f%%", 100 * r.mfu) << " |\n";
    if (r.fp32_peak_flops_median > 0)
      os << "| sgemm peak (fp32, same size; not the MFU denominator) | "
         << format("%.2f G", r.fp32_peak_flops_median / 1e9) << " |\n";
    os << "| activations | " << format("%.1f MiB", r.activation_bytes / 1048576.0) << " ("
       << format("%.0f", r.activation_bytes_per_token) << " B/token) |\n"
       << "| peak RSS (VmHWM) | " << format("%.1f MiB", r.peak_rss_kib / 1024.0) << " |\n";
    if (r.device_memory.device_total_bytes > 0)
      os << "| device memory peak (backend allocations, incl. peak-GEMM operands) | "
         << format("%.1f MiB", r.device_memory.peak_bytes / 1048576.0) << " of "
         << format("%.1f GiB", r.device_memory.device_total_bytes / 1073741824.0) << ", "
         << r.device_memory.allocations << " allocations |\n";
    os << "\n"
       << "model FLOPs/token = 6 x " << format("%.2fM", (r.flops_per_token - 6.0 * mc.n_layers * tc.seq_len * mc.n_heads * resolved_head_dim(mc)) / 6e6)
       << " matmul parameters + 6 x L x T x n_heads x head_dim (attention, causal) = " << format("%.1f M", r.flops_per_token / 1e6)
       << "\n";
    if (spec.profile) print_profile(os, r, spec.steps);
    std::cout << os.str();
  });
}

}  // namespace kvroute::cli
