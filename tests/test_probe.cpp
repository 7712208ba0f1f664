// The key-value recall probe: generation, the probe file, and greedy exact-match scoring
// against a slow reference (re-prefill the whole sequence for every generated token).
#include "kvroute/probe.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>

#include "kvroute/backend.h"
#include "kvroute/cpu_threads.h"
#include "kvroute/inference.h"
#include "kvroute/tokenizer.h"
#include "data_fixtures.h"

using namespace kvroute;
using namespace kvroute::testing_data;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir() { return kvroute::testing_data::fresh_temp_dir("kvroute_probe"); }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// Parses "recall: k1 is v1 , k2 is v2 . q is" into the pairs and the query key.
struct Parsed {
  std::vector<std::pair<std::string, std::string>> pairs;
  std::string query;
};
Parsed parse_prompt(const std::string& prompt) {
  static const std::regex whole(R"(^recall: (.*) \. ([a-z]+) is$)");
  std::smatch m;
  EXPECT_TRUE(std::regex_match(prompt, m, whole)) << prompt;
  Parsed p;
  p.query = m[2];
  const std::string list = m[1];
  static const std::regex pair(R"(([a-z]+) is ([a-z]+))");
  for (auto it = std::sregex_iterator(list.begin(), list.end(), pair); it != std::sregex_iterator(); ++it)
    p.pairs.emplace_back((*it)[1], (*it)[2]);
  return p;
}

const fs::path kKjvTokenizer = fs::path(KVROUTE_SOURCE_DIR) / "data" / "kjv-sp2048";

}  // namespace

TEST(Probe, ItemsAreKeyValueRecallWithTheRightAnswer) {
  const auto tok = make_byte_tokenizer();
  const std::vector<ProbeItem> items = generate_probe(*tok, {.n = 300, .pairs = 5, .seed = 3});
  ASSERT_EQ(items.size(), 300u);
  std::map<int, int> query_position;
  for (const ProbeItem& it : items) {
    const Parsed p = parse_prompt(it.prompt);
    ASSERT_EQ(p.pairs.size(), 5u) << it.prompt;
    std::set<std::string> keys, values;
    int found = -1;
    for (std::size_t k = 0; k < p.pairs.size(); ++k) {
      keys.insert(p.pairs[k].first);
      values.insert(p.pairs[k].second);
      if (p.pairs[k].first == p.query) found = static_cast<int>(k);
    }
    EXPECT_EQ(keys.size(), 5u) << "keys repeat: " << it.prompt;
    EXPECT_EQ(values.size(), 5u) << "values repeat: " << it.prompt;
    ASSERT_GE(found, 0) << "query key not in the list: " << it.prompt;
    EXPECT_EQ(it.answer, p.pairs[found].second) << it.prompt;
    ++query_position[found];
  }
  // The queried position is spread over the list (uniform: 60 expected each).
  for (int k = 0; k < 5; ++k) EXPECT_GT(query_position[k], 30) << "position " << k;
}

TEST(Probe, DeterministicInTheSeed) {
  const auto tok = make_byte_tokenizer();
  const auto a = generate_probe(*tok, {.n = 20, .pairs = 3, .seed = 1});
  const auto b = generate_probe(*tok, {.n = 20, .pairs = 3, .seed = 1});
  const auto c = generate_probe(*tok, {.n = 20, .pairs = 3, .seed = 2});
  int same_as_c = 0;
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(a[i].prompt, b[i].prompt);
    EXPECT_EQ(a[i].answer, b[i].answer);
    same_as_c += a[i].prompt == c[i].prompt;
  }
  EXPECT_LT(same_as_c, 2);
  // A longer probe starts with the shorter one (item i depends only on (seed, i)).
  const auto longer = generate_probe(*tok, {.n = 25, .pairs = 3, .seed = 1});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(longer[i].prompt, a[i].prompt);
}

TEST(Probe, ByteTokenizerGetsDistinctThreeLetterWords) {
  const auto words = probe_words(*make_byte_tokenizer());
  ASSERT_EQ(words.size(), 400u);
  EXPECT_EQ(std::set<std::string>(words.begin(), words.end()).size(), 400u);
  for (const auto& w : words) EXPECT_TRUE(std::regex_match(w, std::regex("[a-z]{3}"))) << w;
}

TEST(Probe, SentencePieceWordsAreSingleTokensAndPromptsTokenizeAsPrefixes) {
  // The default tokenizer when scripts/data.sh has built it, else one trained here on generated text.
  std::string tok_dir = kKjvTokenizer.string();
  if (!fs::exists(kKjvTokenizer / "tokenizer.model")) {
    const fs::path dir = fresh_temp_dir("kvroute_probe_tok");
    // 120 distinct words, each frequent enough to become one piece of a 400-piece vocabulary.
    std::string text;
    for (int line = 0; line < 3000; ++line) {
      for (int k = 0; k < 10; ++k) {
        const int w = (line * 7 + k * 13) % 120;
        text += std::string(k ? " " : "") + char('a' + w % 26) + char('a' + (w / 26) % 26) + "o" + char('a' + w % 5);
      }
      text += ".\n";
    }
    write_file_bytes(dir / "corpus.txt", text);
    TokenizerTrainOptions o;
    o.inputs = {(dir / "corpus.txt").string()};
    o.out_dir = tok_dir = (dir / "tok").string();
    o.vocab_size = 400;
    train_tokenizer(o);
  }
  const auto tok = load_tokenizer(tok_dir);
  const auto words = probe_words(*tok);
  ASSERT_GE(words.size(), 64u);
  for (const auto& w : words) EXPECT_EQ(tok->encode(" " + w).size(), 1u) << w;
  // The training document's tokens start with the prompt's tokens, so training on
  // documents teaches exactly the continuation the probe asks for.
  for (const ProbeItem& it : generate_probe(*tok, {.n = 50, .pairs = 6, .seed = 9})) {
    const auto prompt = tok->encode(it.prompt);
    const auto doc = tok->encode(probe_document(it));
    ASSERT_LE(prompt.size(), doc.size());
    EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), doc.begin())) << it.prompt;
    EXPECT_EQ(tok->decode(std::vector<int32_t>(doc.begin() + prompt.size(), doc.end())), " " + it.answer);
  }
}

TEST(Probe, WordsLimitThePoolToTheFirstWords) {
  const auto tok = make_byte_tokenizer();
  const auto all = probe_words(*tok);
  const std::set<std::string> first8(all.begin(), all.begin() + 8);
  std::set<std::string> used;
  for (const ProbeItem& it : generate_probe(*tok, {.n = 200, .pairs = 3, .words = 8, .seed = 2})) {
    const Parsed p = parse_prompt(it.prompt);
    for (const auto& [k, v] : p.pairs) used.insert({k, v});
  }
  EXPECT_EQ(used, first8);  // every one of the 8 words is used, and no other
  EXPECT_NE(error_of([&] { generate_probe(*tok, {.n = 1, .pairs = 3, .words = 5}); }).find("needs 6 distinct words"),
            std::string::npos);
  EXPECT_NE(error_of([&] { generate_probe(*tok, {.n = 1, .words = -1}); }).find("--words must be >= 0"),
            std::string::npos);
}

TEST(Probe, BadSpecsAreNamed) {
  const auto tok = make_byte_tokenizer();
  EXPECT_NE(error_of([&] { generate_probe(*tok, {.n = 0}); }).find("--n must be >= 1"), std::string::npos);
  EXPECT_NE(error_of([&] { generate_probe(*tok, {.n = 1, .pairs = 0}); }).find("--pairs must be >= 1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { generate_probe(*tok, {.n = 1, .pairs = 201}); }).find("needs 402 distinct words"),
            std::string::npos);
}

TEST(Probe, FileRoundTripAndBadFilesNameFileAndLine) {
  const fs::path dir = temp_dir();
  const auto items = generate_probe(*make_byte_tokenizer(), {.n = 7, .pairs = 2, .seed = 5});
  const std::string path = (dir / "probe.tsv").string();
  write_probe_file(path, items, "made by a test\nsecond line");
  const auto back = read_probe_file(path);
  ASSERT_EQ(back.size(), items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    EXPECT_EQ(back[i].prompt, items[i].prompt);
    EXPECT_EQ(back[i].answer, items[i].answer);
  }
  std::ifstream in(path);
  std::string first;
  std::getline(in, first);
  EXPECT_EQ(first, "# made by a test");

  auto write = [&](const std::string& name, const std::string& text) {
    const std::string p = (dir / name).string();
    std::ofstream(p) << text;
    return p;
  };
  const std::string no_tab = write("no_tab.tsv", "# c\na\tb\nno tab here\n");
  EXPECT_NE(error_of([&] { read_probe_file(no_tab); }).find(no_tab + "' line 3: expected prompt<TAB>answer"),
            std::string::npos);
  const std::string two_tabs = write("two_tabs.tsv", "a\tb\tc\n");
  EXPECT_NE(error_of([&] { read_probe_file(two_tabs); }).find("line 1: expected prompt<TAB>answer"), std::string::npos);
  const std::string empty_answer = write("empty_answer.tsv", "a\t\n");
  EXPECT_NE(error_of([&] { read_probe_file(empty_answer); }).find("line 1: empty prompt or answer"), std::string::npos);
  const std::string only_comments = write("only_comments.tsv", "# nothing\n\n");
  EXPECT_NE(error_of([&] { read_probe_file(only_comments); }).find("no items"), std::string::npos);
  EXPECT_NE(error_of([&] { read_probe_file((dir / "missing.tsv").string()); }).find("cannot open"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Probe, AnswerMatchIsExact) {
  EXPECT_TRUE(probe_answer_matches(" cup", "cup"));
  EXPECT_FALSE(probe_answer_matches("cup", "cup"));
  EXPECT_FALSE(probe_answer_matches(" cups", "cup"));
  EXPECT_FALSE(probe_answer_matches(" cu", "cup"));
  EXPECT_FALSE(probe_answer_matches(" Cup", "cup"));
}

// ---- scoring through the engine ----

namespace {

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

// Bytes in, but every decoded generation starts with a space followed by one letter per
// further token: lets a test give half the items the answer the model generates.
class SpaceFirstTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override { return bytes_->encode(text); }
  std::string decode(std::span<const int32_t> ids) const override {
    std::string s = ids.empty() ? "" : " ";
    for (std::size_t k = 1; k < ids.size(); ++k) s += static_cast<char>('a' + ids[k] % 26);
    return s;
  }
  int vocab_size() const override { return 256; }
  std::string identity() const override { return "space-first"; }
  uint64_t fingerprint() const override { return 0; }
  std::vector<int32_t> document_separator() const override { return {10}; }
  std::string piece(int32_t id) const override { return bytes_->piece(id); }

 private:
  std::unique_ptr<Tokenizer> bytes_ = make_byte_tokenizer();
};

// Slow, obviously-correct greedy decoding: re-prefill the whole sequence for every token.
std::string reference_generation(Model& model, const SharingStrategy& s, const Tokenizer& tok, const ProbeItem& it) {
  std::vector<int32_t> seq = tok.encode(it.prompt);
  const std::size_t n = tok.encode(" " + it.answer).size();
  std::vector<int32_t> out;
  for (std::size_t k = 0; k < n; ++k) {
    InferenceEngine e(model, s, 1, static_cast<int>(seq.size()));
    const std::vector<float> logits = e.prefill({seq});
    const int next = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    seq.push_back(next);
  }
  return tok.decode(out);
}

}  // namespace

TEST(Probe, GenerationsAndScoreMatchTheReferenceUnderSharing) {
  configure_cpu_threads(1);  // tiny ops: a second thread only adds barrier waits on a busy machine
  auto backend = make_backend("cpu");
  Model model(byte_model(), backend.get());
  model.init_weights(17);
  const auto tok = std::make_unique<SpaceFirstTokenizer>();
  std::vector<ProbeItem> items = generate_probe(*tok, {.n = 7, .pairs = 2, .seed = 4});
  for (const char* name : {"full", "cla:2", "first"}) {
    const SharingStrategy s = parse_strategy(name, 4);
    std::vector<std::string> ref;
    for (const ProbeItem& it : items) ref.push_back(reference_generation(model, s, *tok, it));
    // Batches of 3 leave a short last batch; answers (3 letters) all need 4 tokens.
    EXPECT_EQ(probe_generations(model, s, *tok, items, 3), ref) << name;
    // Give every other item the answer the model generates, so the score has matches to find.
    std::vector<ProbeItem> rigged = items;
    int expected = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (i % 2 == 0) rigged[i].answer = ref[i].substr(1);
      expected += probe_answer_matches(ref[i], rigged[i].answer);
    }
    const ProbeScore score = score_probe(model, s, *tok, rigged, 3);
    EXPECT_EQ(score.items, 7);
    EXPECT_EQ(score.correct, expected) << name;
    EXPECT_GE(score.correct, 4) << name;  // the 4 rigged items at least
  }
}

TEST(Probe, PromptTooLongForTheContextIsRefused) {
  auto backend = make_backend("cpu");
  ModelConfig mc = byte_model();
  mc.context = 32;
  Model model(mc, backend.get());
  model.init_weights(1);
  const auto tok = make_byte_tokenizer();
  const auto items = generate_probe(*tok, {.n = 2, .pairs = 4, .seed = 1});
  EXPECT_NE(error_of([&] { score_probe(model, parse_strategy("full", 4), *tok, items); })
                .find("does not fit the model context of 32"),
            std::string::npos);
}

// ---- the command line: kvroute data probe ----

namespace {
struct CliResult {
  int status = -1;
  std::string output;
};
CliResult run_kvroute(const std::string& args) {
  CliResult r;
  FILE* pipe = popen((std::string(KVROUTE_BINARY) + " " + args + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  const int st = pclose(pipe);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}
}  // namespace

TEST(ProbeCli, WritesTheProbeAndTrainingTextAndRefusesBadOptions) {
  const fs::path dir = temp_dir() / "cli";
  fs::create_directories(dir);
  const std::string probe = (dir / "probe.tsv").string(), text = (dir / "train.txt").string();
  CliResult r = run_kvroute("data probe --tokenizer byte --out " + probe + " --n 5 --pairs 2 --seed 3");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto items = read_probe_file(probe);
  const auto expected = generate_probe(*make_byte_tokenizer(), {.n = 5, .pairs = 2, .seed = 3});
  ASSERT_EQ(items.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(items[i].prompt + "\t" + items[i].answer, expected[i].prompt + "\t" + expected[i].answer);

  r = run_kvroute("data probe --tokenizer byte --out " + text + " --n 2 --pairs 2 --seed 3 --format text");
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(text);
  const std::string body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(body, probe_document(expected[0]) + "\n\n" + probe_document(expected[1]) + "\n\n");

  r = run_kvroute("data probe --tokenizer byte --out " + text + " --format csv");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--format must be probe or text (got 'csv')"), std::string::npos) << r.output;
  r = run_kvroute("data probe --tokenizer byte --out " + text + " --n 0");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--n must be >= 1"), std::string::npos) << r.output;
  fs::remove_all(dir);
}
