//! Churn: many short connections, one after another, leave nothing behind.
//!
//! Each connection is crafted ([`crate::cycle`]): SYN, SYN-ACK, ACK,
//! FIN/ACK both ways and the last ACK, every forwarded segment checked. They
//! start 100 per virtual second, so with Linux's 120 s TIME_WAIT about 12 000
//! flows are live at once. After the last one the clock jumps from expiry to
//! expiry: the table must end empty, with no expiry left pending, every
//! backend's active count back at 0 and every packet accounted for.
//!
//! The default suite runs 100 000 connections; the 1 000 000 one is
//! `#[ignore]`d and meant for a release build:
//! `cargo test --release --test hermetic -- --ignored churn --nocapture`.
//! Memory is measured in its own binary (`tests/churn_memory.rs`), since a
//! counting global allocator would count every test of this one.

use tunlb::conntrack::table::COMPACT_SLACK;
use tunlb::select::Mode;
use tunlb::{Engine, Timestamp, Verdict};

use crate::craft::flags::{ACK, FIN, RST, SYN};
use crate::cycle;
use crate::net::{self, vip};

/// New connections per virtual second.
const RATE: u64 = 100;

/// Churn `n` connections through a fresh engine over four nth-balanced
/// backends, drain it, and check the end state. Prints the figures.
fn churn_and_drain(n: u64) {
    let engine = Engine::new(net::config(Mode::Nth, &[1, 1, 1, 1])).unwrap();
    let stats = cycle::churn(&engine, vip(), 0, n, RATE, Timestamp::ZERO);
    assert_eq!(stats.connections, n);
    let peak = stats.peak_flows;
    // 120 s of TIME_WAIT at 100 connections per second, plus the one opening.
    assert!(
        (12_000..=12_101).contains(&peak),
        "peak {peak} flows: TIME_WAIT holds 120 s worth"
    );
    let emptied = cycle::drain(&engine, stats.end);
    assert_eq!(
        emptied,
        Timestamp::from_millis(stats.end.as_millis() + 120_000),
        "the last flow leaves exactly 120 s (TIME_WAIT) after its last ACK"
    );

    assert_eq!(engine.flow_count(), 0);
    assert!(engine.flows_of::<std::net::Ipv4Addr>().is_empty());
    assert_eq!(
        engine.poll_timeout(),
        None,
        "an empty table has no sweep due"
    );
    let s = engine.stats();
    assert_eq!(s.new_flows, n);
    assert_eq!(s.expired, n, "{s}");
    assert_eq!(s.evicted, 0, "{s}");
    assert_eq!(s.total_dropped(), 0, "{s}");
    assert_eq!(s.forwarded, [4 * n, 3 * n], "every segment counted once");
    for b in &s.backends {
        assert_eq!(b.active, 0, "{} still counts active flows", b.backend);
        // nth over four backends: exactly a quarter each.
        assert_eq!(b.connections, n / 4, "{}", b.backend);
        assert_eq!(b.packets, 7 * n / 4, "{}", b.backend);
    }
    let secs = stats.elapsed.as_secs_f64();
    println!(
        "churn: {n} connections ({} packets) in {secs:.2} s wall: {:.0} connections/s, {:.0} packets/s; \
         peak {peak} flows; virtual {} s; table empty at {} s",
        stats.packets,
        n as f64 / secs,
        stats.packets as f64 / secs,
        stats.end.as_millis() / 1000,
        emptied.as_millis() / 1000,
    );
}

#[test]
fn churn_of_100k_short_connections_ends_with_an_empty_table() {
    churn_and_drain(100_000);
}

#[test]
#[ignore = "1 M connections: run in release, `cargo test --release --test hermetic -- --ignored churn`"]
fn churn_of_1m_short_connections_ends_with_an_empty_table() {
    churn_and_drain(1_000_000);
}

/// Flows that outlive SYN_RECV's 60 s deadline move on to ESTABLISHED's 5
/// days; closed later, they expire when TIME_WAIT ends, not when a deadline
/// they had before says. (When the table kept an expiry-heap entry per
/// deadline, this test checked the stale 5-day entries were dropped.)
#[test]
fn long_lived_flows_expire_when_their_last_state_ends() {
    const N: u64 = 100_000;
    let engine = Engine::new(net::config(Mode::Nth, &[1, 1, 1, 1])).unwrap();
    let t0 = Timestamp::ZERO;
    let conns: Vec<_> = (0..N)
        .map(|i| cycle::handshake(&engine, t0, cycle::client(i), vip()))
        .collect();
    // Past SYN_RECV's deadline: a sweep finds every flow alive.
    let t1 = Timestamp::from_secs(61);
    while engine.handle_timeout(t1) {}
    assert_eq!(engine.flow_count(), N as usize);
    for c in &conns {
        c.close(&engine, t1);
    }
    let mut now = t1;
    while engine.flow_count() > 0 {
        now = now.max(engine.poll_timeout().expect("flows remain"));
        while engine.handle_timeout(now) {}
        let b = engine.bookkeeping();
        assert!(
            b.eviction_entries <= 2 * engine.flow_count() + COMPACT_SLACK,
            "{} eviction entries for {} flows",
            b.eviction_entries,
            engine.flow_count()
        );
    }
    assert_eq!(engine.poll_timeout(), None);
    assert_eq!(
        now,
        Timestamp::from_secs(61 + 120),
        "TIME_WAIT after the close"
    );
}

/// A client that answers the SYN-ACK with FIN|ACK never becomes ASSURED,
/// and it keeps talking: it stays at the front of the eviction queue. The
/// queue must still follow the live flows, whatever comes after it.
#[test]
fn a_never_assured_flow_does_not_pin_the_eviction_queue() {
    const N: u64 = 50_000;
    let engine = Engine::new(net::config(Mode::Nth, &[1, 1, 1, 1])).unwrap();
    let (c, s) = (cycle::CLIENT_ISN + 1, cycle::SERVER_ISN + 1);
    let pin = cycle::open(
        &engine,
        Timestamp::ZERO,
        cycle::client(u64::from(u32::MAX)),
        vip(),
    )
    .unwrap();
    assert!(matches!(
        pin.reply(&engine, Timestamp::ZERO, SYN | ACK, cycle::SERVER_ISN, c),
        Verdict::Forward { .. }
    ));
    assert!(matches!(
        pin.orig(&engine, Timestamp::ZERO, FIN | ACK, c, s),
        Verdict::Forward { .. }
    ));
    let mut most = 0;
    for k in 0..N {
        let now = Timestamp::from_millis(k * 10);
        if k % 1000 == 0 {
            // The pinning client keeps talking (a duplicate ACK).
            let v = pin.orig(&engine, now, ACK, c + 1, s);
            assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
            while engine.handle_timeout(now) {}
            let b = engine.bookkeeping();
            assert!(
                b.eviction_entries <= 2 * engine.flow_count() + COMPACT_SLACK,
                "{} eviction entries for {} flows",
                b.eviction_entries,
                engine.flow_count()
            );
            most = most.max(b.eviction_entries);
        }
        let conn = cycle::handshake(&engine, now, cycle::client(k), vip());
        conn.close(&engine, now);
    }
    let flows = engine.flows_of::<std::net::Ipv4Addr>();
    let pinned = flows.iter().find(|f| f.original.src == pin.client).unwrap();
    assert!(!pinned.assured, "the pinning flow is never assured");
    println!("eviction queue: at most {most} entries over {N} connections");
}

/// A client cycling SYN and RST on one tuple makes a new flow each time,
/// each with its entry in the eviction queue; the entries of the flows that
/// are gone must not survive because a later flow has the same tuple.
#[test]
fn syn_rst_cycles_on_one_tuple_do_not_grow_the_eviction_queue() {
    const CYCLES: u64 = 50_000;
    let engine = Engine::new(net::config(Mode::Nth, &[1, 1, 1, 1])).unwrap();
    let client = cycle::client(7);
    let mut most = 0;
    for k in 0..CYCLES {
        let now = Timestamp::from_millis(k);
        let conn = cycle::open(&engine, now, client, vip()).unwrap();
        // The client gives up at once: the entry dies (RST before any reply).
        let v = conn.orig(&engine, now, RST, cycle::CLIENT_ISN + 1, 0);
        assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
        // One more SYN stays open while the queue is looked at.
        if k % 1000 == 999 {
            let open = cycle::open(&engine, now, client, vip()).unwrap();
            while engine.handle_timeout(now) {}
            let b = engine.bookkeeping();
            assert!(
                b.eviction_entries <= 2 * engine.flow_count() + COMPACT_SLACK,
                "{} eviction entries for {} flows after {k} cycles",
                b.eviction_entries,
                engine.flow_count()
            );
            most = most.max(b.eviction_entries);
            let v = open.orig(&engine, now, RST, cycle::CLIENT_ISN + 1, 0);
            assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
        }
    }
    println!("SYN/RST cycles: at most {most} eviction entries over {CYCLES} cycles");
}
