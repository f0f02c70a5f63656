#pragma once
#include <string>

namespace lowsync {
// `lowsync inspect MODEL_DIR`: architecture, sizes, parameter count and memory needed.
void inspect_model(const std::string& model_dir);
}  // namespace lowsync
