// Token files of llm.c and modded-nanogpt (FineWeb10B, the GPT-2 speedrun's data, tiny
// Shakespeare), read in place as training and validation data: a header of 256 little-endian
// int32 (magic 20240520, version 1, token count, the rest 0), then the tokens as uint16 GPT-2
// ids, documents separated by <|endoftext|> (50256) in the data itself.
//
// data.shards names a directory of such files (as llm.c's data scripts write them): every *.bin
// file whose name holds "train" is training data, "val" validation, in name order. They are
// memory-mapped, not copied: a 20 GB FineWeb10B folder needs no second copy in kvroute's format.
// data.tokenizer must hold their ids (Hugging Face's gpt2 folder: vocab 50257); its vocabulary
// bounds the ids, checked in one pass over every file when data.verify is true.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvroute/loader.h"

namespace kvroute {

inline constexpr int32_t kLlmcMagic = 20240520;
inline constexpr int32_t kLlmcVersion = 1;
inline constexpr std::size_t kLlmcHeaderBytes = 256 * 4;

// Whether `dir` is a directory without manifest.yaml holding at least one *.bin file that starts
// with the llm.c magic.
bool is_llmc_shard_dir(const std::string& dir);

// The *.bin files of `dir` whose names hold `split` ("train" or "val"), sorted by name.
std::vector<std::string> llmc_shard_files(const std::string& dir, const std::string& split);

// One file as a token segment (memory-mapped). Throws std::runtime_error naming the file: not a
// regular file, a wrong magic or version, a size that is not the header plus 2 bytes per token.
TokenSegment open_llmc_shard(const std::string& path);

// Writes tokens as an llm.c file (for tests and conversions). Ids must be below 65536.
void write_llmc_shard(const std::string& path, const std::vector<int32_t>& tokens);

}  // namespace kvroute
