//! The teaching line: one line per NAT decision and state change, in
//! netfilter's words.
//!
//! Events go to the `tunlb::trace` target at debug level, so they cost one
//! cached check when off and never appear at the default info level. The
//! program's `--trace` switch turns that target on:
//!
//! ```text
//! NEW 198.18.1.2:40000 -> 198.18.0.1:80 => DNAT 198.18.2.3:80, MASQ 198.18.0.1:40000 (nth: backend 1 of 4)
//! PICKUP 198.18.1.2:40002 -> 198.18.0.1:80 => DNAT 198.18.2.4:80, MASQ 198.18.0.1:40002 (maglev: backend 2 of 4)
//! STATE 198.18.1.2:40000 -> 198.18.0.1:80 SYN_SENT -> SYN_RECV (REPLY SYN-ACK)
//! DESTROY 198.18.1.2:40000 -> 198.18.0.1:80 in TIME_WAIT (timeout)
//! ```

use crate::conntrack::tcp::FlagClass;
use crate::conntrack::tuple::IpAddress;
use crate::conntrack::{Direction, Flow, TcpState, Tuple};
use crate::events::{Event, Hub, Kind};
use crate::service::Service;

/// The tracing target of the teaching line.
pub const TARGET: &str = "tunlb::trace";

/// Return whether an event goes anywhere: to a listener of `events` or to
/// the trace. One relaxed load and one cached check: the callers below test
/// it inline and do the rest out of line, so a packet pays nothing more
/// when nobody looks (the rest checks both again, as it always did).
#[inline(always)]
fn wanted(events: &Hub) -> bool {
    events.listening() || tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}

/// A NEW connection and the NAT decision made for it; `PICKUP` instead of
/// `NEW` for a flow picked up mid-stream. Also reported to `events`.
#[inline]
pub fn new_flow<A: IpAddress>(
    events: &Hub,
    flow: &Flow<A>,
    svc: &Service,
    backend: usize,
    pickup: bool,
) {
    if wanted(events) {
        report_new_flow(events, flow, svc, backend, pickup);
    }
}

#[cold]
#[inline(never)]
fn report_new_flow<A: IpAddress>(
    events: &Hub,
    flow: &Flow<A>,
    svc: &Service,
    backend: usize,
    pickup: bool,
) {
    events.publish(|| Event {
        decision: Some((svc.mode.name(), backend + 1, svc.backends.len())),
        ..Event::of(flow, Kind::New { pickup })
    });
    tracing::debug!(target: TARGET, "{}", decision(flow, svc, backend, pickup));
}

/// Return the NAT decision for a new flow, as the trace line words it:
/// `NEW C -> VIP => DNAT B, MASQ S (nth: backend 1 of 4)`.
pub fn decision<A: Copy + Into<std::net::IpAddr>>(
    flow: &Flow<A>,
    svc: &Service,
    backend: usize,
    pickup: bool,
) -> String {
    format!(
        "{} {} => DNAT {}, MASQ {} ({}: backend {} of {})",
        if pickup { "PICKUP" } else { "NEW" },
        flow.original,
        flow.reply.src,
        flow.reply.dst,
        svc.mode.name(),
        backend + 1,
        svc.backends.len()
    )
}

/// A state change of a flow. Also reported to `events`.
#[inline]
pub fn state<A: IpAddress>(
    events: &Hub,
    flow: &Flow<A>,
    dir: Direction,
    class: FlagClass,
    old: TcpState,
) {
    if wanted(events) {
        report_state(events, flow, dir, class, old);
    }
}

#[cold]
#[inline(never)]
fn report_state<A: IpAddress>(
    events: &Hub,
    flow: &Flow<A>,
    dir: Direction,
    class: FlagClass,
    old: TcpState,
) {
    events.publish(|| Event::of(flow, Kind::Update { old }));
    let what = match class {
        FlagClass::Syn => "SYN",
        FlagClass::SynAck => "SYN-ACK",
        FlagClass::Fin => "FIN",
        FlagClass::Ack => "ACK",
        FlagClass::Rst => "RST",
        FlagClass::None => "none",
    };
    tracing::debug!(
        target: TARGET,
        "STATE {} {} -> {} ({} {})",
        flow.original,
        old,
        flow.state,
        dir,
        what
    );
}

/// A segment of a tracked flow dropped as INVALID, and why (what Linux logs
/// with `nf_conntrack_log_invalid`).
pub fn invalid<A: IpAddress>(flow: &Flow<A>, dir: Direction, seq: u32, ack: u32, why: &str) {
    tracing::debug!(
        target: TARGET,
        "INVALID {} in {} ({} seq {} ack {}): {}",
        flow.original,
        flow.state,
        dir,
        seq,
        ack,
        why
    );
}

/// A flow leaving the table. Also reported to `events`.
#[inline]
pub fn destroy<A: IpAddress>(events: &Hub, flow: &Flow<A>, why: &'static str) {
    if wanted(events) {
        report_destroy(events, flow, why);
    }
}

#[cold]
#[inline(never)]
fn report_destroy<A: IpAddress>(events: &Hub, flow: &Flow<A>, why: &'static str) {
    events.publish(|| Event::of(flow, Kind::Destroy { why }));
    tracing::debug!(target: TARGET, "DESTROY {} in {} ({})", flow.original, flow.state, why);
}

/// A SYN refused because every backend is drained.
pub fn no_backend<A: IpAddress>(original: &Tuple<A>) {
    tracing::debug!(target: TARGET, "REJECT {} (no backend takes new connections: RST sent)", original);
}
