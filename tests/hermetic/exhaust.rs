//! SNAT port exhaustion, and how a pool of SNAT addresses raises the ceiling.
//!
//! MASQUERADE needs a unique REPLY tuple `backend:port -> snat:port`, so one
//! backend ip:port and one SNAT address hold as many flows as there are
//! ports to choose from: the client's own port when it is free (port
//! preservation) and the configured range otherwise, about 64 k with the
//! default range 1024-65535. Each address of the pool adds as many again.
//! Here the range is tiny and every client uses a port inside it, so the
//! ceiling is exactly `pool addresses x range size`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tunlb::conntrack::Tuple;
use tunlb::select::Mode;
use tunlb::{DropReason, Engine, EngineConfig, Timestamp, Verdict};

use crate::craft::flags::{ACK, RST};
use crate::cycle::{self, Conn, CLIENT_ISN, SERVER_ISN};
use crate::net::{self, greeting, pattern, vip, Close, Net, Serve, StreamId};
use crate::wire::Leg;

/// The SNAT pool the tests draw from.
const POOL: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 0, 11),
    Ipv4Addr::new(198, 18, 0, 12),
    Ipv4Addr::new(198, 18, 0, 13),
];

/// A configuration with one backend, MASQUERADE to the first `pool`
/// addresses of [`POOL`], searching `ports`.
fn config(pool: usize, ports: std::ops::RangeInclusive<u16>) -> EngineConfig {
    let mut cfg = net::config(Mode::Nth, &[1]);
    cfg.services[0].snat = POOL[..pool].iter().map(|&a| a.into()).collect();
    cfg.snat_ports = ports;
    cfg
}

/// Crafted client `i` with source port `port` (its address is unique to `i`).
fn client(i: u64, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(*cycle::client(i).ip(), port)
}

#[test]
fn each_snat_address_adds_the_whole_port_range_to_the_ceiling() {
    const RANGE: std::ops::RangeInclusive<u16> = 40000..=40007;
    for pool in 1..=POOL.len() {
        let engine = Engine::new(config(pool, RANGE)).unwrap();
        let t = Timestamp::from_secs(1);
        // Clients whose port lies in the range: preserved or not, each
        // takes one of the range's ports on one address.
        let mut conns = Vec::new();
        let mut i = 0;
        let refused = loop {
            match cycle::open(&engine, t, client(i, 40000), vip()) {
                Ok(c) => conns.push(c),
                Err(v) => break v,
            }
            i += 1;
        };
        assert_eq!(refused, Verdict::Drop(DropReason::PortsExhausted));
        let ceiling = pool * RANGE.len();
        assert_eq!(conns.len(), ceiling, "pool of {pool}");
        // Every (address, port) of the pool is used exactly once.
        let mut used: BTreeMap<Ipv4Addr, BTreeSet<u16>> = BTreeMap::new();
        for c in &conns {
            assert_eq!(c.backend(), net::backend(0));
            assert!(used
                .entry(*c.reply.dst.ip())
                .or_default()
                .insert(c.reply.dst.port()));
        }
        assert_eq!(used.keys().copied().collect::<Vec<_>>(), POOL[..pool]);
        assert!(used.values().all(|ports| ports.iter().copied().eq(RANGE)));
        // More SYNs are dropped and counted; nothing in the table changes.
        for k in 1..=10 {
            let v = cycle::open(&engine, t, client(i + k, 40001), vip()).unwrap_err();
            assert_eq!(v, Verdict::Drop(DropReason::PortsExhausted));
        }
        let s = engine.stats();
        assert_eq!(s.dropped(DropReason::PortsExhausted), 11, "{s}");
        assert_eq!(s.new_flows, ceiling as u64);
        assert_eq!(engine.flow_count(), ceiling);
    }
}

#[test]
fn ports_come_back_when_their_flows_expire() {
    let engine = Engine::new(config(2, 40000..=40001)).unwrap();
    let t0 = Timestamp::from_secs(1);
    let conns: Vec<Conn> = (0..4)
        .map(|i| cycle::handshake(&engine, t0, client(i, 40000), vip()))
        .collect();
    let late = client(99, 40001);
    assert_eq!(
        cycle::open(&engine, t0, late, vip()).unwrap_err(),
        Verdict::Drop(DropReason::PortsExhausted)
    );
    // One connection is reset (CLOSE, 10 s), one closes with FINs
    // (TIME_WAIT, 120 s); the other two stay established.
    let v = conns[0].orig(&engine, t0, RST | ACK, CLIENT_ISN + 1, SERVER_ISN + 1);
    assert!(matches!(v, Verdict::Forward { .. }));
    conns[1].close(&engine, t0);
    let at = |s: u64| t0 + Duration::from_secs(s);
    let retry = |t: Timestamp| {
        while engine.handle_timeout(t) {}
        cycle::open(&engine, t, late, vip())
    };
    assert_eq!(
        retry(at(9)).unwrap_err(),
        Verdict::Drop(DropReason::PortsExhausted)
    );
    // The reset flow's port comes back after 10 s, the closed one's after 120 s.
    let first = retry(at(10)).expect("the reset flow's port is free");
    assert_eq!(first.reply, conns[0].reply);
    let other = client(100, 40001);
    assert_eq!(
        cycle::open(&engine, at(119), other, vip()).unwrap_err(),
        Verdict::Drop(DropReason::PortsExhausted)
    );
    while engine.handle_timeout(at(120)) {}
    let second =
        cycle::open(&engine, at(120), other, vip()).expect("the closed flow's port is free");
    assert_eq!(second.reply, conns[1].reply);
    // The established two were never touched.
    for c in &conns[2..] {
        let v = c.orig(&engine, at(120), ACK, CLIENT_ISN + 1, SERVER_ISN + 1);
        assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
        let v = c.reply(&engine, at(120), ACK, SERVER_ISN + 1, CLIENT_ISN + 1);
        assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    }
    let s = engine.stats();
    assert_eq!(s.dropped(DropReason::PortsExhausted), 3, "{s}");
    assert_eq!(s.expired, 2, "{s}");
}

/// How many SYNs `from` sent that the wire delivered.
fn syns_from(net: &Net, from: SocketAddrV4) -> u64 {
    net.wire
        .captured()
        .iter()
        .filter(|(leg, p)| {
            let s = crate::check::valid_packet(p).unwrap();
            *leg == Leg::Host && s.src_sock() == from && s.is_syn()
        })
        .count() as u64
}

#[test]
fn a_pool_of_two_holds_twice_the_flows_and_exhaustion_breaks_nothing_established() {
    // Every client port lies in the range, so the ceiling is 2 addresses x
    // 2 ports = 4 flows; one address would hold 2.
    let mut net = Net::new(config(2, 40000..=40001));
    net.serve(Serve::GreetThenWait);
    net.wire.capture();
    let ids: Vec<StreamId> = (0..4)
        .map(|c| net.connect(c, 40000, Vec::new(), Close::Manual))
        .collect();
    let ok = net.run_until(Duration::from_secs(5), |n| {
        ids.iter().all(|&id| n.stream(id).received == greeting(0))
    });
    assert!(ok, "{}", net.report("four clients on a pool of two", &ids));
    let snat: BTreeSet<(Ipv4Addr, u16)> = net
        .engine
        .flows_of::<std::net::Ipv4Addr>()
        .iter()
        .map(|f| (*f.reply.dst.ip(), f.reply.dst.port()))
        .collect();
    let want: BTreeSet<(Ipv4Addr, u16)> = POOL[..2]
        .iter()
        .flat_map(|&a| [(a, 40000), (a, 40001)])
        .collect();
    assert_eq!(snat, want, "every address and port of the pool in use");

    // A fifth client is refused: its SYNs are dropped and counted.
    let late = net.connect(0, 40001, Vec::new(), Close::Manual);
    net.run_for(Duration::from_secs(4));
    let refused = syns_from(&net, net.stream(late).local);
    assert!(refused >= 2, "the client retransmitted: {refused}");
    assert_eq!(
        net.engine.stats().dropped(DropReason::PortsExhausted),
        refused
    );
    assert!(!net.stream(late).established);

    // The four established connections carry data both ways meanwhile.
    let mut ends = Vec::new();
    for (k, &id) in ids.iter().enumerate() {
        let server = net.server_end(id).expect("a backend end");
        let (up, down) = (pattern(k as u64, 3000), pattern(10 + k as u64, 5000));
        net.send(id, &up);
        net.send(server, &down);
        ends.push((id, server, up, down));
    }
    let ok = net.run_until(Duration::from_secs(5), |n| {
        ends.iter().all(|(id, server, up, down)| {
            n.stream(*id).received.len() == 3 + down.len()
                && n.stream(*server).received.len() == up.len()
        })
    });
    assert!(ok, "{}", net.report("data during exhaustion", &ids));
    for (id, server, up, down) in &ends {
        assert_eq!(net.stream(*id).received[3..], down[..]);
        assert_eq!(net.stream(*server).received[..], up[..]);
    }

    // One connection closes; once its flow leaves TIME_WAIT, the late
    // client's next retransmitted SYN takes its address and port.
    let freed = net
        .engine
        .flows_of::<std::net::Ipv4Addr>()
        .into_iter()
        .find(|f| f.original.src == net.stream(ids[1]).local)
        .unwrap()
        .reply;
    net.close(ids[1]);
    net.finish(&[ids[1]], Duration::from_secs(5));
    assert!(
        net.run_until(Duration::from_secs(300), |n| n.stream(late).received
            == greeting(0))
    );
    let flows = net.engine.flows_of::<std::net::Ipv4Addr>();
    let got: Tuple = flows
        .iter()
        .find(|f| f.original.src == net.stream(late).local)
        .unwrap()
        .reply;
    assert_eq!(
        got, freed,
        "the late client reuses the freed address and port"
    );
    let s = net.engine.stats();
    let all = syns_from(&net, net.stream(late).local);
    assert_eq!(s.dropped(DropReason::PortsExhausted), all - 1, "{s}");
    assert_eq!(s.total_dropped(), all - 1, "nothing else was dropped: {s}");
    for &id in [ids[0], ids[2], ids[3]].iter() {
        assert!(net.stream(id).established);
        assert_eq!(net.stream(id).outcome, net::Outcome::Open);
    }
}

#[test]
#[ignore = "fills 64 k ports: run in release, `cargo test --release --test hermetic -- --ignored ceiling`"]
fn the_ceiling_of_one_snat_address_and_one_backend_is_about_64k() {
    let engine = Engine::new(config(1, 1024..=65535)).unwrap();
    let t = Timestamp::from_secs(1);
    let tries = 70_000;
    let mut first_refusal = None;
    for i in 0..tries {
        // Distinct clients, every port within the range (1024 and 1025).
        match cycle::open(&engine, t, cycle::client(i), vip()) {
            Ok(_) => {}
            Err(v) => {
                assert_eq!(v, Verdict::Drop(DropReason::PortsExhausted));
                first_refusal.get_or_insert(engine.flow_count());
            }
        }
    }
    let admitted = engine.stats().new_flows;
    assert_eq!(engine.flow_count() as u64, admitted);
    let refused = engine.stats().dropped(DropReason::PortsExhausted);
    assert_eq!(admitted + refused, tries);
    let range = 65535 - 1024 + 1;
    println!(
        "ceiling: {admitted} flows on one SNAT address to one backend after {tries} SYNs \
         (range of {range} ports); first refusal at {first_refusal:?} flows"
    );
    // Every port is used in the end...
    assert_eq!(admitted, range);
    // ...but the search from a random offset gives up after MAX_TRIES
    // (2048) taken ports, so refusals begin before the range is full: at
    // about 95 % here (the kernel's search is bounded too).
    let first = first_refusal.expect("the range filled up");
    assert!(first as u64 >= range * 90 / 100, "refused at {first} flows");
}
