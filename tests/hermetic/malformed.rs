//! Random and malformed packets, in both directions, into an engine with
//! live flows.
//!
//! Whatever arrives, the engine must not panic, must emit only packets that
//! parse with smoltcp's checked views and carry valid IPv4 and TCP/ICMP
//! checksums, must address them to a backend or a client of a tracked flow
//! (a RST only to the sender of the refused SYN), must account for every
//! packet in exactly one counter, and must never hold more than `max_flows`.
//!
//! The second property runs a dual-stack engine (the same services and
//! flows in both families) on IPv6 inputs with IPv4 ones in between:
//! random bytes after a valid IPv6 header, random chains of extension
//! headers (cut short, misordered, fragment headers, unknown next headers),
//! ICMPv6 errors and control messages about the live flows or about
//! nothing, mutated segments. The same judgement applies, in ICMPv6's terms.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use pnet_packet::ip::IpNextHeaderProtocols;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};
use tunlb::conntrack::Tuple;
use tunlb::select::Mode;
use tunlb::{Engine, EngineConfig, Timestamp, Verdict};

use crate::check;
use crate::craft::{self, ext, flags, Ext, Ip, Tcp};
use crate::family::{v6, Plan};
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
    let replies = live_flows::<Ipv4Addr>(&engine);
    (engine, replies)
}

/// Open the flows of [`LIVE_PORTS`] from client 0 of `A`'s plan to its VIP:
/// three established, the last half-open. Returns their REPLY tuples.
fn live_flows<A: Plan>(engine: &Engine) -> Vec<Tuple<A>> {
    let t = Timestamp::ZERO;
    let vip = net::vip_of::<A>();
    let mut replies = Vec::new();
    for (i, &port) in LIVE_PORTS.iter().enumerate() {
        let client = A::sock(A::CLIENTS[0], port);
        let mut syn = craft::segment(client, vip, flags::SYN, 100, 0, &[]);
        assert!(matches!(
            engine.handle_packet(&mut syn, t),
            Verdict::Forward { .. }
        ));
        let flows = engine.flows_of::<A>();
        let reply = flows
            .iter()
            .find(|f| A::ep(f.original.src) == client)
            .unwrap()
            .reply;
        replies.push(reply);
        if i < 3 {
            let mut sa =
                craft::segment(reply.src, reply.dst, flags::SYN | flags::ACK, 500, 101, &[]);
            assert!(matches!(
                engine.handle_packet(&mut sa, t),
                Verdict::Forward { .. }
            ));
            let mut ack = craft::segment(client, vip, flags::ACK, 101, 501, &[]);
            assert!(matches!(
                engine.handle_packet(&mut ack, t),
                Verdict::Forward { .. }
            ));
        }
    }
    replies
}

/// An address a packet may carry: mostly the ones flows use.
fn addr() -> BoxedStrategy<Ipv4Addr> {
    prop_oneof![
        3 => Just(CLIENTS[0]),
        1 => Just(CLIENTS[1]),
        3 => Just(VIP),
        1 => Just(DRAINED_VIP),
        3 => (0..4usize).prop_map(|i| BACKENDS[i]),
        1 => (0u8..=255, 0u8..=255).prop_map(|(c, d)| Ipv4Addr::new(198, 18, c, d)),
    ]
    .boxed()
}

/// A port a packet may carry: mostly the ones flows use.
fn port() -> BoxedStrategy<u16> {
    prop_oneof![
        4 => Just(80u16),
        4 => (0..4usize).prop_map(|i| LIVE_PORTS[i]),
        2 => 40000u16..=40003,
        1 => any::<u16>(),
    ]
    .boxed()
}

/// A (source, destination) pair: ORIGINAL-looking (client to VIP),
/// REPLY-looking (backend to SNAT) or anything.
fn endpoints() -> BoxedStrategy<(SocketAddrV4, SocketAddrV4)> {
    prop_oneof![
        3 => ((0..2usize), port()).prop_map(|(c, p)| (SocketAddrV4::new(CLIENTS[c], p), vip())),
        3 => ((0..4usize), port()).prop_map(|(b, p)| (net::backend(b), SocketAddrV4::new(VIP, p))),
        1 => port().prop_map(|p| (SocketAddrV4::new(CLIENTS[0], p), SocketAddrV4::new(DRAINED_VIP, 80))),
        2 => (addr(), port(), addr(), port())
            .prop_map(|(a, p, b, q)| (SocketAddrV4::new(a, p), SocketAddrV4::new(b, q))),
    ]
    .boxed()
}

/// A TCP flag byte: mostly combinations conntrack classifies, sometimes any.
fn tcp_flags() -> BoxedStrategy<u8> {
    use flags::*;
    prop_oneof![
        6 => prop::sample::select(vec![SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN | URG]),
        2 => prop::sample::select(vec![0, FIN, SYN | FIN, FIN | PSH | URG, SYN | RST, 0xff]),
        2 => any::<u8>(),
    ]
    .boxed()
}

/// IPv4 header fields: version, IHL, total length, (flags, fragment
/// offset), good checksum.
type IpFields = (u8, u8, Option<u16>, (u8, u16), bool);

/// IPv4 header fields, mostly sane.
fn ip_fields() -> BoxedStrategy<IpFields> {
    (
        prop_oneof![9 => Just(4u8), 1 => 0u8..16],
        prop_oneof![8 => Just(5u8), 1 => 0u8..5, 1 => 6u8..16],
        prop_oneof![8 => Just(None), 2 => any::<u16>().prop_map(Some)],
        prop_oneof![9 => Just((2u8, 0u16)), 1 => (0u8..8, 0u16..8192)],
        prop::bool::weighted(0.9),
    )
        .boxed()
}

/// One input packet, described by how it was built.
#[derive(Debug, Clone)]
enum Input {
    /// Bytes from nowhere (the first nibble often says IPv4).
    Raw(Vec<u8>),
    /// A TCP segment with possibly broken fields.
    Tcp {
        ip: IpFields,
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

fn input() -> BoxedStrategy<Input> {
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
    prop_oneof![
        2 => raw.boxed(),
        5 => tcp.boxed(),
        3 => icmp.boxed(),
        1 => other.boxed(),
        3 => mutated.boxed(),
    ]
    .boxed()
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

// ---------------------------------------------------------------------
// IPv6, on a dual-stack engine
// ---------------------------------------------------------------------

/// The table limit of the dual-stack engine: the eight live flows (four of
/// each family; the limit is shared) and room for two more.
const MAX_FLOWS_DUAL: usize = 10;
/// The IPv6 service whose backends are all drained.
const DRAINED_VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);

/// A dual-stack engine: the IPv4 services of [`engine_with_flows`] and
/// their IPv6 twins, with the live flows of both families.
fn dual_engine_with_flows() -> (Engine, Vec<Tuple>, Vec<Tuple<Ipv6Addr>>) {
    let mut drained = net::service(Mode::Nth, &[0, 0]);
    drained.vip = SocketAddrV4::new(DRAINED_VIP, 80).into();
    let mut drained6 = net::service_of::<Ipv6Addr>(Mode::Nth, &[0, 0]);
    drained6.vip = SocketAddrV6::new(DRAINED_VIP6, 80, 0, 0).into();
    let cfg = EngineConfig {
        services: vec![
            net::service(Mode::Nth, &[1, 1, 1, 1]),
            drained,
            net::service_of::<Ipv6Addr>(Mode::Nth, &[1, 1, 1, 1]),
            drained6,
        ],
        max_flows: MAX_FLOWS_DUAL,
        snat_ports: 40000..=40003,
        seed: net::SEED,
        ..Default::default()
    };
    let engine = Engine::new(cfg).unwrap();
    let replies = live_flows::<Ipv4Addr>(&engine);
    let replies6 = live_flows::<Ipv6Addr>(&engine);
    (engine, replies, replies6)
}

/// An IPv6 address a packet may carry: mostly the ones flows use, some
/// elsewhere in 2001:2::/48, some that only control traffic uses.
fn addr6() -> BoxedStrategy<Ipv6Addr> {
    prop_oneof![
        3 => Just(v6::CLIENTS[0]),
        1 => Just(v6::CLIENTS[1]),
        3 => Just(v6::VIP),
        1 => Just(DRAINED_VIP6),
        3 => (0..4usize).prop_map(|i| v6::BACKENDS[i]),
        1 => any::<u64>().prop_map(|x| Ipv6Addr::from(0x2001_0002_0000u128 << 80 | u128::from(x))),
        1 => prop::sample::select(vec![
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        ]),
    ]
    .boxed()
}

/// A (source, destination) pair of IPv6 socket addresses: ORIGINAL-looking,
/// REPLY-looking, to the drained service, or anything.
fn endpoints6() -> BoxedStrategy<(SocketAddrV6, SocketAddrV6)> {
    let s = |a, p| SocketAddrV6::new(a, p, 0, 0);
    prop_oneof![
        3 => ((0..2usize), port()).prop_map(move |(c, p)| (s(v6::CLIENTS[c], p), s(v6::VIP, 80))),
        3 => ((0..4usize), port()).prop_map(move |(b, p)| (s(v6::BACKENDS[b], 80), s(v6::VIP, p))),
        1 => port().prop_map(move |p| (s(v6::CLIENTS[0], p), s(DRAINED_VIP6, 80))),
        2 => (addr6(), port(), addr6(), port()).prop_map(move |(a, p, b, q)| (s(a, p), s(b, q))),
    ]
    .boxed()
}

/// An extension header of a random chain: a kind the engine walks
/// (hop-by-hop, routing, destination options), a fragment header, or any
/// next-header value; its length field; whether it is cut short.
fn ext_header() -> BoxedStrategy<Ext> {
    (
        prop_oneof![
            6 => prop::sample::select(vec![ext::HOP_BY_HOP, ext::ROUTING, ext::DEST_OPTIONS]),
            1 => Just(ext::FRAGMENT),
            1 => any::<u8>(),
        ],
        prop_oneof![8 => 0u8..3, 1 => any::<u8>()],
        prop::option::weighted(0.1, 0usize..16),
    )
        .prop_map(|(kind, len_field, cut)| {
            let mut e = Ext::new(kind, len_field);
            if let Some(c) = cut {
                e.bytes = e.bytes.min(c);
            }
            e
        })
        .boxed()
}

/// What follows the chain of an IPv6 input.
#[derive(Debug, Clone)]
enum Upper6 {
    /// A TCP segment with possibly broken fields.
    Tcp {
        flags: u8,
        seq_ack: (u32, u32),
        data_offset: u8,
        payload: Vec<u8>,
        good_csum: bool,
    },
    /// An ICMPv6 message quoting a packet (with its own chain) or garbage.
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
        quote: Quote6,
        good_csum: bool,
    },
    /// Random bytes after a random next header.
    Raw { next: u8, bytes: Vec<u8> },
}

/// What an ICMPv6 error quotes.
#[derive(Debug, Clone)]
enum Quote6 {
    /// A TCP segment between these ends behind these extension headers,
    /// cut to this length.
    Packet {
        ends: (SocketAddrV6, SocketAddrV6),
        chain: Vec<Ext>,
        len: usize,
    },
    /// Anything.
    Garbage(Vec<u8>),
}

/// One IPv6 input packet.
#[derive(Debug, Clone)]
enum Input6 {
    /// A valid IPv6 header, a random chain of extension headers, then the
    /// upper layer; the payload length possibly wrong.
    Chain {
        ends: (SocketAddrV6, SocketAddrV6),
        chain: Vec<Ext>,
        upper: Upper6,
        payload_len: Option<u16>,
    },
    /// An ICMPv6 message from a hop about a packet the engine sent for live
    /// flow `flow` (to its backend, or with `reply` to its client): a
    /// RELATED error when the type is one, with extension headers in the
    /// quote, cut to `len`.
    Related {
        flow: usize,
        reply: bool,
        ty: u8,
        chain: Vec<Ext>,
        len: usize,
        good_csum: bool,
    },
    /// A sane segment of a live IPv6 flow with a few bytes overwritten, its
    /// TCP checksum then fixed or not.
    Mutated {
        flow: usize,
        reply: bool,
        edits: Vec<(usize, u8)>,
        fix: bool,
    },
}

fn upper6() -> BoxedStrategy<Upper6> {
    let tcp = (
        tcp_flags(),
        (any::<u32>(), any::<u32>()),
        prop_oneof![8 => Just(5u8), 2 => 0u8..16],
        prop::collection::vec(any::<u8>(), 0..48),
        prop::bool::weighted(0.9),
    )
        .prop_map(
            |(flags, seq_ack, data_offset, payload, good_csum)| Upper6::Tcp {
                flags,
                seq_ack,
                data_offset,
                payload,
                good_csum,
            },
        );
    let quote = prop_oneof![
        3 => (endpoints6(), prop::collection::vec(ext_header(), 0..3), 40usize..120)
            .prop_map(|(ends, chain, len)| Quote6::Packet { ends, chain, len }),
        1 => prop::collection::vec(any::<u8>(), 0..60).prop_map(Quote6::Garbage),
    ];
    let icmp = (
        prop_oneof![
            6 => prop::sample::select(vec![1u8, 2, 3, 4]),
            3 => prop::sample::select(vec![128u8, 129, 130, 131, 132, 133, 134, 135, 136, 137, 143]),
            1 => any::<u8>(),
        ],
        prop_oneof![4 => Just(0u8), 1 => 0u8..8],
        any::<[u8; 4]>(),
        quote,
        prop::bool::weighted(0.9),
    )
        .prop_map(|(ty, code, rest, quote, good_csum)| Upper6::Icmp {
            ty,
            code,
            rest,
            quote,
            good_csum,
        });
    let raw = (
        prop_oneof![
            2 => prop::sample::select(vec![6u8, 58, 17, 59, 0, 43, 44, 60]),
            1 => any::<u8>(),
        ],
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(next, bytes)| Upper6::Raw { next, bytes });
    prop_oneof![5 => tcp.boxed(), 4 => icmp.boxed(), 2 => raw.boxed()].boxed()
}

fn input6() -> BoxedStrategy<Input6> {
    let chain = (
        endpoints6(),
        prop_oneof![
            4 => Just(Vec::new()),
            3 => prop::collection::vec(ext_header(), 1..4),
            1 => prop::collection::vec(ext_header(), 4..11),
        ],
        upper6(),
        prop_oneof![9 => Just(None), 1 => any::<u16>().prop_map(Some)],
    )
        .prop_map(|(ends, chain, upper, payload_len)| Input6::Chain {
            ends,
            chain,
            upper,
            payload_len,
        });
    let mutated = (
        0..4usize,
        any::<bool>(),
        prop::collection::vec((0usize..80, any::<u8>()), 1..4),
        any::<bool>(),
    )
        .prop_map(|(flow, reply, edits, fix)| Input6::Mutated {
            flow,
            reply,
            edits,
            fix,
        });
    let related = (
        0..4usize,
        any::<bool>(),
        prop_oneof![8 => prop::sample::select(vec![1u8, 2, 3, 4]), 1 => any::<u8>()],
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(ext_header(), 1..3)],
        prop_oneof![3 => 48usize..120, 1 => 0usize..48],
        prop::bool::weighted(0.9),
    )
        .prop_map(|(flow, reply, ty, chain, len, good_csum)| Input6::Related {
            flow,
            reply,
            ty,
            chain,
            len,
            good_csum,
        });
    prop_oneof![
        4 => chain.boxed(),
        2 => related.boxed(),
        1 => mutated.boxed(),
    ]
    .boxed()
}

/// Recompute the TCP checksum of an IPv6 packet where it parses far enough.
fn fix_checksum6(buf: &mut [u8]) {
    let Ok(ip) = smoltcp::wire::Ipv6Packet::new_checked(&buf[..]) else {
        return;
    };
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let Ok((at, 6)) = check::ext_headers(buf) else {
        return;
    };
    let end = (40 + usize::from(ip.payload_len())).min(buf.len());
    if at < end {
        if let Ok(mut tcp) = TcpPacket::new_checked(&mut buf[at..end]) {
            tcp.fill_checksum(&IpAddress::Ipv6(src), &IpAddress::Ipv6(dst));
        }
    }
}

/// Build the bytes of an IPv6 input; `replies` are the live IPv6 flows'
/// reply tuples.
fn build6(input: &Input6, replies: &[Tuple<Ipv6Addr>]) -> Vec<u8> {
    match input {
        Input6::Chain {
            ends,
            chain,
            upper,
            payload_len,
        } => {
            let (src, dst) = *ends;
            let base = match upper {
                Upper6::Tcp {
                    flags,
                    seq_ack,
                    data_offset,
                    payload,
                    good_csum,
                } => {
                    let mut p = craft::segment(src, dst, *flags, seq_ack.0, seq_ack.1, payload);
                    // The data offset after the checksum: a broken offset
                    // with a checksum that still verifies.
                    let off = p[52];
                    p[52] = data_offset << 4 | (off & 0x0f);
                    p[56] ^= off ^ p[52];
                    if !good_csum {
                        p[57] ^= 0x01;
                    }
                    p
                }
                Upper6::Icmp {
                    ty,
                    code,
                    rest,
                    quote,
                    good_csum,
                } => {
                    let data = match quote {
                        Quote6::Packet { ends, chain, len } => {
                            let q = craft::tcp6(ends.0, ends.1, flags::ACK, 1, 1);
                            let mut q = craft::with_ext(&q, chain);
                            q.truncate(*len);
                            q
                        }
                        Quote6::Garbage(g) => g.clone(),
                    };
                    craft::icmp6(*src.ip(), *dst.ip(), *ty, *code, *rest, &data, *good_csum)
                }
                Upper6::Raw { next, bytes } => craft::ip6(*src.ip(), *dst.ip(), *next, bytes),
            };
            let mut p = craft::with_ext(&base, chain);
            if let Some(len) = payload_len {
                p[4..6].copy_from_slice(&len.to_be_bytes());
            }
            p
        }
        Input6::Related {
            flow,
            reply,
            ty,
            chain,
            len,
            good_csum,
        } => {
            // What the engine sent: to the backend from SNAT:port, or to
            // the client from VIP:80; the error comes from that side's hop
            // to the engine's address.
            let r = replies[*flow];
            let client = SocketAddrV6::new(v6::CLIENTS[0], LIVE_PORTS[*flow], 0, 0);
            let vip = net::vip_of::<Ipv6Addr>();
            let (sent, hop, to) = if *reply {
                (
                    craft::segment(vip, client, flags::ACK, 501, 101, b"abc"),
                    v6::CLIENT_HOP,
                    *vip.ip(),
                )
            } else {
                let (snat, backend) = (r.dst, r.src);
                (
                    craft::segment(snat, backend, flags::ACK, 101, 501, b"abc"),
                    v6::BACKEND_HOP,
                    *snat.ip(),
                )
            };
            let mut quote = craft::with_ext(&sent, chain);
            quote.truncate(*len);
            craft::icmp6(hop, to, *ty, 0, [0, 0, 5, 0], &quote, *good_csum)
        }
        Input6::Mutated {
            flow,
            reply,
            edits,
            fix,
        } => {
            let r = replies[*flow];
            let payload = b"0123456789";
            let mut p = if *reply {
                craft::segment(r.src, r.dst, flags::ACK | flags::PSH, 501, 101, payload)
            } else {
                let client = SocketAddrV6::new(v6::CLIENTS[0], LIVE_PORTS[*flow], 0, 0);
                let vip = net::vip_of::<Ipv6Addr>();
                craft::segment(client, vip, flags::ACK | flags::PSH, 101, 501, payload)
            };
            for &(at, byte) in edits {
                let at = at % p.len();
                p[at] = byte;
            }
            if *fix {
                fix_checksum6(&mut p);
            }
            p
        }
    }
}

/// The checks on an IPv6 packet's outcome, as [`judge`] for IPv4: a
/// forwarded packet is valid IPv6 (its TCP or ICMPv6 checksum verifies),
/// a TCP segment carries a tracked flow's translation, an ICMPv6 error goes
/// to a client or backend of a tracked flow and quotes a packet that one
/// sent, a response is a RST from the drained service to the SYN's sender.
fn judge6(
    input: &[u8],
    verdict: Verdict,
    output: &[u8],
    flows: &[(Tuple<Ipv6Addr>, Tuple<Ipv6Addr>)],
) -> Result<(), TestCaseError> {
    let (len, respond) = match verdict {
        Verdict::Drop(_) => return Ok(()),
        Verdict::Forward { len } => (len, false),
        Verdict::Respond { len } => (len, true),
    };
    prop_assert!(len <= output.len());
    let out = &output[..len];
    let s = check::valid_packet6(out).map_err(TestCaseError::fail)?;
    if respond {
        let t = s.tcp.expect("a response is a TCP RST");
        prop_assert!(t.flags & flags::RST != 0);
        prop_assert_eq!(s.src, DRAINED_VIP6);
        prop_assert_eq!(&out[24..40], &input[8..24]);
        return Ok(());
    }
    if let Some(t) = s.tcp {
        let t = Tuple::new(s.src, t.sport, s.dst, t.dport);
        let tracked = flows
            .iter()
            .any(|(o, r)| t == r.invert() || t == o.invert());
        prop_assert!(
            tracked,
            "TCP forwarded outside any flow: {}",
            check::describe(out)
        );
    } else {
        let (ty, _) = s.icmp.expect("TCP or ICMPv6");
        prop_assert!(
            (1..=4).contains(&ty),
            "only errors are forwarded: {}",
            check::describe(out)
        );
        let tracked = flows
            .iter()
            .any(|(o, r)| s.dst == *r.src.ip() || s.dst == *o.src.ip());
        prop_assert!(
            tracked,
            "ICMPv6 forwarded to a stranger: {}",
            check::describe(out)
        );
        // It is about a packet its receiver sent: the quoted source is the
        // receiver (translated back, like the outer header).
        let quote = &out[s.header_len + 8..];
        prop_assert!(quote.len() >= 40, "a quote with its IPv6 header");
        prop_assert_eq!(
            &quote[8..24],
            &out[24..40],
            "quoted source: {}",
            check::describe(out)
        );
    }
    Ok(())
}

fn tuples6(engine: &Engine) -> Vec<(Tuple<Ipv6Addr>, Tuple<Ipv6Addr>)> {
    engine
        .flows_of::<Ipv6Addr>()
        .into_iter()
        .map(|f| (f.original, f.reply))
        .collect()
}

/// One step of the dual-stack property: an IPv4 or an IPv6 input.
#[derive(Debug, Clone)]
enum Step {
    V4(Input),
    V6(Input6),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The property above on a dual-stack engine, with IPv6 inputs: random
    /// bytes after a valid IPv6 header, random chains of extension headers
    /// (cut short, out of order, fragment headers, unknown next headers),
    /// TCP to and around the live IPv6 flows, ICMPv6 errors and control
    /// messages quoting anything, mutated segments; and IPv4 inputs in
    /// between. Never a panic, nothing invalid or untranslated out, every
    /// packet in exactly one counter, never more than `max_flows` (shared).
    #[test]
    fn malformed_and_random_ipv6_packets_never_escape_untranslated_or_invalid(
        steps in prop::collection::vec(
            (prop_oneof![1 => input().boxed().prop_map(Step::V4), 3 => input6().prop_map(Step::V6)].boxed(),
             prop_oneof![9 => 0u64..2000, 1 => 0u64..400_000]),
            1..32,
        )
    ) {
        let (engine, replies, replies6) = dual_engine_with_flows();
        let base = engine.stats();
        let accounted = |s: &tunlb::Snapshot| s.total_dropped() + s.forwarded[0] + s.forwarded[1];
        let mut now = 0u64;
        for (processed, (step, dt)) in (1u64..).zip(&steps) {
            now += dt;
            let ts = Timestamp::from_millis(now);
            while engine.handle_timeout(ts) {}
            let bytes = match step {
                Step::V4(i) => build(i, &replies),
                Step::V6(i) => build6(i, &replies6),
            };
            let mut buf = bytes.clone();
            let (before, before6) = (tuples(&engine), tuples6(&engine));
            let verdict = engine.handle_packet(&mut buf, ts);
            let (mut flows, mut flows6) = (before, before6);
            flows.extend(tuples(&engine));
            flows6.extend(tuples6(&engine));
            match buf.first().map(|b| b >> 4) {
                Some(6) => judge6(&bytes, verdict, &buf, &flows6)?,
                _ => judge(&bytes, verdict, &buf, &flows)?,
            }
            prop_assert!(engine.flow_count() <= MAX_FLOWS_DUAL);
            prop_assert_eq!(
                engine.flows_of::<Ipv4Addr>().len() + engine.flows_of::<Ipv6Addr>().len(),
                engine.flow_count()
            );
            let stats = engine.stats();
            prop_assert_eq!(accounted(&stats) - accounted(&base), processed, "one counter per packet: {}", stats);
        }
    }
}
