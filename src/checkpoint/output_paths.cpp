#include "checkpoint/output_paths.h"

#include <stdexcept>

#include "checkpoint/durable_file.h"

namespace kvroute {

namespace fs = std::filesystem;

namespace {

// Absolute and lexically normal, without a trailing separator ("." -> the current directory).
fs::path normalized(const std::string& p) {
  fs::path a = fs::absolute(p).lexically_normal();
  if (a.filename().empty() && a.has_parent_path() && a != a.root_path()) a = a.parent_path();
  return a;
}

// Symlinks resolved where the path exists; the rest lexically.
fs::path resolved(const fs::path& p) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(p, ec);
  return ec ? p : normalized(r.string());
}

// a lies strictly inside b (b is a proper prefix of a, component by component).
bool inside(const fs::path& a, const fs::path& b) {
  auto ai = a.begin(), bi = b.begin();
  for (; bi != b.end(); ++ai, ++bi)
    if (ai == a.end() || *ai != *bi) return false;
  return ai != a.end();
}

bool present(const fs::path& p) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(p, ec));
}

fs::path tmp_of(const fs::path& out) { return out.string() + ".tmp"; }
fs::path old_of(const fs::path& out) { return out.string() + ".kvroute-old"; }

}  // namespace

void refuse_output_over_inputs(const std::string& what, const std::string& option, const std::string& output,
                               const std::vector<InputPath>& inputs, bool inside_too) {
  const fs::path out = normalized(output);
  const fs::path names[] = {out, tmp_of(out), old_of(out)};
  for (const InputPath& in : inputs) {
    if (in.path.empty()) continue;
    const fs::path input = resolved(normalized(in.path));
    for (const fs::path& name : names) {
      const fs::path o = resolved(name);
      std::error_code ec;
      const bool same = o == input || (present(name) && fs::equivalent(name, input, ec));
      std::string relation;
      if (same)
        relation = "is";
      else if (inside(input, o))
        relation = "contains";
      else if (inside_too && name == out && inside(o, input))
        relation = "lies inside";
      if (relation.empty()) continue;
      const std::string shown = name == out ? "'" + output + "'" : "'" + output + "' (its temporary name '" +
                                                                      name.string() + "')";
      throw std::runtime_error(what + ": " + option + " " + shown + " " + relation + " " + in.role + " '" + in.path +
                               "'" + (relation == "lies inside" ? " (" + input.string() + ")" : "") +
                               (relation == "lies inside" ? ", and outputs are not written into an input"
                                                          : ", and replacing it would destroy that input") +
                               "; choose an output outside the inputs (nothing was deleted or written)");
    }
  }
}

void require_output_parent(const std::string& what, const std::string& option, const std::string& output) {
  const fs::path parent = normalized(output).parent_path();
  std::error_code ec;
  if (fs::is_directory(parent, ec)) return;
  throw std::runtime_error(what + ": the parent directory '" + parent.string() + "' of " + option + " '" + output + "' " +
                           (present(parent) ? "is not a directory" : "does not exist") + " (create it first)");
}

std::vector<std::string> settle_interrupted_replacement(const std::string& output) {
  const fs::path out = normalized(output), tmp = tmp_of(out), old = old_of(out);
  std::vector<std::string> notes;
  std::error_code ec;
  if (present(old)) {
    if (!present(out)) {
      // Killed between setting the old output aside and renaming the new one in: the old one
      // is known to be complete, the new one (in .tmp) is not.
      fs::rename(old, out, ec);
      if (ec)
        throw std::runtime_error("cannot restore '" + out.string() + "' from '" + old.string() +
                                 "', where an interrupted replacement set it aside: " + ec.message());
      notes.push_back("restored '" + out.string() + "' from '" + old.string() +
                      "', where an interrupted replacement had set it aside");
    } else {
      fs::remove_all(old, ec);
      if (ec) throw std::runtime_error("cannot remove '" + old.string() + "': " + ec.message());
      notes.push_back("removed '" + old.string() + "', the previous output an interrupted replacement had already replaced");
    }
  }
  if (present(tmp)) {
    fs::remove_all(tmp, ec);
    if (ec) throw std::runtime_error("cannot remove '" + tmp.string() + "': " + ec.message());
    notes.push_back("removed '" + tmp.string() + "', left by an interrupted earlier run (not known to be complete)");
  }
  return notes;
}

OutputReplacement::OutputReplacement(const std::string& what, const std::string& out, bool force, bool directory)
    : what_(what), out_(normalized(out)), tmp_(tmp_of(out_)), old_(old_of(out_)) {
  notes_ = settle_interrupted_replacement(out);
  if (present(out_) && !force) throw std::runtime_error(what + ": '" + out + "' exists (--force replaces it)");
  if (directory) fs::create_directories(tmp_);
}

OutputReplacement::~OutputReplacement() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(tmp_, ec);
}

void OutputReplacement::commit() {
  const fs::path dir = out_.parent_path();
  std::error_code ec;
  const bool replacing = present(out_);
  if (replacing) {
    fs::rename(out_, old_, ec);
    if (ec)
      throw std::runtime_error(what_ + ": cannot move the existing '" + out_.string() + "' aside to '" + old_.string() +
                               "': " + ec.message() + " (it is untouched)");
  }
  fs::rename(tmp_, out_, ec);
  if (ec) {
    const std::string why = ec.message();
    if (replacing) fs::rename(old_, out_, ec);
    throw std::runtime_error(what_ + ": cannot rename '" + tmp_.string() + "' to '" + out_.string() + "': " + why +
                             (replacing ? " (the existing output is kept)" : ""));
  }
  committed_ = true;
  fsync_directory(dir);  // the new output is in place before the old one goes
  if (replacing) {
    fs::remove_all(old_, ec);
    if (ec) notes_.push_back("could not remove the replaced output '" + old_.string() + "': " + ec.message());
  }
}

}  // namespace kvroute
