// The KV cache: storage for the source layers of one sharing strategy only.
#include <stdexcept>
#include <string>

#include "kvroute/inference.h"

namespace kvroute {

std::size_t kv_bytes_per_token(const ModelConfig& mc, const SharingStrategy& strategy) {
  const std::size_t head_dim = static_cast<std::size_t>(resolved_head_dim(mc));
  return 2 * static_cast<std::size_t>(strategy.n_cache_layers()) * mc.n_kv_heads * head_dim * sizeof(float);
}

KvCache::KvCache(Backend* backend, const ModelConfig& mc, const SharingStrategy& strategy, int max_batch,
                 int max_len)
    : max_batch_(max_batch), max_len_(max_len), n_cache_layers_(strategy.n_cache_layers()) {
  validate_strategy(strategy.src, mc.n_layers);
  if (max_batch < 1) throw std::invalid_argument("KV cache: batch size must be >= 1 (got " + std::to_string(max_batch) + ")");
  if (max_len < 1 || max_len > mc.context)
    throw std::invalid_argument("KV cache: length " + std::to_string(max_len) + " must be in 1.." +
                                std::to_string(mc.context) + " (the model's context)");
  const std::size_t row = static_cast<std::size_t>(mc.n_kv_heads) * resolved_head_dim(mc);
  bytes_per_token_ = kv_bytes_per_token(mc, strategy);
  const std::size_t per_layer = static_cast<std::size_t>(max_batch) * max_len * row;
  k_ = DeviceBuffer<float>(backend, n_cache_layers_ * per_layer);
  v_ = DeviceBuffer<float>(backend, n_cache_layers_ * per_layer);
  store_.k_layers.assign(mc.n_layers, nullptr);
  store_.v_layers.assign(mc.n_layers, nullptr);
  int index = 0;
  for (int l = 0; l < mc.n_layers; ++l) {
    if (strategy.src[l] != l) continue;
    store_.k_layers[l] = k_.get() + index * per_layer;
    store_.v_layers[l] = v_.get() + index * per_layer;
    ++index;
  }
  store_.seq_stride = static_cast<long>(max_len) * static_cast<long>(row);
  store_.n_slots = max_batch;
  store_.max_len = max_len;
}

}  // namespace kvroute
