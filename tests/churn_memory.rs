//! Churn leaves no memory behind: after every round of short connections
//! has expired, the heap is back at the level the first round left.
//!
//! A binary of its own, because its counting `#[global_allocator]` sees every
//! allocation of the process: here the only thread doing work is this test's,
//! but libtest's main thread may allocate its output buffers once while the
//! test runs (seen once in a loaded full run: 900 bytes). Levels are therefore
//! equal up to [`HARNESS_SLACK`]; a leak per connection would be megabytes.
//!
//! What "baseline" means: the flow table's hash maps and slab keep the
//! capacity their busiest moment needed (hashbrown never shrinks on
//! removal, the slab keeps its chunks), and hashbrown grows a table once
//! more when deleted slots fill it up, which takes more than one round of
//! churn. So the
//! baseline is the level after [`WARM_UP`] rounds: the empty engine plus
//! capacity for the peak of concurrent flows. Every later round, with the
//! same peak, must end at that level: memory tracks the number of flows
//! alive at once, never the number of connections ever made.
//!
//! The flow table's hash keys are fixed here (`hash_seed`, set by the
//! harness's `net::config`): with per-process random keys, the round in which
//! hashbrown regrows a shard varied from run to run, and one run in seven
//! failed (a regrowth in round 2 of 4 instead of round 1). With fixed keys
//! every run grows at the same points, so the comparison measures what it
//! means to: whether memory follows connections made.
//!
//! `CHURN_ROUNDS` and `CHURN_PER_ROUND` (environment) scale it up, e.g.
//! `CHURN_ROUNDS=10 CHURN_PER_ROUND=100000 cargo test --release --test churn_memory -- --nocapture`
//! for a million connections.

use std::sync::atomic::Ordering::Relaxed;

use tunlb::select::Mode;
use tunlb::{Engine, Timestamp};

#[path = "memory/counting.rs"]
mod counting;
use counting::{env_or, live, reset_peak, HARNESS_SLACK, PEAK};

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

/// Rounds of churn that size the tables before the baseline is taken.
const WARM_UP: usize = 2;

#[test]
fn memory_returns_to_its_baseline_after_every_round_of_churn() {
    let rounds = env_or("CHURN_ROUNDS", 4);
    let per_round = env_or("CHURN_PER_ROUND", 25_000);
    assert!(
        rounds as usize > WARM_UP,
        "{WARM_UP} rounds set the baseline, the others are compared with it"
    );
    let cfg = || net::config(Mode::Nth, &[1, 1, 1, 1]);
    // Process-wide lazies (tracing's callsite registry) allocate once, on
    // first use: let a throwaway engine take them before anything is measured.
    let throwaway = Engine::new(cfg()).unwrap();
    cycle::drain(
        &throwaway,
        cycle::churn(&throwaway, net::vip(), 0, 10, 100, Timestamp::ZERO).end,
    );
    drop(throwaway);
    let mut levels = Vec::with_capacity(rounds as usize);
    let mut peaks = Vec::with_capacity(rounds as usize);
    let before_engine = live();
    let engine = Engine::new(cfg()).unwrap();
    let empty = live();

    let mut now = Timestamp::ZERO;
    let mut peak_flows = 0;
    for r in 0..rounds {
        reset_peak();
        let s = cycle::churn(&engine, net::vip(), r * per_round, per_round, 100, now);
        now = cycle::drain(&engine, s.end);
        assert_eq!(engine.flow_count(), 0);
        assert_eq!(engine.poll_timeout(), None);
        levels.push(live());
        peaks.push(PEAK.load(Relaxed));
        peak_flows = peak_flows.max(s.peak_flows);
    }
    let stats = engine.stats();
    assert_eq!(stats.new_flows, rounds * per_round);
    assert_eq!(stats.expired, rounds * per_round);
    assert!(stats.backends.iter().all(|b| b.active == 0));
    drop(stats);

    let baseline = levels[WARM_UP - 1];
    for (r, &level) in levels.iter().enumerate().skip(WARM_UP) {
        assert!(
            level.abs_diff(baseline) <= HARNESS_SLACK,
            "round {r} ended at {level} bytes, the baseline is {baseline}: memory grew with connections made"
        );
    }
    // The capacity kept is that of the busiest moment: bounded per flow.
    let kept = baseline - empty;
    assert!(
        kept < peak_flows * 1024,
        "{kept} bytes kept for a peak of {peak_flows} flows"
    );
    drop(engine);
    assert!(
        live().abs_diff(before_engine) <= HARNESS_SLACK,
        "dropping the engine frees everything: {} bytes live, {before_engine} before it",
        live()
    );
    let kib = |b: usize| b as f64 / 1024.0;
    let rel = |v: &[usize]| {
        v.iter()
            .map(|&l| kib(l - before_engine).round())
            .collect::<Vec<_>>()
    };
    println!(
        "churn memory: engine {:.1} KiB empty; {rounds} rounds of {per_round} connections \
         (peak {peak_flows} flows); after each round (KiB): {:?}; peaks (KiB): {:?}",
        kib(empty - before_engine),
        rel(&levels),
        rel(&peaks),
    );
}
