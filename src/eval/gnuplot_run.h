// Running gnuplot on a script in a folder, for the plots that eval and train write.
#pragma once

#include <filesystem>
#include <string>

namespace kvroute {

// s single-quoted for gnuplot (only ' needs doubling).
std::string gnuplot_string(const std::string& s);
// Runs `gnuplot SCRIPT` in dir (its output in dir/gnuplot.log, removed on success); returns
// dir/PNG when gnuplot is there and wrote it, else "" (gnuplot is optional).
std::string run_gnuplot(const std::filesystem::path& dir, const std::string& script, const std::string& png);

}  // namespace kvroute
