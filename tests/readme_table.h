// README.md's tables, for the tests that check a registry (sharing strategies, routing
// schemes) against the table the README shows for it.
#pragma once

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "data_fixtures.h"

namespace kvroute::testing_readme {

// The body rows, as written, of the first table under the README heading that starts with
// `heading` whose header row starts with `header` (e.g. "| scheme |"); stops at the next heading.
inline std::vector<std::string> readme_table_rows(std::string_view heading, std::string_view header) {
  std::istringstream in(testing_data::read_file_bytes(std::string(KVROUTE_SOURCE_DIR) + "/README.md"));
  enum { kBefore, kSection, kTable } state = kBefore;
  std::vector<std::string> rows;
  for (std::string line; std::getline(in, line);) {
    if (state == kBefore) {
      if (line.starts_with(heading)) state = kSection;
    } else if (line.starts_with("#")) {
      break;
    } else if (state == kSection) {
      if (line.starts_with(header)) state = kTable;
    } else if (!line.starts_with("|")) {
      break;
    } else if (!line.starts_with("|---")) {
      rows.push_back(line);
    }
  }
  return rows;
}

// "| `name` | doc |": how a registry entry reads as a row of its README table.
inline std::string readme_row(std::string_view name, std::string_view doc) {
  return "| `" + std::string(name) + "` | " + std::string(doc) + " |";
}

// README's table under `heading` (whose header row starts with `header`) is exactly `rows`;
// on failure the message shows the table to paste into README.md.
inline void expect_readme_table(std::string_view heading, std::string_view header,
                                const std::vector<std::string>& rows) {
  std::string table;
  for (const std::string& r : rows) table += r + "\n";
  EXPECT_EQ(readme_table_rows(heading, header), rows)
      << "README.md's table under '" << heading << "' should read:\n" << table;
}

}  // namespace kvroute::testing_readme
