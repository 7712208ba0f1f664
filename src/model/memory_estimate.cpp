#include "kvroute/memory_estimate.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "kvroute/run_log.h"

namespace kvroute {

std::size_t param_count(const ModelConfig& mc) {
  const std::size_t C = mc.d_model, F = mc.d_ff, V = mc.vocab_size, L = mc.n_layers;
  const std::size_t D = resolved_head_dim(mc);
  const std::size_t HD = static_cast<std::size_t>(mc.n_heads) * D, KD = static_cast<std::size_t>(mc.n_kv_heads) * D;
  const std::size_t per_layer = 2 * C + 2 * HD * C + 2 * KD * C + 3 * F * C + (mc.qkv_bias ? HD + 2 * KD : 0) +
                                (mc.qk_norm ? 2 * D : 0);
  return V * C + L * per_layer + C + (mc.tie_embeddings ? 0 : V * C);
}

double training_activation_bytes(const ModelConfig& mc, int B, int T, const std::string& recompute) {
  // Mirrors Model::ensure_activations (model.cpp); a test checks the two agree.
  const double N = double(B) * T, L = mc.n_layers, C = mc.d_model, F = mc.d_ff, V = mc.vocab_size;
  const double D = resolved_head_dim(mc);
  const double HD = mc.n_heads * D, KD = mc.n_kv_heads * D;
  const double La = recompute == "none" ? L : 1, Lm = recompute != "layer" ? L : 1;
  const double qk_norm = mc.qk_norm ? La * N * (HD + mc.n_heads) + L * N * (KD + mc.n_kv_heads) : 0;
  const double floats = (L + 1) * N * C + Lm * N * C + La * N * C + Lm * N * C + 2 * L * N + 2 * La * N * HD +
                        2 * L * N * KD + La * N * mc.n_heads + 3 * Lm * N * F + N * C + N + N * V + N +
                        2 * N * C + 2 * N * HD + 2 * L * N * KD + 3 * N * F + qk_norm;
  return 4 * floats + 2 * 4 * N;  // + tokens and targets (int32)
}

double inference_scratch_bytes(const ModelConfig& mc, double rows) {
  const double C = mc.d_model, F = mc.d_ff, V = mc.vocab_size;
  const double D = resolved_head_dim(mc);
  const double HD = mc.n_heads * D, KD = mc.n_kv_heads * D;
  const double qk_norm = mc.qk_norm ? HD + KD + mc.n_heads + mc.n_kv_heads : 0;  // pre-norm q, k and rstd
  return 4 * rows * (7 * C + 2 * HD + 3 * F + 2 * KD + V + 4 + qk_norm);
}

double training_memory_bytes(const Config& cfg) {
  const double P = double(param_count(cfg.model));
  return 4 * P * (2 + 2 + 3) +
         training_activation_bytes(cfg.model, cfg.train.batch_size, cfg.train.seq_len, cfg.train.recompute);
}

namespace {
double read_number_file(const char* path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return 0;
  try {
    return std::stod(word);
  } catch (const std::exception&) {
    return 0;
  }
}
}  // namespace

double machine_memory_bytes() {
  double total = 0;
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    if (line.rfind("MemTotal:", 0) != 0) continue;
    std::istringstream is(line.substr(9));
    double kib = 0;
    if (is >> kib) total = kib * 1024;
  }
  for (const char* limit : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    const double v = read_number_file(limit);
    if (v > 0 && (total == 0 || v < total)) total = v;
  }
  return total;
}

void check_fits_in_memory(double needed_bytes, const std::string& what, const std::string& advice) {
  const double have = machine_memory_bytes();
  if (have <= 0 || needed_bytes <= have) return;
  throw std::runtime_error(what + " needs about " + human_bytes(needed_bytes) + " of memory (estimated before "
                           "allocating anything), but this machine has " + human_bytes(have) + "; " + advice);
}

}  // namespace kvroute
