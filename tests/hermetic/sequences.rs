//! Valid and invalid segments interleaved, against a model of each flow.
//!
//! `malformed.rs` throws random packets at a fixed set of flows. Here the
//! connections are the property's own: it opens crafted connections and
//! walks each through the whole handshake and teardown one valid segment at
//! a time, in any interleaving, while invalid segments aimed at the same
//! flows (bad flag combinations and blind RSTs both ways, an ACK in
//! SYN_SENT, a backend SYN on a synchronized flow) arrive in between. A
//! model says which state each flow must be in. The properties:
//! - every valid segment is forwarded with exactly its flow's translation
//!   and moves the flow to the modelled state;
//! - every invalid one is dropped with its exact reason and leaves every
//!   flow exactly as it was: state, deadline, counters;
//! - the drop counters add up to the invalid segments sent, and once every
//!   timeout has passed the table is empty and no backend counts a flow.

use proptest::prelude::*;
use tunlb::conntrack::{Direction, Flow, TcpState, Tuple};
use tunlb::select::Mode;
use tunlb::{DropReason, Engine, Timestamp, Verdict};

use crate::craft::flags::{ACK, FIN, PSH, RST, SYN, URG};
use crate::cycle::{self, Conn, CLIENT_ISN, SERVER_ISN};
use crate::net::{self, vip};

/// What the property does next.
#[derive(Debug, Clone)]
enum Op {
    /// Open a new connection (a crafted SYN from a new client).
    Open,
    /// Send the next valid segment of flow `k` (modulo the flows opened).
    Advance(usize),
    /// Send an invalid segment at flow `k`.
    Invalid(usize, Bad),
    /// Let this many milliseconds pass.
    Wait(u64),
}

/// An invalid segment.
#[derive(Debug, Clone, Copy)]
enum Bad {
    /// A flag byte conntrack rejects, from the client or the backend.
    Flags(u8, Direction),
    /// A RST half the sequence space away, from the client or the backend.
    BlindRst(Direction),
    /// A segment only the flow's state makes invalid: an ACK from the
    /// client in SYN_SENT, a SYN from the backend from SYN_RECV to LAST_ACK;
    /// in TIME_WAIT, where a SYN reopens the flow, a NULL segment instead.
    StateBound,
}

/// The states a crafted connection walks through, in order.
const STAGES: [TcpState; 7] = [
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::Established,
    TcpState::FinWait,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::TimeWait,
];

/// One modelled connection: the engine's view of it and how far it got.
struct Model {
    conn: Conn,
    stage: usize,
}

impl Model {
    /// Send the segment that moves the flow to the next stage (in TIME_WAIT,
    /// a retransmitted last ACK that keeps it there); assert it is forwarded.
    fn advance(&mut self, e: &Engine, now: Timestamp) {
        let (c, s) = (CLIENT_ISN, SERVER_ISN);
        let v = match self.stage {
            0 => self.conn.reply(e, now, SYN | ACK, s, c + 1),
            1 => self.conn.orig(e, now, ACK, c + 1, s + 1),
            2 => self.conn.orig(e, now, FIN | ACK, c + 1, s + 1),
            3 => self.conn.reply(e, now, ACK, s + 1, c + 2),
            4 => self.conn.reply(e, now, FIN | ACK, s + 1, c + 2),
            _ => self.conn.orig(e, now, ACK, c + 2, s + 2),
        };
        assert!(
            matches!(v, Verdict::Forward { .. }),
            "stage {}: {v:?}",
            self.stage
        );
        self.stage = (self.stage + 1).min(STAGES.len() - 1);
    }

    /// The next sequence number the client and the backend would send.
    fn next_seqs(&self) -> (u32, u32) {
        let c = CLIENT_ISN + 1 + u32::from(self.stage >= 3);
        let s = SERVER_ISN + u32::from(self.stage >= 1) + u32::from(self.stage >= 5);
        (c, s)
    }

    /// Send an invalid segment; return the reason it must be dropped for.
    fn invalid(&self, e: &Engine, now: Timestamp, bad: Bad) -> (Verdict, DropReason) {
        let (cseq, sseq) = self.next_seqs();
        let send = |dir: Direction, flags: u8, seq: u32, ack: u32| match dir {
            Direction::Original => self.conn.orig(e, now, flags, seq, ack),
            Direction::Reply => self.conn.reply(e, now, flags, seq, ack),
        };
        match bad {
            Bad::Flags(f, dir) => (send(dir, f, cseq, sseq), DropReason::BadFlags),
            Bad::BlindRst(dir) => {
                let seq = match dir {
                    Direction::Original => cseq,
                    Direction::Reply => sseq,
                };
                (
                    send(dir, RST, seq.wrapping_add(0x8000_0000), 0),
                    DropReason::RstOutOfWindow,
                )
            }
            Bad::StateBound => match STAGES[self.stage] {
                TcpState::SynSent => (
                    send(Direction::Original, ACK, cseq, sseq),
                    DropReason::InvalidTransition,
                ),
                // A backend SYN is INVALID in every synchronized state but
                // TIME_WAIT (where it reopens, RFC 1122).
                TcpState::TimeWait => (
                    send(Direction::Original, 0, cseq, sseq),
                    DropReason::BadFlags,
                ),
                _ => (
                    send(Direction::Reply, SYN, sseq, 0),
                    DropReason::InvalidTransition,
                ),
            },
        }
    }
}

/// The parts of a flow an invalid segment must not touch.
fn fingerprint(f: &Flow) -> Fingerprint {
    (
        f.state,
        f.deadline(),
        f.packets,
        f.bytes,
        f.seen_reply,
        f.assured,
    )
}

/// What [`fingerprint`] keeps of a flow.
type Fingerprint = (TcpState, Timestamp, [u64; 2], [u64; 2], bool, bool);

/// Every flow's fingerprint, in ORIGINAL-tuple order.
fn snapshot(e: &Engine) -> Vec<(Tuple, Fingerprint)> {
    let mut v: Vec<_> = e
        .flows_of::<std::net::Ipv4Addr>()
        .into_iter()
        .map(|f| (f.original, fingerprint(&f)))
        .collect();
    v.sort_by_key(|(t, _)| *t);
    v
}

fn op() -> impl Strategy<Value = Op> {
    let dir = prop_oneof![Just(Direction::Original), Just(Direction::Reply)];
    let flags = prop::sample::select(vec![0u8, FIN | PSH | URG, SYN | FIN, FIN, SYN | RST, 0xff]);
    let bad = prop_oneof![
        (flags, dir.clone()).prop_map(|(f, d)| Bad::Flags(f, d)),
        dir.prop_map(Bad::BlindRst),
        Just(Bad::StateBound),
    ];
    prop_oneof![
        2 => Just(Op::Open),
        6 => any::<usize>().prop_map(Op::Advance),
        4 => (any::<usize>(), bad).prop_map(|(k, b)| Op::Invalid(k, b)),
        1 => (0u64..400).prop_map(Op::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn invalid_segments_between_valid_ones_never_disturb_a_flow(
        ops in prop::collection::vec(op(), 1..64)
    ) {
        let engine = Engine::new(net::config(Mode::Nth, &[1, 1, 1, 1])).unwrap();
        let mut flows: Vec<Model> = Vec::new();
        let mut now = Timestamp::from_secs(1);
        let mut invalid = 0u64;
        for op in &ops {
            match *op {
                Op::Open => {
                    let client = cycle::client(flows.len() as u64);
                    let conn = cycle::open(&engine, now, client, vip()).expect("room for every flow");
                    flows.push(Model { conn, stage: 0 });
                }
                Op::Advance(k) if !flows.is_empty() => {
                    let n = flows.len();
                    flows[k % n].advance(&engine, now);
                }
                Op::Invalid(k, bad) if !flows.is_empty() => {
                    let before = snapshot(&engine);
                    let (v, reason) = flows[k % flows.len()].invalid(&engine, now, bad);
                    prop_assert_eq!(v, Verdict::Drop(reason), "{:?}", bad);
                    prop_assert_eq!(snapshot(&engine), before, "an invalid segment changed a flow");
                    invalid += 1;
                }
                Op::Wait(ms) => {
                    now = Timestamp::from_millis(now.as_millis() + ms);
                    while engine.handle_timeout(now) {}
                }
                Op::Advance(_) | Op::Invalid(..) => {}
            }
            // Nothing expires within the run (waits add up to under 26 s,
            // less than LAST_ACK's 30 s, and CLOSE is never reached): every
            // flow is there, in its modelled state.
            prop_assert_eq!(engine.flow_count(), flows.len());
            for m in &flows {
                let f = engine
                    .flows_of::<std::net::Ipv4Addr>()
                    .into_iter()
                    .find(|f| f.original.src == m.conn.client)
                    .expect("the flow is tracked");
                prop_assert_eq!(f.state, STAGES[m.stage], "{}", m.conn.client);
            }
        }
        let s = engine.stats();
        prop_assert_eq!(s.total_dropped(), invalid, "{}", s);
        prop_assert_eq!(s.new_flows, flows.len() as u64);
        cycle::drain(&engine, now);
        prop_assert_eq!(engine.flow_count(), 0);
        prop_assert!(engine.stats().backends.iter().all(|b| b.active == 0));
    }
}
