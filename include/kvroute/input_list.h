// Inputs of `kvroute data tokenizer | encode` given as a file that lists them (--input-list):
// a corpus of thousands of documents, one per file, is too long for a command line to record.
#pragma once

#include <string>
#include <vector>

namespace kvroute {

// The paths listed in list_file, one per line, in order (for inputs too many for a command line:
// `--input-list FILE`). Blank lines are skipped; a relative path is taken as given (relative to the
// working directory, like --input). Throws naming the file when it cannot be read or lists nothing.
std::vector<std::string> read_input_list(const std::string& list_file);

}  // namespace kvroute
