#include "mpi_comm/communicator.h"

#include <time.h>

#include <algorithm>
#include <utility>

#include "mpi_comm/trace.h"
#include "mpi_comm/watchdog.h"
#include "mpi_comm/wire_bytes.h"

namespace lowsync {

namespace {
// Counts one MPI call (and traces it, when a trace is recorded) for as long as it lives.
struct Timer {
  CommCounters& c;
  const std::string& group;
  const char* call;
  int64_t bytes;
  double t0 = MPI_Wtime();
  double trace_start = trace::enabled() ? trace::now_us() : 0;
  // sent: the message this rank hands to MPI; wire: what the algorithm sends (mpi_comm/wire_bytes.h).
  Timer(CommCounters& counters, int64_t sent, double wire, const std::string& group_name, const char* call_name)
      : c(counters), group(group_name), call(call_name), bytes(sent) {
    ++c.calls;
    c.bytes += bytes;
    c.wire_bytes += wire;
    watchdog::call_started(&group, call);
  }
  ~Timer() {
    watchdog::call_ended();
    c.seconds += MPI_Wtime() - t0;
    if (trace::enabled())
      trace::complete("comm", group + "." + call, trace_start, trace::now_us() - trace_start,
                      "\"bytes\": " + std::to_string(bytes));
  }
};
}  // namespace

Communicator::Communicator(MPI_Comm comm, std::string name) : comm_(comm), name_(std::move(name)) {
  owned_ = comm != MPI_COMM_WORLD && comm != MPI_COMM_SELF;
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

Communicator::~Communicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owned_ && comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
}

Communicator::Communicator(Communicator&& o) noexcept { *this = std::move(o); }

Communicator& Communicator::operator=(Communicator&& o) noexcept {
  std::swap(comm_, o.comm_);
  std::swap(name_, o.name_);
  std::swap(rank_, o.rank_);
  std::swap(size_, o.size_);
  std::swap(owned_, o.owned_);
  std::swap(counters_, o.counters_);
  std::swap(wait_, o.wait_);
  std::swap(sync_, o.sync_);
  return *this;
}

void Communicator::check(int err, const char* call) const {
  if (err == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(err, text, &len);
  throw MpiError("MPI " + std::string(call) + " failed in group '" + name_ + "' on rank " + std::to_string(rank_) +
                 ": " + std::string(text, len));
}

// A peer that arrives within this long is waited for by polling alone (a balanced TP step's ranks
// reach a sync within tens of microseconds of each other); then a poll every kSyncSleep.
constexpr double kSyncSpinSeconds = 50e-6;
constexpr long kSyncSleepNs = 20000;

void Communicator::wait_sleeping(MPI_Request& req, const char* call) {
  const double spin_until = MPI_Wtime() + kSyncSpinSeconds;
  int done = 0;
  check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), call);
  while (!done) {
    if (MPI_Wtime() > spin_until) {
      const timespec pause{0, kSyncSleepNs};
      nanosleep(&pause, nullptr);
    }
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), call);  // MPI moves the data only inside its calls
  }
}

void Communicator::all_reduce(float* data, int64_t n) {
  Timer t(counters_, n * 4, allreduce_wire_bytes(size_, n * 4), name_, "Allreduce");
  if (wait_ == SyncWait::Sleep) {
    MPI_Request req;
    check(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm_, &req), "Iallreduce");
    return wait_sleeping(req, "Iallreduce");
  }
  check(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm_), "Allreduce");
}

void Communicator::all_reduce(float* data, int64_t n, SyncDType dtype) {
  if (dtype == SyncDType::F32 || size_ == 1) return all_reduce(data, n);
  // Which way, what it hands over and what it sends: mpi_comm/wire_bytes.h.
  const CompressedAllReduce way = compressed_allreduce_algorithm(size_, n, dtype);
  Timer t(counters_, compressed_allreduce_message_bytes(size_, n, dtype),
          compressed_allreduce_wire_bytes(size_, n, dtype), name_,
          dtype == SyncDType::BF16 ? "Allreduce_bf16" : "Allreduce_q8");
  if (way == CompressedAllReduce::Gather)
    gather_and_sum(data, n, dtype);
  else
    reduce_scatter_and_gather(data, n, dtype);
}

// Every rank's encoded partial to every rank, each rank summing all of them, decoded, in fp32 in
// rank order: the same bytes and the same order on every rank, so identical sums.
void Communicator::gather_and_sum(float* data, int64_t n, SyncDType dtype) {
  const int64_t padded = sync_padded(dtype, n), bytes = encoded_bytes(dtype, padded);
  std::vector<float>& v = sync_.values;
  v.assign(static_cast<size_t>(padded), 0.f);
  std::copy(data, data + n, v.begin());
  sync_.recv.resize(static_cast<size_t>(bytes * size_));
  encode(dtype, v.data(), padded, sync_.recv.data() + rank_ * bytes);
  if ((size_ & (size_ - 1)) == 0) {
    // Recursive doubling: at step d this rank holds the partials of its aligned group of d ranks
    // and swaps them for the partner group's (rank ^ d): log2(P) rounds.
    for (int d = 1; d < size_; d *= 2) {
      const int partner = rank_ ^ d, mine = rank_ / d * d, theirs = partner / d * d;
      check(MPI_Sendrecv(sync_.recv.data() + mine * bytes, static_cast<int>(d * bytes), MPI_BYTE, partner, kSyncTag,
                         sync_.recv.data() + theirs * bytes, static_cast<int>(d * bytes), MPI_BYTE, partner, kSyncTag,
                         comm_, MPI_STATUS_IGNORE), "Sendrecv");
    }
  } else {
    check(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, sync_.recv.data(), static_cast<int>(bytes), MPI_BYTE, comm_),
          "Allgather");
  }
  std::fill(v.begin(), v.end(), 0.f);
  for (int r = 0; r < size_; ++r) decode_add(dtype, sync_.recv.data() + r * bytes, padded, v.data());
  std::copy(v.begin(), v.begin() + n, data);
}

// Rank r owns values [r chunk, (r + 1) chunk) of the zero-padded vector (a q8 block never
// straddles two chunks): an all-to-all of encoded chunks, this rank's chunk summed in fp32 in rank
// order, and the sums all-gathered as bf16, which every rank decodes alike.
void Communicator::reduce_scatter_and_gather(float* data, int64_t n, SyncDType dtype) {
  const int64_t chunk = compressed_chunk(size_, n, dtype);
  const int64_t chunk_bytes = encoded_bytes(dtype, chunk), sum_bytes = encoded_bytes(SyncDType::BF16, chunk);
  std::vector<float>& v = sync_.values;
  v.assign(static_cast<size_t>(chunk * size_), 0.f);
  std::copy(data, data + n, v.begin());
  sync_.send.resize(static_cast<size_t>(chunk_bytes * size_));
  sync_.recv.resize(static_cast<size_t>(chunk_bytes * size_));
  for (int r = 0; r < size_; ++r) encode(dtype, v.data() + r * chunk, chunk, sync_.send.data() + r * chunk_bytes);
  check(MPI_Alltoall(sync_.send.data(), static_cast<int>(chunk_bytes), MPI_BYTE, sync_.recv.data(),
                     static_cast<int>(chunk_bytes), MPI_BYTE, comm_), "Alltoall");
  float* sum = v.data() + rank_ * chunk;
  std::fill(sum, sum + chunk, 0.f);
  for (int r = 0; r < size_; ++r) decode_add(dtype, sync_.recv.data() + r * chunk_bytes, chunk, sum);
  encode(SyncDType::BF16, sum, chunk, sync_.send.data());
  sync_.recv.resize(static_cast<size_t>(sum_bytes * size_));
  check(MPI_Allgather(sync_.send.data(), static_cast<int>(sum_bytes), MPI_BYTE, sync_.recv.data(),
                      static_cast<int>(sum_bytes), MPI_BYTE, comm_), "Allgather");
  for (int r = 0; r < size_; ++r)
    decode(SyncDType::BF16, sync_.recv.data() + r * sum_bytes, chunk, v.data() + r * chunk);
  std::copy(v.begin(), v.begin() + n, data);
}

void Communicator::all_reduce(double* data, int64_t n) {
  Timer t(counters_, n * 8, allreduce_wire_bytes(size_, n * 8), name_, "Allreduce");
  check(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, comm_), "Allreduce");
}

void Communicator::all_reduce_max(int64_t* data, int64_t n) {
  Timer t(counters_, n * 8, allreduce_wire_bytes(size_, n * 8), name_, "Allreduce");
  check(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_INT64_T, MPI_MAX, comm_), "Allreduce");
}

void Communicator::all_gather(const float* send, int64_t n, float* recv) {
  Timer t(counters_, n * 4, allgather_wire_bytes(size_, n * 4), name_, "Allgather");
  if (wait_ == SyncWait::Sleep) {
    MPI_Request req;
    check(MPI_Iallgather(send, static_cast<int>(n), MPI_FLOAT, recv, static_cast<int>(n), MPI_FLOAT, comm_, &req),
          "Iallgather");
    return wait_sleeping(req, "Iallgather");
  }
  check(MPI_Allgather(send, static_cast<int>(n), MPI_FLOAT, recv, static_cast<int>(n), MPI_FLOAT, comm_), "Allgather");
}

void Communicator::all_gather(const double* send, int64_t n, double* recv) {
  Timer t(counters_, n * 8, allgather_wire_bytes(size_, n * 8), name_, "Allgather");
  if (wait_ == SyncWait::Sleep) {
    MPI_Request req;
    check(MPI_Iallgather(send, static_cast<int>(n), MPI_DOUBLE, recv, static_cast<int>(n), MPI_DOUBLE, comm_, &req),
          "Iallgather");
    return wait_sleeping(req, "Iallgather");
  }
  check(MPI_Allgather(send, static_cast<int>(n), MPI_DOUBLE, recv, static_cast<int>(n), MPI_DOUBLE, comm_), "Allgather");
}

void Communicator::all_gather(const float* send, const std::vector<int64_t>& counts, float* recv) {
  std::vector<int> count(size_), offset(size_);
  for (int r = 0, at = 0; r < size_; at += count[r], ++r) {
    count[r] = static_cast<int>(counts[r]);
    offset[r] = at;
  }
  const int64_t mine = counts[rank_] * 4;
  Timer t(counters_, mine, allgather_wire_bytes(size_, mine), name_, "Allgatherv");
  if (wait_ == SyncWait::Sleep) {
    MPI_Request req;
    check(MPI_Iallgatherv(send, count[rank_], MPI_FLOAT, recv, count.data(), offset.data(), MPI_FLOAT, comm_, &req),
          "Iallgatherv");
    return wait_sleeping(req, "Iallgatherv");
  }
  check(MPI_Allgatherv(send, count[rank_], MPI_FLOAT, recv, count.data(), offset.data(), MPI_FLOAT, comm_),
        "Allgatherv");
}

void Communicator::reduce_scatter(const float* send, float* recv, int64_t n_per_rank) {
  Timer t(counters_, n_per_rank * size_ * 4, reduce_scatter_wire_bytes(size_, n_per_rank * size_ * 4), name_,
          "Reduce_scatter_block");
  check(MPI_Reduce_scatter_block(send, recv, static_cast<int>(n_per_rank), MPI_FLOAT, MPI_SUM, comm_),
        "Reduce_scatter_block");
}

void Communicator::broadcast(void* data, int64_t bytes, int root) {
  Timer t(counters_, rank_ == root ? bytes : 0, broadcast_wire_bytes(size_, bytes), name_, "Bcast");
  check(MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, root, comm_), "Bcast");
}

void Communicator::barrier() {
  Timer t(counters_, 0, 0, name_, "Barrier");
  check(MPI_Barrier(comm_), "Barrier");
}

void Communicator::send(const void* data, int64_t bytes, int dest, int tag) {
  Timer t(counters_, bytes, double(bytes), name_, "Send");
  check(MPI_Send(data, static_cast<int>(bytes), MPI_BYTE, dest, tag, comm_), "Send");
}

void Communicator::recv(void* data, int64_t bytes, int source, int tag) {
  Timer t(counters_, 0, 0, name_, "Recv");
  check(MPI_Recv(data, static_cast<int>(bytes), MPI_BYTE, source, tag, comm_, MPI_STATUS_IGNORE), "Recv");
}

MPI_Request Communicator::isend(const void* data, int64_t bytes, int dest, int tag) {
  Timer t(counters_, bytes, double(bytes), name_, "Isend");
  MPI_Request req;
  check(MPI_Isend(data, static_cast<int>(bytes), MPI_BYTE, dest, tag, comm_, &req), "Isend");
  return req;
}

bool Communicator::test(MPI_Request& req) {
  int done = 0;
  check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "Test");
  return done != 0;
}

Communicator::Incoming Communicator::probe(bool block) {
  MPI_Status st;
  int flag = 1;
  if (block) {
    watchdog::call_started(&name_, "Probe");
    check(MPI_Probe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &st), "Probe");
    watchdog::call_ended();
  }
  else
    check(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, &st), "Iprobe");
  if (!flag) return {};
  int count = 0;
  check(MPI_Get_count(&st, MPI_BYTE, &count), "Get_count");
  return {st.MPI_SOURCE, st.MPI_TAG, count};
}

MPI_Request Communicator::iall_reduce(float* data, int64_t n) {
  // libnbc, not tuned, runs it; counted as tuned's choice (lowsync sends none in a pass today).
  Timer t(counters_, n * 4, allreduce_wire_bytes(size_, n * 4), name_, "Iallreduce");
  MPI_Request req;
  check(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm_, &req), "Iallreduce");
  return req;
}

void Communicator::wait(MPI_Request& req) {
  const double t0 = MPI_Wtime();
  const double trace_start = trace::enabled() ? trace::now_us() : 0;
  watchdog::call_started(&name_, "Wait");
  check(MPI_Wait(&req, MPI_STATUS_IGNORE), "Wait");
  watchdog::call_ended();
  counters_.seconds += MPI_Wtime() - t0;
  if (trace::enabled()) trace::complete("comm", name_ + ".Wait", trace_start, trace::now_us() - trace_start);
}

void Communicator::agree(const std::function<void()>& step) {
  std::string error;
  try {
    step();
  } catch (const std::exception& e) {
    error = e.what();
    if (error.empty()) error = "unknown error";
  }
  int64_t first_failed = error.empty() ? 0 : size_ - rank_;  // max over ranks = lowest failing rank
  all_reduce_max(&first_failed, 1);
  if (first_failed == 0) return;
  const int root = size_ - static_cast<int>(first_failed);
  int64_t len = static_cast<int64_t>(error.size());
  broadcast(&len, sizeof len, root);
  error.resize(len);
  broadcast(error.data(), len, root);
  throw AgreedError(error);
}

Communicator Communicator::split(int color, int key, const std::string& name) const {
  MPI_Comm out;
  check(MPI_Comm_split(comm_, color, key, &out), "Comm_split");
  return Communicator(out, name);
}

Communicator Communicator::split_by_host(const std::string& name) const {
  MPI_Comm out;
  check(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &out), "Comm_split_type");
  return Communicator(out, name);
}

void Communicator::all_gather_bytes(const void* send, int64_t bytes, void* recv) {
  Timer t(counters_, bytes, allgather_wire_bytes(size_, bytes), name_, "Allgather");
  check(MPI_Allgather(send, static_cast<int>(bytes), MPI_BYTE, recv, static_cast<int>(bytes), MPI_BYTE, comm_),
        "Allgather");
}

}  // namespace lowsync
