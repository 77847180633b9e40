#!/usr/bin/env bash
# Privileges. (1) tunlb as user nobody with CAP_NET_ADMIN only (setpriv,
# ambient capability) creates and addresses its TUN and balances. (2) On a
# TUN pre-created for nobody (ip tuntap add ... user nobody), tunlb runs as
# nobody with no capability at all, attaches, and balances; it leaves the
# device it did not create in place. (3) The same as (1) for an IPv6
# service (issue 15). (4) The packet threads' nice value (--nice): the
# process's by default, what --nice says as root (on the packet threads
# only), and without CAP_SYS_NICE a --nice -10 is a one-line error before
# anything is set up.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
# nobody must be able to execute the binary wherever the checkout lives.
BIN=$T_DIR/bin/tunlb
mkdir -p "$T_DIR/bin"
chmod 755 "$T_DIR" "$T_DIR/bin"
install -m 755 "$TUNLB_BIN" "$BIN"
mapfile -t backends < <(t_backend_flags)
service=(--vip "$VIP:80" "${backends[@]}" --mode nth)
NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups)
# Stock Debian (udev) makes /dev/net/tun 0666: any user may open it, the kernel
# then decides by capability or device owner. Where it is 0600 (some VMs and
# containers), tunlb gets a 0666 node for the same device in a private mount
# namespace of its own; the host's node stays as it is.
if [ "$(stat -L -c %a /dev/net/tun)" != 666 ]; then
  note "/dev/net/tun is $(stat -L -c %a /dev/net/tun) here: bind-mounting a 0666 node over it for tunlb only"
  mknod -m 666 "$T_DIR/tun" c "$((0x$(stat -L -c %t /dev/net/tun)))" "$((0x$(stat -L -c %T /dev/net/tun)))"
  # shellcheck disable=SC2016  # "$0" and "$@" belong to the inner sh
  NOBODY=(unshare --mount --propagation private -- sh -c 'mount --bind "$0" /dev/net/tun && exec "$@"'
    "$T_DIR/tun" "${NOBODY[@]}")
fi

# caps_of PID: "uid=R,E,S,FS eff=CAPEFF prm=CAPPRM"
caps_of() {
  awk '/^Uid:/ { u = $2 "," $3 "," $4 "," $5 } /^CapEff:/ { e = $2 } /^CapPrm:/ { p = $2 }
    END { print "uid=" u, "eff=" e, "prm=" p }' "/proc/$1/status"
}
# thread_nice PID NAME: the nice value of PID's thread NAME (field 19 of its
# stat), empty while there is no such thread.
thread_nice() {
  local t
  for t in /proc/"$1"/task/*; do
    if [ "$(cat "$t/comm" 2>/dev/null)" = "$2" ]; then awk '{ print $19 }' "$t/stat" 2>/dev/null || true; fi
  done
}
# nice_of PID NAME WANT: thread_nice, waited for (5 s at most) until it is WANT:
# the ready line comes before the packet threads start and set their value.
nice_of() {
  local k v=
  for ((k = 0; k < 100; k++)); do
    v=$(thread_nice "$1" "$2")
    [ "$v" = "$3" ] && break
    sleep 0.05
  done
  printf '%s\n' "$v"
}
# The nice value this test runs at, which tunlb inherits.
BASE=$(nice)
four() { for _ in 1 2 3 4; do t_client curl -s --max-time 5 "$VIP_URL/" || echo fail; done | tr '\n' ' '; }

# (1) CAP_NET_ADMIN only.
t_tunlb_start_cmd "${NOBODY[@]}" --inh-caps=-all,+net_admin --ambient-caps=+net_admin \
  --bounding-set=-all,+net_admin "$BIN" run --tun "$TL_TUN" --tun-addr "$TL_TUN_ADDR" "${service[@]}"
c=$(caps_of "$TUNLB_PID")
check_eq "runs as nobody with exactly CAP_NET_ADMIN" "$c" \
  "uid=65534,65534,65534,65534 eff=0000000000001000 prm=0000000000001000"
check_eq "CAP_NET_ADMIN only: requests flow" "$(four)" "b1 b2 b3 b4 "
check_eq "CAP_NET_ADMIN only: the packet thread stays at the process's nice value" \
  "$(nice_of "$TUNLB_PID" tunlb-pkt0 "$BASE")" "$BASE"
check "CAP_NET_ADMIN only: the ready line says so" \
  grep -q "thread(s) at nice $BASE (the process's" "$TUNLB_LOG"
t_tunlb_stop
check "CAP_NET_ADMIN only: the TUN it created is gone after SIGTERM" \
  test -z "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)"

# (2) No capability, on a TUN made for nobody.
ip -n "${P}lb" tuntap add dev "$TL_TUN" mode tun user 65534
ip -n "${P}lb" addr add "$TL_TUN_ADDR" dev "$TL_TUN"
ip -n "${P}lb" link set "$TL_TUN" up
t_tunlb_start_cmd "${NOBODY[@]}" --inh-caps=-all --bounding-set=-all \
  "$BIN" run --tun "$TL_TUN" "${service[@]}"
c=$(caps_of "$TUNLB_PID")
check_eq "runs as nobody with no capability" "$c" \
  "uid=65534,65534,65534,65534 eff=0000000000000000 prm=0000000000000000"
check_eq "no capability, pre-created TUN: requests flow" "$(four)" "b1 b2 b3 b4 "
t_tunlb_stop
check "the pre-created TUN is left in place" test -n "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)"
ip -n "${P}lb" tuntap del dev "$TL_TUN" mode tun

# (3) IPv6 (issue 15), CAP_NET_ADMIN only: tunlb as nobody puts both
# prefixes on the TUN it creates and balances the IPv6 VIP.
mapfile -t backends6 < <(t_backend_flags6)
t_tunlb_start_cmd "${NOBODY[@]}" --inh-caps=-all,+net_admin --ambient-caps=+net_admin \
  --bounding-set=-all,+net_admin "$BIN" run --tun "$TL_TUN" --tun-addr "$TL_TUN_ADDR" \
  --tun-addr "$TL_TUN_ADDR6" --vip "[$VIP6]:80" "${backends6[@]}" --mode nth
check_eq "IPv6, runs as nobody with exactly CAP_NET_ADMIN" "$(caps_of "$TUNLB_PID")" \
  "uid=65534,65534,65534,65534 eff=0000000000001000 prm=0000000000001000"
four6=$(for _ in 1 2 3 4; do t_client curl -s --max-time 5 "$VIP6_URL/" || echo fail; done | tr '\n' ' ')
check_eq "IPv6, CAP_NET_ADMIN only: requests flow" "$four6" "b1 b2 b3 b4 "
check "IPv6: the TUN holds the IPv6 prefix" grep -q "inet6 $TL_TUN_ADDR6" \
  <<<"$(ip -n "${P}lb" -6 addr show dev "$TL_TUN" 2>/dev/null)"
t_tunlb_stop

# (4) Nice values. As root, by default: the process's, and the ready line says so.
t_tunlb_start --threads 2
check_eq "root, default: both packet threads at the process's nice value" \
  "$(nice_of "$TUNLB_PID" tunlb-pkt0 "$BASE") $(nice_of "$TUNLB_PID" tunlb-pkt1 "$BASE")" "$BASE $BASE"
check "root, default: the ready line says nice $BASE (the process's)" \
  grep -q "thread(s) at nice $BASE (the process's)" "$TUNLB_LOG"
t_tunlb_stop
# --nice -10 as root: every packet thread, and only they.
t_tunlb_start --threads 2 --nice -10
check_eq "root, --nice -10: both packet threads at -10, the main thread as it was" \
  "$(nice_of "$TUNLB_PID" tunlb-pkt0 -10) $(nice_of "$TUNLB_PID" tunlb-pkt1 -10) $(thread_nice "$TUNLB_PID" tunlb)" \
  "-10 -10 $BASE"
check "root, --nice -10: the ready line says nice -10" grep -q "thread(s) at nice -10," "$TUNLB_LOG"
check_eq "root, nice -10: requests flow" "$(four)" "b1 b2 b3 b4 "
t_tunlb_stop
t_tunlb_start --nice 5
check_eq "--nice 5: the packet thread at 5" "$(nice_of "$TUNLB_PID" tunlb-pkt0 5)" 5
t_tunlb_stop
# As nobody without CAP_SYS_NICE, asking for -10 is refused before the TUN
# exists (when -10 is below this test's own value: otherwise it needs nothing).
if [ "$BASE" -le -10 ]; then
  note "this test runs at nice $BASE: --nice -10 needs no privilege here, its refusal is not checked"
  exit 0
fi
if out=$(ip netns exec "${P}lb" timeout 10 "${NOBODY[@]}" --inh-caps=-all,+net_admin \
  --ambient-caps=+net_admin --bounding-set=-all,+net_admin "$BIN" run --tun "$TL_TUN" \
  --tun-addr "$TL_TUN_ADDR" "${service[@]}" --nice -10 --control "$T_DIR/nice.sock" 2>&1); then
  rc=0
else
  rc=$?
fi
check_eq "nobody, --nice -10: exit status 1" "$rc" 1
check_eq "nobody, --nice -10: one line" "$(grep -c . <<<"$out")" 1
check "nobody, --nice -10: the line names the flag and CAP_SYS_NICE ($out)" \
  grep -q -- "--nice -10: .*CAP_SYS_NICE" <<<"$out"
check "nobody, --nice -10: no TUN was created" \
  test -z "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)"
