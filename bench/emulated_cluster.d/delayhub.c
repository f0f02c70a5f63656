// delayhub: a userspace L2 switch with a fixed one-way delay, for emulating latency between network
// namespaces when the kernel has no sch_netem. Forwards raw frames between AF_PACKET sockets bound to
// the given interfaces (MAC learning, flood on unknown), holding every frame DELAY_US microseconds.
// PACKET_VNET_HDR carries GSO/checksum-offload metadata through unchanged, so veth offloads can stay on.
// usage: delayhub DELAY_US IFACE1 IFACE2 [IFACE...]   (run inside the namespace that owns the interfaces)
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXP 16
#define VH sizeof(struct virtio_net_hdr)
#define BUFSZ (VH + 65536 + 64)
struct pkt { struct pkt* next; uint64_t due; int len, in, out; unsigned char d[]; };
static struct pkt *head, *tail;
static int fds[MAXP], np;
static struct { unsigned char mac[6]; int port; } macs[256];
static int nmac;
static volatile sig_atomic_t stop;
static uint64_t fwd, dropped;

static uint64_t now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000ull + t.tv_nsec; }
static int lookup(const unsigned char* m) { for (int i = 0; i < nmac; i++) if (!memcmp(macs[i].mac, m, 6)) return macs[i].port; return -1; }
static void learn(const unsigned char* m, int port) {
  if (m[0] & 1) return;
  for (int i = 0; i < nmac; i++) if (!memcmp(macs[i].mac, m, 6)) { macs[i].port = port; return; }
  if (nmac < 256) { memcpy(macs[nmac].mac, m, 6); macs[nmac++].port = port; }
}
static void on_sig(int s) { (void)s; stop = 1; }

int main(int argc, char** argv) {
  if (argc < 4) { fprintf(stderr, "usage: %s DELAY_US IFACE1 IFACE2 [IFACE...]\n", argv[0]); return 2; }
  uint64_t delay = strtoull(argv[1], 0, 10) * 1000ull;
  prctl(PR_SET_TIMERSLACK, 1UL);
  signal(SIGINT, on_sig); signal(SIGTERM, on_sig);
  struct pollfd pf[MAXP];
  for (int i = 2; i < argc && np < MAXP; i++, np++) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
    if (fd < 0) { perror("socket"); return 1; }
    int one = 1;
    if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one)) { perror("PACKET_VNET_HDR"); return 1; }
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    int sz = 8 << 20; setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz); setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    struct sockaddr_ll sl = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)if_nametoindex(argv[i])};
    if (!sl.sll_ifindex || bind(fd, (struct sockaddr*)&sl, sizeof sl)) { perror(argv[i]); return 1; }
    struct packet_mreq mr = {.mr_ifindex = sl.sll_ifindex, .mr_type = PACKET_MR_PROMISC};
    setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr);
    fds[np] = fd; pf[np].fd = fd; pf[np].events = POLLIN;
  }
  fprintf(stderr, "delayhub: %d ports, one-way delay %llu us\n", np, (unsigned long long)(delay / 1000));
  unsigned char* buf = malloc(BUFSZ);
  while (!stop) {
    uint64_t t = now_ns();
    while (head && head->due <= t) {                   // constant delay => FIFO order == due order
      struct pkt* p = head; head = p->next; if (!head) tail = NULL;
      for (int o = 0; o < np; o++) {
        if (o == p->in || (p->out >= 0 && o != p->out)) continue;
        if (send(fds[o], p->d, p->len, MSG_DONTWAIT) < 0) dropped++; else fwd++;
      }
      free(p);
    }
    struct timespec ts = {0, 100000000};
    if (head) { uint64_t w = head->due > t ? head->due - t : 0; ts.tv_sec = w / 1000000000ull; ts.tv_nsec = w % 1000000000ull; }
    int r = ppoll(pf, np, &ts, NULL);
    if (r <= 0) continue;
    for (int i = 0; i < np; i++) {
      if (!(pf[i].revents & POLLIN)) continue;
      for (;;) {
        struct sockaddr_ll from; socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fds[i], buf, BUFSZ, 0, (struct sockaddr*)&from, &fl);
        if (n < 0) break;
        if (from.sll_pkttype == PACKET_OUTGOING || n < (ssize_t)(VH + 14)) continue;
        struct pkt* p = malloc(sizeof *p + n);
        if (!p) { dropped++; continue; }
        memcpy(p->d, buf, n); p->len = (int)n; p->in = i; p->next = NULL;
        p->due = now_ns() + delay;
        const unsigned char* eth = buf + VH;
        learn(eth + 6, i);
        p->out = (eth[0] & 1) ? -1 : lookup(eth);
        if (tail) tail->next = p; else head = p;
        tail = p;
      }
    }
  }
  fprintf(stderr, "delayhub: forwarded %llu, send errors %llu\n", (unsigned long long)fwd, (unsigned long long)dropped);
  return 0;
}
