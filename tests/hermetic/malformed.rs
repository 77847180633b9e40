//! Random and malformed packets, in both directions, into an engine with
//! live flows.
//!
//! Whatever arrives, the engine must not panic, must emit only packets that
//! parse with smoltcp's checked views and carry valid IPv4 and TCP/ICMP
//! checksums, must address them to a backend or a client of a tracked flow
//! (a RST only to the sender of the refused SYN), must account for every
//! packet in exactly one counter, and must never hold more than `max_flows`.

use std::net::{Ipv4Addr, SocketAddrV4};

use pnet_packet::ip::IpNextHeaderProtocols;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};
use tunlb::conntrack::Tuple;
use tunlb::select::Mode;
use tunlb::{Engine, EngineConfig, Timestamp, Verdict};

use crate::check;
use crate::craft::{self, flags, Ip, Tcp};
use crate::net::{self, vip, BACKENDS, CLIENTS, VIP};

/// The table limit: small, so new SYNs meet a full table.
const MAX_FLOWS: usize = 6;
/// A second service whose backends are all drained (weight 0): SYNs to it get a RST.
const DRAINED_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Client ports of the flows set up before each case.
const LIVE_PORTS: [u16; 4] = [1000, 1001, 1002, 1003];

/// An engine with three established flows (client 0, ports 1000-1002) and
/// one half-open (port 1003), a tiny SNAT range and a drained second service.
fn engine_with_flows() -> (Engine, Vec<Tuple>) {
    let mut drained = net::service(Mode::Nth, &[0, 0]);
    drained.vip = SocketAddrV4::new(DRAINED_VIP, 80).into();
    let cfg = EngineConfig {
        services: vec![net::service(Mode::Nth, &[1, 1, 1, 1]), drained],
        max_flows: MAX_FLOWS,
        snat_ports: 40000..=40003,
        seed: net::SEED,
        ..Default::default()
    };
    let engine = Engine::new(cfg).unwrap();
    let t = Timestamp::ZERO;
    let mut replies = Vec::new();
    for (i, &port) in LIVE_PORTS.iter().enumerate() {
        let client = SocketAddrV4::new(CLIENTS[0], port);
        let mut syn = craft::tcp(client, vip(), flags::SYN, 100, 0);
        assert!(matches!(
            engine.handle_packet(&mut syn, t),
            Verdict::Forward { .. }
        ));
        let flows = engine.flows_of::<std::net::Ipv4Addr>();
        let reply = flows
            .iter()
            .find(|f| f.original.src == client)
            .unwrap()
            .reply;
        replies.push(reply);
        if i < 3 {
            let mut sa = craft::tcp(reply.src, reply.dst, flags::SYN | flags::ACK, 500, 101);
            assert!(matches!(
                engine.handle_packet(&mut sa, t),
                Verdict::Forward { .. }
            ));
            let mut ack = craft::tcp(client, vip(), flags::ACK, 101, 501);
            assert!(matches!(
                engine.handle_packet(&mut ack, t),
                Verdict::Forward { .. }
            ));
        }
    }
    (engine, replies)
}

/// An address a packet may carry: mostly the ones flows use.
fn addr() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        3 => Just(CLIENTS[0]),
        1 => Just(CLIENTS[1]),
        3 => Just(VIP),
        1 => Just(DRAINED_VIP),
        3 => (0..4usize).prop_map(|i| BACKENDS[i]),
        1 => (0u8..=255, 0u8..=255).prop_map(|(c, d)| Ipv4Addr::new(198, 18, c, d)),
    ]
}

/// A port a packet may carry: mostly the ones flows use.
fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => Just(80u16),
        4 => (0..4usize).prop_map(|i| LIVE_PORTS[i]),
        2 => 40000u16..=40003,
        1 => any::<u16>(),
    ]
}

/// A (source, destination) pair: ORIGINAL-looking (client to VIP),
/// REPLY-looking (backend to SNAT) or anything.
fn endpoints() -> impl Strategy<Value = (SocketAddrV4, SocketAddrV4)> {
    prop_oneof![
        3 => ((0..2usize), port()).prop_map(|(c, p)| (SocketAddrV4::new(CLIENTS[c], p), vip())),
        3 => ((0..4usize), port()).prop_map(|(b, p)| (net::backend(b), SocketAddrV4::new(VIP, p))),
        1 => port().prop_map(|p| (SocketAddrV4::new(CLIENTS[0], p), SocketAddrV4::new(DRAINED_VIP, 80))),
        2 => (addr(), port(), addr(), port())
            .prop_map(|(a, p, b, q)| (SocketAddrV4::new(a, p), SocketAddrV4::new(b, q))),
    ]
}

/// A TCP flag byte: mostly combinations conntrack classifies, sometimes any.
fn tcp_flags() -> impl Strategy<Value = u8> {
    use flags::*;
    prop_oneof![
        6 => prop::sample::select(vec![SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN | URG]),
        2 => prop::sample::select(vec![0, FIN, SYN | FIN, FIN | PSH | URG, SYN | RST, 0xff]),
        2 => any::<u8>(),
    ]
}

/// IPv4 header fields, mostly sane.
fn ip_fields() -> impl Strategy<Value = (u8, u8, Option<u16>, (u8, u16), bool)> {
    (
        prop_oneof![9 => Just(4u8), 1 => 0u8..16],
        prop_oneof![8 => Just(5u8), 1 => 0u8..5, 1 => 6u8..16],
        prop_oneof![8 => Just(None), 2 => any::<u16>().prop_map(Some)],
        prop_oneof![9 => Just((2u8, 0u16)), 1 => (0u8..8, 0u16..8192)],
        prop::bool::weighted(0.9),
    )
}

/// One input packet, described by how it was built.
#[derive(Debug, Clone)]
enum Input {
    /// Bytes from nowhere (the first nibble often says IPv4).
    Raw(Vec<u8>),
    /// A TCP segment with possibly broken fields.
    Tcp {
        ip: (u8, u8, Option<u16>, (u8, u16), bool),
        ends: (SocketAddrV4, SocketAddrV4),
        flags: u8,
        seq_ack: (u32, u32),
        data_offset: u8,
        payload: Vec<u8>,
        good_csum: bool,
    },
    /// An ICMP message, quoting a live flow's packet or garbage.
    Icmp {
        ends: (Ipv4Addr, Ipv4Addr),
        ty: u8,
        code: u8,
        quote: Quote,
        good_csum: bool,
    },
    /// Another protocol (UDP, GRE, ...).
    Other {
        proto: u8,
        ends: (Ipv4Addr, Ipv4Addr),
        payload: Vec<u8>,
    },
    /// A sane segment of a live flow with a few bytes overwritten, its
    /// checksums then fixed or not.
    Mutated {
        flow: usize,
        reply: bool,
        edits: Vec<(usize, u8)>,
        fix: bool,
    },
}

/// What an ICMP error quotes.
#[derive(Debug, Clone)]
enum Quote {
    /// A TCP packet between these ends, cut to this length, IHL as given.
    Packet {
        ends: (SocketAddrV4, SocketAddrV4),
        len: usize,
        ihl: u8,
    },
    /// Anything.
    Garbage(Vec<u8>),
}

fn input() -> impl Strategy<Value = Input> {
    let raw = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80),
        prop::collection::vec(any::<u8>(), 1..80).prop_map(|mut v| {
            v[0] = 0x45;
            v
        }),
    ]
    .prop_map(Input::Raw);
    let tcp = (
        ip_fields(),
        endpoints(),
        tcp_flags(),
        (any::<u32>(), any::<u32>()),
        prop_oneof![8 => Just(5u8), 2 => 0u8..16],
        prop::collection::vec(any::<u8>(), 0..48),
        prop::bool::weighted(0.9),
    )
        .prop_map(
            |(ip, ends, flags, seq_ack, data_offset, payload, good_csum)| Input::Tcp {
                ip,
                ends,
                flags,
                seq_ack,
                data_offset,
                payload,
                good_csum,
            },
        );
    let quote = prop_oneof![
        3 => (endpoints(), 20usize..60, prop_oneof![8 => Just(5u8), 2 => 0u8..16])
            .prop_map(|(ends, len, ihl)| Quote::Packet { ends, len, ihl }),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Quote::Garbage),
    ];
    let icmp = (
        (addr(), addr()),
        prop_oneof![6 => prop::sample::select(vec![3u8, 4, 11, 12]), 2 => prop::sample::select(vec![0u8, 5, 8]), 1 => any::<u8>()],
        0u8..16,
        quote,
        prop::bool::weighted(0.9),
    )
        .prop_map(|(ends, ty, code, quote, good_csum)| Input::Icmp { ends, ty, code, quote, good_csum });
    let other = (
        prop::sample::select(vec![17u8, 47, 41, 50, 255]),
        (addr(), addr()),
        prop::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(proto, ends, payload)| Input::Other {
            proto,
            ends,
            payload,
        });
    let mutated = (
        0..4usize,
        any::<bool>(),
        prop::collection::vec((0usize..60, any::<u8>()), 1..4),
        any::<bool>(),
    )
        .prop_map(|(flow, reply, edits, fix)| Input::Mutated {
            flow,
            reply,
            edits,
            fix,
        });
    prop_oneof![2 => raw, 5 => tcp, 3 => icmp, 1 => other, 3 => mutated]
}

/// Recompute the IPv4 and TCP checksums where the packet parses far enough.
fn fix_checksums(buf: &mut [u8]) {
    if let Ok(mut ip) = Ipv4Packet::new_checked(&mut buf[..]) {
        ip.fill_checksum();
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if ip.next_header() == smoltcp::wire::IpProtocol::Tcp {
            if let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) {
                tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
            }
        }
    }
}

/// Build the bytes of an input; `replies` are the live flows' reply tuples.
fn build(input: &Input, replies: &[Tuple]) -> Vec<u8> {
    match input {
        Input::Raw(b) => b.clone(),
        Input::Tcp {
            ip,
            ends,
            flags,
            seq_ack,
            data_offset,
            payload,
            good_csum,
        } => {
            let mut t = Tcp::new(ends.0, ends.1, *flags, seq_ack.0, seq_ack.1);
            t.data_offset = *data_offset;
            t.payload = payload.clone();
            t.good_checksum = *good_csum;
            let mut h = Ip::new(*ends.0.ip(), *ends.1.ip(), IpNextHeaderProtocols::Tcp);
            (
                h.version,
                h.ihl,
                h.total_len,
                (h.flags, h.frag_offset),
                h.good_checksum,
            ) = *ip;
            h.build(&t.segment())
        }
        Input::Icmp {
            ends,
            ty,
            code,
            quote,
            good_csum,
        } => {
            let data = match quote {
                Quote::Packet { ends, len, ihl } => {
                    let mut p = craft::tcp(ends.0, ends.1, flags::ACK, 1, 1);
                    p[0] = 0x40 | (ihl & 0x0f);
                    p.truncate(*len);
                    p
                }
                Quote::Garbage(g) => g.clone(),
            };
            let body = craft::icmp_body(*ty, *code, [0; 4], &data, *good_csum);
            Ip::new(ends.0, ends.1, IpNextHeaderProtocols::Icmp).build(&body)
        }
        Input::Other {
            proto,
            ends,
            payload,
        } => Ip::new(
            ends.0,
            ends.1,
            pnet_packet::ip::IpNextHeaderProtocol(*proto),
        )
        .build(payload),
        Input::Mutated {
            flow,
            reply,
            edits,
            fix,
        } => {
            let r = replies[*flow];
            let mut t = if *reply {
                Tcp::new(
                    r.src.into(),
                    r.dst.into(),
                    flags::ACK | flags::PSH,
                    501,
                    101,
                )
            } else {
                Tcp::new(
                    SocketAddrV4::new(CLIENTS[0], LIVE_PORTS[*flow]),
                    vip(),
                    flags::ACK | flags::PSH,
                    101,
                    501,
                )
            };
            t.payload = b"0123456789".to_vec();
            let mut p = t.packet();
            for &(at, byte) in edits {
                let at = at % p.len();
                p[at] = byte;
            }
            if *fix {
                fix_checksums(&mut p);
            }
            p
        }
    }
}

/// The checks on one packet's outcome. `flows` holds the (ORIGINAL, REPLY)
/// tuples of every flow tracked just before or just after the packet.
fn judge(
    input: &[u8],
    verdict: Verdict,
    output: &[u8],
    flows: &[(Tuple, Tuple)],
) -> Result<(), TestCaseError> {
    let (len, respond) = match verdict {
        Verdict::Drop(_) => return Ok(()),
        Verdict::Forward { len } => (len, false),
        Verdict::Respond { len } => (len, true),
    };
    prop_assert!(len <= output.len());
    let s = check::valid_packet(&output[..len]).map_err(TestCaseError::fail)?;
    if respond {
        // A RST back to whoever sent the refused SYN, from the drained service.
        let t = s.tcp.expect("a response is a TCP RST");
        prop_assert!(t.flags & flags::RST != 0);
        prop_assert_eq!(s.src, DRAINED_VIP);
        prop_assert_eq!(&output[16..20], &input[12..16]);
        return Ok(());
    }
    if s.tcp.is_some() {
        let (src, dst) = (s.src_sock(), s.dst_sock());
        let tracked = flows.iter().any(|(o, r)| {
            (src, dst) == (r.dst.into(), r.src.into()) || (src, dst) == (o.dst.into(), o.src.into())
        });
        prop_assert!(
            tracked,
            "TCP forwarded outside any flow: {}",
            check::describe(&output[..len])
        );
    } else {
        let tracked = flows
            .iter()
            .any(|(o, r)| s.dst == *r.src.ip() || s.dst == *o.src.ip());
        prop_assert!(
            tracked,
            "ICMP forwarded to a stranger: {}",
            check::describe(&output[..len])
        );
    }
    Ok(())
}

fn tuples(engine: &Engine) -> Vec<(Tuple, Tuple)> {
    engine
        .flows_of::<std::net::Ipv4Addr>()
        .into_iter()
        .map(|f| (f.original, f.reply))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn malformed_and_random_packets_never_escape_untranslated_or_invalid(
        steps in prop::collection::vec((input(), prop_oneof![9 => 0u64..2000, 1 => 0u64..400_000]), 1..32)
    ) {
        let (engine, replies) = engine_with_flows();
        let base = engine.stats();
        let accounted = |s: &tunlb::Snapshot| s.total_dropped() + s.forwarded[0] + s.forwarded[1];
        let mut now = 0u64;
        for (processed, (input, dt)) in (1u64..).zip(&steps) {
            now += dt;
            let ts = Timestamp::from_millis(now);
            while engine.handle_timeout(ts) {}
            let bytes = build(input, &replies);
            let mut buf = bytes.clone();
            let before = tuples(&engine);
            let verdict = engine.handle_packet(&mut buf, ts);
            let mut flows = before;
            flows.extend(tuples(&engine));
            judge(&bytes, verdict, &buf, &flows)?;
            prop_assert!(engine.flow_count() <= MAX_FLOWS);
            prop_assert_eq!(engine.flows_of::<std::net::Ipv4Addr>().len(), engine.flow_count());
            let stats = engine.stats();
            prop_assert_eq!(accounted(&stats) - accounted(&base), processed, "one counter per packet: {}", stats);
        }
    }
}
