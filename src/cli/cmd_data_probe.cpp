// kvroute data probe: write the key-value recall probe (probe.h), for eval --probe or,
// as plain text documents, for training.
#include <cstdio>
#include <sstream>

#include "commands.h"
#include "kvroute/probe.h"
#include "kvroute/tokenizer.h"

namespace kvroute::cli {

void add_data_probe_command(CLI::App& data) {
  auto* cmd = data.add_subcommand(
      "probe", "Write a synthetic key-value recall probe (for kvroute eval --probe), or training text in its format");
  static std::string tokenizer, out, format = "probe";
  static ProbeSpec spec;
  cmd->add_option("--tokenizer", tokenizer, "\"byte\" or a tokenizer directory (keys and values are its words)")
      ->required();
  cmd->add_option("--out", out, "File to write")->required();
  cmd->add_option("--n", spec.n, "Items")->capture_default_str();
  cmd->add_option("--pairs", spec.pairs, "Key-value pairs listed per prompt")->capture_default_str();
  cmd->add_option("--words", spec.words, "Draw keys and values from the tokenizer's first N probe words (0 = all)")
      ->capture_default_str();
  cmd->add_option("--seed", spec.seed, "Seed (use different seeds for training text and the probe)")
      ->capture_default_str();
  cmd->add_option("--format", format,
                  "probe: '# settings' lines, then prompt<TAB>answer per line; text: one document per line "
                  "(prompt answer), blank-line separated, for kvroute data encode or data.train_path")
      ->capture_default_str();
  cmd->callback([] {
    if (format != "probe" && format != "text")
      throw std::invalid_argument("--format must be probe or text (got '" + format + "')");
    const auto tok = load_tokenizer(tokenizer);
    const std::vector<ProbeItem> items = generate_probe(*tok, spec);
    std::ostringstream settings;
    settings << "kvroute data probe --tokenizer " << tokenizer << " --n " << spec.n << " --pairs " << spec.pairs
             << " --words " << spec.words << " --seed " << spec.seed << "\ntokenizer " << tok->identity() << ", " << probe_words(*tok).size()
             << " words\nexact match: greedy decoding must produce ' ' + answer";
    if (format == "probe") {
      write_probe_file(out, items, settings.str());
    } else {
      write_probe_documents(out, items);
    }
    std::size_t prompt_tokens = 0;
    for (const ProbeItem& it : items) prompt_tokens = std::max(prompt_tokens, tok->encode(it.prompt).size());
    std::printf("probe: wrote %s (%d items, %d pairs each, format %s; longest prompt %zu tokens)\n", out.c_str(),
                spec.n, spec.pairs, format.c_str(), prompt_tokens);
  });
}

}  // namespace kvroute::cli
