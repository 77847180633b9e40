#!/usr/bin/env python3
"""A tiny HTTP backend for tunlb's network-namespace topology.

Runs inside one backend namespace (started by scripts/lib.sh) and answers:

  GET  /                 its own name and a newline ("b1\n"); the body the
                         balancing tests count
  GET  /?delay=SECONDS   the same, after sleeping (at most 10 s), so that
                         many connections are open at once
  GET  /file/NAME        the file NAME from the data directory (e.g. big.bin);
                         ?bytes=N serves only its first N bytes, ?rate=R sends
                         at most R bytes per second (a slow download)
  POST /sha256           reads the body (Content-Length) and answers
                         "<sha256 hex> <name>\n", for upload integrity checks

With --bind6 ADDR it also listens on IPv6 (ADDR, e.g. "::"), on a second,
IPv6-only socket with the same answers: IPv4 connections stay on their own
AF_INET socket (so `ss` shows them with their IPv4 addresses, not mapped).

Every answer carries "X-Backend: <name>" and closes the connection
(HTTP/1.0), so each request is one TCP connection through the balancer.
With --keep-alive it speaks HTTP/1.1 and keeps each connection open for the
next request instead (as long as the client wants, no idle timeout).
"""

import argparse
import hashlib
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default listen backlog (5) drops SYNs under the concurrency test.
    request_queue_size = 1024


class Server6(Server):
    """The same server on an IPv6-only socket."""

    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


def make_handler(name, data_dir, keep_alive=False):
    body_name = (name + "\n").encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "tunlb-backend/1"
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

        def log_message(self, fmt, *args):  # quiet: one line per request is noise
            pass

        def _head(self, code, length, ctype="text/plain"):
            self.send_response(code)
            self.send_header("X-Backend", name)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(length))
            # Keep-alive mode still closes when the request asked to
            # (parse_request set close_connection from its headers).
            close = not keep_alive or self.close_connection
            self.send_header("Connection", "close" if close else "keep-alive")
            self.end_headers()

        def _text(self, code, text):
            data = text.encode()
            self._head(code, len(data))
            self.wfile.write(data)

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path == "/":
                delay = parse_qs(url.query).get("delay", ["0"])[0]
                try:
                    seconds = min(max(float(delay), 0.0), 10.0)
                except ValueError:
                    seconds = 0.0
                if seconds:
                    time.sleep(seconds)
                self._head(200, len(body_name))
                self.wfile.write(body_name)
                return
            if url.path.startswith("/file/"):
                fname = os.path.basename(url.path[len("/file/"):])
                path = os.path.join(data_dir, fname)
                if not fname or not os.path.isfile(path):
                    self._text(404, "no such file\n")
                    return
                q = parse_qs(url.query)
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    try:
                        size = min(size, int(q.get("bytes", [size])[0]))
                        rate = int(q.get("rate", ["0"])[0])
                    except ValueError:
                        self._text(400, "bad bytes or rate\n")
                        return
                    self._head(200, size, "application/octet-stream")
                    self.wfile.flush()
                    if rate <= 0:
                        self.connection.sendfile(f, 0, size)
                        return
                    # Paced: a chunk every tenth of a second.
                    chunk, start, sent = max(rate // 10, 1), time.monotonic(), 0
                    while sent < size:
                        data = f.read(min(chunk, size - sent))
                        self.wfile.write(data)
                        sent += len(data)
                        ahead = sent / rate - (time.monotonic() - start)
                        if ahead > 0:
                            time.sleep(ahead)
                return
            self._text(404, "not found\n")

        def do_POST(self):
            if urlsplit(self.path).path != "/sha256":
                self._text(404, "not found\n")
                return
            try:
                remaining = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                self._text(400, "bad Content-Length\n")
                return
            digest = hashlib.sha256()
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
            if remaining:
                self._text(400, "short body\n")
                return
            self._text(200, "%s %s\n" % (digest.hexdigest(), name))

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", required=True, help="directory with the files served under /file/")
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--bind6", default=None,
                    help="also listen on this IPv6 address (IPv6-only socket), e.g. ::")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--keep-alive", action="store_true",
                    help="HTTP/1.1: keep connections open between requests")
    args = ap.parse_args()
    handler = make_handler(args.name, args.data, args.keep_alive)
    # Both sockets listen from their constructor on (scripts/lib.sh waits
    # until ss shows the IPv4 one and, with --bind6, the IPv6 one).
    server = Server((args.bind, args.port), handler)
    if args.bind6 is not None:
        server6 = Server6((args.bind6, args.port), handler)
        threading.Thread(target=server6.serve_forever, daemon=True).start()
        print("backend %s listening on [%s]:%d" % (args.name, args.bind6, args.port),
              file=sys.stderr, flush=True)
    print("backend %s listening on %s:%d" % (args.name, args.bind, args.port), file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
