// Streams the documents of text files (encode.h's --docs rules) as pieces of about
// max_piece_bytes, cut at line ends (or where a tokenizer allows), so a document of any
// size can be encoded in parallel without holding it whole.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "input_stream.h"
#include "jsonl_records.h"
#include "kvroute/encode.h"
#include "kvroute/input_format.h"

namespace kvroute {

struct DocumentPiece {
  uint64_t document = 0;  // 0, 1, 2, ... in input order
  std::string text;       // the exact bytes (lines with their newlines); may be empty
  bool ends_document = false;
  uint64_t input_offset = 0;  // input bytes consumed up to the end of this piece
};

class DocumentReader {
 public:
  // Each file is read as text (documents by `rule`) or as JSON Lines (a record's text is a
  // document) by `format`; .gz and .zst files are decompressed as they are read.
  DocumentReader(std::vector<std::string> paths, DocumentRule rule, std::size_t max_piece_bytes = 1 << 20,
                 InputFormat format = {});
  // Where a long document may be cut (Tokenizer::next_cut: the first allowed cut at or
  // after `from`, text.size() for none). Unset, a piece ends after the line that fills it.
  using Cut = std::function<std::size_t(std::string_view text, std::size_t from)>;
  void set_cut(Cut cut) { cut_ = std::move(cut); }
  // The next piece, or false at the end. Throws std::runtime_error naming a file that cannot be read.
  bool next(DocumentPiece& out);
  // Input bytes consumed (compressed bytes for compressed files).
  uint64_t bytes_read() const { return bytes_read_; }
  uint64_t bad_records_skipped() const { return skipped_; }
  uint64_t documents() const { return next_document_; }

 private:
  bool open_next_file();
  void close_file();
  bool piece_full(DocumentPiece& out);  // emits a piece once buffer_ is full enough
  void line_too_long(const std::string& where) const;
  void emit(DocumentPiece& out, bool ends);
  void open_document() { doc_open_ = true, doc_ = next_document_++; }

  std::vector<std::string> paths_;
  DocumentRule rule_;
  std::shared_ptr<void> start_;  // compiled POSIX regex_t (start:RE)
  std::size_t max_piece_;
  std::size_t file_ = 0;
  InputFormat format_;
  std::unique_ptr<InputStream> input_;
  std::unique_ptr<JsonlRecords> records_;  // set while a JSON Lines file is read
  std::string record_;                     // the current record's text, read up to record_pos_
  std::size_t record_pos_ = 0;
  uint64_t done_bytes_ = 0;  // bytes of the files already read
  uint64_t skipped_ = 0;
  bool doc_open_ = false;
  uint64_t doc_ = 0, next_document_ = 0, bytes_read_ = 0;
  uint64_t line_no_ = 0;  // lines read of the current file, for messages
  std::string buffer_, line_;
  Cut cut_;
  std::size_t scanned_ = 0;  // with cut_: buffer_ holds no allowed cut before this
};

}  // namespace kvroute
