#include "kvroute/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
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

namespace kvroute {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The spec caps the header at 100 MB; a larger length is a damaged or foreign file.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

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

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(path, std::strerror(err));
  }
  map_bytes_ = static_cast<std::size_t>(st.st_size);
  if (map_bytes_ < 8) {
    ::close(fd);
    fail(path, "truncated: " + std::to_string(map_bytes_) + " bytes, fewer than the 8-byte header length");
  }
  map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail(path, std::string("cannot map it: ") + std::strerror(errno));
  }
  try {
    const auto* bytes = static_cast<const unsigned char*>(map_);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
    if (n > kMaxHeaderBytes) fail(path, "header length " + std::to_string(n) + " is over the format's 100 MB limit");
    if (n > map_bytes_ - 8)
      fail(path, "truncated: the header says it is " + std::to_string(n) + " bytes, the file has " +
                     std::to_string(map_bytes_ - 8) + " after the length");
    json header;
    try {
      header = json::parse(bytes + 8, bytes + 8 + n);
    } catch (const json::exception& e) {
      fail(path, std::string("the header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) fail(path, "the header is not a JSON object");
    data_ = bytes + 8 + n;
    const uint64_t data_bytes = map_bytes_ - 8 - n;
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
      uint64_t numel = 1;
      for (const auto& d : v["shape"]) {
        if (!d.is_number_integer() || d.get<int64_t>() < 0) fail(path, where + ": shape holds " + d.dump());
        e.shape.push_back(d.get<int64_t>());
        if (e.shape.back() != 0 && numel > data_bytes / static_cast<uint64_t>(e.shape.back()))
          fail(path, where + ": shape " + v["shape"].dump() + " is larger than the file");
        numel *= static_cast<uint64_t>(e.shape.back());
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
        fail(path, where + ": " + std::to_string(e.end - e.begin) + " bytes for " + e.dtype + " " + v["shape"].dump() +
                       ", which takes " + std::to_string(numel * width));
      tensors_.push_back(std::move(e));
    }
    std::sort(tensors_.begin(), tensors_.end(), [](const auto& a, const auto& b) { return a.begin < b.begin; });
    for (std::size_t i = 0; i < tensors_.size(); ++i) {
      if (i > 0 && tensors_[i].begin < tensors_[i - 1].end)
        fail(path, "tensors '" + tensors_[i - 1].name + "' and '" + tensors_[i].name + "' overlap in the data");
      index_[tensors_[i].name] = i;
    }
  } catch (...) {
    ::munmap(map_, map_bytes_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_bytes_);
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
  const unsigned char* p = data_ + e->begin;
  // The data is little-endian, as this machine (x86-64, aarch64).
  if (e->dtype == "F32") {
    std::memcpy(out, p, n * 4);
  } else if (e->dtype == "BF16" || e->dtype == "F16") {
    const bool bf16 = e->dtype == "BF16";
    for (std::size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      out[i] = bf16 ? float_from_bf16(h) : float_from_f16(h);
    }
  } else {
    fail(path_, "tensor '" + name + "' is " + e->dtype + "; only F32, BF16 and F16 weights are supported");
  }
}

void SafetensorsFile::drop_pages(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (!e || e->end == e->begin) return;
  // madvise needs a page-aligned start; the pages are clean file pages, so dropping them loses nothing.
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const auto base = reinterpret_cast<std::uintptr_t>(map_);
  const std::uintptr_t begin = reinterpret_cast<std::uintptr_t>(data_ + e->begin) / page * page;
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(data_ + e->end);
  if (begin < base) return;
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
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
  std::ifstream in(index_path);
  if (!in) throw std::runtime_error("safetensors index '" + index_path + "': " + std::strerror(errno));
  json index;
  try {
    index = json::parse(in);
  } catch (const json::exception& e) {
    throw std::runtime_error("safetensors index '" + index_path + "' is not valid JSON: " + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw std::runtime_error("safetensors index '" + index_path + "' has no \"weight_map\" object");
  const fs::path dir = fs::path(index_path).parent_path();
  std::map<std::string, std::string> out;
  for (const auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string())
      throw std::runtime_error("safetensors index '" + index_path + "': the file of '" + name + "' is not a string");
    const fs::path shard = dir / file.get<std::string>();
    if (!fs::exists(shard))
      throw std::runtime_error("safetensors index '" + index_path + "' puts '" + name + "' in '" + shard.string() +
                               "', which does not exist");
    out[name] = shard.string();
  }
  return out;
}

}  // namespace kvroute
