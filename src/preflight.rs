//! Checks made before the datapath starts, in the namespace tunlb runs in.
//!
//! The iptables recipe's first step is `sysctl -w net.ipv4.ip_forward=1`:
//! packets tunlb writes into the TUN are *forwarded* by the kernel, so
//! forwarding must be on. And the VIP and MASQUERADE addresses must live
//! behind the TUN, not on a local interface: the kernel would answer for a
//! local address itself, and a local socket on the VIP even swallows
//! forwarded SYNs (TCP early demux). Each failed check says what to run.
//!
//! IPv6 services get the same checks: `net.ipv6.conf.all.forwarding`, the
//! address not local, routed into the TUN (by `/proc/net/ipv6_route`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// A failed check, with the command that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Forwarding is off.
    #[error("net.ipv4.ip_forward is 0 in this network namespace, so the kernel would not forward the packets tunlb writes: run 'sysctl -w net.ipv4.ip_forward=1' or pass --set-sysctls")]
    ForwardingOff,
    /// IPv6 forwarding is off, and an IPv6 service is configured.
    #[error("net.ipv6.conf.all.forwarding is 0 in this network namespace, so the kernel would not forward the IPv6 packets tunlb writes: run 'sysctl -w net.ipv6.conf.all.forwarding=1' or pass --set-sysctls")]
    Forwarding6Off,
    /// An address tunlb translates to or from is local.
    #[error("{addr} ({role}) is a local address of this namespace: the kernel would answer for it instead of leaving its packets to tunlb; remove it from the interface ('ip addr del {addr}/PREFIX dev DEV') or choose another address (with the TUN, one inside the --tun-addr prefix)")]
    LocalAddress {
        /// The address.
        addr: IpAddr,
        /// What it is for (VIP or SNAT).
        role: &'static str,
    },
    /// An address tunlb must receive traffic for does not route into the TUN.
    #[error("{addr} ({role}) routes via {via}, not into {dev}: replies would not reach tunlb{strict}; route it into the TUN ('ip route add {addr} dev {dev}') or choose an address inside the --tun-addr prefix")]
    NotRoutedIntoTun {
        /// The address.
        addr: IpAddr,
        /// What it is for.
        role: &'static str,
        /// The interface it routes via, or a note that it has no route.
        via: String,
        /// The TUN.
        dev: String,
        /// A note when strict reverse-path filtering would also drop.
        strict: &'static str,
    },
    /// Setting a sysctl failed.
    #[error("cannot set {name}: {err}; run 'sysctl -w {name}=1' as root in this namespace")]
    SetFailed {
        /// The sysctl.
        name: &'static str,
        /// Why.
        err: String,
    },
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
const NONLOCAL_BIND: &str = "/proc/sys/net/ipv4/ip_nonlocal_bind";
const NONLOCAL_BIND6: &str = "/proc/sys/net/ipv6/ip_nonlocal_bind";

fn read_flag(path: &str) -> Option<bool> {
    std::fs::read_to_string(path).ok().map(|s| s.trim() != "0")
}

/// Check `net.ipv4.ip_forward`; with `set`, turn it on instead of refusing.
pub fn forwarding(set: bool) -> Result<(), Problem> {
    check_sysctl(
        IP_FORWARD,
        "net.ipv4.ip_forward",
        Problem::ForwardingOff,
        set,
    )
}

/// Check `net.ipv6.conf.all.forwarding` (for IPv6 services); with `set`,
/// turn it on instead of refusing.
pub fn forwarding6(set: bool) -> Result<(), Problem> {
    check_sysctl(
        IPV6_FORWARDING,
        "net.ipv6.conf.all.forwarding",
        Problem::Forwarding6Off,
        set,
    )
}

/// Check that the sysctl at `path` (named `name`) is on; with `set`, turn
/// it on instead of returning `off`.
fn check_sysctl(path: &str, name: &'static str, off: Problem, set: bool) -> Result<(), Problem> {
    if read_flag(path) == Some(true) {
        return Ok(());
    }
    if !set {
        return Err(off);
    }
    std::fs::write(path, "1").map_err(|e| Problem::SetFailed {
        name,
        err: e.to_string(),
    })?;
    tracing::info!("set {name}=1 (--set-sysctls)");
    Ok(())
}

/// Return whether `addr` is a local address here: binding to it succeeds
/// only if it is (unless `ip_nonlocal_bind` of its family is on, when we
/// cannot tell).
pub fn is_local(addr: IpAddr) -> bool {
    let nonlocal = if addr.is_ipv4() {
        NONLOCAL_BIND
    } else {
        NONLOCAL_BIND6
    };
    if read_flag(nonlocal) == Some(true) {
        return false;
    }
    std::net::TcpListener::bind((addr, 0)).is_ok()
}

/// Check that none of the addresses is local.
pub fn not_local(addrs: &[(IpAddr, &'static str)]) -> Result<(), Problem> {
    for &(addr, role) in addrs {
        if is_local(addr) {
            return Err(Problem::LocalAddress { addr, role });
        }
    }
    Ok(())
}

/// Return the interface the routing table sends `addr` to, by longest
/// prefix match over `/proc/net/route` (the main table) or, for IPv6,
/// `/proc/net/ipv6_route` (policy routing is not consulted).
pub fn route_dev(addr: IpAddr) -> Option<String> {
    match addr {
        IpAddr::V4(a) => route_dev_in(&std::fs::read_to_string("/proc/net/route").ok()?, a),
        IpAddr::V6(a) => route6_dev_in(&std::fs::read_to_string("/proc/net/ipv6_route").ok()?, a),
    }
}

/// [`route_dev`] over the text of a `/proc/net/route` table.
pub fn route_dev_in(table: &str, addr: Ipv4Addr) -> Option<String> {
    let a = u32::from(addr);
    let mut best: Option<(u32, &str)> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // Addresses and masks are the in-memory words printed in hex: their
        // native-endian bytes are the address in network order.
        let hex = |s: &str| {
            u32::from_str_radix(s, 16)
                .ok()
                .map(|v| u32::from_be_bytes(v.to_ne_bytes()))
        };
        let (Some(dst), Some(mask)) = (hex(f[1]), hex(f[7])) else {
            continue;
        };
        if a & mask == dst && best.is_none_or(|(m, _)| mask.count_ones() > m.count_ones()) {
            best = Some((mask, f[0]));
        }
    }
    best.map(|(_, dev)| dev.to_string())
}

/// `RTF_REJECT` in the flags of `/proc/net/ipv6_route`: an unreachable,
/// prohibit or blackhole route, which sends nothing anywhere.
const RTF_REJECT: u32 = 0x0200;

/// [`route_dev`] over the text of a `/proc/net/ipv6_route` table: the
/// longest prefix wins, then the lowest metric; a route that refuses
/// (`RTF_REJECT`) leads nowhere.
pub fn route6_dev_in(table: &str, addr: Ipv6Addr) -> Option<String> {
    let a = addr.to_bits();
    // (prefix length, metric, reject, device)
    let mut best: Option<(u32, u32, bool, &str)> = None;
    for line in table.lines() {
        // dst plen src splen nexthop metric refcnt use flags dev
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let (Ok(dst), Ok(plen), Ok(metric), Ok(flags)) = (
            u128::from_str_radix(f[0], 16),
            u32::from_str_radix(f[1], 16),
            u32::from_str_radix(f[5], 16),
            u32::from_str_radix(f[8], 16),
        ) else {
            continue;
        };
        if plen > 128 {
            continue;
        }
        let mask = u128::MAX.checked_shl(128 - plen).unwrap_or(0);
        let better = best.is_none_or(|(p, m, _, _)| plen > p || (plen == p && metric < m));
        if a & mask == dst & mask && better {
            best = Some((plen, metric, flags & RTF_REJECT != 0, f[9]));
        }
    }
    best.filter(|b| !b.2).map(|(_, _, _, dev)| dev.to_string())
}

/// Check that every address routes into the TUN `dev`: packets tunlb writes
/// carry them as source (strict `rp_filter` checks that, for IPv4) and the
/// answers to them must come back through the TUN.
pub fn routed_into(dev: &str, addrs: &[(IpAddr, &'static str)]) -> Result<(), Problem> {
    let strict = ["all", dev].iter().any(|d| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{d}/rp_filter"))
            .is_ok_and(|v| v.trim() == "1")
    });
    for &(addr, role) in addrs {
        let via = route_dev(addr).unwrap_or_else(|| "no interface (it has no route)".into());
        if via != dev {
            return Err(Problem::NotRoutedIntoTun {
                addr,
                role,
                via,
                dev: dev.to_string(),
                strict: if strict && addr.is_ipv4() {
                    " and strict rp_filter would drop what it writes"
                } else {
                    ""
                },
            });
        }
    }
    Ok(())
}

/// Turn IPv6 off on a TUN tunlb created when no IPv6 is configured, so the
/// kernel's own router solicitations and MLD reports do not reach the
/// datapath. Best effort. (With IPv6 they do, and the engine counts them,
/// quietly, as `ipv6_control`.)
pub fn disable_ipv6(dev: &str) {
    let p = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
    if Path::new(&p).exists() {
        let _ = std::fs::write(p, "1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_in_a_route_table() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010212C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
tl0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
c0\t000112C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            route_dev_in(table, Ipv4Addr::new(198, 18, 0, 1)).as_deref(),
            Some("tl0")
        );
        assert_eq!(
            route_dev_in(table, Ipv4Addr::new(198, 18, 1, 9)).as_deref(),
            Some("c0")
        );
        assert_eq!(
            route_dev_in(table, Ipv4Addr::new(198, 19, 0, 1)).as_deref(),
            Some("eth0")
        );
        assert_eq!(route_dev_in("Iface\n", Ipv4Addr::new(198, 19, 0, 1)), None);
    }

    #[test]
    fn longest_ipv6_prefix_then_lowest_metric_wins_and_reject_leads_nowhere() {
        // As the kernel prints it: dst plen src splen nexthop metric refcnt
        // use flags dev (the local table's entries included).
        let table = "\
20010002000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001      tl0
20010002000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001     slow
20010002000000000000000000000000 30 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001       c0
20010002000000000000000000000099 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000001 00000000 00200200       lo
20010002000000000000000000000000 00 00000000000000000000000000000000 00 20010002000000010000000000000001 00000400 00000001 00000000 00000003     eth0
200100020000000000000000000000fe 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001      tl0
";
        let dev = |a: &str| route6_dev_in(table, a.parse().unwrap());
        assert_eq!(
            dev("2001:2::1").as_deref(),
            Some("tl0"),
            "/64, metric 256 over 1024"
        );
        assert_eq!(dev("2001:2:0:2::3").as_deref(), Some("c0"), "/48");
        assert_eq!(dev("2001:db8::1").as_deref(), Some("eth0"), "the default");
        assert_eq!(dev("2001:2::99"), None, "an unreachable /128 route");
        assert_eq!(route6_dev_in("", "2001:2::1".parse().unwrap()), None);
        assert_eq!(
            route6_dev_in("garbage line\n", "2001:2::1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn ipv6_problems_are_one_line_with_the_fix() {
        assert_eq!(
            Problem::Forwarding6Off.to_string(),
            "net.ipv6.conf.all.forwarding is 0 in this network namespace, so the kernel would not forward the IPv6 packets tunlb writes: run 'sysctl -w net.ipv6.conf.all.forwarding=1' or pass --set-sysctls"
        );
        let e = Problem::NotRoutedIntoTun {
            addr: "2001:2::1".parse().unwrap(),
            role: "VIP",
            via: "eth0".into(),
            dev: "tl0".into(),
            strict: "",
        };
        assert_eq!(
            e.to_string(),
            "2001:2::1 (VIP) routes via eth0, not into tl0: replies would not reach tunlb; route it into the TUN ('ip route add 2001:2::1 dev tl0') or choose an address inside the --tun-addr prefix"
        );
    }

    #[test]
    fn loopback_is_local_and_a_benchmark_address_is_not() {
        assert!(is_local(Ipv4Addr::LOCALHOST.into()) || read_flag(NONLOCAL_BIND) == Some(true));
        let e = not_local(&[(Ipv4Addr::LOCALHOST.into(), "VIP")]);
        if read_flag(NONLOCAL_BIND) != Some(true) {
            let msg = e.unwrap_err().to_string();
            assert!(
                msg.starts_with("127.0.0.1 (VIP) is a local address"),
                "{msg}"
            );
        }
    }
}
