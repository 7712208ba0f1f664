// The SentencePiece tokenizer: a directory written by `kvroute data tokenizer`, or a
// Hugging Face Llama 2 style tokenizer.model (the two modes of tokenizer.h).
#include <sentencepiece_processor.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "added_tokens.h"
#include "hf_json.h"
#include "kvroute/hf_tokenizer_json.h"
#include "kvroute/input_file.h"
#include "kvroute/input_limits.h"
#include "kvroute/shard.h"
#include "kvroute/tokenizer.h"
#include "utf8.h"

namespace kvroute {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kMetaSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's escaped space

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
    if (!fs::exists(model, ec))
      throw std::runtime_error("tokenizer '" + dir +
                               "': no tokenizer.model in it (train one with `kvroute data tokenizer`)");
    const std::string proto = read_input_file(model, limits::kSentencePieceModelBytes, "tokenizer '" + model + "'");
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
    eos_ = sp_.eos_id();
    if (eos_ < 0) throw std::runtime_error("tokenizer '" + model + "': has no end-of-document id </s>");
    const std::string probe = "Round  trip\tcheck: 1 2 3.\n  indented\r\n";
    std::vector<int> ids;
    std::string back;
    const bool exact = sp_.Encode(probe, &ids).ok() && sp_.Decode(ids, &back).ok() && back == probe;
    // A folder `kvroute export hf` wrote has Hugging Face's config files too, but its
    // tokenizer.json says the model is used as it is (no dummy prefix): kvroute mode.
    const fs::path json_file = fs::path(dir) / "tokenizer.json";
    const bool plain = fs::exists(json_file, ec) && declares_plain_sentencepiece(hf_json::read(json_file.string()));
    hf_ = !exact || (!plain && (fs::exists(fs::path(dir) / "tokenizer_config.json", ec) ||
                                fs::exists(fs::path(dir) / "special_tokens_map.json", ec)));
    if (hf_) {
      read_hf_added_tokens();
      return;
    }
    for (int b = 0; b < 256; ++b)
      if (byte_id_[b] < 0)
        throw std::runtime_error("tokenizer '" + model +
                                 "': has no byte pieces <0x00>..<0xFF>, so some text could "
                                 "not be encoded; train it with byte_fallback (`kvroute data tokenizer` does)");
  }

  std::vector<int32_t> encode(std::string_view text) const override {
    if (hf_) return encode_hf(text);
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
    if (hf_) {
      const std::vector<int> all(ids.begin(), ids.end());
      s.clear();
      const auto status = sp_.Decode(all, &s);
      if (!status.ok()) throw std::runtime_error("tokenizer '" + dir_ + "': " + status.ToString());
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
  int32_t bos_id() const override { return sp_.bos_id(); }
  int32_t eos_id() const override { return eos_; }
  // hf mode: every stretch gets a dummy prefix, so no cut leaves encode() unchanged.
  std::size_t next_cut(std::string_view text, std::size_t from) const override {
    return hf_ ? text.size() : Tokenizer::next_cut(text, from);
  }

 private:
  // The tokens transformers cuts out of the text before SentencePiece sees it: the
  // added_tokens_decoder of tokenizer_config.json, else the control and unknown pieces.
  void read_hf_added_tokens() {
    std::vector<AddedToken> tokens;
    const std::string file = (fs::path(dir_) / "tokenizer_config.json").string();
    std::error_code ec;
    if (fs::exists(file, ec)) {
      const hf_json::json config = hf_json::read(file);
      const hf_json::Where top{file, ""};
      if (config.is_object() && config.contains("added_tokens_decoder") && !config["added_tokens_decoder"].is_null()) {
        const hf_json::json& list = hf_json::need_object(config, "added_tokens_decoder", top);
        for (const auto& [key, e] : list.items()) {
          const hf_json::Where at = top / "added_tokens_decoder" / key;
          AddedToken t;
          try {
            t.id = std::stoi(key);
          } catch (const std::exception&) {
            at.fail("is not a token id");
          }
          if (t.id < 0 || t.id >= vocab_) at.fail("is outside the model's ids 0.." + std::to_string(vocab_ - 1));
          if (!e.is_object()) at.fail("is not an object");
          t.content = hf_json::get_string(e, "content", at);
          if (t.content.empty()) (at / "content").fail("is missing or empty");
          t.lstrip = hf_json::get_bool(e, "lstrip", at, false);
          t.rstrip = hf_json::get_bool(e, "rstrip", at, false);
          t.single_word = hf_json::get_bool(e, "single_word", at, false);
          t.special = hf_json::get_bool(e, "special", at, true);
          tokens.push_back(std::move(t));
        }
        added_ = AddedTokenMatcher(std::move(tokens));
        return;
      }
    }
    for (int id = 0; id < vocab_; ++id)
      if (sp_.IsControl(id) || sp_.IsUnknown(id)) tokens.push_back({sp_.IdToPiece(id), id});
    added_ = AddedTokenMatcher(std::move(tokens));
  }

  // transformers' LlamaTokenizer (legacy): added tokens first, SentencePiece on the rest.
  std::vector<int32_t> encode_hf(std::string_view text) const {
    std::vector<int32_t> out;
    std::vector<int> ids;
    for (const TextPiece& p : added_.split(text)) {
      if (p.id >= 0) {
        out.push_back(p.id);
        continue;
      }
      const auto status = sp_.Encode(p.text, &ids);
      if (!status.ok()) throw std::runtime_error("tokenizer '" + dir_ + "': " + status.ToString());
      out.insert(out.end(), ids.begin(), ids.end());
    }
    return out;
  }

  std::string dir_;
  sentencepiece::SentencePieceProcessor sp_;
  uint64_t fingerprint_ = 0;
  int vocab_ = 0;
  int eos_ = -1;
  std::array<int32_t, 256> byte_id_;
  std::vector<std::string> surface_;  // the text each id decodes to
  bool hf_ = false;                   // Hugging Face mode (see tokenizer.h)
  AddedTokenMatcher added_;           // hf mode: cut out of the text before SentencePiece
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& dir) {
  return std::make_unique<SentencePieceTokenizer>(dir);
}


}  // namespace kvroute
