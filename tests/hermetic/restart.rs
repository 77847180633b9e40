//! Restarts without loss: flows picked up mid-stream (`--pickup`) and flows
//! carried across a restart by the state file (`--state-file`).
//!
//! A restart is modelled by replacing the network's engine with a fresh one
//! between two instants of virtual time, the packets on the wire staying
//! where they are: exactly what a new process reading the same TUN sees.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use tunlb::conntrack::ports::HashKey;
use tunlb::conntrack::{TcpState, Tuple};
use tunlb::select::Mode;
use tunlb::{ConfigError, DropReason, Engine, EngineConfig, Timestamp, Verdict};

use crate::craft::flags::{ACK, FIN, PSH, RST, SYN};
use crate::cycle::{self, CLIENT_ISN, SERVER_ISN};
use crate::net::{self, pattern, vip, Close, Net, Outcome, Serve, StreamId};
use crate::wire::{Fate, Leg};

const KIB: usize = 1024;

/// Maglev over four backends, with pickup on and a shared hash key.
fn pickup_config() -> EngineConfig {
    EngineConfig {
        pickup: true,
        hash_key: Some(HashKey::from_secret("shared by the instances")),
        ..net::config(Mode::Maglev, &[1, 1, 1, 1])
    }
}

/// The backend end of client stream `id` (ports are preserved).
fn server_end(net: &Net, id: StreamId) -> Option<&net::Stream> {
    let port = net.stream(id).local.port();
    (0..4)
        .flat_map(|b| net.accepted(b))
        .find(|s| s.remote.port() == port)
}

/// An outage of the balancer: once the engine has forwarded `packets`
/// packets, the wire loses everything (the process is gone, and with it what
/// was in flight) until [`Outage::end`]. The network runs at one instant
/// until nothing moves, so this is how a test stops a transfer midway.
struct Outage(Rc<Cell<Phase>>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Counting(u64),
    Down,
    Over,
}

impl Outage {
    fn after(net: &mut Net, packets: u64) -> Outage {
        let phase = Rc::new(Cell::new(Phase::Counting(packets)));
        let p = phase.clone();
        net.wire.set_filter(move |leg, _| match p.get() {
            Phase::Counting(0) => {
                p.set(Phase::Down);
                Fate::Drop
            }
            Phase::Counting(n) => {
                if leg == Leg::Nat {
                    p.set(Phase::Counting(n - 1));
                }
                Fate::Pass
            }
            Phase::Down => Fate::Drop,
            Phase::Over => Fate::Pass,
        });
        Outage(phase)
    }

    /// Run until the outage begins.
    fn wait(&self, net: &mut Net) {
        let ok = net.run_until(Duration::from_secs(60), |_| self.0.get() == Phase::Down);
        assert!(ok, "the transfer ended before the outage");
    }

    fn end(&self) {
        self.0.set(Phase::Over);
    }
}

/// Assert both ends of `id` ended in order with every byte each way.
fn assert_complete(net: &Net, id: StreamId, download: usize) {
    let c = net.stream(id);
    assert_eq!(
        c.outcome,
        Outcome::Done,
        "{}",
        net.report("client end", &[id])
    );
    let s = server_end(net, id).expect("accepted");
    assert_eq!(
        s.outcome,
        Outcome::Done,
        "{}",
        net.report("backend end", &[id])
    );
    assert!(s.received == c.to_send(), "upload not byte-exact");
    let b = (0..4)
        .find(|&b| net.accepted(b).any(|x| std::ptr::eq(x, s)))
        .expect("a backend");
    assert!(
        c.received == Net::backend_pattern(b, download),
        "download not byte-exact ({} bytes)",
        c.received.len()
    );
}

#[test]
fn pickup_carries_an_upload_across_a_restart() {
    let cfg = pickup_config();
    let mut net = Net::new(cfg.clone());
    net.serve(Serve::Stream(16 * KIB));
    let id = net.connect(0, 40_000, pattern(1, 512 * KIB), Close::AfterSend);
    let outage = Outage::after(&mut net, 100);
    outage.wait(&mut net);
    assert!(server_end(&net, id).unwrap().received.len() < 512 * KIB);

    net.engine = Engine::new(cfg).unwrap();
    outage.end();
    net.finish(&[id], Duration::from_secs(120));
    net.run_for(Duration::from_secs(1));
    assert_complete(&net, id, 16 * KIB);
    let s = net.engine.stats();
    assert_eq!(s.picked_up, 1, "{s}");
    assert_eq!(s.pickup_remapped, 0, "the client's port was free: {s}");
    assert_eq!(s.new_flows, 0, "no SYN after the restart: {s}");
}

#[test]
fn without_pickup_or_state_a_restart_loses_the_flow() {
    let cfg = EngineConfig {
        pickup: false,
        ..pickup_config()
    };
    let mut net = Net::new(cfg.clone());
    net.serve(Serve::Stream(16 * KIB));
    let id = net.connect(0, 40_000, pattern(1, 512 * KIB), Close::AfterSend);
    let outage = Outage::after(&mut net, 100);
    outage.wait(&mut net);

    net.engine = Engine::new(cfg).unwrap();
    outage.end();
    net.run_for(Duration::from_secs(30));
    assert_ne!(net.stream(id).outcome, Outcome::Done);
    assert!(net.stream(id).received.is_empty());
    assert!(
        net.engine.stats().dropped(DropReason::NoFlowNotSyn) > 0,
        "the client's segments are INVALID to the new process"
    );
}

/// Save the engine's flows through the file format and restore them into a
/// fresh engine with `cfg`, as a restart with `--state-file` does.
fn restart_with_state(
    net: &mut Net,
    cfg: EngineConfig,
    exact: bool,
) -> tunlb::engine::RestoreReport {
    let saved = tunlb::state::Saved::now(net.engine.export_flows(net.now()), exact);
    let bytes = tunlb::state::encode(&saved);
    let back = tunlb::state::decode(&bytes, Path::new("mem")).unwrap();
    net.engine = Engine::new(cfg).unwrap();
    net.engine
        .restore_flows(&back.flows, net.now(), Duration::ZERO, back.exact)
}

#[test]
fn the_state_file_carries_a_silent_download_across_a_restart() {
    // Nth: nothing about the flow could be rebuilt from a packet.
    let cfg = net::config(Mode::Nth, &[1, 1, 1, 1]);
    let mut net = Net::new(cfg.clone());
    net.serve(Serve::Stream(1024 * KIB));
    let ids: Vec<_> = (0..3)
        .map(|i| net.connect(i, 41_000 + i as u16, b"GET\n".to_vec(), Close::AfterSend))
        .collect();
    let outage = Outage::after(&mut net, 200);
    outage.wait(&mut net);
    for &id in &ids {
        assert!(net.stream(id).received.len() < 1024 * KIB);
    }
    let report = restart_with_state(&mut net, cfg, true);
    outage.end();
    assert_eq!(report.restored, 3, "{report}");
    assert_eq!(report.dropped(), 0, "{report}");
    net.finish(&ids, Duration::from_secs(120));
    net.run_for(Duration::from_secs(1));
    for &id in &ids {
        assert_complete(&net, id, 1024 * KIB);
    }
    let s = net.engine.stats();
    assert_eq!(s.restored, 3, "{s}");
    assert_eq!(s.dropped(DropReason::NoFlowNotSyn), 0, "{s}");
    assert_eq!(s.dropped(DropReason::OutOfWindow), 0, "{s}");
}

#[test]
fn a_periodic_save_restores_flows_that_moved_on_since() {
    let cfg = net::config(Mode::Nth, &[1, 1, 1, 1]);
    let mut net = Net::new(cfg.clone());
    net.serve(Serve::Stream(1024 * KIB));
    let id = net.connect(0, 41_000, b"GET\n".to_vec(), Close::AfterSend);
    let outage = Outage::after(&mut net, 60);
    outage.wait(&mut net);
    // Saved here, as a periodic save would; then the download moves on
    // before the crash, so the saved windows are far behind.
    let saved = net.engine.export_flows(net.now());
    let outage = Outage::after(&mut net, 300);
    outage.wait(&mut net);
    assert!(net.stream(id).received.len() < 1024 * KIB);
    net.engine = Engine::new(cfg).unwrap();
    outage.end();
    let report = net
        .engine
        .restore_flows(&saved, net.now(), Duration::ZERO, false);
    assert_eq!(report.restored, 1, "{report}");
    net.finish(&[id], Duration::from_secs(120));
    net.run_for(Duration::from_secs(1));
    assert_complete(&net, id, 1024 * KIB);
    let s = net.engine.stats();
    assert_eq!(s.dropped(DropReason::OutOfWindow), 0, "{s}");
    // The flow's windows were learnt again: an RST far off is refused.
    let flows = net.engine.flows_of::<std::net::Ipv4Addr>();
    assert!(flows
        .iter()
        .all(|f| !f.window[0].liberal() && !f.window[1].liberal()));
}

#[test]
fn restored_flows_need_their_service_and_backend_and_time() {
    let cfg = net::config(Mode::Nth, &[1, 1]);
    let e = Engine::new(cfg.clone()).unwrap();
    let now = Timestamp::from_secs(1);
    for i in 0..4 {
        cycle::handshake(&e, now, cycle::client(i), vip());
    }
    let saved = e.export_flows(now);
    assert_eq!(saved.len(), 4);
    // Backend 2 is gone: its two flows (nth alternates) stay behind.
    let one = net::config(Mode::Nth, &[1]);
    let r = Engine::new(one.clone())
        .unwrap()
        .restore_flows(&saved, now, Duration::ZERO, true);
    assert_eq!((r.restored, r.no_backend), (2, 2), "{r}");
    // No service at that VIP at all.
    let mut other = one.clone();
    other.services[0].vip = "198.18.0.9:80".parse().unwrap();
    let r = Engine::new(other)
        .unwrap()
        .restore_flows(&saved, now, Duration::ZERO, true);
    assert_eq!((r.restored, r.no_service), (0, 4), "{r}");
    // Down longer than an established flow lives.
    let established = cfg.timeouts.get(TcpState::Established);
    let r = Engine::new(cfg.clone()).unwrap().restore_flows(
        &saved,
        now,
        established + Duration::from_secs(1),
        true,
    );
    assert_eq!((r.restored, r.expired), (0, 4), "{r}");
    // A table smaller than the file.
    let small = EngineConfig {
        max_flows: 3,
        ..cfg
    };
    let e2 = Engine::new(small).unwrap();
    let r = e2.restore_flows(&saved, now, Duration::ZERO, true);
    assert_eq!((r.restored, r.no_room), (3, 1), "{r}");
    // Restored flows keep their translation: the backend's reply goes
    // back to the client through the new engine.
    for f in e2.flows_of::<std::net::Ipv4Addr>() {
        let t = f.reply;
        let (v, out) = cycle::process(&e2, now, t.src, t.dst, ACK, SERVER_ISN + 1, CLIENT_ISN + 1);
        let want = Tuple {
            src: vip().into(),
            dst: f.original.src,
        };
        assert!(cycle::expect_translated(v, &out, want), "{v:?}");
    }
}

#[test]
fn pickup_needs_a_mode_that_is_a_function_of_the_tuple() {
    for mode in [Mode::Nth, Mode::Random, Mode::Wrr, Mode::LeastConn] {
        let cfg = EngineConfig {
            pickup: true,
            ..net::config(mode, &[1, 1])
        };
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::PickupNeedsHash(vip().into(), mode.name()))
        );
    }
    assert!(pickup_config().validate().is_ok());
}

#[test]
fn a_reply_with_no_entry_is_still_dropped() {
    let e = Engine::new(pickup_config()).unwrap();
    let b = net::backend(0);
    let snat = std::net::SocketAddrV4::new(net::VIP, 40_000);
    let (v, _) = cycle::process(&e, Timestamp::ZERO, b, snat, ACK, 1, 1);
    assert_eq!(v, Verdict::Drop(DropReason::NoFlowNotSyn));
    assert_eq!(e.flow_count(), 0);
}

#[test]
fn only_an_ack_is_picked_up() {
    let e = Engine::new(pickup_config()).unwrap();
    let c = cycle::client(1);
    for flags in [RST, RST | ACK, FIN | ACK, SYN | ACK] {
        let (v, _) = cycle::process(&e, Timestamp::ZERO, c, vip(), flags, 1, 1);
        assert!(matches!(v, Verdict::Drop(_)), "{flags:#x}: {v:?}");
    }
    let (v, _) = cycle::process(&e, Timestamp::ZERO, c, vip(), PSH | ACK, 1, 1);
    assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    assert_eq!(e.stats().picked_up, 1);
}

#[test]
fn instances_with_one_hash_key_translate_a_pickup_as_its_syn() {
    // Two instances with different seeds (different random choices) and the
    // same key, three SNAT addresses: the SYN on one and a pickup on the
    // other give the same backend, SNAT address and port.
    let base = |seed| {
        let mut cfg = pickup_config();
        cfg.seed = seed;
        cfg.services[0].snat = vec![
            "198.18.0.1".parse().unwrap(),
            "198.18.0.2".parse().unwrap(),
            "198.18.0.3".parse().unwrap(),
        ];
        cfg
    };
    let (a, b) = (Engine::new(base(1)).unwrap(), Engine::new(base(2)).unwrap());
    let now = Timestamp::ZERO;
    let mut used = std::collections::BTreeSet::new();
    // Distinct ports: no clash anywhere, so every port is preserved.
    let client = |i: u64| std::net::SocketAddrV4::new(*cycle::client(i).ip(), 20_000 + i as u16);
    for i in 0..200 {
        let c = client(i);
        let conn = cycle::open(&a, now, c, vip()).unwrap();
        let (v, out) = cycle::process(&b, now, c, vip(), ACK, CLIENT_ISN + 1, SERVER_ISN + 1);
        assert!(cycle::expect_translated(v, &out, conn.forwarded_original()));
        used.insert(*conn.reply.dst.ip());
    }
    assert_eq!(used.len(), 3, "clients spread over the whole pool");
    assert_eq!(b.stats().picked_up, 200);
    assert_eq!(b.stats().pickup_remapped, 0);

    // A clash on the picking instance: its translation differs and says so.
    let c = client(1000);
    let conn = cycle::open(&a, now, c, vip()).unwrap();
    // Another client takes c's preferred port on b first (same SNAT address
    // by construction: find one that hashes alike and has the same port).
    let key = HashKey::from_secret("shared by the instances");
    let thief = (1001..)
        .map(cycle::client)
        .find(|t| {
            key.pool_start(*t.ip(), 3) == key.pool_start(*c.ip(), 3)
                && cycle::open(&a, now, *t, vip()).is_ok_and(|x| x.backend() == conn.backend())
        })
        .unwrap();
    let stolen = std::net::SocketAddrV4::new(*thief.ip(), c.port());
    cycle::open(&b, now, stolen, vip()).unwrap();
    let (v, out) = cycle::process(&b, now, c, vip(), ACK, CLIENT_ISN + 1, SERVER_ISN + 1);
    assert!(matches!(v, Verdict::Forward { .. }));
    let got = cycle::checked_tuple(&out).unwrap();
    assert_eq!(
        got.dst,
        conn.backend(),
        "the backend is a function of the tuple"
    );
    assert_ne!(got, conn.forwarded_original(), "the port is not");
    assert_eq!(b.stats().pickup_remapped, 1);
}

#[test]
fn an_ack_flood_fills_the_table_no_faster_than_a_syn_flood() {
    let cfg = EngineConfig {
        max_flows: 100,
        ..pickup_config()
    };
    let e = Engine::new(cfg.clone()).unwrap();
    let mut now = Timestamp::from_secs(1);
    for i in 0..1000 {
        let _ = cycle::process(&e, now, cycle::client(i), vip(), ACK, 7, 7);
    }
    assert_eq!(e.flow_count(), 100, "the limit holds");
    assert_eq!(
        e.stats().picked_up,
        1000,
        "each evicted an older unanswered one"
    );
    // A real connection still gets in: unanswered pickups are evicted first.
    let conn = cycle::open(&e, now, cycle::client(5000), vip()).unwrap();
    conn.establish(&e, now);
    // Unanswered pickups live as long as an unanswered SYN, not 5 days.
    now = now + cfg.timeouts.get(TcpState::SynSent) + Duration::from_secs(1);
    while e.handle_timeout(now) {}
    assert_eq!(e.flow_count(), 1, "only the answered connection is left");
}
