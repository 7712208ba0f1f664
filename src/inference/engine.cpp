// The inference engine: prefill and decode through Model::layer_forward over a
// KV cache that holds the strategy's source layers only.
#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>

#include "kvroute/inference.h"

namespace kvroute {

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::EndToken: return "end token";
    case StopReason::MaxNewTokens: return "max new tokens";
    case StopReason::Context: return "context full";
  }
  return "?";
}

InferenceEngine::InferenceEngine(Model& model, const SharingStrategy& strategy, int max_batch, int max_len)
    : model_(model), strategy_(strategy),
      cache_(model.backend(), model.config(), strategy, max_batch, max_len), lengths_(max_batch, 0) {}

void InferenceEngine::reset() { std::fill(lengths_.begin(), lengths_.end(), 0); }

void InferenceEngine::ensure_scratch(int N) {
  if (N <= scratch_rows_) return;
  Backend* be = model_.backend();
  const ModelConfig& mc = model_.config();
  const std::size_t n = N, C = mc.d_model, F = mc.d_ff, HD = static_cast<std::size_t>(mc.n_heads) * model_.head_dim();
  const std::size_t KD = static_cast<std::size_t>(mc.n_kv_heads) * model_.head_dim();
  ids_ = DeviceBuffer<int32_t>(be, n);
  x_ = DeviceBuffer<float>(be, n * C);
  ln1_ = DeviceBuffer<float>(be, n * C);
  rstd1_ = DeviceBuffer<float>(be, n);
  q_ = DeviceBuffer<float>(be, n * HD);
  att_ = DeviceBuffer<float>(be, n * HD);
  mid_ = DeviceBuffer<float>(be, n * C);
  ln2_ = DeviceBuffer<float>(be, n * C);
  rstd2_ = DeviceBuffer<float>(be, n);
  gate_ = DeviceBuffer<float>(be, n * F);
  up_ = DeviceBuffer<float>(be, n * F);
  act_ = DeviceBuffer<float>(be, n * F);
  k_new_ = DeviceBuffer<float>(be, n * KD);
  v_new_ = DeviceBuffer<float>(be, n * KD);
  if (mc.qk_norm) {
    q_pre_ = DeviceBuffer<float>(be, n * HD);
    rstd_q_ = DeviceBuffer<float>(be, n * mc.n_heads);
    k_pre_ = DeviceBuffer<float>(be, n * KD);
    rstd_k_ = DeviceBuffer<float>(be, n * mc.n_kv_heads);
  }
  scratch_rows_ = N;
}

// The output head's buffers, for the rows whose logits are wanted: a prefill needs one row
// per prompt, not one per prompt token (at 4K tokens and a 2K vocabulary, 32 MiB per prompt).
void InferenceEngine::ensure_head(int n_rows) {
  if (n_rows <= head_rows_) return;
  Backend* be = model_.backend();
  const std::size_t n = n_rows, C = model_.config().d_model;
  rows_ = DeviceBuffer<float>(be, n * C);
  lnf_ = DeviceBuffer<float>(be, n * C);
  rstdf_ = DeviceBuffer<float>(be, n);
  logits_ = DeviceBuffer<float>(be, n * model_.config().vocab_size);
  losses_ = DeviceBuffer<float>(be, n);
  targets_ = DeviceBuffer<int32_t>(be, n);
  head_rows_ = n_rows;
}

void InferenceEngine::set_prefill_chunk(int tokens) {
  if (tokens < 0)
    throw std::invalid_argument("--prefill-chunk must be >= 0 (0 = each prompt in one step; got " +
                                std::to_string(tokens) + ")");
  prefill_chunk_ = tokens;
}

void InferenceEngine::run_step(const std::vector<int32_t>& ids, const ForwardStep& step) {
  const int N = step.B * step.Tq;
  model_.check_tokens(ids.data(), ids.size());
  ensure_scratch(N);
  Backend* be = model_.backend();
  be->copy_to_device(ids_.get(), ids.data(), ids.size() * sizeof(int32_t));
  model_.embed(ids_.get(), x_.get(), N);
  LayerBuffers buf;
  buf.x = x_.get();
  buf.out = x_.get();
  buf.ln1 = ln1_.get();
  buf.rstd1 = rstd1_.get();
  buf.q = q_.get();
  buf.att = att_.get();
  buf.mid = mid_.get();
  buf.ln2 = ln2_.get();
  buf.rstd2 = rstd2_.get();
  buf.gate = gate_.get();
  buf.up = up_.get();
  buf.act = act_.get();
  buf.k_new = k_new_.get();
  buf.v_new = v_new_.get();
  buf.q_pre = q_pre_.get();
  buf.rstd_q = rstd_q_.get();
  buf.k_pre = k_pre_.get();
  buf.rstd_k = rstd_k_.get();
  std::vector<int32_t> src(step.B);
  for (int l = 0; l < model_.config().n_layers; ++l) {
    std::fill(src.begin(), src.end(), strategy_.src[l]);
    const bool is_source = strategy_.src[l] == l;
    model_.layer_forward(l, step, cache_.store(), src.data(), is_source, buf);
    kv_projections_ += is_source;
  }
}

std::vector<float> InferenceEngine::logits_of_rows(const std::vector<int>& rows) {
  Backend* be = model_.backend();
  const int C = model_.config().d_model, V = model_.config().vocab_size, n = static_cast<int>(rows.size());
  const std::size_t row_bytes = static_cast<std::size_t>(C) * sizeof(float);
  ensure_head(n);
  for (int i = 0; i < n; ++i)
    be->copy(rows_.get() + static_cast<std::size_t>(i) * C, x_.get() + static_cast<std::size_t>(rows[i]) * C, row_bytes);
  model_.head_forward(rows_.get(), lnf_.get(), rstdf_.get(), logits_.get(), n);
  std::vector<float> out(static_cast<std::size_t>(n) * V);
  be->copy_to_host(out.data(), logits_.get(), out.size() * sizeof(float));
  return out;
}

std::vector<float> InferenceEngine::prefill(const std::vector<std::vector<int32_t>>& prompts, bool all_logits) {
  const int n = static_cast<int>(prompts.size());
  if (n == 0) throw std::invalid_argument("prefill: no prompts");
  if (n > cache_.max_batch())
    throw std::invalid_argument("prefill: " + std::to_string(n) + " prompts but the cache holds " +
                                std::to_string(cache_.max_batch()) + " sequences");
  for (int i = 0; i < n; ++i) {
    const std::size_t len = prompts[i].size();
    if (len == 0) throw std::invalid_argument("prompt " + std::to_string(i) + " is empty: generation needs at least one token");
    if (len > static_cast<std::size_t>(cache_.max_len()))
      throw std::invalid_argument("prompt " + std::to_string(i) + " has " + std::to_string(len) +
                                  " tokens but at most " + std::to_string(cache_.max_len()) +
                                  " fit (model context " + std::to_string(model_.config().context) + ")");
    model_.check_tokens(prompts[i].data(), len);
  }
  reset();
  std::vector<float> out;
  // Consecutive prompts of equal length share one call; each prompt starts at position 0.
  // With a prefill chunk, the call is split along the prompt into steps of at most that many
  // tokens per prompt, each attending to the cache written by the steps before it: the
  // activations then scale with the chunk, not the prompt.
  const int V = model_.config().vocab_size;
  for (int i0 = 0; i0 < n;) {
    int i1 = i0 + 1;
    while (i1 < n && prompts[i1].size() == prompts[i0].size()) ++i1;
    const int B = i1 - i0, T = static_cast<int>(prompts[i0].size());
    const int chunk = prefill_chunk_ > 0 ? std::min(prefill_chunk_, T) : T;
    std::vector<int32_t> slots(B);
    for (int b = 0; b < B; ++b) slots[b] = i0 + b;
    const std::size_t group_at = out.size();
    out.resize(group_at + static_cast<std::size_t>(B) * (all_logits ? T : 1) * V);
    for (int c0 = 0; c0 < T; c0 += chunk) {
      const int len = std::min(chunk, T - c0);
      std::vector<int32_t> ids, pos0(B, c0);
      for (int b = 0; b < B; ++b) ids.insert(ids.end(), prompts[i0 + b].begin() + c0, prompts[i0 + b].begin() + c0 + len);
      run_step(ids, ForwardStep{B, len, c0 > 0 ? pos0.data() : nullptr, slots.data()});
      std::vector<int> rows;
      std::vector<std::size_t> dest;  // out row of each logits row
      for (int b = 0; b < B; ++b) {
        if (all_logits)
          for (int t = 0; t < len; ++t) {
            rows.push_back(b * len + t);
            dest.push_back(static_cast<std::size_t>(b) * T + c0 + t);
          }
        else if (c0 + len == T) {
          rows.push_back(b * len + len - 1);
          dest.push_back(b);
        }
      }
      if (rows.empty()) continue;
      const std::vector<float> logits = logits_of_rows(rows);
      for (std::size_t r = 0; r < rows.size(); ++r)
        std::copy_n(logits.begin() + static_cast<std::ptrdiff_t>(r * V), V,
                    out.begin() + static_cast<std::ptrdiff_t>(group_at + dest[r] * V));
    }
    for (int b = 0; b < B; ++b) lengths_[i0 + b] = T;
    i0 = i1;
  }
  return out;
}

std::vector<float> InferenceEngine::decode(const std::vector<int32_t>& tokens, const std::vector<int>& slots) {
  const int n = static_cast<int>(tokens.size());
  if (n == 0 || slots.size() != tokens.size())
    throw std::invalid_argument("decode: need one slot per token (got " + std::to_string(n) + " tokens, " +
                                std::to_string(slots.size()) + " slots)");
  std::vector<int32_t> pos(n), slot32(n);
  std::vector<char> seen(cache_.max_batch(), 0);
  for (int i = 0; i < n; ++i) {
    const int s = slots[i];
    if (s < 0 || s >= cache_.max_batch() || seen[s]++)
      throw std::invalid_argument("decode: slot " + std::to_string(s) + " is out of range or repeated");
    if (lengths_[s] >= cache_.max_len())
      throw std::invalid_argument("decode: sequence in slot " + std::to_string(s) + " already fills the cache (" +
                                  std::to_string(cache_.max_len()) + " tokens)");
    pos[i] = lengths_[s];
    slot32[i] = s;
  }
  run_step(tokens, ForwardStep{n, 1, pos.data(), slot32.data()});
  for (int s : slots) ++lengths_[s];
  std::vector<int> rows(n);
  for (int i = 0; i < n; ++i) rows[i] = i;
  return logits_of_rows(rows);
}

GenerationResult InferenceEngine::generate(const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opt) {
  validate_sampling(opt.sampling);
  if (opt.max_new_tokens < 1)
    throw std::invalid_argument("--max-new-tokens must be >= 1 (got " + std::to_string(opt.max_new_tokens) + ")");
  using clock = std::chrono::steady_clock;
  const int n = static_cast<int>(prompts.size()), V = model_.config().vocab_size;
  GenerationResult r;
  r.tokens.assign(n, {});
  r.stop.assign(n, StopReason::MaxNewTokens);
  std::vector<char> active(n, 1);
  // Samples sequence i's next token from its logits row; returns false when it stops.
  auto take = [&](int i, const float* logits) {
    const int step = static_cast<int>(r.tokens[i].size());
    const int tok = sample_token(logits, V, opt.sampling, sample_counter(i, step));
    r.tokens[i].push_back(tok);
    if (tok == opt.stop_token) r.stop[i] = StopReason::EndToken;
    else if (step + 1 >= opt.max_new_tokens) r.stop[i] = StopReason::MaxNewTokens;
    else if (lengths_[i] >= cache_.max_len()) r.stop[i] = StopReason::Context;
    else return true;
    active[i] = 0;
    return false;
  };

  const auto t0 = clock::now();
  const std::vector<float> first = prefill(prompts);
  for (int i = 0; i < n; ++i) take(i, first.data() + static_cast<std::size_t>(i) * V);
  const auto t1 = clock::now();
  r.ttft_s = std::chrono::duration<double>(t1 - t0).count();

  while (true) {
    std::vector<int32_t> tokens;
    std::vector<int> slots;
    for (int i = 0; i < n; ++i)
      if (active[i]) {
        tokens.push_back(r.tokens[i].back());
        slots.push_back(i);
      }
    if (tokens.empty()) break;
    const std::vector<float> logits = decode(tokens, slots);
    for (std::size_t j = 0; j < slots.size(); ++j) take(slots[j], logits.data() + j * V);
    r.decode_tokens += static_cast<long>(slots.size());
  }
  r.decode_s = std::chrono::duration<double>(clock::now() - t1).count();
  return r;
}

double InferenceEngine::teacher_forced_loss(const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets,
                                            int B, int T) {
  const std::size_t N = static_cast<std::size_t>(B) * T;
  if (tokens.size() != N || targets.size() != N)
    throw std::invalid_argument("teacher_forced_loss: expected " + std::to_string(N) + " tokens and targets");
  if (B < 1 || B > cache_.max_batch() || T < 1 || T > cache_.max_len())
    throw std::invalid_argument("teacher_forced_loss: " + std::to_string(B) + " x " + std::to_string(T) +
                                " does not fit the cache (" + std::to_string(cache_.max_batch()) + " x " +
                                std::to_string(cache_.max_len()) + ")");
  reset();
  run_step(tokens, ForwardStep{B, T, nullptr, nullptr});
  for (int b = 0; b < B; ++b) lengths_[b] = T;
  const int V = model_.config().vocab_size;
  Backend* be = model_.backend();
  ensure_head(static_cast<int>(N));
  model_.head_forward(x_.get(), lnf_.get(), rstdf_.get(), logits_.get(), static_cast<int>(N));
  be->copy_to_device(targets_.get(), targets.data(), N * sizeof(int32_t));
  be->cross_entropy(logits_.get(), targets_.get(), losses_.get(), nullptr, static_cast<int>(N), V, 1.f);
  std::vector<float> losses(N);
  be->copy_to_host(losses.data(), losses_.get(), N * sizeof(float));
  double sum = 0;
  long n_valid = 0;
  for (std::size_t i = 0; i < N; ++i)
    if (targets[i] >= 0) sum += losses[i], ++n_valid;
  if (n_valid == 0) throw std::invalid_argument("teacher_forced_loss: no valid targets");
  return sum / n_valid;
}

}  // namespace kvroute
