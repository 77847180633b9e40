//! The sans-IO NAT engine: bytes in, a verdict and rewritten bytes out.
//!
//! [`Engine::handle_packet`] is the whole of what iptables does for a load balancer
//! in `PREROUTING` and `POSTROUTING`, for one packet:
//!
//! 1. parse ([`crate::wire`]): the IPv4 header, then the TCP segment or the
//!    ICMP error, each into a small summary; anything malformed is dropped
//!    with the [`DropReason`] the parser names;
//! 2. conntrack lookup of the packet's tuple in the [`ConnTable`]: a match on
//!    an ORIGINAL tuple or a REPLY tuple gives the flow and the direction;
//! 3. a miss on a service's `VIP:port` with a SYN is a NEW connection: the
//!    service's [`crate::select::Selector`] picks a backend (`-m statistic`),
//!    MASQUERADE picks a source port ([`crate::conntrack::ports`]) and the flow
//!    is inserted under both tuples;
//! 4. the TCP state machine ([`crate::conntrack::tcp`]) accepts, ignores or
//!    calls the segment INVALID; INVALID packets are dropped, **never
//!    forwarded untranslated**;
//! 5. the packet is rewritten in one step ([`crate::nat`]): ORIGINAL
//!    `C:cp -> VIP:vp` becomes `S:sp -> B:bp` (DNAT + MASQUERADE), REPLY
//!    `B:bp -> S:sp` becomes `VIP:vp -> C:cp`, checksums fixed incrementally.
//!
//! ICMP errors (types 3, 4, 11, 12) quoting a tracked flow are RELATED: both
//! the outer and the quoted header are translated and the flow's state is
//! left alone (RFC 5382 REQ-9, REQ-10), so path-MTU discovery works.
//!
//! # The contract with the shell
//! - The engine owns no file descriptor, thread or clock. Time is the `now`
//!   argument, monotonically non-decreasing across calls; randomness comes from
//!   the configured seed.
//! - `&Engine` is shared by every packet thread (`Engine: Sync`).
//! - Call [`Engine::handle_timeout`] when [`Engine::poll_timeout`] says so (an early
//!   call is a harmless no-op); each call does bounded work.
//! - No allocation on the path of an established flow.
//!
//! The method names say their kind, as quinn-proto's do: `handle_*` feeds
//! the engine an input (a packet, the passing of time), `poll_*` asks it
//! when it next needs the caller.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use arc_swap::ArcSwap;
use smoltcp::wire::IpProtocol;

use crate::conntrack::ports::{self, HashKey};
use crate::conntrack::table::{Absent, Admission, SpinGuard, SpinLock};
use crate::conntrack::tcp::{self, Cell, FlagClass, TcpState};
use crate::conntrack::tuple::{Endpoint, IpAddress};
use crate::conntrack::window::{self, Check, RstCheck};
use crate::conntrack::{ConnTable, Direction, Flow, Tuple};
use crate::nat;
pub use crate::nat::L4Checksum;
use crate::service::{ConfigError, EngineConfig, Service};
use crate::state::SavedFlow;
use crate::stats::{BackendSnapshot, Counters, DropReason, Response, Snapshot};
use crate::time::Timestamp;
use crate::trace;
use crate::wire::{IcmpErrorRepr, IpRepr, TcpRepr};

/// What the caller does with the packet after [`Engine::handle_packet`].
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The packet was rewritten in place: write its first `len` bytes back.
    Forward {
        /// The packet's length (its IPv4 total length).
        len: usize,
    },
    /// The packet was replaced by a response to its sender (a RST): write
    /// the first `len` bytes back.
    Respond {
        /// The response's length.
        len: usize,
    },
    /// Drop the packet; the reason has been counted.
    Drop(DropReason),
}

/// What [`Engine::restore_flows`] did with a saved table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Flows back in the table.
    pub restored: usize,
    /// Flows of a service that is no longer configured.
    pub no_service: usize,
    /// Flows of a backend that is no longer in its service.
    pub no_backend: usize,
    /// Flows whose timeout ran out while tunlb was down.
    pub expired: usize,
    /// Flows whose tuples are already taken (a duplicate in the file).
    pub clash: usize,
    /// Flows beyond the table's limit.
    pub no_room: usize,
    /// Entries that name no TCP state (a file from a buggy writer).
    pub damaged: usize,
}

impl RestoreReport {
    /// Return how many saved flows were not restored.
    pub fn dropped(&self) -> usize {
        self.no_service + self.no_backend + self.expired + self.clash + self.no_room + self.damaged
    }
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} flows restored", self.restored)?;
        if self.dropped() > 0 {
            write!(
                f,
                "; not restored: {} of removed services, {} of removed backends, {} expired while down, \
                 {} clashing, {} over --max-flows, {} damaged",
                self.no_service, self.no_backend, self.expired, self.clash, self.no_room, self.damaged
            )?;
        }
        Ok(())
    }
}

/// The size of the flow table's bookkeeping (see [`Engine::bookkeeping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bookkeeping {
    /// Entries in the eviction queue of flows that may be unreplied.
    pub eviction_entries: usize,
}

/// The NAT engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    /// The running configuration, for every reader but admitters (which
    /// use the [`Admitter`]'s copy, the same one, under the lock).
    runtime: ArcSwap<Runtime>,
    /// The admission lock (see [`Admission`]): a spin lock, as the
    /// shards' are, since every hold is short (one admission; near port
    /// exhaustion, a search of at most `ports::MAX_TRIES` ports per SNAT
    /// address; a reload's swap). Restoring saved flows holds it longer,
    /// before the datapath starts.
    admitter: SpinLock<Admitter>,
    /// The runtime's timeouts in milliseconds, readable without loading it.
    timeouts_ms: [AtomicU64; TcpState::COUNT],
    /// The IPv4 flows.
    v4: ConnTable<Ipv4Addr>,
    /// The IPv6 flows, in a table of their own so an IPv4 flow costs what it
    /// did before IPv6 existed; both are held to one limit.
    v6: ConnTable<Ipv6Addr>,
    counters: Counters,
    verify_checksums: bool,
    /// `nf_conntrack_tcp_be_liberal`: out-of-window segments (but RSTs) pass.
    liberal: AtomicBool,
    /// `nf_conntrack_tcp_loose`: an ORIGINAL ACK of an unknown flow creates it.
    pickup: AtomicBool,
    /// The key of the SNAT address and port choices (`--hash-key`).
    port_key: HashKey,
    /// Rate-limited reports of refused NEW connections: table full, ports exhausted.
    refusals: [RateLog; 2],
    /// Listeners to NEW, UPDATE and DESTROY events (`tunlb events`).
    events: Arc<crate::events::Hub>,
}

/// What the admission lock guards: the right to admit into the tables,
/// and the configuration NEW connections are admitted under. A reload
/// replaces this copy and the [`Engine`]'s `runtime` together, holding the
/// lock; an admitter reads its configuration here without loading it
/// (which, through `ArcSwap`, costs two atomic read-modify-writes).
#[derive(Debug)]
struct Admitter {
    tables: Admission,
    runtime: Arc<Runtime>,
}

/// A warning that is logged at its first occurrence and then at most once
/// per [`RateLog::INTERVAL`], with the count of occurrences since the last
/// line (as the kernel's "nf_conntrack: table full, dropping packet").
#[derive(Debug)]
struct RateLog {
    /// Milliseconds of the last line, or `u64::MAX` before the first.
    last: AtomicU64,
    pending: AtomicU64,
}

impl RateLog {
    const INTERVAL_MS: u64 = 10_000;

    fn new() -> Self {
        RateLog {
            last: AtomicU64::new(u64::MAX),
            pending: AtomicU64::new(0),
        }
    }

    /// Count one occurrence at `now`; call `log` with the count to report
    /// when a line is due.
    fn hit(&self, now: Timestamp, log: impl FnOnce(u64)) {
        self.pending.fetch_add(1, Relaxed);
        let now = now.as_millis();
        let last = self.last.load(Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= Self::INTERVAL_MS;
        if due
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            log(self.pending.swap(0, Relaxed));
        }
    }
}

/// The part of the configuration a reload replaces atomically: packet
/// threads see either the old or the new one, never a mix.
#[derive(Debug)]
pub struct Runtime {
    /// The services, in configuration order.
    pub services: Vec<Service>,
    /// Per-state TCP timeouts.
    pub timeouts: tcp::Timeouts,
    /// The MASQUERADE port search range.
    pub snat_ports: RangeInclusive<u16>,
}

impl Runtime {
    fn build(cfg: &EngineConfig, previous: Option<&Runtime>) -> Self {
        let services = cfg
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let old = previous.and_then(|p| p.services.iter().find(|o| o.vip == s.vip));
                Service::new(s, cfg.seed.wrapping_add(i as u64), old)
            })
            .collect();
        Runtime {
            services,
            timeouts: cfg.timeouts,
            snat_ports: cfg.snat_ports.clone(),
        }
    }

    /// Return one line describing the services, for logs:
    /// `198.18.0.1:80 -> 4 backends (nth), ...`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .services
            .iter()
            .map(|s| {
                format!(
                    "{} -> {} backends ({})",
                    s.vip,
                    s.backends.len(),
                    s.mode.name()
                )
            })
            .collect();
        parts.join(", ")
    }

    /// Return the index of the service at `vip`, if any.
    #[inline]
    pub fn service_at(&self, vip: SocketAddr) -> Option<usize> {
        self.services.iter().position(|s| s.vip == vip)
    }
}

/// Why a packet that starts no flow and belongs to none is dropped: to a
/// VIP or MASQUERADE address, it is of a connection tunlb does not know
/// (INVALID: e.g. one in flight when tunlb restarted); elsewhere, it is
/// for no service.
fn no_flow<A: IpAddress>(rt: &Runtime, t: &Tuple<A>) -> DropReason {
    let dst: IpAddr = (*t.dst.ip()).into();
    let ours = rt
        .services
        .iter()
        .any(|s| s.vip.ip() == dst || s.snat.contains(&dst));
    if ours {
        DropReason::NoFlowNotSyn
    } else {
        DropReason::NoService
    }
}

impl Engine {
    /// Build an engine from a configuration, refusing an invalid one.
    pub fn new(cfg: EngineConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let limit = crate::conntrack::table::Limit::new(cfg.max_flows);
        let runtime = Arc::new(Runtime::build(&cfg, None));
        Ok(Engine {
            runtime: ArcSwap::new(runtime.clone()),
            admitter: SpinLock::new(Admitter {
                tables: Admission::new(),
                runtime,
            }),
            timeouts_ms: std::array::from_fn(|i| {
                AtomicU64::new(cfg.timeouts.get(TcpState::ALL[i]).as_millis() as u64)
            }),
            v4: ConnTable::with_limit(limit.clone(), cfg.hash_seed),
            v6: ConnTable::with_limit(limit, cfg.hash_seed.map(|s| s ^ 0x6)),
            counters: Counters::default(),
            verify_checksums: cfg.verify_checksums,
            liberal: AtomicBool::new(cfg.tcp_liberal),
            pickup: AtomicBool::new(cfg.pickup),
            port_key: cfg
                .hash_key
                .unwrap_or(HashKey([cfg.seed, cfg.seed ^ 0x5ca1_ab1e_7e57_5eed])),
            refusals: [RateLog::new(), RateLog::new()],
            events: Arc::default(),
        })
    }

    /// Return the running configuration (services, timeouts).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Replace the services, timeouts and limits without touching a flow.
    ///
    /// Flows keep their backend and their translation whatever the new
    /// configuration says: a removed or drained backend finishes its flows
    /// and takes no new ones; an added one starts taking connections at once.
    /// Backends that stay (same VIP, same address) keep their counters and
    /// health. An invalid configuration is refused and the old one runs on.
    /// The seed, the hash key and checksum verification are fixed at start.
    pub fn reconfigure(&self, cfg: &EngineConfig) -> Result<(), ConfigError> {
        cfg.validate()?;
        // Built before the lock is taken: NEW connections wait only for
        // the swap. Reloads come from one control thread at a time.
        let old = self.runtime.load_full();
        let new = Arc::new(Runtime::build(cfg, Some(&old)));
        let mut admitter = self.admission();
        self.runtime.store(new.clone());
        admitter.runtime = new;
        // One limit for both families' tables (they share it).
        self.v4.set_max(&mut admitter.tables, cfg.max_flows);
        drop(admitter);
        self.liberal.store(cfg.tcp_liberal, Relaxed);
        self.pickup.store(cfg.pickup, Relaxed);
        for (i, t) in self.timeouts_ms.iter().enumerate() {
            t.store(
                cfg.timeouts.get(TcpState::ALL[i]).as_millis() as u64,
                Relaxed,
            );
        }
        Ok(())
    }

    /// Handle one IPv4 packet read from the device, rewriting it in place.
    ///
    /// `pkt` holds exactly one packet. The verdict says what to write back;
    /// every packet ends in exactly one counter.
    pub fn handle_packet(&self, pkt: &mut [u8], now: Timestamp) -> Verdict {
        self.handle_offloaded_packet(pkt, now, L4Checksum::Complete)
    }

    /// [`Engine::handle_packet`] for a packet whose TCP checksum may be partial
    /// (read with a virtio-net header saying `NEEDS_CSUM`): it is neither
    /// verified nor folded, only moved by the address changes, and the
    /// device computes the final checksum later.
    pub fn handle_offloaded_packet(
        &self,
        pkt: &mut [u8],
        now: Timestamp,
        l4: L4Checksum,
    ) -> Verdict {
        let verdict = self
            .process_inner(pkt, now, l4)
            .unwrap_or_else(Verdict::Drop);
        if let Verdict::Drop(reason) = verdict {
            self.counters.drop(reason);
        }
        verdict
    }

    fn process_inner(
        &self,
        pkt: &mut [u8],
        now: Timestamp,
        l4: L4Checksum,
    ) -> Result<Verdict, DropReason> {
        match IpRepr::version(pkt) {
            Some(4) | None => {
                let ip = IpRepr::parse_ipv4(pkt, self.verify_checksums)?;
                self.process_ip::<Ipv4Addr>(pkt, &ip, IpProtocol::Icmp, now, l4)
            }
            Some(6) => {
                let ip = IpRepr::parse_ipv6(pkt)?;
                self.process_ip::<Ipv6Addr>(pkt, &ip, IpProtocol::Icmpv6, now, l4)
            }
            Some(_) => Err(DropReason::NotIp),
        }
    }

    /// Dispatch a checked IP packet of `A`'s family on its protocol: TCP,
    /// the family's ICMP (`icmp`), or anything else (not translated).
    #[inline(always)]
    fn process_ip<A: Family>(
        &self,
        pkt: &mut [u8],
        ip: &IpRepr,
        icmp: IpProtocol,
        now: Timestamp,
        l4: L4Checksum,
    ) -> Result<Verdict, DropReason> {
        if ip.protocol == IpProtocol::Tcp {
            let verify = self.verify_checksums && l4 == L4Checksum::Complete;
            let p = TcpRepr::<A>::parse(pkt, ip, verify)?;
            self.process_tcp(pkt, &p, now, l4)
        } else if ip.protocol == icmp {
            let icmp = IcmpErrorRepr::<A>::parse(pkt, ip, self.verify_checksums)?;
            self.process_icmp(pkt, &icmp, now)
        } else {
            Err(DropReason::NotTcp)
        }
    }

    /// Conntrack and NAT for a parsed TCP segment.
    #[inline(always)]
    fn process_tcp<A: Family>(
        &self,
        pkt: &mut [u8],
        p: &TcpRepr<A>,
        now: Timestamp,
        l4: L4Checksum,
    ) -> Result<Verdict, DropReason> {
        // The established path reads no configuration: a hit in the table
        // is all it needs (and the timeouts, kept as plain atomics).
        // Inlined, so that its result stays in registers (a `Known` returned
        // through memory was written a field at a time and copied whole: a
        // store-forwarding stall per packet).
        let known = A::table(self).find(
            &p.tuple,
            #[inline(always)]
            |flow, dir| self.known_flow(p, now, flow, dir),
        );
        match known {
            Ok(next) => self.after_known_flow(pkt, p, now, l4, next),
            Err(absent) => self.unknown_flow(pkt, p, now, l4, absent),
        }
    }

    /// A segment of a flow in the table, in direction `dir`, the flow locked:
    /// track it and say what comes next (forward it translated, or restart
    /// the flow, for a SYN that reopens it), for
    /// [`Engine::after_known_flow`] to do once the lock is released.
    #[inline(always)]
    fn known_flow<A: Family>(
        &self,
        p: &TcpRepr<A>,
        now: Timestamp,
        flow: &mut Flow<A>,
        dir: Direction,
    ) -> Known<A> {
        if flow.deadline() <= now {
            // Expired, and not swept yet: gone, as for `nf_ct_is_expired`
            // at lookup. No packet revives it.
            let (src, dst) = translate(flow, dir);
            return Known::Expired { dir, src, dst };
        }
        let (tuple, class) = (&p.tuple, p.class);
        if dir == Direction::Original && class == FlagClass::Syn {
            // A SYN reusing the tuple of a closed flow starts over
            // (RFC 1122); a SYN retransmitted to a backend that never
            // answered and can no longer take it goes elsewhere.
            let restart = if flow.state.reopens_on_syn() {
                Some("reopened by a new SYN")
            } else if flow.state == TcpState::SynSent
                && !flow.seen_reply
                && !self.backend_takes_new(tuple, &flow.backend)
            {
                Some("redispatched: the backend never answered and is down, drained or removed")
            } else {
                None
            };
            if let Some(why) = restart {
                return Known::Restart(Replace {
                    state: flow.state,
                    backend: Arc::as_ptr(&flow.backend),
                    why,
                });
            }
        }
        let had_reply = flow.seen_reply;
        let tracked = match self.track(flow, dir, class, &p.segment, now, p.len) {
            Ok(tracked) => tracked,
            Err(reason) => return Known::Drop(reason),
        };
        let (src, dst) = translate(flow, dir);
        // "If only reply is a RST, we can consider ourselves not to
        // have an established connection" (Linux): an RST either way
        // before any other reply ends the entry at once.
        let remove =
            tracked && flow.state == TcpState::Close && class == FlagClass::Rst && !had_reply;
        Known::Forward {
            dir,
            src,
            dst,
            tracked,
            remove,
        }
    }

    /// Do what [`Engine::known_flow`] decided for a segment, the flow's lock
    /// released: translate and forward it (removing the flow first if it was
    /// reset before any reply), or admit it as a new connection. Inlined,
    /// as [`Engine::track`] is: as calls, their arguments' spills and
    /// reloads were about 45 instructions per packet each.
    #[inline(always)]
    fn after_known_flow<A: Family>(
        &self,
        pkt: &mut [u8],
        p: &TcpRepr<A>,
        now: Timestamp,
        l4: L4Checksum,
        next: Known<A>,
    ) -> Result<Verdict, DropReason> {
        let (dir, src, dst, tracked, remove) = match next {
            Known::Restart(replace) => {
                return self.new_connection(pkt, p, now, l4, Admit::Reopen(replace));
            }
            Known::Drop(reason) => return Err(reason),
            Known::Expired { dir, src, dst } => {
                return self.expired_flow(pkt, p, now, l4, original_of(p, dir, src, dst));
            }
            Known::Forward {
                dir,
                src,
                dst,
                tracked,
                remove,
            } => (dir, src, dst, tracked, remove),
        };
        if !tracked {
            self.counters.untracked.fetch_add(1, Relaxed);
            self.counters.forward(dir.index());
        }
        if remove {
            let flow_key = original_of(p, dir, src, dst);
            if let Some(old) = A::table(self).remove_if(&flow_key, |f| f.state == TcpState::Close) {
                trace::destroy(&self.events, &old, "reset before any reply");
            }
        }
        nat::rewrite_tcp(pkt, p.ip_header_len, src, dst, l4);
        Ok(Verdict::Forward { len: p.len })
    }

    /// A segment of a flow whose deadline has passed before a sweep removed
    /// it (`original` is the flow's ORIGINAL tuple): remove it as the sweep
    /// would, then handle the segment as the first of no flow (a SYN opens
    /// a new connection; anything else is INVALID, or picked up).
    #[cold]
    #[inline(never)]
    fn expired_flow<A: Family>(
        &self,
        pkt: &mut [u8],
        p: &TcpRepr<A>,
        now: Timestamp,
        l4: L4Checksum,
        original: Tuple<A>,
    ) -> Result<Verdict, DropReason> {
        if let Some(old) = A::table(self).remove_if(&original, |f| f.deadline() <= now) {
            self.expired(old);
        }
        // The flow is gone (removed here or by another thread): this
        // lookup misses, or finds a flow admitted since, alive.
        self.process_tcp(pkt, p, now, l4)
    }

    /// A segment of no flow in the table: a NEW connection (a SYN to a
    /// service), a pickup (`--pickup`), or INVALID.
    fn unknown_flow<A: Family>(
        &self,
        pkt: &mut [u8],
        p: &TcpRepr<A>,
        now: Timestamp,
        l4: L4Checksum,
        absent: Absent,
    ) -> Result<Verdict, DropReason> {
        let class = p.class;
        if tcp::may_create(class) {
            self.new_connection(pkt, p, now, l4, Admit::Syn(absent))
        } else if class == FlagClass::Ack && self.pickup.load(Relaxed) {
            self.new_connection(pkt, p, now, l4, Admit::Pickup(absent))
        } else {
            Err(no_flow(&self.runtime.load(), &p.tuple))
        }
    }

    /// Take the admission lock (see [`Admission`]).
    fn admission(&self) -> SpinGuard<'_, Admitter> {
        self.admitter.lock()
    }

    /// Return whether `backend` may still take new connections for the
    /// service at `original.dst`: it is up, still configured, with weight > 0.
    fn backend_takes_new<A: Family>(
        &self,
        original: &Tuple<A>,
        backend: &Arc<crate::backend::Backend>,
    ) -> bool {
        if !backend.is_up() {
            return false;
        }
        let rt = self.runtime.load();
        let Some(si) = rt.service_at(original.dst.to_socket()) else {
            return false;
        };
        let svc = &rt.services[si];
        svc.backends
            .iter()
            .zip(&svc.weights)
            .any(|(b, &w)| w > 0 && Arc::ptr_eq(b, backend))
    }

    /// Return the timeout of `state`.
    #[inline]
    fn timeout(&self, state: TcpState) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeouts_ms[state as usize].load(Relaxed))
    }

    /// Run conntrack for one segment of an existing flow: the state table,
    /// then the window check (`tcp_packet` and `tcp_in_window`).
    ///
    /// Returns `Ok(true)` when the segment was tracked (state, windows,
    /// deadline and the flow's counters updated), `Ok(false)` when it is to
    /// be forwarded without touching the flow, and `Err` when it is INVALID.
    /// Whatever the outcome other than `Ok(true)`, the flow is as it was
    /// (but for `seen_reply` and `stray_ack`, see below).
    #[inline(always)]
    fn track<A: Family>(
        &self,
        flow: &mut Flow<A>,
        dir: Direction,
        class: FlagClass,
        seg: &window::Segment,
        now: Timestamp,
        len: usize,
    ) -> Result<bool, DropReason> {
        let old = flow.state;
        let d = dir.index();
        let new = match tcp::transition(dir, class, old) {
            Cell::Invalid => return Err(DropReason::InvalidTransition),
            Cell::Ignore if dir == Direction::Original => {
                // A SYN on a synchronized flow. Linux passes it untracked;
                // tunlb passes it only where it is the client's own SYN
                // again (SYN_RECV: the SYN-ACK was lost, and a backend using
                // SYN cookies will not send it again by itself) or when
                // liberal, and drops it elsewhere: it would change nothing
                // here, and passing it lets anyone who knows the tuple poke
                // the backend.
                let resent =
                    old == TcpState::SynRecv && seg.seq == flow.window[0].end.wrapping_sub(1);
                if resent || self.liberal.load(Relaxed) {
                    return Ok(false);
                }
                return Err(DropReason::Ignored);
            }
            Cell::Ignore => {
                // From the backend: a retransmitted SYN-ACK (the client's
                // ACK was lost: the client must see it again to answer), or
                // an ACK answering the SYN from an older connection on the
                // same tuple (a backend TIME_WAIT: the client resets it).
                // Passed untracked. Like Linux, any reply passed counts as
                // a reply (IPS_SEEN_REPLY).
                if old == TcpState::SynSent && class == FlagClass::Ack {
                    flow.set_stray_ack(Some(seg.ack));
                }
                if old == TcpState::SynRecv && class == FlagClass::SynAck {
                    // A new initial sequence number acknowledging the SYN
                    // exactly: the client will acknowledge this one.
                    window::resync_reply(&mut flow.window, seg);
                }
                flow.seen_reply = true;
                return Ok(false);
            }
            Cell::To(new) => new,
        };
        if class == FlagClass::Rst {
            match window::rst_check(&flow.window, d, old, seg, flow.assured, flow.stray_ack()) {
                RstCheck::Close => {}
                // In window, inexact: the endpoint will answer it with a
                // challenge ACK; the flow stays as it is.
                RstCheck::Keep => return Ok(false),
                RstCheck::Invalid(why) => {
                    trace::invalid(flow, dir, seg.seq, seg.ack, why);
                    return Err(DropReason::RstOutOfWindow);
                }
            }
        } else {
            let liberal = self.liberal.load(Relaxed);
            match window::tcp_in_window(&mut flow.window, d, old, seg, liberal) {
                Check::Accept | Check::Pass(_) => {}
                Check::Ignore(_) => return Ok(false),
                Check::Invalid(why) => {
                    trace::invalid(flow, dir, seg.seq, seg.ack, why);
                    return Err(DropReason::OutOfWindow);
                }
            }
        }
        if dir == Direction::Reply {
            if class == FlagClass::Rst && old == TcpState::SynSent {
                // The backend refused the connection: a passive health signal.
                flow.backend.syn_failed();
            }
            flow.seen_reply = true;
        }
        if new == TcpState::Established && flow.seen_reply {
            flow.assured = true;
        }
        flow.state = new;
        // A retransmitted SYN does not renew the timer: a SYN flood or a
        // stuck client cannot keep an unanswered entry alive.
        let retransmitted_syn = new == TcpState::SynSent && old == TcpState::SynSent;
        if !retransmitted_syn {
            // A flow picked up mid-stream and never answered expires as
            // soon as an unanswered SYN would: an ACK flood is no better at
            // holding entries than a SYN flood.
            let timer = if new == TcpState::Established && !flow.seen_reply {
                TcpState::SynSent
            } else {
                new
            };
            flow.set_deadline(now + self.timeout(timer));
        }
        if new != old {
            trace::state(&self.events, flow, dir, class, old);
        }
        flow.packets[d] += 1;
        flow.bytes[d] += len as u64;
        Ok(true)
    }

    /// Admit a NEW connection: select, allocate, make room, insert, translate.
    ///
    /// Runs under the admission lock, in an order where a SYN that
    /// is refused or that another thread admitted first changes nothing:
    /// the duplicate check comes first, eviction comes last (after a port
    /// was found), and the limit is checked and the flow inserted under the
    /// same lock, so the table never exceeds `max_flows`.
    ///
    /// `how` says what creates the flow: a SYN (replacing, maybe, a
    /// reopened or redispatched flow, removed under the same lock only if it
    /// is still that flow, so two threads handling copies of the SYN replace
    /// it once) or an ACK picked up mid-stream. A pickup goes through the
    /// same limit, eviction and refusals as a SYN. The service at the
    /// segment's destination is looked up in the configuration the
    /// admission lock guards, and the connection goes on with it.
    fn new_connection<A: Family>(
        &self,
        pkt: &mut [u8],
        p: &TcpRepr<A>,
        now: Timestamp,
        l4: L4Checksum,
        how: Admit,
    ) -> Result<Verdict, DropReason> {
        let original = p.tuple;
        let mut guard = self.admission();
        let Admitter {
            tables: admission,
            runtime: rt,
        } = &mut *guard;
        let Some(si) = rt.service_at(original.dst.to_socket()) else {
            return Err(match how {
                // Its service was removed by a reload.
                Admit::Reopen(_) => DropReason::NoService,
                Admit::Syn(_) | Admit::Pickup(_) => no_flow(rt, &original),
            });
        };
        let svc = &rt.services[si];
        let pickup = matches!(how, Admit::Pickup(_));
        // Another thread may have admitted the same SYN between this
        // packet's lookup and the admission lock: then this copy is a
        // retransmission of that flow's SYN. The lookup's miss still holds
        // if nothing was added to the tuple's shard since (the rule), and
        // need not be made again. The proof that the tuple is free goes on
        // to the insert, which then need not look it up a third time.
        let absent = match how {
            Admit::Syn(absent) | Admit::Pickup(absent) => {
                if A::table(self).still_absent(&absent) {
                    Some(absent)
                } else {
                    A::table(self).absent(&original)
                }
            }
            Admit::Reopen(r) => {
                self.replace::<A>(&original, r);
                A::table(self).absent(&original)
            }
        };
        let Some(absent) = absent else {
            drop(guard);
            return self.process_tcp(pkt, p, now, l4);
        };
        let Some(bi) = svc
            .selector
            .select(&svc.backends, (*original.src.ip()).into())
        else {
            drop(guard);
            return self.no_backend(pkt, p, pickup);
        };
        let backend = &svc.backends[bi];
        // A service's backends are of its VIP's family (validated), so
        // this always converts.
        let Some(to) = Endpoint::<A>::from_socket(backend.addr) else {
            drop(guard);
            return Err(DropReason::NoBackend);
        };
        let Some((reply, reply_absent)) = ports::allocate(
            admission,
            A::table(self),
            &original,
            to,
            A::pool(svc),
            &rt.snat_ports,
            &self.port_key,
        ) else {
            let (vip, to) = (svc.vip, backend.addr);
            drop(guard);
            self.refusals[1].hit(now, |n| {
                tracing::warn!(
                    "MASQUERADE ports exhausted: {n} new connection(s) to {vip} dropped \
                     (no free source port towards {to}); add --snat addresses or widen the port range"
                )
            });
            return Err(DropReason::PortsExhausted);
        };
        if !self.make_room::<A>(admission, now) {
            drop(guard);
            let max = A::table(self).max();
            self.refusals[0].hit(now, |n| {
                tracing::warn!(
                    "conntrack table full ({max} flows), dropping packet: {n} new \
                     connection(s) refused; raise --max-flows or lower the timeouts"
                )
            });
            return Err(DropReason::TableFull);
        }
        let unanswered = rt.timeouts.get(TcpState::SynSent);
        let flow = fresh_flow(p, reply, backend, now, unanswered, pickup);
        let (src, dst) = translate(&flow, Direction::Original);
        trace::new_flow(&self.events, &flow, svc, bi, pickup);
        let table = A::table(self);
        let inserted = table.insert_proven(admission, flow, Some(absent), Some(reply_absent));
        debug_assert!(inserted, "admission checked the tuple under the lock");
        if !inserted {
            admission.give_back_room();
            drop(guard);
            return self.process_tcp(pkt, p, now, l4);
        }
        // Counted under the admission lock, their only writers' lock.
        if pickup {
            admission.count(&self.counters.picked_up);
            if reply.dst != self.preferred_source(&original, A::pool(svc), &rt.snat_ports) {
                admission.count(&self.counters.pickup_remapped);
            }
        } else {
            admission.count(&self.counters.new_flows);
        }
        admission.count(&backend.counters.connections);
        drop(guard);
        nat::rewrite_tcp(pkt, p.ip_header_len, src, dst, l4);
        Ok(Verdict::Forward { len: p.len })
    }

    /// Remove the flow a SYN replaces (reopened or redispatched), if it is
    /// still the flow [`Engine::known_flow`] saw: two threads handling
    /// copies of the SYN replace it once. Under the admission lock.
    fn replace<A: Family>(&self, original: &Tuple<A>, r: Replace) {
        let still = |f: &Flow<A>| {
            f.state == r.state
                && Arc::as_ptr(&f.backend) == r.backend
                && (r.state != TcpState::SynSent || !f.seen_reply)
        };
        if let Some(old) = A::table(self).remove_if(original, still) {
            if r.state == TcpState::SynSent {
                self.counters.redispatched.fetch_add(1, Relaxed);
            }
            trace::destroy(&self.events, &old, r.why);
        }
    }

    /// A NEW connection no backend takes: a SYN gets what
    /// [`DropReason::response`] says (a reset from the VIP, so the client
    /// does not hang); a picked-up ACK nothing (its retransmissions try
    /// again once a backend is up).
    fn no_backend<A: Family>(
        &self,
        pkt: &mut [u8],
        p: &TcpRepr<A>,
        pickup: bool,
    ) -> Result<Verdict, DropReason> {
        if pickup {
            return Err(DropReason::NoBackend);
        }
        match DropReason::NoBackend.response() {
            Response::Silence => Err(DropReason::NoBackend),
            Response::Reset => {
                self.counters.drop(DropReason::NoBackend);
                self.counters.resets_sent.fetch_add(1, Relaxed);
                trace::no_backend(&p.tuple);
                Ok(Verdict::Respond {
                    // From the VIP: the SYN's own destination.
                    len: nat::syn_to_reset(pkt, p, p.tuple.dst),
                })
            }
        }
    }

    /// Make room for one more flow under the limit both families share:
    /// nothing to do below it (the flows are counted only when the room
    /// counted last time is used up: [`Admission::take_room`]); exactly at
    /// it, evict a flow of `A`'s family or else of the other; above a
    /// lowered limit, new flows wait for old ones to end. Returns whether
    /// there is room, taken for the caller's flow.
    fn make_room<A: Family>(&self, admission: &mut Admission, now: Timestamp) -> bool {
        let max = A::table(self).max();
        admission.take_room(max, || self.flow_count())
            || (self.flow_count() == max
                && (self.evict_in::<A>(now) || A::evict_in_other(self, now)))
    }

    /// Return the MASQUERADE source a connection gets when nothing clashes:
    /// its pool address and its own port (or port 0 when its port is outside
    /// the range and so never kept).
    fn preferred_source<A: Family>(
        &self,
        original: &Tuple<A>,
        pool: &[A],
        range: &RangeInclusive<u16>,
    ) -> Endpoint<A> {
        let ip = pool[self.port_key.pool_start(*original.src.ip(), pool.len())];
        let port = original.src.port();
        Endpoint::new(ip, if range.contains(&port) { port } else { 0 })
    }

    /// Evict one flow of `A`'s table to make room (see
    /// [`ConnTable::evict_one`]); return whether one was.
    fn evict_in<A: Family>(&self, now: Timestamp) -> bool {
        match A::table(self).evict_one(now) {
            Some(victim) => {
                self.counters.evicted.fetch_add(1, Relaxed);
                trace::destroy(&self.events, &victim, "evicted: table full");
                true
            }
            None => false,
        }
    }

    /// Translate an ICMP error quoting a tracked flow (RELATED traffic).
    fn process_icmp<A: Family>(
        &self,
        pkt: &mut [u8],
        icmp: &IcmpErrorRepr<A>,
        now: Timestamp,
    ) -> Result<Verdict, DropReason> {
        // The error travels against the quoted packet: look up its inverse.
        // A flow that has expired (not swept yet) relates nothing.
        let t = icmp.quoted.invert();
        let found = A::table(self).with_flow(&t, |flow, dir| {
            (flow.deadline() > now).then(|| (translate(flow, dir), dir))
        });
        let Some(Some(((src, dst), dir))) = found else {
            return Err(DropReason::IcmpUntracked);
        };
        // The outer header is translated like any packet of the flow in this
        // direction; the quoted one is the inverse, as the receiver sent it.
        nat::rewrite_icmp_error(pkt, icmp.len, icmp.quote, (*src.ip(), *dst.ip()), dst, src);
        self.counters
            .icmp_translated
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.counters.forward(dir.index());
        Ok(Verdict::Forward { len: icmp.len })
    }

    /// Return every flow as the state file keeps it ([`crate::state`]), with
    /// the time each has left at `now`.
    pub fn export_flows(&self, now: Timestamp) -> Vec<SavedFlow> {
        let v4 = self.v4.snapshot().into_iter().map(|f| f.widen());
        let v6 = self.v6.snapshot().into_iter().map(|f| f.widen());
        v4.chain(v6)
            .map(|f| SavedFlow {
                client: f.original.src.to_socket(),
                vip: f.original.dst.to_socket(),
                backend: f.reply.src.to_socket(),
                snat: f.reply.dst.to_socket(),
                state: f.state as u8,
                seen_reply: f.seen_reply,
                assured: f.assured,
                remaining_ms: now.until(f.deadline()).as_millis() as u64,
                packets: f.packets,
                bytes: f.bytes,
                window: f.window,
                stray_ack: f.stray_ack(),
            })
            .collect()
    }

    /// Put saved flows back in the table before the first packet, with
    /// `downtime` (the wall-clock time since they were saved) taken off
    /// their timers. A flow comes back only if its service still exists with
    /// its backend (a drained backend keeps its flows, as on reload), its
    /// time has not run out, its tuples are free and the table has room;
    /// the report counts each other case.
    ///
    /// `exact` says the flows were saved after the datapath stopped, so
    /// their windows are where the endpoints are. Otherwise (a periodic save
    /// before a crash) each flow's windows are resynchronised from its next
    /// packets, liberally until both directions have been seen, as a pickup
    /// is; and its timer is cut to an unanswered SYN's, renewed by its first
    /// tracked packet, so flows that ended after the save do not linger.
    pub fn restore_flows(
        &self,
        saved: &[SavedFlow],
        now: Timestamp,
        downtime: std::time::Duration,
        exact: bool,
    ) -> RestoreReport {
        let unanswered = self.timeout(TcpState::SynSent);
        let mut report = RestoreReport::default();
        let mut guard = self.admission();
        let Admitter {
            tables: admission,
            runtime: rt,
        } = &mut *guard;
        let max = self.v4.max();
        for s in saved {
            let state = TcpState::ALL.get(usize::from(s.state)).copied();
            let Some(state) = state.filter(|&t| t != TcpState::None) else {
                report.damaged += 1;
                continue;
            };
            let Some(svc) = rt.services.iter().find(|svc| svc.vip == s.vip) else {
                report.no_service += 1;
                continue;
            };
            let Some(backend) = svc.backends.iter().find(|b| b.addr == s.backend) else {
                report.no_backend += 1;
                continue;
            };
            let left = std::time::Duration::from_millis(s.remaining_ms);
            let Some(left) = left.checked_sub(downtime).filter(|d| !d.is_zero()) else {
                report.expired += 1;
                continue;
            };
            if !admission.take_room(max, || self.flow_count()) {
                report.no_room += 1;
                continue;
            }
            let left = if exact { left } else { left.min(unanswered) };
            let restored = if s.vip.is_ipv4() {
                self.restore_one::<Ipv4Addr>(admission, s, state, backend, now + left, exact)
            } else {
                self.restore_one::<Ipv6Addr>(admission, s, state, backend, now + left, exact)
            };
            match restored {
                true => report.restored += 1,
                false => {
                    admission.give_back_room();
                    report.clash += 1;
                }
            }
        }
        self.counters
            .restored
            .fetch_add(report.restored as u64, Relaxed);
        report
    }

    /// Put one saved flow of `A`'s family back (its service and backend
    /// found, its time left computed); `false` when its tuples clash with
    /// a flow already there.
    fn restore_one<A: Family>(
        &self,
        admission: &mut Admission,
        s: &SavedFlow,
        state: TcpState,
        backend: &Arc<crate::backend::Backend>,
        deadline: Timestamp,
        exact: bool,
    ) -> bool {
        let endpoint = Endpoint::<A>::from_socket;
        let (Some(client), Some(vip), Some(at), Some(snat)) = (
            endpoint(s.client),
            endpoint(s.vip),
            endpoint(s.backend),
            endpoint(s.snat),
        ) else {
            return false;
        };
        let original = Tuple {
            src: client,
            dst: vip,
        };
        let reply = Tuple { src: at, dst: snat };
        let table = A::table(self);
        if table.contains(&original) || !table.is_reply_free(&reply) {
            return false;
        }
        let mut flow = Flow::new(original, reply, backend.clone(), deadline);
        flow.state = state;
        flow.seen_reply = s.seen_reply;
        flow.assured = s.assured;
        flow.packets = s.packets;
        flow.bytes = s.bytes;
        flow.window = s.window;
        if !exact {
            window::resync(&mut flow.window);
        }
        flow.set_stray_ack(s.stray_ack);
        table.insert(admission, flow)
    }

    /// Handle the passing of time to `now`: sweep the flow table for
    /// expired flows where it is due, doing bounded work. Returns `true` if
    /// more is already due (call again before sleeping).
    pub fn handle_timeout(&self, now: Timestamp) -> bool {
        let v4 = self.expire_in::<Ipv4Addr>(now);
        let v6 = self.expire_in::<Ipv6Addr>(now);
        v4 || v6
    }

    /// [`Engine::handle_timeout`] for `A`'s table.
    fn expire_in<A: Family>(&self, now: Timestamp) -> bool {
        A::table(self).expire(now, |flow| self.expired(flow))
    }

    /// Account for a flow removed because its deadline passed.
    fn expired<A: IpAddress>(&self, flow: Flow<A>) {
        self.counters.expired.fetch_add(1, Relaxed);
        if flow.state == TcpState::SynSent && !flow.seen_reply {
            // The backend never answered the SYN: a passive health signal.
            flow.backend.syn_failed();
        }
        trace::destroy(&self.events, &flow, "timeout");
    }

    /// Return when [`Engine::handle_timeout`] should next be called, if any flow exists.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match (self.v4.next_expiry(), self.v6.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Return a copy of the flow a packet with tuple `t` belongs to, and the
    /// packet's direction: for observers in the shell and tests, not for
    /// the packet path.
    pub fn flow_of<A: Family>(&self, t: &Tuple<A>) -> Option<(Flow<A>, Direction)> {
        A::table(self).with_flow(t, |flow, dir| (flow.clone(), dir))
    }

    /// [`Engine::flow_of`] for a tuple of either family (the capture reads
    /// a flow's decision and state around [`Engine::handle_packet`]).
    pub fn flow_of_any(&self, t: &Tuple<IpAddr>) -> Option<(Flow<IpAddr>, Direction)> {
        let (src, dst) = (t.src.to_socket(), t.dst.to_socket());
        match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                let t = Tuple::<Ipv4Addr> {
                    src: s.into(),
                    dst: d.into(),
                };
                self.flow_of(&t).map(|(f, d)| (f.widen(), d))
            }
            (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                let t = Tuple::<Ipv6Addr> {
                    src: s.into(),
                    dst: d.into(),
                };
                self.flow_of(&t).map(|(f, d)| (f.widen(), d))
            }
            _ => None,
        }
    }

    /// Return the hub where flow events are reported (`tunlb events`).
    pub fn events(&self) -> &Arc<crate::events::Hub> {
        &self.events
    }

    /// Return the number of tracked flows, both families.
    pub fn flow_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Return the size of the table's bookkeeping, live and stale entries
    /// alike: for diagnostics and tests, which check that it follows the
    /// live flows (at most twice their number plus
    /// [`crate::conntrack::table::COMPACT_SLACK`] after each expiry pass).
    pub fn bookkeeping(&self) -> Bookkeeping {
        Bookkeeping {
            eviction_entries: self.v4.queue_len() + self.v6.queue_len(),
        }
    }

    /// Copy every tracked flow of both families, like `conntrack -L` (not
    /// for the packet path).
    pub fn flows(&self) -> Vec<Flow<IpAddr>> {
        let v4 = self.v4.snapshot().into_iter().map(|f| f.widen());
        v4.chain(self.v6.snapshot().iter().map(Flow::widen))
            .collect()
    }

    /// Copy every tracked flow of `A`'s family.
    pub fn flows_of<A: Family>(&self) -> Vec<Flow<A>> {
        A::table(self).snapshot()
    }

    /// Read the counters, with per-backend figures.
    pub fn stats(&self) -> Snapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let mut s = self.counters.snapshot();
        s.flows = self.flow_count();
        // TCP packets are counted in their flow only; add them up here.
        let mut totals = self.v4.totals();
        let v6 = self.v6.totals();
        for d in 0..2 {
            totals.packets[d] += v6.packets[d];
            s.forwarded[d] += totals.packets[d];
        }
        totals.live_by_backend.extend(v6.live_by_backend);
        for svc in &self.runtime.load().services {
            for (b, &weight) in svc.backends.iter().zip(&svc.weights) {
                let c = &b.counters;
                let (live_packets, live_bytes) = totals
                    .live_by_backend
                    .get(&(Arc::as_ptr(b) as usize))
                    .copied()
                    .unwrap_or_default();
                s.backends.push(BackendSnapshot {
                    service: svc.vip,
                    backend: b.addr,
                    weight,
                    up: b.is_up(),
                    active: b.active(),
                    connections: c.connections.load(Relaxed),
                    packets: c.packets.load(Relaxed) + live_packets,
                    bytes: c.bytes.load(Relaxed) + live_bytes,
                });
            }
        }
        s
    }
}

/// What admits a NEW flow (see [`Engine::new_connection`]).
#[derive(Debug, Clone, Copy)]
enum Admit {
    /// A SYN of a tuple the table's lookup missed.
    Syn(Absent),
    /// A SYN replacing the flow on its tuple (reopened or redispatched).
    Reopen(Replace),
    /// An ORIGINAL ACK of a flow picked up mid-stream (`--pickup`), whose
    /// tuple the lookup missed.
    Pickup(Absent),
}

/// What comes next for a segment of a known flow, decided with the flow
/// locked ([`Engine::known_flow`]) and done with it released
/// ([`Engine::after_known_flow`]).
enum Known<A> {
    /// Forward the segment translated from `src` to `dst`.
    Forward {
        /// The segment's direction.
        dir: Direction,
        /// The translated source.
        src: Endpoint<A>,
        /// The translated destination.
        dst: Endpoint<A>,
        /// Whether the flow was updated (else counted as untracked).
        tracked: bool,
        /// Remove the flow first (reset before any reply), if it is still
        /// in CLOSE. Its ORIGINAL tuple follows from `dir`, `src` and `dst`
        /// (derived rather than carried: a tuple here slows the packet path).
        remove: bool,
    },
    /// Admit the segment (a SYN) as a new connection replacing the flow.
    Restart(Replace),
    /// The flow's deadline has passed: remove it, then handle the segment
    /// as the first of no flow. `src` and `dst` are where the segment would
    /// be translated to, from which its ORIGINAL tuple follows (see
    /// [`original_of`]).
    Expired {
        /// The segment's direction.
        dir: Direction,
        /// The translated source.
        src: Endpoint<A>,
        /// The translated destination.
        dst: Endpoint<A>,
    },
    /// Drop it.
    Drop(DropReason),
}

/// The flow a SYN replaces: one in TIME_WAIT or CLOSE that it reopens, or
/// an unanswered one in SYN_SENT whose backend can no longer take it.
#[derive(Debug, Clone, Copy)]
struct Replace {
    state: TcpState,
    /// The flow's backend, by identity.
    backend: *const crate::backend::Backend,
    why: &'static str,
}

/// The entry of a NEW flow made by the segment `p` (a SYN, or an ACK picked
/// up mid-stream) with its `reply` tuple (found free): one packet counted, the
/// windows opened from the segment, and an unanswered SYN's time to live
/// (`unanswered`) whichever made it.
fn fresh_flow<A: IpAddress>(
    p: &TcpRepr<A>,
    reply: Tuple<A>,
    backend: &Arc<crate::backend::Backend>,
    now: Timestamp,
    unanswered: std::time::Duration,
    pickup: bool,
) -> Flow<A> {
    let mut flow = Flow::new(p.tuple, reply, backend.clone(), now + unanswered);
    flow.packets[0] = 1;
    flow.bytes[0] = p.len as u64;
    if pickup {
        flow.state = TcpState::Established;
        window::pickup(&mut flow.window, &p.segment);
    } else {
        flow.state = TcpState::SynSent;
        window::open(&mut flow.window, &p.segment);
    }
    flow
}

/// Return the (source, destination) a packet of `flow` travelling in `dir`
/// gets after NAT: ORIGINAL becomes `SNAT -> backend`, REPLY becomes
/// `VIP -> client`. Both are read off the *other* direction's tuple.
#[inline]
fn translate<A: IpAddress>(flow: &Flow<A>, dir: Direction) -> (Endpoint<A>, Endpoint<A>) {
    match dir {
        Direction::Original => (flow.reply.dst, flow.reply.src),
        Direction::Reply => (flow.original.dst, flow.original.src),
    }
}

/// The ORIGINAL tuple of the flow a segment `p` belongs to, given its
/// direction and where [`translate`] sends it: the segment's own tuple, or
/// for a REPLY segment the inverse of where it is translated to.
#[inline]
fn original_of<A: IpAddress>(
    p: &TcpRepr<A>,
    dir: Direction,
    src: Endpoint<A>,
    dst: Endpoint<A>,
) -> Tuple<A> {
    match dir {
        Direction::Original => p.tuple,
        Direction::Reply => Tuple { src: dst, dst: src },
    }
}

/// An address family the engine translates: what differs between IPv4
/// and IPv6 at the engine's level (which table holds the flows, which
/// MASQUERADE pool a service uses). Implemented for [`Ipv4Addr`] and
/// [`Ipv6Addr`]; every other piece of the engine is written once, generic
/// over it.
pub trait Family: IpAddress {
    /// The table of this family's flows.
    fn table(e: &Engine) -> &ConnTable<Self>;
    /// The service's MASQUERADE pool, if the service is of this family
    /// (empty otherwise).
    fn pool(s: &Service) -> &[Self];
    /// Evict a flow of the *other* family to make room (the limit is
    /// shared); return whether one was.
    fn evict_in_other(e: &Engine, now: Timestamp) -> bool;
}

impl Family for Ipv4Addr {
    #[inline(always)]
    fn table(e: &Engine) -> &ConnTable<Self> {
        &e.v4
    }
    #[inline(always)]
    fn pool(s: &Service) -> &[Self] {
        &s.snat_v4
    }
    fn evict_in_other(e: &Engine, now: Timestamp) -> bool {
        e.evict_in::<Ipv6Addr>(now)
    }
}

impl Family for Ipv6Addr {
    #[inline(always)]
    fn table(e: &Engine) -> &ConnTable<Self> {
        &e.v6
    }
    #[inline(always)]
    fn pool(s: &Service) -> &[Self] {
        &s.snat_v6
    }
    fn evict_in_other(e: &Engine, now: Timestamp) -> bool {
        e.evict_in::<Ipv4Addr>(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::tcp::flags::{ACK, RST, SYN};
    use crate::craft::Segment;
    use crate::select::Mode;
    use crate::service::{BackendConfig, ServiceConfig};
    use smoltcp::wire::{Ipv4Packet, TcpPacket};
    use std::net::{Ipv4Addr, SocketAddrV4};

    const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80);

    fn b(i: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, i), 80)
    }

    fn cfg(backends: &[(u8, u32)], mode: Mode) -> EngineConfig {
        EngineConfig {
            services: vec![ServiceConfig {
                vip: VIP.into(),
                backends: backends
                    .iter()
                    .map(|&(i, weight)| BackendConfig {
                        addr: b(i).into(),
                        weight,
                    })
                    .collect(),
                mode,
                snat: vec![],
            }],
            ..Default::default()
        }
    }

    fn client(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), port)
    }

    /// Send a SYN from `port`; return the backend it was sent to.
    fn syn(e: &Engine, port: u16) -> SocketAddrV4 {
        let mut p = Segment::new(client(port), VIP, SYN).build();
        let Verdict::Forward { len } = e.handle_packet(&mut p, Timestamp::ZERO) else {
            panic!("SYN not forwarded");
        };
        let ip = Ipv4Packet::new_checked(&p[..len]).unwrap();
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        SocketAddrV4::new(ip.dst_addr(), t.dst_port())
    }

    #[test]
    fn a_packet_of_an_expired_flow_finds_it_gone_before_any_sweep() {
        let e = Engine::new(cfg(&[(3, 1), (4, 1)], Mode::Nth)).unwrap();
        assert_eq!(syn(&e, 7000), b(3));
        let be = e.runtime().services[0].backends[0].clone();
        // SYN_SENT's 120 s pass with no sweep: the client's late ACK does
        // not revive the flow, it is a packet of no flow (INVALID)...
        let late = Timestamp::from_secs(120);
        let mut ack = Segment::new(client(7000), VIP, ACK).build();
        assert_eq!(
            e.handle_packet(&mut ack, late),
            Verdict::Drop(DropReason::NoFlowNotSyn)
        );
        // ...and the flow left as the sweep would have removed it.
        assert_eq!((e.flow_count(), e.stats().expired), (0, 1));
        assert_eq!(be.syn_failures(), 1, "an unanswered SYN timed out");
        // A SYN on the same tuple then opens a new connection (the next
        // backend: the old flow is not reopened).
        let mut syn2 = Segment::new(client(7000), VIP, SYN).build();
        assert!(matches!(
            e.handle_packet(&mut syn2, late),
            Verdict::Forward { .. }
        ));
        let flows = e.flows_of::<Ipv4Addr>();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].backend.addr, SocketAddr::V4(b(4)));
        assert_eq!(flows[0].state, TcpState::SynSent);
        // A millisecond before the deadline, the flow was still there.
        assert_eq!(syn(&e, 7001), b(3));
        let mut ack = Segment::new(client(7001), VIP, ACK).build();
        assert_ne!(
            e.handle_packet(&mut ack, Timestamp::from_millis(119_999)),
            Verdict::Drop(DropReason::NoFlowNotSyn)
        );
        assert_eq!(e.flow_count(), 2);
    }

    #[test]
    fn a_reply_of_an_expired_flow_finds_it_gone_too() {
        let e = Engine::new(cfg(&[(3, 1)], Mode::Nth)).unwrap();
        assert_eq!(syn(&e, 7000), b(3));
        let reply = e.flows_of::<Ipv4Addr>()[0].reply;
        let synack = || {
            Segment {
                ack: 1,
                ..Segment::new(reply.src, reply.dst, SYN | ACK)
            }
            .build()
        };
        assert!(matches!(
            e.handle_packet(&mut synack(), Timestamp::ZERO),
            Verdict::Forward { .. }
        ));
        // SYN_RECV's 60 s pass with no sweep: the backend's retransmitted
        // SYN-ACK is found by its REPLY tuple, and the flow is removed by
        // its ORIGINAL one, once, as the sweep would; the segment is then
        // one of no flow.
        let late = Timestamp::from_secs(60);
        assert_eq!(
            e.handle_packet(&mut synack(), late),
            Verdict::Drop(DropReason::NoFlowNotSyn)
        );
        assert_eq!((e.flow_count(), e.stats().expired), (0, 1));
        assert!(e.flows_of::<Ipv4Addr>().is_empty());
    }

    #[test]
    fn a_reload_keeps_flows_and_changes_only_new_choices() {
        let e = Engine::new(cfg(&[(3, 1), (4, 1)], Mode::Nth)).unwrap();
        assert_eq!(syn(&e, 1000), b(3));
        assert_eq!(syn(&e, 1001), b(4));
        assert_eq!(syn(&e, 1002), b(3));
        // b3 answers the first connection (SYN-ACK, ISN 0).
        let reply = e
            .flows_of::<Ipv4Addr>()
            .into_iter()
            .find(|f| f.original.src == client(1000))
            .unwrap()
            .reply;
        let mut synack = Segment {
            ack: 1,
            ..Segment::new(reply.src, reply.dst, SYN | ACK)
        }
        .build();
        assert!(matches!(
            e.handle_packet(&mut synack, Timestamp::ZERO),
            Verdict::Forward { .. }
        ));
        // Drain b3, add b5: the existing flows keep their backends.
        e.reconfigure(&cfg(&[(3, 0), (4, 1), (5, 1)], Mode::Nth))
            .unwrap();
        assert_eq!(e.flow_count(), 3);
        let chosen: Vec<_> = (2000..2004).map(|p| syn(&e, p)).collect();
        assert_eq!(chosen, [b(4), b(5), b(4), b(5)]);
        // Packets of the answered flow on the drained backend still go there.
        // (SYN_RECV: the client's ACK acknowledges the backend's ISN 0.)
        let mut ack = Segment {
            ack: 1,
            ..Segment::new(client(1000), VIP, ACK)
        }
        .build();
        let Verdict::Forward { len } = e.handle_packet(&mut ack, Timestamp::ZERO) else {
            panic!("the answered flow's ACK was not forwarded");
        };
        let ip = Ipv4Packet::new_checked(&ack[..len]).unwrap();
        assert_eq!(ip.dst_addr(), *b(3).ip());
        // The unanswered flow on the drained backend: its retransmitted SYN
        // goes to a backend that takes new connections (redispatch).
        assert_eq!(syn(&e, 1002), b(4));
        assert_eq!(e.stats().redispatched, 1);
        // The kept backend kept its counters across the reload.
        let s = e.stats();
        let b4 = s
            .backends
            .iter()
            .find(|x| x.backend == SocketAddr::V4(b(4)))
            .unwrap();
        assert_eq!(b4.connections, 4);
        // An invalid configuration is refused and changes nothing.
        assert!(e.reconfigure(&cfg(&[], Mode::Nth)).is_err());
        assert_eq!(e.runtime().services[0].backends.len(), 3);
    }

    #[test]
    fn a_lowered_limit_holds_at_once_though_room_was_counted_under_the_old_one() {
        let e = Engine::new(EngineConfig {
            max_flows: 100,
            ..cfg(&[(3, 1), (4, 1)], Mode::Nth)
        })
        .unwrap();
        // The first SYN counted room for 100 flows.
        syn(&e, 1000);
        syn(&e, 1001);
        e.reconfigure(&EngineConfig {
            max_flows: 1,
            ..cfg(&[(3, 1), (4, 1)], Mode::Nth)
        })
        .unwrap();
        // Above the lowered limit: new flows wait for old ones to end.
        let mut p = Segment::new(client(1002), VIP, SYN).build();
        assert_eq!(
            e.handle_packet(&mut p, Timestamp::ZERO),
            Verdict::Drop(DropReason::TableFull)
        );
        assert_eq!(e.flow_count(), 2);
        // Raised again: room is counted anew.
        e.reconfigure(&EngineConfig {
            max_flows: 3,
            ..cfg(&[(3, 1), (4, 1)], Mode::Nth)
        })
        .unwrap();
        syn(&e, 1003);
        assert_eq!(e.flow_count(), 3);
        assert_eq!(e.stats().new_flows, 3);
    }

    #[test]
    fn a_backend_marked_down_takes_no_new_connections() {
        let e = Engine::new(cfg(&[(3, 1), (4, 1)], Mode::LeastConn)).unwrap();
        e.runtime().services[0].backends[0].set_up(false);
        for p in 0..4 {
            assert_eq!(syn(&e, 3000 + p), b(4));
        }
        assert_eq!(e.stats().backends[1].active, 4);
    }

    #[test]
    fn no_backend_answers_with_a_valid_reset() {
        let e = Engine::new(cfg(&[(3, 0)], Mode::Nth)).unwrap();
        let mut p = Segment {
            seq: 1000,
            ..Segment::new(client(5000), VIP, SYN)
        }
        .build();
        let Verdict::Respond { len } = e.handle_packet(&mut p, Timestamp::ZERO) else {
            panic!("no RST");
        };
        let ip = Ipv4Packet::new_checked(&p[..len]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (*VIP.ip(), *client(5000).ip())
        );
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert!(t.rst() && t.ack());
        assert_eq!(t.ack_number().0, 1001);
        assert_eq!((t.src_port(), t.dst_port()), (80, 5000));
        assert_eq!(e.stats().dropped(DropReason::NoBackend), 1);
        assert_eq!(e.flow_count(), 0);
    }

    #[test]
    fn the_reset_to_a_syn_with_data_acknowledges_the_data_too() {
        let e = Engine::new(cfg(&[(3, 0)], Mode::Nth)).unwrap();
        let mut p = Segment {
            seq: u32::MAX - 1,
            payload: b"hello",
            ..Segment::new(client(5001), VIP, SYN)
        }
        .build();
        let Verdict::Respond { len } = e.handle_packet(&mut p, Timestamp::ZERO) else {
            panic!("no RST");
        };
        assert_eq!(len, 40);
        let ip = Ipv4Packet::new_checked(&p[..len]).unwrap();
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        // SYN plus 5 bytes from 2^32 - 2, wrapping.
        assert_eq!(t.ack_number().0 as u32, 4);
        assert_eq!(t.dst_port(), 5001);
    }

    #[test]
    fn a_backend_reset_to_a_syn_is_a_passive_health_signal() {
        let e = Engine::new(cfg(&[(3, 1)], Mode::Nth)).unwrap();
        let backend = syn(&e, 6000);
        let reply = e.flows_of::<Ipv4Addr>()[0].reply;
        // A blind RST (not acknowledging the SYN) is refused...
        let mut blind = Segment {
            ack: 12345,
            ..Segment::new(reply.src, reply.dst, RST | ACK)
        }
        .build();
        assert_eq!(
            e.handle_packet(&mut blind, Timestamp::ZERO),
            Verdict::Drop(DropReason::RstOutOfWindow)
        );
        // ...the backend's real answer to the SYN (ISN 0) acknowledges it.
        let mut rst = Segment {
            ack: 1,
            ..Segment::new(reply.src, reply.dst, RST | ACK)
        }
        .build();
        assert!(matches!(
            e.handle_packet(&mut rst, Timestamp::ZERO),
            Verdict::Forward { .. }
        ));
        let be = &e.runtime().services[0].backends[0];
        assert_eq!(be.addr, SocketAddr::V4(backend));
        assert_eq!(be.syn_failures(), 1);
        // The backend's RST was the only reply: the entry dies at once (Linux).
        assert_eq!(e.flow_count(), 0);
        // An unanswered SYN expiring counts too.
        let _ = syn(&e, 6001);
        while e.handle_timeout(Timestamp::from_secs(121)) {}
        assert_eq!(be.syn_failures(), 2);
        assert_eq!(e.flow_count(), 0);
        assert_eq!(be.active(), 0);
    }

    /// The flow of a client's SYN from `port`, as the table holds it.
    fn flow(e: &Engine, port: u16) -> Flow {
        e.flows_of::<Ipv4Addr>()
            .into_iter()
            .find(|f| f.original.src == client(port))
            .expect("the flow exists")
    }

    #[test]
    fn a_stray_ack_answering_a_syn_counts_as_a_reply() {
        // A backend's TIME_WAIT from an older connection on the same tuple
        // answers the new SYN with an ACK of its old sequence space.
        let e = Engine::new(cfg(&[(3, 1)], Mode::Nth)).unwrap();
        let _ = syn(&e, 7000);
        let reply = flow(&e, 7000).reply;
        let stray = 0x3000_0000;
        let mut ack = Segment {
            seq: 0x7000_0000,
            ack: stray,
            ..Segment::new(reply.src, reply.dst, ACK)
        }
        .build();
        assert!(matches!(
            e.handle_packet(&mut ack, Timestamp::ZERO),
            Verdict::Forward { .. }
        ));
        let f = flow(&e, 7000);
        assert!(
            f.seen_reply,
            "any reply passed sets SEEN_REPLY, as in Linux"
        );
        assert_eq!(f.state, TcpState::SynSent);
        assert_eq!(e.stats().untracked, 1);
        // The client resets it, at the stray ACK's number: accepted, and
        // since a reply was seen the entry lives on in CLOSE (10 s).
        let mut rst = Segment {
            seq: stray,
            ..Segment::new(client(7000), VIP, RST)
        }
        .build();
        assert!(matches!(
            e.handle_packet(&mut rst, Timestamp::ZERO),
            Verdict::Forward { .. }
        ));
        assert_eq!(flow(&e, 7000).state, TcpState::Close);
        // The client's SYN retransmission reopens the flow, on the same backend.
        assert_eq!(syn(&e, 7000), b(3));
        assert_eq!(flow(&e, 7000).state, TcpState::SynSent);
        // No passive failure was counted for an answering backend.
        assert_eq!(e.runtime().services[0].backends[0].syn_failures(), 0);
        // Any other RST from the client in SYN_SENT is out of window.
        let mut blind = Segment {
            seq: stray + 1,
            ..Segment::new(client(7000), VIP, RST)
        }
        .build();
        assert_eq!(
            e.handle_packet(&mut blind, Timestamp::ZERO),
            Verdict::Drop(DropReason::RstOutOfWindow)
        );
    }

    #[test]
    fn a_syn_retransmitted_to_a_backend_that_went_down_is_redispatched() {
        let e = Engine::new(cfg(&[(3, 1), (4, 1)], Mode::Nth)).unwrap();
        assert_eq!(syn(&e, 8000), b(3));
        // Still up: the retransmission keeps its backend.
        assert_eq!(syn(&e, 8000), b(3));
        assert_eq!(e.stats().redispatched, 0);
        // Health checks mark b3 down: the next retransmission goes to b4.
        e.runtime().services[0].backends[0].set_up(false);
        assert_eq!(syn(&e, 8000), b(4));
        let s = e.stats();
        assert_eq!(
            (s.redispatched, s.new_flows, e.flow_count()),
            (1, 2, 1),
            "{s}"
        );
        assert_eq!(flow(&e, 8000).backend.addr, SocketAddr::V4(b(4)));
        // Once it answered, a flow is never moved, even if its backend goes down.
        let reply = flow(&e, 8000).reply;
        let mut synack = Segment {
            ack: 1,
            ..Segment::new(reply.src, reply.dst, SYN | ACK)
        }
        .build();
        assert!(matches!(
            e.handle_packet(&mut synack, Timestamp::ZERO),
            Verdict::Forward { .. }
        ));
        e.runtime().services[0].backends[1].set_up(false);
        e.runtime().services[0].backends[0].set_up(true);
        // The client's own SYN again (its SYN-ACK was lost) is passed, to b4.
        assert_eq!(syn(&e, 8000), b(4));
        // Another SYN on SYN_RECV (a new ISN) is ignored: dropped, nothing moves.
        let mut other = Segment {
            seq: 777,
            ..Segment::new(client(8000), VIP, SYN)
        }
        .build();
        assert_eq!(
            e.handle_packet(&mut other, Timestamp::ZERO),
            Verdict::Drop(DropReason::Ignored)
        );
        assert_eq!(flow(&e, 8000).backend.addr, SocketAddr::V4(b(4)));
        assert_eq!(flow(&e, 8000).state, TcpState::SynRecv);
    }

    #[test]
    fn refusals_are_logged_first_then_once_per_interval_with_the_count() {
        let log = RateLog::new();
        let mut lines = Vec::new();
        for ms in [0, 1, 2, 9_999, 10_000, 10_001, 25_000] {
            log.hit(Timestamp::from_millis(ms), |n| lines.push((ms, n)));
        }
        assert_eq!(lines, [(0, 1), (10_000, 4), (25_000, 2)]);
    }

    #[test]
    fn a_maglev_reload_without_the_second_backend_moves_almost_only_its_clients() {
        // 4 equal backends; 4 000 clients, one SYN each (distinct addresses).
        let e = Engine::new(cfg(&[(3, 1), (4, 1), (5, 1), (6, 1)], Mode::Maglev)).unwrap();
        let client_ip = |i: u32| Ipv4Addr::new(198, 19, (i / 250) as u8, (i % 250 + 1) as u8);
        let pick = |e: &Engine, i: u32, port: u16| {
            let mut p = Segment::new(SocketAddrV4::new(client_ip(i), port), VIP, SYN).build();
            let Verdict::Forward { len } = e.handle_packet(&mut p, Timestamp::ZERO) else {
                panic!("SYN not forwarded");
            };
            Ipv4Packet::new_checked(&p[..len]).unwrap().dst_addr()
        };
        let before: Vec<_> = (0..4000).map(|i| pick(&e, i, 1000)).collect();
        // SIGHUP without b4 (the second): the same clients connect again.
        e.reconfigure(&cfg(&[(3, 1), (5, 1), (6, 1)], Mode::Maglev))
            .unwrap();
        let after: Vec<_> = (0..4000).map(|i| pick(&e, i, 2000)).collect();
        let (mut others, mut moved) = (0, 0);
        for (was, a) in before.iter().zip(&after) {
            if was == b(4).ip() {
                assert_ne!(a, b(4).ip(), "a removed backend takes no connection");
            } else {
                others += 1;
                moved += usize::from(a != was);
            }
        }
        assert!(others > 2500, "{others}");
        assert!(
            moved * 100 <= others,
            "{moved} of {others} clients of the other backends moved"
        );
    }

    /// IPv6: the same engine, a service of the other family.
    mod ipv6 {
        use super::*;
        use smoltcp::wire::{Icmpv6Packet, IpAddress, Ipv6Packet};
        use std::net::{Ipv6Addr, SocketAddrV6};

        fn sa(a: &str, port: u16) -> SocketAddrV6 {
            SocketAddrV6::new(a.parse().unwrap(), port, 0, 0)
        }

        fn vip6() -> SocketAddrV6 {
            sa("2001:2::1", 80)
        }

        fn service6(backends: &[&str]) -> ServiceConfig {
            ServiceConfig {
                vip: vip6().into(),
                backends: backends
                    .iter()
                    .map(|b| BackendConfig {
                        addr: sa(b, 80).into(),
                        weight: 1,
                    })
                    .collect(),
                mode: Mode::Nth,
                snat: vec![],
            }
        }

        /// A dual-stack engine: the IPv4 service of `cfg` and an IPv6 one.
        fn dual(max_flows: usize) -> Engine {
            let mut c = cfg(&[(3, 1), (4, 1)], Mode::Nth);
            c.services
                .push(service6(&["2001:2:0:2::3", "2001:2:0:2::4"]));
            c.max_flows = max_flows;
            Engine::new(c).unwrap()
        }

        /// Send `seg`; return the forwarded packet.
        fn send(e: &Engine, mut p: Vec<u8>) -> Result<Vec<u8>, Verdict> {
            match e.handle_packet(&mut p, Timestamp::ZERO) {
                Verdict::Forward { len } => Ok(p[..len].to_vec()),
                v => Err(v),
            }
        }

        fn addrs(p: &[u8]) -> (Ipv6Addr, Ipv6Addr) {
            let ip = Ipv6Packet::new_checked(p).unwrap();
            (ip.src_addr(), ip.dst_addr())
        }

        #[test]
        fn an_ipv6_connection_is_translated_both_ways_next_to_an_ipv4_one() {
            let e = dual(100);
            let client = sa("2001:2:0:1::2", 40000);
            let out = send(&e, Segment::between(client, vip6(), SYN).build()).unwrap();
            // DNAT to the first backend, MASQUERADE to the VIP's address.
            let b3: Ipv6Addr = "2001:2:0:2::3".parse().unwrap();
            assert_eq!(addrs(&out), (*vip6().ip(), b3));
            assert!(crate::wire::IpRepr::parse_ipv6(&out).is_ok());
            let f = e.flows_of::<Ipv6Addr>().pop().unwrap();
            assert_eq!(f.original.src, client.into());
            assert_eq!(f.state, TcpState::SynSent);
            // The SYN-ACK comes back as from the VIP, to the client.
            let synack = Segment {
                ack: 1,
                ..Segment::between(f.reply.src, f.reply.dst, SYN | ACK)
            }
            .build();
            let back = send(&e, synack).unwrap();
            assert_eq!(addrs(&back), (*vip6().ip(), *client.ip()));
            let t = TcpPacket::new_checked(&back[40..]).unwrap();
            assert!(t.verify_checksum(
                &IpAddress::Ipv6(*vip6().ip()),
                &IpAddress::Ipv6(*client.ip())
            ));
            assert_eq!(t.dst_port(), 40000);
            // The IPv4 service runs beside it, its own nth rotation.
            assert_eq!(syn(&e, 1000), b(3));
            assert_eq!(e.flow_count(), 2);
            assert_eq!(e.flows().len(), 2);
            assert_eq!(e.flows_of::<Ipv4Addr>().len(), 1);
            assert_eq!(e.stats().flows, 2);
        }

        #[test]
        fn the_flow_limit_counts_both_families() {
            let e = dual(2);
            let c6 = |port| sa("2001:2:0:1::2", port);
            assert!(send(&e, Segment::between(c6(1), vip6(), SYN).build()).is_ok());
            assert_eq!(syn(&e, 1000), b(3));
            // Full: a third SYN of either family evicts an unanswered flow
            // (the oldest), never grows the table past 2.
            assert!(send(&e, Segment::between(c6(2), vip6(), SYN).build()).is_ok());
            assert_eq!(e.flow_count(), 2);
            assert_eq!(e.stats().evicted, 1);
            // The evicted one was the IPv6 flow of port 1 (the oldest):
            // the IPv4 table now holds one flow, the IPv6 table one.
            assert_eq!(e.flows_of::<Ipv6Addr>().len(), 1);
            assert_eq!(e.flows_of::<Ipv6Addr>()[0].original.src.port(), 2);
            syn(&e, 1001);
            assert_eq!(e.flow_count(), 2);
            // The IPv4 SYN evicted the oldest of its own family first.
            assert_eq!(e.flows_of::<Ipv6Addr>().len(), 1);
        }

        #[test]
        fn a_packet_too_big_about_a_flow_is_translated_to_the_client() {
            let e = dual(100);
            let client = sa("2001:2:0:1::2", 40000);
            let fwd = send(&e, Segment::between(client, vip6(), SYN).build()).unwrap();
            // A router between tunlb and the backend cannot forward the SYN
            // (say it was a large segment): Packet Too Big, MTU 1280, to the
            // MASQUERADE address, quoting the translated packet.
            let router: Ipv6Addr = "2001:2:0:9::9".parse().unwrap();
            let (snat, _backend) = addrs(&fwd);
            let mut msg = vec![2, 0, 0, 0, 0, 0, 5, 0];
            msg.extend_from_slice(&fwd);
            let c = crate::checksum::full_l4(router, snat, crate::checksum::ICMPV6, &msg);
            msg[2..4].copy_from_slice(&c.to_be_bytes());
            let mut ptb = vec![0x60, 0, 0, 0];
            ptb.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            ptb.extend_from_slice(&[58, 64]);
            ptb.extend_from_slice(&router.octets());
            ptb.extend_from_slice(&snat.octets());
            ptb.extend_from_slice(&msg);
            let back = send(&e, ptb).unwrap();
            // Outer: from the VIP (as every reply) to the client; the quote
            // is the client's own SYN, as it sent it.
            assert_eq!(addrs(&back), (*vip6().ip(), *client.ip()));
            let icmp = Icmpv6Packet::new_checked(&back[40..]).unwrap();
            assert!(icmp.verify_checksum(vip6().ip(), client.ip()));
            assert_eq!(icmp.msg_type(), smoltcp::wire::Icmpv6Message::PktTooBig);
            assert_eq!(&back[44..48], &[0, 0, 5, 0], "the MTU is kept");
            let quoted = &back[48..];
            assert_eq!(addrs(quoted), (*client.ip(), *vip6().ip()));
            let qt = TcpPacket::new_checked(&quoted[40..]).unwrap();
            assert_eq!((qt.src_port(), qt.dst_port()), (40000, 80));
            assert!(qt.verify_checksum(
                &IpAddress::Ipv6(*client.ip()),
                &IpAddress::Ipv6(*vip6().ip())
            ));
            assert_eq!(e.stats().icmp_translated, 1);
        }

        #[test]
        fn neighbour_discovery_is_counted_quietly() {
            let e = dual(100);
            // A neighbour solicitation from the TUN's host side.
            let from: Ipv6Addr = "2001:2::fe".parse().unwrap();
            let to: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
            let mut msg = vec![135, 0, 0, 0, 0, 0, 0, 0];
            msg.extend_from_slice(&vip6().ip().octets());
            let c = crate::checksum::full_l4(from, to, crate::checksum::ICMPV6, &msg);
            msg[2..4].copy_from_slice(&c.to_be_bytes());
            let mut ns = vec![0x60, 0, 0, 0];
            ns.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            ns.extend_from_slice(&[58, 255]);
            ns.extend_from_slice(&from.octets());
            ns.extend_from_slice(&to.octets());
            ns.extend_from_slice(&msg);
            assert_eq!(send(&e, ns), Err(Verdict::Drop(DropReason::Ipv6Control)));
            assert_eq!(e.stats().dropped(DropReason::Ipv6Control), 1);
            // An IPv6 SYN to no service.
            let other = Segment::between(sa("2001:2:0:1::2", 1), sa("2001:2::7", 80), SYN);
            assert_eq!(
                send(&e, other.build()),
                Err(Verdict::Drop(DropReason::NoService))
            );
        }

        #[test]
        fn an_ipv4_flow_costs_what_it_did_before_ipv6() {
            // Flow = tuples + backend + state + timers + counters + windows.
            assert_eq!(std::mem::size_of::<Flow<Ipv4Addr>>(), 128);
            assert_eq!(std::mem::size_of::<Flow<Ipv6Addr>>(), 176);
        }
    }
}
