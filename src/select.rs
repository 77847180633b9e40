//! Backend selection for NEW connections: the `-m statistic` of tunlb, and
//! the IPVS schedulers beyond it.
//!
//! iptables spreads connections with one `statistic` rule per backend, each
//! with its own counter, which is easy to get wrong (see `iptables.rs`). tunlb
//! makes one decision per NEW connection from one shared state: a
//! [`Selector`] is asked once per SYN that creates a flow, never for later
//! packets (conntrack carries those to the chosen backend).
//!
//! Every selector honours the same three rules: a backend with weight 0 takes
//! no new connections (drained); a backend that health checks marked down
//! ([`Backend::is_up`]) takes none either; and as long as one backend is up
//! with a weight above 0, the selector picks one, in a bounded number of
//! steps (at most a few walks over the backend list) and without allocating.
//! When no backend qualifies the selector returns `None` and the client gets
//! an RST.

use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::backend::Backend;

/// How a service picks a backend for a NEW connection. The config file and
/// `--mode` spell each the same; `help` is what `--help` says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Round-robin with one shared counter (`--mode nth`): backend `i` with
    /// weight `w_i` receives `w_i` consecutive turns in each round.
    #[default]
    #[value(help = "Round robin with one shared counter, like `-m statistic --mode nth`")]
    Nth,
    /// One weighted random draw per connection (`--mode random`).
    #[value(help = "One weighted random draw per connection, like `--mode random`")]
    Random,
    /// Smooth weighted round-robin (nginx's algorithm; IPVS `wrr`): weights
    /// 5:1:1 give `a a b a c a a`, not `a a a a a b c`.
    #[value(help = "Smooth weighted round robin (IPVS wrr)")]
    Wrr,
    /// Weighted least-connections (IPVS `wlc`): the backend with the fewest
    /// active flows per unit of weight.
    #[serde(rename = "lc")]
    #[value(name = "lc", help = "Weighted least connections (IPVS wlc)")]
    LeastConn,
    /// Consistent hashing of the client address (Maglev, IPVS `mh`): every
    /// tunlb instance with the same backends picks the same backend for a
    /// client, with no shared state, so instances can sit behind ECMP.
    #[value(help = "Consistent hashing of the client address (Maglev, IPVS mh)")]
    Maglev,
}

impl Mode {
    /// Return the name used on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Nth => "nth",
            Mode::Random => "random",
            Mode::Wrr => "wrr",
            Mode::LeastConn => "lc",
            Mode::Maglev => "maglev",
        }
    }

    /// Return whether the backend this mode picks is a function of the
    /// connection's tuple (and the backends' health) alone, the same on
    /// every instance and after a restart: what `--pickup` needs.
    pub const fn is_function_of_tuple(self) -> bool {
        matches!(self, Mode::Maglev)
    }
}

/// Chooses a backend for each NEW connection.
///
/// Implementations are shared by every packet thread and must be cheap: the
/// call sits on the SYN path. `backends` is the service's list, in the order
/// the selector was built with.
pub trait Selector: Send + Sync + std::fmt::Debug {
    /// Return the index of the backend for a new connection from `client`
    /// (the ORIGINAL tuple's source address, all a hashing mode reads), or
    /// `None` when no backend can take new connections.
    fn select(&self, backends: &[Arc<Backend>], client: IpAddr) -> Option<usize>;
}

/// Build the selector for `mode` over these backends: address and weight, in
/// the service's order (the indices `select` returns). `seed` makes random
/// choices reproducible. The selector is shared: a reload that keeps the same
/// backends keeps it (see `Service::new`).
pub fn build(mode: Mode, backends: &[(SocketAddr, u32)], seed: u64) -> Arc<dyn Selector> {
    let weights: Vec<u32> = backends.iter().map(|&(_, w)| w).collect();
    match mode {
        Mode::Nth => Arc::new(Nth::new(&weights)),
        Mode::Random => Arc::new(WeightedRandom::new(&weights, seed)),
        Mode::Wrr => Arc::new(SmoothWrr::new(&weights)),
        Mode::LeastConn => Arc::new(LeastConn::new(&weights)),
        Mode::Maglev => Arc::new(Maglev::new(backends, MAGLEV_TABLE_SIZE)),
    }
}

/// Return the sum of the weights of the backends that are up.
fn up_weight(weights: &[u32], backends: &[Arc<Backend>]) -> u64 {
    weights
        .iter()
        .zip(backends)
        .filter(|(_, b)| b.is_up())
        .map(|(&w, _)| u64::from(w))
        .sum()
}

/// Return the up backend whose range holds `k` when the up backends' weights
/// are laid end to end in list order (`k` below [`up_weight`]). Health may
/// change between the two walks: a `k` past the end then goes to the last up
/// backend seen, and `None` means that every backend went down meanwhile.
fn up_at(weights: &[u32], backends: &[Arc<Backend>], mut k: u64) -> Option<usize> {
    let mut last = None;
    for (i, (&w, b)) in weights.iter().zip(backends).enumerate() {
        if w == 0 || !b.is_up() {
            continue;
        }
        if k < u64::from(w) {
            return Some(i);
        }
        k -= u64::from(w);
        last = Some(i);
    }
    last
}

/// `--mode nth`: one atomic counter; turn `k` goes to the backend whose
/// cumulative weight range holds `k mod sum(weights)`. While backends are
/// down, the cycle is the same one over the up backends only: turn `k` goes
/// to the up backend whose range holds `k mod sum(up weights)`, so the up
/// backends still share the turns exactly by weight, and every turn finds one
/// (one counter increment and two walks of the list; none when nothing is up).
#[derive(Debug)]
pub struct Nth {
    counter: AtomicU64,
    weights: Vec<u32>,
    /// `cumulative[i]` is the sum of the weights of backends `0..=i`.
    cumulative: Vec<u64>,
}

impl Nth {
    /// Build an nth selector over backends with these weights.
    pub fn new(weights: &[u32]) -> Self {
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                total += u64::from(w);
                total
            })
            .collect();
        Nth {
            counter: AtomicU64::new(0),
            weights: weights.to_vec(),
            cumulative,
        }
    }
}

impl Selector for Nth {
    fn select(&self, backends: &[Arc<Backend>], _client: IpAddr) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let up = up_weight(&self.weights, backends);
        if up == 0 {
            return None;
        }
        let turn = self.counter.fetch_add(1, Ordering::Relaxed);
        if up == total {
            // Every backend with a weight is up: the plain cycle.
            let k = turn % total;
            Some(self.cumulative.partition_point(|&c| c <= k))
        } else {
            up_at(&self.weights, backends, turn % up)
        }
    }
}

/// `--mode random`: one draw from the weights per connection, from a seedable
/// generator (a mutex: the draw is a few nanoseconds, on the SYN path only).
/// A draw that lands on a backend that is down is replaced by one draw among
/// the up backends only, by their weights: backend `j` is then chosen with
/// probability `w_j / T + (D / T) (w_j / U) = w_j / U` (`T` all weights, `D`
/// those down, `U` those up), its share among the up backends, and no SYN is
/// refused while one is up.
#[derive(Debug)]
pub struct WeightedRandom {
    weights: Vec<u32>,
    dist: Option<WeightedIndex<u32>>,
    rng: Mutex<StdRng>,
}

impl WeightedRandom {
    /// Build a weighted random selector; `seed` fixes the sequence of draws.
    pub fn new(weights: &[u32], seed: u64) -> Self {
        WeightedRandom {
            weights: weights.to_vec(),
            // WeightedIndex refuses all-zero weights: every backend drained.
            dist: WeightedIndex::new(weights.iter().copied()).ok(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }
}

impl Selector for WeightedRandom {
    fn select(&self, backends: &[Arc<Backend>], _client: IpAddr) -> Option<usize> {
        let dist = self.dist.as_ref()?;
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let i = dist.sample(&mut *rng);
        if backends[i].is_up() {
            return Some(i);
        }
        let up = up_weight(&self.weights, backends);
        if up == 0 {
            return None;
        }
        up_at(&self.weights, backends, rng.random_range(0..up))
    }
}

/// `--mode wrr`: smooth weighted round-robin. Each pick adds every live
/// backend's weight to its current value, takes the largest, and subtracts
/// the total from it. Spreads a heavy backend's turns evenly.
#[derive(Debug)]
pub struct SmoothWrr {
    weights: Vec<i64>,
    current: Mutex<Vec<i64>>,
}

impl SmoothWrr {
    /// Build a smooth WRR selector over backends with these weights.
    pub fn new(weights: &[u32]) -> Self {
        SmoothWrr {
            weights: weights.iter().map(|&w| i64::from(w)).collect(),
            current: Mutex::new(vec![0; weights.len()]),
        }
    }
}

impl Selector for SmoothWrr {
    fn select(&self, backends: &[Arc<Backend>], _client: IpAddr) -> Option<usize> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (i, &w) in self.weights.iter().enumerate() {
            if w == 0 || !backends[i].is_up() {
                continue;
            }
            cur[i] += w;
            total += w;
            if best.is_none_or(|b| cur[i] > cur[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        cur[b] -= total;
        Some(b)
    }
}

/// `--mode lc`: weighted least-connections (IPVS `wlc`): the live backend
/// minimising `active / weight`; ties go to the first.
#[derive(Debug)]
pub struct LeastConn {
    weights: Vec<u64>,
}

impl LeastConn {
    /// Build a least-connections selector over backends with these weights.
    pub fn new(weights: &[u32]) -> Self {
        LeastConn {
            weights: weights.iter().map(|&w| u64::from(w)).collect(),
        }
    }
}

impl Selector for LeastConn {
    fn select(&self, backends: &[Arc<Backend>], _client: IpAddr) -> Option<usize> {
        let mut best: Option<(usize, u64)> = None;
        for (i, &w) in self.weights.iter().enumerate() {
            if w == 0 || !backends[i].is_up() {
                continue;
            }
            let active = backends[i].active();
            // active_i / w_i < active_b / w_b, without division.
            if best.is_none_or(|(b, ab)| {
                u128::from(active) * u128::from(self.weights[b]) < u128::from(ab) * u128::from(w)
            }) {
                best = Some((i, active));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// The Maglev lookup table size: a prime, as the paper requires (65537, as
/// IPVS `mh` uses by default).
pub const MAGLEV_TABLE_SIZE: usize = 65537;

/// `--mode maglev`: Maglev consistent hashing of the client address.
///
/// Each backend walks its own permutation of the table's slots
/// (`offset + j * skip mod M`, with `offset` and `skip` hashed from the
/// backend's address and port) and claims the first free one, in turns, the
/// backends taking their turns in address order; a backend of weight `w`
/// takes `w` turns per round (weights above 64 are scaled to at most 64 turns).
/// The table maps `hash(client ip) mod M` to a backend. Nothing depends on a
/// backend's position in the list: the same backends in any order give the
/// same table, on every instance, and removing a backend moves the clients
/// that used it and almost no others (0.04 % of the others' clients for 1
/// of 4 backends, see the tests). The hash is FNV-1a with fixed keys, stable across builds and
/// machines.
///
/// A client whose slot's backend is down is hashed again with another key
/// (as IPVS `mh` does), up to [`MAGLEV_PROBES`] slots in all, then goes to the
/// next up backend in address order after its slot's own: so a down
/// backend's clients spread over the others by their slots (by weight), all
/// instances that see the same health agree, and a client is refused only
/// when no backend is up with a weight above 0. (The next slot instead would
/// not spread by weight: a backend's slots form an arithmetic progression,
/// and those of one with a small skip follow short runs of other backends.)
#[derive(Debug)]
pub struct Maglev {
    /// Slot -> backend index (in the service's order); `u16::MAX` in every
    /// slot when every weight is 0.
    table: Vec<u16>,
    /// The backend indices in address order (the order of the fallback walk).
    order: Vec<u16>,
    /// `rank[i]`: the position of backend `i` in `order`.
    rank: Vec<u16>,
    weights: Vec<u32>,
}

/// How many table slots (its own and rehashes) a client whose backend is
/// down tries before the walk in address order. A slot is a 12-byte hash;
/// with a quarter of the slots up, 256 tries all miss with probability 1e-32.
pub const MAGLEV_PROBES: u64 = 256;

/// FNV-1a 64: tiny, stable across builds and machines (unlike std's hasher).
#[derive(Debug)]
struct Fnv(u64);

impl Fnv {
    fn new(seed: u64) -> Self {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        h.write(&seed.to_le_bytes());
        h
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        // A final avalanche (splitmix64) so low bits are well mixed.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Feed an address to `h` in network order (4 or 16 bytes: an IPv4
/// address hashes as it always did).
fn write_ip(h: &mut Fnv, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => h.write(&a.octets()),
        IpAddr::V6(a) => h.write(&a.octets()),
    }
}

/// Return the hash of a backend's address and port under `seed`.
fn addr_hash(seed: u64, addr: SocketAddr) -> u64 {
    let mut h = Fnv::new(seed);
    write_ip(&mut h, addr.ip());
    h.write(&addr.port().to_be_bytes());
    h.finish()
}

impl Maglev {
    /// Build the lookup table of size `m` (a prime) for these backends
    /// (address and weight; indices are positions in this list, addresses
    /// distinct). Weight-0 backends get no slot.
    pub fn new(backends: &[(SocketAddr, u32)], m: usize) -> Self {
        let n = backends.len();
        let mut order: Vec<u16> = (0..n).map(|i| i as u16).collect();
        order.sort_by_key(|&i| backends[usize::from(i)].0);
        let mut rank = vec![0u16; n];
        for (r, &i) in order.iter().enumerate() {
            rank[usize::from(i)] = r as u16;
        }
        let weights: Vec<u32> = backends.iter().map(|&(_, w)| w).collect();
        let mut table = vec![u16::MAX; m];
        let max_w = weights.iter().copied().max().unwrap_or(0);
        if max_w > 0 {
            Self::fill(&mut table, backends, &order, max_w);
        }
        Maglev {
            table,
            order,
            rank,
            weights,
        }
    }

    /// Fill `table` (every slot free) by the backends' turns, in `order`.
    fn fill(table: &mut [u16], backends: &[(SocketAddr, u32)], order: &[u16], max_w: u32) {
        let m = table.len();
        // (offset, skip, next) per backend: its permutation and how far along.
        let mut perm: Vec<(usize, usize, usize)> = backends
            .iter()
            .map(|&(addr, _)| {
                (
                    (addr_hash(0x6d61_676c_6576, addr) % m as u64) as usize,
                    (addr_hash(0x736b_6970, addr) % (m as u64 - 1) + 1) as usize,
                    0,
                )
            })
            .collect();
        // Normalise weights so one round has at most 64 turns per backend.
        let scale = (f64::from(max_w) / 64.0).max(1.0);
        let turns: Vec<u64> = backends
            .iter()
            .map(|&(_, w)| {
                if w == 0 {
                    0
                } else {
                    ((f64::from(w) / scale).round() as u64).max(1)
                }
            })
            .collect();
        let mut filled = 0;
        loop {
            for &i in order {
                let i = usize::from(i);
                for _ in 0..turns[i] {
                    let (offset, skip, next) = &mut perm[i];
                    let mut c = (*offset + *next * *skip) % m;
                    while table[c] != u16::MAX {
                        *next += 1;
                        c = (*offset + *next * *skip) % m;
                    }
                    table[c] = i as u16;
                    *next += 1;
                    filled += 1;
                    if filled == m {
                        return;
                    }
                }
            }
        }
    }

    /// Return the table slot of this client address at this attempt: 0 is
    /// the client's own slot, each later attempt an independent hash.
    fn slot(&self, client: IpAddr, attempt: u64) -> usize {
        let mut h = Fnv::new(0x006b_6579 + attempt);
        write_ip(&mut h, client);
        (h.finish() % self.table.len() as u64) as usize
    }
}

impl Selector for Maglev {
    fn select(&self, backends: &[Arc<Backend>], client: IpAddr) -> Option<usize> {
        if self.table[0] == u16::MAX {
            return None;
        }
        let first = usize::from(self.table[self.slot(client, 0)]);
        if backends[first].is_up() {
            return Some(first);
        }
        // Rehash past slots whose backend is down (bounded).
        for attempt in 1..MAGLEV_PROBES {
            let b = usize::from(self.table[self.slot(client, attempt)]);
            if backends[b].is_up() {
                return Some(b);
            }
        }
        // Then the next up backend in address order after the slot's own.
        let n = self.order.len();
        let from = usize::from(self.rank[first]);
        (1..=n)
            .map(|k| usize::from(self.order[(from + k) % n]))
            .find(|&b| self.weights[b] > 0 && backends[b].is_up())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const MODES: [Mode; 5] = [
        Mode::Nth,
        Mode::Random,
        Mode::Wrr,
        Mode::LeastConn,
        Mode::Maglev,
    ];

    fn t() -> IpAddr {
        client(0xc612_0102)
    }

    /// A connection from this client address.
    fn client(src: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from_bits(src))
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::new(198, 18, 2, 3 + i).into(), 80)
    }

    fn backends(n: u8) -> Vec<Arc<Backend>> {
        (0..n).map(|i| Arc::new(Backend::new(addr(i)))).collect()
    }

    /// The (address, weight) list of backends `addr(0..)` with these weights.
    fn list(weights: &[u32]) -> Vec<(SocketAddr, u32)> {
        (0u8..).zip(weights).map(|(i, &w)| (addr(i), w)).collect()
    }

    fn picks(s: &dyn Selector, b: &[Arc<Backend>], n: usize) -> Vec<usize> {
        (0..n).map(|_| s.select(b, t()).unwrap()).collect()
    }

    /// `n` picks of `mode` over `weights` with the backends in `down` marked
    /// down, each from another client address (for maglev), each counted as
    /// an active flow of its backend (for lc): the picks per backend and the
    /// number refused.
    fn tally(mode: Mode, weights: &[u32], down: &[usize], n: u32) -> (Vec<u32>, u32) {
        let b = backends(weights.len() as u8);
        for &d in down {
            b[d].set_up(false);
        }
        let s = build(mode, &list(weights), 7);
        let mut seen = vec![0u32; weights.len()];
        let mut refused = 0;
        for k in 0..n {
            match s.select(&b, client(0xc612_0000 + k * 7919)) {
                Some(i) => {
                    seen[i] += 1;
                    b[i].admit();
                }
                None => refused += 1,
            }
        }
        (seen, refused)
    }

    #[test]
    fn nth_is_exact_round_robin() {
        assert_eq!(
            picks(&Nth::new(&[1, 1, 1, 1]), &backends(4), 8),
            [0, 1, 2, 3, 0, 1, 2, 3]
        );
    }

    #[test]
    fn nth_honours_weights_and_skips_drained_and_down() {
        let b = backends(3);
        assert_eq!(
            picks(&Nth::new(&[1, 0, 3]), &b, 8),
            [0, 2, 2, 2, 0, 2, 2, 2]
        );
        b[2].set_up(false);
        assert_eq!(picks(&Nth::new(&[1, 0, 3]), &b, 3), [0, 0, 0]);
    }

    #[test]
    fn nth_with_a_backend_down_cycles_over_the_others_by_weight() {
        let b = backends(4);
        let s = Nth::new(&[1, 2, 1, 1]);
        assert_eq!(picks(&s, &b, 5), [0, 1, 1, 2, 3]);
        b[1].set_up(false);
        // The cycle 0 2 3 from wherever the counter is (turn 5: 5 mod 3 = 2).
        assert_eq!(picks(&s, &b, 6), [3, 0, 2, 3, 0, 2]);
        b[1].set_up(true);
        let round = picks(&s, &b, 5);
        for (i, w) in [1, 2, 1, 1].into_iter().enumerate() {
            assert_eq!(round.iter().filter(|&&x| x == i).count(), w, "{round:?}");
        }
    }

    #[test]
    fn every_mode_picks_an_up_backend_when_the_heaviest_is_down() {
        for mode in MODES {
            for (weights, down, up) in [([99, 1], 0, 1), ([1, 99], 1, 0)] {
                let (seen, refused) = tally(mode, &weights, &[down], 10_000);
                assert_eq!(refused, 0, "{mode:?} {weights:?}: {seen:?}");
                assert_eq!(seen[up], 10_000, "{mode:?} {weights:?}: {seen:?}");
            }
            // The two left share by weight (3:1; 60 keeps maglev's weights
            // exact, it scales weights above 64).
            let (seen, refused) = tally(mode, &[60, 3, 1], &[0], 10_000);
            assert_eq!(refused, 0, "{mode:?}: {seen:?}");
            assert_eq!(seen[0], 0, "{mode:?}: {seen:?}");
            let range = match mode {
                // Exact in the cycle modes and in lc (flows per weight).
                Mode::Nth | Mode::Wrr | Mode::LeastConn => 7499..=7501,
                // 5 sigma of 10 000 draws at 3/4: sigma = 43.3 (maglev: the
                // down backend's clients rehash to slots of the others; the
                // client addresses are fixed, 7473 measured).
                Mode::Random | Mode::Maglev => 7283..=7717,
            };
            println!("{mode:?} 60:3:1, b1 down: {seen:?}");
            assert!(range.contains(&seen[1]), "{mode:?}: {seen:?}");
        }
    }

    #[test]
    fn random_with_the_heaviest_down_draws_once_among_the_others() {
        // Shares among the up backends stay proportional to their weights.
        let (seen, refused) = tally(Mode::Random, &[98, 1, 1], &[0], 10_000);
        assert_eq!(refused, 0);
        // 5 sigma of 10 000 draws at 1/2: sigma = 50.
        assert!((4750..=5250).contains(&seen[1]), "{seen:?}");
    }

    #[test]
    fn maglev_walks_on_when_no_probed_slot_is_up() {
        // Nine heavy backends down and one of weight 1 with 1/577 of the
        // slots: about 2 clients in 3 find no up backend in their 256 probes
        // and take the walk in address order.
        let mut weights = [64u32; 10];
        weights[9] = 1;
        let (seen, refused) = tally(Mode::Maglev, &weights, &[0, 1, 2, 3, 4, 5, 6, 7, 8], 10_000);
        assert_eq!((seen[9], refused), (10_000, 0), "{seen:?}");
        // The walk never picks a weight-0 backend.
        let (seen, refused) = tally(Mode::Maglev, &[1, 0], &[0], 100);
        assert_eq!((seen, refused), (vec![0, 0], 100));
    }

    #[test]
    fn all_drained_or_down_selects_nothing() {
        let b = backends(2);
        for m in MODES {
            assert_eq!(build(m, &list(&[0, 0]), 1).select(&b, t()), None, "{m:?}");
        }
        b[0].set_up(false);
        b[1].set_up(false);
        for m in MODES {
            assert_eq!(build(m, &list(&[1, 1]), 1).select(&b, t()), None, "{m:?}");
        }
    }

    #[test]
    fn random_never_picks_weight_zero_and_follows_weights() {
        let s = WeightedRandom::new(&[3, 1, 0], 42);
        let b = backends(3);
        let mut n = [0u32; 3];
        for _ in 0..4000 {
            n[s.select(&b, t()).unwrap()] += 1;
        }
        assert_eq!(n[2], 0);
        // Expected 3000/1000; 5 sigma (sqrt(4000 * 0.75 * 0.25) = 27) is about 140.
        assert!((2860..=3140).contains(&n[0]), "{n:?}");
    }

    #[test]
    fn smooth_wrr_interleaves() {
        let s = SmoothWrr::new(&[5, 1, 1]);
        assert_eq!(picks(&s, &backends(3), 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_conn_prefers_the_least_loaded_per_weight() {
        let b = backends(3);
        let s = LeastConn::new(&[1, 2, 1]);
        let admit = |b: &Backend, n| (0..n).for_each(|_| b.admit());
        admit(&b[0], 1);
        admit(&b[1], 3); // 1.5 per weight
        admit(&b[2], 2);
        assert_eq!(s.select(&b, t()), Some(0));
        admit(&b[0], 1); // 2 per weight
        assert_eq!(s.select(&b, t()), Some(1));
    }

    /// The table as addresses.
    fn table_addrs(m: &Maglev, l: &[(SocketAddr, u32)]) -> Vec<SocketAddr> {
        m.table.iter().map(|&i| l[usize::from(i)].0).collect()
    }

    #[test]
    fn maglev_is_balanced_and_consistent() {
        let b = backends(4);
        let m = Maglev::new(&list(&[1, 1, 1, 1]), MAGLEV_TABLE_SIZE);
        let mut share = [0usize; 4];
        for &x in &m.table {
            share[usize::from(x)] += 1;
        }
        for s in share {
            assert!((16_000..=16_800).contains(&s), "{share:?}");
        }
        // Two instances built alike agree on every client.
        let m2 = Maglev::new(&list(&[1, 1, 1, 1]), MAGLEV_TABLE_SIZE);
        for i in 0..1000u32 {
            let c = client(0xc612_0000 + i);
            assert_eq!(m.select(&b, c), m2.select(&b, c));
        }
        // Draining backend 3 (weight 0) moves its clients and few others.
        let m3 = Maglev::new(&list(&[1, 1, 1, 0]), MAGLEV_TABLE_SIZE);
        let moved = (0..m.table.len())
            .filter(|&k| m.table[k] != 3 && m.table[k] != m3.table[k])
            .count();
        assert!(
            moved < m.table.len() / 20,
            "{moved} slots of other backends moved"
        );
        assert!(!m3.table.contains(&3));
    }

    #[test]
    fn maglev_gives_the_same_table_for_the_same_backends_in_any_order() {
        let l = list(&[1, 2, 1, 3]);
        let reversed: Vec<_> = l.iter().rev().copied().collect();
        let rotated: Vec<_> = l[2..].iter().chain(&l[..2]).copied().collect();
        let a = table_addrs(&Maglev::new(&l, MAGLEV_TABLE_SIZE), &l);
        assert!(a == table_addrs(&Maglev::new(&reversed, MAGLEV_TABLE_SIZE), &reversed));
        assert!(a == table_addrs(&Maglev::new(&rotated, MAGLEV_TABLE_SIZE), &rotated));
    }

    #[test]
    fn maglev_removing_the_second_of_four_moves_almost_only_its_clients() {
        let l = list(&[1, 1, 1, 1]);
        let without: Vec<_> = [l[0], l[2], l[3]].to_vec();
        let (before, after) = (
            Maglev::new(&l, MAGLEV_TABLE_SIZE),
            Maglev::new(&without, MAGLEV_TABLE_SIZE),
        );
        let (b4, b3) = (
            backends(4),
            [0u8, 2, 3].map(|i| Arc::new(Backend::new(addr(i)))),
        );
        let (mut others, mut moved) = (0u32, 0u32);
        for k in 0..100_000u32 {
            let c = client(0xc612_0000 + k * 13);
            let was = l[before.select(&b4, c).unwrap()].0;
            let now = without[after.select(&b3, c).unwrap()].0;
            if was != l[1].0 {
                others += 1;
                moved += u32::from(was != now);
            }
        }
        let pct = f64::from(moved) * 100.0 / f64::from(others);
        println!("maglev: removing the 2nd of 4 backends moved {moved} of the other backends' {others} clients ({pct:.2} %)");
        assert!(others > 70_000, "{others}");
        // 0.04 % measured (the index-seeded table of before moved 55.7 %).
        assert!(pct <= 1.0, "{moved} of {others} moved ({pct:.2} %)");
    }

    #[test]
    fn maglev_follows_weights() {
        let m = Maglev::new(&list(&[3, 1]), 65537);
        let a = m.table.iter().filter(|&&x| x == 0).count();
        assert!((47_000..=51_000).contains(&a), "{a}");
    }
}
