// HDF5 checkpoints: one file holds the whole training state.
//
// Layout (format "kvroute-checkpoint-2"; every name below is an HDF5 path):
//   /                      attributes: format, kvroute_version, step, config (the resolved config as YAML)
//   /model/<tensor>        every parameter as its own float32 dataset, e.g. /model/layers/3/attn/wq,
//                          stored bit for bit; attribute crc32 = zlib CRC-32 of its little-endian bytes
//   /optimizer/m/<tensor>  AdamW first moments, same names, shapes and crc32 (absent in weights-only files)
//   /optimizer/v/<tensor>  AdamW second moments
//   /optimizer             attribute adam_step: updates applied so far (AdamW's bias-correction count)
//   /train_state           attributes: step (optimizer steps completed; a resumed run continues at step + 1),
//                          skipped_steps (non-finite steps skipped), last_lr, seed, rng
//   /data_loader           one int64 attribute per field of the data loader's position
//   /tokenizer             attributes: name, vocab_size, fingerprint
//
// Random state. kvroute's random numbers are counter-based (rng.h): every draw is a
// pure function of (seed, stream, counter). Initialisation uses (seed, stream 1,
// element index), training windows (seed, stream 3, step, micro-batch, row), KV
// routes (seed, stream 2, step, micro-batch). So seed and step ARE the complete RNG
// state of every stream; /train_state stores both (and spells this out in `rng`).
// The learning-rate schedule is a pure function of (train config, step) as well.
//
// Writing is atomic: "<path>.tmp" in the same directory is written, flushed,
// fsynced and renamed over <path>, then the directory is fsynced. A failed write
// (full disk, I/O error) removes the temporary and throws CheckpointError saying
// that <path>, if it existed, is untouched.
//
// Reading checks everything (format, tensor names, shapes, dtypes, CRCs) into host
// memory before returning, so a caller commits a checkpoint all at once or not
// at all. A missing, truncated, corrupted or foreign file throws CheckpointError
// naming the file and the problem. Format 1 files (weights only, no CRCs) still
// load as weights.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kvroute/config.h"
#include "kvroute/model.h"

namespace kvroute {

class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Which tokenizer the token ids mean. Checked when resuming or fine-tuning.
struct TokenizerIdentity {
  std::string name;          // "byte", or the tokenizer's name/path
  int vocab_size = 0;
  std::string fingerprint;   // content hash of the tokenizer model; empty when there is no model file
};

// Everything beyond the weights that a resumed run needs.
struct TrainingState {
  long step = 0;             // optimizer steps completed
  long adam_step = 0;        // AdamW updates applied (step minus skipped steps)
  long skipped_steps = 0;    // steps skipped for a non-finite loss (train.on_nonfinite: skip)
  double last_lr = 0;        // learning rate of step `step`
  long seed = 0;             // train.seed; with step it defines every random draw (see above)
  // The data loader's position, field by field (e.g. {"next_step", 21}).
  std::vector<std::pair<std::string, int64_t>> data_loader;
  // AdamW moments in parameter-buffer order (Model::tensors() offsets); empty = weights only.
  std::vector<float> adam_m, adam_v;
};

struct TensorInfo {
  std::string name;              // e.g. "layers/3/attn/wq"
  std::vector<int64_t> shape;
  int64_t numel() const;
};

struct CheckpointInfo {
  std::string path;
  std::string format;            // "kvroute-checkpoint-2" (or -1 for old weights-only files)
  std::string version;           // kvroute version that wrote it
  long step = 0;
  std::string config_yaml;
  Config config;                 // parsed from config_yaml
  TokenizerIdentity tokenizer;   // name empty when not recorded (format 1)
  bool has_optimizer = false;    // AdamW moments present (the file can be resumed from)
  TrainingState state;           // header fields only; adam_m / adam_v stay empty here
  std::vector<TensorInfo> tensors;  // the /model datasets, in name order (layers/2 before layers/10)
  int64_t num_params() const;
};

// Everything read from a checkpoint, in host memory, already checked.
struct CheckpointContents {
  CheckpointInfo info;
  std::vector<float> params;     // Model::num_params() floats, parameter-buffer order
  TrainingState state;           // with adam_m / adam_v when read with_optimizer
};

// Writes a checkpoint of the model, the training state (moments included when
// state.adam_m is non-empty) and the tokenizer identity. Atomic (see above).
void save_checkpoint(const std::string& path, const Model& model, const Config& cfg, const TrainingState& state,
                     const TokenizerIdentity& tokenizer);
// The same from host memory: `params` laid out as `tensors` says (parameter_layout(cfg.model)),
// for tools that have weights but no Model (kvroute import hf).
void save_checkpoint(const std::string& path, const std::vector<ParamTensor>& tensors, const std::vector<float>& params,
                     const Config& cfg, const TrainingState& state, const TokenizerIdentity& tokenizer);
// A weights-only checkpoint at `step`.
void save_checkpoint(const std::string& path, const Model& model, const Config& cfg, long step);

// The header, training-state attributes and tensor shapes, without reading tensor data.
CheckpointInfo read_checkpoint_info(const std::string& path);

// "" when `tokenizer` is the one the checkpoint was trained with (same vocabulary size and,
// where both record one, the same fingerprint) or the checkpoint records none; else a
// sentence naming both: token ids would change meaning.
std::string tokenizer_mismatch(const CheckpointInfo& info, const TokenizerIdentity& tokenizer);

// Reads the weights for `model`'s layout (and, with_optimizer, the AdamW moments,
// which must then be present), checking names, shapes and CRCs. The model is not
// modified. A checkpoint whose model config does not fit throws naming the keys.
CheckpointContents read_checkpoint(const std::string& path, const Model& model, bool with_optimizer);
// The same for a tensor layout without a Model (parameter_layout(model_config)).
CheckpointContents read_checkpoint(const std::string& path, const ModelConfig& model_config,
                                   const std::vector<ParamTensor>& tensors, bool with_optimizer);

// read_checkpoint, then the weights go into the model (all or nothing).
void load_weights(const std::string& path, Model& model);

// Keys of model config that give `a` and `b` different tensors, as
// "model.d_model: 64 vs 32" (empty when the shapes agree).
std::vector<std::string> model_shape_differences(const ModelConfig& a, const ModelConfig& b);

}  // namespace kvroute
