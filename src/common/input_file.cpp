// Reading files from elsewhere within kvroute's limits (input_file.h, input_limits.h).
#include "kvroute/input_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <stdexcept>
#include <vector>

#include "kvroute/input_limits.h"

namespace kvroute {

using json = nlohmann::json;

namespace {

std::string file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

std::string mib(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

}  // namespace

int open_regular_file(const std::string& path, const std::string& what) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(what + ": cannot open it (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw std::runtime_error(what + ": cannot read it (" + std::strerror(err) + ")");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(what + ": is " + file_kind(st.st_mode) + ", not a regular file");
  }
  // Regular files ignore O_NONBLOCK, but clear it so reads behave as usual.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

std::string read_input_file(const std::string& path, uint64_t max_bytes, const std::string& what) {
  const int fd = open_regular_file(path, what);
  struct stat st {};
  ::fstat(fd, &st);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > max_bytes) {
    ::close(fd);
    throw std::runtime_error(what + ": is " + std::to_string(size) + " bytes, over kvroute's limit of " +
                             mib(max_bytes) + " for this kind of file");
  }
  std::string out(size, '\0');
  std::size_t got = 0;
  while (got < size) {
    const ssize_t n = ::read(fd, out.data() + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      throw std::runtime_error(what + (n == 0 ? ": truncated while it was read (" + std::to_string(got) + " of " +
                                                    std::to_string(size) + " bytes)"
                                              : ": read failed (" + std::string(std::strerror(err)) + ")"));
    }
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return out;
}

void require_regular_file(const std::string& path, const std::string& what, bool missing_ok) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (missing_ok && errno == ENOENT) return;
    throw std::runtime_error(what + ": cannot open it (" + std::strerror(errno) + ")");
  }
  if (!S_ISREG(st.st_mode)) throw std::runtime_error(what + ": is " + file_kind(st.st_mode) + ", not a regular file");
}

json parse_input_json(std::string_view text, const std::string& what) {
  // Objects open at each depth, with the keys seen so far, to refuse duplicates.
  std::vector<std::set<std::string>> keys;
  const json::parser_callback_t check = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= limits::kJsonDepth)
          throw std::runtime_error(what + ": nested deeper than " + std::to_string(limits::kJsonDepth) +
                                   " levels (kvroute's limit, as Hugging Face's readers have)");
        if (event == json::parse_event_t::object_start) keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key: {
        const std::string& k = parsed.get_ref<const std::string&>();
        if (!keys.empty() && !keys.back().insert(k).second)
          throw std::runtime_error(what + ": key '" + k + "' appears twice in one object");
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), check);
  } catch (const json::exception& e) {
    throw std::runtime_error(what + ": not valid JSON (" + e.what() + ")");
  }
}

std::string json_for_message(const json& v) {
  if (v.is_primitive()) {
    std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
    return s.size() <= 80 ? s : s.substr(0, 77) + "...";
  }
  // Containers: shallow ones print, anything else is described.
  bool shallow = v.size() <= 16;
  for (const auto& e : v)
    if (!e.is_primitive()) shallow = false;
  if (shallow) {
    std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
    if (s.size() <= 80) return s;
  }
  return std::string(v.is_array() ? "a list" : "an object") + " of " + std::to_string(v.size()) + " entries";
}

}  // namespace kvroute
