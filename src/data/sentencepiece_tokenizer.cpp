// The SentencePiece tokenizer (a directory written by `kvroute data tokenizer`).
#include <sentencepiece_processor.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "kvroute/shard.h"
#include "kvroute/tokenizer.h"

namespace kvroute {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kMetaSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's escaped space

// Length of the valid UTF-8 character at s[i] (RFC 3629: no overlongs, no
// surrogates, at most U+10FFFF), or 0 when the bytes there are not one.
std::size_t utf8_char_length(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  std::size_t n;
  unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF)
    n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (b(1) < lo || b(1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k)
    if (b(k) < 0x80 || b(k) > 0xBF) return 0;
  return n;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& dir) : dir_(dir) {
    std::error_code ec;
    if (!fs::exists(dir, ec)) throw std::runtime_error("tokenizer '" + dir + "': no such directory");
    if (!fs::is_directory(dir, ec))
      throw std::runtime_error("tokenizer '" + dir +
                               "': not a directory (data.tokenizer is \"byte\" or a directory "
                               "written by `kvroute data tokenizer`)");
    const std::string model = (fs::path(dir) / "tokenizer.model").string();
    std::ifstream in(model, std::ios::binary);
    if (!in)
      throw std::runtime_error("tokenizer '" + dir +
                               "': no tokenizer.model in it (train one with `kvroute data tokenizer`)");
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string proto = ss.str();
    if (proto.empty()) throw std::runtime_error("tokenizer '" + model + "': the file is empty");
    const auto status = sp_.LoadFromSerializedProto(proto);
    if (!status.ok())
      throw std::runtime_error("tokenizer '" + model + "': not a SentencePiece model (" + status.ToString() + ")");
    fingerprint_ = fnv1a64(proto.data(), proto.size());
    vocab_ = sp_.GetPieceSize();
    byte_id_.fill(-1);
    surface_.resize(vocab_);
    for (int id = 0; id < vocab_; ++id) {
      if (sp_.IsByte(id)) {
        const std::string& p = sp_.IdToPiece(id);  // "<0xAB>"
        const int byte = std::stoi(p.substr(3, 2), nullptr, 16);
        byte_id_[byte] = id;
        surface_[id] = std::string(1, static_cast<char>(byte));
      } else if (sp_.IsControl(id)) {
        surface_[id] = "";
      } else if (sp_.IsUnknown(id)) {
        surface_[id] = "\xE2\x81\x87";  // ⁇, as SentencePiece prints <unk>
      } else {
        std::string s = sp_.IdToPiece(id);
        for (std::size_t pos; (pos = s.find(kMetaSpace)) != std::string::npos;) s.replace(pos, kMetaSpace.size(), " ");
        surface_[id] = std::move(s);
      }
    }
    for (int b = 0; b < 256; ++b)
      if (byte_id_[b] < 0)
        throw std::runtime_error("tokenizer '" + model +
                                 "': has no byte pieces <0x00>..<0xFF>, so some text could "
                                 "not be encoded; train it with byte_fallback (`kvroute data tokenizer` does)");
    eos_ = sp_.eos_id();
    if (eos_ < 0) throw std::runtime_error("tokenizer '" + model + "': has no end-of-document id </s>");
    const std::string probe = "Round  trip\tcheck: 1 2 3.\n  indented\r\n";
    std::vector<int> ids;
    std::string back;
    if (!sp_.Encode(probe, &ids).ok() || !sp_.Decode(ids, &back).ok() || back != probe)
      throw std::runtime_error("tokenizer '" + model +
                               "': does not reproduce text exactly (trained with a "
                               "normalization rule or a dummy prefix?); train one with `kvroute data tokenizer`");
  }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    std::vector<int> ids;
    std::size_t i = 0;
    while (i < text.size()) {
      // A run of text SentencePiece keeps intact: valid UTF-8, no NUL, no U+2581,
      // ending after a newline at the latest.
      std::size_t j = i;
      std::size_t bad = 0;  // bytes to send as byte pieces after the run
      while (j < text.size()) {
        const std::size_t n = utf8_char_length(text, j);
        if (n == 0 || text[j] == '\0') {
          bad = 1;
          break;
        }
        if (text.compare(j, n, kMetaSpace) == 0) {
          bad = n;
          break;
        }
        j += n;
        if (text[j - 1] == '\n') break;
      }
      if (j > i) {
        const auto status = sp_.Encode(text.substr(i, j - i), &ids);
        if (!status.ok()) throw std::runtime_error("tokenizer '" + dir_ + "': " + status.ToString());
        out.insert(out.end(), ids.begin(), ids.end());
      }
      for (std::size_t k = 0; k < bad; ++k) out.push_back(byte_id_[static_cast<unsigned char>(text[j + k])]);
      i = j + bad;
    }
    return out;
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string s;
    s.reserve(ids.size() * 4);
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_)
        throw std::out_of_range("tokenizer '" + dir_ + "': token id " + std::to_string(id) + " is outside 0.." +
                                std::to_string(vocab_ - 1));
      s += surface_[id];
    }
    return s;
  }

  int vocab_size() const override { return vocab_; }
  std::string identity() const override {
    return "sentencepiece-" + std::to_string(vocab_) + "-" + fingerprint_hex(fingerprint_);
  }
  uint64_t fingerprint() const override { return fingerprint_; }
  std::vector<int32_t> document_separator() const override { return {eos_}; }
  std::string piece(int32_t id) const override {
    if (id < 0 || id >= vocab_) return "<invalid " + std::to_string(id) + ">";
    return sp_.IdToPiece(id);
  }

 private:
  std::string dir_;
  sentencepiece::SentencePieceProcessor sp_;
  uint64_t fingerprint_ = 0;
  int vocab_ = 0;
  int eos_ = -1;
  std::array<int32_t, 256> byte_id_;
  std::vector<std::string> surface_;  // the text each id decodes to
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& dir) {
  return std::make_unique<SentencePieceTokenizer>(dir);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "byte") return make_byte_tokenizer();
  if (spec.empty()) throw std::runtime_error("data.tokenizer is empty (use \"byte\" or a tokenizer directory)");
  return load_sentencepiece_tokenizer(spec);
}

}  // namespace kvroute
