// `kvroute data tokenizer`: trains a SentencePiece model (libsentencepiece) on text
// files and writes a tokenizer directory (tokenizer.h).
#include <omp.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string_view>
#include <stdexcept>
#include <unordered_map>

#include "input_files.h"
#include "kvroute/input_file.h"
#include "input_stream.h"
#include "jsonl_records.h"
#include "line_reader.h"
#include "progress.h"
#include "kvroute/tokenizer.h"

namespace kvroute {

namespace fs = std::filesystem;

namespace {

// Lines longer than this are cut (at a space when there is one) so that none is
// skipped by SentencePiece, whose limit is max_sentence_length bytes.
constexpr std::size_t kMaxSentenceBytes = 4096;
// A line is read in parts of this size (lines are cut into sentences anyway).
constexpr std::size_t kReadPart = 1 << 16;

using SpStatus = sentencepiece::util::Status;
using SpCode = sentencepiece::util::StatusCode;

// Feeds SentencePiece the non-blank lines of the input files with a progress bar.
// SentencePiece reads every sentence first and then fits, reporting nothing while
// it fits; so once the input is exhausted the bar is closed and a ticker started.
class LineFeeder final : public sentencepiece::SentenceIterator {
 public:
  LineFeeder(const std::vector<std::string>& paths, uint64_t total_bytes, std::string fit_label,
             const InputFormat& format)
      : paths_(paths), progress_("tokenizer: reading", total_bytes), fit_label_(std::move(fit_label)), format_(format) {
    Next();
  }
  bool done() const override { return done_; }
  const std::string& value() const override { return value_; }
  SpStatus status() const override { return status_; }
  uint64_t sentences() const { return sentences_; }
  double read_seconds() const { return read_seconds_; }
  double fit_seconds() { return ticker_ ? ticker_->stop() : 0; }

  void Next() override {
    try {
      next_sentence();
    } catch (const std::exception& e) {  // SentencePiece takes errors as a status
      fail(SpCode::kDataLoss, e.what());
    }
  }
  uint64_t bad_records_skipped() const { return skipped_; }

 private:
  void next_sentence() {
    while (!done_) {
      // A sentence is taken once the line is complete or holds more than one sentence's bytes,
      // so a line of any length is read a part at a time (a 2 GB line is never held whole).
      const std::size_t available = pending_.size() - pos_;
      if (available > kMaxSentenceBytes || (available > 0 && !line_open_)) return take_sentence();
      if (line_open_) {
        pending_.erase(0, pos_);
        pos_ = 0;
        read_part();
        continue;
      }
      pending_.clear();
      pos_ = 0;
      if (records_) {  // JSON Lines: every line of every record's text is a sentence
        if (record_pos_ < record_.size()) {
          const std::size_t nl = record_.find('\n', record_pos_);
          const std::size_t end = nl == std::string::npos ? record_.size() : nl;
          pending_.assign(record_, record_pos_, end - record_pos_);
          record_pos_ = end + 1;
          if (pending_.find_first_not_of(" \t\r") == std::string::npos) pending_.clear();
          continue;
        }
        record_.clear();
        record_pos_ = 0;
        const bool more = records_->next(record_);
        update_progress(input_->compressed() ? input_->file_bytes_consumed() : records_->bytes());
        if (more) continue;
        skipped_ += records_->skipped();
        records_.reset();
        at_end_ = true;
      }
      if (input_ && !at_end_) {
        read_part();
        // A blank line (only spaces, tabs, CRs) is no sentence.
        if (!line_open_ && pending_.find_first_not_of(" \t\r") == std::string::npos) pending_.clear();
        continue;
      }
      if (input_) done_bytes_ = bytes_;
      input_.reset();
      if (file_ == paths_.size()) return finish_reading();
      const std::string& path = paths_[file_++];
      input_ = std::make_unique<InputStream>(path);
      at_end_ = false;
      file_line_bytes_ = 0;
      if (is_jsonl_input(path, format_)) records_ = std::make_unique<JsonlRecords>(input_->stream(), path, format_);
    }
  }

  void update_progress(uint64_t file_bytes) {
    bytes_ = done_bytes_ + file_bytes;
    progress_.update(bytes_);
  }
  // Appends the next part of the current line (at most kReadPart bytes) to pending_.
  void read_part() {
    const LinePart part = read_line_part(input_->stream(), pending_, kReadPart);
    file_line_bytes_ += part.bytes + (part.newline ? 1 : 0);
    update_progress(input_->compressed() ? input_->file_bytes_consumed() : file_line_bytes_);
    line_open_ = !part.newline && !part.end;
    at_end_ = part.end;
  }
  void take_sentence() {
    const std::string_view rest = std::string_view(pending_).substr(pos_);
    std::size_t cut = rest.size();
    if (cut > kMaxSentenceBytes) {
      cut = rest.rfind(' ', kMaxSentenceBytes);
      if (cut == std::string::npos || cut == 0) {
        cut = kMaxSentenceBytes;
        while (cut > 0 && (static_cast<unsigned char>(rest[cut]) & 0xC0) == 0x80) --cut;  // a UTF-8 boundary
        if (cut == 0) cut = kMaxSentenceBytes;  // no character boundary at all: not UTF-8, cut anyway
      }
    }
    value_.assign(rest.substr(0, cut));
    pos_ += cut;
    ++sentences_;
  }
  void fail(SpCode code, const std::string& message) {
    status_ = SpStatus(code, message);
    done_ = true;
  }
  void finish_reading() {
    done_ = true;
    read_seconds_ = progress_.seconds();
    progress_.finish(", " + std::to_string(sentences_) + " lines");
    ticker_ = std::make_unique<ElapsedTicker>(fit_label_);
  }

  const std::vector<std::string>& paths_;
  ByteProgress progress_;
  std::string fit_label_;
  std::unique_ptr<ElapsedTicker> ticker_;
  std::size_t file_ = 0;
  const InputFormat& format_;
  std::unique_ptr<InputStream> input_;
  std::unique_ptr<JsonlRecords> records_;  // set while a JSON Lines file is read
  std::string record_;                     // its current record's text, read up to record_pos_
  std::size_t record_pos_ = 0;
  bool at_end_ = false;  // the current file is read to its end
  uint64_t done_bytes_ = 0, file_line_bytes_ = 0, skipped_ = 0;
  std::string pending_, value_;  // pending_[pos_, end): the unread part of the current line
  std::size_t pos_ = 0;
  bool line_open_ = false;  // the current line goes on past pending_
  bool done_ = false;
  SpStatus status_;
  uint64_t sentences_ = 0, bytes_ = 0;
  double read_seconds_ = 0;
};

std::string explain_failure(const std::string& message, const TokenizerTrainOptions& o) {
  std::string hint;
  if (message.find("Vocabulary size too high") != std::string::npos)
    hint = " -- the inputs are too small or too uniform for " + std::to_string(o.vocab_size) +
           " pieces; lower --vocab-size or add text";
  else if (message.find("smaller than required_chars") != std::string::npos)
    hint = " -- --vocab-size must exceed the special, byte and character pieces; raise it";
  return "tokenizer training failed (" + o.model_type + ", vocab_size " + std::to_string(o.vocab_size) +
         "): " + message + hint;
}

using Args = std::unordered_map<std::string, std::string>;

// What makes decode(encode(text)) == text (tokenizer.h), and the special ids.
Args sentencepiece_args(const TokenizerTrainOptions& o) {
  return {
      {"model_type", o.model_type},
      {"vocab_size", std::to_string(o.vocab_size)},
      {"byte_fallback", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"split_digits", "true"},
      {"character_coverage", "0.9995"},
      {"max_sentence_length", std::to_string(kMaxSentenceBytes + 64)},
      {"input_sentence_size", std::to_string(o.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(o.threads > 0 ? o.threads : omp_get_max_threads())},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"minloglevel", "2"},
      {"model_prefix", ""},
  };
}

void write_vocab(const std::string& proto, const fs::path& path) {
  sentencepiece::SentencePieceProcessor sp;
  (void)sp.LoadFromSerializedProto(proto);
  std::ofstream vocab(path);
  for (int id = 0; id < sp.GetPieceSize(); ++id)
    vocab << id << '\t' << sp.IdToPiece(id) << '\t' << sp.GetScore(id) << '\n';
}

void write_metadata(const Tokenizer& tok, const TokenizerTrainOptions& o, const Args& args,
                    const TokenizerTrainReport& r, const fs::path& path) {
  YAML::Emitter y;
  y << YAML::BeginMap;
  y << YAML::Key << "type" << YAML::Value << "sentencepiece";
  y << YAML::Key << "identity" << YAML::Value << tok.identity();
  y << YAML::Key << "fingerprint" << YAML::Value << fingerprint_hex(tok.fingerprint());
  y << YAML::Key << "model_type" << YAML::Value << o.model_type;
  y << YAML::Key << "vocab_size" << YAML::Value << tok.vocab_size();
  y << YAML::Key << "special_ids" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "unk" << YAML::Value
    << 0 << YAML::Key << "bos" << YAML::Value << 1 << YAML::Key << "eos" << YAML::Value << 2 << YAML::EndMap;
  y << YAML::Key << "options" << YAML::Value << YAML::BeginMap;
  for (const char* k : {"byte_fallback", "normalization_rule_name", "remove_extra_whitespaces", "add_dummy_prefix",
                        "split_digits", "character_coverage", "input_sentence_size"})
    y << YAML::Key << k << YAML::Value << args.at(k);
  y << YAML::EndMap;
  y << YAML::Key << "inputs" << YAML::Value << o.inputs;
  y << YAML::Key << "input_bytes" << YAML::Value << r.input_bytes;
  y << YAML::Key << "sentences" << YAML::Value << r.sentences;
  y << YAML::Key << "read_seconds" << YAML::Value << r.read_seconds;
  y << YAML::Key << "fit_seconds" << YAML::Value << r.fit_seconds;
  y << YAML::Key << "kvroute_version" << YAML::Value << KVROUTE_VERSION;
  y << YAML::EndMap;
  std::ofstream(path) << y.c_str() << "\n";
}

}  // namespace

TokenizerTrainReport train_tokenizer(const TokenizerTrainOptions& o) {
  if (o.model_type != "unigram" && o.model_type != "bpe")
    throw std::runtime_error("--model-type: '" + o.model_type + "' is not one of unigram, bpe");
  // 3 special pieces + 256 byte pieces + at least one learned one.
  if (o.vocab_size < 260)
    throw std::runtime_error("--vocab-size: " + std::to_string(o.vocab_size) +
                             " is too small; it must exceed 259 (3 special + 256 byte pieces)");
  if (o.max_sentences < 1) throw std::runtime_error("--max-sentences must be at least 1");
  TokenizerTrainReport report;
  report.input_bytes = check_input_files(o.inputs, "input");
  check_output_dir(o.out_dir, o.force, "tokenizer", input_paths(o.inputs, "the input"));

  const Args args = sentencepiece_args(o);
  std::string proto;
  SpStatus status;
  {
    LineFeeder feeder(o.inputs, report.input_bytes,
                      "tokenizer: fitting " + std::to_string(o.vocab_size) + "-piece " + o.model_type + " model",
                      o.format);
    status = sentencepiece::SentencePieceTrainer::Train(args, &feeder, &proto);
    report.read_seconds = feeder.read_seconds();
    report.fit_seconds = feeder.fit_seconds();
    report.sentences = feeder.sentences();
    report.bad_records_skipped = feeder.bad_records_skipped();
  }
  if (!status.ok()) throw std::runtime_error(explain_failure(status.ToString(), o));

  build_output_dir(o.out_dir, [&](const fs::path& tmp) {
    {
      std::ofstream model(tmp / "tokenizer.model", std::ios::binary);
      model.write(proto.data(), static_cast<std::streamsize>(proto.size()));
      if (!model.flush()) throw std::runtime_error("tokenizer: cannot write " + (tmp / "tokenizer.model").string());
    }
    const auto tok = load_sentencepiece_tokenizer(tmp.string());  // also checks that it round-trips
    report.identity = tok->identity();
    write_vocab(proto, tmp / "tokenizer.vocab");
    write_metadata(*tok, o, args, report, tmp / "tokenizer.yaml");
  });
  return report;
}

}  // namespace kvroute
