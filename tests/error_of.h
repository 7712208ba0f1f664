// The message of the exception f() throws, or "" when it throws none: for tests that check
// what an error says.
#pragma once

#include <exception>
#include <string>

namespace kvroute::testing_errors {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace kvroute::testing_errors
