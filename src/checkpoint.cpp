#include "kvroute/checkpoint.h"

#include <H5Cpp.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>

namespace kvroute {

namespace {

constexpr const char* kFormat = "kvroute-checkpoint-1";

void write_string_attr(H5::H5Object& obj, const char* name, const std::string& value) {
  H5::StrType type(H5::PredType::C_S1, value.empty() ? 1 : value.size());
  H5::Attribute attr = obj.createAttribute(name, type, H5::DataSpace(H5S_SCALAR));
  attr.write(type, value.empty() ? std::string(" ") : value);
}

std::string read_string_attr(const H5::H5Object& obj, const char* name) {
  H5::Attribute attr = obj.openAttribute(name);
  std::string value;
  attr.read(attr.getStrType(), value);
  return value;
}

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error("cannot reopen '" + path + "' to fsync it");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw std::runtime_error("fsync of '" + path + "' failed (disk full?)");
}

}  // namespace

void save_checkpoint(const std::string& path, const Model& model, const Config& cfg, long step) {
  const std::string tmp = path + ".tmp";
  const std::vector<float> host = model.params_to_host();
  try {
    H5::Exception::dontPrint();
    H5::H5File file(tmp, H5F_ACC_TRUNC);
    write_string_attr(file, "format", kFormat);
    write_string_attr(file, "kvroute_version", KVROUTE_VERSION);
    write_string_attr(file, "config", to_yaml(cfg));
    const long step_value = step;
    file.createAttribute("step", H5::PredType::NATIVE_LONG, H5::DataSpace(H5S_SCALAR))
        .write(H5::PredType::NATIVE_LONG, &step_value);
    H5::LinkCreatPropList lcpl;
    lcpl.setCreateIntermediateGroup(true);
    for (const ParamTensor& t : model.tensors()) {
      std::vector<hsize_t> dims(t.shape.begin(), t.shape.end());
      H5::DataSpace space(static_cast<int>(dims.size()), dims.data());
      H5::DataSet ds = file.createDataSet("/model/" + t.name, H5::PredType::IEEE_F32LE, space,
                                          H5::DSetCreatPropList::DEFAULT, H5::DSetAccPropList::DEFAULT, lcpl);
      ds.write(host.data() + t.offset, H5::PredType::NATIVE_FLOAT);
    }
    file.flush(H5F_SCOPE_GLOBAL);
    file.close();
    fsync_path(tmp);
  } catch (const H5::Exception& e) {
    std::remove(tmp.c_str());
    throw std::runtime_error("writing checkpoint '" + path + "' failed: " + e.getDetailMsg() +
                             " (the previous checkpoint is untouched)");
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw std::runtime_error("renaming '" + tmp + "' to '" + path + "' failed: " + ec.message());
}

CheckpointInfo read_checkpoint_info(const std::string& path) {
  if (!std::filesystem::exists(path)) throw std::runtime_error("checkpoint '" + path + "' does not exist");
  CheckpointInfo info;
  info.path = path;
  try {
    H5::Exception::dontPrint();
    H5::H5File file(path, H5F_ACC_RDONLY);
    if (!file.attrExists("format") || read_string_attr(file, "format") != kFormat)
      throw std::runtime_error("'" + path + "' is not a kvroute checkpoint");
    info.version = read_string_attr(file, "kvroute_version");
    info.config_yaml = read_string_attr(file, "config");
    file.openAttribute("step").read(H5::PredType::NATIVE_LONG, &info.step);
  } catch (const H5::Exception& e) {
    throw std::runtime_error("cannot read checkpoint '" + path + "': " + e.getDetailMsg() +
                             " (truncated or not an HDF5 file?)");
  }
  apply_config_yaml(info.config, info.config_yaml, path + ":config");
  return info;
}

void load_weights(const std::string& path, Model& model) {
  std::vector<float> host(model.num_params());
  try {
    H5::Exception::dontPrint();
    H5::H5File file(path, H5F_ACC_RDONLY);
    for (const ParamTensor& t : model.tensors()) {
      const std::string name = "/model/" + t.name;
      if (!file.nameExists(name))
        throw std::runtime_error("checkpoint '" + path + "' has no tensor " + name);
      H5::DataSet ds = file.openDataSet(name);
      H5::DataSpace space = ds.getSpace();
      std::vector<hsize_t> dims(space.getSimpleExtentNdims());
      space.getSimpleExtentDims(dims.data());
      if (dims.size() != t.shape.size() || !std::equal(dims.begin(), dims.end(), t.shape.begin()))
        throw std::runtime_error("checkpoint '" + path + "': tensor " + name + " has a different shape than the model");
      ds.read(host.data() + t.offset, H5::PredType::NATIVE_FLOAT);
    }
  } catch (const H5::Exception& e) {
    throw std::runtime_error("cannot read weights from '" + path + "': " + e.getDetailMsg());
  }
  model.params_from_host(host);
}

}  // namespace kvroute
