// Prefill latency (time to first token) and decode throughput of the engine,
// median of several runs, strategies interleaved run by run.
#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include "kvroute/inference.h"
#include "kvroute/rng.h"

namespace kvroute {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

double GenerationBench::median_ttft_ms() const { return median(ttft_ms); }
double GenerationBench::median_decode_tokens_per_s() const { return median(decode_tokens_per_s); }

namespace {

std::vector<int32_t> synthetic_prompt(int len, int vocab, uint64_t seed, uint64_t which) {
  std::vector<int32_t> p(len);
  for (int t = 0; t < len; ++t)
    p[t] = static_cast<int32_t>(uniform_int(seed, kStreamSample, (which << 32) | static_cast<uint32_t>(t), vocab));
  return p;
}

}  // namespace

std::vector<GenerationBench> benchmark_generation(Model& model, const std::vector<SharingStrategy>& strategies,
                                                  const GenerationBenchSpec& spec) {
  const ModelConfig& mc = model.config();
  if (spec.prompt_len < 1 || spec.prompt_len > mc.context)
    throw std::invalid_argument("--prompt-len " + std::to_string(spec.prompt_len) + " must be in 1.." +
                                std::to_string(mc.context) + " (the model's context)");
  if (spec.decode_batch < 1) throw std::invalid_argument("--decode-batch must be >= 1");
  if (spec.decode_len < 1 || spec.decode_len >= mc.context)
    throw std::invalid_argument("--decode-len " + std::to_string(spec.decode_len) + " must be in 1.." +
                                std::to_string(mc.context - 1) + " (a prompt token plus the decoded ones fit the context " +
                                std::to_string(mc.context) + ")");
  if (spec.repeats < 1) throw std::invalid_argument("--repeats must be >= 1");
  // Decode runs after a prefill of up to prompt_len tokens, shortened so everything fits the context.
  const int decode_prompt = std::min(spec.prompt_len, mc.context - spec.decode_len);
  const int max_len = std::max(spec.prompt_len, decode_prompt + spec.decode_len);
  const int max_batch = spec.decode_batch;

  const std::vector<int32_t> ttft_prompt = synthetic_prompt(spec.prompt_len, mc.vocab_size, spec.seed, 0);
  std::vector<std::vector<int32_t>> decode_prompts;
  for (int b = 0; b < spec.decode_batch; ++b)
    decode_prompts.push_back(synthetic_prompt(decode_prompt, mc.vocab_size, spec.seed, 1 + b));

  std::vector<std::unique_ptr<InferenceEngine>> engines;
  std::vector<GenerationBench> out;
  for (const SharingStrategy& s : strategies) {
    engines.push_back(std::make_unique<InferenceEngine>(model, s, max_batch, max_len));
    engines.back()->set_prefill_chunk(spec.prefill_chunk);
    GenerationBench b;
    b.strategy = s;
    b.kv_bytes = engines.back()->cache().bytes();
    b.kv_bytes_per_token = engines.back()->cache().bytes_per_token();
    out.push_back(b);
  }
  GenerateOptions ttft_opt;
  ttft_opt.max_new_tokens = 1;
  GenerateOptions decode_opt;
  decode_opt.max_new_tokens = spec.decode_len + 1;  // the first token comes from the prefill
  for (int rep = 0; rep <= spec.repeats; ++rep) {   // rep 0 warms up and is not recorded
    for (std::size_t i = 0; i < engines.size(); ++i) {
      InferenceEngine& e = *engines[i];
      const double ttft_ms = 1e3 * e.generate({ttft_prompt}, ttft_opt).ttft_s;
      const GenerationResult dec = e.generate(decode_prompts, decode_opt);
      if (dec.decode_tokens != static_cast<long>(spec.decode_batch) * spec.decode_len)
        throw std::logic_error("benchmark: decoded " + std::to_string(dec.decode_tokens) + " tokens, expected " +
                               std::to_string(spec.decode_batch * spec.decode_len));
      if (rep == 0) continue;
      out[i].ttft_ms.push_back(ttft_ms);
      out[i].decode_tokens_per_s.push_back(dec.decode_tokens_per_s());
    }
  }
  return out;
}

}  // namespace kvroute
