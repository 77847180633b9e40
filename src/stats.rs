//! Counters: why packets were dropped, what was forwarded, per backend.
//!
//! Every packet the engine is handed ends in exactly one counter: a
//! [`DropReason`] or `forwarded[direction]`. Counters are relaxed atomics
//! indexed by enum discriminant (cheap enough for the packet path) and are
//! read as a [`Snapshot`].
//!
//! Each list is written once: the drop reasons with their names in the
//! `drop_reasons!` table, the other event counters with their names and
//! help in the `event_counters!` table. The stats line, `tunlb stats
//! --json` and `/metrics` all print from [`DropReason::ALL`] and
//! [`Snapshot::EVENTS`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Declare [`DropReason`] with its `COUNT`, `ALL` and `name()` from one
/// table: each reason with its doc and its counter's name, in discriminant
/// order.
macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $reason:ident => $name:literal,)*) => {
        /// Why a packet was not forwarded. Each is a counter; none is an error that
        /// stops the datapath (bad input is normal input).
        // A word, like `Verdict`'s lengths, so that a `Verdict` and the
        // engine's `Result<Verdict, DropReason>` are a (tag, word) pair the
        // compiler keeps in registers. With a byte here they went through
        // memory, written a field at a time and read back whole: a
        // store-forwarding stall on every packet (seen in a profile of
        // `cargo bench --bench engine`, gone with the word).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        #[repr(usize)]
        pub enum DropReason {
            $($(#[$doc])* $reason,)*
        }

        impl DropReason {
            /// The number of reasons, for tables indexed by reason.
            pub const COUNT: usize = DropReason::ALL.len();

            /// Every reason, in discriminant order.
            pub const ALL: [DropReason; [$(DropReason::$reason),*].len()] =
                [$(DropReason::$reason),*];

            /// Return the counter's name, as printed in stats and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$reason => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// Neither an IPv4 nor an IPv6 packet (the version nibble is neither 4 nor 6).
    NotIp => "not_ip",
    /// IPv6 neighbour discovery, MLD or a router solicitation: what a host's
    /// stack sends on any fresh interface, the TUN included. Not an error,
    /// ignored quietly (no log).
    Ipv6Control => "ipv6_control",
    /// Shorter than its headers or its own total length.
    Truncated => "truncated",
    /// IPv4 header length below 20 bytes, a TCP data offset below 5, an IPv6
    /// jumbogram or a malformed extension-header chain.
    BadHeader => "bad_header",
    /// An IPv4, TCP or ICMP checksum does not verify.
    BadChecksum => "bad_checksum",
    /// An IPv4 fragment or an IPv6 packet with a fragment header: tunlb does
    /// not reassemble (conntrack does).
    Fragment => "fragment",
    /// Neither TCP nor an ICMP error.
    NotTcp => "not_tcp",
    /// To an address that is no service's VIP or MASQUERADE address, and
    /// matches no flow.
    NoService => "no_service",
    /// An invalid TCP flag combination (NULL, XMAS, SYN|FIN, bare FIN, ...).
    BadFlags => "bad_flags",
    /// To a service or MASQUERADE address, no flow has this tuple, and it is
    /// not a SYN to a service (INVALID: no loose pickup).
    NoFlowNotSyn => "invalid_no_flow",
    /// The state machine calls this segment INVALID for the flow's state.
    InvalidTransition => "invalid_state",
    /// A segment outside the flow's sequence window (`tcp_in_window`):
    /// beyond what the receiver allowed, or acknowledging data never sent.
    OutOfWindow => "out_of_window",
    /// An RST outside the receiver's window, or below what it acknowledged
    /// (a blind or stale reset).
    RstOutOfWindow => "rst_out_of_window",
    /// A segment from the client that the state table ignores (a SYN on an
    /// established flow, ...): it would change nothing, and passing it
    /// would let a spoofer probe the backend.
    Ignored => "ignored",
    /// Every backend of the service has weight 0: the client gets an RST.
    NoBackend => "no_backend",
    /// No free MASQUERADE port for the REPLY tuple.
    PortsExhausted => "ports_exhausted",
    /// The table is at `max_flows` and nothing could be evicted.
    TableFull => "table_full",
    /// An ICMP message that is not an error tunlb translates (echo, ...).
    IcmpNotError => "icmp_not_error",
    /// An ICMP error about no tracked flow, or about non-TCP.
    IcmpUntracked => "icmp_untracked",
}

impl DropReason {
    /// Return what tunlb sends back for a packet dropped for this reason.
    /// One place decides it; see [`Response`].
    pub const fn response(self) -> Response {
        match self {
            // A client must not hang on a service with no backend.
            DropReason::NoBackend => Response::Reset,
            // Like the kernel: a SYN that cannot be tracked vanishes; the
            // client retransmits and may get through once room is made.
            _ => Response::Silence,
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the engine answers a dropped packet with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// Nothing.
    Silence,
    /// A TCP RST from the service address to the client.
    Reset,
}

/// Declare the engine's event counters, each once: a field of
/// [`Counters`] (an atomic) and of [`Snapshot`] (its value), and an entry
/// of [`Snapshot::EVENTS`] with the names stats and metrics print it under.
macro_rules! event_counters {
    ($($(#[$doc:meta])* $field:ident: $short:literal, $metric:literal, $help:literal;)*) => {
        /// The engine's counters.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            drops: [AtomicU64; DropReason::COUNT],
            forwarded: [AtomicU64; 2],
            $($(#[$doc])* pub(crate) $field: AtomicU64,)*
        }

        impl Counters {
            /// Read the counters.
            pub(crate) fn snapshot(&self) -> Snapshot {
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                Snapshot {
                    drops: std::array::from_fn(|i| get(&self.drops[i])),
                    forwarded: [get(&self.forwarded[0]), get(&self.forwarded[1])],
                    $($field: get(&self.$field),)*
                    backends: Vec::new(),
                    flows: 0,
                }
            }
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct Snapshot {
            /// Drops, indexed by `DropReason as usize`.
            pub drops: [u64; DropReason::COUNT],
            /// Forwarded packets, ORIGINAL and REPLY.
            pub forwarded: [u64; 2],
            $($(#[$doc])* pub $field: u64,)*
            /// The counters of each backend of each service.
            pub backends: Vec<BackendSnapshot>,
            /// Flows in the table.
            pub flows: usize,
        }

        impl Snapshot {
            /// Every event counter, in field order.
            pub const EVENTS: &[Event] = &[$(Event {
                key: stringify!($field),
                short: $short,
                metric: $metric,
                help: $help,
                get: |s| s.$field,
            },)*];
        }
    };
}

event_counters! {
    /// Flows created (NEW connections admitted).
    new_flows: "new", "tunlb_flows_created_total", "NEW connections admitted.";
    /// Flows removed because their timeout passed.
    expired: "expired", "tunlb_flows_expired_total", "Flows removed by timeout.";
    /// Flows removed early to admit a new one (table full).
    evicted: "evicted", "tunlb_flows_evicted_total", "Flows evicted to admit new ones (table full).";
    /// ICMP errors translated (RELATED).
    icmp_translated: "icmp", "tunlb_icmp_translated_total", "ICMP errors translated (RELATED).";
    /// RSTs sent to clients.
    resets_sent: "rst", "tunlb_resets_sent_total", "RSTs sent to clients (no backend).";
    /// Packets forwarded without changing their flow: harmless segments
    /// outside the window (old retransmissions, late ACKs), in-window RSTs
    /// that are not exact, and REPLY segments the state table ignores.
    untracked: "untracked", "tunlb_packets_untracked_total",
        "Packets forwarded without changing their flow (old retransmissions, late ACKs, inexact in-window RSTs, ignored replies).";
    /// SYN retransmissions re-dispatched to another backend because the
    /// first never answered and is now down, drained or removed.
    redispatched: "redispatched", "tunlb_syns_redispatched_total",
        "Retransmitted SYNs sent to another backend: the first never answered and is down, drained or removed.";
    /// Flows picked up mid-stream (`--pickup`): created by an ORIGINAL ACK
    /// of a flow tunlb had no entry for.
    picked_up: "pickup", "tunlb_flows_picked_up_total",
        "Flows picked up mid-stream (--pickup): created by an ORIGINAL ACK, not a SYN.";
    /// Picked-up flows whose client port could not be kept on its SNAT
    /// address: their translation depended on what this table held, and may
    /// differ from the one chosen at their SYN (the backend then resets them).
    pickup_remapped: "pickup_remapped", "tunlb_flows_picked_up_remapped_total",
        "Picked-up flows whose client port could not be kept: their translation may differ from the one chosen at the SYN.";
    /// Flows restored from the state file at start (`--state-file`).
    restored: "restored", "tunlb_flows_restored_total",
        "Flows restored from the state file at start (--state-file).";
}

/// One event counter of [`Snapshot::EVENTS`]: its names and how to read it.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// Its key in `tunlb stats --json`: the field's name.
    pub key: &'static str,
    /// Its name in the one-line [`Snapshot`] display.
    pub short: &'static str,
    /// Its Prometheus metric name.
    pub metric: &'static str,
    /// Its Prometheus help text.
    pub help: &'static str,
    /// Read it from a snapshot.
    pub get: fn(&Snapshot) -> u64,
}

impl Counters {
    /// Count one packet dropped for `reason`.
    #[inline]
    pub(crate) fn drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Count one ICMP error forwarded in direction `dir` (0 ORIGINAL, 1
    /// REPLY). TCP packets are counted in their flows instead.
    #[inline]
    pub(crate) fn forward(&self, dir: usize) {
        self.forwarded[dir].fetch_add(1, Ordering::Relaxed);
    }
}

/// The counters of one backend at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSnapshot {
    /// The service's VIP:port.
    pub service: std::net::SocketAddr,
    /// The backend's address:port.
    pub backend: std::net::SocketAddr,
    /// Its configured weight.
    pub weight: u32,
    /// Whether health checks consider it up.
    pub up: bool,
    /// Flows in the table that use it.
    pub active: u64,
    /// Connections sent to it.
    pub connections: u64,
    /// Packets forwarded to and from it.
    pub packets: u64,
    /// Bytes forwarded to and from it.
    pub bytes: u64,
}

impl Snapshot {
    /// Return the count of drops for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Return the total of all drops.
    pub fn total_dropped(&self) -> u64 {
        self.drops.iter().sum()
    }
}

impl fmt::Display for Snapshot {
    /// One line: flows, forwarded, new, then every non-zero drop counter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The ORIGINAL and REPLY counts follow `new`.
        let (new, rest) = Snapshot::EVENTS.split_at(1);
        write!(f, "flows={}", self.flows)?;
        for e in new {
            write!(f, " {}={}", e.short, (e.get)(self))?;
        }
        write!(
            f,
            " fwd_orig={} fwd_reply={}",
            self.forwarded[0], self.forwarded[1]
        )?;
        for e in rest {
            write!(f, " {}={}", e.short, (e.get)(self))?;
        }
        for r in DropReason::ALL {
            let n = self.dropped(r);
            if n > 0 {
                write!(f, " drop_{}={}", r.name(), n)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
impl Snapshot {
    /// A snapshot whose every counter holds a value of its own: drops
    /// 100 + discriminant, forwarded 11 and 12, the rest 1 to 8, 10 and 11
    /// in field order, 9 flows, one backend.
    pub(crate) fn sample() -> Snapshot {
        Snapshot {
            drops: std::array::from_fn(|i| 100 + i as u64),
            forwarded: [11, 12],
            new_flows: 1,
            expired: 2,
            evicted: 3,
            icmp_translated: 4,
            resets_sent: 5,
            untracked: 6,
            redispatched: 7,
            picked_up: 8,
            pickup_remapped: 10,
            restored: 11,
            backends: vec![BackendSnapshot {
                service: "198.18.0.1:80".parse().unwrap(),
                backend: "198.18.2.3:8080".parse().unwrap(),
                weight: 2,
                up: true,
                active: 21,
                connections: 22,
                packets: 23,
                bytes: 24,
            }],
            flows: 9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_reason_is_listed_once_in_discriminant_order_with_a_name_of_its_own() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        let names: HashSet<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::COUNT);
        assert_eq!(DropReason::NoFlowNotSyn.to_string(), "invalid_no_flow");
    }

    #[test]
    fn every_event_counter_has_names_of_its_own_and_reads_its_own_field() {
        for names in [
            Snapshot::EVENTS
                .iter()
                .map(|e| e.key)
                .collect::<HashSet<_>>(),
            Snapshot::EVENTS.iter().map(|e| e.short).collect(),
            Snapshot::EVENTS.iter().map(|e| e.metric).collect(),
        ] {
            assert_eq!(names.len(), Snapshot::EVENTS.len(), "{names:?}");
        }
        // The sample's event counters hold 1, 2, ... in field order.
        let s = Snapshot::sample();
        let read: Vec<u64> = Snapshot::EVENTS.iter().map(|e| (e.get)(&s)).collect();
        assert_eq!(read, [1, 2, 3, 4, 5, 6, 7, 8, 10, 11]);
    }

    #[test]
    fn the_display_line_is_pinned() {
        assert_eq!(
            Snapshot::default().to_string(),
            "flows=0 new=0 fwd_orig=0 fwd_reply=0 expired=0 evicted=0 icmp=0 rst=0 untracked=0 redispatched=0 pickup=0 pickup_remapped=0 restored=0",
            "drops of zero are left out"
        );
        assert_eq!(
            Snapshot::sample().to_string(),
            "flows=9 new=1 fwd_orig=11 fwd_reply=12 expired=2 evicted=3 icmp=4 rst=5 untracked=6 redispatched=7 pickup=8 pickup_remapped=10 restored=11 drop_not_ip=100 drop_ipv6_control=101 drop_truncated=102 drop_bad_header=103 drop_bad_checksum=104 drop_fragment=105 drop_not_tcp=106 drop_no_service=107 drop_bad_flags=108 drop_invalid_no_flow=109 drop_invalid_state=110 drop_out_of_window=111 drop_rst_out_of_window=112 drop_ignored=113 drop_no_backend=114 drop_ports_exhausted=115 drop_table_full=116 drop_icmp_not_error=117 drop_icmp_untracked=118"
        );
    }
}
