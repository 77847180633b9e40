//! What only IPv6 has: Packet Too Big on a path with a 1280-byte hop,
//! the control traffic a host sends on any interface (neighbour discovery,
//! MLD, router solicitations), extension-header chains and fragment
//! headers, and the TCP checksum over 128-bit pseudo-header addresses.
//!
//! The behaviours both families share (balancing, transfers, lossy links,
//! the state machine, timeouts, RST cases) run as the `_over_ipv6` twins
//! in their own modules.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use proptest::prelude::*;
use smoltcp::wire::{Icmpv6Packet, IpAddress, Ipv6Packet, MldAddressRecordRepr, MldRecordType};
use smoltcp::wire::{Icmpv6Repr, MldRepr, TcpPacket};
use tunlb::select::Mode;
use tunlb::{DropReason, Engine, Timestamp, Verdict};

use crate::check;
use crate::craft::{self, ext, flags, Ext};
use crate::family::v6::{BACKENDS, BACKEND_HOP, CLIENTS, CLIENT_HOP, VIP};
use crate::net::{self, backend_pattern, pattern, Close, Net6, Outcome, Serve, Side, StreamId};
use crate::wire::{Fate, Leg};

const KIB: usize = 1024;

/// The IPv6 service configuration: `[2001:2::1]:80` over `weights`.
fn config(weights: &[u32]) -> tunlb::EngineConfig {
    net::config_of::<Ipv6Addr>(Mode::Nth, weights)
}

/// `[addr]:port`.
fn sock(addr: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(addr, port, 0, 0)
}

/// The service address and port.
fn vip() -> SocketAddrV6 {
    sock(VIP, net::VIP_PORT)
}

// ---------------------------------------------------------------------
// Packet Too Big
// ---------------------------------------------------------------------

/// The MTU of the hop: IPv6's minimum link MTU.
const HOP_MTU: usize = 1280;

/// A network with path MTU discovery on the hosts and a 1280-byte hop on
/// `side`, one connection from client 0 to backend 0 carrying
/// `up` bytes up and `down` bytes down. With `lose_too_big`, every Packet
/// Too Big the hop sends is lost on the way to the engine (a firewall
/// dropping ICMPv6, or a NAT that does not translate it): the black hole.
fn through_a_small_hop(side: Side, up: usize, down: usize, lose_too_big: bool) -> (Net6, StreamId) {
    let mut net = Net6::build(config(&[1]));
    net.pmtu_discovery = true;
    net.mtu_hop(side, HOP_MTU);
    net.serve(Serve::Stream(down));
    net.wire.capture();
    if lose_too_big {
        net.wire.set_filter(|leg, p| {
            let ptb = check::valid_packet6(p).is_ok_and(|s| s.icmp == Some((2, 0)));
            if leg == Leg::Host && ptb {
                Fate::Drop
            } else {
                Fate::Pass
            }
        });
    }
    let id = net.connect(0, 40000, pattern(61, up), Close::AfterSend);
    (net, id)
}

/// Whether the connection ended in order at both ends.
fn both_done(net: &Net6, id: StreamId) -> bool {
    net.stream(id).outcome == Outcome::Done
        && net.accepted(0).count() == 1
        && net.accepted(0).all(|s| s.outcome == Outcome::Done)
}

/// Check a Packet Too Big the engine emitted: ICMPv6 type 2 code 0 from
/// `from` to `to` whose checksum verifies (smoltcp's
/// `Icmpv6Packet::verify_checksum`, with the pseudo-header), announcing
/// the hop's MTU, and quoting byte for byte the start of a packet `to`
/// itself sent (addresses, ports and the quoted TCP checksum restored).
fn assert_translated_too_big(net: &Net6, out: &[u8], from: Ipv6Addr, to: Ipv6Addr) {
    let s = check::valid_packet6(out).unwrap();
    assert_eq!((s.src, s.dst), (from, to), "outer addresses");
    assert_eq!(s.icmp, Some((2, 0)), "packet too big");
    assert!(out.len() <= HOP_MTU, "an error fits the minimum MTU");
    let ip = Ipv6Packet::new_checked(out).unwrap();
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert!(
        icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()),
        "ICMPv6 checksum"
    );
    assert_eq!(icmp.pkt_too_big_mtu(), HOP_MTU as u32, "the MTU is kept");
    let quote = icmp.payload();
    assert!(quote.len() > 1000, "a long quote: {} bytes", quote.len());
    let inner = Ipv6Packet::new_unchecked(quote);
    assert_eq!(inner.src_addr(), to, "quoted source: the receiver itself");
    let sent_by_to = net
        .wire
        .captured()
        .iter()
        .any(|(leg, p)| *leg == Leg::Host && p.len() > quote.len() && p.starts_with(quote));
    assert!(
        sent_by_to,
        "the quote is the start of a packet {to} sent, as it sent it"
    );
}

/// An upload through a 1280-byte hop between the engine and the backends:
/// the client's full-size segments (1500 bytes) do not fit; the hop answers
/// each with Packet Too Big to the SNAT address; the engine translates it
/// to the client (from the VIP, quoting the client's own segment to the
/// VIP); the client lowers its path MTU and resends in 1280-byte packets.
#[test]
fn packet_too_big_from_a_hop_behind_the_balancer_reaches_the_client_and_the_upload_completes() {
    let up = 256 * KIB;
    let (mut net, id) = through_a_small_hop(Side::Backends, up, 4 * KIB, false);
    let ok = net.run_until(Duration::from_secs(120), |n| both_done(n, id));
    assert!(ok, "{}", net.report("the upload did not finish", &[id]));
    let server = net.accepted(0).next().unwrap();
    assert_eq!(server.received, pattern(61, up), "upload byte-exact");
    assert_eq!(net.stream(id).received, backend_pattern(0, 4 * KIB));

    // The hop refused full-size segments and said so.
    let too_big = net.too_big.len();
    assert!(too_big >= 1, "the hop sent no Packet Too Big");
    let stats = net.engine.stats();
    assert_eq!(stats.icmp_translated, too_big as u64, "{stats}");
    assert_eq!(stats.total_dropped(), 0, "{stats}");
    // Every one reached the client translated.
    let translated: Vec<&Vec<u8>> = net
        .wire
        .captured()
        .iter()
        .filter(|(leg, p)| *leg == Leg::Nat && p[6] == 58)
        .map(|(_, p)| p)
        .collect();
    assert_eq!(translated.len(), too_big);
    for out in &translated {
        assert_translated_too_big(&net, out, VIP, CLIENTS[0]);
        // The quoted tuple is the client's own: client:40000 -> VIP:80.
        let quote = &out[48..];
        let (hl, next) = check::ext_headers(quote).unwrap();
        assert_eq!(next, 6);
        assert_eq!(&quote[24..40], &VIP.octets());
        assert_eq!(u16::from_be_bytes([quote[hl], quote[hl + 1]]), 40000);
        assert_eq!(u16::from_be_bytes([quote[hl + 2], quote[hl + 3]]), 80);
    }
    // The client learned the path MTU once; nothing else changed its MTU.
    assert_eq!(net.pmtu_changes.len(), 1, "{:?}", net.pmtu_changes);
    assert_eq!(net.pmtu_changes[0].0, CLIENTS[0]);
    assert_eq!(net.host_mtu(CLIENTS[0]), HOP_MTU);
    assert_eq!(net.host_mtu(BACKENDS[0]), 1500);
    // After it, everything the backend got fit the hop.
    let to_backend: Vec<usize> = net
        .wire
        .captured()
        .iter()
        .filter(|(leg, p)| *leg == Leg::Nat && p[24..40] == BACKENDS[0].octets())
        .map(|(_, p)| p.len())
        .collect();
    let big = to_backend.iter().filter(|&&l| l > HOP_MTU).count();
    assert_eq!(big, too_big, "only the refused packets were too big");
    println!(
        "IPv6 upload through a {HOP_MTU}-byte hop: {too_big} Packet Too Big translated, \
         the client's MTU 1500 -> {} at {} ms, done at {} ms; {} packets to the backend, \
         {} of them full size; {stats}",
        net.pmtu_changes[0].1,
        net.pmtu_changes[0].2,
        net.now().as_millis(),
        to_backend.len(),
        to_backend.iter().filter(|&&l| l == HOP_MTU).count(),
    );
}

/// The download through a 1280-byte hop on the clients' side: the hop
/// tells the VIP, and the engine translates the error to the backend (from
/// the SNAT address, quoting the backend's own segment to SNAT:port).
#[test]
fn packet_too_big_from_a_hop_on_the_client_side_reaches_the_backend_and_the_download_completes() {
    let down = 256 * KIB;
    let (mut net, id) = through_a_small_hop(Side::Clients, 100, down, false);
    let ok = net.run_until(Duration::from_secs(120), |n| both_done(n, id));
    assert!(ok, "{}", net.report("the download did not finish", &[id]));
    assert_eq!(net.stream(id).received, backend_pattern(0, down));
    let too_big = net.too_big.len();
    assert!(too_big >= 1, "the hop sent no Packet Too Big");
    let stats = net.engine.stats();
    assert_eq!(stats.icmp_translated, too_big as u64, "{stats}");
    assert_eq!(stats.total_dropped(), 0, "{stats}");
    let translated: Vec<&Vec<u8>> = net
        .wire
        .captured()
        .iter()
        .filter(|(leg, p)| *leg == Leg::Nat && p[6] == 58)
        .map(|(_, p)| p)
        .collect();
    assert_eq!(translated.len(), too_big);
    for out in &translated {
        assert_translated_too_big(&net, out, VIP, BACKENDS[0]);
    }
    assert_eq!(net.pmtu_changes.len(), 1, "{:?}", net.pmtu_changes);
    assert_eq!(net.pmtu_changes[0].0, BACKENDS[0]);
    assert_eq!(net.host_mtu(BACKENDS[0]), HOP_MTU);
    assert_eq!(net.host_mtu(CLIENTS[0]), 1500);
    println!(
        "IPv6 download through a {HOP_MTU}-byte hop: {too_big} Packet Too Big translated, \
         done at {} ms",
        net.now().as_millis()
    );
}

/// The difference: the same upload, the hop's Packet Too Big lost before
/// the engine. The client never learns the path MTU, resends the same
/// 1500-byte segment on every timeout, and the upload stalls for good.
#[test]
fn without_packet_too_big_the_same_upload_stalls_in_a_black_hole() {
    let up = 256 * KIB;
    let (mut net, id) = through_a_small_hop(Side::Backends, up, 4 * KIB, true);
    let limit = Duration::from_secs(120);
    let ok = net.run_until(limit, |n| both_done(n, id));
    assert!(!ok, "the upload finished without Packet Too Big");
    let got = net.accepted(0).next().map_or(0, |s| s.received.len());
    assert!(got < up / 8, "the backend got {got} of {up} bytes");
    assert_eq!(net.stream(id).outcome, Outcome::Open, "still stuck");
    // The hop kept refusing the same segment; none reached the client.
    assert!(net.too_big.len() >= 5, "{} refusals", net.too_big.len());
    assert_eq!(net.wire.stats.filtered, net.too_big.len() as u64);
    assert_eq!(net.engine.stats().icmp_translated, 0);
    assert!(net.pmtu_changes.is_empty());
    assert_eq!(net.host_mtu(CLIENTS[0]), 1500);
    println!(
        "IPv6 upload without Packet Too Big: {got} of {up} bytes after {} s, {} refusals",
        limit.as_secs(),
        net.too_big.len()
    );
}

// ---------------------------------------------------------------------
// Control traffic: neighbour discovery, MLD, router solicitation
// ---------------------------------------------------------------------

/// A tracing subscriber that counts the events (any target, any level) of
/// the threads that asked it to: what "nothing is logged" is measured with.
///
/// Installed once as the global default, never replaced. (A scoped one,
/// `with_default`, misses events now and then: tracing caches each
/// callsite's interest globally, and the scoped dispatchers of concurrent
/// tests come and go.) Threads that do not count answer "disabled", so the
/// other tests pay one thread-local read per log call.
struct ThreadCounter;

thread_local! {
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static COUNTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl tracing::Subscriber for ThreadCounter {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Ask on every call: whether to count is per thread.
        tracing::subscriber::Interest::sometimes()
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        COUNTING.with(|c| c.get())
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        COUNTED.with(|c| c.set(c.get() + 1));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Run `f` and return what it returned and how many log events it
/// produced on this thread (any target, any level, `--trace`'s included).
fn counting_logs<R>(f: impl FnOnce() -> R) -> (R, usize) {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(ThreadCounter)
            .expect("no other global subscriber in the tests")
    });
    COUNTED.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, COUNTED.with(|c| c.get()))
}

/// A link-local address (what a host's stack sends ND and MLD from).
const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x5ee0);
/// All nodes, all routers, all MLDv2-capable routers, a solicited-node group.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const MLDV2_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
const SOLICITED: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x5ee0);

/// An ICMPv6 message with this hop limit (255 for ND, 1 for MLD).
fn icmp6_hops(from: Ipv6Addr, to: Ipv6Addr, hops: u8, ty: u8, body: &[u8]) -> Vec<u8> {
    let mut rest = [0u8; 4];
    rest.copy_from_slice(&body[..4]);
    let mut p = craft::icmp6(from, to, ty, 0, rest, &body[4..], true);
    p[7] = hops;
    p
}

/// An MLD message built with smoltcp's `MldRepr`, behind a hop-by-hop
/// header with the router alert option, as Linux sends MLD (RFC 2711).
fn mld(from: Ipv6Addr, to: Ipv6Addr, repr: MldRepr<'_>) -> Vec<u8> {
    // smoltcp 0.14 leaves a report's address records out of its length.
    let records = match repr {
        MldRepr::ReportRecordReprs(r) => r.iter().map(|r| r.buffer_len()).sum(),
        _ => 0,
    };
    let repr = Icmpv6Repr::Mld(repr);
    let mut body = vec![0u8; repr.buffer_len() + records];
    repr.emit(
        &from,
        &to,
        &mut Icmpv6Packet::new_unchecked(&mut body[..]),
        &smoltcp::phy::ChecksumCapabilities::default(),
    );
    // Hop-by-hop: next header ICMPv6, 8 bytes, router alert (MLD), PadN.
    let mut payload = vec![58, 0, 5, 2, 0, 0, 1, 0];
    payload.extend_from_slice(&body);
    let mut p = craft::ip6(from, to, ext::HOP_BY_HOP, &payload);
    p[7] = 1;
    p
}

/// What the kernel sends into a fresh TUN with an IPv6 address, and what a
/// router or neighbour could send: every kind of neighbour discovery and
/// MLD message, named.
fn control_packets() -> Vec<(&'static str, Vec<u8>)> {
    let target = VIP.octets();
    let mut na = vec![0x60, 0, 0, 0];
    na.extend_from_slice(&target);
    let mut ns = vec![0u8; 4];
    ns.extend_from_slice(&target);
    let mut redirect = vec![0u8; 4];
    redirect.extend_from_slice(&CLIENT_HOP.octets());
    redirect.extend_from_slice(&CLIENTS[0].octets());
    let mut mld1 = vec![0, 0, 0, 0];
    mld1.extend_from_slice(&SOLICITED.octets());
    let record = [MldAddressRecordRepr::new(
        MldRecordType::ChangeToExclude,
        SOLICITED,
    )];
    vec![
        (
            "router solicitation",
            icmp6_hops(LINK_LOCAL, ALL_ROUTERS, 255, 133, &[0; 4]),
        ),
        (
            "router advertisement",
            icmp6_hops(
                LINK_LOCAL,
                ALL_NODES,
                255,
                134,
                &[64, 0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
        ),
        (
            "neighbour solicitation (DAD)",
            icmp6_hops(Ipv6Addr::UNSPECIFIED, SOLICITED, 255, 135, &ns),
        ),
        (
            "neighbour advertisement",
            icmp6_hops(LINK_LOCAL, ALL_NODES, 255, 136, &na),
        ),
        ("redirect", icmp6_hops(LINK_LOCAL, VIP, 255, 137, &redirect)),
        (
            "MLDv2 report",
            mld(
                LINK_LOCAL,
                MLDV2_ROUTERS,
                MldRepr::ReportRecordReprs(&record),
            ),
        ),
        (
            "MLD query",
            mld(
                LINK_LOCAL,
                ALL_NODES,
                MldRepr::Query {
                    max_resp_code: 1000,
                    mcast_addr: Ipv6Addr::UNSPECIFIED,
                    s_flag: false,
                    qrv: 2,
                    qqic: 125,
                    num_srcs: 0,
                    data: &[],
                },
            ),
        ),
        (
            "MLDv1 report",
            icmp6_hops(LINK_LOCAL, SOLICITED, 1, 131, &mld1),
        ),
        (
            "MLDv1 done",
            icmp6_hops(LINK_LOCAL, ALL_ROUTERS, 1, 132, &mld1),
        ),
        (
            "neighbour solicitation to the VIP",
            icmp6_hops(CLIENTS[0], VIP, 255, 135, &ns),
        ),
    ]
}

/// Neighbour discovery, MLD and router solicitations are no error: each
/// is dropped as `ipv6_control`, counted there and nowhere else, and the
/// engine logs nothing about them (not even at trace level), however many
/// arrive. A SYN, by contrast, is logged (`--trace`'s NEW line): the count
/// does see the engine's logging.
#[test]
fn neighbour_discovery_and_mld_are_dropped_quietly_as_ipv6_control() {
    let engine = Engine::new(config(&[1])).unwrap();
    let packets = control_packets();
    // Each is well formed: its ICMPv6 checksum verifies (smoltcp's view;
    // MLDv1 is a type smoltcp does not parse, hence the unchecked view).
    for (name, p) in &packets {
        let (hl, next) = check::ext_headers(p).unwrap();
        assert_eq!(next, 58, "{name}");
        let ip = Ipv6Packet::new_checked(&p[..]).unwrap();
        let icmp = Icmpv6Packet::new_unchecked(&p[hl..]);
        assert!(
            icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()),
            "{name}"
        );
    }
    let rounds = 50;
    let (verdicts, logged) = counting_logs(|| {
        let mut v = Vec::new();
        for i in 0..rounds {
            for (name, p) in &packets {
                let mut buf = p.clone();
                v.push((
                    *name,
                    engine.handle_packet(&mut buf, Timestamp::from_millis(i)),
                ));
            }
        }
        v
    });
    for (name, v) in &verdicts {
        assert_eq!(*v, Verdict::Drop(DropReason::Ipv6Control), "{name}");
    }
    assert_eq!(logged, 0, "nothing logged per control packet");
    let n = (rounds as usize * packets.len()) as u64;
    let stats = engine.stats();
    assert_eq!(stats.dropped(DropReason::Ipv6Control), n, "{stats}");
    assert_eq!(stats.total_dropped(), n, "one counter each: {stats}");
    assert_eq!(stats.forwarded, [0, 0]);
    assert_eq!(engine.flow_count(), 0);

    // The same subscriber sees the engine's trace line for a new flow.
    let mut syn = craft::tcp6(sock(CLIENTS[0], 40000), vip(), flags::SYN, 1, 0);
    let (v, logged) = counting_logs(|| engine.handle_packet(&mut syn, Timestamp::ZERO));
    assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    assert!(logged >= 1, "the counter sees the NEW line");
}

/// An echo request is no control traffic and no error: `icmp_not_error`.
#[test]
fn an_echo_request_is_not_control_traffic() {
    let engine = Engine::new(config(&[1])).unwrap();
    let mut ping = craft::icmp6(CLIENTS[0], VIP, 128, 0, [0, 1, 0, 1], b"ping", true);
    assert_eq!(
        engine.handle_packet(&mut ping, Timestamp::ZERO),
        Verdict::Drop(DropReason::IcmpNotError)
    );
}

// ---------------------------------------------------------------------
// Extension headers, fragments, truncation
// ---------------------------------------------------------------------

/// Hop-by-hop (8 bytes), destination options (16) and routing (8, no
/// segments left): the chain a packet may carry before its TCP header.
fn chain() -> [Ext; 3] {
    [
        Ext::new(ext::HOP_BY_HOP, 0),
        Ext::new(ext::DEST_OPTIONS, 1),
        Ext::new(ext::ROUTING, 0),
    ]
}

/// Hand `pkt` to `engine` and return the forwarded packet (checked with
/// smoltcp's views: the TCP checksum verifies over the translated
/// pseudo-header), or panic.
fn forwarded(engine: &Engine, mut pkt: Vec<u8>) -> Vec<u8> {
    let v = engine.handle_packet(&mut pkt, Timestamp::ZERO);
    let Verdict::Forward { len } = v else {
        panic!("{v:?}: {}", check::describe(&pkt))
    };
    pkt.truncate(len);
    if let Err(e) = check::valid_packet6(&pkt) {
        panic!("forwarded an invalid packet: {e}");
    }
    pkt
}

/// A connection whose every segment carries extension headers before
/// TCP: each is translated (addresses and ports) with its chain kept byte
/// for byte, and its TCP checksum verifies after NAT.
#[test]
fn a_chain_of_extension_headers_before_tcp_is_translated_with_valid_checksums() {
    let engine = Engine::new(config(&[1])).unwrap();
    let client = sock(CLIENTS[0], 40000);
    let backend = sock(BACKENDS[0], 80);
    let snat = sock(VIP, 40000);
    let chain = chain();
    let ext_len = 8 + 16 + 8;

    let syn = craft::with_ext(&craft::tcp6(client, vip(), flags::SYN, 1000, 0), &chain);
    assert_eq!(check::valid_packet6(&syn).unwrap().header_len, 40 + ext_len);
    let out = forwarded(&engine, syn.clone());
    let s = check::valid_packet6(&out).unwrap();
    assert_eq!((s.src_sock(), s.dst_sock()), (snat, backend));
    assert_eq!(s.header_len, 40 + ext_len);
    assert_eq!(out[40..40 + ext_len], syn[40..40 + ext_len], "chain kept");
    assert_eq!(out.len(), syn.len());

    // The backend answers with destination options only.
    let dest = [Ext::new(ext::DEST_OPTIONS, 0)];
    let syn_ack = craft::segment(backend, snat, flags::SYN | flags::ACK, 5000, 1001, &[]);
    let out = forwarded(&engine, craft::with_ext(&syn_ack, &dest));
    let s = check::valid_packet6(&out).unwrap();
    assert_eq!((s.src_sock(), s.dst_sock()), (vip(), client));
    assert_eq!(s.header_len, 48);

    // Data both ways, odd lengths (the checksum's last byte is padded).
    let up = pattern(3, 333);
    let data = craft::segment(client, vip(), flags::ACK | flags::PSH, 1001, 5001, &up);
    let out = forwarded(&engine, craft::with_ext(&data, &chain));
    let s = check::valid_packet6(&out).unwrap();
    assert_eq!((s.src_sock(), s.dst_sock()), (snat, backend));
    assert_eq!(out[40 + ext_len + 20..], up[..], "payload untouched");
    let down = pattern(4, 777);
    let data = craft::segment(backend, snat, flags::ACK | flags::PSH, 5001, 1334, &down);
    let out = forwarded(&engine, craft::with_ext(&data, &chain));
    let s = check::valid_packet6(&out).unwrap();
    assert_eq!((s.src_sock(), s.dst_sock()), (vip(), client));
    assert_eq!(out[40 + ext_len + 20..], down[..]);

    let flows = engine.flows_of::<Ipv6Addr>();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].state, tunlb::conntrack::TcpState::Established);
    assert_eq!(flows[0].packets, [2, 2]);
    let stats = engine.stats();
    assert_eq!(stats.forwarded, [2, 2]);
    assert_eq!(stats.total_dropped(), 0, "{stats}");
}

/// A Packet Too Big whose quote carries the chain: the engine walks the
/// quoted extension headers to the quoted TCP header and translates it.
#[test]
fn an_icmpv6_error_quoting_an_extension_header_chain_is_translated() {
    let engine = Engine::new(config(&[1])).unwrap();
    let client = sock(CLIENTS[0], 40000);
    let syn = craft::with_ext(&craft::tcp6(client, vip(), flags::SYN, 1000, 0), &chain());
    let out = forwarded(&engine, syn.clone());
    let ptb = craft::too_big(BACKEND_HOP, VIP, 1280, &out);
    let err = forwarded(&engine, ptb);
    let s = check::valid_packet6(&err).unwrap();
    assert_eq!((s.src, s.dst), (VIP, CLIENTS[0]));
    assert_eq!(s.icmp, Some((2, 0)));
    let icmp = Icmpv6Packet::new_checked(&err[40..]).unwrap();
    assert!(icmp.verify_checksum(&VIP, &CLIENTS[0]));
    assert_eq!(
        &err[48..],
        &syn[..],
        "the quote is the client's SYN, chain and all"
    );
    assert_eq!(engine.stats().icmp_translated, 1);
}

/// Fragments are not reassembled: a fragment header anywhere in the chain
/// (a first fragment, a later one, an atomic one) is `fragment`.
#[test]
fn a_fragment_header_is_dropped_as_a_fragment() {
    let engine = Engine::new(config(&[1])).unwrap();
    let syn = craft::tcp6(sock(CLIENTS[0], 40000), vip(), flags::SYN, 1000, 0);
    let frag = Ext::new(ext::FRAGMENT, 0);
    let first = craft::with_ext(&syn, &[frag]);
    let behind_options = craft::with_ext(
        &syn,
        &[
            Ext::new(ext::HOP_BY_HOP, 0),
            Ext::new(ext::DEST_OPTIONS, 0),
            frag,
        ],
    );
    // Offset 185 (1480 bytes), last fragment: a TCP header is not even there.
    let mut later = first.clone();
    later[42..44].copy_from_slice(&(185u16 << 3).to_be_bytes());
    // Offset 0 and no more fragments: an atomic fragment (RFC 6946).
    let mut atomic = first.clone();
    atomic[43] = 0;
    let cases = [first, behind_options, later, atomic];
    for (i, p) in cases.iter().enumerate() {
        let mut buf = p.clone();
        let v = engine.handle_packet(&mut buf, Timestamp::ZERO);
        assert_eq!(v, Verdict::Drop(DropReason::Fragment), "case {i}");
    }
    let stats = engine.stats();
    assert_eq!(stats.dropped(DropReason::Fragment), cases.len() as u64);
    assert_eq!(stats.total_dropped(), cases.len() as u64, "{stats}");
    assert_eq!(engine.flow_count(), 0);
}

/// Headers that end before they say they do: an options header whose
/// length runs past the packet, one cut after a byte, a routing header cut
/// short behind a whole chain, a TCP header cut inside its options behind
/// a chain. Each is `truncated`, counted once.
#[test]
fn truncated_extension_headers_and_options_are_truncated() {
    let engine = Engine::new(config(&[1])).unwrap();
    let syn = craft::tcp6(sock(CLIENTS[0], 40000), vip(), flags::SYN, 1000, 0);
    let ip_only = |p: &[u8]| {
        // Keep the IPv6 header and the extension headers, drop the TCP header.
        let (hl, _) = check::ext_headers(p).unwrap_or((p.len(), 0));
        let mut q = p[..hl.min(p.len())].to_vec();
        let len = (q.len() - 40) as u16;
        q[4..6].copy_from_slice(&len.to_be_bytes());
        q
    };
    let cut = |kind: u8, len_field: u8, bytes: usize| Ext {
        kind,
        len_field,
        bytes,
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "hop-by-hop saying 24 bytes, 8 there",
            craft::with_ext(&ip_only(&syn), &[cut(ext::HOP_BY_HOP, 2, 8)]),
        ),
        (
            "destination options cut after one byte",
            craft::with_ext(&ip_only(&syn), &[cut(ext::DEST_OPTIONS, 0, 1)]),
        ),
        (
            "routing header cut short behind a chain",
            craft::with_ext(
                &ip_only(&syn),
                &[
                    Ext::new(ext::HOP_BY_HOP, 0),
                    Ext::new(ext::DEST_OPTIONS, 1),
                    cut(ext::ROUTING, 1, 12),
                ],
            ),
        ),
    ];
    // A TCP header of 40 bytes (options) of which 24 are there, behind the chain.
    let mut short_tcp = craft::with_ext(&syn, &chain());
    let tcp_at = 40 + 32;
    short_tcp[tcp_at + 12] = 10 << 4;
    short_tcp.extend_from_slice(&[1, 1, 1, 1]);
    let len = (short_tcp.len() - 40) as u16;
    short_tcp[4..6].copy_from_slice(&len.to_be_bytes());
    cases.push(("TCP options cut short behind a chain", short_tcp));
    // The IPv6 payload length says more than there is.
    let mut long = craft::with_ext(&syn, &chain());
    long[5] += 8;
    cases.push(("payload length beyond the packet", long));
    for (name, p) in &cases {
        let mut buf = p.clone();
        let v = engine.handle_packet(&mut buf, Timestamp::ZERO);
        assert_eq!(v, Verdict::Drop(DropReason::Truncated), "{name}");
    }
    let stats = engine.stats();
    assert_eq!(stats.dropped(DropReason::Truncated), cases.len() as u64);
    assert_eq!(stats.total_dropped(), cases.len() as u64, "{stats}");
}

/// Hop-by-hop options belong first (RFC 8200 4.1): anywhere else the chain
/// is malformed, `bad_header`; so is a chain that never reaches an upper
/// layer within the engine's walk.
#[test]
fn a_hop_by_hop_header_out_of_place_is_a_bad_header() {
    let engine = Engine::new(config(&[1])).unwrap();
    let syn = craft::tcp6(sock(CLIENTS[0], 40000), vip(), flags::SYN, 1000, 0);
    let misplaced = craft::with_ext(
        &syn,
        &[Ext::new(ext::DEST_OPTIONS, 0), Ext::new(ext::HOP_BY_HOP, 0)],
    );
    let endless = craft::with_ext(&syn, &[Ext::new(ext::DEST_OPTIONS, 0); 16]);
    for p in [misplaced, endless] {
        let mut buf = p.clone();
        assert_eq!(
            engine.handle_packet(&mut buf, Timestamp::ZERO),
            Verdict::Drop(DropReason::BadHeader)
        );
    }
    assert_eq!(engine.stats().dropped(DropReason::BadHeader), 2);
}

// ---------------------------------------------------------------------
// Checksums over 128-bit addresses
// ---------------------------------------------------------------------

/// An address in 2001:2::/48 with these low 80 bits.
fn in_plan(low: u128) -> Ipv6Addr {
    Ipv6Addr::from(0x2001_0002_0000u128 << 80 | low & ((1u128 << 80) - 1))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any client, VIP, backend and SNAT address (random in 2001:2::/48:
    /// five random 16-bit words each, so every carry of the one's
    /// complement sum occurs), any ports: the SYN, the SYN-ACK and a data
    /// segment each way leave with a TCP checksum that verifies (smoltcp's
    /// `TcpPacket::verify_checksum` over the translated pseudo-header), the
    /// translated tuple, and the payload untouched.
    #[test]
    fn ipv6_segments_with_random_addresses_and_ports_leave_with_valid_checksums(
        addrs in any::<[u128; 4]>(),
        ports in (1u16.., 1u16.., 1u16..),
        snat_pool in any::<bool>(),
        isn in any::<(u32, u32)>(),
        up in prop::collection::vec(any::<u8>(), 0..96),
        down in prop::collection::vec(any::<u8>(), 0..96),
    ) {
        let [c, v, b, n] = addrs.map(in_plan);
        prop_assume!(c != v && c != b && v != b && n != c && n != b);
        let (cport, vport, bport) = ports;
        let snat_ip = if snat_pool { n } else { v };
        let mut cfg = config(&[1]);
        cfg.services[0].vip = sock(v, vport).into();
        cfg.services[0].backends[0].addr = sock(b, bport).into();
        if snat_pool {
            cfg.services[0].snat = vec![n.into()];
        }
        let engine = Engine::new(cfg).unwrap();
        let (client, vip, backend) = (sock(c, cport), sock(v, vport), sock(b, bport));
        let (ci, si) = isn;
        let t = Timestamp::ZERO;
        // Each segment: handed to the engine, forwarded, its checksum
        // verified over the translated pseudo-header, its tuple `want`.
        let step = |i: usize, mut pkt: Vec<u8>, payload: &[u8], want: Option<(SocketAddrV6, SocketAddrV6)>| {
            let v = engine.handle_packet(&mut pkt, t);
            let Verdict::Forward { len } = v else {
                return Err(TestCaseError::fail(format!("step {i}: {v:?}")));
            };
            let out = &pkt[..len];
            let ip = Ipv6Packet::new_checked(out).unwrap();
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            prop_assert!(
                tcp.verify_checksum(&IpAddress::Ipv6(ip.src_addr()), &IpAddress::Ipv6(ip.dst_addr())),
                "step {}: bad checksum {}", i, check::describe(out)
            );
            let s = check::valid_packet6(out).map_err(TestCaseError::fail)?;
            if let Some(want) = want {
                prop_assert_eq!((s.src_sock(), s.dst_sock()), want, "step {}", i);
            }
            prop_assert_eq!(tcp.payload(), payload);
            Ok((s.src_sock(), s.dst_sock()))
        };
        // The SNAT port is the client's, unless MASQUERADE moves it (a port
        // below 1024 goes elsewhere, as in Linux): read off the SYN.
        let (snat, to) = step(0, craft::segment(client, vip, flags::SYN, ci, 0, &[]), &[], None)?;
        prop_assert_eq!(*snat.ip(), snat_ip);
        prop_assert_eq!(to, backend);
        if cport >= 1024 {
            prop_assert_eq!(snat.port(), cport, "the client's port is kept");
        }
        let reply = engine.flows_of::<Ipv6Addr>()[0].reply;
        prop_assert_eq!(sock(*reply.dst.ip(), reply.dst.port()), snat);
        step(1, craft::segment(backend, snat, flags::SYN | flags::ACK, si, ci.wrapping_add(1), &[]), &[], Some((vip, client)))?;
        step(2, craft::segment(client, vip, flags::ACK | flags::PSH, ci.wrapping_add(1), si.wrapping_add(1), &up), &up, Some((snat, backend)))?;
        let ack = ci.wrapping_add(1 + up.len() as u32);
        step(3, craft::segment(backend, snat, flags::ACK | flags::PSH, si.wrapping_add(1), ack, &down), &down, Some((vip, client)))?;
        prop_assert_eq!(engine.stats().total_dropped(), 0);
    }
}
