//! `tunlb events`: the flow table's changes as they happen, like
//! `conntrack -E`.
//!
//! The engine reports a NEW flow, each state change (UPDATE) and each flow
//! leaving the table (DESTROY: expiry, eviction, an RST before any reply, a
//! flow replaced by a new SYN) to its [`Hub`], at the same points where
//! [`crate::trace`] writes its teaching line. The hub hands a copy of each
//! [`Event`] to every [`Subscription`] (the control socket's `events`
//! request makes one per client):
//!
//! ```text
//!     [NEW] tcp      6 120 SYN_SENT src=198.18.1.2 dst=198.18.0.1 sport=40000 dport=80 [UNREPLIED] src=198.18.2.3 dst=198.18.0.1 sport=80 dport=40000 backend=198.18.2.3:80 (nth: backend 1 of 4)
//!  [UPDATE] tcp      6 60 SYN_RECV src=198.18.1.2 dst=198.18.0.1 sport=40000 dport=80 src=198.18.2.3 dst=198.18.0.1 sport=80 dport=40000 backend=198.18.2.3:80
//! [DESTROY] tcp      6 src=198.18.1.2 dst=198.18.0.1 sport=40000 dport=80 packets=6 bytes=402 src=198.18.2.3 dst=198.18.0.1 sport=80 dport=40000 packets=4 bytes=459 [ASSURED] backend=198.18.2.3:80 (timeout)
//! ```
//!
//! # Never in the datapath's way
//! With nobody listening, a report costs one relaxed load. With listeners,
//! each gets its own bounded queue ([`QUEUE`] events) filled with
//! `try_send`: a packet thread never waits for a reader. A reader too slow
//! to keep up loses the events that do not fit; they are counted, and
//! [`Subscription::take_lost`] tells the reader how many. At most
//! [`MAX_LISTENERS`] listen at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::json;

use crate::conntrack::tuple::IpAddress;
use crate::conntrack::{Flow, TcpState, Tuple};
use crate::time::Timestamp;

/// Events one listener's queue holds before it loses some.
pub const QUEUE: usize = 4096;
/// Listeners at once.
pub const MAX_LISTENERS: usize = 4;

/// What happened to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A flow entered the table; `how` is the decision, e.g. `nth: backend 1 of 4`.
    New {
        /// Picked up mid-stream rather than made by a SYN.
        pickup: bool,
    },
    /// The flow's state changed from `old`.
    Update {
        /// The state before.
        old: TcpState,
    },
    /// The flow left the table, for this reason (`timeout`, ...).
    Destroy {
        /// Why, in the words of `--trace`.
        why: &'static str,
    },
}

/// One change of the flow table: a copy of the flow's visible parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: Kind,
    /// The ORIGINAL tuple.
    pub original: Tuple<IpAddr>,
    /// The REPLY tuple.
    pub reply: Tuple<IpAddr>,
    /// The state after the event.
    pub state: TcpState,
    /// The backend.
    pub backend: SocketAddr,
    /// `IPS_SEEN_REPLY`.
    pub seen_reply: bool,
    /// `IPS_ASSURED`.
    pub assured: bool,
    /// When the flow expires unless more traffic comes.
    pub deadline: Timestamp,
    /// Packets per direction so far.
    pub packets: [u64; 2],
    /// Bytes per direction so far.
    pub bytes: [u64; 2],
    /// For a NEW flow: the selector's name, the backend's 1-based index and
    /// the number of backends.
    pub decision: Option<(&'static str, usize, usize)>,
}

impl Event {
    /// Copy what an event shows of `flow`.
    pub fn of<A: IpAddress>(flow: &Flow<A>, kind: Kind) -> Self {
        Event {
            kind,
            original: flow.original.widen(),
            reply: flow.reply.widen(),
            state: flow.state,
            backend: flow.backend.addr,
            seen_reply: flow.seen_reply,
            assured: flow.assured,
            deadline: flow.deadline(),
            packets: flow.packets,
            bytes: flow.bytes,
            decision: None,
        }
    }

    /// Format the event as `conntrack -E` prints it, plus tunlb's backend,
    /// the decision of a NEW flow and the reason of a DESTROY; `now` gives
    /// the seconds left.
    pub fn text(&self, now: Timestamp) -> String {
        let tag = match self.kind {
            Kind::New { .. } => "[NEW]",
            Kind::Update { .. } => "[UPDATE]",
            Kind::Destroy { .. } => "[DESTROY]",
        };
        let (o, r) = (self.original, self.reply);
        let destroy = matches!(self.kind, Kind::Destroy { .. });
        let mut s = format!("{tag:>9} tcp      6 ");
        if !destroy {
            s += &format!("{} {} ", now.until(self.deadline).as_secs(), self.state);
        }
        let acct = |d: usize| {
            if destroy {
                format!(" packets={} bytes={}", self.packets[d], self.bytes[d])
            } else {
                String::new()
            }
        };
        s += &format!(
            "src={} dst={} sport={} dport={}{}{} src={} dst={} sport={} dport={}{}{} backend={}",
            o.src.ip(),
            o.dst.ip(),
            o.src.port(),
            o.dst.port(),
            acct(0),
            if self.seen_reply { "" } else { " [UNREPLIED]" },
            r.src.ip(),
            r.dst.ip(),
            r.src.port(),
            r.dst.port(),
            acct(1),
            if self.assured { " [ASSURED]" } else { "" },
            self.backend
        );
        match (self.kind, self.decision) {
            (Kind::New { pickup }, Some((mode, i, n))) => {
                s += &format!(
                    " ({}{mode}: backend {i} of {n})",
                    if pickup { "picked up, " } else { "" }
                );
            }
            (Kind::Destroy { why }, _) => s += &format!(" ({why})"),
            _ => {}
        }
        s
    }

    /// The event as JSON (one object per line in `tunlb events --json`).
    pub fn json(&self, now: Timestamp) -> serde_json::Value {
        let (kind, extra) = match self.kind {
            Kind::New { pickup } => ("new", json!({"pickup": pickup})),
            Kind::Update { old } => ("update", json!({"old_state": old.name()})),
            Kind::Destroy { why } => ("destroy", json!({"reason": why})),
        };
        let mut v = json!({
            "type": kind,
            "state": self.state.name(),
            "original": {"src": self.original.src.to_string(), "dst": self.original.dst.to_string(),
                         "packets": self.packets[0], "bytes": self.bytes[0]},
            "reply": {"src": self.reply.src.to_string(), "dst": self.reply.dst.to_string(),
                      "packets": self.packets[1], "bytes": self.bytes[1]},
            "backend": self.backend.to_string(),
            "seen_reply": self.seen_reply,
            "assured": self.assured,
        });
        if !matches!(self.kind, Kind::Destroy { .. }) {
            v["timeout_secs"] = json!(now.until(self.deadline).as_secs());
        }
        if let Some((mode, i, n)) = self.decision {
            v["mode"] = json!(mode);
            v["backend_index"] = json!(i);
            v["backends"] = json!(n);
        }
        for (k, x) in extra.as_object().expect("an object") {
            v[k] = x.clone();
        }
        v
    }
}

/// One listener's end in the hub.
#[derive(Debug)]
struct Tap {
    tx: SyncSender<Event>,
    lost: AtomicU64,
}

/// Where the engine reports events, and listeners subscribe.
#[derive(Debug, Default)]
pub struct Hub {
    /// Whether anyone listens: the only thing read when nobody does.
    on: AtomicBool,
    taps: ArcSwap<Vec<Arc<Tap>>>,
    /// Serialises subscribing and unsubscribing.
    edit: Mutex<()>,
}

impl Hub {
    /// Return whether anyone listens (one relaxed load).
    #[inline]
    pub fn listening(&self) -> bool {
        self.on.load(Relaxed)
    }

    /// Hand `event` to every listener whose queue has room; count it lost
    /// for the others. Never waits.
    pub fn publish(&self, event: impl FnOnce() -> Event) {
        if !self.listening() {
            return;
        }
        let event = event();
        for tap in self.taps.load().iter() {
            match tap.tx.try_send(event) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {
                    tap.lost.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// Start listening; `None` when [`MAX_LISTENERS`] already do.
    pub fn subscribe(self: &Arc<Self>) -> Option<Subscription> {
        let _edit = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let taps = self.taps.load_full();
        if taps.len() >= MAX_LISTENERS {
            return None;
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let tap = Arc::new(Tap {
            tx,
            lost: AtomicU64::new(0),
        });
        let mut next = (*taps).clone();
        next.push(tap.clone());
        self.taps.store(Arc::new(next));
        self.on.store(true, Relaxed);
        Some(Subscription {
            hub: self.clone(),
            tap,
            rx,
        })
    }

    /// Return how many listen.
    pub fn listeners(&self) -> usize {
        self.taps.load().len()
    }
}

/// One listener: events arrive in order; dropping it stops them.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    tap: Arc<Tap>,
    rx: Receiver<Event>,
}

impl Subscription {
    /// Wait up to `timeout` for the next event.
    pub fn next(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Return the next event if one waits.
    pub fn try_next(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Return how many events were lost since the last call (the queue was
    /// full: this listener did not keep up).
    pub fn take_lost(&self) -> u64 {
        self.tap.lost.swap(0, Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _edit = self.hub.edit.lock().unwrap_or_else(|p| p.into_inner());
        let next: Vec<Arc<Tap>> = self
            .hub
            .taps
            .load()
            .iter()
            .filter(|t| !Arc::ptr_eq(t, &self.tap))
            .cloned()
            .collect();
        self.hub.on.store(!next.is_empty(), Relaxed);
        self.hub.taps.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;

    fn flow() -> Flow {
        let b = Arc::new(Backend::new("198.18.2.3:80".parse().unwrap()));
        let mut f = Flow::new(
            Tuple::new([198, 18, 1, 2].into(), 40000, [198, 18, 0, 1].into(), 80),
            Tuple::new([198, 18, 2, 3].into(), 80, [198, 18, 0, 1].into(), 40000),
            b,
            Timestamp::from_millis(120_000),
        );
        f.state = TcpState::SynSent;
        f
    }

    #[test]
    fn lines_in_conntrack_layout() {
        let mut e = Event::of(&flow(), Kind::New { pickup: false });
        e.decision = Some(("nth", 1, 4));
        assert_eq!(
            e.text(Timestamp::ZERO),
            "    [NEW] tcp      6 120 SYN_SENT src=198.18.1.2 dst=198.18.0.1 sport=40000 dport=80 [UNREPLIED] \
             src=198.18.2.3 dst=198.18.0.1 sport=80 dport=40000 backend=198.18.2.3:80 (nth: backend 1 of 4)"
        );
        let mut f = flow();
        f.state = TcpState::TimeWait;
        f.seen_reply = true;
        f.assured = true;
        f.packets = [6, 4];
        f.bytes = [402, 459];
        let e = Event::of(&f, Kind::Destroy { why: "timeout" });
        assert_eq!(
            e.text(Timestamp::ZERO),
            "[DESTROY] tcp      6 src=198.18.1.2 dst=198.18.0.1 sport=40000 dport=80 packets=6 bytes=402 \
             src=198.18.2.3 dst=198.18.0.1 sport=80 dport=40000 packets=4 bytes=459 [ASSURED] backend=198.18.2.3:80 (timeout)"
        );
        let e = Event::of(
            &f,
            Kind::Update {
                old: TcpState::LastAck,
            },
        );
        assert!(e
            .text(Timestamp::from_millis(60_000))
            .starts_with(" [UPDATE] tcp      6 60 TIME_WAIT src="));
        let j = e.json(Timestamp::ZERO);
        assert_eq!(
            (
                j["type"].as_str(),
                j["old_state"].as_str(),
                j["state"].as_str()
            ),
            (Some("update"), Some("LAST_ACK"), Some("TIME_WAIT"))
        );
    }

    #[test]
    fn every_listener_gets_every_event_and_a_full_queue_loses_and_counts() {
        let hub = Arc::new(Hub::default());
        let mut made = 0;
        hub.publish(|| {
            made += 1;
            Event::of(&flow(), Kind::New { pickup: false })
        });
        assert_eq!(made, 0, "nobody listens: no event is even made");
        let a = hub.subscribe().unwrap();
        let b = hub.subscribe().unwrap();
        assert!(hub.listening());
        for _ in 0..QUEUE + 10 {
            hub.publish(|| Event::of(&flow(), Kind::Destroy { why: "timeout" }));
            // a keeps up, b does not read
            assert!(a.try_next().is_some());
        }
        assert_eq!(a.take_lost(), 0);
        assert_eq!(b.take_lost(), 10);
        assert_eq!(b.take_lost(), 0, "counted once");
        let mut n = 0;
        while b.try_next().is_some() {
            n += 1;
        }
        assert_eq!(n, QUEUE);
        let others: Vec<_> = (2..MAX_LISTENERS)
            .map(|_| hub.subscribe().unwrap())
            .collect();
        assert!(hub.subscribe().is_none(), "at most MAX_LISTENERS");
        drop(others);
        drop(a);
        assert_eq!(hub.listeners(), 1);
        drop(b);
        assert!(!hub.listening());
        assert_eq!(hub.listeners(), 0);
    }
}
