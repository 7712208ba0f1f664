// Reading Hugging Face tokenizer JSON files (hf_json.h).
#include "hf_json.h"

#include <stdexcept>

#include "kvroute/input_file.h"
#include "kvroute/input_limits.h"

namespace kvroute::hf_json {

json read(const std::string& file) {
  const std::string what = "tokenizer '" + file + "'";
  return parse_input_json(read_input_file(file, limits::kJsonFileBytes, what), what);
}

void Where::fail(const std::string& problem) const {
  throw std::runtime_error("tokenizer '" + file + "': key " + (key.empty() ? "(top level)" : key) + " " + problem);
}

namespace {
const char* type_name(const json& v) { return v.type_name(); }
}  // namespace

const json& need(const json& j, const std::string& k, const Where& at) {
  if (!j.is_object()) at.fail("is a " + std::string(type_name(j)) + ", not an object");
  const auto it = j.find(k);
  if (it == j.end() || it->is_null()) (at / k).fail("is missing");
  return *it;
}

std::string get_string(const json& j, const std::string& k, const Where& at, const std::string& fallback) {
  const auto it = j.find(k);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string()) (at / k).fail("is a " + std::string(type_name(*it)) + ", not a string");
  return it->get<std::string>();
}

bool get_bool(const json& j, const std::string& k, const Where& at, bool fallback) {
  const auto it = j.find(k);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) (at / k).fail("is a " + std::string(type_name(*it)) + ", not true or false");
  return it->get<bool>();
}

const json& need_object(const json& j, const std::string& k, const Where& at) {
  const json& v = need(j, k, at);
  if (!v.is_object()) (at / k).fail("is a " + std::string(type_name(v)) + ", not an object");
  return v;
}

const json& need_array(const json& j, const std::string& k, const Where& at) {
  const json& v = need(j, k, at);
  if (!v.is_array()) (at / k).fail("is a " + std::string(type_name(v)) + ", not an array");
  return v;
}

std::string token_content(const json& v, const Where& at) {
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object()) return get_string(v, "content", at);
  at.fail("is a " + std::string(type_name(v)) + ", not a token (a string or {\"content\": ...})");
}

}  // namespace kvroute::hf_json
