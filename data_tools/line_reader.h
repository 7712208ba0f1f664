// Reading text a line at a time without holding an unbounded line: a file of one 2 GB line
// (or a sparse file of NULs) is read in parts of a bounded size, never whole.
#pragma once

#include <cstddef>
#include <istream>
#include <string>

namespace kvroute {

struct LinePart {
  std::size_t bytes = 0;  // appended to the string (the newline not included)
  bool newline = false;   // the line ended with '\n' (consumed)
  bool end = false;       // the stream ended (nothing more after these bytes)
};

// Appends at most max_bytes of the current line to `out`, stopping after a newline.
// A part with neither newline nor end set is a line longer than max_bytes so far: call
// again for the rest.
inline LinePart read_line_part(std::istream& in, std::string& out, std::size_t max_bytes) {
  LinePart p;
  std::streambuf* sb = in.rdbuf();
  while (p.bytes < max_bytes) {
    const int c = sb->sbumpc();
    if (c == std::char_traits<char>::eof()) {
      p.end = true;
      in.setstate(std::ios::eofbit);
      return p;
    }
    if (c == '\n') {
      p.newline = true;
      return p;
    }
    out.push_back(static_cast<char>(c));
    ++p.bytes;
  }
  return p;
}

}  // namespace kvroute
