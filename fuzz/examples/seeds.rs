//! Write the seed corpus of the `engine` target: well-formed sequences
//! (handshakes, data, teardowns, resets, ICMP errors, floods, exhaustion,
//! expiry and port reuse; in IPv6, a connection behind extension-header
//! chains, ICMPv6 errors, and malformed or control traffic) the fuzzer
//! starts from and mutates.
//!
//! `cargo run --example seeds -- corpus/engine` (from `fuzz/`). Each seed is
//! also replayed by `cargo test` in `fuzz/`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use tunlb::conntrack::tcp::flags::{ACK, FIN, PSH, RST, SYN};
use tunlb::craft::Segment;
use tunlb_fuzz::{
    encode, Chunk, Fixup, Setup, BACKENDS6, BACKEND_HOP6, CLIENTS6, CLIENT_HOP6, DRAINED_VIP,
    DRAINED_VIP6, LIVE_PORTS, VIP, VIP6,
};

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

/// An IPv6 segment's bytes.
fn seg6(
    src: SocketAddrV6,
    dst: SocketAddrV6,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    Segment {
        seq,
        ack,
        payload,
        ..Segment::between(src, dst, flags)
    }
    .build()
}

/// Splice extension headers (next-header number, bytes after the first
/// two) between an IPv6 packet's header and its upper layer; a header's
/// length field is what `bytes` fills (`len_field` overrides it: a header
/// that claims more than it holds).
fn with_ext(pkt: &[u8], exts: &[(u8, Vec<u8>, Option<u8>)]) -> Vec<u8> {
    let mut out = pkt[..40].to_vec();
    let mut field = 6;
    for (kind, body, len_field) in exts {
        out[field] = *kind;
        field = out.len();
        let len = len_field.unwrap_or(((2 + body.len()) / 8).saturating_sub(1) as u8);
        out.extend_from_slice(&[0, len]);
        out.extend_from_slice(body);
    }
    out[field] = pkt[6];
    out.extend_from_slice(&pkt[40..]);
    let payload = (out.len() - 40) as u16;
    out[4..6].copy_from_slice(&payload.to_be_bytes());
    tunlb_fuzz::fix_checksums(&mut out);
    out
}

/// Hop-by-hop options (8 bytes, PadN), destination options (16), routing
/// (8, segment routing, no segments left).
fn chain() -> Vec<(u8, Vec<u8>, Option<u8>)> {
    vec![
        (0, vec![1, 4, 0, 0, 0, 0], None),
        (60, vec![1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], None),
        (43, vec![4, 0, 0, 0, 0, 0], None),
    ]
}

/// An ICMPv6 message (type, code, four bytes, data) from `from` to `to`.
fn icmp6(from: Ipv6Addr, to: Ipv6Addr, ty: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    p[6] = 58;
    p[7] = 255;
    p[8..24].copy_from_slice(&from.octets());
    p[24..40].copy_from_slice(&to.octets());
    p.extend_from_slice(&[ty, code, 0, 0]);
    p.extend_from_slice(&rest);
    p.extend_from_slice(data);
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
        ipv6: false,
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

    // IPv6, on a dual-stack engine (verification on).
    let dual = Setup {
        ipv6: true,
        ..Setup::from_byte(1)
    };
    let client6 = |i: u16, port: u16| SocketAddrV6::new(CLIENTS6[usize::from(i)], port, 0, 0);
    let live6 = |i: usize| SocketAddrV6::new(CLIENTS6[0], LIVE_PORTS[i], 0, 0);
    let any6 = SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 9, 0, 0, 0, 9), 9, 0, 0);

    // A whole IPv6 connection from a new client (IPv6 flow 5 in tuple
    // order), every segment behind hop-by-hop, destination options and
    // routing headers: handshake, data both ways, FIN teardown.
    let c = client6(1, 2000);
    let ext = chain();
    let mut chunks = vec![Chunk::packet(
        with_ext(&seg6(c, VIP6, SYN, 100, 0, &[]), &ext),
        1,
    )];
    let reply = |flags, seq, ack, data: &[u8]| {
        steered(
            with_ext(&seg6(any6, any6, flags, seq, ack, data), &ext),
            true,
            5,
            1,
        )
    };
    chunks.push(reply(SYN | ACK, 900, 101, &[]));
    chunks.push(Chunk::packet(
        with_ext(&seg6(c, VIP6, ACK, 101, 901, &[]), &ext),
        1,
    ));
    chunks.push(Chunk::packet(
        with_ext(
            &seg6(c, VIP6, ACK | PSH, 101, 901, b"GET / HTTP/1.0\r\n\r\n"),
            &ext,
        ),
        1,
    ));
    chunks.push(reply(ACK | PSH, 901, 119, b"HTTP/1.0 200 OK\r\n\r\n"));
    chunks.push(Chunk::packet(
        with_ext(&seg6(c, VIP6, FIN | ACK, 119, 920, &[]), &ext),
        1,
    ));
    chunks.push(reply(ACK, 920, 120, &[]));
    chunks.push(reply(FIN | ACK, 920, 120, &[]));
    chunks.push(Chunk::packet(
        with_ext(&seg6(c, VIP6, ACK, 120, 921, &[]), &ext),
        1,
    ));
    seeds.push(("ipv6-connection", encode(dual, &chunks)));

    // ICMPv6 errors: a new client's SYN (port 2000, kept: the sixth IPv6
    // flow, so nth's backend 1) behind the extension-header chain, then
    // Packet Too Big from the backends' side quoting it as tunlb sent it,
    // chain and all; destination unreachable from the clients' side and
    // time exceeded about flow 0 (steered: the harness writes the quote);
    // Packet Too Big quoting only the IPv6 header and 8 bytes of TCP; and
    // one about a connection nobody tracks (port 2001).
    let c = client6(1, 2000);
    let snat = SocketAddrV6::new(*VIP6.ip(), 2000, 0, 0);
    let sent = with_ext(&seg6(snat, BACKENDS6[1], SYN, 100, 0, &[]), &chain());
    let ptb = |quote: &[u8]| icmp6(BACKEND_HOP6, *VIP6.ip(), 2, 0, 1280u32.to_be_bytes(), quote);
    let stranger = seg6(
        SocketAddrV6::new(*VIP6.ip(), 2001, 0, 0),
        BACKENDS6[1],
        SYN,
        100,
        0,
        &[],
    );
    let chunks = vec![
        Chunk::packet(with_ext(&seg6(c, VIP6, SYN, 100, 0, &[]), &chain()), 1),
        Chunk::packet(ptb(&sent), 1),
        steered(
            icmp6(CLIENT_HOP6, *VIP6.ip(), 1, 3, [0; 4], &[0; 60]),
            false,
            0,
            1,
        ),
        steered(
            icmp6(BACKEND_HOP6, *VIP6.ip(), 3, 0, [0; 4], &[0; 60]),
            true,
            0,
            1,
        ),
        Chunk::packet(ptb(&seg6(snat, BACKENDS6[1], SYN, 100, 0, &[])[..48]), 1),
        Chunk::packet(ptb(&stranger), 1),
    ];
    seeds.push(("ipv6-icmp", encode(dual, &chunks)));

    // What the engine drops in IPv6, each for its reason: a router
    // solicitation, a neighbour solicitation and an MLDv2 report behind a
    // router alert (ipv6_control), a fragment header (fragment), a
    // hop-by-hop header claiming 24 bytes with 8 there and TCP options cut
    // short behind the chain (truncated), hop-by-hop after destination
    // options (bad_header), an echo request (icmp_not_error), UDP
    // (not_tcp); and a SYN to the drained IPv6 service (a RST back).
    let ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    let rs = icmp6(
        ll,
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2),
        133,
        0,
        [0; 4],
        &[],
    );
    let ns = icmp6(
        Ipv6Addr::UNSPECIFIED,
        *VIP6.ip(),
        135,
        0,
        [0; 4],
        &VIP6.ip().octets(),
    );
    let mut mld = icmp6(
        ll,
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16),
        143,
        0,
        [0, 0, 0, 1],
        &[
            [4, 0, 0, 0].as_slice(),
            &Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1).octets(),
        ]
        .concat(),
    );
    mld = with_ext(&mld, &[(0, vec![5, 2, 0, 0, 1, 0], None)]);
    let syn = seg6(live6(0), VIP6, SYN, 7, 0, &[]);
    let frag = with_ext(&syn, &[(44, vec![0, 1, 0x12, 0x34, 0x56, 0x78], Some(0))]);
    let cut_hbh = {
        let mut p = with_ext(&syn[..40], &[(0, vec![1, 4, 0, 0, 0, 0], Some(2))]);
        p[6] = 0;
        p
    };
    let cut_tcp = {
        let mut p = with_ext(&syn, &chain());
        p[40 + 32 + 12] = 10 << 4; // 40 bytes of TCP header, 20 there
        p
    };
    let misplaced = with_ext(
        &syn,
        &[
            (60, vec![1, 4, 0, 0, 0, 0], None),
            (0, vec![1, 4, 0, 0, 0, 0], None),
        ],
    );
    let ping = icmp6(CLIENTS6[0], *VIP6.ip(), 128, 0, [0, 1, 0, 1], b"ping");
    let mut udp = seg6(live6(0), VIP6, 0, 0, 0, &[]);
    udp[6] = 17;
    let drained = seg6(client6(2, 4000), DRAINED_VIP6, SYN, 1, 0, &[]);
    let chunks: Vec<Chunk> = [
        rs, ns, mld, frag, cut_hbh, cut_tcp, misplaced, ping, udp, drained,
    ]
    .into_iter()
    .map(|p| Chunk::packet(p, 1))
    .collect();
    seeds.push(("ipv6-dropped", encode(dual, &chunks)));

    for (name, bytes) in &seeds {
        tunlb_fuzz::run(bytes);
        let path = format!("{dir}/seed-{name}");
        std::fs::write(&path, bytes).expect("write a seed");
        println!("{path}: {} bytes", bytes.len());
    }
}
