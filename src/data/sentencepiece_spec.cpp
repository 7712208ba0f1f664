// A bounds-checked reader of the few ModelProto fields kvroute needs (sentencepiece_spec.h).
#include "sentencepiece_spec.h"

#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace kvroute {

namespace {

// Protobuf's wire format: each field a varint key (number << 3 | wire type), then a varint,
// 8 or 4 fixed bytes, or a varint length and that many bytes.
class ProtoReader {
 public:
  ProtoReader(std::string_view data, const std::string& file, const char* what)
      : data_(data), file_(file), what_(what) {}

  bool done() const { return pos_ >= data_.size(); }

  // Reads the next field's key; returns its number and sets wire_type.
  uint64_t key(int& wire_type) {
    const uint64_t k = varint();
    wire_type = static_cast<int>(k & 7);
    return k >> 3;
  }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) fail("a number runs past the end");
      const auto b = static_cast<uint8_t>(data_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("a number is longer than 10 bytes");
  }

  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > data_.size() - pos_) fail("a field's length " + std::to_string(n) + " runs past the end");
    const std::string_view s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }

  float fixed32_float() {
    if (data_.size() - pos_ < 4) fail("a 4-byte field runs past the end");
    float f;
    std::memcpy(&f, data_.data() + pos_, 4);  // little-endian, as x86 and protobuf are
    pos_ += 4;
    return f;
  }

  void skip(int wire_type) {
    switch (wire_type) {
      case 0: varint(); return;
      case 1: advance(8); return;
      case 2: bytes(); return;
      case 5: advance(4); return;
      default: fail("wire type " + std::to_string(wire_type) + " is not one protobuf writes here");
    }
  }

  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error("tokenizer '" + file_ + "': not a SentencePiece model (" + what_ + ": " + why + ")");
  }

 private:
  void advance(std::size_t n) {
    if (data_.size() - pos_ < n) fail("a fixed-size field runs past the end");
    pos_ += n;
  }

  std::string_view data_;
  std::size_t pos_ = 0;
  const std::string& file_;
  const char* what_;
};

SentencePieceSpec::Piece parse_piece(std::string_view data, const std::string& file) {
  ProtoReader r(data, file, "a piece");
  SentencePieceSpec::Piece p;
  while (!r.done()) {
    int wt;
    const uint64_t field = r.key(wt);
    if (field == 1 && wt == 2) {
      p.text = std::string(r.bytes());
    } else if (field == 2 && wt == 5) {
      p.score = r.fixed32_float();
    } else if (field == 3 && wt == 0) {
      const uint64_t t = r.varint();
      if (t < 1 || t > 6) r.fail("piece type " + std::to_string(t) + " is not one of 1..6");
      p.type = static_cast<SentencePieceSpec::PieceType>(t);
    } else {
      r.skip(wt);
    }
  }
  return p;
}

void parse_trainer_spec(std::string_view data, const std::string& file, SentencePieceSpec& spec) {
  ProtoReader r(data, file, "trainer_spec");
  while (!r.done()) {
    int wt;
    const uint64_t field = r.key(wt);
    if (field == 3 && wt == 0) {
      const uint64_t t = r.varint();
      static const char* const kTypes[] = {"", "unigram", "bpe", "word", "char"};
      if (t < 1 || t > 4) r.fail("model_type " + std::to_string(t) + " is not one of 1..4");
      spec.model_type = kTypes[t];
    } else if (field == 25 && wt == 0) {
      spec.split_digits = r.varint() != 0;
    } else if (field == 35 && wt == 0) {
      spec.byte_fallback = r.varint() != 0;
    } else if (field == 24 && wt == 0) {
      spec.treat_whitespace_as_suffix = r.varint() != 0;
    } else {
      r.skip(wt);
    }
  }
}

void parse_normalizer_spec(std::string_view data, const std::string& file, SentencePieceSpec& spec) {
  ProtoReader r(data, file, "normalizer_spec");
  while (!r.done()) {
    int wt;
    const uint64_t field = r.key(wt);
    if (field == 1 && wt == 2)
      spec.normalization_rule = std::string(r.bytes());
    else if (field == 3 && wt == 0)
      spec.add_dummy_prefix = r.varint() != 0;
    else if (field == 4 && wt == 0)
      spec.remove_extra_whitespaces = r.varint() != 0;
    else if (field == 5 && wt == 0)
      spec.escape_whitespaces = r.varint() != 0;
    else
      r.skip(wt);
  }
}

}  // namespace

SentencePieceSpec parse_sentencepiece_spec(std::string_view proto, const std::string& file) {
  SentencePieceSpec spec;
  ProtoReader r(proto, file, "model");
  while (!r.done()) {
    int wt;
    const uint64_t field = r.key(wt);
    if (field == 1 && wt == 2)
      spec.pieces.push_back(parse_piece(r.bytes(), file));
    else if (field == 2 && wt == 2)
      parse_trainer_spec(r.bytes(), file, spec);
    else if (field == 3 && wt == 2)
      parse_normalizer_spec(r.bytes(), file, spec);
    else
      r.skip(wt);
  }
  if (spec.pieces.empty()) r.fail("it has no pieces");
  return spec;
}

}  // namespace kvroute
