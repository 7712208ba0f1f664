// The evaluation harness: compares depth-wise KV sharing strategies on trained
// checkpoints. For every checkpoint x strategy it measures, through the
// inference engine's real cache (inference.h):
//   validation loss and perplexity on a fixed token budget (teacher forcing),
//   KV cache bytes per token and the fraction of the full cache,
//   prefill latency (time to first token) and decode tokens/s,
//   peak resident memory while that row was measured.
// greedy:N is resolved here by a search over maps (it needs the model and data).
#pragma once

#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "kvroute/inference.h"
#include "kvroute/model.h"
#include "kvroute/probe.h"
#include "kvroute/strategy.h"
#include "kvroute/tasks.h"

namespace kvroute {

// Fixed validation windows: n_batches batches of batch_size x seq_len tokens (val_batch).
struct ValidationSet {
  const std::vector<int32_t>* tokens = nullptr;
  int batch_size = 0;
  int seq_len = 0;
  int n_batches = 0;
  long n_tokens() const { return static_cast<long>(batch_size) * seq_len * n_batches; }
};
// The batches needed to cover at least `token_budget` tokens with batch_size x seq_len windows.
int batches_for_budget(long token_budget, int batch_size, int seq_len);

// Mean validation loss under a strategy: every window is prefilled through a KV cache
// holding the strategy's source layers only.
double strategy_val_loss(Model& model, const SharingStrategy& strategy, const ValidationSet& val);

// ---- greedy:N ----
struct GreedyStep {
  int dropped_layer = -1;      // -1 for the starting point (full)
  SharingStrategy strategy;    // the map after this step
  double val_loss = 0;
};
struct GreedySearch {
  SharingStrategy strategy;        // the chosen map, named "greedy:N"
  std::vector<GreedyStep> path;    // full, then one step per dropped layer
  int evaluations = 0;             // loss evaluations made
};
// N of "greedy:N", checked against the depth (1..n_layers); throws std::invalid_argument.
int parse_greedy_count(const std::string& spec, int n_layers);
// Starting from full, repeatedly drops the cache layer whose removal raises `loss` least
// (layer 0 is never dropped; a dropped layer's readers move to the nearest cache layer
// below), until n_cache cache layers remain. Ties go to the lower layer.
GreedySearch greedy_search(const std::string& name, int n_layers, int n_cache,
                           const std::function<double(const SharingStrategy&)>& loss);
// "full (2.345) -> drop 3 (2.351) -> drop 1 (2.380)"
std::string greedy_path_string(const GreedySearch& g);

// ---- the harness ----
struct EvalSpec {
  int batch_size = 8;
  int seq_len = 128;
  int n_batches = 8;
  bool measure_speed = true;
  GenerationBenchSpec bench;
  // Retrieval probe (probe.h): when set, every row also gets its greedy exact-match score.
  const std::vector<ProbeItem>* probe = nullptr;
  const Tokenizer* probe_tokenizer = nullptr;
  // Downstream tasks (tasks.h): when set, every row also gets each task's scores.
  const std::vector<Task>* tasks = nullptr;
  const Tokenizer* task_tokenizer = nullptr;
  // greedy:N chooses its map on windows of these tokens (the training split), never on the
  // validation windows it then reports, so its row has no selection bias. Required for greedy:N.
  const std::vector<int32_t>* selection_tokens = nullptr;
};

struct StrategyResult {
  std::string checkpoint;
  long step = 0;
  SharingStrategy strategy;
  std::string greedy_path;         // for greedy:N, the drops it took
  double val_loss = 0;
  double perplexity = 0;
  long val_tokens = 0;
  std::size_t kv_bytes_per_token = 0;
  std::size_t full_kv_bytes_per_token = 0;
  double kv_fraction = 0;          // kv_bytes_per_token / full_kv_bytes_per_token
  double ttft_ms = 0;              // median; 0 when speed was not measured
  double decode_tokens_per_s = 0;  // median
  long peak_rss_kib = 0;           // VmHWM while measuring this row (see peak_rss_is_per_row)
  int probe_items = 0;             // 0 when no probe was given
  int probe_correct = 0;
  std::vector<TaskScore> tasks;    // one per task of EvalSpec::tasks
};

// Peak resident memory (VmHWM of /proc/self/status, KiB; 0 if unavailable).
long peak_rss_kib();
// Resets the peak to the current resident size (writes 5 to /proc/self/clear_refs);
// false when the kernel does not allow it, in which case the peak is process-wide.
bool reset_peak_rss();

// Evaluates every strategy spec (greedy:N included) on one checkpoint's model. Progress
// and greedy paths go to `log`.
std::vector<StrategyResult> evaluate_strategies(Model& model, const std::string& checkpoint, long step,
                                                const std::vector<std::string>& specs,
                                                const std::vector<int32_t>& val_tokens, const EvalSpec& spec,
                                                std::ostream& log);

// ---- reports (eval_report.cpp) ----
struct EvalReportInfo {
  EvalSpec spec;
  bool peak_rss_is_per_row = true;
  int threads = 0;
};
// One markdown table per checkpoint; "loss vs" is relative to the checkpoint's full row
// (or its first row if there is none).
std::string results_markdown(const std::vector<StrategyResult>& results, const EvalReportInfo& info);
std::string results_csv(const std::vector<StrategyResult>& results);
std::string results_json(const std::vector<StrategyResult>& results, const EvalReportInfo& info);
// Validation loss against KV fraction: every strategy a point, one line per checkpoint
// through the lowest loss at each KV fraction. PNG through gnuplot
// (format "png"), or an SVG written directly (format "svg", or "png" when gnuplot
// fails). Returns the file written.
std::string write_loss_plot(const std::vector<StrategyResult>& results, const std::string& dir,
                            const std::string& format);
// results.md, results.csv, results.json and the plot, into dir (created); returns the paths.
std::vector<std::string> write_eval_outputs(const std::vector<StrategyResult>& results, const EvalReportInfo& info,
                                            const std::string& dir, const std::string& plot_format);

}  // namespace kvroute
