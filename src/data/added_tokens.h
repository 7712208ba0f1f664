// Hugging Face "added tokens" (special tokens such as <|end_of_text|>, </s>, and tokens
// added after training such as <think>): found in the text before any other step and
// given their own id, as `tokenizers` and `transformers` do.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvroute {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;       // takes the whitespace on its left along
  bool rstrip = false;       // takes the whitespace on its right along
  bool single_word = false;  // only matches with no word character next to it
  bool normalized = false;   // matched in the normalized text (after the normalizer)
};

// A stretch of text: plain text to tokenize (id -1), or one added token's match.
struct TextPiece {
  std::string_view text;
  int32_t id = -1;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);
  bool empty() const { return tokens_.empty(); }
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  // Cuts text at the matches: leftmost first, the longest of those starting at the same
  // byte, never overlapping. Whitespace taken by lstrip/rstrip belongs to the match; the
  // plain stretches left empty are dropped.
  std::vector<TextPiece> split(std::string_view text) const;

 private:
  std::vector<AddedToken> tokens_;
  std::vector<int> first_[256];                     // token indices by first byte, longest first
};

}  // namespace kvroute
