// Checks on the text files a data tool is given, with messages that name the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace kvroute {

// Total bytes of the files. Throws std::runtime_error "<what> 'path': <problem>" for a
// missing, unreadable, non-regular or empty file, or "<what>: no files given".
uint64_t check_input_files(const std::vector<std::string>& paths, const std::string& what);

// Refuses an existing out_dir (a file, or a non-empty directory) unless force.
void check_output_dir(const std::string& out_dir, bool force, const std::string& what);

// Makes out_dir all at once: fill(tmp) writes into a fresh sibling "<out_dir>.partial-<pid>", which
// then replaces out_dir (when it exists). If fill or the move throws, the partial directory is
// removed, out_dir is left as it was, and the error propagates.
void build_output_dir(const std::string& out_dir, const std::function<void(const std::filesystem::path& tmp)>& fill);

// FNV-1a 64 of a file's bytes. Throws naming the file when it cannot be read.
uint64_t file_fingerprint(const std::string& path);

}  // namespace kvroute
