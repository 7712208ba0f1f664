// Typed experiment configuration. Layering: defaults, then YAML files (later
// wins), then `--set section.key=value` overrides. Unknown keys, wrong types
// and out-of-range values are refused with the key path (ConfigError).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace kvroute {

struct ModelConfig {
  int vocab_size = 256;
  int d_model = 128;
  int n_layers = 4;
  int n_heads = 4;
  int n_kv_heads = 4;       // must divide n_heads (grouped-query attention)
  int d_ff = 512;           // SwiGLU hidden width
  int context = 128;        // maximum sequence length
  int head_dim = 0;         // per-head width; 0 = d_model / n_heads (use resolved_head_dim)
  bool qkv_bias = false;    // biases on the q/k/v projections (Qwen2)
  bool qk_norm = false;     // RMSNorm over each head's q and k before RoPE (Qwen3)
  double rope_theta = 10000.0;
  std::string rope_scaling = "none";  // none | llama3 (Llama 3.1 inverse-frequency scaling; rope.h)
  double rope_factor = 8.0;           // llama3: low frequencies are divided by this
  double rope_low_freq_factor = 1.0;  // llama3: wavelengths above original_context / this are scaled
  double rope_high_freq_factor = 4.0; // llama3: wavelengths below original_context / this are kept
  int rope_original_context = 8192;   // llama3: the pre-training context
  double norm_eps = 1e-5;
  bool tie_embeddings = true;
  double init_std = 0.02;
  std::string init_from;    // checkpoint to take weights from (fine-tuning); empty = random init
};

// model.head_dim, or d_model / n_heads when it is 0 (0 when n_heads is not positive).
inline int resolved_head_dim(const ModelConfig& m) {
  return m.head_dim > 0 ? m.head_dim : m.n_heads > 0 ? m.d_model / m.n_heads : 0;
}

struct RoutingConfig {
  std::string mode = "none";         // none | stochastic | fixed
  double p = 0.5;                    // stochastic: probability that a layer l>0 routes away
  std::string scheme = "any";        // stochastic: a name of routing_schemes() (routing.h)
  std::string granularity = "batch";  // batch (one draw per step, the paper's setting) | sequence
  std::string strategy = "cla:2";    // fixed: the sharing strategy trained with
  int group = 2;                     // stochastic, scheme rdcla: CLA group size K
};

struct CheckpointConfig {
  int interval = 0;         // steps between checkpoints; 0 = only at the end
  int keep_last = 3;        // rotate: keep this many periodic checkpoints
};

struct TrainConfig {
  std::string backend = "cpu";       // cpu | cuda
  int threads = 0;                   // 0 = OMP_NUM_THREADS or all cores
  int batch_size = 16;               // sequences per micro-batch
  int seq_len = 128;                 // tokens per sequence (<= model.context)
  int grad_accum = 1;                // micro-batches per optimizer step
  int steps = 1000;
  double lr = 3e-3;
  double min_lr_ratio = 0.1;         // cosine decays to lr * min_lr_ratio
  int warmup_steps = 50;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double adam_eps = 1e-8;
  double grad_clip = 1.0;            // global-norm clip; 0 = off
  long seed = 1234;
  int log_interval = 10;
  int eval_interval = 0;             // 0 = only at the end
  int eval_batches = 8;
  std::string eval_strategies = "full,cla:2";  // strategies each evaluation reports (comma list; YAML list too)
  std::string out_dir = "runs/default";
  std::string on_nonfinite = "stop"; // stop | skip
  std::string recompute = "none";    // activation recomputation in backward: none | attention | layer
  std::string precision = "fp32";    // fp32 | bf16 | auto (bf16 matmul inputs, fp32 accumulation; backend.h)
  bool deterministic = true;         // bitwise-reproducible GPU results (CUDA attention backward without atomics)
  int zero = 0;                      // ZeRO stage: 0 = every rank holds all AdamW state; 1 = sharded over ranks
  bool overlap_allreduce = true;     // under mpirun: start each gradient bucket's sum during backward
  double allreduce_bucket_mb = 25;   // gradient all-reduce bucket size in MiB (as PyTorch DDP's bucket_cap_mb)
  double collective_timeout_s = 300; // under mpirun: a collective not done in this time ends the job; 0 = never
  CheckpointConfig checkpoint;
};

struct DataConfig {
  std::string tokenizer = "byte";    // "byte" or a tokenizer directory (`kvroute data tokenizer`)
  std::string shards;                // token shard directory (`kvroute data encode`); or use train_path
  std::string train_path;            // text file, tokenized on load
  std::string val_path;              // text file; empty = split off the end of train_path
  double val_fraction = 0.05;        // used when val_path is empty
  std::string order = "random";      // training windows: random | sequential (see loader.h)
  bool verify = true;                // check shard checksums and token ids on load (one pass)
};

struct Config {
  ModelConfig model;
  RoutingConfig routing;
  TrainConfig train;
  DataConfig data;
};

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Applies a YAML file on top of cfg.
void apply_config_file(Config& cfg, const std::string& path);
// Applies YAML text (used for configs embedded in checkpoints).
void apply_config_yaml(Config& cfg, const std::string& yaml_text, const std::string& origin);
// Applies one override "section.key=value"; the value is parsed as YAML scalar.
void apply_override(Config& cfg, const std::string& assignment);
// Cross-field checks (n_kv_heads divides n_heads, seq_len <= context, ...).
void validate(const Config& cfg);
// The resolved config as YAML, every key present.
std::string to_yaml(const Config& cfg);

// Defaults <- files <- overrides, then validate().
Config load_config(const std::vector<std::string>& files, const std::vector<std::string>& overrides);

}  // namespace kvroute
