//! Engine time: a monotonic timestamp the caller passes in.
//!
//! The engine never reads a clock (see the crate docs): the datapath turns
//! `Instant::now()` into a [`Timestamp`], tests make time up. Milliseconds in a
//! `u64` keep a flow's deadline to eight bytes and make virtual time trivial.

use core::ops::{Add, Sub};
use std::time::Duration;

/// Milliseconds since an arbitrary origin chosen by the caller. Monotonic by
/// contract: every call into the engine passes a value no smaller than the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The origin.
    pub const ZERO: Timestamp = Timestamp(0);

    /// Later than any time the engine is given: "not before the end".
    pub const NEVER: Timestamp = Timestamp(u64::MAX);

    /// Build a timestamp from milliseconds since the origin.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Build a timestamp from seconds since the origin.
    pub const fn from_secs(s: u64) -> Self {
        Timestamp(s * 1000)
    }

    /// Return the milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Return how long from `self` until `later`, or zero if `later` is not later.
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_millis() as u64))
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = Duration;
    fn sub(self, earlier: Timestamp) -> Duration {
        earlier.until(self)
    }
}
