// HDF5 checkpoints. One file per checkpoint:
//   /model/<tensor name>    every parameter as its own dataset, e.g. /model/layers/3/attn/wq
//   attributes on /: config (resolved YAML), step, kvroute_version, format
// Files are written to "<path>.tmp", flushed, fsynced and renamed, so an
// interrupted write never leaves a half-written file under the final name.
#pragma once

#include <string>
#include <vector>

#include "kvroute/config.h"
#include "kvroute/model.h"

namespace kvroute {

struct CheckpointInfo {
  std::string path;
  long step = 0;
  std::string config_yaml;
  std::string version;
  Config config;       // parsed from config_yaml
};

void save_checkpoint(const std::string& path, const Model& model, const Config& cfg, long step);

// Reads the header (config, step) without loading weights. Throws std::runtime_error
// naming the file for a missing, truncated or foreign file.
CheckpointInfo read_checkpoint_info(const std::string& path);

// Loads every parameter into `model`; shapes must match exactly. Nothing is
// written into the model unless every tensor was read successfully.
void load_weights(const std::string& path, Model& model);

}  // namespace kvroute
