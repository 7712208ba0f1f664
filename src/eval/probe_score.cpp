// Greedy generation and exact-match scoring of the retrieval probe through the inference
// engine (probe.h).
#include <algorithm>
#include <stdexcept>

#include "kvroute/inference.h"
#include "kvroute/probe.h"

namespace kvroute {

bool probe_answer_matches(const std::string& generated_text, const std::string& answer) {
  return generated_text == " " + answer;
}

std::vector<std::string> probe_generations(Model& model, const SharingStrategy& strategy, const Tokenizer& tok,
                                           const std::vector<ProbeItem>& items, int batch_size) {
  if (batch_size < 1) throw std::invalid_argument("probe batch size must be >= 1");
  if (items.empty()) return {};
  const int context = model.config().context;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> answer_tokens;
  int max_len = 1;
  for (std::size_t i = 0; i < items.size(); ++i) {
    prompts.push_back(tok.encode(items[i].prompt));
    answer_tokens.push_back(static_cast<int>(tok.encode(" " + items[i].answer).size()));
    const int need = static_cast<int>(prompts.back().size()) + answer_tokens.back();
    if (prompts.back().empty() || need > context)
      throw std::invalid_argument("probe item " + std::to_string(i + 1) + ": prompt of " +
                                  std::to_string(prompts.back().size()) + " tokens + answer of " +
                                  std::to_string(answer_tokens.back()) + " does not fit the model context of " +
                                  std::to_string(context) + " (use fewer --pairs)");
    max_len = std::max(max_len, need);
  }
  const int B = std::min<int>(batch_size, static_cast<int>(items.size()));
  InferenceEngine engine(model, strategy, B, max_len);
  std::vector<std::string> out;
  for (std::size_t start = 0; start < items.size(); start += B) {
    const std::size_t end = std::min(items.size(), start + B);
    const std::vector<std::vector<int32_t>> batch(prompts.begin() + start, prompts.begin() + end);
    GenerateOptions opt;
    opt.max_new_tokens = *std::max_element(answer_tokens.begin() + start, answer_tokens.begin() + end);
    opt.sampling.temperature = 0;  // greedy
    const GenerationResult r = engine.generate(batch, opt);
    for (std::size_t i = start; i < end; ++i) {
      std::vector<int32_t> got = r.tokens[i - start];
      got.resize(std::min<std::size_t>(got.size(), answer_tokens[i]));
      out.push_back(tok.decode(got));
    }
  }
  return out;
}

ProbeScore score_probe(Model& model, const SharingStrategy& strategy, const Tokenizer& tok,
                       const std::vector<ProbeItem>& items, int batch_size) {
  const std::vector<std::string> gen = probe_generations(model, strategy, tok, items, batch_size);
  ProbeScore score;
  for (std::size_t i = 0; i < items.size(); ++i) {
    ++score.items;
    score.correct += probe_answer_matches(gen[i], items[i].answer);
  }
  return score;
}

}  // namespace kvroute
