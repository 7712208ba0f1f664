// Matching added tokens in text (added_tokens.h).
#include "added_tokens.h"

#include <algorithm>
#include <cctype>

namespace kvroute {

namespace {

// ASCII whitespace, and what Python's str.strip() and Rust's trim() also take: the
// Unicode spaces below U+0100 (NEL, no-break space) are not taken here (a documented
// simplification: lstrip/rstrip tokens are rare and sit next to ASCII spaces).
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_word(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || std::isalnum(u) || c == '_';
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  for (int i = 0; i < static_cast<int>(tokens_.size()); ++i)
    if (!tokens_[i].content.empty()) first_[static_cast<unsigned char>(tokens_[i].content[0])].push_back(i);
  for (auto& list : first_)
    std::stable_sort(list.begin(), list.end(),
                     [&](int a, int b) { return tokens_[a].content.size() > tokens_[b].content.size(); });
}

std::vector<TextPiece> AddedTokenMatcher::split(std::string_view text) const {
  std::vector<TextPiece> out;
  if (tokens_.empty()) {
    if (!text.empty()) out.push_back({text, -1});
    return out;
  }
  std::size_t plain = 0;  // start of the plain stretch not yet emitted
  for (std::size_t i = 0; i < text.size();) {
    const AddedToken* hit = nullptr;
    for (int k : first_[static_cast<unsigned char>(text[i])]) {
      const AddedToken& t = tokens_[k];
      if (text.compare(i, t.content.size(), t.content) != 0) continue;
      if (t.single_word && ((i > 0 && is_word(text[i - 1])) ||
                            (i + t.content.size() < text.size() && is_word(text[i + t.content.size()]))))
        continue;
      hit = &t;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    std::size_t start = i, end = i + hit->content.size();
    if (hit->lstrip)
      while (start > plain && is_space(text[start - 1])) --start;
    if (hit->rstrip)
      while (end < text.size() && is_space(text[end])) ++end;
    if (start > plain) out.push_back({text.substr(plain, start - plain), -1});
    out.push_back({text.substr(start, end - start), hit->id});
    plain = i = end;
  }
  if (plain < text.size()) out.push_back({text.substr(plain), -1});
  return out;
}

}  // namespace kvroute
