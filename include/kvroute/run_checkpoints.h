// Checkpoints inside a run directory (train.out_dir):
//   <run_dir>/checkpoints/step_00000020.h5   one per saved step; zero-padded, so names sort by step
//   <run_dir>/checkpoints/latest             one line naming the newest complete checkpoint
// `latest` is rewritten (temporary file, fsync, rename, directory fsync) only after
// the checkpoint it names is durable, so at every moment it names a complete file;
// rotation never removes the file `latest` names.
#pragma once

#include <string>
#include <vector>

#include "kvroute/checkpoint.h"

namespace kvroute {

std::string checkpoint_file_name(long step);  // "step_00000020.h5"
std::string checkpoints_dir(const std::string& run_dir);

// Saves <run_dir>/checkpoints/step_N.h5 (N = state.step), points `latest` at it,
// then keeps the newest keep_last step files. Returns the checkpoint's path. On a
// failed write throws CheckpointError that also names the checkpoint `latest`
// still points to.
std::string save_run_checkpoint(const std::string& run_dir, const Model& model, const Config& cfg,
                                const TrainingState& state, const TokenizerIdentity& tokenizer, int keep_last);

// The file `latest` names in <run_dir>/checkpoints. Without a usable `latest` (absent,
// unreadable, or naming a missing file) the newest step_*.h5 is taken and `note`
// says so. Throws CheckpointError naming the directory when there is no checkpoint.
std::string find_latest_checkpoint(const std::string& run_dir, std::string* note = nullptr);

// The step_*.h5 files in <run_dir>/checkpoints, oldest first (full paths).
std::vector<std::string> list_run_checkpoints(const std::string& run_dir);

// Keeps `latest` and the keep_last - 1 newest step files before it; files of later
// steps than `latest` (left from an abandoned continuation) are kept too, since the
// resumed run will overwrite them. Returns the removed paths.
std::vector<std::string> rotate_checkpoints(const std::string& run_dir, int keep_last);

// Removes *.tmp files left in <run_dir>/checkpoints by an interrupted save; returns their names.
std::vector<std::string> remove_stale_temporaries(const std::string& run_dir);

}  // namespace kvroute
