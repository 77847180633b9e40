//! Engine microbenchmarks: the cost of tunlb's own work per packet, without
//! the kernel. Run with `cargo bench --bench engine` (no root).
//!
//! - `established/original` and `established/reply`: one ACK with 64 bytes of
//!   payload on a tracked flow (lookup, state machine, rewrite, checksums);
//! - `established_1M/...`: the same with 1 M flows in the table;
//! - `established_ipv6/...`: the same for a flow of an IPv6 service
//!   (40-byte header, 128-bit addresses in the pseudo-header);
//! - `new_connection`: a SYN for a new tuple (miss, selection, port
//!   allocation, two inserts), in a table growing from empty;
//! - `new_connection_steady`: the same in a table whose maps already have
//!   the room (its earlier flows expired), as in a balancer's steady state;
//! - `two_threads`: both directions of 2000 flows, each thread its own
//!   half (split by their ports' spread, as `--io packet`'s fanout splits
//!   them), on one pinned thread (`one_thread`) and on two sharing the table
//!   (`per_packet`): CPU time per packet per thread, so the ratio is what
//!   sharing costs a thread;
//! - before the criterion runs: bytes of heap per tracked flow (a counting
//!   allocator around 1 M inserts; and 450 k IPv6 flows) and the expiry
//!   cost per flow.
//!
//! Each iteration copies a 104-byte template into the buffer first (the
//! engine rewrites in place); that copy is part of every figure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use tunlb::conntrack::tcp::flags::{ACK, SYN};
use tunlb::conntrack::tuple::spread;
use tunlb::craft::Segment;
use tunlb::{Engine, EngineConfig, ServiceConfig, Timestamp, Verdict};

/// Counts live heap bytes, to measure memory per flow.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: defers every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: p was allocated by System with layout l.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80);

fn engine(max_flows: usize) -> Engine {
    let backends = (3..7).map(|i| SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, i), 80));
    Engine::new(EngineConfig {
        max_flows,
        ..EngineConfig::one(ServiceConfig {
            // About 64 k flows fit per (SNAT address, backend): a pool of 16
            // addresses lets 1 M flows through 4 backends.
            snat: (1..=16)
                .map(|i| Ipv4Addr::new(198, 18, 0, 100 + i).into())
                .collect(),
            ..ServiceConfig::new(VIP, backends)
        })
    })
    .expect("valid config")
}

/// The IPv6 service's VIP.
fn vip6() -> SocketAddrV6 {
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1), 80, 0, 0)
}

/// An engine with one IPv6 service (NAT66), as [`engine`] for IPv4.
fn engine6(max_flows: usize) -> Engine {
    let backends =
        (3..7).map(|i| SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, i), 80, 0, 0));
    Engine::new(EngineConfig {
        max_flows,
        ..EngineConfig::one(ServiceConfig {
            snat: (1..=16)
                .map(|i| Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 1, i).into())
                .collect(),
            ..ServiceConfig::new(vip6(), backends)
        })
    })
    .expect("valid config")
}

/// The i-th distinct IPv6 client endpoint (in 2001:2:0:64::/64).
fn client6(i: u32) -> SocketAddrV6 {
    let host = 1 + i / 60000;
    SocketAddrV6::new(
        Ipv6Addr::new(0x2001, 2, 0, 0x64, 0, 0, 0, host as u16),
        1024 + (i % 60000) as u16,
        0,
        0,
    )
}

/// [`open`] for an IPv6 flow of [`engine6`].
fn open6(e: &Engine, i: u32, now: Timestamp) -> (Vec<u8>, Vec<u8>) {
    let c = client6(i);
    let mut syn = Segment::between(c, vip6(), SYN).build();
    let (b, s) = match e.handle_packet(&mut syn, now) {
        Verdict::Forward { len } => {
            let ip = smoltcp::wire::Ipv6Packet::new_checked(&syn[..len]).unwrap();
            let t = smoltcp::wire::TcpPacket::new_checked(ip.payload()).unwrap();
            (
                SocketAddrV6::new(ip.dst_addr(), t.dst_port(), 0, 0),
                SocketAddrV6::new(ip.src_addr(), t.src_port(), 0, 0),
            )
        }
        v => panic!("SYN: {v:?}"),
    };
    let mut synack = Segment::between(b, s, SYN | ACK).build();
    assert!(matches!(
        e.handle_packet(&mut synack, now),
        Verdict::Forward { .. }
    ));
    let mut ack = Segment::between(c, vip6(), ACK).build();
    assert!(matches!(
        e.handle_packet(&mut ack, now),
        Verdict::Forward { .. }
    ));
    let payload = [0x5au8; 64];
    let orig = Segment {
        payload: &payload,
        ..Segment::between(c, vip6(), ACK)
    }
    .build();
    let reply = Segment {
        payload: &payload,
        ..Segment::between(b, s, ACK)
    }
    .build();
    (orig, reply)
}

/// The i-th distinct client endpoint (addresses in 198.18.64.0/18).
fn client(i: u32) -> SocketAddrV4 {
    let host = 1 + i / 60000;
    SocketAddrV4::new(
        Ipv4Addr::from_bits(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + host),
        1024 + (i % 60000) as u16,
    )
}

/// Open flow `i` (SYN, SYN-ACK, ACK) and return templates for a data
/// segment in each direction.
fn open(e: &Engine, i: u32, now: Timestamp) -> (Vec<u8>, Vec<u8>) {
    let c = client(i);
    let mut syn = Segment::new(c, VIP, SYN).build();
    let (b, s) = match e.handle_packet(&mut syn, now) {
        Verdict::Forward { len } => {
            let ip = smoltcp::wire::Ipv4Packet::new_checked(&syn[..len]).unwrap();
            let t = smoltcp::wire::TcpPacket::new_checked(ip.payload()).unwrap();
            (
                SocketAddrV4::new(ip.dst_addr(), t.dst_port()),
                SocketAddrV4::new(ip.src_addr(), t.src_port()),
            )
        }
        v => panic!("SYN: {v:?}"),
    };
    let mut synack = Segment::new(b, s, SYN | ACK).build();
    assert!(matches!(
        e.handle_packet(&mut synack, now),
        Verdict::Forward { .. }
    ));
    let mut ack = Segment::new(c, VIP, ACK).build();
    assert!(matches!(
        e.handle_packet(&mut ack, now),
        Verdict::Forward { .. }
    ));
    let payload = [0x5au8; 64];
    let orig = Segment {
        payload: &payload,
        ..Segment::new(c, VIP, ACK)
    }
    .build();
    let reply = Segment {
        payload: &payload,
        ..Segment::new(b, s, ACK)
    }
    .build();
    (orig, reply)
}

fn per_packet(e: &Engine, tpl: &[u8], buf: &mut [u8]) {
    per_packet_at(e, tpl, buf, Timestamp::from_secs(1));
}

fn per_packet_at(e: &Engine, tpl: &[u8], buf: &mut [u8], now: Timestamp) {
    buf[..tpl.len()].copy_from_slice(tpl);
    let v = e.handle_packet(&mut buf[..tpl.len()], now);
    debug_assert!(matches!(v, Verdict::Forward { .. }));
    let _ = black_box(v);
}

fn established(c: &mut Criterion) {
    let e = engine(2_000_000);
    let (orig, reply) = open(&e, 0, Timestamp::ZERO);
    let mut buf = vec![0u8; 2048];
    let mut g = c.benchmark_group("established");
    g.throughput(Throughput::Elements(1));
    g.bench_function("original", |b| b.iter(|| per_packet(&e, &orig, &mut buf)));
    g.bench_function("reply", |b| b.iter(|| per_packet(&e, &reply, &mut buf)));
    g.finish();

    // The same with 1 M flows tracked: the table's size should barely matter.
    for i in 1..1_000_000 {
        let mut syn = Segment::new(client(i), VIP, SYN).build();
        let _ = e.handle_packet(&mut syn, Timestamp::ZERO);
    }
    assert!(e.flow_count() >= 1_000_000);
    let mut g = c.benchmark_group("established_1M");
    g.throughput(Throughput::Elements(1));
    g.bench_function("original", |b| b.iter(|| per_packet(&e, &orig, &mut buf)));
    g.bench_function("reply", |b| b.iter(|| per_packet(&e, &reply, &mut buf)));
    g.finish();
}

fn established_ipv6(c: &mut Criterion) {
    let e = engine6(100_000);
    let (orig, reply) = open6(&e, 0, Timestamp::ZERO);
    let mut buf = vec![0u8; 2048];
    let mut g = c.benchmark_group("established_ipv6");
    g.throughput(Throughput::Elements(1));
    g.bench_function("original", |b| b.iter(|| per_packet(&e, &orig, &mut buf)));
    g.bench_function("reply", |b| b.iter(|| per_packet(&e, &reply, &mut buf)));
    g.finish();
}

/// `iters` NEW connections, in batches of at most 200 k SYNs, each batch
/// on a fresh engine; `steady`: the batch's flows were tracked once and
/// expired before the timed run (see [`new_connection_steady`]).
fn new_connections(syns: &[Vec<u8>], iters: u64, steady: bool) -> Duration {
    let mut buf = vec![0u8; 2048];
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let e = engine(1_000_000);
        let n = left.min(syns.len() as u64) as usize;
        let mut now = Timestamp::from_secs(1);
        if steady {
            for s in &syns[..n] {
                per_packet_at(&e, s, &mut buf, Timestamp::ZERO);
            }
            // SYN_SENT times out after 120 s.
            now = Timestamp::from_secs(1000);
            while e.flow_count() > 0 {
                e.handle_timeout(now);
            }
        }
        let t0 = Instant::now();
        for s in &syns[..n] {
            per_packet_at(&e, s, &mut buf, now);
        }
        total += t0.elapsed();
        left -= n as u64;
    }
    total
}

fn syns() -> Vec<Vec<u8>> {
    (0..200_000)
        .map(|i| Segment::new(client(i), VIP, SYN).build())
        .collect()
}

/// A NEW connection in a table growing from empty (it pays for the maps'
/// growth too).
fn new_connection(c: &mut Criterion) {
    let syns = syns();
    c.bench_function("new_connection", |b| {
        b.iter_custom(|iters| new_connections(&syns, iters, false))
    });
}

/// A NEW connection in a table in steady state (as many flows ending as
/// starting): the table first held as many flows, which expired, so its
/// maps have the room already, as a running balancer's have.
fn new_connection_steady(c: &mut Criterion) {
    let syns = syns();
    c.bench_function("new_connection_steady", |b| {
        b.iter_custom(|iters| new_connections(&syns, iters, true))
    });
}

/// Pin the calling thread to one CPU, so that the two threads of
/// `two_threads` run on two cores and neither migrates mid-measurement
/// (unpinned, the figure moved between 195 and 425 ns from run to run).
fn pin(cpu: usize) {
    // SAFETY: a zeroed `cpu_set_t` is a valid empty set; `CPU_SET` writes
    // inside it; `sched_setaffinity` only reads it, for this thread (0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU time this thread has used: unlike wall time, it does not grow when
/// another process (a build, the other benchmark thread's neighbour) takes
/// the core for a while, so the one- and two-thread figures compare.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `threads` pinned threads, each sending `iters` packets of its own half
/// of the flows (thread t: `halves[t]`, both directions in turn), as
/// fanout gives each thread its own flows: the mean of the threads' CPU
/// times, the cost of `iters` packets on one thread.
fn run_threads(
    e: &Engine,
    halves: &[Vec<(Vec<u8>, Vec<u8>)>; 2],
    threads: usize,
    iters: u64,
) -> Duration {
    let total: Duration = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let flows = &halves[t];
                s.spawn(move || {
                    pin(t);
                    let mut buf = vec![0u8; 2048];
                    let t0 = thread_cpu_time();
                    for k in 0..iters as usize {
                        let (o, r) = &flows[(k / 2) % flows.len()];
                        per_packet(e, if k % 2 == 0 { o } else { r }, &mut buf);
                    }
                    thread_cpu_time() - t0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total / threads as u32
}

/// The same work per thread on one thread and on two, side by side: the
/// ratio two/one is what sharing the table costs each thread. The flows
/// are split as `--io packet`'s fanout splits them (by
/// [`tunlb::conntrack::tuple::spread`] of their ports), and one thread
/// alone does the first thread's half.
fn two_threads(c: &mut Criterion) {
    let e = engine(100_000);
    let mut halves: [Vec<_>; 2] = Default::default();
    for i in 0..2000 {
        let port = client(i).port();
        halves[(spread(port, VIP.port()) % 2) as usize].push(open(&e, i, Timestamp::ZERO));
    }
    let mut g = c.benchmark_group("two_threads");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_thread", |b| {
        b.iter_custom(|iters| run_threads(&e, &halves, 1, iters))
    });
    g.bench_function("per_packet", |b| {
        b.iter_custom(|iters| run_threads(&e, &halves, 2, iters))
    });
    g.finish();
}

/// Heap bytes per flow at several table sizes (hash tables grow by
/// doubling, so the figure swings with how full they happen to be), then
/// the insertion rate and expiry cost at 1 M flows. Printed once.
fn report_memory_and_expiry() {
    const N: u32 = 1_000_000;
    let syns: Vec<Vec<u8>> = (0..N)
        .map(|i| Segment::new(client(i), VIP, SYN).build())
        .collect();
    let mut buf = vec![0u8; 128];
    for n in [200_000u32, 450_000, 900_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let e = engine(N as usize);
        for s in &syns[..n as usize] {
            per_packet(&e, s, &mut buf);
        }
        let bytes = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "memory: {n} flows: {:.0} bytes per flow",
            bytes as f64 / f64::from(n)
        );
    }
    {
        const N6: u32 = 450_000;
        let syns: Vec<Vec<u8>> = (0..N6)
            .map(|i| Segment::between(client6(i), vip6(), SYN).build())
            .collect();
        let before = LIVE.load(Ordering::Relaxed);
        let e = engine6(N6 as usize);
        for s in &syns {
            per_packet(&e, s, &mut buf);
        }
        let bytes = LIVE.load(Ordering::Relaxed) - before;
        assert_eq!(e.flow_count(), N6 as usize);
        println!(
            "memory: {N6} IPv6 flows: {:.0} bytes per flow",
            bytes as f64 / f64::from(N6)
        );
    }
    let before = LIVE.load(Ordering::Relaxed);
    let e = engine(N as usize);
    let t0 = Instant::now();
    for (i, s) in syns.iter().enumerate() {
        // The first a second earlier: due at 120 s, when the others are not.
        let at = Timestamp::from_secs(u64::from(i > 0));
        per_packet_at(&e, s, &mut buf, at);
    }
    let insert = t0.elapsed();
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(e.flow_count(), N as usize);
    println!(
        "memory: {N} flows take {:.1} MiB of heap: {:.0} bytes per flow (the flow, both tuples' index entries, its eviction-queue entry)",
        (after - before) as f64 / 1048576.0,
        (after - before) as f64 / f64::from(N)
    );
    println!(
        "insert: {N} NEW connections in {:.2?}: {:.0} flows/s",
        insert,
        f64::from(N) / insert.as_secs_f64()
    );
    // A sweep that finds one flow due and every other alive: what the
    // housekeeping thread pays per slot, at most once a second here.
    let t0 = Instant::now();
    while e.handle_timeout(Timestamp::from_secs(120)) {}
    let sweep = t0.elapsed();
    assert_eq!(e.flow_count(), N as usize - 1);
    println!(
        "sweep: {N} flows examined (one due) in {:.2?}: {:.1} ns per flow",
        sweep,
        sweep.as_nanos() as f64 / f64::from(N)
    );
    let t0 = Instant::now();
    let later = Timestamp::from_secs(121); // past SYN_SENT's 120 s
    while e.handle_timeout(later) {}
    let expire = t0.elapsed();
    assert_eq!(e.flow_count(), 0);
    println!(
        "expiry: {N} flows expired in {:.2?}: {:.0} ns per flow",
        expire,
        expire.as_nanos() as f64 / f64::from(N)
    );
}

criterion_group!(
    benches,
    established,
    established_ipv6,
    new_connection,
    new_connection_steady,
    two_threads
);

fn main() {
    // `cargo test --benches` runs this binary with --test (or a filter): skip
    // the one-off report there.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test") {
        report_memory_and_expiry();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
