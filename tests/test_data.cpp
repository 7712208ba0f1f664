// Data pipeline: tokenizers (byte, SentencePiece), token shards, documents and
// encoding, the windowed loader (determinism, disjoint ranks, exact resume), the
// validation order, and corpus loading -- each bad input refused with a message
// that names the file and the problem.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "document_reader.h"
#include "data_fixtures.h"
#include "kvroute/data.h"
#include "kvroute/encode.h"
#include "kvroute/input_limits.h"
#include "kvroute/loader.h"
#include "kvroute/shard.h"
#include "kvroute/shard_dir.h"
#include "kvroute/tokenizer.h"
#include "kvroute/trainer.h"

namespace kvroute {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using namespace testing_data;

// Runs f and returns the exception message ("" when nothing was thrown).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// Reference FNV-1a 64, spelled out from the definition.
uint64_t reference_fnv(const std::string& bytes) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// Little-endian bytes of ids at a given width.
std::string le_bytes(const std::vector<int32_t>& ids, int width) {
  std::string s;
  for (int32_t id : ids)
    for (int b = 0; b < width; ++b) s.push_back(static_cast<char>((static_cast<uint32_t>(id) >> (8 * b)) & 0xff));
  return s;
}

// Splits ids at every occurrence of `sep` (which ends each document).
std::vector<std::vector<int32_t>> split_at(const std::vector<int32_t>& ids, int32_t sep) {
  std::vector<std::vector<int32_t>> out(1);
  for (int32_t id : ids) {
    if (id == sep)
      out.emplace_back();
    else
      out.back().push_back(id);
  }
  out.pop_back();  // after the final separator
  return out;
}

std::vector<int32_t> all_tokens(const Shard& s) {
  std::vector<int32_t> ids(s.size());
  for (uint64_t i = 0; i < s.size(); ++i) ids[i] = s[i];
  return ids;
}

// ---------------------------------------------------------------- fixtures

class DataTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fresh_temp_dir("kvroute_data");
    docs_ = generated_documents(400);
    write_file_bytes(dir_ / "corpus.txt", join_documents(docs_));
  }
  // A SentencePiece tokenizer trained on the corpus once per process.
  static const std::string& tokenizer_dir() {
    static const std::string dir = [] {
      TokenizerTrainOptions o;
      o.inputs = {(dir_ / "corpus.txt").string()};
      o.out_dir = (dir_ / "tok").string();
      o.vocab_size = kVocab;
      train_tokenizer(o);
      return o.out_dir;
    }();
    return dir;
  }
  static constexpr int kVocab = 400;
  static fs::path dir_;
  static std::vector<std::string> docs_;
};
fs::path DataTest::dir_;
std::vector<std::string> DataTest::docs_;

// ---------------------------------------------------------------- tokenizers

TEST(ByteTokenizer, RoundTripsEveryByte) {
  const auto tok = make_byte_tokenizer();
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const auto ids = tok->encode(all);
  ASSERT_EQ(ids.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b);
  EXPECT_EQ(tok->decode(ids), all);
  EXPECT_EQ(tok->vocab_size(), 256);
  EXPECT_EQ(tok->identity(), "byte");
  EXPECT_EQ(tok->document_separator(), std::vector<int32_t>{'\n'});
  const std::vector<int32_t> bad = {65, 256};
  EXPECT_THAT(error_of([&] { tok->decode(bad); }), HasSubstr("token id 256"));
}

TEST_F(DataTest, SentencePieceHasTheRequestedVocabularyAndLayout) {
  const auto tok = load_tokenizer(tokenizer_dir());
  EXPECT_EQ(tok->vocab_size(), kVocab);
  EXPECT_EQ(tok->piece(0), "<unk>");
  EXPECT_EQ(tok->piece(1), "<s>");
  EXPECT_EQ(tok->piece(2), "</s>");
  EXPECT_EQ(tok->document_separator(), std::vector<int32_t>{2});
  for (int b = 0; b < 256; ++b) {
    char expect[8];
    std::snprintf(expect, sizeof expect, "<0x%02X>", b);
    EXPECT_EQ(tok->piece(3 + b), expect);
  }
  // The fingerprint is FNV-1a of the model file, and names the tokenizer.
  const uint64_t fp = reference_fnv(read_file_bytes(fs::path(tokenizer_dir()) / "tokenizer.model"));
  EXPECT_EQ(tok->fingerprint(), fp);
  EXPECT_EQ(tok->identity(), "sentencepiece-400-" + fingerprint_hex(fp));
  EXPECT_EQ(load_tokenizer(tokenizer_dir())->identity(), tok->identity());
  for (const char* f : {"tokenizer.model", "tokenizer.vocab", "tokenizer.yaml"})
    EXPECT_TRUE(fs::exists(fs::path(tokenizer_dir()) / f)) << f;
}

TEST_F(DataTest, SentencePieceRoundTripsAnyBytes) {
  const auto tok = load_tokenizer(tokenizer_dir());
  const std::string corpus = read_file_bytes(dir_ / "corpus.txt");
  const auto ids = tok->encode(corpus);
  EXPECT_EQ(tok->decode(ids), corpus);
  EXPECT_LT(ids.size(), corpus.size() / 2) << "a subword model should need far fewer tokens than bytes";

  const std::vector<std::string> tricky = {
      "",
      " ",
      "  leading and trailing spaces  ",
      "tabs\tand\r\nCRLF\r\n\n\nblank lines",
      std::string("a NUL \0 inside", 14),
      "\xE2\x96\x81 the meta space U+2581 \xE2\x96\x81\xE2\x96\x81",
      "invalid UTF-8: \xff\xfe \xc3 \xe2\x82 \xed\xa0\x80 (surrogate) \xc0\xaf (overlong)",
      "unseen letters: \xc3\xbc\xc3\x9f \xe6\xbc\xa2\xe5\xad\x97 \xf0\x9f\x98\x80",
  };
  for (const std::string& s : tricky) EXPECT_EQ(tok->decode(tok->encode(s)), s) << s;
  // Random byte strings.
  for (uint64_t trial = 0; trial < 200; ++trial) {
    std::string s(uniform_int(3, 21, trial, 64), '\0');
    for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(uniform_int(3, 22, trial * 1000 + i, 256));
    ASSERT_EQ(tok->decode(tok->encode(s)), s) << "trial " << trial;
  }
}

TEST_F(DataTest, EncodingSplitsAtLineEndsAndInParallel) {
  const auto tok = load_tokenizer(tokenizer_dir());
  const std::string corpus = read_file_bytes(dir_ / "corpus.txt");
  // encode(text) is the concatenation of encode(line) over its lines.
  std::vector<int32_t> by_line;
  for (std::size_t i = 0; i < corpus.size();) {
    std::size_t end = corpus.find('\n', i);
    end = end == std::string::npos ? corpus.size() : end + 1;
    const auto part = tok->encode(std::string_view(corpus).substr(i, end - i));
    by_line.insert(by_line.end(), part.begin(), part.end());
    i = end;
  }
  const auto whole = tok->encode(corpus);
  EXPECT_EQ(whole, by_line);
  // More than 1 MiB, so encode_parallel really cuts it into chunks.
  std::string big;
  while (big.size() < (1u << 20) + 100000) big += corpus;
  const auto serial = tok->encode(big);
  EXPECT_EQ(encode_parallel(*tok, big, 1), serial);
  EXPECT_EQ(encode_parallel(*tok, big, 2), serial);
}

TEST_F(DataTest, TokenizerErrorsNameTheProblem) {
  EXPECT_THAT(error_of([] { load_tokenizer((dir_ / "nope").string()); }), HasSubstr("no such directory"));
  fs::create_directories(dir_ / "empty_tok");
  EXPECT_THAT(error_of([] { load_tokenizer((dir_ / "empty_tok").string()); }), HasSubstr("no tokenizer.model"));
  fs::create_directories(dir_ / "junk_tok");
  write_file_bytes(dir_ / "junk_tok" / "tokenizer.model", "this is not a protobuf");
  EXPECT_THAT(error_of([] { load_tokenizer((dir_ / "junk_tok").string()); }), HasSubstr("not a SentencePiece model"));

  TokenizerTrainOptions o;
  o.out_dir = (dir_ / "tok_err").string();
  o.inputs = {(dir_ / "missing.txt").string()};
  EXPECT_THAT(error_of([&] { train_tokenizer(o); }), HasSubstr("missing.txt': no such file"));
  write_file_bytes(dir_ / "empty.txt", "");
  o.inputs = {(dir_ / "empty.txt").string()};
  EXPECT_THAT(error_of([&] { train_tokenizer(o); }), HasSubstr("empty.txt': is empty"));
  o.inputs = {(dir_ / "corpus.txt").string()};
  o.vocab_size = 100;
  EXPECT_THAT(error_of([&] { train_tokenizer(o); }), HasSubstr("--vocab-size: 100 is too small"));
  write_file_bytes(dir_ / "tiny.txt", "just a few words\n");
  o.inputs = {(dir_ / "tiny.txt").string()};
  o.vocab_size = 4000;
  EXPECT_THAT(error_of([&] { train_tokenizer(o); }), HasSubstr("lower --vocab-size"));
  EXPECT_FALSE(fs::exists(o.out_dir)) << "a failed training must not leave an output";
  o.inputs = {(dir_ / "corpus.txt").string()};
  o.out_dir = tokenizer_dir();
  o.vocab_size = kVocab;
  EXPECT_THAT(error_of([&] { train_tokenizer(o); }), HasSubstr("pass --force"));
}

// ---------------------------------------------------------------- shards

TEST(Fnv1a64, MatchesPublishedValues) {
  EXPECT_EQ(fnv1a64("", 0), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a", 1), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar", 6), 0x85944171f73967e8ull);
  // Hashing in pieces equals hashing at once.
  EXPECT_EQ(fnv1a64("bar", 3, fnv1a64("foo", 3)), 0x85944171f73967e8ull);
}

class ShardTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = fresh_temp_dir("kvroute_shard"); }
  fs::path dir_;
};

TEST_F(ShardTest, WriteThenReadGivesTheTokensHeaderAndChecksum) {
  for (const uint32_t vocab : {300u, 65536u, 70000u}) {
    std::vector<int32_t> ids(1001);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(uniform_int(1, 2, i, vocab));
    ids[5] = static_cast<int32_t>(vocab - 1);
    const std::string path = (dir_ / ("s" + std::to_string(vocab) + ".bin")).string();
    const ShardHeader written = write_shard(path, ids, vocab, 0xabcdef, 17);
    const int width = vocab <= 65536 ? 2 : 4;
    EXPECT_EQ(fs::file_size(path), 64u + ids.size() * width);
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    const Shard s = Shard::open(path);
    EXPECT_EQ(s.header().version, 1u);
    EXPECT_EQ(s.header().token_width, static_cast<uint32_t>(width));
    EXPECT_EQ(s.header().vocab_size, vocab);
    EXPECT_EQ(s.header().token_count, ids.size());
    EXPECT_EQ(s.header().tokenizer_fingerprint, 0xabcdefu);
    EXPECT_EQ(s.header().documents, 17u);
    EXPECT_EQ(s.header().checksum, reference_fnv(le_bytes(ids, width)));
    EXPECT_EQ(written.checksum, s.header().checksum);
    EXPECT_EQ(all_tokens(s), ids);
    // The header bytes are where shard.h says they are.
    const std::string raw = read_file_bytes(path);
    EXPECT_EQ(raw.substr(0, 8), "KVRTOKNS");
    EXPECT_EQ(raw.substr(64), le_bytes(ids, width));
  }
}

TEST_F(ShardTest, WriterRefusesIdsOutsideTheVocabularyAndLeavesNothingWhenAbandoned) {
  const std::string path = (dir_ / "w.bin").string();
  {
    ShardWriter w(path, 100, 0);
    const std::vector<int32_t> ok = {1, 2, 99};
    w.append(ok);
    const std::vector<int32_t> big = {100};
    EXPECT_THAT(error_of([&] { w.append(big); }), HasSubstr("token id 100 is outside the vocabulary"));
    const std::vector<int32_t> negative = {-1};
    EXPECT_THAT(error_of([&] { w.append(negative); }), HasSubstr("token id -1"));
  }  // destroyed without close()
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST_F(ShardTest, BadShardsAreRefusedWithTheFileAndTheProblem) {
  const std::vector<int32_t> ids = {5, 6, 7, 8, 9, 10, 11, 12};
  const std::string good_path = (dir_ / "good.bin").string();
  write_shard(good_path, ids, 50, 1);
  const std::string good = read_file_bytes(good_path);
  auto variant = [&](const std::string& name, const std::string& bytes) {
    const std::string p = (dir_ / name).string();
    write_file_bytes(p, bytes);
    return p;
  };
  auto open_error = [](const std::string& p) { return error_of([&] { Shard::open(p); }); };

  const std::string missing = (dir_ / "missing.bin").string();
  EXPECT_THAT(open_error(missing), HasSubstr("missing.bin': no such file"));
  const std::string empty = variant("empty.bin", "");
  EXPECT_THAT(open_error(empty), HasSubstr("empty.bin': truncated: 0 bytes"));
  EXPECT_THAT(open_error(variant("short.bin", good.substr(0, 10))), HasSubstr("shorter than the 64-byte header"));
  EXPECT_THAT(open_error(variant("cut.bin", good.substr(0, good.size() - 1))),
              HasSubstr("cut.bin': truncated: the header promises 8 tokens"));
  EXPECT_THAT(open_error(variant("long.bin", good + "xx")), HasSubstr("2 unexpected bytes after the last token"));
  std::string magic = good;
  magic.replace(0, 8, "GPT2TOKS");
  EXPECT_THAT(open_error(variant("magic.bin", magic)),
              HasSubstr("magic.bin': not a kvroute token shard (magic 'GPT2TOKS'"));
  std::string version = good;
  version[8] = 2;
  EXPECT_THAT(open_error(variant("version.bin", version)),
              HasSubstr("format version 2, but this build reads version 1"));
  std::string flipped = good;
  flipped[64 + 3] ^= 0x01;
  const std::string flipped_path = variant("flipped.bin", flipped);
  EXPECT_THAT(open_error(flipped_path), HasSubstr("flipped.bin': checksum mismatch"));
  EXPECT_EQ(error_of([&] { Shard::open(flipped_path, ShardCheck::header); }), "") << "the header check reads no tokens";
  // An id >= vocab with a checksum that matches it: only the id check can catch it.
  std::vector<int32_t> bad_ids = ids;
  bad_ids[4] = 60;
  std::string bad = good;
  bad.replace(64, std::string::npos, le_bytes(bad_ids, 2));
  const uint64_t sum = reference_fnv(le_bytes(bad_ids, 2));
  std::memcpy(bad.data() + 32, &sum, 8);
  EXPECT_THAT(open_error(variant("bad_id.bin", bad)), HasSubstr("token 4 has id 60, not below the vocabulary size 50"));
}

// ---------------------------------------------------------------- documents

std::vector<std::string> read_documents(const std::vector<std::string>& files, const std::string& rule,
                                        std::size_t max_piece = 1 << 20) {
  DocumentReader reader(files, parse_document_rule(rule), max_piece);
  std::vector<std::string> docs;
  DocumentPiece p;
  bool open = false;
  while (reader.next(p)) {
    if (!open) {
      EXPECT_EQ(p.document, docs.size());
      docs.emplace_back();
    }
    EXPECT_EQ(p.document, docs.size() - 1);
    docs.back() += p.text;
    open = !p.ends_document;
    if (max_piece < (1u << 20) && !p.ends_document) EXPECT_GE(p.text.size(), max_piece);
  }
  EXPECT_FALSE(open);
  return docs;
}

TEST_F(ShardTest, DocumentRulesSplitAsDocumented) {
  write_file_bytes(dir_ / "a.txt", "intro line\nGenesis 1\nv1\n\n  \nv2\nExodus 2\nv3");
  write_file_bytes(dir_ / "b.txt", "\nlast one\n");
  const std::vector<std::string> files = {(dir_ / "a.txt").string(), (dir_ / "b.txt").string()};
  using V = std::vector<std::string>;
  EXPECT_EQ(read_documents(files, "blank"), (V{"intro line\nGenesis 1\nv1\n", "v2\nExodus 2\nv3", "last one\n"}));
  EXPECT_EQ(read_documents(files, "line"),
            (V{"intro line\n", "Genesis 1\n", "v1\n", "v2\n", "Exodus 2\n", "v3", "last one\n"}));
  EXPECT_EQ(read_documents(files, "file"), (V{"intro line\nGenesis 1\nv1\n\n  \nv2\nExodus 2\nv3", "\nlast one\n"}));
  EXPECT_EQ(read_documents(files, "start:^[A-Z][a-z]+ [0-9]+$"),
            (V{"intro line\n", "Genesis 1\nv1\n\n  \nv2\n", "Exodus 2\nv3", "\nlast one\n"}));
  // Pieces cut at line ends reassemble into the same documents.
  EXPECT_EQ(read_documents(files, "file", 4), read_documents(files, "file"));

  EXPECT_THAT(error_of([] { parse_document_rule("paragraph"); }),
              HasSubstr("not one of blank, line, file, start:REGEX"));
  EXPECT_THAT(error_of([] { parse_document_rule("start:(unclosed"); }), HasSubstr("not a valid POSIX extended"));
}

// ---------------------------------------------------------------- encoding

TEST_F(DataTest, EncodeSplitsByDocumentAndDecodesBackToTheText) {
  EncodeOptions o;
  o.tokenizer = tokenizer_dir();
  o.inputs = {(dir_ / "corpus.txt").string()};
  o.out_dir = (dir_ / "shards_split").string();
  o.val_fraction = 0.05;
  const EncodeReport r = encode_corpus(o);
  // Reference split: one in every 20 documents, the 20th, 40th, ...
  std::vector<std::string> want_train, want_val;
  for (std::size_t i = 0; i < docs_.size(); ++i) ((i + 1) % 20 == 0 ? want_val : want_train).push_back(docs_[i]);
  EXPECT_EQ(r.documents[0], want_train.size());
  EXPECT_EQ(r.documents[1], want_val.size());

  const ShardDirInfo info = read_shard_dir(o.out_dir);
  const auto tok = load_tokenizer(info.tokenizer_spec());
  EXPECT_EQ(info.tokenizer_fingerprint, load_tokenizer(tokenizer_dir())->fingerprint());
  ASSERT_EQ(info.split("train").size(), 1u);
  ASSERT_EQ(info.split("val").size(), 1u);
  for (const auto& [split, want] : {std::pair{"train", want_train}, std::pair{"val", want_val}}) {
    const Shard s = Shard::open(info.split(split)[0].path);
    EXPECT_EQ(s.header().documents, want.size());
    const auto ids = all_tokens(s);
    EXPECT_EQ(ids.back(), 2) << "every document ends with </s>";
    const auto pieces = split_at(ids, 2);
    ASSERT_EQ(pieces.size(), want.size()) << split;
    for (std::size_t d = 0; d < want.size(); ++d) EXPECT_EQ(tok->decode(pieces[d]), want[d]) << split << " doc " << d;
    EXPECT_EQ(info.tokens(split), s.size());
  }
}

TEST_F(DataTest, EncodeWritesTheSameShardsForAnyThreadCount) {
  EncodeOptions o;
  o.tokenizer = tokenizer_dir();
  o.inputs = {(dir_ / "corpus.txt").string(), (dir_ / "corpus.txt").string()};
  o.shard_tokens = 5000;  // several shards, so the roll-over decisions are compared too
  o.threads = 1;
  o.out_dir = (dir_ / "shards_t1").string();
  const EncodeReport r1 = encode_corpus(o);
  o.threads = 2;
  o.out_dir = (dir_ / "shards_t2").string();
  encode_corpus(o);
  EXPECT_GT(r1.shards[0], 3);
  const ShardDirInfo a = read_shard_dir((dir_ / "shards_t1").string()),
                     b = read_shard_dir((dir_ / "shards_t2").string());
  ASSERT_EQ(a.shards.size(), b.shards.size());
  uint64_t docs = 0;
  for (std::size_t i = 0; i < a.shards.size(); ++i) {
    EXPECT_EQ(read_file_bytes(a.shards[i].path), read_file_bytes(b.shards[i].path)) << a.shards[i].path;
    const Shard s = Shard::open(a.shards[i].path);
    EXPECT_EQ(s[s.size() - 1], 2) << "a shard ends at a document boundary";
    const bool last_of_split = i + 1 == a.shards.size() || a.shards[i + 1].split != a.shards[i].split;
    if (!last_of_split) EXPECT_GE(s.size(), o.shard_tokens);
    docs += s.header().documents;
  }
  EXPECT_EQ(docs, 2 * docs_.size());
}

TEST_F(DataTest, EncodeErrorsNameTheFileAndLeaveNoOutput) {
  EncodeOptions o;
  o.tokenizer = "byte";
  o.out_dir = (dir_ / "enc_err").string();
  o.inputs = {(dir_ / "absent.txt").string()};
  EXPECT_THAT(error_of([&] { encode_corpus(o); }),
              HasSubstr("input '" + (dir_ / "absent.txt").string() + "': no such file"));
  write_file_bytes(dir_ / "empty_in.txt", "");
  o.inputs = {(dir_ / "corpus.txt").string(), (dir_ / "empty_in.txt").string()};
  EXPECT_THAT(error_of([&] { encode_corpus(o); }), HasSubstr("empty_in.txt': is empty"));
  o.inputs = {dir_.string()};
  EXPECT_THAT(error_of([&] { encode_corpus(o); }), HasSubstr("is a directory"));
  o.inputs = {(dir_ / "corpus.txt").string()};
  o.documents = parse_document_rule("file");  // one document: nothing for validation
  EXPECT_THAT(error_of([&] { encode_corpus(o); }),
              HasSubstr("no document went to validation: the inputs hold 1 document"));
  o.val_fraction = 0.7;
  EXPECT_THAT(error_of([&] { encode_corpus(o); }), HasSubstr("--val-fraction: 0.7 is not in [0, 0.5]"));
  o.val_fraction = 0.05;
  o.tokenizer = (dir_ / "no_such_tokenizer").string();
  EXPECT_THAT(error_of([&] { encode_corpus(o); }), HasSubstr("no such directory"));
  EXPECT_FALSE(fs::exists(o.out_dir));
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().filename().string().find("enc_err.partial"), std::string::npos) << e.path();
  o.tokenizer = "byte";
  o.documents = parse_document_rule("blank");
  o.out_dir = (dir_ / "enc_exists").string();
  encode_corpus(o);
  EXPECT_THAT(error_of([&] { encode_corpus(o); }), HasSubstr("already exists and is not empty; pass --force"));
  o.force = true;
  EXPECT_EQ(error_of([&] { encode_corpus(o); }), "");
}

// A line over kvroute's limit is refused naming the file and line, after reading no more than
// the limit; a FIFO as input is refused without blocking. Tokenizer training reads a long line
// a part at a time and cuts it into sentences.
TEST_F(DataTest, LongLinesAndFifosAreBoundedNotHeldWhole) {
  const std::string long_line(limits::kTextLineBytes + 10, 'a');
  write_file_bytes(dir_ / "long_line.txt", "first line\n\n" + long_line + "\nlast\n");
  EncodeOptions o;
  o.tokenizer = "byte";
  o.out_dir = (dir_ / "enc_long").string();
  o.inputs = {(dir_ / "long_line.txt").string()};
  EXPECT_THAT(error_of([&] { encode_corpus(o); }),
              AllOf(HasSubstr("long_line.txt': line 3 is longer than kvroute's limit of 4 MiB"), HasSubstr("fold")));
  EXPECT_FALSE(fs::exists(o.out_dir));
  const fs::path fifo = dir_ / "fifo.txt";
  fs::remove(fifo);
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  o.inputs = {fifo.string()};
  EXPECT_THAT(error_of([&] { encode_corpus(o); }), HasSubstr("fifo.txt': not a regular file"));
  // Training: a 1 MB line of words is 256+ sentences of at most 4096 bytes, not one.
  std::string words;
  while (words.size() < (1u << 20)) words += "lorem ipsum dolor sit amet ";
  write_file_bytes(dir_ / "one_line.txt", words + "\n" + words);
  TokenizerTrainOptions t;
  t.inputs = {(dir_ / "one_line.txt").string()};
  t.out_dir = (dir_ / "tok_one_line").string();
  t.vocab_size = 280;
  t.force = true;
  const TokenizerTrainReport r = train_tokenizer(t);
  EXPECT_GE(r.sentences, 2u * ((1u << 20) / 4096));
  EXPECT_LE(r.sentences, 2u * ((1u << 20) / 3000));
  t.inputs = {fifo.string()};
  EXPECT_THAT(error_of([&] { train_tokenizer(t); }), HasSubstr("fifo.txt': not a regular file"));
}

// ---------------------------------------------------------------- loader

// Segments of various lengths holding their own positions (id = offset % vocab).
TokenStore position_store(const std::vector<uint64_t>& lengths, int vocab) {
  TokenStore store;
  for (std::size_t s = 0; s < lengths.size(); ++s) {
    std::vector<int32_t> ids(lengths[s]);
    for (uint64_t i = 0; i < lengths[s]; ++i) ids[i] = static_cast<int32_t>((i * 7 + s) % vocab);
    store.segments.push_back(memory_segment("segment " + std::to_string(s), ids));
  }
  return store;
}

LoaderOptions options(int T, uint64_t seed, WindowOrder order = WindowOrder::random, int rank = 0, int world = 1) {
  LoaderOptions o;
  o.seq_len = T;
  o.seed = seed;
  o.order = order;
  o.rank = rank;
  o.world_size = world;
  return o;
}

TEST(Loader, BatchesAreTheSegmentTokensAtTheDrawnWindows) {
  const TokenStore store = position_store({300, 97, 1000}, 1000);
  const WindowLoader loader(store, 1000, options(16, 5));
  EXPECT_EQ(loader.windows_per_epoch(), 299 / 16 + 96 / 16 + 999 / 16);
  const Batch b = loader.batch_at(10, 8);
  for (int r = 0; r < 8; ++r) {
    const auto w = loader.window(10 + r);
    const TokenSegment& seg = store.segments[w.segment];
    ASSERT_LE(w.start + 16, seg.count - 1);
    for (int t = 0; t < 16; ++t) {
      EXPECT_EQ(b.inputs[r * 16 + t], seg[w.start + t]);
      EXPECT_EQ(b.targets[r * 16 + t], seg[w.start + t + 1]);
    }
  }
}

TEST(Loader, SameSeedSameWindowsOtherSeedOtherWindows) {
  const TokenStore store = position_store({5000, 3000}, 500);
  WindowLoader a(store, 500, options(32, 9)), b(store, 500, options(32, 9)), c(store, 500, options(32, 10));
  int differ = 0;
  for (int i = 0; i < 20; ++i) {
    const Batch ba = a.next_batch(4), bb = b.next_batch(4), bc = c.next_batch(4);
    EXPECT_EQ(ba.inputs, bb.inputs);
    differ += ba.inputs != bc.inputs;
  }
  EXPECT_GT(differ, 15);
}

// The input positions [start, start+T) of draws [from, to), as (segment, position) pairs.
std::vector<std::pair<std::size_t, uint64_t>> input_positions(const WindowLoader& l, uint64_t from, uint64_t to) {
  std::vector<std::pair<std::size_t, uint64_t>> out;
  for (uint64_t d = from; d < to; ++d) {
    const auto w = l.window(d);
    for (int t = 0; t < l.options().seq_len; ++t) out.emplace_back(w.segment, w.start + t);
  }
  return out;
}

TEST(Loader, EveryEpochReadsEveryWindowOnceInANewOrder) {
  const int T = 8;
  const TokenStore store = position_store({100, 9, 57, 240}, 50);
  const WindowLoader l(store, 50, options(T, 3));
  const uint64_t W = l.windows_per_epoch();
  ASSERT_EQ(W, 99u / T + 8u / T + 56u / T + 239u / T);
  std::vector<std::vector<WindowLoader::Window>> epochs(3);
  for (int e = 0; e < 3; ++e) {
    for (uint64_t d = e * W; d < (e + 1) * W; ++d) epochs[e].push_back(l.window(d));
    // No input position twice within the epoch, and the right number of windows per segment.
    const auto pos = input_positions(l, e * W, (e + 1) * W);
    EXPECT_EQ(std::set(pos.begin(), pos.end()).size(), pos.size()) << "epoch " << e;
    std::map<std::size_t, uint64_t> per_segment;
    for (const auto& w : epochs[e]) ++per_segment[w.segment];
    for (std::size_t s = 0; s < store.segments.size(); ++s)
      EXPECT_EQ(per_segment[s], (store.segments[s].count - 1) / T) << "epoch " << e << " segment " << s;
  }
  // Window k of a segment starts at shift + k*T with shift < T, so start / T is k.
  auto order = [&](const std::vector<WindowLoader::Window>& ws) {
    std::vector<std::pair<std::size_t, uint64_t>> v;
    for (const auto& w : ws) v.emplace_back(w.segment, w.start / T);
    return v;
  };
  EXPECT_FALSE(std::is_sorted(order(epochs[0]).begin(), order(epochs[0]).end())) << "random order is shuffled";
  EXPECT_NE(order(epochs[0]), order(epochs[1])) << "each epoch has its own order";
  std::set<uint64_t> shifts;  // the offsets move between epochs (segment 3 has slack (240-1) mod 8 = 7)
  for (const auto& ws : epochs)
    for (const auto& w : ws)
      if (w.segment == 3) shifts.insert(w.start % T);
  EXPECT_GT(shifts.size(), 1u);
}

TEST(Loader, RanksReadDisjointWindowsThatTogetherCoverTheEpoch) {
  const int T = 8;
  const TokenStore store = position_store({400, 130, 77}, 60);
  const WindowLoader single(store, 60, options(T, 11));
  const uint64_t W = single.windows_per_epoch();
  for (const int world : {2, 3}) {
    std::vector<std::pair<std::size_t, uint64_t>> all;
    for (int rank = 0; rank < world; ++rank) {
      const WindowLoader l(store, 60, options(T, 11, WindowOrder::random, rank, world));
      // Rank r's d-th draw is the world's draw d * world + r.
      for (uint64_t d = 0; d < 2 * W; ++d) {
        const auto a = l.window(d), b = single.window(d * world + rank);
        ASSERT_EQ(a.segment, b.segment);
        ASSERT_EQ(a.start, b.start);
      }
      // The draws of all ranks that fall in epoch 0.
      for (uint64_t d = 0; d * world + rank < W; ++d) {
        const auto p = input_positions(l, d, d + 1);
        all.insert(all.end(), p.begin(), p.end());
      }
    }
    const std::set<std::pair<std::size_t, uint64_t>> distinct(all.begin(), all.end());
    EXPECT_EQ(distinct.size(), all.size()) << "two ranks read the same token position, world " << world;
    const auto epoch = input_positions(single, 0, W);
    EXPECT_EQ(distinct, std::set(epoch.begin(), epoch.end())) << "world " << world;
  }
}

TEST(Loader, SequentialOrderWalksTheSegmentsFrontToBack) {
  const TokenStore store = position_store({35, 20}, 50);
  const WindowLoader l(store, 50, options(8, 123, WindowOrder::sequential));
  const std::vector<std::pair<std::size_t, uint64_t>> want = {{0, 0}, {0, 8}, {0, 16}, {0, 24}, {1, 0}, {1, 8}};
  for (uint64_t d = 0; d < 2 * want.size(); ++d) {
    const auto w = l.window(d);
    EXPECT_EQ(std::pair(w.segment, w.start), want[d % want.size()]) << "draw " << d;
  }
  const WindowLoader r1(store, 50, options(8, 123, WindowOrder::sequential, 1, 2));
  EXPECT_EQ(r1.window(0).start, 8u);
  EXPECT_EQ(r1.window(2).segment, 1u);
}

TEST(Loader, RestoredStateContinuesExactlyLikeAnUninterruptedRun) {
  const TokenStore store = position_store({2000, 700}, 300);
  WindowLoader run(store, 300, options(24, 77));
  std::vector<Batch> uninterrupted;
  for (int i = 0; i < 12; ++i) uninterrupted.push_back(run.next_batch(5));

  WindowLoader first(store, 300, options(24, 77));
  for (int i = 0; i < 7; ++i) first.next_batch(5);
  const auto saved = first.state().fields();  // as a checkpoint stores it
  EXPECT_EQ(saved[0].first, "draws");
  EXPECT_EQ(saved[0].second, 35);

  WindowLoader resumed(store, 300, options(24, 77));
  resumed.restore(LoaderState::from_fields(saved));
  for (int i = 7; i < 12; ++i) {
    const Batch b = resumed.next_batch(5);
    EXPECT_EQ(b.inputs, uninterrupted[i].inputs) << "batch " << i;
    EXPECT_EQ(b.targets, uninterrupted[i].targets) << "batch " << i;
  }
  // A state from other settings is refused.
  for (const LoaderOptions& other : {options(25, 77), options(24, 78), options(24, 77, WindowOrder::sequential)}) {
    WindowLoader l(store, 300, other);
    EXPECT_THAT(error_of([&] { l.restore(first.state()); }), HasSubstr("saved for other data or settings"));
  }
  WindowLoader fewer(position_store({2000}, 300), 300, options(24, 77));
  EXPECT_THAT(error_of([&] { fewer.restore(first.state()); }), HasSubstr("saved for other data or settings"));
}

TEST(Loader, BadInputIsRefused) {
  EXPECT_THAT(error_of([] {
                WindowLoader(position_store({100, 16}, 50), 50, options(16, 1));
              }),
              HasSubstr("'segment 1' has 16 tokens, fewer than one window of train.seq_len + 1 = 17"));
  EXPECT_EQ(error_of([] { WindowLoader(position_store({17}, 50), 50, options(16, 1)); }), "");
  EXPECT_THAT(error_of([] { WindowLoader(position_store({100}, 50), 50, options(8, 1, WindowOrder::random, 2, 2)); }),
              HasSubstr("rank 2 is not in 0..1"));
  // Ids beyond the model's vocabulary never reach the model.
  TokenStore store;
  store.segments.push_back(memory_segment("mem", std::vector<int32_t>(40, 7)));
  const WindowLoader l(store, 5, options(8, 1));
  EXPECT_THAT(error_of([&] { l.batch_at(0, 1); }), HasSubstr("training data 'mem': token"));
  EXPECT_THAT(error_of([] { parse_window_order("shuffled"); }), HasSubstr("data.order: 'shuffled'"));
}

// The first n tokens across segment boundaries (greedy:N's selection tokens in eval).
TEST(Loader, HeadTakesTheFirstTokensAcrossSegments) {
  TokenStore store;
  store.segments.push_back(memory_segment("a", {1, 2, 3}));
  store.segments.push_back(memory_segment("b", {4, 5}));
  EXPECT_EQ(store.head(4), (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(store.head(2), (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(store.head(99), (std::vector<int32_t>{1, 2, 3, 4, 5}));
  EXPECT_TRUE(store.head(0).empty());
}

TEST(Loader, PermutationIsABijection) {
  for (const uint64_t n : {1ull, 2ull, 3ull, 5ull, 16ull, 17ull, 1000ull, 4097ull}) {
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < n; ++i) seen.insert(permute_index(i, n, 42));
    EXPECT_EQ(seen.size(), n);
    EXPECT_LT(*seen.rbegin(), n);
  }
}

TEST(Validation, WalksTheSameEvenlySpacedWindowsEveryTime) {
  std::vector<int32_t> tokens(1000);
  for (int i = 0; i < 1000; ++i) tokens[i] = i;
  const int B = 4, T = 10, n = 3;
  std::vector<int32_t> firsts;
  for (int i = 0; i < n; ++i) {
    const Batch a = val_batch(tokens, B, T, i, n), b = val_batch(tokens, B, T, i, n);
    EXPECT_EQ(a.inputs, b.inputs);
    for (int r = 0; r < B; ++r) {
      firsts.push_back(a.inputs[r * T]);
      for (int t = 0; t < T; ++t) EXPECT_EQ(a.targets[r * T + t], a.inputs[r * T + t] + 1);
    }
  }
  // 12 windows from the first token to the last possible start (989), evenly spaced.
  ASSERT_EQ(firsts.size(), 12u);
  for (int w = 0; w < 12; ++w) EXPECT_EQ(firsts[w], 989 * w / 11);
}

// ---------------------------------------------------------------- corpus

TEST_F(DataTest, CorpusFromShardsMatchesTheShardsAndItsEntropy) {
  EncodeOptions o;
  o.tokenizer = tokenizer_dir();
  o.inputs = {(dir_ / "corpus.txt").string()};
  o.out_dir = (dir_ / "shards_corpus").string();
  encode_corpus(o);
  DataConfig dc;
  dc.tokenizer = tokenizer_dir();
  dc.shards = o.out_dir;
  const Corpus c = load_corpus(dc);
  const ShardDirInfo info = read_shard_dir(o.out_dir);
  EXPECT_EQ(c.vocab_size, kVocab);
  EXPECT_EQ(c.tokenizer, load_tokenizer(tokenizer_dir())->identity());
  ASSERT_EQ(c.train.segments.size(), 1u);
  EXPECT_EQ(c.train.size(), info.tokens("train"));
  EXPECT_EQ(c.val, all_tokens(Shard::open(info.split("val")[0].path)));
  // The loader-side entropy equals the trainer's reference on the same tokens.
  const auto train_ids = all_tokens(Shard::open(info.split("train")[0].path));
  EXPECT_NEAR(unigram_entropy(c.train, c.vocab_size), unigram_entropy(train_ids), 1e-9);
  // Evaluation needs only the validation split.
  EXPECT_EQ(load_corpus(dc, CorpusParts::val_only).train.segments.size(), 0u);
  EXPECT_THAT(error_of([&] { check_model_vocab(c, 256); }), HasSubstr("model.vocab_size is 256 but the tokenizer"));
  EXPECT_THAT(error_of([&] { check_model_vocab(c, 256); }), HasSubstr("set model.vocab_size: 400"));
  EXPECT_EQ(error_of([&] { check_model_vocab(c, kVocab); }), "");
  // A pretrained model's embedding may be padded beyond its tokenizer, never smaller.
  EXPECT_EQ(error_of([&] { check_model_vocab(c, kVocab + 64, /*pretrained=*/true); }), "");
  EXPECT_THAT(error_of([&] { check_model_vocab(c, kVocab - 1, /*pretrained=*/true); }), HasSubstr("set model.vocab_size"));
}

TEST_F(DataTest, CorpusErrorsNameTheKeyOrFile) {
  EncodeOptions o;
  o.tokenizer = tokenizer_dir();
  o.inputs = {(dir_ / "corpus.txt").string()};
  o.out_dir = (dir_ / "shards_bad").string();
  encode_corpus(o);
  DataConfig dc;
  dc.tokenizer = tokenizer_dir();
  dc.shards = o.out_dir;
  EXPECT_EQ(error_of([&] { load_corpus(dc); }), "");

  DataConfig both = dc;
  both.train_path = "data/kjv.txt";
  EXPECT_THAT(error_of([&] { load_corpus(both); }), HasSubstr("data.shards ('" + o.out_dir + "') and data.train_path"));
  DataConfig neither;
  EXPECT_THAT(error_of([&] { load_corpus(neither); }), HasSubstr("no training data"));
  DataConfig byte = dc;
  byte.tokenizer = "byte";
  EXPECT_THAT(error_of([&] { load_corpus(byte); }), HasSubstr("were encoded with tokenizer sentencepiece-400-"));
  EXPECT_THAT(error_of([&] { load_corpus(byte); }), HasSubstr("set data.tokenizer: " + o.out_dir + "/tokenizer"));
  DataConfig no_dir = dc;
  no_dir.shards = (dir_ / "nowhere").string();
  EXPECT_THAT(error_of([&] { load_corpus(no_dir); }), HasSubstr("nowhere': no such directory"));
  DataConfig no_manifest = dc;
  no_manifest.shards = (dir_ / "tok").string();
  EXPECT_THAT(error_of([&] { load_corpus(no_manifest); }), HasSubstr("no manifest.yaml"));

  // A corrupted train shard: caught by the checksum when data.verify is on.
  const std::string train = read_shard_dir(o.out_dir).split("train")[0].path;
  std::string bytes = read_file_bytes(train);
  bytes[100] ^= 0x10;
  write_file_bytes(train, bytes);
  EXPECT_THAT(error_of([&] { load_corpus(dc); }), HasSubstr(train + "': checksum mismatch"));
  // A shard replaced by another valid one: the manifest no longer matches.
  write_shard(train, std::vector<int32_t>(500, 5), kVocab, load_tokenizer(tokenizer_dir())->fingerprint());
  EXPECT_THAT(error_of([&] { load_corpus(dc); }), HasSubstr("but manifest.yaml lists"));
  fs::remove(train);
  EXPECT_THAT(error_of([&] { load_corpus(dc); }), HasSubstr("train_00000.bin': no such file"));
}

TEST_F(DataTest, CorpusFromTextSplitsAtALineBreakWithAnyTokenizer) {
  DataConfig dc;
  dc.tokenizer = tokenizer_dir();
  dc.train_path = (dir_ / "corpus.txt").string();
  const Corpus c = load_corpus(dc);
  const std::string text = read_file_bytes(dir_ / "corpus.txt");
  const auto& seg = c.train.segments.at(0);
  std::vector<int32_t> train_ids(seg.count);
  for (uint64_t i = 0; i < seg.count; ++i) train_ids[i] = seg[i];
  const std::string train = c.tok->decode(train_ids), val = c.tok->decode(c.val);
  EXPECT_EQ(train + val, text);
  EXPECT_EQ(val.front(), '\n');
  EXPECT_NEAR(double(val.size()) / text.size(), 0.05, 0.01);

  DataConfig empty = dc;
  write_file_bytes(dir_ / "empty_train.txt", "");
  empty.train_path = (dir_ / "empty_train.txt").string();
  EXPECT_THAT(error_of([&] { load_corpus(empty); }), HasSubstr("data.train_path: '" + empty.train_path + "' is empty"));
  DataConfig bad_tok = dc;
  bad_tok.tokenizer = (dir_ / "no_tokenizer_here").string();
  EXPECT_THAT(error_of([&] { load_corpus(bad_tok); }), HasSubstr("data.tokenizer: tokenizer '"));
}

}  // namespace
}  // namespace kvroute
