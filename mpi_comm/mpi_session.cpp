#include "mpi_comm/mpi_session.h"

#include <mpi.h>

#include <cstdlib>

namespace lowsync {

MpiSession::MpiSession(int* argc, char*** argv) {
  // MPI_THREAD_MULTIPLE: memory.pool: peer sends and receives layers on threads of their own
  // (mpi_comm/pool_link.h), which refuses the job when a lower level is granted; nothing else
  // calls MPI off the main thread.
  int granted = MPI_THREAD_SINGLE;
  MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &granted);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiSession::~MpiSession() { MPI_Finalize(); }

void MpiSession::abort(int code) const {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace lowsync
