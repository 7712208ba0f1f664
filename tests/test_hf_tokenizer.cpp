// Hugging Face tokenizers: byte-level BPE (tokenizer.json) and SentencePiece models as HF
// ships them, against golden ids written by HF's own libraries (tests/fixtures/tokenizers,
// README there); round trips; special tokens; where encode_parallel may cut; and errors
// that name the file and the key.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <random>

#include "data_fixtures.h"
#include "document_reader.h"
#include "kvroute/encode.h"
#include "kvroute/shard.h"
#include "kvroute/shard_dir.h"
#include "kvroute/tokenizer.h"

namespace kvroute {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using json = nlohmann::json;
using namespace testing_data;

const fs::path kFixtures = fs::path(KVROUTE_SOURCE_DIR) / "tests" / "fixtures" / "tokenizers";
const char* const kByteLevel[] = {"bpe_llama3", "bpe_qwen2", "bpe_smollm2", "bpe_gpt2"};
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

  const auto qwen2 = load_tokenizer((kFixtures / "bpe_qwen2").string());
  EXPECT_EQ(qwen2->eos_id(), 2);  // <|endoftext|>
  EXPECT_EQ(qwen2->decode(qwen2->encode("cafe\xcc\x81 A\xcc\x8a")), "caf\xc3\xa9 \xc3\x85");  // NFC
  EXPECT_EQ(qwen2->encode("1234").size(), 4u);  // Qwen2 splits digits one by one

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
    // Random bytes might hold a valid decomposed character, which NFC (Qwen2) would compose.
    const std::size_t n = std::string(name) == "bpe_qwen2" ? 8 : texts.size();
    for (std::size_t k = 0; k < n; ++k) EXPECT_EQ(tok->decode(tok->encode(texts[k])), texts[k]) << name;
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

// `kvroute data encode` reads long documents in pieces; it cuts them only where the
// tokenizer allows, so the pieces' ids are the document's.
TEST(HfTokenizer, DocumentPiecesAreCutWhereEncodingIsUnchanged) {
  const fs::path dir = fresh_temp_dir("hf_tok_pieces");
  std::string doc;
  const json ref = reference("bpe_llama3");
  for (const json& c : ref["cases"]) doc += c["text"].get<std::string>() + "\nword\nnext line\n";
  write_file_bytes(dir / "doc.txt", doc);
  for (const char* name : {"bpe_llama3", "bpe_gpt2", "sp_llama2"}) {
    const auto tok = load_tokenizer((kFixtures / name).string());
    DocumentReader reader({(dir / "doc.txt").string()}, parse_document_rule("file"), 256);
    reader.set_cut([&](std::string_view text, std::size_t from) { return tok->next_cut(text, from); });
    std::vector<int32_t> ids;
    std::string text;
    int pieces = 0;
    for (DocumentPiece p; reader.next(p); ++pieces) {
      const auto part = tok->encode(p.text);
      ids.insert(ids.end(), part.begin(), part.end());
      text += p.text;
    }
    EXPECT_EQ(text, doc) << name;
    EXPECT_EQ(ids, tok->encode(doc)) << name;
    if (std::string(name) != "sp_llama2") EXPECT_GT(pieces, 10) << name;
    else EXPECT_EQ(pieces, 1);  // SentencePiece's dummy prefix: never cut
  }
}

// `kvroute data encode` with a Hugging Face folder: the shards carry its ids, separated by
// its EOS, and the shard directory keeps a copy of its tokenizer files.
TEST(HfTokenizer, EncodeCorpusWithAHuggingFaceFolder) {
  const fs::path dir = fresh_temp_dir("hf_tok_encode");
  const std::string doc1 = "It's 2026: 12345 tokens.\nA second line.", doc2 = "caf\xc3\xa9 \xf0\x9f\x98\x80 <think>";
  write_file_bytes(dir / "in.txt", doc1 + "\n\n" + doc2 + "\n");
  EncodeOptions o;
  o.tokenizer = (kFixtures / "bpe_llama3").string();
  o.inputs = {(dir / "in.txt").string()};
  o.out_dir = (dir / "shards").string();
  o.val_fraction = 0;
  o.threads = 2;
  encode_corpus(o);
  const ShardDirInfo info = read_shard_dir(o.out_dir);
  const auto tok = load_tokenizer(info.tokenizer_spec());
  EXPECT_EQ(info.tokenizer_spec(), (dir / "shards" / "tokenizer").string());
  EXPECT_EQ(tok->identity(), load_tokenizer(o.tokenizer)->identity());
  EXPECT_EQ(hf_tokenizer_files(info.tokenizer_spec()), hf_tokenizer_files(o.tokenizer));
  ASSERT_EQ(info.shards.size(), 1u);
  const Shard shard = Shard::open(info.shards[0].path);
  std::vector<int32_t> ids;
  for (uint64_t i = 0; i < shard.size(); ++i) ids.push_back(shard[i]);
  std::vector<int32_t> want = tok->encode(doc1 + "\n");  // a document keeps its lines' newlines
  want.push_back(2);
  for (int32_t id : tok->encode(doc2 + "\n")) want.push_back(id);
  want.push_back(2);
  EXPECT_EQ(ids, want);
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
