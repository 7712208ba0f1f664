// The key-value recall probe: word list, generation and the probe file (probe.h).
#include "kvroute/probe.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "checkpoint/durable_file.h"
#include "kvroute/rng.h"

namespace kvroute {

namespace {

// Stream ids for the probe's draws (outside the trainer's RngStream values).
constexpr uint64_t kStreamProbe = 0x70726f6265ull;       // "probe"
constexpr uint64_t kStreamProbeWords = 0x776f726473ull;  // "words"

bool lowercase_word(const std::string& w) {
  if (w.size() < 3 || w.size() > 8) return false;
  return std::all_of(w.begin(), w.end(), [](char c) { return c >= 'a' && c <= 'z'; });
}

}  // namespace

std::vector<std::string> probe_words(const Tokenizer& tok) {
  static const std::string kMeta = "\xE2\x96\x81";  // U+2581, SentencePiece's space
  std::vector<std::string> words;
  for (int id = 0; id < tok.vocab_size(); ++id) {
    const std::string piece = tok.piece(id);
    if (piece.rfind(kMeta, 0) != 0) continue;
    const std::string w = piece.substr(kMeta.size());
    if (!lowercase_word(w)) continue;
    if (tok.encode(" " + w) == std::vector<int32_t>{id}) words.push_back(w);
  }
  if (words.size() >= 64) return words;
  // No usable word pieces (e.g. the byte tokenizer): seeded, distinct 3-letter words.
  words.clear();
  for (uint64_t c = 0; words.size() < 400; ++c) {
    std::string w(3, 'a');
    for (int i = 0; i < 3; ++i) w[i] = static_cast<char>('a' + uniform_int(7, kStreamProbeWords, 3 * c + i, 26));
    if (std::find(words.begin(), words.end(), w) == words.end()) words.push_back(w);
  }
  return words;
}

std::vector<ProbeItem> generate_probe(const Tokenizer& tok, const ProbeSpec& spec) {
  if (spec.n < 1) throw std::invalid_argument("probe: --n must be >= 1 (got " + std::to_string(spec.n) + ")");
  if (spec.pairs < 1) throw std::invalid_argument("probe: --pairs must be >= 1 (got " + std::to_string(spec.pairs) + ")");
  std::vector<std::string> words = probe_words(tok);
  if (spec.words < 0) throw std::invalid_argument("probe: --words must be >= 0 (got " + std::to_string(spec.words) + ")");
  if (spec.words > 0 && static_cast<std::size_t>(spec.words) < words.size()) words.resize(spec.words);
  if (2 * static_cast<std::size_t>(spec.pairs) > words.size())
    throw std::invalid_argument("probe: --pairs " + std::to_string(spec.pairs) + " needs " +
                                std::to_string(2 * spec.pairs) + " distinct words; the tokenizer offers " +
                                std::to_string(words.size()));
  const uint64_t W = words.size();
  std::vector<ProbeItem> items;
  items.reserve(spec.n);
  for (int i = 0; i < spec.n; ++i) {
    // Draw 2*pairs distinct word indices (rejection; the pool is much larger than the list).
    std::vector<uint64_t> picked;
    uint64_t counter = static_cast<uint64_t>(i) << 20;
    while (picked.size() < 2 * static_cast<std::size_t>(spec.pairs)) {
      const uint64_t w = uniform_int(spec.seed, kStreamProbe, counter++, W);
      if (std::find(picked.begin(), picked.end(), w) == picked.end()) picked.push_back(w);
    }
    const int query = static_cast<int>(uniform_int(spec.seed, kStreamProbe, counter++, spec.pairs));
    std::string prompt = "recall:";
    for (int k = 0; k < spec.pairs; ++k)
      prompt += (k ? " , " : " ") + words[picked[2 * k]] + " is " + words[picked[2 * k + 1]];
    prompt += " . " + words[picked[2 * query]] + " is";
    items.push_back({prompt, words[picked[2 * query + 1]]});
  }
  return items;
}

std::string probe_document(const ProbeItem& item) { return item.prompt + " " + item.answer; }

void write_probe_file(const std::string& path, const std::vector<ProbeItem>& items, const std::string& comment) {
  std::ostringstream os;
  std::istringstream lines(comment);
  for (std::string line; std::getline(lines, line);) os << "# " << line << "\n";
  for (const ProbeItem& it : items) {
    if (it.prompt.find_first_of("\t\n") != std::string::npos || it.answer.find_first_of("\t\n") != std::string::npos)
      throw std::invalid_argument("probe item contains a tab or newline: " + it.prompt);
    os << it.prompt << '\t' << it.answer << '\n';
  }
  write_file_atomically(path, os.str());
}

void write_probe_documents(const std::string& path, const std::vector<ProbeItem>& items) {
  std::string text;
  for (const ProbeItem& it : items) text += probe_document(it) + "\n\n";
  write_file_atomically(path, text);
}

std::vector<ProbeItem> read_probe_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("probe file '" + path + "': cannot open (missing or unreadable)");
  std::vector<ProbeItem> items;
  std::string line;
  for (long no = 1; std::getline(in, line); ++no) {
    if (line.empty() || line[0] == '#') continue;
    const auto where = "probe file '" + path + "' line " + std::to_string(no) + ": ";
    const auto tab = line.find('\t');
    if (tab == std::string::npos || line.find('\t', tab + 1) != std::string::npos)
      throw std::runtime_error(where + "expected prompt<TAB>answer (exactly one tab)");
    ProbeItem it{line.substr(0, tab), line.substr(tab + 1)};
    if (it.prompt.empty() || it.answer.empty()) throw std::runtime_error(where + "empty prompt or answer");
    items.push_back(std::move(it));
  }
  if (in.bad()) throw std::runtime_error("probe file '" + path + "': read error");
  if (items.empty()) throw std::runtime_error("probe file '" + path + "': no items");
  return items;
}

}  // namespace kvroute
