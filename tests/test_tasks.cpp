// Downstream tasks under sharing (tasks.h): loglikelihoods against a slow reference that
// prefills every prefix on its own; acc and acc_norm as lm-evaluation-harness defines them;
// the context's trailing spaces moving to the continuation; task files refused naming file and
// line; `kvroute eval --task` reporting each task per strategy.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>

#include "data_fixtures.h"
#include "error_of.h"
#include "kvroute/backend.h"
#include "kvroute/cpu_threads.h"
#include "kvroute/inference.h"
#include "kvroute/tasks.h"
#include "run_kvroute.h"

namespace kvroute {
namespace {

using ::testing::HasSubstr;
using namespace testing_data;
using testing_errors::error_of;

ModelConfig byte_model() {
  ModelConfig m;
  m.vocab_size = 256;
  m.d_model = 16;
  m.n_layers = 4;
  m.n_heads = 4;
  m.n_kv_heads = 2;
  m.d_ff = 24;
  m.context = 64;
  m.init_std = 0.3;
  return m;
}

// Slow, obviously correct: the log-probability of each continuation token from a fresh prefill
// of exactly the tokens before it (bytes: context and continuation tokenize separately).
double reference_ll(Model& model, const SharingStrategy& s, const std::string& context, const std::string& cont) {
  std::vector<int32_t> seq(context.begin(), context.end());
  double ll = 0;
  for (unsigned char c : cont) {
    InferenceEngine e(model, s, 1, static_cast<int>(seq.size()));
    const std::vector<float> logits = e.prefill({seq});
    double mx = -1e30, sum = 0;
    for (float v : logits) mx = std::max<double>(mx, v);
    for (float v : logits) sum += std::exp(v - mx);
    ll += logits[c] - mx - std::log(sum);
    seq.push_back(c);
  }
  return ll;
}

TEST(Tasks, LoglikelihoodsMatchTheReferenceUnderSharing) {
  configure_cpu_threads(1);
  auto backend = make_backend("cpu");
  Model model(byte_model(), backend.get());
  model.init_weights(5);
  const auto tok = make_byte_tokenizer();
  const std::vector<std::pair<std::string, std::string>> requests = {
      {"The cat sat on the", " mat"}, {"x", "yz"}, {"a longer context of some length,", " and more"}, {"q", "?"}};
  for (const char* name : {"full", "cla:2", "first"}) {
    const SharingStrategy s = parse_strategy(name, 4);
    const auto got = loglikelihoods(model, s, *tok, requests, 3);  // a short last batch
    ASSERT_EQ(got.size(), requests.size());
    for (std::size_t i = 0; i < requests.size(); ++i)
      EXPECT_NEAR(got[i].ll, reference_ll(model, s, requests[i].first, requests[i].second), 1e-4) << name << " " << i;
  }
  // The context's trailing spaces go to the continuation (lm-eval's _encode_pair).
  const SharingStrategy full = parse_strategy("full", 4);
  EXPECT_NEAR(loglikelihoods(model, full, *tok, {{"The cat sat on the ", "mat"}})[0].ll,
              reference_ll(model, full, "The cat sat on the", " mat"), 1e-4);
  EXPECT_THAT(error_of([&] { loglikelihoods(model, full, *tok, {{std::string(80, 'a'), "b"}}); }),
              HasSubstr("do not fit the model context of 64"));
}

TEST(Tasks, AccuracyAndLengthNormalisedAccuracyAreLmEvalsDefinitions) {
  configure_cpu_threads(1);
  auto backend = make_backend("cpu");
  Model model(byte_model(), backend.get());
  model.init_weights(9);
  const auto tok = make_byte_tokenizer();
  const SharingStrategy s = parse_strategy("cla:2", 4);
  Task task;
  task.name = "mc";
  const std::vector<std::vector<std::string>> choice_sets = {
      {" a", " bb", " ccc"}, {" dog", " d", " doggo"}, {" x", " y"}, {" long answer here", " no"}};
  int expect_acc = 0, expect_norm = 0;
  double expect_ll = 0;
  for (std::size_t i = 0; i < choice_sets.size(); ++i) {
    TaskItem it;
    it.context = "Question " + std::to_string(i) + ":";
    it.choices = choice_sets[i];
    it.gold = static_cast<int>(i % it.choices.size());
    int best = 0, best_norm = 0;
    std::vector<double> ll;
    for (const std::string& c : it.choices) ll.push_back(reference_ll(model, s, it.context, c));
    for (std::size_t c = 0; c < ll.size(); ++c) {
      if (ll[c] > ll[best]) best = static_cast<int>(c);
      if (ll[c] / it.choices[c].size() > ll[best_norm] / it.choices[best_norm].size()) best_norm = static_cast<int>(c);
    }
    expect_acc += best == it.gold;
    expect_norm += best_norm == it.gold;
    expect_ll += ll[it.gold];
    task.items.push_back(it);
  }
  const TaskScore score = score_task(model, s, *tok, task, 2);
  EXPECT_TRUE(score.multiple_choice);
  EXPECT_EQ(score.items, 4);
  EXPECT_DOUBLE_EQ(score.acc, expect_acc / 4.0);
  EXPECT_DOUBLE_EQ(score.acc_norm, expect_norm / 4.0);
  EXPECT_NEAR(score.mean_ll, expect_ll / 4, 1e-4);
  // Completion: exact match when greedy decoding reproduces the target.
  Task completion;
  completion.name = "cloze";
  InferenceEngine e(model, s, 1, 4);
  const std::vector<float> logits = e.prefill({{'a', 'b', 'c'}});
  const auto greedy = static_cast<char>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  completion.items = {TaskItem{"abc", {}, -1, std::string(1, greedy)},
                      TaskItem{"abc", {}, -1, std::string(1, static_cast<char>(greedy ^ 1))}};
  const TaskScore c = score_task(model, s, *tok, completion);
  EXPECT_FALSE(c.multiple_choice);
  EXPECT_DOUBLE_EQ(c.acc, 0.5);
}

TEST(Tasks, TaskFilesAreCheckedNamingFileAndLine) {
  const fs::path dir = fresh_temp_dir("tasks_files");
  auto error_with = [&](const std::string& text) {
    write_file_bytes(dir / "t.jsonl", text);
    return error_of([&] { read_task_file((dir / "t.jsonl").string()); });
  };
  const std::string ok = R"({"context": "c", "choices": ["a", "b"], "gold": 1})" "\n";
  EXPECT_EQ(read_task_file(((void)error_with(ok + "\n" + ok), dir / "t.jsonl").string()).items.size(), 2u);
  EXPECT_EQ(read_task_file((dir / "t.jsonl").string()).name, "t");
  EXPECT_THAT(error_with(ok + "nope\n"), HasSubstr("t.jsonl' line 2: not valid JSON"));
  EXPECT_THAT(error_with(ok + R"({"context": "c", "choices": ["a"], "gold": 3})" "\n"),
              HasSubstr("line 2: \"gold\" is not an index into \"choices\" (0..0)"));
  EXPECT_THAT(error_with(R"({"context": "c"})" "\n"), HasSubstr("line 1: neither \"choices\""));
  EXPECT_THAT(error_with(R"({"choices": ["a"], "gold": 0})" "\n"), HasSubstr("\"context\" is missing"));
  EXPECT_THAT(error_with(ok + R"({"context": "c", "target": "t"})" "\n"), HasSubstr("line 2: mixes multiple-choice"));
  EXPECT_THAT(error_with(R"({"context": "c", "target": ""})" "\n"), HasSubstr("\"target\" is empty"));
  EXPECT_THAT(error_with("\n"), HasSubstr("no items"));
}

TEST(Tasks, EvalReportsEachTaskPerStrategy) {
  using testing_cli::run;
  const fs::path dir = fresh_temp_dir("tasks_cli");
  write_file_bytes(dir / "corpus.txt", join_documents(generated_documents(60)));
  auto r = run("train --set model.vocab_size=256 --set model.d_model=32 --set model.n_layers=4 --set model.n_heads=2"
               " --set model.n_kv_heads=1 --set model.d_ff=64 --set model.context=64 --set data.tokenizer=byte"
               " --set data.shards= --set data.train_path=" + (dir / "corpus.txt").string() +
               " --set train.steps=4 --set train.batch_size=2 --set train.seq_len=32 --set train.warmup_steps=1"
               " --set train.eval_batches=1 --set train.out_dir=" + (dir / "run").string());
  ASSERT_EQ(r.status, 0) << r.output;
  write_file_bytes(dir / "mc.jsonl", R"({"context": "The", "choices": [" the", " and", " of"], "gold": 0})" "\n"
                                     R"({"context": "and", "choices": [" x", " the"], "gold": 1})" "\n");
  write_file_bytes(dir / "cloze.jsonl", R"({"context": "the", "target": " and"})" "\n");
  r = run("eval " + (dir / "run/model.h5").string() + " --strategies full,cla:2 --no-speed --batches 1 --task " +
          (dir / "mc.jsonl").string() + " --task " + (dir / "cloze.jsonl").string() + " --out " + (dir / "eval").string());
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string md = read_file_bytes(dir / "eval/results.md");
  EXPECT_THAT(md, HasSubstr("| strategy | task | items | acc | acc vs full | acc_norm | mean loglik |"));
  EXPECT_THAT(md, HasSubstr("| cla:2 | mc | 2 |"));
  EXPECT_THAT(md, HasSubstr("| full | cloze (exact match) | 1 |"));
  const auto j = nlohmann::json::parse(read_file_bytes(dir / "eval/results.json"));
  ASSERT_EQ(j["results"].size(), 2u);
  EXPECT_EQ(j["results"][1]["tasks"][0]["task"], "mc");
  EXPECT_EQ(j["results"][1]["tasks"][1]["kind"], "completion");
  r = run("eval " + (dir / "run/model.h5").string() + " --no-speed --task " + (dir / "corpus.txt").string());
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("corpus.txt' line 1: not valid JSON"));
}

}  // namespace
}  // namespace kvroute
