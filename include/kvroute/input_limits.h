// The limits kvroute applies to files that come from elsewhere (Hugging Face folders, tokenizers,
// safetensors, shards, checkpoints), stated once. Each is far above what real files need and far
// below what would exhaust a machine, so a damaged or hostile file is refused with a message
// naming the file, the key and the limit instead of crashing, hanging or allocating gigabytes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvroute::limits {

// JSON nesting depth: serde_json's recursion limit, which the tokenizers and safetensors
// readers of Hugging Face apply (real files nest fewer than 10 levels).
inline constexpr int kJsonDepth = 128;
// A JSON file (config.json, tokenizer.json, tokenizer_config.json, an index): the largest
// real tokenizer.json files are about 35 MB.
inline constexpr uint64_t kJsonFileBytes = 512ull << 20;
// A YAML experiment config (real ones: a few KB).
inline constexpr uint64_t kConfigFileBytes = 64ull << 20;
// A SentencePiece tokenizer.model (real ones: under 5 MB).
inline constexpr uint64_t kSentencePieceModelBytes = 256ull << 20;
// A safetensors header: the format's own limit (safetensors' MAX_HEADER_SIZE).
inline constexpr uint64_t kSafetensorsHeaderBytes = 100'000'000;
// Tensors in one safetensors file (a 405B-parameter model has about 1,300 in all).
inline constexpr uint64_t kSafetensorsTensors = 1'000'000;
// Model shapes read from a config.json: vocabulary (real ones: up to ~262K), layers (up to
// ~130), widths (hidden and intermediate sizes, up to ~55K), heads and head_dim, context.
inline constexpr long kVocab = 1l << 22;
inline constexpr long kLayers = 1024;
inline constexpr long kWidth = 1l << 18;
inline constexpr long kHeads = 4096;
inline constexpr long kContext = 1l << 24;
// One line of text to encode: a tokenizer holds a whole line (SentencePiece's lattice takes
// about 200 bytes per byte of it), so a 10 MB line would take gigabytes.
inline constexpr std::size_t kTextLineBytes = 4u << 20;
// One JSON Lines record (a document with its metadata), held whole while it is read.
inline constexpr std::size_t kJsonlRecordBytes = 256u << 20;
// Seconds a tokenizer.json pre-tokenizer regex may spend on one piece of text (at most a line,
// a few MB): real regexes take well under one; one whose work grows with the square of the text
// would otherwise run for hours with no sign of life.
inline constexpr int kPreTokenizeSeconds = 60;
// Steps of a tokenizer.json pre-tokenizer Sequence (real files use at most 3).
inline constexpr int kPreTokenizerSteps = 64;

}  // namespace kvroute::limits
