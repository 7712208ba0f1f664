// Shard directories (shard_dir.h): the manifest.
#include "kvroute/shard_dir.h"

#include <yaml-cpp/yaml.h>

#include <charconv>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "kvroute/input_file.h"
#include "kvroute/tokenizer.h"

namespace kvroute {

namespace fs = std::filesystem;

namespace {
constexpr const char* kManifestFormat = "kvroute-shards-1";

uint64_t parse_hex(const std::string& s, const std::string& where) {
  std::size_t used = 0;
  uint64_t v = 0;
  try {
    v = std::stoull(s, &used, 16);
  } catch (const std::exception&) {
    used = 0;
  }
  if (s.empty() || used != s.size()) throw std::runtime_error(where + ": '" + s + "' is not a hexadecimal number");
  return v;
}
}  // namespace

std::vector<ShardEntry> ShardDirInfo::split(const std::string& name) const {
  std::vector<ShardEntry> out;
  for (const ShardEntry& e : shards)
    if (e.split == name) out.push_back(e);
  return out;
}

uint64_t ShardDirInfo::tokens(const std::string& split_name) const {
  uint64_t n = 0;
  for (const ShardEntry& e : shards)
    if (e.split == split_name) n += e.tokens;
  return n;
}

std::string ShardDirInfo::tokenizer_spec() const {
  const fs::path t = fs::path(dir) / "tokenizer";
  if (fs::exists(t / "tokenizer.model") || fs::exists(t / "tokenizer.json")) return t.string();
  return tokenizer_identity == "byte" ? "byte" : "";
}

void write_manifest(const ShardDirInfo& info) {
  YAML::Emitter y;
  y << YAML::BeginMap;
  y << YAML::Key << "format" << YAML::Value << kManifestFormat;
  y << YAML::Key << "tokenizer" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "identity" << YAML::Value << info.tokenizer_identity;
  y << YAML::Key << "fingerprint" << YAML::Value << fingerprint_hex(info.tokenizer_fingerprint);
  y << YAML::Key << "vocab_size" << YAML::Value << info.vocab_size;
  y << YAML::EndMap;
  y << YAML::Key << "documents" << YAML::Value << info.document_rule;
  char fraction[32];
  const auto end = std::to_chars(fraction, fraction + sizeof fraction, info.val_fraction).ptr;  // shortest exact form
  y << YAML::Key << "val_fraction" << YAML::Value << std::string(fraction, end);
  y << YAML::Key << "inputs" << YAML::Value << info.inputs;
  y << YAML::Key << "tokens" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "train" << YAML::Value
    << info.tokens("train") << YAML::Key << "val" << YAML::Value << info.tokens("val") << YAML::EndMap;
  y << YAML::Key << "shards" << YAML::Value << YAML::BeginSeq;
  for (const ShardEntry& e : info.shards) {
    y << YAML::Flow << YAML::BeginMap;
    y << YAML::Key << "file" << YAML::Value << fs::path(e.path).filename().string();
    y << YAML::Key << "split" << YAML::Value << e.split;
    y << YAML::Key << "tokens" << YAML::Value << e.tokens;
    y << YAML::Key << "documents" << YAML::Value << e.documents;
    y << YAML::Key << "checksum" << YAML::Value << fingerprint_hex(e.checksum);
    y << YAML::EndMap;
  }
  y << YAML::EndSeq << YAML::EndMap;
  const fs::path path = fs::path(info.dir) / "manifest.yaml";
  std::ofstream out(path);
  out << "# Token shards written by `kvroute data encode` (see include/kvroute/shard_dir.h).\n" << y.c_str() << "\n";
  if (!out.flush()) throw std::runtime_error("cannot write '" + path.string() + "'");
}

ShardDirInfo read_shard_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) throw std::runtime_error("data.shards '" + dir + "': no such directory");
  if (!fs::is_directory(dir, ec)) throw std::runtime_error("data.shards '" + dir + "': not a directory");
  const fs::path path = fs::path(dir) / "manifest.yaml";
  const std::string where = "shard manifest '" + path.string() + "'";
  if (!fs::exists(path, ec))
    throw std::runtime_error("data.shards '" + dir +
                             "': no manifest.yaml (not a directory written by `kvroute data "
                             "encode`, or the encode did not finish)");
  ShardDirInfo info;
  info.dir = dir;
  require_regular_file(path.string(), where);
  try {
    const YAML::Node root = YAML::LoadFile(path.string());
    if (!root["format"] || root["format"].as<std::string>() != kManifestFormat)
      throw std::runtime_error("format is not " + std::string(kManifestFormat));
    const YAML::Node t = root["tokenizer"];
    if (!t) throw std::runtime_error("no tokenizer entry");
    info.tokenizer_identity = t["identity"].as<std::string>();
    info.tokenizer_fingerprint = parse_hex(t["fingerprint"].as<std::string>(), "tokenizer.fingerprint");
    info.vocab_size = t["vocab_size"].as<uint32_t>();
    info.document_rule = root["documents"].as<std::string>();
    info.val_fraction = root["val_fraction"].as<double>();
    for (const auto& n : root["inputs"]) info.inputs.push_back(n.as<std::string>());
    if (!root["shards"] || !root["shards"].IsSequence()) throw std::runtime_error("no shards list");
    for (const auto& n : root["shards"]) {
      ShardEntry e;
      const std::string file = n["file"].as<std::string>();
      if (file.empty() || file.find('/') != std::string::npos)
        throw std::runtime_error("shard file name '" + file + "' must be a plain file name");
      e.path = (fs::path(dir) / file).string();
      e.split = n["split"].as<std::string>();
      if (e.split != "train" && e.split != "val")
        throw std::runtime_error("shard '" + file + "' has split '" + e.split + "' (train or val)");
      e.tokens = n["tokens"].as<uint64_t>();
      e.documents = n["documents"].as<uint64_t>();
      e.checksum = parse_hex(n["checksum"].as<std::string>(), "checksum of " + file);
      info.shards.push_back(std::move(e));
    }
  } catch (const YAML::Exception& e) {
    throw std::runtime_error(where + ": malformed (" + std::string(e.what()) + ")");
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(where + ": " + e.what());
  }
  return info;
}

}  // namespace kvroute
