// `kvroute data encode`: text files -> a directory of token shards (encode.h).
#include "kvroute/encode.h"

#include <omp.h>
#include <unistd.h>

#include <exception>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include "document_reader.h"
#include "input_files.h"
#include "progress.h"
#include "kvroute/shard.h"
#include "kvroute/shard_dir.h"
#include "kvroute/tokenizer.h"

namespace kvroute {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t kPieceBytes = 1 << 20;

// Encodes texts[i] into out[i] on `threads` threads; rethrows the first failure.
template <class Texts>
void encode_all(const Tokenizer& tok, const Texts& texts, std::vector<std::vector<int32_t>>& out, int threads) {
  out.assign(texts.size(), {});
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (long i = 0; i < static_cast<long>(texts.size()); ++i) {
    try {
      out[i] = tok.encode(std::string_view(texts[i]));
    } catch (...) {
#pragma omp critical(kvroute_encode_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

std::string format_fraction(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

int resolve_threads(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

// One split's output: the open shard and the finished ones.
struct SplitOutput {
  std::string name;  // "train" | "val"
  std::unique_ptr<ShardWriter> writer;
  std::vector<ShardEntry> done;
  uint64_t documents = 0, tokens = 0;
};

}  // namespace

std::vector<int32_t> encode_parallel(const Tokenizer& tok, std::string_view text, int threads) {
  std::vector<std::string_view> chunks;
  for (std::size_t i = 0; i < text.size();) {
    std::size_t end = std::min(text.size(), i + kPieceBytes);
    if (end < text.size()) end = std::max(end, tok.next_cut(text, end));  // where encoding the parts changes nothing
    chunks.push_back(text.substr(i, end - i));
    i = end;
  }
  std::vector<std::vector<int32_t>> parts;
  encode_all(tok, chunks, parts, resolve_threads(threads));
  std::vector<int32_t> out;
  std::size_t n = 0;
  for (const auto& p : parts) n += p.size();
  out.reserve(n);
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

EncodeReport encode_corpus(const EncodeOptions& o) {
  if (!(o.val_fraction >= 0 && o.val_fraction <= 0.5))
    throw std::runtime_error("--val-fraction: " + format_fraction(o.val_fraction) + " is not in [0, 0.5]");
  if (o.shard_tokens < 1) throw std::runtime_error("--shard-tokens must be at least 1");
  const uint64_t total_bytes = check_input_files(o.inputs, "input");
  std::vector<InputPath> inputs = input_paths(o.inputs, "the input");
  if (o.tokenizer != "byte") inputs.push_back({"the tokenizer", o.tokenizer});
  check_output_dir(o.out_dir, o.force, "encode", inputs);
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(o.tokenizer);
  const int threads = resolve_threads(o.threads);
  const std::vector<int32_t> separator = tok->document_separator();

  EncodeReport report;
  report.input_bytes = total_bytes;
  build_output_dir(o.out_dir, [&](const fs::path& tmp_dir) {
    const std::string tmp = tmp_dir.string();
    SplitOutput splits[2];
    splits[0].name = "train";
    splits[1].name = "val";
    uint64_t tokens_so_far = 0;
    DocumentReader reader(o.inputs, o.documents, kPieceBytes, o.format);
    reader.set_cut([&](std::string_view text, std::size_t from) { return tok->next_cut(text, from); });

    auto close_shard = [&](SplitOutput& s) {
      const ShardHeader h = s.writer->close();
      s.done.push_back({s.writer->path(), s.name, h.token_count, h.documents, h.checksum});
      s.writer.reset();
    };
    // A shard is closed after the document that fills it, unless what is left of
    // the input would make only a small last shard (then this one grows instead).
    auto maybe_roll_over = [&](SplitOutput& s, int which, uint64_t consumed) {
      if (s.writer->token_count() < o.shard_tokens) return;
      const double tokens_per_byte = double(tokens_so_far) / std::max<uint64_t>(consumed, 1);
      const double share = which == 1 ? o.val_fraction : 1 - o.val_fraction;
      const double left = double(total_bytes - std::min(total_bytes, consumed)) * tokens_per_byte * share;
      if (left >= double(o.shard_tokens) / 4) close_shard(s);
    };

    ByteProgress progress("encode", total_bytes);
    std::vector<DocumentPiece> batch;
    std::vector<std::vector<int32_t>> ids;
    std::size_t batch_bytes = 0;
    const std::size_t batch_limit = kPieceBytes * 2 * static_cast<std::size_t>(threads);
    auto flush = [&] {
      std::vector<std::string_view> texts;
      texts.reserve(batch.size());
      for (const DocumentPiece& p : batch) texts.emplace_back(p.text);
      encode_all(*tok, texts, ids, threads);
      for (std::size_t i = 0; i < batch.size(); ++i) {
        const int which = o.val_fraction > 0 && is_validation_document(batch[i].document, o.val_fraction) ? 1 : 0;
        SplitOutput& s = splits[which];
        if (!s.writer) {
          char name[32];
          std::snprintf(name, sizeof name, "%s_%05zu.bin", s.name.c_str(), s.done.size());
          s.writer =
              std::make_unique<ShardWriter>((fs::path(tmp) / name).string(), tok->vocab_size(), tok->fingerprint());
        }
        s.writer->append(ids[i]);
        s.tokens += ids[i].size();
        tokens_so_far += ids[i].size();
        if (batch[i].ends_document) {
          s.writer->append(separator);
          s.writer->end_document();
          s.tokens += separator.size();
          ++s.documents;
          maybe_roll_over(s, which, batch[i].input_offset);
        }
      }
      batch.clear();
      batch_bytes = 0;
      progress.update(reader.bytes_read());
    };
    DocumentPiece piece;
    while (reader.next(piece)) {
      batch_bytes += piece.text.size();
      batch.push_back(std::move(piece));
      piece = {};
      if (batch_bytes >= batch_limit) flush();
    }
    flush();
    for (SplitOutput& s : splits)
      if (s.writer) close_shard(s);

    if (splits[0].documents == 0) throw std::runtime_error("encode: the inputs hold no documents (only blank lines?)");
    if (o.val_fraction > 0 && splits[1].documents == 0)
      throw std::runtime_error("encode: no document went to validation: the inputs hold " +
                               std::to_string(reader.documents()) + " document(s) under --docs " +
                               to_string(o.documents) + ", and --val-fraction " + format_fraction(o.val_fraction) +
                               " takes one in every " + format_fraction(1 / o.val_fraction) +
                               ". Use a finer --docs rule, more text, or --val-fraction 0");
    for (int k = 0; k < 2; ++k) {
      report.documents[k] = splits[k].documents;
      report.tokens[k] = splits[k].tokens;
      report.shards[k] = static_cast<int>(splits[k].done.size());
    }
    report.bad_records_skipped = reader.bad_records_skipped();
    report.seconds = progress.seconds();
    progress.finish(", " + std::to_string(report.tokens[0] + report.tokens[1]) + " tokens");

    ShardDirInfo info;
    info.dir = tmp;
    info.tokenizer_identity = tok->identity();
    info.tokenizer_fingerprint = tok->fingerprint();
    info.vocab_size = static_cast<uint32_t>(tok->vocab_size());
    info.document_rule = to_string(o.documents);
    bool any_jsonl = false;
    for (const std::string& in : o.inputs) any_jsonl = any_jsonl || is_jsonl_input(in, o.format);
    if (any_jsonl) info.document_rule += "; JSON Lines records (text key \"" + o.format.text_key + "\")";
    info.val_fraction = o.val_fraction;
    for (const std::string& in : o.inputs) info.inputs.push_back(fs::absolute(in).lexically_normal().string());
    for (SplitOutput& s : splits) info.shards.insert(info.shards.end(), s.done.begin(), s.done.end());
    if (o.tokenizer != "byte") {
      fs::create_directories(fs::path(tmp) / "tokenizer");
      for (const std::string& f : hf_tokenizer_files(o.tokenizer))
        fs::copy_file(fs::path(o.tokenizer) / f, fs::path(tmp) / "tokenizer" / f);
    }
    write_manifest(info);
  });
  return report;
}

}  // namespace kvroute
