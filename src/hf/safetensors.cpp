#include "kvroute/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "checkpoint/durable_file.h"
#include "kvroute/bf16.h"
#include "kvroute/input_file.h"
#include "kvroute/input_limits.h"

namespace kvroute {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::size_t dtype_bytes(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
  return 0;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("safetensors file '" + path + "': " + what);
}

}  // namespace

uint64_t SafetensorsEntry::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

float float_from_f16(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return float_from_bits(sign | 0x7f800000u | (man << 13));  // inf, NaN
  if (exp != 0) return float_from_bits(sign | ((exp + 112) << 23) | (man << 13));
  // Zero or subnormal: man * 2^-24, exact in fp32.
  const float v = static_cast<float>(man) * (1.0f / 16777216.0f);
  return sign ? -v : v;
}

namespace {

// Reads exactly n bytes at offset, or fails naming the file: a file that shrinks while it is
// read (a download still running) is an error here, where a memory mapping would be SIGBUS.
void read_at(int fd, const std::string& path, void* out, std::size_t n, uint64_t offset) {
  auto* p = static_cast<char*>(out);
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(fd, p + got, n - got, static_cast<off_t>(offset + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(path, std::string("read failed: ") + std::strerror(errno));
    if (r == 0)
      fail(path, "truncated while it was read (the file ended at byte " + std::to_string(offset + got) + ", " +
                     std::to_string(offset + n) + " were expected)");
    got += static_cast<std::size_t>(r);
  }
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  fd_ = open_regular_file(path, "safetensors file '" + path + "'");
  try {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) fail(path, std::strerror(errno));
    const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);
    if (file_bytes < 8)
      fail(path, "truncated: " + std::to_string(file_bytes) + " bytes, fewer than the 8-byte header length");
    unsigned char len[8];
    read_at(fd_, path, len, 8, 0);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
    if (n > limits::kSafetensorsHeaderBytes)
      fail(path, "the header length field says " + std::to_string(n) + " bytes, over the format's limit of " +
                     std::to_string(limits::kSafetensorsHeaderBytes) + " (not a safetensors file?)");
    if (n > file_bytes - 8)
      fail(path, "truncated: the header says it is " + std::to_string(n) + " bytes, the file has " +
                     std::to_string(file_bytes - 8) + " after the length");
    std::string text(n, '\0');
    read_at(fd_, path, text.data(), n, 8);
    const json header = parse_input_json(text, "safetensors file '" + path + "': the header");
    text.clear();
    text.shrink_to_fit();
    if (!header.is_object()) fail(path, "the header is not a JSON object");
    if (header.size() > limits::kSafetensorsTensors + 1)
      fail(path, "the header lists " + std::to_string(header.size()) + " tensors, over kvroute's limit of " +
                     std::to_string(limits::kSafetensorsTensors));
    data_offset_ = 8 + n;
    const uint64_t data_bytes = file_bytes - 8 - n;
    for (const auto& [name, v] : header.items()) {
      if (name == "__metadata__") {
        if (!v.is_object()) fail(path, "__metadata__ is not an object");
        for (const auto& [k, s] : v.items()) {
          if (!s.is_string()) fail(path, "__metadata__ value of '" + k + "' is not a string");
          metadata_[k] = s.get<std::string>();
        }
        continue;
      }
      const std::string where = "tensor '" + name + "'";
      if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
        fail(path, where + " needs dtype, shape and data_offsets");
      SafetensorsEntry e;
      e.name = name;
      if (!v["dtype"].is_string()) fail(path, where + ": dtype is not a string");
      e.dtype = v["dtype"].get<std::string>();
      const std::size_t width = dtype_bytes(e.dtype);
      if (width == 0) fail(path, where + ": unknown dtype '" + e.dtype + "'");
      if (!v["shape"].is_array()) fail(path, where + ": shape is not a list");
      if (v["shape"].size() > 16) fail(path, where + ": shape has " + std::to_string(v["shape"].size()) + " dimensions");
      uint64_t numel = 1;
      for (const auto& d : v["shape"]) {
        if (!d.is_number_unsigned()) fail(path, where + ": shape holds " + json_for_message(d));
        const uint64_t dim = d.get<uint64_t>();
        if (dim > data_bytes || (dim != 0 && numel > data_bytes / dim))
          fail(path, where + ": shape " + json_for_message(v["shape"]) + " is larger than the file");
        e.shape.push_back(static_cast<int64_t>(dim));
        numel *= dim;
      }
      const auto& off = v["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        fail(path, where + ": data_offsets is not [begin, end]");
      e.begin = off[0].get<uint64_t>();
      e.end = off[1].get<uint64_t>();
      if (e.begin > e.end || e.end > data_bytes)
        fail(path, where + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                       ") lie outside the " + std::to_string(data_bytes) + " data bytes (truncated file?)");
      if (e.end - e.begin != numel * width)
        fail(path, where + ": " + std::to_string(e.end - e.begin) + " bytes for " + e.dtype + " " +
                       json_for_message(v["shape"]) + ", which takes " + std::to_string(numel * width));
      tensors_.push_back(std::move(e));
    }
    // Data order; a zero-size tensor sits anywhere (writers put them at a neighbour's boundary),
    // only tensors with bytes must not overlap.
    std::sort(tensors_.begin(), tensors_.end(),
              [](const auto& a, const auto& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
    const SafetensorsEntry* previous = nullptr;
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      const SafetensorsEntry& t = tensors_[i];
      if (t.end > t.begin) {
        if (previous && t.begin < previous->end)
          fail(path, "tensors '" + previous->name + "' and '" + t.name + "' overlap in the data");
        previous = &t;
      }
      index_[t.name] = i;
    }
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) fail(path_, "has no tensor '" + name + "'");
  std::vector<float> out(e->numel());
  read_f32_into(name, out.data(), out.size());
  return out;
}

void SafetensorsFile::read_f32_into(const std::string& name, float* out, std::size_t n) const {
  const SafetensorsEntry* e = find(name);
  if (!e) fail(path_, "has no tensor '" + name + "'");
  if (n != e->numel())
    fail(path_, "tensor '" + name + "' has " + std::to_string(e->numel()) + " elements, " + std::to_string(n) +
                    " were expected");
  const uint64_t at = data_offset_ + e->begin;
  // The data is little-endian, as this machine (x86-64, aarch64).
  if (e->dtype == "F32") {
    read_at(fd_, path_, out, n * 4, at);
  } else if (e->dtype == "BF16" || e->dtype == "F16") {
    const bool bf16 = e->dtype == "BF16";
    // In blocks, so a large tensor needs no second full-size buffer.
    constexpr std::size_t kBlock = 1 << 20;
    std::vector<uint16_t> half(std::min(n, kBlock));
    for (std::size_t i0 = 0; i0 < n; i0 += kBlock) {
      const std::size_t m = std::min(kBlock, n - i0);
      read_at(fd_, path_, half.data(), m * 2, at + 2 * i0);
      for (std::size_t i = 0; i < m; ++i) out[i0 + i] = bf16 ? float_from_bf16(half[i]) : float_from_f16(half[i]);
    }
  } else {
    fail(path_, "tensor '" + name + "' is " + e->dtype + "; only F32, BF16 and F16 weights are supported");
  }
}

void SafetensorsFile::drop_pages(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (!e || e->end == e->begin) return;
  // The pages are clean page cache of a file read once: let the kernel drop them.
  ::posix_fadvise(fd_, static_cast<off_t>(data_offset_ + e->begin), static_cast<off_t>(e->end - e->begin),
                  POSIX_FADV_DONTNEED);
}

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors, const std::string& dtype,
                       const std::map<std::string, std::string>& metadata) {
  if (dtype != "F32" && dtype != "BF16")
    throw std::invalid_argument("write_safetensors: dtype must be F32 or BF16, not '" + dtype + "'");
  const std::size_t width = dtype == "F32" ? 4 : 2;
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const NamedTensor& t : tensors) {
    if (header.contains(t.name)) throw std::invalid_argument("write_safetensors: tensor '" + t.name + "' twice");
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    header[t.name] = {{"dtype", dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + numel * width}}};
    offset += numel * width;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-aligned, as other writers do
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw std::runtime_error("writing '" + path + "' failed: " + std::strerror(errno));
  bool ok = true;
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((uint64_t(text.size()) >> (8 * i)) & 0xff);
  ok = ok && std::fwrite(len, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  std::vector<uint16_t> half;
  for (const NamedTensor& t : tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    if (width == 4) {
      ok = ok && std::fwrite(t.data, 4, numel, f) == numel;
    } else {
      half.resize(numel);
      for (uint64_t i = 0; i < numel; ++i) half[i] = bf16_from_float(t.data[i]);
      ok = ok && std::fwrite(half.data(), 2, numel, f) == numel;
    }
  }
  const int err = errno;
  if (std::fclose(f) != 0 || !ok) {
    std::remove(tmp.c_str());
    throw std::runtime_error("writing '" + path + "' failed: " + std::strerror(ok ? errno : err));
  }
  fsync_file(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int rename_err = errno;
    std::remove(tmp.c_str());
    throw std::runtime_error("writing '" + path + "' failed: " + std::strerror(rename_err));
  }
  fsync_directory(fs::path(path).parent_path());
}

std::map<std::string, std::string> read_safetensors_index(const std::string& index_path) {
  const std::string what = "safetensors index '" + index_path + "'";
  const json index = parse_input_json(read_input_file(index_path, limits::kJsonFileBytes, what), what);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw std::runtime_error(what + " has no \"weight_map\" object");
  const fs::path dir = fs::path(index_path).parent_path();
  std::error_code ec;
  const fs::path real_dir = fs::weakly_canonical(fs::absolute(dir), ec);
  std::map<std::string, std::string> out;
  for (const auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string()) throw std::runtime_error(what + ": the file of '" + name + "' is not a string");
    // A shard is a file of the model folder: an absolute path, "..", or a link out of the folder
    // would let a downloaded index open any file of the machine.
    const fs::path rel(file.get<std::string>());
    bool inside = !rel.empty() && rel.is_relative();
    for (const fs::path& part : rel) inside = inside && part != "..";
    const fs::path shard = dir / rel;
    if (inside) {
      const fs::path real = fs::weakly_canonical(fs::absolute(shard), ec);
      const auto [d, r] = std::mismatch(real_dir.begin(), real_dir.end(), real.begin(), real.end());
      inside = !ec && d == real_dir.end() && r != real.end();
    }
    if (!inside)
      throw std::runtime_error(what + " puts '" + name + "' in '" + file.get<std::string>() +
                               "', which is not a file inside the model folder");
    if (!fs::exists(shard, ec))
      throw std::runtime_error(what + " puts '" + name + "' in '" + shard.string() + "', which does not exist");
    out[name] = shard.string();
  }
  return out;
}

}  // namespace kvroute
