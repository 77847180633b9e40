# bench/e2e-summary.jq: turn bench/e2e.sh's raw run lines (slurped, one object
# per configuration x round x test) into latest.json: meta, runs (raw, with
# per-unit CPU added), medians per configuration and test, and the ratios
# (tunlb, and the --alt variant if any, against each other configuration;
# tunlb6 against the IPv6 row and against tunlb over IPv4).
# CPU per unit: microseconds per request for the wrk tests, milliseconds per
# gigabit for the iperf3 tests.

def median: map(select(. != null)) | sort
  | if length == 0 then null
    elif length % 2 == 1 then .[(length - 1) / 2]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;

def per(x; scale; units): if x == null or units == null or units == 0 then null else x * scale / units end;

def derive:
  if .error then .
  elif .requests != null then
    . + {cpu_per_unit: {unit: "us/request",
          balancer: per(.cpu_s.balancer; 1e6; .requests),
          softirq_machine: per(.cpu_s.softirq_machine; 1e6; .requests),
          busy_machine: per(.cpu_s.busy_machine; 1e6; .requests)}}
  elif .bytes != null then
    (.bytes * 8 / 1e9) as $gbit
    | . + {gbit: $gbit, cpu_per_unit: {unit: "ms/Gbit",
          balancer: per(.cpu_s.balancer; 1e3; $gbit),
          softirq_machine: per(.cpu_s.softirq_machine; 1e3; $gbit),
          busy_machine: per(.cpu_s.busy_machine; 1e3; $gbit)}}
  else . end;

def tests: ["conn_close", "keepalive", "seq_close", "iperf_1", "iperf_1R", "iperf_4", "iperf_4R"];

def med_of(runs):
  (runs | map(select(.error == null))) as $ok
  | {n: ($ok | length), failed: (runs | map(select(.error != null)) | length),
     rps: ($ok | map(.rps) | median),
     p50_ms: ($ok | map(.p50_ms) | median),
     p99_ms: ($ok | map(.p99_ms) | median),
     socket_errors: ($ok | map(select(.requests != null) | .errors | add) | median),
     gbps: ($ok | map(.gbps) | median),
     retransmits: ($ok | map(.retransmits) | median),
     cpu_balancer: ($ok | map(.cpu_per_unit.balancer) | median),
     cpu_softirq_machine: ($ok | map(.cpu_per_unit.softirq_machine) | median),
     cpu_busy_machine: ($ok | map(.cpu_per_unit.busy_machine) | median),
     steal_share_max: ($ok | map(.steal_share) | map(select(. != null)) | max)}
  | with_entries(select(.value != null));

def ratio(a; b): if a == null or b == null or b == 0 then null else ((a / b) * 1000 | round) / 1000 end;

# Medians per configuration and test over `runs`.
def medians(runs):
  (runs | map(.config) | unique) as $cfgs
  | reduce $cfgs[] as $c ({}; .[$c] = (reduce tests[] as $t ({};
      .[$t] = med_of(runs | map(select(.config == $c and .test == $t))))));

# The ratios of the pairs compared, from medians `med`.
def ratios($med):
  def val($c; $t): $med[$c][$t] | (.rps // .gbps);
  reduce (["tunlb", "kernel"], ["tunlb", "haproxy"], ["tunlb", "direct"],
          ["packet", "kernel"], ["packet", "haproxy"], ["packet", "direct"], ["packet", "tunlb"],
          ["alt", "kernel"], ["alt", "haproxy"], ["alt", "tunlb"], ["alt", "packet"], ["alt", "fwd"],
          ["tunlb", "fwd"], ["packet", "fwd"], ["fwd", "kernel"],
          ["packet", "pktfwd"], ["pktfwd", "kernel"], ["alt", "pktfwd"],
          ["packet", "afpfwd"], ["pktfwd", "afpfwd"], ["afpfwd", "kernel"],
          ["tunlb6", "kernel6"], ["tunlb6", "haproxy6"], ["tunlb6", "direct6"], ["tunlb6", "tunlb"],
          ["packet6", "kernel6"], ["packet6", "tunlb6"], ["packet6", "packet"]) as [$s, $o] ({};
    if $med[$o] == null or $med[$s] == null then . else
      .[$s + "/" + $o] = (reduce tests[] as $t ({};
        .[$t] = ({rate: ratio(val($s; $t); val($o; $t)),
                  p50: ratio($med[$s][$t].p50_ms; $med[$o][$t].p50_ms),
                  p99: ratio($med[$s][$t].p99_ms; $med[$o][$t].p99_ms),
                  cpu_busy_machine: ratio($med[$s][$t].cpu_busy_machine; $med[$o][$t].cpu_busy_machine),
                  cpu_balancer: ratio($med[$s][$t].cpu_balancer; $med[$o][$t].cpu_balancer)}
                 | with_entries(select(.value != null)))))
    end);

# A run the hypervisor disturbed: more than this share of the machine's CPU
# time stolen by other guests.
def max_steal: 0.1;

map(derive) as $runs
| medians($runs) as $med
| {meta: $meta,
   medians: $med,
   ratios: ratios($med),
   runs: $runs}
  # Where some runs were disturbed: the same over the others only, so that
  # a noisy hour still says what it can (each cell's n tells how much).
  + (($runs | map(select(.steal_share != null and .steal_share > max_steal)) | length) as $bad
     | if $bad == 0 then {} else
         ($runs | map(select((.steal_share // 0) <= max_steal))) as $calm
         | medians($calm) as $cmed
         | {calm: {max_steal_share: max_steal, runs_left_out: $bad, medians: $cmed, ratios: ratios($cmed)}}
       end)
