// kvroute eval CKPT [CKPT...] --strategies full,cla:2,greedy:3,... --out DIR
#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "kvroute/checkpoint.h"
#include "kvroute/cpu_threads.h"
#include "kvroute/data.h"
#include "kvroute/evaluate.h"
#include "kvroute/inference.h"
#include "kvroute/memory_estimate.h"
#include "kvroute/run_log.h"
#include "kvroute/strategy.h"
#include "kvroute/model.h"
#include "kvroute/probe.h"
#include "kvroute/tasks.h"
#include "kvroute/strategy.h"
#include "kvroute/tokenizer.h"

namespace kvroute::cli {

namespace {

// Before loading anything: the weights (and their host copy), and the larger of validation
// (one batch through a cache) and the speed benchmark (one KV cache per strategy for
// --decode-batch sequences, all allocated together, and the prefill of all of them at once).
void check_eval_memory(const Config& cfg, const std::string& ckpt, const std::vector<std::string>& specs,
                       int batch_size, int seq_len, const GenerationBenchSpec& bench, bool speed) {
  const ModelConfig& mc = cfg.model;
  const double weights = 2.0 * 4 * double(param_count(mc));
  const double B = batch_size > 0 ? batch_size : cfg.train.batch_size, T = seq_len > 0 ? seq_len : cfg.train.seq_len;
  const double full_per_token = double(kv_bytes_per_token(mc, parse_strategy("full", mc.n_layers)));
  const double validation = B * T * full_per_token + inference_scratch_bytes(mc, B * T);
  double benchmark = 0, caches = 0;
  if (speed) {
    const int prompt_len = bench.prompt_len > 0 ? bench.prompt_len : std::min(128, mc.context);
    const int decode_len = bench.decode_len > 0 ? bench.decode_len : std::min(32, mc.context - 1);
    const double decode_prompt = std::max(1, std::min(prompt_len, mc.context - decode_len));
    const double max_len = std::max<double>(prompt_len, decode_prompt + decode_len);
    for (const std::string& sp : specs) {
      const double per_token = is_greedy_strategy(sp) ? full_per_token
                                                      : double(kv_bytes_per_token(mc, parse_strategy(sp, mc.n_layers)));
      caches += double(bench.decode_batch) * max_len * per_token;
    }
    benchmark = caches + inference_scratch_bytes(mc, double(bench.decode_batch) * decode_prompt);
  }
  check_fits_in_memory(weights + std::max(validation, benchmark),
                       "eval of " + ckpt + " (weights " + human_bytes(weights) + ", validation " +
                           human_bytes(validation) + ", speed benchmark " + human_bytes(benchmark) + " with --decode-batch " +
                           std::to_string(bench.decode_batch) + ": " + human_bytes(caches) + " of KV caches)",
                       benchmark > validation ? "lower --decode-batch (or --prompt-len / --decode-len, or pass --no-speed)"
                                              : "lower --batch-size or --seq-len");
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "eval", "Compare depth-wise KV sharing strategies on checkpoints: validation loss, KV cache size, TTFT, decode speed, peak memory");
  static std::vector<std::string> ckpts, overrides;
  static std::string strategies = "full,cla:2,cla:3,cla:4,half,first", out_dir, plot_format = "png";
  static std::string probe_path;
  static std::vector<std::string> task_paths;
  static int batches = 0, batch_size = 0, seq_len = 0, threads = 0;
  static long val_tokens = 0;
  static GenerationBenchSpec bench{0, 1, 0, 3, 1};
  static bool no_speed = false, allow_tokenizer_mismatch = false;
  cmd->add_option("checkpoints", ckpts, "Checkpoint files (HDF5); one line per checkpoint in the plot")->required();
  cmd->add_option("--strategies", strategies, "Strategies (comma- or ;-separated), each one of:\n" + strategy_help(true))
      ->capture_default_str();
  cmd->add_option("--out", out_dir, "Directory for results.md/.csv/.json and the plot (default: <first checkpoint's dir>/eval)");
  cmd->add_option("--val-tokens", val_tokens,
                  "Validation token budget per strategy (default: the checkpoint's eval_batches x batch_size x seq_len)");
  cmd->add_option("--batches", batches, "Validation batches (default: from --val-tokens or the checkpoint's train.eval_batches)");
  cmd->add_option("--batch-size", batch_size, "Sequences per validation batch (default: the checkpoint's train.batch_size)");
  cmd->add_option("--seq-len", seq_len, "Tokens per validation sequence (default: the checkpoint's train.seq_len)");
  cmd->add_option("--prompt-len", bench.prompt_len, "TTFT: prompt length in tokens (default: min(128, context))");
  cmd->add_option("--decode-batch", bench.decode_batch, "Decode speed: sequences decoded together")->capture_default_str();
  cmd->add_option("--decode-len", bench.decode_len, "Decode speed: tokens decoded per sequence (default: min(32, context - 1))");
  cmd->add_option("--repeats", bench.repeats, "Timed runs per measurement (medians are reported)")->capture_default_str();
  cmd->add_flag("--no-speed", no_speed, "Skip the TTFT and decode measurements");
  cmd->add_option("--plot-format", plot_format, "png (through gnuplot, SVG if that fails) or svg")->capture_default_str();
  cmd->add_option("--threads", threads, "CPU threads (default: the checkpoint's train.threads, else all cores)");
  cmd->add_option("--probe", probe_path,
                  "Retrieval probe file (kvroute data probe): adds greedy exact match per strategy, through its cache");
  cmd->add_option("--task", task_paths,
                  "Downstream task file (JSON Lines; multiple choice or completion, see tasks.h), repeatable: adds "
                  "accuracy per strategy, scored as lm-evaluation-harness scores it")
      ->check(CLI::ExistingFile);
  cmd->add_option("--set", overrides, "Override a key of each checkpoint's config, e.g. --set data.val_path=x.txt");
  cmd->add_flag("--allow-tokenizer-mismatch", allow_tokenizer_mismatch,
                "Evaluate even if the tokenizer is not the one the checkpoint was trained with (results are then "
                "not those of the model as trained)");
  cmd->callback([cmd] {
    // 0 (and below) is not a size: an explicit one is refused rather than read as "the default".
    for (const char* name : {"--val-tokens", "--batches", "--batch-size", "--seq-len"}) {
      if (cmd->count(name) == 0) continue;
      const long value = std::string(name) == "--val-tokens" ? val_tokens
                         : std::string(name) == "--batches"  ? batches
                         : std::string(name) == "--batch-size" ? batch_size
                                                             : seq_len;
      if (value < 1)
        throw std::invalid_argument(std::string(name) + " must be >= 1 (got " + std::to_string(value) +
                                    "); leave it out for the checkpoint's default");
    }
    if (plot_format != "png" && plot_format != "svg")
      throw std::invalid_argument("--plot-format must be png or svg (got '" + plot_format + "')");
    const std::vector<std::string> specs = split_strategy_list(strategies);
    // Read every header and check every strategy against every depth before measuring anything.
    std::vector<CheckpointInfo> infos;
    for (const std::string& path : ckpts) {
      CheckpointInfo info = read_checkpoint_info(path);
      for (const auto& o : overrides) apply_override(info.config, o);
      validate(info.config);
      for (const std::string& s : specs) {
        try {
          if (is_greedy_strategy(s))
            parse_greedy_count(s, info.config.model.n_layers);
          else
            parse_strategy(s, info.config.model.n_layers);
        } catch (const std::invalid_argument& e) {
          throw std::invalid_argument(std::string(e.what()) + " [checkpoint " + path + ", " +
                                      std::to_string(info.config.model.n_layers) + " layers]");
        }
      }
      check_eval_memory(info.config, path, specs, batch_size, seq_len, bench, !no_speed);
      infos.push_back(std::move(info));
    }
    std::vector<ProbeItem> probe;
    if (!probe_path.empty()) probe = read_probe_file(probe_path);
    std::vector<Task> tasks;  // read before measuring anything, so a bad file fails at once
    for (const std::string& t : task_paths) tasks.push_back(read_task_file(t));
    for (std::size_t i = 0; i < infos.size() && !probe.empty(); ++i) {  // before measuring anything
      const auto tok = load_tokenizer(infos[i].config.data.tokenizer);
      std::size_t longest = 0;
      for (const ProbeItem& it : probe)
        longest = std::max(longest, tok->encode(it.prompt).size() + tok->encode(" " + it.answer).size());
      if (longest > static_cast<std::size_t>(infos[i].config.model.context))
        throw std::invalid_argument("--probe " + probe_path + ": a prompt and its answer take up to " +
                                    std::to_string(longest) + " tokens, more than the context " +
                                    std::to_string(infos[i].config.model.context) + " of " + ckpts[i] +
                                    " (write the probe with fewer --pairs)");
    }
    const bool rss_per_row = reset_peak_rss();
    EvalReportInfo report;
    report.peak_rss_is_per_row = rss_per_row;
    std::vector<StrategyResult> results;
    for (std::size_t i = 0; i < ckpts.size(); ++i) {
      const std::string& ckpt = ckpts[i];
      const Config& cfg = infos[i].config;
      configure_cpu_threads(threads > 0 ? threads : cfg.train.threads);
      auto backend = make_backend(cfg.train.backend);
      Model model(cfg.model, backend.get());
      load_weights(ckpt, model);
      // greedy:N chooses on the training split (EvalSpec::selection_tokens); other rows need only val.
      const bool any_greedy = std::any_of(specs.begin(), specs.end(), [](const std::string& s) { return is_greedy_strategy(s); });
      const Corpus corpus = load_corpus(cfg.data, any_greedy ? CorpusParts::train_and_val : CorpusParts::val_only);
      // An imported model's embedding may be padded beyond its tokenizer's ids, never smaller.
      if (corpus.vocab_size > cfg.model.vocab_size)
        throw std::runtime_error("checkpoint " + ckpt + ": model.vocab_size is " + std::to_string(cfg.model.vocab_size) +
                                 " but the validation data's tokenizer has " + std::to_string(corpus.vocab_size) + " tokens");
      check_tokenizer_or_warn(infos[i], {corpus.tokenizer, corpus.vocab_size, corpus.tokenizer_fingerprint},
                              allow_tokenizer_mismatch);
      EvalSpec spec;
      spec.batch_size = batch_size > 0 ? batch_size : cfg.train.batch_size;
      spec.seq_len = seq_len > 0 ? seq_len : cfg.train.seq_len;
      if (spec.seq_len > cfg.model.context)
        throw std::invalid_argument("--seq-len " + std::to_string(spec.seq_len) + " exceeds the model context " +
                                    std::to_string(cfg.model.context) + " of " + ckpt);
      spec.n_batches = batches > 0        ? batches
                       : val_tokens > 0   ? batches_for_budget(val_tokens, spec.batch_size, spec.seq_len)
                                          : cfg.train.eval_batches;
      // Windows are spread evenly over the split: asking for more tokens than it holds makes them overlap.
      const double wanted = double(spec.n_batches) * spec.batch_size * spec.seq_len;
      if (wanted > double(corpus.val.size()))
        std::cout << "note: " << spec.n_batches << " x " << spec.batch_size << " x " << spec.seq_len << " = "
                  << static_cast<long long>(wanted) << " validation tokens requested, but the validation split of "
                  << ckpt << " has " << corpus.val.size() << ": windows overlap, each token is counted about "
                  << std::to_string(wanted / double(corpus.val.size())).substr(0, 4)
                  << " times (fewer --batches or --val-tokens give distinct windows)\n";
      spec.measure_speed = !no_speed;
      // greedy:N chooses on the first tokens of the training split, as many as the validation
      // windows span (at least one window per validation window).
      std::vector<int32_t> selection;
      if (any_greedy) {
        selection = corpus.train.head(std::max<uint64_t>(
            corpus.val.size(), uint64_t(spec.n_batches) * spec.batch_size * (spec.seq_len + 1)));
        spec.selection_tokens = &selection;
      }
      spec.bench = bench;
      std::unique_ptr<Tokenizer> probe_tokenizer;
      if (!probe.empty()) {
        probe_tokenizer = load_tokenizer(cfg.data.tokenizer);
        spec.probe = &probe;
        spec.probe_tokenizer = probe_tokenizer.get();
      }
      std::unique_ptr<Tokenizer> task_tokenizer;
      if (!tasks.empty()) {
        task_tokenizer = load_tokenizer(cfg.data.tokenizer);
        spec.tasks = &tasks;
        spec.task_tokenizer = task_tokenizer.get();
      }
      if (spec.bench.prompt_len <= 0) spec.bench.prompt_len = std::min(128, cfg.model.context);
      if (spec.bench.decode_len <= 0) spec.bench.decode_len = std::min(32, cfg.model.context - 1);
      report.spec = spec;
      report.threads = omp_get_max_threads();
      std::cout << "checkpoint " << ckpt << " (step " << infos[i].step << ", " << cfg.model.n_layers
                << " layers, routing " << cfg.routing.mode
                << (cfg.routing.mode == "stochastic" ? " p=" + std::to_string(cfg.routing.p).substr(0, 4) : "") << "), "
                << spec.n_batches << " x " << spec.batch_size << " x " << spec.seq_len << " validation tokens\n";
      const auto rows = evaluate_strategies(model, ckpt, infos[i].step, specs, corpus.val, spec, std::cout);
      results.insert(results.end(), rows.begin(), rows.end());
    }
    std::cout << "\n" << results_markdown(results, report);
    const std::string dir =
        out_dir.empty() ? (std::filesystem::path(ckpts.front()).parent_path() / "eval").string() : out_dir;
    const auto written = write_eval_outputs(results, report, dir, plot_format);
    std::cout << "\nwrote";
    for (const auto& p : written) std::cout << " " << p;
    std::cout << "\n";
  });
}

}  // namespace kvroute::cli
