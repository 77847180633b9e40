//! Backend selection for NEW connections: the `-m statistic` of tunlb, and
//! the IPVS schedulers beyond it.
//!
//! iptables spreads connections with one `statistic` rule per backend, each
//! with its own counter, which is easy to get wrong (see `iptables.rs`). tunlb
//! makes one decision per NEW connection from one shared state: a
//! [`Selector`] is asked once per SYN that creates a flow, never for later
//! packets (conntrack carries those to the chosen backend).
//!
//! Every selector honours the same two rules: a backend with weight 0 takes no
//! new connections (drained), and a backend that health checks marked down
//! ([`Backend::is_up`]) takes none either. When no backend qualifies the
//! selector returns `None` and the client gets an RST.

use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::conntrack::Tuple;
use crate::service::Backend;

/// How a service picks a backend for a NEW connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Round-robin with one shared counter (`--mode nth`): backend `i` with
    /// weight `w_i` receives `w_i` consecutive turns in each round.
    #[default]
    Nth,
    /// One weighted random draw per connection (`--mode random`).
    Random,
    /// Smooth weighted round-robin (nginx's algorithm; IPVS `wrr`): weights
    /// 5:1:1 give `a a b a c a a`, not `a a a a a b c`.
    Wrr,
    /// Weighted least-connections (IPVS `wlc`): the backend with the fewest
    /// active flows per unit of weight.
    #[serde(rename = "lc")]
    LeastConn,
    /// Consistent hashing of the client address (Maglev, IPVS `mh`): every
    /// tunlb instance with the same backends picks the same backend for a
    /// client, with no shared state, so instances can sit behind ECMP.
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
}

/// Chooses a backend for each NEW connection.
///
/// Implementations are shared by every packet thread and must be cheap: the
/// call sits on the SYN path. `backends` is the service's list, in the order
/// the selector was built with.
pub trait Selector: Send + Sync + std::fmt::Debug {
    /// Return the index of the backend for the connection `original`, or
    /// `None` when no backend can take new connections.
    fn select(&self, backends: &[Arc<Backend>], original: &Tuple) -> Option<usize>;
}

/// Build the selector for `mode` over backends with these weights.
/// `seed` makes random choices reproducible.
pub fn build(mode: Mode, weights: &[u32], seed: u64) -> Box<dyn Selector> {
    match mode {
        Mode::Nth => Box::new(Nth::new(weights)),
        Mode::Random => Box::new(WeightedRandom::new(weights, seed)),
        Mode::Wrr => Box::new(SmoothWrr::new(weights)),
        Mode::LeastConn => Box::new(LeastConn::new(weights)),
        Mode::Maglev => Box::new(Maglev::new(weights, MAGLEV_TABLE_SIZE)),
    }
}

/// `--mode nth`: one atomic counter; turn `k` goes to the backend whose
/// cumulative weight range holds `k mod sum(weights)`. A turn that lands on a
/// backend that is down passes to the next turn.
#[derive(Debug)]
pub struct Nth {
    counter: AtomicU64,
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
            cumulative,
        }
    }
}

impl Selector for Nth {
    fn select(&self, backends: &[Arc<Backend>], _original: &Tuple) -> Option<usize> {
        let total = *self.cumulative.last()?;
        for _ in 0..total.min(4096) {
            let turn = self.counter.fetch_add(1, Ordering::Relaxed) % total;
            let i = self.cumulative.partition_point(|&c| c <= turn);
            if backends[i].is_up() {
                return Some(i);
            }
        }
        None
    }
}

/// `--mode random`: one draw from the weights per connection, from a seedable
/// generator (a mutex: the draw is a few nanoseconds, on the SYN path only).
/// A draw that lands on a backend that is down is drawn again (rejection
/// keeps the shares of the others proportional to their weights).
#[derive(Debug)]
pub struct WeightedRandom {
    dist: Option<WeightedIndex<u32>>,
    rng: Mutex<StdRng>,
}

impl WeightedRandom {
    /// Build a weighted random selector; `seed` fixes the sequence of draws.
    pub fn new(weights: &[u32], seed: u64) -> Self {
        WeightedRandom {
            // WeightedIndex refuses all-zero weights: every backend drained.
            dist: WeightedIndex::new(weights.iter().copied()).ok(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }
}

impl Selector for WeightedRandom {
    fn select(&self, backends: &[Arc<Backend>], _original: &Tuple) -> Option<usize> {
        let dist = self.dist.as_ref()?;
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..64 {
            let i = dist.sample(&mut *rng);
            if backends[i].is_up() {
                return Some(i);
            }
        }
        None
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
    fn select(&self, backends: &[Arc<Backend>], _original: &Tuple) -> Option<usize> {
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
    fn select(&self, backends: &[Arc<Backend>], _original: &Tuple) -> Option<usize> {
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
/// Each backend, named by its index and weight-independent hash seeds, walks
/// its own permutation of the table's slots (`offset + j * skip mod M`) and
/// claims the first free one, in turns; a backend of weight `w` takes `w`
/// turns per round. The table maps `hash(client ip) mod M` to a backend.
/// Removing a backend moves only the clients that used it (mostly). The hash
/// is FNV-1a with fixed keys, so every instance computes the same table from
/// the same backend list. A slot whose backend is down passes to the next
/// slot; instances that see the same health agree on that too.
#[derive(Debug)]
pub struct Maglev {
    table: Vec<u16>,
}

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

impl Maglev {
    /// Build the lookup table of size `m` (a prime) for these weights.
    /// Backends are identified by position; weight-0 backends get no slot.
    pub fn new(weights: &[u32], m: usize) -> Self {
        let n = weights.len();
        let perm: Vec<(usize, usize)> = (0..n)
            .map(|i| {
                let mut h1 = Fnv::new(0x6d61_676c_6576);
                h1.write(&(i as u64).to_le_bytes());
                let mut h2 = Fnv::new(0x736b_6970);
                h2.write(&(i as u64).to_le_bytes());
                (
                    (h1.finish() % m as u64) as usize,
                    (h2.finish() % (m as u64 - 1) + 1) as usize,
                )
            })
            .collect();
        let mut next = vec![0usize; n];
        let mut table = vec![u16::MAX; m];
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if total == 0 {
            return Maglev { table };
        }
        // Normalise weights so one round has at most ~m/4 turns.
        let max_w = u64::from(*weights.iter().max().unwrap_or(&1)).max(1);
        let scale = (max_w as f64 / 64.0).max(1.0);
        let turns: Vec<u64> = weights
            .iter()
            .map(|&w| {
                if w == 0 {
                    0
                } else {
                    ((f64::from(w) / scale).round() as u64).max(1)
                }
            })
            .collect();
        let mut filled = 0;
        'fill: loop {
            for i in 0..n {
                for _ in 0..turns[i] {
                    let (offset, skip) = perm[i];
                    let mut c = (offset + next[i] * skip) % m;
                    while table[c] != u16::MAX {
                        next[i] += 1;
                        c = (offset + next[i] * skip) % m;
                    }
                    table[c] = i as u16;
                    next[i] += 1;
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Maglev { table }
    }

    /// Return the backend index of the table slot for this client address.
    fn slot(&self, original: &Tuple) -> usize {
        let mut h = Fnv::new(0x006b_6579);
        h.write(&original.src.ip().octets());
        (h.finish() % self.table.len() as u64) as usize
    }
}

impl Selector for Maglev {
    fn select(&self, backends: &[Arc<Backend>], original: &Tuple) -> Option<usize> {
        if self.table[0] == u16::MAX {
            return None;
        }
        let start = self.slot(original);
        // Probe forward past slots whose backend is down (bounded).
        for k in 0..self.table.len().min(1024) {
            let b = usize::from(self.table[(start + k) % self.table.len()]);
            if backends[b].is_up() {
                return Some(b);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn t() -> Tuple {
        Tuple::new(
            Ipv4Addr::new(198, 18, 1, 2),
            1,
            Ipv4Addr::new(198, 18, 0, 1),
            80,
        )
    }

    fn backends(n: u8) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| {
                Arc::new(Backend::new(SocketAddrV4::new(
                    Ipv4Addr::new(198, 18, 2, 3 + i),
                    80,
                )))
            })
            .collect()
    }

    fn picks(s: &dyn Selector, b: &[Arc<Backend>], n: usize) -> Vec<usize> {
        (0..n).map(|_| s.select(b, &t()).unwrap()).collect()
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
    fn all_drained_or_down_selects_nothing() {
        let b = backends(2);
        for m in [
            Mode::Nth,
            Mode::Random,
            Mode::Wrr,
            Mode::LeastConn,
            Mode::Maglev,
        ] {
            assert_eq!(build(m, &[0, 0], 1).select(&b, &t()), None, "{m:?}");
        }
        b[0].set_up(false);
        b[1].set_up(false);
        for m in [
            Mode::Nth,
            Mode::Random,
            Mode::Wrr,
            Mode::LeastConn,
            Mode::Maglev,
        ] {
            assert_eq!(build(m, &[1, 1], 1).select(&b, &t()), None, "{m:?}");
        }
    }

    #[test]
    fn random_never_picks_weight_zero_and_follows_weights() {
        let s = WeightedRandom::new(&[3, 1, 0], 42);
        let b = backends(3);
        let mut n = [0u32; 3];
        for _ in 0..4000 {
            n[s.select(&b, &t()).unwrap()] += 1;
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
        b[0].add_active(1);
        b[1].add_active(3); // 1.5 per weight
        b[2].add_active(2);
        assert_eq!(s.select(&b, &t()), Some(0));
        b[0].add_active(1); // 2 per weight
        assert_eq!(s.select(&b, &t()), Some(1));
    }

    #[test]
    fn maglev_is_balanced_and_consistent() {
        let b = backends(4);
        let m = Maglev::new(&[1, 1, 1, 1], MAGLEV_TABLE_SIZE);
        let mut share = [0usize; 4];
        for &x in &m.table {
            share[usize::from(x)] += 1;
        }
        for s in share {
            assert!((16_000..=16_800).contains(&s), "{share:?}");
        }
        // Two instances built alike agree on every client.
        let m2 = Maglev::new(&[1, 1, 1, 1], MAGLEV_TABLE_SIZE);
        for i in 0..1000u32 {
            let c = Tuple::new(
                Ipv4Addr::from_bits(0xc612_0000 + i),
                1,
                Ipv4Addr::new(198, 18, 0, 1),
                80,
            );
            assert_eq!(m.select(&b, &c), m2.select(&b, &c));
        }
        // Removing backend 3 (weight 0) moves its clients and few others.
        let m3 = Maglev::new(&[1, 1, 1, 0], MAGLEV_TABLE_SIZE);
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
    fn maglev_follows_weights() {
        let m = Maglev::new(&[3, 1], 65537);
        let a = m.table.iter().filter(|&&x| x == 0).count();
        assert!((47_000..=51_000).contains(&a), "{a}");
    }
}
