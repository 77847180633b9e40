//! The floor under tunlb's TUN datapath: a minimal static-NAT forwarder on
//! a TUN, one blocking `read` and one `write` per packet, no flow table, no
//! offloads, no threads. `bench/e2e.sh --configs tunlb,fwd` runs it in the
//! balancer's place, so that what tunlb's TUN datapath costs beyond the
//! bare read/rewrite/write loop can be measured side by side (issue 13).
//!
//! ```text
//! tunfwd TUN ADDR/LEN CLIENT VIP BACKEND...
//! ```
//!
//! It creates TUN `TUN` with `ADDR/LEN` (the VIP must be in that prefix, so
//! the kernel routes it into the TUN) and translates, statelessly:
//! - `CLIENT:p -> VIP:80` to `VIP:p -> BACKEND[p/2 % n]:80` (port 80: the
//!   backend from the client's port, so a run of connections spreads over
//!   every backend like tunlb's round robin does; any other port goes to
//!   the first backend, as the iperf3 service does);
//! - `BACKEND:q -> VIP:p` back to `VIP:q -> CLIENT:p`.
//!
//! Ports never change, so only addresses do: the IPv4 header checksum is
//! recomputed and the TCP checksum adjusted (RFC 1624). Anything else is
//! dropped. It is a measuring stick, not a balancer: one client address,
//! no state, no checks beyond what the rewrite needs.

use std::io::{Read, Write};
use std::net::Ipv4Addr;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: tunfwd TUN ADDR/LEN CLIENT VIP BACKEND...");
        std::process::exit(2);
    }
    let ip = |s: &str| -> Ipv4Addr {
        s.parse().unwrap_or_else(|_| {
            eprintln!("tunfwd: '{s}' is not an IPv4 address");
            std::process::exit(2)
        })
    };
    let (addr, len) = args[1].split_once('/').expect("ADDR/LEN");
    let len: u32 = len.parse().expect("a prefix length");
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - len).unwrap_or(0));
    let (client, vip) = (ip(&args[2]), ip(&args[3]));
    let backends: Vec<Ipv4Addr> = args[4..].iter().map(|s| ip(s)).collect();

    let mut cfg = tun::Configuration::default();
    cfg.tun_name(&args[0])
        .address(ip(addr))
        .netmask(mask)
        .mtu(1500)
        .up();
    let mut dev = tun::create(&cfg).expect("create the TUN");
    eprintln!("tunfwd ready on {}", args[0]);
    let mut buf = vec![0u8; 65536];
    loop {
        let n = dev.read(&mut buf).expect("read from the TUN");
        if translate(&mut buf[..n], client, vip, &backends) {
            // A full queue on the other side loses the packet, as a router would.
            let _ = dev.write(&buf[..n]);
        }
    }
}

/// Rewrite one packet in place; false: not ours, drop it.
fn translate(p: &mut [u8], client: Ipv4Addr, vip: Ipv4Addr, backends: &[Ipv4Addr]) -> bool {
    if p.len() < 40 || p[0] != 0x45 || p[9] != 6 {
        return false;
    }
    let get = |p: &[u8], at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    let (src, dst) = (get(p, 12), get(p, 16));
    if dst != vip {
        return false;
    }
    let sport = u16::from_be_bytes([p[20], p[21]]);
    let dport = u16::from_be_bytes([p[22], p[23]]);
    let (new_src, new_dst) = if src == client {
        // Linux gives connect() even ports (bind() odd ones): half the
        // port, so successive connections take successive backends.
        let i = if dport == 80 {
            usize::from(sport >> 1) % backends.len()
        } else {
            0
        };
        (vip, backends[i])
    } else if backends.contains(&src) {
        (vip, client)
    } else {
        return false;
    };
    let old = [src.octets(), dst.octets()].concat();
    p[12..16].copy_from_slice(&new_src.octets());
    p[16..20].copy_from_slice(&new_dst.octets());
    // IPv4 header checksum: recomputed over the 20 bytes.
    p[10..12].fill(0);
    let c = !fold(sum(&p[..20]));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    // TCP checksum (RFC 1624, eqn. 3): HC' = ~(~HC + ~m + m'), over the
    // pseudo-header's eight address bytes.
    let tcp_ck = 20 + 16;
    let hc = u16::from_be_bytes([p[tcp_ck], p[tcp_ck + 1]]);
    let acc = u32::from(!hc) + (!fold(sum(&old)) as u32) + u32::from(fold(sum(&p[12..20])));
    p[tcp_ck..tcp_ck + 2].copy_from_slice(&(!fold(acc)).to_be_bytes());
    true
}

/// One's-complement sum of 16-bit words, not folded.
fn sum(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

/// Fold a sum to 16 bits.
fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}
