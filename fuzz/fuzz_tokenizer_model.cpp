// Fuzz target: a SentencePiece tokenizer.model (protobuf), loaded from a folder as
// data.tokenizer loads it (kvroute's own or Hugging Face's mode, as the model decides),
// then used to encode and decode a fixed text.
#include <exception>

#include "fuzz_common.h"
#include "kvroute/tokenizer.h"
#include "tokenize_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto dir = kvroute_fuzz::scratch_subdir("tokenizer_model");
  kvroute_fuzz::write_file(dir / "tokenizer.model", kvroute_fuzz::as_text(data, size));
  try {
    const auto tok = kvroute::load_tokenizer(dir.string());
    kvroute_fuzz::exercise_tokenizer(*tok);
  } catch (const std::exception&) {
  }
  return 0;
}
