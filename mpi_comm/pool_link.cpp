#include "mpi_comm/pool_link.h"

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "io/error.h"

namespace lowsync {

namespace {
constexpr int kAskTag = 1, kLayerTag = 2;

const char* thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    default: return "MPI_THREAD_MULTIPLE";
  }
}

// Until a message from `source` with `tag` is there (or `quit` is set: MPI_MESSAGE_NULL): a probe,
// then a short sleep, so that the waiting thread leaves the core to the rank's compute.
MPI_Message wait_for(MPI_Comm comm, int source, int tag, MPI_Status& st, int& err, const std::atomic<bool>* quit = nullptr) {
  MPI_Message msg = MPI_MESSAGE_NULL;
  for (int found = 0; !found;) {
    if (quit && quit->load()) return MPI_MESSAGE_NULL;
    err = MPI_Improbe(source, tag, comm, &found, &msg, &st);
    if (err != MPI_SUCCESS) return msg;
    if (!found) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return msg;
}
}  // namespace

void PoolLink::require_thread_multiple() {
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  if (level < MPI_THREAD_MULTIPLE)
    throw UserError(std::string("memory.pool: peer serves layers from a thread beside the rank's own work, which needs "
                                "MPI_THREAD_MULTIPLE; this MPI granted ") +
                    thread_level_name(level) + "; use memory.pool: host, or an MPI built with thread support");
}

PoolLink::PoolLink(const Communicator& world) : comm_(world.split(0, world.rank(), "pool")) {}

void PoolLink::check(int err, const char* call) const {
  if (err == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(err, text, &len);
  throw MpiError("MPI " + std::string(call) + " failed in group 'pool' on rank " + std::to_string(comm_.rank()) + ": " +
                 std::string(text, len));
}

void PoolLink::ask(int holder, int32_t layer) {
  check(MPI_Send(&layer, 1, MPI_INT32_T, holder, kAskTag, comm_.raw()), "Send");
}

void PoolLink::receive(int holder, std::vector<std::byte>& into) {
  MPI_Status st;
  int err = MPI_SUCCESS;
  MPI_Message msg = wait_for(comm_.raw(), holder, kLayerTag, st, err);
  check(err, "Improbe");
  int count = 0;
  check(MPI_Get_count(&st, MPI_BYTE, &count), "Get_count");
  into.resize(count);
  check(MPI_Mrecv(into.data(), count, MPI_BYTE, &msg, MPI_STATUS_IGNORE), "Mrecv");
  received_ += count;
}

PoolLink::Request PoolLink::next_request(const std::atomic<bool>& quit) {
  MPI_Status st;
  int err = MPI_SUCCESS;
  MPI_Message msg = wait_for(comm_.raw(), MPI_ANY_SOURCE, kAskTag, st, err, &quit);
  check(err, "Improbe");
  Request r;
  if (msg == MPI_MESSAGE_NULL) return r;
  r.from = st.MPI_SOURCE;
  check(MPI_Mrecv(&r.layer, 1, MPI_INT32_T, &msg, MPI_STATUS_IGNORE), "Mrecv");
  return r;
}

void PoolLink::send(int to, const std::vector<std::byte>& bytes) {
  check(MPI_Send(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, to, kLayerTag, comm_.raw()), "Send");
  sent_ += static_cast<int64_t>(bytes.size());
}

}  // namespace lowsync
