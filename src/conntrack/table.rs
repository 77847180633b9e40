//! The flow table: every tracked flow, findable in O(1) by either tuple.
//!
//! Two `dashmap`s, shared by every packet thread:
//! - `flows`: ORIGINAL tuple -> [`Flow`] (the whole entry, `nf_conn`);
//! - `replies`: REPLY tuple -> ORIGINAL tuple (the second hash entry conntrack
//!   keeps for the reply direction).
//!
//! A packet of the ORIGINAL direction costs one lookup, a REPLY one two. The
//! REPLY map is also the uniqueness check of MASQUERADE port allocation: a
//! reply tuple is *claimed* by inserting it (see [`super::ports`]).
//!
//! Each map is split in shards, each with its own lock. An entry's shard is
//! chosen by its ports' [`spread`], the value the packet datapath's fanout
//! picks a packet's thread by: each thread takes the locks of its own
//! shards only (see `ShardByPorts`).
//!
//! # Locking rules
//! - A flow is reached only through [`ConnTable::with_flow`], which runs a
//!   closure on it while its shard is locked and releases the lock when the
//!   closure returns: no guard leaves the table, so none can be held by
//!   mistake across a later call. The closure does the per-packet work on
//!   the flow and returns a small value saying what comes next (forward,
//!   remove the flow, admit a new connection in its place); the caller does
//!   that after `with_flow` has returned, with the lock released.
//! - Inside that closure the only table method allowed is
//!   [`ConnTable::set_deadline`] (it takes the heap's leaf lock only): any
//!   other call may touch a map, and dashmap deadlocks on a second guard in
//!   the same thread, even on another shard.
//! - Within this module, no dashmap guard is held across a call on the same
//!   map, nor across a call on the other map: every function here releases
//!   one map's guard before touching the other.
//! - The mutexes of the expiry heap and of the eviction queue are leaves:
//!   while one is held, no map and no other lock is touched. The packet path
//!   may take them while holding a `flows` guard.
//!
//! # Expiry
//! Each flow has a `deadline` (last packet + the timeout of its state). The
//! heap holds `(time, original tuple)` entries; a flow's *live* entry is the
//! one whose time equals its `queued` field, all others are stale and skipped.
//! Traffic only pushes the deadline later, which needs no heap work: when the
//! live entry comes due, [`ConnTable::expire`] either removes the flow or
//! re-queues it at its current deadline. Only a state change that *shortens*
//! the deadline (ESTABLISHED -> FIN_WAIT) pushes a new entry. Each call does
//! bounded work, so neither the packet path nor the expiry tick ever stalls.
//!
//! # Eviction
//! When the table is full, a NEW connection takes the place of the oldest
//! flow that is not ASSURED (found in a creation-order queue whose stale
//! entries are dropped as they are met), else of a closing flow among those
//! expiring soonest; otherwise the SYN is refused (`table_full`).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
// Keyed with a per-process random seed: flow keys come from the network
// (a fixed seed only where a test asks for one, see [`ConnTable::with_hash_seed`]).
use foldhash::fast::{FoldHasher, SeedableRandomState as RandomState};
use foldhash::SharedSeed;

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
    /// When the flow expires unless more traffic arrives.
    pub deadline: Timestamp,
    /// Time of this flow's live expiry-heap entry (see the module docs).
    pub(crate) queued: Timestamp,
    /// Packets seen, per direction.
    pub packets: [u64; 2],
    /// IP bytes seen, per direction.
    pub bytes: [u64; 2],
    /// Sequence state per direction (`tcp_in_window`).
    pub window: [Window; 2],
    /// A number unique to this flow in its table, given at insertion: tells
    /// a flow from a later one on the same tuple (eviction-queue entries).
    pub id: u64,
    /// The acknowledgment number of a REPLY ACK that answered the SYN while
    /// the flow was in SYN_SENT (a backend's TIME_WAIT from an older
    /// connection on the same tuple): the client's RST to it carries this
    /// number as its sequence number, in a space tunlb never saw.
    pub stray_ack: Option<u32>,
}

/// Traffic totals read off the table (see [`ConnTable::totals`]).
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Packets per direction, all flows ever.
    pub packets: [u64; 2],
    /// Live flows' (packets, bytes) per backend, keyed by `Arc::as_ptr` as usize.
    pub live_by_backend: HashMap<usize, (u64, u64)>,
}

/// How many heap entries one call of [`ConnTable::expire`] examines.
pub const EXPIRE_BUDGET: usize = 256;
/// How many of the soonest-expiring flows a full table looks at for a victim.
pub const EVICT_CANDIDATES: usize = 8;
/// How many heap entries one eviction examines at most to find its candidates.
pub const EVICT_SCAN: usize = 64;

/// The expiry heap: `(time, ORIGINAL tuple)`, soonest first (see the module docs).
type ExpiryHeap<A> = BinaryHeap<Reverse<(Timestamp, Tuple<A>)>>;

/// How many shards each map has: dashmap's own choice (four per CPU,
/// rounded up to a power of two), at least 8.
fn shard_amount() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (cpus * 4).next_power_of_two().max(8)
}

/// The maps' hashers: foldhash, keyed at random, except for the bits that
/// dashmap reads the shard from (those right under the top 7, which
/// hashbrown keeps for its tags), which hold the tuple's [`spread`]. An
/// entry's shard is then `spread % shards`, where the packet datapath's
/// fanout sends its packets to thread `spread % threads`: each thread locks
/// shards of its own, and their cache lines stay on its core (two threads
/// sharing every shard lock moved them between the cores on every packet).
/// A flow's two entries are in the same shard when MASQUERADE kept the
/// client's port. Only the shard is chosen by the ports: the bucket within
/// it and the tag come from the keyed hash, so crafted ports can crowd a
/// shard but not collide within it.
#[derive(Debug, Clone)]
struct ShardByPorts {
    keys: RandomState,
    /// log2 of the shard count.
    shard_bits: u32,
}

impl std::hash::BuildHasher for ShardByPorts {
    type Hasher = PortsHasher;

    #[inline(always)]
    fn build_hasher(&self) -> PortsHasher {
        PortsHasher {
            inner: self.keys.build_hasher(),
            ports: 0,
            shard_bits: self.shard_bits,
        }
    }
}

/// The hasher of [`ShardByPorts`]. A [`Tuple`] hashes its addresses, then
/// its ports as one `u32` (source port high): the last `write_u32` is kept.
struct PortsHasher {
    inner: FoldHasher<'static>,
    ports: u32,
    shard_bits: u32,
}

impl std::hash::Hasher for PortsHasher {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        self.inner.write(bytes);
    }

    #[inline(always)]
    fn write_u32(&mut self, i: u32) {
        self.ports = i;
        self.inner.write_u32(i);
    }

    #[inline(always)]
    fn write_u64(&mut self, i: u64) {
        self.inner.write_u64(i);
    }

    #[inline(always)]
    fn write_u128(&mut self, i: u128) {
        self.inner.write_u128(i);
    }

    #[inline(always)]
    fn finish(&self) -> u64 {
        // dashmap's shard: `(hash << 7) >> (64 - shard_bits)`.
        let at = 57 - self.shard_bits;
        let mask = ((1u64 << self.shard_bits) - 1) << at;
        let shard = u64::from(spread((self.ports >> 16) as u16, self.ports as u16)) << at;
        (self.inner.finish() & !mask) | (shard & mask)
    }
}

/// The connection table. See the module docs for its structure and rules.
#[derive(Debug)]
pub struct ConnTable<A: IpAddress = Ipv4Addr> {
    flows: DashMap<Tuple<A>, Flow<A>, ShardByPorts>,
    replies: DashMap<Tuple<A>, Tuple<A>, ShardByPorts>,
    /// Flows in this table.
    count: AtomicUsize,
    /// The limit, shared with the other family's table.
    limit: Arc<Limit>,
    /// Packets per direction of flows already removed.
    retired: [AtomicU64; 2],
    /// ORIGINAL tuples of flows in creation order, for eviction: the front
    /// is the oldest flow that may still be unreplied. Entries of flows that
    /// were answered or are gone are dropped lazily (a leaf lock, like the heap).
    unreplied: Mutex<VecDeque<(u64, Tuple<A>)>>,
    /// The id the next inserted flow gets (see [`Flow::id`]).
    next_id: AtomicU64,
    heap: Mutex<ExpiryHeap<A>>,
}

/// What the tables of the two families share: one limit on the flows of
/// both (`--max-flows` counts connections, whatever their family), the
/// count held against it, and the lock that admits NEW connections.
#[derive(Debug)]
pub struct Limit {
    count: AtomicUsize,
    max: AtomicUsize,
    /// Held while a NEW connection is admitted (see [`ConnTable::admission`]).
    admission: Mutex<()>,
}

impl Limit {
    /// A limit of `max` flows, none counted yet.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Limit {
            count: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            admission: Mutex::new(()),
        })
    }
}

/// Stale entries the expiry heap and the eviction queue may hold beyond
/// one per live flow before they are compacted.
pub const COMPACT_SLACK: usize = 1024;

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
        let shards = shard_amount();
        let hasher = |salt: u64| ShardByPorts {
            keys: match seed {
                Some(s) => RandomState::with_seed(s ^ salt, SharedSeed::global_fixed()),
                None => RandomState::random(),
            },
            shard_bits: shards.trailing_zeros(),
        };
        ConnTable {
            flows: DashMap::with_hasher_and_shard_amount(hasher(0), shards),
            replies: DashMap::with_hasher_and_shard_amount(hasher(0x0072_6570_6c69_6573), shards),
            count: AtomicUsize::new(0),
            limit,
            retired: Default::default(),
            unreplied: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
            heap: Mutex::new(BinaryHeap::new()),
        }
    }

    /// Serialize the admission of NEW connections.
    ///
    /// Holding the guard, an admitter checks that no flow has the tuple yet
    /// (a duplicate SYN handled by another thread changes nothing), selects,
    /// claims a port, makes room and inserts: so the table never holds more
    /// than [`ConnTable::max`] flows, and a refused SYN evicts nothing. Only
    /// admitters take it; no map guard is held while waiting for it. The
    /// lock is the [`Limit`]'s: one for the tables that share it.
    pub fn admission(&self) -> MutexGuard<'_, ()> {
        self.limit
            .admission
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Return the limit this table shares.
    pub fn limit(&self) -> &Arc<Limit> {
        &self.limit
    }

    /// Return whether a flow has this ORIGINAL tuple.
    pub fn contains(&self, original: &Tuple<A>) -> bool {
        self.flows.contains_key(original)
    }

    /// Return the number of entries in the expiry heap (live and stale).
    pub fn heap_len(&self) -> usize {
        self.heap.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Return the number of entries in the eviction queue (live and stale).
    pub fn queue_len(&self) -> usize {
        self.unreplied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Return the number of flows in this table.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Return the number of flows held against the limit: this table's and
    /// those of the tables sharing its [`Limit`].
    pub fn total(&self) -> usize {
        self.limit.count.load(Ordering::Relaxed)
    }

    /// Return whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Return the configured limit.
    pub fn max(&self) -> usize {
        self.limit.max.load(Ordering::Relaxed)
    }

    /// Change the limit (a reload). Flows above a lowered limit stay until
    /// they end; new ones wait for room.
    pub fn set_max(&self, max: usize) {
        self.limit.max.store(max, Ordering::Relaxed);
    }

    /// Run `f` on the flow a packet with tuple `t` belongs to, with the
    /// packet's direction; `None` when no flow has this tuple.
    ///
    /// The flow's shard stays locked while `f` runs and only then: `f` must
    /// not call the table, but [`ConnTable::set_deadline`] (see the module's
    /// locking rules). What needs the table afterwards (removing the flow,
    /// replacing it) is for `f` to return and the caller to do.
    ///
    /// `original_first` says which map to try first: the caller knows whether
    /// the destination is a service address (likely ORIGINAL) or not.
    #[inline(always)]
    pub fn with_flow<R>(
        &self,
        t: &Tuple<A>,
        original_first: bool,
        f: impl FnOnce(&mut Flow<A>, Direction) -> R,
    ) -> Option<R> {
        // One lookup in `flows` and one call of `f`, each in one place, so
        // that `f` is inlined here (its result then stays in registers) and
        // the guard is used where `get_mut` wrote it: moving either made
        // the compiler copy it through memory with wider loads than the
        // stores that wrote it, a store-forwarding stall per packet.
        // `t` is only borrowed: a copy of it, read whole right after the
        // parser wrote it field by field, stalled too.
        let mut original = if original_first {
            None
        } else {
            self.reply_of(t)
        };
        loop {
            let (key, dir) = match &original {
                Some(o) => (o, Direction::Reply),
                None => (t, Direction::Original),
            };
            if let Some(mut flow) = self.flows.get_mut(key) {
                // A flow found by its REPLY tuple may have been replaced
                // between the two lookups.
                if dir == Direction::Original || flow.reply == *t {
                    return Some(f(&mut flow, dir));
                }
            }
            // Then the other direction, if it was not tried yet.
            match dir {
                Direction::Original if original_first => original = Some(self.reply_of(t)?),
                Direction::Reply if !original_first => original = None,
                _ => return None,
            }
        }
    }

    /// The ORIGINAL tuple of the flow whose REPLY tuple is `t`, if any.
    #[inline]
    fn reply_of(&self, t: &Tuple<A>) -> Option<Tuple<A>> {
        self.replies.get(t).map(|r| *r)
    }

    /// Claim `reply` for the flow `original`: succeeds only if no flow uses
    /// this reply tuple. A claim is undone by [`ConnTable::release`] or made
    /// permanent by [`ConnTable::insert`].
    pub fn claim_reply(&self, reply: Tuple<A>, original: Tuple<A>) -> bool {
        match self.replies.entry(reply) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(original);
                true
            }
        }
    }

    /// Undo a claim made by [`ConnTable::claim_reply`].
    pub fn release(&self, reply: &Tuple<A>, original: &Tuple<A>) {
        self.replies.remove_if(reply, |_, o| o == original);
    }

    /// Return whether the tables sharing the limit are at it.
    pub fn is_full(&self) -> bool {
        self.total() >= self.max()
    }

    /// Insert `flow`, whose reply tuple the caller has claimed. Returns
    /// `false` (and inserts nothing) if a flow with the same ORIGINAL tuple
    /// appeared meanwhile, i.e. another thread handled the same SYN.
    pub fn insert(&self, mut flow: Flow<A>) -> bool {
        let original = flow.original;
        let deadline = flow.deadline;
        flow.queued = deadline;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        flow.id = id;
        match self.flows.entry(original) {
            Entry::Occupied(_) => return false,
            Entry::Vacant(v) => {
                flow.backend.add_active(1);
                v.insert(flow);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.limit.count.fetch_add(1, Ordering::Relaxed);
        self.queue(deadline, original);
        self.unreplied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((id, original));
        true
    }

    /// Pop the front of the creation-order queue.
    fn pop_unreplied(&self) -> Option<(u64, Tuple<A>)> {
        self.unreplied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Return whether an eviction-queue entry stands for a live flow that
    /// is not ASSURED: the flow with this tuple is the one that was queued
    /// (same id: not a later flow on a reused tuple) and was never answered.
    fn unreplied_entry_live(&self, (id, original): (u64, Tuple<A>)) -> bool {
        self.flows
            .get(&original)
            .is_some_and(|f| f.id == id && !f.assured)
    }

    /// Drop queue entries at the front whose flows no longer need them
    /// (answered or gone), at most `budget`. Keeps the queue as short as the
    /// run of recent unanswered flows when the table never fills.
    fn prune_unreplied(&self, budget: usize) {
        for _ in 0..budget {
            let Some(front) = self
                .unreplied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .front()
                .copied()
            else {
                return;
            };
            if self.unreplied_entry_live(front) {
                return;
            }
            let mut q = self.unreplied.lock().unwrap_or_else(|e| e.into_inner());
            if q.front() == Some(&front) {
                q.pop_front();
            }
        }
    }

    /// Push an expiry-heap entry. The flow's `queued` must be set to `at`.
    pub(crate) fn queue(&self, at: Timestamp, original: Tuple<A>) {
        self.heap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Reverse((at, original)));
    }

    /// Set `flow`'s deadline, queueing a new heap entry when it moved
    /// earlier than the live one (a state with a shorter timeout). Takes
    /// only the heap's leaf lock: callable inside [`ConnTable::with_flow`].
    pub fn set_deadline(&self, flow: &mut Flow<A>, deadline: Timestamp) {
        flow.deadline = deadline;
        if deadline < flow.queued {
            flow.queued = deadline;
            self.queue(deadline, flow.original);
        }
    }

    /// Remove the flow with this ORIGINAL tuple if `pred` holds for it.
    /// Returns the removed flow.
    pub fn remove_if(
        &self,
        original: &Tuple<A>,
        pred: impl FnOnce(&Flow<A>) -> bool,
    ) -> Option<Flow<A>> {
        let (_, flow) = self.flows.remove_if(original, |_, f| pred(f))?;
        self.replies.remove_if(&flow.reply, |_, o| o == original);
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.limit.count.fetch_sub(1, Ordering::Relaxed);
        self.retire(&flow);
        Some(flow)
    }

    /// Pop up to `n` heap entries due at or before `before`, without holding
    /// the heap lock afterwards.
    fn pop_due(&self, before: Option<Timestamp>, out: &mut [(Timestamp, Tuple<A>)]) -> usize {
        let mut heap = self.heap.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        while n < out.len() {
            match heap.peek() {
                Some(Reverse((at, _))) if before.is_none_or(|b| *at <= b) => {
                    let Reverse(entry) = heap.pop().expect("peeked");
                    out[n] = entry;
                    n += 1;
                }
                _ => break,
            }
        }
        n
    }

    /// Remove flows whose deadline has passed, examining at most
    /// [`EXPIRE_BUDGET`] heap entries. `on_expire` sees each removed flow.
    /// Returns `true` when more entries are due (call again).
    pub fn expire(&self, now: Timestamp, mut on_expire: impl FnMut(Flow<A>)) -> bool {
        let mut due = [(
            Timestamp::ZERO,
            Tuple::new(A::UNSPECIFIED, 0, A::UNSPECIFIED, 0),
        ); EXPIRE_BUDGET];
        let n = self.pop_due(Some(now), &mut due);
        for &(at, original) in &due[..n] {
            if let Some(flow) = self.remove_if(&original, |f| f.queued == at && f.deadline <= now) {
                on_expire(flow);
                continue;
            }
            // Still alive: re-queue at its real deadline if this was its live entry.
            if let Some(mut f) = self.flows.get_mut(&original) {
                if f.queued == at {
                    f.queued = f.deadline;
                    let d = f.deadline;
                    drop(f);
                    self.queue(d, original);
                }
            }
        }
        self.prune_unreplied(EXPIRE_BUDGET);
        self.compact();
        n == EXPIRE_BUDGET
    }

    /// Drop the stale entries of the expiry heap and the eviction queue once
    /// they outnumber the live flows (plus [`COMPACT_SLACK`]), and give their
    /// memory back: both then stay within a constant factor of the live
    /// flows, however long those live and however their deadlines moved.
    ///
    /// Each structure is taken out whole under its lock, filtered with no
    /// lock held (a map lookup per entry), and put back merged with whatever
    /// was added meanwhile. The work is linear in the entries, and it happens
    /// only after as many stale entries piled up: amortised O(1) per entry.
    pub fn compact(&self) {
        let bound = 2 * self.len() + COMPACT_SLACK;
        let lock_heap = || self.heap.lock().unwrap_or_else(|e| e.into_inner());
        if lock_heap().len() > bound {
            let taken = std::mem::take(&mut *lock_heap()).into_vec();
            let mut kept: Vec<_> = taken
                .into_iter()
                .filter(|Reverse((at, t))| self.flows.get(t).is_some_and(|f| f.queued == *at))
                .collect();
            let mut heap = lock_heap();
            kept.extend(std::mem::take(&mut *heap).into_vec());
            kept.shrink_to_fit();
            *heap = BinaryHeap::from(kept);
        }
        let lock_queue = || self.unreplied.lock().unwrap_or_else(|e| e.into_inner());
        if lock_queue().len() > bound {
            let taken = std::mem::take(&mut *lock_queue());
            let mut kept: VecDeque<(u64, Tuple<A>)> = taken
                .into_iter()
                .filter(|&e| self.unreplied_entry_live(e))
                .collect();
            let mut queue = lock_queue();
            // Entries added meanwhile are younger: they go after the kept ones.
            kept.extend(std::mem::take(&mut *queue));
            kept.shrink_to_fit();
            *queue = kept;
        }
    }

    /// Return when the earliest heap entry is due. It may be stale (the flow
    /// lived on); an early [`ConnTable::expire`] call is a harmless no-op.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        let heap = self.heap.lock().unwrap_or_else(|e| e.into_inner());
        heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Make room for one flow: remove the oldest flow that is not ASSURED
    /// (never answered, or not yet established) or, failing that, one of the
    /// [`EVICT_CANDIDATES`] soonest-expiring flows that is closing. Returns
    /// the evicted flow.
    ///
    /// The first choice comes from the creation-order queue: entries of
    /// flows answered since are dropped as they are met, so the search is
    /// amortised O(1) (every flow enters the queue once) and finds an
    /// unanswered flow whenever one exists, however many established flows
    /// were created after it.
    ///
    /// The second searches the expiry heap.
    /// A heap entry earlier than its flow's deadline (traffic moved the
    /// deadline later without heap work, as for every flow that went from
    /// SYN_RECV to ESTABLISHED) does not say when the flow expires: it is
    /// re-filed at the real deadline, as [`ConnTable::expire`] would, and the
    /// search goes on, examining at most [`EVICT_SCAN`] entries. Otherwise a
    /// few recently established flows at the front of the heap hide every
    /// unreplied SYN behind them and the new SYN is refused as "table full".
    pub fn evict_one(&self) -> Option<Flow<A>> {
        while let Some((id, original)) = self.pop_unreplied() {
            if let Some(victim) = self.remove_if(&original, |f| f.id == id && !f.assured) {
                return Some(victim);
            }
        }
        let mut cands = [(
            Timestamp::ZERO,
            Tuple::new(A::UNSPECIFIED, 0, A::UNSPECIFIED, 0),
        ); EVICT_CANDIDATES];
        let mut n = 0;
        for _ in 0..EVICT_SCAN {
            let mut entry = [(
                Timestamp::ZERO,
                Tuple::new(A::UNSPECIFIED, 0, A::UNSPECIFIED, 0),
            )];
            if n == EVICT_CANDIDATES || self.pop_due(None, &mut entry) == 0 {
                break;
            }
            let (at, original) = entry[0];
            let Some(mut f) = self.flows.get_mut(&original) else {
                continue; // stale: the flow is gone
            };
            if f.queued != at {
                continue; // stale: the flow has a later live entry
            }
            if f.deadline > at {
                f.queued = f.deadline;
                let d = f.deadline;
                drop(f);
                self.queue(d, original);
                continue;
            }
            cands[n] = (at, original);
            n += 1;
        }
        let mut victim = None;
        for &(at, original) in &cands[..n] {
            if victim.is_some() {
                break;
            }
            victim = self.remove_if(&original, |f| f.queued == at && f.state.is_closing());
        }
        // Put back the live entries of the flows that stay.
        for &(at, original) in &cands[..n] {
            let live = self.flows.get(&original).is_some_and(|f| f.queued == at);
            if live {
                self.queue(at, original);
            }
        }
        victim
    }

    /// Fold a removed flow's counters into the totals: the packet path
    /// counts only in the flow itself, so it touches no shared counter.
    fn retire(&self, flow: &Flow<A>) {
        let b = &flow.backend;
        b.add_active(-1);
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
        for r in self.flows.iter() {
            let f = r.value();
            for d in 0..2 {
                t.packets[d] += f.packets[d];
            }
            let e = t
                .live_by_backend
                .entry(Arc::as_ptr(&f.backend) as usize)
                .or_default();
            e.0 += f.packets[0] + f.packets[1];
            e.1 += f.bytes[0] + f.bytes[1];
        }
        t
    }

    /// Copy every flow (for listings; not for the packet path).
    pub fn snapshot(&self) -> Vec<Flow<A>> {
        self.flows.iter().map(|r| r.value().clone()).collect()
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
            queued: self.queued,
            packets: self.packets,
            bytes: self.bytes,
            window: self.window,
            id: self.id,
            stray_ack: self.stray_ack,
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
            queued: deadline,
            packets: [0; 2],
            bytes: [0; 2],
            window: [Window::default(); 2],
            stray_ack: None,
            id: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_in_the_shard_its_ports_spread_it_to() {
        use std::hash::BuildHasher;
        let t = ConnTable::<Ipv4Addr>::with_hash_seed(16, Some(7));
        let shards = shard_amount();
        assert!(shards >= 8 && shards.is_power_of_two());
        let c = Ipv4Addr::new(198, 18, 1, 2);
        let v = Ipv4Addr::new(198, 18, 0, 1);
        let mut hits = vec![0; shards];
        for port in 1024..3072u16 {
            let original = Tuple::new(c, port, v, 80);
            let reply = Tuple::new(Ipv4Addr::new(198, 18, 2, 3), 80, v, port);
            let want = spread(port, 80) as usize % shards;
            for (map_hash, key) in [
                (t.flows.hasher().hash_one(original), original),
                (t.replies.hasher().hash_one(reply), reply),
            ] {
                // dashmap's shard of a hash (`determine_shard`).
                let shard = ((map_hash as usize) << 7) >> (64 - shards.trailing_zeros());
                assert_eq!(shard, want, "{key:?}");
            }
            hits[want] += 1;
            // The rest of the hash is still the keyed one: the two maps
            // (salted differently) differ outside the shard bits.
            assert_ne!(
                t.flows.hasher().hash_one(original),
                t.replies.hasher().hash_one(original)
            );
        }
        // Every shard gets some of 2048 consecutive client ports.
        assert!(hits.iter().all(|&h| h > 2048 / shards / 2), "{hits:?}");
    }
}
