// What a SentencePiece model file says about itself beyond what SentencePieceProcessor's API
// exposes: the model type and the normalizer flags, read straight from the protobuf
// (sentencepiece_model.proto's field numbers). Debian ships libsentencepiece without the
// generated ModelProto header, and these few fields do not justify a protobuf dependency.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kvroute {

struct SentencePieceSpec {
  enum class PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
  struct Piece {
    std::string text;
    float score = 0;
    PieceType type = PieceType::kNormal;
  };
  std::vector<Piece> pieces;
  std::string model_type = "unigram";  // unigram | bpe | word | char (TrainerSpec.model_type)
  bool byte_fallback = false;
  bool split_digits = false;
  std::string normalization_rule = "";  // NormalizerSpec.name ("identity", "nmt_nfkc", ...)
  bool add_dummy_prefix = true;         // the proto's defaults, used when a field is absent
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
  bool treat_whitespace_as_suffix = false;
};

// Parses a serialized ModelProto. Throws std::runtime_error naming `file` on malformed
// input (a truncated field, a length past the end, an unknown wire type).
SentencePieceSpec parse_sentencepiece_spec(std::string_view proto, const std::string& file);

}  // namespace kvroute
