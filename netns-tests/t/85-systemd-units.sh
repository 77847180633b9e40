#!/usr/bin/env bash
# The systemd units in contrib/systemd. (1) `systemd-analyze verify` finds
# nothing wrong in tunlb.service and tunlb@.service, alone and with the
# tunlb-packet.conf drop-in, and tunlb.service is the template's instance
# "tunlb". (2) `systemd-analyze security --offline=true` scores each at most
# the exposure measured when they were written. (3) There is no systemd
# (PID 1) here to start them, so tunlb runs the way the template's instance
# "web" would, with its settings read from the unit file: its ExecStart (the
# config path moved into the scratch directory), as nobody with the unit's
# capabilities, no_new_privs, every mount read-only but the RuntimeDirectory
# (stricter than ProtectSystem=strict: /proc, /sys and /dev too, so /proc/sys
# is read-only as with ProtectKernelTunables=), and a seccomp filter built
# from its SystemCallFilter=, RestrictAddressFamilies=,
# MemoryDenyWriteExecute= and SystemCallArchitectures=native, stricter than
# the unit's too: a syscall outside the list kills tunlb instead of failing
# with EPERM (one the unit's "~" lines deny fails with its
# SystemCallErrorNumber=, as under systemd: a `--nice` there is refused in
# one line that says so). It must create its TUN, balance, answer
# `tunlb stats` on the
# unit's control socket, reload on the unit's ExecReload and stop cleanly;
# --set-sysctls must fail there (/proc/sys is read-only). Two negative checks
# show the filter bites. User namespaces, DeviceAllow= and the other
# cgroup-based settings are not emulated. netns-tests/t/70-privileges.sh
# covers CAP_NET_ADMIN alone without the rest of the sandbox. (4) The same
# run on the packet datapath, with tunlb-packet.conf's additions.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

UNITS=$T_ROOT/contrib/systemd
# Exposure levels measured with systemd 252 (Debian 12), the CI's.
MAX_EXPOSURE=1.7
MAX_EXPOSURE_PACKET=2.0

if ! command -v systemd-analyze >/dev/null; then
  not_ok "systemd-analyze is missing: apt-get install systemd"
  exit 1
fi

# (1) verify. The ExecStart binary must exist: in a private mount namespace,
# a tmpfs over /usr/local/bin holds a copy of the one under test.
D=$T_DIR/units
mkdir -p "$D/tunlb.service.d" "$D/tunlb@.service.d"
cp "$UNITS/tunlb.service" "$UNITS/tunlb@.service" "$D/"
cp "$UNITS/tunlb-packet.conf" "$D/tunlb.service.d/packet.conf"
cp "$UNITS/tunlb-packet.conf" "$D/tunlb@.service.d/packet.conf"
# shellcheck disable=SC2016  # "$0" and "$@" belong to the inner sh
verify() {
  unshare --mount --propagation private -- sh -c \
    'mount -t tmpfs -o mode=755 tmpfs /usr/local/bin && cp "$0" /usr/local/bin/tunlb &&
     systemd-analyze verify --man=no "$@" 2>&1' "$TUNLB_BIN" "$@"
}
# verified WHAT UNIT_FILE: PASS when verify exits 0 and prints nothing.
verified() {
  local out rc=0
  out=$(verify "$2") || rc=$?
  if [ "$rc" -eq 0 ] && [ -z "$out" ]; then ok "systemd-analyze verify $1: exit 0, nothing printed"
  else not_ok "systemd-analyze verify $1: exit $rc: $(tr '\n' ' ' <<<"$out" | head -c 400)"; fi
}
for u in tunlb.service tunlb@.service; do
  verified "$u" "$UNITS/$u"
  verified "$u with the packet drop-in" "$D/$u"
done

# The settings of a unit with comments and Description= removed.
settings() { grep -v '^#\|^$\|^Description=' "$1"; }
if diff <(settings "$UNITS/tunlb@.service" | sed 's/%i/tunlb/g') <(settings "$UNITS/tunlb.service") \
  >"$T_DIR/units.diff"; then
  ok "tunlb.service is tunlb@.service's instance \"tunlb\" (settings identical)"
else
  not_ok "tunlb.service is not tunlb@.service's instance \"tunlb\": $(head -c 400 "$T_DIR/units.diff" | tr '\n' ' ')"
fi

# (2) security.
# exposure UNIT_FILE: the overall exposure level, e.g. "1.7".
exposure() {
  systemd-analyze security --offline=true --no-pager "$1" 2>&1 |
    sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'
}
# at_most WHAT VALUE MAX
at_most() {
  if [ -n "$2" ] && awk -v v="$2" -v m="$3" 'BEGIN { exit !(v <= m) }'; then
    ok "$1: exposure $2 (at most $3)"
  else
    not_ok "$1: exposure '$2', want at most $3"
  fi
}
for u in tunlb.service tunlb@.service; do
  at_most "systemd-analyze security $u" "$(exposure "$UNITS/$u")" "$MAX_EXPOSURE"
  at_most "systemd-analyze security $u with the packet drop-in" "$(exposure "$D/$u")" "$MAX_EXPOSURE_PACKET"
done

# (3) tunlb under the template's settings.
UNIT=$UNITS/tunlb@.service
INSTANCE=web
# setting NAME: every value of NAME= in the unit (one line each), %i expanded.
setting() { sed -n "s/^$1=//p" "$UNIT" | sed "s/%i/$INSTANCE/g"; }

if [ "$(uname -m)" != x86_64 ]; then
  note "the seccomp emulation knows x86-64 only: the sandboxed run is skipped on $(uname -m)"
  exit 0
fi
HEADER=/usr/include/x86_64-linux-gnu/asm/unistd_64.h
if [ ! -r "$HEADER" ]; then
  not_ok "$HEADER (syscall numbers) is missing: apt-get install linux-libc-dev"
  exit 1
fi
check_eq "the unit's SystemCallArchitectures=" "$(setting SystemCallArchitectures)" native
check "@system-service allows ioctl (TUNSETIFF and the SIOCSIF* calls)" \
  grep -qx '    ioctl' <(systemd-analyze syscall-filter @system-service)

# group_syscalls NAME...: the syscalls of the filter groups and names, nested groups expanded.
group_syscalls() {
  local n
  for n in "$@"; do
    case $n in
      @*) systemd-analyze syscall-filter "$n" | awk 'NR > 1 && !/^ *#/ && NF { print $1 }' |
        while read -r s; do group_syscalls "$s"; done ;;
      *) printf '%s\n' "$n" ;;
    esac
  done
}
# The policy: SystemCallFilter= lines (a "~" line removes), families, MDWE.
allow=$T_DIR/allow deny=$T_DIR/deny
: >"$allow"
: >"$deny"
while read -r line; do
  # shellcheck disable=SC2086  # a value is a list of names
  case $line in
    "~"*) group_syscalls ${line#\~} >>"$deny" ;;
    *) group_syscalls $line >>"$allow" ;;
  esac
done < <(setting SystemCallFilter)
POLICY=$T_DIR/policy
comm -23 <(sort -u "$allow") <(sort -u "$deny") | sed 's/^/allow /' >"$POLICY"
# What the "~" lines deny fails with SystemCallErrorNumber=, as under systemd.
check_eq "the unit's SystemCallErrorNumber=" "$(setting SystemCallErrorNumber)" EPERM
{
  sort -u "$deny" | sed 's/^/deny /'
  echo "errno 1"
} >>"$POLICY"
for fam in $(setting RestrictAddressFamilies); do
  case $fam in
    AF_UNIX) echo "family 1" ;; AF_INET) echo "family 2" ;; AF_INET6) echo "family 10" ;;
    AF_NETLINK) echo "family 16" ;; AF_PACKET) echo "family 17" ;;
    *) not_ok "RestrictAddressFamilies=$fam: unknown to this test" ;;
  esac
done >>"$POLICY"
[ "$(setting MemoryDenyWriteExecute)" = yes ] && echo mdwe >>"$POLICY"
note "seccomp policy: $(grep -c '^allow' "$POLICY") syscalls; socket families $(sed -n 's/^family //p' "$POLICY" | paste -sd, -)$(grep -q mdwe "$POLICY" && echo '; no W+X memory')"

cat >"$T_DIR/seccomp.py" <<'EOF'
"""seccomp.py POLICY CMD ARGS...: exec CMD under a seccomp filter.

POLICY lines: "allow NAME" (a syscall), "deny NAME" (a syscall that fails with
the errno of an "errno N" line), "family N" (a socket() address family
allowed), "mdwe" (no writable+executable mapping, no mprotect to executable).
Native x86-64 syscalls only; any other syscall kills the process."""
import ctypes
import os
import re
import struct
import sys

AUDIT_ARCH_X86_64 = 0xC000003E
KILL, ALLOW, ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
EPERM, EAFNOSUPPORT, PROT_WRITE, PROT_EXEC = 1, 97, 2, 4
LD, JEQ, JGE, JSET, AND, RET = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06

with open("/usr/include/x86_64-linux-gnu/asm/unistd_64.h") as f:
    NR = {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", f.read())}
allowed, denied, errno, families, mdwe = set(), set(), None, [], False
with open(sys.argv[1]) as f:
    for w in map(str.split, f):
        if w[:1] == ["allow"] and w[1] in NR:
            allowed.add(NR[w[1]])
        elif w[:1] == ["deny"] and w[1] in NR:
            denied.add(NR[w[1]])
        elif w[:1] == ["errno"]:
            errno = int(w[1])
        elif w[:1] == ["family"]:
            families.append(int(w[1]))
        elif w == ["mdwe"]:
            mdwe = True
prog = []
def op(code, k=0, jt=0, jf=0):
    prog.append(struct.pack("HBBI", code, jt, jf, k))
op(LD, 4)                                  # seccomp_data.arch
op(JEQ, AUDIT_ARCH_X86_64, 1, 0)
op(RET, KILL)
op(LD, 0)                                  # seccomp_data.nr
op(JGE, 0x40000000, 0, 1)                  # x32
op(RET, KILL)
op(JEQ, NR["socket"], 0, len(families) + 3)
op(LD, 16)                                 # args[0]: the family
for i, fam in enumerate(families):
    op(JEQ, fam, len(families) - i, 0)
op(RET, ERRNO | EAFNOSUPPORT)
op(RET, ALLOW)
op(LD, 0)
if mdwe:
    op(JEQ, NR["mmap"], 0, 5)
    op(LD, 32)                             # args[2]: prot
    op(AND, PROT_WRITE | PROT_EXEC)
    op(JEQ, PROT_WRITE | PROT_EXEC, 0, 1)
    op(RET, ERRNO | EPERM)
    op(RET, ALLOW)
    for name in ("mprotect", "pkey_mprotect"):
        op(JEQ, NR[name], 0, 4)
        op(LD, 32)
        op(JSET, PROT_EXEC, 0, 1)
        op(RET, ERRNO | EPERM)
        op(RET, ALLOW)
for n in sorted(allowed):
    op(JEQ, n, 0, 1)
    op(RET, ALLOW)
if errno is not None:
    for n in sorted(denied - allowed):
        op(JEQ, n, 0, 1)
        op(RET, ERRNO | errno)
op(RET, KILL)

class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
libc = ctypes.CDLL(None, use_errno=True)
fprog = Fprog(len(prog), b"".join(prog))
# PR_SET_NO_NEW_PRIVS (38), then PR_SET_SECCOMP (22) with SECCOMP_MODE_FILTER (2).
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):
    sys.exit(f"seccomp.py: prctl: {os.strerror(ctypes.get_errno())}")
os.execv(sys.argv[2], sys.argv[2:])
EOF

t_setup
PY=$(tl_python)
RUNTIME=/run/$(setting RuntimeDirectory)
CONF_DIR=$T_DIR/etc/tunlb
mkdir -p "$CONF_DIR"
chmod 755 "$T_DIR" "$T_DIR/etc" "$CONF_DIR"
# conf BACKEND_NUMBER...: the instance's config file, one service over those backends.
conf() {
  local i list=
  for i in "$@"; do list+="${list:+, }\"$(tl_backend_addr "$i"):80\""; done
  printf 'tun = "%s"\ntun_addr = "%s"\nmetrics = "127.0.0.1:9100"\n\n[health]\ninterval = 0.5\n\n[[service]]\nvip = "%s:80"\nmode = "nth"\nbackends = [%s]\n' \
    "$TL_TUN" "$TL_TUN_ADDR" "$VIP" "$list" >"$CONF_DIR/$INSTANCE.toml.new"
  chmod 644 "$CONF_DIR/$INSTANCE.toml.new"
  mv "$CONF_DIR/$INSTANCE.toml.new" "$CONF_DIR/$INSTANCE.toml"
}
conf 1 2 3 4

# The ExecStart line, its config path moved into the scratch directory.
read -ra EXEC <<<"$(setting ExecStart | sed "s|/etc/tunlb/|$CONF_DIR/|g")"
check_eq "ExecStart runs /usr/local/bin/tunlb run" "${EXEC[0]} ${EXEC[1]}" "/usr/local/bin/tunlb run"
caps=$(setting AmbientCapabilities | tr 'A-Z ' 'a-z\n' | sed 's/^cap_//' | grep . | paste -sd, -)
bound=$(setting CapabilityBoundingSet | tr 'A-Z ' 'a-z\n' | sed 's/^cap_//' | grep . | paste -sd, -)
check_eq "the unit's capabilities (ambient / bounding set)" "$caps / $bound" "net_admin / net_admin"
AS_UNIT=(setpriv --reuid=65534 --regid=65534 --clear-groups
  --inh-caps="-all,+$caps" --ambient-caps="+$caps" --bounding-set="-all,+$bound")
[ "$(setting NoNewPrivileges)" = yes ] && AS_UNIT+=(--no-new-privs)
# The unit sets no Nice=: tunlb runs at this shell's nice value.
check_eq "the unit's Nice= (none)" "$(setting Nice)" ""
NICE=$(nice)

# A 0666 node for /dev/net/tun where the host's is not (see 70-privileges).
TUN_NODE=
if [ "$(stat -L -c %a /dev/net/tun)" != 666 ]; then
  TUN_NODE=$T_DIR/tun
  mknod -m 666 "$TUN_NODE" c "$((0x$(stat -L -c %t /dev/net/tun)))" "$((0x$(stat -L -c %T /dev/net/tun)))"
fi
# $SANDBOX, run by sh with CMD... as arguments: in a private mount namespace, as root: the binary under
# test at /usr/local/bin/tunlb, every mount read-only, a fresh /run with the
# RuntimeDirectory owned by nobody (the only writable place); then exec CMD.
# shellcheck disable=SC2016  # the script's variables belong to the inner sh
SANDBOX='set -e
[ -z "$TUN_NODE" ] || mount --bind "$TUN_NODE" /dev/net/tun
mount -t tmpfs -o mode=755 tmpfs /usr/local/bin
cp "$TUNLB_BIN" /usr/local/bin/tunlb
mount --bind /proc/sys /proc/sys
for mp in $(awk "{ print \$5 }" /proc/self/mountinfo | sort -u); do
  mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p "$RUNTIME"
chown 65534:65534 "$RUNTIME"
mount --bind "$RUNTIME" "$RUNTIME"
mount -o remount,bind,ro /run
exec "$@"'
# shellcheck disable=SC2016
check "the emulated sandbox: only the RuntimeDirectory is writable" tl_exec "$P" lb env \
  TUN_NODE="$TUN_NODE" TUNLB_BIN="$TUNLB_BIN" RUNTIME="$RUNTIME" \
  unshare --mount --propagation private -- sh -c "$SANDBOX" sandbox sh -c \
  '! touch "$0/probe" 2>/dev/null && ! echo 1 2>/dev/null >/proc/sys/net/ipv4/ip_forward &&
   ! touch /run/probe 2>/dev/null && touch "$1/probe"' "$T_DIR" "$RUNTIME"
AS_SERVICE=("$PY" "$T_DIR/seccomp.py")

caps_of() {
  awk '/^Uid:/ { u = $2 "," $3 "," $4 "," $5 } /^CapEff:/ { e = $2 } /^NoNewPrivs:/ { n = $2 }
    /^Seccomp:/ { s = $2 } END { print "uid=" u, "eff=" e, "nnp=" n, "seccomp=" s }' "/proc/$1/status"
}
four() { for _ in 1 2 3 4; do t_client curl -s --max-time 5 "$VIP_URL/" || echo fail; done | tr '\n' ' '; }

t_tunlb_start_cmd env TUN_NODE="$TUN_NODE" TUNLB_BIN="$TUNLB_BIN" RUNTIME="$RUNTIME" \
  unshare --mount --propagation private -- sh -c "$SANDBOX" sandbox \
  "${AS_UNIT[@]}" "${AS_SERVICE[@]}" "$POLICY" "${EXEC[@]}"
check_eq "runs as nobody, CAP_NET_ADMIN only, no_new_privs, seccomp filter" "$(caps_of "$TUNLB_PID")" \
  "uid=65534,65534,65534,65534 eff=0000000000001000 nnp=1 seccomp=2"
check "it created its TUN" test -n "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)"
# The ready line comes before the packet thread starts: wait for it (5 s at most).
pkt_nice=
for ((k = 0; k < 100; k++)); do
  for t in /proc/"$TUNLB_PID"/task/*; do
    if [ "$(cat "$t/comm" 2>/dev/null)" = tunlb-pkt0 ]; then pkt_nice=$(awk '{ print $19 }' "$t/stat" 2>/dev/null || true); fi
  done
  [ -z "$pkt_nice" ] || break
  sleep 0.05
done
check_eq "its packet thread runs at the process's nice value" "$pkt_nice" "$NICE"
check "the ready line gives that nice value" grep -q "thread(s) at nice $NICE (the process's)" "$TUNLB_LOG"
check_eq "requests flow through the VIP" "$(four)" "b1 b2 b3 b4 "
CONTROL=$(printf '%s\n' "${EXEC[@]}" | sed -n '/^--control$/{n;p}')
check "tunlb stats answers on the unit's control socket $CONTROL" \
  sh -c "nsenter -t $TUNLB_PID -m /usr/local/bin/tunlb stats --control '$CONTROL' | grep -q '$VIP:80'"
check "metrics answer" sh -c "ip netns exec ${P}lb curl -s --max-time 5 http://127.0.0.1:9100/metrics | grep -q '^tunlb_flows '"

# ExecReload, with $MAINPID.
conf 1 2 3
read -ra RELOAD <<<"$(setting ExecReload | sed "s/\\\$MAINPID/$TUNLB_PID/")"
"${RELOAD[@]}"
check "ExecReload (${RELOAD[*]}) reloads the config" t_wait_until 10 grep -q reloaded "$TUNLB_LOG"
check_eq "after the reload: the new backend set" \
  "$(for _ in 1 2 3; do t_client curl -s --max-time 5 "$VIP_URL/" || echo fail; done | tr '\n' ' ')" "b1 b2 b3 "
pid=$TUNLB_PID
t_tunlb_stop
rc=0
wait "$pid" || rc=$?
check_eq "SIGTERM: exit status" "$rc" 0
check "the TUN it created is gone" test -z "$(ip -n "${P}lb" link show "$TL_TUN" 2>/dev/null)"
if grep -qiw 'error\|panicked' "$TUNLB_LOG"; then
  not_ok "no error in the log: $(grep -iw 'error\|panicked' "$TUNLB_LOG" | head -3)"
else
  ok "no error in the log"
fi

# run_sandboxed POLICY ARGS...: start tunlb like the unit, with POLICY and
# extra ARGS, in the lb namespace, and wait for it to end (at most 20 s);
# prints "rc=N" and its output.
run_sandboxed() {
  local policy=$1 rc=0
  shift
  tl_exec "$P" lb timeout 20 env TUN_NODE="$TUN_NODE" TUNLB_BIN="$TUNLB_BIN" RUNTIME="$RUNTIME" \
    unshare --mount --propagation private -- sh -c "$SANDBOX" sandbox \
    "${AS_UNIT[@]}" "${AS_SERVICE[@]}" "$policy" "${EXEC[@]}" "$@" \
    >"$T_DIR/out" 2>&1 </dev/null || rc=$?
  echo "rc=$rc $(tr '\n' ' ' <"$T_DIR/out")"
}
tl_sysctl "${P}lb" net.ipv4.ip_forward 0
out=$(run_sandboxed "$POLICY" --set-sysctls)
tl_sysctl "${P}lb" net.ipv4.ip_forward 1
if [[ $out == "rc=1 "*"cannot set net.ipv4.ip_forward: Read-only file system"* ]]; then
  ok "--set-sysctls under the unit: exit 1, /proc/sys is read-only"
else
  not_ok "--set-sysctls under the unit: want exit 1 naming the read-only sysctl, got: ${out:0:300}"
fi

# --nice under the unit: setpriority() is denied (~@resources, EPERM), and
# the one-line error says so, not that a capability is missing.
out=$(run_sandboxed "$POLICY" --nice -10)
if [[ $out == "rc=1 "*"--nice -10: cannot give the packet threads that nice value: Operation not permitted"*"setpriority is refused here"* ]]; then
  ok "--nice -10 under the unit: exit 1, setpriority refused by the filter (EPERM)"
else
  not_ok "--nice -10 under the unit: want exit 1 naming the refused setpriority, got: ${out:0:300}"
fi

# The filter bites: without ioctl tunlb dies of SIGSYS (128 + 31); without
# AF_INET it cannot configure its TUN.
grep -vx 'allow ioctl' "$POLICY" >"$T_DIR/policy-no-ioctl"
out=$(run_sandboxed "$T_DIR/policy-no-ioctl")
check_eq "a filter without ioctl: tunlb killed by SIGSYS" "${out%% *}" rc=159
grep -vx 'family 2' "$POLICY" >"$T_DIR/policy-no-inet"
out=$(run_sandboxed "$T_DIR/policy-no-inet")
if [[ $out == "rc=1 "*"Address family not supported"* ]]; then
  ok "a filter without AF_INET: tunlb cannot configure its TUN (exit 1)"
else
  not_ok "a filter without AF_INET: want exit 1 naming the address family, got: ${out:0:300}"
fi

# (4) The packet datapath under the unit plus tunlb-packet.conf: the drop-in's
# capabilities and address families added to the unit's (as systemd merges
# them), the config saying io = "packet". It must start, add its blackhole
# route, balance, and leave nothing behind on SIGTERM.
DROPIN=$UNITS/tunlb-packet.conf
dropin() { sed -n "s/^$1=//p" "$DROPIN"; }
caps_p=$(printf '%s %s\n' "$(setting AmbientCapabilities)" "$(dropin AmbientCapabilities)" |
  tr 'A-Z ' 'a-z\n' | sed 's/^cap_//' | grep . | paste -sd, -)
bound_p=$(printf '%s %s\n' "$(setting CapabilityBoundingSet)" "$(dropin CapabilityBoundingSet)" |
  tr 'A-Z ' 'a-z\n' | sed 's/^cap_//' | grep . | paste -sd, -)
check_eq "the drop-in's capabilities added (ambient / bounding set)" "$caps_p / $bound_p" \
  "net_admin,net_raw / net_admin,net_raw"
cp "$POLICY" "$T_DIR/policy-packet"
for fam in $(dropin RestrictAddressFamilies); do
  case $fam in
    AF_PACKET) echo "family 17" ;; AF_NETLINK) echo "family 16" ;;
    *) not_ok "tunlb-packet.conf: RestrictAddressFamilies=$fam: unknown to this test" ;;
  esac
done >>"$T_DIR/policy-packet"
AS_UNIT_P=(setpriv --reuid=65534 --regid=65534 --clear-groups
  --inh-caps="-all,+${caps_p//,/,+}" --ambient-caps="+${caps_p//,/,+}" --bounding-set="-all,+${bound_p//,/,+}")
[ "$(setting NoNewPrivileges)" = yes ] && AS_UNIT_P+=(--no-new-privs)
printf 'io = "packet"\nmetrics = "127.0.0.1:9100"\n\n[[service]]\nvip = "%s:80"\nmode = "nth"\nbackends = [%s]\n' \
  "$VIP" "$(for i in 1 2 3 4; do printf '"%s:80",' "$(tl_backend_addr "$i")"; done | sed 's/,$//')" \
  >"$CONF_DIR/$INSTANCE.toml"
t_tunlb_start_cmd env TUN_NODE="$TUN_NODE" TUNLB_BIN="$TUNLB_BIN" RUNTIME="$RUNTIME" \
  unshare --mount --propagation private -- sh -c "$SANDBOX" sandbox \
  "${AS_UNIT_P[@]}" "${AS_SERVICE[@]}" "$T_DIR/policy-packet" "${EXEC[@]}"
check_eq "packet: runs as nobody, CAP_NET_ADMIN and CAP_NET_RAW, no_new_privs, seccomp filter" \
  "$(caps_of "$TUNLB_PID")" "uid=65534,65534,65534,65534 eff=0000000000003000 nnp=1 seccomp=2"
check "packet: the ready line names the packet datapath" grep -q "ready: packet on" "$TUNLB_LOG"
check "packet: its blackhole route for the VIP" \
  grep -q "blackhole $VIP " <<<"$(ip -n "${P}lb" route show proto 213)"
check_eq "packet: requests flow through the VIP" "$(four)" "b1 b2 b3 b4 "
pid=$TUNLB_PID
t_tunlb_stop
rc=0
wait "$pid" || rc=$?
check_eq "packet: SIGTERM: exit status" "$rc" 0
check_eq "packet: the blackhole route is gone" "$(ip -n "${P}lb" route show proto 213)" ""
if grep -qiw 'error\|panicked' "$TUNLB_LOG"; then
  not_ok "packet: no error in the log: $(grep -iw 'error\|panicked' "$TUNLB_LOG" | head -3)"
else
  ok "packet: no error in the log"
fi
