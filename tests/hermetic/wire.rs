//! The router's links: where packets can be lost, duplicated, reordered or tampered with.
//!
//! Every packet a host or the engine emits is handed to [`Wire::send`]. A test
//! filter ([`Wire::set_filter`]) sees it first and may pass or drop it (and
//! keep a copy, to answer it as a hop would with [`crate::net::Net::inject`]);
//! then the seeded random impairments apply. [`Wire::pop`] hands packets to
//! the router in delivery order. Nothing here knows about NAT or TCP: the
//! [`crate::net::Net`] decides where a popped packet goes.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Who put a packet on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// A smoltcp host transmitted it (client or backend).
    Host,
    /// The engine emitted it (`Verdict::Forward` or `Verdict::Respond`).
    Nat,
}

/// What a filter decides for one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Deliver it (subject to the random impairments).
    Pass,
    /// Lose it.
    Drop,
}

/// A test's hook on the wire: sees each packet with the leg it came from.
pub type Filter = Box<dyn FnMut(Leg, &[u8]) -> Fate>;

/// What the wire did, for assertions that the impairments really happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Packets handed to [`Wire::send`].
    pub sent: u64,
    /// Packets handed out by [`Wire::pop`].
    pub delivered: u64,
    /// Packets lost at random.
    pub lost: u64,
    /// Extra copies made at random.
    pub duplicated: u64,
    /// Packets held back behind the next one at random.
    pub reordered: u64,
    /// Packets a filter dropped.
    pub filtered: u64,
}

/// The links between the hosts and the engine, with seeded impairments.
pub struct Wire {
    rng: StdRng,
    loss: f64,
    dup: f64,
    reorder: f64,
    filter: Option<Filter>,
    queue: VecDeque<(Leg, Vec<u8>)>,
    held: Option<(Leg, Vec<u8>)>,
    capture: Option<Vec<(Leg, Vec<u8>)>>,
    /// Counters of what the wire did.
    pub stats: WireStats,
}

impl Wire {
    /// Create a perfect wire; `seed` fixes the impairments' random sequence.
    pub fn new(seed: u64) -> Self {
        Wire {
            rng: StdRng::seed_from_u64(seed),
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            filter: None,
            queue: VecDeque::new(),
            held: None,
            capture: None,
            stats: WireStats::default(),
        }
    }

    /// Lose, duplicate and reorder each transmitted packet with these probabilities.
    pub fn impair(&mut self, loss: f64, dup: f64, reorder: f64) {
        self.loss = loss;
        self.dup = dup;
        self.reorder = reorder;
    }

    /// Install a filter that sees every host and engine packet first.
    pub fn set_filter(&mut self, filter: impl FnMut(Leg, &[u8]) -> Fate + 'static) {
        self.filter = Some(Box::new(filter));
    }

    /// Start recording every delivered packet (see [`Wire::captured`]).
    pub fn capture(&mut self) {
        self.capture.get_or_insert_with(Vec::new);
    }

    /// Return the packets delivered since [`Wire::capture`], in order.
    pub fn captured(&self) -> &[(Leg, Vec<u8>)] {
        self.capture.as_deref().unwrap_or(&[])
    }

    /// Put a packet on the wire.
    pub fn send(&mut self, leg: Leg, pkt: Vec<u8>) {
        self.stats.sent += 1;
        if let Some(filter) = self.filter.as_mut() {
            if filter(leg, &pkt) == Fate::Drop {
                self.stats.filtered += 1;
                return;
            }
        }
        // Draw all three every time so the sequence depends only on the seed
        // and the packet count, not on which impairment fired.
        let (lose, dup, reorder): (f64, f64, f64) =
            (self.rng.random(), self.rng.random(), self.rng.random());
        if lose < self.loss {
            self.stats.lost += 1;
            return;
        }
        if reorder < self.reorder && self.held.is_none() {
            self.stats.reordered += 1;
            self.held = Some((leg, pkt));
            return;
        }
        if dup < self.dup {
            self.stats.duplicated += 1;
            self.queue.push_back((leg, pkt.clone()));
        }
        self.queue.push_back((leg, pkt));
        // A held packet goes out right behind the one that overtook it.
        if let Some(held) = self.held.take() {
            self.queue.push_back(held);
        }
    }

    /// Take the next packet to deliver.
    pub fn pop(&mut self) -> Option<(Leg, Vec<u8>)> {
        let (leg, pkt) = self.queue.pop_front()?;
        self.stats.delivered += 1;
        if let Some(c) = self.capture.as_mut() {
            c.push((leg, pkt.clone()));
        }
        Some((leg, pkt))
    }

    /// Release a held-back packet when nothing else came to overtake it.
    /// Returns whether there was one.
    pub fn flush(&mut self) -> bool {
        match self.held.take() {
            Some(held) => {
                self.queue.push_back(held);
                true
            }
            None => false,
        }
    }
}
