// load_tokenizer: which kind of tokenizer a directory holds (tokenizer.h).
#include <filesystem>
#include <stdexcept>

#include "hf_json.h"
#include "kvroute/hf_tokenizer_json.h"
#include "kvroute/input_file.h"
#include "kvroute/tokenizer.h"

namespace kvroute {

namespace fs = std::filesystem;

std::size_t Tokenizer::next_cut(std::string_view text, std::size_t from) const {
  if (from >= text.size()) return text.size();
  const std::size_t nl = text.find('\n', from == 0 ? 0 : from - 1);
  return nl == std::string_view::npos ? text.size() : nl + 1;
}

namespace {

// "" when tokenizer.json describes a byte-level BPE; otherwise why not, naming the key.
std::string not_byte_level_bpe(const hf_json::json& j) {
  if (!j.is_object()) return "is not a JSON object";
  const auto model = j.find("model");
  if (model == j.end() || !model->is_object()) return "key model is missing";
  const auto type = model->find("type");
  const std::string t = type != model->end() && type->is_string() ? type->get<std::string>() : "";
  if (t != "BPE") return "key model.type is " + (t.empty() ? std::string("missing") : "\"" + t + "\"");
  const auto pre = j.find("pre_tokenizer");
  if (pre == j.end() || !pre->is_object()) return "key pre_tokenizer is missing";
  const std::string pt = pre->value("type", "");
  if (pt == "ByteLevel") return "";
  if (pt == "Sequence" && pre->contains("pretokenizers") && (*pre)["pretokenizers"].is_array())
    for (const auto& p : (*pre)["pretokenizers"])
      if (p.is_object() && p.value("type", "") == "ByteLevel") return "";
  return "key pre_tokenizer.type is \"" + pt + "\", not ByteLevel";
}

}  // namespace

namespace {

std::unique_ptr<Tokenizer> load_tokenizer_files(const std::string& spec) {
  if (spec == "byte") return make_byte_tokenizer();
  if (spec.empty()) throw std::runtime_error("data.tokenizer is empty (use \"byte\" or a tokenizer directory)");
  const fs::path json_file = fs::path(spec) / "tokenizer.json";
  std::error_code ec;
  if (fs::is_directory(spec, ec) && fs::exists(json_file, ec)) {
    const hf_json::json j = hf_json::read(json_file.string());
    // What `kvroute export hf` writes for the byte tokenizer comes back as the byte tokenizer,
    // so data encoded with "byte" still matches (its fingerprint).
    if (is_byte_tokenizer_json(j)) return make_byte_tokenizer();
    const std::string why = not_byte_level_bpe(j);
    if (why.empty()) return load_hf_bpe_tokenizer(spec);
    if (!fs::exists(fs::path(spec) / "tokenizer.model", ec))
      throw std::runtime_error("tokenizer '" + json_file.string() + "': " + why +
                               "; kvroute reads byte-level BPE (model.type BPE with a ByteLevel pre-tokenizer) "
                               "or a SentencePiece tokenizer.model, and the directory has no tokenizer.model");
  }
  return load_sentencepiece_tokenizer(spec);
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  try {
    return load_tokenizer_files(spec);
  } catch (const std::bad_alloc&) {
    throw std::runtime_error("tokenizer '" + spec + "': out of memory while loading it (a size in its files is "
                             "larger than this machine holds)");
  }
}

std::vector<std::string> hf_tokenizer_files(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                           "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.vocab", "tokenizer.yaml"})
    if (fs::exists(fs::path(dir) / name, ec)) {
      // A FIFO or device under a tokenizer file's name is refused here, before anyone blocks on it.
      require_regular_file((fs::path(dir) / name).string(), "tokenizer file '" + (fs::path(dir) / name).string() + "'");
      out.push_back(name);
    }
  return out;
}

}  // namespace kvroute
