// kvroute eval CKPT [CKPT...] --strategies full,cla:2,greedy:3,... --out DIR
#include <omp.h>

#include <filesystem>
#include <iostream>

#include "commands.h"
#include "kvroute/checkpoint.h"
#include "kvroute/cpu_threads.h"
#include "kvroute/data.h"
#include "kvroute/evaluate.h"
#include "kvroute/model.h"
#include "kvroute/probe.h"
#include "kvroute/strategy.h"
#include "kvroute/tokenizer.h"

namespace kvroute::cli {

void add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "eval", "Compare depth-wise KV sharing strategies on checkpoints: validation loss, KV cache size, TTFT, decode speed, peak memory");
  static std::vector<std::string> ckpts, overrides;
  static std::string strategies = "full,cla:2,cla:3,cla:4,half,first", out_dir, plot_format = "png";
  static std::string probe_path;
  static int batches = 0, batch_size = 0, seq_len = 0, threads = 0;
  static long val_tokens = 0;
  static GenerationBenchSpec bench{0, 1, 0, 3, 1};
  static bool no_speed = false;
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
  cmd->add_option("--set", overrides, "Override a key of each checkpoint's config, e.g. --set data.val_path=x.txt");
  cmd->callback([] {
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
      infos.push_back(std::move(info));
    }
    std::vector<ProbeItem> probe;
    if (!probe_path.empty()) probe = read_probe_file(probe_path);
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
      const Corpus corpus = load_corpus(cfg.data, CorpusParts::val_only);
      if (corpus.vocab_size != cfg.model.vocab_size)
        throw std::runtime_error("checkpoint " + ckpt + ": model.vocab_size is " + std::to_string(cfg.model.vocab_size) +
                                 " but the validation data's tokenizer has " + std::to_string(corpus.vocab_size) + " tokens");
      EvalSpec spec;
      spec.batch_size = batch_size > 0 ? batch_size : cfg.train.batch_size;
      spec.seq_len = seq_len > 0 ? seq_len : cfg.train.seq_len;
      if (spec.seq_len > cfg.model.context)
        throw std::invalid_argument("--seq-len " + std::to_string(spec.seq_len) + " exceeds the model context " +
                                    std::to_string(cfg.model.context) + " of " + ckpt);
      spec.n_batches = batches > 0        ? batches
                       : val_tokens > 0   ? batches_for_budget(val_tokens, spec.batch_size, spec.seq_len)
                                          : cfg.train.eval_batches;
      spec.measure_speed = !no_speed;
      spec.bench = bench;
      std::unique_ptr<Tokenizer> probe_tokenizer;
      if (!probe.empty()) {
        probe_tokenizer = load_tokenizer(cfg.data.tokenizer);
        spec.probe = &probe;
        spec.probe_tokenizer = probe_tokenizer.get();
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
