#pragma once
// What lowsync prints while it works. Rank 0 prints timestamped lines on stdout ("2026-11-24
// 10:22:03 lowsync: ..."), each flushed as it is written, so a batch log shows when things
// happened and a tail -f sees them at once; other ranks print only errors (on stderr, tagged with
// their rank, by whoever catches them). `--quiet` keeps only errors and the final summary.
// Error lines ("lowsync: error: ...") carry no timestamp: one line that starts with that prefix
// is what scripts and tests look for.
#include <string>

namespace lowsync::log {

// Called once, after MPI is up: whether this process prints, and --quiet.
void init(bool root, bool quiet);
bool quiet();
bool printing();  // rank 0 and not quiet

// A timestamped line on stdout (rank 0, not quiet). printf-style.
[[gnu::format(printf, 1, 2)]] void info(const char* fmt, ...);
// A timestamped line on stdout that --quiet keeps: the final summary.
[[gnu::format(printf, 1, 2)]] void summary(const char* fmt, ...);
// Text printed as it is (the run report's block), kept by --quiet, rank 0 only.
void summary_block(const std::string& text);
// A timestamped line on stderr that --quiet keeps (rank 0): how a stopped run ended.
[[gnu::format(printf, 1, 2)]] void notice(const char* fmt, ...);
// A progress line (rank 0, not quiet): on a terminal it replaces the previous one in place (\r);
// in a log file it is a line of its own.
[[gnu::format(printf, 1, 2)]] void progress(const char* fmt, ...);

// "lowsync: error: MESSAGE" on stderr, from whichever rank calls it (the caller decides: rank 0
// for agreed errors, the failing rank, tagged, for errors mid-job).
void error(const std::string& message);

// "2026-11-24 10:22:03": local time, to the second.
std::string timestamp();

}  // namespace lowsync::log
