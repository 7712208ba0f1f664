// A synthetic retrieval probe: key-value recall from a list given in the prompt.
//
// Validation loss averages over every token, most of which a model can predict from
// local context; a cache-sharing strategy that breaks attention to far-back tokens can
// hide behind that average. The probe asks for one thing only - copy the value that
// followed a key earlier in the prompt - and scores exact match of greedy decoding:
//
//   prompt: "recall: lamb is oak , fire is cup , sun is bread . fire is"
//   answer: "cup"            (the model must produce " cup")
//
// Keys and values are words that the tokenizer spells as one piece after a space
// ("▁cup"), so the answer is usually one token; the byte tokenizer (no such pieces)
// gets seeded random 3-letter words instead. Keys within a prompt are distinct, and so
// are values. The query key is drawn uniformly from the list. Chance level is about
// 1 / pairs for a model that has learned the format but cannot retrieve.
//
// Every separator is surrounded by spaces, and SentencePiece (as trained by
// `kvroute data tokenizer`) never joins pieces across a space, so a prompt tokenizes the
// same on its own as inside a training document that continues with " " + answer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvroute/model.h"
#include "kvroute/strategy.h"
#include "kvroute/tokenizer.h"

namespace kvroute {

struct ProbeItem {
  std::string prompt;  // ends with the query key; no trailing space
  std::string answer;  // the value, without the leading space
};

struct ProbeSpec {
  int n = 200;        // items
  int pairs = 6;      // key-value pairs listed per prompt (>= 1)
  int words = 0;      // draw keys and values from the first `words` of probe_words (0 = all); fewer
                      // words make the format learnable by a small model in fewer steps
  uint64_t seed = 1;  // the item drawn is a pure function of (seed, item index)
};

// The words probes are built from: for a SentencePiece tokenizer, every piece "▁w" with w
// 3-8 lowercase ASCII letters that encodes back from " w" to exactly that piece, in id
// order; for a tokenizer with fewer than 64 such words, 400 seeded 3-letter words.
std::vector<std::string> probe_words(const Tokenizer& tok);

// n items (see above). Throws std::invalid_argument naming the option for n < 1, pairs < 1,
// or pairs larger than half the word list.
std::vector<ProbeItem> generate_probe(const Tokenizer& tok, const ProbeSpec& spec);

// An item as one training document: prompt + " " + answer.
std::string probe_document(const ProbeItem& item);

// Probe file: lines starting with '#' are comments (the generator records its settings),
// then one item per line: prompt <TAB> answer. Writes atomically (temporary file, then
// rename). Reading throws std::runtime_error naming the file and line for a missing or
// unreadable file, a line without exactly one tab, an empty prompt or answer, or no items.
void write_probe_file(const std::string& path, const std::vector<ProbeItem>& items, const std::string& comment);
// Training text: probe_document of every item, one per line, blank-line separated (written atomically).
void write_probe_documents(const std::string& path, const std::vector<ProbeItem>& items);
std::vector<ProbeItem> read_probe_file(const std::string& path);

// The exact-match rule: the decoded generation equals " " + answer.
bool probe_answer_matches(const std::string& generated_text, const std::string& answer);

// The greedy generations score_probe judges: for item i, the decoded text of as many tokens
// as " " + answer_i has, generated through the inference engine under `strategy`.
std::vector<std::string> probe_generations(Model& model, const SharingStrategy& strategy, const Tokenizer& tok,
                                           const std::vector<ProbeItem>& items, int batch_size = 16);

struct ProbeScore {
  int items = 0;
  int correct = 0;
  double exact_match() const { return items > 0 ? static_cast<double>(correct) / items : 0.0; }
};

// Counts the exact matches among probe_generations (batch_size prompts decoded together).
// Both throw std::invalid_argument when a prompt plus its answer does not fit the model's
// context (naming the item and the lengths).
ProbeScore score_probe(Model& model, const SharingStrategy& strategy, const Tokenizer& tok,
                       const std::vector<ProbeItem>& items, int batch_size = 16);

}  // namespace kvroute
