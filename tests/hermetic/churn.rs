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

use tunlb::select::Mode;
use tunlb::{Engine, Timestamp};

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
    assert!(engine.flows().is_empty());
    assert_eq!(
        engine.next_expiry(),
        None,
        "no stale expiry entry left behind"
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
