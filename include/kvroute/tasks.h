// Downstream tasks under a sharing strategy: "what does cla:2 cost me on HellaSwag". A task is a
// JSON Lines file, one item a line (docs in README, "Downstream tasks"):
//
//   multiple choice (HellaSwag, ARC, PIQA style): {"context": "...", "choices": ["...", ...], "gold": 2}
//   completion (LAMBADA style):                   {"context": "...", "target": "..."}
//
// Scored as lm-evaluation-harness scores them, through the strategy's cache:
//   loglikelihood(context, continuation): trailing spaces of the context move to the
//     continuation; whole = encode(context + continuation); the continuation's tokens are
//     whole[len(encode(context)):]; the sum of their log-probabilities given what precedes.
//   multiple choice: acc = gold has the highest loglikelihood; acc_norm = gold has the highest
//     loglikelihood per byte (UTF-8) of the choice (lm-eval's acc_norm divides by its length).
//   completion: exact = greedy decoding reproduces every target token (lm-eval's is_greedy);
//     target_ll = the target's loglikelihood.
#pragma once

#include <string>
#include <vector>

#include "kvroute/model.h"
#include "kvroute/strategy.h"
#include "kvroute/tokenizer.h"

namespace kvroute {

struct TaskItem {
  std::string context;
  std::vector<std::string> choices;  // multiple choice; empty for completion
  int gold = -1;
  std::string target;                // completion
  bool multiple_choice() const { return !choices.empty(); }
};

struct Task {
  std::string name;  // the file's stem ("hellaswag" for hellaswag.jsonl)
  std::string path;
  std::vector<TaskItem> items;
};

// Reads a task file. Throws std::runtime_error naming the file and line: not JSON, neither
// kind, an empty choice list, gold outside it, a non-string field, an empty target.
Task read_task_file(const std::string& path);

struct TaskScore {
  std::string name;
  int items = 0;
  double acc = 0;        // multiple choice: accuracy; completion: exact-match accuracy
  double acc_norm = 0;   // multiple choice only
  double mean_ll = 0;    // mean loglikelihood of the gold choice / the target (nats)
  bool multiple_choice = false;
};

// Per item and choice (or target): the loglikelihood and whether greedy decoding reproduces it.
struct LoglikelihoodResult {
  double ll = 0;
  bool greedy = false;
};

// lm-eval's loglikelihood requests, batched through one engine under `strategy`. Throws
// std::invalid_argument when a request does not fit the model's context or has no
// continuation tokens.
std::vector<LoglikelihoodResult> loglikelihoods(Model& model, const SharingStrategy& strategy, const Tokenizer& tok,
                                                const std::vector<std::pair<std::string, std::string>>& requests,
                                                int batch_size = 8);

TaskScore score_task(Model& model, const SharingStrategy& strategy, const Tokenizer& tok, const Task& task,
                     int batch_size = 8);

}  // namespace kvroute
