#!/usr/bin/env bash
# systemd's protocol, with a fake service manager: a Unix datagram listener
# named by NOTIFY_SOCKET records what tunlb says, and JOURNAL_STREAM names
# tunlb's stderr as the journal would.
#  - READY=1 (with STATUS=) comes once the datapath is up: by the time it
#    arrives the `ready` line is logged and a connection goes through;
#  - SIGHUP: RELOADING=1, then READY=1, around the `reloaded` line;
#  - SIGTERM: STOPPING=1, and tunlb exits 0;
#  - the log lines carry `<N>` priority prefixes and no timestamps.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
PY=$(tl_python)
SOCK=$T_DIR/notify.sock
GOT=$T_DIR/notify.log
CONF=$T_DIR/tunlb.toml
printf '[[service]]\nvip = "%s:80"\nbackends = ["%s:80", "%s:80"]\n' \
  "$VIP" "$(tl_backend_addr 1)" "$(tl_backend_addr 2)" >"$CONF"

# The fake manager: one line per datagram, its KEY=VALUE lines joined by '|'.
tl_bg "$P" lb notify-listener "$T_DIR/listener.log" "$PY" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(60)
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        try:
            msg = s.recv(4096)
        except socket.timeout:
            break
        out.write(msg.decode().replace("\n", "|") + "\n")
' "$SOCK" "$GOT"
: >"$GOT"
t_wait_until 5 test -S "$SOCK" || not_ok "the fake notify socket is listening"

# JOURNAL_STREAM as systemd sets it: the device and inode of stderr (the log
# file, which tl_bg truncates in place, keeping its inode).
: >"$TUNLB_LOG"
JS=$(stat -c '%d:%i' "$TUNLB_LOG")
t_tunlb_start_cmd env NOTIFY_SOCKET="$SOCK" JOURNAL_STREAM="$JS" \
  "$TUNLB_BIN" run --tun "$TL_TUN" --tun-addr "$TL_TUN_ADDR" --config "$CONF"

has() { grep -q -- "$1" "$GOT"; }
t_wait_until 5 has 'READY=1' || true
check_eq "the first message is READY=1 with a STATUS" \
  "$(head -n 1 "$GOT" | grep -o '^READY=1|STATUS=[0-9]* flows, 2/2 backends up' || true)" \
  "READY=1|STATUS=0 flows, 2/2 backends up"
check "READY=1 came after the ready line was logged" grep -q '^<6>ready:' "$TUNLB_LOG"
check_eq "a connection goes through once READY=1 is said" \
  "$(t_client curl -s --max-time 5 "$VIP_URL/" || echo fail)" b1

before=$(wc -l <"$GOT")
kill -HUP "$TUNLB_PID"
reloaded() { grep -q 'reloaded:' "$TUNLB_LOG" && [ "$(wc -l <"$GOT")" -ge $((before + 2)) ]; }
t_wait_until 5 reloaded || true
check_eq "SIGHUP: RELOADING=1 then READY=1" \
  "$(tail -n +$((before + 1)) "$GOT" | grep -o '^[A-Z]*=1' | head -n 2 | tr '\n' ' ')" \
  "RELOADING=1 READY=1 "

before=$(wc -l <"$GOT")
kill -TERM "$TUNLB_PID"
rc=0
wait "$TUNLB_PID" || rc=$?
TUNLB_PID=
check_eq "SIGTERM: exit status" "$rc" 0
t_wait_until 3 has 'STOPPING=1' || true
check_eq "SIGTERM: STOPPING=1 is the last message" \
  "$(tail -n 1 "$GOT" | cut -d'|' -f1)" "STOPPING=1"
note "messages: $(tr '\n' ' ' <"$GOT")"

# The journal's format: a priority prefix on every line, no timestamp.
check_eq "journal: every log line starts with <N>" \
  "$(grep -cv '^<[0-7]>' "$TUNLB_LOG" || true)" 0
check "journal: the info lines are <6>" grep -q '^<6>stopped:' "$TUNLB_LOG"
check_eq "journal: no timestamps of tunlb's own" \
  "$(grep -cE '^<[0-7]>[0-9]{4}-[0-9]{2}-[0-9]{2}T' "$TUNLB_LOG" || true)" 0
