// End-to-end tests of `kvroute generate`, `kvroute eval --out` and `kvroute bench
// generate` on a briefly trained tiny model; bad input gets a clear message and
// exit status 1, never a crash.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <hdf5.h>
#include <unistd.h>

#include "run_kvroute.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

namespace {

using kvroute::testing_cli::Result;
using kvroute::testing_cli::run;

std::string read(const fs::path& p) {
  std::ifstream f(p);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

class InferenceCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::path(::testing::TempDir()) / ("kvroute_infer_cli_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream text(dir_ / "corpus.txt");
    for (int i = 0; i < 300; ++i) text << "In the beginning " << i % 7 << " God created the heaven and the earth.\n";
    text.close();
    std::ofstream cfg(dir_ / "tiny.yaml");
    // 4 layers, 2 heads of 16, 1 kv head: 2 * 1 * 16 * 4 = 128 bytes per cache layer and token.
    cfg << "model: {vocab_size: 256, d_model: 32, n_layers: 4, n_heads: 2, n_kv_heads: 1, d_ff: 64, context: 32}\n"
        << "routing: {mode: stochastic, p: 0.5, scheme: any}\n"
        << "train: {batch_size: 4, seq_len: 32, steps: 4, lr: 0.01, warmup_steps: 1, log_interval: 2,\n"
        << "        eval_batches: 2, threads: 1, out_dir: " << (dir_ / "run").string()
        << ", checkpoint: {interval: 2}}\n"
        << "data: {train_path: " << (dir_ / "corpus.txt").string() << "}\n";
    cfg.close();
    trained_ = run("train " + config());
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  void SetUp() override { ASSERT_EQ(trained_.status, 0) << trained_.output; }
  static std::string config() { return (dir_ / "tiny.yaml").string(); }
  static std::string model() { return (dir_ / "run" / "model.h5").string(); }
  static fs::path dir_;
  static Result trained_;
};
fs::path InferenceCli::dir_;
Result InferenceCli::trained_;

}  // namespace

TEST_F(InferenceCli, GeneratePrintsTextTtftDecodeSpeedAndCacheBytes) {
  const Result r = run("generate " + model() + " --strategy cla:2 --prompt 'In the' --max-new-tokens 8");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.rfind("In the", 0), 0u) << r.output;
  EXPECT_THAT(r.output, HasSubstr("strategy cla:2 (map 0,0,2,2, 2/4 cache layers)"));
  EXPECT_THAT(r.output, HasSubstr("TTFT "));
  EXPECT_THAT(r.output, HasSubstr("tokens/s (7 tokens in"));
  // 6 prompt + 8 new - 1 positions x 2 cache layers x 128 bytes.
  EXPECT_THAT(r.output, HasSubstr("KV cache 3328 bytes allocated"));
  EXPECT_THAT(r.output, HasSubstr("256 bytes/token; full cache would be 512 bytes/token"));
  EXPECT_THAT(r.output, HasSubstr("stop: max new tokens after 8 tokens"));
}

TEST_F(InferenceCli, GenerateIsSeededAndTopKOneIsGreedy) {
  const std::string base = "generate " + model() + " --strategy first --prompt 'And God' --max-new-tokens 12";
  auto text = [](const Result& r) { return r.output.substr(0, r.output.find("---")); };
  const Result a = run(base + " --temperature 1.0 --seed 5");
  const Result b = run(base + " --temperature 1.0 --seed 5");
  const Result greedy = run(base);
  const Result top1 = run(base + " --temperature 1.0 --top-k 1 --seed 9");
  ASSERT_EQ(a.status, 0) << a.output;
  EXPECT_EQ(text(a), text(b));
  EXPECT_EQ(text(greedy), text(top1));
  // Two prompts of different lengths in one batch give what each gives alone.
  const Result both = run("generate " + model() + " --strategy cla:2 --prompt 'In' --prompt 'And God said' --max-new-tokens 6");
  const Result one = run("generate " + model() + " --strategy cla:2 --prompt 'And God said' --max-new-tokens 6");
  ASSERT_EQ(both.status, 0) << both.output;
  EXPECT_THAT(both.output, HasSubstr("=== prompt 2 ===\n" + text(one)));
}

TEST_F(InferenceCli, GenerateRefusesBadInput) {
  const std::string base = "generate " + model();
  const Result unknown = run(base + " --strategy yoco --prompt x");
  EXPECT_EQ(unknown.status, 1);
  EXPECT_THAT(unknown.output, HasSubstr("unknown strategy 'yoco'"));
  const Result depth = run(base + " --strategy list:0,0,2,2,4,4 --prompt x");
  EXPECT_EQ(depth.status, 1);
  EXPECT_THAT(depth.output, HasSubstr("list has 6 entries but the model has 4 layers"));
  EXPECT_THAT(depth.output, HasSubstr("4 layers]"));
  const Result invalid = run(base + " --strategy list:0,1,1,2 --prompt x");
  EXPECT_EQ(invalid.status, 1);
  EXPECT_THAT(invalid.output, HasSubstr("layer 3 reads layer 2"));
  const Result greedy = run(base + " --strategy greedy:2 --prompt x");
  EXPECT_EQ(greedy.status, 1);
  EXPECT_THAT(greedy.output, HasSubstr("`kvroute eval` resolves it"));
  const Result too_long = run(base + " --prompt '" + std::string(40, 'a') + "'");
  EXPECT_EQ(too_long.status, 1);
  EXPECT_THAT(too_long.output, HasSubstr("--prompt 1 is 40 tokens long, more than the model's context of 32 tokens"));
  const Result empty = run(base + " --prompt ''");
  EXPECT_EQ(empty.status, 1);
  EXPECT_THAT(empty.output, HasSubstr("--prompt 1 is empty"));
  const Result top_p = run(base + " --prompt x --top-p 1.5");
  EXPECT_EQ(top_p.status, 1);
  EXPECT_THAT(top_p.output, HasSubstr("--top-p must be in (0, 1]"));
  const Result vocab = run(base + " --prompt x --set model.vocab_size=300");
  EXPECT_EQ(vocab.status, 1);
  // A model larger than its tokenizer may be a padded pretrained one; this one does not fit its checkpoint.
  EXPECT_THAT(vocab.output, HasSubstr("model.vocab_size: 256 vs 300"));
  const Result missing = run("generate " + (dir_ / "absent.h5").string() + " --prompt x");
  EXPECT_EQ(missing.status, 1);
  EXPECT_THAT(missing.output, HasSubstr("absent.h5"));
  for (const Result* r : {&unknown, &depth, &greedy, &too_long, &empty, &top_p, &vocab, &missing})
    EXPECT_THAT(r->output, Not(HasSubstr("terminate called")));
}

TEST_F(InferenceCli, GenerateNotesWhenTheContextEndsGeneration) {
  const Result r = run("generate " + model() + " --prompt '" + std::string(30, 'a') + "' --max-new-tokens 10");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("generation stops when the context is full"));
  EXPECT_THAT(r.output, HasSubstr("stop: context full after 3 tokens"));  // 30 + 2 fed back = 32
}

TEST_F(InferenceCli, EvalWritesTableCsvJsonAndPlotForSeveralCheckpoints) {
  const fs::path out = dir_ / "eval_out";
  const std::string step2 = (dir_ / "run" / "checkpoints" / "step_00000002.h5").string();
  ASSERT_TRUE(fs::exists(step2));
  const Result r = run("eval " + model() + " " + step2 +
                       " --strategies full,cla:2,greedy:2 --out " + out.string() +
                       " --val-tokens 200 --prompt-len 8 --decode-len 4 --repeats 1");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("| cla:2 | 0,0,2,2 | 2/4 | 50.0% | 256 |"));
  EXPECT_THAT(r.output, HasSubstr("| full | 0,1,2,3 | 4/4 | 100.0% | 512 |"));
  EXPECT_THAT(r.output, HasSubstr("greedy:2 path: chosen on the training split: full ("));
  EXPECT_THAT(r.output, HasSubstr("2 x 4 x 32 validation tokens"));  // 200 tokens -> 2 batches of 4 x 32
  for (const char* f : {"results.md", "results.csv", "results.json"}) EXPECT_TRUE(fs::exists(out / f)) << f;
  EXPECT_TRUE(fs::exists(out / "loss_vs_kv.png") || fs::exists(out / "loss_vs_kv.svg"));
  const std::string csv = read(out / "results.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 2 * 3);
  EXPECT_THAT(csv, HasSubstr(step2 + ",2,cla:2,\"0,0,2,2\",2,4,0.500000,256,512,"));
  const std::string json = read(out / "results.json");
  EXPECT_THAT(json, HasSubstr("\"strategy\": \"greedy:2\""));
  EXPECT_THAT(read(out / "results.md"), HasSubstr("### " + step2 + " (step 2)"));
}

TEST_F(InferenceCli, EvalRefusesStrategiesThatDoNotFitTheCheckpoint) {
  const Result depth = run("eval " + model() + " --no-speed --strategies full,list:0,0,2,2,4,4");
  EXPECT_EQ(depth.status, 1);
  EXPECT_THAT(depth.output, HasSubstr("list has 6 entries but the model has 4 layers [checkpoint"));
  const Result greedy = run("eval " + model() + " --no-speed --strategies greedy:9");
  EXPECT_EQ(greedy.status, 1);
  EXPECT_THAT(greedy.output, HasSubstr("greedy:N needs an integer N in 1..4"));
  const Result plot = run("eval " + model() + " --no-speed --plot-format gif");
  EXPECT_EQ(plot.status, 1);
  EXPECT_THAT(plot.output, HasSubstr("--plot-format must be png or svg"));
}

// A copy of model.h5 that says it was trained with another tokenizer of the same size (as
// if data.tokenizer had since been re-made): eval and generate used to go on silently.
TEST_F(InferenceCli, EvalAndGenerateRefuseAnotherTokenizerUnlessAllowedLoudly) {
  const fs::path other = dir_ / "other_tokenizer.h5";
  fs::copy_file(model(), other, fs::copy_options::overwrite_existing);
  {
    const hid_t file = H5Fopen(other.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    const hid_t group = H5Gopen2(file, "/tokenizer", H5P_DEFAULT);
    ASSERT_GE(group, 0);
    ASSERT_GE(H5Adelete(group, "fingerprint"), 0);
    const std::string value = "0123456789abcdef";
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, value.size());
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attr = H5Acreate2(group, "fingerprint", type, space, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Awrite(attr, type, value.data()), 0);
    H5Aclose(attr), H5Sclose(space), H5Tclose(type), H5Gclose(group), H5Fclose(file);
  }
  const std::string tail = " --no-speed --val-tokens 200 --out " + (dir_ / "eval_other").string();
  for (const std::string& cmd : {"eval " + other.string() + tail, "generate " + other.string() + " --prompt x"}) {
    const Result refused = run(cmd);
    EXPECT_EQ(refused.status, 1) << cmd << "\n" << refused.output;
    EXPECT_THAT(refused.output, HasSubstr("was trained with tokenizer 'byte' (256 tokens, fingerprint 0123456789abcdef)"));
    EXPECT_THAT(refused.output, HasSubstr("token ids would change meaning"));
    EXPECT_THAT(refused.output, HasSubstr("--allow-tokenizer-mismatch"));
    const Result allowed = run(cmd + " --allow-tokenizer-mismatch");
    EXPECT_EQ(allowed.status, 0) << cmd << "\n" << allowed.output;
    EXPECT_THAT(allowed.output, HasSubstr("WARNING: checkpoint '" + other.string() + "' was trained with tokenizer"));
  }
  // The checkpoint's own tokenizer: no warning.
  const Result same = run("generate " + model() + " --prompt x");
  EXPECT_EQ(same.status, 0) << same.output;
  EXPECT_THAT(same.output, Not(HasSubstr("WARNING")));
}

// An explicit 0 used to mean "the default"; a stop token outside the vocabulary was accepted;
// more batches than the validation split holds repeated windows silently.
TEST_F(InferenceCli, EvalAndGenerateRefuseZeroSizesAndForeignStopTokens) {
  const std::string base = "eval " + model() + " --no-speed --out " + (dir_ / "eval_sizes").string();
  for (const char* option : {"--val-tokens", "--batches", "--batch-size", "--seq-len"}) {
    const Result r = run(base + " " + option + " 0");
    EXPECT_EQ(r.status, 1) << option << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(std::string(option) + " must be >= 1 (got 0)"));
  }
  const Result many = run(base + " --strategies full --batches 64");
  ASSERT_EQ(many.status, 0) << many.output;
  EXPECT_THAT(many.output, HasSubstr("note: 64 x 4 x 32 = 8192 validation tokens requested, but the validation split"));
  EXPECT_THAT(many.output, HasSubstr("windows overlap"));
  const Result few = run(base + " --strategies full --batches 1");
  ASSERT_EQ(few.status, 0) << few.output;
  EXPECT_THAT(few.output, Not(HasSubstr("windows overlap")));

  for (const char* id : {"256", "99999", "-2"}) {
    const Result r = run("generate " + model() + " --prompt x --stop-token " + id);
    EXPECT_EQ(r.status, 1) << id << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr("--stop-token " + std::string(id) + " is not a token id"));
    EXPECT_THAT(r.output, HasSubstr("vocabulary 0..255"));
  }
  const Result ok = run("generate " + model() + " --prompt x --stop-token 255 --max-new-tokens 2");
  EXPECT_EQ(ok.status, 0) << ok.output;
}

// --decode-batch 100000 used to grow until the kernel killed the process.
TEST_F(InferenceCli, EvalRefusesADecodeBatchThatCannotFitBeforeLoadingAnything) {
  const fs::path out = dir_ / "eval_huge";
  const Result r = run("eval " + model() + " --strategies full,cla:2 --decode-batch 2000000000 --out " + out.string());
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("eval of " + model() + " (weights"));
  EXPECT_THAT(r.output, HasSubstr("with --decode-batch 2000000000"));
  EXPECT_THAT(r.output, HasSubstr("lower --decode-batch"));
  EXPECT_THAT(r.output, Not(HasSubstr("| strategy |")));  // nothing measured
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(InferenceCli, BenchGenerateFromConfigOrCheckpoint) {
  const Result json = run("bench generate " + config() +
                          " --strategy full,cla:2 --prompt-len 8 --decode-len 4 --repeats 2 --json");
  ASSERT_EQ(json.status, 0) << json.output;
  EXPECT_THAT(json.output, HasSubstr("\"strategy\": \"cla:2\", \"source_map\": \"0,0,2,2\", \"cache_layers\": 2"));
  EXPECT_THAT(json.output, HasSubstr("\"kv_bytes_per_token\": 256"));
  EXPECT_THAT(json.output, HasSubstr("\"decode_tokens_per_s_median\""));
  EXPECT_THAT(json.output, HasSubstr("\"random init (seed 1) from "));
  const Result table = run("bench generate " + model() + " --strategy cla:2 --prompt-len 8 --decode-len 4 --repeats 1");
  ASSERT_EQ(table.status, 0) << table.output;
  EXPECT_THAT(table.output, HasSubstr("| cla:2 | 2/4 | 256 |"));
  const Result too_long = run("bench generate " + config() + " --decode-len 32");
  EXPECT_EQ(too_long.status, 1);
  EXPECT_THAT(too_long.output, HasSubstr("--decode-len 32 must be in 1..31"));
  const Result no_sub = run("bench");
  EXPECT_NE(no_sub.status, 0);
  EXPECT_THAT(no_sub.output, HasSubstr("generate"));
}
