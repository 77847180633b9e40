//! Several packet threads keep the guarantees of one: real threads share one
//! engine, as `--threads N` does, and race on the SYN path.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;

use tunlb::select::Mode;
use tunlb::{DropReason, Engine, Timestamp, Verdict};

use crate::craft::flags::SYN;
use crate::cycle::{self, client, CLIENT_ISN, LEN};
use crate::net::{self, vip};

/// Send client `i`'s SYN at time zero; return the verdict.
fn syn(engine: &Engine, i: u64) -> Verdict {
    let mut buf = [0u8; LEN];
    cycle::segment(&mut buf, client(i), vip(), SYN, CLIENT_ISN, 0);
    engine.handle_packet(&mut buf, Timestamp::ZERO)
}

/// Every thread sends the same SYNs, in its own order: each connection is
/// admitted once, the others are retransmissions of its SYN. nth stays exact
/// (a duplicate does not advance the selector), and no flow is evicted or
/// refused for a duplicate.
#[test]
fn duplicate_syns_raced_by_threads_are_admitted_once_and_nth_stays_exact() {
    const N: u64 = 8_000;
    const THREADS: u64 = 4;
    let engine = Engine::new(net::config(Mode::Nth, &[1, 1, 1, 1])).unwrap();
    let start = Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (engine, start) = (&engine, &start);
            s.spawn(move || {
                start.wait();
                for k in 0..N {
                    // Thread t walks the clients from its own offset.
                    let i = (k + t * N / THREADS) % N;
                    let v = syn(engine, i);
                    assert!(matches!(v, Verdict::Forward { .. }), "client {i}: {v:?}");
                }
            });
        }
    });
    let s = engine.stats();
    assert_eq!(s.new_flows, N, "{s}");
    assert_eq!(engine.flow_count(), N as usize);
    assert_eq!((s.evicted, s.total_dropped()), (0, 0), "{s}");
    for b in &s.backends {
        assert_eq!(b.connections, N / 4, "nth is exact: {s}");
    }
}

/// Threads hammer distinct SYNs at a full table: the table never holds more
/// than `max_flows`, and every SYN is either admitted (evicting one
/// unreplied flow) or refused, never both.
#[test]
fn threads_hammering_syns_never_exceed_the_table_limit() {
    const MAX: usize = 500;
    const PER_THREAD: u64 = 20_000;
    const THREADS: u64 = 4;
    let mut cfg = net::config(Mode::Nth, &[1, 1, 1, 1]);
    cfg.max_flows = MAX;
    let engine = Engine::new(cfg).unwrap();
    let most = AtomicUsize::new(0);
    let start = Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (engine, most, start) = (&engine, &most, &start);
            s.spawn(move || {
                start.wait();
                for k in 0..PER_THREAD {
                    let _ = syn(engine, t * PER_THREAD + k);
                    most.fetch_max(engine.flow_count(), Ordering::Relaxed);
                }
            });
        }
    });
    let s = engine.stats();
    let most = most.load(Ordering::Relaxed);
    assert!(
        most <= MAX,
        "the table held {most} flows, the limit is {MAX}"
    );
    assert_eq!(engine.flow_count(), MAX);
    // Every SYN was admitted or refused; every admission past the limit
    // evicted exactly one flow.
    let total = THREADS * PER_THREAD;
    assert_eq!(s.new_flows + s.dropped(DropReason::TableFull), total, "{s}");
    assert_eq!(s.new_flows - s.evicted, MAX as u64, "{s}");
    println!("threads at the limit: most {most} of {MAX}; {s}");
}
