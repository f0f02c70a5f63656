// linkprobe: what a link between two emulated hosts gives a TCP connection, without ping or iperf.
//   linkprobe serve PORT                  (on one host; answers one client, then exits)
//   linkprobe probe ADDR PORT [MIB]       prints "rtt_us R one_way_us O bandwidth_mbit B"
// rtt: the median of 200 round trips of 8 bytes (TCP_NODELAY); bandwidth: MIB MiB (default 8)
// streamed one way, timed from the first byte sent to the server's one-byte acknowledgement.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static void die(const char* what) { perror(what); exit(1); }
static void full(int fd, char* b, size_t n, int rd) {
  while (n) {
    ssize_t k = rd ? read(fd, b, n) : write(fd, b, n);
    if (k <= 0) die(rd ? "read" : "write");
    b += k, n -= (size_t)k;
  }
}
static int cmp(const void* a, const void* b) { double x = *(const double*)a, y = *(const double*)b; return (x > y) - (x < y); }
enum { PINGS = 200 };

int main(int argc, char** argv) {
  if (argc < 3) { fprintf(stderr, "usage: linkprobe serve PORT | probe ADDR PORT [MIB]\n"); return 2; }
  int one = 1;
  static char buf[1 << 16];
  if (!strcmp(argv[1], "serve")) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2])), .sin_addr.s_addr = INADDR_ANY};
    if (bind(s, (struct sockaddr*)&a, sizeof a) || listen(s, 1)) die("bind");
    int c = accept(s, 0, 0);
    if (c < 0) die("accept");
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (int i = 0; i < PINGS; i++) { full(c, buf, 8, 1); full(c, buf, 8, 0); }
    long long total;
    full(c, (char*)&total, sizeof total, 1);
    while (total > 0) { ssize_t k = read(c, buf, sizeof buf); if (k <= 0) die("read"); total -= k; }
    full(c, buf, 1, 0);
    close(c);
    return 0;
  }
  if (argc < 4) return 2;
  long long total = (argc > 4 ? atoll(argv[4]) : 8) << 20;
  int c = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
  inet_pton(AF_INET, argv[2], &a.sin_addr);
  for (int tries = 0; connect(c, (struct sockaddr*)&a, sizeof a); tries++) {  // the server may still be starting
    if (tries > 50) die("connect");
    usleep(100000);
    close(c);
    c = socket(AF_INET, SOCK_STREAM, 0);
  }
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  double rtt[PINGS];
  for (int i = 0; i < PINGS; i++) {
    double t0 = now();
    full(c, buf, 8, 0);
    full(c, buf, 8, 1);
    rtt[i] = now() - t0;
  }
  qsort(rtt, PINGS, sizeof rtt[0], cmp);
  full(c, (char*)&total, sizeof total, 0);
  double t0 = now();
  for (long long left = total; left > 0; left -= sizeof buf) full(c, buf, left < (long long)sizeof buf ? (size_t)left : sizeof buf, 0);
  full(c, buf, 1, 1);
  double secs = now() - t0;
  printf("rtt_us %.1f one_way_us %.1f bandwidth_mbit %.1f\n", 1e6 * rtt[PINGS / 2], 0.5e6 * rtt[PINGS / 2],
         8e-6 * (double)total / secs);
  close(c);
  return 0;
}
