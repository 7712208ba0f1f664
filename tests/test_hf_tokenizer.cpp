// Hugging Face tokenizers: byte-level BPE (tokenizer.json) and SentencePiece models as HF
// ships them, against golden ids written by HF's own libraries (tests/fixtures/tokenizers,
// README there); round trips; special tokens; where encode_parallel may cut; and errors
// that name the file and the key.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <random>

#include "data_fixtures.h"
#include "kvroute/shard.h"
#include "kvroute/tokenizer.h"

namespace kvroute {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using json = nlohmann::json;
using namespace testing_data;

const fs::path kFixtures = fs::path(KVROUTE_SOURCE_DIR) / "tests" / "fixtures" / "tokenizers";
const char* const kByteLevel[] = {"bpe_llama3", "bpe_gpt2"};
const char* const kSentencePiece[] = {"sp_nfkc", "sp_llama2"};

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

json reference(const std::string& name) { return json::parse(read_file_bytes(kFixtures / name / "reference.json")); }

// Every fixture text encodes to HF's ids, and those ids decode to what HF decodes them to.
void expect_reference(const std::string& name) {
  const auto tok = load_tokenizer((kFixtures / name).string());
  const json ref = reference(name);
  ASSERT_GE(ref["cases"].size(), 20u);
  for (const json& c : ref["cases"]) {
    const std::string text = c["text"];
    const std::vector<int32_t> want = c["ids"];
    EXPECT_EQ(tok->encode(text), want) << name << ": " << text;
    EXPECT_EQ(tok->decode(want), c["decoded"].get<std::string>()) << name << ": " << text;
  }
}

TEST(HfTokenizer, ByteLevelBpeMatchesHuggingFaceIds) {
  for (const char* name : kByteLevel) expect_reference(name);
}

TEST(HfTokenizer, SentencePieceMatchesLlamaTokenizerIds) {
  for (const char* name : kSentencePiece) expect_reference(name);
}

TEST(HfTokenizer, LoadTokenizerPicksTheKindAndItsFacts) {
  const auto llama3 = load_tokenizer((kFixtures / "bpe_llama3").string());
  const std::string file = read_file_bytes(kFixtures / "bpe_llama3" / "tokenizer.json");
  EXPECT_EQ(llama3->fingerprint(), fnv1a64(file.data(), file.size()));
  EXPECT_EQ(llama3->identity(), "hf-bpe-702-" + fingerprint_hex(llama3->fingerprint()));
  EXPECT_EQ(llama3->vocab_size(), 702);  // 700 trained + <think>, </think>
  EXPECT_EQ(llama3->bos_id(), 0);        // <|begin_of_text|>
  EXPECT_EQ(llama3->eos_id(), 2);        // <|end_of_text|>
  EXPECT_EQ(llama3->document_separator(), std::vector<int32_t>{2});
  EXPECT_EQ(llama3->piece(2), "<|end_of_text|>");
  EXPECT_EQ(llama3->piece(llama3->encode(" the")[0]), "Ġthe");

  const auto gpt2 = load_tokenizer((kFixtures / "bpe_gpt2").string());
  EXPECT_EQ(gpt2->vocab_size(), 600);
  EXPECT_EQ(gpt2->eos_id(), 0);  // <|endoftext|>

  const auto sp = load_tokenizer((kFixtures / "sp_llama2").string());
  EXPECT_THAT(sp->identity(), StartsWith("sentencepiece-600-"));
  EXPECT_EQ(sp->bos_id(), 1);
  EXPECT_EQ(sp->eos_id(), 2);
  EXPECT_EQ(sp->document_separator(), std::vector<int32_t>{2});
}

TEST(HfTokenizer, SpecialTokensInTheTextBecomeTheirIds) {
  const auto llama3 = load_tokenizer((kFixtures / "bpe_llama3").string());
  const auto ids = llama3->encode("one<|end_of_text|><|begin_of_text|>two <think>");
  ASSERT_GE(ids.size(), 5u);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 0), 1);
  EXPECT_EQ(ids.back(), 700);  // <think>, an added token that is not special
  EXPECT_EQ(llama3->decode(ids), "one<|end_of_text|><|begin_of_text|>two <think>");
  // A near miss is plain text.
  const auto near = llama3->encode("<|end_of_text>");
  EXPECT_EQ(std::count(near.begin(), near.end(), 2), 0);

  const auto sp = load_tokenizer((kFixtures / "sp_nfkc").string());
  const auto sp_ids = sp->encode("a</s>b");
  EXPECT_EQ(std::count(sp_ids.begin(), sp_ids.end(), 2), 1);
}

TEST(HfTokenizer, ByteLevelRoundTripsAnyBytes) {
  std::vector<std::string> texts = {"\xff", "ab\xc3(cd", "\xe2\x82", "x\xed\xa0\x80y", "\xf4\x90\x80\x80", "\x80\x80 \xc0\xaf",
                                    std::string("nul\0byte", 8), "caf\xc3\xa9 \xf0\x9f\x98\x80\xff\xfe\n\n  \t"};
  std::mt19937 gen(7);
  for (int k = 0; k < 50; ++k) {
    std::string s(1 + gen() % 64, '\0');
    for (char& c : s) c = static_cast<char>(gen() % 256);
    texts.push_back(s);
  }
  for (const char* name : kByteLevel) {
    const auto tok = load_tokenizer((kFixtures / name).string());
    for (const std::string& t : texts) EXPECT_EQ(tok->decode(tok->encode(t)), t) << name;
    // An invalid byte is a piece of its own: one token, whatever is next to it.
    EXPECT_EQ(tok->encode("\xff").size(), 1u);
    const auto a = tok->encode("hello"), b = tok->encode("hello\xffhello");
    ASSERT_EQ(b.size(), 2 * a.size() + 1) << name;
  }
  // SentencePiece in HF mode is lossy but must not fail on such bytes.
  for (const char* name : kSentencePiece) {
    const auto tok = load_tokenizer((kFixtures / name).string());
    for (const std::string& t : texts) EXPECT_NO_THROW(tok->decode(tok->encode(t))) << name;
  }
}

// Cutting where next_cut says changes nothing; SentencePiece in HF mode never cuts.
TEST(HfTokenizer, NextCutKeepsEncodeUnchanged) {
  std::string text;
  const json ref = reference("bpe_llama3");
  for (const json& c : ref["cases"]) text += c["text"].get<std::string>() + "\nline\nmore text\n";
  for (const char* name : kByteLevel) {
    const auto tok = load_tokenizer((kFixtures / name).string());
    const auto whole = tok->encode(text);
    std::vector<int32_t> parts;
    int cuts = 0;
    for (std::size_t i = 0; i < text.size();) {
      const std::size_t end = tok->next_cut(text, i + 1);
      ASSERT_GT(end, i);
      const auto p = tok->encode(std::string_view(text).substr(i, end - i));
      parts.insert(parts.end(), p.begin(), p.end());
      cuts += end < text.size();
      i = end;
    }
    EXPECT_GT(cuts, 20) << name;
    EXPECT_EQ(parts, whole) << name;
  }
  const auto sp = load_tokenizer((kFixtures / "sp_llama2").string());
  EXPECT_EQ(sp->next_cut(text, 0), text.size());
  std::string big;
  while (big.size() < (1u << 20) + 1000) big += text;
  EXPECT_EQ(encode_parallel(*sp, big, 2), sp->encode(big));
}

TEST(HfTokenizer, TokenizerFilesOfAFolder) {
  EXPECT_EQ(hf_tokenizer_files((kFixtures / "bpe_llama3").string()),
            (std::vector<std::string>{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}));
  EXPECT_EQ(hf_tokenizer_files((kFixtures / "sp_llama2").string()),
            (std::vector<std::string>{"tokenizer.model", "tokenizer_config.json"}));
  EXPECT_TRUE(hf_tokenizer_files("/nonexistent/dir").empty());
}

// A Llama 2 folder ships a Metaspace tokenizer.json beside tokenizer.model: SentencePiece is used.
TEST(HfTokenizer, NonByteLevelTokenizerJsonFallsBackToTokenizerModel) {
  const fs::path dir = fresh_temp_dir("hf_tok_llama2_folder");
  for (const char* f : {"tokenizer.model", "tokenizer_config.json"})
    fs::copy_file(kFixtures / "sp_llama2" / f, dir / f);
  write_file_bytes(dir / "tokenizer.json",
                   R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "Metaspace"}})");
  const auto tok = load_tokenizer(dir.string());
  EXPECT_THAT(tok->identity(), StartsWith("sentencepiece-600-"));
  const json ref = reference("sp_llama2");
  EXPECT_EQ(tok->encode(ref["cases"][5]["text"].get<std::string>()), ref["cases"][5]["ids"].get<std::vector<int32_t>>());
  fs::remove(dir / "tokenizer.model");
  EXPECT_THAT(error_of([&] { load_tokenizer(dir.string()); }),
              HasSubstr("tokenizer.json': key pre_tokenizer.type is \"Metaspace\", not ByteLevel"));
}

// Writes the Llama 3 fixture, edited by `edit`, into a fresh directory; returns the load error.
template <class Edit>
std::string load_error_after(const std::string& tag, Edit edit) {
  const fs::path dir = fresh_temp_dir("hf_tok_" + tag);
  json j = json::parse(read_file_bytes(kFixtures / "bpe_llama3" / "tokenizer.json"));
  edit(j);
  write_file_bytes(dir / "tokenizer.json", j.dump());
  fs::copy_file(kFixtures / "bpe_llama3" / "tokenizer_config.json", dir / "tokenizer_config.json");
  const std::string direct = error_of([&] { load_hf_bpe_tokenizer(dir.string()); });
  EXPECT_THAT(direct, HasSubstr((dir / "tokenizer.json").string())) << tag;
  return direct;
}

TEST(HfTokenizer, ErrorsNameTheFileAndKey) {
  EXPECT_THAT(load_error_after("no_model", [](json& j) { j.erase("model"); }), HasSubstr("key model is missing"));
  EXPECT_THAT(load_error_after("no_vocab", [](json& j) { j["model"].erase("vocab"); }),
              HasSubstr("key model.vocab is missing"));
  EXPECT_THAT(load_error_after("no_merges", [](json& j) { j["model"].erase("merges"); }),
              HasSubstr("key model.merges is missing"));
  EXPECT_THAT(load_error_after("no_pre", [](json& j) { j.erase("pre_tokenizer"); }),
              HasSubstr("key pre_tokenizer is missing"));
  EXPECT_THAT(load_error_after("wordpiece", [](json& j) { j["model"]["type"] = "WordPiece"; }),
              HasSubstr("key model.type is \"WordPiece\""));
  EXPECT_THAT(load_error_after("unknown_merge", [](json& j) { j["model"]["merges"][3] = {"zzz_not_a_token", "a"}; }),
              HasSubstr("key model.merges[3] names 'zzz_not_a_token', which is not in model.vocab"));
  EXPECT_THAT(load_error_after("bad_merge", [](json& j) { j["model"]["merges"][4] = "a b c"; }),
              HasSubstr("key model.merges[4] is \"a b c\""));
  EXPECT_THAT(load_error_after("bad_regex", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(\\p{L}+"; }),
              HasSubstr("key pre_tokenizer.pretokenizers[0].pattern.Regex is not a valid regex"));
  EXPECT_THAT(load_error_after("normalizer", [](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; }),
              HasSubstr("key normalizer is \"Lowercase\""));
  EXPECT_THAT(load_error_after("behavior", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; }),
              HasSubstr("key pre_tokenizer.pretokenizers[0].behavior is \"Removed\""));
  EXPECT_THAT(load_error_after("bad_id", [](json& j) { j["added_tokens"][0]["id"] = "zero"; }),
              HasSubstr("key added_tokens[0].id is not a token id"));

  // Through load_tokenizer: a Unigram tokenizer.json with no tokenizer.model beside it.
  const fs::path dir = fresh_temp_dir("hf_tok_unigram");
  write_file_bytes(dir / "tokenizer.json", R"({"model": {"type": "Unigram", "vocab": []}, "pre_tokenizer": null})");
  EXPECT_THAT(error_of([&] { load_tokenizer(dir.string()); }),
              HasSubstr((dir / "tokenizer.json").string() + "': key model.type is \"Unigram\""));
  write_file_bytes(dir / "tokenizer.json", "{\"model\": ");
  EXPECT_THAT(error_of([&] { load_tokenizer(dir.string()); }), HasSubstr("tokenizer.json': not valid JSON"));

  // bos/eos naming a token the tokenizer does not have.
  const fs::path eos = fresh_temp_dir("hf_tok_eos");
  fs::copy_file(kFixtures / "bpe_gpt2" / "tokenizer.json", eos / "tokenizer.json");
  write_file_bytes(eos / "tokenizer_config.json", R"({"eos_token": "<|no_such_token|>"})");
  EXPECT_THAT(error_of([&] { load_tokenizer(eos.string()); }),
              HasSubstr("tokenizer_config.json': key eos_token names '<|no_such_token|>'"));

  // Added tokens in tokenizer_config.json of a SentencePiece folder.
  const fs::path sp = fresh_temp_dir("hf_tok_sp_config");
  fs::copy_file(kFixtures / "sp_llama2" / "tokenizer.model", sp / "tokenizer.model");
  write_file_bytes(sp / "tokenizer_config.json", R"({"added_tokens_decoder": {"99999": {"content": "<x>"}}})");
  EXPECT_THAT(error_of([&] { load_tokenizer(sp.string()); }),
              HasSubstr("tokenizer_config.json': key added_tokens_decoder.99999 is outside the model's ids"));
}

}  // namespace
}  // namespace kvroute
