// afpfwd: a minimal static-NAT forwarder on AF_PACKET, independent of
// tunlb's code, rebuilt from issue 13's description of the prototype it
// quotes ("TPACKET ring for receive, sendmmsg for transmit, L2 rewrite, the
// kernel kept from forwarding the same frames"; a TPACKET_V2 frame ring, as
// the issue found V3 blocks cost milliseconds at light load). It is the
// reference `bench/e2e.sh --configs ...,afpfwd` runs beside pktfwd (tunlb's
// own packet sockets, no engine) and `--io packet`, so the floor of the
// design itself is measured in the same rounds. Not part of tunlb.
//
// One thread; two rings (client side, backend side), frames of 68 KiB so
// that super-packets pass whole (PACKET_VNET_HDR: offloads stay on);
// frames rewritten in place in the ring and sent with one sendmmsg per
// interface per batch, then handed back; poll() when both rings are dry
// (no busy polling). Static NAT, as examples/pktfwd.rs: CLIENT:p -> VIP:80
// becomes VIP:p -> BACKEND[p/2 % n]:80 (other ports: the first backend),
// BACKEND:q -> VIP:p becomes VIP:q -> CLIENT:p; TTL decremented; IPv4 and
// TCP checksums updated incrementally (RFC 1624; a partial checksum moved
// by the address change only). MACs are given: bench/reference/afpfwd.sh
// looks them up.
//
// usage: afpfwd IF_CLIENT IF_BACKENDS CLIENT CLIENT_MAC VIP B1 MAC1 [B2 MAC2 ...]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define FRAME (68 * 1024)
#define NFRAMES 256
#define BATCH 64
// Frames held (being sent, or skipped) before they go back to the kernel.
#define HELD (2 * BATCH)
#define VNET sizeof(struct virtio_net_hdr)

struct ring {
  int fd;
  uint8_t *map;
  unsigned next;
  uint8_t mac[6];
  int ifindex;
};

static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }

static void die(const char *m) { perror(m); exit(1); }

static void parse_mac(const char *s, uint8_t *m) {
  unsigned v[6];
  if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) {
    fprintf(stderr, "bad mac %s\n", s);
    exit(2);
  }
  for (int i = 0; i < 6; i++) m[i] = v[i];
}

static void open_ring(struct ring *r, const char *ifname, uint32_t vip) {
  r->fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  if (r->fd < 0) die("socket");
  int v = TPACKET_V2;
  if (setsockopt(r->fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v)) die("version");
  v = 1;
  if (setsockopt(r->fd, SOL_PACKET, PACKET_VNET_HDR, &v, sizeof v)) die("vnet");
  if (setsockopt(r->fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &v, sizeof v)) die("ignore out");
  // Only IPv4 TCP to the VIP (IHL 5).
  struct sock_filter prog[] = {
      {0x28, 0, 0, 12},          // ldh [12]
      {0x15, 0, 5, 0x0800},      // jeq ip
      {0x30, 0, 0, 23},          // ldb [23]
      {0x15, 0, 3, 6},           // jeq tcp
      {0x20, 0, 0, 30},          // ld [30]
      {0x15, 0, 1, ntohl(vip)},  // jeq vip
      {0x06, 0, 0, 0x40000},     // ret all
      {0x06, 0, 0, 0},           // ret 0
  };
  struct sock_fprog fp = {sizeof prog / sizeof prog[0], prog};
  if (setsockopt(r->fd, SOL_SOCKET, SO_ATTACH_FILTER, &fp, sizeof fp)) die("filter");
  struct tpacket_req req = {FRAME, NFRAMES, FRAME, NFRAMES};
  if (setsockopt(r->fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req)) die("ring");
  r->map = mmap(0, (size_t)FRAME * NFRAMES, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
  if (r->map == MAP_FAILED) die("mmap");
  r->ifindex = if_nametoindex(ifname);
  if (!r->ifindex) die("ifindex");
  struct ifreq ifr = {0};
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  if (ioctl(r->fd, SIOCGIFHWADDR, &ifr)) die("hwaddr");
  memcpy(r->mac, ifr.ifr_hwaddr.sa_data, 6);
  struct sockaddr_ll sll = {0};
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_ALL);
  sll.sll_ifindex = r->ifindex;
  if (bind(r->fd, (struct sockaddr *)&sll, sizeof sll)) die("bind");
}

static inline uint16_t fold(uint32_t s) {
  s = (s & 0xffff) + (s >> 16);
  s = (s & 0xffff) + (s >> 16);
  return s;
}

// RFC 1624 eqn. 3: the checksum `c` after a 32-bit field changes from `old`
// to `new` (the field's big-endian value read as a number, as `c` is).
static inline uint16_t upd_full(uint16_t c, uint32_t old, uint32_t new) {
  uint32_t s = (uint16_t)~c;
  s += (uint16_t)~(old >> 16) + (uint16_t)~(old & 0xffff);
  s += (new >> 16) + (new & 0xffff);
  return ~fold(s);
}
// The same for a partial checksum (CHECKSUM_PARTIAL: the field holds the
// uncomplemented pseudo-header sum).
static inline uint16_t upd_partial(uint16_t c, uint32_t old, uint32_t new) {
  uint32_t s = c;
  s += (uint16_t)~(old >> 16) + (uint16_t)~(old & 0xffff);
  s += (new >> 16) + (new & 0xffff);
  return fold(s);
}

int main(int argc, char **argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: afpfwd IF_CLIENT IF_BACKENDS CLIENT CLIENT_MAC VIP B1 MAC1 ...\n");
    return 2;
  }
  uint32_t client = inet_addr(argv[3]), vip = inet_addr(argv[5]);
  uint8_t client_mac[6];
  parse_mac(argv[4], client_mac);
  int nb = (argc - 6) / 2;
  if (nb < 1 || nb > 16) {
    fprintf(stderr, "afpfwd: 1 to 16 backends\n");
    return 2;
  }
  uint32_t back[16];
  uint8_t back_mac[16][6];
  for (int i = 0; i < nb; i++) {
    back[i] = inet_addr(argv[6 + 2 * i]);
    parse_mac(argv[7 + 2 * i], back_mac[i]);
  }
  struct ring rings[2];
  open_ring(&rings[0], argv[1], vip);
  open_ring(&rings[1], argv[2], vip);
  signal(SIGTERM, on_term);
  signal(SIGINT, on_term);
  fprintf(stderr, "afpfwd ready\n");
  struct mmsghdr msgs[2][BATCH];
  struct iovec iov[2][BATCH];
  struct tpacket2_hdr *held[HELD];
  unsigned long pkts = 0, sends = 0, polls = 0;
  int first = 0;
  while (!stop) {
    int n[2] = {0, 0}, nheld = 0;
    // The rings take turns at going first, so neither starves the other.
    first ^= 1;
    for (int k = 0; k < 2; k++) {
      struct ring *r = &rings[(first + k) % 2];
      for (;;) {
        if (nheld == HELD) goto flush;
        struct tpacket2_hdr *h = (void *)(r->map + (size_t)r->next * FRAME);
        if (!(__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) break;
        r->next = (r->next + 1) % NFRAMES;
        held[nheld++] = h;
        uint8_t *eth = (uint8_t *)h + h->tp_mac;
        uint8_t *vh = eth - VNET;
        struct virtio_net_hdr *vn = (void *)vh;
        uint8_t *ip = eth + 14;
        unsigned len = h->tp_snaplen;
        if (len < 14 + 40 || h->tp_len != h->tp_snaplen || ip[0] != 0x45 || ip[9] != 6) continue;
        uint8_t *tcp = ip + 20;
        uint32_t src, dst, nsrc, ndst;
        memcpy(&src, ip + 12, 4);
        memcpy(&dst, ip + 16, 4);
        if (dst != vip) continue;
        int out;
        const uint8_t *mac;
        if (src == client) {
          uint16_t sport = (tcp[0] << 8) | tcp[1], dport = (tcp[2] << 8) | tcp[3];
          int b = dport == 80 ? (sport >> 1) % nb : 0;
          nsrc = vip, ndst = back[b], mac = back_mac[b], out = 1;
        } else {
          int b = -1;
          for (int i = 0; i < nb; i++)
            if (back[i] == src) b = i;
          if (b < 0) continue;
          nsrc = vip, ndst = client, mac = client_mac, out = 0;
        }
        memcpy(ip + 12, &nsrc, 4);
        memcpy(ip + 16, &ndst, 4);
        uint16_t ic = (ip[10] << 8) | ip[11];
        uint16_t tc = (tcp[16] << 8) | tcp[17];
        uint32_t s_h = ntohl(src), d_h = ntohl(dst), ns_h = ntohl(nsrc), nd_h = ntohl(ndst);
        ic = upd_full(ic, s_h, ns_h);
        ic = upd_full(ic, d_h, nd_h);
        // ttl - 1
        uint16_t oldw = (ip[8] << 8) | ip[9];
        ip[8]--;
        uint16_t neww = (ip[8] << 8) | ip[9];
        {
          uint32_t s = (uint16_t)~ic;
          s += (uint16_t)~oldw + neww;
          ic = ~fold(s);
        }
        if (vn->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
          tc = upd_partial(tc, s_h, ns_h);
          tc = upd_partial(tc, d_h, nd_h);
        } else {
          tc = upd_full(tc, s_h, ns_h);
          tc = upd_full(tc, d_h, nd_h);
        }
        vn->flags &= ~VIRTIO_NET_HDR_F_DATA_VALID;
        ip[10] = ic >> 8, ip[11] = ic;
        tcp[16] = tc >> 8, tcp[17] = tc;
        memcpy(eth, mac, 6);
        memcpy(eth + 6, rings[out].mac, 6);
        struct iovec *v = &iov[out][n[out]];
        v->iov_base = vh;
        v->iov_len = VNET + len;
        memset(&msgs[out][n[out]], 0, sizeof msgs[out][0]);
        msgs[out][n[out]].msg_hdr.msg_iov = v;
        msgs[out][n[out]].msg_hdr.msg_iovlen = 1;
        n[out]++;
        if (n[out] == BATCH) goto flush;
      }
    }
  flush:
    for (int o = 0; o < 2; o++) {
      int at = 0;
      while (at < n[o]) {
        int k = sendmmsg(rings[o].fd, msgs[o] + at, n[o] - at, MSG_DONTWAIT);
        sends++;
        at += k > 0 ? k : 1;
      }
    }
    pkts += nheld;
    for (int i = 0; i < nheld; i++) __atomic_store_n(&held[i]->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
    if (nheld == 0) {
      struct pollfd p[2] = {{rings[0].fd, POLLIN, 0}, {rings[1].fd, POLLIN, 0}};
      polls++;
      poll(p, 2, 100);
    }
  }
  fprintf(stderr, "afpfwd: %lu packets, %lu sendmmsg, %lu polls\n", pkts, sends, polls);
  return 0;
}
