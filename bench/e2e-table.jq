# bench/e2e-table.jq: latest.json -> latest.md (jq -r -f bench/e2e-table.jq latest.json).

def dash: "-";
def i: if . == null then dash else round | tostring end;
def f(n): if . == null then dash else (. * pow(10; n) | round) / pow(10; n) | tostring end;
def x: if . == null then dash else ((. * 100 | round) / 100 | tostring) + "x" end;
# alt: the flags --alt added, and the other build --alt-bin named (its hash).
def altname($m): "tunlb (nth)"
  + (if ($m.alt_extra_args // "") != "" then " `\($m.alt_extra_args)`" else "" end)
  + (if ($m.alt_binary_sha256_16 // "") != "" then ", other build \($m.alt_binary_sha256_16)" else "" end);
def has_alt($m): (($m.alt_extra_args // "") != "") or (($m.alt_binary_sha256_16 // "") != "");
def name($m): {tunlb: "tunlb (nth)", packet: "tunlb (nth) `--io packet`", alt: altname($m), kernel: "kernel NAT (iptables nth cascade + MASQUERADE)",
           haproxy: "HAProxy `mode tcp` roundrobin", direct: "direct (routed, no balancer)",
           fwd: "minimal TUN forwarder (examples/tunfwd.rs)",
           pktfwd: "tunlb's packet sockets, static NAT, no engine (examples/pktfwd.rs)",
           afpfwd: "reference AF_PACKET forwarder, no tunlb code (bench/reference/afpfwd.c)",
           tunlb6: "IPv6: tunlb (nth)", packet6: "IPv6: tunlb (nth) `--io packet`", kernel6: "IPv6: kernel NAT66 (ip6tables nth cascade + MASQUERADE)",
           haproxy6: "IPv6: HAProxy `mode tcp` roundrobin", direct6: "IPv6: direct (routed, no balancer)"}[.] // .;
def row(cells): "| " + (cells | join(" | ")) + " |";

.meta as $m | .medians as $md | .ratios as $r
| (["tunlb", "packet", "alt", "fwd", "pktfwd", "afpfwd", "kernel", "haproxy", "direct", "tunlb6", "packet6", "kernel6", "haproxy6", "direct6"] | map(select($md[.] != null))) as $cfgs
| (
  "# tunlb end to end, side by side",
  "",
  "Run \($m.started) to \($m.finished) (UTC) by `bench/e2e.sh`: \($m.rounds) round(s), \($m.duration_s) s per run, configurations interleaved (\($m.order | join(" "))) with a fresh namespace topology for each; the medians over rounds.",
  "Machine: `nproc` = \($m.nproc) (\($m.cpu_model)), `uname -r` = \($m.kernel). tunlb \($m.tunlb_commit)" +
    (if $m.tunlb_src_files_modified > 0 then " with \($m.tunlb_src_files_modified) modified file(s) under src/ (built from the working tree)" else "" end) +
    "; \($m.tools.haproxy), nginx \($m.tools.nginx), \($m.tools.wrk), \($m.tools.iperf3).",
  "",
  "**Absolute numbers on a shared 2-core machine are noisy; the ratios are the result.** Client, balancer, the four backends and the load generators share the same cores" +
    (if ($m.other_build_procs_start + $m.other_build_procs_end) > 0 or ([.runs[] | .other_build_procs // 0] | max) > 0
     then ", and other engineers' builds (rustc/cargo) were running during part of this run (load average \($m.loadavg_start) at the start, \($m.loadavg_end) at the end)."
     else " (load average \($m.loadavg_start) at the start, \($m.loadavg_end) at the end)." end),
  (([.runs[] | select(.steal_share != null)]) as $st
   | if ($st | length) == 0 then empty
     else ($st | map(select(.steal_share > 0.1))) as $bad
     | "",
       "Steal (the hypervisor running other guests on these CPUs): at most \($st | map(.steal_share) | max * 100 | round) % of the machine's CPU time in any run." +
       (if ($bad | length) > 0
        then " **\($bad | length) run(s) lost more than 10 %, and their numbers say more about the host than about what was measured:** " +
             ($bad | map("\(.config) \(.test) round \(.round) (\(.steal_share * 100 | round) %)") | join(", ")) + "."
        else "" end)
     end),
  "",
  "## Rates and latency (medians)",
  "",
  row(["in the middle", "new conn/s (`Connection: close`)", "p50 ms", "p99 ms", "keep-alive req/s", "p50 ms", "p99 ms",
       "sequential p50 ms (light load)", "iperf3 1 stream c->s Gbit/s", "1 stream s->c", "4 streams c->s", "4 streams s->c"]),
  row([range(12) | "---"]),
  ($cfgs[] as $c | $md[$c] as $v |
    row([($c | name($m)), ($v.conn_close.rps | i), ($v.conn_close.p50_ms | f(2)), ($v.conn_close.p99_ms | f(2)),
         ($v.keepalive.rps | i), ($v.keepalive.p50_ms | f(2)), ($v.keepalive.p99_ms | f(2)), ($v.seq_close.p50_ms | f(3)),
         ($v.iperf_1.gbps | f(2)), ($v.iperf_1R.gbps | f(2)), ($v.iperf_4.gbps | f(2)), ($v.iperf_4R.gbps | f(2))])),
  "",
  "## Ratios (" + (if has_alt($m) then "A/B: A's median / B's, alt being \(altname($m))" else "tunlb's median / the other's" end) + "; rates: higher is better for " + (if has_alt($m) then "A" else "tunlb" end) + ", latency and CPU: lower is)",
  "",
  row(["ratio", "new conn/s", "p99 (close)", "keep-alive req/s", "sequential p50", "iperf3 1 c->s", "1 s->c", "4 c->s", "4 s->c",
       "machine CPU per new conn", "per keep-alive req"]),
  row([range(11) | "---"]),
  ($r | to_entries[] | .key as $k | .value as $v |
    row([$k, ($v.conn_close.rate | x), ($v.conn_close.p99 | x), ($v.keepalive.rate | x), ($v.seq_close.p50 | x),
         ($v.iperf_1.rate | x), ($v.iperf_1R.rate | x), ($v.iperf_4.rate | x), ($v.iperf_4R.rate | x),
         ($v.conn_close.cpu_busy_machine | x), ($v.keepalive.cpu_busy_machine | x)])),
  "",
  "Goals (issue 5): new connections >= 0.85x kernel NAT and >= 1.3x HAProxy; keep-alive >= 0.8x kernel NAT; bulk >= 0.75x kernel NAT.",
  (if .calm == null then empty else
     .calm as $calm | $calm.medians as $cm |
     "",
     "## Without the runs the host disturbed",
     "",
     "The same medians and ratios over the runs that lost at most \($calm.max_steal_share * 100 | round) % of the machine's CPU time to steal (\($calm.runs_left_out) run(s) left out). Each cell says over how many rounds (n): a cell of one round is one measurement, not a median.",
     "",
     row(["in the middle", "new conn/s (n)", "keep-alive req/s (n)", "sequential p50 ms (n)", "iperf3 1 stream c->s Gbit/s (n)", "4 streams c->s (n)"]),
     row([range(6) | "---"]),
     ($cfgs[] as $c | $cm[$c] as $v | select($v != null) |
       def cell(v; n): if n == null or n == 0 then dash else "\(v) (\(n))" end;
       row([($c | name($m)), cell($v.conn_close.rps | i; $v.conn_close.n), cell($v.keepalive.rps | i; $v.keepalive.n),
            cell($v.seq_close.p50_ms | f(3); $v.seq_close.n), cell($v.iperf_1.gbps | f(2); $v.iperf_1.n),
            cell($v.iperf_4.gbps | f(2); $v.iperf_4.n)])),
     "",
     row(["ratio", "new conn/s", "keep-alive req/s", "sequential p50", "iperf3 1 c->s", "4 c->s", "machine CPU per new conn", "per keep-alive req"]),
     row([range(8) | "---"]),
     ($calm.ratios | to_entries[] | .key as $k | .value as $v |
       row([$k, ($v.conn_close.rate | x), ($v.keepalive.rate | x), ($v.seq_close.p50 | x), ($v.iperf_1.rate | x),
            ($v.iperf_4.rate | x), ($v.conn_close.cpu_busy_machine | x), ($v.keepalive.cpu_busy_machine | x)]))
   end),
  "",
  "## CPU (medians, per unit of work)",
  "",
  "Balancer: the process's own CPU time (all threads, utime+stime) for tunlb and HAProxy; this kernel uses tick accounting, so it includes the kernel forwarding its `write()`s drive. Kernel NAT has no process: its cost is inside the machine-wide softirq time, together with every namespace's TCP stack; compare its softirq with the direct row's (the difference approximates conntrack + NAT). Machine-wide numbers include anything else the machine ran meanwhile.",
  "",
  row(["in the middle", "balancer us/new conn", "us/keep-alive req", "ms/Gbit (4 streams c->s)",
       "machine softirq us/new conn", "us/keep-alive req", "ms/Gbit",
       "machine busy us/new conn", "us/keep-alive req", "ms/Gbit"]),
  row([range(10) | "---"]),
  ($cfgs[] as $c | $md[$c] as $v |
    row([($c | name($m)), ($v.conn_close.cpu_balancer | f(1)), ($v.keepalive.cpu_balancer | f(1)), ($v.iperf_4.cpu_balancer | f(0)),
         ($v.conn_close.cpu_softirq_machine | f(1)), ($v.keepalive.cpu_softirq_machine | f(1)), ($v.iperf_4.cpu_softirq_machine | f(0)),
         ($v.conn_close.cpu_busy_machine | f(1)), ($v.keepalive.cpu_busy_machine | f(1)), ($v.iperf_4.cpu_busy_machine | f(0))])),
  "",
  "## How it was measured",
  "",
  "- Topology: client 198.18.1.2 -- lb (router, c0 198.18.1.1, bridge br0 198.18.2.1) -- b1..b4 198.18.2.3-6, each a network namespace, veth pairs, kernel default offloads. VIP 198.18.0.1: port 80 over the four backends, port 5201 to b1 only (iperf3's control and data connections must reach the same server).",
  "- Backends: nginx, one per namespace, fixed 3-byte response, keep-alive, no access log. `net.ipv4.tcp_tw_reuse=1` in the client (and lb) namespaces.",
  "- tunlb: `tunlb run --tun tl0 --tun-addr 198.18.0.254/24 --vip 198.18.0.1:80 --backend 198.18.2.3:80 ... --mode nth --config <5201 service>`" + (if ($m.tunlb_extra_args // "") != "" then " plus `\($m.tunlb_extra_args)`" else " (defaults otherwise: one packet thread, multi-queue TUN with offloads, busy polling while bulk data flows)" end) + (if ($m.alt_extra_args // "") != "" then "; alt: the same plus `\($m.alt_extra_args)`" else "" end) + (if ($m.alt_binary_sha256_16 // "") != "" then "; alt runs another build (sha256 \($m.alt_binary_sha256_16)..., `--alt-bin`)" else "" end) + "; nothing local on the VIP in lb.",
  "- kernel NAT: the rules `tunlb iptables` prints for the same services, SNAT replaced by MASQUERADE:",
  ($m.kernel_nat_rules[] | "  - `" + . + "`"),
  (if ($cfgs | any(endswith("6"))) then
     "- IPv6 rows: the same topology with the IPv6 twin of every address from 2001:2::/48 (client 2001:2:0:1::2, lb 2001:2:0:1::1 and 2001:2:0:2::1, b1..b4 2001:2:0:2::3-6), VIP 2001:2::1 (a /128 on lb's lo for HAProxy; for tunlb a second `--tun-addr 2001:2::fe/64`, `--vip '[2001:2::1]:80' --backend '[2001:2:0:2::3]:80' ...`, SNAT the VIP's address). Kernel NAT66 (ip6tables, conntrack):\n" +
     ($m.kernel_nat66_rules // [] | map("  - `" + . + "`") | join("\n"))
   else empty end),
  "- direct: the client to b1 itself, routed through lb without NAT. One backend (one nginx, two workers) instead of four: it is the floor of the network path, not a ceiling on connections/s, which here may be limited by that one backend.",
  (if $md.pktfwd != null then "- pktfwd: examples/pktfwd.rs in lb: tunlb's own packet sockets (the rings, the filter, the blackhole route and ingress drop filters for the VIP, the next hops of `--io packet`), one thread, the same static NAT as fwd with tunlb's incremental checksum update, no engine. The floor under tunlb's packet datapath." else empty end),
  (if $md.afpfwd != null then "- afpfwd: bench/reference/afpfwd.c in lb, built with cc: a minimal AF_PACKET static-NAT forwarder sharing no code with tunlb, rebuilt from issue 13's description of its prototype: one thread, TPACKET_V2 rings of 68 KiB frames on c0 and br0 (PACKET_VNET_HDR, offloads on), frames rewritten in place and sent with one sendmmsg per interface per batch, poll when both rings are dry (no busy polling), a blackhole route for the VIP, MACs looked up once at start, the same static NAT as pktfwd. The floor of the design itself." else empty end),
  (if $md.fwd != null then "- fwd: examples/tunfwd.rs in lb, on a TUN tl0 198.18.0.254/24: one blocking read and one write per packet, static NAT without a table (client port p to backend p/2 mod 4 for port 80, b1 for 5201; source the VIP), no offloads (the kernel segments super-packets before the TUN). The floor under tunlb's TUN datapath." else empty end),
  "- HAProxy: `mode tcp`, `balance roundrobin`, bound to the VIP (a /32 on lb's loopback in that configuration only), default threads.",
  "- Load: `wrk -t2 -c50 -d\($m.duration_s)s --latency` with and without `-H 'Connection: close'`; light load: `wrk -t1 -c1 -d\($m.duration_s)s --latency -H 'Connection: close'` (one connection at a time); `iperf3 -t \($m.duration_s) -P 1|4 [-R]` (c->s: client sends; s->c: -R). Throughput is the receiver's.",
  "",
  "## Runs",
  "",
  row(["config", "test", "n ok", "failed", "median socket errors", "median retransmits"]),
  row([range(6) | "---"]),
  ($cfgs[] as $c | $md[$c] | to_entries[] | select(.value.n > 0 or .value.failed > 0) |
    row([$c, .key, (.value.n | tostring), (.value.failed | tostring), (.value.socket_errors | i), (.value.retransmits | i)])),
  "",
  (.runs | map(select(.test == "sanity")) | group_by(.config)[] | "- \(.[0].config) sanity (8 requests, round 1): \(.[0].answered_by | join(" "))"),
  (.runs[] | select(.test == "after" and (.config == "tunlb" or .config == "packet" or .config == "alt" or .config == "tunlb6" or .config == "packet6")) |
    "- \(.config) round \(.round): " +
    (if .tunlb_died then "DIED (log tail in the JSON)" else "" end) +
    (if .tunlb_stats then
       "new flows \(.tunlb_stats.new_flows), dropped by tunlb \(.tunlb_stats.dropped | add)" +
       (.tunlb_stats.dropped | to_entries | map(select(.value > 0) | "\(.key) \(.value)") | if length > 0 then " (" + join(", ") + ")" else "" end)
     else "" end) +
    (if .tl0_link_stats then "; tl0 tx dropped \(.tl0_link_stats.tx.dropped) (packets the kernel could not queue to tunlb: its TUN queue was full), tl0 rx dropped \(.tl0_link_stats.rx.dropped)" else "" end)),
  (.runs[] | select(.test == "after" and (.config == "kernel" or .config == "kernel6")) |
    "- \(if .config == "kernel6" then "kernel NAT66" else "kernel NAT" end) round \(.round): DNAT rule hits (first packets of NEW connections) " +
    ([.nat_prerouting[2:][] | split(" ") | map(select(length > 0)) | .[0]] | join(" / ")) +
    "; conntrack entries afterwards \(.conntrack_count_after)"),
  (.runs[] | select(.error) | "- FAILED: round \(.round) \(.config) \(.test): \(.error)")
  )
