#pragma once
// MPI's lifetime for the process (init on construction, finalize on destruction), and the one
// path that stops every rank when one of them cannot go on.
#include <string>

namespace lowsync {

class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Ends every rank with `code` (MPI_Abort); for errors that not all ranks saw.
  [[noreturn]] void abort(int code) const;

 private:
  int rank_ = 0, size_ = 1;
};

}  // namespace lowsync
