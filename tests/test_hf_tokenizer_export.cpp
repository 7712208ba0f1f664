// kvroute's own tokenizers in Hugging Face form (hf_tokenizer_json.h): the ids transformers'
// AutoTokenizer gives on the exported tokenizer.json (golden data in
// tests/fixtures/tokenizers/kv_*, README there) equal kvroute's; the export writes the file
// those ids were made from; an exported folder comes back with the original fingerprint and
// ids; models kvroute did not train are refused; the SentencePiece model reader never reads
// past its input.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <random>

#include "data/sentencepiece_spec.h"
#include "data_fixtures.h"
#include "error_of.h"
#include "kvroute/checkpoint.h"
#include "kvroute/hf_model.h"
#include "kvroute/hf_tokenizer_json.h"
#include "kvroute/tokenizer.h"
#include "run_kvroute.h"

namespace kvroute {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using namespace testing_data;
using testing_errors::error_of;

const fs::path kFixtures = fs::path(KVROUTE_SOURCE_DIR) / "tests" / "fixtures" / "tokenizers";

struct Fixture {
  const char* name;  // tests/fixtures/tokenizers/<name>
  const char* spec;  // the kvroute tokenizer: "byte" or "" for the fixture folder itself
};
const Fixture kFixtureList[] = {{"kv_unigram", ""}, {"kv_bpe", ""}, {"kv_byte", "byte"}};

std::string spec_of(const Fixture& f) { return *f.spec ? f.spec : (kFixtures / f.name).string(); }
json reference(const Fixture& f) { return json::parse(read_file_bytes(kFixtures / f.name / "reference.json")); }

TEST(HfTokenizerExport, KvrouteIdsEqualTransformersIdsOnTheExportedFolder) {
  for (const Fixture& f : kFixtureList) {
    SCOPED_TRACE(f.name);
    const auto tok = load_tokenizer(spec_of(f));
    const json ref = reference(f);
    ASSERT_GE(ref["cases"].size(), 30u);
    EXPECT_EQ(ref["auto_tokenizer_class"], "TokenizersBackend");  // AutoTokenizer used tokenizer.json as it is
    for (const json& c : ref["cases"]) {
      const std::string text = c["text"];
      const std::vector<int32_t> want = c["ids"];
      EXPECT_EQ(tok->encode(text), want) << text;
      // Both sides decode the ids back to the text.
      EXPECT_EQ(c["decoded"].get<std::string>(), text);
      EXPECT_EQ(tok->decode(want), text);
    }
  }
}

TEST(HfTokenizerExport, WritesTheFilesTheReferenceWasMadeFrom) {
  for (const Fixture& f : kFixtureList) {
    SCOPED_TRACE(f.name);
    const HfFastTokenizer fast = hf_fast_tokenizer(spec_of(f), 2048);
    const fs::path exported = kFixtures / f.name / "exported";
    EXPECT_EQ(json::parse(fast.tokenizer_json), json::parse(read_file_bytes(exported / "tokenizer.json")));
    EXPECT_EQ(json::parse(fast.tokenizer_config_json), json::parse(read_file_bytes(exported / "tokenizer_config.json")));
  }
  const json uni = json::parse(hf_fast_tokenizer(spec_of(kFixtureList[0]), 64).tokenizer_json);
  EXPECT_EQ(uni["model"]["type"], "Unigram");
  EXPECT_EQ(uni["model"]["byte_fallback"], true);
  EXPECT_EQ(uni["model"]["vocab"].size(), 600u);
  const json bpe = json::parse(hf_fast_tokenizer(spec_of(kFixtureList[1]), 64).tokenizer_json);
  EXPECT_EQ(bpe["model"]["type"], "BPE");
  EXPECT_GT(bpe["model"]["merges"].size(), 250u);
  const json config = json::parse(hf_fast_tokenizer(spec_of(kFixtureList[1]), 64).tokenizer_config_json);
  EXPECT_EQ(config["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(config["model_max_length"], 64);
  EXPECT_EQ(config["eos_token"], "</s>");
  EXPECT_EQ(config["add_bos_token"], false);
}

// What goes out comes back: an exported folder loads as the same tokenizer (fingerprint,
// identity, ids), so shards and checkpoints made with the original accept it.
TEST(HfTokenizerExport, AnExportedFolderComesBackAsTheSameTokenizer) {
  const fs::path tmp = fresh_temp_dir("hf_tok_back");
  std::mt19937 gen(7);
  for (const Fixture& f : kFixtureList) {
    SCOPED_TRACE(f.name);
    const fs::path out = tmp / f.name;
    const std::vector<std::string> files = export_hf_tokenizer(spec_of(f), out.string(), 2048, false);
    EXPECT_THAT(files, ::testing::Contains("tokenizer.json"));
    EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
    const auto original = load_tokenizer(spec_of(f));
    const auto back = load_tokenizer(out.string());
    EXPECT_EQ(back->fingerprint(), original->fingerprint());
    EXPECT_EQ(back->identity(), original->identity());
    EXPECT_EQ(back->vocab_size(), original->vocab_size());
    for (const json& c : reference(f)["cases"]) EXPECT_EQ(back->encode(c["text"].get<std::string>()), c["ids"].get<std::vector<int32_t>>());
    // Any bytes, invalid UTF-8 included, encode the same and round-trip.
    for (int trial = 0; trial < 50; ++trial) {
      std::string s(gen() % 200, '\0');
      for (char& ch : s) ch = static_cast<char>(gen() % 4 ? 'a' + gen() % 26 : gen() % 256);
      const std::vector<int32_t> ids = original->encode(s);
      EXPECT_EQ(back->encode(s), ids);
      EXPECT_EQ(back->decode(ids), s);
    }
    // Writing over it needs force.
    EXPECT_THAT(error_of([&] { export_hf_tokenizer(spec_of(f), out.string(), 2048, false); }),
                HasSubstr("exists (--force replaces it)"));
  }
}

TEST(HfTokenizerExport, RefusesSentencePieceModelsKvrouteDidNotTrain) {
  // Llama 2 style: a dummy prefix (transformers has its own converter for these; an imported
  // tokenizer is exported as it came).
  EXPECT_THAT(error_of([] { hf_fast_tokenizer((kFixtures / "sp_llama2").string(), 64); }),
              HasSubstr("add_dummy_prefix is true"));
  EXPECT_THAT(error_of([] { hf_fast_tokenizer((kFixtures / "sp_llama2").string(), 64); }),
              HasSubstr("sp_llama2/tokenizer.model"));
  const fs::path tmp = fresh_temp_dir("hf_tok_refuse");
  EXPECT_THAT(error_of([&] { hf_fast_tokenizer(tmp.string(), 64); }), HasSubstr("no tokenizer.model"));
  EXPECT_THAT(error_of([&] { export_hf_tokenizer((kFixtures / "sp_llama2").string(), (tmp / "o").string(), 64, false); }),
              HasSubstr("add_dummy_prefix"));
  EXPECT_FALSE(fs::exists(tmp / "o"));
  EXPECT_FALSE(fs::exists(tmp / "o.tmp"));
}

TEST(HfTokenizerExport, SentencePieceSpecReaderStaysInsideItsInput) {
  const std::string file = (kFixtures / "kv_unigram" / "tokenizer.model").string();
  const std::string proto = read_file_bytes(file);
  const SentencePieceSpec spec = parse_sentencepiece_spec(proto, file);
  EXPECT_EQ(spec.model_type, "unigram");
  EXPECT_EQ(spec.pieces.size(), 600u);
  EXPECT_EQ(spec.pieces[0].type, SentencePieceSpec::PieceType::kUnknown);
  EXPECT_EQ(spec.pieces[3].text, "<0x00>");
  EXPECT_TRUE(spec.byte_fallback);
  EXPECT_FALSE(spec.add_dummy_prefix);
  EXPECT_EQ(spec.normalization_rule, "identity");
  EXPECT_EQ(parse_sentencepiece_spec(read_file_bytes(kFixtures / "kv_bpe" / "tokenizer.model"), file).model_type, "bpe");
  // Every truncation either parses (a cut between fields) or fails naming the file; none reads past the end.
  int failed = 0;
  for (std::size_t n = 0; n < proto.size(); n += 7) {
    try {
      parse_sentencepiece_spec(std::string_view(proto).substr(0, n), file);
    } catch (const std::runtime_error& e) {
      ++failed;
      EXPECT_THAT(e.what(), HasSubstr(file));
    }
  }
  EXPECT_GT(failed, 0);
  std::mt19937 gen(3);
  for (int trial = 0; trial < 200; ++trial) {
    std::string bad = proto;
    for (int k = 0; k < 4; ++k) bad[gen() % bad.size()] = static_cast<char>(gen());
    try {
      parse_sentencepiece_spec(bad, file);
    } catch (const std::runtime_error&) {
    }
  }
}

// The whole trip through the command line: a model trained with a kvroute SentencePiece
// tokenizer is exported with its fast tokenizer and imported back with the same fingerprint.
TEST(HfTokenizerExport, ExportAndImportOfATrainedModelKeepTheTokenizer) {
  using testing_cli::run;
  const fs::path tmp = fresh_temp_dir("hf_tok_cli");
  const std::string tok = (kFixtures / "kv_unigram").string();  // 600 ids
  write_file_bytes(tmp / "corpus.txt", join_documents(generated_documents(40)));
  auto r = run("train " + (fs::path(KVROUTE_SOURCE_DIR) / "configs/tiny.yaml").string() + " --set data.tokenizer=" + tok + " --set data.shards= --set data.train_path=" +
               (tmp / "corpus.txt").string() +
               " --set model.vocab_size=600 --set train.steps=2 --set train.batch_size=2 --set train.seq_len=32"
               " --set train.warmup_steps=1"
               " --set train.eval_batches=1 --set train.out_dir=" + (tmp / "run").string());
  ASSERT_EQ(r.status, 0) << r.output;
  r = run("export hf " + (tmp / "run/model.h5").string() + " --out " + (tmp / "hf").string());
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* f : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"})
    EXPECT_TRUE(fs::exists(tmp / "hf" / f)) << f;
  EXPECT_EQ(json::parse(read_file_bytes(tmp / "hf/tokenizer.json")),
            json::parse(read_file_bytes(kFixtures / "kv_unigram/exported/tokenizer.json")));
  r = run("import hf " + (tmp / "hf").string() + " --out " + (tmp / "back.h5").string());
  ASSERT_EQ(r.status, 0) << r.output;
  const CheckpointInfo original = read_checkpoint_info((tmp / "run/model.h5").string());
  const CheckpointInfo back = read_checkpoint_info((tmp / "back.h5").string());
  EXPECT_EQ(back.tokenizer.fingerprint, original.tokenizer.fingerprint);
  EXPECT_EQ(back.tokenizer.vocab_size, original.tokenizer.vocab_size);
  // `data ids` prints kvroute's ids as JSON lines; the imported folder gives the same.
  write_file_bytes(tmp / "texts.jsonl", "\"Hello  world\\n\"\n{\"text\": \"tab\\there \\u00e9\"}\n");
  r = run("data ids --tokenizer " + tok + " --jsonl " + (tmp / "texts.jsonl").string());
  ASSERT_EQ(r.status, 0) << r.output;
  const auto again = run("data ids --tokenizer " + (tmp / "back-tokenizer").string() + " --jsonl " +
                         (tmp / "texts.jsonl").string());
  EXPECT_EQ(again.output, r.output);
  const json first = json::parse(r.output.substr(0, r.output.find('\n')));
  EXPECT_EQ(first["decoded"], "Hello  world\n");
  EXPECT_EQ(first["ids"].get<std::vector<int32_t>>(), load_tokenizer(tok)->encode("Hello  world\n"));
  write_file_bytes(tmp / "bad.jsonl", "\"ok\"\n{\"txt\": 1}\n");
  r = run("data ids --tokenizer " + tok + " --jsonl " + (tmp / "bad.jsonl").string());
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("bad.jsonl' line 2: neither a string nor an object"));
}

}  // namespace
}  // namespace kvroute
