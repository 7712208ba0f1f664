// The safetensors format (Hugging Face's weight files), read and written without Python:
//   8 bytes: N, little-endian u64 | N bytes: a JSON header | the tensor data.
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end)}, offsets
// relative to the data; an optional "__metadata__" maps strings to strings. A sharded model adds
// model.safetensors.index.json, whose "weight_map" names each tensor's file.
//
// Every check that a damaged or hand-made file could fail is made before any tensor is read, and
// fails with a message naming the file and the tensor: a truncated file, a header that does not
// parse, an offset range outside the data, overlapping ranges, a size that does not match dtype x
// shape, an unsupported dtype.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace kvroute {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;             // "F32", "F16", "BF16", ... as the file says
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;   // byte range in the data section
  uint64_t numel() const;
};

class SafetensorsFile {
 public:
  // Opens the file (a regular file only) and validates its header; throws std::runtime_error
  // naming the file. Tensors are read with pread, so a file truncated meanwhile is an error,
  // not a SIGBUS.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& tensors() const { return tensors_; }  // in data order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(const std::string& name) const;  // nullptr if absent
  // The tensor as fp32 (F32 as is, BF16 and F16 widened exactly); throws naming the file and
  // tensor when it is absent or of another dtype (I8, F8_E4M3, F64, ...).
  std::vector<float> read_f32(const std::string& name) const;
  // The same into out[0, n); n must be the tensor's element count.
  void read_f32_into(const std::string& name, float* out, std::size_t n) const;
  // Lets the kernel drop the tensor's cached pages, so reading a model tensor by tensor does not
  // fill the page cache with the whole file.
  void drop_pages(const std::string& name) const;

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t data_offset_ = 0;  // where the data section starts in the file
  std::vector<SafetensorsEntry> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: fp32 values and their shape.
struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
};

// Writes tensors as "F32" or "BF16" (rounded to nearest even), in the order given, with
// metadata; to "<path>.tmp", fsynced and renamed. Throws naming the path on failure.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors, const std::string& dtype,
                       const std::map<std::string, std::string>& metadata = {});

// model.safetensors.index.json: tensor name -> shard file path (resolved next to the index).
// Throws naming the index when it does not parse, lacks "weight_map", names a missing file, or
// names a file outside its folder (an absolute path, "..", a link leading out).
std::map<std::string, std::string> read_safetensors_index(const std::string& index_path);

// IEEE half -> float, exact for every value (subnormals, inf, NaN).
float float_from_f16(uint16_t h);

}  // namespace kvroute
