// The outputs of `kvroute import hf`, checked before anything is read or written.
#pragma once

#include <string>
#include <vector>

#include "kvroute/hf_model.h"

namespace kvroute {

struct ImportOutputs {
  std::string tokenizer_dir;  // --tokenizer-out, or "<out without .h5>-tokenizer"
  std::vector<std::string> notes;  // what was left by an interrupted earlier import and removed
};

// Refuses outputs that are, contain or lie inside the model folder (or each other), a missing
// parent of --out, an --out that is a directory, and existing outputs without --force.
// with_tokenizer: the folder has tokenizer files, so the tokenizer folder will be written.
ImportOutputs check_import_outputs(const HfImportOptions& options, bool with_tokenizer);

}  // namespace kvroute
