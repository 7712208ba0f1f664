// What the tokenizer targets do with a tokenizer that loaded: encode and decode a fixed text
// (ASCII, digits, accents, CJK, an emoji, newlines, special-token spellings, an invalid
// byte), name the pieces, and find the cut points encode_parallel uses.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "kvroute/tokenizer.h"

namespace kvroute_fuzz {

inline void exercise_tokenizer(const kvroute::Tokenizer& tok) {
  static constexpr std::string_view text =
      "Hello world, it's 2024!\n  x\ny\tcaf\xc3\xa9 na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 "
      "<s></s><unk><|endoftext|> 12345678 \xff end\n";
  const std::vector<int32_t> ids = tok.encode(text);
  (void)tok.decode(ids);
  const int vocab = tok.vocab_size();
  for (int32_t id : ids)
    if (id < 0 || id >= vocab) __builtin_trap();  // encode gave an id outside the vocabulary
  for (int32_t id = 0; id < vocab && id < 64; ++id) (void)tok.piece(id);
  (void)tok.identity();
  (void)tok.document_separator();
  for (std::size_t p = 0; p < text.size();) {
    const std::size_t next = tok.next_cut(text, p);
    if (next < p || next > text.size()) __builtin_trap();
    p = next + 1;
  }
}

}  // namespace kvroute_fuzz
