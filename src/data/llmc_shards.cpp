// llm.c token files read in place (llmc_shards.h).
#include "kvroute/llmc_shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "kvroute/input_file.h"

namespace kvroute {

namespace fs = std::filesystem;

namespace {

bool starts_with_magic(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return false;
  std::ifstream in(p, std::ios::binary);
  int32_t magic = 0;
  return in.read(reinterpret_cast<char*>(&magic), 4) && magic == kLlmcMagic;
}

}  // namespace

bool is_llmc_shard_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || fs::exists(fs::path(dir) / "manifest.yaml", ec)) return false;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".bin" && starts_with_magic(e.path())) return true;
  return false;
}

std::vector<std::string> llmc_shard_files(const std::string& dir, const std::string& split) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".bin" && name.find(split) != std::string::npos) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

TokenSegment open_llmc_shard(const std::string& path) {
  const std::string what = "llm.c shard '" + path + "'";
  const int fd = open_regular_file(path, what);
  struct stat st {};
  ::fstat(fd, &st);
  const auto bytes = static_cast<uint64_t>(st.st_size);
  if (bytes < kLlmcHeaderBytes) {
    ::close(fd);
    throw std::runtime_error(what + ": " + std::to_string(bytes) + " bytes, shorter than the 1024-byte header");
  }
  void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  const int err = errno;
  ::close(fd);
  if (map == MAP_FAILED) throw std::runtime_error(what + ": cannot memory-map it (" + std::strerror(err) + ")");
  auto owner = std::shared_ptr<const void>(map, [bytes](const void* p) { ::munmap(const_cast<void*>(p), bytes); });
  int32_t header[3];
  std::memcpy(header, map, sizeof header);
  if (header[0] != kLlmcMagic)
    throw std::runtime_error(what + ": magic " + std::to_string(header[0]) + ", not llm.c's " +
                             std::to_string(kLlmcMagic));
  if (header[1] != kLlmcVersion)
    throw std::runtime_error(what + ": version " + std::to_string(header[1]) + "; kvroute reads version 1 (uint16 ids)");
  if (header[2] < 0 || kLlmcHeaderBytes + 2 * static_cast<uint64_t>(header[2]) != bytes)
    throw std::runtime_error(what + ": the header says " + std::to_string(header[2]) + " tokens, which take " +
                             std::to_string(kLlmcHeaderBytes + 2 * static_cast<uint64_t>(std::max(header[2], 0))) +
                             " bytes, but the file has " + std::to_string(bytes) + " (truncated or not llm.c's format)");
  TokenSegment s;
  s.name = path;
  s.bytes = static_cast<const unsigned char*>(map) + kLlmcHeaderBytes;
  s.count = static_cast<uint64_t>(header[2]);
  s.width = 2;
  s.owner = std::move(owner);
  return s;
}

void write_llmc_shard(const std::string& path, const std::vector<int32_t>& tokens) {
  std::vector<int32_t> header(256, 0);
  header[0] = kLlmcMagic;
  header[1] = kLlmcVersion;
  header[2] = static_cast<int32_t>(tokens.size());
  std::vector<uint16_t> ids(tokens.size());
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] > 65535)
      throw std::invalid_argument("write_llmc_shard: id " + std::to_string(tokens[i]) + " does not fit uint16");
    ids[i] = static_cast<uint16_t>(tokens[i]);
  }
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(header.data()), kLlmcHeaderBytes);
  out.write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 2));
  if (!out) throw std::runtime_error("writing llm.c shard '" + path + "' failed");
}

}  // namespace kvroute
