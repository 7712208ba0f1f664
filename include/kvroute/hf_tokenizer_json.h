// The Hugging Face fast-tokenizer form of kvroute's own tokenizers: a tokenizer.json that
// transformers' AutoTokenizer and the `tokenizers` library load and that gives the ids
// kvroute gives (tests/fixtures/tokenizers/kv_*, README there), and the tokenizer_config.json
// that makes AutoTokenizer use that file as it is.
//
//   byte         a byte-level BPE without merges whose vocabulary maps each byte's GPT-2
//                character to the byte's value (ids = byte values).
//   unigram/bpe  (a directory written by `kvroute data tokenizer`) SentencePiece's pieces with
//                their scores (Unigram) or its merges (BPE: every split of a piece into two
//                pieces, ordered by the piece's score), byte fallback; the normalizer only
//                escapes spaces as "▁" (no dummy prefix, no added space, no other
//                normalization); no pre-tokenizer; the decoder turns "▁" back into spaces and
//                byte pieces into bytes. <unk>, <s>, </s> are special added tokens; no BOS is
//                added.
//
// Where transformers still differs from kvroute (texts that spell these are rare): "</s>",
//   "<s>" and "<unk>" written in the text become those ids in transformers (special tokens are
//   cut out first) and stay text in kvroute; a literal "▁" is a space to the transformers
//   model and three byte pieces to kvroute; Unigram only: a literal "<0x41>" may match the byte
//   piece in transformers (its lattice holds every vocabulary string, SentencePiece's holds
//   only the normal pieces).
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace kvroute {

struct HfFastTokenizer {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
  std::string kind;  // "byte", "sentencepiece unigram", "sentencepiece bpe"
};

// spec: "byte" or a directory with a kvroute tokenizer.model. Throws std::runtime_error naming
// the file and the setting when the model is not one kvroute trains (a dummy prefix, another
// normalization, no byte fallback, a word or char model).
HfFastTokenizer hf_fast_tokenizer(const std::string& spec, int model_max_length);

// Whether the parsed tokenizer.json is the one hf_fast_tokenizer("byte", ...) writes (any
// formatting): such a folder is loaded as the byte tokenizer, whose fingerprint shards and
// checkpoints of byte-tokenized data record.
bool is_byte_tokenizer_json(const nlohmann::json& tokenizer_json);

// Whether tokenizer.json's normalizer is the one written above for SentencePiece (spaces
// escaped, no dummy prefix): the tokenizer.model beside it is then read as kvroute's own.
bool declares_plain_sentencepiece(const nlohmann::json& tokenizer_json);

}  // namespace kvroute
