#include "jobs/stop_signal.h"

#include <signal.h>
#include <unistd.h>

#include <cstring>

namespace lowsync {

namespace {

volatile sig_atomic_t g_signal = 0;         // the first stop signal
volatile sig_atomic_t g_writing = 0;        // rank 0 is writing a batch
volatile sig_atomic_t g_exit_pending = 0;   // a second signal came while writing
bool g_report = false;
char g_job[1024] = "JOB";  // the job path, for the line of a second signal (no allocation there)

void write_str(const char* s) {
  ssize_t ignored = ::write(STDERR_FILENO, s, std::strlen(s));
  (void)ignored;
}

const char* name_of(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: return "a signal";
  }
}

// Async-signal-safe: write(2) and _exit(2) only.
[[noreturn]] void stop_now(int sig) {
  if (g_report) {
    write_str("lowsync: stopped at once by a second ");
    write_str(name_of(sig));
    write_str("; rows done so far stay done; resume with: lowsync run ");
    write_str(g_job);
    write_str(" --resume\n");
  }
  _exit(128 + sig);
}

void on_signal(int sig) {
  if (g_signal == 0) {
    g_signal = sig;
    return;
  }
  if (g_writing) {
    g_exit_pending = sig;
    return;
  }
  stop_now(sig);
}

}  // namespace

void install_stop_handlers(bool report, const std::string& job_path) {
  g_report = report;
  std::strncpy(g_job, job_path.c_str(), sizeof g_job - 1);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // reads and writes (HDF5's, MPI's) go on as if nothing happened
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) sigaction(sig, &sa, nullptr);
}

int stop_signal() { return g_signal; }

std::string signal_name(int sig) {
  const char* n = name_of(sig);
  return std::strcmp(n, "a signal") == 0 ? "signal " + std::to_string(sig) : n;
}

WritingBatch::WritingBatch() { g_writing = 1; }

WritingBatch::~WritingBatch() {
  g_writing = 0;
  if (g_exit_pending) stop_now(g_exit_pending);
}

}  // namespace lowsync
