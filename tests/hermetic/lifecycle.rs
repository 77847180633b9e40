//! Flow lifetimes: teardown states, timeouts on virtual time, SYN
//! retransmission, in either family (the `_over_ipv6` twins run the same
//! body on 2001:2::/48).

use std::time::Duration;

use tunlb::conntrack::{Flow, TcpState, Timeouts};
use tunlb::select::Mode;
use tunlb::{Engine, Timestamp, Verdict};

use crate::check;
use crate::craft::{self, flags};
use crate::family::Plan;
use crate::net::{self, backend_of, greeting, vip_of, Close, Net, Outcome, Serve};
use crate::wire::{Fate, Leg};

/// The single flow in the table.
fn only_flow<A: Plan>(net: &Net<A>) -> Flow<A> {
    let flows = net.engine.flows_of::<A>();
    assert_eq!(flows.len(), 1, "{}", net.report("expected one flow", &[]));
    flows[0].clone()
}

/// One millisecond before `t`.
fn just_before(t: Timestamp) -> Timestamp {
    Timestamp::from_millis(t.as_millis() - 1)
}

/// Jump from one `next_expiry()` to the next, expiring as the datapath
/// would, until the table is empty; return the time it emptied.
fn expire_until_empty<A: Plan>(net: &mut Net<A>) -> Timestamp {
    while net.engine.flow_count() > 0 {
        let next = net
            .engine
            .poll_timeout()
            .expect("a flow exists, so an expiry is due");
        net.advance_to(next.max(net.now()));
    }
    net.now()
}

twins!(
    fin_teardown_reaches_time_wait_then_expires_after_the_time_wait_timeout,
    fin_teardown_reaches_time_wait_then_expires_after_the_time_wait_timeout_over_ipv6,
    fin_teardown
);

fn fin_teardown<A: Plan>() {
    let mut net = Net::<A>::build(net::config_of::<A>(Mode::Nth, &[1, 1, 1, 1]));
    let id = net.connect(0, 40000, b"hello".to_vec(), Close::AfterSend);
    net.finish(&[id], Duration::from_secs(10));
    assert_eq!(net.stream(id).outcome, Outcome::Done);
    assert_eq!(net.stream(id).received, greeting(0));

    let flow = only_flow(&net);
    assert_eq!(flow.state, TcpState::TimeWait);
    assert!(flow.assured && flow.seen_reply);
    let time_wait = Timeouts::default().get(TcpState::TimeWait);
    assert_eq!(time_wait, Duration::from_secs(120));
    assert_eq!(
        flow.deadline(),
        Timestamp::from_millis(net.last_engine_packet) + time_wait
    );

    // One millisecond before the deadline it is still there...
    net.advance_to(just_before(flow.deadline()));
    assert_eq!(only_flow(&net).state, TcpState::TimeWait);
    // ...and it leaves exactly at the deadline.
    assert_eq!(expire_until_empty(&mut net), flow.deadline());
    let stats = net.engine.stats();
    assert_eq!(stats.expired, 1);
    assert_eq!(stats.total_dropped(), 0, "{stats}");
}

twins!(
    rst_teardown_reaches_close_then_expires_after_ten_seconds,
    rst_teardown_reaches_close_then_expires_after_ten_seconds_over_ipv6,
    rst_teardown
);

fn rst_teardown<A: Plan>() {
    let mut net = Net::<A>::build(net::config_of::<A>(Mode::Nth, &[1, 1, 1, 1]));
    net.serve(Serve::GreetThenWait);
    let id = net.connect(0, 40000, Vec::new(), Close::Manual);
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.stream(id).received
            == greeting(0))
    );
    assert_eq!(only_flow(&net).state, TcpState::Established);

    net.abort(id);
    net.pump();
    let backend_end = net.accepted(0).next().expect("backend accepted");
    assert_eq!(
        backend_end.outcome,
        Outcome::Aborted,
        "the RST reached the backend"
    );
    let flow = only_flow(&net);
    assert_eq!(flow.state, TcpState::Close);
    let close = Timeouts::default().get(TcpState::Close);
    assert_eq!(close, Duration::from_secs(10));
    assert_eq!(flow.deadline(), net.now() + close);

    net.advance_to(just_before(flow.deadline()));
    assert_eq!(only_flow(&net).state, TcpState::Close);
    assert_eq!(expire_until_empty(&mut net), flow.deadline());
    assert_eq!(net.engine.stats().expired, 1);
}

twins!(
    an_rst_before_any_reply_removes_the_flow_at_once,
    an_rst_before_any_reply_removes_the_flow_at_once_over_ipv6,
    rst_before_reply
);

/// A segment from `src` to `dst` with no payload.
fn seg<A: Plan>(src: A::Sock, dst: A::Sock, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    craft::segment(src, dst, flags, seq, ack, &[])
}

fn rst_before_reply<A: Plan>() {
    let engine = Engine::new(net::config_of::<A>(Mode::Nth, &[1, 1, 1, 1])).unwrap();
    let client = A::sock(A::CLIENTS[0], 40000);
    let vip = vip_of::<A>();
    let t = Timestamp::from_secs(1);
    let mut syn = seg::<A>(client, vip, flags::SYN, 1000, 0);
    assert!(matches!(
        engine.handle_packet(&mut syn, t),
        Verdict::Forward { .. }
    ));
    assert_eq!(engine.flow_count(), 1);

    // The client gives up before the backend answered.
    let mut rst = seg::<A>(client, vip, flags::RST, 1001, 0);
    let Verdict::Forward { len } = engine.handle_packet(&mut rst, t) else {
        panic!("the RST is forwarded so the backend forgets the half-open connection")
    };
    let out = check::valid::<A>(&rst[..len]).unwrap();
    assert_eq!(out.dst_sock(), backend_of::<A>(0));
    assert_eq!(engine.flow_count(), 0, "gone without waiting for a timeout");
    let stats = engine.stats();
    assert_eq!(stats.expired, 0);
    assert_eq!(stats.total_dropped(), 0);
}

twins!(
    a_retransmitted_syn_keeps_its_backend,
    a_retransmitted_syn_keeps_its_backend_over_ipv6,
    retransmitted_syn
);

fn retransmitted_syn<A: Plan>() {
    let mut net = Net::<A>::build(net::config_of::<A>(Mode::Nth, &[1, 1, 1, 1]));
    net.wire.capture();
    // Lose every SYN-ACK until the client has sent its SYN twice, so the
    // second SYN is a real retransmission (smoltcp waits one RTO, 1 s).
    let client_syns = std::rc::Rc::new(std::cell::Cell::new(0));
    let lost = std::rc::Rc::new(std::cell::Cell::new(0));
    let (syns, l) = (client_syns.clone(), lost.clone());
    net.wire.set_filter(move |leg, p| {
        let s = check::valid::<A>(p).unwrap();
        if leg == Leg::Host && s.is_syn() {
            syns.set(syns.get() + 1);
        }
        if leg == Leg::Host && s.is_syn_ack() && syns.get() < 2 {
            l.set(l.get() + 1);
            return Fate::Drop;
        }
        Fate::Pass
    });
    let id = net.connect(0, 40000, Vec::new(), Close::AfterSend);
    net.finish(&[id], Duration::from_secs(10));

    assert!(lost.get() >= 1, "a SYN-ACK was lost");
    assert!(client_syns.get() >= 2, "the client retransmitted its SYN");
    assert_eq!(net.stream(id).outcome, Outcome::Done);
    assert_eq!(
        net.stream(id).received,
        greeting(0),
        "answered by the first backend"
    );
    // nth would have sent a second flow to backend 1: there is none.
    let stats = net.engine.stats();
    assert_eq!(stats.new_flows, 1);
    let conns: Vec<u64> = stats.backends.iter().map(|b| b.connections).collect();
    assert_eq!(conns, [1, 0, 0, 0]);
    assert_eq!(net.engine.flow_count(), 1);
    // Every SYN went to the same backend.
    let to_backends: Vec<A::Sock> = net
        .wire
        .captured()
        .iter()
        .filter(|(leg, _)| *leg == Leg::Nat)
        .map(|(_, p)| check::valid::<A>(p).unwrap())
        .filter(|s| s.is_syn())
        .map(|s| s.dst_sock())
        .collect();
    assert_eq!(to_backends, vec![backend_of::<A>(0); client_syns.get()]);
}

twins!(
    retransmitted_syns_do_not_extend_the_syn_sent_timeout,
    retransmitted_syns_do_not_extend_the_syn_sent_timeout_over_ipv6,
    syn_sent_timeout
);

fn syn_sent_timeout<A: Plan>() {
    let engine = Engine::new(net::config_of::<A>(Mode::Nth, &[1, 1, 1, 1])).unwrap();
    let client = A::sock(A::CLIENTS[0], 40000);
    let vip = vip_of::<A>();
    let first = Timestamp::from_secs(5);
    let syn_sent = Timeouts::default().get(TcpState::SynSent);
    assert_eq!(syn_sent, Duration::from_secs(120));
    let deadline = first + syn_sent;

    // The first SYN and retransmissions at the usual exponential backoff,
    // the last one a second before the deadline: none gets an answer.
    for at in [0, 1, 3, 7, 15, 31, 63, 119] {
        let now = first + Duration::from_secs(at);
        let mut syn = seg::<A>(client, vip, flags::SYN, 1000, 0);
        let Verdict::Forward { len } = engine.handle_packet(&mut syn, now) else {
            panic!("SYN at +{at} s dropped")
        };
        assert_eq!(
            check::valid::<A>(&syn[..len]).unwrap().dst_sock(),
            backend_of::<A>(0)
        );
        let flows = engine.flows_of::<A>();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].state, TcpState::SynSent);
        assert_eq!(
            flows[0].deadline(),
            deadline,
            "SYN at +{at} s moved the deadline"
        );
        assert!(!engine.handle_timeout(now) && engine.flow_count() == 1);
    }
    assert_eq!(engine.stats().new_flows, 1);

    // 120 s after the FIRST SYN, not after the last, the entry is gone.
    while engine.handle_timeout(just_before(deadline)) {}
    assert_eq!(engine.flow_count(), 1);
    assert!(engine.poll_timeout().is_some_and(|t| t <= deadline));
    while engine.handle_timeout(deadline) {}
    assert_eq!(engine.flow_count(), 0);
    assert_eq!(engine.stats().expired, 1);

    // A later SYN is a new connection: nth moves on to the second backend.
    let mut syn = seg::<A>(client, vip, flags::SYN, 5000, 0);
    let Verdict::Forward { len } = engine.handle_packet(&mut syn, deadline) else {
        panic!()
    };
    assert_eq!(
        check::valid::<A>(&syn[..len]).unwrap().dst_sock(),
        backend_of::<A>(1)
    );
    assert_eq!(engine.stats().new_flows, 2);
}
