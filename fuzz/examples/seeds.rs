//! Write the seed corpus of the `engine` target: well-formed sequences
//! (handshakes, data, teardowns, resets, ICMP errors, floods, exhaustion,
//! expiry and port reuse) the fuzzer starts from and mutates.
//!
//! `cargo run --example seeds -- corpus/engine` (from `fuzz/`). Each seed is
//! also replayed by `cargo test` in `fuzz/`.

use std::net::{Ipv4Addr, SocketAddrV4};

use tunlb::conntrack::tcp::flags::{ACK, FIN, PSH, RST, SYN};
use tunlb::craft::Segment;
use tunlb_fuzz::{encode, Chunk, Fixup, Setup, DRAINED_VIP, LIVE_PORTS, VIP};

/// A segment's bytes.
fn seg(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    Segment {
        seq,
        ack,
        payload,
        ..Segment::new(src, dst, flags)
    }
    .build()
}

/// A chunk steered onto flow `target` in the REPLY (or ORIGINAL) direction.
fn steered(bytes: Vec<u8>, reply: bool, target: u8, step: u8) -> Chunk {
    Chunk {
        fixup: if reply { Fixup::Reply } else { Fixup::Original },
        step,
        target,
        bytes,
    }
}

/// An ICMP error (type, code) quoting `quote`, from `from` to `to`.
fn icmp(from: Ipv4Addr, to: Ipv4Addr, ty: u8, code: u8, rest: [u8; 4], quote: &[u8]) -> Vec<u8> {
    let mut body = vec![ty, code, 0, 0];
    body.extend_from_slice(&rest);
    body.extend_from_slice(quote);
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + body.len()) as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&from.octets());
    p[16..20].copy_from_slice(&to.octets());
    p.extend_from_slice(&body);
    tunlb_fuzz::fix_checksums(&mut p);
    p
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "corpus/engine".into());
    std::fs::create_dir_all(&dir).expect("corpus directory");
    let verify = Setup::from_byte(1);
    let client = |i: u8, port: u16| SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2 + i), port);
    let live = |i: usize| SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), LIVE_PORTS[i]);
    let any = SocketAddrV4::new(Ipv4Addr::new(198, 18, 9, 9), 9);
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();

    // A whole connection from a new client (flow index 5 in tuple order):
    // handshake, data both ways, FIN teardown.
    let c = client(1, 2000);
    let mut chunks = vec![Chunk::packet(seg(c, VIP, SYN, 100, 0, &[]), 1)];
    chunks.push(steered(seg(any, any, SYN | ACK, 900, 101, &[]), true, 5, 1));
    chunks.push(Chunk::packet(seg(c, VIP, ACK, 101, 901, &[]), 1));
    chunks.push(Chunk::packet(
        seg(c, VIP, ACK | PSH, 101, 901, b"GET / HTTP/1.0\r\n\r\n"),
        1,
    ));
    chunks.push(steered(
        seg(any, any, ACK | PSH, 901, 119, b"HTTP/1.0 200 OK\r\n\r\n"),
        true,
        5,
        1,
    ));
    chunks.push(Chunk::packet(seg(c, VIP, FIN | ACK, 119, 920, &[]), 1));
    chunks.push(steered(seg(any, any, ACK, 920, 120, &[]), true, 5, 1));
    chunks.push(steered(seg(any, any, FIN | ACK, 920, 120, &[]), true, 5, 1));
    chunks.push(Chunk::packet(seg(c, VIP, ACK, 120, 921, &[]), 1));
    seeds.push(("connection", encode(verify, &chunks)));

    // Resets: from the client on flow 0, a blind one far outside the window
    // on flow 1, then the backend's own (in window) on flow 1. (After that
    // one, flow 1 is in CLOSE, where any RST passes: the rest of a train.)
    let chunks = vec![
        Chunk::packet(seg(live(0), VIP, RST | ACK, 101, 5001, &[]), 1),
        steered(seg(any, any, RST, 0x8000_1389, 0, &[]), true, 1, 1),
        steered(seg(any, any, RST, 5001, 0, &[]), true, 1, 1),
        Chunk::packet(seg(live(0), VIP, ACK, 101, 5001, &[]), 2),
    ];
    seeds.push(("resets", encode(verify, &chunks)));

    // ICMP errors about flow 0: frag-needed from the backends' side quoting
    // the packet as tunlb sent it, and port-unreachable from the clients' side.
    let quote = seg(any, any, ACK, 101, 5001, &[]);
    let chunks = vec![
        steered(
            icmp(
                any.ip().to_owned(),
                *VIP.ip(),
                3,
                4,
                [0, 0, 5, 0xdc],
                &quote,
            ),
            true,
            0,
            1,
        ),
        steered(
            icmp(any.ip().to_owned(), *VIP.ip(), 3, 3, [0; 4], &quote),
            false,
            0,
            1,
        ),
        steered(
            icmp(any.ip().to_owned(), *VIP.ip(), 11, 0, [0; 4], &quote[..28]),
            true,
            1,
            1,
        ),
    ];
    seeds.push(("icmp", encode(verify, &chunks)));

    // A SYN flood from new clients against a table of 6: eviction.
    let mut chunks = Vec::new();
    for i in 0..12u16 {
        chunks.push(Chunk::packet(
            seg(client((i % 3) as u8 + 1, 3000 + i), VIP, SYN, 7, 0, &[]),
            1,
        ));
    }
    seeds.push(("flood", encode(Setup::from_byte(1), &chunks)));

    // Ports running out: a pool of two addresses, four ports, one client
    // port in the range, two backends: room for 16 flows, 20 SYNs.
    let mut chunks = Vec::new();
    for i in 0..20u8 {
        let mut p = seg(client(1, 40001), VIP, SYN, 7, 0, &[]);
        p[12..16].copy_from_slice(&[198, 18, 1, 10 + i]);
        chunks.push(Chunk {
            fixup: Fixup::Checksums,
            ..Chunk::packet(p, 0)
        });
    }
    let exhaust = Setup {
        verify_checksums: true,
        pool: true,
        max_flows: 64,
        few_ports: true,
    };
    seeds.push(("exhaustion", encode(exhaust, &chunks)));

    // A SYN to the drained service (RST back), then INVALID traffic: NULL,
    // XMAS, SYN|FIN, a bare FIN, an ACK for no flow, an ACK in SYN_SENT, a
    // backend SYN on ESTABLISHED.
    let chunks = vec![
        Chunk::packet(seg(client(2, 4000), DRAINED_VIP, SYN, 1, 0, &[]), 1),
        Chunk::packet(seg(live(0), VIP, 0, 101, 5001, &[]), 1),
        Chunk::packet(seg(live(0), VIP, FIN | PSH | 0x20, 101, 5001, &[]), 1),
        Chunk::packet(seg(live(1), VIP, SYN | FIN, 101, 5001, &[]), 1),
        Chunk::packet(seg(live(1), VIP, FIN, 101, 5001, &[]), 1),
        Chunk::packet(seg(client(3, 4001), VIP, ACK, 1, 1, &[]), 1),
        Chunk::packet(seg(live(2), VIP, ACK, 101, 5001, &[]), 1),
        steered(seg(any, any, SYN, 5001, 0, &[]), true, 0, 1),
    ];
    seeds.push(("invalid", encode(verify, &chunks)));

    // Time: port 1004 reused from TIME_WAIT; 120 s later flow 0 (ESTABLISHED)
    // is there and flow 2 (SYN_SENT) is gone; 5 days later flow 1 is gone.
    let chunks = vec![
        Chunk::packet(seg(live(4), VIP, SYN, 5000, 0, &[]), 1),
        Chunk::packet(seg(live(0), VIP, ACK, 101, 5001, &[]), 5),
        Chunk::packet(seg(live(2), VIP, ACK, 101, 5001, &[]), 0),
        Chunk::packet(seg(live(1), VIP, ACK, 101, 5001, &[]), 6),
    ];
    seeds.push(("expiry", encode(verify, &chunks)));

    // Without checksum verification, garbage steered onto flows.
    let chunks = vec![
        steered(vec![0xa5; 60], false, 0, 1),
        steered(vec![0x5a; 44], true, 1, 1),
        Chunk {
            fixup: Fixup::Checksums,
            ..Chunk::packet(vec![0x45; 40], 2)
        },
        Chunk::packet(vec![0x46, 0, 0, 24, 0, 0, 0x20, 0, 64, 6], 0),
    ];
    seeds.push(("garbage", encode(Setup::from_byte(0), &chunks)));

    for (name, bytes) in &seeds {
        tunlb_fuzz::run(bytes);
        let path = format!("{dir}/seed-{name}");
        std::fs::write(&path, bytes).expect("write a seed");
        println!("{path}: {} bytes", bytes.len());
    }
}
