// The checkpoint file format (layout in include/kvroute/checkpoint.h), over HDF5's C API.
#include "kvroute/checkpoint.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <tuple>
#include <map>

#include "checkpoint/checksum.h"
#include "checkpoint/durable_file.h"
#include "checkpoint/hdf5_util.h"
#include "kvroute/run_log.h"

namespace kvroute {

namespace fs = std::filesystem;
using h5::Handle;
using h5::check;

namespace {

constexpr const char* kFormat = "kvroute-checkpoint-2";
constexpr const char* kFormatWeightsOnly = "kvroute-checkpoint-1";  // older files: weights, no CRCs
constexpr const char* kRngDoc =
    "counter-based splitmix64 (kvroute/rng.h): init = f(seed, stream 1, element), "
    "routes = f(seed, stream 2, step, micro), data = f(seed, stream 3, step, micro, row); "
    "seed and step define every stream";

// Name order with digit runs compared as numbers: layers/2 before layers/10.
bool natural_less(const std::string& a, const std::string& b) {
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      std::size_t i2 = i, j2 = j;
      while (i2 < a.size() && std::isdigit(static_cast<unsigned char>(a[i2]))) ++i2;
      while (j2 < b.size() && std::isdigit(static_cast<unsigned char>(b[j2]))) ++j2;
      const unsigned long x = std::stoul(a.substr(i, i2 - i)), y = std::stoul(b.substr(j, j2 - j));
      if (x != y) return x < y;
      i = i2, j = j2;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i, ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string free_space_note(const fs::path& dir) {
  struct statvfs st {};
  if (::statvfs(dir.empty() ? "." : dir.c_str(), &st) != 0) return "";
  return "; " + human_bytes(double(st.f_bavail) * st.f_frsize) + " free on its filesystem";
}

// ---------------------------------------------------------------- writing

void write_tensor(hid_t file, const std::string& name, const std::vector<int>& shape, const float* data,
                  std::size_t numel, hid_t lcpl) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose, "dataspace");
  Handle ds(H5Dcreate2(file, name.c_str(), H5T_IEEE_F32LE, space, lcpl, H5P_DEFAULT, H5P_DEFAULT), H5Dclose,
            "creating " + name);
  check(H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "writing " + name);
  h5::write_attr(ds, "crc32", static_cast<int64_t>(crc32_of(data, numel * sizeof(float))));
  ds.close("writing " + name);
}

void write_file(const std::string& tmp, const std::vector<ParamTensor>& tensors, const std::vector<float>& params,
                const Config& cfg, const TrainingState& state, const TokenizerIdentity& tokenizer) {
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, "file access list");
  // v1.8+ object headers and superblock carry checksums, so corrupted metadata is detected on read.
  check(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST), "file access list");
  check(H5Pset_file_locking(fapl, true, /*ignore_when_disabled=*/true), "file access list");
  Handle file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl), H5Fclose, "creating the file");
  h5::write_attr(file, "format", std::string(kFormat));
  h5::write_attr(file, "kvroute_version", std::string(KVROUTE_VERSION));
  h5::write_attr(file, "config", to_yaml(cfg));
  h5::write_attr(file, "step", static_cast<int64_t>(state.step));

  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose, "link creation list");
  check(H5Pset_create_intermediate_group(lcpl, 1), "link creation list");
  const bool with_moments = !state.adam_m.empty();
  for (const ParamTensor& t : tensors) {
    write_tensor(file, "/model/" + t.name, t.shape, params.data() + t.offset, t.numel, lcpl);
    if (!with_moments) continue;
    write_tensor(file, "/optimizer/m/" + t.name, t.shape, state.adam_m.data() + t.offset, t.numel, lcpl);
    write_tensor(file, "/optimizer/v/" + t.name, t.shape, state.adam_v.data() + t.offset, t.numel, lcpl);
  }
  if (with_moments) {
    Handle opt(H5Gopen2(file, "/optimizer", H5P_DEFAULT), H5Gclose, "opening /optimizer");
    h5::write_attr(opt, "adam_step", static_cast<int64_t>(state.adam_step));
  }
  {
    Handle ts(H5Gcreate2(file, "/train_state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose, "creating /train_state");
    h5::write_attr(ts, "step", static_cast<int64_t>(state.step));
    h5::write_attr(ts, "skipped_steps", static_cast<int64_t>(state.skipped_steps));
    h5::write_attr(ts, "last_lr", state.last_lr);
    h5::write_attr(ts, "seed", static_cast<int64_t>(state.seed));
    h5::write_attr(ts, "rng", std::string(kRngDoc));
  }
  {
    Handle dl(H5Gcreate2(file, "/data_loader", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose, "creating /data_loader");
    for (const auto& [key, value] : state.data_loader) h5::write_attr(dl, key.c_str(), value);
  }
  if (!tokenizer.name.empty()) {
    Handle tk(H5Gcreate2(file, "/tokenizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose, "creating /tokenizer");
    h5::write_attr(tk, "name", tokenizer.name);
    h5::write_attr(tk, "vocab_size", static_cast<int64_t>(tokenizer.vocab_size));
    h5::write_attr(tk, "fingerprint", tokenizer.fingerprint);
  }
  check(H5Fflush(file, H5F_SCOPE_GLOBAL), "flushing");
  file.close("closing the file");
}

// ---------------------------------------------------------------- reading

bool link_exists(hid_t file, const char* path) { return check(H5Lexists(file, path, H5P_DEFAULT), path) > 0; }

std::vector<int64_t> dataset_shape(hid_t ds) {
  Handle space(H5Dget_space(ds), H5Sclose, "dataspace");
  const int rank = static_cast<int>(check(H5Sget_simple_extent_ndims(space), "dataspace rank"));
  std::vector<hsize_t> dims(rank);
  check(H5Sget_simple_extent_dims(space, dims.data(), nullptr), "dataspace dims");
  return std::vector<int64_t>(dims.begin(), dims.end());
}

[[noreturn]] void corrupted(const std::string& path, const std::string& what) {
  throw CheckpointError("checkpoint '" + path + "' is corrupted: " + what);
}

// Reads a float32 dataset of numel elements into out, checking its CRC (format 2).
void read_tensor(hid_t file, const std::string& path, const std::string& name, float* out, std::size_t numel,
                 bool verify_crc) {
  Handle ds(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose, "opening " + name);
  Handle type(H5Dget_type(ds), H5Tclose, "type of " + name);
  if (H5Tget_class(type) != H5T_FLOAT || H5Tget_size(type) != 4)
    throw CheckpointError("checkpoint '" + path + "': " + name + " is not float32");
  check(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out), "reading " + name);
  if (!verify_crc) return;
  if (!h5::has_attr(ds, "crc32")) corrupted(path, name + " has no crc32 attribute");
  const uint32_t stored = static_cast<uint32_t>(h5::read_int_attr(ds, "crc32"));
  const uint32_t actual = crc32_of(out, numel * sizeof(float));
  if (stored != actual) {
    char buf[96];
    std::snprintf(buf, sizeof buf, " fails its CRC-32 check (stored %08x, computed %08x)", stored, actual);
    corrupted(path, name + buf);
  }
}

Handle open_for_reading(const std::string& path) {
  h5::silence_errors();
  std::error_code ec;
  if (!fs::exists(path, ec)) throw CheckpointError("checkpoint '" + path + "' does not exist");
  if (!fs::is_regular_file(path, ec)) throw CheckpointError("checkpoint '" + path + "' is not a regular file");
  if (fs::file_size(path, ec) == 0) throw CheckpointError("checkpoint '" + path + "' is empty (0 bytes)");
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    throw CheckpointError("checkpoint '" + path + "' is not an HDF5 file (not a checkpoint, or its start is damaged)");
  }
  // Lock when the filesystem supports it; many cluster filesystems do not.
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, "file access list");
  check(H5Pset_file_locking(fapl, true, /*ignore_when_disabled=*/true), "file access list");
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl);
  if (id < 0) {
    const std::string why = h5::error_text();
    if (why.find("truncated") != std::string::npos)
      throw CheckpointError("checkpoint '" + path + "' is truncated (shorter than its HDF5 header says: " +
                            "an interrupted write or copy?)");
    throw CheckpointError("cannot open checkpoint '" + path + "': " + why);
  }
  return Handle(id, H5Fclose, "opening " + path);
}

CheckpointInfo read_info(hid_t file, const std::string& path) {
  CheckpointInfo info;
  info.path = path;
  if (!h5::has_attr(file, "format")) throw CheckpointError("'" + path + "' is an HDF5 file but not a kvroute checkpoint");
  info.format = h5::read_string_attr(file, "format");
  if (info.format != kFormat && info.format != kFormatWeightsOnly)
    throw CheckpointError("'" + path + "' has checkpoint format '" + info.format + "'; this kvroute (" KVROUTE_VERSION
                          ") reads " + kFormat + " and " + kFormatWeightsOnly);
  info.version = h5::read_string_attr(file, "kvroute_version");
  info.config_yaml = h5::read_string_attr(file, "config");
  info.step = static_cast<long>(h5::read_int_attr(file, "step"));
  info.state.step = info.step;
  if (link_exists(file, "/train_state")) {
    Handle ts(H5Gopen2(file, "/train_state", H5P_DEFAULT), H5Gclose, "opening /train_state");
    info.state.skipped_steps = static_cast<long>(h5::read_int_attr(ts, "skipped_steps"));
    info.state.last_lr = h5::read_double_attr(ts, "last_lr");
    info.state.seed = static_cast<long>(h5::read_int_attr(ts, "seed"));
    if (h5::read_int_attr(ts, "step") != info.step)
      corrupted(path, "/train_state step " + std::to_string(h5::read_int_attr(ts, "step")) +
                          " differs from the file's step " + std::to_string(info.step));
  }
  if (link_exists(file, "/data_loader")) {
    Handle dl(H5Gopen2(file, "/data_loader", H5P_DEFAULT), H5Gclose, "opening /data_loader");
    std::vector<std::string> names;
    auto collect = [](hid_t, const char* name, const H5A_info_t*, void* data) -> herr_t {
      static_cast<std::vector<std::string>*>(data)->emplace_back(name);
      return 0;
    };
    check(H5Aiterate2(dl, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect, &names), "listing /data_loader");
    for (const std::string& n : names) info.state.data_loader.emplace_back(n, h5::read_int_attr(dl, n.c_str()));
  }
  if (link_exists(file, "/tokenizer")) {
    Handle tk(H5Gopen2(file, "/tokenizer", H5P_DEFAULT), H5Gclose, "opening /tokenizer");
    info.tokenizer.name = h5::read_string_attr(tk, "name");
    info.tokenizer.vocab_size = static_cast<int>(h5::read_int_attr(tk, "vocab_size"));
    info.tokenizer.fingerprint = h5::read_string_attr(tk, "fingerprint");
  }
  if (link_exists(file, "/optimizer")) {
    Handle opt(H5Gopen2(file, "/optimizer", H5P_DEFAULT), H5Gclose, "opening /optimizer");
    info.has_optimizer = true;
    info.state.adam_step = static_cast<long>(h5::read_int_attr(opt, "adam_step"));
  }
  if (!link_exists(file, "/model")) corrupted(path, "it has no /model group");
  Handle model(H5Gopen2(file, "/model", H5P_DEFAULT), H5Gclose, "opening /model");
  for (const std::string& name : h5::list_datasets(model)) {
    Handle ds(H5Dopen2(model, name.c_str(), H5P_DEFAULT), H5Dclose, "opening /model/" + name);
    info.tensors.push_back({name, dataset_shape(ds)});
  }
  std::sort(info.tensors.begin(), info.tensors.end(),
            [](const TensorInfo& x, const TensorInfo& y) { return natural_less(x.name, y.name); });
  return info;
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t CheckpointInfo::num_params() const {
  int64_t n = 0;
  for (const TensorInfo& t : tensors) n += t.numel();
  return n;
}

std::vector<std::string> model_shape_differences(const ModelConfig& a, const ModelConfig& b) {
  std::vector<std::string> out;
  auto cmp = [&](const char* key, auto x, auto y) {
    if (x != y) out.push_back(std::string("model.") + key + ": " + std::to_string(x) + " vs " + std::to_string(y));
  };
  cmp("vocab_size", a.vocab_size, b.vocab_size);
  cmp("d_model", a.d_model, b.d_model);
  cmp("n_layers", a.n_layers, b.n_layers);
  cmp("n_heads", a.n_heads, b.n_heads);
  cmp("n_kv_heads", a.n_kv_heads, b.n_kv_heads);
  cmp("d_ff", a.d_ff, b.d_ff);
  cmp("head_dim", resolved_head_dim(a), resolved_head_dim(b));
  auto cmp_bool = [&](const char* key, bool x, bool y) {
    if (x != y)
      out.push_back(std::string("model.") + key + ": " + (x ? "true" : "false") + " vs " + (y ? "true" : "false"));
  };
  cmp_bool("tie_embeddings", a.tie_embeddings, b.tie_embeddings);
  cmp_bool("qkv_bias", a.qkv_bias, b.qkv_bias);
  cmp_bool("qk_norm", a.qk_norm, b.qk_norm);
  return out;
}

void save_checkpoint(const std::string& path, const Model& model, const Config& cfg, const TrainingState& state,
                     const TokenizerIdentity& tokenizer) {
  save_checkpoint(path, model.tensors(), model.params_to_host(), cfg, state, tokenizer);
}

void save_checkpoint(const std::string& path, const std::vector<ParamTensor>& tensors, const std::vector<float>& params,
                     const Config& cfg, const TrainingState& state, const TokenizerIdentity& tokenizer) {
  h5::silence_errors();
  if (tensors.empty() || tensors.back().offset + tensors.back().numel != params.size())
    throw std::invalid_argument("save_checkpoint: " + std::to_string(params.size()) +
                                " parameter floats do not match the tensor layout");
  if (!state.adam_m.empty() && (state.adam_m.size() != params.size() || state.adam_v.size() != params.size()))
    throw std::invalid_argument("save_checkpoint: AdamW moments have " + std::to_string(state.adam_m.size()) +
                                " floats, the model " + std::to_string(params.size()));
  const fs::path dir = fs::path(path).parent_path();
  const std::string tmp = path + ".tmp";
  auto fail = [&](const std::string& why) {
    std::remove(tmp.c_str());
    std::error_code ec;
    // A missing folder is no full disk: say which folder.
    if (!fs::is_directory(dir.empty() ? fs::path(".") : dir, ec))
      throw CheckpointError("writing checkpoint '" + path + "' failed: its directory '" + dir.string() + "' " +
                            (fs::exists(dir, ec) ? "is not a directory" : "does not exist") + " (create it first)");
    throw CheckpointError("writing checkpoint '" + path + "' failed: " + why + free_space_note(dir) + " (disk full?). " +
                          (fs::exists(path, ec) ? "The existing '" + path + "' is untouched."
                                                : "Nothing was written under that name."));
  };
  try {
    write_file(tmp, tensors, params, cfg, state, tokenizer);
    fsync_file(tmp);
  } catch (const std::exception& e) {
    fail(e.what());
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("renaming the temporary file: " + std::string(std::strerror(errno)));
  try {
    fsync_directory(dir);
  } catch (const std::exception& e) {
    throw CheckpointError("checkpoint '" + path + "' was written but is not durable: " + e.what());
  }
}

void save_checkpoint(const std::string& path, const Model& model, const Config& cfg, long step) {
  TrainingState state;
  state.step = step;
  state.seed = cfg.train.seed;
  save_checkpoint(path, model, cfg, state, TokenizerIdentity{});
}

CheckpointInfo read_checkpoint_info(const std::string& path) {
  Handle file = open_for_reading(path);
  CheckpointInfo info;
  try {
    info = read_info(file, path);
  } catch (const h5::H5Failure& e) {
    corrupted(path, e.what());
  }
  try {
    apply_config_yaml(info.config, info.config_yaml, path + ":config");
  } catch (const ConfigError& e) {
    throw CheckpointError("checkpoint '" + path + "' has a config this kvroute cannot use: " + e.what());
  }
  return info;
}

CheckpointContents read_checkpoint(const std::string& path, const Model& model, bool with_optimizer) {
  return read_checkpoint(path, model.config(), model.tensors(), with_optimizer);
}

CheckpointContents read_checkpoint(const std::string& path, const ModelConfig& model_config,
                                   const std::vector<ParamTensor>& tensors, bool with_optimizer) {
  CheckpointContents c;
  c.info = read_checkpoint_info(path);
  const CheckpointInfo& info = c.info;
  if (auto diff = model_shape_differences(info.config.model, model_config); !diff.empty()) {
    std::string msg = "checkpoint '" + path + "' does not fit the model being built (checkpoint vs this config):";
    for (const std::string& d : diff) msg += "\n  " + d;
    throw CheckpointError(msg);
  }
  // The config agrees; the tensors must too (a file edited by hand, or by another tool).
  std::map<std::string, const TensorInfo*> in_file;
  for (const TensorInfo& t : info.tensors) in_file[t.name] = &t;
  for (const ParamTensor& t : tensors) {
    auto it = in_file.find(t.name);
    if (it == in_file.end()) throw CheckpointError("checkpoint '" + path + "' has no tensor /model/" + t.name);
    const std::vector<int64_t> want(t.shape.begin(), t.shape.end());
    if (it->second->shape != want)
      throw CheckpointError("checkpoint '" + path + "': /model/" + t.name + " is " + shape_text(it->second->shape) +
                            " but the model needs " + shape_text(want));
    in_file.erase(it);
  }
  if (!in_file.empty())
    throw CheckpointError("checkpoint '" + path + "' has tensor /model/" + in_file.begin()->first +
                          " that the model being built lacks");
  if (with_optimizer && !info.has_optimizer)
    throw CheckpointError("checkpoint '" + path + "' holds weights only (no AdamW state): it can be evaluated or used "
                          "as model.init_from, but not resumed");

  const bool crc = info.format == kFormat;
  c.state = info.state;
  const std::size_t n_params = (tensors.empty() ? 0 : tensors.back().offset + tensors.back().numel);
  c.params.resize(n_params);
  if (with_optimizer) {
    c.state.adam_m.resize(n_params);
    c.state.adam_v.resize(n_params);
  }
  Handle file = open_for_reading(path);
  try {
    for (const ParamTensor& t : tensors) {
      read_tensor(file, path, "/model/" + t.name, c.params.data() + t.offset, t.numel, crc);
      if (!with_optimizer) continue;
      read_tensor(file, path, "/optimizer/m/" + t.name, c.state.adam_m.data() + t.offset, t.numel, crc);
      read_tensor(file, path, "/optimizer/v/" + t.name, c.state.adam_v.data() + t.offset, t.numel, crc);
    }
  } catch (const h5::H5Failure& e) {
    corrupted(path, e.what());
  }
  return c;
}

void load_weights(const std::string& path, Model& model) {
  const CheckpointContents c = read_checkpoint(path, model, false);
  model.params_from_host(c.params);
}

std::string tokenizer_mismatch(const CheckpointInfo& info, const TokenizerIdentity& tokenizer) {
  const TokenizerIdentity& saved = info.tokenizer;
  if (saved.name.empty()) return "";  // an old checkpoint that does not record it
  const bool fingerprints_differ =
      !saved.fingerprint.empty() && !tokenizer.fingerprint.empty() && saved.fingerprint != tokenizer.fingerprint;
  if (saved.vocab_size == tokenizer.vocab_size && !fingerprints_differ) return "";
  return "checkpoint '" + info.path + "' was trained with tokenizer '" + saved.name + "' (" +
         std::to_string(saved.vocab_size) + " tokens" +
         (saved.fingerprint.empty() ? "" : ", fingerprint " + saved.fingerprint) + "), but this run's data uses '" +
         tokenizer.name + "' (" + std::to_string(tokenizer.vocab_size) + " tokens" +
         (tokenizer.fingerprint.empty() ? "" : ", fingerprint " + tokenizer.fingerprint) +
         "): token ids would change meaning";
}

}  // namespace kvroute
