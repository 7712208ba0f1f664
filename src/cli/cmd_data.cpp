// kvroute data tokenizer | encode | inspect | ids: tokenizer training, text -> token
// shards, and a look inside a shard.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "kvroute/encode.h"
#include "kvroute/input_list.h"
#include "kvroute/shard.h"
#include "kvroute/shard_dir.h"
#include "kvroute/tokenizer.h"

namespace kvroute::cli {

namespace fs = std::filesystem;

namespace {

// --input files, then those --input-list names; neither given is an error naming both options.
void add_listed_inputs(std::vector<std::string>& inputs, const std::string& input_list) {
  if (!input_list.empty()) {
    const std::vector<std::string> listed = read_input_list(input_list);
    inputs.insert(inputs.end(), listed.begin(), listed.end());
  }
  if (inputs.empty()) throw std::runtime_error("no input files: give --input FILE... or --input-list FILE");
}

// --format, --text-key, --skip-bad-records: how input files are read (input_format.h).
void add_input_format_options(CLI::App* cmd, InputFormat& f) {
  cmd->add_option("--format", f.format,
                  "auto (JSON Lines for *.jsonl / *.ndjson, else text), text or jsonl; .gz and .zst are decompressed")
      ->check(CLI::IsMember({"auto", "text", "jsonl"}))
      ->capture_default_str();
  cmd->add_option("--text-key", f.text_key, "JSON Lines: the key of each record's text")->capture_default_str();
  cmd->add_flag("--skip-bad-records", f.skip_bad_records,
                "JSON Lines: skip and count bad records instead of stopping at the first");
}

void add_tokenizer_command(CLI::App& data) {
  auto* cmd =
      data.add_subcommand("tokenizer", "Train a SentencePiece subword tokenizer (BPE or unigram) on text files");
  static TokenizerTrainOptions o;
  static std::string input_list;
  cmd->add_option("--input", o.inputs, "Text files (every line is a training sentence)");
  cmd->add_option("--input-list", input_list, "A file listing text files, one path per line (after --input's)");
  cmd->add_option("--vocab-size", o.vocab_size, "Vocabulary size, including 3 special and 256 byte pieces")
      ->capture_default_str();
  cmd->add_option("--out", o.out_dir, "Tokenizer directory to write (tokenizer.model, .vocab, .yaml)")->required();
  cmd->add_option("--model-type", o.model_type, "unigram or bpe")->capture_default_str();
  cmd->add_option("--max-sentences", o.max_sentences, "Lines sampled from larger inputs")->capture_default_str();
  cmd->add_option("--threads", o.threads, "Threads (default: all cores)");
  cmd->add_flag("--force", o.force, "Replace an existing output directory");
  add_input_format_options(cmd, o.format);
  cmd->callback([] {
    add_listed_inputs(o.inputs, input_list);
    const TokenizerTrainReport r = train_tokenizer(o);
    if (r.bad_records_skipped > 0)
      std::printf("tokenizer: skipped %llu bad JSON Lines record(s)\n", static_cast<unsigned long long>(r.bad_records_skipped));
    std::printf("tokenizer: wrote %s (%s, %d pieces): read %.1fs, fit %.1fs, %llu lines\n", o.out_dir.c_str(),
                r.identity.c_str(), o.vocab_size, r.read_seconds, r.fit_seconds,
                static_cast<unsigned long long>(r.sentences));
  });
}

void add_encode_command(CLI::App& data) {
  auto* cmd = data.add_subcommand("encode", "Tokenize text files into token shards, split into train/val by document");
  static EncodeOptions o;
  static std::string docs = "blank";
  cmd->add_option("--tokenizer", o.tokenizer, "\"byte\" or a tokenizer directory (kvroute data tokenizer)")->required();
  static std::string input_list;
  cmd->add_option("--input", o.inputs, "Text files");
  cmd->add_option("--input-list", input_list, "A file listing text files, one path per line (after --input's)");
  cmd->add_option("--out", o.out_dir, "Shard directory to write")->required();
  cmd->add_option("--docs", docs,
                  "What a document is: blank (blocks separated by blank lines), line (each line), file (each file)")
      ->capture_default_str();
  cmd->add_option("--val-fraction", o.val_fraction, "Share of documents for validation (one in every 1/f), 0..0.5")
      ->capture_default_str();
  cmd->add_option("--shard-tokens", o.shard_tokens, "Tokens per shard (a shard ends after the document that fills it)")
      ->capture_default_str();
  cmd->add_option("--threads", o.threads, "Threads (default: all cores)");
  cmd->add_flag("--force", o.force, "Replace an existing output directory");
  add_input_format_options(cmd, o.format);
  cmd->callback([] {
    add_listed_inputs(o.inputs, input_list);
    o.documents = parse_document_rule(docs);
    const EncodeReport r = encode_corpus(o);
    if (r.bad_records_skipped > 0)
      std::printf("encode: skipped %llu bad JSON Lines record(s)\n", static_cast<unsigned long long>(r.bad_records_skipped));
    const uint64_t tokens = r.tokens[0] + r.tokens[1];
    std::printf(
        "encode: wrote %s: train %llu documents, %llu tokens in %d shard(s); val %llu documents, %llu tokens in "
        "%d shard(s); %.2f bytes per token, %.2f MB/s on %d threads\n",
        o.out_dir.c_str(), static_cast<unsigned long long>(r.documents[0]),
        static_cast<unsigned long long>(r.tokens[0]), r.shards[0], static_cast<unsigned long long>(r.documents[1]),
        static_cast<unsigned long long>(r.tokens[1]), r.shards[1],
        double(r.input_bytes) / std::max<uint64_t>(tokens, 1), r.input_bytes / std::max(r.seconds, 1e-9) / 1e6,
        o.threads > 0 ? o.threads : omp_get_max_threads());
  });
}

// Printable form of decoded text: control characters escaped, on one line.
std::string visible(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n')
      out += "\\n";
    else if (c == '\t')
      out += "\\t";
    else if (c == '\r')
      out += "\\r";
    else if (c < 32 || c == 127) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else
      out += static_cast<char>(c);
  }
  return out;
}

void print_header(const ShardHeader& h) {
  std::printf("format      kvroute token shard, version %u\n", h.version);
  std::printf("vocabulary  %u ids, %u-byte tokens (uint%u)\n", h.vocab_size, h.token_width, h.token_width * 8);
  std::printf("tokens      %llu\n", static_cast<unsigned long long>(h.token_count));
  std::printf("documents   %llu\n", static_cast<unsigned long long>(h.documents));
  std::printf("checksum    %s (FNV-1a 64 of the token bytes)\n", fingerprint_hex(h.checksum).c_str());
  std::printf("tokenizer   fingerprint %s\n", fingerprint_hex(h.tokenizer_fingerprint).c_str());
}

void inspect_dir(const std::string& dir) {
  const ShardDirInfo info = read_shard_dir(dir);
  std::printf("shard directory %s\n", dir.c_str());
  std::printf("tokenizer   %s (vocab %u)%s\n", info.tokenizer_identity.c_str(), info.vocab_size,
              info.tokenizer_spec().empty() ? "" : (", copy in " + info.tokenizer_spec()).c_str());
  std::printf("documents   rule '%s', validation fraction %g\n", info.document_rule.c_str(), info.val_fraction);
  std::printf("tokens      train %llu, val %llu\n", static_cast<unsigned long long>(info.tokens("train")),
              static_cast<unsigned long long>(info.tokens("val")));
  for (const ShardEntry& e : info.shards) {
    const ShardHeader h = read_shard_header(e.path);
    std::printf("  %-24s %-5s %12llu tokens %8llu documents  checksum %s\n", fs::path(e.path).filename().c_str(),
                e.split.c_str(), static_cast<unsigned long long>(h.token_count),
                static_cast<unsigned long long>(h.documents), fingerprint_hex(h.checksum).c_str());
  }
}

void add_inspect_command(CLI::App& data) {
  auto* cmd =
      data.add_subcommand("inspect", "Print a shard's header and decode its first tokens (or list a shard directory)");
  static std::string path, tokenizer;
  static long count = 64;
  cmd->add_option("shard", path, "A shard file, or a shard directory")->required();
  cmd->add_option("--tokenizer", tokenizer,
                  "\"byte\" or a tokenizer directory (default: the copy in the shard's directory)");
  cmd->add_option("--tokens", count, "How many tokens to show")->capture_default_str();
  cmd->callback([] {
    if (fs::is_directory(path)) return inspect_dir(path);
    const Shard shard = Shard::open(path, ShardCheck::header);
    std::printf("shard       %s\n", path.c_str());
    print_header(shard.header());
    shard.verify();  // after printing, so a corrupt shard's header is still shown
    std::printf("verified    checksum matches; every id < %u\n", shard.header().vocab_size);

    std::string spec = tokenizer;
    if (spec.empty()) {
      const fs::path dir = fs::path(path).parent_path();
      if (fs::exists(dir / "tokenizer" / "tokenizer.model") || fs::exists(dir / "tokenizer" / "tokenizer.json"))
        spec = (dir / "tokenizer").string();
      else if (shard.header().tokenizer_fingerprint == make_byte_tokenizer()->fingerprint())
        spec = "byte";
    }
    const uint64_t n = std::min<uint64_t>(static_cast<uint64_t>(std::max(count, 0L)), shard.size());
    std::vector<int32_t> ids(n);
    for (uint64_t i = 0; i < n; ++i) ids[i] = shard[i];
    std::printf("\nfirst %llu tokens:\n", static_cast<unsigned long long>(n));
    if (spec.empty()) {
      for (int32_t id : ids) std::printf("%d ", id);
      std::printf("\n(no tokenizer found next to the shard; pass --tokenizer to decode)\n");
      return;
    }
    const auto tok = load_tokenizer(spec);
    if (tok->fingerprint() != shard.header().tokenizer_fingerprint)
      throw std::runtime_error("tokenizer '" + spec + "' (fingerprint " + fingerprint_hex(tok->fingerprint()) +
                               ") did not write shard '" + path + "' (fingerprint " +
                               fingerprint_hex(shard.header().tokenizer_fingerprint) + ")");
    std::printf("tokenizer   %s (%s)\n", spec.c_str(), tok->identity().c_str());
    for (int32_t id : ids) std::printf("%d:%s ", id, visible(tok->piece(id)).c_str());
    std::printf("\n\ndecoded:\n%s\n", visible(tok->decode(ids)).c_str());
  });
}

// kvroute data ids: the ids a tokenizer gives each text, one JSON object a line, so they can be
// compared with another implementation's (e.g. transformers' on an exported folder).
void add_ids_command(CLI::App& data) {
  auto* cmd = data.add_subcommand("ids", "Print the token ids of texts as JSON lines: {\"text\", \"ids\", \"decoded\"}");
  static std::string tokenizer, jsonl_file;
  static std::vector<std::string> texts;
  cmd->add_option("--tokenizer", tokenizer, "\"byte\" or a tokenizer directory")->required();
  cmd->add_option("--text", texts, "A text to encode (repeatable)");
  cmd->add_option("--jsonl", jsonl_file,
                  "A JSON Lines file of texts: each line a JSON string or an object with a \"text\" string "
                  "(texts holding newlines or NUL)");
  cmd->callback([] {
    std::vector<std::string> all = texts;
    if (!jsonl_file.empty()) {
      std::ifstream in(jsonl_file, std::ios::binary);
      if (!in) throw std::runtime_error("--jsonl: cannot read '" + jsonl_file + "'");
      long line_no = 0;
      for (std::string line; std::getline(in, line);) {
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string where = "--jsonl '" + jsonl_file + "' line " + std::to_string(line_no);
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          throw std::runtime_error(where + ": not JSON (" + e.what() + ")");
        }
        if (j.is_object() && j.contains("text")) j = j["text"];
        if (!j.is_string()) throw std::runtime_error(where + ": neither a string nor an object with a \"text\" string");
        all.push_back(j.get<std::string>());
      }
    }
    if (all.empty()) throw std::runtime_error("no texts: give --text TEXT... or --jsonl FILE");
    const auto tok = load_tokenizer(tokenizer);
    for (const std::string& t : all) {
      const std::vector<int32_t> ids = tok->encode(t);
      const nlohmann::json j = {{"text", t}, {"ids", ids}, {"decoded", tok->decode(ids)}};
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
  });
}

}  // namespace

void add_data_command(CLI::App& app) {
  auto* data =
      app.add_subcommand("data", "Data tools: train a tokenizer, encode text into token shards, inspect shards");
  data->require_subcommand(1);
  add_tokenizer_command(*data);
  add_encode_command(*data);
  add_inspect_command(*data);
  add_ids_command(*data);
  add_data_probe_command(*data);
}

}  // namespace kvroute::cli
