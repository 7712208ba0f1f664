// config.json <-> ModelConfig for the supported Hugging Face architectures.
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <limits>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "kvroute/hf_model.h"
#include "kvroute/input_file.h"
#include "kvroute/input_limits.h"

namespace kvroute {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct Architecture {
  const char* name;
  const char* model_type;
  bool qkv_bias;         // the family always has q/k/v biases (Qwen2)
  bool qk_norm;          // the family always has q/k RMSNorm (Qwen3)
  int default_head_dim;  // 0 = hidden_size / num_attention_heads when config.json has no head_dim
};

constexpr Architecture kArchitectures[] = {
    {"LlamaForCausalLM", "llama", false, false, 0},
    {"MistralForCausalLM", "mistral", false, false, 0},
    {"Qwen2ForCausalLM", "qwen2", true, false, 0},
    {"Qwen3ForCausalLM", "qwen3", false, true, 128},
};

const Architecture* find_architecture(const std::string& name) {
  for (const Architecture& a : kArchitectures)
    if (name == a.name) return &a;
  return nullptr;
}

std::string supported_list() {
  std::string s;
  for (const Architecture& a : kArchitectures) s += std::string(s.empty() ? "" : ", ") + a.name;
  return s;
}

// Typed access to config.json keys, every error naming the file and the key.
class Keys {
 public:
  Keys(const json& j, std::string path) : j_(j), path_(std::move(path)) {}
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw std::runtime_error("Hugging Face config '" + path_ + "': " + key + ": " + what);
  }
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  const json& at(const char* key) const { return j_[key]; }
  // An integer in [lo, hi]: a fraction, or a value past hi (2^32 + 2 layers), is refused rather
  // than truncated.
  long integer(const char* key, long lo = 0, long hi = std::numeric_limits<int>::max()) const {
    if (!has(key)) fail(key, "missing");
    const json& v = j_[key];
    if (!v.is_number_integer()) fail(key, "expected an integer, got " + json_for_message(v));
    if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(hi) : v.get<int64_t>() > hi)
      fail(key, json_for_message(v) + " is over kvroute's limit of " + std::to_string(hi));
    if (!v.is_number_unsigned() && v.get<int64_t>() < lo)
      fail(key, json_for_message(v) + " is below " + std::to_string(lo));
    return static_cast<long>(v.get<int64_t>());
  }
  long integer_or(const char* key, long fallback, long lo = 0, long hi = std::numeric_limits<int>::max()) const {
    return has(key) ? integer(key, lo, hi) : fallback;
  }
  double number(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_number()) fail(key, "expected a number, got " + json_for_message(j_[key]));
    return j_[key].get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) fail(key, "expected true or false, got " + json_for_message(j_[key]));
    return j_[key].get<bool>();
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_string()) fail(key, "expected a string, got " + json_for_message(j_[key]));
    return j_[key].get<std::string>();
  }
  // A token id key may be a number or a list of numbers (Llama 3.1's eos_token_id); the first is kept.
  int token_id(const char* key) const {
    if (!has(key)) return -1;
    const json& v = j_[key];
    const json& id = v.is_array() && !v.empty() ? v[0] : v;
    if (id.is_number_integer()) {
      if (id.get<int64_t>() < 0 || id.get<int64_t>() >= limits::kVocab)
        fail(key, json_for_message(id) + " is not a token id in 0.." + std::to_string(limits::kVocab - 1));
      return static_cast<int>(id.get<int64_t>());
    }
    fail(key, "expected a token id or a list of them, got " + json_for_message(v));
  }

 private:
  const json& j_;
  std::string path_;
};

// rope_scaling (transformers 4) or rope_parameters (transformers 5) into the model config.
void read_rope(const Keys& keys, const json& root, ModelConfig& m) {
  m.rope_theta = keys.number("rope_theta", 10000.0);
  const char* key = keys.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  if (!keys.has(key)) return;
  const json& r = root[key];
  if (!r.is_object()) keys.fail(key, "expected an object, got " + json_for_message(r));
  const Keys rk(r, "");
  auto sub_fail = [&](const std::string& sub, const std::string& what) { keys.fail(std::string(key) + "." + sub, what); };
  if (r.contains("rope_theta")) {
    if (!r["rope_theta"].is_number()) sub_fail("rope_theta", "expected a number");
    m.rope_theta = r["rope_theta"].get<double>();
  }
  std::string type = "default";
  for (const char* k : {"rope_type", "type"})
    if (r.contains(k) && r[k].is_string()) type = r[k].get<std::string>();
  if (type == "default") return;
  if (type != "llama3")
    sub_fail("rope_type", "'" + type + "' scaling is not supported (kvroute has none and llama3)");
  auto num = [&](const char* k) {
    if (!r.contains(k) || !r[k].is_number()) sub_fail(k, "missing or not a number (llama3 scaling needs it)");
    return r[k].get<double>();
  };
  m.rope_scaling = "llama3";
  m.rope_factor = num("factor");
  m.rope_low_freq_factor = num("low_freq_factor");
  m.rope_high_freq_factor = num("high_freq_factor");
  const double original = num("original_max_position_embeddings");
  if (original != std::floor(original) || original < 1 || original > limits::kContext)
    sub_fail("original_max_position_embeddings", "expected a whole number of positions in 1.." +
                                                      std::to_string(limits::kContext) + ", got " +
                                                      json_for_message(r["original_max_position_embeddings"]));
  m.rope_original_context = static_cast<int>(original);
}

}  // namespace

HfModelConfig parse_hf_config(const std::string& json_text, const std::string& path) {
  const json root = parse_input_json(json_text, "Hugging Face config '" + path + "'");
  if (!root.is_object()) throw std::runtime_error("Hugging Face config '" + path + "' is not a JSON object");
  const Keys keys(root, path);

  HfModelConfig out;
  if (!keys.has("architectures") || !root["architectures"].is_array() || root["architectures"].size() != 1 ||
      !root["architectures"][0].is_string())
    keys.fail("architectures", "expected a list of one architecture name (" + supported_list() + ")");
  out.architecture = root["architectures"][0].get<std::string>();
  const Architecture* arch = find_architecture(out.architecture);
  if (!arch) keys.fail("architectures", "'" + out.architecture + "' is not supported (" + supported_list() + ")");

  // Features kvroute does not have: refused, never silently dropped.
  for (const char* moe : {"num_experts", "num_local_experts", "n_routed_experts"})
    if (keys.has(moe) && keys.integer(moe) > 0) keys.fail(moe, "mixture-of-experts models are not supported");
  if (keys.has("quantization_config"))
    keys.fail("quantization_config", "quantized weights (fp8, int4, ...) are not supported; use a bf16/fp16/fp32 model");
  if (keys.string("hidden_act", "silu") != "silu")
    keys.fail("hidden_act", "'" + keys.string("hidden_act", "") + "' is not supported (kvroute's MLP is SwiGLU: silu)");
  if (keys.boolean("mlp_bias", false)) keys.fail("mlp_bias", "biases on the MLP projections are not supported");
  if (keys.boolean("attention_bias", false))
    keys.fail("attention_bias", "a bias on the attention output projection is not supported");
  const bool sliding = out.architecture == "Qwen2ForCausalLM" || out.architecture == "Qwen3ForCausalLM"
                           ? keys.boolean("use_sliding_window", false)
                           : keys.has("sliding_window");
  if (sliding)
    keys.fail(keys.has("use_sliding_window") ? "use_sliding_window" : "sliding_window",
              "sliding-window attention is not supported (kvroute attends to the whole context)");
  if (keys.has("layer_types")) {
    if (!root["layer_types"].is_array()) keys.fail("layer_types", "expected a list, got " + json_for_message(root["layer_types"]));
    for (const json& t : root["layer_types"])
      if (t != "full_attention") keys.fail("layer_types", "layer type " + json_for_message(t) + " is not supported");
  }

  ModelConfig& m = out.model;
  // Shapes are checked against kvroute's limits (input_limits.h) before anything is sized by them.
  m.vocab_size = static_cast<int>(keys.integer("vocab_size", 1, limits::kVocab));
  m.d_model = static_cast<int>(keys.integer("hidden_size", 1, limits::kWidth));
  m.n_layers = static_cast<int>(keys.integer("num_hidden_layers", 1, limits::kLayers));
  m.n_heads = static_cast<int>(keys.integer("num_attention_heads", 1, limits::kHeads));
  m.n_kv_heads = static_cast<int>(keys.integer_or("num_key_value_heads", m.n_heads, 1, limits::kHeads));
  m.d_ff = static_cast<int>(keys.integer("intermediate_size", 1, limits::kWidth));
  m.context = static_cast<int>(keys.integer("max_position_embeddings", 1, limits::kContext));
  m.norm_eps = keys.number("rms_norm_eps", 1e-6);
  m.tie_embeddings = keys.boolean("tie_word_embeddings", false);
  m.qkv_bias = arch->qkv_bias;
  m.qk_norm = arch->qk_norm;
  // head_dim null or absent: the family's default (hidden_size / heads where that is 0).
  const long head_dim = keys.integer_or("head_dim", arch->default_head_dim, 1, limits::kWidth);
  if (m.n_heads <= 0) keys.fail("num_attention_heads", "must be positive");
  if (m.n_kv_heads <= 0 || m.n_heads % m.n_kv_heads != 0)
    keys.fail("num_key_value_heads", "must divide num_attention_heads (" + std::to_string(m.n_heads) + ")");
  // head_dim is kept explicit only when it differs from hidden_size / heads (today's models unchanged).
  m.head_dim = head_dim > 0 && head_dim * m.n_heads != m.d_model ? static_cast<int>(head_dim) : 0;
  if (head_dim <= 0 && m.d_model % m.n_heads != 0)
    keys.fail("hidden_size", "is not a multiple of num_attention_heads and there is no head_dim");
  read_rope(keys, root, m);
  out.dtype = keys.string("torch_dtype", keys.string("dtype", ""));
  out.bos_token_id = keys.token_id("bos_token_id");
  out.eos_token_id = keys.token_id("eos_token_id");
  return out;
}

HfModelConfig read_hf_config(const std::string& dir) {
  const fs::path path = fs::path(dir) / "config.json";
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw std::runtime_error("Hugging Face model folder '" + dir + "': no such directory");
  if (!fs::exists(path, ec))
    throw std::runtime_error("Hugging Face model folder '" + dir + "' has no config.json");
  const std::string what = "Hugging Face config '" + path.string() + "'";
  return parse_hf_config(read_input_file(path.string(), limits::kJsonFileBytes, what), path.string());
}

bool is_hf_model_dir(const std::string& dir) {
  std::error_code ec;
  return fs::is_directory(dir, ec) && fs::exists(fs::path(dir) / "config.json", ec);
}

bool adopt_hf_model_config(Config& cfg, std::vector<std::string>& notes) {
  if (cfg.model.init_from.empty() || !is_hf_model_dir(cfg.model.init_from)) return false;
  const HfModelConfig hf = read_hf_config(cfg.model.init_from);
  ModelConfig m = hf.model;
  m.init_std = cfg.model.init_std;
  m.init_from = cfg.model.init_from;
  cfg.model = m;
  notes.push_back("model keys taken from " + cfg.model.init_from + "/config.json (" + hf.architecture + ")");
  return true;
}

std::string hf_architecture_for(const ModelConfig& m) {
  if (m.qk_norm && m.qkv_bias)
    throw std::runtime_error("no supported Hugging Face architecture has both q/k norms and q/k/v biases "
                             "(model.qk_norm and model.qkv_bias)");
  if (m.qk_norm) return "Qwen3ForCausalLM";
  if (m.qkv_bias) return "Qwen2ForCausalLM";
  return "LlamaForCausalLM";
}

std::string hf_config_json(const ModelConfig& m, const std::string& architecture, const std::string& dtype,
                           int bos_token_id, int eos_token_id, const std::string& kvroute_block_json) {
  const std::string name = architecture.empty() ? hf_architecture_for(m) : architecture;
  const Architecture* arch = find_architecture(name);
  if (!arch) throw std::runtime_error("export: architecture '" + name + "' is not supported (" + supported_list() + ")");
  if (m.qkv_bias != arch->qkv_bias || m.qk_norm != arch->qk_norm)
    throw std::runtime_error("export: " + name + " cannot hold this model (model.qkv_bias " +
                             (m.qkv_bias ? "true" : "false") + ", model.qk_norm " + (m.qk_norm ? "true" : "false") +
                             "); use " + hf_architecture_for(m));
  const int head_dim = m.head_dim > 0 ? m.head_dim : m.d_model / m.n_heads;
  json j;
  j["architectures"] = {name};
  j["model_type"] = arch->model_type;
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = m.d_model;
  j["num_hidden_layers"] = m.n_layers;
  j["num_attention_heads"] = m.n_heads;
  j["num_key_value_heads"] = m.n_kv_heads;
  j["head_dim"] = head_dim;
  j["intermediate_size"] = m.d_ff;
  j["max_position_embeddings"] = m.context;
  j["rms_norm_eps"] = m.norm_eps;
  j["rope_theta"] = m.rope_theta;
  if (m.rope_scaling == "llama3")
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", m.rope_factor},
                         {"low_freq_factor", m.rope_low_freq_factor},
                         {"high_freq_factor", m.rope_high_freq_factor},
                         {"original_max_position_embeddings", m.rope_original_context}};
  else
    j["rope_scaling"] = nullptr;
  j["tie_word_embeddings"] = m.tie_embeddings;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  if (name == "LlamaForCausalLM") j["mlp_bias"] = false;
  if (name == "MistralForCausalLM") j["sliding_window"] = nullptr;
  if (name == "Qwen2ForCausalLM" || name == "Qwen3ForCausalLM") {
    j["use_sliding_window"] = false;
    j["sliding_window"] = nullptr;
    j["max_window_layers"] = m.n_layers;
  }
  j["initializer_range"] = m.init_std;
  j["use_cache"] = true;
  j["torch_dtype"] = dtype;
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_id >= 0) j["eos_token_id"] = eos_token_id;
  if (!kvroute_block_json.empty()) j["kvroute"] = json::parse(kvroute_block_json);
  return j.dump(2) + "\n";
}

std::string hf_tensor_name(const std::string& name) {
  static const std::map<std::string, std::string> kLayer = {
      {"attn_norm", "input_layernorm.weight"},       {"attn/wq", "self_attn.q_proj.weight"},
      {"attn/wk", "self_attn.k_proj.weight"},        {"attn/wv", "self_attn.v_proj.weight"},
      {"attn/wo", "self_attn.o_proj.weight"},        {"attn/bq", "self_attn.q_proj.bias"},
      {"attn/bk", "self_attn.k_proj.bias"},          {"attn/bv", "self_attn.v_proj.bias"},
      {"attn/q_norm", "self_attn.q_norm.weight"},    {"attn/k_norm", "self_attn.k_norm.weight"},
      {"mlp_norm", "post_attention_layernorm.weight"}, {"mlp/w_gate", "mlp.gate_proj.weight"},
      {"mlp/w_up", "mlp.up_proj.weight"},            {"mlp/w_down", "mlp.down_proj.weight"},
  };
  if (name == "embed") return "model.embed_tokens.weight";
  if (name == "final_norm") return "model.norm.weight";
  if (name == "lm_head") return "lm_head.weight";
  if (name.starts_with("layers/")) {
    const std::size_t slash = name.find('/', 7);
    if (slash != std::string::npos) {
      const auto it = kLayer.find(name.substr(slash + 1));
      if (it != kLayer.end()) return "model.layers." + name.substr(7, slash - 7) + "." + it->second;
    }
  }
  throw std::invalid_argument("no Hugging Face name for kvroute tensor '" + name + "'");
}

}  // namespace kvroute
