// Tokenizers: text <-> token ids.
//
// Three kinds, chosen by data.tokenizer (load_tokenizer):
//   "byte"      one token per byte, vocabulary 256, no special ids.
//   a directory with tokenizer.json whose model.type is BPE and whose pre-tokenizer is
//               ByteLevel (alone, or a Sequence of Split / Digits ending with ByteLevel):
//               a Hugging Face byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2 style), read
//               with nlohmann-json, its Split regex run by PCRE2 (UTF + UCP). identity()
//               "hf-bpe-<vocab>-<fingerprint>", fingerprint FNV-1a of tokenizer.json,
//               vocab_size() the largest id + 1 (added tokens included), bos/eos ids from
//               tokenizer_config.json (else special_tokens_map.json).
//   a directory with tokenizer.model (and no such tokenizer.json): a SentencePiece model,
//               via Debian's libsentencepiece, in one of two modes:
//     kvroute   trained by `kvroute data tokenizer` (identity normalization, no dummy
//               prefix, byte_fallback). The directory holds
//                 tokenizer.model  SentencePiece's model file (the source of truth)
//                 tokenizer.vocab  id <TAB> piece <TAB> score, one line per id (for people)
//                 tokenizer.yaml   how it was trained (inputs, options, seconds)
//               Ids 0, 1, 2 are <unk>, <s>, </s>; ids 3..258 are the 256 byte pieces
//               <0x00>..<0xFF> (byte_fallback), the rest are learned pieces.
//     hf        as Hugging Face ships Llama 2 / TinyLlama / Mistral (dummy prefix, nmt_nfkc
//               or identity normalization): chosen when the model does not reproduce text
//               exactly, or when the directory has tokenizer_config.json or
//               special_tokens_map.json. encode() equals transformers' slow LlamaTokenizer
//               (legacy=True) encode(text, add_special_tokens=False): the added tokens of
//               tokenizer_config.json (else the control and unknown pieces: <s>, </s>,
//               <unk>) are cut out of the text first, and every stretch between them is
//               encoded by SentencePiece with the model's own normalization and dummy
//               prefix. decode() is SentencePiece's (the leading dummy space dropped).
//               tokenizer_config.json's "legacy": false (Llama 2's own files say so) is
//               read as legacy too; transformers' non-legacy mode differs only in the text
//               right after a special token spelled in the text (no dummy prefix there).
//
// What round-trips:
//   byte, kvroute SentencePiece, HF byte-level BPE: decode(encode(s)) == s for every byte
//     string. Byte-level BPE maps bytes, so this is exact; a byte that is not part of a
//     valid UTF-8 character (which HF, taking Python str, never sees) is a piece of its own
//     and the pre-tokenizer regex runs on the valid stretches between such bytes. For
//     kvroute SentencePiece it holds because encode() itself sends the bytes SentencePiece
//     would alter (invalid UTF-8, the U+2581 "▁" meta symbol, NUL) as byte pieces. In
//     byte-level BPE, added (special) tokens spelled in the text become their ids and
//     decode to their text; with the NFC normalizer (Qwen2) decode(encode(s)) == NFC(s).
//   hf SentencePiece: normalization is lossy. decode(encode(s)) == normalize(s): NFKC (under
//     nmt_nfkc), extra whitespace removed (remove_extra_whitespaces), "▁" read as a space,
//     invalid UTF-8 replaced, special tokens in the text decoded to "" (<unk> to " ⁇ ").
//
// encode_parallel() and `kvroute data encode` cut text where the tokenizer allows
// (next_cut), so ids never depend on the cuts or the thread count: after any newline
// for byte and kvroute SentencePiece (encode() of a text equals the concatenation of
// encode() of its lines); after "x\n" before "y" (ASCII letters) for byte-level BPE (no
// pre-tokenizer pattern in use, GPT-2's, Llama 3's, Qwen2's or Digits, matches from a letter
// across a newline into a letter or looks behind; a file whose added tokens hold a newline
// or strip whitespace, or whose ByteLevel adds a prefix space, is never cut); never for hf
// SentencePiece, whose dummy prefix makes every cut visible.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvroute/input_format.h"

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
  // A readable form of one id for listings: "▁the", "<0x0A>", "</s>", "Ġthe".
  virtual std::string piece(int32_t id) const = 0;
  // The beginning- and end-of-text ids (<s>, </s>; <|begin_of_text|>, <|end_of_text|>),
  // -1 when the tokenizer has none.
  virtual int32_t bos_id() const { return -1; }
  virtual int32_t eos_id() const { return -1; }
  // The first position p >= from at which text may be cut so that encode(text[0, p)) +
  // encode(text[p, end)) == encode(text); text.size() when there is none. The default:
  // after the next newline.
  virtual std::size_t next_cut(std::string_view text, std::size_t from) const;
};

std::unique_ptr<Tokenizer> make_byte_tokenizer();
// Loads DIR/tokenizer.model. Throws std::runtime_error naming the directory and the
// problem (missing, not a directory, no tokenizer.model, not a SentencePiece model).
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& dir);
// Loads DIR/tokenizer.json (a byte-level BPE, see above). Throws std::runtime_error naming
// the file and the key (a missing key, model.type not BPE, a merges entry naming a token
// not in model.vocab, a regex PCRE2 cannot compile, an unsupported normalizer).
std::unique_ptr<Tokenizer> load_hf_bpe_tokenizer(const std::string& dir);
// "byte" or a tokenizer directory (the value of data.tokenizer): a directory written by
// `kvroute data tokenizer`, or a Hugging Face model folder (tokenizer.json,
// tokenizer_config.json, special_tokens_map.json, tokenizer.model in any combination).
// tokenizer.json with a byte-level BPE wins; otherwise tokenizer.model; a tokenizer.json
// of another kind (WordPiece, Unigram, Metaspace BPE) without tokenizer.model is refused
// naming the file and key.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

// The tokenizer files present in DIR, by name, in a fixed order: tokenizer.json,
// tokenizer.model, tokenizer_config.json, special_tokens_map.json, added_tokens.json,
// vocab.json, merges.txt, tokenizer.vocab, tokenizer.yaml. These are what a copy of a
// tokenizer directory must take along (an empty list for a missing directory). One of these
// names that is not a regular file (a FIFO, a device) is an error naming it.
std::vector<std::string> hf_tokenizer_files(const std::string& dir);

// encode(text), computed over line-aligned chunks of about 1 MiB in parallel
// (OpenMP; threads 0 = all cores). Equal to encode(text) for any thread count.
std::vector<int32_t> encode_parallel(const Tokenizer& tok, std::string_view text, int threads = 0);

// The 16-hex-digit spelling of a fingerprint, as printed and stored in checkpoints.
std::string fingerprint_hex(uint64_t fingerprint);

// ---------------------------------------------------------------- training

struct TokenizerTrainOptions {
  std::vector<std::string> inputs;     // text or JSON Lines files (.gz / .zst too); every line is a training sentence
  InputFormat format;                  // how the inputs are read (input_format.h)
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
  uint64_t bad_records_skipped = 0;  // JSON Lines records passed over (InputFormat::skip_bad_records)
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
