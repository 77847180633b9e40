//! Running out: a full flow table, exhausted SNAT ports, no backend at all.

use std::net::SocketAddrV4;
use std::time::Duration;

use tunlb::conntrack::{TcpState, Tuple};
use tunlb::select::Mode;
use tunlb::{DropReason, Engine, Timestamp, Verdict};

use crate::check;
use crate::craft::{self, flags};
use crate::net::{self, greeting, vip, Close, Net, Outcome, Serve, StreamId, CLIENTS};
use crate::wire::Leg;

/// How many SYNs `from` sent that the wire delivered (to the engine).
fn syns_from(net: &Net, from: SocketAddrV4) -> u64 {
    net.wire
        .captured()
        .iter()
        .filter(|(leg, p)| {
            let s = check::valid_packet(p).unwrap();
            *leg == Leg::Host && s.src_sock() == from && s.is_syn()
        })
        .count() as u64
}

/// Whether client stream `id` has read a backend's whole greeting ("bN\n").
fn greeted(net: &Net, id: StreamId) -> bool {
    net.stream(id).received.ends_with(b"\n")
}

/// The ORIGINAL tuples in the table, sorted.
fn originals(engine: &Engine) -> Vec<Tuple> {
    let mut v: Vec<Tuple> = engine
        .flows_of::<std::net::Ipv4Addr>()
        .into_iter()
        .map(|f| f.original)
        .collect();
    v.sort();
    v
}

fn original(client: usize, port: u16) -> Tuple {
    Tuple {
        src: SocketAddrV4::new(CLIENTS[client], port).into(),
        dst: vip().into(),
    }
}

#[test]
fn a_full_table_evicts_unreplied_syns_but_never_assured_flows() {
    let mut cfg = net::config(Mode::Nth, &[1, 1, 1, 1]);
    cfg.max_flows = 4;
    let mut net = Net::new(cfg);
    net.serve(Serve::GreetThenWait);
    net.wire.capture();

    // Two real, established connections: ASSURED.
    let a = net.connect(0, 30001, Vec::new(), Close::Manual);
    let b = net.connect(0, 30002, Vec::new(), Close::Manual);
    assert!(net.run_until(Duration::from_secs(5), |n| greeted(n, a) && greeted(n, b)));
    // Two SYNs whose answers never come: the forwarded SYNs are lost.
    for port in [31001, 31002] {
        let mut syn = craft::tcp(SocketAddrV4::new(CLIENTS[1], port), vip(), flags::SYN, 1, 0);
        assert!(matches!(
            net.engine.handle_packet(&mut syn, net.now()),
            Verdict::Forward { .. }
        ));
    }
    assert_eq!(net.engine.flow_count(), 4, "the table is full");

    // Each new connection takes the place of an unreplied SYN.
    let c = net.connect(0, 30003, Vec::new(), Close::Manual);
    assert!(net.run_until(Duration::from_secs(5), |n| greeted(n, c)));
    assert_eq!(net.engine.stats().evicted, 1);
    let d = net.connect(0, 30004, Vec::new(), Close::Manual);
    assert!(net.run_until(Duration::from_secs(5), |n| greeted(n, d)));
    assert_eq!(net.engine.stats().evicted, 2);
    let mut want: Vec<Tuple> = (30001..=30004).map(|p| original(0, p)).collect();
    want.sort();
    assert_eq!(
        originals(&net.engine),
        want,
        "the unreplied SYNs went, the assured flows stayed"
    );
    assert!(net
        .engine
        .flows_of::<std::net::Ipv4Addr>()
        .iter()
        .all(|f| f.assured));

    // A table full of ASSURED flows admits nobody: the SYN is dropped (and
    // retransmitted by the client), nothing is evicted.
    let e = net.connect(0, 30005, Vec::new(), Close::Manual);
    net.run_for(Duration::from_secs(4));
    let refused = syns_from(&net, SocketAddrV4::new(CLIENTS[0], 30005));
    assert!(refused >= 2, "the client retransmitted: {refused}");
    let stats = net.engine.stats();
    assert_eq!(stats.dropped(DropReason::TableFull), refused, "{stats}");
    assert_eq!(stats.evicted, 2);
    assert_eq!(originals(&net.engine), want);
    assert!(!net.stream(e).established);
    for f in net.engine.flows_of::<std::net::Ipv4Addr>() {
        assert_eq!(f.state, TcpState::Established);
    }

    // Once a connection closes, its closing flow is the next victim and the
    // waiting client gets in on its next retransmission.
    net.close(a);
    assert!(net.run_until(Duration::from_secs(60), |n| greeted(n, e)));
    assert_eq!(net.stream(a).outcome, Outcome::Done);
    let stats = net.engine.stats();
    assert_eq!(stats.evicted, 3);
    let all_syns = syns_from(&net, SocketAddrV4::new(CLIENTS[0], 30005));
    assert_eq!(stats.dropped(DropReason::TableFull), all_syns - 1);
    let mut want: Vec<Tuple> = (30002..=30005).map(|p| original(0, p)).collect();
    want.sort();
    assert_eq!(originals(&net.engine), want);
    assert_eq!(net.engine.flow_count(), 4);
}

/// Complete a handshake by hand for `client_port` from client 0 at `now`;
/// returns the flow's reply tuple.
fn handshake(engine: &Engine, port: u16, now: Timestamp) -> Tuple {
    let client = SocketAddrV4::new(CLIENTS[0], port);
    let mut syn = craft::tcp(client, vip(), flags::SYN, 1000, 0);
    assert!(matches!(
        engine.handle_packet(&mut syn, now),
        Verdict::Forward { .. }
    ));
    let reply = engine
        .flows_of::<std::net::Ipv4Addr>()
        .into_iter()
        .find(|f| f.original.src == client)
        .unwrap()
        .reply;
    let mut syn_ack = craft::tcp(reply.src, reply.dst, flags::SYN | flags::ACK, 5000, 1001);
    assert!(matches!(
        engine.handle_packet(&mut syn_ack, now),
        Verdict::Forward { .. }
    ));
    let mut ack = craft::tcp(client, vip(), flags::ACK, 1001, 5001);
    assert!(matches!(
        engine.handle_packet(&mut ack, now),
        Verdict::Forward { .. }
    ));
    reply
}

#[test]
fn eviction_finds_an_unreplied_syn_behind_many_assured_flows() {
    let mut cfg = net::config(Mode::Nth, &[1, 1, 1, 1]);
    cfg.max_flows = 12;
    let engine = Engine::new(cfg).unwrap();
    let t0 = Timestamp::from_secs(1);
    for port in 0..10 {
        handshake(&engine, 30000 + port, t0);
    }
    assert!(engine
        .flows_of::<std::net::Ipv4Addr>()
        .iter()
        .all(|f| f.assured));
    let t1 = Timestamp::from_secs(2);
    for port in [31001, 31002] {
        let mut syn = craft::tcp(SocketAddrV4::new(CLIENTS[1], port), vip(), flags::SYN, 1, 0);
        assert!(matches!(
            engine.handle_packet(&mut syn, t1),
            Verdict::Forward { .. }
        ));
    }
    assert_eq!(engine.flow_count(), 12);

    let mut syn = craft::tcp(
        SocketAddrV4::new(CLIENTS[2], 32000),
        vip(),
        flags::SYN,
        1,
        0,
    );
    let v = engine.handle_packet(&mut syn, Timestamp::from_secs(3));
    assert!(
        matches!(v, Verdict::Forward { .. }),
        "{v:?}: {}",
        engine.stats()
    );
    assert_eq!(engine.stats().evicted, 1);
    assert_eq!(
        engine
            .flows_of::<std::net::Ipv4Addr>()
            .iter()
            .filter(|f| f.assured)
            .count(),
        10
    );
}

#[test]
fn port_exhaustion_drops_extra_syns_until_expiry_returns_the_ports() {
    let mut cfg = net::config(Mode::Nth, &[1]);
    cfg.snat_ports = 49999..=50001;
    let mut net = Net::new(cfg);
    net.serve(Serve::GreetThenWait);
    net.wire.capture();

    // Three clients, one source port, one backend: the first keeps its
    // port (it lies in the range), the next two take the two others.
    let ids: Vec<StreamId> = (0..3)
        .map(|c| net.connect(c, 50000, Vec::new(), Close::Manual))
        .collect();
    assert!(net.run_until(Duration::from_secs(5), |n| ids
        .iter()
        .all(|&i| greeted(n, i))));
    let mut ports: Vec<u16> = net
        .engine
        .flows_of::<std::net::Ipv4Addr>()
        .iter()
        .map(|f| f.reply.dst.port())
        .collect();
    ports.sort();
    assert_eq!(ports, [49999, 50000, 50001]);

    // The fourth finds no free reply tuple: its SYNs are dropped.
    let late = net.connect(3, 50000, Vec::new(), Close::Manual);
    net.run_for(Duration::from_secs(4));
    let refused = syns_from(&net, SocketAddrV4::new(CLIENTS[3], 50000));
    assert!(refused >= 2, "the client retransmitted: {refused}");
    let stats = net.engine.stats();
    assert_eq!(
        stats.dropped(DropReason::PortsExhausted),
        refused,
        "{stats}"
    );
    assert_eq!(net.engine.flow_count(), 3);
    assert!(!net.stream(late).established);

    // The established connections are unaffected: they close in order...
    for &id in &ids {
        net.close(id);
    }
    net.finish(&ids, Duration::from_secs(5));
    for &id in &ids {
        assert_eq!(net.stream(id).outcome, Outcome::Done);
        assert_eq!(net.stream(id).received, greeting(0));
    }
    // ...and hold their ports through TIME_WAIT; once those flows expire
    // the late client's next retransmitted SYN gets a port and connects.
    assert!(net.run_until(Duration::from_secs(400), |n| greeted(n, late)));
    let stats = net.engine.stats();
    assert!(stats.expired >= 3, "{stats}");
    let all_syns = syns_from(&net, SocketAddrV4::new(CLIENTS[3], 50000));
    assert_eq!(stats.dropped(DropReason::PortsExhausted), all_syns - 1);
    let flows = net.engine.flows_of::<std::net::Ipv4Addr>();
    let f = flows
        .iter()
        .find(|f| f.original.src.ip() == &CLIENTS[3])
        .unwrap();
    assert_eq!(f.reply.src, net::backend(0));
    assert!(f.assured);
}

#[test]
fn with_every_backend_drained_a_syn_is_answered_with_a_reset() {
    let engine = Engine::new(net::config(Mode::Nth, &[0, 0, 0, 0])).unwrap();
    let client = SocketAddrV4::new(CLIENTS[0], 40000);
    let mut syn = craft::tcp(client, vip(), flags::SYN, 1000, 0);
    let Verdict::Respond { len } = engine.handle_packet(&mut syn, Timestamp::ZERO) else {
        panic!("no RST")
    };
    let rst = check::valid_packet(&syn[..len]).expect("a valid RST");
    assert_eq!(rst.src_sock(), vip());
    assert_eq!(rst.dst_sock(), client);
    let t = rst.tcp.unwrap();
    assert_eq!(t.flags, flags::RST | flags::ACK);
    assert_eq!((t.seq, t.ack), (0, 1001), "RFC 793: seq 0, ACK of the SYN");
    let stats = engine.stats();
    assert_eq!(stats.dropped(DropReason::NoBackend), 1);
    assert_eq!(stats.resets_sent, 1);
    assert_eq!(stats.new_flows, 0);
    assert_eq!(engine.flow_count(), 0);
}

#[test]
fn with_every_backend_drained_a_client_connect_fails_at_once() {
    let mut net = Net::new(net::config(Mode::Random, &[0, 0, 0, 0]));
    net.wire.capture();
    let id = net.connect(0, 40000, Vec::new(), Close::AfterSend);
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.stream(id).outcome
            != Outcome::Open)
    );
    let c = net.stream(id);
    assert_eq!(c.outcome, Outcome::Aborted);
    assert!(!c.established);
    // Refused by the first SYN, before any retransmission (RTO 1 s).
    assert!(c.ended_at.unwrap() - c.opened_at < 1000);
    assert_eq!(syns_from(&net, c.local), 1);
    let stats = net.engine.stats();
    assert_eq!(stats.dropped(DropReason::NoBackend), 1);
    assert_eq!(stats.resets_sent, 1);
    assert_eq!(net.engine.flow_count(), 0);
    assert_eq!(net.accepted(0).count(), 0, "no backend saw anything");
}
