// Hugging Face model folders in and out: config.json <-> ModelConfig, tensor names, and the
// import / export behind `kvroute import hf` and `kvroute export hf`.
//
// Supported architectures: LlamaForCausalLM (Llama 2, 3, 3.1, 3.2, TinyLlama, SmolLM),
// MistralForCausalLM (without a sliding window), Qwen2ForCausalLM (q/k/v biases) and
// Qwen3ForCausalLM (per-head q/k RMSNorm, head_dim of its own). They share one layout:
//   model.embed_tokens.weight                      -> embed
//   model.layers.L.input_layernorm.weight          -> layers/L/attn_norm
//   model.layers.L.self_attn.{q,k,v,o}_proj.weight -> layers/L/attn/w{q,k,v,o}
//   model.layers.L.self_attn.{q,k,v}_proj.bias     -> layers/L/attn/b{q,k,v}       (Qwen2)
//   model.layers.L.self_attn.{q,k}_norm.weight     -> layers/L/attn/{q,k}_norm     (Qwen3)
//   model.layers.L.post_attention_layernorm.weight -> layers/L/mlp_norm
//   model.layers.L.mlp.{gate,up,down}_proj.weight  -> layers/L/mlp/w_{gate,up,down}
//   model.norm.weight                              -> final_norm
//   lm_head.weight                                 -> lm_head (untied heads only)
// Both sides store a linear layer as [out, in] and pair RoPE dimensions i and i + D/2
// (transformers' rotate_half), so weights are copied as they are, no permutation.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kvroute/config.h"

namespace kvroute {

// What config.json describes, in kvroute's terms.
struct HfModelConfig {
  std::string architecture;   // "LlamaForCausalLM", ...
  ModelConfig model;          // every shape and numerics key set from config.json
  std::string dtype;          // "bfloat16", "float16", "float32" or "" (torch_dtype / dtype)
  int bos_token_id = -1, eos_token_id = -1;  // -1 when absent
};

// Parses config.json text. Throws std::runtime_error naming `path` and the key for an unknown
// architecture, a feature kvroute lacks (sliding window, MoE, rope scaling other than llama3,
// biases on the output or MLP projections, quantized weights, an activation other than silu)
// or a missing or mistyped key.
HfModelConfig parse_hf_config(const std::string& json_text, const std::string& path);
HfModelConfig read_hf_config(const std::string& dir);  // DIR/config.json

// The architecture a kvroute model exports as: Qwen3 for qk_norm, Qwen2 for qkv_bias, else Llama.
// Throws std::runtime_error when no supported architecture has the config's features.
std::string hf_architecture_for(const ModelConfig& model);
// config.json text for a model (architecture as above, or `architecture` when non-empty).
// `extra` is merged in as the "kvroute" block (routing settings, recommended sharing map).
std::string hf_config_json(const ModelConfig& model, const std::string& architecture, const std::string& dtype,
                           int bos_token_id, int eos_token_id, const std::string& kvroute_block_json);

// The Hugging Face name of a kvroute tensor ("layers/3/attn/wq" -> "model.layers.3.self_attn.q_proj.weight").
std::string hf_tensor_name(const std::string& kvroute_name);

// True when `dir` looks like a Hugging Face model folder (it holds config.json).
bool is_hf_model_dir(const std::string& dir);

// When cfg.model.init_from names a Hugging Face folder, its config.json decides the model:
// every model key that shapes tensors or numerics (all but init_std and init_from) is taken
// from it, and a line saying so is added to notes. Returns whether it did. train.seq_len
// must still fit the model's context (validate).
bool adopt_hf_model_config(Config& cfg, std::vector<std::string>& notes);

struct HfImportOptions {
  std::string dir;              // the Hugging Face model folder
  std::string out;              // the checkpoint to write (model.h5)
  // Tokenizer files are copied to this directory (default: "<out without .h5>-tokenizer")
  // and the checkpoint's data.tokenizer points at it. Empty folder -> no tokenizer recorded.
  std::string tokenizer_out;
  bool force = false;           // replace existing outputs
};

struct HfImportReport {
  HfModelConfig config;
  long tensors = 0;
  double bytes_read = 0;        // bytes of weights read from safetensors
  double seconds = 0;
  std::string tokenizer_dir;    // empty when the folder had no tokenizer files
  std::vector<std::string> notes;  // e.g. "lm_head.weight ignored: tie_word_embeddings is true"
};

// The fp32 weights of a Hugging Face folder in kvroute's parameter-buffer order
// (parameter_layout(config.model)), read tensor by tensor from the safetensors files
// (single file or sharded with model.safetensors.index.json). Every expected tensor must be
// present with its shape, in F32, BF16 or F16; unexpected tensors are errors too (except an
// lm_head.weight of a tied model, which must equal the embedding and is then noted).
// Throws std::runtime_error naming the file and tensor.
// bytes_read (if given) grows by the bytes of weights read.
std::vector<float> read_hf_weights(const std::string& dir, const HfModelConfig& config,
                                   std::vector<std::string>* notes = nullptr, double* bytes_read = nullptr);

// kvroute import hf: config.json + weights -> a weights-only checkpoint (step 0) whose config
// has the model section from config.json; tokenizer files copied beside it.
HfImportReport import_hf(const HfImportOptions& options);

struct HfExportOptions {
  std::string checkpoint;
  std::string out;              // the folder to write; must not exist unless force
  std::string dtype = "bf16";   // bf16 | fp32
  std::string architecture;     // "" = hf_architecture_for(model)
  bool force = false;
};

struct HfExportReport {
  std::string architecture;
  std::vector<std::string> files;  // written, relative to out
  double bytes = 0;
  std::vector<std::string> notes;
};

// kvroute export hf: config.json (with a "kvroute" block), model.safetensors, the tokenizer
// files when the checkpoint's tokenizer has a Hugging Face form. Written to "<out>.tmp" and
// renamed, so a failed export leaves no half folder.
HfExportReport export_hf(const HfExportOptions& options);

// The Hugging Face fast-tokenizer files of kvroute tokenizer `spec` ("byte" or a directory from
// `kvroute data tokenizer`, see hf_tokenizer_json.h) written into the existing folder `dir`:
// tokenizer.json, tokenizer_config.json and, for SentencePiece, a copy of tokenizer.model.
// Returns the file names written.
std::vector<std::string> write_hf_fast_tokenizer(const std::string& spec, const std::filesystem::path& dir,
                                                 int model_max_length);
// kvroute export hf-tokenizer: those files alone, as a new folder `out` (written to "<out>.tmp"
// and renamed; must not exist unless force).
std::vector<std::string> export_hf_tokenizer(const std::string& spec, const std::string& out, int model_max_length,
                                             bool force);

}  // namespace kvroute
