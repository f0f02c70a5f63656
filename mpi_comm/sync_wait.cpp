#include "mpi_comm/sync_wait.h"

namespace lowsync {

const char* sync_wait_name(SyncWait w) {
  switch (w) {
    case SyncWait::Spin: return "spin";
    case SyncWait::Sleep: return "sleep";
    case SyncWait::Auto: return "auto";
  }
  return "?";
}

bool parse_sync_wait(const std::string& s, SyncWait& out) {
  for (SyncWait w : {SyncWait::Spin, SyncWait::Sleep, SyncWait::Auto})
    if (s == sync_wait_name(w)) {
      out = w;
      return true;
    }
  return false;
}

}  // namespace lowsync
