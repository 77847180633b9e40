//! Checks made before the datapath starts, in the namespace tunlb runs in.
//!
//! The iptables recipe's first step is `sysctl -w net.ipv4.ip_forward=1`:
//! packets tunlb writes into the TUN are *forwarded* by the kernel, so
//! forwarding must be on. And the VIP and MASQUERADE addresses must live
//! behind the TUN, not on a local interface: the kernel would answer for a
//! local address itself, and a local socket on the VIP even swallows
//! forwarded SYNs (TCP early demux). Each failed check says what to run.

use std::net::Ipv4Addr;
use std::path::Path;

/// A failed check, with the command that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Forwarding is off.
    #[error("net.ipv4.ip_forward is 0 in this network namespace, so the kernel would not forward the packets tunlb writes: run 'sysctl -w net.ipv4.ip_forward=1' or pass --set-sysctls")]
    ForwardingOff,
    /// An address tunlb translates to or from is local.
    #[error("{addr} ({role}) is a local address of this namespace: the kernel would answer for it instead of routing it into the TUN; remove it from the interface ('ip addr del {addr}/PREFIX dev DEV') or choose an address inside the --tun-addr prefix")]
    LocalAddress {
        /// The address.
        addr: Ipv4Addr,
        /// What it is for (VIP or SNAT).
        role: &'static str,
    },
    /// An address tunlb must receive traffic for does not route into the TUN.
    #[error("{addr} ({role}) routes via {via}, not into {dev}: replies would not reach tunlb{strict}; route it into the TUN ('ip route add {addr} dev {dev}') or choose an address inside the --tun-addr prefix")]
    NotRoutedIntoTun {
        /// The address.
        addr: Ipv4Addr,
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
const NONLOCAL_BIND: &str = "/proc/sys/net/ipv4/ip_nonlocal_bind";

fn read_flag(path: &str) -> Option<bool> {
    std::fs::read_to_string(path).ok().map(|s| s.trim() != "0")
}

/// Check `net.ipv4.ip_forward`; with `set`, turn it on instead of refusing.
pub fn forwarding(set: bool) -> Result<(), Problem> {
    if read_flag(IP_FORWARD) == Some(true) {
        return Ok(());
    }
    if !set {
        return Err(Problem::ForwardingOff);
    }
    std::fs::write(IP_FORWARD, "1").map_err(|e| Problem::SetFailed {
        name: "net.ipv4.ip_forward",
        err: e.to_string(),
    })?;
    tracing::info!("set net.ipv4.ip_forward=1 (--set-sysctls)");
    Ok(())
}

/// Return whether `addr` is a local address here: binding to it succeeds
/// only if it is (unless `ip_nonlocal_bind` is on, when we cannot tell).
pub fn is_local(addr: Ipv4Addr) -> bool {
    if read_flag(NONLOCAL_BIND) == Some(true) {
        return false;
    }
    std::net::TcpListener::bind((addr, 0)).is_ok()
}

/// Check that none of the addresses is local.
pub fn not_local(addrs: &[(Ipv4Addr, &'static str)]) -> Result<(), Problem> {
    for &(addr, role) in addrs {
        if is_local(addr) {
            return Err(Problem::LocalAddress { addr, role });
        }
    }
    Ok(())
}

/// Return the interface the main routing table sends `addr` to, by longest
/// prefix match over `/proc/net/route` (policy routing is not consulted).
pub fn route_dev(addr: Ipv4Addr) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    route_dev_in(&table, addr)
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

/// Check that every address routes into the TUN `dev`: packets tunlb writes
/// carry them as source (strict `rp_filter` checks that) and the answers to
/// them must come back through the TUN.
pub fn routed_into(dev: &str, addrs: &[(Ipv4Addr, &'static str)]) -> Result<(), Problem> {
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
                strict: if strict {
                    " and strict rp_filter would drop what it writes"
                } else {
                    ""
                },
            });
        }
    }
    Ok(())
}

/// Turn IPv6 off on a TUN tunlb created, so the kernel's own router
/// solicitations and MLD reports do not reach the datapath. Best effort.
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
    fn loopback_is_local_and_a_benchmark_address_is_not() {
        assert!(is_local(Ipv4Addr::LOCALHOST) || read_flag(NONLOCAL_BIND) == Some(true));
        let e = not_local(&[(Ipv4Addr::LOCALHOST, "VIP")]);
        if read_flag(NONLOCAL_BIND) != Some(true) {
            let msg = e.unwrap_err().to_string();
            assert!(
                msg.starts_with("127.0.0.1 (VIP) is a local address"),
                "{msg}"
            );
        }
    }
}
