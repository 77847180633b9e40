//! The floor under tunlb's packet datapath: tunlb's own packet sockets
//! (`tunlb::io::packet`: the rings, the filter, the blackhole routes and
//! ingress drop filters, the next hops) driven by one thread with a static
//! NAT and no engine (no flow table, no tracking, no selection).
//! `bench/e2e.sh --configs packet,pktfwd` runs it in tunlb's place, so that
//! what `--io packet` costs beyond its I/O can be measured side by side, as
//! `examples/tunfwd.rs` does for the TUN (issue 13).
//!
//! ```text
//! pktfwd CLIENT VIP BACKEND...
//! ```
//!
//! Listens on every Ethernet interface that is up and translates,
//! statelessly, like `tunfwd`: `CLIENT:p -> VIP:80` to
//! `VIP:p -> BACKEND[p/2 % n]:80` (any other port: the first backend), and
//! `BACKEND:q -> VIP:p` back to `VIP:q -> CLIENT:p`, with tunlb's
//! incremental checksum update (complete or partial checksums, so the
//! kernel's offloads stay on). Anything else is dropped.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tunlb::conntrack::tuple::Endpoint;
use tunlb::io::packet::{AfPacket, Blackholes, PacketSpec};
use tunlb::io::PacketIo;
use tunlb::nat;

fn main() {
    let args: Vec<Ipv4Addr> = std::env::args()
        .skip(1)
        .map(|s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("pktfwd: '{s}' is not an IPv4 address");
                std::process::exit(2)
            })
        })
        .collect();
    if args.len() < 3 {
        eprintln!("usage: pktfwd CLIENT VIP BACKEND...");
        std::process::exit(2);
    }
    let (client, vip, backends) = (args[0], args[1], &args[2..]);
    let spec = PacketSpec {
        ifaces: Vec::new(),
        queues: 1,
        addrs: vec![vip.into()],
    };
    let (dev, opened) = AfPacket::open(&spec).expect("open the packet sockets");
    let holes =
        Blackholes::install(&[vip.into()], &opened.ifaces).expect("add the blackhole route");
    let warm: Vec<std::net::IpAddr> = backends.iter().map(|&b| b.into()).collect();
    dev.warm(&warm);
    // SIGTERM ends the loop, so the blackhole route is removed on the way out.
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())
        .expect("a SIGTERM handler");
    eprintln!("pktfwd ready");
    let mut buf = vec![0u8; 65536 + 512];
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(frame)) = dev.recv(0, &mut buf, Duration::from_millis(100)) else {
            continue;
        };
        let pkt = &mut buf[frame.start..frame.start + frame.len];
        if let Some((src, dst)) = translate(pkt, client, vip, backends) {
            nat::rewrite_tcp(pkt, 20, src, dst, frame.l4);
            let _ = dev.send(0, &mut buf, &frame, frame.len, false);
        }
    }
    drop(holes);
}

/// Where the packet goes: the new source and destination, or `None`.
fn translate(
    p: &[u8],
    client: Ipv4Addr,
    vip: Ipv4Addr,
    backends: &[Ipv4Addr],
) -> Option<(Endpoint<Ipv4Addr>, Endpoint<Ipv4Addr>)> {
    if p.len() < 40 || p[0] != 0x45 || p[9] != 6 {
        return None;
    }
    let get = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    let (src, dst) = (get(12), get(16));
    let sport = u16::from_be_bytes([p[20], p[21]]);
    let dport = u16::from_be_bytes([p[22], p[23]]);
    if dst != vip {
        return None;
    }
    if src == client {
        // Linux gives connect() even ports: half the port spreads them.
        let b = if dport == 80 {
            backends[usize::from(sport >> 1) % backends.len()]
        } else {
            backends[0]
        };
        Some((Endpoint::new(vip, sport), Endpoint::new(b, dport)))
    } else if backends.contains(&src) {
        Some((Endpoint::new(vip, sport), Endpoint::new(client, dport)))
    } else {
        None
    }
}
