#include "checkpoint/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace kvroute {

namespace fs = std::filesystem;

void fsync_file(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error("cannot open '" + path.string() + "' to fsync it: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw std::runtime_error("fsync of '" + path.string() + "' failed: " + std::strerror(err));
}

void fsync_directory(const fs::path& dir) {
  const fs::path d = dir.empty() ? fs::path(".") : dir;
  const int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0)
    throw std::runtime_error("cannot open directory '" + d.string() + "' to fsync it: " + std::strerror(errno) +
                             " (a file renamed into it may not survive a power loss)");
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0)
    throw std::runtime_error("fsync of directory '" + d.string() + "' failed: " + std::strerror(err) +
                             " (a file renamed into it may not survive a power loss)");
}

void write_file_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  auto fail = [&](const std::string& why) {
    std::remove(tmp.c_str());
    throw std::runtime_error("writing '" + path.string() + "' failed: " + why + " (its previous content is kept)");
  };
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail(std::strerror(errno));
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const int write_err = errno;
  if (std::fclose(f) != 0 || !written) fail(std::strerror(written ? errno : write_err));
  try {
    fsync_file(tmp);
  } catch (const std::exception& e) {
    fail(e.what());
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail(std::strerror(errno));
  try {
    fsync_directory(path.parent_path());
  } catch (const std::exception& e) {
    throw std::runtime_error("'" + path.string() + "' was written but is not durable: " + e.what());
  }
}

}  // namespace kvroute
