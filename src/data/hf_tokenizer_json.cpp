// kvroute's tokenizers in Hugging Face's fast-tokenizer form (hf_tokenizer_json.h).
#include "kvroute/hf_tokenizer_json.h"

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <unordered_map>

#include "hf_json.h"
#include "kvroute/input_file.h"
#include "kvroute/input_limits.h"
#include "kvroute/tokenizer.h"
#include "sentencepiece_spec.h"
#include "utf8.h"

namespace kvroute {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kMetaSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's escaped space

// GPT-2's byte <-> printable-character table: bytes that print as themselves keep their code
// point, the rest take 256, 257, ... in byte order.
std::string byte_char_utf8(int b) {
  auto printable = [](int x) { return (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF); };
  int cp = b;
  if (!printable(b)) {
    int n = 0;
    for (int x = 0; x < b; ++x) n += !printable(x);
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {  // every code point here is below 0x800: two bytes
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

json byte_tokenizer() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char_utf8(b)] = b;
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
                           {"use_regex", false}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", byte_level},
          {"post_processor", nullptr},
          {"decoder", byte_level},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", json::array()}}}};
}

json plain_sentencepiece_normalizer() {
  return {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMetaSpace}};
}

// What makes SentencePiece's encoding equal to the pipeline written below; anything else is a
// model kvroute did not train (an imported one goes out as it came, hf_export.cpp).
void check_kvroute_trained(const SentencePieceSpec& s, const std::string& file) {
  auto refuse = [&](const std::string& what) {
    throw std::runtime_error("tokenizer '" + file + "': " + what +
                             "; a tokenizer.json is written only for kvroute's own SentencePiece models "
                             "(`kvroute data tokenizer`: identity normalization, no dummy prefix, byte fallback)");
  };
  if (s.model_type != "unigram" && s.model_type != "bpe") refuse("model_type is " + s.model_type);
  if (!s.byte_fallback) refuse("byte_fallback is false");
  if (s.add_dummy_prefix) refuse("add_dummy_prefix is true");
  if (s.remove_extra_whitespaces) refuse("remove_extra_whitespaces is true");
  if (!s.escape_whitespaces) refuse("escape_whitespaces is false");
  if (s.treat_whitespace_as_suffix) refuse("treat_whitespace_as_suffix is true");
  if (s.normalization_rule != "identity") refuse("the normalization is '" + s.normalization_rule + "', not identity");
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    const bool has = std::any_of(s.pieces.begin(), s.pieces.end(), [&](const SentencePieceSpec::Piece& p) {
      return p.type == SentencePieceSpec::PieceType::kByte && p.text == name;
    });
    if (!has) refuse(std::string("it has no byte piece ") + name);
  }
}

// The byte offsets at which a piece may be split into two non-empty halves (character
// boundaries of its UTF-8).
std::vector<std::size_t> char_boundaries(const std::string& s) {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = std::max<std::size_t>(1, utf8_char_length(s, i));
    i += n;
    if (i < s.size()) out.push_back(i);
  }
  return out;
}

// SentencePiece's BPE merges, for Hugging Face's rank-ordered BPE: SentencePiece merges the
// adjacent pair whose concatenation is the highest-scoring piece, so every split of a piece
// into two pieces is a merge, ranked by the piece's score (then id, then the halves' ids).
json sentencepiece_bpe_merges(const SentencePieceSpec& s) {
  using Type = SentencePieceSpec::PieceType;
  std::unordered_map<std::string, int> normal;  // only normal pieces take part in merging
  for (int id = 0; id < static_cast<int>(s.pieces.size()); ++id)
    if (s.pieces[id].type == Type::kNormal || s.pieces[id].type == Type::kUserDefined) normal.emplace(s.pieces[id].text, id);
  struct Merge {
    float score;
    int id, left, right;
    std::size_t cut;
  };
  std::vector<Merge> merges;
  for (const auto& [text, id] : normal)
    for (std::size_t cut : char_boundaries(text)) {
      const auto l = normal.find(text.substr(0, cut));
      const auto r = normal.find(text.substr(cut));
      if (l != normal.end() && r != normal.end()) merges.push_back({s.pieces[id].score, id, l->second, r->second, cut});
    }
  std::sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.id != b.id) return a.id < b.id;
    if (a.left != b.left) return a.left < b.left;
    return a.right < b.right;
  });
  json out = json::array();
  for (const Merge& m : merges) {
    const std::string& text = s.pieces[m.id].text;
    out.push_back(json::array({text.substr(0, m.cut), text.substr(m.cut)}));
  }
  return out;
}

json sentencepiece_tokenizer(const SentencePieceSpec& s) {
  using Type = SentencePieceSpec::PieceType;
  json added = json::array();
  int unk_id = -1;
  for (int id = 0; id < static_cast<int>(s.pieces.size()); ++id) {
    const SentencePieceSpec::Piece& p = s.pieces[id];
    if (p.type == Type::kUnknown && unk_id < 0) unk_id = id;
    if (p.type == Type::kUnknown || p.type == Type::kControl)
      added.push_back({{"id", id}, {"content", p.text}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  json model;
  if (s.model_type == "unigram") {
    json vocab = json::array();
    for (const auto& p : s.pieces) vocab.push_back(json::array({p.text, static_cast<double>(p.score)}));
    model = {{"type", "Unigram"}, {"unk_id", unk_id < 0 ? json(nullptr) : json(unk_id)}, {"vocab", vocab},
             {"byte_fallback", true}};
  } else {
    json vocab = json::object();
    for (int id = 0; id < static_cast<int>(s.pieces.size()); ++id) vocab[s.pieces[id].text] = id;
    model = {{"type", "BPE"},
             {"dropout", nullptr},
             {"unk_token", unk_id < 0 ? json(nullptr) : json(s.pieces[unk_id].text)},
             {"continuing_subword_prefix", nullptr},
             {"end_of_word_suffix", nullptr},
             {"fuse_unk", true},
             {"byte_fallback", true},
             {"ignore_merges", false},
             {"vocab", vocab},
             {"merges", sentencepiece_bpe_merges(s)}};
  }
  const json decoder = {
      {"type", "Sequence"},
      {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", kMetaSpace}}}, {"content", " "}},
                                {{"type", "ByteFallback"}},
                                {{"type", "Fuse"}}})}};
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", plain_sentencepiece_normalizer()},
          {"pre_tokenizer", nullptr},
          {"post_processor", nullptr},
          {"decoder", decoder},
          {"model", model}};
}

}  // namespace

HfFastTokenizer hf_fast_tokenizer(const std::string& spec, int model_max_length) {
  HfFastTokenizer out;
  json config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                 {"model_max_length", model_max_length},
                 {"clean_up_tokenization_spaces", false}};
  if (spec == "byte") {
    out.kind = "byte";
    out.tokenizer_json = byte_tokenizer().dump(1) + "\n";
    out.tokenizer_config_json = config.dump(2) + "\n";
    return out;
  }
  const std::string file = (fs::path(spec) / "tokenizer.model").string();
  std::error_code ec;
  if (!fs::exists(file, ec)) throw std::runtime_error("tokenizer '" + spec + "': no tokenizer.model in it");
  const std::string proto = read_input_file(file, limits::kSentencePieceModelBytes, "tokenizer '" + file + "'");
  const SentencePieceSpec s = parse_sentencepiece_spec(proto, file);
  check_kvroute_trained(s, file);
  out.kind = "sentencepiece " + s.model_type;
  out.tokenizer_json = sentencepiece_tokenizer(s).dump(1) + "\n";
  // kvroute's SentencePiece ids 0, 1, 2 are <unk>, <s>, </s> (tokenizer.h); no BOS is added,
  // as kvroute adds none when it encodes.
  using Type = SentencePieceSpec::PieceType;
  auto piece_of = [&](Type t, const std::string& text) {
    for (const auto& p : s.pieces)
      if (p.type == t && (text.empty() || p.text == text)) return json(p.text);
    return json(nullptr);
  };
  config["unk_token"] = piece_of(Type::kUnknown, "");
  config["bos_token"] = piece_of(Type::kControl, "<s>");
  config["eos_token"] = piece_of(Type::kControl, "</s>");
  config["add_bos_token"] = false;
  config["add_eos_token"] = false;
  out.tokenizer_config_json = config.dump(2) + "\n";
  return out;
}

bool is_byte_tokenizer_json(const json& j) {
  static const json canonical = byte_tokenizer();
  return j == canonical;
}

bool declares_plain_sentencepiece(const json& j) {
  return j.is_object() && j.contains("normalizer") && j["normalizer"] == plain_sentencepiece_normalizer() &&
         (!j.contains("pre_tokenizer") || j["pre_tokenizer"].is_null());
}

}  // namespace kvroute
