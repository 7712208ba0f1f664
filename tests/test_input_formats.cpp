// Input formats of `kvroute data tokenizer | encode` (input_format.h): JSON Lines records as
// documents, plain or compressed (.gz, .zst) as the file name says, give the same shards as the
// same documents in a text file; a bad record is refused naming its file and line, or skipped and
// counted; a truncated compressed file is an error; nothing is written on error.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zlib.h>
#include <zstd.h>

#include <nlohmann/json.hpp>

#include "data_fixtures.h"
#include "error_of.h"
#include "kvroute/encode.h"
#include "kvroute/input_format.h"
#include "kvroute/tokenizer.h"

namespace kvroute {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using json = nlohmann::json;
using namespace testing_data;
using testing_errors::error_of;

std::string gzip(const std::string& bytes) {
  uLongf n = compressBound(bytes.size()) + 64;
  std::string out(n, '\0');
  z_stream zs{};
  deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);  // + 16: a gzip header
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  zs.avail_in = static_cast<uInt>(bytes.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

std::string zstd(const std::string& bytes) {
  std::string out(ZSTD_compressBound(bytes.size()), '\0');
  out.resize(ZSTD_compress(out.data(), out.size(), bytes.data(), bytes.size(), 3));
  return out;
}

std::string shard_bytes(const fs::path& dir) {
  std::string all;
  for (const char* f : {"train_00000.bin", "val_00000.bin"})
    if (fs::exists(dir / f)) all += read_file_bytes(dir / f);
  return all;
}

class InputFormats : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fresh_temp_dir("input_formats");
    // Documents of several lines each, every line ending in a newline (as in a text file).
    for (std::string d : generated_documents(80)) {
      while (!d.empty() && d.back() == '\n') d.pop_back();
      texts_.push_back(d + "\n");
    }
    std::string jsonl, text;
    for (std::size_t i = 0; i < texts_.size(); ++i) {
      jsonl += json({{"id", i}, {"text", texts_[i]}, {"meta", {{"source", "test"}}}}).dump() + "\n";
      text += texts_[i] + "\n";  // blank-line separated
    }
    write_file_bytes(dir_ / "docs.txt", text);
    write_file_bytes(dir_ / "docs.jsonl", jsonl);
    write_file_bytes(dir_ / "docs.jsonl.gz", gzip(jsonl));
    write_file_bytes(dir_ / "docs.jsonl.zst", zstd(jsonl));
    write_file_bytes(dir_ / "docs.txt.zst", zstd(text));
    write_file_bytes(dir_ / "records.data", jsonl);  // JSON Lines under a name that does not say so
  }

  EncodeReport encode(const std::vector<std::string>& files, const std::string& out, InputFormat f = {},
                      double val_fraction = 0.05) {
    EncodeOptions o;
    o.val_fraction = val_fraction;
    o.tokenizer = "byte";
    for (const std::string& file : files) o.inputs.push_back((dir_ / file).string());
    o.out_dir = (dir_ / out).string();
    o.format = f;
    o.force = true;
    return encode_corpus(o);
  }

  fs::path dir_;
  std::vector<std::string> texts_;
};

TEST_F(InputFormats, JsonLinesPlainOrCompressedGiveTheShardsOfTheSameDocumentsAsText) {
  const EncodeReport text = encode({"docs.txt"}, "text");
  EXPECT_EQ(text.documents[0] + text.documents[1], texts_.size());
  const std::string want = shard_bytes(dir_ / "text");
  ASSERT_FALSE(want.empty());
  for (const char* f : {"docs.jsonl", "docs.jsonl.gz", "docs.jsonl.zst"}) {
    SCOPED_TRACE(f);
    const EncodeReport r = encode({f}, std::string("out_") + f);
    EXPECT_EQ(r.documents[0] + r.documents[1], texts_.size());
    EXPECT_TRUE(shard_bytes(dir_ / (std::string("out_") + f)) == want);  // (not printed: binary)
  }
  // A compressed text file is read as text; a JSON Lines file under another name with --format jsonl.
  encode({"docs.txt.zst"}, "text_zst");
  EXPECT_TRUE(shard_bytes(dir_ / "text_zst") == want);
  InputFormat jsonl;
  jsonl.format = "jsonl";
  encode({"records.data"}, "forced", jsonl);
  EXPECT_TRUE(shard_bytes(dir_ / "forced") == want);
  // Another text key.
  write_file_bytes(dir_ / "body.jsonl", "{\"body\": \"x y\\n\"}\n{\"body\": \"z\\n\"}\n");
  InputFormat body;
  body.text_key = "body";
  const EncodeReport b = encode({"body.jsonl"}, "body", body, 0);
  EXPECT_EQ(b.documents[0] + b.documents[1], 2u);
}

TEST_F(InputFormats, BadRecordsAreRefusedNamingFileAndLineOrSkippedAndCounted) {
  const std::string good = json({{"text", "fine\n"}}).dump() + "\n";
  const std::pair<std::string, std::string> cases[] = {
      {"not json\n", "line 2: not valid JSON"},
      {"[1, 2]\n", "line 2: the record is [1,2], not a JSON object"},
      {"{\"txt\": \"x\"}\n", "line 2: the record has no key \"text\" (--text-key)"},
      {"{\"text\": 5}\n", "line 2: \"text\" is 5, not a string"},
      {"{\"text\": \"\xff\xfe\"}\n", "line 2: not valid JSON"},  // invalid UTF-8
      {"{\"text\": " + std::string(200, '[') + "}\n", "line 2: nested deeper than 128 levels"},
  };
  for (const auto& [bad, why] : cases) {
    SCOPED_TRACE(bad.substr(0, 20));
    write_file_bytes(dir_ / "bad.jsonl", good + bad + good + good);
    fs::remove_all(dir_ / "bad_out");
    EXPECT_THAT(error_of([&] { encode({"bad.jsonl"}, "bad_out"); }),
                AllOf(HasSubstr("input '" + (dir_ / "bad.jsonl").string() + "' " + why), HasSubstr("--skip-bad-records")));
    EXPECT_FALSE(fs::exists(dir_ / "bad_out"));
    InputFormat skip;
    skip.skip_bad_records = true;
    const EncodeReport r = [&] {
      EncodeOptions e;
      e.tokenizer = "byte";
      e.inputs = {(dir_ / "bad.jsonl").string()};
      e.out_dir = (dir_ / "bad_out").string();
      e.format = skip;
      e.val_fraction = 0;
      return encode_corpus(e);
    }();
    EXPECT_EQ(r.bad_records_skipped, 1u);
    EXPECT_EQ(r.documents[0], 3u);
  }
}

TEST_F(InputFormats, TruncatedOrDamagedCompressedFilesAreErrors) {
  const std::string gz = read_file_bytes(dir_ / "docs.jsonl.gz");
  write_file_bytes(dir_ / "cut.jsonl.gz", gz.substr(0, gz.size() / 2));
  EXPECT_THAT(error_of([&] { encode({"cut.jsonl.gz"}, "cut_gz"); }),
              AllOf(HasSubstr("cut.jsonl.gz"), HasSubstr("truncated")));
  const std::string zs = read_file_bytes(dir_ / "docs.jsonl.zst");
  write_file_bytes(dir_ / "cut.jsonl.zst", zs.substr(0, zs.size() / 2));
  EXPECT_THAT(error_of([&] { encode({"cut.jsonl.zst"}, "cut_zst"); }),
              AllOf(HasSubstr("cut.jsonl.zst"), HasSubstr("truncated")));
  write_file_bytes(dir_ / "plain_named.txt.gz", "this is not gzip data at all\n");
  EXPECT_THAT(error_of([&] { encode({"plain_named.txt.gz"}, "not_gz"); }), HasSubstr("not valid gzip data"));
  write_file_bytes(dir_ / "plain_named.txt.zst", "this is not zstd data at all\n");
  EXPECT_THAT(error_of([&] { encode({"plain_named.txt.zst"}, "not_zst"); }), HasSubstr("not valid Zstandard data"));
  for (const char* out : {"cut_gz", "cut_zst", "not_gz", "not_zst"}) EXPECT_FALSE(fs::exists(dir_ / out)) << out;
}

TEST_F(InputFormats, ATokenizerTrainedOnJsonLinesEqualsOneTrainedOnTheSameText) {
  std::string text;
  for (const std::string& t : texts_) text += t;  // the same lines, no blank ones
  write_file_bytes(dir_ / "lines.txt", text);
  TokenizerTrainOptions o;
  o.vocab_size = 400;
  o.threads = 1;
  o.force = true;
  o.inputs = {(dir_ / "lines.txt").string()};
  o.out_dir = (dir_ / "tok_text").string();
  const TokenizerTrainReport a = train_tokenizer(o);
  o.inputs = {(dir_ / "docs.jsonl.zst").string()};
  o.out_dir = (dir_ / "tok_jsonl").string();
  const TokenizerTrainReport b = train_tokenizer(o);
  EXPECT_EQ(a.sentences, b.sentences);
  EXPECT_EQ(a.identity, b.identity);
  write_file_bytes(dir_ / "bad.jsonl", "{\"text\": \"a b c\"}\nnope\n");
  o.inputs = {(dir_ / "bad.jsonl").string()};
  o.out_dir = (dir_ / "tok_bad").string();
  EXPECT_THAT(error_of([&] { train_tokenizer(o); }), HasSubstr("bad.jsonl' line 2: not valid JSON"));
  EXPECT_FALSE(fs::exists(dir_ / "tok_bad"));
}

}  // namespace
}  // namespace kvroute
