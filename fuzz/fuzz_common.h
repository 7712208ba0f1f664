// Shared by the fuzz targets: most readers take a path, not bytes, so each input is written
// to a file in a scratch directory private to the process (removed at exit) and read back
// through the public reader, as kvroute reads a downloaded file.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace kvroute_fuzz {

// A fresh directory under $TMPDIR (or /tmp), created on first use and removed at exit.
inline const std::filesystem::path& scratch_dir() {
  struct Dir {
    std::filesystem::path path;
    Dir() {
      const char* tmp = std::getenv("TMPDIR");
      std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/kvroute-fuzz-XXXXXX";
      if (!mkdtemp(templ.data())) throw std::runtime_error("fuzz: cannot create a scratch directory");
      path = templ;
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Dir dir;
  return dir.path;
}

// A directory `name` inside the scratch directory (created if missing).
inline std::filesystem::path scratch_subdir(const std::string& name) {
  const auto dir = scratch_dir() / name;
  std::filesystem::create_directories(dir);
  return dir;
}

// Writes the bytes to `path`, replacing what was there.
inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("fuzz: cannot write " + path.string());
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace kvroute_fuzz
