// Making files durable: fsync of a file, of a directory (which makes a rename
// durable), and small text files replaced atomically.
#pragma once

#include <filesystem>
#include <string>

namespace kvroute {

// Throws std::runtime_error with the system's reason when the file cannot be synced.
void fsync_file(const std::filesystem::path& path);
// A rename is durable once its directory is synced: throws std::runtime_error naming the
// directory when it cannot be opened or synced, so nothing is reported durable that is not.
void fsync_directory(const std::filesystem::path& dir);
// Writes text to "<path>.tmp", fsyncs it, renames it over path, fsyncs the directory.
// Throws std::runtime_error naming the path; path keeps its old content on failure.
void write_file_atomically(const std::filesystem::path& path, const std::string& text);

}  // namespace kvroute
