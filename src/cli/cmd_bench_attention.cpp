// kvroute bench attention: forward and backward TFLOP/s of the attention op alone, per
// head_dim, at FlashAttention-2's benchmark shape by default (causal, 16 x 1024 tokens,
// hidden size 2048). See attention_bench.h for the FLOP count.
#include <cstdio>
#include <iostream>
#include <sstream>
#include <stdexcept>

#include "commands.h"
#include "kvroute/attention_bench.h"
#include "kvroute/cpu_threads.h"
#include "kvroute/json_text.h"

namespace kvroute::cli {

namespace {

std::vector<int> parse_head_dims(const std::string& list) {
  std::vector<int> dims;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::size_t used = 0;
    int d = 0;
    try {
      d = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size())
      throw std::invalid_argument("bench attention: --head-dims wants numbers separated by commas, got '" + list + "'");
    dims.push_back(d);
  }
  if (dims.empty()) throw std::invalid_argument("bench attention: --head-dims is empty");
  return dims;
}

}  // namespace

void add_bench_attention(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "attention", "Attention forward and backward TFLOP/s per head_dim (causal self-attention, random inputs)");
  static AttentionBenchSpec spec;
  static std::string head_dims = "64,128", backend_name = "cuda", precision = "bf16";
  static bool non_deterministic = false, json = false;
  static int threads = 0;
  cmd->add_option("--head-dims", head_dims, "Head dims to measure, e.g. 64,128")->capture_default_str();
  cmd->add_option("--backend", backend_name, "cuda or cpu")->capture_default_str();
  cmd->add_option("--precision", precision, "bf16 (tensor cores, CUDA) or fp32")->capture_default_str();
  cmd->add_flag("--non-deterministic", non_deterministic, "train.deterministic=false (fp32: atomic dQ)");
  cmd->add_option("--batch", spec.batch, "Sequences")->capture_default_str();
  cmd->add_option("--seq-len", spec.seq_len, "Tokens per sequence")->capture_default_str();
  cmd->add_option("--d-model", spec.d_model, "Hidden size: heads = d_model / head_dim")->capture_default_str();
  cmd->add_option("--warmup", spec.warmup, "Untimed forward + backward pairs first")->capture_default_str();
  cmd->add_option("--repeats", spec.repeats, "Timed calls of each direction (medians reported)")->capture_default_str();
  cmd->add_option("--seed", spec.seed, "Seed of the random inputs")->capture_default_str();
  cmd->add_option("--threads", threads, "CPU threads (cpu backend; default: OMP_NUM_THREADS, else the CPUs)");
  cmd->add_flag("--json", json, "Print JSON instead of a table");
  cmd->callback([] {
    const std::vector<int> dims = parse_head_dims(head_dims);
    configure_cpu_threads(threads);
    auto backend = make_backend(backend_name, BackendOptions{precision, !non_deterministic});
    std::vector<AttentionBenchRow> rows;
    for (int d : dims) rows.push_back(benchmark_attention(backend.get(), spec, d));

    if (json) {
      std::ostringstream os;
      os << "{\"settings\": {\"backend\": " << json_string(backend->name()) << ", \"precision\": "
         << json_string(precision) << ", \"deterministic\": " << (non_deterministic ? "false" : "true")
         << ", \"batch\": " << spec.batch << ", \"seq_len\": " << spec.seq_len << ", \"d_model\": " << spec.d_model
         << ", \"warmup\": " << spec.warmup << ", \"repeats\": " << spec.repeats << "},\n \"results\": [";
      for (std::size_t i = 0; i < rows.size(); ++i) {
        const AttentionBenchRow& r = rows[i];
        os << (i ? "," : "") << "\n  {\"head_dim\": " << r.head_dim << ", \"heads\": " << r.heads
           << ", \"forward_flops\": " << json_number(r.forward_flops)
           << ", \"backward_flops\": " << json_number(r.backward_flops)
           << ", \"forward_seconds_median\": " << json_number(r.forward_median_seconds)
           << ", \"backward_seconds_median\": " << json_number(r.backward_median_seconds)
           << ", \"forward_tflops\": " << json_number(r.forward_tflops)
           << ", \"backward_tflops\": " << json_number(r.backward_tflops) << "}";
      }
      os << "\n]}\n";
      std::cout << os.str();
      return;
    }
    std::ostringstream os;
    os << "attention (causal self-attention): backend " << backend->name() << ", precision " << precision
       << (non_deterministic ? ", non-deterministic" : ", deterministic") << "; " << spec.batch << " x "
       << spec.seq_len << " tokens, d_model " << spec.d_model << " (heads = d_model / head_dim); median of "
       << spec.repeats << " calls after " << spec.warmup << " warm-up pairs\n"
       << "FLOPs: forward 4 x head_dim x heads per visible (query, key) pair; backward 2.5 x forward "
          "(FlashAttention-2's count)\n\n"
       << "| head_dim | heads | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |\n|---:|---:|---:|---:|---:|---:|\n";
    for (const AttentionBenchRow& r : rows) {
      char line[200];
      std::snprintf(line, sizeof line, "| %d | %d | %.3f | %.2f | %.3f | %.2f |\n", r.head_dim, r.heads,
                    1e3 * r.forward_median_seconds, r.forward_tflops, 1e3 * r.backward_median_seconds,
                    r.backward_tflops);
      os << line;
    }
    std::cout << os.str();
  });
}

}  // namespace kvroute::cli
