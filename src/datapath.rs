//! The shell around the engine: packet threads, the clock, the expiry tick.
//!
//! Each packet thread runs the same short loop, like quinn's
//! `ConnectionDriver`: receive one packet into a buffer it owns, hand it to
//! [`Engine::handle_packet`] with the current time, write back what the verdict
//! says. Buffers are reused; nothing is allocated or logged above debug level
//! per packet. The calling thread does the housekeeping: it calls
//! [`Engine::handle_timeout`] when [`Engine::poll_timeout`] comes due, prints the
//! periodic summary, and watches the stop flag (set by SIGINT/SIGTERM), so
//! the process stops within [`POLL`] (plus a busy-poll period) and one packet.
//! Nothing in that loop waits for a peer: control and metrics clients are
//! served on threads of their own ([`crate::control`]), so no client can
//! delay expiry or shutdown.
//!
//! # Busy polling
//! A thread that finds its queue empty sleeps in `poll`, and the next packet
//! pays a wake-up (in a VM, a cross-CPU interrupt and a VM exit). With
//! [`Options::busy_poll`] set, a thread first keeps reading its empty queue
//! for a while; how long depends on what an empty read costs.
//!
//! **While bulk data flows, on every device.** For a bulk transfer the wait
//! is on the critical path of every super-packet. So a thread spins the
//! whole `--busy-poll` while one of its last [`BULK_WINDOW`] packets was a
//! TCP super-packet (offloads on), and it has not been idle for a whole
//! [`POLL`] since. Measured side by side on the TUN (bench/e2e.sh --alt,
//! 50 us): one iperf3 stream +35 %; keep-alive requests and new connections
//! carry no super-packet, so they ran the same code as without. On the TUN
//! each empty read is a system call, and spinning after every packet
//! instead gained one stream 11-16 % and cost keep-alive requests 5 %, so
//! the TUN spins only then.
//!
//! **After any packet, on a ring** ([`PacketIo::cheap_to_poll`], the packet
//! datapath: an empty read looks at memory). At light load every packet
//! of a request pays a wake-up, about 9 per `Connection: close` request,
//! where kernel NAT forwards in the sender's softirq and pays none. So
//! such a thread spins after any packet, for a window that adapts as
//! Linux's guest halt-polling (`cpuidle-haltpoll`) does: a packet that came
//! within `--busy-poll` of the queue running dry doubles it, one that came
//! later halves it down to zero (sparse traffic costs no spinning), and it
//! is held at zero through any period after one in which the thread was
//! preempted often (other tasks wait for its CPU: they run instead). See
//! `Spinner`. Measured side by side on the packet datapath
//! (`bench/results/2026-12-01-ab-adaptive-spin`): the light-load median
//! 0.63x (0.94x kernel NAT's), rates and bulk the same within noise.
//!
//! # Priority: `--nice`
//! Kernel NAT forwards in softirq, which runs before any task. A balancer
//! in userspace is a task like the endpoints it serves, and each packet it
//! writes wakes one of them (the receiving namespace's TCP stack runs in
//! the writer's context and wakes the process waiting on the socket). At
//! the same priority the woken endpoint preempts the packet thread in the
//! middle of its burst: the thread waits on the run queue while packets
//! pile up in its queue, and every flow through it waits too. So each
//! packet thread can set its nice value to [`Options::nice`] when it starts
//! (`--nice`; lowering it needs `CAP_SYS_NICE`): at -10, weight 9548
//! against the endpoints' 1024, it finishes its burst first and then sleeps
//! as before (it never spins). Measured side
//! by side (bench/e2e.sh --alt "--nice 0", see the README's "Two
//! datapaths"): on the TUN 1.11x new connections/s and 1.18x keep-alive
//! requests/s, on packet sockets 1.22-1.35x new connections/s (keep-alive
//! 0.86x and 1.11x in two runs), and less machine CPU per connection
//! (fewer context switches). `SCHED_FIFO` was tried too: more connections, but
//! keep-alive requests fell and the p99 tripled (the thread then holds its
//! CPU through every burst, whatever waits).
//!
//! It is not the default, because it is a trade: where several busy
//! instances share two CPUs with the endpoints (netns test 69-scaleout:
//! four instances, hundreds of short connections and twelve rate-limited
//! downloads at once), at -10 some downloads through the surviving
//! instances stalled (no byte for 4 s: curl gave up) in 6 runs of 6, never
//! at the process's nice value (7 runs). tunlb forwarded every packet of a
//! stalled flow (its `--pcap`: the client advertised a zero window, and the
//! backend's window probes and the client's answers passed both ways until
//! curl gave up): the client application stopped reading, most likely
//! starved of CPU while the niced threads carried the short connections. On
//! a host that is a balancer first, `--nice -10` is the setting to use.
//!
//! # Errors a router would send
//! A device that sends packets itself (the packet datapath) may find one it
//! cannot deliver: no route, a next hop that does not answer ARP, larger
//! than the egress MTU. Through the TUN the kernel's forwarding would have
//! told the packet's source with an ICMP error, and the engine would have
//! translated that error back to the flow's other end. Here the device says
//! why ([`PacketIo::take_unsent`]), the thread builds that same error and
//! hands it to the engine as if it came from the network, so the flow's
//! other end hears what it would have heard through the TUN (see
//! `bounce`).
//!
//! This is the only module that reads the clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::craft::RouterError;
use crate::engine::{Engine, Verdict};
use crate::io::{Frame, PacketIo, Unsent};
use crate::nat::L4Checksum;
use crate::pcap::Recorder;
use crate::time::Timestamp;

/// How long a thread waits for a packet, or the housekeeper sleeps, before
/// looking at the stop flag again.
pub const POLL: Duration = Duration::from_millis(100);

/// The largest packet a TUN can hand over, with room for a device header.
const BUF_LEN: usize = 65536 + 64;

/// How many packets after a super-packet a thread still busy-polls.
pub const BULK_WINDOW: u32 = 64;

/// Whether bulk data flows through a thread: a super-packet among its last
/// [`BULK_WINDOW`] packets.
#[derive(Debug, Default, Clone, Copy)]
struct Bulk {
    packets_left: u32,
}

impl Bulk {
    /// Account for one received packet.
    fn saw(&mut self, gso: bool) {
        self.packets_left = if gso {
            BULK_WINDOW
        } else {
            self.packets_left.saturating_sub(1)
        };
    }

    /// How long to busy-poll before sleeping, given the configured maximum.
    fn spin(&self, busy_poll: Duration) -> Duration {
        if self.packets_left > 0 {
            busy_poll
        } else {
            Duration::ZERO
        }
    }
}

/// The adaptive busy-poll window's smallest size, as a fraction of
/// `--busy-poll`: a window halved below `busy_poll / ADAPTIVE_STEPS` becomes
/// zero (the thread sleeps at once), and one that grows from zero starts
/// there.
const ADAPTIVE_STEPS: u32 = 8;

/// How often an adaptively spinning thread looks at how often it was
/// preempted.
const PREEMPTION_PERIOD: Duration = Duration::from_millis(10);

/// More preemptions than this in a [`PREEMPTION_PERIOD`] mean other tasks
/// wait for the thread's CPU: it stops spinning after small packets until a
/// quieter period. Measured on the benchmark machine (one packet thread,
/// 2 CPUs shared with the endpoints): about 7 per 10 ms under sequential
/// requests, where spinning halves the latency, 40-100 under 50 concurrent
/// connections, where it took CPU from the endpoints.
const MAX_PREEMPTIONS: u64 = 20;

/// How long a packet thread reads its empty queue before it sleeps.
///
/// Two policies (see the module docs): while bulk data flows ([`Bulk`],
/// every device), and, on a device whose empty read costs no system call
/// ([`PacketIo::cheap_to_poll`]: the packet datapath's rings), after any
/// packet for a window that adapts to the gaps the thread sees, as the
/// guest halt-polling of Linux's `cpuidle-haltpoll` does: a packet that
/// came within `--busy-poll` of the queue running dry doubles the window
/// (spinning that long would have caught it, or did); one that came later
/// halves it, down to zero; a whole [`POLL`] without a packet empties it.
/// Spinning takes a CPU other tasks might want, so the adaptive spin is
/// held at zero through any [`PREEMPTION_PERIOD`] that follows one in which
/// the thread was preempted more than [`MAX_PREEMPTIONS`] times (it then
/// sleeps as on the TUN: the endpoints run). Invariant: `window <= max`,
/// and `window` is zero or at least `max / ADAPTIVE_STEPS`.
#[derive(Debug, Clone, Copy)]
struct Spinner {
    /// `--busy-poll`: the longest spin; zero: never.
    max: Duration,
    /// The adaptive window's smallest non-zero size, `max / ADAPTIVE_STEPS`
    /// (computed once: [`saw`](Self::saw) runs for every packet).
    floor: Duration,
    /// Whether the adaptive policy applies (the device is cheap to poll).
    adaptive: bool,
    bulk: Bulk,
    /// The adaptive policy's spin now.
    window: Duration,
    /// Whether other tasks wanted the thread's CPU in the last period.
    contended: bool,
    /// When the next period starts, and the preemption count at the start
    /// of this one.
    period_ends: Timestamp,
    preemptions: u64,
}

impl Spinner {
    /// A spinner for `--busy-poll max`, adaptive where the device is cheap
    /// to poll.
    fn new(max: Duration, cheap_to_poll: bool) -> Spinner {
        Spinner {
            max,
            floor: max / ADAPTIVE_STEPS,
            adaptive: cheap_to_poll && !max.is_zero(),
            bulk: Bulk::default(),
            window: Duration::ZERO,
            contended: false,
            period_ends: Timestamp::ZERO,
            preemptions: 0,
        }
    }

    /// How long to spin once the queue is empty.
    fn spin(&self) -> Duration {
        let window = if self.contended {
            Duration::ZERO
        } else {
            self.window
        };
        self.bulk.spin(self.max).max(window)
    }

    /// At `now`, once per [`PREEMPTION_PERIOD`]: take the thread's
    /// preemption count from `count` and decide whether the thread is
    /// contended. Reads nothing on a thread that does not spin adaptively.
    fn watch(&mut self, now: Timestamp, count: impl FnOnce() -> Option<u64>) {
        if !self.adaptive || now < self.period_ends {
            return;
        }
        let Some(n) = count() else {
            return;
        };
        // Judged only over about one period: the first has no count to
        // compare with, and a count read long ago (the thread slept) spans
        // many periods. Either way: not contended.
        let recent =
            self.period_ends != Timestamp::ZERO && now <= self.period_ends + PREEMPTION_PERIOD;
        self.contended = recent && n.saturating_sub(self.preemptions) > MAX_PREEMPTIONS;
        self.preemptions = n;
        self.period_ends = now + PREEMPTION_PERIOD;
    }

    /// Account for a received packet that came `idle` after the queue ran
    /// dry (zero: it was waiting).
    fn saw(&mut self, gso: bool, idle: Duration) {
        self.bulk.saw(gso);
        if !self.adaptive {
            return;
        }
        self.window = if idle <= self.max {
            (self.window * 2).max(self.floor).min(self.max)
        } else if self.window / 2 < self.floor {
            Duration::ZERO
        } else {
            self.window / 2
        };
    }

    /// A whole [`POLL`] without a packet: whatever flowed has stopped.
    fn stopped(&mut self) {
        self.bulk = Bulk::default();
        self.window = Duration::ZERO;
    }
}

/// Options of the datapath.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of packet threads.
    pub threads: usize,
    /// Period of the one-line counter summary at info level.
    pub stats_interval: Option<Duration>,
    /// The longest a thread keeps reading its empty queue before it sleeps:
    /// while bulk data flows, and on a device cheap to poll after any
    /// packet for an adaptive window (see the module docs); zero: never.
    pub busy_poll: Duration,
    /// `--pcap`: record every packet before and after NAT.
    pub capture: Option<Arc<Recorder>>,
    /// The nice value each packet thread takes when it starts (`--nice`);
    /// `None`: the process's. See the module docs for why it is raised.
    pub nice: Option<i32>,
}

/// Check that a thread of this process may take nice value `nice`: a
/// short-lived thread tries it on itself (the process and its other threads
/// are left as they are). Lowering the value needs `CAP_SYS_NICE` or a
/// large enough `RLIMIT_NICE`.
pub fn try_nice(nice: i32) -> std::io::Result<()> {
    thread::Builder::new()
        .name("tunlb-nice".into())
        .spawn(move || crate::io::sys::set_thread_nice(nice))?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the thread that tried it panicked")))
}

/// Return the calling thread's nice value (for tests and diagnostics).
pub fn current_thread_nice() -> std::io::Result<i32> {
    crate::io::sys::thread_nice()
}

/// What the packet threads counted on the device (the engine counts
/// everything else), summed over threads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTotals {
    /// Reads that returned a packet.
    pub packets: u64,
    /// Of those, TCP super-packets (GSO) the kernel segments later: with
    /// offloads on, bulk transfers show up here.
    pub super_packets: u64,
    /// IP bytes read.
    pub bytes: u64,
    /// Writes the device refused (the packet is lost, as on a full queue).
    pub write_errors: u64,
}

/// One packet thread's counters, alone on its cache line: each thread only
/// stores to its own slot (no shared atomic read-modify-write per packet),
/// readers add the slots up.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot {
    packets: AtomicU64,
    super_packets: AtomicU64,
    bytes: AtomicU64,
    write_errors: AtomicU64,
}

impl Slot {
    fn publish(&self, t: &DeviceTotals) {
        self.packets.store(t.packets, Ordering::Relaxed);
        self.super_packets.store(t.super_packets, Ordering::Relaxed);
        self.bytes.store(t.bytes, Ordering::Relaxed);
        self.write_errors.store(t.write_errors, Ordering::Relaxed);
    }
}

/// The packet device as reports show it: what was opened, and what the
/// packet threads counted on it.
#[derive(Debug)]
pub struct Device {
    /// The TUN's name.
    pub name: String,
    /// Queues open.
    pub queues: usize,
    /// Whether TSO/checksum offloads are on.
    pub offload: bool,
    /// Whether it is the `tun` crate's device (`--io tun`).
    pub tun_crate: bool,
    /// Where its own drop counters come from, when it has some (the
    /// packet datapath: frames lost to a full ring, next hops unknown...).
    pub drops: Option<Arc<dyn DeviceDrops>>,
    slots: Box<[Slot]>,
}

/// A device that counts drops of its own, before or after the engine
/// (the packet datapath's [`crate::io::packet::AfPacket`]).
pub trait DeviceDrops: Send + Sync + std::fmt::Debug {
    /// Every counter, in a fixed order, zeros included.
    fn drops(&self) -> Vec<crate::io::packet::DropCount>;
}

impl Device {
    /// Describe tunlb's own TUN, read and written by `threads` packet
    /// threads (one counter slot each).
    pub fn new(name: &str, queues: usize, offload: bool, threads: usize) -> Self {
        Device {
            name: name.to_owned(),
            queues,
            offload,
            tun_crate: false,
            drops: None,
            slots: (0..threads.max(1)).map(|_| Slot::default()).collect(),
        }
    }

    /// Describe the `tun` crate's device (one queue, no offloads).
    pub fn tun_crate(name: &str, threads: usize) -> Self {
        Device {
            tun_crate: true,
            ..Device::new(name, 1, false, threads)
        }
    }

    /// Describe the device in a few words: `2 queue(s), offload on`.
    pub fn describe(&self) -> String {
        format!(
            "{}{} queue(s), offload {}",
            if self.tun_crate { "tun crate, " } else { "" },
            self.queues,
            if self.offload { "on" } else { "off" }
        )
    }

    /// Return each packet thread's counters, in thread order.
    pub fn per_thread(&self) -> Vec<DeviceTotals> {
        self.slots
            .iter()
            .map(|s| DeviceTotals {
                packets: s.packets.load(Ordering::Relaxed),
                super_packets: s.super_packets.load(Ordering::Relaxed),
                bytes: s.bytes.load(Ordering::Relaxed),
                write_errors: s.write_errors.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Return the counters summed over threads.
    pub fn totals(&self) -> DeviceTotals {
        self.per_thread()
            .iter()
            .fold(DeviceTotals::default(), |t, s| DeviceTotals {
                packets: t.packets + s.packets,
                super_packets: t.super_packets + s.super_packets,
                bytes: t.bytes + s.bytes,
                write_errors: t.write_errors + s.write_errors,
            })
    }
}

/// A monotonic clock turned into engine [`Timestamp`]s.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// Start a clock at zero now.
    pub fn start() -> Self {
        Clock(Instant::now())
    }

    /// Return the time since the start.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.elapsed().as_millis() as u64)
    }
}

/// Run the datapath until `stop` is set or the device fails, handing the
/// engine the time of `clock` (the one control requests read too). Returns
/// the device error that ended it, if any. `on_tick` runs in the
/// housekeeping loop at least every [`POLL`] (reloads); it must not wait for
/// anything outside the process.
pub fn run(
    engine: Arc<Engine>,
    io: Arc<dyn PacketIo>,
    opts: &Options,
    stop: Arc<AtomicBool>,
    device: Arc<Device>,
    clock: Clock,
    on_tick: &mut dyn FnMut(&Engine, Timestamp),
) -> Result<(), std::io::Error> {
    assert!(
        device.slots.len() >= opts.threads,
        "Device::new was given fewer threads than the datapath runs"
    );
    let busy_poll = opts.busy_poll;
    let capture = opts.capture.clone();
    let nice = opts.nice;
    let failure: Arc<std::sync::Mutex<Option<std::io::Error>>> = Arc::default();
    let workers: Vec<_> = (0..opts.threads)
        .map(|i| {
            let (engine, io, stop, device, failure, capture) = (
                engine.clone(),
                io.clone(),
                stop.clone(),
                device.clone(),
                failure.clone(),
                capture.clone(),
            );
            thread::Builder::new()
                .name(format!("tunlb-pkt{i}"))
                .spawn(move || {
                    // A thread that panics (a bug) stops the others and
                    // fails the run: its queue's flows would otherwise go
                    // unserved while the process looks alive.
                    let _dead = OnPanic(|| {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(
                            std::io::Error::other(format!("packet thread {i} panicked (a bug: please report it with the message above)")),
                        );
                        stop.store(true, Ordering::Relaxed);
                    });
                    if let Some(n) = nice {
                        if let Err(e) = crate::io::sys::set_thread_nice(n) {
                            tracing::debug!("packet thread {i}: nice {n}: {e}");
                        }
                    }
                    let slot = &device.slots[i];
                    let cap = capture.as_deref();
                    if let Err(e) =
                        packet_loop(i, &engine, &*io, &stop, slot, clock, busy_poll, cap)
                    {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        stop.store(true, Ordering::Relaxed);
                    }
                })
                .expect("spawning a packet thread")
        })
        .collect();

    let mut next_summary = opts.stats_interval.map(|d| Instant::now() + d);
    while !stop.load(Ordering::Relaxed) {
        let now = clock.now();
        while engine.handle_timeout(now) {}
        on_tick(&engine, now);
        if let (Some(at), Some(every)) = (next_summary, opts.stats_interval) {
            if Instant::now() >= at {
                tracing::info!("stats: {}", engine.stats());
                next_summary = Some(at + every);
            }
        }
        let sleep = engine.poll_timeout().map_or(POLL, |at| {
            now.until(at).clamp(Duration::from_millis(1), POLL)
        });
        thread::sleep(sleep);
    }
    for w in workers {
        let _ = w.join();
    }
    let failure = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    failure.map_or(Ok(()), Err)
}

/// Runs its closure when dropped while the thread unwinds from a panic.
struct OnPanic<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnPanic<F> {
    fn drop(&mut self) {
        if thread::panicking() {
            (self.0)();
        }
    }
}

/// One packet thread: receive, process, send, until stopped.
#[allow(clippy::too_many_arguments)]
fn packet_loop(
    queue: usize,
    engine: &Engine,
    io: &dyn PacketIo,
    stop: &AtomicBool,
    slot: &Slot,
    clock: Clock,
    busy_poll: Duration,
    capture: Option<&Recorder>,
) -> Result<(), std::io::Error> {
    let mut buf = vec![0u8; BUF_LEN];
    let mut spare = Vec::new();
    let mut mine = DeviceTotals::default();
    let mut spinner = Spinner::new(busy_poll, io.cheap_to_poll());
    while !stop.load(Ordering::Relaxed) {
        let got = receive(io, queue, &mut buf, spinner.spin(), spinner.adaptive)?;
        let Some((frame, idle)) = got else {
            // A whole POLL without a packet: whatever flowed has stopped.
            spinner.stopped();
            continue;
        };
        spinner.saw(frame.gso, idle);
        let now = clock.now();
        spinner.watch(now, || crate::io::sys::thread_preemptions().ok());
        mine.packets += 1;
        mine.super_packets += u64::from(frame.gso);
        mine.bytes += frame.len as u64;
        slot.publish(&mine);
        let pkt = &mut buf[frame.start..frame.start + frame.len];
        let verdict = match capture {
            None => engine.handle_offloaded_packet(pkt, now, frame.l4),
            Some(c) => c.handle_packet(engine, pkt, now, frame.l4, frame.gso),
        };
        let (len, replaced) = match verdict {
            Verdict::Forward { len } => (len, false),
            Verdict::Respond { len } => (len, true),
            Verdict::Drop(_) => continue,
        };
        if let Err(e) = io.send(queue, &mut buf, &frame, len, replaced) {
            mine.write_errors += 1;
            slot.publish(&mine);
            tracing::debug!("write to the device failed: {e}");
            if let Some(unsent) = io.take_unsent(queue) {
                let pkt = &buf[frame.start..frame.start + len];
                bounce(
                    engine,
                    io,
                    queue,
                    pkt,
                    frame.start,
                    unsent,
                    &mut spare,
                    clock.now(),
                );
            }
        }
    }
    Ok(())
}

/// Tell the sender of a packet the device could not deliver why, as a
/// router would (RFC 1812 4.3.2): build the ICMP error about `pkt` (the
/// packet as tunlb translated it, so the error goes to its VIP or SNAT
/// source) in `spare`, at `start` like a received packet, and hand it to
/// the engine as if it came from the network. The engine translates it
/// like any error RELATED to a flow, to the flow's other end, and it is
/// sent like any packet. Only about TCP segments: never an error about an
/// ICMP message (RFC 1122 3.2.2), and never a second error about an error
/// that cannot be sent either.
#[allow(clippy::too_many_arguments)]
fn bounce(
    engine: &Engine,
    io: &dyn PacketIo,
    queue: usize,
    pkt: &[u8],
    start: usize,
    unsent: Unsent,
    spare: &mut Vec<u8>,
    now: Timestamp,
) {
    const TCP: u8 = 6;
    // Only about TCP segments (IPv6: right after the fixed header).
    let version = pkt.first().map(|b| b >> 4);
    let tcp = match version {
        Some(4) => pkt.len() >= 20 && pkt[9] == TCP,
        Some(6) => pkt.len() >= 40 && pkt[6] == TCP,
        _ => false,
    };
    if !tcp {
        return;
    }
    if spare.len() < start + RouterError::MAX_LEN {
        spare.resize(start + RouterError::MAX_LEN, 0);
    }
    let Some(n) = (unsent.why.error()).emit(unsent.from, pkt, &mut spare[start..]) else {
        return;
    };
    let len = match engine.handle_offloaded_packet(
        &mut spare[start..start + n],
        now,
        L4Checksum::Complete,
    ) {
        Verdict::Forward { len } => len,
        Verdict::Respond { .. } | Verdict::Drop(_) => return,
    };
    let frame = Frame {
        start,
        len: n,
        l4: L4Checksum::Complete,
        gso: false,
    };
    if let Err(e) = io.send(queue, spare, &frame, len, true) {
        tracing::debug!("the ICMP error could not be sent either: {e}");
        let _ = io.take_unsent(queue);
    }
}

/// Receive one packet: the one waiting, if any; else by reading for up to
/// `spin` without sleeping, then waiting up to [`POLL`]. Returns it with how
/// long the queue had been empty before it came (zero: it was waiting).
/// That time is measured only where it is used (`timed`, or a spin), so a
/// device whose empty read is a system call (the TUN) pays no extra read
/// before it sleeps, and no thread reads the clock for a waiting packet.
fn receive(
    io: &dyn PacketIo,
    queue: usize,
    buf: &mut [u8],
    spin: Duration,
    timed: bool,
) -> std::io::Result<Option<(crate::io::Frame, Duration)>> {
    if spin.is_zero() && !timed {
        return Ok(io.recv(queue, buf, POLL)?.map(|f| (f, Duration::ZERO)));
    }
    if let Some(frame) = io.recv(queue, buf, Duration::ZERO)? {
        return Ok(Some((frame, Duration::ZERO)));
    }
    let dry = Instant::now();
    while dry.elapsed() < spin {
        std::hint::spin_loop();
        if let Some(frame) = io.recv(queue, buf, Duration::ZERO)? {
            return Ok(Some((frame, dry.elapsed())));
        }
    }
    Ok(io.recv(queue, buf, POLL)?.map(|f| (f, dry.elapsed())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::memory::MemoryIo;
    use crate::service::{BackendConfig, EngineConfig, ServiceConfig};
    use smoltcp::wire::Ipv4Packet;
    use std::net::Ipv4Addr;

    fn syn() -> Vec<u8> {
        let vip: std::net::SocketAddrV4 = "198.18.0.1:80".parse().unwrap();
        let client: std::net::SocketAddrV4 = "198.18.1.2:40000".parse().unwrap();
        crate::craft::Segment::new(client, vip, 0x02).build()
    }

    #[test]
    fn busy_polling_only_while_super_packets_flow() {
        let busy = Duration::from_micros(50);
        let mut b = Bulk::default();
        assert_eq!(b.spin(busy), Duration::ZERO, "small packets only: never");
        for _ in 0..1000 {
            b.saw(false);
        }
        assert_eq!(b.spin(busy), Duration::ZERO);
        b.saw(true);
        for _ in 1..BULK_WINDOW {
            b.saw(false);
            assert_eq!(b.spin(busy), busy, "within the window after a super-packet");
        }
        b.saw(false);
        assert_eq!(b.spin(busy), Duration::ZERO, "the window has passed");
        b.saw(true);
        assert_eq!(
            b.spin(Duration::ZERO),
            Duration::ZERO,
            "--busy-poll 0: never"
        );
    }

    #[test]
    fn receive_spins_then_waits_and_reads_a_waiting_packet_at_once() {
        let io = MemoryIo::new();
        let mut buf = [0u8; 64];
        let spin = Duration::from_micros(20);
        for timed in [false, true] {
            assert!(receive(&io, 0, &mut buf, spin, timed).unwrap().is_none());
            io.inject(&syn());
            let (f, idle) = receive(&io, 0, &mut buf, spin, timed)
                .unwrap()
                .expect("a packet waiting is read at once");
            assert_eq!(f.len, syn().len());
            assert_eq!(idle, Duration::ZERO, "it was waiting: no idle time");
        }
        // Not timed and no spin: straight to the wait, as before.
        io.inject(&syn());
        assert!(receive(&io, 0, &mut buf, Duration::ZERO, false)
            .unwrap()
            .is_some());
    }

    #[test]
    fn receive_says_how_long_the_queue_was_empty() {
        let io = Arc::new(MemoryIo::new());
        let feeder = {
            let io = io.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(20));
                io.inject(&syn());
            })
        };
        let mut buf = [0u8; 64];
        let (_, idle) = receive(&*io, 0, &mut buf, Duration::from_micros(50), true)
            .unwrap()
            .expect("the packet injected while the thread waited");
        feeder.join().unwrap();
        assert!(idle >= Duration::from_millis(20), "idle {idle:?}");
    }

    #[test]
    fn the_adaptive_window_follows_the_gaps_between_packets() {
        let max = Duration::from_micros(50);
        let floor = max / ADAPTIVE_STEPS;
        let short = Duration::from_micros(10);
        let long = Duration::from_millis(2);
        let mut s = Spinner::new(max, true);
        assert_eq!(s.spin(), Duration::ZERO, "nothing seen yet: sleep at once");
        s.saw(false, short);
        assert_eq!(s.spin(), floor, "a short gap: grow from the floor");
        s.saw(false, Duration::ZERO);
        assert_eq!(s.spin(), floor * 2, "a packet that waited: grow");
        for _ in 0..10 {
            s.saw(false, short);
        }
        assert_eq!(s.spin(), max, "never past --busy-poll");
        s.saw(false, long);
        assert_eq!(s.spin(), max / 2, "a long gap: halve");
        for _ in 0..10 {
            s.saw(false, long);
        }
        assert_eq!(s.spin(), Duration::ZERO, "sparse traffic: no spin at all");
        s.saw(false, short);
        s.saw(false, short);
        s.stopped();
        assert_eq!(s.spin(), Duration::ZERO, "a whole POLL idle: back to zero");
        // Bulk data still spins the whole --busy-poll.
        s.saw(true, long);
        assert_eq!(s.spin(), max);
    }

    #[test]
    fn only_cheap_devices_spin_adaptively_and_zero_turns_all_off() {
        let max = Duration::from_micros(50);
        let mut tun = Spinner::new(max, false);
        for _ in 0..10 {
            tun.saw(false, Duration::from_micros(1));
        }
        assert_eq!(tun.spin(), Duration::ZERO, "small packets on a TUN: never");
        tun.saw(true, Duration::ZERO);
        assert_eq!(tun.spin(), max, "while bulk data flows, as before");
        let mut off = Spinner::new(Duration::ZERO, true);
        off.saw(true, Duration::ZERO);
        off.saw(false, Duration::ZERO);
        assert_eq!(off.spin(), Duration::ZERO, "--busy-poll 0: never");
        assert!(!off.adaptive);
    }

    #[test]
    fn a_contended_thread_stops_spinning_after_small_packets() {
        let max = Duration::from_micros(50);
        let mut s = Spinner::new(max, true);
        let t = |ms| Timestamp::from_millis(ms);
        s.watch(t(1000), || Some(100));
        for _ in 0..10 {
            s.saw(false, Duration::ZERO);
        }
        assert_eq!(s.spin(), max);
        s.watch(t(1005), || panic!("read only once per period"));
        s.watch(t(1010), || Some(100 + MAX_PREEMPTIONS));
        assert_eq!(s.spin(), max, "at most MAX_PREEMPTIONS: still spins");
        s.watch(t(1020), || Some(101 + 2 * MAX_PREEMPTIONS));
        assert_eq!(s.spin(), Duration::ZERO, "preempted often: sleeps");
        s.saw(true, Duration::ZERO);
        assert_eq!(s.spin(), max, "bulk data spins as on every device");
        s.stopped();
        s.watch(t(1030), || Some(102 + 2 * MAX_PREEMPTIONS));
        s.saw(false, Duration::ZERO);
        assert!(!s.spin().is_zero(), "a quiet period: spins again");
        s.watch(t(1040), || Some(103 + 3 * MAX_PREEMPTIONS));
        assert_eq!(s.spin(), Duration::ZERO, "contended again");
        s.watch(t(5000), || Some(104 + 4 * MAX_PREEMPTIONS));
        assert!(
            !s.spin().is_zero(),
            "a count from long ago (the thread slept) spans many periods: not judged"
        );
        let mut tun = Spinner::new(max, false);
        tun.watch(t(1000), || panic!("a TUN thread never reads the count"));
    }

    #[test]
    fn a_thread_can_read_its_preemptions() {
        let n = crate::io::sys::thread_preemptions().unwrap();
        assert!(crate::io::sys::thread_preemptions().unwrap() >= n);
    }

    #[test]
    fn threads_forward_and_stop_on_the_flag() {
        let engine = Arc::new(crate::testing::engine());
        let io = Arc::new(MemoryIo::new());
        io.inject(&syn());
        io.inject(&[0x60, 0, 0, 0]); // a cut IPv6 header: counted and dropped
        let stop = Arc::new(AtomicBool::new(false));
        let device = Arc::new(Device::new("mem0", 1, false, 2));
        let h = {
            let (e, i, s, c) = (engine.clone(), io.clone(), stop.clone(), device.clone());
            thread::spawn(move || {
                run(
                    e,
                    i,
                    &Options {
                        threads: 2,
                        stats_interval: None,
                        busy_poll: Duration::ZERO,
                        capture: None,
                        nice: None,
                    },
                    s,
                    c,
                    Clock::start(),
                    &mut |_, _| {},
                )
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while device.totals().packets < 2 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap().unwrap();
        let sent = io.take_sent();
        assert_eq!(sent.len(), 1);
        let ip = Ipv4Packet::new_checked(&sent[0][..]).unwrap();
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(198, 18, 2, 3));
        assert_eq!(engine.stats().dropped(crate::DropReason::Truncated), 1);
        assert_eq!(engine.flow_count(), 1);
        // Both reads counted, whichever thread made them; no super-packet.
        assert_eq!(
            device.totals(),
            DeviceTotals {
                packets: 2,
                super_packets: 0,
                bytes: syn().len() as u64 + 4,
                write_errors: 0,
            }
        );
    }

    /// A [`MemoryIo`] that records the nice value of each thread that reads it.
    struct NiceSpy {
        inner: MemoryIo,
        seen: std::sync::Mutex<Vec<i32>>,
    }

    impl PacketIo for NiceSpy {
        fn queues(&self) -> usize {
            2
        }
        fn recv(
            &self,
            queue: usize,
            buf: &mut [u8],
            timeout: Duration,
        ) -> std::io::Result<Option<Frame>> {
            let mut seen = self.seen.lock().unwrap();
            if seen.len() < 64 {
                seen.push(current_thread_nice()?);
            }
            drop(seen);
            self.inner.recv(queue, buf, timeout)
        }
        fn send(
            &self,
            queue: usize,
            buf: &mut [u8],
            frame: &Frame,
            len: usize,
            replaced: bool,
        ) -> std::io::Result<()> {
            self.inner.send(queue, buf, frame, len, replaced)
        }
    }

    /// A device whose second queue's reads panic (a bug in a device).
    struct Panicking;

    impl PacketIo for Panicking {
        fn queues(&self) -> usize {
            2
        }
        fn recv(&self, queue: usize, _: &mut [u8], t: Duration) -> std::io::Result<Option<Frame>> {
            assert_eq!(queue, 0, "a bug in queue {queue}'s device");
            thread::sleep(t.min(Duration::from_millis(5)));
            Ok(None)
        }
        fn send(
            &self,
            _: usize,
            _: &mut [u8],
            _: &Frame,
            _: usize,
            _: bool,
        ) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_packet_thread_that_panics_ends_the_run_with_an_error() {
        let engine = Arc::new(crate::testing::engine());
        let stop = Arc::new(AtomicBool::new(false));
        let device = Arc::new(Device::new("mem0", 2, false, 2));
        let opts = Options {
            threads: 2,
            stats_interval: None,
            busy_poll: Duration::ZERO,
            capture: None,
            nice: None,
        };
        // Without the stop flag ever set from outside: the panic must end it.
        let r = run(
            engine,
            Arc::new(Panicking),
            &opts,
            stop.clone(),
            device,
            Clock::start(),
            &mut |_, _| {},
        );
        let e = r.expect_err("the run fails");
        assert!(e.to_string().contains("packet thread 1 panicked"), "{e}");
        assert!(
            stop.load(Ordering::Relaxed),
            "the other threads were stopped"
        );
    }

    #[test]
    fn packet_threads_take_the_nice_value_they_are_given() {
        // Raising a nice value needs no privilege (lowering it does), so
        // this runs anywhere.
        let mine = current_thread_nice().unwrap();
        let want = (mine + 3).min(19);
        try_nice(want).unwrap();
        assert_eq!(
            current_thread_nice().unwrap(),
            mine,
            "try_nice leaves the caller as it was"
        );
        let engine = Arc::new(crate::testing::engine());
        let io = Arc::new(NiceSpy {
            inner: MemoryIo::new(),
            seen: Default::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let device = Arc::new(Device::new("mem0", 2, false, 2));
        let h = {
            let (e, i, s, d) = (engine.clone(), io.clone(), stop.clone(), device.clone());
            thread::spawn(move || {
                let opts = Options {
                    threads: 2,
                    stats_interval: None,
                    busy_poll: Duration::ZERO,
                    capture: None,
                    nice: Some(want),
                };
                run(e, i, &opts, s, d, Clock::start(), &mut |_, _| {})
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while io.seen.lock().unwrap().len() < 8 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap().unwrap();
        let seen = io.seen.lock().unwrap();
        assert!(seen.len() >= 8, "the packet threads read: {seen:?}");
        assert!(seen.iter().all(|&n| n == want), "want {want}: {seen:?}");
        assert_eq!(
            current_thread_nice().unwrap(),
            mine,
            "only the packet threads"
        );
    }

    #[test]
    fn expiry_and_stop_go_on_while_control_clients_stall() {
        use crate::conntrack::TcpState;
        use crate::control::{request, Control, Limits, Source};
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;

        // 20 services of 1000 backends: `stats json` is some 2.5 MB, far
        // more than a socket buffer holds, whatever the flows.
        let services = (1..=20u8)
            .map(|s| ServiceConfig {
                vip: format!("198.18.0.{s}:80").parse().unwrap(),
                backends: (0..1000u16)
                    .map(|b| BackendConfig {
                        addr: format!("198.18.2.{s}:{}", 1000 + b).parse().unwrap(),
                        weight: 1,
                    })
                    .collect(),
                mode: Default::default(),
                snat: vec![],
            })
            .collect();
        let mut cfg = EngineConfig {
            services,
            ..Default::default()
        };
        cfg.timeouts
            .set(TcpState::SynSent, Duration::from_millis(300));
        let engine = Arc::new(Engine::new(cfg).unwrap());
        let io = Arc::new(MemoryIo::new());
        let stop = Arc::new(AtomicBool::new(false));
        let device = Arc::new(Device::new("mem0", 1, false, 1));
        let clock = Clock::start();
        let path = std::env::temp_dir().join(format!("tunlb-{}-stall.sock", std::process::id()));
        let control = Control::bind(&path).unwrap();
        let source = Source {
            engine: engine.clone(),
            device: device.clone(),
            clock,
        };
        let limits = Limits {
            io_timeout: Duration::from_secs(600),
            deadline: Duration::from_secs(600),
            ..Limits::DEFAULT
        };
        let acceptor = control.spawn(source, limits, stop.clone()).unwrap();
        let h = {
            let (e, i, s, d) = (engine.clone(), io.clone(), stop.clone(), device.clone());
            thread::spawn(move || {
                let opts = Options {
                    threads: 1,
                    stats_interval: None,
                    busy_poll: Duration::ZERO,
                    capture: None,
                    nice: None,
                };
                run(e, i, &opts, s, d, clock, &mut |_, _| {})
            })
        };

        // One client sends nothing; another asks and reads one byte: its
        // worker has the answer and blocks writing the rest.
        let _silent = UnixStream::connect(&path).unwrap();
        let mut stalled = UnixStream::connect(&path).unwrap();
        stalled.write_all(b"stats json\n").unwrap();
        stalled
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut first = [0u8; 1];
        stalled.read_exact(&mut first).unwrap();

        // Meanwhile a flow is made and expires (SYN_SENT: 300 ms).
        io.inject(&syn());
        let deadline = Instant::now() + Duration::from_secs(60);
        while engine.stats().expired == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(engine.stats().new_flows, 1);
        assert_eq!(engine.stats().expired, 1, "the flow expired");
        assert_eq!(engine.flow_count(), 0);
        // Other clients are answered.
        assert_eq!(
            request(&path, "flows", false).unwrap(),
            "tunlb: 0 flow entries\n"
        );
        // Stop: the datapath and the acceptor end; nobody waits for the
        // stalled workers.
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap().unwrap();
        acceptor.join().unwrap();
        drop(control);
        assert!(!path.exists(), "the socket file is removed");

        // The stalled answer was far bigger than what a socket holds: its
        // worker was blocked writing it all along.
        let mut rest = Vec::new();
        stalled.read_to_end(&mut rest).unwrap();
        let body = [&first[..], &rest].concat();
        assert!(body.len() > 1 << 20, "stats json: {} bytes", body.len());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["backends"].as_array().map(Vec::len), Some(20_000));
    }

    /// A device that cannot deliver to one address: sending there fails,
    /// and a router would answer "host unreachable" from 198.18.1.1.
    struct Refusing {
        inner: MemoryIo,
        dead: Ipv4Addr,
        unsent: std::sync::Mutex<Option<Unsent>>,
    }

    impl PacketIo for Refusing {
        fn recv(&self, q: usize, buf: &mut [u8], t: Duration) -> std::io::Result<Option<Frame>> {
            self.inner.recv(q, buf, t)
        }

        fn send(
            &self,
            q: usize,
            buf: &mut [u8],
            frame: &Frame,
            len: usize,
            replaced: bool,
        ) -> std::io::Result<()> {
            let ip = Ipv4Packet::new_checked(&buf[frame.start..frame.start + len]).unwrap();
            if ip.dst_addr() == self.dead {
                *self.unsent.lock().unwrap() = Some(Unsent {
                    from: Ipv4Addr::new(198, 18, 1, 1).into(),
                    why: crate::io::Unreachable::Host,
                });
                return Err(std::io::ErrorKind::HostUnreachable.into());
            }
            self.inner.send(q, buf, frame, len, replaced)
        }

        fn take_unsent(&self, _queue: usize) -> Option<Unsent> {
            self.unsent.lock().unwrap().take()
        }
    }

    #[test]
    fn an_undeliverable_syn_is_answered_to_the_client_as_the_kernel_would() {
        let engine = Arc::new(crate::testing::engine());
        let io = Arc::new(Refusing {
            inner: MemoryIo::new(),
            dead: Ipv4Addr::new(198, 18, 2, 3),
            unsent: Default::default(),
        });
        io.inner.inject(&syn());
        let stop = Arc::new(AtomicBool::new(false));
        let device = Arc::new(Device::new("mem0", 1, false, 1));
        let h = {
            let (e, i, s, d) = (engine.clone(), io.clone(), stop.clone(), device.clone());
            thread::spawn(move || {
                let opts = Options {
                    threads: 1,
                    stats_interval: None,
                    busy_poll: Duration::ZERO,
                    capture: None,
                    nice: None,
                };
                run(e, i, &opts, s, d, Clock::start(), &mut |_, _| {})
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while engine.stats().icmp_translated == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap().unwrap();
        let sent = io.inner.take_sent();
        assert_eq!(sent.len(), 1, "one ICMP error, nothing to the backend");
        let ip = Ipv4Packet::new_checked(&sent[0][..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(198, 18, 1, 2), "to the client");
        let icmp = smoltcp::wire::Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!((u8::from(icmp.msg_type()), icmp.msg_code()), (3, 1));
        // It quotes the client's own SYN to the VIP, whole, as it sent it.
        assert_eq!(&ip.payload()[8..], &syn()[..]);
        assert_eq!(device.totals().write_errors, 1);
    }
}
