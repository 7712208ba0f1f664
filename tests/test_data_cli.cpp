// End-to-end tests of `kvroute data tokenizer | encode | inspect`, and of
// training and evaluating on the shards they write: progress and results on
// stdout, bad input refused with the file and the problem and a non-zero exit.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdio>

#include "data_fixtures.h"
#include "kvroute/llmc_shards.h"
#include "run_kvroute.h"

namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace kvroute::testing_data;

using kvroute::testing_cli::Result;
using kvroute::testing_cli::run;

class DataCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fresh_temp_dir("kvroute_data_cli");
    write_file_bytes(dir_ / "corpus.txt", join_documents(generated_documents(300)));
  }
  static std::string path(const std::string& name) { return (dir_ / name).string(); }
  // Tokenizer + shards, made once per process.
  static void make_shards() {
    if (fs::exists(dir_ / "shards" / "manifest.yaml")) return;
    const Result t = run("data tokenizer --input " + path("corpus.txt") + " --vocab-size 320 --out " + path("tok"));
    ASSERT_EQ(t.status, 0) << t.output;
    const Result e = run("data encode --tokenizer " + path("tok") + " --input " + path("corpus.txt") + " --out " +
                         path("shards") + " --docs blank --val-fraction 0.1");
    ASSERT_EQ(e.status, 0) << e.output;
  }
  static fs::path dir_;
};
fs::path DataCli::dir_;

TEST_F(DataCli, TokenizerEncodeInspectPipeline) {
  const Result t = run("data tokenizer --input " + path("corpus.txt") + " --vocab-size 320 --model-type bpe --out " +
                       path("tok_bpe"));
  ASSERT_EQ(t.status, 0) << t.output;
  EXPECT_THAT(t.output, HasSubstr("tokenizer: reading: "));
  EXPECT_THAT(t.output, HasSubstr("tokenizer: wrote " + path("tok_bpe") + " (sentencepiece-320-"));
  EXPECT_THAT(t.output, Not(HasSubstr("\r"))) << "no terminal: plain lines, no redrawn bar";

  const Result e = run("data encode --tokenizer " + path("tok_bpe") + " --input " + path("corpus.txt") + " --out " +
                       path("shards_bpe") + " --val-fraction 0.1");
  ASSERT_EQ(e.status, 0) << e.output;
  EXPECT_THAT(e.output, HasSubstr("encode: "));
  EXPECT_THAT(e.output, HasSubstr("MB/s"));
  EXPECT_THAT(e.output, HasSubstr("train 270 documents"));
  EXPECT_THAT(e.output, HasSubstr("val 30 documents"));
  EXPECT_TRUE(fs::exists(dir_ / "shards_bpe" / "tokenizer" / "tokenizer.model"));

  const Result i = run("data inspect " + path("shards_bpe/val_00000.bin") + " --tokens 12");
  ASSERT_EQ(i.status, 0) << i.output;
  EXPECT_THAT(i.output, HasSubstr("kvroute token shard, version 1"));
  EXPECT_THAT(i.output, HasSubstr("vocabulary  320 ids, 2-byte tokens (uint16)"));
  EXPECT_THAT(i.output, HasSubstr("documents   30"));
  EXPECT_THAT(i.output, HasSubstr("verified    checksum matches"));
  EXPECT_THAT(i.output, HasSubstr("first 12 tokens:"));
  EXPECT_THAT(i.output, HasSubstr("decoded:"));

  const Result d = run("data inspect " + path("shards_bpe"));
  ASSERT_EQ(d.status, 0) << d.output;
  EXPECT_THAT(d.output, HasSubstr("train_00000.bin"));
  EXPECT_THAT(d.output, HasSubstr("rule 'blank', validation fraction 0.1"));

  // Byte-level shards decode without a tokenizer directory.
  const Result b = run("data encode --tokenizer byte --input " + path("corpus.txt") + " --out " + path("shards_byte"));
  ASSERT_EQ(b.status, 0) << b.output;
  const Result bi = run("data inspect " + path("shards_byte/train_00000.bin") + " --tokens 5");
  ASSERT_EQ(bi.status, 0) << bi.output;
  EXPECT_THAT(bi.output, HasSubstr("tokenizer   byte (byte)"));
}

TEST_F(DataCli, TrainAndEvalReadTheShards) {
  make_shards();
  std::ofstream(dir_ / "tiny.yaml")
      << "model: {vocab_size: 320, d_model: 32, n_layers: 2, n_heads: 2, n_kv_heads: 1, d_ff: 64, context: 32}\n"
      << "routing: {mode: stochastic, p: 0.5}\n"
      << "train: {batch_size: 4, seq_len: 32, steps: 12, lr: 0.01, warmup_steps: 2, log_interval: 4,\n"
      << "        eval_batches: 2, out_dir: " << path("run") << "}\n"
      << "data: {tokenizer: " << path("tok") << ", shards: " << path("shards") << "}\n";
  const Result t = run("train " + path("tiny.yaml"));
  ASSERT_EQ(t.status, 0) << t.output;
  EXPECT_THAT(t.output, HasSubstr("data: shards " + path("shards") + " (1 train, 1 val; checksums verified)"));
  EXPECT_THAT(t.output, HasSubstr("unigram entropy"));
  EXPECT_THAT(t.output, HasSubstr("final | val loss"));
  const Result e = run("eval " + path("run/model.h5") + " --strategies full,first --no-speed --out " + path("eval"));
  ASSERT_EQ(e.status, 0) << e.output;
  EXPECT_THAT(e.output, HasSubstr("| first |"));

  const Result vocab = run("train " + path("tiny.yaml") + " --set model.vocab_size=256");
  EXPECT_EQ(vocab.status, 1);
  EXPECT_THAT(vocab.output, HasSubstr("model.vocab_size is 256 but the tokenizer"));
  const Result window = run("train " + path("tiny.yaml") + " --set model.context=50000 --set train.seq_len=50000");
  EXPECT_EQ(window.status, 1);
  EXPECT_THAT(window.output, HasSubstr("validation split has only"));
}

// llm.c / modded-nanogpt token files (llmc_shards.h), read in place from a folder as llm.c's
// scripts write it: training and validation by file name, the vocabulary padded to a multiple of
// 64 as llm.c pads GPT-2's, bad files and out-of-vocabulary ids refused naming the file.
TEST_F(DataCli, TrainsOnLlmcTokenFilesInPlace) {
  const fs::path dir = dir_ / "llmc";
  fs::create_directories(dir);
  // Byte ids of the generated corpus, documents separated by an end-of-text id (here 10, a newline).
  std::vector<int32_t> ids;
  for (const std::string& d : generated_documents(200)) {
    for (unsigned char c : d) ids.push_back(c);
    ids.push_back(10);
  }
  const std::size_t cut = ids.size() * 9 / 10;
  kvroute::write_llmc_shard((dir / "tiny_train_000001.bin").string(), std::vector<int32_t>(ids.begin(), ids.begin() + cut / 2));
  kvroute::write_llmc_shard((dir / "tiny_train_000002.bin").string(), std::vector<int32_t>(ids.begin() + cut / 2, ids.begin() + cut));
  kvroute::write_llmc_shard((dir / "tiny_val_000000.bin").string(), std::vector<int32_t>(ids.begin() + cut, ids.end()));
  std::ofstream(dir_ / "llmc.yaml")
      << "model: {vocab_size: 320, d_model: 32, n_layers: 2, n_heads: 2, n_kv_heads: 1, d_ff: 64, context: 32}\n"
      << "train: {batch_size: 4, seq_len: 32, steps: 6, lr: 0.01, warmup_steps: 2, log_interval: 2,\n"
      << "        eval_batches: 2, out_dir: " << path("llmc_run") << "}\n"
      << "data: {tokenizer: byte, shards: " << dir.string() << "}\n";
  Result t = run("train " + path("llmc.yaml"));
  ASSERT_EQ(t.status, 0) << t.output;
  EXPECT_THAT(t.output, HasSubstr("llm.c shards " + dir.string() + " (2 train, 1 val; ids checked against byte)"));
  EXPECT_THAT(t.output, HasSubstr("final | val loss"));
  // 320 rows for 256 ids is padding; 384 is not.
  t = run("train " + path("llmc.yaml") + " --set model.vocab_size=384 --set train.out_dir=" + path("llmc_384"));
  EXPECT_EQ(t.status, 1);
  EXPECT_THAT(t.output, HasSubstr("(or that rounded up to a multiple of 64, 256)"));
  // An id the tokenizer does not have.
  kvroute::write_llmc_shard((dir / "tiny_val_000000.bin").string(), {1, 2, 50256});
  t = run("train " + path("llmc.yaml") + " --set train.out_dir=" + path("llmc_oov"));
  EXPECT_EQ(t.status, 1);
  EXPECT_THAT(t.output, HasSubstr("tiny_val_000000.bin': token 2 is id 50256, outside data.tokenizer's 256 ids"));
  // A truncated file, and another version.
  std::string bytes = read_file_bytes(dir / "tiny_train_000002.bin");
  write_file_bytes(dir / "tiny_train_000002.bin", bytes.substr(0, bytes.size() - 7));
  kvroute::write_llmc_shard((dir / "tiny_val_000000.bin").string(), {1, 2, 3});
  t = run("train " + path("llmc.yaml") + " --set train.out_dir=" + path("llmc_cut"));
  EXPECT_EQ(t.status, 1);
  EXPECT_THAT(t.output, HasSubstr("tiny_train_000002.bin': the header says"));
  bytes[4] = 2;
  write_file_bytes(dir / "tiny_train_000002.bin", bytes);
  t = run("train " + path("llmc.yaml") + " --set train.out_dir=" + path("llmc_v2"));
  EXPECT_EQ(t.status, 1);
  EXPECT_THAT(t.output, HasSubstr("version 2; kvroute reads version 1"));
}

// --input-list FILE names the inputs in a file (a corpus of thousands of files is too long for a
// command line to record): --input's files first, then the listed ones, in the list's order.
TEST_F(DataCli, InputListGivesTheSameShardsAsTheFilesOnTheCommandLine) {
  const auto docs = generated_documents(300);
  for (int k = 0; k < 3; ++k) {
    const std::vector<std::string> third(docs.begin() + 100 * k, docs.begin() + 100 * (k + 1));
    write_file_bytes(dir_ / ("part" + std::to_string(k) + ".txt"), join_documents(third));
  }
  write_file_bytes(dir_ / "parts.list", path("part1.txt") + "\n\n" + path("part2.txt") + "\n");
  const std::string common = "data encode --tokenizer byte --docs blank --val-fraction 0.1 --out ";
  const Result listed = run(common + path("shards_listed") + " --input " + path("part0.txt") + " --input-list " +
                            path("parts.list"));
  ASSERT_EQ(listed.status, 0) << listed.output;
  const Result given = run(common + path("shards_given") + " --input " + path("part0.txt") + " " + path("part1.txt") +
                           " " + path("part2.txt"));
  ASSERT_EQ(given.status, 0) << given.output;
  EXPECT_THAT(listed.output, HasSubstr("train 270 documents"));
  for (const char* shard : {"train_00000.bin", "val_00000.bin"})
    EXPECT_EQ(read_file_bytes(dir_ / "shards_listed" / shard), read_file_bytes(dir_ / "shards_given" / shard)) << shard;
  // A different order is a different corpus: the list is read in order, not sorted.
  write_file_bytes(dir_ / "reversed.list", path("part2.txt") + "\n" + path("part1.txt") + "\n");
  const Result reversed = run(common + path("shards_reversed") + " --input " + path("part0.txt") + " --input-list " +
                              path("reversed.list"));
  ASSERT_EQ(reversed.status, 0) << reversed.output;
  EXPECT_NE(read_file_bytes(dir_ / "shards_reversed" / "train_00000.bin"),
            read_file_bytes(dir_ / "shards_given" / "train_00000.bin"));

  const Result tok = run("data tokenizer --input-list " + path("parts.list") + " --vocab-size 320 --out " +
                         path("tok_listed"));
  ASSERT_EQ(tok.status, 0) << tok.output;
  EXPECT_THAT(tok.output, HasSubstr("tokenizer: wrote " + path("tok_listed")));

  const Result missing = run(common + path("x1") + " --input-list " + path("nope.list"));
  EXPECT_EQ(missing.status, 1);
  EXPECT_THAT(missing.output, HasSubstr("input list '" + path("nope.list") + "': no such file"));
  write_file_bytes(dir_ / "empty.list", "\n\n");
  const Result empty = run(common + path("x2") + " --input-list " + path("empty.list"));
  EXPECT_EQ(empty.status, 1);
  EXPECT_THAT(empty.output, HasSubstr("input list '" + path("empty.list") + "': lists no files"));
  const Result none = run(common + path("x3"));
  EXPECT_EQ(none.status, 1);
  EXPECT_THAT(none.output, HasSubstr("no input files: give --input FILE... or --input-list FILE"));
  write_file_bytes(dir_ / "bad.list", path("part0.txt") + "\n" + path("gone.txt") + "\n");
  const Result bad = run(common + path("x4") + " --input-list " + path("bad.list"));
  EXPECT_EQ(bad.status, 1);
  EXPECT_THAT(bad.output, HasSubstr("input '" + path("gone.txt") + "': no such file"));
}

// --out over an input used to delete it under --force: the corpus with `data tokenizer --out DIR`
// when the corpus lies in DIR, the tokenizer with `data encode --out SHARDS` reading
// SHARDS/tokenizer. Both are refused before anything is deleted; a replacement leaves no
// temporary or set-aside folder.
TEST_F(DataCli, AnOutputOverAnInputIsRefusedAndAReplacementLeavesNothingBehind) {
  make_shards();
  fs::create_directories(dir_ / "own");
  write_file_bytes(dir_ / "own" / "corpus.txt", read_file_bytes(dir_ / "corpus.txt"));
  const Result t = run("data tokenizer --input " + path("own/corpus.txt") + " --vocab-size 320 --out " + path("own") +
                       " --force");
  EXPECT_EQ(t.status, 1);
  EXPECT_THAT(t.output, HasSubstr("tokenizer: --out '" + path("own") + "' contains the input '" + path("own/corpus.txt") +
                                  "'"));
  EXPECT_TRUE(fs::exists(dir_ / "own" / "corpus.txt"));
  const Result e = run("data encode --tokenizer " + path("shards/tokenizer") + " --input " + path("corpus.txt") +
                       " --out " + path("shards") + " --force");
  EXPECT_EQ(e.status, 1);
  EXPECT_THAT(e.output, HasSubstr("contains the tokenizer '" + path("shards/tokenizer") + "'"));
  EXPECT_TRUE(fs::exists(dir_ / "shards" / "tokenizer" / "tokenizer.model"));
  const std::string encode = "data encode --tokenizer byte --input " + path("corpus.txt") + " --out " + path("bytes");
  const Result first = run(encode);
  ASSERT_EQ(first.status, 0) << first.output;
  const Result forced = run(encode + " --force");
  ASSERT_EQ(forced.status, 0) << forced.output;
  EXPECT_TRUE(fs::exists(dir_ / "bytes" / "manifest.yaml"));
  EXPECT_FALSE(fs::exists(dir_ / "bytes.tmp"));
  EXPECT_FALSE(fs::exists(dir_ / "bytes.kvroute-old"));
}

TEST_F(DataCli, BadInputGivesAClearErrorAndExitCode) {
  make_shards();
  const Result missing = run("data tokenizer --input " + path("nope.txt") + " --vocab-size 300 --out " + path("t2"));
  EXPECT_EQ(missing.status, 1);
  EXPECT_THAT(missing.output, HasSubstr("input '" + path("nope.txt") + "': no such file"));
  const Result exists = run("data encode --tokenizer byte --input " + path("corpus.txt") + " --out " + path("shards"));
  EXPECT_EQ(exists.status, 1);
  EXPECT_THAT(exists.output, HasSubstr("pass --force"));
  const Result docs =
      run("data encode --tokenizer byte --input " + path("corpus.txt") + " --out " + path("x") + " --docs chapters");
  EXPECT_EQ(docs.status, 1);
  EXPECT_THAT(docs.output, HasSubstr("--docs: 'chapters' is not one of"));

  // A corrupt shard: the header is still shown, then the problem.
  std::string bytes = read_file_bytes(dir_ / "shards" / "val_00000.bin");
  bytes[70] ^= 0x01;
  write_file_bytes(dir_ / "corrupt.bin", bytes);
  const Result corrupt = run("data inspect " + path("corrupt.bin"));
  EXPECT_EQ(corrupt.status, 1);
  EXPECT_THAT(corrupt.output, HasSubstr("tokens      "));
  EXPECT_THAT(corrupt.output, HasSubstr("corrupt.bin': checksum mismatch"));
  write_file_bytes(dir_ / "truncated.bin", bytes.substr(0, 40));
  const Result truncated = run("data inspect " + path("truncated.bin"));
  EXPECT_EQ(truncated.status, 1);
  EXPECT_THAT(truncated.output, HasSubstr("truncated.bin': truncated: 40 bytes"));
  const Result wrong_tok = run("data inspect " + path("shards/val_00000.bin") + " --tokenizer byte");
  EXPECT_EQ(wrong_tok.status, 1);
  EXPECT_THAT(wrong_tok.output, HasSubstr("did not write shard"));
}

}  // namespace
