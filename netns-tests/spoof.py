#!/usr/bin/env python3
"""Spoofed TCP segments and a keep-alive HTTP client, for netns-tests/t/25-spoof.sh.

Two commands, python3 standard library only:

  spoof.py send PACKET...
      Build each PACKET (an IPv4 header and a 20-byte TCP header, both
      checksums computed here) and send it with a raw socket (IPPROTO_RAW,
      so IP_HDRINCL: the source address and port are whatever PACKET says).
      PACKET is "SRC_IP:SPORT>DST_IP:DPORT/FLAGS/SEQ/ACK[/WINDOW]"; FLAGS is
      a word of S, A, R, F, P (e.g. "S", "R", "A", "RA", "PA"); SEQ and ACK
      are integers taken modulo 2**32 (ACK is ignored without A). The
      packets go out in order, back to back, from the namespace it runs in.

  spoof.py client --vip IP --port N --conns K --dir DIR [--iface eth0] [--wait S]
      Open K TCP connections to IP:N and make one HTTP/1.1 request on each
      ("GET /", read the whole response), while an AF_PACKET socket on
      IFACE records every segment of those connections. Then write
      DIR/conns.json: one object per connection, {"lport", "c_end", "s_end",
      "first"} (c_end: one past the last sequence number the client sent,
      SYN and FIN counting one; s_end: the same for the server's side, as
      seen at the client; first: the body of the first answer). Then wait
      (WAIT seconds at most, default 120) for the file DIR/go, make a second
      request on each of the same sockets (5 s for all of them), and write
      DIR/result.json: one object per connection, {"lport", "ok", "body" or
      "error"}. Exit status 0 when every second request was answered.
"""

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003  # outgoing frames reach only ETH_P_ALL taps
ETH_P_IP = 0x0800
TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}


def checksum(data):
    """The Internet checksum (RFC 1071) of DATA."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def build(src, sport, dst, dport, flags, seq, ack, window=65535, ident=0x5151):
    """An IPv4+TCP segment without payload, both checksums filled."""
    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    bits = 0
    for f in flags:
        bits |= TCP_FLAGS[f]
    ack = ack if bits & TCP_FLAGS["A"] else 0
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq % 2**32, ack % 2**32, 5 << 4, bits, window, 0, 0)
    pseudo = saddr + daddr + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident, 0x4000, 64, socket.IPPROTO_TCP, 0, saddr, daddr)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp


def parse_endpoint(s):
    host, port = s.rsplit(":", 1)
    socket.inet_aton(host)
    return host, int(port)


def parse_packet(spec):
    """"SRC:SPORT>DST:DPORT/FLAGS/SEQ/ACK[/WINDOW]" -> build() arguments."""
    ends, *rest = spec.split("/")
    if len(rest) not in (3, 4):
        raise ValueError("want SRC:SPORT>DST:DPORT/FLAGS/SEQ/ACK[/WINDOW]: %r" % spec)
    a, b = ends.split(">")
    (src, sport), (dst, dport) = parse_endpoint(a), parse_endpoint(b)
    flags = rest[0].upper()
    if not flags or any(f not in TCP_FLAGS for f in flags):
        raise ValueError("flags must be letters of SARFP: %r" % spec)
    window = int(rest[3]) if len(rest) == 4 else 65535
    return dict(src=src, sport=sport, dst=dst, dport=dport, flags=flags,
                seq=int(rest[1]), ack=int(rest[2]), window=window)


def cmd_send(args):
    pkts = [parse_packet(p) for p in args.packet]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        for p in pkts:
            s.sendto(build(**p), (p["dst"], 0))
            print("sent %s:%d > %s:%d flags %s seq %d ack %d win %d" % (
                p["src"], p["sport"], p["dst"], p["dport"], p["flags"],
                p["seq"] % 2**32, p["ack"] % 2**32 if "A" in p["flags"] else 0, p["window"]))
    return 0


def after(a, b):
    """A is after B in sequence space."""
    return a != b and (a - b) % 2**32 < 2**31


def request(sock, host):
    sock.sendall(("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode())


def read_response(sock, deadline):
    """Read one HTTP response (Content-Length framed); return its body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += recv_some(sock, deadline)
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 200"):
        raise RuntimeError("status line %r" % lines[0])
    length = None
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    if length is None:
        raise RuntimeError("no Content-Length")
    while len(body) < length:
        body += recv_some(sock, deadline)
    return body[:length].decode("latin-1")


def recv_some(sock, deadline):
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no complete response in time")
    sock.settimeout(left)
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("connection closed by the peer")
    return data


def sniff(psock, vip, port, lports, ends):
    """Drain PSOCK; advance ENDS[lport] = [c_end, s_end] for our segments."""
    while True:
        r, _, _ = select.select([psock], [], [], 0)
        if not r:
            return
        pkt, addr = psock.recvfrom(65536)
        if addr[1] != ETH_P_IP or len(pkt) < 40 or pkt[0] >> 4 != 4 or pkt[9] != socket.IPPROTO_TCP:
            continue
        ihl = (pkt[0] & 15) * 4
        total = struct.unpack("!H", pkt[2:4])[0]
        src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
        sport, dport, seq = struct.unpack("!HHI", pkt[ihl:ihl + 8])
        doff = (pkt[ihl + 12] >> 4) * 4
        flags = pkt[ihl + 13]
        end = (seq + total - ihl - doff + (1 if flags & 0x02 else 0) + (1 if flags & 0x01 else 0)) % 2**32
        if dst == vip and dport == port and sport in lports:
            side, lport = 0, sport
        elif src == vip and sport == port and dport in lports:
            side, lport = 1, dport
        else:
            continue
        cur = ends[lport][side]
        if cur is None or after(end, cur):
            ends[lport][side] = end


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.write("\n")
    os.rename(tmp, path)


def cmd_client(args):
    os.makedirs(args.dir, exist_ok=True)
    psock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    psock.bind((args.iface, 0))
    socks = []
    for _ in range(args.conns):
        s = socket.create_connection((args.vip, args.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    lports = {s.getsockname()[1] for s in socks}
    ends = {p: [None, None] for p in lports}
    first = []
    for s in socks:
        request(s, args.vip)
        first.append(read_response(s, time.monotonic() + 10))
    # Let the last ACKs go out and be captured, then read what was captured.
    time.sleep(0.3)
    sniff(psock, args.vip, args.port, lports, ends)
    psock.close()
    conns = []
    for s, body in zip(socks, first):
        p = s.getsockname()[1]
        c_end, s_end = ends[p]
        if c_end is None or s_end is None:
            raise RuntimeError("no segment of port %d captured on %s" % (p, args.iface))
        conns.append({"lport": p, "c_end": c_end, "s_end": s_end, "first": body})
    write_json(os.path.join(args.dir, "conns.json"), conns)
    print("connections: %s" % json.dumps(conns), flush=True)

    go = os.path.join(args.dir, "go")
    deadline = time.monotonic() + args.wait
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            print("no %s within %d s" % (go, args.wait), file=sys.stderr)
            return 2
        time.sleep(0.1)
    # Every request first, then every answer: one 5 s budget for all.
    results = []
    for s in socks:
        try:
            request(s, args.vip)
            results.append(None)
        except OSError as e:
            results.append("send: %s: %s" % (type(e).__name__, e))
    deadline = time.monotonic() + 5
    out = []
    for s, err in zip(socks, results):
        p = s.getsockname()[1]
        if err is None:
            try:
                out.append({"lport": p, "ok": True, "body": read_response(s, deadline).strip()})
                continue
            except (OSError, RuntimeError, ValueError) as e:
                err = "%s: %s" % (type(e).__name__, e)
        out.append({"lport": p, "ok": False, "error": err})
    write_json(os.path.join(args.dir, "result.json"), out)
    print("second requests: %s" % json.dumps(out), flush=True)
    for s in socks:
        s.close()
    return 0 if all(r["ok"] for r in out) else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("send", help="send hand-built TCP segments from a raw socket")
    p.add_argument("packet", nargs="+", help="SRC:SPORT>DST:DPORT/FLAGS/SEQ/ACK[/WINDOW]")
    p = sub.add_parser("client", help="keep-alive HTTP connections, their sequence numbers")
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--conns", type=int, default=3)
    p.add_argument("--dir", required=True)
    p.add_argument("--iface", default="eth0")
    p.add_argument("--wait", type=int, default=120)
    args = ap.parse_args()
    return cmd_send(args) if args.cmd == "send" else cmd_client(args)


if __name__ == "__main__":
    sys.exit(main())
