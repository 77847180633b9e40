//! Backend selection for NEW connections: the `-m statistic` of tunlb.
//!
//! iptables spreads connections with one `statistic` rule per backend, each
//! with its own counter, which is easy to get wrong (see `iptables.rs`). tunlb
//! makes one decision per NEW connection from one shared state: a
//! [`Selector`] is asked once per SYN that creates a flow, never for later
//! packets (conntrack carries those to the chosen backend).
//!
//! A backend with weight 0 takes no new connections (drained). New schedulers
//! (IPVS's wrr, lc, mh) implement the same trait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::conntrack::Tuple;

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
}

impl Mode {
    /// Return the name used on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Nth => "nth",
            Mode::Random => "random",
        }
    }
}

/// Chooses a backend for each NEW connection.
///
/// Implementations are shared by every packet thread and must be cheap: the
/// call sits on the SYN path.
pub trait Selector: Send + Sync + std::fmt::Debug {
    /// Return the index of the backend for the connection `original`, or
    /// `None` when no backend can take new connections (all weights 0).
    fn select(&self, original: &Tuple) -> Option<usize>;

    /// Return a short description for logs and the teaching line.
    fn name(&self) -> &'static str;
}

/// Build the selector for `mode` over backends with these weights.
/// `seed` makes random choices reproducible.
pub fn build(mode: Mode, weights: &[u32], seed: u64) -> Box<dyn Selector> {
    match mode {
        Mode::Nth => Box::new(Nth::new(weights)),
        Mode::Random => Box::new(WeightedRandom::new(weights, seed)),
    }
}

/// `--mode nth`: one atomic counter; turn `k` goes to the backend whose
/// cumulative weight range holds `k mod sum(weights)`.
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
    fn select(&self, _original: &Tuple) -> Option<usize> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        let turn = self.counter.fetch_add(1, Ordering::Relaxed) % total;
        Some(self.cumulative.partition_point(|&c| c <= turn))
    }

    fn name(&self) -> &'static str {
        "nth"
    }
}

/// `--mode random`: one draw from the weights per connection, from a seedable
/// generator (a mutex: the draw is a few nanoseconds, on the SYN path only).
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
    fn select(&self, _original: &Tuple) -> Option<usize> {
        let dist = self.dist.as_ref()?;
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        Some(dist.sample(&mut *rng))
    }

    fn name(&self) -> &'static str {
        "random"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn t() -> Tuple {
        Tuple::new(
            Ipv4Addr::new(198, 18, 1, 2),
            1,
            Ipv4Addr::new(198, 18, 0, 1),
            80,
        )
    }

    #[test]
    fn nth_is_exact_round_robin() {
        let s = Nth::new(&[1, 1, 1, 1]);
        let picks: Vec<_> = (0..8).map(|_| s.select(&t()).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn nth_honours_weights_and_skips_drained() {
        let s = Nth::new(&[1, 0, 3]);
        let picks: Vec<_> = (0..8).map(|_| s.select(&t()).unwrap()).collect();
        assert_eq!(picks, [0, 2, 2, 2, 0, 2, 2, 2]);
    }

    #[test]
    fn all_drained_selects_nothing() {
        assert_eq!(Nth::new(&[0, 0]).select(&t()), None);
        assert_eq!(WeightedRandom::new(&[0, 0], 1).select(&t()), None);
        assert_eq!(Nth::new(&[]).select(&t()), None);
    }

    #[test]
    fn random_never_picks_weight_zero_and_follows_weights() {
        let s = WeightedRandom::new(&[3, 1, 0], 42);
        let mut n = [0u32; 3];
        for _ in 0..4000 {
            n[s.select(&t()).unwrap()] += 1;
        }
        assert_eq!(n[2], 0);
        // Expected 3000/1000; 5 sigma is about 140.
        assert!((2860..=3140).contains(&n[0]), "{n:?}");
    }
}
