// The inference engine against the training forward (Model::forward with the
// strategy's fixed source table) as the reference: cached decode gives the same
// logits, teacher-forced loss equals the training loss, the cache allocates what
// it reports, non-source layers project no K/V, batching does not change results,
// and sampling is seeded and follows its distribution.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "kvroute/forwarding_backend.h"
#include "kvroute/inference.h"
#include "kvroute/model.h"
#include "kvroute/routing.h"
#include "kvroute/strategy.h"

using namespace kvroute;

namespace {

// Forwards every op to the CPU backend, counting bytes allocated and recording
// which weight matrix (the B operand) each matmul used.
class CountingBackend final : public ForwardingBackend {
 public:
  CountingBackend() : ForwardingBackend(make_backend("cpu")) {}
  std::string name() const override { return "counting-cpu"; }
  void* alloc_bytes(std::size_t bytes) override {
    void* p = inner()->alloc_bytes(bytes);
    sizes_[p] = bytes;
    live_bytes += bytes;
    return p;
  }
  void free_bytes(void* p) override {
    live_bytes -= sizes_.at(p);
    sizes_.erase(p);
    inner()->free_bytes(p);
  }
  void matmul(const float* A, const float* B, float* C, int M, int N, int K, bool ta, bool tb, float alpha,
              float beta) override {
    ++matmul_weights[B];
    inner()->matmul(A, B, C, M, N, K, ta, tb, alpha, beta);
  }

  std::size_t live_bytes = 0;
  std::map<const float*, long> matmul_weights;

 private:
  std::map<void*, std::size_t> sizes_;
};

constexpr int kLayers = 4;

ModelConfig tiny_model() {
  ModelConfig m;
  m.vocab_size = 13;
  m.d_model = 16;
  m.n_layers = kLayers;
  m.n_heads = 4;
  m.n_kv_heads = 2;  // grouped-query attention: 2 query heads per kv head
  m.d_ff = 24;
  m.context = 16;
  m.init_std = 0.3;  // large enough that logits differ clearly between tokens
  return m;
}

// Every valid map of a 4-layer model (src[l] <= l, sources keep their own cache).
std::vector<SharingStrategy> every_map() {
  std::vector<SharingStrategy> out;
  std::vector<int> src(kLayers);
  auto rec = [&](auto&& self, int l) -> void {
    if (l == kLayers) {
      out.push_back(SharingStrategy{"map", src});
      out.back().name = "list:" + out.back().map_string();
      return;
    }
    for (int s = 0; s <= l; ++s) {
      if (s < l && src[s] != s) continue;
      src[l] = s;
      self(self, l + 1);
    }
  };
  rec(rec, 0);
  return out;
}

std::vector<SharingStrategy> zoo() {
  return parse_strategy_list("full,cla:2,cla:3,first,half,keep:2,keep:3,list:0,1,1,3", kLayers);
}

std::vector<int32_t> random_tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

// Logits [B*T, V] of the training forward with the strategy's fixed source table.
std::vector<float> reference_logits(Model& model, const std::vector<int32_t>& tokens, int B, int T,
                                    const SharingStrategy& s) {
  model.forward(tokens.data(), nullptr, B, T, fixed_routes(B, s.src));
  std::vector<float> out(static_cast<std::size_t>(B) * T * model.config().vocab_size);
  model.backend()->copy_to_host(out.data(), model.logits(), out.size() * sizeof(float));
  return out;
}

void expect_row_near(const float* got, const float* want, int V, const std::string& what) {
  for (int v = 0; v < V; ++v)
    ASSERT_NEAR(got[v], want[v], 2e-5 + 2e-5 * std::abs(want[v])) << what << ", logit " << v;
}

struct Fixture {
  std::unique_ptr<Backend> be = make_backend("cpu");
  Model model{tiny_model(), be.get()};
  Fixture() { model.init_weights(11); }
};

}  // namespace

TEST(InferenceEngine, EveryValidMapOfFourLayersIsEnumerated) {
  const auto maps = every_map();
  for (const auto& m : maps) EXPECT_NO_THROW(validate_strategy(m.src, kLayers)) << m.name;
  std::set<std::vector<int>> unique;
  for (const auto& m : maps) unique.insert(m.src);
  EXPECT_EQ(unique.size(), maps.size());
  // Sum over cache-layer sets {0} u S, S in {1,2,3}, of the reader choices of the other layers:
  // {0}:1 {0,1}:4 {0,2}:2 {0,3}:1 {0,1,2}:3 {0,1,3}:2 {0,2,3}:1 {0,1,2,3}:1.
  EXPECT_EQ(maps.size(), 15u);
}

TEST(InferenceEngine, CachedDecodeMatchesFullForwardForEveryMap) {
  Fixture f;
  const int V = f.model.config().vocab_size, T = 12;
  const std::vector<int32_t> tokens = random_tokens(2 * T, V, 5);  // two sequences of T tokens
  const int prompt_len[2] = {5, 3};  // different lengths: decode steps mix positions
  for (const SharingStrategy& s : every_map()) {
    const std::vector<float> ref = reference_logits(f.model, tokens, 2, T, s);
    InferenceEngine engine(f.model, s, 2, T);
    const std::vector<std::vector<int32_t>> prompts = {
        {tokens.begin(), tokens.begin() + prompt_len[0]}, {tokens.begin() + T, tokens.begin() + T + prompt_len[1]}};
    const std::vector<float> first = engine.prefill(prompts);
    for (int b = 0; b < 2; ++b)
      expect_row_near(first.data() + b * V, ref.data() + (b * T + prompt_len[b] - 1) * V, V,
                      s.name + " prefill of sequence " + std::to_string(b));
    // Teacher-forced decode: feed each sequence's next true token until it holds all T.
    while (engine.length(0) < T || engine.length(1) < T) {
      std::vector<int32_t> next;
      std::vector<int> slots;
      for (int b = 0; b < 2; ++b)
        if (engine.length(b) < T) {
          next.push_back(tokens[b * T + engine.length(b)]);
          slots.push_back(b);
        }
      const std::vector<float> logits = engine.decode(next, slots);
      for (std::size_t i = 0; i < slots.size(); ++i) {
        const int b = slots[i], pos = engine.length(b) - 1;
        expect_row_near(logits.data() + i * V, ref.data() + (b * T + pos) * V, V,
                        s.name + " decode of sequence " + std::to_string(b) + " at position " + std::to_string(pos));
      }
    }
  }
}

TEST(InferenceEngine, PrefillOfEveryTokenMatchesFullForward) {
  Fixture f;
  const int V = f.model.config().vocab_size;
  const std::vector<int32_t> a = random_tokens(7, V, 1), b = random_tokens(4, V, 2);
  for (const SharingStrategy& s : zoo()) {
    InferenceEngine engine(f.model, s, 2, 10);
    const std::vector<float> all = engine.prefill({a, b}, true);
    ASSERT_EQ(all.size(), static_cast<std::size_t>(11 * V));
    const std::vector<float> ra = reference_logits(f.model, a, 1, 7, s);
    const std::vector<float> rb = reference_logits(f.model, b, 1, 4, s);
    for (int t = 0; t < 7; ++t) expect_row_near(all.data() + t * V, ra.data() + t * V, V, s.name + " a");
    for (int t = 0; t < 4; ++t) expect_row_near(all.data() + (7 + t) * V, rb.data() + t * V, V, s.name + " b");
  }
}

TEST(InferenceEngine, TeacherForcedLossEqualsTrainingForward) {
  Fixture f;
  const int B = 3, T = 10, V = f.model.config().vocab_size;
  const std::vector<int32_t> tokens = random_tokens(B * T, V, 7);
  std::vector<int32_t> targets = random_tokens(B * T, V, 8);
  targets[4] = -1;  // ignored positions count in neither
  targets[17] = -1;
  for (const SharingStrategy& s : zoo()) {
    const double train = f.model.forward(tokens.data(), targets.data(), B, T, fixed_routes(B, s.src));
    // Cache exactly T long (K/V written in place) and longer (scattered into slots).
    for (int max_len : {T, 16}) {
      InferenceEngine engine(f.model, s, B, max_len);
      EXPECT_NEAR(engine.teacher_forced_loss(tokens, targets, B, T), train, 1e-5 * train)
          << s.name << " cache length " << max_len;
    }
  }
}

TEST(InferenceEngine, CachedDecodeMatchesFullForwardWithFamilyFeatures) {
  // q/k/v biases, per-head q/k norm, head_dim != d_model / n_heads, Llama 3.1 RoPE scaling and
  // an untied head: the cache holds K after bias, norm and RoPE, and a sharing layer reads it.
  ModelConfig mc = tiny_model();
  mc.qkv_bias = mc.qk_norm = true;
  mc.head_dim = 6;
  mc.rope_scaling = "llama3";
  mc.rope_original_context = 8;
  mc.tie_embeddings = false;
  auto be = make_backend("cpu");
  Model model(mc, be.get());
  model.init_weights(12);
  std::vector<float> p = model.params_to_host();
  std::mt19937 rng(13);
  std::normal_distribution<float> normal(0.f, 0.3f);
  for (const ParamTensor& t : model.tensors())  // biases and gains away from 0 and 1
    if (t.shape.size() == 1)
      for (std::size_t i = 0; i < t.numel; ++i) p[t.offset + i] += normal(rng);
  model.params_from_host(p);
  const int V = mc.vocab_size, T = 12;
  const std::vector<int32_t> tokens = random_tokens(2 * T, V, 6);
  for (const SharingStrategy& s : zoo()) {
    const std::vector<float> ref = reference_logits(model, tokens, 2, T, s);
    InferenceEngine engine(model, s, 2, T);
    EXPECT_EQ(engine.cache().bytes_per_token(), 2u * s.n_cache_layers() * mc.n_kv_heads * 6 * sizeof(float)) << s.name;
    const std::vector<float> first = engine.prefill({{tokens.begin(), tokens.begin() + 4}, {tokens.begin() + T, tokens.begin() + T + 4}});
    for (int b = 0; b < 2; ++b)
      expect_row_near(first.data() + b * V, ref.data() + (b * T + 3) * V, V, s.name + " prefill");
    while (engine.length(0) < T) {
      const std::vector<float> logits = engine.decode({tokens[engine.length(0)], tokens[T + engine.length(1)]}, {0, 1});
      const int pos = engine.length(0) - 1;
      for (int b = 0; b < 2; ++b)
        expect_row_near(logits.data() + b * V, ref.data() + (b * T + pos) * V, V,
                        s.name + " decode at position " + std::to_string(pos));
    }
  }
}

TEST(KvCache, AllocatesExactlyTheReportedBytesForSourceLayersOnly) {
  CountingBackend be;
  const ModelConfig mc = tiny_model();
  const std::size_t row = static_cast<std::size_t>(mc.n_kv_heads) * resolved_head_dim(mc);  // Hkv * D
  std::size_t full_bytes = 0;
  for (const SharingStrategy& s : zoo()) {
    const std::size_t before = be.live_bytes;
    KvCache cache(&be, mc, s, 3, 10);
    const std::size_t allocated = be.live_bytes - before;
    const std::size_t expected = 2 * static_cast<std::size_t>(s.n_cache_layers()) * 3 * 10 * row * sizeof(float);
    EXPECT_EQ(allocated, expected) << s.name;
    EXPECT_EQ(cache.bytes(), allocated) << s.name;
    EXPECT_EQ(cache.bytes_per_token() * 3 * 10, allocated) << s.name;
    EXPECT_EQ(kv_bytes_per_token(mc, s), cache.bytes_per_token()) << s.name;
    for (int l = 0; l < kLayers; ++l)
      EXPECT_EQ(cache.store().k_layers[l] != nullptr, s.src[l] == l) << s.name << " layer " << l;
    if (s.name == "full") full_bytes = allocated;
    if (s.name == "cla:2") EXPECT_EQ(2 * allocated, full_bytes);
  }
  EXPECT_EQ(be.live_bytes, 0u);  // every cache freed its storage
}

TEST(InferenceEngine, NonSourceLayersComputeNoKvProjection) {
  CountingBackend be;
  Model model(tiny_model(), &be);
  model.init_weights(3);
  const int V = model.config().vocab_size;
  const std::vector<std::vector<int32_t>> prompts = {random_tokens(4, V, 1), random_tokens(6, V, 2)};
  for (const SharingStrategy& s : zoo()) {
    be.matmul_weights.clear();
    InferenceEngine engine(model, s, 2, 12);
    GenerateOptions opt;
    opt.max_new_tokens = 5;
    engine.generate(prompts, opt);
    // Layer calls: one prefill per distinct prompt length (2), then 4 decode steps.
    const long calls = 2 + 4;
    EXPECT_EQ(engine.kv_projections(), calls * s.n_cache_layers()) << s.name;
    for (int l = 0; l < kLayers; ++l) {
      const float* wk = model.params() + model.tensor("layers/" + std::to_string(l) + "/attn/wk").offset;
      const float* wv = model.params() + model.tensor("layers/" + std::to_string(l) + "/attn/wv").offset;
      const long expected = s.src[l] == l ? calls : 0;
      EXPECT_EQ(be.matmul_weights[wk], expected) << s.name << " layer " << l << " K projections";
      EXPECT_EQ(be.matmul_weights[wv], expected) << s.name << " layer " << l << " V projections";
    }
  }
}

TEST(InferenceEngine, BatchedPromptsOfDifferentLengthsMatchOneAtATime) {
  Fixture f;
  const int V = f.model.config().vocab_size;
  const std::vector<std::vector<int32_t>> prompts = {random_tokens(3, V, 1), random_tokens(7, V, 2),
                                                     random_tokens(7, V, 3), random_tokens(5, V, 4)};
  for (const SharingStrategy& s : parse_strategy_list("full,cla:2,first", kLayers)) {
    GenerateOptions opt;
    opt.max_new_tokens = 8;
    // Stop token: one that some prompt generates early while another never does, so one
    // sequence stops while others go on (later decode steps skip its slot).
    std::vector<std::vector<int32_t>> free_run;
    for (const auto& p : prompts) {
      InferenceEngine solo(f.model, s, 1, 16);
      free_run.push_back(solo.generate({p}, opt).tokens[0]);
    }
    for (int c = 0; c < V && opt.stop_token < 0; ++c) {
      bool early = false, never = false;
      for (const auto& out : free_run) {
        const auto it = std::find(out.begin(), out.end(), c);
        early |= it != out.end() && it - out.begin() < opt.max_new_tokens - 2;
        never |= it == out.end();
      }
      if (early && never) opt.stop_token = c;
    }
    ASSERT_GE(opt.stop_token, 0) << s.name << ": no token stops one sequence early but not another";
    std::vector<GenerationResult> singles;
    for (const auto& p : prompts) {
      InferenceEngine solo(f.model, s, 1, 16);
      singles.push_back(solo.generate({p}, opt));
    }
    InferenceEngine batch(f.model, s, 4, 16);
    const GenerationResult together = batch.generate(prompts, opt);
    const auto n_ended = std::count(together.stop.begin(), together.stop.end(), StopReason::EndToken);
    EXPECT_GT(n_ended, 0) << s.name;
    EXPECT_LT(n_ended, 4) << s.name;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(together.tokens[i], singles[i].tokens[0]) << s.name << " prompt " << i;
      EXPECT_EQ(together.stop[i], singles[i].stop[0]) << s.name << " prompt " << i;
    }
    // The logits themselves agree too.
    InferenceEngine solo(f.model, s, 1, 16);
    const std::vector<float> batched = batch.prefill(prompts);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const std::vector<float> one = solo.prefill({prompts[i]});
      expect_row_near(batched.data() + i * V, one.data(), V, s.name + " prompt " + std::to_string(i));
    }
  }
}

// Chunked prefill (set_prefill_chunk): the same logits, every token's and the last one's, and
// the same generations as one step per prompt, for chunks that divide the prompts, that do
// not, of one token and longer than every prompt; and less memory held for a long prompt.
TEST(InferenceEngine, ChunkedPrefillMatchesOneStepAndHoldsLessMemory) {
  Fixture f;
  const int V = f.model.config().vocab_size;
  const std::vector<std::vector<int32_t>> prompts = {random_tokens(7, V, 1), random_tokens(7, V, 2),
                                                     random_tokens(4, V, 3)};
  GenerateOptions opt;
  opt.max_new_tokens = 5;
  for (const SharingStrategy& s : parse_strategy_list("full,cla:2,first,list:0,1,1,3", kLayers)) {
    InferenceEngine whole(f.model, s, 3, 16);
    const std::vector<float> all = whole.prefill(prompts, true), last = whole.prefill(prompts);
    const GenerationResult gen = whole.generate(prompts, opt);
    for (int chunk : {1, 3, 4, 100}) {
      const std::string what = s.name + ", chunk " + std::to_string(chunk);
      InferenceEngine chunked(f.model, s, 3, 16);
      chunked.set_prefill_chunk(chunk);
      const std::vector<float> c_all = chunked.prefill(prompts, true);
      ASSERT_EQ(c_all.size(), all.size()) << what;
      for (std::size_t r = 0; r < all.size() / V; ++r)
        expect_row_near(c_all.data() + r * V, all.data() + r * V, V, what + ", row " + std::to_string(r));
      const std::vector<float> c_last = chunked.prefill(prompts);
      ASSERT_EQ(c_last.size(), last.size()) << what;
      for (int i = 0; i < 3; ++i) expect_row_near(c_last.data() + i * V, last.data() + i * V, V, what);
      for (int i = 0; i < 3; ++i) EXPECT_EQ(chunked.length(i), static_cast<int>(prompts[i].size())) << what;
      const GenerationResult c_gen = chunked.generate(prompts, opt);
      EXPECT_EQ(c_gen.tokens, gen.tokens) << what;
    }
  }
  // One 16-token prompt: held memory (cache + scratch) after the prefill, chunk 4 against none.
  auto held_after_prefill = [&](int chunk) {
    CountingBackend be;
    Model model(tiny_model(), &be);
    model.init_weights(11);
    const std::size_t weights = be.live_bytes;
    InferenceEngine engine(model, parse_strategy("full", kLayers), 1, 16);
    engine.set_prefill_chunk(chunk);
    engine.prefill({random_tokens(16, V, 9)});
    return be.live_bytes - weights;
  };
  EXPECT_LT(held_after_prefill(4), held_after_prefill(0));
  InferenceEngine e(f.model, parse_strategy("full", kLayers), 1, 16);
  EXPECT_THROW(e.set_prefill_chunk(-1), std::invalid_argument);
}

TEST(InferenceEngine, StopsAtTheEndOfTheCache) {
  Fixture f;
  InferenceEngine engine(f.model, parse_strategy("cla:2", kLayers), 1, 8);
  GenerateOptions opt;
  opt.max_new_tokens = 100;
  const GenerationResult r = engine.generate({random_tokens(5, 13, 1)}, opt);
  // 5 prompt tokens + 3 fed back fill the 8 positions; the 4th generated token is never fed.
  EXPECT_EQ(r.tokens[0].size(), 4u);
  EXPECT_EQ(r.stop[0], StopReason::Context);
  EXPECT_EQ(r.decode_tokens, 3);
}

TEST(Sampling, SameSeedSameTokensOtherSeedOtherTokens) {
  Fixture f;
  const std::vector<std::vector<int32_t>> prompts = {random_tokens(3, 13, 1), random_tokens(5, 13, 2)};
  InferenceEngine engine(f.model, parse_strategy("cla:2", kLayers), 2, 16);
  GenerateOptions opt;
  opt.max_new_tokens = 12;
  opt.sampling.temperature = 1.0;
  opt.sampling.seed = 7;
  const auto a = engine.generate(prompts, opt).tokens;
  const auto b = engine.generate(prompts, opt).tokens;
  opt.sampling.seed = 8;
  const auto c = engine.generate(prompts, opt).tokens;
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  opt.sampling.temperature = 0;
  const auto greedy = engine.generate(prompts, opt).tokens;
  EXPECT_NE(a, greedy);  // temperature 1 on a random model does not follow the argmax for 24 tokens
}

TEST(Sampling, TopKOneIsGreedy) {
  Fixture f;
  const std::vector<std::vector<int32_t>> prompts = {random_tokens(3, 13, 1), random_tokens(5, 13, 2)};
  InferenceEngine engine(f.model, parse_strategy("half", kLayers), 2, 16);
  GenerateOptions greedy;
  greedy.max_new_tokens = 10;
  GenerateOptions top1 = greedy;
  top1.sampling = SamplingOptions{1.7, 1, 0.8, 99};
  EXPECT_EQ(engine.generate(prompts, top1).tokens, engine.generate(prompts, greedy).tokens);

  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.f, 3.f);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> logits(50);
    for (float& x : logits) x = normal(rng);
    const int argmax = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(sample_token(logits.data(), 50, SamplingOptions{0.9, 1, 1.0, 1}, trial), argmax);
    EXPECT_EQ(sample_token(logits.data(), 50, SamplingOptions{0, 0, 1.0, 1}, trial), argmax);
  }
}

namespace {
// Straightforward reference: softmax over everything, sort, cut at k, renormalise, cut at p.
std::vector<double> reference_distribution(const std::vector<float>& logits, double temperature, int k, double p) {
  const int V = static_cast<int>(logits.size());
  std::vector<double> prob(V);
  double z = 0;
  for (int i = 0; i < V; ++i) z += std::exp(logits[i] / temperature);
  for (int i = 0; i < V; ++i) prob[i] = std::exp(logits[i] / temperature) / z;
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return prob[a] > prob[b]; });
  if (k > 0)
    for (int i = k; i < V; ++i) prob[order[i]] = 0;
  double kept = 0;
  for (double x : prob) kept += x;
  for (double& x : prob) x /= kept;
  double cum = 0;
  bool done = false;
  for (int i : order) {
    if (done) prob[i] = 0;
    cum += prob[i];
    if (cum >= p - 1e-12) done = true;
  }
  double total = 0;
  for (double x : prob) total += x;
  for (double& x : prob) x /= total;
  return prob;
}
}  // namespace

TEST(Sampling, DrawsFollowTemperatureTopKAndTopP) {
  const std::vector<float> logits = {1.0f, 2.5f, -0.5f, 0.3f, 2.0f, -2.0f, 1.7f, 0.0f};
  const int V = static_cast<int>(logits.size());
  struct Case {
    double temperature;
    int k;
    double p;
  };
  for (const Case c : {Case{1.0, 0, 1.0}, Case{0.7, 0, 1.0}, Case{1.3, 4, 1.0}, Case{1.0, 0, 0.8}, Case{2.0, 5, 0.9}}) {
    const SamplingOptions opt{c.temperature, c.k, c.p, 42};
    const std::vector<double> want = reference_distribution(logits, c.temperature, c.k, c.p);
    const std::vector<double> got = sampling_distribution(logits.data(), V, opt);
    for (int i = 0; i < V; ++i) EXPECT_NEAR(got[i], want[i], 1e-9) << "T " << c.temperature << " k " << c.k << " p " << c.p;
    const int n = 20000;
    std::vector<int> count(V, 0);
    for (int d = 0; d < n; ++d) ++count[sample_token(logits.data(), V, opt, d)];
    for (int i = 0; i < V; ++i) {
      if (want[i] == 0) {
        EXPECT_EQ(count[i], 0) << "token " << i << " is outside top-k/top-p but was drawn";
        continue;
      }
      const double sigma = std::sqrt(want[i] * (1 - want[i]) / n);
      EXPECT_NEAR(count[i] / double(n), want[i], 5 * sigma + 1e-3) << "token " << i;
    }
  }
}

TEST(InferenceEngine, BadInputIsRefusedWithAClearMessage) {
  Fixture f;
  auto expect_error = [](auto fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const SharingStrategy cla2 = parse_strategy("cla:2", kLayers);
  InferenceEngine engine(f.model, cla2, 2, 8);
  expect_error([&] { engine.prefill({{}}); }, "prompt 0 is empty");
  expect_error([&] { engine.prefill({random_tokens(9, 13, 1)}); }, "has 9 tokens but at most 8 fit");
  expect_error([&] { engine.prefill({{1, 2, 13}}); }, "token id 13 outside vocabulary of 13");
  expect_error([&] { engine.prefill({{1}, {2}, {3}}); }, "3 prompts but the cache holds 2");
  expect_error([&] { InferenceEngine(f.model, SharingStrategy{"six", {0, 1, 2, 3, 4, 5}}, 1, 8); },
               "6 entries but the model has 4 layers");
  expect_error([&] { InferenceEngine(f.model, SharingStrategy{"bad", {0, 1, 1, 2}}, 1, 8); },
               "layer 3 reads layer 2, which itself reads layer 1");
  expect_error([&] { InferenceEngine(f.model, cla2, 1, 17); }, "must be in 1..16");
  GenerateOptions opt;
  opt.sampling.top_p = 0;
  expect_error([&] { engine.generate({{1}}, opt); }, "--top-p must be in (0, 1]");
  opt.sampling = SamplingOptions{-1, 0, 1, 0};
  expect_error([&] { engine.generate({{1}}, opt); }, "--temperature must be");
  opt.sampling = SamplingOptions{1, -2, 1, 0};
  expect_error([&] { engine.generate({{1}}, opt); }, "--top-k must be >= 0");
  opt.sampling = SamplingOptions{};
  opt.max_new_tokens = 0;
  expect_error([&] { engine.generate({{1}}, opt); }, "--max-new-tokens must be >= 1");
  engine.prefill({random_tokens(8, 13, 2)});
  expect_error([&] { engine.decode({1}, {0}); }, "already fills the cache");
  expect_error([&] { engine.decode({1, 2}, {1, 1}); }, "slot 1 is out of range or repeated");
}
