// Checks on the text files a data tool is given, with messages that name the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvroute {

// Total bytes of the files. Throws std::runtime_error "<what> 'path': <problem>" for a
// missing, unreadable, non-regular or empty file, or "<what>: no files given".
uint64_t check_input_files(const std::vector<std::string>& paths, const std::string& what);

// Refuses an existing out_dir (a file, or a non-empty directory) unless force.
void check_output_dir(const std::string& out_dir, bool force, const std::string& what);

// Moves the finished tmp_dir to out_dir, replacing out_dir when it exists.
void commit_output_dir(const std::string& tmp_dir, const std::string& out_dir);

// FNV-1a 64 of a file's bytes. Throws naming the file when it cannot be read.
uint64_t file_fingerprint(const std::string& path);

}  // namespace kvroute
