//! The conntrack TCP state machine, as data.
//!
//! This is Linux's `tcp_conntracks[2][6][TCP_CONNTRACK_MAX]` from
//! `net/netfilter/nf_conntrack_proto_tcp.c`, transcribed cell for cell: a
//! packet is first *classified* ([`FlagClass::of`], RST > SYN(+ACK) > FIN >
//! ACK > none) and the new state is then read from
//! `TRANSITIONS[direction][class][old state]`. Two kinds of "no" exist:
//! [`Cell::Invalid`] (INVALID: drop and count the packet, leave the flow alone)
//! and [`Cell::Ignore`] (pass the packet, keep the state: the endpoints may know
//! better, e.g. a SYN on an established flow that the server will answer with a
//! challenge ACK).
//!
//! Where tunlb departs from the kernel:
//! - No loose pickup: the kernel's `sNO -> sES` on an ORIGINAL ACK ("assumed")
//!   lets conntrack adopt a flow mid-stream. A load balancer has no backend to
//!   invent for such a flow, so only an ORIGINAL SYN creates one; anything else
//!   for an unknown tuple is INVALID ([`may_create`]).
//! - A segment from the client that the table ignores (a SYN on a
//!   synchronized flow) is dropped, not passed: the engine calls it
//!   [`crate::DropReason::Ignored`]. Ignored segments from the backend are
//!   passed untracked, as Linux passes both.
//!
//! Sequence windows are checked on top of this table (`tcp_in_window`, in
//! [`super::window`]): a transition happens only for a segment in window.

use std::fmt;
use std::time::Duration;

use super::tuple::Direction;

/// A conntrack TCP state (`enum tcp_conntrack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    /// No state: the flow does not exist yet (`sNO`).
    None = 0,
    /// SYN seen from the client (`sSS`).
    SynSent = 1,
    /// SYN-ACK seen from the server (`sSR`).
    SynRecv = 2,
    /// The three-way handshake completed (`sES`).
    Established = 3,
    /// FIN seen in one direction (`sFW`).
    FinWait = 4,
    /// The FIN was acknowledged (`sCW`).
    CloseWait = 5,
    /// FIN seen in both directions, waiting for the last ACK (`sLA`).
    LastAck = 6,
    /// The last ACK was seen (`sTW`).
    TimeWait = 7,
    /// Closed by RST (`sCL`).
    Close = 8,
    /// SYN seen from the server too: simultaneous open (`sS2`).
    SynSent2 = 9,
}

impl TcpState {
    /// The number of states, for tables indexed by state.
    pub const COUNT: usize = 10;

    /// Every state, in discriminant order.
    pub const ALL: [TcpState; TcpState::COUNT] = [
        TcpState::None,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::Established,
        TcpState::FinWait,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::SynSent2,
    ];

    /// Return the name `conntrack -L` prints for this state.
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::SynSent2 => "SYN_SENT2",
        }
    }

    /// Return whether the flow is closing (FIN_WAIT through CLOSE): such flows
    /// are the second choice for eviction when the table is full.
    pub const fn is_closing(self) -> bool {
        matches!(
            self,
            TcpState::FinWait
                | TcpState::CloseWait
                | TcpState::LastAck
                | TcpState::TimeWait
                | TcpState::Close
        )
    }

    /// Return whether a new SYN for this flow's ORIGINAL tuple starts a new
    /// connection (port reuse after TIME_WAIT or RST, RFC 1122).
    pub const fn reopens_on_syn(self) -> bool {
        matches!(self, TcpState::TimeWait | TcpState::Close)
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The flag class of a segment, in the kernel's precedence order
/// (`get_conntrack_index`): RST, then SYN (SYN-ACK if ACK is set), FIN, ACK, none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagClass {
    /// SYN without ACK.
    Syn = 0,
    /// SYN with ACK.
    SynAck = 1,
    /// FIN (without SYN or RST).
    Fin = 2,
    /// ACK only.
    Ack = 3,
    /// RST, with or without ACK.
    Rst = 4,
    /// None of the above.
    None = 5,
}

/// TCP header flag bits, as in byte 13 of the header.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

impl FlagClass {
    /// Classify a segment by its flag byte, or return `None` when the
    /// combination is invalid (`tcp_valid_flags[]`): PSH, ECE and CWR are
    /// ignored, and what remains must be SYN, SYN|ACK, RST, RST|ACK, FIN|ACK or
    /// ACK (SYN, FIN|ACK and ACK also with URG). NULL, XMAS, SYN|FIN and a bare FIN fail.
    /// One load from a table of all 256 flag bytes, made at compile time
    /// from the flags one by one (`FlagClass::classify`).
    #[inline]
    pub fn of(tcp_flags: u8) -> Option<FlagClass> {
        const TABLE: [Option<FlagClass>; 256] = {
            let mut table = [None; 256];
            let mut f = 0;
            while f < 256 {
                table[f] = FlagClass::classify(f as u8);
                f += 1;
            }
            table
        };
        TABLE[usize::from(tcp_flags)]
    }

    /// [`FlagClass::of`], worked out from the flags one by one.
    const fn classify(tcp_flags: u8) -> Option<FlagClass> {
        use flags::*;
        let f = tcp_flags & !(PSH | ECE | CWR);
        // tcp_valid_flags[].
        const VALID: [u8; 9] = [
            SYN,
            SYN | URG,
            SYN | ACK,
            RST,
            RST | ACK,
            FIN | ACK,
            FIN | ACK | URG,
            ACK,
            ACK | URG,
        ];
        let mut i = 0;
        while i < VALID.len() && VALID[i] != f {
            i += 1;
        }
        if i == VALID.len() {
            return None;
        }
        Some(if f & RST != 0 {
            FlagClass::Rst
        } else if f & SYN != 0 {
            if f & ACK != 0 {
                FlagClass::SynAck
            } else {
                FlagClass::Syn
            }
        } else if f & FIN != 0 {
            FlagClass::Fin
        } else if f & ACK != 0 {
            FlagClass::Ack
        } else {
            FlagClass::None
        })
    }
}

/// One cell of the transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// Move to this state.
    To(TcpState),
    /// INVALID (`sIV`): drop the packet, keep the flow as it is.
    Invalid,
    /// Ignore (`sIG`): forward the packet, keep the state.
    Ignore,
}

#[cfg(test)]
const NO: Cell = Cell::To(TcpState::None);
const SS: Cell = Cell::To(TcpState::SynSent);
const SR: Cell = Cell::To(TcpState::SynRecv);
const ES: Cell = Cell::To(TcpState::Established);
const FW: Cell = Cell::To(TcpState::FinWait);
const CW: Cell = Cell::To(TcpState::CloseWait);
const LA: Cell = Cell::To(TcpState::LastAck);
const TW: Cell = Cell::To(TcpState::TimeWait);
const CL: Cell = Cell::To(TcpState::Close);
const S2: Cell = Cell::To(TcpState::SynSent2);
const IV: Cell = Cell::Invalid;
const IG: Cell = Cell::Ignore;

/// `TRANSITIONS[direction][flag class][old state]`: Linux's table, with the
/// ORIGINAL `ack` cell for `sNO` changed from `sES` to `sIV` (no loose pickup).
#[rustfmt::skip]
static TRANSITIONS: [[[Cell; TcpState::COUNT]; 6]; 2] = [
    // ORIGINAL
    [
        //          sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
        /* syn    */ [SS, SS, IG, IG, IG, IG, IG, SS, SS, S2],
        // sNO->sSS new connection; sSS->sSS retransmitted SYN; sTW/sCL->sSS
        // reopened connection (RFC 1122); a SYN in a synchronized state is
        // ignored: the receiver answers it with RST or a challenge ACK.
        //          sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
        /* synack */ [IV, IV, SR, IV, IV, IV, IV, IV, IV, SR],
        // The client may send SYN-ACK only in a simultaneous open (sS2).
        //          sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
        /* fin    */ [IV, IV, FW, FW, LA, LA, LA, TW, CL, IV],
        // sSS->sIV: no FIN before the SYN-ACK; sFW/sCW->sLA FIN both ways.
        //          sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
        /* ack    */ [IV, IV, ES, ES, CW, CW, TW, TW, CL, IV],
        // sNO->sIV: tunlb's departure (the kernel assumes sES: loose pickup);
        // sSS->sIV: an ACK before the SYN-ACK; sSR->sES handshake done;
        // sLA->sTW the last ACK.
        //          sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
        /* rst    */ [IV, CL, CL, CL, CL, CL, CL, CL, CL, CL],
        /* none   */ [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],
    ],
    // REPLY
    [
        //          sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
        /* syn    */ [IV, S2, IV, IV, IV, IV, IV, SS, IV, S2],
        // sSS->sS2 simultaneous open; sTW->sSS reopened, roles switched.
        //          sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
        /* synack */ [IV, SR, IG, IG, IG, IG, IG, IG, IG, SR],
        // sSS->sSR the standard open; later SYN-ACKs are retransmissions.
        //          sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
        /* fin    */ [IV, IV, FW, FW, LA, LA, LA, TW, CL, IV],
        //          sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
        /* ack    */ [IV, IG, SR, ES, CW, CW, TW, TW, CL, IG],
        // sSS->sIG may be a half-open connection; sSR->sSR answers a late SYN.
        //          sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
        /* rst    */ [IV, CL, CL, CL, CL, CL, CL, CL, CL, CL],
        /* none   */ [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],
    ],
];

/// Return the table cell for a segment of class `class` travelling in
/// direction `dir` on a flow in state `old`.
#[inline]
pub fn transition(dir: Direction, class: FlagClass, old: TcpState) -> Cell {
    TRANSITIONS[dir.index()][class as usize][old as usize]
}

/// Return whether a packet of this class may create a flow (the NONE column
/// of the ORIGINAL table, as the kernel's `tcp_new` asks it).
pub fn may_create(class: FlagClass) -> bool {
    matches!(
        transition(Direction::Original, class, TcpState::None),
        Cell::To(_)
    )
}

/// How long a flow lives in each state without traffic (`nf_conntrack_tcp_timeout_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    by_state: [Duration; TcpState::COUNT],
}

impl Timeouts {
    /// Return the timeout of `state`.
    #[inline]
    pub fn get(&self, state: TcpState) -> Duration {
        self.by_state[state as usize]
    }

    /// Set the timeout of `state`.
    pub fn set(&mut self, state: TcpState, timeout: Duration) {
        self.by_state[state as usize] = timeout;
    }
}

impl Default for Timeouts {
    /// Linux's defaults: SYN_SENT 120 s, SYN_RECV 60 s, ESTABLISHED 5 days,
    /// FIN_WAIT 120 s, CLOSE_WAIT 60 s, LAST_ACK 30 s, TIME_WAIT 120 s,
    /// CLOSE 10 s, SYN_SENT2 120 s.
    fn default() -> Self {
        let s = Duration::from_secs;
        Timeouts {
            by_state: [
                s(0),             // NONE: never stored
                s(120),           // SYN_SENT
                s(60),            // SYN_RECV
                s(5 * 24 * 3600), // ESTABLISHED
                s(120),           // FIN_WAIT
                s(60),            // CLOSE_WAIT
                s(30),            // LAST_ACK
                s(120),           // TIME_WAIT
                s(10),            // CLOSE
                s(120),           // SYN_SENT2
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flags::*;

    #[test]
    fn flag_validity_matches_the_kernel() {
        for (f, want) in [
            (SYN, Some(FlagClass::Syn)),
            (SYN | ACK, Some(FlagClass::SynAck)),
            (SYN | ACK | ECE | CWR, Some(FlagClass::SynAck)),
            (RST, Some(FlagClass::Rst)),
            (RST | ACK, Some(FlagClass::Rst)),
            (FIN | ACK, Some(FlagClass::Fin)),
            (FIN | ACK | PSH, Some(FlagClass::Fin)),
            (ACK, Some(FlagClass::Ack)),
            (ACK | PSH | URG, Some(FlagClass::Ack)),
            (0, None),               // NULL
            (FIN | PSH | URG, None), // XMAS
            (SYN | FIN, None),       // SYN|FIN
            (FIN, None),             // bare FIN
            (SYN | RST, None),
            (FIN | SYN | RST | PSH | ACK | URG, None),
        ] {
            assert_eq!(FlagClass::of(f), want, "flags {f:#04x}");
        }
    }

    #[test]
    fn every_cell_keeps_the_invariants() {
        for dir in [Direction::Original, Direction::Reply] {
            for class in [
                FlagClass::Syn,
                FlagClass::SynAck,
                FlagClass::Fin,
                FlagClass::Ack,
                FlagClass::Rst,
                FlagClass::None,
            ] {
                for old in TcpState::ALL {
                    let cell = transition(dir, class, old);
                    // Nothing moves back to NONE.
                    assert_ne!(cell, NO);
                    // RST leads to CLOSE or INVALID.
                    if class == FlagClass::Rst {
                        assert!(cell == CL || cell == IV, "{dir} rst {old}");
                    }
                    // Only an ORIGINAL SYN leaves NONE.
                    if old == TcpState::None {
                        let leaves = matches!(cell, Cell::To(_));
                        assert_eq!(
                            leaves,
                            dir == Direction::Original && class == FlagClass::Syn,
                            "{dir} {class:?}"
                        );
                    }
                    // No class-less segment is ever valid.
                    if class == FlagClass::None {
                        assert_eq!(cell, IV);
                    }
                }
            }
        }
        assert!(may_create(FlagClass::Syn));
        assert!(!may_create(FlagClass::Ack));
    }

    #[test]
    fn a_full_handshake_and_close_walks_the_states() {
        use Direction::*;
        let steps = [
            (Original, FlagClass::Syn, TcpState::SynSent),
            (Reply, FlagClass::SynAck, TcpState::SynRecv),
            (Original, FlagClass::Ack, TcpState::Established),
            (Original, FlagClass::Fin, TcpState::FinWait),
            (Reply, FlagClass::Ack, TcpState::CloseWait),
            (Reply, FlagClass::Fin, TcpState::LastAck),
            (Original, FlagClass::Ack, TcpState::TimeWait),
        ];
        let mut s = TcpState::None;
        for (dir, class, want) in steps {
            s = match transition(dir, class, s) {
                Cell::To(n) => n,
                other => panic!("{dir} {class:?} from {s}: {other:?}"),
            };
            assert_eq!(s, want);
        }
    }

    #[test]
    fn default_timeouts_are_linux_defaults() {
        let t = Timeouts::default();
        assert_eq!(t.get(TcpState::SynSent), Duration::from_secs(120));
        assert_eq!(t.get(TcpState::Established), Duration::from_secs(432_000));
        assert_eq!(t.get(TcpState::Close), Duration::from_secs(10));
    }
}
