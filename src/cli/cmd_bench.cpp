// kvroute bench <what> ...: benchmarks, each a median of several runs.
//   bench generate CFG-or-CKPT --strategy full,cla:2   prefill latency (TTFT) and decode tokens/s
//   bench train CFG [--profile]                        training tokens/s, FLOP/s, MFU (cmd_bench_train.cpp)
//   bench attention [--head-dims 64,128]               attention forward/backward TFLOP/s (cmd_bench_attention.cpp)
// Each benchmark is one add_bench_* function registered in add_bench_command.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "kvroute/checkpoint.h"
#include "kvroute/cpu_threads.h"
#include "kvroute/config.h"
#include "kvroute/inference.h"
#include "kvroute/json_text.h"
#include "kvroute/model.h"
#include "kvroute/strategy.h"

namespace kvroute::cli {

void add_bench_train(CLI::App& bench);      // cmd_bench_train.cpp
void add_bench_attention(CLI::App& bench);  // cmd_bench_attention.cpp

namespace {

bool is_yaml(const std::string& path) {
  return path.ends_with(".yaml") || path.ends_with(".yml");
}

void add_bench_generate(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "generate", "Prefill latency (TTFT) and decode tokens/s of the inference engine, per sharing strategy");
  static std::string source, strategies = "full,cla:2";
  static std::vector<std::string> overrides;
  static GenerationBenchSpec spec{0, 1, 0, 5, 1};  // 0: chosen from the model's context below
  static uint64_t init_seed = 1;
  static int threads = 0;
  static bool json = false;
  cmd->add_option("model", source, "A config (.yaml, random weights) or a checkpoint (.h5)")->required();
  cmd->add_option("--strategy,--strategies", strategies,
                  "Strategies to compare (comma- or ;-separated), each one of:\n" + strategy_help(false))->capture_default_str();
  cmd->add_option("--prompt-len", spec.prompt_len, "TTFT: prompt length in tokens (default: min(128, context))");
  cmd->add_option("--decode-batch", spec.decode_batch, "Sequences decoded together")->capture_default_str();
  cmd->add_option("--decode-len", spec.decode_len, "Tokens decoded per sequence (default: min(64, context - 1))");
  cmd->add_option("--repeats", spec.repeats, "Timed runs after one warm-up (medians reported)")->capture_default_str();
  cmd->add_option("--prefill-chunk", spec.prefill_chunk,
                  "Prefill at most this many tokens of each prompt per step (bounds prefill memory); 0 = whole prompts")
      ->capture_default_str();
  cmd->add_option("--seed", init_seed, "Weight seed for a config (random init)")->capture_default_str();
  cmd->add_option("--threads", threads, "CPU threads (default: train.threads, else all cores)");
  cmd->add_option("--set", overrides, "Override a config key, e.g. --set model.context=512");
  cmd->add_flag("--json", json, "Print JSON instead of a table");
  cmd->callback([] {
    Config cfg;
    std::string origin;
    const bool from_config = is_yaml(source);
    if (from_config) {
      cfg = load_config({source}, overrides);
      origin = "random init (seed " + std::to_string(init_seed) + ") from " + source;
    } else {
      CheckpointInfo info = read_checkpoint_info(source);
      cfg = info.config;
      for (const auto& o : overrides) apply_override(cfg, o);
      validate(cfg);
      origin = "checkpoint " + source + " (step " + std::to_string(info.step) + ")";
    }
    const ModelConfig& mc = cfg.model;
    const auto list = parse_strategy_list(strategies, mc.n_layers);
    if (spec.prompt_len == 0) spec.prompt_len = std::min(128, mc.context);
    if (spec.decode_len == 0) spec.decode_len = std::min(64, mc.context - 1);
    configure_cpu_threads(threads > 0 ? threads : cfg.train.threads);
    auto backend = make_backend(cfg.train.backend);
    Model model(mc, backend.get());
    if (from_config) model.init_weights(init_seed);
    else load_weights(source, model);
    const std::vector<GenerationBench> results = benchmark_generation(model, list, spec);

    const int n_threads = omp_get_max_threads();
    if (json) {
      std::ostringstream os;
      os << "{\"model\": {\"source\": " << json_string(origin) << ", \"n_layers\": " << mc.n_layers
         << ", \"d_model\": " << mc.d_model << ", \"n_heads\": " << mc.n_heads << ", \"n_kv_heads\": " << mc.n_kv_heads
         << ", \"params\": " << model.num_params() << "},\n \"settings\": {\"backend\": " << json_string(backend->name())
         << ", \"threads\": " << n_threads << ", \"prompt_len\": " << spec.prompt_len
         << ", \"decode_batch\": " << spec.decode_batch << ", \"decode_len\": " << spec.decode_len
         << ", \"repeats\": " << spec.repeats << ", \"prefill_chunk\": " << spec.prefill_chunk
         << "},\n \"results\": [";
      for (std::size_t i = 0; i < results.size(); ++i) {
        const GenerationBench& b = results[i];
        os << (i ? "," : "") << "\n  {\"strategy\": " << json_string(b.strategy.name) << ", \"source_map\": "
           << json_string(b.strategy.map_string()) << ", \"cache_layers\": " << b.strategy.n_cache_layers()
           << ", \"kv_bytes\": " << b.kv_bytes << ", \"kv_bytes_per_token\": " << b.kv_bytes_per_token
           << ", \"ttft_ms_median\": " << json_number(b.median_ttft_ms())
           << ", \"decode_tokens_per_s_median\": " << json_number(b.median_decode_tokens_per_s()) << ", \"ttft_ms\": [";
        for (std::size_t j = 0; j < b.ttft_ms.size(); ++j) os << (j ? ", " : "") << json_number(b.ttft_ms[j]);
        os << "], \"decode_tokens_per_s\": [";
        for (std::size_t j = 0; j < b.decode_tokens_per_s.size(); ++j)
          os << (j ? ", " : "") << json_number(b.decode_tokens_per_s[j]);
        os << "]}";
      }
      os << "\n]}\n";
      std::cout << os.str();
      return;
    }
    std::cout << "model: " << mc.n_layers << " layers, d_model " << mc.d_model << ", heads " << mc.n_heads << "/"
              << mc.n_kv_heads << " kv, " << model.num_params() / 1e6 << "M parameters; " << origin << "\n"
              << "backend " << backend->name() << ", " << n_threads << " threads; TTFT: prompt of " << spec.prompt_len
              << " tokens, batch 1; decode: " << spec.decode_batch << " x " << spec.decode_len << " tokens; median of "
              << spec.repeats << " runs (strategies interleaved)\n\n"
              << "| strategy | cache layers | KV bytes/token | KV allocated | TTFT ms | decode tok/s |\n"
              << "|---|---:|---:|---:|---:|---:|\n";
    for (const GenerationBench& b : results) {
      char line[256];
      std::snprintf(line, sizeof line, "| %s | %d/%d | %zu | %zu | %.2f | %.1f |\n", b.strategy.name.c_str(),
                    b.strategy.n_cache_layers(), mc.n_layers, b.kv_bytes_per_token, b.kv_bytes, b.median_ttft_ms(),
                    b.median_decode_tokens_per_s());
      std::cout << line;
    }
  });
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (medians of several runs)");
  add_bench_generate(*bench);
  add_bench_train(*bench);
  add_bench_attention(*bench);
  bench->callback([bench] {
    if (bench->get_subcommands().empty())
      throw std::invalid_argument("bench needs a benchmark, e.g. `kvroute bench generate configs/gpt2-small.yaml` "
                                  "(kvroute bench --help lists them)");
  });
}

}  // namespace kvroute::cli
