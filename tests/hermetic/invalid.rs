//! INVALID traffic: dropped, counted under its exact reason, never forwarded
//! untranslated (kubernetes#74839), and harmless to the flows it aims at.
//!
//! Each test injects hand-made segments next to a real smoltcp connection,
//! then checks three things: the verdict and the drop counter, that no
//! packet the engine emitted carries a pre-NAT tuple (the client's `C -> VIP`
//! or the backend's `B -> SNAT`), and that the real connection still carries
//! data both ways in the state it was in.

//!
//! The tests that do not depend on IPv4 addresses run in both families
//! (the `_over_ipv6` twins, on 2001:2::/48).

use std::net::SocketAddrV4;
use std::time::Duration;

use tunlb::conntrack::tuple::Endpoint;
use tunlb::conntrack::{Direction, Flow, TcpState, Timeouts, Tuple};
use tunlb::select::Mode;
use tunlb::{DropReason, Engine, Timestamp, Verdict};

use crate::check;
use crate::craft::{self, flags::*};
use crate::cycle::{self, CLIENT_ISN, SERVER_ISN};
use crate::family::Plan;
use crate::net::{self, greeting, pattern, vip, Close, Net, Serve, StreamId};
use crate::wire::Leg;

/// The flag combinations conntrack calls invalid: NULL, XMAS, SYN|FIN, a
/// bare FIN, SYN|RST and every bit at once.
const BAD_FLAGS: [(&str, u8); 6] = [
    ("NULL", 0),
    ("XMAS", FIN | PSH | URG),
    ("SYN|FIN", SYN | FIN),
    ("FIN", FIN),
    ("SYN|RST", SYN | RST),
    ("all", 0xff),
];

/// A real connection through the engine and its two tuples, as the
/// engine tracks them.
struct Live<A: Plan> {
    id: StreamId,
    original: Tuple<A>,
    reply: Tuple<A>,
    /// The next sequence number each side will send (client, backend).
    next_seq: (u32, u32),
}

/// Build a network (one backend that greets and waits) and open one
/// connection from client 0, port 40000.
fn live<A: Plan>() -> (Net<A>, Live<A>) {
    let mut net = Net::<A>::build(net::config_of::<A>(Mode::Nth, &[1]));
    net.serve(Serve::GreetThenWait);
    net.wire.capture();
    let id = net.connect(0, 40000, Vec::new(), Close::Manual);
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.stream(id).received
            == greeting(0))
    );
    let flow = net.engine.flows_of::<A>()[0].clone();
    assert_eq!(flow.state, TcpState::Established);
    let live = Live {
        id,
        original: flow.original,
        reply: flow.reply,
        next_seq: next_seqs(&net, flow.original, flow.reply),
    };
    (net, live)
}

/// The next sequence numbers of client and backend, read off the last
/// segment each put on the wire (before NAT).
fn next_seqs<A: Plan>(net: &Net<A>, original: Tuple<A>, reply: Tuple<A>) -> (u32, u32) {
    let last = |t: Tuple<A>| {
        let s = net
            .wire
            .captured()
            .iter()
            .rev()
            .filter(|(leg, _)| *leg == Leg::Host)
            .map(|(_, p)| check::valid::<A>(p).unwrap())
            .find(|s| s.src_sock() == A::ep(t.src) && s.dst_sock() == A::ep(t.dst))
            .expect("the side has sent");
        let t = s.tcp.unwrap();
        let syn_fin = u32::from(t.flags & (SYN | FIN) != 0);
        t.seq.wrapping_add(t.payload as u32).wrapping_add(syn_fin)
    };
    (last(original), last(reply))
}

/// Assert no packet the engine emitted carries one of `tuples` (source and
/// destination, ports included): nothing went out untranslated.
fn assert_nothing_untranslated<A: Plan>(net: &Net<A>, tuples: &[Tuple<A>]) {
    for (leg, p) in net.wire.captured() {
        if *leg != Leg::Nat {
            continue;
        }
        let s = check::valid::<A>(p).unwrap();
        let ports = s.tcp.map_or((0, 0), |t| (t.sport, t.dport));
        let t = Tuple::new(s.src, ports.0, s.dst, ports.1);
        assert!(
            !tuples.contains(&t),
            "forwarded untranslated: {}",
            check::describe(p)
        );
    }
}

/// Send fresh data both ways over the connection and check it arrives.
fn still_works<A: Plan>(net: &mut Net<A>, live: &Live<A>, round: u64) {
    let server = net.server_end(live.id).expect("a backend end");
    let (c0, s0) = (
        net.stream(live.id).received.len(),
        net.stream(server).received.len(),
    );
    let (up, down) = (pattern(round, 2000), pattern(round + 1000, 3000));
    net.send(live.id, &up);
    net.send(server, &down);
    let ok = net.run_until(Duration::from_secs(5), |n| {
        n.stream(live.id).received.len() == c0 + down.len()
            && n.stream(server).received.len() == s0 + up.len()
    });
    assert!(
        ok,
        "{}",
        net.report("the connection stopped working", &[live.id])
    );
    assert_eq!(net.stream(live.id).received[c0..], down[..]);
    assert_eq!(net.stream(server).received[s0..], up[..]);
}

/// The state of the connection's flow.
fn state<A: Plan>(net: &Net<A>, live: &Live<A>) -> TcpState {
    net.engine
        .flows_of::<A>()
        .into_iter()
        .find(|f| f.original == live.original)
        .expect("the flow exists")
        .state
}

/// Inject a segment `src -> dst`; return the verdict.
fn inject<A: Plan>(
    net: &mut Net<A>,
    src: Endpoint<A>,
    dst: Endpoint<A>,
    flags: u8,
    seq: u32,
    ack: u32,
) -> Verdict {
    net.inject(craft::segment(src, dst, flags, seq, ack, &[])).0
}

twins!(
    invalid_flag_combinations_are_dropped_with_or_without_a_flow_in_both_directions,
    invalid_flag_combinations_are_dropped_with_or_without_a_flow_in_both_directions_over_ipv6,
    invalid_flags
);

fn invalid_flags<A: Plan>() {
    let (mut net, live) = live::<A>();
    let stranger = Endpoint::new(A::CLIENTS[1], 45000);
    let vip = Endpoint::new(A::VIP, net::VIP_PORT);
    let (cseq, bseq) = live.next_seq;
    for (name, flags) in BAD_FLAGS {
        for (src, dst, seq, ack) in [
            (stranger, vip, 1, 0),
            (live.original.src, live.original.dst, cseq, bseq),
            (live.reply.src, live.reply.dst, bseq, cseq),
        ] {
            let v = inject(&mut net, src, dst, flags, seq, ack);
            assert_eq!(
                v,
                Verdict::Drop(DropReason::BadFlags),
                "{name} {src} -> {dst}"
            );
        }
    }
    let s = net.engine.stats();
    assert_eq!(
        s.dropped(DropReason::BadFlags),
        3 * BAD_FLAGS.len() as u64,
        "{s}"
    );
    assert_eq!(s.total_dropped(), 3 * BAD_FLAGS.len() as u64, "{s}");
    assert_eq!(net.engine.flow_count(), 1, "no flow for the stranger");
    assert_eq!(state(&net, &live), TcpState::Established);
    still_works(&mut net, &live, 1);
    let stranger_tuple = Tuple {
        src: stranger,
        dst: vip,
    };
    assert_nothing_untranslated(&net, &[live.original, live.reply, stranger_tuple]);
}

#[test]
fn segments_for_no_flow_other_than_a_syn_are_invalid() {
    let (mut net, live) = live::<std::net::Ipv4Addr>();
    let stranger = SocketAddrV4::new(net::CLIENTS[1], 45000);
    // Mid-stream segments from a client the engine never saw: no loose pickup.
    for flags in [ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN | ACK] {
        let v = inject(&mut net, stranger.into(), vip().into(), flags, 7, 7);
        assert_eq!(
            v,
            Verdict::Drop(DropReason::NoFlowNotSyn),
            "flags {flags:#04x}"
        );
    }
    // A backend's segment to a SNAT port no flow holds (a flow lost in a
    // restart, say): INVALID too, since the address is tunlb's own.
    let unused = SocketAddrV4::new(*live.reply.dst.ip(), 50999);
    let v = inject(&mut net, live.reply.src, unused.into(), ACK, 7, 7);
    assert_eq!(v, Verdict::Drop(DropReason::NoFlowNotSyn));
    // Only an address that is neither a VIP nor a SNAT address is no service.
    let elsewhere = SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 0, 77), 80);
    let v = inject(&mut net, live.reply.src, elsewhere.into(), ACK, 7, 7);
    assert_eq!(v, Verdict::Drop(DropReason::NoService));
    let s = net.engine.stats();
    assert_eq!(s.dropped(DropReason::NoFlowNotSyn), 7, "{s}");
    assert_eq!(s.dropped(DropReason::NoService), 1, "{s}");
    assert_eq!(s.total_dropped(), 8, "{s}");
    still_works(&mut net, &live, 2);

    // A late ACK of a connection whose flow has expired is no better.
    net.close(live.id);
    net.finish(&[live.id], Duration::from_secs(5));
    let time_wait = Timeouts::default().get(TcpState::TimeWait);
    net.advance_to(net.now() + time_wait);
    assert_eq!(net.engine.flow_count(), 0);
    let (cseq, bseq) = next_seqs(&net, live.original, live.reply);
    let v = inject(&mut net, live.original.src, vip().into(), ACK, cseq, bseq);
    assert_eq!(v, Verdict::Drop(DropReason::NoFlowNotSyn));
    let v = inject(&mut net, live.reply.src, live.reply.dst, ACK, bseq, cseq);
    assert_eq!(v, Verdict::Drop(DropReason::NoFlowNotSyn));
    assert_nothing_untranslated(
        &net,
        &[
            live.original,
            live.reply,
            Tuple {
                src: stranger.into(),
                dst: vip().into(),
            },
        ],
    );
}

#[test]
fn an_ack_or_fin_from_the_client_in_syn_sent_is_invalid_and_changes_nothing() {
    let engine = Engine::new(net::config(Mode::Nth, &[1])).unwrap();
    let t0 = Timestamp::from_secs(1);
    let conn = cycle::open(&engine, t0, cycle::client(0), vip()).unwrap();
    let before = engine.flows_of::<std::net::Ipv4Addr>()[0].clone();
    let t1 = t0 + Duration::from_secs(30);
    for flags in [ACK, ACK | PSH, FIN | ACK] {
        let v = conn.orig(&engine, t1, flags, CLIENT_ISN + 1, SERVER_ISN + 1);
        assert_eq!(
            v,
            Verdict::Drop(DropReason::InvalidTransition),
            "flags {flags:#04x}"
        );
    }
    let after = engine.flows_of::<std::net::Ipv4Addr>()[0].clone();
    assert_eq!(after.state, TcpState::SynSent);
    assert_eq!(
        after.deadline(),
        before.deadline(),
        "an INVALID segment renews nothing"
    );
    assert_eq!(
        after.packets, before.packets,
        "nor is it counted in the flow"
    );
    assert_eq!(engine.stats().dropped(DropReason::InvalidTransition), 3);
    // The handshake still completes normally.
    conn.establish(&engine, t1);
    assert_eq!(
        engine.flows_of::<std::net::Ipv4Addr>()[0].state,
        TcpState::Established
    );
}

twins!(
    a_syn_from_the_backend_on_an_established_flow_is_invalid,
    a_syn_from_the_backend_on_an_established_flow_is_invalid_over_ipv6,
    backend_syn
);

fn backend_syn<A: Plan>() {
    let (mut net, live) = live::<A>();
    let (_, bseq) = live.next_seq;
    for seq in [bseq, bseq.wrapping_add(100_000), 0] {
        let v = inject(&mut net, live.reply.src, live.reply.dst, SYN, seq, 0);
        assert_eq!(v, Verdict::Drop(DropReason::InvalidTransition));
    }
    let s = net.engine.stats();
    assert_eq!(s.dropped(DropReason::InvalidTransition), 3, "{s}");
    assert_eq!(s.total_dropped(), 3, "{s}");
    assert_eq!(state(&net, &live), TcpState::Established);
    still_works(&mut net, &live, 3);
    assert_nothing_untranslated(&net, &[live.original, live.reply]);
}

twins!(
    an_out_of_window_rst_is_dropped_and_the_flow_stays_established,
    an_out_of_window_rst_is_dropped_and_the_flow_stays_established_over_ipv6,
    out_of_window_rst
);

/// A blind attacker knows the tuple but not the sequence numbers: its RST
/// lands far outside the receiver's window. Like Linux's `tcp_in_window`,
/// the engine calls it INVALID: dropped, the flow stays ESTABLISHED with its
/// long timeout, and the connection survives any idle time after it.
fn out_of_window_rst<A: Plan>() {
    let (mut net, live) = live::<A>();
    for dir in [Direction::Original, Direction::Reply] {
        let (v, out) = blind_rst(&mut net, &live, dir);
        assert_eq!(v, Verdict::Drop(DropReason::RstOutOfWindow), "{dir:?}");
        assert!(out.is_none());
    }
    assert_eq!(state(&net, &live), TcpState::Established);
    let s = net.engine.stats();
    assert_eq!(s.dropped(DropReason::RstOutOfWindow), 2, "{s}");
    assert_eq!(s.total_dropped(), 2, "{s}");
    // Idle far longer than CLOSE's 10 s: the entry is still there.
    net.run_for(Duration::from_secs(60));
    assert_eq!(state(&net, &live), TcpState::Established);
    still_works(&mut net, &live, 4);
    assert_eq!(net.stream(live.id).outcome, net::Outcome::Open);
    assert_nothing_untranslated(&net, &[live.original, live.reply]);
}

twins!(
    an_in_window_rst_is_forwarded_and_closes_the_flow,
    an_in_window_rst_is_forwarded_and_closes_the_flow_over_ipv6,
    in_window_rst
);

/// The window check is no stricter than the endpoints: an RST at exactly
/// the next sequence number is forwarded (translated), ends the backend's
/// end of the connection and moves the flow to CLOSE.
fn in_window_rst<A: Plan>() {
    let (mut net, live) = live::<A>();
    let (cseq, _) = next_seqs(&net, live.original, live.reply);
    let (v, out) = net.inject(craft::segment(
        live.original.src,
        live.original.dst,
        RST,
        cseq,
        0,
        &[],
    ));
    assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    let out = check::valid::<A>(&out.unwrap()).unwrap();
    assert_eq!(
        (out.src_sock(), out.dst_sock()),
        (A::ep(live.reply.dst), A::ep(live.reply.src)),
        "translated"
    );
    assert_eq!(state(&net, &live), TcpState::Close);
    net.pump();
    let server = net.accepted(0).last().expect("the backend end");
    assert_eq!(
        server.outcome,
        net::Outcome::Aborted,
        "the backend took the RST"
    );
    assert_nothing_untranslated(&net, &[live.original, live.reply]);
}

/// What a blind attacker sends: a RST for the connection's tuple in
/// direction `dir`, with a sequence number half the sequence space away
/// from the sender's next one.
fn blind_rst<A: Plan>(
    net: &mut Net<A>,
    live: &Live<A>,
    dir: Direction,
) -> (Verdict, Option<Vec<u8>>) {
    let (cseq, bseq) = next_seqs(net, live.original, live.reply);
    let (t, seq) = match dir {
        Direction::Original => (live.original, cseq),
        Direction::Reply => (live.reply, bseq),
    };
    net.inject(craft::segment(
        t.src,
        t.dst,
        RST,
        seq.wrapping_add(0x8000_0000),
        0,
        &[],
    ))
}

/// What a spoofed packet must leave alone: the state, both windows, the
/// deadline and the flow's counters (the whole flow, compared field by field).
fn flow_of<A: Plan>(net: &Net<A>, live: &Live<A>) -> Flow<A> {
    net.engine
        .flows_of::<A>()
        .into_iter()
        .find(|f| f.original == live.original)
        .expect("the flow exists")
}

fn same_flow<A: Plan>(a: &Flow<A>, b: &Flow<A>) -> bool {
    (
        a.state,
        a.deadline(),
        a.packets,
        a.bytes,
        a.window,
        a.seen_reply,
        a.assured,
    ) == (
        b.state,
        b.deadline(),
        b.packets,
        b.bytes,
        b.window,
        b.seen_reply,
        b.assured,
    )
}

/// After an attack: the flow is ESTABLISHED, survives 11 s of virtual idle
/// (CLOSE's timeout is 10 s), and the connection still carries data.
fn survives<A: Plan>(net: &mut Net<A>, live: &Live<A>, round: u64) {
    assert_eq!(state(net, live), TcpState::Established);
    net.run_for(Duration::from_secs(11));
    assert_eq!(state(net, live), TcpState::Established);
    still_works(net, live, round);
    assert_eq!(net.stream(live.id).outcome, net::Outcome::Open);
    assert_nothing_untranslated(net, &[live.original, live.reply]);
}

twins!(
    a_spoofed_syn_then_rst_cannot_end_a_flow,
    a_spoofed_syn_then_rst_cannot_end_a_flow_over_ipv6,
    spoofed_syn_then_rst
);

/// A spoofed SYN (any sequence number X) on an ESTABLISHED flow is ignored
/// by the state table: it must change nothing (before, it replaced the
/// client's window, and an RST at X+1 then closed the flow).
fn spoofed_syn_then_rst<A: Plan>() {
    let (mut net, live) = live::<A>();
    let before = flow_of(&net, &live);
    let x = 0x1234_5678u32;
    let v = inject(&mut net, live.original.src, live.original.dst, SYN, x, 0);
    assert_eq!(v, Verdict::Drop(DropReason::Ignored));
    assert!(
        same_flow(&flow_of(&net, &live), &before),
        "the SYN changed the flow"
    );
    let v = inject(
        &mut net,
        live.original.src,
        live.original.dst,
        RST,
        x.wrapping_add(1),
        0,
    );
    assert_eq!(v, Verdict::Drop(DropReason::RstOutOfWindow));
    assert!(
        same_flow(&flow_of(&net, &live), &before),
        "the RST changed the flow"
    );
    let s = net.engine.stats();
    assert_eq!(
        (
            s.dropped(DropReason::Ignored),
            s.dropped(DropReason::RstOutOfWindow)
        ),
        (1, 1),
        "{s}"
    );
    survives(&mut net, &live, 10);
}

twins!(
    a_spoofed_ack_then_rst_from_the_other_side_cannot_end_a_flow,
    a_spoofed_ack_then_rst_from_the_other_side_cannot_end_a_flow_over_ipv6,
    spoofed_ack_then_rst
);

/// A spoofed ACK acknowledging anything (V) must not teach the engine what
/// the client expects: an RST from the backend side at V is then refused.
fn spoofed_ack_then_rst<A: Plan>() {
    let (mut net, live) = live::<A>();
    let (cseq, _) = live.next_seq;
    let before = flow_of(&net, &live);
    let v_ack = 0x7654_3210u32;
    let v = inject(
        &mut net,
        live.original.src,
        live.original.dst,
        ACK,
        cseq,
        v_ack,
    );
    assert_eq!(v, Verdict::Drop(DropReason::OutOfWindow));
    assert!(
        same_flow(&flow_of(&net, &live), &before),
        "the ACK changed the flow"
    );
    let v = inject(&mut net, live.reply.src, live.reply.dst, RST, v_ack, 0);
    assert_eq!(v, Verdict::Drop(DropReason::RstOutOfWindow));
    assert!(
        same_flow(&flow_of(&net, &live), &before),
        "the RST changed the flow"
    );
    survives(&mut net, &live, 11);
}

twins!(
    a_far_out_of_window_ack_then_rst_cannot_end_a_flow,
    a_far_out_of_window_ack_then_rst_cannot_end_a_flow_over_ipv6,
    far_ack_then_rst
);

/// An ACK far beyond the window must not move the sender's end (which would
/// open the RST check to anything): dropped, then an RST just past it too.
fn far_ack_then_rst<A: Plan>() {
    let (mut net, live) = live::<A>();
    let (cseq, bseq) = live.next_seq;
    let before = flow_of(&net, &live);
    for far in [1u32 << 30, 3 << 29, 0x7fff_0000] {
        let seq = cseq.wrapping_add(far);
        let v = inject(
            &mut net,
            live.original.src,
            live.original.dst,
            ACK,
            seq,
            bseq,
        );
        assert!(
            matches!(v, Verdict::Drop(DropReason::OutOfWindow)),
            "seq +{far:#x}: {v:?}"
        );
        assert!(
            same_flow(&flow_of(&net, &live), &before),
            "the ACK changed the flow"
        );
        for rst_seq in [seq.wrapping_add(1), seq.wrapping_add(100)] {
            let v = inject(
                &mut net,
                live.original.src,
                live.original.dst,
                RST,
                rst_seq,
                0,
            );
            assert_eq!(v, Verdict::Drop(DropReason::RstOutOfWindow));
        }
        assert!(
            same_flow(&flow_of(&net, &live), &before),
            "the RST changed the flow"
        );
    }
    survives(&mut net, &live, 12);
}

twins!(
    an_inexact_in_window_rst_is_passed_and_keeps_the_flow,
    an_inexact_in_window_rst_is_passed_and_keeps_the_flow_over_ipv6,
    inexact_rst
);

/// An RST inside the window but not at the exact next sequence number, on
/// an ESTABLISHED flow, is passed (a Linux endpoint answers it with a
/// challenge ACK, RFC 5961) and the flow stays ESTABLISHED, unchanged, as in
/// Linux. (smoltcp accepts any in-window RST, so the endpoint's side of the
/// story is not checked here.)
fn inexact_rst<A: Plan>() {
    let (mut net, live) = live::<A>();
    let (cseq, _) = live.next_seq;
    let before = flow_of(&net, &live);
    let v = inject(
        &mut net,
        live.original.src,
        live.original.dst,
        RST,
        cseq.wrapping_add(10),
        0,
    );
    assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    let after = flow_of(&net, &live);
    assert!(same_flow(&after, &before), "the RST changed the flow");
    assert_eq!(after.state, TcpState::Established);
    assert_eq!(net.engine.stats().untracked, 1);
    assert_nothing_untranslated(&net, &[live.original, live.reply]);
}
