// Shared by the tests: a per-process temporary directory, whole-file reads and writes, random
// normal floats, and a small generated corpus of blank-line-separated documents.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kvroute/rng.h"

namespace kvroute::testing_data {

namespace fs = std::filesystem;

// n floats drawn from a standard normal distribution (mt19937 seeded with seed).
inline std::vector<float> random_floats(std::size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

// One directory per process: ctest runs each test as its own process, in parallel.
inline fs::path fresh_temp_dir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / (name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

inline std::string read_file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_file_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Pseudo-English: words built from syllables with a skewed frequency, so a
// subword model finds real structure. Deterministic for a seed.
inline std::string generated_sentence(uint64_t seed, uint64_t& counter) {
  static const char* syllables[] = {"the", "and", "of",  "in", "ra", "mo",  "ki",  "lu", "sen", "tor", "bel", "an",
                                    "is",  "to",  "ver", "da", "qu", "ent", "ion", "al", "ex",  "pro", "nu",  "zo"};
  constexpr uint64_t n_syl = sizeof syllables / sizeof *syllables;
  std::string s;
  const uint64_t words = 6 + uniform_int(seed, 11, counter++, 10);
  for (uint64_t w = 0; w < words; ++w) {
    const uint64_t parts = 1 + uniform_int(seed, 12, counter++, 3);
    std::string word;
    for (uint64_t p = 0; p < parts; ++p) {
      // Squaring skews the draw toward the first syllables (a Zipf-like shape).
      const double u = uniform01(seed, 13, counter++);
      word += syllables[static_cast<uint64_t>(u * u * n_syl)];
    }
    if (w == 0) word[0] = static_cast<char>(word[0] - 'a' + 'A');
    s += (w ? " " : "") + word;
  }
  s += uniform01(seed, 14, counter++) < 0.2 ? ", " + std::to_string(counter % 97) + "." : ".";
  return s;
}

// `docs` documents of 2-6 lines, separated by one blank line.
inline std::vector<std::string> generated_documents(int docs, uint64_t seed = 7) {
  std::vector<std::string> out;
  uint64_t counter = 0;
  for (int d = 0; d < docs; ++d) {
    std::string doc;
    const uint64_t lines = 2 + uniform_int(seed, 15, counter++, 5);
    for (uint64_t l = 0; l < lines; ++l) doc += generated_sentence(seed, counter) + "\n";
    out.push_back(doc);
  }
  return out;
}

inline std::string join_documents(const std::vector<std::string>& docs) {
  std::string text;
  for (std::size_t i = 0; i < docs.size(); ++i) text += (i ? "\n" : "") + docs[i];
  return text;
}

}  // namespace kvroute::testing_data
