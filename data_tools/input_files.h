// Checks on the text files a data tool is given, with messages that name the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "checkpoint/output_paths.h"

namespace kvroute {

// Total bytes of the files. Throws std::runtime_error "<what> 'path': <problem>" for a
// missing, unreadable, non-regular or empty file, or "<what>: no files given".
uint64_t check_input_files(const std::vector<std::string>& paths, const std::string& what);

// Refuses an out_dir that is, contains or lies inside one of the inputs, and an existing out_dir
// (a file, or a non-empty directory) unless force; first settles what an interrupted earlier
// replacement left (output_paths.h), saying so on stderr.
void check_output_dir(const std::string& out_dir, bool force, const std::string& what,
                      const std::vector<InputPath>& inputs);
// The paths as inputs of one role, for check_output_dir.
std::vector<InputPath> input_paths(const std::vector<std::string>& paths, const std::string& role);

// Makes out_dir all at once: fill(tmp) writes into a fresh sibling "<out_dir>.tmp", which then
// replaces out_dir crash-safely (OutputReplacement). If fill or the move throws, the temporary
// directory is removed, out_dir is left as it was, and the error propagates.
void build_output_dir(const std::string& out_dir, const std::function<void(const std::filesystem::path& tmp)>& fill);

// FNV-1a 64 of a file's bytes. Throws naming the file when it cannot be read.
uint64_t file_fingerprint(const std::string& path);

}  // namespace kvroute
