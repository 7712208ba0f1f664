// Moving the training state between the live objects (Model, AdamW) and checkpoints.
#pragma once

#include <string>
#include <vector>

#include "kvroute/checkpoint.h"
#include "kvroute/loader.h"
#include "kvroute/model.h"
#include "kvroute/optimizer.h"

namespace kvroute {

// Refuses a checkpoint whose tokenizer differs from the one the run uses (ids would change meaning).
void check_tokenizer(const CheckpointInfo& info, const TokenizerIdentity& tokenizer, std::vector<std::string>& notes);

// Reads and checks the whole checkpoint in host memory, then commits weights, AdamW
// moments and AdamW's step count at once. Returns the state (moments dropped);
// remarks for the log go to notes.
TrainingState restore_training_state(const std::string& path, Model& model, AdamW& opt,
                                     const TokenizerIdentity& tokenizer, long seed, std::vector<std::string>& notes,
                                     Config* saved_cfg = nullptr);

// Puts the loader where the checkpointed run left it (state.data_loader). The loader is the
// single-rank view of the data stream (rank 0 of 1, whose draw g is global draw g); under N ranks
// the trainer saves and restores the global position through it. When the saved
// position belongs to other data or loader settings: if the config changed them on purpose
// (saved_cfg vs cfg), the position is re-derived from the step with a note; otherwise the
// data changed on disk and the resume is refused.
void restore_loader_position(WindowLoader& loader, const TrainingState& state, const Config& saved_cfg,
                             const Config& cfg, const std::string& path, std::vector<std::string>& notes, int world_size = 1);

// model.init_from: the checkpoint's weights only (fresh optimizer), with the tokenizer checked.
void init_weights_from(const std::string& path, Model& model, const TokenizerIdentity& tokenizer,
                       std::vector<std::string>& notes);

}  // namespace kvroute
