#pragma once
// Chrome trace-event recording (`trace: FILE`; open the file in Perfetto or chrome://tracing).
// Each rank records complete events (a name, a category, a start and a duration) on its own track;
// times count from one moment of rank 0's clock, every rank's clock offset to it estimated by
// ping-pongs at the start, so tracks line up across hosts to within a short round trip. Recording
// is off, and costs one branch per call, unless started.
#include <chrono>
#include <string>
#include <vector>

namespace lowsync {

class Communicator;

namespace trace {

// Collective over `world`: starts recording on every rank, all counting from the same moment.
void start(Communicator& world);
bool enabled();
double now_us();  // since the common start

// One finished span on this rank's track. `args` is a JSON object's members, e.g. "\"bytes\": 4096".
void complete(const char* category, const std::string& name, double start_us, double duration_us,
              const std::string& args = "");

// Collective: stops recording and gathers every rank's events to world rank 0, which writes the
// trace file (a rank is a process, "pid" = world rank). Returns the number of events written.
int64_t finish(Communicator& world, const std::string& path);

// A span from construction to destruction: `trace::Span s("compute", "decode step")`.
class Span {
 public:
  Span(const char* category, std::string name, std::string args = "")
      : category_(category), name_(std::move(name)), args_(std::move(args)), start_(enabled() ? now_us() : 0) {}
  ~Span() {
    if (enabled()) complete(category_, name_, start_, now_us() - start_, args_);
  }
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;

 private:
  const char* category_;
  std::string name_, args_;
  double start_;
};

}  // namespace trace
}  // namespace lowsync
