#include "config/did_you_mean.h"

#include <algorithm>

namespace kvroute {
namespace {

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace

std::string nearest(std::string_view word, const std::vector<std::string>& candidates, std::size_t max_dist) {
  std::string best;
  std::size_t best_dist = max_dist + 1;
  for (const std::string& c : candidates) {
    std::size_t d = edit_distance(word, c);
    if (d < best_dist) best = c, best_dist = d;
  }
  return best;
}

std::string did_you_mean(const std::string& hint) {
  return hint.empty() ? "" : " (did you mean '" + hint + "'?)";
}

}  // namespace kvroute
