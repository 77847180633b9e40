//! Crafted connections driven straight through the engine, without endpoints.
//!
//! Floods, port exhaustion and churn need thousands to millions of
//! connections: far more than smoltcp hosts can open in a test's time. Here a
//! connection is a handful of hand-written segments. A [`Conn`] is what the
//! engine made of a client's SYN: the client, the VIP, and the REPLY tuple
//! read off the forwarded SYN (backend -> SNAT address:port). Every forwarded
//! segment is checked on the spot: it parses, its checksums verify, and it
//! carries exactly the translated tuple of its flow, never the one it came in
//! with.
//!
//! Segments are written into a stack buffer ([`segment`]), so a cycle
//! allocates nothing of its own: what a counting allocator sees during
//! [`churn`] is the engine's.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use tunlb::conntrack::Tuple;
use tunlb::{Engine, Timestamp, Verdict};

use crate::check;
use crate::craft::flags::{ACK, FIN, SYN};

/// The length of every crafted segment: IPv4 and TCP headers, no options, no payload.
pub const LEN: usize = 40;
/// The client's initial sequence number in every crafted connection.
pub const CLIENT_ISN: u32 = 1000;
/// The backend's initial sequence number in every crafted connection.
pub const SERVER_ISN: u32 = 5000;

/// Write a 40-byte IPv4/TCP segment from `src` to `dst` with these flags
/// and numbers, and valid IPv4 and TCP checksums, into `buf`.
pub fn segment(
    buf: &mut [u8; LEN],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    seq: u32,
    ack: u32,
) {
    buf.fill(0);
    buf[0] = 0x45;
    buf[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
    buf[6] = 0x40; // don't fragment
    buf[8] = 64;
    buf[9] = 6; // TCP
    buf[12..16].copy_from_slice(&src.ip().octets());
    buf[16..20].copy_from_slice(&dst.ip().octets());
    let ip_csum = !fold(sum16(&buf[..20]));
    buf[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    buf[20..22].copy_from_slice(&src.port().to_be_bytes());
    buf[22..24].copy_from_slice(&dst.port().to_be_bytes());
    buf[24..28].copy_from_slice(&seq.to_be_bytes());
    buf[28..32].copy_from_slice(&ack.to_be_bytes());
    buf[32] = 5 << 4; // data offset: 20 bytes
    buf[33] = flags;
    buf[34..36].copy_from_slice(&u16::MAX.to_be_bytes()); // window
    let tcp_csum = !fold(sum16(&buf[12..20]) + 6 + (LEN as u32 - 20) + sum16(&buf[20..]));
    buf[36..38].copy_from_slice(&tcp_csum.to_be_bytes());
}

/// Add up `data` as big-endian 16-bit words (an even number of bytes),
/// without folding the carries.
fn sum16(data: &[u8]) -> u32 {
    // A plain loop: iterator adapters cost more than the engine in debug builds.
    let (mut sum, mut i) = (0u32, 0);
    while i + 1 < data.len() {
        sum += u32::from(data[i]) << 8 | u32::from(data[i + 1]);
        i += 2;
    }
    sum
}

/// Fold a 32-bit one's-complement sum into 16 bits.
fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Check the fixed-size segment `pkt` the engine forwarded: an IPv4 header
/// of 20 bytes, TCP, total length 40, and both checksums verifying (summed
/// here, independently of the engine's incremental updates). Returns its
/// tuple. [`check::valid_packet`] judges the same through smoltcp's views;
/// it costs more than the engine in a debug build, so it judges only the
/// forwarded SYNs ([`open`]).
pub fn checked_tuple(pkt: &[u8; LEN]) -> Result<Tuple, String> {
    if pkt[0] != 0x45 || pkt[2..4] != (LEN as u16).to_be_bytes() || pkt[9] != 6 {
        return Err(format!("not a 40-byte IPv4/TCP segment: {pkt:02x?}"));
    }
    if fold(sum16(&pkt[..20])) != 0xffff {
        return Err(format!("bad IPv4 header checksum: {pkt:02x?}"));
    }
    if fold(sum16(&pkt[12..20]) + 6 + (LEN as u32 - 20) + sum16(&pkt[20..])) != 0xffff {
        return Err(format!("bad TCP checksum: {pkt:02x?}"));
    }
    let sock = |a: usize, p: usize| {
        SocketAddrV4::new(
            Ipv4Addr::new(pkt[a], pkt[a + 1], pkt[a + 2], pkt[a + 3]),
            u16::from_be_bytes([pkt[p], pkt[p + 1]]),
        )
    };
    Ok(Tuple {
        src: sock(12, 20).into(),
        dst: sock(16, 22).into(),
    })
}

/// Write a segment and hand it to the engine at `now`. Returns the verdict
/// and the buffer, rewritten in place when forwarded.
pub fn process(
    engine: &Engine,
    now: Timestamp,
    src: impl Into<SocketAddrV4>,
    dst: impl Into<SocketAddrV4>,
    flags: u8,
    seq: u32,
    ack: u32,
) -> (Verdict, [u8; LEN]) {
    let mut buf = [0u8; LEN];
    segment(&mut buf, src.into(), dst.into(), flags, seq, ack);
    let verdict = engine.handle_packet(&mut buf, now);
    (verdict, buf)
}

/// Check that a forwarded `verdict` emitted a valid 40-byte segment carrying
/// exactly `want` (source and destination after NAT); returns whether it was
/// forwarded. Panics on an invalid or wrongly addressed packet, whatever the
/// verdict was for.
pub fn expect_translated(verdict: Verdict, out: &[u8; LEN], want: Tuple) -> bool {
    match verdict {
        Verdict::Forward { len } => {
            assert_eq!(len, LEN, "a forwarded segment keeps its length");
            let got = checked_tuple(out).unwrap_or_else(|e| panic!("forwarded: {e}"));
            assert_eq!(got, want, "forwarded with the wrong translation");
            true
        }
        Verdict::Respond { .. } => panic!("a response where {want} was expected"),
        Verdict::Drop(_) => false,
    }
}

/// One crafted connection as the engine set it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// The client's address and port.
    pub client: SocketAddrV4,
    /// The service it connected to.
    pub vip: SocketAddrV4,
    /// The REPLY tuple: backend -> SNAT address:port.
    pub reply: Tuple,
}

impl Conn {
    /// Return the backend the engine chose.
    pub fn backend(&self) -> SocketAddrV4 {
        self.reply.src.into()
    }

    /// Return the tuple a client packet leaves the engine with (SNAT -> backend).
    pub fn forwarded_original(&self) -> Tuple {
        self.reply.invert()
    }

    /// Return the tuple a backend packet leaves the engine with (VIP -> client).
    pub fn forwarded_reply(&self) -> Tuple {
        Tuple {
            src: self.vip.into(),
            dst: self.client.into(),
        }
    }

    /// Send a segment of this connection from the client at `now`; check
    /// that a forwarded one left translated. Returns the verdict.
    pub fn orig(&self, engine: &Engine, now: Timestamp, flags: u8, seq: u32, ack: u32) -> Verdict {
        let (v, out) = process(engine, now, self.client, self.vip, flags, seq, ack);
        expect_translated(v, &out, self.forwarded_original());
        v
    }

    /// Send a segment of this connection from the backend at `now`; check
    /// that a forwarded one left translated. Returns the verdict.
    pub fn reply(&self, engine: &Engine, now: Timestamp, flags: u8, seq: u32, ack: u32) -> Verdict {
        let (v, out) = process(engine, now, self.reply.src, self.reply.dst, flags, seq, ack);
        expect_translated(v, &out, self.forwarded_reply());
        v
    }

    /// Answer the SYN and complete the handshake at `now` (SYN-ACK, ACK),
    /// asserting both are forwarded.
    pub fn establish(&self, engine: &Engine, now: Timestamp) {
        let v = self.reply(engine, now, SYN | ACK, SERVER_ISN, CLIENT_ISN + 1);
        assert!(matches!(v, Verdict::Forward { .. }), "SYN-ACK: {v:?}");
        let v = self.orig(engine, now, ACK, CLIENT_ISN + 1, SERVER_ISN + 1);
        assert!(matches!(v, Verdict::Forward { .. }), "ACK: {v:?}");
    }

    /// Close an established connection at `now`, the client first: FIN/ACK,
    /// ACK, FIN/ACK back, last ACK (the flow ends in TIME_WAIT). Asserts
    /// every segment is forwarded.
    pub fn close(&self, engine: &Engine, now: Timestamp) {
        let (c, s) = (CLIENT_ISN + 1, SERVER_ISN + 1);
        for (from_client, flags, seq, ack) in [
            (true, FIN | ACK, c, s),
            (false, ACK, s, c + 1),
            (false, FIN | ACK, s, c + 1),
            (true, ACK, c + 1, s + 1),
        ] {
            let v = if from_client {
                self.orig(engine, now, flags, seq, ack)
            } else {
                self.reply(engine, now, flags, seq, ack)
            };
            assert!(matches!(v, Verdict::Forward { .. }), "teardown: {v:?}");
        }
    }
}

/// Send `client`'s SYN to `vip` at `now`. A forwarded SYN must come out
/// from a SNAT address to a backend; it gives the connection. Any other
/// verdict is returned as the error.
pub fn open(
    engine: &Engine,
    now: Timestamp,
    client: SocketAddrV4,
    vip: SocketAddrV4,
) -> Result<Conn, Verdict> {
    let (v, out) = process(engine, now, client, vip, SYN, CLIENT_ISN, 0);
    let Verdict::Forward { len } = v else {
        return Err(v);
    };
    assert_eq!(len, LEN);
    let s = check::valid_packet(&out).unwrap_or_else(|e| panic!("forwarded SYN: {e}"));
    assert!(s.is_syn());
    let t = checked_tuple(&out).expect("smoltcp and the plain sums agree");
    assert_eq!((t.src, t.dst), (s.src_sock().into(), s.dst_sock().into()));
    Ok(Conn {
        client,
        vip,
        reply: Tuple {
            src: s.dst_sock().into(),
            dst: s.src_sock().into(),
        },
    })
}

/// Open and establish a connection at `now`, asserting every step is forwarded.
pub fn handshake(engine: &Engine, now: Timestamp, client: SocketAddrV4, vip: SocketAddrV4) -> Conn {
    let conn = open(engine, now, client, vip).unwrap_or_else(|v| panic!("SYN: {v:?}"));
    conn.establish(engine, now);
    conn
}

/// Crafted client number `i`: an address in 198.19.0.0/16 (hosts 1-254 of
/// each /24) and a port from 1024 up, distinct for the first 4 billion.
pub fn client(i: u64) -> SocketAddrV4 {
    let hosts = 256 * 254;
    let a = i % hosts;
    let ip = Ipv4Addr::new(198, 19, (a / 254) as u8, (a % 254 + 1) as u8);
    SocketAddrV4::new(ip, 1024 + ((i / hosts) % 64_000) as u16)
}

/// What a [`churn`] run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChurnStats {
    /// Connections opened and closed.
    pub connections: u64,
    /// Segments processed (7 per connection).
    pub packets: u64,
    /// The most flows in the table at once.
    pub peak_flows: usize,
    /// Wall-clock time the run took.
    pub elapsed: Duration,
    /// Virtual time when the last connection closed.
    pub end: Timestamp,
}

/// Run `n` short connections through `engine`, clients numbered from
/// `first`: each is a SYN, SYN-ACK, ACK, FIN/ACK, ACK, FIN/ACK and last ACK,
/// with every segment checked ([`Conn::orig`], [`Conn::reply`]).
/// Connections start `per_sec` per virtual second from `start`, and flows
/// are expired as the datapath would, whenever the clock moves.
pub fn churn(
    engine: &Engine,
    vip: SocketAddrV4,
    first: u64,
    n: u64,
    per_sec: u64,
    start: Timestamp,
) -> ChurnStats {
    let began = Instant::now();
    let mut stats = ChurnStats::default();
    let mut now = start;
    for k in 0..n {
        let t = Timestamp::from_millis(start.as_millis() + k * 1000 / per_sec);
        if t > now {
            now = t;
            while engine.handle_timeout(now) {}
        }
        let conn = handshake(engine, now, client(first + k), vip);
        stats.peak_flows = stats.peak_flows.max(engine.flow_count());
        conn.close(engine, now);
        stats.connections += 1;
        stats.packets += 7;
    }
    stats.elapsed = began.elapsed();
    stats.end = now;
    stats
}

/// Expire flows at each [`Engine::poll_timeout`] until the table is empty,
/// starting at `now`; returns the time it emptied. Panics if an expiry is
/// missing while flows remain.
pub fn drain(engine: &Engine, mut now: Timestamp) -> Timestamp {
    while engine.flow_count() > 0 {
        let next = engine
            .poll_timeout()
            .expect("flows remain, so an expiry is due");
        now = now.max(next);
        while engine.handle_timeout(now) {}
    }
    now
}
