//! Offloaded super-packets: rewriting a TCP segment whose checksum is
//! partial (virtio-net `NEEDS_CSUM`) must give exactly what the kernel would
//! have produced by segmenting first and translating each segment.
//!
//! The reference here plays the kernel's part: it splits a super-packet at
//! `gso_size` (sequence numbers, IP IDs, lengths, PSH/FIN only on the last
//! segment) and completes each checksum from its pseudo-header sum, as
//! `skb_checksum_help` does. Every case is compared both ways: translate the
//! super-packet then split it, against split first then translate each
//! segment with a complete checksum.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};
use tunlb::conntrack::tcp::flags::{ACK, FIN, PSH, SYN};
use tunlb::craft::Segment;
use tunlb::engine::L4Checksum;
use tunlb::{Engine, EngineConfig, ServiceConfig, Timestamp, Verdict};

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80);
const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 3), 8080);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 40000);

fn engine() -> Engine {
    Engine::new(EngineConfig::one(ServiceConfig::new(VIP, [BACKEND]))).unwrap()
}

/// Open the flow; return the REPLY tuple's (source, destination).
fn open(e: &Engine) -> (SocketAddrV4, SocketAddrV4) {
    let t = Timestamp::ZERO;
    let mut p = Segment {
        seq: 99,
        ..Segment::new(CLIENT, VIP, SYN)
    }
    .build();
    assert!(matches!(
        e.handle_packet(&mut p, t),
        Verdict::Forward { .. }
    ));
    let r = e.flows_of::<std::net::Ipv4Addr>()[0].reply;
    let mut p = Segment {
        seq: 499,
        ack: 100,
        ..Segment::new(r.src, r.dst, SYN | ACK)
    }
    .build();
    assert!(matches!(
        e.handle_packet(&mut p, t),
        Verdict::Forward { .. }
    ));
    let mut p = Segment {
        seq: 100,
        ack: 500,
        ..Segment::new(CLIENT, VIP, ACK)
    }
    .build();
    assert!(matches!(
        e.handle_packet(&mut p, t),
        Verdict::Forward { .. }
    ));
    (r.src.into(), r.dst.into())
}

/// The folded, uncomplemented pseudo-header sum a sender leaves in the TCP
/// checksum field of a `CHECKSUM_PARTIAL` segment.
fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: usize) -> u16 {
    use smoltcp::wire::{checksum, IpProtocol};
    checksum::pseudo_header_v4(&src, &dst, IpProtocol::Tcp, tcp_len as u32)
}

/// Turn a complete packet into the partial form the TUN hands over.
fn make_partial(pkt: &mut [u8]) {
    let ip = Ipv4Packet::new_checked(&pkt[..]).unwrap();
    let (s, d, ihl, len) = (
        ip.src_addr(),
        ip.dst_addr(),
        ip.header_len() as usize,
        ip.total_len() as usize,
    );
    let ps = pseudo(s, d, len - ihl);
    pkt[ihl + 16..ihl + 18].copy_from_slice(&ps.to_be_bytes());
}

/// The kernel's part: split at `mss` and complete every checksum.
fn segment_and_complete(pkt: &[u8], mss: usize, partial: bool) -> Vec<Vec<u8>> {
    let ip = Ipv4Packet::new_checked(pkt).unwrap();
    let ihl = ip.header_len() as usize;
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    let thl = usize::from(tcp.header_len());
    let payload = tcp.payload();
    let flags = pkt[ihl + 13];
    let chunks: Vec<&[u8]> = payload.chunks(mss).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut seg = Vec::with_capacity(ihl + thl + chunk.len());
        seg.extend_from_slice(&pkt[..ihl + thl]);
        seg.extend_from_slice(chunk);
        let total = seg.len();
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut seg[..]);
            ip.set_total_len(total as u16);
            ip.set_ident(ip.ident().wrapping_add(i as u16));
            ip.fill_checksum();
        }
        seg[ihl + 13] = if last { flags } else { flags & !(FIN | PSH) };
        let seq = tcp.seq_number().0 as u32 + (i * mss) as u32;
        seg[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
        let (s, d) = {
            let ip = Ipv4Packet::new_unchecked(&seg[..]);
            (ip.src_addr(), ip.dst_addr())
        };
        if partial {
            // As tcp_gso_segment does: the super-packet's partial sum, moved
            // by the length difference only (never recomputed from the
            // addresses), then completed as skb_checksum_help does.
            let field = u16::from_be_bytes([pkt[ihl + 16], pkt[ihl + 17]]);
            let ps = ones_add(
                ones_add(field, !((pkt.len() - ihl) as u16)),
                (total - ihl) as u16,
            );
            seg[ihl + 16..ihl + 18].copy_from_slice(&ps.to_be_bytes());
            let sum = smoltcp::wire::checksum::data(&seg[ihl..]);
            seg[ihl + 16..ihl + 18].copy_from_slice(&(!sum).to_be_bytes());
        } else {
            TcpPacket::new_unchecked(&mut seg[ihl..])
                .fill_checksum(&IpAddress::Ipv4(s), &IpAddress::Ipv4(d));
        }
        out.push(seg);
    }
    out
}

/// One's-complement addition of two 16-bit words.
fn ones_add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

fn check_valid(pkt: &[u8]) {
    let ip = Ipv4Packet::new_checked(pkt).unwrap();
    assert!(ip.verify_checksum(), "IPv4 checksum");
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(
        t.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ),
        "TCP checksum"
    );
}

/// One case: a super-packet of `len` payload bytes from `src` to `dst` with
/// these flags, segmented at `mss`.
fn case(reply_dir: bool, len: usize, mss: usize, flags: u8) {
    let e = engine();
    let (bsrc, bdst) = open(&e);
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    let (src, dst, seq, ack) = if reply_dir {
        (bsrc, bdst, 500, 100)
    } else {
        (CLIENT, VIP, 100, 500)
    };
    let complete = Segment {
        seq,
        ack,
        payload: &payload,
        ..Segment::new(src, dst, flags)
    }
    .build();

    // Way 1: translate the super-packet (partial), then let "the kernel" split it.
    let mut sup = complete.clone();
    make_partial(&mut sup);
    let Verdict::Forward { len: n } =
        e.handle_offloaded_packet(&mut sup, Timestamp::ZERO, L4Checksum::Partial)
    else {
        panic!("super-packet not forwarded");
    };
    let way1 = segment_and_complete(&sup[..n], mss, true);

    // Way 2: split first (complete checksums), translate each segment.
    let e2 = engine();
    open(&e2);
    let mut way2 = Vec::new();
    for mut seg in segment_and_complete(&complete, mss, false) {
        let Verdict::Forward { len: n } = e2.handle_packet(&mut seg, Timestamp::ZERO) else {
            panic!("segment not forwarded");
        };
        way2.push(seg[..n].to_vec());
    }
    assert_eq!(way1.len(), len.div_ceil(mss));
    for (a, b) in way1.iter().zip(&way2) {
        check_valid(a);
        check_valid(b);
        assert_eq!(a, b, "super-packet path differs from per-segment path");
    }
    // And the translation is the right one.
    let ip = Ipv4Packet::new_checked(&way1[0][..]).unwrap();
    let want_dst = if reply_dir { CLIENT } else { BACKEND };
    assert_eq!(ip.dst_addr(), *want_dst.ip());
    assert_eq!(
        TcpPacket::new_checked(ip.payload()).unwrap().dst_port(),
        want_dst.port()
    );
}

#[test]
fn original_direction_super_packets_match_per_segment_translation() {
    for (len, mss) in [
        (1448 * 3, 1448),
        (4000, 1448),
        (65000, 1448),
        (1, 1448),
        (1000, 536),
    ] {
        case(false, len, mss, ACK | PSH);
    }
}

#[test]
fn reply_direction_super_packets_match_per_segment_translation() {
    for (len, mss) in [(1448 * 44, 1448), (10_000, 1460), (3, 1)] {
        case(true, len, mss, ACK);
    }
}

#[test]
fn a_fin_on_the_last_segment_survives() {
    case(false, 5000, 1448, ACK | PSH | FIN);
}

#[test]
fn a_partial_checksum_is_not_verified_but_a_complete_one_is() {
    let e = engine();
    open(&e);
    let payload = [1u8; 100];
    let mut p = Segment {
        seq: 100,
        ack: 500,
        payload: &payload,
        ..Segment::new(CLIENT, VIP, ACK)
    }
    .build();
    make_partial(&mut p);
    // Read as complete, a partial checksum is a bad one.
    assert_eq!(
        e.handle_packet(&mut p.clone(), Timestamp::ZERO),
        Verdict::Drop(tunlb::DropReason::BadChecksum)
    );
    assert!(matches!(
        e.handle_offloaded_packet(&mut p, Timestamp::ZERO, L4Checksum::Partial),
        Verdict::Forward { .. }
    ));
}

#[test]
fn a_checksum_the_kernel_verified_is_not_verified_again_and_is_updated_as_complete() {
    let payload = [7u8; 64];
    let seg = |ack: u32| {
        Segment {
            seq: 100,
            ack,
            payload: &payload,
            ..Segment::new(CLIENT, VIP, ACK)
        }
        .build()
    };
    // The same segment through two engines, as complete and as verified:
    // the same bytes come out, with a valid checksum.
    let (a, b) = (engine(), engine());
    open(&a);
    open(&b);
    let (mut complete, mut verified) = (seg(500), seg(500));
    assert!(matches!(
        a.handle_offloaded_packet(&mut complete, Timestamp::ZERO, L4Checksum::Complete),
        Verdict::Forward { .. }
    ));
    assert!(matches!(
        b.handle_offloaded_packet(&mut verified, Timestamp::ZERO, L4Checksum::Verified),
        Verdict::Forward { .. }
    ));
    assert_eq!(complete, verified);
    let ip = Ipv4Packet::new_checked(&verified[..]).unwrap();
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(tcp.verify_checksum(
        &IpAddress::Ipv4(ip.src_addr()),
        &IpAddress::Ipv4(ip.dst_addr())
    ));
    // What the kernel said was verified is not looked at again (as
    // netfilter trusts CHECKSUM_UNNECESSARY); the same bytes read as
    // complete are dropped.
    let mut bad = seg(500);
    let at = bad.len() - 1;
    bad[at] ^= 0xff;
    assert_eq!(
        a.handle_offloaded_packet(&mut bad.clone(), Timestamp::ZERO, L4Checksum::Complete),
        Verdict::Drop(tunlb::DropReason::BadChecksum)
    );
    assert!(matches!(
        b.handle_offloaded_packet(&mut bad, Timestamp::ZERO, L4Checksum::Verified),
        Verdict::Forward { .. }
    ));
}
