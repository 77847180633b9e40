//! ICMP errors RELATED to a flow: translated both ways, state untouched.

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;

use smoltcp::wire::{checksum, Icmpv4Packet, Ipv4Packet, TcpPacket};
use tunlb::conntrack::{TcpState, Tuple};
use tunlb::select::Mode;
use tunlb::{Timestamp, Verdict};

use crate::check;
use crate::craft;
use crate::net::{
    self, backend, pattern, Close, Net, Outcome, Serve, StreamId, BACKENDS, BACKEND_HOP, CLIENTS,
    CLIENT_HOP, VIP, VIP_PORT,
};
use crate::wire::{Fate, Leg};

/// What a test compares to say "the flow's state is unchanged".
type FlowView = (
    Tuple,
    Tuple,
    TcpState,
    bool,
    bool,
    Timestamp,
    [u64; 2],
    [u64; 2],
);

fn flow_views(net: &Net) -> Vec<FlowView> {
    let mut v: Vec<FlowView> = net
        .engine
        .flows_of::<std::net::Ipv4Addr>()
        .into_iter()
        .map(|i| {
            let f = i;
            (
                f.original,
                f.reply,
                f.state,
                f.seen_reply,
                f.assured,
                f.deadline(),
                f.packets,
                f.bytes,
            )
        })
        .collect();
    v.sort_by_key(|f| f.0);
    v
}

/// Lose the first engine-emitted TCP segment that `pick` selects, keeping
/// a copy: the packet a hop "could not forward". Returns the copy's slot.
fn lose_first(
    net: &mut Net,
    pick: impl Fn(&check::Summary) -> bool + 'static,
) -> Rc<RefCell<Option<Vec<u8>>>> {
    let slot = Rc::new(RefCell::new(None));
    let s = slot.clone();
    net.wire.set_filter(move |leg, p| {
        let sum = check::valid_packet(p).unwrap();
        if leg == Leg::Nat && s.borrow().is_none() && pick(&sum) {
            *s.borrow_mut() = Some(p.to_vec());
            return Fate::Drop;
        }
        Fate::Pass
    });
    slot
}

/// The packet a host sent that became `translated` after NAT (same TCP
/// sequence number and payload length, sent by `from`).
fn sent_by(net: &Net, from: Ipv4Addr, translated: &[u8]) -> Vec<u8> {
    let want = check::valid_packet(translated).unwrap().tcp.unwrap();
    net.wire
        .captured()
        .iter()
        .find(|(leg, p)| {
            let s = check::valid_packet(p).unwrap();
            *leg == Leg::Host
                && s.src == from
                && s.tcp
                    .is_some_and(|t| t.seq == want.seq && t.payload == want.payload)
        })
        .map(|(_, p)| p.clone())
        .expect("the original packet was captured")
}

/// Check an ICMP error the engine emitted: valid outer packet and
/// checksums, addressed `src -> dst`, type/code kept, and a quote that is
/// byte for byte the start of `original` (the packet as its sender built
/// it: addresses, ports and both quoted checksums restored).
fn assert_translated_error(
    out: &[u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ty: u8,
    code: u8,
    original: &[u8],
) {
    let s = check::valid_packet(out).unwrap();
    assert_eq!((s.src, s.dst), (src, dst), "outer addresses");
    assert_eq!(s.icmp, Some((ty, code)));
    let ip = Ipv4Packet::new_checked(out).unwrap();
    assert!(ip.verify_checksum());
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(), "ICMP checksum");
    let quote = icmp.data();
    assert!(quote.len() >= 28);
    // The quoted IPv4 header verifies on its own.
    let ihl = usize::from(quote[0] & 0x0f) * 4;
    assert_eq!(
        checksum::data(&quote[..ihl]),
        0xffff,
        "quoted IPv4 header checksum"
    );
    assert_eq!(
        quote,
        &original[..quote.len()],
        "the quote is the packet as first sent"
    );
    // When the whole segment is quoted, its TCP checksum verifies too.
    if quote.len() == original.len() {
        let inner = Ipv4Packet::new_checked(quote).unwrap();
        let tcp = TcpPacket::new_checked(inner.payload()).unwrap();
        assert!(tcp.verify_checksum(&inner.src_addr().into(), &inner.dst_addr().into()));
    }
}

/// A client upload whose first full-size segment a hop between the engine
/// and the backend cannot forward; the hop answers "fragmentation needed"
/// quoting `quote_len(segment length)` bytes of it.
fn frag_needed_from_a_backend_side_hop(quote_len: fn(usize) -> usize) {
    let mut net = Net::new(net::config(Mode::Nth, &[1, 1, 1, 1]));
    net.serve(Serve::GreetThenWait);
    net.wire.capture();
    let too_big = lose_first(&mut net, |s| {
        BACKENDS.contains(&s.dst) && s.tcp.is_some_and(|t| t.payload > 1000)
    });
    let id = net.connect(0, 40000, pattern(7, 8 * 1024), Close::AfterSend);
    assert!(net.run_until(Duration::from_secs(5), |_| too_big.borrow().is_some()));
    let lost = too_big.borrow().clone().unwrap();
    let s = check::valid_packet(&lost).unwrap();
    assert_eq!(s.src, VIP, "after SNAT");
    assert_eq!(s.dst_sock(), backend(0));

    let before = flow_views(&net);
    let icmp = craft::frag_needed(BACKEND_HOP, s.src, 1280, &lost[..quote_len(lost.len())]);
    let (verdict, out) = net.inject(icmp);
    assert!(matches!(verdict, Verdict::Forward { .. }), "{verdict:?}");
    let out = out.unwrap();
    let original = sent_by(&net, CLIENTS[0], &lost);
    // The client sees the error from the service address, about its own
    // packet to VIP:80 (Linux NAT rewrites the outer source the same way).
    assert_translated_error(&out, VIP, CLIENTS[0], 3, 4, &original);
    let inner = &out[28..];
    assert_eq!(&inner[12..16], &CLIENTS[0].octets());
    assert_eq!(&inner[16..20], &VIP.octets());
    assert_eq!(u16::from_be_bytes([inner[20], inner[21]]), 40000);
    assert_eq!(u16::from_be_bytes([inner[22], inner[23]]), VIP_PORT);
    assert_eq!(&out[26..28], &1280u16.to_be_bytes(), "next-hop MTU kept");

    assert_eq!(flow_views(&net), before, "an ICMP error changes no flow");
    let stats = net.engine.stats();
    assert_eq!(stats.icmp_translated, 1);
    assert_eq!(stats.total_dropped(), 0, "{stats}");

    // The client's stack takes the error in stride: the lost segment is
    // retransmitted and the upload arrives whole.
    net.close(id);
    finish(&mut net, id);
    let server = net.accepted(0).next().unwrap();
    assert_eq!(server.received, pattern(7, 8 * 1024));
}

fn finish(net: &mut Net, id: StreamId) {
    let ok = net.run_until(Duration::from_secs(30), |n| {
        n.stream(id).outcome != Outcome::Open && n.accepted(0).all(|s| s.outcome != Outcome::Open)
    });
    assert!(ok, "{}", net.report("did not finish", &[id]));
    assert_eq!(net.stream(id).outcome, Outcome::Done);
}

#[test]
fn frag_needed_from_a_hop_reaches_the_client_translated_with_a_long_quote() {
    // Linux quotes as much as fits in 576 bytes.
    frag_needed_from_a_backend_side_hop(|len| len.min(576 - 28));
}

#[test]
fn frag_needed_from_a_hop_reaches_the_client_translated_with_an_rfc792_quote() {
    // RFC 792: the IP header and the first 64 bits of data (no TCP checksum).
    frag_needed_from_a_backend_side_hop(|_| 20 + 8);
}

#[test]
fn an_icmp_error_from_the_client_side_reaches_the_backend_translated() {
    let mut net = Net::new(net::config(Mode::Nth, &[1, 1, 1, 1]));
    net.serve(Serve::GreetThenWait);
    net.wire.capture();
    // The backend's greeting cannot reach the client: a hop on the client
    // side says "host unreachable", quoting the whole (small) segment.
    let lost = lose_first(&mut net, |s| {
        s.dst == CLIENTS[0] && s.tcp.is_some_and(|t| t.payload > 0)
    });
    let id = net.connect(0, 40000, Vec::new(), Close::Manual);
    assert!(net.run_until(Duration::from_secs(5), |_| lost.borrow().is_some()));
    let lost = lost.borrow().clone().unwrap();
    let s = check::valid_packet(&lost).unwrap();
    assert_eq!(
        (s.src_sock(), s.dst),
        (net::vip(), CLIENTS[0]),
        "after un-NAT"
    );

    let before = flow_views(&net);
    let body = craft::icmp_body(3, 1, [0; 4], &lost, true);
    let icmp = craft::Ip::new(
        CLIENT_HOP,
        VIP,
        pnet_packet::ip::IpNextHeaderProtocols::Icmp,
    )
    .build(&body);
    let (verdict, out) = net.inject(icmp);
    assert!(matches!(verdict, Verdict::Forward { .. }), "{verdict:?}");
    let original = sent_by(&net, BACKENDS[0], &lost);
    assert_eq!(original.len(), lost.len(), "the whole segment is quoted");
    // The backend sees it from the SNAT address about its own packet to SNAT:port.
    assert_translated_error(&out.unwrap(), VIP, BACKENDS[0], 3, 1, &original);
    assert_eq!(flow_views(&net), before, "an ICMP error changes no flow");
    assert_eq!(net.engine.stats().icmp_translated, 1);

    // The backend retransmits its greeting and the connection completes.
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.stream(id).received
            == net::greeting(0))
    );
    net.close(id);
    finish(&mut net, id);
}
