// Hugging Face byte-level BPE tokenizers: tokenizer.json of GPT-2, Llama 3, Qwen2, SmolLM2
// and their kin. encode() follows the `tokenizers` library step by step:
//   1. added tokens (tokenizer.json added_tokens) are cut out of the raw text first, then
//      the normalizer (none, or NFC as Qwen2 has it; utf8proc) runs on the rest, and the
//      added tokens marked "normalized" are cut out of that;
//   2. every byte that is not part of a valid UTF-8 character becomes a piece of its own
//      (HF only ever sees valid text; this is kvroute's rule for the rest);
//   3. the pre-tokenizer's regexes cut the valid stretches into pieces, each match and
//      each gap between matches a piece (behaviour "Isolated"): Split's pattern, Digits,
//      and ByteLevel's GPT-2 pattern when use_regex;
//   4. each piece's bytes are spelled with ByteLevel's byte -> character map, and BPE
//      merges neighbouring symbols, lowest merge rank first (leftmost on ties), exactly
//      as tokenizers' Word::merge_all; with ignore_merges a piece that is itself in the
//      vocabulary is one token (Llama 3).
// decode() maps each token's characters back to bytes, so decode(encode(x)) == x (== NFC(x)
// with the NFC normalizer).
#include <pcre2.h>
#include <utf8proc.h>

#include <array>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <queue>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "added_tokens.h"
#include "hf_json.h"
#include "kvroute/input_file.h"
#include "kvroute/input_limits.h"
#include "kvroute/shard.h"
#include "kvroute/tokenizer.h"
#include "utf8.h"

namespace kvroute {

namespace fs = std::filesystem;
using hf_json::json;
using hf_json::Where;

namespace {

// tokenizers' ByteLevel pre-tokenizer with use_regex: the GPT-2 pattern.
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// GPT-2's bytes_to_unicode(): printable bytes stand for themselves, the others are
// moved to U+0100 upwards, so every byte is one visible character.
std::array<char32_t, 256> byte_to_char() {
  std::array<char32_t, 256> map{};
  std::array<bool, 256> kept{};
  for (int b = 0; b < 256; ++b) kept[b] = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) map[b] = kept[b] ? static_cast<char32_t>(b) : next++;
  return map;
}

struct Pcre2Deleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
using Regex = std::unique_ptr<pcre2_code, Pcre2Deleter>;

// Compiles a pattern as tokenizers' Rust regex reads it: UTF-8, Unicode classes (UCP).
Regex compile(const std::string& pattern, bool literal, const Where& at) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  const uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error,
                                   &offset, nullptr);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    at.fail("is not a valid regex (" + std::string(reinterpret_cast<char*>(message)) + " at offset " +
            std::to_string(offset) + "): " + pattern);
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // if JIT is not available, matching is interpreted
  return Regex(code);
}

// One pre-tokenizer step: a regex split (Isolated), or ByteLevel's prefix space.
struct Step {
  const pcre2_code* regex = nullptr;
  bool prefix_space = false;
};

struct MatchData {
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  ~MatchData() { pcre2_match_data_free(md); }
};

// When the pre-tokenization of the current piece must end (per encoding thread).
thread_local std::chrono::steady_clock::time_point pre_tokenize_deadline;

class HfBpeTokenizer final : public Tokenizer {
 public:
  explicit HfBpeTokenizer(const std::string& dir) : dir_(dir), file_((fs::path(dir) / "tokenizer.json").string()) {
    const std::string what = "tokenizer '" + file_ + "'";
    const std::string bytes = read_input_file(file_, limits::kJsonFileBytes, what);
    fingerprint_ = fnv1a64(bytes.data(), bytes.size());
    const json j = parse_input_json(bytes, what);
    const Where top{file_, ""};
    if (!j.is_object()) top.fail("is not a JSON object");
    read_model(j, top);
    read_added_tokens(j, top);
    read_normalizer(j, top);
    read_pre_tokenizer(j, top);
    // KVROUTE_PRETOKENIZE_SECONDS lowers the limit for tests.
    if (const char* env = std::getenv("KVROUTE_PRETOKENIZE_SECONDS"); env && std::atoi(env) > 0)
      pre_tokenize_limit_ = std::chrono::seconds(std::atoi(env));
    build_surfaces();
    read_bos_eos();
  }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    MatchData md;
    std::string word;
    for (const TextPiece& a : raw_tokens_.split(text)) {
      if (a.id >= 0) {
        out.push_back(a.id);
        continue;
      }
      std::string normalized;
      if (nfc_) normalized = nfc(a.text);
      for (const TextPiece& b : normalized_tokens_.split(nfc_ ? std::string_view(normalized) : a.text)) {
        if (b.id >= 0) {
          out.push_back(b.id);
          continue;
        }
        // Valid UTF-8 stretches go to the pre-tokenizer; each other byte is a piece.
        std::string_view s = b.text;
        std::size_t i = 0;
        while (i < s.size()) {
          std::size_t j = i;
          std::size_t n;
          while (j < s.size() && (n = utf8_char_length(s, j)) > 0) j += n;
          if (j > i) {
            pre_tokenize_deadline = std::chrono::steady_clock::now() + pre_tokenize_limit_;
            pre_tokenize(0, s.substr(i, j - i), out, md.md, word);
          }
          if (j < s.size()) bpe(s.substr(j, 1), out, word);
          i = j + 1;
        }
      }
    }
    return out;
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string s;
    s.reserve(ids.size() * 4);
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_size())
        throw std::out_of_range("tokenizer '" + dir_ + "': token id " + std::to_string(id) + " is outside 0.." +
                                std::to_string(vocab_size() - 1));
      s += surface_[id];
    }
    return s;
  }

  int vocab_size() const override { return static_cast<int>(surface_.size()); }
  std::string identity() const override {
    return "hf-bpe-" + std::to_string(vocab_size()) + "-" + fingerprint_hex(fingerprint_);
  }
  uint64_t fingerprint() const override { return fingerprint_; }
  std::vector<int32_t> document_separator() const override {
    if (eos_ >= 0) return {eos_};
    return encode("\n");
  }
  std::string piece(int32_t id) const override {
    if (id < 0 || id >= vocab_size()) return "<invalid " + std::to_string(id) + ">";
    if (pieces_[id].empty()) return "<unused " + std::to_string(id) + ">";
    return pieces_[id];
  }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }

  // A cut after "x\n" before "y" (x, y ASCII letters) is a boundary of every piece: no
  // pattern in use (GPT-2, Llama 3, Qwen2, Digits) matches across a newline into a
  // letter or looks behind. Added tokens that hold a newline or take whitespace along
  // could span it, so with those there is no cut.
  std::size_t next_cut(std::string_view text, std::size_t from) const override {
    if (!cuttable_) return text.size();
    const auto letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
    for (std::size_t nl = text.find('\n', from == 0 ? 0 : from - 1); nl != std::string_view::npos;
         nl = text.find('\n', nl + 1))
      if (nl > 0 && nl + 1 < text.size() && nl + 1 >= from && letter(text[nl - 1]) && letter(text[nl + 1]))
        return nl + 1;
    return text.size();
  }

 private:
  void read_model(const json& j, const Where& top) {
    const Where at = top / "model";
    const json& model = hf_json::need_object(j, "model", top);
    const std::string type = hf_json::get_string(model, "type", at);
    if (type != "BPE")
      (at / "type").fail("is " + (type.empty() ? std::string("missing") : "\"" + type + "\"") +
                         ": kvroute reads BPE models (byte-level BPE in tokenizer.json, or a SentencePiece tokenizer.model)");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (!hf_json::get_string(model, k, at).empty()) (at / k).fail("is set; byte-level BPE has none, kvroute supports none");
    if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"] != 0)
      (at / "dropout").fail("is set; kvroute encodes deterministically (no BPE dropout)");
    if (hf_json::get_bool(model, "byte_fallback", at, false))
      (at / "byte_fallback").fail("is true; a byte-level BPE needs no byte fallback (is this a SentencePiece-style file?)");
    ignore_merges_ = hf_json::get_bool(model, "ignore_merges", at, false);

    const json& vocab = hf_json::need_object(model, "vocab", at);
    for (const auto& [token, id] : vocab.items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= limits::kVocab)
        (at / "vocab" / token).fail("is not a token id (an integer in 0.." + std::to_string(limits::kVocab - 1) + ")");
      vocab_.emplace(token, static_cast<int32_t>(id.get<int64_t>()));
      max_id_ = std::max(max_id_, static_cast<int32_t>(id.get<int64_t>()));
    }
    if (vocab_.empty()) (at / "vocab").fail("is empty");
    const std::string unk = hf_json::get_string(model, "unk_token", at);
    if (!unk.empty()) {
      const auto it = vocab_.find(unk);
      if (it == vocab_.end()) (at / "unk_token").fail("names '" + unk + "', which is not in model.vocab");
      unk_ = it->second;
    }

    const json& merges = hf_json::need_array(model, "merges", at);
    merges_.reserve(merges.size());
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const Where m = (at / "merges")[r];
      std::string a, b;
      const json& e = merges[r];
      if (e.is_string()) {  // "a b", the older form (GPT-2's own file)
        const std::string s = e.get<std::string>();
        const std::size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          m.fail("is \"" + s + "\", not two tokens separated by one space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        m.fail("is neither \"a b\" nor [\"a\", \"b\"]");
      }
      const auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
      for (const auto& [it, name] : {std::pair{ia, a}, std::pair{ib, b}, std::pair{iab, a + b}})
        if (it == vocab_.end()) m.fail("names '" + name + "', which is not in model.vocab");
      merges_[pair_key(ia->second, ib->second)] = {static_cast<int32_t>(r), iab->second};  // a repeat wins, as in tokenizers
    }
  }

  void read_added_tokens(const json& j, const Where& top) {
    std::vector<AddedToken> raw, normalized;
    if (!j.contains("added_tokens") || j["added_tokens"].is_null()) return;
    const json& list = hf_json::need_array(j, "added_tokens", top);
    for (std::size_t i = 0; i < list.size(); ++i) {
      const Where at = (top / "added_tokens")[i];
      const json& e = list[i];
      if (!e.is_object()) at.fail("is not an object");
      AddedToken t;
      const json& id = hf_json::need(e, "id", at);
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= limits::kVocab)
        (at / "id").fail("is not a token id (an integer in 0.." + std::to_string(limits::kVocab - 1) + ")");
      t.id = static_cast<int32_t>(id.get<int64_t>());
      t.content = hf_json::get_string(e, "content", at);
      if (t.content.empty()) (at / "content").fail("is missing or empty");
      t.special = hf_json::get_bool(e, "special", at, false);
      t.lstrip = hf_json::get_bool(e, "lstrip", at, false);
      t.rstrip = hf_json::get_bool(e, "rstrip", at, false);
      t.single_word = hf_json::get_bool(e, "single_word", at, false);
      t.normalized = hf_json::get_bool(e, "normalized", at, !t.special);
      if (t.lstrip || t.rstrip || t.content.find('\n') != std::string::npos) cuttable_ = false;
      max_id_ = std::max(max_id_, t.id);
      added_.push_back(t);
      (t.normalized ? normalized : raw).push_back(t);
    }
    // tokenizers finds the tokens matched in the raw text first, then the others in what
    // is left (after normalization, which kvroute supports only as "none").
    raw_tokens_ = AddedTokenMatcher(std::move(raw));
    normalized_tokens_ = AddedTokenMatcher(std::move(normalized));
  }

  // None (null, an empty Sequence) or NFC (alone or as the one member of a Sequence).
  void read_normalizer(const json& j, const Where& top) {
    if (!j.contains("normalizer") || j["normalizer"].is_null()) return;
    const json* n = &j["normalizer"];
    const Where outer = top / "normalizer", inner = (outer / "normalizers")[0];
    bool in_sequence = false;
    std::string type = n->is_object() ? hf_json::get_string(*n, "type", outer) : "";
    if (type == "Sequence") {
      const json& list = hf_json::need_array(*n, "normalizers", outer);
      if (list.empty()) return;
      if (list.size() == 1 && list[0].is_object()) {
        n = &list[0];
        in_sequence = true;
        type = hf_json::get_string(*n, "type", inner);
      }
    }
    if (type == "NFC") {
      nfc_ = true;
      return;
    }
    (in_sequence ? inner : outer)
        .fail("is " + (type.empty() ? json_for_message(*n) : "\"" + type + "\"") +
              "; kvroute's byte-level BPE supports no normalizer (null) or NFC");
  }

  // NFC of the valid UTF-8 stretches of s; other bytes stay as they are.
  static std::string nfc(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) {
      std::size_t j = i, n;
      while (j < s.size() && (n = utf8_char_length(s, j)) > 0) j += n;
      if (j > i) {
        utf8proc_uint8_t* dst = nullptr;
        const auto len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                      static_cast<utf8proc_ssize_t>(j - i), &dst, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
        if (len >= 0)
          out.append(reinterpret_cast<const char*>(dst), static_cast<std::size_t>(len));
        else
          out.append(s.substr(i, j - i));
        std::free(dst);
      }
      if (j < s.size()) out.push_back(s[j]);
      i = j + 1;
    }
    return out;
  }

  void read_pre_tokenizer(const json& j, const Where& top) {
    const Where at = top / "pre_tokenizer";
    const json& p = hf_json::need_object(j, "pre_tokenizer", top);
    const std::string type = hf_json::get_string(p, "type", at);
    if (type == "ByteLevel") {
      read_byte_level(p, at);
    } else if (type == "Sequence") {
      const json& list = hf_json::need_array(p, "pretokenizers", at);
      if (list.empty()) (at / "pretokenizers").fail("is empty; it must end with a ByteLevel pre-tokenizer");
      if (list.size() > static_cast<std::size_t>(limits::kPreTokenizerSteps))
        (at / "pretokenizers")
            .fail("has " + std::to_string(list.size()) + " steps, over kvroute's limit of " +
                  std::to_string(limits::kPreTokenizerSteps));
      for (std::size_t i = 0; i < list.size(); ++i) {
        const Where e = (at / "pretokenizers")[i];
        if (!list[i].is_object()) e.fail("is not an object");
        const std::string t = hf_json::get_string(list[i], "type", e);
        const bool last = i + 1 == list.size();
        if (t == "ByteLevel" && last)
          read_byte_level(list[i], e);
        else if (t == "Split" && !last)
          read_split(list[i], e);
        else if (t == "Digits" && !last)
          add_regex(hf_json::get_bool(list[i], "individual_digits", e, false) ? "\\p{N}" : "\\p{N}+", false, e);
        else
          (e / "type")
              .fail("is \"" + t + "\"" + (last ? " at the end" : "") +
                    "; kvroute reads a Sequence of Split / Digits pre-tokenizers ending with ByteLevel");
      }
    } else {
      (at / "type").fail("is \"" + type + "\"; kvroute reads byte-level BPE (ByteLevel, or a Sequence ending with ByteLevel)");
    }
  }

  void read_byte_level(const json& p, const Where& at) {
    if (hf_json::get_bool(p, "add_prefix_space", at, true)) {
      steps_.push_back({nullptr, true});
      cuttable_ = false;  // the piece after a cut would get a space
    }
    if (hf_json::get_bool(p, "use_regex", at, true)) add_regex(kGpt2Pattern, false, at / "use_regex");
  }

  void read_split(const json& p, const Where& at) {
    const Where pw = at / "pattern";
    const json& pattern = hf_json::need_object(p, "pattern", at);
    const std::string behavior = hf_json::get_string(p, "behavior", at);
    if (behavior != "Isolated")
      (at / "behavior").fail("is \"" + behavior + "\"; kvroute supports \"Isolated\" (what byte-level BPE files use)");
    if (hf_json::get_bool(p, "invert", at, false)) (at / "invert").fail("is true; kvroute supports false");
    if (pattern.contains("Regex"))
      add_regex(hf_json::get_string(pattern, "Regex", pw), false, pw / "Regex");
    else if (pattern.contains("String"))
      add_regex(hf_json::get_string(pattern, "String", pw), true, pw / "String");
    else
      pw.fail("has neither Regex nor String");
  }

  void add_regex(const std::string& pattern, bool literal, const Where& at) {
    regexes_.push_back(compile(pattern, literal, at));
    steps_.push_back({regexes_.back().get(), false});
  }

  // What each id decodes to and how piece() shows it; the byte of each single-character token.
  void build_surfaces() {
    const auto map = byte_to_char();
    std::unordered_map<char32_t, int> char_byte;
    for (int b = 0; b < 256; ++b) {
      char_byte[map[b]] = b;
      std::string c;
      append_utf8(c, map[b]);
      byte_char_[b] = c;
      const auto it = vocab_.find(c);
      byte_id_[b] = it == vocab_.end() ? unk_ : it->second;
    }
    surface_.assign(static_cast<std::size_t>(max_id_) + 1, "");
    pieces_.assign(surface_.size(), "");
    for (const auto& [token, id] : vocab_) {
      pieces_[id] = token;
      // Characters outside the byte map leave the token as it is written (as tokenizers does).
      std::string bytes;
      bool mapped = true;
      for (std::size_t i = 0; i < token.size() && mapped;) {
        const std::size_t n = utf8_char_length(token, i);
        if (n == 0) break;
        const char32_t cp = utf8_decode(token, i, n);
        const auto it = char_byte.find(cp);
        if (it == char_byte.end()) mapped = false;
        else bytes.push_back(static_cast<char>(it->second));
        i += n;
      }
      surface_[id] = mapped ? bytes : token;
    }
    for (const AddedToken& t : added_) {
      surface_[t.id] = t.content;  // decoded as written, special or not (so round trips stay exact)
      pieces_[t.id] = t.content;
    }
  }

  // bos_token / eos_token of tokenizer_config.json, else of special_tokens_map.json.
  void read_bos_eos() {
    for (const char* name : {"tokenizer_config.json", "special_tokens_map.json"}) {
      const std::string file = (fs::path(dir_) / name).string();
      if (!fs::exists(file)) continue;
      const json c = hf_json::read(file);
      if (!c.is_object()) continue;
      const Where top{file, ""};
      for (auto [key, id] : {std::pair{"bos_token", &bos_}, std::pair{"eos_token", &eos_}}) {
        if (*id >= 0 || !c.contains(key)) continue;
        const std::string content = hf_json::token_content(c[key], top / key);
        if (content.empty()) continue;
        *id = token_id(content);
        if (*id < 0) (top / key).fail("names '" + content + "', which is neither an added token nor in the vocabulary");
      }
    }
  }

  int32_t token_id(const std::string& content) const {
    for (const AddedToken& t : added_)
      if (t.content == content) return t.id;
    const auto it = vocab_.find(content);
    return it == vocab_.end() ? -1 : it->second;
  }

  // Applies pre-tokenizer steps [step, end) to a piece of valid UTF-8, then BPE.
  void pre_tokenize(std::size_t step, std::string_view piece, std::vector<int32_t>& out, pcre2_match_data* md,
                    std::string& word) const {
    if (piece.empty()) return;
    if (step == steps_.size()) return bpe(piece, out, word);
    const Step& s = steps_[step];
    if (s.prefix_space) {
      if (piece.front() == ' ') return pre_tokenize(step + 1, piece, out, md, word);
      std::string spaced(1, ' ');
      spaced += piece;
      return pre_tokenize(step + 1, spaced, out, md, word);
    }
    std::size_t last = 0, pos = 0;
    for (unsigned matches = 0; pos < piece.size(); ++matches) {
      // A regex whose work grows with the square of the text (`[a-z]*@|[a-z]` on a long line of
      // letters) would run for hours with no sign of life: after a bounded time it is an error.
      if ((matches & 255) == 255 && std::chrono::steady_clock::now() > pre_tokenize_deadline)
        throw std::runtime_error("tokenizer '" + file_ + "': the pre-tokenizer regex took over " +
                                 std::to_string(pre_tokenize_limit_.count()) + " s on one piece of " +
                                 std::to_string(piece.size()) +
                                 " bytes (its work grows faster than the text; split long lines)");
      int rc = pcre2_match(s.regex, reinterpret_cast<PCRE2_SPTR>(piece.data()), piece.size(), pos, PCRE2_NO_UTF_CHECK,
                           md, nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // a very long piece: the interpreter has no such limit
        rc = pcre2_match(s.regex, reinterpret_cast<PCRE2_SPTR>(piece.data()), piece.size(), pos,
                         PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        throw std::runtime_error("tokenizer '" + file_ + "': the pre-tokenizer regex failed on a piece of " +
                                 std::to_string(piece.size()) + " bytes (" + reinterpret_cast<char*>(message) + ")");
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const std::size_t start = ov[0], end = ov[1];
      if (end == start) {  // an empty match cuts nothing; look again one character on
        pos = start + std::max<std::size_t>(1, utf8_char_length(piece, start));
        continue;
      }
      if (start > last) pre_tokenize(step + 1, piece.substr(last, start - last), out, md, word);
      pre_tokenize(step + 1, piece.substr(start, end - start), out, md, word);
      last = pos = end;
    }
    if (last < piece.size()) pre_tokenize(step + 1, piece.substr(last), out, md, word);
  }

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // BPE of one piece (raw bytes), as tokenizers' Word::merge_all.
  void bpe(std::string_view piece, std::vector<int32_t>& out, std::string& word) const {
    if (ignore_merges_) {
      word.clear();
      for (char c : piece) word += byte_char_[static_cast<unsigned char>(c)];
      const auto it = vocab_.find(word);
      if (it != vocab_.end()) return out.push_back(it->second);
    }
    struct Symbol {
      int32_t id;
      int prev, next;
      bool gone;
    };
    std::vector<Symbol> sym;
    sym.reserve(piece.size());
    for (char c : piece) {
      const int32_t id = byte_id_[static_cast<unsigned char>(c)];
      if (id < 0) continue;  // neither in the vocabulary nor an unk token: tokenizers drops it too
      sym.push_back({id, static_cast<int>(sym.size()) - 1, static_cast<int>(sym.size()) + 1, false});
    }
    if (sym.size() > 1) {
      struct Merge {
        int pos;
        int32_t rank, id;
        bool operator<(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
      };
      std::priority_queue<Merge> queue;
      const auto push = [&](int pos) {
        const int nx = sym[pos].next;
        const auto it = merges_.find(pair_key(sym[pos].id, sym[nx].id));
        if (it != merges_.end()) queue.push({pos, it->second.first, it->second.second});
      };
      const int n = static_cast<int>(sym.size());
      for (int i = 0; i + 1 < n; ++i) push(i);
      while (!queue.empty()) {
        const Merge m = queue.top();
        queue.pop();
        Symbol& left = sym[m.pos];
        if (left.gone || left.next >= n) continue;
        Symbol& right = sym[left.next];
        const auto it = merges_.find(pair_key(left.id, right.id));
        if (it == merges_.end() || it->second.second != m.id) continue;  // stale: a neighbour merged first
        left.id = m.id;
        right.gone = true;
        left.next = right.next;
        if (left.next < n) sym[left.next].prev = m.pos;
        if (left.prev >= 0) push(left.prev);
        if (left.next < n) push(m.pos);
      }
    }
    for (const Symbol& s : sym)
      if (!s.gone) out.push_back(s.id);
  }

  std::string dir_, file_;
  uint64_t fingerprint_ = 0;
  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left, right) -> (rank, merged id)
  bool ignore_merges_ = false;
  bool nfc_ = false;  // the NFC normalizer
  int32_t unk_ = -1, bos_ = -1, eos_ = -1, max_id_ = -1;
  std::chrono::seconds pre_tokenize_limit_{limits::kPreTokenizeSeconds};
  std::vector<AddedToken> added_;
  AddedTokenMatcher raw_tokens_, normalized_tokens_;
  std::vector<Regex> regexes_;
  std::vector<Step> steps_;
  bool cuttable_ = true;
  std::array<std::string, 256> byte_char_;  // each byte's ByteLevel character, UTF-8
  std::array<int32_t, 256> byte_id_;        // its token id (unk or -1 when missing)
  std::vector<std::string> surface_, pieces_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_hf_bpe_tokenizer(const std::string& dir) {
  return std::make_unique<HfBpeTokenizer>(dir);
}

}  // namespace kvroute
