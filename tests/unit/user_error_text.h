#pragma once
// What a refused call says: the UserError's one line, or "(no error)" when it was not refused.
#include <functional>
#include <string>

#include "io/error.h"

namespace lowsync {

inline std::string refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace lowsync
