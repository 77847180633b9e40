#!/usr/bin/env bash
# No client of the control socket or of /metrics can delay expiry or
# shutdown. The table holds some 2500 TIME_WAIT flows (so that `flows json`
# is far more than a socket buffer holds) and one SYN_SENT flow to a second
# VIP whose backend never answers (a blackhole route in lb), with SYN_SENT's
# timeout cut to TO seconds. Then a client asks `flows json` and never reads
# its answer, and another opens 20 idle TCP connections to /metrics. While
# they hang:
#  (a) `tunlb stats --json` and `tunlb flows` from another client answer
#      within 2 s;
#  (b) the SYN_SENT flow is gone within TO + 2 s of its last SYN;
#  (c) tunlb drops the client that never reads before its answer is out
#      (write timeout), and /metrics answers again once the idle connections
#      are dropped;
#  (d) with a fresh client that never reads and 20 fresh idle connections,
#      SIGTERM ends tunlb within 1 s, exit status 0, the control socket file
#      removed.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

TO=4     # SYN_SENT timeout (s)
HOLD=12  # how long the first client sits on its answer before reading (s)
BULK=2500
t_setup
CTL=$T_DIR/control.sock
METRICS_PORT=9100
VIP2=198.18.0.2
DEAD=198.18.3.1
CONF=$T_DIR/stall.toml
cat >"$CONF" <<EOF
[timeouts]
syn_sent = $TO

[[service]]
vip = "$VIP2:80"
backends = ["$DEAD:80"]
EOF
# What tunlb forwards to $DEAD vanishes in lb, without an ICMP error.
ip -n "${P}lb" route add blackhole "$DEAD/32"
t_tunlb_start --mode nth --config "$CONF" --control "$CTL" --metrics "127.0.0.1:$METRICS_PORT"

PY=$(tl_python)
# stall PATH REQUEST WAIT HOLD: send REQUEST on the control socket, never read;
# after WAIT s print "queued N" (bytes of the answer waiting unread); at HOLD s
# read what is there until EOF (5 s without a byte: "open N") and print
# "eof N complete|cut" (whether the answer parses as JSON, i.e. was all sent).
STALL='
import fcntl, json, socket, struct, sys, termios, time
path, req, wait, hold = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.sendall(req.encode() + b"\n")
t0 = time.monotonic()
time.sleep(wait)
q = struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
print("queued", q, flush=True)
time.sleep(max(0.0, hold - (time.monotonic() - t0)))
s.settimeout(5)
data = b""
try:
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        data += b
except OSError:
    print("open", len(data), flush=True)
    sys.exit(0)
try:
    json.loads(data)
    whole = "complete"
except ValueError:
    whole = "cut"
print("eof", len(data), whole, flush=True)
'
# idle PORT N HOLD: open N TCP connections to 127.0.0.1:PORT, send nothing;
# print how many tunlb has closed after 1 s and after 5 s; hold until HOLD s.
IDLE='
import socket, sys, time
port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
t0 = time.monotonic()
conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
print("open", len(conns), flush=True)
closed = set()
def sweep():
    for i, c in enumerate(conns):
        if i in closed:
            continue
        c.setblocking(False)
        try:
            if c.recv(1) == b"":
                closed.add(i)
        except BlockingIOError:
            pass
        except OSError:
            closed.add(i)
for mark in (1, 5):
    time.sleep(max(0.0, mark - (time.monotonic() - t0)))
    sweep()
    print("closed_after_%ds" % mark, len(closed), flush=True)
time.sleep(max(0.0, hold - (time.monotonic() - t0)))
'
# await_line LOG WORD SECONDS: wait for a line starting with WORD in LOG.
await_line() { t_wait_until "$3" grep -q "^$2 " "$1"; }
ctl() { tl_exec "$P" lb timeout 5 "$TUNLB_BIN" "$@" --control "$CTL"; }
vip2_flows() { ctl flows --json | t_json "len([f for f in d['flows'] if f['original']['dst'] == '$VIP2:80'])"; }

# The bulk: short connections, each left in TIME_WAIT (120 s).
t_client timeout 120 curl -s -Z --parallel-max 16 --max-time 10 "$VIP_URL/?n=[1-$BULK]" >/dev/null 2>&1 || true
flows0=$(ctl stats --json | t_json 'd["flows"]' || echo 0)
check_range "flows in the table after $BULK short connections" "$flows0" 2000 $((BULK + 10))
# One SYN (perhaps two) to VIP2, never answered: a SYN_SENT flow.
t_client curl -s --connect-timeout 1 -o /dev/null "http://$VIP2/" || true
t_syn=$(t_now_ms)
check_eq "a flow to $VIP2 (SYN_SENT, never answered)" "$(vip2_flows)" 1

tl_bg "$P" lb stall-a "$T_DIR/stall-a.log" "$PY" -c "$STALL" "$CTL" "flows json" 1 "$HOLD"
tl_bg "$P" lb idle-a "$T_DIR/idle-a.log" "$PY" -c "$IDLE" "$METRICS_PORT" 20 30
await_line "$T_DIR/stall-a.log" queued 5 || true
await_line "$T_DIR/idle-a.log" open 5 || true
queued=$(awk '$1 == "queued" { print $2 }' "$T_DIR/stall-a.log")
check_range "the client that never reads: answer bytes waiting unread in its socket (tunlb's write is blocked)" \
  "${queued:-0}" 65536 100000000

# (a) Other clients are answered.
t0=$(t_now_ms)
rc=0
ctl stats --json >"$T_DIR/stats.json" || rc=$?
ms=$(($(t_now_ms) - t0))
check_eq "(a) tunlb stats --json while a client stalls: exit" "$rc" 0
check_range "(a) tunlb stats --json answered within 2 s (ms)" "$ms" 0 2000
check_range "(a) tunlb stats --json: flows" "$(t_json 'd["flows"]' <"$T_DIR/stats.json" 2>/dev/null || echo 0)" 2000 $((BULK + 10))
t0=$(t_now_ms)
rc=0
ctl flows >"$T_DIR/flows.txt" || rc=$?
ms=$(($(t_now_ms) - t0))
check_eq "(a) tunlb flows while a client stalls: exit" "$rc" 0
check_range "(a) tunlb flows answered within 2 s (ms)" "$ms" 0 2000
check "(a) tunlb flows: whole (the summary line)" grep -qE '^tunlb: [0-9]+ flow entries$' "$T_DIR/flows.txt"

# (b) The SYN_SENT flow expires on time.
vip2_gone() { [ "$(vip2_flows 2>/dev/null)" = 0 ]; }
if t_wait_until $((TO + 10)) vip2_gone; then
  gone_ms=$(($(t_now_ms) - t_syn))
  check_range "(b) the SYN_SENT flow is gone within TO + 2 s of its last SYN (ms, TO = $TO s)" \
    "$gone_ms" 0 $((TO * 1000 + 2000))
else
  not_ok "(b) the SYN_SENT flow still there $((TO + 10)) s later"
fi
check_range "(b) stats: expired" "$(ctl stats --json | t_json 'd["expired"]' || echo 0)" 1 1000000

# (c) Those clients are dropped, not served forever.
metrics_ok() {
  [ "$(tl_exec "$P" lb curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$METRICS_PORT/metrics")" = 200 ]
}
if t_wait_until 10 metrics_ok; then
  ok "(c) GET /metrics answers again once the idle connections are dropped"
else
  not_ok "(c) GET /metrics does not answer 10 s after 20 idle connections"
fi
await_line "$T_DIR/idle-a.log" closed_after_5s 10 || true
note "idle /metrics connections: $(grep closed_ "$T_DIR/idle-a.log" | tr '\n' ' ')"
check_eq "(c) tunlb closed every idle /metrics connection within 5 s" \
  "$(awk '$1 == "closed_after_5s" { print $2 }' "$T_DIR/idle-a.log")" 20
await_line "$T_DIR/stall-a.log" eof $((HOLD + 10)) || await_line "$T_DIR/stall-a.log" open 1 || true
note "the client that read nothing for $HOLD s: $(tail -n 1 "$T_DIR/stall-a.log")"
check "(c) tunlb dropped the client that never read before its answer was out (EOF, JSON cut)" \
  grep -qE '^eof [0-9]+ cut$' "$T_DIR/stall-a.log"

# (d) SIGTERM with a client stalled on its answer and 20 idle ones.
tl_bg "$P" lb stall-b "$T_DIR/stall-b.log" "$PY" -c "$STALL" "$CTL" "flows json" 0.5 30
tl_bg "$P" lb idle-b "$T_DIR/idle-b.log" "$PY" -c "$IDLE" "$METRICS_PORT" 20 30
await_line "$T_DIR/stall-b.log" queued 5 || true
await_line "$T_DIR/idle-b.log" open 5 || true
queued=$(awk '$1 == "queued" { print $2 }' "$T_DIR/stall-b.log")
check_range "(d) a fresh client that never reads: answer bytes waiting unread" "${queued:-0}" 65536 100000000
t_stop_and_time TERM
check_eq "(d) SIGTERM with stalled clients: exit status" "$RC" 0
check_range "(d) SIGTERM with stalled clients: gone within a second (ms)" "$MS" 0 1000
check "(d) the control socket file is removed" test ! -e "$CTL"
