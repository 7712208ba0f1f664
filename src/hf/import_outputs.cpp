#include "hf/import_outputs.h"

#include <filesystem>
#include <stdexcept>

#include "checkpoint/output_paths.h"

namespace kvroute {

namespace fs = std::filesystem;

ImportOutputs check_import_outputs(const HfImportOptions& options, bool with_tokenizer) {
  ImportOutputs o;
  o.tokenizer_dir = options.tokenizer_out;
  if (o.tokenizer_dir.empty()) {
    const fs::path p(options.out);
    o.tokenizer_dir = (p.parent_path() / (p.stem().string() + "-tokenizer")).string();
  }
  refuse_output_over_inputs("import", "--out", options.out, {{"the model folder", options.dir}});
  refuse_output_over_inputs("import", "--tokenizer-out", o.tokenizer_dir,
                            {{"the model folder", options.dir}, {"the checkpoint (--out)", options.out}});
  require_output_parent("import", "--out", options.out);
  std::error_code ec;
  if (fs::is_directory(options.out, ec))
    throw std::runtime_error("import: --out '" + options.out +
                             "' is a directory; name the checkpoint file to write (e.g. " +
                             (fs::path(options.out) / "model.h5").string() + ")");
  if (fs::exists(options.out, ec) && !options.force)
    throw std::runtime_error("import: '" + options.out + "' exists (--force replaces it)");
  if (with_tokenizer && fs::exists(o.tokenizer_dir, ec) && !options.force)
    throw std::runtime_error("import: tokenizer folder '" + o.tokenizer_dir + "' exists (--force replaces it)");
  // A checkpoint write killed midway leaves <out>.tmp (save_checkpoint renames it into place).
  const std::string tmp = options.out + ".tmp";
  if (fs::is_regular_file(tmp, ec) && fs::remove(tmp, ec))
    o.notes.push_back("removed '" + tmp + "', left by an interrupted earlier import");
  return o;
}

}  // namespace kvroute
