// The training loop: micro-batches with sampled KV routes, gradient
// accumulation, AdamW, logging (text + metrics.jsonl), periodic evaluation and
// checkpoints into the run directory. In src/train/trainer.cpp a TrainingRun holds one
// run, one method per phase: setup, start (resume or initialise), one optimizer step,
// log, evaluate, checkpoint, stop on a signal, finish.
//
// Fault tolerance. Checkpoints (checkpoint.h, run_checkpoints.h) hold the whole
// training state, so `train --resume RUN_DIR` continues to the same per-step losses,
// bit for bit, as a run that never stopped (same backend and thread count). SIGINT
// or SIGTERM finishes the current step, writes a checkpoint and returns normally
// (TrainResult::interrupted); they are received by one thread (stop_signals.h), never
// by a handler on a compute thread. A new run refuses an out_dir that holds a run unless
// TrainOptions::force; under mpirun a hung collective ends the job after
// train.collective_timeout_s. A non-finite loss or gradient norm stops the run with
// an error naming the step and the last good checkpoint, or, with
// train.on_nonfinite: skip, leaves the weights and AdamW state untouched for that step.
//
// Data parallelism. Under `mpirun -np N kvroute train ...` every rank runs train():
// rank r reads its own disjoint stream of windows (loader.h), runs grad_accum
// micro-batches scaled by 1 / (grad_accum * N), and the gradients are summed over the
// ranks in a few large buckets (grad_allreduce.h), so every rank holds the mean
// gradient of the global batch of N * grad_accum * batch_size sequences and applies the
// same AdamW update (train.zero: 1 shards the AdamW state, optimizer.h). The reported
// loss is the mean over ranks; non-finite and stop-signal decisions are agreed by all
// ranks (Communicator::any). Routes are drawn per global micro-batch index
// rank * grad_accum + micro, so ranks see different patterns and a resumed run the same
// ones. Validation is sharded: rank r evaluates batches r, r + N, ... and the sums are
// added. Rank 0 alone writes config.yaml, train.log, metrics.jsonl, checkpoints and
// model.h5; checkpoints hold the full state whatever N, plus the data position in the
// global stream (global draws = N * per-rank draws) and N itself. A resume with N'
// ranks continues at the same global position, rounded up to a multiple of N' (fewer
// than N' windows skipped); the global batch becomes N' * grad_accum * batch_size.
// Without mpirun the same binary is one rank and behaves exactly as before.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kvroute/config.h"

namespace kvroute {

struct TrainResult {
  long steps = 0;
  long first_step = 1;           // 1, or the resumed checkpoint's step + 1
  std::vector<float> losses;     // training loss of every step run by this call (first_step, ...)
  long skipped_steps = 0;        // non-finite steps skipped (train.on_nonfinite: skip), over the whole run
  bool interrupted = false;      // stopped early by SIGINT/SIGTERM after checkpointing
  std::string last_checkpoint;   // the newest checkpoint in checkpoints/
  double val_loss = 0;           // at the end, full cache
  std::vector<std::pair<std::string, double>> strategy_val_losses;  // at the end, per train.eval_strategies
  std::string run_dir;
  std::string final_checkpoint;
};

struct TrainOptions {
  std::string resume_from;         // checkpoint file to continue from; empty = a new run
  std::vector<std::string> notes;  // lines for the run log (e.g. plan_resume's)
  // A new run (no resume_from) refuses a train.out_dir that already holds a run (config.yaml,
  // train.log, metrics.jsonl, checkpoints/, model.h5); with force those files of the old
  // run are removed first, so the two runs never mix.
  bool force = false;
};

TrainResult train(const Config& cfg, const TrainOptions& options = {});

// What `train --resume` will do: the checkpoint's config with the overrides applied,
// and the checkpoint file. `target` is a run directory (its latest checkpoint) or a
// checkpoint file. Overrides of model.*, data.tokenizer and train.out_dir are refused
// (the model and the run are fixed by the checkpoint); bookkeeping keys (train.steps,
// log/eval/checkpoint intervals, keep_last, on_nonfinite, data.verify, train.zero) are fine; any other key is
// allowed with a note that the run will no longer match an uninterrupted one.
struct ResumePlan {
  Config config;
  std::string checkpoint;
  std::vector<std::string> notes;
};
ResumePlan plan_resume(const std::string& target, const std::vector<std::string>& overrides);

// Entropy (nats) of the unigram distribution of tokens: the loss of a model that ignores context.
double unigram_entropy(const std::vector<int32_t>& tokens);

// Validation loss of a model under a fixed source map (src.size() == n_layers).
class Model;
struct Corpus;
double validation_loss(Model& model, const std::vector<int32_t>& val_tokens, int B, int T, int n_batches,
                       const std::vector<int>& src);

}  // namespace kvroute
