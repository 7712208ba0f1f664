// Text <-> token ids for prompts and generated text. The one place to swap in a
// subword tokenizer: everything else in inference works on token ids.
#include <stdexcept>

#include "kvroute/data.h"
#include "kvroute/inference.h"

namespace kvroute {

std::vector<int32_t> encode_text(const DataConfig& dc, const std::string& text) {
  if (dc.tokenizer != "byte")
    throw std::invalid_argument("data.tokenizer '" + dc.tokenizer + "': generation supports only 'byte' so far");
  return byte_encode(text);
}

std::string decode_tokens(const DataConfig& dc, const std::vector<int32_t>& ids) {
  if (dc.tokenizer != "byte")
    throw std::invalid_argument("data.tokenizer '" + dc.tokenizer + "': generation supports only 'byte' so far");
  return byte_decode(ids);
}

}  // namespace kvroute
