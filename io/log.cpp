#include "io/log.h"

#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace lowsync::log {

namespace {

bool g_root = true, g_quiet = false;
bool g_tty = false;           // stdout is a terminal: progress is updated in place
bool g_progress_open = false;  // a progress line without its newline is on the terminal

// Ends an in-place progress line before anything else is printed, so nothing lands inside it.
void close_progress() {
  if (!g_progress_open) return;
  std::fputc('\n', stdout);
  std::fflush(stdout);
  g_progress_open = false;
}

void vline(std::FILE* to, const char* fmt, va_list args) {
  close_progress();
  std::fprintf(to, "%s ", timestamp().c_str());
  std::vfprintf(to, fmt, args);
  std::fputc('\n', to);
  std::fflush(to);
}

}  // namespace

void init(bool root, bool quiet) {
  g_root = root;
  g_quiet = quiet;
  // Open MPI gives every rank's stdout a pseudo-terminal, whatever mpirun's own stdout is (a log
  // file, say): under mpirun a terminal cannot be told from a file, so progress goes line by line.
  const bool under_mpirun = std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK");
  g_tty = isatty(STDOUT_FILENO) == 1 && !under_mpirun;
}

bool quiet() { return g_quiet; }
bool printing() { return g_root && !g_quiet; }

std::string timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

void info(const char* fmt, ...) {
  if (!printing()) return;
  va_list args;
  va_start(args, fmt);
  vline(stdout, fmt, args);
  va_end(args);
}

void summary(const char* fmt, ...) {
  if (!g_root) return;
  va_list args;
  va_start(args, fmt);
  vline(stdout, fmt, args);
  va_end(args);
}

void summary_block(const std::string& text) {
  if (!g_root) return;
  close_progress();
  std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
}

void notice(const char* fmt, ...) {
  if (!g_root) return;
  std::fflush(stdout);
  va_list args;
  va_start(args, fmt);
  vline(stderr, fmt, args);
  va_end(args);
}

void error(const std::string& message) {
  close_progress();
  std::fprintf(stderr, "lowsync: error: %s\n", message.c_str());
  std::fflush(stderr);
}

void progress(const char* fmt, ...) {
  if (!printing()) return;
  va_list args;
  va_start(args, fmt);
  if (g_tty) {
    // \033[K clears what a longer previous line left at the end.
    std::fprintf(stdout, "\r%s ", timestamp().c_str());
    std::vfprintf(stdout, fmt, args);
    std::fputs("\033[K", stdout);
    std::fflush(stdout);
    g_progress_open = true;
  } else {
    vline(stdout, fmt, args);
  }
  va_end(args);
}

}  // namespace lowsync::log
