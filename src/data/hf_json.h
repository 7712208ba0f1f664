// Reading Hugging Face tokenizer JSON files (tokenizer.json, tokenizer_config.json,
// special_tokens_map.json) with errors that name the file and the key.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace kvroute::hf_json {

using json = nlohmann::json;

// The parsed file; throws "tokenizer '<file>': ..." when it cannot be read or is not JSON.
json read(const std::string& file);

// A JSON file and the key path of a value in it, for error messages.
struct Where {
  const std::string& file;
  std::string key;  // "model.vocab", "added_tokens[3].content"; "" for the top level
  Where operator/(const std::string& k) const { return {file, key.empty() ? k : key + "." + k}; }
  Where operator[](std::size_t i) const { return {file, key + "[" + std::to_string(i) + "]"}; }
  // "tokenizer '<file>': key <key> <problem>"
  [[noreturn]] void fail(const std::string& problem) const;
};

// j[k], which must exist (and not be null).
const json& need(const json& j, const std::string& k, const Where& at);
// j[k] as a string / bool / object / array, with `fallback` when absent or null (the
// default of `tokenizers`), or an error naming the key when it has another type.
std::string get_string(const json& j, const std::string& k, const Where& at, const std::string& fallback = "");
bool get_bool(const json& j, const std::string& k, const Where& at, bool fallback);
const json& need_object(const json& j, const std::string& k, const Where& at);
const json& need_array(const json& j, const std::string& k, const Where& at);
// A special token as tokenizer_config.json writes it: a string, {"content": ...}, or null ("").
std::string token_content(const json& v, const Where& at);

}  // namespace kvroute::hf_json
