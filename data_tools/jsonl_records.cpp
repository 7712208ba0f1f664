// JSON Lines records (jsonl_records.h).
#include "jsonl_records.h"

#include <stdexcept>

#include "kvroute/input_file.h"
#include "kvroute/input_limits.h"
#include "line_reader.h"

namespace kvroute {

bool JsonlRecords::next(std::string& text) {
  while (true) {
    record_.clear();
    const LinePart part = read_line_part(in_, record_, limits::kJsonlRecordBytes);
    if (part.end && part.bytes == 0) return false;
    ++line_;
    bytes_ += part.bytes + (part.newline ? 1 : 0);
    const std::string where = "input '" + path_ + "' line " + std::to_string(line_);
    std::string why;
    if (!part.newline && !part.end) {
      // Too long to be held: skip the rest of the line too, or stop.
      why = "a record longer than kvroute's limit of " + std::to_string(limits::kJsonlRecordBytes >> 20) + " MiB";
      if (!format_.skip_bad_records) throw std::runtime_error(where + ": " + why);
      std::string rest;
      LinePart more;
      do {
        rest.clear();
        more = read_line_part(in_, rest, 1 << 20);
        bytes_ += more.bytes + (more.newline ? 1 : 0);
      } while (!more.newline && !more.end);
      ++skipped_;
      continue;
    }
    if (record_.find_first_not_of(" \t\r") == std::string::npos) continue;  // a blank line
    try {
      const nlohmann::json j = parse_input_json(record_, where);
      if (!j.is_object()) {
        why = "the record is " + json_for_message(j) + ", not a JSON object";
      } else {
        const auto it = j.find(format_.text_key);
        if (it == j.end())
          why = "the record has no key \"" + format_.text_key + "\" (--text-key)";
        else if (!it->is_string())
          why = "\"" + format_.text_key + "\" is " + json_for_message(*it) + ", not a string";
        else
          text = it->get<std::string>();
      }
    } catch (const std::runtime_error& e) {
      why = std::string(e.what()).substr(where.size() + 2);  // parse_input_json's message, without the prefix
    }
    if (why.empty()) return true;
    if (!format_.skip_bad_records) throw std::runtime_error(where + ": " + why + " (--skip-bad-records passes over it)");
    ++skipped_;
  }
}

}  // namespace kvroute
