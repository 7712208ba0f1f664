// "Did you mean" hints for a mistyped name (config keys and choices, sharing
// strategies, routing schemes): one implementation for every error message.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace kvroute {

// The candidate closest to word in edit distance, if within max_dist; else "".
std::string nearest(std::string_view word, const std::vector<std::string>& candidates, std::size_t max_dist);
// " (did you mean 'hint'?)", or "" when hint is empty.
std::string did_you_mean(const std::string& hint);

}  // namespace kvroute
