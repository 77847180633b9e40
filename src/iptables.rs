//! Print the iptables ruleset equivalent to a tunlb configuration.
//!
//! The classic recipe has a trap. `-m statistic` keeps one counter *per
//! rule*, and `DNAT` ends the chain, so each rule only sees the connections
//! the rules above it let through. Four rules `--every 4 --packet 0..3` (or
//! four `--probability 0.25`) send 25%, 18.75%, 14.06% and 10.55% of
//! connections to the four backends and leave 31.64% un-NATed. The correct
//! cascade gives rule `i` of `n` the share of what is *left*: nth
//! `--every (n-i) --packet 0`, random `--probability w_i / sum_{j>=i} w_j`,
//! and makes the last rule unconditional. kube-proxy builds exactly this.
//!
//! tunlb has one counter and one draw per NEW connection, so it cannot fall
//! into the trap; this printer shows what iptables would need. An IPv6
//! service gets the same rules for `ip6tables` (NAT66 with conntrack).

use std::fmt::Write;

use crate::select::Mode;
use crate::service::{EngineConfig, ServiceConfig};

/// Return the ruleset for every service of `cfg`, with comments.
pub fn ruleset(cfg: &EngineConfig) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Equivalent iptables ruleset, printed by tunlb.");
    if cfg.services.iter().any(|s| s.vip.is_ipv4()) {
        let _ = writeln!(out, "sysctl -w net.ipv4.ip_forward=1");
    }
    if cfg.services.iter().any(|s| s.vip.is_ipv6()) {
        let _ = writeln!(out, "sysctl -w net.ipv6.conf.all.forwarding=1");
    }
    for s in &cfg.services {
        service(&mut out, s);
    }
    out
}

/// The command of the service's family: `iptables` or `ip6tables`.
fn command(s: &ServiceConfig) -> &'static str {
    if s.vip.is_ipv4() {
        "iptables"
    } else {
        "ip6tables"
    }
}

/// One DNAT target per unit of weight, in backend order (nth), or one per
/// backend with its weight (random). Weight-0 backends are left out.
fn service(out: &mut String, s: &ServiceConfig) {
    let _ = writeln!(out, "\n# Service {} ({} mode)", s.vip, s.mode.name());
    let ipvs = match s.mode {
        Mode::Nth | Mode::Random => None,
        Mode::Wrr => Some("wrr"),
        Mode::LeastConn => Some("wlc"),
        Mode::Maglev => Some("mh"),
    };
    match ipvs {
        Some(scheduler) => ipvs_rules(out, s, scheduler),
        None => {
            dnat_rules(out, s);
            masquerade_rule(out, s);
        }
    }
}

/// A mode with scheduler state (`wrr`, `lc`, `maglev`): IPVS with NAT
/// forwarding, and MASQUERADE of what IPVS sent.
fn ipvs_rules(out: &mut String, s: &ServiceConfig, scheduler: &str) {
    let (vip, port) = (s.vip.ip(), s.vip.port());
    let _ = writeln!(
        out,
        "# --mode {} keeps scheduler state that -m statistic cannot express;\n\
         # the kernel's equivalent is IPVS with NAT forwarding (-m):",
        s.mode.name()
    );
    let _ = writeln!(out, "ipvsadm -A -t {} -s {scheduler}", s.vip);
    for b in &s.backends {
        let _ = writeln!(
            out,
            "ipvsadm -a -t {} -r {} -m -w {}",
            s.vip, b.addr, b.weight
        );
    }
    let _ = writeln!(
        out,
        "{} -t nat -A POSTROUTING -p tcp -m ipvs --vaddr {vip} --vport {port} -j MASQUERADE",
        command(s)
    );
}

/// `nth` and `random`: the DNAT cascade in PREROUTING, each rule's
/// statistic match corrected for what the rules above it took.
fn dnat_rules(out: &mut String, s: &ServiceConfig) {
    let (vip, port) = (s.vip.ip(), s.vip.port());
    let live: Vec<_> = s.backends.iter().filter(|b| b.weight > 0).collect();
    for b in s.backends.iter().filter(|b| b.weight == 0) {
        let _ = writeln!(out, "# {} has weight 0 (drained): no rule", b.addr);
    }
    let naive_n = live.len().max(1);
    let _ = writeln!(
        out,
        "# Each rule's statistic counter sees only what the rules above let through, so\n\
         # rule i gets a share of what is left. The naive '{}' on all {} rules\n\
         # would send {} and leave {:.2}% of connections un-NATed.",
        match s.mode {
            Mode::Nth => format!("--every {naive_n} --packet 0..{}", naive_n - 1),
            _ => format!("--probability {:.4}", 1.0 / naive_n as f64),
        },
        naive_n,
        naive_shares(naive_n),
        100.0 * (1.0 - 1.0 / naive_n as f64).powi(naive_n as i32)
    );
    let prefix = format!(
        "{} -t nat -A PREROUTING -p tcp -d {vip} --dport {port} -m conntrack --ctstate NEW",
        command(s)
    );
    match s.mode {
        Mode::Nth => {
            // Weight w becomes w consecutive turns, as tunlb's nth does.
            let turns: Vec<_> = live
                .iter()
                .flat_map(|b| std::iter::repeat_n(b.addr, b.weight as usize))
                .collect();
            let n = turns.len();
            for (i, addr) in turns.iter().enumerate() {
                let stat = if i + 1 < n {
                    format!(" -m statistic --mode nth --every {} --packet 0", n - i)
                } else {
                    String::new()
                };
                let _ = writeln!(out, "{prefix}{stat} -j DNAT --to-destination {addr}");
            }
        }
        _ => {
            let total: u64 = live.iter().map(|b| u64::from(b.weight)).sum();
            let mut left = total;
            for (i, b) in live.iter().enumerate() {
                let stat = if i + 1 < live.len() {
                    format!(
                        " -m statistic --mode random --probability {:.10}",
                        f64::from(b.weight) / left as f64
                    )
                } else {
                    String::new()
                };
                left -= u64::from(b.weight);
                let _ = writeln!(out, "{prefix}{stat} -j DNAT --to-destination {}", b.addr);
            }
        }
    }
}

/// The MASQUERADE step in POSTROUTING: SNAT to the VIP or the pool.
fn masquerade_rule(out: &mut String, s: &ServiceConfig) {
    let (vip, port) = (s.vip.ip(), s.vip.port());
    let source = if s.snat.is_empty() {
        format!("SNAT --to-source {vip}")
    } else {
        let mut v = s.snat.clone();
        v.sort();
        if v.len() == 1 {
            format!("SNAT --to-source {}", v[0])
        } else {
            let _ = writeln!(
                out,
                "# tunlb's pool {v:?}: iptables needs a contiguous range"
            );
            format!("SNAT --to-source {}-{}", v[0], v[v.len() - 1])
        }
    };
    let _ = writeln!(
        out,
        "# MASQUERADE: tunlb's source is {}; plain '-j MASQUERADE' would use the outgoing\n\
         # interface's address instead, which is equivalent when that address routes back.",
        if s.snat.is_empty() {
            "the VIP"
        } else {
            "the --snat pool"
        }
    );
    let _ = writeln!(
        out,
        "{} -t nat -A POSTROUTING -p tcp -m conntrack --ctstate DNAT --ctorigdst {vip} --ctorigdstport {port} -j {source}",
        command(s)
    );
}

/// The shares the naive per-rule counters give `n` backends, as text.
fn naive_shares(n: usize) -> String {
    let p = 1.0 / n as f64;
    (0..n)
        .map(|i| format!("{:.2}%", 100.0 * p * (1.0 - p).powi(i as i32)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::BackendConfig;

    fn cfg(mode: Mode, weights: &[u32]) -> EngineConfig {
        EngineConfig {
            services: vec![ServiceConfig {
                vip: "198.18.0.1:80".parse().unwrap(),
                backends: weights
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| BackendConfig {
                        addr: format!("198.18.2.{}:80", i + 3).parse().unwrap(),
                        weight: w,
                    })
                    .collect(),
                mode,
                snat: vec![],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn nth_cascades_every_4_3_2_then_unconditional() {
        let r = ruleset(&cfg(Mode::Nth, &[1, 1, 1, 1]));
        let dnat: Vec<_> = r.lines().filter(|l| l.contains("DNAT --to")).collect();
        assert_eq!(dnat.len(), 4);
        assert!(dnat[0].contains("--every 4 --packet 0 -j DNAT --to-destination 198.18.2.3:80"));
        assert!(dnat[1].contains("--every 3 --packet 0 -j DNAT --to-destination 198.18.2.4:80"));
        assert!(dnat[2].contains("--every 2 --packet 0 -j DNAT --to-destination 198.18.2.5:80"));
        assert!(!dnat[3].contains("statistic") && dnat[3].ends_with("198.18.2.6:80"));
        assert!(
            r.contains("25.00%, 18.75%, 14.06%, 10.55%")
                && r.contains("31.64% of connections un-NATed")
        );
        assert!(r.contains("-j SNAT --to-source 198.18.0.1"));
    }

    #[test]
    fn random_uses_remaining_weight() {
        let r = ruleset(&cfg(Mode::Random, &[1, 1, 1, 1]));
        for p in ["0.2500000000", "0.3333333333", "0.5000000000"] {
            assert!(r.contains(&format!("--probability {p} ")), "{p} in\n{r}");
        }
        let r = ruleset(&cfg(Mode::Random, &[3, 1, 0]));
        assert!(r.contains("--probability 0.7500000000 -j DNAT --to-destination 198.18.2.3:80"));
        assert!(r.contains("198.18.2.5:80 has weight 0"));
        assert_eq!(r.lines().filter(|l| l.contains("DNAT --to")).count(), 2);
    }

    #[test]
    fn ipvs_modes_print_ipvsadm() {
        let r = ruleset(&cfg(Mode::Maglev, &[1, 2]));
        assert!(r.contains("ipvsadm -A -t 198.18.0.1:80 -s mh"));
        assert!(r.contains("ipvsadm -a -t 198.18.0.1:80 -r 198.18.2.4:80 -m -w 2"));
        assert!(!r.contains("statistic --mode"));
        assert!(ruleset(&cfg(Mode::LeastConn, &[1])).contains("-s wlc"));
    }

    #[test]
    fn weighted_nth_expands_turns() {
        let r = ruleset(&cfg(Mode::Nth, &[1, 2]));
        let dnat: Vec<_> = r.lines().filter(|l| l.contains("DNAT --to")).collect();
        assert_eq!(dnat.len(), 3);
        assert!(dnat[0].contains("--every 3 --packet 0") && dnat[0].ends_with("198.18.2.3:80"));
        assert!(dnat[1].contains("--every 2 --packet 0") && dnat[1].ends_with("198.18.2.4:80"));
        assert!(dnat[2].ends_with("198.18.2.4:80"));
    }

    #[test]
    fn an_ipv6_service_gets_ip6tables_rules() {
        let mut c = cfg(Mode::Nth, &[1, 1]);
        let s = &mut c.services[0];
        s.vip = "[2001:2::1]:80".parse().unwrap();
        for (i, b) in s.backends.iter_mut().enumerate() {
            b.addr = format!("[2001:2:0:2::{}]:80", i + 3).parse().unwrap();
        }
        let r = ruleset(&c);
        assert!(
            r.contains("sysctl -w net.ipv6.conf.all.forwarding=1"),
            "{r}"
        );
        assert!(!r.contains("net.ipv4"), "{r}");
        assert!(
            r.contains(
                "ip6tables -t nat -A PREROUTING -p tcp -d 2001:2::1 --dport 80 -m conntrack \
                 --ctstate NEW -m statistic --mode nth --every 2 --packet 0 -j DNAT \
                 --to-destination [2001:2:0:2::3]:80"
            ),
            "{r}"
        );
        assert!(r.contains("-j SNAT --to-source 2001:2::1"), "{r}");
        assert!(!r.contains("\niptables"), "{r}");
    }
}
