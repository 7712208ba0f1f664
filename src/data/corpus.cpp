#include <fstream>
#include <sstream>
#include <stdexcept>

#include "kvroute/data.h"
#include "kvroute/rng.h"

namespace kvroute {

namespace {
std::string read_file(const std::string& path, const char* what) {
  if (path.empty()) throw std::runtime_error(std::string(what) + ": no file given");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string(what) + ": cannot open '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.empty()) throw std::runtime_error(std::string(what) + ": '" + path + "' is empty");
  return text;
}
}  // namespace

std::vector<int32_t> byte_encode(const std::string& text) {
  std::vector<int32_t> ids(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string byte_decode(const std::vector<int32_t>& ids) {
  std::string s;
  s.reserve(ids.size());
  for (int32_t id : ids) s.push_back(static_cast<char>(id & 0xff));
  return s;
}

Corpus load_corpus(const DataConfig& dc) {
  if (dc.tokenizer != "byte")
    throw std::runtime_error("data.tokenizer: '" + dc.tokenizer + "' is not supported yet (only 'byte')");
  Corpus c;
  c.tokenizer = "byte";
  c.vocab_size = 256;
  c.train = byte_encode(read_file(dc.train_path, "data.train_path"));
  if (!dc.val_path.empty()) {
    c.val = byte_encode(read_file(dc.val_path, "data.val_path"));
  } else {
    // Split the tail off as validation, at a line break so no line straddles the split.
    std::size_t cut = static_cast<std::size_t>(c.train.size() * (1.0 - dc.val_fraction));
    while (cut < c.train.size() && c.train[cut] != '\n') ++cut;
    c.val.assign(c.train.begin() + static_cast<long>(cut), c.train.end());
    c.train.resize(cut);
  }
  return c;
}

Batch train_batch(const std::vector<int32_t>& tokens, int B, int T, uint64_t seed, uint64_t step, uint64_t micro) {
  if (tokens.size() < static_cast<std::size_t>(T) + 1)
    throw std::runtime_error("training split has " + std::to_string(tokens.size()) +
                             " tokens, fewer than one window of " + std::to_string(T + 1));
  Batch b{B, T, std::vector<int32_t>(static_cast<std::size_t>(B) * T), std::vector<int32_t>(static_cast<std::size_t>(B) * T)};
  const uint64_t n_starts = tokens.size() - T;
  for (int r = 0; r < B; ++r) {
    const uint64_t counter = (step * 1000003ull + micro) * 65537ull + r;
    const std::size_t start = uniform_int(seed, kStreamData, counter, n_starts);
    for (int t = 0; t < T; ++t) {
      b.inputs[static_cast<std::size_t>(r) * T + t] = tokens[start + t];
      b.targets[static_cast<std::size_t>(r) * T + t] = tokens[start + t + 1];
    }
  }
  return b;
}

Batch val_batch(const std::vector<int32_t>& tokens, int B, int T, int i, int n_batches) {
  if (tokens.size() < static_cast<std::size_t>(T) + 1)
    throw std::runtime_error("validation split has " + std::to_string(tokens.size()) +
                             " tokens, fewer than one window of " + std::to_string(T + 1));
  Batch b{B, T, std::vector<int32_t>(static_cast<std::size_t>(B) * T), std::vector<int32_t>(static_cast<std::size_t>(B) * T)};
  const std::size_t n_windows = static_cast<std::size_t>(B) * n_batches;
  const std::size_t span = tokens.size() - T - 1;
  for (int r = 0; r < B; ++r) {
    const std::size_t w = static_cast<std::size_t>(i) * B + r;
    const std::size_t start = n_windows > 1 ? span * w / (n_windows - 1) : 0;
    for (int t = 0; t < T; ++t) {
      b.inputs[static_cast<std::size_t>(r) * T + t] = tokens[start + t];
      b.targets[static_cast<std::size_t>(r) * T + t] = tokens[start + t + 1];
    }
  }
  return b;
}

}  // namespace kvroute
