// Tokenizers: text <-> token ids.
//
// Two kinds, chosen by data.tokenizer:
//   "byte"      one token per byte, vocabulary 256, no special ids.
//   a directory a SentencePiece subword model trained by `kvroute data tokenizer`
//               (BPE or unigram, via Debian's libsentencepiece). The directory holds
//                 tokenizer.model  SentencePiece's model file (the source of truth)
//                 tokenizer.vocab  id <TAB> piece <TAB> score, one line per id (for people)
//                 tokenizer.yaml   how it was trained (inputs, options, seconds)
//               Ids 0, 1, 2 are <unk>, <s>, </s>; ids 3..258 are the 256 byte pieces
//               <0x00>..<0xFF> (byte_fallback), the rest are learned pieces.
//
// Both round-trip every byte string: decode(encode(s)) == s. For SentencePiece this
// holds because the model is trained with identity normalization, no dummy prefix
// and byte_fallback, and because encode() itself sends the bytes SentencePiece would
// alter (invalid UTF-8, the U+2581 "▁" meta symbol, NUL) as byte pieces.
// encode() of a text equals the concatenation of encode() of its lines, so text may be
// split at line ends and encoded in parallel.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kvroute {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Ids outside [0, vocab_size()) throw; control ids (<s>, </s>, <unk>) decode to "".
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual int vocab_size() const = 0;
  // "byte", or "sentencepiece-<vocab>-<fingerprint hex>": names the exact model.
  virtual std::string identity() const = 0;
  // 64-bit content hash of the model (FNV-1a of tokenizer.model; of "byte" for bytes).
  // Recorded in every shard header, so shards and tokenizer can be matched.
  virtual uint64_t fingerprint() const = 0;
  // Tokens placed between documents in token shards: </s> for SentencePiece, a newline
  // byte for the byte tokenizer (which has no special ids).
  virtual std::vector<int32_t> document_separator() const = 0;
  // A readable form of one id for listings: "▁the", "<0x0A>", "</s>".
  virtual std::string piece(int32_t id) const = 0;
};

std::unique_ptr<Tokenizer> make_byte_tokenizer();
// Loads DIR/tokenizer.model. Throws std::runtime_error naming the directory and the
// problem (missing, not a directory, no tokenizer.model, not a SentencePiece model).
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& dir);
// "byte" or a tokenizer directory (the value of data.tokenizer).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

// encode(text), computed over line-aligned chunks of about 1 MiB in parallel
// (OpenMP; threads 0 = all cores). Equal to encode(text) for any thread count.
std::vector<int32_t> encode_parallel(const Tokenizer& tok, std::string_view text, int threads = 0);

// The 16-hex-digit spelling of a fingerprint, as printed and stored in checkpoints.
std::string fingerprint_hex(uint64_t fingerprint);

// ---------------------------------------------------------------- training

struct TokenizerTrainOptions {
  std::vector<std::string> inputs;     // text files; every line is a training sentence
  std::string out_dir;                 // written atomically; must not exist unless force
  int vocab_size = 4096;               // including the 3 special and 256 byte pieces
  std::string model_type = "unigram";  // unigram | bpe
  int threads = 0;                     // 0 = all cores
  long max_sentences = 5000000;        // lines sampled (uniformly) from larger inputs
  bool force = false;                  // replace an existing out_dir
};

struct TokenizerTrainReport {
  std::string identity;
  uint64_t input_bytes = 0;
  uint64_t sentences = 0;
  double read_seconds = 0;  // reading the inputs
  double fit_seconds = 0;   // SentencePiece's training
};

// Trains a SentencePiece model on the inputs and writes out_dir (see above).
// Progress (bytes read, MB/s, ETA, then the fitting time) goes to stdout: a bar on a
// terminal, a plain line every few seconds otherwise. Throws std::runtime_error naming
// the file or option on bad input (missing or empty file, vocabulary too small or too
// large for the corpus, out_dir exists).
TokenizerTrainReport train_tokenizer(const TokenizerTrainOptions& options);

}  // namespace kvroute
