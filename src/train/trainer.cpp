#include "kvroute/trainer.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <unordered_map>

#include "kvroute/checkpoint.h"
#include "kvroute/comm.h"
#include "kvroute/cpu_threads.h"
#include "kvroute/data.h"
#include "kvroute/grad_allreduce.h"
#include "kvroute/memory_estimate.h"
#include "kvroute/model.h"
#include "kvroute/optimizer.h"
#include "kvroute/routing.h"
#include "kvroute/run_log.h"
#include "kvroute/run_checkpoints.h"
#include "kvroute/strategy.h"
#include "checkpoint/durable_file.h"
#include "checkpoint/output_paths.h"
#include "kvroute/stop_signals.h"
#include "train/strategy_curves.h"
#include "train/train_state.h"

namespace kvroute {

namespace fs = std::filesystem;

double validation_loss(Model& model, const std::vector<int32_t>& val_tokens, int B, int T, int n_batches,
                       const std::vector<int>& src) {
  const RouteTable routes = fixed_routes(B, src);
  double sum = 0;
  for (int i = 0; i < n_batches; ++i) {
    const Batch b = val_batch(val_tokens, B, T, i, n_batches);
    sum += model.forward(b.inputs.data(), b.targets.data(), B, T, routes);
  }
  return sum / n_batches;
}

namespace {

std::string fmt(const char* f, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, a);
  return buf;
}

// A device backend's own allocations (parameters, gradients, AdamW state, activations, op
// scratch), or "" on the CPU (its memory is the process RSS). Logged after the first step and
// at the end: equal allocation counts show that nothing was allocated in the steady state.
std::string device_memory_line(const Backend& backend, const std::string& when) {
  const BackendMemory m = backend.memory();
  if (m.device_total_bytes == 0) return "";
  return "device memory " + when + ": " + human_bytes(double(m.in_use_bytes)) + " in use, peak " +
         human_bytes(double(m.peak_bytes)) + ", " + std::to_string(m.allocations) + " allocations so far, device " +
         human_bytes(double(m.device_total_bytes));
}

// Exact text of a double ("0x1.8p+1"), so logged losses can be compared bit for bit.
std::string hex_float(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%a", v);
  return buf;
}

// The run log on rank 0; on the other ranks of a data-parallel job every call does nothing.
// Under mpirun there is no progress bar: mpirun gives the ranks a terminal even when its own
// output goes to a file, where the bar would pile up.
class LeadLog {
 public:
  LeadLog(bool lead, bool progress_bar, const std::string& run_dir) : progress_bar_(progress_bar) {
    if (lead) log_.emplace(run_dir);
  }
  void line(const std::string& text) {
    if (log_) log_->line(text);
  }
  void progress(const std::string& text) {
    if (log_ && progress_bar_) log_->progress(text);
  }
  void metrics(const std::vector<std::pair<std::string, double>>& fields,
               const std::vector<std::pair<std::string, std::string>>& strings = {}) {
    if (log_) log_->metrics(fields, strings);
  }

 private:
  std::optional<RunLog> log_;
  bool progress_bar_ = true;
};

// Validation sharded over the ranks: rank r evaluates batches r, r + N, ... and the sums
// are added over ranks, so every rank returns the mean over all n_batches (one rank: the
// same sum, in the same order, as validation_loss).
double sharded_validation_loss(Model& model, Communicator& comm, const std::vector<int32_t>& val_tokens, int B,
                               int T, int n_batches, const std::vector<int>& src) {
  const RouteTable routes = fixed_routes(B, src);
  double sum = 0;
  for (int i = comm.rank(); i < n_batches; i += comm.world_size()) {
    const Batch b = val_batch(val_tokens, B, T, i, n_batches);
    sum += model.forward(b.inputs.data(), b.targets.data(), B, T, routes);
  }
  return comm.sum(sum) / n_batches;
}

// The validation loss under each of train.eval_strategies, as `train.log`, `metrics.jsonl` and
// the strategy curves want it. `full_loss` is the full-cache loss, already measured.
struct SharingEval {
  std::string text;                                     // " | cla:2 4.1312 (+0.11%)" per strategy but full
  std::vector<std::pair<std::string, double>> metrics;  // "val_loss_cla:2" per strategy but full
  std::vector<double> losses;                           // one per strategy, in the list's order
};
SharingEval evaluate_sharing(Model& model, Communicator& comm, const std::vector<int32_t>& val_tokens, int B, int T,
                             int n_batches, const std::vector<SharingStrategy>& strategies, double full_loss) {
  SharingEval e;
  for (const SharingStrategy& s : strategies) {
    const bool is_full = s.n_cache_layers() == static_cast<int>(s.src.size());
    const double loss = is_full ? full_loss : sharded_validation_loss(model, comm, val_tokens, B, T, n_batches, s.src);
    e.losses.push_back(loss);
    if (is_full) continue;
    e.text += " | " + s.name + " " + fmt("%.4f", loss) + " (" + fmt("%+.2f%%", 100 * (loss / full_loss - 1)) + ")";
    e.metrics.emplace_back("val_loss_" + s.name, loss);
  }
  return e;
}

// The files a run writes into its directory.
const char* const kRunFiles[] = {"config.yaml", "train.log", "metrics.jsonl", "checkpoints", "model.h5",
                                 "val_loss_by_strategy.dat", "val_loss_by_strategy.gp", "val_loss_by_strategy.png"};

// A new run must not write into a directory that holds another run: its model.h5, config,
// a step checkpoint and `latest` would be overwritten, the logs appended to and the old
// run's later checkpoints left beside the new ones. With force, the old run's files go.
void prepare_new_run_dir(const fs::path& run_dir, bool force, const Config& cfg) {
  std::error_code ec;
  if (fs::exists(run_dir, ec) && !fs::is_directory(run_dir, ec))
    throw std::runtime_error("train.out_dir '" + run_dir.string() + "' exists and is not a directory");
  std::vector<std::string> found;
  for (const char* name : kRunFiles)
    if (fs::exists(run_dir / name, ec)) found.push_back(name);
  if (found.empty()) return;
  std::string list;
  for (const std::string& f : found) list += (list.empty() ? "" : ", ") + f;
  if (!force)
    throw std::runtime_error("train.out_dir '" + run_dir.string() + "' already holds a run (" + list +
                             "). To continue it: kvroute train --resume " + run_dir.string() +
                             "; to start a new run: choose another train.out_dir, or pass --force to delete that "
                             "run's files first");
  // What the new run reads must survive the old run's removal (e.g. model.init_from=RUN/model.h5).
  std::vector<InputPath> inputs = {{"model.init_from", cfg.model.init_from}, {"data.train_path", cfg.data.train_path},
                                   {"data.val_path", cfg.data.val_path}, {"data.shards", cfg.data.shards}};
  if (cfg.data.tokenizer != "byte") inputs.push_back({"data.tokenizer", cfg.data.tokenizer});
  for (const std::string& f : found)
    refuse_output_over_inputs("--force", "the earlier run's", (run_dir / f).string(), inputs,
                              /*inside_too=*/false);
  for (const std::string& f : found) {
    fs::remove_all(run_dir / f, ec);
    if (ec)
      throw std::runtime_error("--force: cannot remove '" + (run_dir / f).string() + "' of the earlier run: " +
                               ec.message());
  }
}

}  // namespace

double unigram_entropy(const std::vector<int32_t>& tokens) {
  std::unordered_map<int32_t, std::size_t> counts;
  for (int32_t t : tokens) ++counts[t];
  double h = 0;
  for (const auto& [tok, n] : counts) {
    const double p = double(n) / tokens.size();
    h -= p * std::log(p);
  }
  return h;
}

namespace {

// Memory is checked before anything is allocated or written (memory_estimate.h); the CPU
// backend's memory is this machine's.
void check_training_fits(const Config& cfg) {
  const TrainConfig& tc = cfg.train;
  if (tc.backend != "cpu") return;
  const double act = training_activation_bytes(cfg.model, tc.batch_size, tc.seq_len, tc.recompute);
  const double weights = training_memory_bytes(cfg) - act;
  check_fits_in_memory(
      training_memory_bytes(cfg),
      "training this model (" + human_bytes(weights) + " for " + std::to_string(param_count(cfg.model)) +
          " parameters with their gradients, AdamW state and checkpoint copies, " + human_bytes(act) +
          " of activations for train.batch_size " + std::to_string(tc.batch_size) + " x train.seq_len " +
          std::to_string(tc.seq_len) + ")",
      act > weights ? "lower train.batch_size or train.seq_len (or set train.recompute: layer)"
                    : "lower model.d_model, model.n_layers, model.d_ff or model.vocab_size");
}

// One training run, from setup to model.h5. Each method is one phase of it: the constructor
// sets up (backend, ranks, data, run directory, model), start() resumes or initialises the
// weights and writes the log's header, optimizer_step() trains one step, log_step(),
// evaluate() and checkpoint() report and save, stop_requested() honours SIGINT/SIGTERM, and
// finish() evaluates and writes model.h5. run() is the loop over them.
class TrainingRun {
 public:
  TrainingRun(const Config& cfg, const TrainOptions& options);
  TrainResult run();

 private:
  void start();
  void log_header();
  // Trains step `step`: its micro-batches, the gradient sum over the ranks and the AdamW update
  // (none for a non-finite step under train.on_nonfinite: skip). Returns the loss, the mean over
  // micro-batches and ranks, and sets lr and the gradient norm.
  double optimizer_step(long step, double& lr, double& norm);
  void log_step(long step, double loss, double lr, double norm);
  void evaluate(long step);
  void checkpoint();
  bool stop_requested(long step);
  TrainResult finish();
  std::string last_good() const;

  using clock = std::chrono::steady_clock;
  const Config& cfg_;
  const TrainConfig& tc_;
  const TrainOptions& options_;
  // From here on SIGINT/SIGTERM stop the run after its next step, with a checkpoint: one that
  // arrives while the data loads or the model is built is not lost either.
  StopSignals stop_signals_;
  std::unique_ptr<Backend> backend_;
  // Data parallelism: under mpirun every rank runs this; without a launcher, a world of one.
  std::unique_ptr<Communicator> comm_;
  WatchdogContext* watchdog_ = nullptr;  // a frozen or lost rank would leave the others waiting
  int rank_ = 0, world_ = 1;
  bool lead_ = true;  // rank 0 alone logs and writes files
  Corpus corpus_;
  int B_ = 0, T_ = 0, L_ = 0;
  // Training windows (loader.h): each rank draws grad_accum * batch_size windows per step, so before step s
  // its position is draws = (s - 1) * grad_accum * batch_size. Under N ranks, rank r's d-th draw is global
  // draw d * N + r; `global_view_` (rank 0 of 1) is the single-rank stream, in which checkpoints record the
  // position (draws * N, with its fingerprint), so a run can resume with another number of ranks
  // (restore_loader_position, train_state.cpp). One rank: global_view_ and loader_ are the same stream.
  std::optional<WindowLoader> loader_, global_view_;
  fs::path run_dir_;
  std::optional<LeadLog> log_;
  std::optional<Model> model_;
  std::optional<AdamW> opt_;
  TokenizerIdentity tokenizer_;
  std::vector<std::string> notes_;
  TrainingState state_;
  double tokens_per_step_ = 0;  // global batch
  std::size_t bucket_bytes_ = 0;  // train.allreduce_bucket_mb in bytes
  std::optional<GradAllreduce> grad_sum_;
  std::vector<int> full_;                          // the full-cache map 0..L-1
  std::vector<SharingStrategy> eval_strategies_;   // train.eval_strategies
  std::optional<StrategyCurves> curves_;           // rank 0
  TrainResult result_;
  long saved_step_ = -1;  // the step of the newest checkpoint, -1 before the first
  clock::time_point t0_, t_interval_;
  double interval_tokens_ = 0;
  double interval_allreduce_s_ = 0;  // time in the gradient all-reduce since the last log line
};

TrainingRun::TrainingRun(const Config& cfg, const TrainOptions& options)
    : cfg_(cfg), tc_(cfg.train), options_(options), stop_signals_() {
  check_training_fits(cfg_);
  configure_cpu_threads(tc_.threads);  // one OpenMP pool (oneDNN included); OMP_NUM_THREADS and MPI ranks respected
  backend_ = make_backend(tc_.backend, BackendOptions{tc_.precision, tc_.deterministic});
  comm_ = make_communicator(*backend_);
  rank_ = comm_->rank();
  world_ = comm_->world_size();
  if (world_ > 1) comm_ = with_collective_watchdog(std::move(comm_), tc_.collective_timeout_s, &watchdog_);
  lead_ = rank_ == 0;
  corpus_ = load_corpus(cfg_.data);
  check_model_vocab(corpus_, cfg_.model.vocab_size, !cfg_.model.init_from.empty());
  B_ = tc_.batch_size, T_ = tc_.seq_len, L_ = cfg_.model.n_layers;
  if (corpus_.val.size() < static_cast<std::size_t>(T_) + 1)
    throw std::runtime_error("validation split has only " + std::to_string(corpus_.val.size()) +
                             " tokens; need at least seq_len + 1 = " + std::to_string(T_ + 1));
  LoaderOptions rank_options = loader_options(cfg_);
  rank_options.rank = rank_;
  rank_options.world_size = world_;
  loader_.emplace(corpus_.train, corpus_.vocab_size, rank_options);
  global_view_.emplace(corpus_.train, corpus_.vocab_size, loader_options(cfg_));
  if (cfg_.routing.mode == "fixed") sample_routes(cfg_.routing, 1, L_, 0, 0, 0);  // validates the strategy early

  run_dir_ = tc_.out_dir;
  if (lead_ && options_.resume_from.empty()) prepare_new_run_dir(run_dir_, options_.force, cfg_);
  if (lead_) {
    fs::create_directories(run_dir_);
    write_file_atomically(run_dir_ / "config.yaml", to_yaml(cfg_));
  }
  log_.emplace(lead_, /*progress_bar=*/world_ == 1, run_dir_.string());

  model_.emplace(cfg_.model, backend_.get());
  model_->set_recompute(tc_.recompute);
  opt_.emplace(tc_, *model_, comm_.get());
  tokenizer_ = TokenizerIdentity{corpus_.tokenizer, corpus_.vocab_size, corpus_.tokenizer_fingerprint};
  notes_ = options_.notes;
  notes_.push_back("precision " + resolve_precision(tc_.backend, tc_.precision).reason);
  state_.seed = tc_.seed;
}

// Resume (weights, AdamW state, data position) or initialise; then the log's header.
void TrainingRun::start() {
  if (!options_.resume_from.empty()) {
    Config saved_cfg;
    state_ = restore_training_state(options_.resume_from, *model_, *opt_, tokenizer_, tc_.seed, notes_, &saved_cfg);
    restore_loader_position(*global_view_, state_, saved_cfg, cfg_, options_.resume_from, notes_, world_);
    // Each rank continues at the first global draw not yet taken, rounded up to a multiple of N.
    const uint64_t global_draws = global_view_->state().draws;
    loader_->seek((global_draws + world_ - 1) / world_);
    const uint64_t skipped = loader_->state().draws * world_ - global_draws;
    long saved_world = 1;
    for (const auto& [key, value] : state_.data_loader)
      if (key == "world_size") saved_world = static_cast<long>(value);
    if (saved_world != world_)
      notes_.push_back("the checkpoint was written by " + std::to_string(saved_world) + " rank(s), this run has " +
                       std::to_string(world_) + ": the global batch is now " + std::to_string(world_) + " x " +
                       std::to_string(tc_.grad_accum * B_) + " sequences; the data continues at global window " +
                       std::to_string(loader_->state().draws * world_) +
                       (skipped ? " (the saved position " + std::to_string(global_draws) +
                                      " rounded up to a multiple of the world size: " + std::to_string(skipped) +
                                      " window(s) skipped)"
                                : std::string()));
    if (lead_) {
      for (const std::string& f : remove_stale_temporaries(run_dir_.string()))
        notes_.push_back("removed " + f + ", left by an interrupted checkpoint write");
      std::error_code ec;
      if (fs::remove(run_dir_ / "model.h5.tmp", ec))
        notes_.push_back("removed model.h5.tmp, left by an interrupted write of the final weights");
    }
  } else {
    // Fine-tuning replaces every weight: drawing a random init first would only cost time and memory.
    if (cfg_.model.init_from.empty())
      model_->init_weights(static_cast<uint64_t>(tc_.seed));
    else
      init_weights_from(cfg_.model.init_from, *model_, tokenizer_, notes_);
  }

  tokens_per_step_ = double(B_) * T_ * tc_.grad_accum * world_;
  bucket_bytes_ = static_cast<std::size_t>(tc_.allreduce_bucket_mb * (1 << 20));
  grad_sum_.emplace(*comm_, model_->grads(), model_->num_params(), bucket_bytes_);
  log_header();

  full_.resize(L_);
  for (int l = 0; l < L_; ++l) full_[l] = l;
  // Every evaluation also reports these strategies (train.eval_strategies); rank 0 keeps their curves.
  eval_strategies_ = parse_strategy_list(tc_.eval_strategies, L_);
  if (lead_) {
    std::vector<std::string> names;
    for (const SharingStrategy& s : eval_strategies_) names.push_back(s.name);
    curves_.emplace(run_dir_, names);
  }
  result_.run_dir = run_dir_.string();
  result_.first_step = state_.step + 1;
  result_.last_checkpoint = options_.resume_from;
  saved_step_ = options_.resume_from.empty() ? -1 : state_.step;
}

void TrainingRun::log_header() {
  LeadLog& log = *log_;
  const Model& model = *model_;
  log.line("kvroute " KVROUTE_VERSION " | backend " + backend_->name() + " | threads " +
           std::to_string(omp_get_max_threads()) + (world_ > 1 ? " per rank" : "") + " | run dir " + run_dir_.string());
  if (world_ > 1)
    log.line("data parallel: " + std::to_string(world_) + " ranks (" + comm_->name() + "), global batch " +
             std::to_string(world_) + " ranks x " + std::to_string(tc_.grad_accum) + " micro-batches x " +
             std::to_string(B_) + " x " + std::to_string(T_) + " = " + fmt("%.0f", tokens_per_step_) +
             " tokens per step; gradients averaged in " +
             std::to_string(grad_sum_->buckets()) + " bucket(s) of up to " + human_bytes(double(bucket_bytes_)) +
             (tc_.overlap_allreduce ? ", each summed as soon as backward finishes it" : ", summed after backward") +
             (opt_->sharded() ? "; ZeRO-1: each rank holds 1/" + std::to_string(world_) + " of the AdamW state"
                              : "; ZeRO-0: every rank holds the whole AdamW state") +
             "; validation sharded over the ranks");
  log.line("model: " + std::to_string(L_) + " layers, d_model " + std::to_string(cfg_.model.d_model) + ", heads " +
           std::to_string(cfg_.model.n_heads) + "/" + std::to_string(cfg_.model.n_kv_heads) + " kv, vocab " +
           std::to_string(cfg_.model.vocab_size) + model_features_text(cfg_.model) + ", " +
           fmt("%.2fM", model.num_params() / 1e6) + " parameters");
  log.line("routing: mode " + cfg_.routing.mode +
           (cfg_.routing.mode == "stochastic"
                ? ", p " + fmt("%g", cfg_.routing.p) + ", scheme " + cfg_.routing.scheme + ", per " + cfg_.routing.granularity
                : cfg_.routing.mode == "fixed" ? ", strategy " + cfg_.routing.strategy : std::string()));
  log.line("data: " + corpus_.source + ", tokenizer " + corpus_.tokenizer + ": " + std::to_string(corpus_.train.size()) +
           " train / " + std::to_string(corpus_.val.size()) + " val tokens, unigram entropy " +
           fmt("%.3f", unigram_entropy(corpus_.train, corpus_.vocab_size)) + " nats (train split); " +
           fmt("%.0f", tokens_per_step_) + " tokens per step, " + std::to_string(loader_->windows_per_epoch()) +
           " windows per epoch (" + cfg_.data.order + " order)");
  if (lead_) {
    // Run one tiny forward so activation buffers exist, then report memory.
    const std::size_t pbytes = model.num_params() * sizeof(float);
    const Batch probe = loader_->batch_at(0, B_);
    model_->forward(probe.inputs.data(), nullptr, B_, T_, identity_routes(B_, L_));
    log.line("memory: parameters " + human_bytes(pbytes) + ", gradients " + human_bytes(pbytes) + ", AdamW state " +
             human_bytes(2.0 * pbytes * (opt_->shard_end() - opt_->shard_begin()) / model.num_params()) +
             (opt_->sharded() ? " (this rank's shard)" : "") + ", activations " + human_bytes(model.activation_bytes()) +
             " (B=" + std::to_string(B_) + ", T=" + std::to_string(T_) + ")");
  }
  if (!options_.resume_from.empty())
    log.line("resumed from " + options_.resume_from + " at step " + std::to_string(state_.step) + " (AdamW step " +
             std::to_string(opt_->steps_taken()) + ", " + std::to_string(state_.skipped_steps) + " skipped)");
  else if (!cfg_.model.init_from.empty())
    log.line("initialised weights from " + cfg_.model.init_from + " (fresh AdamW state)");
  for (const std::string& n : notes_) log.line(n);
}

std::string TrainingRun::last_good() const {
  if (result_.last_checkpoint.empty()) return "no checkpoint was written yet";
  return "the last good checkpoint, " + result_.last_checkpoint + ", is kept (resume: kvroute train --resume " +
         run_dir_.string() + ")";
}

double TrainingRun::optimizer_step(long step, double& lr, double& norm) {
  Model& model = *model_;
  if (watchdog_) watchdog_->set("at step " + std::to_string(step) + "; " + last_good());
  // Each rank's backward is scaled by 1 / (grad_accum * N), so the summed gradients are the mean.
  const float grad_scale = 1.f / (tc_.grad_accum * world_);
  // On the last micro-batch each bucket's sum starts as soon as backward has finished it.
  const Model::GradsReady start_grad_sums = [&](std::size_t begin) { grad_sum_->ready_from(begin); };
  model.zero_grads();
  double loss = 0;
  for (int micro = 0; micro < tc_.grad_accum; ++micro) {
    const Batch b = loader_->next_batch(B_);
    // Routes are drawn per global micro-batch (rank, micro): ranks see different patterns, and
    // rank r's micro m draws what micro r * grad_accum + m of one rank accumulating would.
    const RouteTable routes =
        sample_routes(cfg_.routing, B_, L_, tc_.seed, step, static_cast<uint64_t>(rank_) * tc_.grad_accum + micro);
    const bool overlap = world_ > 1 && tc_.overlap_allreduce && micro == tc_.grad_accum - 1;
    loss += model.forward_backward(b.inputs.data(), b.targets.data(), B_, T_, routes, grad_scale,
                                   overlap ? start_grad_sums : Model::GradsReady{});
  }
  loss /= tc_.grad_accum;
  if (world_ > 1) {
    // The share logged is the time the step waits for the sums after backward (on a GPU, from
    // the end of the backward kernels to the end of the last sum): what overlap did not hide.
    backend_->synchronize();
    const auto ta = clock::now();
    grad_sum_->finish();
    backend_->synchronize();
    interval_allreduce_s_ += std::chrono::duration<double>(clock::now() - ta).count();
    loss = comm_->sum(loss) / world_;
  }
  lr = learning_rate(tc_, step);
  norm = opt_->grad_norm();
  // Every rank must take the same decision (the weights would diverge otherwise).
  if (!comm_->any(!(std::isfinite(loss) && std::isfinite(norm)))) {
    opt_->step(lr);
  } else {
    const std::string what = "non-finite " + std::string(std::isfinite(loss) ? "gradient norm" : "loss") +
                             " at step " + std::to_string(step);
    if (tc_.on_nonfinite != "skip")
      throw std::runtime_error(what + ": stopping; " + last_good() +
                               ". Set train.on_nonfinite=skip to skip such steps instead.");
    ++state_.skipped_steps;
    log_->line(what + ": step skipped, weights and AdamW state unchanged (train.on_nonfinite=skip; " +
               std::to_string(state_.skipped_steps) + " skipped so far)");
  }
  state_.step = step;
  state_.last_lr = lr;
  result_.losses.push_back(static_cast<float>(loss));
  interval_tokens_ += tokens_per_step_;
  return loss;
}

// A line (and a metrics.jsonl object) every train.log_interval steps, else the progress bar.
void TrainingRun::log_step(long step, double loss, double lr, double norm) {
  const double elapsed = std::chrono::duration<double>(clock::now() - t0_).count();
  const double eta = elapsed / double(step - result_.first_step + 1) * (tc_.steps - step);
  if (step % tc_.log_interval == 0 || step == tc_.steps || step == 1 || step == result_.first_step) {
    const double dt = std::chrono::duration<double>(clock::now() - t_interval_).count();
    const double tok_s = interval_tokens_ / std::max(dt, 1e-9);
    const double allreduce_share = interval_allreduce_s_ / std::max(dt, 1e-9);
    char line[256];
    std::snprintf(line, sizeof line,
                  "step %6ld/%ld | loss %.4f | lr %.3e | grad norm %.3f | %8.0f tok/s | elapsed %s | eta %s",
                  step, static_cast<long>(tc_.steps), loss, lr, norm, tok_s, format_duration(elapsed).c_str(),
                  format_duration(eta).c_str());
    log_->line(line + (world_ > 1 ? " | all-reduce " + fmt("%.1f%%", 100 * allreduce_share) : std::string()));
    if (step == result_.first_step)
      if (const std::string mem = device_memory_line(*backend_, "after the first step"); !mem.empty()) log_->line(mem);
    std::vector<std::pair<std::string, double>> fields = {{"step", double(step)}, {"loss", loss}, {"lr", lr},
                                                          {"grad_norm", norm}, {"tokens_per_s", tok_s},
                                                          {"elapsed_s", elapsed}};
    if (world_ > 1) fields.emplace_back("allreduce_share", allreduce_share);
    log_->metrics(fields, {{"loss_hex", hex_float(loss)}});
    t_interval_ = clock::now();
    interval_tokens_ = 0;
    interval_allreduce_s_ = 0;
  } else {
    const int width = 30;
    const int filled = static_cast<int>(width * double(step) / tc_.steps);
    log_->progress("[" + std::string(filled, '#') + std::string(width - filled, ' ') + "] step " +
                   std::to_string(step) + "/" + std::to_string(tc_.steps) + " loss " + fmt("%.4f", loss) + " eta " +
                   format_duration(eta));
  }
}

// Validation loss with the full cache and under each of train.eval_strategies.
void TrainingRun::evaluate(long step) {
  const double vl = sharded_validation_loss(*model_, *comm_, corpus_.val, B_, T_, tc_.eval_batches, full_);
  const SharingEval se = evaluate_sharing(*model_, *comm_, corpus_.val, B_, T_, tc_.eval_batches, eval_strategies_, vl);
  log_->line("eval step " + std::to_string(step) + " | val loss " + fmt("%.4f", vl) + " | ppl " + fmt("%.2f", std::exp(vl)) + se.text);
  std::vector<std::pair<std::string, double>> fields = {{"step", double(step)}, {"val_loss", vl}};
  fields.insert(fields.end(), se.metrics.begin(), se.metrics.end());
  log_->metrics(fields);
  if (curves_) curves_->add(step, se.losses);
}

void TrainingRun::checkpoint() {
  Model& model = *model_;
  // An update can overflow the weights even when the loss and gradient were finite.
  if (!std::isfinite(backend_->sum_squares(model.params(), model.num_params())))
    throw std::runtime_error("the weights became non-finite at step " + std::to_string(state_.step) +
                             "; not checkpointing them: " + last_good());
  TrainingState snapshot = state_;
  snapshot.adam_step = opt_->steps_taken();
  // The position in the global stream (see global_view_), and the world size that wrote it.
  global_view_->seek(loader_->state().draws * world_);
  snapshot.data_loader = global_view_->state().fields();
  snapshot.data_loader.emplace_back("world_size", world_);
  // Sharded (ZeRO-1), gathering the full moments is a collective every rank joins.
  if (lead_ || opt_->sharded()) {
    snapshot.adam_m = opt_->m_to_host();
    snapshot.adam_v = opt_->v_to_host();
  }
  if (lead_)
    result_.last_checkpoint =
        save_run_checkpoint(run_dir_.string(), model, cfg_, snapshot, tokenizer_, tc_.checkpoint.keep_last);
  else
    result_.last_checkpoint = (fs::path(checkpoints_dir(run_dir_.string())) / checkpoint_file_name(state_.step)).string();
  saved_step_ = state_.step;
}

// SIGINT/SIGTERM: checkpoint this step and stop. mpirun forwards them to every rank, but not at
// the same instant, so the ranks agree first.
bool TrainingRun::stop_requested(long step) {
  const int sig = stop_signals_.received();
  if (step == tc_.steps || !comm_->any(sig != 0)) return false;
  if (saved_step_ != step) checkpoint();
  log_->line((sig != 0 ? std::string(StopSignals::name(sig)) + " received" : std::string("another rank received SIGINT or SIGTERM")) +
             ": stopped after step " + std::to_string(step) + "/" + std::to_string(tc_.steps) + ", checkpoint " +
             result_.last_checkpoint + ". Continue with: kvroute train --resume " + run_dir_.string());
  result_.steps = step;
  result_.skipped_steps = state_.skipped_steps;
  result_.interrupted = true;
  return true;
}

// The final evaluation, the last checkpoint and model.h5 (the weights only, for eval and
// model.init_from).
TrainResult TrainingRun::finish() {
  result_.steps = tc_.steps;
  result_.skipped_steps = state_.skipped_steps;
  result_.val_loss = sharded_validation_loss(*model_, *comm_, corpus_.val, B_, T_, tc_.eval_batches, full_);
  const SharingEval final_sharing =
      evaluate_sharing(*model_, *comm_, corpus_.val, B_, T_, tc_.eval_batches, eval_strategies_, result_.val_loss);
  for (std::size_t i = 0; i < eval_strategies_.size(); ++i)
    result_.strategy_val_losses.emplace_back(eval_strategies_[i].name, final_sharing.losses[i]);
  if (const std::string mem = device_memory_line(*backend_, "at the end"); !mem.empty()) log_->line(mem);
  log_->line("final | val loss " + fmt("%.4f", result_.val_loss) + " | ppl " + fmt("%.2f", std::exp(result_.val_loss)) +
             final_sharing.text + " | " + format_duration(std::chrono::duration<double>(clock::now() - t0_).count()));
  std::vector<std::pair<std::string, double>> final_fields = {{"step", double(tc_.steps)}, {"val_loss", result_.val_loss}};
  final_fields.insert(final_fields.end(), final_sharing.metrics.begin(), final_sharing.metrics.end());
  log_->metrics(final_fields);
  if (curves_ && !curves_->add(tc_.steps, final_sharing.losses).empty())
    log_->line("plotted " + (run_dir_ / StrategyCurves::kPlot).string() + " (validation loss per strategy against step)");
  if (saved_step_ != state_.step) checkpoint();
  const fs::path final_path = run_dir_ / "model.h5";
  if (lead_) save_checkpoint(final_path.string(), *model_, cfg_, state_, tokenizer_);
  result_.final_checkpoint = final_path.string();
  log_->line("saved " + final_path.string());
  // A stop request after the last step (stop_requested() ignores it there) waited for these writes.
  if (const int sig = stop_signals_.received())
    log_->line(std::string(StopSignals::name(sig)) + " received after the last step: the run had finished, so its last "
               "checkpoint and model.h5 were written first");
  return result_;
}

TrainResult TrainingRun::run() {
  start();
  t0_ = t_interval_ = clock::now();
  for (long step = state_.step + 1; step <= tc_.steps; ++step) {
    double lr = 0, norm = 0;
    const double loss = optimizer_step(step, lr, norm);
    log_step(step, loss, lr, norm);
    if (tc_.eval_interval > 0 && step % tc_.eval_interval == 0 && step != tc_.steps) evaluate(step);
    if (tc_.checkpoint.interval > 0 && step % tc_.checkpoint.interval == 0 && step != tc_.steps) checkpoint();
    if (stop_requested(step)) return result_;
  }
  return finish();
}

}  // namespace

TrainResult train(const Config& cfg, const TrainOptions& options) { return TrainingRun(cfg, options).run(); }

}  // namespace kvroute
