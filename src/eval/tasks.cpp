// Downstream tasks scored as lm-evaluation-harness scores them (tasks.h).
#include "kvroute/tasks.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <stdexcept>

#include "kvroute/inference.h"
#include "kvroute/input_file.h"
#include "kvroute/input_limits.h"

namespace kvroute {

namespace fs = std::filesystem;
using json = nlohmann::json;

Task read_task_file(const std::string& path) {
  const std::string what = "task file '" + path + "'";
  const std::string text = read_input_file(path, limits::kJsonFileBytes, what);
  Task task;
  task.path = path;
  task.name = fs::path(path).stem().string();
  std::size_t line_no = 0;
  for (std::size_t pos = 0; pos < text.size();) {
    const std::size_t nl = std::min(text.find('\n', pos), text.size());
    const std::string_view line = std::string_view(text).substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const std::string where = what + " line " + std::to_string(line_no);
    const json j = parse_input_json(line, where);
    auto fail = [&](const std::string& why) { throw std::runtime_error(where + ": " + why); };
    if (!j.is_object()) fail("not a JSON object");
    auto text_of = [&](const char* key) {
      const auto it = j.find(key);
      if (it == j.end() || !it->is_string()) fail(std::string("\"") + key + "\" is missing or not a string");
      return it->get<std::string>();
    };
    TaskItem item;
    item.context = text_of("context");
    if (j.contains("choices")) {
      const json& c = j["choices"];
      if (!c.is_array() || c.empty()) fail("\"choices\" is not a non-empty list");
      for (const json& e : c) {
        if (!e.is_string() || e.get<std::string>().empty()) fail("\"choices\" holds something other than text");
        item.choices.push_back(e.get<std::string>());
      }
      if (!j.contains("gold") || !j["gold"].is_number_integer() || j["gold"].get<int64_t>() < 0 ||
          j["gold"].get<int64_t>() >= static_cast<int64_t>(item.choices.size()))
        fail("\"gold\" is not an index into \"choices\" (0.." + std::to_string(item.choices.size() - 1) + ")");
      item.gold = static_cast<int>(j["gold"].get<int64_t>());
    } else if (j.contains("target")) {
      item.target = text_of("target");
      if (item.target.empty()) fail("\"target\" is empty");
    } else {
      fail("neither \"choices\" (multiple choice) nor \"target\" (completion)");
    }
    if (!task.items.empty() && task.items.front().multiple_choice() != item.multiple_choice())
      fail("mixes multiple-choice and completion items; one kind a file");
    task.items.push_back(std::move(item));
  }
  if (task.items.empty()) throw std::runtime_error(what + ": no items");
  return task;
}

namespace {

// lm-eval's _encode_pair: the context's trailing spaces belong to the continuation.
std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const Tokenizer& tok, std::string context,
                                                                  std::string continuation) {
  const std::size_t spaces = context.size() - std::min(context.size(), context.find_last_not_of(' ') + 1);
  if (spaces > 0) {
    continuation = context.substr(context.size() - spaces) + continuation;
    context.resize(context.size() - spaces);
  }
  const std::vector<int32_t> whole = tok.encode(context + continuation);
  const std::vector<int32_t> ctx = tok.encode(context);
  const std::size_t n = std::min(ctx.size(), whole.size());
  return {std::vector<int32_t>(whole.begin(), whole.begin() + n), std::vector<int32_t>(whole.begin() + n, whole.end())};
}

}  // namespace

std::vector<LoglikelihoodResult> loglikelihoods(Model& model, const SharingStrategy& strategy, const Tokenizer& tok,
                                                const std::vector<std::pair<std::string, std::string>>& requests,
                                                int batch_size) {
  if (batch_size < 1) throw std::invalid_argument("task batch size must be >= 1");
  const int context = model.config().context;
  const int V = model.config().vocab_size;
  struct Encoded {
    std::vector<int32_t> sequence;  // context + continuation, less the last token (it is only predicted)
    std::size_t first = 0;          // position whose logits predict the continuation's first token
    std::vector<int32_t> continuation;
  };
  std::vector<Encoded> enc;
  int max_len = 1;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    auto [ctx, cont] = encode_pair(tok, requests[i].first, requests[i].second);
    if (cont.empty())
      throw std::invalid_argument("task request " + std::to_string(i + 1) + ": the continuation has no tokens");
    // An empty context is predicted from the end-of-text token, as lm-eval does.
    if (ctx.empty()) ctx.push_back(tok.eos_id() >= 0 ? tok.eos_id() : tok.document_separator().front());
    Encoded e;
    e.sequence = ctx;
    e.sequence.insert(e.sequence.end(), cont.begin(), cont.end() - 1);
    e.first = ctx.size() - 1;
    e.continuation = cont;
    if (static_cast<int>(e.sequence.size()) > context)
      throw std::invalid_argument("task request " + std::to_string(i + 1) + ": " +
                                  std::to_string(e.sequence.size() + 1) + " tokens do not fit the model context of " +
                                  std::to_string(context));
    max_len = std::max(max_len, static_cast<int>(e.sequence.size()));
    enc.push_back(std::move(e));
  }
  std::vector<LoglikelihoodResult> out(requests.size());
  if (enc.empty()) return out;
  const int B = std::min<int>(batch_size, static_cast<int>(enc.size()));
  InferenceEngine engine(model, strategy, B, max_len);
  for (std::size_t start = 0; start < enc.size(); start += B) {
    const std::size_t end = std::min(enc.size(), start + B);
    std::vector<std::vector<int32_t>> prompts;
    for (std::size_t i = start; i < end; ++i) prompts.push_back(enc[i].sequence);
    const std::vector<float> logits = engine.prefill(prompts, /*all_logits=*/true);
    std::size_t row0 = 0;  // first row of this prompt in logits
    for (std::size_t i = start; i < end; ++i) {
      const Encoded& e = enc[i];
      double ll = 0;
      bool greedy = true;
      for (std::size_t k = 0; k < e.continuation.size(); ++k) {
        const float* row = logits.data() + (row0 + e.first + k) * static_cast<std::size_t>(V);
        // log softmax in double, from the row's maximum
        const float mx = *std::max_element(row, row + V);
        double sum = 0;
        for (int v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
        const int32_t want = e.continuation[k];
        ll += static_cast<double>(row[want]) - mx - std::log(sum);
        greedy = greedy && std::max_element(row, row + V) - row == want;
      }
      out[i] = {ll, greedy};
      row0 += e.sequence.size();
    }
  }
  return out;
}

TaskScore score_task(Model& model, const SharingStrategy& strategy, const Tokenizer& tok, const Task& task,
                     int batch_size) {
  TaskScore s;
  s.name = task.name;
  s.items = static_cast<int>(task.items.size());
  s.multiple_choice = task.items.front().multiple_choice();
  std::vector<std::pair<std::string, std::string>> requests;
  for (const TaskItem& it : task.items) {
    if (it.multiple_choice())
      for (const std::string& c : it.choices) requests.emplace_back(it.context, c);
    else
      requests.emplace_back(it.context, it.target);
  }
  const std::vector<LoglikelihoodResult> r = loglikelihoods(model, strategy, tok, requests, batch_size);
  std::size_t k = 0;
  double correct = 0, correct_norm = 0, ll_sum = 0;
  for (const TaskItem& it : task.items) {
    if (!it.multiple_choice()) {
      correct += r[k].greedy;
      ll_sum += r[k].ll;
      ++k;
      continue;
    }
    // The first best wins a tie, as numpy's argmax in lm-eval.
    int best = 0, best_norm = 0;
    for (int c = 0; c < static_cast<int>(it.choices.size()); ++c) {
      const double ll = r[k + c].ll, norm = ll / static_cast<double>(it.choices[c].size());
      if (ll > r[k + best].ll) best = c;
      if (norm > r[k + best_norm].ll / static_cast<double>(it.choices[best_norm].size())) best_norm = c;
    }
    correct += best == it.gold;
    correct_norm += best_norm == it.gold;
    ll_sum += r[k + it.gold].ll;
    k += it.choices.size();
  }
  s.acc = correct / s.items;
  s.acc_norm = s.multiple_choice ? correct_norm / s.items : 0;
  s.mean_ll = ll_sum / s.items;
  return s;
}

}  // namespace kvroute
