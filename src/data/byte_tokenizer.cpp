// The byte tokenizer: one token per byte, vocabulary 256.
#include <cstdio>
#include <stdexcept>

#include "kvroute/data.h"
#include "kvroute/shard.h"
#include "kvroute/tokenizer.h"

namespace kvroute {

std::vector<int32_t> byte_encode(const std::string& text) {
  std::vector<int32_t> ids(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string byte_decode(const std::vector<int32_t>& ids) {
  std::string s;
  s.reserve(ids.size());
  for (int32_t id : ids) s.push_back(static_cast<char>(id & 0xff));
  return s;
}

namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string decode(std::span<const int32_t> ids) const override {
    std::string s;
    s.reserve(ids.size());
    for (int32_t id : ids) {
      if (id < 0 || id > 255)
        throw std::out_of_range("byte tokenizer: token id " + std::to_string(id) + " is outside 0..255");
      s.push_back(static_cast<char>(id));
    }
    return s;
  }
  int vocab_size() const override { return 256; }
  std::string identity() const override { return "byte"; }
  uint64_t fingerprint() const override { return fnv1a64("byte", 4); }
  std::vector<int32_t> document_separator() const override { return {'\n'}; }
  std::string piece(int32_t id) const override {
    if (id >= 33 && id < 127) return std::string(1, static_cast<char>(id));
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", static_cast<unsigned>(id & 0xff));
    return buf;
  }
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

std::string fingerprint_hex(uint64_t fingerprint) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(fingerprint));
  return buf;
}

}  // namespace kvroute
