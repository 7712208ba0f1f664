// Outputs that commands write, and replace under --force: checked against the command's
// inputs before anything is deleted or written, and replaced so that a crash at any moment
// leaves either the old or the new output complete.
//
// A replacement writes <out>.tmp, renames the old output aside to <out>.kvroute-old, renames
// <out>.tmp into place and only then removes the old one. A later run settles what an
// interrupted one left: <out>.kvroute-old without <out> is renamed back (the old output is the
// one known to be complete), a <out>.kvroute-old beside <out> and any <out>.tmp are removed;
// each is said in a note.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace kvroute {

struct InputPath {
  std::string role;  // e.g. "the checkpoint", "the model folder"
  std::string path;
};

// Throws std::runtime_error "<what>: <option> 'out' is / contains / lies inside <role> 'in' ...;
// nothing was deleted or written" when output is one of the inputs, contains one, or (when
// inside_too) lies inside one. Paths are compared absolute with symlinks resolved (the parts
// that do not exist yet lexically), existing files also by identity (hard links). The
// temporary and set-aside names of output are checked as well.
void refuse_output_over_inputs(const std::string& what, const std::string& option, const std::string& output,
                               const std::vector<InputPath>& inputs, bool inside_too = true);

// Throws std::runtime_error "<what>: the parent directory '...' of <option> '...' does not exist"
// (or is not a directory). An empty parent is the current directory.
void require_output_parent(const std::string& what, const std::string& option, const std::string& output);

// Settles what an interrupted replacement of out left (see above); returns what it did.
std::vector<std::string> settle_interrupted_replacement(const std::string& out);

class OutputReplacement {
 public:
  // Settles an interrupted earlier replacement, refuses an existing output without force
  // ("<what>: '<out>' exists (--force replaces it)"), and makes a fresh, empty tmp() directory
  // (directory) or leaves tmp() absent for the caller to write as a file.
  OutputReplacement(const std::string& what, const std::string& out, bool force, bool directory);
  ~OutputReplacement();  // removes tmp() unless committed: a failed command leaves no <out>.tmp
  OutputReplacement(const OutputReplacement&) = delete;
  OutputReplacement& operator=(const OutputReplacement&) = delete;

  const std::filesystem::path& tmp() const { return tmp_; }
  // tmp() -> out, the old output set aside first and removed last; the directory synced.
  void commit();
  // What settling an earlier interrupted replacement did, for the command's report.
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  std::string what_;
  std::filesystem::path out_, tmp_, old_;
  bool committed_ = false;
  std::vector<std::string> notes_;
};

}  // namespace kvroute
