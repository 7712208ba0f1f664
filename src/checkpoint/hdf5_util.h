// Thin RAII over HDF5's C API for the checkpoint code. Handles close
// themselves; a failed call throws H5Failure carrying HDF5's innermost error
// message (e.g. "File too large", "truncated file"), never printing to stderr.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvroute::h5 {

class H5Failure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Turns off HDF5's automatic error printing (once per process). HDF5's exit handler is
// disabled when kvroute_core loads (see hdf5_util.cpp): close files explicitly.
void silence_errors();

// The innermost messages of the current HDF5 error stack, most specific first.
std::string error_text();

// Throws H5Failure("<what>: <error_text()>") when rc < 0; returns rc otherwise.
int64_t check(int64_t rc, const std::string& what);

// An owned hid_t closed with the matching H5*close function.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer close, const std::string& what) : id_(static_cast<hid_t>(check(id, what))), close_(close) {}
  ~Handle() { reset(); }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_, close_ = o.close_, o.id_ = -1;
    }
    return *this;
  }
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }
  // Closes now and reports failure (a close can be where buffered data hits the disk).
  void close(const std::string& what);

 private:
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
  }
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

bool has_attr(hid_t obj, const char* name);
void write_attr(hid_t obj, const char* name, const std::string& value);
void write_attr(hid_t obj, const char* name, int64_t value);
void write_attr(hid_t obj, const char* name, double value);
std::string read_string_attr(hid_t obj, const char* name);
int64_t read_int_attr(hid_t obj, const char* name);
double read_double_attr(hid_t obj, const char* name);

// Every dataset under `group` (recursively), as paths relative to it, sorted.
std::vector<std::string> list_datasets(hid_t group);

}  // namespace kvroute::h5
