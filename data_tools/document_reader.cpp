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

DocumentReader::DocumentReader(std::vector<std::string> paths, DocumentRule rule, std::size_t max_piece_bytes)
    : paths_(std::move(paths)), rule_(std::move(rule)), max_piece_(max_piece_bytes) {
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
  require_regular_file(paths_[file_], "input '" + paths_[file_] + "'");  // a FIFO would block the open
  in_ = std::ifstream(paths_[file_], std::ios::binary);
  if (!in_) throw std::runtime_error("input '" + paths_[file_] + "': cannot be opened");
  ++file_;
  return true;
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
    if (!in_.is_open()) {
      if (!open_next_file()) return false;
      if (rule_.kind == Kind::file) open_document();
    }
    line_.clear();
    const LinePart part = read_line_part(in_, line_, limits::kTextLineBytes);
    if (!part.newline && !part.end) {
      // Tokenizers hold a whole line (SentencePiece's lattice takes about 200 bytes per byte
      // of it), so a line has a bounded size rather than whatever the file holds.
      throw std::runtime_error("input '" + paths_[file_ - 1] + "': line " + std::to_string(line_no_ + 1) +
                               " is longer than kvroute's limit of " + std::to_string(limits::kTextLineBytes >> 20) +
                               " MiB for one line; split it (e.g. `fold -s -w 100000`)");
    }
    if (part.end && part.bytes == 0) {
      if (in_.bad()) throw std::runtime_error("input '" + paths_[file_ - 1] + "': read error");
      in_.close();
      line_no_ = 0;
      if (doc_open_) {  // documents end with their file
        emit(out, true);
        return true;
      }
      continue;
    }
    ++line_no_;
    const bool had_newline = part.newline;
    bytes_read_ += line_.size() + (had_newline ? 1 : 0);
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
    if (buffer_.size() >= max_piece_ && !cut_) {
      emit(out, false);
      return true;
    }
    if (buffer_.size() >= max_piece_) {
      // The first allowed cut in the second half (a cut right at the end is not known
      // to be allowed until the next line is read).
      const std::size_t p = cut_(buffer_, std::max(scanned_, max_piece_ / 2));
      if (p < buffer_.size()) {
        std::string rest = buffer_.substr(p);
        buffer_.resize(p);
        emit(out, false);
        out.input_offset -= rest.size();
        buffer_ = std::move(rest);
        return true;
      }
      scanned_ = buffer_.size() - 1;
    }
  }
}

}  // namespace kvroute
