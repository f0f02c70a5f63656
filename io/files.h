#pragma once
// Opening the files a job names (model weights, config.json, the prompts, the job YAML) only when
// they are regular files. A FIFO in their place blocks the open or the read forever, on every rank;
// a directory or a device reads as an error deep inside a parser, or never ends (/dev/zero). Each
// is refused up front with one line naming the file, what it is and what was expected.
#include <string>

namespace lowsync {

// Throws a UserError unless `path` (after symlinks) is a regular file. `what` says what the file
// is for, e.g. "the model's config.json".
void require_regular_file(const std::string& path, const std::string& what);

// Opens a regular file read-only and returns its descriptor. Safe for a FIFO: it is opened without
// blocking and refused, so there is no window in which a FIFO swapped in after the check hangs us.
int open_regular_file(const std::string& path, const std::string& what);

// The whole of a (small) regular text file, e.g. a config.json.
std::string read_regular_file(const std::string& path, const std::string& what);

}  // namespace lowsync
