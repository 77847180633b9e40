//! Sequence-window tracking: Linux's `tcp_in_window`, so that a packet
//! outside a connection's window can neither pass nor change the flow.
//!
//! Conntrack follows each direction's sequence space. For a direction (the
//! *sender* of a segment) it keeps `td_end`, one past the highest sequence
//! number sent; `td_maxend`, the highest sequence number the peer allowed it
//! to send (the peer's ACK plus its window); `td_maxwin`, the largest window
//! it advertised (scaled); `td_maxack`, the highest ACK it sent; and the
//! window scale its SYN announced. A segment `seq..end` from the sender,
//! acknowledging `ack` (or a SACK edge beyond it), is *in window* when:
//!
//! 1. `seq <= sender.maxend`: it starts inside what the receiver allowed;
//! 2. `end > sender.end - receiver.maxwin`: it is no older than a window;
//! 3. `ack <= receiver.end`: it acknowledges nothing never sent;
//! 4. `ack > receiver.end - max(sender.maxwin, 66000)`: it is no older than a window.
//!
//! Only an in-window segment updates the windows ([`Check::Accept`]). Modern
//! Linux (6.x) forwards two harmless kinds of out-of-window segments without
//! learning from them ([`Check::Ignore`]): data below the lower bound (a
//! retransmission of data already acknowledged) and an ACK below its lower
//! bound (a very late ACK). Everything else outside is INVALID
//! ([`Check::Invalid`]): dropped, the flow untouched. A segment that overshoots
//! the receiver's window by no more than that window is accepted as Linux does
//! (some stacks send a little more than allowed). Retransmissions, zero-window
//! probes (`td_maxend` is one past a zero window), SACK blocks (the highest
//! right edge stands for the ACK when the receiver allowed SACK) and window
//! scaling (counted only when both SYNs carried the option, never on a SYN)
//! all fall inside these bounds.
//!
//! `liberal` is `nf_conntrack_tcp_be_liberal=1`: an out-of-window segment is
//! let through (without updating the windows), except an RST, which is always
//! checked. The engine decides RST acceptance with [`rst_check`] on top.
//!
//! The functions work on a copy of both directions and write it back only on
//! [`Check::Accept`] (the common case, an in-window ACK, is decided first and
//! writes in place only once every check has passed): a segment that is not
//! accepted changes nothing.

use super::tcp::TcpState;

/// `td_maxwin` of a direction never seen: Linux's `MAXACKWINCONST`, the ACK
/// window assumed while the sender has advertised nothing.
const MAX_ACK_WIN_CONST: u32 = 66_000;

/// Per-direction flags (`IP_CT_TCP_FLAG_*`).
mod flag {
    /// The SYN carried a window-scale option.
    pub(super) const WINDOW_SCALE: u8 = 0x01;
    /// The SYN allowed SACK.
    pub(super) const SACK_PERM: u8 = 0x02;
    /// Window checks on this direction let everything through but RSTs
    /// (`IP_CT_TCP_FLAG_BE_LIBERAL`): a flow picked up mid-stream, until
    /// both directions have been seen.
    pub(super) const BE_LIBERAL: u8 = 0x08;
    /// `maxack` holds a value.
    pub(super) const MAXACK_SET: u8 = 0x20;
}

/// The window scale a flow picked up mid-stream is assumed to use: the
/// largest allowed (RFC 7323). Its SYNs were never seen, so the real factor
/// is unknown; assuming the largest can only make the window bounds looser
/// than the true ones, never reject a segment the endpoints accept.
pub const PICKUP_SCALE: u8 = 14;

/// The sequence state of one direction of a flow (`struct ip_ct_tcp_state`).
/// Serializable for the state file ([`crate::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Window {
    /// One past the highest sequence number sent (SYN and FIN count one): `td_end`.
    pub end: u32,
    /// The highest sequence number the peer allows: its ACK plus its window (`td_maxend`).
    pub maxend: u32,
    /// The largest window this direction advertised, scaled (`td_maxwin`); 0
    /// until the direction is seen.
    pub maxwin: u32,
    /// The highest acknowledgment number this direction sent (`td_maxack`),
    /// valid once [`Window::maxack`] returns `Some`.
    maxack: u32,
    /// The window scale announced in this direction's SYN (`td_scale`).
    pub scale: u8,
    flags: u8,
}

impl Window {
    /// Return whether any segment of this direction was accepted.
    pub fn seen(&self) -> bool {
        self.maxwin != 0
    }

    /// Return the highest ACK this direction sent, if any: the next sequence
    /// number it expects from its peer (RCV.NXT).
    pub fn maxack(&self) -> Option<u32> {
        (self.flags & flag::MAXACK_SET != 0).then_some(self.maxack)
    }

    /// Return whether this direction's SYN allowed SACK.
    pub fn sack_permitted(&self) -> bool {
        self.flags & flag::SACK_PERM != 0
    }
}

/// What the window check needs of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful when [`Segment::ack_flag`] is set).
    pub ack: u32,
    /// Payload length plus one for SYN and for FIN.
    pub len: u32,
    /// The raw window field.
    pub window: u16,
    /// SYN is set.
    pub syn: bool,
    /// ACK is set.
    pub ack_flag: bool,
    /// RST is set.
    pub rst: bool,
    /// The options that matter here.
    pub options: Options,
}

impl Segment {
    /// Return one past the segment's last sequence number.
    pub fn end(&self) -> u32 {
        self.seq.wrapping_add(self.len)
    }
}

/// The TCP options conntrack reads (`tcp_options`, `tcp_sack`).
///
/// Eight bytes, every one defined even with no option set (no `Option`
/// inside, whose `None` leaves bytes undefined, and no padding): the
/// compiler then writes it whole and copies it whole. It is on every
/// packet's path, and a struct written a piece at a time but copied in
/// wider pieces cost a store-forwarding stall per packet (`cargo bench
/// --bench engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The highest right edge among SACK blocks (when `HAS_SACK`).
    sack: u32,
    /// The window-scale shift, or [`Options::NO_WSCALE`].
    wscale: u16,
    /// `SACK_PERM`, `HAS_SACK`.
    flags: u16,
}

impl Default for Options {
    /// No option.
    fn default() -> Self {
        Options::new(None, false, None)
    }
}

impl Options {
    /// What `wscale` holds when the option is absent.
    const NO_WSCALE: u16 = u16::MAX;
    /// The SYN carried SACK-permitted.
    const SACK_PERM: u16 = 1;
    /// `sack` holds a right edge.
    const HAS_SACK: u16 = 2;

    /// The options of a segment: window scale (capped at 14, RFC 7323),
    /// SACK-permitted, the highest SACK right edge.
    pub const fn new(wscale: Option<u8>, sack_perm: bool, sack: Option<u32>) -> Options {
        let mut out = Options {
            sack: 0,
            wscale: Self::NO_WSCALE,
            flags: 0,
        };
        if let Some(shift) = wscale {
            out.wscale = if shift > 14 { 14 } else { shift as u16 };
        }
        if sack_perm {
            out.flags |= Self::SACK_PERM;
        }
        if let Some(edge) = sack {
            out.set_sack(edge);
        }
        out
    }

    /// Return the window-scale option's shift (a SYN's), if it had one.
    pub fn wscale(&self) -> Option<u8> {
        (self.wscale != Self::NO_WSCALE).then_some(self.wscale as u8)
    }

    /// Return whether the segment (a SYN) carried SACK-permitted.
    pub fn sack_perm(&self) -> bool {
        self.flags & Self::SACK_PERM != 0
    }

    /// Return the highest right edge among the segment's SACK blocks, if any.
    pub fn sack(&self) -> Option<u32> {
        (self.flags & Self::HAS_SACK != 0).then_some(self.sack)
    }

    /// Set the highest SACK right edge.
    pub const fn set_sack(&mut self, edge: u32) {
        self.sack = edge;
        self.flags |= Self::HAS_SACK;
    }

    /// Parse a segment's options. Malformed options end the parse with what
    /// was found so far, as the kernel does.
    pub fn parse(options: &[u8], syn: bool) -> Options {
        let mut out = Options::default();
        // The common case: timestamps alone, aligned (what Linux sends on
        // every established segment). No SACK there.
        if options.len() == 12 && options[..4] == [1, 1, 8, 10] {
            return out;
        }
        let mut o = options;
        while let Some((&kind, rest)) = o.split_first() {
            match kind {
                0 => break,    // end of options
                1 => o = rest, // NOP
                _ => {
                    let Some(&len) = rest.first() else { break };
                    let len = usize::from(len);
                    if len < 2 || len > o.len() {
                        break;
                    }
                    let body = &o[2..len];
                    match (kind, len) {
                        (3, 3) if syn => out.wscale = u16::from(body[0].min(14)),
                        (4, 2) if syn => out.flags |= Self::SACK_PERM,
                        (5, _) if len >= 10 && (len - 2) % 8 == 0 => {
                            for block in body.chunks_exact(8) {
                                let right =
                                    u32::from_be_bytes([block[4], block[5], block[6], block[7]]);
                                if out.sack().is_none_or(|s| after(right, s)) {
                                    out.set_sack(right);
                                }
                            }
                        }
                        _ => {}
                    }
                    o = &o[len..];
                }
            }
        }
        out
    }
}

/// The outcome of the window check for one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// In window: the windows were updated.
    Accept,
    /// Outside the window but harmless (old data retransmitted, a late
    /// ACK): forward it, learn nothing from it, leave the state alone.
    Ignore(&'static str),
    /// Outside the window, let through in liberal mode: the state machine
    /// sees it, the windows learn nothing from it.
    Pass(&'static str),
    /// Outside the window: INVALID, drop it.
    Invalid(&'static str),
}

/// `a` is after `b` in sequence space.
#[inline]
pub fn after(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) < 0
}

/// `a` is before `b` in sequence space.
#[inline]
pub fn before(a: u32, b: u32) -> bool {
    after(b, a)
}

/// Record the SYN that creates a flow (`tcp_new`): the ORIGINAL direction
/// starts at the SYN, its window is the SYN's (unscaled), nothing is allowed
/// beyond it yet.
pub fn open(w: &mut [Window; 2], seg: &Segment) {
    w[0] = Window::default();
    w[1] = Window::default();
    init_from_syn(&mut w[0], seg);
}

/// Record the segment that creates a flow picked up mid-stream (`tcp_new`
/// with `nf_conntrack_tcp_loose=1`): the ORIGINAL direction starts from
/// this segment, the REPLY direction is unseen, and both are liberal until
/// each has been seen, with SACK allowed and the largest window scale
/// assumed ([`PICKUP_SCALE`]).
pub fn pickup(w: &mut [Window; 2], seg: &Segment) {
    let assumed = Window {
        scale: PICKUP_SCALE,
        flags: flag::WINDOW_SCALE | flag::SACK_PERM | flag::BE_LIBERAL,
        ..Window::default()
    };
    *w = [assumed; 2];
    let s = &mut w[0];
    s.end = seg.end();
    s.maxwin = (u32::from(seg.window) << PICKUP_SCALE).max(1);
    s.maxend = s.end.wrapping_add(s.maxwin);
    if seg.ack_flag {
        // What the client acknowledges, the backend has sent (as the
        // first segment of a direction says of the unseen other one).
        let sack = seg
            .options
            .sack()
            .filter(|&e| after(e, seg.ack))
            .unwrap_or(seg.ack);
        w[1].end = sack;
        w[1].maxend = sack;
    }
}

/// Forget where both directions stood, keeping what their SYNs said (window
/// scale, SACK), and check them liberally until each has been seen again:
/// for flows restored from a table saved while they were still moving (a
/// periodic save before a crash), whose sequence numbers have since gone on.
pub fn resync(w: &mut [Window; 2]) {
    for d in w.iter_mut() {
        *d = Window {
            scale: d.scale,
            flags: d.flags & (flag::WINDOW_SCALE | flag::SACK_PERM) | flag::BE_LIBERAL,
            ..Window::default()
        };
    }
}

impl Window {
    /// Return whether this direction is still checked liberally (a flow
    /// picked up mid-stream whose directions have not both been seen).
    pub fn liberal(&self) -> bool {
        self.flags & flag::BE_LIBERAL != 0
    }
}

fn init_from_syn(s: &mut Window, seg: &Segment) {
    s.end = seg.end();
    s.maxend = s.end;
    s.maxwin = u32::from(seg.window).max(1);
    s.flags &= flag::MAXACK_SET;
    s.scale = 0;
    if let Some(ws) = seg.options.wscale() {
        s.flags |= flag::WINDOW_SCALE;
        s.scale = ws;
    }
    if seg.options.sack_perm() {
        s.flags |= flag::SACK_PERM;
    }
}

/// Check a segment sent in direction `dir` (0 ORIGINAL, 1 REPLY) of a flow in
/// state `state` against both windows, and update them if it is in window.
/// `w` is left untouched unless the result is [`Check::Accept`].
#[inline]
pub fn tcp_in_window(
    w: &mut [Window; 2],
    dir: usize,
    state: TcpState,
    seg: &Segment,
    liberal: bool,
) -> Check {
    if accept_in_window_ack(w, dir, seg) {
        return Check::Accept;
    }
    tcp_in_window_general(w, dir, state, seg, liberal)
}

/// The common case of [`tcp_in_window`] in fewer steps: an ACK (no SYN, no
/// RST) from a direction already seen and not checked liberally, inside the
/// window. Returns whether it accepted the segment (and learned from it as
/// the general path does); `false` changes nothing, and the general path
/// decides.
///
/// Why it is the same: under these conditions [`tcp_in_window_general`]
/// skips its first-segment branch (`maxwin != 0`), the SYN restart (no SYN),
/// the replacement of a missing ACK and the zero-sequence RST rule (ACK set,
/// no RST); `liberal` only chooses among out-of-window answers, which are
/// left to it, as is a segment beyond `maxend` (its overshoot rule). What
/// remains is the same four bounds on the same values, then [`learn`], and
/// the BE_LIBERAL flags are not set on the sender, so nothing clears them.
/// A property test compares the two on random windows and segments.
#[inline(always)]
fn accept_in_window_ack(w: &mut [Window; 2], dir: usize, seg: &Segment) -> bool {
    debug_assert!(dir < 2, "a direction is 0 or 1");
    // In place: nothing is written before every check has passed.
    let [first, second] = w;
    let (sender, receiver) = if dir == 0 {
        (first, second)
    } else {
        (second, first)
    };
    if sender.maxwin == 0
        || seg.syn
        || seg.rst
        || !seg.ack_flag
        || sender.flags & flag::BE_LIBERAL != 0
    {
        return false;
    }
    let (seq, end, ack) = (seg.seq, seg.end(), seg.ack);
    let sack = sack_or_ack(receiver, seg);
    let max_ack_win = sender.maxwin.max(MAX_ACK_WIN_CONST);
    let in_window = before(seq, sender.maxend.wrapping_add(1))
        && before(sack, receiver.end.wrapping_add(1))
        && (receiver.maxwin == 0
            || after(
                end,
                sender.end.wrapping_sub(receiver.maxwin).wrapping_sub(1),
            ))
        && after(sack, receiver.end.wrapping_sub(max_ack_win).wrapping_sub(1));
    if !in_window {
        return false;
    }
    learn(sender, receiver, seg, end, ack, sack);
    true
}

/// The highest SACK edge of `seg` if it is beyond its ACK and the receiver
/// allowed SACK, else the ACK.
#[inline(always)]
fn sack_or_ack(receiver: &Window, seg: &Segment) -> u32 {
    let mut sack = seg.ack;
    if receiver.sack_permitted() {
        if let Some(edge) = seg.options.sack() {
            if after(edge, sack) {
                sack = edge;
            }
        }
    }
    sack
}

/// [`tcp_in_window`], every case (Linux's `tcp_in_window`, step by step).
#[inline(never)]
fn tcp_in_window_general(
    w: &mut [Window; 2],
    dir: usize,
    state: TcpState,
    seg: &Segment,
    liberal: bool,
) -> Check {
    let mut sender = w[dir];
    let mut receiver = w[1 - dir];
    let liberal = liberal || sender.flags & flag::BE_LIBERAL != 0;
    let mut seq = seg.seq;
    let mut end = seg.end();
    let win = u32::from(seg.window);
    let mut ack = seg.ack;
    let mut sack = sack_or_ack(&receiver, seg);

    if sender.maxwin == 0 {
        // The first segment seen from this direction.
        if seg.syn {
            init_from_syn(&mut sender, seg);
            // Scaling counts only when both sides offered it.
            if sender.flags & receiver.flags & flag::WINDOW_SCALE == 0 {
                sender.scale = 0;
                receiver.scale = 0;
            }
            if !seg.ack_flag {
                // Simultaneous open: nothing to check yet.
                w[dir] = sender;
                w[1 - dir] = receiver;
                return Check::Accept;
            }
        } else {
            // Picked up mid-stream (the reply to a SYN that was not a SYN-ACK).
            // When the peer was seen first, its ACKs already said how far
            // this side has sent (its end, set from them below, and its
            // highest ACK): an old segment retransmitted first must not
            // move that back, or the peer's next ACKs would look like ACKs
            // of data never sent once both sides are checked (Linux keeps
            // such flows liberal for good instead).
            let acked = [
                (receiver.maxwin != 0).then_some(sender.end),
                receiver.maxack(),
            ];
            sender.end = acked
                .into_iter()
                .flatten()
                .fold(end, |e, a| if after(a, e) { a } else { e });
            let swin = win << sender.scale;
            sender.maxwin = swin.max(1);
            sender.maxend = sender.end.wrapping_add(sender.maxwin);
            if receiver.maxwin == 0 {
                receiver.end = sack;
                receiver.maxend = sack;
            } else if sack == receiver.end.wrapping_add(1) {
                // The answer to a keepalive probe (one byte below what its
                // sender has sent): the receiver is one further than seen.
                receiver.end = sack;
            }
            if liberal && sender.flags & flag::BE_LIBERAL != 0 {
                // A picked-up flow learns where this direction stands even
                // from a segment the checks below let through (as Linux,
                // which initialises the sender in place).
                w[dir] = sender;
                w[1 - dir] = receiver;
            }
        }
    } else if seg.syn
        && ((state == TcpState::SynSent && dir == 0) || (state == TcpState::SynRecv && dir == 1))
        && after(end, sender.end)
    {
        // A SYN (or SYN-ACK) retransmitted with a new initial sequence
        // number: the sequence space starts again.
        init_from_syn(&mut sender, seg);
    }

    if !seg.ack_flag || (seg.rst && ack == 0) {
        // No acknowledgment to check (an RST|ACK with ack 0 is a BSD habit).
        ack = receiver.end;
        sack = receiver.end;
    }
    if seq == end && seg.rst && seq == 0 && state == TcpState::SynSent {
        // An RST with sequence number 0 answering a SYN: judge it by where
        // the sender is. (Linux judges every empty segment so, whatever its
        // sequence number; tunlb holds empty segments to RFC 793's
        // acceptability test like any other, so an ACK with a made-up
        // sequence number is not forwarded.)
        seq = sender.end;
        end = sender.end;
    }

    let max_ack_win = if sender.maxwin > MAX_ACK_WIN_CONST {
        sender.maxwin
    } else {
        MAX_ACK_WIN_CONST
    };
    let ack_above_floor = after(sack, receiver.end.wrapping_sub(max_ack_win).wrapping_sub(1));
    let in_recv_win = receiver.maxwin == 0
        || after(
            end,
            sender.end.wrapping_sub(receiver.maxwin).wrapping_sub(1),
        );
    let ack_below_ceiling = before(sack, receiver.end.wrapping_add(1));

    if !before(seq, sender.maxend.wrapping_add(1)) {
        // Beyond what the receiver allowed. Some stacks overshoot a little:
        // within one receiver window, with the rest in order, accept it.
        let overshot = end.wrapping_sub(sender.maxend).wrapping_add(1);
        if receiver.maxwin != 0
            && in_recv_win
            && ack_above_floor
            && ack_below_ceiling
            && overshot <= receiver.maxwin
            && !seg.rst
        {
            sender.end = end;
            w[dir] = sender;
            w[1 - dir] = receiver;
            return Check::Accept;
        }
        return out_of_window(
            seg,
            liberal,
            "SEQ is over the upper bound (over the window of the receiver)",
        );
    }
    if !ack_below_ceiling {
        return out_of_window(
            seg,
            liberal,
            "ACK is over the upper bound (ACKed data not seen yet)",
        );
    }
    if !in_recv_win {
        return harmless(
            seg,
            liberal,
            "SEQ is under the lower bound (already ACKed data retransmitted)",
        );
    }
    if !ack_above_floor {
        return harmless(
            seg,
            liberal,
            "ACK is under the lower bound (possible overly delayed ACK)",
        );
    }

    // In window: learn from it.
    learn(&mut sender, &mut receiver, seg, end, ack, sack);
    if sender.flags & flag::BE_LIBERAL != 0 && receiver.maxwin != 0 {
        // A picked-up flow with both directions seen: checked from now on.
        sender.flags &= !flag::BE_LIBERAL;
        receiver.flags &= !flag::BE_LIBERAL;
    }
    w[dir] = sender;
    w[1 - dir] = receiver;
    Check::Accept
}

/// Learn from an in-window segment `seg` (ending at `end`, acknowledging
/// `ack`, or `sack` with a SACK edge beyond it): the sender's window, end
/// and highest ACK, the receiver's window and how far it may send.
#[inline(always)]
fn learn(sender: &mut Window, receiver: &mut Window, seg: &Segment, end: u32, ack: u32, sack: u32) {
    let win = u32::from(seg.window);
    let win = if seg.syn { win } else { win << sender.scale };
    let swin = win.wrapping_add(sack.wrapping_sub(ack));
    if sender.maxwin < swin {
        sender.maxwin = swin;
    }
    if after(end, sender.end) {
        sender.end = end;
    }
    if seg.ack_flag
        && !seg.rst
        && (sender.flags & flag::MAXACK_SET == 0 || after(ack, sender.maxack))
    {
        sender.maxack = ack;
        sender.flags |= flag::MAXACK_SET;
    }
    if receiver.maxwin != 0 && after(end, sender.maxend) {
        receiver.maxwin = receiver
            .maxwin
            .wrapping_add(end.wrapping_sub(sender.maxend));
    }
    if after(sack.wrapping_add(win), receiver.maxend.wrapping_sub(1)) {
        receiver.maxend = sack.wrapping_add(win);
        if win == 0 {
            // A zero window still admits a one-byte probe.
            receiver.maxend = receiver.maxend.wrapping_add(1);
        }
    }
}

/// An INVALID segment, unless liberal (never for an RST).
fn out_of_window(seg: &Segment, liberal: bool, why: &'static str) -> Check {
    if liberal && !seg.rst {
        Check::Pass(why)
    } else {
        Check::Invalid(why)
    }
}

/// A harmless out-of-window segment: forwarded untracked (tracked without
/// learning, when liberal) unless it is an RST.
fn harmless(seg: &Segment, liberal: bool, why: &'static str) -> Check {
    if seg.rst {
        Check::Invalid(why)
    } else if liberal {
        Check::Pass(why)
    } else {
        Check::Ignore(why)
    }
}

/// Take a SYN-ACK that restarts the reply direction while the flow is in
/// SYN_RECV (a backend that answered a retransmitted SYN with a new initial
/// sequence number, as SYN cookies may): it must acknowledge the client's
/// SYN exactly. Returns whether the reply direction was re-initialised.
pub fn resync_reply(w: &mut [Window; 2], seg: &Segment) -> bool {
    if !(seg.syn && seg.ack_flag && seg.ack == w[0].end) || w[1].end == seg.end() {
        return false;
    }
    let mut sender = Window::default();
    init_from_syn(&mut sender, seg);
    sender.maxack = seg.ack;
    sender.flags |= flag::MAXACK_SET;
    let mut receiver = w[0];
    if sender.flags & receiver.flags & flag::WINDOW_SCALE == 0 {
        sender.scale = 0;
        receiver.scale = 0;
    }
    // The client may send as far as this SYN-ACK's window allows.
    receiver.maxend = seg.ack.wrapping_add(u32::from(seg.window));
    w[0] = receiver;
    w[1] = sender;
    true
}

/// What an RST does to a flow (the `TCP_CONNTRACK_CLOSE` case of Linux's
/// `tcp_packet`, with RFC 5961's exact-match rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RstCheck {
    /// Close the flow.
    Close,
    /// In window but not at the exact sequence number the receiver expects,
    /// on an established flow: forward it (the endpoint answers with a
    /// challenge ACK) and keep the state.
    Keep,
    /// Drop it.
    Invalid(&'static str),
}

/// Judge an RST sent in direction `dir` on a flow in `state`. `assured` is
/// the flow's ASSURED bit; `stray_ack` is the acknowledgment number of an
/// ignored REPLY ACK seen while the flow was in SYN_SENT (see the engine).
/// The windows are not updated by an RST.
pub fn rst_check(
    w: &[Window; 2],
    dir: usize,
    state: TcpState,
    seg: &Segment,
    assured: bool,
    stray_ack: Option<u32>,
) -> RstCheck {
    let receiver = &w[1 - dir];
    if state == TcpState::Close {
        // Already reset: the rest of an RST train (answers to segments that
        // were in flight, acknowledging older data) is passed and changes
        // nothing. (Linux accepts any RST in a closing state.)
        return RstCheck::Keep;
    }
    if state == TcpState::SynSent {
        if dir == 1 {
            // The backend refusing the SYN: it must acknowledge that SYN
            // exactly (RFC 793, SYN-SENT).
            return if seg.ack_flag && seg.ack == receiver.end {
                RstCheck::Close
            } else {
                RstCheck::Invalid("RST does not acknowledge the SYN")
            };
        }
        if stray_ack == Some(seg.seq) {
            // The client resetting a stray ACK that answered its SYN (a
            // backend's TIME_WAIT from an older connection on the same
            // tuple), in a sequence space tunlb never saw.
            return RstCheck::Close;
        }
    }
    let mut copy = *w;
    match tcp_in_window(&mut copy, dir, state, seg, false) {
        Check::Accept => {}
        Check::Ignore(why) | Check::Pass(why) | Check::Invalid(why) => {
            return RstCheck::Invalid(why)
        }
    }
    match receiver.maxack() {
        Some(expected) if !(seg.seq == 0 && state < TcpState::Established) => {
            if before(seg.seq, expected) {
                // An answer to a stale segment. On a closing flow it is the
                // end of a connection that is ending anyway: passed untracked
                // (Linux passes every RST there). Otherwise INVALID, as Linux.
                return if state.is_closing() {
                    RstCheck::Keep
                } else {
                    RstCheck::Invalid("RST below what the receiver acknowledged")
                };
            }
            // Exact: what the receiver expects next (RFC 5961), or right
            // after the sender's own last byte (data then a reset, as a
            // socket closed with SO_LINGER 0 or unread input sends it:
            // Linux's "RST train" case). Guessing either is guessing 32 bits.
            let exact = seg.seq == expected || seg.seq == w[dir].end;
            let established = state == TcpState::Established && assured;
            if established && !exact {
                return RstCheck::Keep;
            }
            RstCheck::Close
        }
        _ => RstCheck::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::{Established, FinWait, SynRecv, SynSent};

    fn seg(seq: u32, ack: Option<u32>, len: u32, window: u16) -> Segment {
        Segment {
            seq,
            ack: ack.unwrap_or(0),
            ack_flag: ack.is_some(),
            len,
            window,
            ..Default::default()
        }
    }

    fn syn(seq: u32, ack: Option<u32>, window: u16, wscale: Option<u8>) -> Segment {
        Segment {
            syn: true,
            options: Options::new(wscale, true, None),
            ..seg(seq, ack, 1, window)
        }
    }

    fn rst(seq: u32, ack: Option<u32>) -> Segment {
        Segment {
            rst: true,
            ..seg(seq, ack, 0, 0)
        }
    }

    /// A handshake with window scale 7 both ways: client ISN 1000, server ISN 5000.
    fn established() -> [Window; 2] {
        let mut w = [Window::default(); 2];
        open(&mut w, &syn(1000, None, 64240, Some(7)));
        assert_eq!(
            tcp_in_window(
                &mut w,
                1,
                SynSent,
                &syn(5000, Some(1001), 65160, Some(7)),
                false
            ),
            Check::Accept
        );
        assert_eq!(
            tcp_in_window(&mut w, 0, SynRecv, &seg(1001, Some(5001), 0, 502), false),
            Check::Accept
        );
        w
    }

    #[test]
    fn a_handshake_sets_both_windows() {
        let w = established();
        assert_eq!((w[0].end, w[1].end), (1001, 5001));
        assert_eq!((w[0].scale, w[1].scale), (7, 7));
        assert_eq!(w[0].maxack(), Some(5001));
        assert_eq!(w[1].maxack(), Some(1001));
        // The client may send as far as the server's SYN-ACK window allows.
        assert_eq!(w[0].maxend, 1001 + 65160);
        assert_eq!(w[1].maxend, 5001 + (502 << 7));
    }

    #[test]
    fn a_syn_ack_with_a_new_isn_in_syn_recv_restarts_the_reply_side() {
        let mut w = [Window::default(); 2];
        open(&mut w, &syn(1000, None, 64240, Some(7)));
        let _ = tcp_in_window(
            &mut w,
            1,
            SynSent,
            &syn(5000, Some(1001), 65160, Some(7)),
            false,
        );
        // The same SYN-ACK again changes nothing; one not acknowledging the SYN is refused.
        assert!(!resync_reply(
            &mut w,
            &syn(5000, Some(1001), 65160, Some(7))
        ));
        assert!(!resync_reply(
            &mut w,
            &syn(9000, Some(1002), 65160, Some(7))
        ));
        // A new ISN that acknowledges the SYN exactly: the client's ACK of it is in window.
        assert!(resync_reply(&mut w, &syn(9000, Some(1001), 65160, Some(7))));
        assert_eq!(
            tcp_in_window(&mut w, 0, SynRecv, &seg(1001, Some(9001), 0, 502), false),
            Check::Accept
        );
    }

    #[test]
    fn scaling_needs_both_syns() {
        let mut w = [Window::default(); 2];
        open(&mut w, &syn(1000, None, 64240, Some(7)));
        let _ = tcp_in_window(
            &mut w,
            1,
            SynSent,
            &syn(5000, Some(1001), 65160, None),
            false,
        );
        assert_eq!((w[0].scale, w[1].scale), (0, 0));
    }

    #[test]
    fn data_in_window_moves_end_and_out_of_window_changes_nothing() {
        let mut w = established();
        assert_eq!(
            tcp_in_window(
                &mut w,
                0,
                Established,
                &seg(1001, Some(5001), 1000, 502),
                false
            ),
            Check::Accept
        );
        assert_eq!(w[0].end, 2001);
        let before_w = w;
        // Far beyond the receiver's window: INVALID, nothing learned.
        let far = seg(2001 + (1 << 30), Some(5001), 100, 502);
        assert!(matches!(
            tcp_in_window(&mut w, 0, Established, &far, false),
            Check::Invalid(_)
        ));
        assert_eq!(w, before_w);
        // An ACK of data the server never sent.
        let bad_ack = seg(2001, Some(5001 + 100_000), 0, 502);
        assert!(matches!(
            tcp_in_window(&mut w, 0, Established, &bad_ack, false),
            Check::Invalid(_)
        ));
        assert_eq!(w, before_w);
        // Liberal: let through, still learn nothing.
        assert!(matches!(
            tcp_in_window(&mut w, 0, Established, &far, true),
            Check::Pass(_)
        ));
        assert_eq!(w, before_w);
    }

    #[test]
    fn retransmissions_and_late_acks_pass_without_effect() {
        let mut w = established();
        // The client sends 200 000 bytes in windows the server opens.
        let mut seq = 1001u32;
        for _ in 0..200 {
            assert_eq!(
                tcp_in_window(
                    &mut w,
                    0,
                    Established,
                    &seg(seq, Some(5001), 1000, 502),
                    false
                ),
                Check::Accept
            );
            seq += 1000;
            assert_eq!(
                tcp_in_window(
                    &mut w,
                    1,
                    Established,
                    &seg(5001, Some(seq), 0, 1000),
                    false
                ),
                Check::Accept
            );
        }
        // The same segment again (a retransmission in window): accepted.
        assert_eq!(
            tcp_in_window(
                &mut w,
                0,
                Established,
                &seg(seq - 1000, Some(5001), 1000, 502),
                false
            ),
            Check::Accept
        );
        // Data acknowledged long ago (older than the window): forwarded, nothing learned.
        let snapshot = w;
        assert!(matches!(
            tcp_in_window(
                &mut w,
                0,
                Established,
                &seg(1001, Some(5001), 1000, 502),
                false
            ),
            Check::Ignore(_)
        ));
        assert_eq!(w, snapshot);
    }

    #[test]
    fn a_zero_window_admits_a_probe() {
        let mut w = established();
        // The server closes its window entirely.
        assert_eq!(
            tcp_in_window(&mut w, 1, Established, &seg(5001, Some(1001), 0, 0), false),
            Check::Accept
        );
        // A one-byte probe at the edge is in window.
        assert_eq!(
            tcp_in_window(
                &mut w,
                0,
                Established,
                &seg(1001, Some(5001), 1, 502),
                false
            ),
            Check::Accept
        );
    }

    #[test]
    fn a_sack_edge_counts_as_the_ack() {
        let mut w = established();
        for i in 0..3u32 {
            let s = seg(1001 + i * 1000, Some(5001), 1000, 502);
            assert_eq!(
                tcp_in_window(&mut w, 0, Established, &s, false),
                Check::Accept
            );
        }
        // The server acknowledges 1001 and SACKs 2001..4001.
        let mut sacked = seg(5001, Some(2001), 0, 1000);
        sacked.options.set_sack(4001);
        assert_eq!(
            tcp_in_window(&mut w, 1, Established, &sacked, false),
            Check::Accept
        );
        // A SACK edge beyond anything sent is INVALID.
        sacked.options.set_sack(9001);
        assert!(matches!(
            tcp_in_window(&mut w, 1, Established, &sacked, false),
            Check::Invalid(_)
        ));
    }

    #[test]
    fn wraparound_is_handled() {
        let mut w = [Window::default(); 2];
        open(&mut w, &syn(u32::MAX - 10, None, 1000, None));
        let _ = tcp_in_window(
            &mut w,
            1,
            SynSent,
            &syn(7, Some(u32::MAX - 9), 1000, None),
            false,
        );
        assert_eq!(
            tcp_in_window(
                &mut w,
                0,
                SynRecv,
                &seg(u32::MAX - 9, Some(8), 100, 1000),
                false
            ),
            Check::Accept
        );
        assert_eq!(w[0].end, 90);
    }

    #[test]
    fn an_rst_must_be_exact_on_an_established_flow() {
        let mut w = established();
        let _ = tcp_in_window(
            &mut w,
            0,
            Established,
            &seg(1001, Some(5001), 100, 502),
            false,
        );
        let _ = tcp_in_window(
            &mut w,
            1,
            Established,
            &seg(5001, Some(1101), 0, 509),
            false,
        );
        // The server expects 1101 next: an RST there closes.
        assert_eq!(
            rst_check(&w, 0, Established, &rst(1101, None), true, None),
            RstCheck::Close
        );
        // Data the server has not acknowledged yet, then an RST right after
        // it (SO_LINGER 0): closes too.
        let mut w2 = w;
        let _ = tcp_in_window(
            &mut w2,
            0,
            Established,
            &seg(1101, Some(5001), 200, 502),
            false,
        );
        assert_eq!(
            rst_check(&w2, 0, Established, &rst(1301, None), true, None),
            RstCheck::Close
        );
        // In window but not exact: kept (the endpoint sends a challenge ACK).
        assert_eq!(
            rst_check(&w, 0, Established, &rst(1200, None), true, None),
            RstCheck::Keep
        );
        // Far away, or below what was acknowledged: dropped.
        assert!(matches!(
            rst_check(&w, 0, Established, &rst(1101 + (1 << 30), None), true, None),
            RstCheck::Invalid(_)
        ));
        assert!(matches!(
            rst_check(&w, 0, Established, &rst(1050, None), true, None),
            RstCheck::Invalid(_)
        ));
        // Closing states accept any in-window RST, as Linux does.
        assert_eq!(
            rst_check(&w, 0, FinWait, &rst(1200, None), true, None),
            RstCheck::Close
        );
        // After the reset, the rest of an RST train passes and changes nothing.
        assert_eq!(
            rst_check(&w, 1, TcpState::Close, &rst(7, None), true, None),
            RstCheck::Keep
        );
        assert_eq!(
            rst_check(&w, 0, FinWait, &rst(1050, None), true, None),
            RstCheck::Keep,
            "below what was acknowledged, on a closing flow: passed, nothing changes"
        );
    }

    #[test]
    fn an_rst_answering_a_syn_must_ack_it() {
        let mut w = [Window::default(); 2];
        open(&mut w, &syn(1000, None, 64240, None));
        assert_eq!(
            rst_check(&w, 1, SynSent, &rst(0, Some(1001)), false, None),
            RstCheck::Close
        );
        assert!(matches!(
            rst_check(&w, 1, SynSent, &rst(0, Some(1000)), false, None),
            RstCheck::Invalid(_)
        ));
        assert!(matches!(
            rst_check(&w, 1, SynSent, &rst(0, None), false, None),
            RstCheck::Invalid(_)
        ));
        // The client resetting a stray ACK: only at that ACK's number.
        let stray = Some(0x3000_0000);
        assert_eq!(
            rst_check(&w, 0, SynSent, &rst(0x3000_0000, None), false, stray),
            RstCheck::Close
        );
    }

    #[test]
    fn options_are_found() {
        // MSS 1460, SACK permitted, timestamps, NOP, wscale 7.
        let opts = [
            2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let o = Options::parse(&opts, true);
        assert_eq!((o.wscale(), o.sack_perm(), o.sack()), (Some(7), true, None));
        assert_eq!(Options::parse(&opts, false).wscale(), None, "only on a SYN");
        assert_eq!(
            Options::parse(&[3, 3, 20], true).wscale(),
            Some(14),
            "capped"
        );
        assert_eq!(
            Options::parse(&[3, 200], true),
            Options::default(),
            "a bad length ends the parse"
        );
        assert_eq!(Options::parse(&[], true), Options::default());
        // NOP NOP SACK with two blocks: the highest right edge.
        let sack = [
            1, 1, 5, 18, 0, 0, 0, 10, 0, 0, 0, 20, 0, 0, 0, 30, 0, 0, 0, 40,
        ];
        assert_eq!(Options::parse(&sack, false).sack(), Some(40));
        // Timestamps alone: the fast path.
        assert_eq!(
            Options::parse(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], false),
            Options::default()
        );
    }

    /// After a kill -9, a flow restored from an older save (or picked up)
    /// sees the client first, whose ACK says it has the backend's data up
    /// to 5_100_000; then the backend's first segment is an old one it
    /// retransmits (its ACKs from the client were lost in the outage). That
    /// segment must not pull the backend's end back below what the client
    /// acknowledged: the client's next ACKs would be "over the upper bound"
    /// once both directions were seen, dropped, and the backend, hearing
    /// nothing, would retransmit the same segment until the client's
    /// keepalive gave up (seen in 72-standby).
    #[test]
    fn an_old_retransmission_first_does_not_undo_what_the_peer_acknowledged() {
        for restored in [true, false] {
            let mut w = [Window::default(); 2];
            // A keepalive probe (one byte below the client's next sequence
            // number) acknowledging 5_100_000, with a SACK block beyond.
            let mut probe = seg(1_000_099, Some(5_100_000), 0, 500);
            probe.options.set_sack(5_150_000);
            if restored {
                open(&mut w, &syn(900, None, 1000, Some(7)));
                resync(&mut w);
                assert_eq!(
                    tcp_in_window(&mut w, 0, TcpState::Established, &probe, false),
                    Check::Accept
                );
            } else {
                pickup(&mut w, &probe);
            }
            let old = seg(5_000_000, Some(1_000_100), 1000, 300);
            assert!(!matches!(
                tcp_in_window(&mut w, 1, TcpState::Established, &old, false),
                Check::Invalid(_)
            ));
            let dup = Segment {
                options: probe.options,
                ..seg(1_000_100, Some(5_100_000), 0, 500)
            };
            assert_eq!(
                tcp_in_window(&mut w, 0, TcpState::Established, &dup, false),
                Check::Accept,
                "restored {restored}: the client's ACK of data it has"
            );
            // The backend, told, goes on from there.
            let next = seg(5_150_000, Some(1_000_100), 1000, 300);
            assert_eq!(
                tcp_in_window(&mut w, 1, TcpState::Established, &next, false),
                Check::Accept
            );
            assert!(!w[0].liberal() && !w[1].liberal());
        }
    }

    #[test]
    fn a_pickup_is_liberal_until_both_directions_are_seen_then_checked() {
        let mut w = [Window::default(); 2];
        // The client's segment in the middle of a connection: 100 bytes at
        // 1_000_000, acknowledging the backend up to 5_000_000.
        pickup(&mut w, &seg(1_000_000, Some(5_000_000), 100, 500));
        assert!(w[0].liberal() && w[1].liberal());
        // Before the backend is seen, a segment far outside passes.
        let wild = seg(900_000_000, Some(5_000_000), 10, 500);
        assert!(matches!(
            tcp_in_window(&mut w, 0, TcpState::Established, &wild, false),
            Check::Pass(_)
        ));
        // The backend's next data: seen, and the flow is checked from now on.
        let reply = seg(5_000_000, Some(1_000_100), 1000, 300);
        assert_eq!(
            tcp_in_window(&mut w, 1, TcpState::Established, &reply, false),
            Check::Accept
        );
        let ack = seg(1_000_100, Some(5_001_000), 0, 500);
        assert_eq!(
            tcp_in_window(&mut w, 0, TcpState::Established, &ack, false),
            Check::Accept
        );
        assert!(!w[0].liberal() && !w[1].liberal());
        // An ACK of data the backend never sent is INVALID again.
        let bogus = seg(1_000_100, Some(2_000_000_000), 0, 500);
        assert!(matches!(
            tcp_in_window(&mut w, 0, TcpState::Established, &bogus, false),
            Check::Invalid(_)
        ));
        // The assumed scale keeps the real window inside the bounds: data
        // up to 500 << 14 bytes ahead of the backend's ACK is accepted.
        let far = seg(1_000_100 + (500 << 13), Some(5_001_000), 1000, 500);
        assert_eq!(
            tcp_in_window(&mut w, 0, TcpState::Established, &far, false),
            Check::Accept
        );
    }

    #[test]
    fn a_pickup_by_a_keepalive_probe_takes_the_answer_to_it() {
        let mut w = [Window::default(); 2];
        // A keepalive probe: one below what the client has sent (1_000_000).
        pickup(&mut w, &seg(999_999, Some(5_000_000), 0, 500));
        // The backend answers it, acknowledging 1_000_000.
        let answer = seg(5_000_000, Some(1_000_000), 0, 300);
        assert_eq!(
            tcp_in_window(&mut w, 1, TcpState::Established, &answer, false),
            Check::Accept
        );
        // Another probe, then the backend's retransmitted data: in window.
        let probe = seg(999_999, Some(5_000_000), 0, 500);
        assert_eq!(
            tcp_in_window(&mut w, 0, TcpState::Established, &probe, false),
            Check::Accept
        );
        let data = seg(5_000_000, Some(1_000_000), 1448, 300);
        assert_eq!(
            tcp_in_window(&mut w, 1, TcpState::Established, &data, false),
            Check::Accept
        );
    }

    #[test]
    fn a_resync_forgets_positions_but_keeps_what_the_syns_said() {
        let mut w = [Window::default(); 2];
        open(&mut w, &syn(100, None, 1000, Some(7)));
        assert_eq!(
            tcp_in_window(
                &mut w,
                1,
                TcpState::SynSent,
                &syn(500, Some(101), 1000, Some(7)),
                false
            ),
            Check::Accept
        );
        resync(&mut w);
        assert!(w
            .iter()
            .all(|d| d.liberal() && d.maxwin == 0 && d.scale == 7));
        assert!(w.iter().all(|d| d.sack_permitted()));
    }

    #[test]
    fn the_common_case_takes_the_short_path() {
        // An in-order data segment and its ACK on an established flow are
        // decided by `accept_in_window_ack`, and as the general path would.
        let mut w = established();
        let data = seg(1001, Some(5001), 100, 502);
        let mut general = w;
        assert!(accept_in_window_ack(&mut w, 0, &data));
        assert_eq!(
            tcp_in_window_general(&mut general, 0, Established, &data, false),
            Check::Accept
        );
        assert_eq!(w, general);
        // Out of window: the short path declines and changes nothing.
        let far = seg(1001 + (1 << 30), Some(5001), 100, 502);
        assert!(!accept_in_window_ack(&mut w, 0, &far));
        assert_eq!(w, general);
    }

    /// A sequence number near `base`: mostly within a few segments, else
    /// within about two maximal windows, or anywhere.
    fn near(base: u32) -> impl proptest::strategy::Strategy<Value = u32> {
        use proptest::prelude::*;
        prop_oneof![
            1 => Just(0i32),
            6 => -3_000i32..3_000,
            2 => -140_000i32..140_000,
            1 => any::<i32>(),
        ]
        .prop_map(move |d| base.wrapping_add(d as u32))
    }

    /// A direction's state around `base`: seen or not, any scale, any flags
    /// (BE_LIBERAL in a quarter).
    fn window_near(base: u32) -> impl proptest::strategy::Strategy<Value = Window> {
        use proptest::prelude::*;
        (
            near(base),
            0u32..140_000,
            prop_oneof![Just(0u32), 1u32..140_000, any::<u32>()],
            near(base),
            0u8..=14,
            0u8..0x40,
            prop::bool::weighted(0.25),
        )
            .prop_map(
                |(end, ahead, maxwin, maxack, scale, flags, liberal)| Window {
                    end,
                    maxend: end.wrapping_add(ahead),
                    maxwin,
                    maxack,
                    scale,
                    flags: if liberal {
                        flags
                    } else {
                        flags & !flag::BE_LIBERAL
                    },
                },
            )
    }

    /// Both directions around one random point in sequence space, a
    /// direction, and a segment in it whose numbers are near where the
    /// windows stand (its sequence number near the sender's end, its ACK near
    /// the receiver's, or zero, which RSTs treat apart): mostly ACKs,
    /// sometimes SYN or RST or no ACK, some with a SACK edge.
    fn windows_and_segment(
    ) -> impl proptest::strategy::Strategy<Value = ([Window; 2], usize, Segment)> {
        use proptest::prelude::*;
        // Sometimes around zero, where an ACK or sequence number of zero
        // (which RSTs treat apart) can be in window.
        (prop_oneof![4 => any::<u32>(), 1 => near(0)], 0usize..2)
            .prop_flat_map(|(base, dir)| ([window_near(base), window_near(base)], Just(dir)))
            .prop_flat_map(|(w, dir)| {
                let (sender, receiver) = (w[dir], w[1 - dir]);
                let segment = (
                    (
                        prop_oneof![9 => near(sender.end), 1 => Just(0)],
                        prop_oneof![9 => near(receiver.end), 1 => Just(0)],
                        prop_oneof![Just(0u32), 0u32..70_000],
                        any::<u16>(),
                    ),
                    (
                        prop::bool::weighted(0.1),
                        prop::bool::weighted(0.9),
                        prop::bool::weighted(0.1),
                    ),
                    prop::option::of(near(receiver.end)),
                )
                    .prop_map(
                        |((seq, ack, len, window), (syn, ack_flag, rst), sack)| Segment {
                            seq,
                            ack,
                            len,
                            window,
                            syn,
                            ack_flag,
                            rst,
                            options: Options::new(None, false, sack),
                        },
                    );
                (Just(w), Just(dir), segment)
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn the_short_path_decides_as_the_general_path(
            (w, dir, seg) in windows_and_segment(),
            state in proptest::sample::select(TcpState::ALL.to_vec()),
            liberal in proptest::bool::ANY,
        ) {
            let (mut both, mut general) = (w, w);
            let a = tcp_in_window(&mut both, dir, state, &seg, liberal);
            let b = tcp_in_window_general(&mut general, dir, state, &seg, liberal);
            proptest::prop_assert_eq!(a, b);
            proptest::prop_assert_eq!(both, general);
        }
    }
}
