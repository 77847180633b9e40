#!/usr/bin/env bash
# --pcap FILE: tunlb records every packet as received (interface 0,
# "before-nat") and as sent (interface 1, "after-nat") in pcapng. Judged
# against dumpcap on the client's and b1's veths during one curl (nth: the
# first connection goes to b1): every TCP packet of the connection is in the
# capture once per side, the VIP as destination before NAT and b1 after, the
# first packet carries the NAT decision word for word as --trace logs it,
# state changes are commented, a dropped packet (a SYN to a port with no
# service) is on the first side only with its drop reason, and the "after"
# side's IP and TCP checksums verify in tshark. Then `tunlb ladder` lists
# the connection and draws it: well-formed SVG (python3's XML parser) with
# one group per packet of the connection. Last, with GRO on the lb's
# ingress veths (as t/37-offload.sh), a 1 MiB download: the super-packets
# are recorded whole on both sides, each commented as one, and every packet
# after NAT that is not has valid checksums.
# shellcheck source=netns-tests/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/../lib.sh"

t_setup
PCAP=$T_DIR/lb.pcapng
B1=$(tl_backend_addr 1)
t_capture_start client eth0 cap-client "$T_DIR/client.pcapng" "tcp"
t_capture_start b1 eth0 cap-b1 "$T_DIR/b1.pcapng" "tcp"
t_tunlb_start --mode nth --trace --pcap "$PCAP" --pcap-limit 10MiB
check "the log says where packets are recorded, and the limit" grep -qF "recording packets before and after NAT in $PCAP (up to 10 MiB)" "$TUNLB_LOG"

rc=0
t_client curl -s --max-time 5 -o "$T_DIR/body" "$VIP_URL/" || rc=$?
check_eq "curl through tunlb with --pcap: exit" "$rc" 0
# A SYN to a port no service listens on: dropped (invalid_no_flow).
rc=0
t_client curl -s --max-time 1 -o /dev/null "http://$VIP:81/" || rc=$?
check_eq "curl to VIP:81 (no service) times out" "$rc" 28
t_capture_stop cap-client cap-b1
t_tunlb_stop
check "the log gives the capture's totals at exit" grep -qE -- "--pcap $PCAP: [0-9]+ packets, [0-9]+ bytes" "$TUNLB_LOG"

rc=0
tshark -n -r "$PCAP" >"$T_DIR/lb.txt" 2>"$T_DIR/lb.err" || rc=$?
check_eq "tshark -r reads the capture: exit" "$rc" 0
check_range "tshark -r: packets in the capture" "$(grep -c . "$T_DIR/lb.txt")" 10 1000
check_eq "the two interfaces, as tshark names and describes them" \
  "$(tshark -n -r "$PCAP" -T fields -e frame.interface_id -e frame.interface_name -e frame.interface_description 2>/dev/null | sort -u | tr '\t\n' '|;')" \
  "0|before-nat|as received, before NAT;1|after-nat|as sent, after NAT;"
check_eq "the file is readable by its owner only" "$(stat -c %a "$PCAP")" 600

fields=(-T fields -E separator=/t -e frame.interface_id -e ip.src -e tcp.srcport -e ip.dst -e tcp.dstport
  -e tcp.seq_raw -e tcp.ack_raw -e tcp.flags -e tcp.len -e frame.comment)
tshark -n -r "$PCAP" "${fields[@]}" -E occurrence=a -E aggregator='|' >"$T_DIR/lb.tsv" 2>/dev/null
tshark -n -r "$T_DIR/client.pcapng" "${fields[@]}" >"$T_DIR/client.tsv" 2>/dev/null
tshark -n -r "$T_DIR/b1.pcapng" "${fields[@]}" >"$T_DIR/b1.tsv" 2>/dev/null

# Every packet of the connection, compared as (seq, ack, flags, length) per
# direction and side; prints "name value" lines.
"$(tl_python)" - "$T_DIR" "$TL_CLIENT_ADDR" "$VIP" "$B1" >"$T_DIR/judge.txt" <<'EOF'
import collections, sys
d, client, vip, b1 = sys.argv[1:]
def rows(name):
    out = []
    for line in open(f"{d}/{name}.tsv"):
        f = line.rstrip("\n").split("\t")
        if len(f) < 9 or not f[2]:
            continue
        out.append(dict(iface=f[0], src=f[1], sport=f[2], dst=f[3], dport=f[4],
                        key=(f[5], f[6], f[7], f[8]), comments=f[9] if len(f) > 9 else ""))
    return out
lb, cl, b = rows("lb"), rows("client"), rows("b1")
# The connection: the client's port to VIP:80 in the client's capture.
cport = next(r["sport"] for r in cl if r["dst"] == vip and r["dport"] == "80")
conn_c = lambda r: {r["src"], r["dst"]} == {client, vip} and {r["sport"], r["dport"]} == {cport, "80"}
syn = next(r for r in lb if r["iface"] == "0" and r["src"] == client and r["sport"] == cport)
print("cport", cport)
print("decision", syn["comments"])
masq = syn["comments"].split("MASQ ")[1].split(" ")[0].rstrip(",")
mip, mport = masq.rsplit(":", 1)
conn_b = lambda r: {r["src"], r["dst"]} == {b1, mip} and {r["sport"], r["dport"]} == {"80", mport}
ms = lambda rs: collections.Counter(r["key"] for r in rs)
def same(label, lb_rows, wire_rows):
    print(label, "same" if ms(lb_rows) == ms(wire_rows) and lb_rows else
          f"differ: tunlb {len(lb_rows)} wire {len(wire_rows)}")
side = lambda i: [r for r in lb if r["iface"] == i]
same("client_to_vip_before", [r for r in side("0") if conn_c(r) and r["src"] == client],
     [r for r in cl if conn_c(r) and r["src"] == client])
same("vip_to_client_after", [r for r in side("1") if conn_c(r) and r["dst"] == client],
     [r for r in cl if conn_c(r) and r["dst"] == client])
same("masq_to_b1_after", [r for r in side("1") if conn_b(r) and r["dst"] == b1],
     [r for r in b if conn_b(r) and r["dst"] == b1])
same("b1_to_masq_before", [r for r in side("0") if conn_b(r) and r["src"] == b1],
     [r for r in b if conn_b(r) and r["src"] == b1])
conn = [r for r in lb if conn_c(r) or conn_b(r)]
print("before_records", len([r for r in conn if r["iface"] == "0"]))
print("after_records", len([r for r in conn if r["iface"] == "1"]))
# On the wire, what tunlb read: the client's and b1's own packets; what it
# wrote: what they received.
print("wire_sent", len([r for r in cl if conn_c(r) and r["src"] == client]) + len([r for r in b if conn_b(r) and r["src"] == b1]))
print("wire_received", len([r for r in cl if conn_c(r) and r["dst"] == client]) + len([r for r in b if conn_b(r) and r["dst"] == b1]))
# Before NAT, the client's packets go to the VIP; after, to b1.
print("before_dst", sorted({r["dst"] for r in side("0") if conn_c(r) and r["src"] == client}))
print("after_dst", sorted({r["dst"] for r in side("1") if conn_b(r) and r["src"] == mip}))
# Pairs: each record of the connection before NAT is followed by its own after it.
pairs = all(lb[i + 1]["iface"] == "1" for i, r in enumerate(lb[:-1]) if r["iface"] == "0" and (conn_c(r) or conn_b(r)))
print("paired", pairs)
states = [c for r in conn for c in r["comments"].split("|") if c.startswith("STATE ")]
print("states", ";".join(s.split(" ", 4)[4] for s in states))
drops = [r for r in lb if r["dport"] == "81"]
print("drops_before", len([r for r in drops if r["iface"] == "0" and r["comments"] == "DROP invalid_no_flow"]))
print("drops_after", len([r for r in drops if r["iface"] == "1"]))
EOF
sed 's/^/    /' "$T_DIR/judge.txt"
j() { awk -v k="$1" '$1 == k { $1 = ""; sub(/^ /, ""); print }' "$T_DIR/judge.txt"; }
for dir in client_to_vip_before vip_to_client_after masq_to_b1_after b1_to_masq_before; do
  check_eq "$dir: the same packets (seq, ack, flags, length) as on the wire" "$(j "$dir")" same
done
check_eq "every packet of the connection once before NAT (as many as the client and b1 sent)" "$(j before_records)" "$(j wire_sent)"
check_eq "every packet of the connection once after NAT (as many as they received)" "$(j after_records)" "$(j wire_received)"
check_range "packets in the connection" "$(j before_records)" 8 40
check_eq "each packet before NAT is followed by its own after NAT" "$(j paired)" True
check_eq "before NAT, the client's packets go to the VIP" "$(j before_dst)" "['$VIP']"
check_eq "after NAT, they go to b1" "$(j after_dst)" "['$B1']"
decision=$(j decision)
check "the first packet's comment is the NAT decision (nth: backend 1 of 4): $decision" \
  grep -qE "^NEW $TL_CLIENT_ADDR:$(j cport) -> $VIP:80 => DNAT $B1:80, MASQ $VIP:[0-9]+ \(nth: backend 1 of 4\)\$" <<<"$decision"
check "the same words as the --trace line" grep -qF "$decision" "$TUNLB_LOG"
states=$(j states)
check "state changes commented, in order, from the handshake to TIME_WAIT: $states" \
  grep -qE '^SYN_SENT -> SYN_RECV;SYN_RECV -> ESTABLISHED;ESTABLISHED -> FIN_WAIT;.*-> TIME_WAIT$' <<<"$states"
check_range "SYNs to VIP:81 before NAT, commented DROP invalid_no_flow" "$(j drops_before)" 1 5
check_eq "none of them after NAT" "$(j drops_after)" 0

# Checksums after NAT: IP and TCP, verified by tshark (0xffff for 0x0000
# counted apart, as t_checksum_judge does).
read -r n bad good ffff < <(tshark -n -r "$PCAP" -Y 'frame.interface_id == 1' -o tcp.check_checksum:TRUE -o ip.check_checksum:TRUE \
  -T fields -e ip.checksum.status -e tcp.checksum.status -e tcp.checksum -e tcp.checksum_calculated 2>/dev/null |
  awk -F '\t' '{ n++ } $1 == "0" { bad++ } $2 == "0" && !($3 == "0xffff" && $4 == "0x0000") { bad++ }
    $1 == "1" && $2 == "1" { good++ } $3 == "0xffff" && $4 == "0x0000" { ffff++ }
    END { print n + 0, bad + 0, good + 0, ffff + 0 }')
note "after NAT: $n packets, $good with good IP and TCP checksums, $ffff with 0xffff for 0x0000"
check_eq "after NAT: bad IP/TCP checksums" "$bad" 0
check_eq "after NAT: every packet's checksums verified good" "$((good + ffff))" "$n"

# tunlb ladder: the listing, then the connection as SVG.
rc=0
"$TUNLB_BIN" ladder "$PCAP" >"$T_DIR/ladder.txt" 2>&1 || rc=$?
sed 's/^/    /' "$T_DIR/ladder.txt"
check_eq "tunlb ladder CAPTURE: exit" "$rc" 0
check_eq "tunlb ladder CAPTURE lists the one connection" "$(cat "$T_DIR/ladder.txt")" \
  "   1  $TL_CLIENT_ADDR:$(j cport) -> $VIP:80 => $B1:80 ($(j before_records) packets)"
rc=0
"$TUNLB_BIN" ladder "$PCAP" --flow 1 >"$T_DIR/flow.svg" 2>"$T_DIR/ladder.err" || rc=$?
check_eq "tunlb ladder CAPTURE --flow 1: exit" "$rc" 0
svg=$("$(tl_python)" - "$T_DIR/flow.svg" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
ns = "{http://www.w3.org/2000/svg}"
groups = [g for g in root.iter(ns + "g") if g.get("class") == "packet"]
texts = " ".join(t.text or "" for t in root.iter(ns + "text"))
print(root.tag == ns + "svg", len(groups), "SYN_SENT \u2192 SYN_RECV" in texts, "DNAT" in texts)
EOF
) || svg="not well-formed: $svg"
check_eq "the SVG parses as XML: an svg root, one group per packet, states and the decision written" \
  "$svg" "True $(j before_records) True True"
rc=0
"$TUNLB_BIN" ladder "$PCAP" --flow 2 >/dev/null 2>&1 || rc=$?
check_eq "tunlb ladder --flow 2 (there is one): usage error" "$rc" 2

# Super-packets: GRO on the lb's ingress veths, a fresh tunlb and capture.
for dev in c0 vb1 vb2 vb3 vb4; do
  tl_exec "$P" lb ethtool -K "$dev" gro on >/dev/null 2>&1 || note "ethtool -K $dev gro on failed"
done
GSO=$T_DIR/gso.pcapng
t_tunlb_start --mode nth --pcap "$GSO"
got=$(t_client curl -s --max-time 20 "$VIP_URL/file/small.bin" | sha256sum | cut -d' ' -f1)
check_eq "1 MiB download with offloads and --pcap: sha256" "$got" "$(tl_sha256 "$P" small.bin)"
t_tunlb_stop
read -r big0 big1 bigc < <(tshark -n -r "$GSO" -Y 'ip.len > 1500' -T fields -e frame.interface_id -e frame.comment 2>/dev/null |
  awk -F '\t' '{ n[$1]++ } $2 ~ /super-packet \(GSO\) of [0-9]+ bytes, segmented by the kernel later; TCP checksum partial/ { c++ }
    END { print n[0] + 0, n[1] + 0, c + 0 }')
note "super-packets (IP length > 1500): $big0 as received, $big1 as sent, $bigc commented"
check_range "super-packets recorded as received" "$big0" 1 100000
check_eq "as many recorded as sent" "$big1" "$big0"
check_eq "each commented as a super-packet" "$bigc" "$((big0 + big1))"
read -r n bad < <(tshark -n -r "$GSO" -Y 'frame.interface_id == 1 && !(frame.comment contains "checksum partial")' \
  -o tcp.check_checksum:TRUE -o ip.check_checksum:TRUE -T fields -e ip.checksum.status -e tcp.checksum.status \
  -e tcp.checksum -e tcp.checksum_calculated 2>/dev/null |
  awk -F '\t' '{ n++ } $1 == "0" || ($2 == "0" && !($3 == "0xffff" && $4 == "0x0000")) { bad++ } END { print n + 0, bad + 0 }')
check_range "packets after NAT with a complete checksum" "$n" 20 100000
check_eq "of those, bad IP/TCP checksums" "$bad" 0
