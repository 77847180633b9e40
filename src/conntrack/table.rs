//! The flow table: every tracked flow, findable in O(1) by either tuple.
//!
//! Netfilter keeps each `nf_conn` once and hangs both of its tuples in one
//! hash table (the `tuplehash[2]` nodes inside the conn). This table does
//! the same with indices instead of pointers:
//! - a slab (`Slab`) holds the flows themselves, in fixed-size chunks that never
//!   move (a growing table copies nothing, and a flow costs its own size,
//!   not the size of a hash bucket that doubles);
//! - an index maps each tuple to its flow: its entries are 4 bytes (slot
//!   number and direction), and a probe compares the packet's tuple with the
//!   tuple stored in the flow, as `nf_conntrack_find` compares with the
//!   tuple in its hash node. Either direction is one probe.
//!
//! The table is split in shards, each behind its own lock, each with its
//! own slab, index, sweep and eviction queue. A flow lives in the
//! shard of its ORIGINAL tuple's [`spread`], the value the packet
//! datapath's fanout picks a packet's thread by: each thread takes the
//! locks of its own shards only. Its REPLY tuple has the same spread when
//! MASQUERADE kept the client's port (the rule); when it did not, the
//! REPLY tuple's shard holds a *remote* entry naming the flow's shard and
//! slot, and a REPLY packet takes two locks, one after the other.
//!
//! # Locking rules
//! A shard's lock is a spin lock (`ShardLock`), as netfilter's
//! `nf_conntrack_locks` are: each packet thread locks shards of its own
//! (above), so the lock is all but never contended, and an uncontended
//! spin lock costs one atomic compare-and-swap to take and a plain store
//! to release, where `std::sync::Mutex` also pays an atomic swap and its
//! poison checks on release (measured: 35 of an established packet's 756
//! instructions, about 6 ns). Every hold is short: one packet's work, or a
//! bounded piece of a control-plane walk (a sweep's [`EXPIRE_BUDGET`]
//! slots; a listing or a count takes one slab chunk per hold). A thread
//! that finds the lock taken spins briefly, then yields its CPU (the
//! holder may have been preempted: userspace cannot disable preemption
//! as the kernel's `spin_lock_bh` does).
//! - A flow is reached only through [`ConnTable::with_flow`], which runs a
//!   closure on it while its shard is locked and releases the lock when the
//!   closure returns: no guard leaves the table, so none can be held by
//!   mistake across a later call. The closure does the per-packet work on
//!   the flow and returns a small value saying what comes next (forward,
//!   remove the flow, admit a new connection in its place); the caller does
//!   that after `with_flow` has returned, with the lock released.
//! - Inside that closure no table method may be called (the shard's lock is
//!   not reentrant); [`Flow::set_deadline`] is how it changes a deadline.
//! - Within this module, at most one shard lock is held at a time.
//! - Inserting a flow, and the check that its REPLY tuple is free before,
//!   happen under the admission lock ([`Admission`]): nothing
//!   else adds a tuple, so a tuple found free stays free until the insert.
//!   [`ConnTable::insert`] takes the lock's [`Admission`] as proof. What
//!   only admitters write (flow ids, the room left under the limit, the
//!   count of NEW connections) is written with plain loads and stores
//!   under it; each shard's count of flows is written under the shard's
//!   lock, and [`ConnTable::len`] sums them: a NEW connection pays no
//!   shared atomic read-modify-write for any of these.
//! - A lookup that misses ([`ConnTable::find`]) returns an [`Absent`]: the
//!   count of tuples ever added to the tuple's shard, read under its lock.
//!   An admitter that finds the count unchanged under the admission lock
//!   knows that no other thread admitted the same tuple meanwhile, without
//!   a second lookup; the insert takes that proof, and the REPLY tuple's
//!   from the port search ([`ConnTable::absent`]), and looks a tuple up
//!   again only if its proof went stale. The count is written only under
//!   its shard's lock (a load and a store, no atomic read-modify-write).
//!
//! # Expiry
//! As in netfilter since Linux 4.7 (which dropped the timer every conntrack
//! had for a garbage collector and expiry at lookup), a flow is in no timer
//! structure: it has its `deadline` (last packet + the timeout of its
//! state), which traffic moves with one store, and that is all it costs.
//! Two things act on it:
//! - the packet path: a packet whose flow's deadline has passed finds the
//!   flow gone (the engine removes it and handles the packet as the first
//!   of no flow), so a sweep that comes late never lets traffic revive an
//!   expired flow;
//! - [`ConnTable::expire`], the sweep (`gc_worker`): it walks each shard's
//!   slab in slot order, a bounded number of slots per call, removes the
//!   flows whose deadline has passed and notes the earliest deadline among
//!   those it keeps. A shard is swept again when that deadline comes (a
//!   lower bound: an insert, or a deadline moved earlier under the lock,
//!   lowers it at once; traffic moves deadlines only later), but not
//!   sooner after the last sweep of the shard began than
//!   [`SWEEP_GAP_PER_FLOW`] times the table's flows, and never more than
//!   [`SWEEP_GAP_MAX`] later: in a table of a few hundred flows each is
//!   removed as it comes due, in one of a million each shard is swept
//!   about once a second, however many flows expire in between. However
//!   many shards and flows, the sweeps examine at most one slot per
//!   `SWEEP_GAP_PER_FLOW` on average (a million flows: one per us).
//!
//! # Eviction
//! When the table is full, a NEW connection takes the place of the oldest
//! flow that is not ASSURED (the smallest id at the fronts of the shards'
//! creation-order queues, whose stale entries are dropped as they are met),
//! else of the expired or closing flow expiring soonest among a few slots
//! of each shard (netfilter's `early_drop` samples buckets alike);
//! otherwise the SYN is refused (`table_full`).

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spin::mutex::{SpinMutex, SpinMutexGuard};
use spin::RelaxStrategy;

// Keyed with a per-process random seed: flow keys come from the network
// (a fixed seed only where a test asks for one, see [`ConnTable::with_hash_seed`]).
use foldhash::fast::SeedableRandomState as RandomState;
use foldhash::SharedSeed;
use hashbrown::HashTable;

use super::tcp::TcpState;
use super::tuple::{spread, Direction, IpAddress, Tuple};
use super::window::Window;
use crate::backend::Backend;
use crate::time::Timestamp;

/// One tracked connection (`struct nf_conn`).
#[derive(Debug, Clone)]
pub struct Flow<A = Ipv4Addr> {
    /// The ORIGINAL tuple: `client -> VIP`, as the client sent it.
    pub original: Tuple<A>,
    /// The REPLY tuple: `backend -> SNAT`, as the backend answers.
    pub reply: Tuple<A>,
    /// The backend DNAT sends this flow to (its counters and health).
    pub backend: Arc<Backend>,
    /// The conntrack TCP state.
    pub state: TcpState,
    /// A packet in the REPLY direction has been seen (`IPS_SEEN_REPLY`).
    pub seen_reply: bool,
    /// The flow reached ESTABLISHED with replies (`IPS_ASSURED`): it is not
    /// evicted when the table is full.
    pub assured: bool,
    /// When the flow expires unless more traffic arrives (see
    /// [`Flow::deadline`]; changed only by [`Flow::set_deadline`]).
    deadline: Timestamp,
    /// Packets seen, per direction.
    pub packets: [u64; 2],
    /// IP bytes seen, per direction.
    pub bytes: [u64; 2],
    /// Sequence state per direction (`tcp_in_window`).
    pub window: [Window; 2],
    /// A number unique to this flow among the live flows of the tables
    /// sharing its limit, given at insertion (under the admission lock) in
    /// creation order (wrapping after 2^32 flows: compared as
    /// serial numbers): tells a flow from a later one in the same slot
    /// (stale queue entries), and the oldest unanswered flow.
    pub id: u32,
    /// See [`Flow::stray_ack`]; valid when `has_stray`.
    stray: u32,
    has_stray: bool,
}

/// Traffic totals read off the table (see [`ConnTable::totals`]).
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Packets per direction, all flows ever.
    pub packets: [u64; 2],
    /// Live flows' (packets, bytes) per backend, keyed by `Arc::as_ptr` as usize.
    pub live_by_backend: HashMap<usize, (u64, u64)>,
}

/// How many slots one call of [`ConnTable::expire`] examines, all shards
/// together: a shard stays locked for a few microseconds at most.
pub const EXPIRE_BUDGET: usize = 256;
/// How long after the last sweep of a shard began another may begin, per
/// flow in the table (see the module docs' Expiry): the sweeps then
/// examine at most one slot per 8 us (a few slots cost nanoseconds each),
/// whatever the number of shards.
pub const SWEEP_GAP_PER_FLOW: Duration = Duration::from_micros(8);
/// The longest a shard waits for its next sweep once a flow is due: how
/// late, at most, an expired flow leaves the table (and its `destroy`
/// event is seen) when no packet of it came.
pub const SWEEP_GAP_MAX: Duration = Duration::from_secs(1);
/// How many slots of each shard a full table looks at for an expired or
/// closing flow to evict, when no flow is unanswered.
pub const EVICT_SCAN: usize = 64;
/// Stale entries the eviction queues may hold beyond one per live flow
/// (all shards together) before they are compacted.
pub const COMPACT_SLACK: usize = 1024;

/// Flows per slab chunk: large enough that the chunk list stays short,
/// small enough that a table of a few flows stays small.
const CHUNK: usize = 256;

/// Flows in numbered slots that never move: fixed-size chunks, allocated
/// as the table grows, and a list of the free slots. A slot number is the
/// flow's handle within its shard for as long as it lives.
#[derive(Debug)]
struct Slab<T> {
    chunks: Vec<Box<[Option<T>]>>,
    /// Freed slots, reused last freed first.
    free: Vec<u32>,
    /// Slots ever handed out (the next new one).
    high: u32,
    /// Slots in use.
    live: usize,
}

impl<T> Slab<T> {
    const fn new() -> Self {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
            high: 0,
            live: 0,
        }
    }

    #[inline(always)]
    fn get(&self, slot: u32) -> Option<&T> {
        let slot = slot as usize;
        self.chunks.get(slot / CHUNK)?[slot % CHUNK].as_ref()
    }

    #[inline(always)]
    fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        let slot = slot as usize;
        self.chunks.get_mut(slot / CHUNK)?[slot % CHUNK].as_mut()
    }

    /// Start fetching, for writing, the slot the next [`Slab::insert`]
    /// fills: a NEW connection's flow goes to a slot freed long ago (or
    /// never used), which is rarely in the cache, and its stores would
    /// otherwise wait for it at the next atomic instruction.
    #[inline(always)]
    fn prefetch_next(&self) {
        let slot = self.free.last().copied().unwrap_or(self.high) as usize;
        if let Some(s) = self
            .chunks
            .get(slot / CHUNK)
            .and_then(|c| c.get(slot % CHUNK))
        {
            let start: *const u8 = (s as *const Option<T>).cast();
            // Every line the slot touches: it need not start on one.
            let size = std::mem::size_of::<Option<T>>();
            let mut at = 0;
            while at < size {
                prefetch_write(start.wrapping_add(at));
                at += 64;
            }
            prefetch_write(start.wrapping_add(size.saturating_sub(1)));
        }
    }

    /// Store `value` in a free slot and return its number.
    fn insert(&mut self, value: T) -> u32 {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.high += 1;
            self.high - 1
        });
        let (chunk, at) = (slot as usize / CHUNK, slot as usize % CHUNK);
        if chunk == self.chunks.len() {
            self.chunks.push((0..CHUNK).map(|_| None).collect());
        }
        self.chunks[chunk][at] = Some(value);
        self.live += 1;
        slot
    }

    /// Take the value out of `slot`, freeing it.
    fn remove(&mut self, slot: u32) -> Option<T> {
        let value = self.chunks.get_mut(slot as usize / CHUNK)?[slot as usize % CHUNK].take()?;
        self.free.push(slot);
        self.live -= 1;
        Some(value)
    }
}

/// An index entry: a slot number and which of the flow's tuples is meant.
type Entry = u32;

fn entry(slot: u32, dir: Direction) -> Entry {
    slot << 1 | (dir == Direction::Reply) as u32
}

#[inline(always)]
fn slot_of(e: Entry) -> u32 {
    e >> 1
}

#[inline(always)]
fn dir_of(e: Entry) -> Direction {
    if e & 1 == 0 {
        Direction::Original
    } else {
        Direction::Reply
    }
}

/// Where a flow lives: its shard and slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handle {
    shard: u32,
    slot: u32,
}

/// Whether flow id `a` was given before `b` (serial number arithmetic, RFC
/// 1982: ids wrap, and live flows span far less than 2^31 of them).
fn older(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// One shard: its flows and everything that finds them. Behind one lock.
#[derive(Debug)]
struct Shard<A: IpAddress> {
    /// Both tuples of this shard's flows, except REPLY tuples of another
    /// shard's spread (see `remote`).
    index: HashTable<Entry>,
    flows: Slab<Flow<A>>,
    /// REPLY tuples of this shard's spread whose flows live in another
    /// shard (MASQUERADE gave them another port). Empty as a rule.
    remote: HashMap<Tuple<A>, Handle, RandomState>,
    /// Where the sweep of this shard stands (see the module docs).
    sweep: Sweep,
    /// The slot where the next eviction's look at this shard begins.
    evict_from: u32,
    /// `(slot, id)` of flows in creation order, for eviction: the front is
    /// the oldest flow that may still be unreplied. Entries of flows that
    /// were answered or are gone are dropped lazily.
    unreplied: VecDeque<(u32, u32)>,
}

impl<A: IpAddress> Shard<A> {
    /// The tuple an index entry stands for.
    #[inline(always)]
    fn tuple(&self, e: Entry) -> Option<&Tuple<A>> {
        let flow = self.flows.get(slot_of(e))?;
        Some(match dir_of(e) {
            Direction::Original => &flow.original,
            Direction::Reply => &flow.reply,
        })
    }

    /// The index entry of tuple `t` (of either direction), hashed `hash`.
    #[inline(always)]
    fn find(&self, hash: u64, t: &Tuple<A>) -> Option<Entry> {
        self.index
            .find(hash, |&e| self.tuple(e) == Some(t))
            .copied()
    }

    /// Whether `t` is a tuple of any flow this shard indexes (either
    /// direction, or a remote REPLY tuple).
    fn holds(&self, hash: u64, t: &Tuple<A>) -> bool {
        self.find(hash, t).is_some() || (!self.remote.is_empty() && self.remote.contains_key(t))
    }

    /// The flow in `slot`, if it is the one with this id.
    fn is(&self, slot: u32, id: u32) -> Option<&Flow<A>> {
        self.flows.get(slot).filter(|f| f.id == id)
    }

    /// Remove the index entry `e` of tuple `t`.
    fn unindex(&mut self, hash: u64, e: Entry) {
        if let Ok(found) = self.index.find_entry(hash, |&x| x == e) {
            found.remove();
        }
    }

    /// Whether a queue entry stands for a live flow that is not ASSURED.
    fn unreplied_live(&self, &(slot, t): &(u32, u32)) -> bool {
        self.is(slot, t).is_some_and(|f| !f.assured)
    }

    /// Drop the queue entries at the front whose flows no longer need them
    /// (answered or gone), at most `budget`; return the front's flow id.
    fn prune_unreplied(&mut self, budget: usize) -> Option<u32> {
        for _ in 0..budget {
            let front = *self.unreplied.front()?;
            if self.unreplied_live(&front) {
                return self.flows.get(front.0).map(|f| f.id);
            }
            self.unreplied.pop_front();
        }
        None
    }

    /// Drop stale queue entries once they outnumber the live flows (plus
    /// `slack`), and give their memory back: the queue then stays within a
    /// constant factor of the live flows, however long those live. Linear
    /// in the entries, and done only after as many stale entries piled up:
    /// amortised O(1) per entry.
    fn compact(&mut self, slack: usize) {
        let bound = 2 * self.flows.live + slack;
        if self.unreplied.len() > bound {
            let mut queue = std::mem::take(&mut self.unreplied);
            queue.retain(|e| self.unreplied_live(e));
            queue.shrink_to_fit();
            self.unreplied = queue;
        }
    }
}

/// Where the sweep of one shard stands (see the module docs' Expiry).
#[derive(Debug)]
struct Sweep {
    /// The next slot to examine, while a sweep is under way.
    next: Option<u32>,
    /// No flow of the shard has an earlier deadline, once a sweep has
    /// ended: the earliest deadline that sweep kept, lowered by every
    /// insert and deadline moved earlier since (traffic moves deadlines
    /// only later, so it stays a lower bound). While a sweep is under way,
    /// the same for the flows it kept so far and those inserted or moved
    /// earlier meanwhile.
    earliest: Timestamp,
    /// When the last sweep began.
    began: Timestamp,
}

impl Sweep {
    const fn new() -> Self {
        Sweep {
            next: None,
            earliest: Timestamp::NEVER,
            began: Timestamp::ZERO,
        }
    }

    /// A flow of the shard now has `deadline`: inserted, or moved earlier.
    #[inline(always)]
    fn note(&mut self, deadline: Timestamp) {
        if deadline < self.earliest {
            self.earliest = deadline;
        }
    }

    /// When the shard, in a table of `flows` flows, is to be swept: now,
    /// if a sweep is under way; else when its earliest deadline comes, but
    /// not sooner than the gap the table's size asks after the last sweep
    /// began.
    fn due(&self, flows: usize) -> Timestamp {
        if self.next.is_some() {
            return self.began;
        }
        let flows = u32::try_from(flows).unwrap_or(u32::MAX);
        let gap = SWEEP_GAP_PER_FLOW.saturating_mul(flows).min(SWEEP_GAP_MAX);
        self.earliest.max(self.began + gap)
    }
}

/// The connection table. See the module docs for its structure and rules.
#[derive(Debug)]
pub struct ConnTable<A: IpAddress = Ipv4Addr> {
    shards: Box<[Padded<Locked<A>>]>,
    /// `shards.len() - 1` (a power of two, minus one).
    shard_mask: usize,
    /// The index's hash: foldhash, keyed.
    keys: RandomState,
    /// The limit, shared with the other family's table.
    limit: Arc<Limit>,
    /// Packets per direction of flows already removed.
    retired: [AtomicU64; 2],
}

/// How a thread waits for a [`ShardLock`] that another holds: a few spins
/// (a packet's hold lasts about 100 ns), then `sched_yield` (the holder
/// may be preempted, or walking a slab chunk), then it looks again.
#[derive(Debug)]
pub(crate) struct SpinThenYield;

impl RelaxStrategy for SpinThenYield {
    #[inline]
    fn relax() {
        for _ in 0..16 {
            std::hint::spin_loop();
        }
        std::thread::yield_now();
    }
}

/// Ask the CPU to start fetching the cache line at `p`, to be written
/// (`prefetchw` where the build targets a CPU that has it, `prefetcht0`
/// on the baseline x86-64 target). A hint: it changes no memory and never
/// faults, whatever the address; elsewhere than x86-64 it does nothing.
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only moves a cache line: it reads and writes no
    // memory the program sees and does not fault, even at an unmapped
    // address; the intrinsic needs SSE, which every x86-64 CPU has.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_ET0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A shard's lock (see the module docs' locking rules for why a spin lock).
type ShardLock<T> = SpinLock<T>;

/// A lock for short holds, as the shards' (see the module docs' locking
/// rules): one atomic compare-and-swap to take, a store to release; a
/// waiter spins briefly, then yields its CPU. The engine's admission lock
/// is one too.
pub(crate) type SpinLock<T> = SpinMutex<T, SpinThenYield>;

/// What holding a [`SpinLock`] gives.
pub(crate) type SpinGuard<'a, T> = SpinMutexGuard<'a, T>;

/// A value alone on its cache lines (two, for the adjacent-line
/// prefetcher): shards locked by different threads share none.
#[derive(Debug)]
#[repr(align(128))]
struct Padded<T>(T);

/// A shard behind its lock, with the count of tuples ever added to it and
/// of the flows it holds: both written only with the shard locked (a load
/// and a store: no atomic read-modify-write), read without the lock. On
/// the lock's cache line, so they cost a writer no miss.
#[derive(Debug)]
struct Locked<A: IpAddress> {
    shard: ShardLock<Shard<A>>,
    /// Incremented each time a tuple is added to the shard's index or its
    /// remote entries: while it has not moved, a tuple found absent from
    /// the shard is still absent (see [`Absent`]).
    added: AtomicU64,
    /// The flows whose home this shard is (its slab's live slots), for
    /// [`ConnTable::len`] to sum without taking the locks.
    live: AtomicUsize,
}

/// Proof that no flow had a tuple when [`ConnTable::find`] looked for it:
/// the count of tuples added to the tuple's shard, read under its lock.
/// While the count has not moved ([`ConnTable::still_absent`]), nothing
/// has added the tuple since, so an admitter need not look it up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Absent {
    shard: u32,
    added: u64,
}

/// What the tables of the two families share: one limit on the flows of
/// both (`--max-flows` counts connections, whatever their family). The
/// [`Admission`] that goes with it is its owner's to keep.
#[derive(Debug)]
pub struct Limit {
    max: AtomicUsize,
}

impl Limit {
    /// A limit of `max` flows.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Limit {
            max: AtomicUsize::new(max),
        })
    }
}

/// The right to admit NEW connections into the tables that share a
/// [`Limit`], and what only admitters write. Make one per limit and keep
/// it behind the lock that serializes admissions, *the admission lock*
/// (the engine's, which guards the configuration admitters use beside
/// it): a `&mut Admission` is then the proof, checked by the compiler,
/// that its holder is the one admitter of the moment, and
/// [`ConnTable::insert`] asks for it.
///
/// Holding it, an admitter checks that no flow has the tuple yet (a
/// duplicate SYN handled by another thread changes nothing), selects,
/// finds a free REPLY tuple, makes room and inserts: so the tables never
/// hold more than their limit, a refused SYN evicts nothing, and a REPLY
/// tuple found free is still free at the insert. No shard lock is held
/// while waiting for the admission lock.
///
/// Only admitters add flows, so what they count needs no atomic
/// read-modify-write: the lock orders them, and a load and a store do
/// (each such one costs about 7 ns on a NEW connection's path).
#[derive(Debug)]
pub struct Admission {
    /// The id the next inserted flow gets (see [`Flow::id`]).
    next_id: u32,
    /// Flows that may still be admitted before the tables' flows must be
    /// counted again: the limit, less the flows counted last time, less
    /// the admissions since. Removals only make more room, so the tables
    /// never hold more than the limit while this is above zero.
    room: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new()
    }
}

impl Admission {
    /// The admission of a new set of tables: no room counted yet, the
    /// first flow's id 1.
    pub fn new() -> Self {
        Admission {
            next_id: 1,
            room: 0,
        }
    }

    /// Take room for one more flow under `max`, calling `count` (the
    /// flows held by every table sharing the limit) only when the room
    /// counted last time is used up. Returns `false` if the tables are at
    /// or above `max`.
    pub fn take_room(&mut self, max: usize, count: impl FnOnce() -> usize) -> bool {
        if self.room == 0 {
            self.room = max.saturating_sub(count());
            if self.room == 0 {
                return false;
            }
        }
        self.room -= 1;
        true
    }

    /// Give back the room taken for a flow that was not inserted after all.
    pub fn give_back_room(&mut self) {
        self.room += 1;
    }

    /// Add one to `counter`, a counter only admitters write (while they
    /// hold the admission lock, which orders their writes): a load and a
    /// store. Readers load it as any relaxed counter.
    pub fn count(&mut self, counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

/// How many shards the table has: four per CPU, rounded up to a power of
/// two, at least 8 (dashmap's choice, which the table used before).
fn shard_amount() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (cpus * 4).next_power_of_two().max(8)
}

impl<A: IpAddress> ConnTable<A> {
    /// Create an empty table that holds at most `max` flows, its hash keys
    /// drawn at random (flow keys come from the network).
    pub fn new(max: usize) -> Self {
        Self::with_hash_seed(max, None)
    }

    /// Create an empty table; `seed` fixes the hash keys (for tests that
    /// must grow the same way every run), `None` draws them at random.
    pub fn with_hash_seed(max: usize, seed: Option<u64>) -> Self {
        Self::with_limit(Limit::new(max), seed)
    }

    /// Create an empty table held to `limit` with the other tables that
    /// share it (the other family's); `seed` as in [`ConnTable::with_hash_seed`].
    pub fn with_limit(limit: Arc<Limit>, seed: Option<u64>) -> Self {
        let keys = |salt: u64| match seed {
            Some(s) => RandomState::with_seed(s ^ salt, SharedSeed::global_fixed()),
            None => RandomState::random(),
        };
        let shards = (0..shard_amount())
            .map(|i| {
                Padded(Locked {
                    shard: ShardLock::new(Shard {
                        index: HashTable::new(),
                        flows: Slab::new(),
                        remote: HashMap::with_hasher(keys(0x0072_6570_6c69_6573 ^ i as u64)),
                        sweep: Sweep::new(),
                        evict_from: 0,
                        unreplied: VecDeque::new(),
                    }),
                    added: AtomicU64::new(0),
                    live: AtomicUsize::new(0),
                })
            })
            .collect::<Box<[_]>>();
        ConnTable {
            shard_mask: shards.len() - 1,
            shards,
            keys: keys(0),
            limit,
            retired: Default::default(),
        }
    }

    /// The shard of tuple `t`: its ports' [`spread`], as the fanout's thread.
    #[inline(always)]
    fn shard_of(&self, t: &Tuple<A>) -> usize {
        spread(t.src.port(), t.dst.port()) as usize & self.shard_mask
    }

    #[inline(always)]
    fn hash(&self, t: &Tuple<A>) -> u64 {
        self.keys.hash_one(t)
    }

    #[inline(always)]
    fn lock(&self, shard: usize) -> SpinMutexGuard<'_, Shard<A>> {
        self.shards[shard].0.shard.lock()
    }

    /// Return the limit this table shares.
    pub fn limit(&self) -> &Arc<Limit> {
        &self.limit
    }

    /// Return whether a flow has tuple `t`, as its ORIGINAL or its REPLY
    /// tuple (either way, a packet with this tuple belongs to that flow and
    /// cannot start another: [`ConnTable::insert`] would refuse it).
    pub fn contains(&self, t: &Tuple<A>) -> bool {
        self.absent(t).is_none()
    }

    /// Return proof that no flow has tuple `t` (of either direction, or as
    /// a remote REPLY tuple), or `None` when one has. Held with the
    /// admission lock, the proof lets `ConnTable::insert_proven` skip
    /// looking `t` up again.
    pub fn absent(&self, t: &Tuple<A>) -> Option<Absent> {
        let hash = self.hash(t);
        let at = self.shard_of(t);
        let shard = self.lock(at);
        (!shard.holds(hash, t)).then(|| Absent {
            shard: at as u32,
            added: self.shards[at].0.added.load(Ordering::Relaxed),
        })
    }

    /// Return the number of entries in the eviction queues (live and stale).
    pub fn queue_len(&self) -> usize {
        (0..self.shards.len())
            .map(|s| self.lock(s).unreplied.len())
            .sum()
    }

    /// Return the number of flows in this table: the shards' counts,
    /// summed without their locks (exact when no flow comes or goes
    /// meanwhile). Held with the admission lock, never below the truth:
    /// only admitters add flows.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.live.load(Ordering::Relaxed))
            .sum()
    }

    /// Return whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Return the configured limit.
    pub fn max(&self) -> usize {
        self.limit.max.load(Ordering::Relaxed)
    }

    /// Change the limit (a reload), holding the admission lock (the room
    /// counted under the old limit is forgotten). Flows above a lowered
    /// limit stay until they end; new ones wait for room.
    pub fn set_max(&self, admission: &mut Admission, max: usize) {
        self.limit.max.store(max, Ordering::Relaxed);
        admission.room = 0;
    }

    /// Run `f` on the flow a packet with tuple `t` belongs to, with the
    /// packet's direction; `None` when no flow has this tuple.
    ///
    /// The flow's shard stays locked while `f` runs and only then: `f` must
    /// not call the table (see the module's locking rules). What needs the
    /// table afterwards (removing the flow, replacing it) is for `f` to
    /// return and the caller to do.
    #[inline(always)]
    pub fn with_flow<R>(
        &self,
        t: &Tuple<A>,
        f: impl FnOnce(&mut Flow<A>, Direction) -> R,
    ) -> Option<R> {
        self.find(t, f).ok()
    }

    /// [`ConnTable::with_flow`], saying on a miss what the lookup proved:
    /// that no flow had the tuple as its shard stood then ([`Absent`]).
    #[inline(always)]
    pub fn find<R>(
        &self,
        t: &Tuple<A>,
        f: impl FnOnce(&mut Flow<A>, Direction) -> R,
    ) -> Result<R, Absent> {
        let hash = self.hash(t);
        let at = self.shard_of(t);
        let shard = self.lock(at);
        // What a miss proves: the count read under the shard's lock; or,
        // once the lock was let go before the miss, nothing.
        let absent = |proven: bool| Absent {
            shard: at as u32,
            added: if proven {
                self.shards[at].0.added.load(Ordering::Relaxed)
            } else {
                u64::MAX
            },
        };
        // The common case: the tuple is in its own shard's index, one probe
        // for either direction. `f` is called in one place only, so that it
        // is inlined here and its result stays in registers.
        let (mut shard, slot, dir) = match shard.find(hash, t) {
            Some(e) => (shard, slot_of(e), dir_of(e)),
            None => {
                // A REPLY tuple whose flow lives in another shard.
                let remote = if shard.remote.is_empty() {
                    None
                } else {
                    shard.remote.get(t).copied()
                };
                let Some(there) = remote else {
                    // Most likely a SYN: its flow will need a slot.
                    shard.flows.prefetch_next();
                    return Err(absent(true));
                };
                drop(shard);
                let home = self.lock(there.shard as usize);
                match home.flows.get(there.slot) {
                    Some(flow) if flow.reply == *t => (home, there.slot, Direction::Reply),
                    _ => return Err(absent(false)), // removed or replaced since
                }
            }
        };
        let shard = &mut *shard;
        let Some(flow) = shard.flows.get_mut(slot) else {
            return Err(absent(false));
        };
        let r = f(flow, dir);
        // `f` may have moved the deadline earlier (a state with a shorter
        // timeout): the sweep must not come later than it.
        shard.sweep.note(flow.deadline);
        Ok(r)
    }

    /// Return whether the tuple `absent` was missed for is still in no
    /// flow: nothing was added to its shard since. Call it holding the
    /// admission lock (only admitters add tuples), with an `absent` from
    /// a lookup made before taking it.
    pub fn still_absent(&self, absent: &Absent) -> bool {
        self.shards[absent.shard as usize]
            .0
            .added
            .load(Ordering::Acquire)
            == absent.added
    }

    /// Return whether no flow uses `reply` as a tuple, of either direction
    /// (as `nf_nat_used_tuple` checks the whole hash). Call it holding the
    /// admission lock: then the answer holds until the lock is released,
    /// as only admitters add tuples.
    pub fn is_reply_free(&self, reply: &Tuple<A>) -> bool {
        !self.contains(reply)
    }

    /// Whether `proof`, a miss of a tuple whose shard is `shard`, still
    /// holds: nothing was added to the shard since.
    fn proves(&self, proof: Option<Absent>, shard: usize) -> bool {
        proof.is_some_and(|a| a.shard as usize == shard && self.still_absent(&a))
    }

    /// Add one to the count of tuples added to `shard`. Call it holding
    /// the shard's lock: every writer does, so a load and a store do
    /// (no atomic read-modify-write); readers that do not hold it
    /// ([`ConnTable::still_absent`]) read with `Acquire`.
    fn count_added(&self, shard: usize) {
        let added = &self.shards[shard].0.added;
        added.store(added.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    /// Store `live`, the number of flows whose home is `shard`, for
    /// [`ConnTable::len`]. Call it holding the shard's lock.
    fn count_live(&self, shard: usize, live: usize) {
        self.shards[shard].0.live.store(live, Ordering::Relaxed);
    }

    /// Insert `flow`, whose REPLY tuple the caller found free, holding the
    /// admission lock (`admission`, which gives the flow its id). Returns
    /// `false` (and inserts nothing) if a flow with the same ORIGINAL tuple
    /// or the same REPLY tuple is in the table. The limit is the caller's
    /// to check ([`Admission::take_room`]).
    pub fn insert(&self, admission: &mut Admission, flow: Flow<A>) -> bool {
        self.insert_proven(admission, flow, None, None)
    }

    /// [`ConnTable::insert`], given what the admitter proved under the
    /// admission lock: `original_absent` a miss of the flow's ORIGINAL
    /// tuple, `reply_absent` of its REPLY tuple ([`ConnTable::absent`]). A proof that
    /// still holds (nothing added to the tuple's shard since) stands for
    /// the lookup that would check the tuple again; without one, or once
    /// it is stale, the tuple is looked up. Either way a tuple already in
    /// the table is never inserted twice, as long as each proof is of
    /// its own tuple: a proof does not name its tuple (it stays 16 bytes,
    /// on the established path's miss), hence crate-internal, for the
    /// engine's admission.
    pub(crate) fn insert_proven(
        &self,
        admission: &mut Admission,
        mut flow: Flow<A>,
        original_absent: Option<Absent>,
        reply_absent: Option<Absent>,
    ) -> bool {
        let (original, reply) = (flow.original, flow.reply);
        let (home, there) = (self.shard_of(&original), self.shard_of(&reply));
        let (oh, rh) = (self.hash(&original), self.hash(&reply));
        if original == reply
            || (there != home && !self.proves(reply_absent, there) && self.contains(&reply))
        {
            return false;
        }
        let slot = {
            let mut guard = self.lock(home);
            let shard = &mut *guard;
            let taken = |t, hash, proof| !self.proves(proof, home) && shard.holds(hash, t);
            if taken(&original, oh, original_absent)
                || (there == home && taken(&reply, rh, reply_absent))
            {
                return false;
            }
            let id = admission.next_id;
            admission.next_id = id.wrapping_add(1);
            flow.id = id;
            shard.sweep.note(flow.deadline);
            flow.backend.admit();
            let slot = shard.flows.insert(flow);
            self.count_live(home, shard.flows.live);
            let Shard {
                index,
                flows,
                unreplied,
                ..
            } = shard;
            let rehash = |e: &Entry| {
                let f = flows.get(slot_of(*e)).expect("indexed flows are live");
                self.hash(match dir_of(*e) {
                    Direction::Original => &f.original,
                    Direction::Reply => &f.reply,
                })
            };
            index.insert_unique(oh, entry(slot, Direction::Original), rehash);
            if there == home {
                index.insert_unique(rh, entry(slot, Direction::Reply), rehash);
            }
            unreplied.push_back((slot, id));
            self.count_added(home);
            slot
        };
        if there != home {
            let at = Handle {
                shard: home as u32,
                slot,
            };
            let mut shard = self.lock(there);
            shard.remote.insert(reply, at);
            self.count_added(there);
        }
        true
    }

    /// Remove the flow in `slot` of shard `home` if `pred` holds for it.
    /// Returns the removed flow.
    fn remove_at(
        &self,
        home: usize,
        slot: u32,
        pred: impl FnOnce(&Flow<A>) -> bool,
    ) -> Option<Flow<A>> {
        let flow = {
            let mut shard = self.lock(home);
            if !pred(shard.flows.get(slot)?) {
                return None;
            }
            self.take(&mut shard, home, slot)?
        };
        self.forget(home, slot, &flow);
        Some(flow)
    }

    /// Take the flow in `slot` out of `shard` (number `home`), with its
    /// index entries there; its remote entry, if any, is for
    /// [`ConnTable::forget`] to remove once the shard is unlocked.
    fn take(&self, shard: &mut Shard<A>, home: usize, slot: u32) -> Option<Flow<A>> {
        let flow = shard.flows.get(slot)?;
        let (oh, rh) = (self.hash(&flow.original), self.hash(&flow.reply));
        let local_reply = self.shard_of(&flow.reply) == home;
        shard.unindex(oh, entry(slot, Direction::Original));
        if local_reply {
            shard.unindex(rh, entry(slot, Direction::Reply));
        }
        let flow = shard.flows.remove(slot);
        self.count_live(home, shard.flows.live);
        flow
    }

    /// Finish removing a flow [`ConnTable::take`] took out of shard `home`:
    /// its remote entry, the counts, its counters.
    fn forget(&self, home: usize, slot: u32, flow: &Flow<A>) {
        let there = self.shard_of(&flow.reply);
        if there != home {
            let at = Handle {
                shard: home as u32,
                slot,
            };
            let mut shard = self.lock(there);
            if shard.remote.get(&flow.reply) == Some(&at) {
                shard.remote.remove(&flow.reply);
            }
        }
        self.retire(flow);
    }

    /// Remove the flow with this ORIGINAL tuple if `pred` holds for it.
    /// Returns the removed flow.
    pub fn remove_if(
        &self,
        original: &Tuple<A>,
        pred: impl FnOnce(&Flow<A>) -> bool,
    ) -> Option<Flow<A>> {
        let home = self.shard_of(original);
        let hash = self.hash(original);
        let (slot, flow) = {
            let mut shard = self.lock(home);
            let e = shard.find(hash, original)?;
            let slot = slot_of(e);
            if dir_of(e) != Direction::Original || !pred(shard.flows.get(slot)?) {
                return None;
            }
            (slot, self.take(&mut shard, home, slot)?)
        };
        self.forget(home, slot, &flow);
        Some(flow)
    }

    /// Sweep the shards that are due (see the module docs' Expiry): remove
    /// the flows whose deadline has passed, examining at most
    /// [`EXPIRE_BUDGET`] slots. `on_expire` sees each removed flow, with no
    /// lock held. Returns `true` when a sweep is left unfinished or a shard
    /// was left unswept for want of budget (call again).
    pub fn expire(&self, now: Timestamp, mut on_expire: impl FnMut(Flow<A>)) -> bool {
        let mut budget = EXPIRE_BUDGET;
        let mut more = false;
        let mut gone = Vec::new();
        let slack = COMPACT_SLACK / self.shards.len();
        for home in 0..self.shards.len() {
            {
                let mut guard = self.lock(home);
                let shard = &mut *guard;
                let due = shard.flows.live > 0 && now >= shard.sweep.due(self.len());
                if shard.sweep.next.is_none() && due {
                    shard.sweep = Sweep {
                        next: Some(0),
                        earliest: Timestamp::NEVER,
                        began: now,
                    };
                }
                if let Some(mut slot) = shard.sweep.next {
                    while slot < shard.flows.high && budget > 0 {
                        budget -= 1;
                        match shard.flows.get(slot) {
                            Some(f) if f.deadline <= now => {
                                gone.extend(self.take(shard, home, slot).map(|f| (slot, f)));
                            }
                            Some(f) => shard.sweep.note(f.deadline),
                            None => {}
                        }
                        slot += 1;
                    }
                    let unfinished = slot < shard.flows.high;
                    shard.sweep.next = unfinished.then_some(slot);
                    more |= unfinished;
                }
                shard.prune_unreplied(EXPIRE_BUDGET);
                shard.compact(slack);
            }
            for (slot, flow) in gone.drain(..) {
                self.forget(home, slot, &flow);
                on_expire(flow);
            }
            if budget == 0 {
                // The shards after this one wait for the next call.
                more |= self.next_expiry().is_some_and(|at| at <= now);
                break;
            }
        }
        more
    }

    /// Drop the stale entries of the eviction queues once they outnumber
    /// the live flows (plus [`COMPACT_SLACK`]) and give their memory back
    /// (see `Shard::compact`). [`ConnTable::expire`] does this on every
    /// call.
    pub fn compact(&self) {
        let slack = COMPACT_SLACK / self.shards.len();
        for s in 0..self.shards.len() {
            self.lock(s).compact(slack);
        }
    }

    /// Return when [`ConnTable::expire`] has work: the earliest time a
    /// shard is due for a sweep (see the module docs), if any flow exists.
    /// It may find nothing expired (traffic moved deadlines later): a
    /// harmless call, after which the time returned is exact again.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        (0..self.shards.len())
            .filter_map(|s| {
                let shard = self.lock(s);
                (shard.flows.live > 0).then(|| shard.sweep.due(self.len()))
            })
            .min()
    }

    /// Make room for one flow at time `now`: remove the oldest flow that is
    /// not ASSURED (never answered, or not yet established) or, failing
    /// that, the flow expiring soonest among the expired and closing flows
    /// of a few slots of each shard. Returns the evicted flow.
    ///
    /// The first choice is the smallest id at the fronts of the shards'
    /// creation-order queues: entries of flows answered since are dropped
    /// as they are met, so the search is amortised O(1) per shard (every
    /// flow enters a queue once) and finds an unanswered flow whenever one
    /// exists, however many established flows were created after it.
    ///
    /// The second looks at [`EVICT_SCAN`] slots of each shard, from where
    /// the last look at it ended (netfilter's `early_drop` samples a few
    /// buckets alike): an expired flow (not swept yet) has the earliest
    /// deadline of all, so it goes first; an established flow is never
    /// taken. A table of up to `EVICT_SCAN` slots a shard is searched
    /// whole.
    pub fn evict_one(&self, now: Timestamp) -> Option<Flow<A>> {
        loop {
            let mut oldest: Option<(u32, usize, u32)> = None;
            for s in 0..self.shards.len() {
                let mut shard = self.lock(s);
                if let Some(id) = shard.prune_unreplied(usize::MAX) {
                    let slot = shard.unreplied.front().expect("pruned to a live front").0;
                    if oldest.is_none_or(|(o, ..)| older(id, o)) {
                        oldest = Some((id, s, slot));
                    }
                }
            }
            let Some((id, home, slot)) = oldest else {
                break;
            };
            if let Some(victim) = self.remove_at(home, slot, |f| f.id == id && !f.assured) {
                return Some(victim);
            }
        }
        let takeable = |f: &Flow<A>| f.deadline <= now || f.state.is_closing();
        // (deadline, shard, slot, id) of the best candidate so far.
        let mut best: Option<(Timestamp, usize, u32, u32)> = None;
        for s in 0..self.shards.len() {
            let mut guard = self.lock(s);
            let shard = &mut *guard;
            let high = shard.flows.high;
            for _ in 0..EVICT_SCAN.min(high as usize) {
                let slot = shard.evict_from % high;
                shard.evict_from = slot + 1;
                let Some(f) = shard.flows.get(slot) else {
                    continue;
                };
                if takeable(f) && best.is_none_or(|(d, ..)| f.deadline < d) {
                    best = Some((f.deadline, s, slot, f.id));
                }
            }
        }
        let (_, home, slot, id) = best?;
        self.remove_at(home, slot, |f| f.id == id && takeable(f))
    }

    /// Fold a removed flow's counters into the totals: the packet path
    /// counts only in the flow itself, so it touches no shared counter.
    fn retire(&self, flow: &Flow<A>) {
        let b = &flow.backend;
        b.release();
        for d in 0..2 {
            self.retired[d].fetch_add(flow.packets[d], Ordering::Relaxed);
        }
        b.counters
            .packets
            .fetch_add(flow.packets[0] + flow.packets[1], Ordering::Relaxed);
        b.counters
            .bytes
            .fetch_add(flow.bytes[0] + flow.bytes[1], Ordering::Relaxed);
    }

    /// Return packets and bytes per direction of every flow ever tracked,
    /// and per backend (keyed by `Arc::as_ptr`) those of the live flows. Scans the
    /// table: for stats, not for the packet path.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for d in 0..2 {
            t.packets[d] = self.retired[d].load(Ordering::Relaxed);
        }
        self.for_each_flow(|f| {
            for d in 0..2 {
                t.packets[d] += f.packets[d];
            }
            let e = t
                .live_by_backend
                .entry(Arc::as_ptr(&f.backend) as usize)
                .or_default();
            e.0 += f.packets[0] + f.packets[1];
            e.1 += f.bytes[0] + f.bytes[1];
        });
        t
    }

    /// Copy every flow (for listings; not for the packet path).
    pub fn snapshot(&self) -> Vec<Flow<A>> {
        let mut all = Vec::with_capacity(self.len());
        self.for_each_flow(|f| all.push(f.clone()));
        all
    }

    /// Run `f` on every flow, one slab chunk per hold of a shard's lock
    /// (so a walk of a million flows never keeps a packet thread waiting
    /// for more than one chunk's work). Not a snapshot of one instant:
    /// flows added or removed during the walk may be seen or not, as in
    /// `conntrack -L`; a flow that stays is seen once (slots never move).
    fn for_each_flow(&self, mut f: impl FnMut(&Flow<A>)) {
        for s in 0..self.shards.len() {
            for c in 0.. {
                let shard = self.lock(s);
                let Some(chunk) = shard.flows.chunks.get(c) else {
                    break;
                };
                chunk.iter().flatten().for_each(&mut f);
            }
        }
    }
}

impl<A: IpAddress> Flow<A> {
    /// Return a copy with the tuples' addresses of either family: what
    /// listings of both families hold.
    pub fn widen(&self) -> Flow<IpAddr> {
        Flow {
            original: self.original.widen(),
            reply: self.reply.widen(),
            backend: self.backend.clone(),
            state: self.state,
            seen_reply: self.seen_reply,
            assured: self.assured,
            deadline: self.deadline,
            packets: self.packets,
            bytes: self.bytes,
            window: self.window,
            id: self.id,
            stray: self.stray,
            has_stray: self.has_stray,
        }
    }

    /// Build a fresh flow in state NONE; the engine moves it to SYN_SENT.
    pub fn new(
        original: Tuple<A>,
        reply: Tuple<A>,
        backend: Arc<Backend>,
        deadline: Timestamp,
    ) -> Self {
        Flow {
            original,
            reply,
            backend,
            state: TcpState::None,
            seen_reply: false,
            assured: false,
            deadline,
            packets: [0; 2],
            bytes: [0; 2],
            window: [Window::default(); 2],
            stray: 0,
            has_stray: false,
            id: 0,
        }
    }
}

impl<A> Flow<A> {
    /// When the flow expires unless more traffic arrives.
    pub fn deadline(&self) -> Timestamp {
        self.deadline
    }

    /// Set the deadline. A deadline moved earlier (a state with a shorter
    /// timeout) lowers the shard's next sweep once the closure that called
    /// this returns ([`ConnTable::with_flow`] looks); one moved later needs
    /// nothing (see the module docs' Expiry).
    pub fn set_deadline(&mut self, deadline: Timestamp) {
        self.deadline = deadline;
    }

    /// The acknowledgment number of a REPLY ACK that answered the SYN while
    /// the flow was in SYN_SENT (a backend's TIME_WAIT from an older
    /// connection on the same tuple): the client's RST to it carries this
    /// number as its sequence number, in a space tunlb never saw.
    pub fn stray_ack(&self) -> Option<u32> {
        self.has_stray.then_some(self.stray)
    }

    /// Set (or clear) what [`Flow::stray_ack`] returns.
    pub fn set_stray_ack(&mut self, ack: Option<u32>) {
        self.has_stray = ack.is_some();
        self.stray = ack.unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;

    fn backend() -> Arc<Backend> {
        Arc::new(Backend::new("198.18.2.3:80".parse().unwrap()))
    }

    const C: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    const V: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 3);
    const S: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);

    /// A flow from client port `cport` to the VIP, MASQUERADEd to `sport`.
    fn flow(cport: u16, sport: u16, deadline: u64) -> Flow {
        Flow::new(
            Tuple::new(C, cport, V, 80),
            Tuple::new(B, 80, S, sport),
            backend(),
            Timestamp::from_millis(deadline),
        )
    }

    #[test]
    fn an_entry_is_in_the_shard_its_ports_spread_it_to() {
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(4096, Some(7));
        let mut adm = Admission::new();
        let shards = shard_amount();
        assert!(shards >= 8 && shards.is_power_of_two());
        let mut hits = vec![0; shards];
        for port in 1024..3072u16 {
            let f = flow(port, port, 1000);
            let want = spread(port, 80) as usize % shards;
            assert_eq!(t.shard_of(&f.original), want);
            assert_eq!(t.shard_of(&f.reply), want);
            assert!(t.insert(&mut adm, f));
            let shard = t.lock(want);
            let (oh, rh) = (
                t.hash(&Tuple::new(C, port, V, 80)),
                t.hash(&Tuple::new(B, 80, S, port)),
            );
            assert_eq!(
                shard.find(oh, &Tuple::new(C, port, V, 80)).map(dir_of),
                Some(Direction::Original)
            );
            assert_eq!(
                shard.find(rh, &Tuple::new(B, 80, S, port)).map(dir_of),
                Some(Direction::Reply)
            );
            assert!(shard.remote.is_empty());
            hits[want] += 1;
        }
        // Every shard gets some of 2048 consecutive client ports.
        assert!(hits.iter().all(|&h| h > 2048 / shards / 2), "{hits:?}");
    }

    #[test]
    fn a_reply_tuple_of_another_shard_finds_its_flow_and_goes_with_it() {
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(16, Some(7));
        let mut adm = Admission::new();
        // A reallocated SNAT port whose spread names another shard.
        let sport = (20000..30000u16)
            .find(|&p| {
                spread(p, 80) as usize % shard_amount()
                    != spread(40000, 80) as usize % shard_amount()
            })
            .unwrap();
        let f = flow(40000, sport, 1000);
        let (original, reply) = (f.original, f.reply);
        assert_ne!(t.shard_of(&original), t.shard_of(&reply));
        assert!(t.is_reply_free(&reply));
        assert!(t.insert(&mut adm, f));
        assert!(!t.is_reply_free(&reply));
        assert!(
            !t.insert(&mut adm, flow(40001, sport, 1000)),
            "the REPLY tuple is taken"
        );
        assert_eq!(
            t.with_flow(&original, |f, d| (f.id, d)),
            Some((1, Direction::Original))
        );
        assert_eq!(
            t.with_flow(&reply, |f, d| (f.id, d)),
            Some((1, Direction::Reply))
        );
        assert_eq!(t.with_flow(&original.invert(), |_, d| d), None);
        let gone = t.remove_if(&original, |_| true).unwrap();
        assert_eq!(gone.reply, reply);
        assert!(t.is_reply_free(&reply));
        assert_eq!(t.with_flow(&reply, |_, d| d), None);
        assert!(t.lock(t.shard_of(&reply)).remote.is_empty());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_miss_stays_proven_until_a_tuple_is_added_to_its_shard() {
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(16, Some(7));
        let mut adm = Admission::new();
        let shards = shard_amount();
        let home = |p: u16| spread(p, 80) as usize % shards;
        let wanted = Tuple::new(C, 40000, V, 80);
        let absent = t.find(&wanted, |_, _| ()).unwrap_err();
        assert!(t.still_absent(&absent));
        // A flow in another shard proves nothing about this one.
        let elsewhere = (41000..50000u16).find(|&p| home(p) != home(40000)).unwrap();
        assert!(t.insert(&mut adm, flow(elsewhere, elsewhere, 1000)));
        assert!(t.still_absent(&absent));
        // Any flow added to the tuple's shard, the tuple's own among them,
        // ends the proof: the admitter must look again.
        let same = (41000..50000u16).find(|&p| home(p) == home(40000)).unwrap();
        assert!(t.insert(&mut adm, flow(same, same, 1000)));
        assert!(!t.still_absent(&absent));
        assert!(!t.contains(&wanted), "looked up again: still absent");
        let absent = t.find(&wanted, |_, _| ()).unwrap_err();
        assert!(t.insert(&mut adm, flow(40000, 40000, 1000)));
        assert!(!t.still_absent(&absent));
        assert!(t.contains(&wanted));
        // A remote REPLY tuple is added to its own shard, not its flow's.
        let sport = (20000..30000u16).find(|&p| home(p) != home(40001)).unwrap();
        let reply = Tuple::new(B, 80, S, sport);
        let absent = t.find(&reply, |_, _| ()).unwrap_err();
        assert!(t.insert(&mut adm, flow(40001, sport, 1000)));
        assert!(!t.still_absent(&absent));
        assert_eq!(t.find(&reply, |_, d| d), Ok(Direction::Reply));
    }

    #[test]
    fn a_reused_slot_does_not_revive_the_old_flows_timers() {
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(16, Some(7));
        let mut adm = Admission::new();
        assert!(t.insert(&mut adm, flow(40000, 40000, 1000)));
        assert!(t
            .remove_if(&Tuple::new(C, 40000, V, 80), |_| true)
            .is_some());
        // The same slot, a later deadline: the old entry (1000) is stale.
        assert!(t.insert(&mut adm, flow(40000, 40000, 5000)));
        let mut expired = 0;
        t.expire(Timestamp::from_millis(2000), |_| expired += 1);
        assert_eq!((expired, t.len()), (0, 1));
        t.expire(Timestamp::from_millis(5000), |_| expired += 1);
        assert_eq!((expired, t.len()), (1, 0));
    }

    #[test]
    fn a_shorter_deadline_set_under_the_lock_brings_the_sweep_forward() {
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(16, Some(7));
        let mut adm = Admission::new();
        assert!(t.insert(&mut adm, flow(40000, 40000, 100_000)));
        assert_eq!(t.next_expiry(), Some(Timestamp::from_millis(100_000)));
        let o = Tuple::new(C, 40000, V, 80);
        t.with_flow(&o, |f, _| f.set_deadline(Timestamp::from_millis(10)));
        assert_eq!(t.next_expiry(), Some(Timestamp::from_millis(10)));
        let mut expired = 0;
        t.expire(Timestamp::from_millis(10), |_| expired += 1);
        assert_eq!(expired, 1);
        assert_eq!(t.next_expiry(), None, "an empty table has nothing due");
    }

    #[test]
    fn a_sweep_removes_the_due_flows_and_learns_the_earliest_it_kept() {
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(16, Some(7));
        let mut adm = Admission::new();
        for (port, deadline) in [(40000, 3000), (40001, 1000), (40002, 2000)] {
            assert!(t.insert(&mut adm, flow(port, port, deadline)));
        }
        assert_eq!(t.next_expiry(), Some(Timestamp::from_millis(1000)));
        // Traffic moves the 2000 flow to 5000: nothing tells the table.
        let o = Tuple::new(C, 40002, V, 80);
        t.with_flow(&o, |f, _| f.set_deadline(Timestamp::from_millis(5000)));
        let mut expired = vec![];
        assert!(!t.expire(Timestamp::from_millis(1500), |f| expired
            .push(f.original.src.port())));
        assert_eq!(expired, [40001]);
        assert_eq!(t.next_expiry(), Some(Timestamp::from_millis(3000)));
        t.expire(Timestamp::from_millis(3000), |f| {
            expired.push(f.original.src.port())
        });
        assert_eq!(expired, [40001, 40000]);
        assert_eq!(t.next_expiry(), Some(Timestamp::from_millis(5000)));
    }

    #[test]
    fn room_under_the_limit_is_counted_again_only_once_used_up() {
        let mut a = Admission::new();
        let counts = std::cell::Cell::new(0);
        let held = |n: usize| {
            counts.set(counts.get() + 1);
            n
        };
        // One flow held: room for two, counted once.
        assert!(a.take_room(3, || held(1)));
        assert!(a.take_room(3, || held(99)));
        assert_eq!(counts.get(), 1);
        // Used up: counted again, and the tables are full.
        assert!(!a.take_room(3, || held(3)));
        assert_eq!(counts.get(), 2);
        // A flow ended since: room for one.
        assert!(a.take_room(3, || held(2)));
        // Room taken for a flow that was not inserted comes back, uncounted.
        a.give_back_room();
        assert!(a.take_room(3, || held(99)));
        assert_eq!(counts.get(), 3);
        // Above the limit (a lowered one), no room at all.
        assert!(!a.take_room(3, || held(5)));
    }

    #[test]
    fn the_flows_are_counted_per_shard_as_they_come_and_go() {
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(100, Some(7));
        let mut admission = Admission::new();
        for p in 0..40 {
            assert!(t.insert(&mut admission, flow(40000 + p, 40000 + p, 1000)));
        }
        assert_eq!(t.len(), 40);
        let live: usize = t.shards.iter().map(|s| s.0.shard.lock().flows.live).sum();
        assert_eq!(live, 40);
        for p in 0..15 {
            let original = flow(40000 + p, 40000 + p, 1000).original;
            assert!(t.remove_if(&original, |_| true).is_some());
        }
        assert_eq!(t.len(), 25);
        // Every shard's count is its slab's.
        for s in t.shards.iter() {
            assert_eq!(
                s.0.live.load(Ordering::Relaxed),
                s.0.shard.lock().flows.live
            );
        }
    }

    #[test]
    fn a_proven_insert_skips_the_lookup_only_while_its_proof_holds() {
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(10, Some(5));
        let mut adm = Admission::new();
        let a = flow(40000, 40000, 1000);
        let (o, r) = (t.absent(&a.original), t.absent(&a.reply));
        assert!(o.is_some() && r.is_some());
        assert!(t.insert_proven(&mut adm, a.clone(), o, r));
        // The insert added both tuples: the proofs are stale, so a second
        // flow with the same tuples is looked up and refused.
        assert!(!t.insert_proven(&mut adm, a.clone(), o, r));
        assert!(t.absent(&a.original).is_none() && t.absent(&a.reply).is_none());
        // A proof of another shard's tuple never stands for this one.
        let b = flow(40001, 40001, 1000);
        let other = (0..2000u16)
            .map(|p| Tuple::new(C, 1 + p, V, 80))
            .find(|x| t.shard_of(x) != t.shard_of(&a.original))
            .and_then(|x| t.absent(&x));
        let mut dup = b.clone();
        dup.original = a.original;
        assert!(!t.insert_proven(&mut adm, dup, other, t.absent(&b.reply)));
        assert!(t.insert_proven(
            &mut adm,
            b.clone(),
            t.absent(&b.original),
            t.absent(&b.reply)
        ));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_listing_and_the_totals_see_every_flow_once_across_chunks() {
        // More flows than one slab chunk holds, in every shard, so the
        // walk takes each shard's lock several times.
        let n = 2 * CHUNK * shard_amount() + 7;
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(n, Some(3));
        let mut adm = Admission::new();
        for i in 0..n as u16 {
            let mut f = flow(10000 + i, 10000 + i, 1000);
            f.packets = [u64::from(i), 1];
            assert!(t.insert(&mut adm, f));
        }
        let mut ports: Vec<u16> = t.snapshot().iter().map(|f| f.original.src.port()).collect();
        ports.sort_unstable();
        assert_eq!(ports, (10000..10000 + n as u16).collect::<Vec<_>>());
        let sum: u64 = (0..n as u64).sum();
        assert_eq!(t.totals().packets, [sum, n as u64]);
    }

    #[test]
    fn a_sweep_does_bounded_work_and_says_when_it_is_unfinished() {
        let n = 3 * EXPIRE_BUDGET;
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(n, Some(7));
        let mut adm = Admission::new();
        for i in 0..n as u16 {
            assert!(t.insert(&mut adm, flow(40000 + i, 40000 + i, 1000)));
        }
        let (mut calls, mut expired) = (1, 0);
        let now = Timestamp::from_millis(1000);
        while t.expire(now, |_| expired += 1) {
            calls += 1;
            assert!(calls <= n, "the sweep never ends");
        }
        assert_eq!((expired, t.len()), (n, 0));
        assert!(calls >= 3, "{calls} calls for {n} slots");
    }

    #[test]
    fn sweeps_of_a_large_table_are_spaced_by_its_size_up_to_a_second() {
        let began = Timestamp::from_secs(5);
        let mut sweep = Sweep::new();
        sweep.began = began;
        sweep.note(began + Duration::from_millis(1));
        // A few flows: swept as soon as the earliest is due.
        assert_eq!(sweep.due(10), began + Duration::from_millis(1));
        // 1000 flows: 8 ms after the last sweep began.
        assert_eq!(sweep.due(1000), began + Duration::from_millis(8));
        // A million: a second, however much is due.
        assert_eq!(sweep.due(1_000_000), began + SWEEP_GAP_MAX);
        // A sweep under way is due now.
        sweep.next = Some(17);
        assert_eq!(sweep.due(1_000_000), began);
    }

    #[test]
    fn a_full_table_evicts_an_expired_flow_first_and_never_an_established_one() {
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(16, Some(7));
        let mut adm = Admission::new();
        for (port, deadline) in [(40000, 9000), (40001, 5000), (40002, 7000)] {
            assert!(t.insert(&mut adm, flow(port, port, deadline)));
            let o = Tuple::new(C, port, V, 80);
            t.with_flow(&o, |f, _| {
                f.assured = true;
                f.state = TcpState::Established;
            });
        }
        let o = Tuple::new(C, 40000, V, 80);
        t.with_flow(&o, |f, _| f.state = TcpState::FinWait);
        // Not expired: only the closing flow may go.
        let now = Timestamp::from_millis(1000);
        assert_eq!(t.evict_one(now).map(|f| f.original.src.port()), Some(40000));
        // Past 5000: the expired flow, established or not.
        let now = Timestamp::from_millis(6000);
        assert_eq!(t.evict_one(now).map(|f| f.original.src.port()), Some(40001));
        assert!(t.evict_one(now).is_none(), "7000 is established and alive");
    }

    #[test]
    fn ids_compare_as_serial_numbers() {
        assert!(older(1, 2) && !older(2, 1) && !older(5, 5));
        assert!(older(u32::MAX, 0), "0 came after the wrap");
    }

    #[test]
    fn the_oldest_unanswered_flow_is_evicted_whatever_its_shard() {
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(64, Some(7));
        let mut adm = Admission::new();
        let ports: Vec<u16> = (50000..50032).rev().collect();
        for &p in &ports {
            assert!(t.insert(&mut adm, flow(p, p, 1000)));
        }
        // Answer the first two: the third inserted is the oldest unreplied.
        for &p in &ports[..2] {
            t.with_flow(&Tuple::new(C, p, V, 80), |f, _| f.assured = true);
        }
        let victim = t.evict_one(Timestamp::ZERO).unwrap();
        assert_eq!(victim.original.src.port(), ports[2]);
        assert_eq!(t.len(), ports.len() - 1);
    }
}
