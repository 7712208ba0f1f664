// Fuzz target: a retrieval-probe file (# comments, then prompt<TAB>answer lines), read as
// `kvroute eval --probe` reads it; each item is then tokenized and scored as the probe does.
#include <exception>

#include "fuzz_common.h"
#include "kvroute/probe.h"
#include "kvroute/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto byte_tok = kvroute::make_byte_tokenizer();
  const auto path = kvroute_fuzz::scratch_dir() / "probe.tsv";
  kvroute_fuzz::write_file(path, kvroute_fuzz::as_text(data, size));
  try {
    for (const auto& item : kvroute::read_probe_file(path.string())) {
      if (item.prompt.empty() || item.answer.empty()) __builtin_trap();  // the reader refuses these
      (void)byte_tok->encode(kvroute::probe_document(item));
      (void)kvroute::probe_answer_matches(" " + item.answer, item.answer);
    }
  } catch (const std::exception&) {
  }
  return 0;
}
