/* duty_cycle PERCENT PERIOD_US PID: lets process PID run PERCENT of every PERIOD_US microseconds
 * (SIGCONT, then SIGSTOP for the rest of the period) until PID exits. tests/slow_rank.sh uses it
 * to make an MPI rank a slower processor at the time scale of a layer (see there for why a CPU
 * quota does not). It sleeps on absolute deadlines with real-time priority and 1 ns timer slack,
 * where allowed, so that the phases stay on time on a busy host. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>

static void advance(struct timespec* t, long ns) {
  t->tv_nsec += ns;
  while (t->tv_nsec >= 1000000000L) {
    t->tv_nsec -= 1000000000L;
    t->tv_sec++;
  }
}

/* Sends `sig`; false when the process is gone. */
static int signal_alive(pid_t pid, int sig) { return kill(pid, sig) == 0 || errno != ESRCH; }

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: duty_cycle PERCENT PERIOD_US PID\n");
    return 2;
  }
  const long percent = atol(argv[1]), period_ns = atol(argv[2]) * 1000L;
  const pid_t pid = (pid_t)atol(argv[3]);
  if (percent < 1 || percent > 100 || period_ns < 10000 || pid <= 0) {
    fprintf(stderr, "duty_cycle: expected PERCENT in 1..100, PERIOD_US >= 10 and a PID; got %s %s %s\n", argv[1], argv[2],
            argv[3]);
    return 2;
  }
  const long on_ns = period_ns * percent / 100, off_ns = period_ns - on_ns;
  prctl(PR_SET_TIMERSLACK, 1UL);
  struct sched_param rt = {.sched_priority = 20};
  sched_setscheduler(0, SCHED_FIFO, &rt); /* best effort: without it the phases only stretch */
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  for (;;) {
    if (!signal_alive(pid, SIGCONT)) return 0;
    advance(&t, on_ns);
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
    if (off_ns == 0) continue;
    if (!signal_alive(pid, SIGSTOP)) return 0;
    advance(&t, off_ns);
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
  }
}
