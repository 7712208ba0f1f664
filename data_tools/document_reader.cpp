#include "document_reader.h"

#include <regex.h>

#include <algorithm>
#include <stdexcept>

#include "kvroute/input_file.h"
#include "kvroute/input_limits.h"
#include "line_reader.h"

namespace kvroute {

using Kind = DocumentRule::Kind;

DocumentRule parse_document_rule(const std::string& spec) {
  if (spec == "blank") return {Kind::blank, ""};
  if (spec == "line") return {Kind::line, ""};
  if (spec == "file") return {Kind::file, ""};
  if (spec.starts_with("start:")) {
    DocumentRule r{Kind::start, spec.substr(6)};
    if (r.pattern.empty()) throw std::invalid_argument("--docs start: needs a regular expression after 'start:'");
    regex_t re;
    if (const int err = ::regcomp(&re, r.pattern.c_str(), REG_EXTENDED | REG_NOSUB); err != 0) {
      char why[256];
      ::regerror(err, &re, why, sizeof why);
      throw std::invalid_argument("--docs: '" + r.pattern + "' is not a valid POSIX extended regular expression (" +
                                  why + ")");
    }
    ::regfree(&re);
    return r;
  }
  throw std::invalid_argument("--docs: '" + spec + "' is not one of blank, line, file, start:REGEX");
}

std::string to_string(const DocumentRule& rule) {
  switch (rule.kind) {
    case Kind::blank:
      return "blank";
    case Kind::line:
      return "line";
    case Kind::file:
      return "file";
    case Kind::start:
      return "start:" + rule.pattern;
  }
  return "?";
}

DocumentReader::DocumentReader(std::vector<std::string> paths, DocumentRule rule, std::size_t max_piece_bytes,
                               InputFormat format)
    : paths_(std::move(paths)), rule_(std::move(rule)), max_piece_(max_piece_bytes), format_(std::move(format)) {
  if (rule_.kind == Kind::start) {
    auto* re = new regex_t;
    if (::regcomp(re, rule_.pattern.c_str(), REG_EXTENDED | REG_NOSUB) != 0) {
      delete re;
      throw std::invalid_argument("--docs: '" + rule_.pattern + "' is not a valid regular expression");
    }
    start_ = std::shared_ptr<void>(re, [](void* p) {
      ::regfree(static_cast<regex_t*>(p));
      delete static_cast<regex_t*>(p);
    });
  }
}

bool DocumentReader::open_next_file() {
  if (file_ == paths_.size()) return false;
  input_ = std::make_unique<InputStream>(paths_[file_]);
  if (is_jsonl_input(paths_[file_], format_)) records_ = std::make_unique<JsonlRecords>(input_->stream(), paths_[file_], format_);
  ++file_;
  line_no_ = 0;
  return true;
}

void DocumentReader::close_file() {
  if (records_) skipped_ += records_->skipped();
  records_.reset();
  if (input_->compressed()) bytes_read_ = done_bytes_ + input_->file_bytes_consumed();
  done_bytes_ = bytes_read_;
  input_.reset();
}

void DocumentReader::line_too_long(const std::string& where) const {
  // Tokenizers hold a whole line (SentencePiece's lattice takes about 200 bytes per byte of
  // it), so a line has a bounded size rather than whatever the file holds.
  throw std::runtime_error(where + " is longer than kvroute's limit of " + std::to_string(limits::kTextLineBytes >> 20) +
                           " MiB for one line; split it (e.g. `fold -s -w 100000`)");
}

void DocumentReader::emit(DocumentPiece& out, bool ends) {
  out.document = doc_;
  out.text.swap(buffer_);
  buffer_.clear();
  out.ends_document = ends;
  out.input_offset = bytes_read_;
  scanned_ = 0;
  if (ends) doc_open_ = false;
}

bool DocumentReader::next(DocumentPiece& out) {
  while (true) {
    if (!input_) {
      if (!open_next_file()) return false;
      if (rule_.kind == Kind::file && !records_) open_document();
    }
    if (records_) {  // JSON Lines: each record's text is a document, read a line at a time
      if (record_pos_ >= record_.size()) {
        if (doc_open_) {  // the record's document ends
          emit(out, true);
          return true;
        }
        record_.clear();
        record_pos_ = 0;
        const bool more = records_->next(record_);
        bytes_read_ = done_bytes_ + (input_->compressed() ? input_->file_bytes_consumed() : records_->bytes());
        if (!more) {
          close_file();
          continue;
        }
        if (!record_.empty()) open_document();  // an empty text is no document
        continue;
      }
      const std::size_t nl = record_.find('\n', record_pos_);
      const std::size_t end = nl == std::string::npos ? record_.size() : nl + 1;
      if (end - record_pos_ > limits::kTextLineBytes)
        line_too_long("input '" + paths_[file_ - 1] + "' line " + std::to_string(records_->line()) +
                      ": a line of the record's text");
      buffer_.append(record_, record_pos_, end - record_pos_);
      record_pos_ = end;
      if (piece_full(out)) return true;
      continue;
    }
    line_.clear();
    const LinePart part = read_line_part(input_->stream(), line_, limits::kTextLineBytes);
    if (!part.newline && !part.end)
      line_too_long("input '" + paths_[file_ - 1] + "': line " + std::to_string(line_no_ + 1));
    if (part.end && part.bytes == 0) {
      close_file();
      if (doc_open_) {  // documents end with their file
        emit(out, true);
        return true;
      }
      continue;
    }
    ++line_no_;
    const bool had_newline = part.newline;
    bytes_read_ += line_.size() + (had_newline ? 1 : 0);
    if (input_->compressed()) bytes_read_ = done_bytes_ + input_->file_bytes_consumed();
    if (rule_.kind == Kind::start && doc_open_ &&
        ::regexec(static_cast<const regex_t*>(start_.get()), line_.c_str(), 0, nullptr, 0) == 0) {
      // This line starts the next document: finish the open one first.
      emit(out, true);
      open_document();
      buffer_ = line_;
      if (had_newline) buffer_.push_back('\n');
      return true;
    }
    if (had_newline) line_.push_back('\n');
    const bool blank = line_.find_first_not_of(" \t\r\n\f\v") == std::string::npos;
    if ((rule_.kind == Kind::blank || rule_.kind == Kind::line) && blank) {
      if (doc_open_) {
        emit(out, true);
        return true;
      }
      continue;
    }
    if (!doc_open_) open_document();
    buffer_ += line_;
    if (rule_.kind == Kind::line) {
      emit(out, true);
      return true;
    }
    if (piece_full(out)) return true;
  }
}

bool DocumentReader::piece_full(DocumentPiece& out) {
  if (buffer_.size() < max_piece_) return false;
  if (!cut_) {
    emit(out, false);
    return true;
  }
  // The first allowed cut in the second half (a cut right at the end is not known to be
  // allowed until the next line is read).
  const std::size_t p = cut_(buffer_, std::max(scanned_, max_piece_ / 2));
  if (p < buffer_.size()) {
    std::string rest = buffer_.substr(p);
    buffer_.resize(p);
    emit(out, false);
    out.input_offset -= std::min<uint64_t>(out.input_offset, rest.size());
    buffer_ = std::move(rest);
    return true;
  }
  scanned_ = buffer_.size() - 1;
  return false;
}

}  // namespace kvroute
