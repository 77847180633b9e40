//! Long-lived flows give their memory back: the table's bookkeeping follows
//! the live flows, not the flows that ever lived.
//!
//! A flow that outlives SYN_RECV's 60 s deadline moves on to ESTABLISHED's
//! 5-day deadline, then closes. When the table kept an expiry-heap entry
//! per deadline, such a flow left a stale 5-day entry behind (before the
//! heap was compacted: at 1 000 such connections a second, tens of GB a
//! day); the table now keeps none (netfilter's sweep), and this test keeps
//! checking that nothing of a closed flow stays. A binary of its own for
//! its counting allocator (see `churn_memory.rs`); `LONG_LIVED_FLOWS`
//! (environment) sets the flows per round.

use tunlb::select::Mode;
use tunlb::{Engine, Timestamp};

#[allow(dead_code)]
#[path = "memory/counting.rs"]
mod counting;
use counting::{env_or, live, HARNESS_SLACK};

#[allow(dead_code)]
#[path = "hermetic/check.rs"]
mod check;
#[allow(dead_code, unused_imports)]
#[path = "hermetic/craft.rs"]
mod craft;
#[allow(dead_code)]
#[path = "hermetic/cycle.rs"]
mod cycle;
#[allow(dead_code)]
#[path = "hermetic/device.rs"]
mod device;
#[allow(dead_code)]
#[path = "hermetic/family.rs"]
mod family;
#[allow(dead_code)]
#[path = "hermetic/net.rs"]
mod net;
#[allow(dead_code)]
#[path = "hermetic/wire.rs"]
mod wire;

/// One round of long-lived flows: `n` connections open at `start`, live past
/// SYN_RECV's 60 s deadline (on to ESTABLISHED's 5 days), then close and
/// expire. Returns the time the table
/// emptied.
fn long_lived_round(engine: &Engine, first: u64, n: u64, start: Timestamp) -> Timestamp {
    let mut conns = Vec::with_capacity(n as usize);
    for i in 0..n {
        conns.push(cycle::handshake(
            engine,
            start,
            cycle::client(first + i),
            net::vip(),
        ));
    }
    let later = Timestamp::from_millis(start.as_millis() + 61_000);
    while engine.handle_timeout(later) {}
    for c in &conns {
        c.close(engine, later);
    }
    drop(conns);
    cycle::drain(engine, later)
}

/// Long-lived flows give back what they used: after 100 000 flows outlive
/// SYN_RECV's deadline, close and expire, nothing is due and the memory is
/// back at the level the same round left before (the hash maps keep their
/// capacity, the eviction queue's stale entries are gone).
#[test]
fn long_lived_flows_give_their_memory_back() {
    let n = env_or("LONG_LIVED_FLOWS", 100_000);
    let engine = Engine::new(net::config(Mode::Nth, &[1, 1, 1, 1])).unwrap();
    let empty = live();
    let mut now = long_lived_round(&engine, 0, n, Timestamp::ZERO);
    let baseline = live();
    let mut levels = Vec::new();
    for r in 1..3 {
        // The same clients every round: the same tuples land in the same
        // shards of the hash maps, whose capacity a round may grow and
        // keeps. New clients would make a shard's peak, and so the level
        // the maps keep, a matter of chance.
        now = long_lived_round(&engine, 0, n, now);
        assert_eq!(engine.flow_count(), 0);
        assert_eq!(
            engine.poll_timeout(),
            None,
            "round {r}: an empty table has work"
        );
        levels.push(live());
    }
    for (r, &level) in levels.iter().enumerate() {
        assert!(
            level.abs_diff(baseline) <= HARNESS_SLACK,
            "round {} ended at {level} bytes, the first at {baseline}: {n} closed flows left memory behind",
            r + 1
        );
    }
    println!(
        "long-lived memory: {n} flows per round; engine {:.1} KiB after the first round, {:?} KiB after the next",
        (baseline - empty) as f64 / 1024.0,
        levels.iter().map(|&l| ((l - empty) as f64 / 1024.0).round()).collect::<Vec<_>>()
    );
}
