// `kvroute train --resume`: which checkpoint, and which config, a resumed run uses.
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <string_view>

#include "kvroute/checkpoint.h"
#include "kvroute/run_checkpoints.h"
#include "kvroute/trainer.h"

namespace kvroute {

namespace fs = std::filesystem;

namespace {

enum class OverrideKind { Refused, Bookkeeping, Trajectory };

// Keys that decide when things happen (logging, evaluation, checkpoints), not what is computed.
bool is_bookkeeping(std::string_view key) {
  for (std::string_view k : {"train.log_interval", "train.eval_interval", "train.eval_batches", "train.checkpoint.interval",
                             "train.checkpoint.keep_last", "train.on_nonfinite", "data.verify", "train.zero",
                             "train.collective_timeout_s"})
    if (key == k) return true;
  return false;
}

OverrideKind classify(std::string_view key) {
  if (key.starts_with("model.") || key == "data.tokenizer" || key == "train.out_dir") return OverrideKind::Refused;
  if (is_bookkeeping(key) || key == "train.steps") return OverrideKind::Bookkeeping;
  return OverrideKind::Trajectory;
}

std::string key_of(const std::string& assignment) {
  std::string key = assignment.substr(0, assignment.find('='));
  const auto b = key.find_first_not_of(" \t"), e = key.find_last_not_of(" \t");
  return b == std::string::npos ? "" : key.substr(b, e - b + 1);
}

// model.h5 exists, reads as a checkpoint, and holds the weights of `step`.
bool final_model_matches(const fs::path& model_h5, long step) {
  std::error_code ec;
  if (!fs::exists(model_h5, ec)) return false;
  try {
    return read_checkpoint_info(model_h5.string()).step == step;
  } catch (const CheckpointError&) {
    return false;
  }
}

// A checkpoint reached through a symlink to another folder belongs to another run: resuming
// it would overwrite this run's checkpoints, model.h5 and config.yaml with that run's model.
void refuse_checkpoint_outside(const std::string& checkpoint, const fs::path& dir, const std::string& how) {
  std::error_code ec, dir_ec;
  const fs::path real = fs::canonical(checkpoint, ec);
  const fs::path real_dir = fs::canonical(dir.empty() ? fs::path(".") : dir, dir_ec);
  if (ec || dir_ec || real.parent_path() == real_dir) return;
  throw CheckpointError("--resume: " + how + "'" + checkpoint + "', a link to '" + real.string() + "' outside '" +
                        dir.string() + "': a checkpoint of another run is not resumed into this one (resume that "
                        "run itself, or start a new run from its weights with model.init_from=" + real.string() + ")");
}

// The keys that make a run the run it is: its model, and the data and tokenizer it reads.
std::vector<std::string> identity_differences(const Config& checkpoint_cfg, const Config& run_cfg) {
  const YAML::Node a = YAML::Load(to_yaml(checkpoint_cfg)), b = YAML::Load(to_yaml(run_cfg));
  std::vector<std::string> keys;
  for (const auto& kv : a["model"]) keys.push_back("model." + kv.first.as<std::string>());
  for (const char* k : {"data.tokenizer", "data.shards", "data.train_path", "data.val_path"}) keys.push_back(k);
  std::vector<std::string> out;
  for (const std::string& key : keys) {
    const std::string section = key.substr(0, key.find('.')), name = key.substr(key.find('.') + 1);
    const std::string x = YAML::Dump(a[section][name]), y = YAML::Dump(b[section][name]);
    if (x != y) out.push_back(key + ": " + x + " in the checkpoint, " + y + " in config.yaml");
  }
  return out;
}

// `train --resume RUN` must continue RUN: a checkpoint copied or linked in from another run
// (another model, other data) is refused, naming both.
void check_checkpoint_belongs_to_run(const ResumePlan& plan, const std::string& run_dir, std::vector<std::string>& notes) {
  const fs::path run_yaml = fs::path(run_dir) / "config.yaml";
  std::error_code ec;
  if (!fs::is_regular_file(run_yaml, ec)) {
    notes.push_back("'" + run_yaml.string() + "' is missing: cannot check that '" + plan.checkpoint +
                    "' is a checkpoint of this run");
    return;
  }
  Config run_cfg;
  try {
    apply_config_file(run_cfg, run_yaml.string());
  } catch (const std::exception& e) {
    notes.push_back("'" + run_yaml.string() + "' cannot be read (" + e.what() + "): cannot check that '" +
                    plan.checkpoint + "' is a checkpoint of this run");
    return;
  }
  const std::vector<std::string> diffs = identity_differences(plan.config, run_cfg);
  if (diffs.empty()) return;
  std::string list;
  for (const std::string& d : diffs) list += "\n  " + d;
  throw CheckpointError("--resume: checkpoint '" + plan.checkpoint + "' is not of the run in '" + run_dir +
                        "': its config differs from '" + run_yaml.string() + "' in" + list +
                        "\nA checkpoint of another run (copied or linked into its checkpoints/)? Resume the run it "
                        "belongs to, or start a new run from its weights with model.init_from=" + plan.checkpoint +
                        ". (Should config.yaml be the stale one, after a resume with --set data... that stopped "
                        "before its first checkpoint, pass that --set again.)");
}

}  // namespace

ResumePlan plan_resume(const std::string& target, const std::vector<std::string>& overrides) {
  ResumePlan plan;
  std::string run_dir;
  if (fs::is_directory(target)) {
    run_dir = target;
    std::string note;
    plan.checkpoint = find_latest_checkpoint(run_dir, &note);
    if (!note.empty()) plan.notes.push_back(note);
    refuse_checkpoint_outside(plan.checkpoint, checkpoints_dir(run_dir), "`latest` names ");
  } else if (fs::exists(target)) {
    plan.checkpoint = target;
    const fs::path parent = fs::path(target).parent_path();
    run_dir = (parent.filename() == "checkpoints" ? parent.parent_path() : parent).string();
    if (run_dir.empty()) run_dir = ".";
    refuse_checkpoint_outside(target, parent, "");
  } else {
    throw CheckpointError("--resume: '" + target + "' is neither a run directory nor a checkpoint file");
  }

  CheckpointInfo info;
  try {
    info = read_checkpoint_info(plan.checkpoint);
  } catch (const CheckpointError& e) {
    // Point at the other checkpoints of the run, which may still be good.
    std::string others;
    for (const std::string& p : list_run_checkpoints(run_dir))
      if (p != plan.checkpoint) others += "\n  " + p;
    if (others.empty()) throw;
    throw CheckpointError(std::string(e.what()) + "\nOther checkpoints of this run (resume from one with --resume FILE):" +
                          others);
  }
  if (!info.has_optimizer)
    throw CheckpointError("--resume: checkpoint '" + plan.checkpoint +
                          "' holds weights only (no AdamW state), so it cannot be resumed; use it as "
                          "model.init_from to start a new run from its weights");
  plan.config = info.config;
  for (const std::string& o : overrides) {
    const std::string key = key_of(o);
    const OverrideKind kind = classify(key);
    if (kind == OverrideKind::Refused)
      throw ConfigError("--set '" + o + "': " + key + " cannot change when resuming: " +
                        (key.starts_with("model.") ? "the model's shape and settings come from the checkpoint (to "
                                                     "train a different model from its weights, start a new run with "
                                                     "model.init_from=" + plan.checkpoint + ")"
                         : key == "train.out_dir" ? "the run directory is the one being resumed"
                                                  : "token ids must keep their meaning"));
    const Config before = plan.config;
    apply_override(plan.config, o);
    if (kind == OverrideKind::Trajectory && to_yaml(before) != to_yaml(plan.config))
      plan.notes.push_back("--set " + o + " changes what the run computes: from here on it will not match an "
                           "uninterrupted run");
  }
  plan.config.train.out_dir = run_dir;
  validate(plan.config);
  check_checkpoint_belongs_to_run(plan, run_dir, plan.notes);
  const TrainConfig& was = info.config.train;
  const TrainConfig& now = plan.config.train;
  // The run reached train.steps but its final model.h5 was lost (killed or a full disk during
  // that write): resuming writes it from the last checkpoint, with no step trained.
  if (info.step == now.steps && !final_model_matches(fs::path(run_dir) / "model.h5", info.step)) {
    plan.notes.push_back("the run reached train.steps (" + std::to_string(now.steps) + ") but " +
                         (fs::path(run_dir) / "model.h5").string() +
                         " is missing or not that step's weights: writing it from " + plan.checkpoint);
    return plan;
  }
  if (info.step >= now.steps)
    throw ConfigError("--resume: checkpoint '" + plan.checkpoint + "' is at step " + std::to_string(info.step) +
                      " and train.steps is " + std::to_string(now.steps) +
                      ": nothing left to train (raise it, e.g. --set train.steps=" + std::to_string(info.step * 2) + ")");
  if (now.steps != was.steps)
    plan.notes.push_back("train.steps changed from " + std::to_string(was.steps) + " to " + std::to_string(now.steps) +
                         ": the cosine learning-rate decay is recomputed for the new length from step " +
                         std::to_string(info.step + 1) + " on");
  return plan;
}

}  // namespace kvroute
