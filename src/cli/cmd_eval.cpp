// kvroute eval CHECKPOINT --strategies full,cla:2,first,...
#include <iostream>

#include "commands.h"
#include "kvroute/checkpoint.h"
#include "kvroute/data.h"
#include "kvroute/evaluate.h"
#include "kvroute/model.h"

namespace kvroute::cli {

void add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Compare depth-wise KV sharing strategies on a checkpoint");
  static std::string ckpt, strategies = "full,cla:2,cla:3,cla:4,half,first";
  static std::vector<std::string> overrides;
  static int batches = 0, batch_size = 0;
  cmd->add_option("checkpoint", ckpt, "Checkpoint file (HDF5)")->required();
  cmd->add_option("--strategies", strategies,
                  "Comma-separated strategies: full, cla:K, first, half, keep:N, list:a,b,...")
      ->capture_default_str();
  cmd->add_option("--batches", batches, "Validation batches (default: the checkpoint's train.eval_batches)");
  cmd->add_option("--batch-size", batch_size, "Sequences per batch (default: the checkpoint's train.batch_size)");
  cmd->add_option("--set", overrides, "Override a key of the checkpoint's config, e.g. --set data.val_path=x.txt");
  cmd->callback([] {
    CheckpointInfo info = read_checkpoint_info(ckpt);
    Config cfg = info.config;
    for (const auto& o : overrides) apply_override(cfg, o);
    validate(cfg);
    const int L = cfg.model.n_layers;
    const auto list = parse_strategy_list(strategies, L);
    auto backend = make_backend(cfg.train.backend);
    Model model(cfg.model, backend.get());
    load_weights(ckpt, model);
    const Corpus corpus = load_corpus(cfg.data);
    const int B = batch_size > 0 ? batch_size : cfg.train.batch_size;
    const int nb = batches > 0 ? batches : cfg.train.eval_batches;
    const int T = cfg.train.seq_len;
    std::cout << "checkpoint " << ckpt << " (step " << info.step << ", " << L << " layers, routing "
              << cfg.routing.mode << (cfg.routing.mode == "stochastic" ? " p=" + std::to_string(cfg.routing.p).substr(0, 4) : "")
              << "), " << nb << " x " << B << " x " << T << " validation tokens\n\n";
    const auto results = evaluate_strategies(model, corpus.val, list, B, T, nb);
    std::cout << strategy_table_markdown(results);
  });
}

}  // namespace kvroute::cli
