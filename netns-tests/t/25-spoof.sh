#!/usr/bin/env bash
# Spoofed packets must not kill or corrupt a flow (issue 12). b1 serves HTTP/1.1
# keep-alive (backend.py --keep-alive), the service is VIP:80 over b1 alone
# (and VIP:5201 over b1:5201 for iperf3).
#  0. Legitimate bulk traffic first: a 64 MiB download and a 64 MiB upload
#     through tunlb arrive intact, iperf3 runs both ways (2 streams, 3 s
#     each; its retransmissions are printed), and no packet of theirs is
#     dropped as out of window (every drop counter whose name contains
#     "window" stays 0). A missing iperf3 is a failure (.ci/run installs it).
#  1. A python client (netns-tests/spoof.py) holds 3 keep-alive connections
#     open, one request answered on each; it sniffs their sequence numbers.
#  2. Raw sockets inject, into one connection each:
#     a. from the client: a SYN (seq X, far from the real sequence space),
#        then an RST with seq X+1;
#     b. from the client: an ACK with ack V (far ahead of what the backend
#        sent), then from b1 (b1:80 -> SNAT:port, the reply tuple) an RST
#        with seq V;
#     c. from the client: an ACK with seq = the client's real end + 2^30,
#        then an RST with that seq + 1.
#     After each, the flow is still ESTABLISHED in `tunlb flows --json`.
#  3. 12 s of silence (CLOSE lasts 10 s: a flow wrongly closed is gone by
#     then), then each of the 3 connections answers a second request on the
#     same socket; the flows are still ESTABLISHED; `tunlb stats --json`
#     counts at least the 3 injected RSTs as dropped (the drop counters but
#     no_service grew by 3 or more; each reason that grew is printed).
# Each injection ends with a SYN to 198.18.0.77:9 (no service: counted as
# no_service) from the same namespace: once that count has grown, tunlb has
# read everything injected before it (one queue, in order).
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
CTL=$T_DIR/control.sock
PY=$(tl_python)
SPOOF=$T_ROOT/netns-tests/spoof.py
B1=$(tl_backend_addr 1)
SENTINEL=198.18.0.77:9
KA=$T_DIR/ka

# b1: the keep-alive server in place of the HTTP/1.0 one, same name and data.
tl_backend_stop "$P" 1
tl_bg "$P" b1 server-b1 "$T_DIR/b1-keepalive.log" "$PY" "$T_ROOT/scripts/backend.py" \
  --name b1 --data "$(tl_data "$P")" --port 80 --keep-alive
b1_listens() { [ -n "$(tl_exec "$P" b1 ss -Hltn 'sport = :80')" ]; }
t_wait_until 10 b1_listens || { cat "$T_DIR/b1-keepalive.log" >&2; tl_die "b1 keep-alive server did not start"; }

CONF=$T_DIR/tunlb.toml
printf '[[service]]\nvip = "%s:80"\nbackends = ["%s:80"]\n\n[[service]]\nvip = "%s:5201"\nbackends = ["%s:5201"]\n' \
  "$VIP" "$B1" "$VIP" "$B1" >"$CONF"
t_tunlb_start_cmd "$TUNLB_BIN" run --tun "$TL_TUN" --tun-addr "$TL_TUN_ADDR" --config "$CONF" --control "$CTL"

stats() { t_query stats "$CTL" --json; }

# 0. Bulk, before anything is spoofed.
want=$(tl_sha256 "$P" big.bin)
rc=0
t_client curl -s --max-time 60 -D "$T_DIR/dl.headers" -o "$T_DIR/dl.bin" "$VIP_URL/file/big.bin" || rc=$?
check_eq "bulk: the 64 MiB download completed (curl exit)" "$rc" 0
check_eq "bulk: the download arrived intact (sha256)" "$(t_sha "$T_DIR/dl.bin")" "$want"
rm -f "$T_DIR/dl.bin"
rc=0
up=$(t_client curl -s --max-time 60 -H 'Content-Type: application/octet-stream' \
  --data-binary "@$(tl_data "$P")/big.bin" "$VIP_URL/sha256") || rc=$?
check_eq "bulk: the 64 MiB upload completed (curl exit)" "$rc" 0
check_eq "bulk: b1 received the upload intact (its sha256)" "$up" "$want b1"
if command -v iperf3 >/dev/null; then
  tl_bg "$P" b1 iperf3-server "$T_DIR/iperf3-server.log" iperf3 -s -p 5201
  iperf_listens() { [ -n "$(tl_exec "$P" b1 ss -Hltn 'sport = :5201')" ]; }
  t_wait_until 10 iperf_listens || not_ok "iperf3 server listening in b1"
  for dir in "" -R; do
    what="client -> b1"
    [ -n "$dir" ] && what="b1 -> client (-R)"
    rc=0
    t_client timeout 30 iperf3 -c "$VIP" -p 5201 -t 3 -P 2 ${dir:+"$dir"} -J >"$T_DIR/iperf3$dir.json" 2>&1 || rc=$?
    check_eq "bulk: iperf3 $what, 2 streams, 3 s (exit)" "$rc" 0
    read -r bytes retr < <(t_json "'%d %d' % (d['end']['sum_received']['bytes'], d['end']['sum_sent'].get('retransmits', -1))" \
      <"$T_DIR/iperf3$dir.json" 2>/dev/null || echo "0 -1")
    note "iperf3 $what: $((bytes >> 20)) MiB received, $retr retransmissions (with SACK: Linux's default)"
    check_range "bulk: iperf3 $what moved data (MiB)" "$((bytes >> 20))" 1 1000000
  done
else
  not_ok "iperf3 is missing: apt-get install iperf3 (.ci/run installs it)"
fi
stats >"$T_DIR/stats-bulk.json"
note "drop counters after the bulk transfers: $(t_json "{k: v for k, v in d['dropped'].items() if v}" <"$T_DIR/stats-bulk.json")"
check_eq "bulk: legitimate packets dropped as out of window (drop counters named *window*)" \
  "$(t_json "sum(v for k, v in d['dropped'].items() if 'window' in k)" <"$T_DIR/stats-bulk.json")" 0

# 1. Three keep-alive connections.
tl_bg "$P" client spoof-client "$T_DIR/spoof-client.log" "$PY" "$SPOOF" client \
  --vip "$VIP" --port 80 --conns 3 --dir "$KA" --iface eth0 --wait 120
CLIENT_PID=$TL_PID
if ! t_wait_until 15 test -s "$KA/conns.json"; then
  cat "$T_DIR/spoof-client.log" >&2
  not_ok "the keep-alive client opened 3 connections and answered a request on each"
  exit 1
fi
conn() { t_json "d[$1]['$2']" <"$KA/conns.json"; }
check_eq "keep-alive client: each first request answered by b1" \
  "$(t_json "' '.join(c['first'].strip() for c in d)" <"$KA/conns.json")" "b1 b1 b1"
# flow LPORT FIELD: FIELD of the flow from the client's LPORT to the VIP's
# port 80 ("state", "reply.dst", ...), or "gone". The destination counts: an
# earlier flow from the same client port to iperf3's port 5201 may still be
# in TIME_WAIT.
flow() {
  local expr="f['$2']"
  [[ $2 == *.* ]] && expr="f['${2%%.*}']['${2#*.}']"
  t_query flows "$CTL" --json |
    t_json "next(($expr for f in d['flows'] if f['original']['src'] == '$TL_CLIENT_ADDR:$1' and f['original']['dst'] == '$VIP:80'), 'gone')"
}
declare -a LPORT CEND SEND SNAT
for k in 0 1 2; do
  LPORT[k]=$(conn "$k" lport) CEND[k]=$(conn "$k" c_end) SEND[k]=$(conn "$k" s_end)
  SNAT[k]=$(flow "${LPORT[k]}" reply.dst)
  note "connection $((k + 1)): client port ${LPORT[k]}, client seq end ${CEND[k]}, server seq end ${SEND[k]}, reply tuple $B1:80 -> ${SNAT[k]}"
  check_eq "connection $((k + 1)): flow ESTABLISHED before any spoofed packet" "$(flow "${LPORT[k]}" state)" ESTABLISHED
done
stats >"$T_DIR/stats-before.json"

# inject NODE PACKET...: send PACKETs from NODE's namespace, then the sentinel
# from there; wait until tunlb has counted the sentinel.
SENTINELS=0
no_service() { stats | t_json "d['dropped']['no_service']"; }
sentinel_seen() { [ "$(no_service)" -ge "$1" ]; }
inject() {
  local node=$1 src base
  shift
  src=$TL_CLIENT_ADDR
  [ "$node" = client ] || src=$(tl_backend_addr "${node#b}")
  base=$(no_service)
  tl_exec "$P" "$node" "$PY" "$SPOOF" send "$@" "$src:9>$SENTINEL/S/1/0" | sed '$d; s/^/    /'
  SENTINELS=$((SENTINELS + 1))
  t_wait_until 5 sentinel_seen "$((base + 1))" ||
    not_ok "tunlb counted the sentinel after the packets from $node (no_service: $(no_service), want > $base)"
}
m32() { echo $((($1) & 0xffffffff)); }
c2v() { echo "$TL_CLIENT_ADDR:${LPORT[$1]}>$VIP:80"; }

# a. SYN seq X then RST seq X+1, from the client.
X=$(m32 "${CEND[0]} + 0x60000000")
inject client "$(c2v 0)/S/$X/0" "$(c2v 0)/R/$(m32 "$X + 1")/0"
check_eq "a. spoofed SYN (seq X) then RST (seq X+1): the flow is still ESTABLISHED" "$(flow "${LPORT[0]}" state)" ESTABLISHED

# b. ACK with ack V from the client, then RST seq V from b1 (reply tuple).
V=$(m32 "${SEND[1]} + 0x60000000")
inject client "$(c2v 1)/A/${CEND[1]}/$V"
inject b1 "$B1:80>${SNAT[1]}/R/$V/0"
check_eq "b. spoofed ACK (ack V) then RST from the backend side (seq V): the flow is still ESTABLISHED" \
  "$(flow "${LPORT[1]}" state)" ESTABLISHED

# c. ACK far out of window, then RST just past it, from the client.
F=$(m32 "${CEND[2]} + 0x40000000")
inject client "$(c2v 2)/A/$F/${SEND[2]}" "$(c2v 2)/R/$(m32 "$F + 1")/0"
check_eq "c. ACK at the real end + 2^30 then RST just past it: the flow is still ESTABLISHED" \
  "$(flow "${LPORT[2]}" state)" ESTABLISHED

stats >"$T_DIR/stats-after.json"
delta() {  # the drop counters that changed between two stats files
  "$PY" -c '
import json, sys
a, b = (json.load(open(f))["dropped"] for f in sys.argv[1:3])
print(" ".join("%s +%d" % (k, b[k] - a.get(k, 0)) for k in sorted(b) if b[k] != a.get(k, 0)) or "none")' "$1" "$2"
}
note "drop counters that grew during the injections: $(delta "$T_DIR/stats-before.json" "$T_DIR/stats-after.json")"
# The 3 RSTs must be dropped (the SYN and the ACKs may be dropped too);
# the sentinels are counted under no_service and left out.
grown=$("$PY" -c '
import json, sys
a, b = (json.load(open(f))["dropped"] for f in sys.argv[1:3])
print(sum(b[k] - a.get(k, 0) for k in b if k != "no_service"))' "$T_DIR/stats-before.json" "$T_DIR/stats-after.json")
check_range "stats: spoofed packets dropped and counted by reason (at least the 3 RSTs)" "$grown" 3 1000

# 3. Silence, then the same connections answer.
note "12 s of silence on the 3 connections (CLOSE's timeout is 10 s)"
sleep 12
for k in 0 1 2; do
  check_eq "connection $((k + 1)): flow still ESTABLISHED after 12 s of silence" "$(flow "${LPORT[k]}" state)" ESTABLISHED
done
touch "$KA/go"
t_wait_until 15 test -s "$KA/result.json" || not_ok "the keep-alive client wrote its results within 15 s"
rc=0
wait "$CLIENT_PID" || rc=$?
sed 's/^/    /' "$T_DIR/spoof-client.log"
for k in 0 1 2; do
  what=$(printf 'a. SYN then RST\nb. ACK then RST from the backend\nc. far ACK then RST' | sed -n "$((k + 1))p")
  got=$(t_json "next(('ok ' + r['body'] if r['ok'] else 'error ' + r['error']) for r in d if r['lport'] == ${LPORT[k]})" \
    <"$KA/result.json" 2>/dev/null || echo "no result")
  check_eq "connection $((k + 1)) ($what): the same socket answers a request after 12 s of silence" "$got" "ok b1"
done
check_eq "the keep-alive client exit status" "$rc" 0
stats >"$T_DIR/stats-end.json"
note "drop counters at the end: $(t_json "{k: v for k, v in d['dropped'].items() if v}" <"$T_DIR/stats-end.json")"
check "tunlb still running" tl_pid_alive "$TUNLB_PID"
