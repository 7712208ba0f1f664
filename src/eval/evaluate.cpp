// The evaluation harness: every strategy of a checkpoint measured through the
// inference engine's cache (validation loss, cache size, TTFT, decode speed,
// peak memory).
#include "kvroute/evaluate.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "kvroute/data.h"

namespace kvroute {

int batches_for_budget(long token_budget, int batch_size, int seq_len) {
  if (batch_size < 1 || seq_len < 1) throw std::invalid_argument("batch size and sequence length must be >= 1");
  const long per_batch = static_cast<long>(batch_size) * seq_len;
  return static_cast<int>(std::max(1L, (token_budget + per_batch - 1) / per_batch));
}

double strategy_val_loss(Model& model, const SharingStrategy& strategy, const ValidationSet& val) {
  if (!val.tokens || val.n_batches < 1) throw std::invalid_argument("validation set is empty");
  InferenceEngine engine(model, strategy, val.batch_size, val.seq_len);
  double sum = 0;
  for (int i = 0; i < val.n_batches; ++i) {
    const Batch b = val_batch(*val.tokens, val.batch_size, val.seq_len, i, val.n_batches);
    sum += engine.teacher_forced_loss(b.inputs, b.targets, val.batch_size, val.seq_len);
  }
  return sum / val.n_batches;
}

long peak_rss_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  return 0;
}

bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  if (!clear) return false;
  clear << "5";
  clear.flush();
  return static_cast<bool>(clear);
}

std::vector<StrategyResult> evaluate_strategies(Model& model, const std::string& checkpoint, long step,
                                                const std::vector<std::string>& specs,
                                                const std::vector<int32_t>& val_tokens, const EvalSpec& spec,
                                                std::ostream& log) {
  const ModelConfig& mc = model.config();
  const int L = mc.n_layers;
  const ValidationSet val{&val_tokens, spec.batch_size, spec.seq_len, spec.n_batches};
  SharingStrategy full{"full", {}};
  for (int l = 0; l < L; ++l) full.src.push_back(l);
  const std::size_t full_bytes = kv_bytes_per_token(mc, full);

  // Resolve every spec first, so a typo fails before any long measurement.
  struct Pending {
    SharingStrategy strategy;
    int greedy_n = 0;
  };
  std::vector<Pending> pending;
  for (const std::string& s : specs) {
    if (is_greedy_strategy(s) && !spec.selection_tokens)
      throw std::invalid_argument(s + ": the greedy search needs tokens of its own to choose on (EvalSpec::selection_tokens, "
                                  "the training split), so that its row is not measured on the tokens it was chosen on");
    if (is_greedy_strategy(s))
      pending.push_back({SharingStrategy{s, {}}, parse_greedy_count(s, L)});
    else
      pending.push_back({parse_strategy(s, L), 0});
  }

  std::vector<StrategyResult> out;
  bool said_peak_is_cumulative = false;
  for (const Pending& p : pending) {
    if (!reset_peak_rss() && !said_peak_is_cumulative) {
      log << "note: /proc/self/clear_refs cannot be written here, so each row's peak memory is the process's "
             "peak so far, not the row's own\n";
      said_peak_is_cumulative = true;
    }
    StrategyResult r;
    r.checkpoint = checkpoint;
    r.step = step;
    if (p.greedy_n > 0) {
      const ValidationSet selection{spec.selection_tokens, spec.batch_size, spec.seq_len, spec.n_batches};
      log << p.strategy.name << ": greedy search from full down to " << p.greedy_n << " cache layers, choosing on "
          << selection.n_tokens() << " tokens of the training split; its val loss is then measured on the "
                                      "validation windows, as every row's\n";
      const GreedySearch g = greedy_search(p.strategy.name, L, p.greedy_n, [&](const SharingStrategy& s) {
        return strategy_val_loss(model, s, selection);
      });
      r.strategy = g.strategy;
      r.greedy_path = "chosen on the training split: " + greedy_path_string(g);
      r.val_loss = strategy_val_loss(model, r.strategy, val);
      log << "  path: " << r.greedy_path << "\n  chosen map: " << g.strategy.map_string() << " (list:"
          << g.strategy.map_string() << "), " << g.evaluations << " loss evaluations\n";
    } else {
      r.strategy = p.strategy;
      r.val_loss = strategy_val_loss(model, r.strategy, val);
    }
    r.perplexity = std::exp(r.val_loss);
    r.val_tokens = val.n_tokens();
    r.kv_bytes_per_token = kv_bytes_per_token(mc, r.strategy);
    r.full_kv_bytes_per_token = full_bytes;
    r.kv_fraction = static_cast<double>(r.kv_bytes_per_token) / static_cast<double>(full_bytes);
    if (spec.measure_speed) {
      const GenerationBench b = benchmark_generation(model, {r.strategy}, spec.bench).front();
      r.ttft_ms = b.median_ttft_ms();
      r.decode_tokens_per_s = b.median_decode_tokens_per_s();
    }
    if (spec.probe) {
      const ProbeScore ps = score_probe(model, r.strategy, *spec.probe_tokenizer, *spec.probe);
      r.probe_items = ps.items;
      r.probe_correct = ps.correct;
      log << "  " << r.strategy.name << ": probe exact match " << ps.correct << "/" << ps.items << "\n";
    }
    if (spec.tasks)
      for (const Task& t : *spec.tasks) {
        r.tasks.push_back(score_task(model, r.strategy, *spec.task_tokenizer, t));
        const TaskScore& ts = r.tasks.back();
        log << "  " << r.strategy.name << ": " << ts.name << " acc " << ts.acc
            << (ts.multiple_choice ? " acc_norm " + std::to_string(ts.acc_norm) : std::string()) << " ("
            << ts.items << " items)\n";
      }
    r.peak_rss_kib = peak_rss_kib();
    log << "  " << r.strategy.name << " [" << r.strategy.map_string() << "]: val loss " << r.val_loss << "\n";
    out.push_back(r);
  }
  return out;
}

}  // namespace kvroute
