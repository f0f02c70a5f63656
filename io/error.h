#pragma once
// One exception type for every user-facing error: its message is the single line rank 0 prints
// after "lowsync: error: ". Messages name the file, key or row and say what was expected.
#include <stdexcept>
#include <string>

namespace lowsync {

struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace lowsync
