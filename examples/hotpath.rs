//! A fixed workload for instruction counting: `valgrind --tool=callgrind
//! target/release/examples/hotpath MODE N` runs N packets of one kind through
//! the engine. Instruction counts are repeatable where wall-clock time on a
//! shared 2-core machine is not, so performance changes are compared with
//! `scripts/hotpath-instructions.sh`, which runs N and 2N and reports the
//! difference per packet (setup cancels out).
//!
//! MODE: `original` / `reply` (an established flow, 64-byte payload),
//! `syn` (N new connections), `big` (established, 1400-byte payload),
//! `verified` (as `original`, its TCP checksum already verified by the
//! kernel: virtio-net `DATA_VALID`).

use std::net::{Ipv4Addr, SocketAddrV4};

use tunlb::conntrack::tcp::flags::{ACK, SYN};
use tunlb::craft::Segment;
use tunlb::engine::L4Checksum;
use tunlb::{Engine, EngineConfig, ServiceConfig, Timestamp, Verdict};

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80);

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "original".into());
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let backends = (3..7).map(|i| SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, i), 80));
    let e = Engine::new(EngineConfig {
        max_flows: 1 << 21,
        ..EngineConfig::one(ServiceConfig {
            // As in bench/engine.rs: about 64 k flows fit per (SNAT address,
            // backend), so `syn` measures NEW connections, not a port search
            // once the client ports repeat.
            snat: (1..=16)
                .map(|i| Ipv4Addr::new(198, 18, 0, 100 + i).into())
                .collect(),
            ..ServiceConfig::new(VIP, backends)
        })
    })
    .expect("valid config");
    let client = |i: u32| {
        SocketAddrV4::new(
            Ipv4Addr::new(198, 18, 64 + (i / 60000) as u8, 1),
            1024 + (i % 60000) as u16,
        )
    };
    let now = Timestamp::ZERO;
    let mut buf = vec![0u8; 2048];
    let l4 = if mode == "verified" {
        L4Checksum::Verified
    } else {
        L4Checksum::Complete
    };
    let mut run = |tpl: &[u8], k: u32| {
        for _ in 0..k {
            buf[..tpl.len()].copy_from_slice(tpl);
            let v = e.handle_offloaded_packet(&mut buf[..tpl.len()], now, l4);
            assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
        }
    };
    if mode == "syn" {
        // One template, its source (address, port) patched per SYN with
        // incremental checksum updates: a few instructions, where building
        // each segment would add hundreds to the difference the script
        // divides.
        let tpl = Segment::new(client(0), VIP, SYN).build();
        let mut syn = tpl.clone();
        for i in 0..n {
            with_source(&tpl, &mut syn, client(i));
            run(&syn, 1);
        }
        return;
    }
    let c = client(0);
    run(&Segment::new(c, VIP, SYN).build(), 1);
    let reply = e.flows_of::<Ipv4Addr>()[0].reply;
    run(&Segment::new(reply.src, reply.dst, SYN | ACK).build(), 1);
    run(&Segment::new(c, VIP, ACK).build(), 1);
    let payload = vec![0x5a; if mode == "big" { 1400 } else { 64 }];
    let tpl = match mode.as_str() {
        "reply" => Segment {
            payload: &payload,
            ..Segment::new(reply.src, reply.dst, ACK)
        }
        .build(),
        _ => Segment {
            payload: &payload,
            ..Segment::new(c, VIP, ACK)
        }
        .build(),
    };
    run(&tpl, n);
}

/// Copy `tpl` (an IPv4 TCP segment without options, from `client(0)`) into
/// `out` with its source set to `src`, both checksums updated (RFC 1624).
fn with_source(tpl: &[u8], out: &mut [u8], src: SocketAddrV4) {
    use tunlb::checksum::{get, put, Delta};
    out.copy_from_slice(tpl);
    let (old_ip, old_port) = (
        u32::from_be_bytes([tpl[12], tpl[13], tpl[14], tpl[15]]),
        get(tpl, 20),
    );
    let (new_ip, new_port) = (src.ip().to_bits(), src.port());
    out[12..16].copy_from_slice(&new_ip.to_be_bytes());
    put(out, 20, new_port);
    let mut ip = Delta::new();
    ip.u32(old_ip, new_ip);
    let mut tcp = ip;
    tcp.u16(old_port, new_port);
    put(out, 10, ip.apply(get(out, 10)));
    put(out, 36, tcp.apply(get(out, 36)));
}
