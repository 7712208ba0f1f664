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
void prepare_new_run_dir(const fs::path& run_dir, bool force) {
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

TrainResult train(const Config& cfg, const TrainOptions& options) {
  const TrainConfig& tc = cfg.train;
  // From here on SIGINT/SIGTERM stop the run after its next step, with a checkpoint: one that
  // arrives while the data loads or the model is built is not lost either.
  StopSignals stop_signals;
  if (tc.backend == "cpu") {  // before anything is allocated or written
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
  configure_cpu_threads(tc.threads);  // one OpenMP pool (oneDNN included); OMP_NUM_THREADS and MPI ranks respected
  auto backend = make_backend(tc.backend, BackendOptions{tc.precision, tc.deterministic});
  // Data parallelism: under mpirun every rank runs this function; without a launcher, a world of one.
  std::unique_ptr<Communicator> comm = make_communicator(*backend);
  const int rank = comm->rank(), world = comm->world_size();
  // A frozen or lost rank would leave the others waiting in a collective forever.
  WatchdogContext* watchdog = nullptr;
  if (world > 1) comm = with_collective_watchdog(std::move(comm), tc.collective_timeout_s, &watchdog);
  const bool lead = rank == 0;  // rank 0 alone logs and writes files
  const Corpus corpus = load_corpus(cfg.data);
  check_model_vocab(corpus, cfg.model.vocab_size);
  const int B = tc.batch_size, T = tc.seq_len, L = cfg.model.n_layers;
  if (corpus.val.size() < static_cast<std::size_t>(T) + 1)
    throw std::runtime_error("validation split has only " + std::to_string(corpus.val.size()) +
                             " tokens; need at least seq_len + 1 = " + std::to_string(T + 1));
  // Training windows (loader.h): each rank draws grad_accum * batch_size windows per step, so before step s
  // its position is draws = (s - 1) * grad_accum * batch_size. Under N ranks, rank r's d-th draw is global
  // draw d * N + r; `global_view` (rank 0 of 1) is the single-rank stream, in which checkpoints record the
  // position (draws * N, with its fingerprint), so a run can resume with another number of ranks
  // (restore_loader_position, train_state.cpp). One rank: global_view and loader are the same stream.
  LoaderOptions rank_options = loader_options(cfg);
  rank_options.rank = rank;
  rank_options.world_size = world;
  WindowLoader loader(corpus.train, corpus.vocab_size, rank_options);
  WindowLoader global_view(corpus.train, corpus.vocab_size, loader_options(cfg));
  if (cfg.routing.mode == "fixed") sample_routes(cfg.routing, 1, L, 0, 0, 0);  // validates the strategy early

  const fs::path run_dir = tc.out_dir;
  if (lead && options.resume_from.empty()) prepare_new_run_dir(run_dir, options.force);
  if (lead) {
    fs::create_directories(run_dir);
    write_file_atomically(run_dir / "config.yaml", to_yaml(cfg));
  }
  LeadLog log(lead, /*progress_bar=*/world == 1, run_dir.string());

  Model model(cfg.model, backend.get());
  model.set_recompute(tc.recompute);
  AdamW opt(tc, model, comm.get());
  const TokenizerIdentity tokenizer{corpus.tokenizer, corpus.vocab_size, corpus.tokenizer_fingerprint};
  std::vector<std::string> notes = options.notes;
  notes.push_back("precision " + resolve_precision(tc.backend, tc.precision).reason);
  TrainingState state;
  state.seed = tc.seed;
  if (!options.resume_from.empty()) {
    Config saved_cfg;
    state = restore_training_state(options.resume_from, model, opt, tokenizer, tc.seed, notes, &saved_cfg);
    restore_loader_position(global_view, state, saved_cfg, cfg, options.resume_from, notes, world);
    // Each rank continues at the first global draw not yet taken, rounded up to a multiple of N.
    const uint64_t global_draws = global_view.state().draws;
    loader.seek((global_draws + world - 1) / world);
    const uint64_t skipped = loader.state().draws * world - global_draws;
    long saved_world = 1;
    for (const auto& [key, value] : state.data_loader)
      if (key == "world_size") saved_world = static_cast<long>(value);
    if (saved_world != world)
      notes.push_back("the checkpoint was written by " + std::to_string(saved_world) + " rank(s), this run has " +
                      std::to_string(world) + ": the global batch is now " + std::to_string(world) + " x " +
                      std::to_string(tc.grad_accum * B) + " sequences; the data continues at global window " +
                      std::to_string(loader.state().draws * world) +
                      (skipped ? " (the saved position " + std::to_string(global_draws) +
                                     " rounded up to a multiple of the world size: " + std::to_string(skipped) +
                                     " window(s) skipped)"
                               : std::string()));
    if (lead) {
      for (const std::string& f : remove_stale_temporaries(run_dir.string()))
        notes.push_back("removed " + f + ", left by an interrupted checkpoint write");
      std::error_code ec;
      if (fs::remove(run_dir / "model.h5.tmp", ec))
        notes.push_back("removed model.h5.tmp, left by an interrupted write of the final weights");
    }
  } else {
    model.init_weights(static_cast<uint64_t>(tc.seed));
    if (!cfg.model.init_from.empty()) init_weights_from(cfg.model.init_from, model, tokenizer, notes);
  }

  const double tokens_per_step = double(B) * T * tc.grad_accum * world;  // global batch
  const auto bucket_bytes = static_cast<std::size_t>(tc.allreduce_bucket_mb * (1 << 20));
  GradAllreduce grad_sum(*comm, model.grads(), model.num_params(), bucket_bytes);
  log.line("kvroute " KVROUTE_VERSION " | backend " + backend->name() + " | threads " +
           std::to_string(omp_get_max_threads()) + (world > 1 ? " per rank" : "") + " | run dir " + run_dir.string());
  if (world > 1)
    log.line("data parallel: " + std::to_string(world) + " ranks (" + comm->name() + "), global batch " +
             std::to_string(world) + " ranks x " + std::to_string(tc.grad_accum) + " micro-batches x " +
             std::to_string(B) + " x " + std::to_string(T) + " = " + fmt("%.0f", tokens_per_step) +
             " tokens per step; gradients averaged in " +
             std::to_string(grad_sum.buckets()) + " bucket(s) of up to " + human_bytes(double(bucket_bytes)) +
             (tc.overlap_allreduce ? ", each summed as soon as backward finishes it" : ", summed after backward") +
             (opt.sharded() ? "; ZeRO-1: each rank holds 1/" + std::to_string(world) + " of the AdamW state"
                            : "; ZeRO-0: every rank holds the whole AdamW state") +
             "; validation sharded over the ranks");
  log.line("model: " + std::to_string(L) + " layers, d_model " + std::to_string(cfg.model.d_model) + ", heads " +
           std::to_string(cfg.model.n_heads) + "/" + std::to_string(cfg.model.n_kv_heads) + " kv, vocab " +
           std::to_string(cfg.model.vocab_size) + ", " + fmt("%.2fM", model.num_params() / 1e6) + " parameters");
  log.line("routing: mode " + cfg.routing.mode +
           (cfg.routing.mode == "stochastic"
                ? ", p " + fmt("%g", cfg.routing.p) + ", scheme " + cfg.routing.scheme + ", per " + cfg.routing.granularity
                : cfg.routing.mode == "fixed" ? ", strategy " + cfg.routing.strategy : std::string()));
  log.line("data: " + corpus.source + ", tokenizer " + corpus.tokenizer + ": " + std::to_string(corpus.train.size()) +
           " train / " + std::to_string(corpus.val.size()) + " val tokens, unigram entropy " +
           fmt("%.3f", unigram_entropy(corpus.train, corpus.vocab_size)) + " nats (train split); " +
           fmt("%.0f", tokens_per_step) + " tokens per step, " + std::to_string(loader.windows_per_epoch()) +
           " windows per epoch (" + cfg.data.order + " order)");
  if (lead) {
    // Run one tiny forward so activation buffers exist, then report memory.
    const std::size_t pbytes = model.num_params() * sizeof(float);
    const Batch probe = loader.batch_at(0, B);
    model.forward(probe.inputs.data(), nullptr, B, T, identity_routes(B, L));
    log.line("memory: parameters " + human_bytes(pbytes) + ", gradients " + human_bytes(pbytes) + ", AdamW state " +
             human_bytes(2.0 * pbytes * (opt.shard_end() - opt.shard_begin()) / model.num_params()) +
             (opt.sharded() ? " (this rank's shard)" : "") + ", activations " + human_bytes(model.activation_bytes()) +
             " (B=" + std::to_string(B) + ", T=" + std::to_string(T) + ")");
  }
  if (!options.resume_from.empty())
    log.line("resumed from " + options.resume_from + " at step " + std::to_string(state.step) + " (AdamW step " +
             std::to_string(opt.steps_taken()) + ", " + std::to_string(state.skipped_steps) + " skipped)");
  else if (!cfg.model.init_from.empty())
    log.line("initialised weights from " + cfg.model.init_from + " (fresh AdamW state)");
  for (const std::string& n : notes) log.line(n);

  std::vector<int> full(L);
  for (int l = 0; l < L; ++l) full[l] = l;
  // Every evaluation also reports these strategies (train.eval_strategies); rank 0 keeps their curves.
  const std::vector<SharingStrategy> eval_strategies = parse_strategy_list(tc.eval_strategies, L);
  std::optional<StrategyCurves> curves;
  if (lead) {
    std::vector<std::string> names;
    for (const SharingStrategy& s : eval_strategies) names.push_back(s.name);
    curves.emplace(run_dir, names);
  }

  TrainResult result;
  result.run_dir = run_dir.string();
  result.first_step = state.step + 1;
  result.last_checkpoint = options.resume_from;
  long saved_step = options.resume_from.empty() ? -1 : state.step;
  auto last_good = [&]() -> std::string {
    if (result.last_checkpoint.empty()) return "no checkpoint was written yet";
    return "the last good checkpoint, " + result.last_checkpoint + ", is kept (resume: kvroute train --resume " +
           run_dir.string() + ")";
  };
  auto checkpoint_now = [&]() {
    // An update can overflow the weights even when the loss and gradient were finite.
    if (!std::isfinite(backend->sum_squares(model.params(), model.num_params())))
      throw std::runtime_error("the weights became non-finite at step " + std::to_string(state.step) +
                               "; not checkpointing them: " + last_good());
    TrainingState snapshot = state;
    snapshot.adam_step = opt.steps_taken();
    // The position in the global stream (see global_view), and the world size that wrote it.
    global_view.seek(loader.state().draws * world);
    snapshot.data_loader = global_view.state().fields();
    snapshot.data_loader.emplace_back("world_size", world);
    // Sharded (ZeRO-1), gathering the full moments is a collective every rank joins.
    if (lead || opt.sharded()) {
      snapshot.adam_m = opt.m_to_host();
      snapshot.adam_v = opt.v_to_host();
    }
    if (lead)
      result.last_checkpoint =
          save_run_checkpoint(run_dir.string(), model, cfg, snapshot, tokenizer, tc.checkpoint.keep_last);
    else
      result.last_checkpoint = (fs::path(checkpoints_dir(run_dir.string())) / checkpoint_file_name(state.step)).string();
    saved_step = state.step;
  };
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  auto t_interval = t0;
  double interval_tokens = 0;
  double interval_allreduce_s = 0;  // time in the gradient all-reduce since the last log line
  // Each rank's backward is scaled by 1 / (grad_accum * N), so the summed gradients are the mean.
  const float grad_scale = 1.f / (tc.grad_accum * world);
  // On the last micro-batch each bucket's sum starts as soon as backward has finished it.
  const Model::GradsReady start_grad_sums = [&](std::size_t begin) { grad_sum.ready_from(begin); };
  for (long step = state.step + 1; step <= tc.steps; ++step) {
    if (watchdog) watchdog->set("at step " + std::to_string(step) + "; " + last_good());
    model.zero_grads();
    double loss = 0;
    for (int micro = 0; micro < tc.grad_accum; ++micro) {
      const Batch b = loader.next_batch(B);
      // Routes are drawn per global micro-batch (rank, micro): ranks see different patterns, and
      // rank r's micro m draws what micro r * grad_accum + m of one rank accumulating would.
      const RouteTable routes =
          sample_routes(cfg.routing, B, L, tc.seed, step, static_cast<uint64_t>(rank) * tc.grad_accum + micro);
      const bool overlap = world > 1 && tc.overlap_allreduce && micro == tc.grad_accum - 1;
      loss += model.forward_backward(b.inputs.data(), b.targets.data(), B, T, routes, grad_scale,
                                     overlap ? start_grad_sums : Model::GradsReady{});
    }
    loss /= tc.grad_accum;
    if (world > 1) {
      // The share logged is the time the step waits for the sums after backward (on a GPU, from
      // the end of the backward kernels to the end of the last sum): what overlap did not hide.
      backend->synchronize();
      const auto ta = clock::now();
      grad_sum.finish();
      backend->synchronize();
      interval_allreduce_s += std::chrono::duration<double>(clock::now() - ta).count();
      loss = comm->sum(loss) / world;
    }
    const double lr = learning_rate(tc, step);
    const double norm = opt.grad_norm();
    // Every rank must take the same decision (the weights would diverge otherwise).
    if (!comm->any(!(std::isfinite(loss) && std::isfinite(norm)))) {
      opt.step(lr);
    } else {
      const std::string what = "non-finite " + std::string(std::isfinite(loss) ? "gradient norm" : "loss") +
                               " at step " + std::to_string(step);
      if (tc.on_nonfinite != "skip")
        throw std::runtime_error(what + ": stopping; " + last_good() +
                                 ". Set train.on_nonfinite=skip to skip such steps instead.");
      ++state.skipped_steps;
      log.line(what + ": step skipped, weights and AdamW state unchanged (train.on_nonfinite=skip; " +
               std::to_string(state.skipped_steps) + " skipped so far)");
    }
    state.step = step;
    state.last_lr = lr;
    result.losses.push_back(static_cast<float>(loss));
    interval_tokens += tokens_per_step;

    const double elapsed = std::chrono::duration<double>(clock::now() - t0).count();
    const double eta = elapsed / double(step - result.first_step + 1) * (tc.steps - step);
    if (step % tc.log_interval == 0 || step == tc.steps || step == 1 || step == result.first_step) {
      const double dt = std::chrono::duration<double>(clock::now() - t_interval).count();
      const double tok_s = interval_tokens / std::max(dt, 1e-9);
      const double allreduce_share = interval_allreduce_s / std::max(dt, 1e-9);
      char line[256];
      std::snprintf(line, sizeof line,
                    "step %6ld/%ld | loss %.4f | lr %.3e | grad norm %.3f | %8.0f tok/s | elapsed %s | eta %s",
                    step, static_cast<long>(tc.steps), loss, lr, norm, tok_s, format_duration(elapsed).c_str(),
                    format_duration(eta).c_str());
      log.line(line + (world > 1 ? " | all-reduce " + fmt("%.1f%%", 100 * allreduce_share) : std::string()));
      if (step == result.first_step)
        if (const std::string mem = device_memory_line(*backend, "after the first step"); !mem.empty()) log.line(mem);
      std::vector<std::pair<std::string, double>> fields = {{"step", double(step)}, {"loss", loss}, {"lr", lr},
                                                            {"grad_norm", norm}, {"tokens_per_s", tok_s},
                                                            {"elapsed_s", elapsed}};
      if (world > 1) fields.emplace_back("allreduce_share", allreduce_share);
      log.metrics(fields, {{"loss_hex", hex_float(loss)}});
      t_interval = clock::now();
      interval_tokens = 0;
      interval_allreduce_s = 0;
    } else {
      const int width = 30;
      const int filled = static_cast<int>(width * double(step) / tc.steps);
      log.progress("[" + std::string(filled, '#') + std::string(width - filled, ' ') + "] step " +
                   std::to_string(step) + "/" + std::to_string(tc.steps) + " loss " + fmt("%.4f", loss) + " eta " +
                   format_duration(eta));
    }
    if (tc.eval_interval > 0 && step % tc.eval_interval == 0 && step != tc.steps) {
      const double vl = sharded_validation_loss(model, *comm, corpus.val, B, T, tc.eval_batches, full);
      const SharingEval se = evaluate_sharing(model, *comm, corpus.val, B, T, tc.eval_batches, eval_strategies, vl);
      log.line("eval step " + std::to_string(step) + " | val loss " + fmt("%.4f", vl) + " | ppl " + fmt("%.2f", std::exp(vl)) + se.text);
      std::vector<std::pair<std::string, double>> fields = {{"step", double(step)}, {"val_loss", vl}};
      fields.insert(fields.end(), se.metrics.begin(), se.metrics.end());
      log.metrics(fields);
      if (curves) curves->add(step, se.losses);
    }
    if (tc.checkpoint.interval > 0 && step % tc.checkpoint.interval == 0 && step != tc.steps) checkpoint_now();
    // mpirun forwards SIGINT/SIGTERM to every rank, but not at the same instant: stop together.
    if (const int sig = stop_signals.received(); step != tc.steps && comm->any(sig != 0)) {
      if (saved_step != step) checkpoint_now();
      log.line((sig != 0 ? std::string(StopSignals::name(sig)) + " received" : std::string("another rank received SIGINT or SIGTERM")) +
               ": stopped after step " + std::to_string(step) + "/" +
               std::to_string(tc.steps) + ", checkpoint " + result.last_checkpoint +
               ". Continue with: kvroute train --resume " + run_dir.string());
      result.steps = step;
      result.skipped_steps = state.skipped_steps;
      result.interrupted = true;
      return result;
    }
  }
  result.steps = tc.steps;
  result.skipped_steps = state.skipped_steps;
  result.val_loss = sharded_validation_loss(model, *comm, corpus.val, B, T, tc.eval_batches, full);
  const SharingEval final_sharing =
      evaluate_sharing(model, *comm, corpus.val, B, T, tc.eval_batches, eval_strategies, result.val_loss);
  for (std::size_t i = 0; i < eval_strategies.size(); ++i)
    result.strategy_val_losses.emplace_back(eval_strategies[i].name, final_sharing.losses[i]);
  if (const std::string mem = device_memory_line(*backend, "at the end"); !mem.empty()) log.line(mem);
  log.line("final | val loss " + fmt("%.4f", result.val_loss) + " | ppl " + fmt("%.2f", std::exp(result.val_loss)) + final_sharing.text +
           " | " + format_duration(std::chrono::duration<double>(clock::now() - t0).count()));
  std::vector<std::pair<std::string, double>> final_fields = {{"step", double(tc.steps)}, {"val_loss", result.val_loss}};
  final_fields.insert(final_fields.end(), final_sharing.metrics.begin(), final_sharing.metrics.end());
  log.metrics(final_fields);
  if (curves && !curves->add(tc.steps, final_sharing.losses).empty())
    log.line("plotted " + (run_dir / StrategyCurves::kPlot).string() + " (validation loss per strategy against step)");
  if (saved_step != state.step) checkpoint_now();
  // model.h5: the final weights (no optimizer state), for eval and model.init_from.
  const fs::path final_path = run_dir / "model.h5";
  if (lead) save_checkpoint(final_path.string(), model, cfg, state, tokenizer);
  result.final_checkpoint = final_path.string();
  log.line("saved " + final_path.string());
  return result;
}

}  // namespace kvroute
