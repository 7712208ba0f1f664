// A plain main() for a fuzz target, so the normal build (gcc, no libFuzzer) can replay inputs:
// every regular file under each directory given (recursively, in name order; dot files
// skipped, a missing directory is empty) goes through LLVMFuzzerTestOneInput once. A crash,
// an abort or a sanitizer report fails the ctest test; clean errors are caught in the target.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  long inputs = 0;
  for (int a = 1; a < argc; ++a) {
    const fs::path dir = argv[a];
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      std::printf("%s: no such directory, nothing to replay\n", argv[a]);
      continue;
    }
    std::vector<fs::path> files;
    for (const auto& e : fs::recursive_directory_iterator(dir))
      if (e.is_regular_file() && e.path().filename().string().front() != '.') files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      std::printf("replay %s (%zu bytes)\n", f.string().c_str(), bytes.size());
      std::fflush(stdout);  // so a crash's log names the input
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      ++inputs;
    }
  }
  std::printf("%ld inputs replayed\n", inputs);
  return 0;
}
