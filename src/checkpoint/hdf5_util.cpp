#include "checkpoint/hdf5_util.h"

#include <algorithm>
#include <mutex>

namespace kvroute::h5 {

namespace {
// HDF5 1.10 crashes in its exit handler (H5F__close_cb) when a file whose flush failed (full
// disk) is still registered. Every checkpoint file is closed explicitly, so the library's
// cleanup at exit is not needed; this runs before main, before HDF5 initialises.
const bool kNoExitHandler = (H5dont_atexit(), true);
}  // namespace

void silence_errors() {
  (void)kNoExitHandler;
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

namespace {

struct Messages {
  std::vector<std::string> lines;
};

herr_t collect(unsigned, const H5E_error2_t* err, void* data) {
  auto* m = static_cast<Messages*>(data);
  std::string line;
  if (char* minor = H5Eget_minor(err->min_num)) {
    line = minor;
    H5free_memory(minor);
  }
  if (err->desc && *err->desc) {
    // The system error text ("error message = 'File too large'") is the useful part of low-level messages.
    std::string desc = err->desc;
    const std::string key = "error message = '";
    if (auto at = desc.find(key); at != std::string::npos) {
      auto end = desc.find('\'', at + key.size());
      desc = desc.substr(at + key.size(), end == std::string::npos ? std::string::npos : end - at - key.size());
    }
    line += line.empty() ? desc : ": " + desc;
  }
  if (!line.empty()) m->lines.push_back(line);
  return 0;
}

}  // namespace

std::string error_text() {
  Messages m;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect, &m);  // upward: innermost first
  H5Eclear2(H5E_DEFAULT);
  std::string text;
  for (std::size_t i = 0; i < m.lines.size() && i < 2; ++i) text += (i ? "; " : "") + m.lines[i];
  return text.empty() ? "HDF5 call failed" : text;
}

int64_t check(int64_t rc, const std::string& what) {
  if (rc < 0) throw H5Failure(what + ": " + error_text());
  return rc;
}

void Handle::close(const std::string& what) {
  if (id_ < 0) return;
  const herr_t rc = close_(id_);
  id_ = -1;
  check(rc, what);
}

bool has_attr(hid_t obj, const char* name) { return check(H5Aexists(obj, name), std::string("attribute ") + name) > 0; }

void write_attr(hid_t obj, const char* name, const std::string& value) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose, "string type");
  check(H5Tset_size(type, std::max<std::size_t>(1, value.size())), "string type");
  check(H5Tset_strpad(type, H5T_STR_NULLPAD), "string type");
  Handle space(H5Screate(H5S_SCALAR), H5Sclose, "dataspace");
  Handle attr(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
              std::string("creating attribute ") + name);
  const std::string padded = value.empty() ? std::string(1, '\0') : value;
  check(H5Awrite(attr, type, padded.data()), std::string("writing attribute ") + name);
}

void write_attr(hid_t obj, const char* name, int64_t value) {
  Handle space(H5Screate(H5S_SCALAR), H5Sclose, "dataspace");
  Handle attr(H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
              std::string("creating attribute ") + name);
  check(H5Awrite(attr, H5T_NATIVE_INT64, &value), std::string("writing attribute ") + name);
}

void write_attr(hid_t obj, const char* name, double value) {
  Handle space(H5Screate(H5S_SCALAR), H5Sclose, "dataspace");
  Handle attr(H5Acreate2(obj, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
              std::string("creating attribute ") + name);
  check(H5Awrite(attr, H5T_NATIVE_DOUBLE, &value), std::string("writing attribute ") + name);
}

namespace {
Handle open_attr(hid_t obj, const char* name) {
  if (!has_attr(obj, name)) throw H5Failure(std::string("attribute '") + name + "' is missing");
  return Handle(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose, std::string("opening attribute ") + name);
}
}  // namespace

std::string read_string_attr(hid_t obj, const char* name) {
  Handle attr = open_attr(obj, name);
  Handle type(H5Aget_type(attr), H5Tclose, "attribute type");
  if (H5Tget_class(type) != H5T_STRING) throw H5Failure(std::string("attribute '") + name + "' is not a string");
  if (H5Tis_variable_str(type) > 0) {
    char* ptr = nullptr;
    Handle mem(H5Tcopy(H5T_C_S1), H5Tclose, "string type");
    check(H5Tset_size(mem, H5T_VARIABLE), "string type");
    check(H5Aread(attr, mem, &ptr), std::string("reading attribute ") + name);
    std::string value = ptr ? ptr : "";
    H5free_memory(ptr);
    return value;
  }
  std::string value(H5Tget_size(type), '\0');
  check(H5Aread(attr, type, value.data()), std::string("reading attribute ") + name);
  value.erase(std::find(value.begin(), value.end(), '\0'), value.end());
  return value;
}

int64_t read_int_attr(hid_t obj, const char* name) {
  Handle attr = open_attr(obj, name);
  int64_t value = 0;
  check(H5Aread(attr, H5T_NATIVE_INT64, &value), std::string("reading attribute ") + name);
  return value;
}

double read_double_attr(hid_t obj, const char* name) {
  Handle attr = open_attr(obj, name);
  double value = 0;
  check(H5Aread(attr, H5T_NATIVE_DOUBLE, &value), std::string("reading attribute ") + name);
  return value;
}

std::vector<std::string> list_datasets(hid_t group) {
  std::vector<std::string> names;
  auto visit = [](hid_t, const char* name, const H5O_info_t* info, void* data) -> herr_t {
    if (info->type == H5O_TYPE_DATASET) static_cast<std::vector<std::string>*>(data)->emplace_back(name);
    return 0;
  };
  check(H5Ovisit2(group, H5_INDEX_NAME, H5_ITER_INC, visit, &names, H5O_INFO_BASIC), "listing datasets");
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace kvroute::h5
