//! A fixed workload for instruction counting: `valgrind --tool=callgrind
//! target/release/examples/hotpath MODE N` runs N packets of one kind through
//! the engine. Instruction counts are repeatable where wall-clock time on a
//! shared 2-core machine is not, so performance changes are compared with
//! `scripts/hotpath-instructions.sh`, which runs N and 2N and reports the
//! difference per packet (setup cancels out).
//!
//! MODE: `original` / `reply` (an established flow, 64-byte payload),
//! `syn` (N new connections), `big` (established, 1400-byte payload).

use std::net::{Ipv4Addr, SocketAddrV4};

use tunlb::conntrack::tcp::flags::{ACK, SYN};
use tunlb::craft::Segment;
use tunlb::{Engine, EngineConfig, ServiceConfig, Timestamp, Verdict};

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80);

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "original".into());
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let backends = (3..7).map(|i| SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, i), 80));
    let e = Engine::new(EngineConfig {
        max_flows: 1 << 21,
        ..EngineConfig::one(ServiceConfig::new(VIP, backends))
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
    let mut run = |tpl: &[u8], k: u32| {
        for _ in 0..k {
            buf[..tpl.len()].copy_from_slice(tpl);
            let v = e.handle_packet(&mut buf[..tpl.len()], now);
            assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
        }
    };
    if mode == "syn" {
        let syns: Vec<_> = (0..n)
            .map(|i| Segment::new(client(i), VIP, SYN).build())
            .collect();
        for s in &syns {
            run(s, 1);
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
