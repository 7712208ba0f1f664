// The corpus named by the data config (data.h): token shards or a text file.
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "kvroute/data.h"
#include "kvroute/llmc_shards.h"
#include "kvroute/shard.h"
#include "kvroute/shard_dir.h"

namespace kvroute {

namespace {

std::string read_text_file(const std::string& path, const char* key) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string(key) + ": cannot open '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.empty()) throw std::runtime_error(std::string(key) + ": '" + path + "' is empty");
  return text;
}

TokenSegment shard_segment(const Shard& shard) {
  TokenSegment s;
  s.name = shard.path();
  s.bytes = shard.token_bytes();
  s.count = shard.size();
  s.width = shard.header().token_width;
  s.owner = std::make_shared<Shard>(shard);
  return s;
}

// Opens one shard of the manifest and checks that it is the file the manifest lists.
Shard open_listed_shard(const ShardEntry& e, const ShardDirInfo& info, bool verify) {
  Shard s = Shard::open(e.path, verify ? ShardCheck::full : ShardCheck::header);
  const ShardHeader& h = s.header();
  const std::string name = "shard '" + e.path + "'";
  if (h.tokenizer_fingerprint != info.tokenizer_fingerprint || h.vocab_size != info.vocab_size)
    throw std::runtime_error(name + ": written by tokenizer " + fingerprint_hex(h.tokenizer_fingerprint) + " (vocab " +
                             std::to_string(h.vocab_size) + "), but the manifest names " +
                             fingerprint_hex(info.tokenizer_fingerprint) + " (vocab " +
                             std::to_string(info.vocab_size) + ")");
  if (h.token_count != e.tokens || h.checksum != e.checksum)
    throw std::runtime_error(name + ": holds " + std::to_string(h.token_count) + " tokens with checksum " +
                             fingerprint_hex(h.checksum) + ", but manifest.yaml lists " + std::to_string(e.tokens) +
                             " tokens with checksum " + fingerprint_hex(e.checksum) +
                             " (a file was replaced or copied partially)");
  return s;
}

void load_shards(Corpus& c, const DataConfig& dc, const Tokenizer& tok, CorpusParts parts) {
  const ShardDirInfo info = read_shard_dir(dc.shards);
  if (info.tokenizer_fingerprint != tok.fingerprint() || info.vocab_size != static_cast<uint32_t>(tok.vocab_size())) {
    const std::string saved = info.tokenizer_spec();
    throw std::runtime_error("data.shards '" + dc.shards + "' were encoded with tokenizer " + info.tokenizer_identity +
                             ", but data.tokenizer '" + dc.tokenizer + "' is " + tok.identity() +
                             (saved.empty() ? std::string() : "; set data.tokenizer: " + saved));
  }
  const auto train = info.split("train"), val = info.split("val");
  if (train.empty()) throw std::runtime_error("data.shards '" + dc.shards + "': the manifest lists no training shards");
  if (val.empty())
    throw std::runtime_error(
        "data.shards '" + dc.shards +
        "': no validation shards (encoded with --val-fraction 0); re-encode with a validation split");
  if (parts == CorpusParts::train_and_val)
    for (const ShardEntry& e : train) c.train.segments.push_back(shard_segment(open_listed_shard(e, info, dc.verify)));
  c.val.reserve(info.tokens("val"));
  for (const ShardEntry& e : val) {
    const Shard s = open_listed_shard(e, info, dc.verify);
    for (uint64_t i = 0; i < s.size(); ++i) {
      const int32_t id = s[i];
      if (id < 0 || static_cast<uint32_t>(id) >= s.header().vocab_size)
        throw std::runtime_error("shard '" + e.path + "': token " + std::to_string(i) + " has id " +
                                 std::to_string(id) + ", not below the vocabulary size " +
                                 std::to_string(s.header().vocab_size));
      c.val.push_back(id);
    }
  }
  c.source = "shards " + dc.shards + " (" + std::to_string(train.size()) + " train, " + std::to_string(val.size()) +
             " val; " + (dc.verify ? "checksums verified" : "checksums not verified") + ")";
}

// llm.c / modded-nanogpt token files read in place (llmc_shards.h).
void load_llmc_shards(Corpus& c, const DataConfig& dc, const Tokenizer& tok, CorpusParts parts) {
  const std::vector<std::string> train = llmc_shard_files(dc.shards, "train"), val = llmc_shard_files(dc.shards, "val");
  if (train.empty())
    throw std::runtime_error("data.shards '" + dc.shards + "': llm.c shards, but no *.bin file with \"train\" in its name");
  if (val.empty())
    throw std::runtime_error("data.shards '" + dc.shards + "': llm.c shards, but no *.bin file with \"val\" in its name");
  // Every id must be one of the tokenizer's: in one pass over every file (data.verify), else over
  // the validation files, which are read into memory anyway.
  auto check_ids = [&](const TokenSegment& s) {
    for (uint64_t i = 0; i < s.count; ++i)
      if (s[i] >= tok.vocab_size())
        throw std::runtime_error("llm.c shard '" + s.name + "': token " + std::to_string(i) + " is id " +
                                 std::to_string(s[i]) + ", outside data.tokenizer's " + std::to_string(tok.vocab_size()) +
                                 " ids (" + tok.identity() + "); llm.c shards hold GPT-2 ids: set data.tokenizer to "
                                 "Hugging Face's gpt2 tokenizer folder");
  };
  if (parts == CorpusParts::train_and_val)
    for (const std::string& f : train) {
      TokenSegment s = open_llmc_shard(f);
      if (dc.verify) check_ids(s);
      c.train.segments.push_back(std::move(s));
    }
  for (const std::string& f : val) {
    const TokenSegment s = open_llmc_shard(f);
    check_ids(s);
    for (uint64_t i = 0; i < s.count; ++i) c.val.push_back(s[i]);
  }
  c.source = "llm.c shards " + dc.shards + " (" + std::to_string(train.size()) + " train, " +
             std::to_string(val.size()) + " val; ids " + (dc.verify ? "checked" : "of the training files not checked") +
             " against " + tok.identity() + ")";
}

void load_text(Corpus& c, const DataConfig& dc, const Tokenizer& tok, CorpusParts parts) {
  const std::string text = read_text_file(dc.train_path, "data.train_path");
  std::string_view train = text, val;
  std::string val_text;
  if (!dc.val_path.empty()) {
    val_text = read_text_file(dc.val_path, "data.val_path");
    val = val_text;
  } else {
    // Split the tail off as validation, at a line break so no line straddles the split.
    std::size_t cut = static_cast<std::size_t>(text.size() * (1.0 - dc.val_fraction));
    while (cut < text.size() && text[cut] != '\n') ++cut;
    train = std::string_view(text).substr(0, cut);
    val = std::string_view(text).substr(cut);
  }
  if (parts == CorpusParts::train_and_val)
    c.train.segments.push_back(memory_segment(dc.train_path + " (train split)", encode_parallel(tok, train)));
  c.val = encode_parallel(tok, val);
  c.source = "text " + dc.train_path + (dc.val_path.empty() ? "" : " + " + dc.val_path);
}

}  // namespace

Corpus load_corpus(const DataConfig& dc, CorpusParts parts) {
  if (!dc.shards.empty() && !dc.train_path.empty())
    throw std::runtime_error("data.shards ('" + dc.shards + "') and data.train_path ('" + dc.train_path +
                             "') are both set; use one (data.shards: token shards from `kvroute data encode`; "
                             "data.train_path: a text file tokenized on load), e.g. --set data.train_path=");
  if (dc.shards.empty() && dc.train_path.empty())
    throw std::runtime_error(
        "no training data: set data.shards (a directory from `kvroute data encode`) or "
        "data.train_path (a text file)");
  std::shared_ptr<const Tokenizer> tok;
  try {
    tok = load_tokenizer(dc.tokenizer);
  } catch (const std::exception& e) {
    throw std::runtime_error("data.tokenizer: " + std::string(e.what()));
  }
  Corpus c;
  c.tok = tok;
  c.tokenizer = tok->identity();
  c.tokenizer_fingerprint = fingerprint_hex(tok->fingerprint());
  c.vocab_size = tok->vocab_size();
  if (!dc.shards.empty() && is_llmc_shard_dir(dc.shards))
    load_llmc_shards(c, dc, *tok, parts);
  else if (!dc.shards.empty())
    load_shards(c, dc, *tok, parts);
  else
    load_text(c, dc, *tok, parts);
  return c;
}

void check_model_vocab(const Corpus& corpus, int model_vocab_size, bool pretrained) {
  if (pretrained && model_vocab_size > corpus.vocab_size) return;
  // Padding the embedding to a multiple of 64 (GPT-2's 50257 ids in 50304 rows, as llm.c does)
  // keeps the output GEMM on fast tile sizes; the extra rows are never targets.
  const bool padded = model_vocab_size > corpus.vocab_size && model_vocab_size % 64 == 0 &&
                      model_vocab_size - corpus.vocab_size < 128;
  if (corpus.vocab_size != model_vocab_size && !padded)
    throw std::runtime_error("model.vocab_size is " + std::to_string(model_vocab_size) + " but the tokenizer (" +
                             corpus.tokenizer + ", data.tokenizer) has " + std::to_string(corpus.vocab_size) +
                             " tokens; set model.vocab_size: " + std::to_string(corpus.vocab_size) +
                             " (or that rounded up to a multiple of 64, " +
                             std::to_string((corpus.vocab_size + 63) / 64 * 64) + ")");
}

LoaderOptions loader_options(const Config& cfg) {
  LoaderOptions o;
  o.seq_len = cfg.train.seq_len;
  o.seed = static_cast<uint64_t>(cfg.train.seed);
  o.order = parse_window_order(cfg.data.order);
  return o;
}

}  // namespace kvroute
