//! Backends as the engine runs them: identity, health and counters.
//!
//! A [`Backend`] is shared (`Arc`) by its service's selector, by every flow
//! DNAT sent to it, and across reloads that keep it (same VIP, same
//! address), so counters continue and draining flows keep their backend. It
//! sits below both [`crate::select`] (which reads health to choose) and
//! [`crate::conntrack`] (whose flows point at it), and imports neither.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters of one backend. Packets and bytes are those of its flows that
/// have ended; live flows count in themselves (see `ConnTable::totals`).
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Connections this backend was chosen for.
    pub connections: AtomicU64,
    /// Packets of ended flows, both directions.
    pub packets: AtomicU64,
    /// IP bytes of ended flows, both directions.
    pub bytes: AtomicU64,
}

/// A backend as the engine runs it: its identity, counters and health,
/// shared by every flow it serves and kept across reloads (same VIP, same
/// address), so counters continue and draining flows keep their backend.
#[derive(Debug)]
pub struct Backend {
    /// The backend's address and port.
    pub addr: SocketAddr,
    /// Traffic counters.
    pub counters: BackendCounters,
    /// Flows ever inserted with this backend: written only by admitters,
    /// under the admission lock that orders them (a load and a store).
    admitted: AtomicU64,
    /// Flows of this backend ever removed (from any thread: an atomic add).
    released: AtomicU64,
    up: AtomicBool,
    syn_failures: AtomicU64,
}

impl Backend {
    /// A backend with zeroed counters, considered up.
    pub fn new(addr: SocketAddr) -> Self {
        Backend {
            addr,
            counters: BackendCounters::default(),
            admitted: AtomicU64::new(0),
            released: AtomicU64::new(0),
            up: AtomicBool::new(true),
            syn_failures: AtomicU64::new(0),
        }
    }

    /// Return whether health checks consider the backend able to take new
    /// connections (always, when no checks run).
    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Mark the backend up or down; returns the previous value.
    pub fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed)
    }

    /// Return the number of flows in the table that use this backend: those
    /// admitted less those removed. (A flow's removal follows its insert;
    /// reading the removals first, with `Acquire`, sees every insert that
    /// came before them, so the difference never goes below zero.)
    #[inline]
    pub fn active(&self) -> u64 {
        let released = self.released.load(Ordering::Acquire);
        self.admitted
            .load(Ordering::Relaxed)
            .saturating_sub(released)
    }

    /// Count a flow of this backend inserted. Only admitters call it,
    /// holding the admission lock (see `conntrack::table::Admission`),
    /// which orders their writes: so a load and a store, no atomic
    /// read-modify-write.
    #[inline]
    pub(crate) fn admit(&self) {
        let n = self.admitted.load(Ordering::Relaxed);
        self.admitted.store(n + 1, Ordering::Relaxed);
    }

    /// Count a flow of this backend removed (from any thread).
    #[inline]
    pub fn release(&self) {
        self.released.fetch_add(1, Ordering::Release);
    }

    /// Count a passive health signal: the backend answered a SYN with RST,
    /// or never answered it before the SYN_SENT timeout.
    pub fn syn_failed(&self) {
        self.syn_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Return the number of passive failures seen so far.
    pub fn syn_failures(&self) -> u64 {
        self.syn_failures.load(Ordering::Relaxed)
    }
}
