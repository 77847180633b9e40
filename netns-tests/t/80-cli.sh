#!/usr/bin/env bash
# The command line. Each bad flag: exit 2, nothing on stdout, exactly one
# line on stderr that names the bad value, and no TUN left behind (an unknown
# shell for `completions` too). `completions bash` prints a script bash
# parses, `man` prints roff. Runtime refusals: net.ipv4.ip_forward=0 (exit 1
# naming the sysctl; --set-sysctls sets it), a VIP or SNAT address the kernel
# would answer itself. The same for IPv6 (issue 15): two --tun-addr of one
# family, an IPv6 prefix too long, an IPv6 VIP with an IPv4 backend on --io packet too (exit 2);
# an IPv6 VIP that is local or routes elsewhere, IPv6 forwarding off (exit 1,
# naming net.ipv6.conf.all.forwarding; --set-sysctls sets it).
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
TUN=(--tun "$TL_TUN" --tun-addr "$TL_TUN_ADDR")
B1=198.18.2.3:80
V=198.18.0.1:80

# bad EXPECTED_IN_MESSAGE SUBCOMMAND ARGS...
bad() {
  local want=$1 rc=0 lines
  shift
  tl_exec "$P" lb timeout 5 "$TUNLB_BIN" "$@" >"$T_DIR/out" 2>"$T_DIR/err" || rc=$?
  lines=$(wc -l <"$T_DIR/err")
  if [ "$rc" -eq 2 ] && [ "$lines" -eq 1 ] && [ ! -s "$T_DIR/out" ] && grep -qF -- "$want" "$T_DIR/err" &&
    [ -z "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)" ]; then
    local shown="$*"
    ok "tunlb ${shown/ --tun $TL_TUN --tun-addr $TL_TUN_ADDR/}: exit 2, one line naming '$want'"
  else
    not_ok "tunlb $*: want exit 2, one stderr line containing '$want', empty stdout, no TUN; got exit $rc, $lines stderr line(s): $(head -c 400 "$T_DIR/err")"
  fi
}

bad nonsense run "${TUN[@]}" --vip nonsense --backend "$B1"
bad 1.2.3.4 run "${TUN[@]}" --vip "$V" --backend 1.2.3.4
bad foo run "${TUN[@]}" --vip "$V" --backend "$B1" --mode foo
bad 0 run "${TUN[@]}" --vip "$V" --backend "$B1" --max-flows 0
bad weight=x run "${TUN[@]}" --vip "$V" --backend "$B1,weight=x"
bad 99999 run "${TUN[@]}" --vip "$V" --backend 198.18.2.3:99999
bad nope run "${TUN[@]}" --vip "$V" --backend "$B1" --snat nope
bad bogus run --tun "$TL_TUN" --tun-addr bogus --vip "$V" --backend "$B1"
bad --frobnicate run "${TUN[@]}" --vip "$V" --backend "$B1" --frobnicate
bad --vip run "${TUN[@]}" --backend "$B1"
bad "--mode maglev" run "${TUN[@]}" --vip "$V" --backend "$B1" --pickup
bad "--mode maglev" run "${TUN[@]}" --vip "$V" --backend "$B1" --mode random --pickup
bad "--state-file" run "${TUN[@]}" --vip "$V" --backend "$B1" --state-interval 2
bad "--hash-key" run "${TUN[@]}" --vip "$V" --backend "$B1" --hash-key ""
bad "--state-interval" run "${TUN[@]}" --vip "$V" --backend "$B1" --state-file /tmp/x --state-interval x
bad --backend run "${TUN[@]}" --vip "$V"
bad --tun run --vip "$V" --backend "$B1"
bad '--busy-poll 5000 is out of range' run "${TUN[@]}" --vip "$V" --backend "$B1" --busy-poll 5000
bad 1.2.3.4 iptables --vip "$V" --backend 1.2.3.4
bad foo iptables --vip "$V" --backend "$B1" --mode foo
bad "'nosuchshell'" completions nosuchshell

# The generated documents: a completion script bash can parse, roff for man.
rc=0
tl_exec "$P" lb "$TUNLB_BIN" completions bash >"$T_DIR/out" 2>"$T_DIR/err" || rc=$?
if [ "$rc" -eq 0 ] && [ ! -s "$T_DIR/err" ] && grep -q '^ *complete -F _tunlb .* tunlb$' "$T_DIR/out" && bash -n "$T_DIR/out"; then
  ok "completions bash: exit 0, a script bash parses ($(wc -l <"$T_DIR/out") lines)"
else
  not_ok "completions bash: want exit 0 and a bash script; got exit $rc: $(head -c 400 "$T_DIR/err")"
fi
rc=0
tl_exec "$P" lb "$TUNLB_BIN" man 2>"$T_DIR/err" | head >"$T_DIR/out" || rc=$?
if [ "$rc" -eq 0 ] && [ ! -s "$T_DIR/err" ] && grep -q '^\.TH tunlb 1 ' "$T_DIR/out" && grep -q '^\.SH NAME' "$T_DIR/out"; then
  ok "man | head: exit 0, roff (.TH tunlb 1, .SH NAME)"
else
  not_ok "man | head: want exit 0 and roff; got exit $rc: $(head -c 400 "$T_DIR/out") $(head -c 400 "$T_DIR/err")"
fi

# refused PATTERN ARGS...: tunlb run must exit non-zero (not a panic) with a
# message matching PATTERN, and leave no TUN.
refused() {
  local want=$1 rc=0
  shift
  tl_exec "$P" lb timeout 5 "$TUNLB_BIN" run "$@" >"$T_DIR/out" 2>"$T_DIR/err" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 101 ] && grep -qE -- "$want" "$T_DIR/err" &&
    [ -z "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)" ]; then
    ok "refused ($want): exit $rc"
  else
    not_ok "tunlb run $*: want a refusal matching '$want' and no TUN; got exit $rc: $(head -c 400 "$T_DIR/err")"
  fi
}
refused 'local address' "${TUN[@]}" --vip 198.18.2.1:80 --backend "$B1"
refused 'local address' "${TUN[@]}" --vip "$V" --snat 198.18.1.1 --backend "$B1"
refused 'local address|tun-addr' "${TUN[@]}" --vip 198.18.0.254:80 --backend "$B1"

tl_sysctl "${P}lb" net.ipv4.ip_forward 0
rc=0
tl_exec "$P" lb timeout 5 "$TUNLB_BIN" run "${TUN[@]}" --vip "$V" --backend "$B1" 2>"$T_DIR/err" || rc=$?
if [ "$rc" -eq 1 ] && grep -q 'net.ipv4.ip_forward' "$T_DIR/err"; then
  ok "ip_forward=0: exit 1 naming net.ipv4.ip_forward"
else
  not_ok "ip_forward=0: want exit 1 naming net.ipv4.ip_forward; got exit $rc: $(head -c 400 "$T_DIR/err")"
fi
t_tunlb_start --mode nth --set-sysctls
check_eq "--set-sysctls turned ip_forward on" "$(tl_exec "$P" lb cat /proc/sys/net/ipv4/ip_forward)" 1
check_eq "and the service works" "$(t_client curl -s --max-time 5 "$VIP_URL/")" b1
t_tunlb_stop

# IPv6 (issue 15).
TUN6=(--tun "$TL_TUN" --tun-addr "$TL_TUN_ADDR" --tun-addr "$TL_TUN_ADDR6")
V6="[$VIP6]:80"
B6="[$(tl_backend_addr6 1)]:80"
bad "are both IPv4" run "${TUN[@]}" --tun-addr 198.18.9.254/24 --vip "$V" --backend "$B1"
bad "are both IPv6" run "${TUN6[@]}" --tun-addr 2001:2:0:9::fe/64 --vip "$V6" --backend "$B6"
bad "must be 1 to 126" run --tun "$TL_TUN" --tun-addr 2001:2::fe/127 --vip "$V6" --backend "$B6"
# --io packet serves IPv6 too (38-packet-io), and refuses mixed families the same way.
bad "is IPv6 but its --backend" run --io packet --vip "$V6" --backend "$B1"
bad "is IPv6 but its --backend" run "${TUN6[@]}" --vip "$V6" --backend "$B1"
refused 'local address' "${TUN6[@]}" --vip "[$TL_LB_BACKEND_ADDR6]:80" --backend "$B6"
refused 'routes via c0, not into' "${TUN6[@]}" --vip "[2001:2:0:1::9]:80" --backend "$B6"
refused 'local address|tun-addr' "${TUN6[@]}" --vip "[${TL_TUN_ADDR6%/*}]:80" --backend "$B6"
tl_sysctl "${P}lb" net.ipv6.conf.all.forwarding 0
rc=0
tl_exec "$P" lb timeout 5 "$TUNLB_BIN" run "${TUN6[@]}" --vip "$V6" --backend "$B6" 2>"$T_DIR/err" || rc=$?
if [ "$rc" -eq 1 ] && grep -q 'net.ipv6.conf.all.forwarding' "$T_DIR/err" && [ "$(wc -l <"$T_DIR/err")" -eq 1 ]; then
  ok "IPv6 forwarding off: exit 1, one line naming net.ipv6.conf.all.forwarding"
else
  not_ok "IPv6 forwarding off: want exit 1 naming net.ipv6.conf.all.forwarding; got exit $rc: $(head -c 400 "$T_DIR/err")"
fi
t6_start --mode nth --set-sysctls || exit 1
check_eq "--set-sysctls turned IPv6 forwarding on" "$(tl_exec "$P" lb cat /proc/sys/net/ipv6/conf/all/forwarding)" 1
check_eq "and the IPv6 service works" "$(t_client curl -s --max-time 5 "$VIP6_URL/")" b1
t_tunlb_stop
