#include "kvroute/run_checkpoints.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "checkpoint/durable_file.h"

namespace kvroute {

namespace fs = std::filesystem;

namespace {

constexpr const char* kLatest = "latest";

// The step of "step_<digits>.h5", or nullopt for any other name.
std::optional<long> step_of(const std::string& name) {
  if (!name.starts_with("step_") || !name.ends_with(".h5")) return std::nullopt;
  const char* b = name.data() + 5;
  const char* e = name.data() + name.size() - 3;
  long step = 0;
  auto [ptr, ec] = std::from_chars(b, e, step);
  if (b == e || ec != std::errc() || ptr != e) return std::nullopt;
  return step;
}

struct StepFile {
  long step;
  fs::path path;
};

std::vector<StepFile> step_files(const fs::path& dir) {
  std::vector<StepFile> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (auto step = step_of(e.path().filename().string()); step && e.is_regular_file()) files.push_back({*step, e.path()});
  std::sort(files.begin(), files.end(), [](const StepFile& a, const StepFile& b) { return a.step < b.step; });
  return files;
}

// The file name `latest` holds, if it is readable and names an existing file in dir.
std::optional<std::string> read_latest(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_regular_file(dir / kLatest, ec)) return std::nullopt;  // a FIFO would block the open below
  std::ifstream in(dir / kLatest);
  std::string name;
  if (!in || !(in >> name)) return std::nullopt;
  if (name.find('/') != std::string::npos || !fs::is_regular_file(dir / name)) return std::nullopt;
  return name;
}

}  // namespace

std::string checkpoint_file_name(long step) {
  char name[40];
  std::snprintf(name, sizeof name, "step_%08ld.h5", step);
  return name;
}

std::string checkpoints_dir(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoints").string(); }

std::string save_run_checkpoint(const std::string& run_dir, const Model& model, const Config& cfg,
                                const TrainingState& state, const TokenizerIdentity& tokenizer, int keep_last) {
  const fs::path dir = checkpoints_dir(run_dir);
  fs::create_directories(dir);
  const std::string name = checkpoint_file_name(state.step);
  const fs::path path = dir / name;
  try {
    save_checkpoint(path.string(), model, cfg, state, tokenizer);
    write_file_atomically(dir / kLatest, name + "\n");
  } catch (const std::exception& e) {
    const auto previous = read_latest(dir);
    throw CheckpointError(std::string(e.what()) + "\n" +
                          (previous ? "The previous checkpoint '" + (dir / *previous).string() +
                                          "' is intact and 'latest' still points to it."
                                    : std::string("This run has no earlier checkpoint.")));
  }
  rotate_checkpoints(run_dir, keep_last);
  return path.string();
}

std::string find_latest_checkpoint(const std::string& run_dir, std::string* note) {
  const fs::path dir = checkpoints_dir(run_dir);
  if (!fs::is_directory(run_dir)) throw CheckpointError("run directory '" + run_dir + "' does not exist");
  if (!fs::is_directory(dir))
    throw CheckpointError("run directory '" + run_dir + "' has no checkpoints/ folder: nothing to resume from");
  if (auto name = read_latest(dir)) return (dir / *name).string();
  const auto files = step_files(dir);
  if (files.empty()) throw CheckpointError("'" + dir.string() + "' holds no checkpoint (step_*.h5): nothing to resume from");
  if (note)
    *note = std::string("'") + (dir / kLatest).string() + "' is missing or names no file; using the newest checkpoint, " +
            files.back().path.filename().string();
  return files.back().path.string();
}

std::vector<std::string> list_run_checkpoints(const std::string& run_dir) {
  std::vector<std::string> paths;
  for (const StepFile& f : step_files(checkpoints_dir(run_dir))) paths.push_back(f.path.string());
  return paths;
}

std::vector<std::string> rotate_checkpoints(const std::string& run_dir, int keep_last) {
  const fs::path dir = checkpoints_dir(run_dir);
  const auto latest = read_latest(dir);
  if (!latest) return {};  // without a pointer nothing is known to be safe to remove
  const auto latest_step = step_of(*latest);
  if (!latest_step) return {};
  std::vector<std::string> removed;
  int kept = 1;  // latest itself
  const auto files = step_files(dir);
  for (auto it = files.rbegin(); it != files.rend(); ++it) {
    if (it->step >= *latest_step) continue;
    if (kept < keep_last) {
      ++kept;
      continue;
    }
    std::error_code ec;
    if (fs::remove(it->path, ec)) removed.push_back(it->path.string());
  }
  return removed;
}

std::vector<std::string> remove_stale_temporaries(const std::string& run_dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(checkpoints_dir(run_dir), ec))
    if (e.path().extension() == ".tmp" && fs::remove(e.path(), ec)) removed.push_back(e.path().filename().string());
  return removed;
}

}  // namespace kvroute
