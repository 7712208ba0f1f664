#include "train/train_state.h"

#include <filesystem>

#include "kvroute/hf_model.h"
#include "kvroute/tokenizer.h"

namespace kvroute {

void check_tokenizer(const CheckpointInfo& info, const TokenizerIdentity& tokenizer, std::vector<std::string>& notes) {
  const TokenizerIdentity& saved = info.tokenizer;
  if (saved.name.empty()) {
    notes.push_back("checkpoint '" + info.path + "' does not record its tokenizer; assuming it is " + tokenizer.name);
    return;
  }
  if (const std::string why = tokenizer_mismatch(info, tokenizer); !why.empty()) throw CheckpointError(why);
  if (saved.name != tokenizer.name)
    notes.push_back("tokenizer '" + saved.name + "' of the checkpoint is now named '" + tokenizer.name +
                    "' (same vocabulary size and fingerprint)");
}

TrainingState restore_training_state(const std::string& path, Model& model, AdamW& opt,
                                     const TokenizerIdentity& tokenizer, long seed, std::vector<std::string>& notes,
                                     Config* saved_cfg) {
  CheckpointContents c = read_checkpoint(path, model, /*with_optimizer=*/true);
  check_tokenizer(c.info, tokenizer, notes);
  if (saved_cfg) *saved_cfg = c.info.config;
  if (c.state.seed != seed)
    notes.push_back("train.seed changed from " + std::to_string(c.state.seed) + " to " + std::to_string(seed) +
                    ": data windows and routes from here on differ from the original run");
  model.params_from_host(c.params);
  opt.moments_from_host(c.state.adam_m, c.state.adam_v);
  opt.set_steps_taken(c.state.adam_step);
  TrainingState state = std::move(c.state);
  state.adam_m.clear();
  state.adam_v.clear();
  state.seed = seed;
  return state;
}

void restore_loader_position(WindowLoader& loader, const TrainingState& state, const Config& saved_cfg,
                             const Config& cfg, const std::string& path, std::vector<std::string>& notes, int world_size) {
  const uint64_t from_step = static_cast<uint64_t>(state.step) * static_cast<uint64_t>(cfg.train.grad_accum) *
                             cfg.train.batch_size * static_cast<uint64_t>(world_size);
  LoaderState saved;
  try {
    saved = LoaderState::from_fields(state.data_loader);
  } catch (const std::exception&) {
    loader.seek(from_step);
    notes.push_back("checkpoint '" + path + "' records no data loader state; the data position is derived from step " +
                    std::to_string(state.step));
    return;
  }
  if (saved.fingerprint == loader.state().fingerprint) {
    loader.restore(saved);
    return;
  }
  const bool data_settings_changed = to_yaml(Config{.data = saved_cfg.data}) != to_yaml(Config{.data = cfg.data}) ||
                                     saved_cfg.train.seq_len != cfg.train.seq_len || saved_cfg.train.seed != cfg.train.seed;
  if (!data_settings_changed)
    throw CheckpointError("checkpoint '" + path + "': the training data changed since it was written (same config, " +
                          "but the data loader no longer matches its saved position), so the run cannot continue " +
                          "on the same data stream. Restore the data, or start a new run from its weights with " +
                          "model.init_from=" + path);
  loader.seek(from_step);
  notes.push_back("the data settings changed since the checkpoint, so the data position is re-derived from step " +
                  std::to_string(state.step) + " (the data stream differs from the original run)");
}

void init_weights_from(const std::string& path, Model& model, const TokenizerIdentity& tokenizer,
                       std::vector<std::string>& notes) {
  if (is_hf_model_dir(path)) {
    // A Hugging Face folder: its config.json already set the model keys (adopt_hf_model_config).
    const HfModelConfig hf = read_hf_config(path);
    if (auto diff = model_shape_differences(hf.model, model.config()); !diff.empty()) {
      std::string msg = "model.init_from '" + path + "' does not fit the model being built (its config.json vs this config):";
      for (const std::string& d : diff) msg += "\n  " + d;
      throw CheckpointError(msg);
    }
    std::error_code ec;
    if (!std::filesystem::exists(std::filesystem::path(path) / "tokenizer.json", ec) &&
        !std::filesystem::exists(std::filesystem::path(path) / "tokenizer.model", ec)) {
      notes.push_back("model.init_from '" + path + "' has no tokenizer files, so the data's tokenizer (" +
                      tokenizer.name + ") is not checked against the model's");
    } else {
      // Loading it is the check: a folder whose tokenizer kvroute cannot read is refused here.
      const auto tok = load_tokenizer(path);
      CheckpointInfo info;
      info.path = path;
      info.tokenizer = TokenizerIdentity{path, tok->vocab_size(), fingerprint_hex(tok->fingerprint())};
      check_tokenizer(info, tokenizer, notes);
    }
    model.params_from_host(read_hf_weights(path, hf, &notes));
    return;
  }
  const CheckpointContents c = read_checkpoint(path, model, /*with_optimizer=*/false);
  check_tokenizer(c.info, tokenizer, notes);
  model.params_from_host(c.params);
}

}  // namespace kvroute
