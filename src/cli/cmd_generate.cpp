// kvroute generate CKPT --strategy cla:2 --prompt "..." [--max-new-tokens N --temperature T --top-k K --top-p P --seed S]
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "commands.h"
#include "kvroute/checkpoint.h"
#include "kvroute/cpu_threads.h"
#include "kvroute/inference.h"
#include "kvroute/model.h"
#include "kvroute/run_log.h"
#include "kvroute/strategy.h"
#include "kvroute/tokenizer.h"

namespace kvroute::cli {

void add_generate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate text from a checkpoint with a depth-wise shared KV cache");
  static std::string ckpt, strategy = "full";
  static std::vector<std::string> prompts, overrides;
  static GenerateOptions opt;
  static int threads = 0, prefill_chunk = 0;
  static bool allow_tokenizer_mismatch = false;
  cmd->add_option("checkpoint", ckpt, "Checkpoint file (HDF5)")->required();
  cmd->add_option("--strategy", strategy, "Sharing strategy, one of:\n" + strategy_help(false))
      ->capture_default_str();
  cmd->add_option("--prompt", prompts, "Prompt text; repeat for a batch of prompts (any lengths)")->required();
  cmd->add_option("--max-new-tokens", opt.max_new_tokens, "Tokens to generate per prompt")->capture_default_str();
  cmd->add_option("--temperature", opt.sampling.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", opt.sampling.top_k, "Sample among the k most likely tokens; 0 = off")->capture_default_str();
  cmd->add_option("--top-p", opt.sampling.top_p, "Nucleus sampling threshold; 1 = off")->capture_default_str();
  cmd->add_option("--seed", opt.sampling.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--stop-token", opt.stop_token,
                  "Stop a sequence after this token id (e.g. 2, </s>, for a SentencePiece tokenizer); -1 = none")
      ->capture_default_str();
  cmd->add_option("--threads", threads, "CPU threads (default: the checkpoint's train.threads, else all cores)");
  cmd->add_option("--prefill-chunk", prefill_chunk,
                  "Prefill at most this many tokens of each prompt per step (bounds prefill memory); 0 = whole prompts")
      ->capture_default_str();
  cmd->add_option("--set", overrides, "Override a key of the checkpoint's config");
  cmd->add_flag("--allow-tokenizer-mismatch", allow_tokenizer_mismatch,
                "Generate even if the tokenizer is not the one the checkpoint was trained with (the text is then "
                "not the model's)");
  cmd->callback([] {
    validate_sampling(opt.sampling);
    if (opt.max_new_tokens < 1)
      throw std::invalid_argument("--max-new-tokens must be >= 1 (got " + std::to_string(opt.max_new_tokens) + ")");
    CheckpointInfo info = read_checkpoint_info(ckpt);
    Config cfg = info.config;
    for (const auto& o : overrides) apply_override(cfg, o);
    validate(cfg);
    const ModelConfig& mc = cfg.model;
    if (opt.stop_token < -1 || opt.stop_token >= mc.vocab_size)
      throw std::invalid_argument("--stop-token " + std::to_string(opt.stop_token) + " is not a token id of " + ckpt +
                                  " (vocabulary 0.." + std::to_string(mc.vocab_size - 1) + "; -1 = none)");
    SharingStrategy s;
    try {
      s = parse_strategy(strategy, mc.n_layers);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string(e.what()) + " [checkpoint " + ckpt + ", " +
                                  std::to_string(mc.n_layers) + " layers]");
    }
    const std::unique_ptr<Tokenizer> tok = load_tokenizer(cfg.data.tokenizer);
    // An imported model's embedding may have more rows than its tokenizer has ids (padded), never fewer.
    if (tok->vocab_size() > mc.vocab_size)
      throw std::invalid_argument("model.vocab_size is " + std::to_string(mc.vocab_size) + " but data.tokenizer '" +
                                  cfg.data.tokenizer + "' has " + std::to_string(tok->vocab_size()) + " tokens");
    check_tokenizer_or_warn(info, {tok->identity(), tok->vocab_size(), fingerprint_hex(tok->fingerprint())},
                            allow_tokenizer_mismatch);
    std::vector<std::vector<int32_t>> ids;
    int longest = 0;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      ids.push_back(tok->encode(prompts[i]));
      const int n = static_cast<int>(ids.back().size());
      if (n == 0)
        throw std::invalid_argument("--prompt " + std::to_string(i + 1) + " is empty: generation needs at least one token");
      if (n > mc.context)
        throw std::invalid_argument("--prompt " + std::to_string(i + 1) + " is " + std::to_string(n) +
                                    " tokens long, more than the model's context of " + std::to_string(mc.context) +
                                    " tokens");
      longest = std::max(longest, n);
    }
    configure_cpu_threads(threads > 0 ? threads : cfg.train.threads);
    auto backend = make_backend(cfg.train.backend);
    Model model(mc, backend.get());
    load_weights(ckpt, model);
    // The last generated token is never fed back, so a sequence occupies prompt + new - 1 positions.
    const int wanted = longest + opt.max_new_tokens - 1;
    if (wanted > mc.context)
      std::cerr << "note: prompt (" << longest << " tokens) + --max-new-tokens " << opt.max_new_tokens
                << " exceed the context of " << mc.context << "; generation stops when the context is full\n";
    InferenceEngine engine(model, s, static_cast<int>(ids.size()), std::min(wanted, mc.context));
    engine.set_prefill_chunk(prefill_chunk);
    const GenerationResult r = engine.generate(ids, opt);

    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (ids.size() > 1) std::cout << "=== prompt " << i + 1 << " ===\n";
      // Ids of padded embedding rows have no text: left out, and said.
      std::vector<int32_t> known;
      for (int32_t id : r.tokens[i])
        if (id < tok->vocab_size()) known.push_back(id);
      std::cout << prompts[i] << tok->decode(known) << "\n";
      if (known.size() != r.tokens[i].size())
        std::cerr << "note: " << r.tokens[i].size() - known.size() << " generated id(s) lie beyond the tokenizer's "
                  << tok->vocab_size() << " ids (padded embedding rows) and have no text\n";
    }
    const std::size_t full_per_token = kv_bytes_per_token(mc, parse_strategy("full", mc.n_layers));
    std::cout << "---\n"
              << "strategy " << s.name << " (map " << s.map_string() << ", " << s.n_cache_layers() << "/"
              << mc.n_layers << " cache layers)\n";
    char line[256];
    std::snprintf(line, sizeof line, "TTFT %.2f ms | decode %.1f tokens/s (%ld tokens in %.3f s)\n", 1e3 * r.ttft_s,
                  r.decode_tokens_per_s(), r.decode_tokens, r.decode_s);
    std::cout << line;
    std::cout << "KV cache " << engine.cache().bytes() << " bytes allocated (" << human_bytes(engine.cache().bytes())
              << ": " << ids.size() << " x " << engine.cache().max_len() << " tokens x "
              << engine.cache().bytes_per_token() << " bytes/token; full cache would be " << full_per_token
              << " bytes/token)\n";
    std::cout << "stop:";
    for (std::size_t i = 0; i < ids.size(); ++i)
      std::cout << (i ? "," : "") << " " << stop_reason_name(r.stop[i]) << " after " << r.tokens[i].size() << " tokens";
    std::cout << "\n";
  });
}

}  // namespace kvroute::cli
