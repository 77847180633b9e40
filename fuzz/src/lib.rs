//! The fuzzing harness of tunlb's packet path: bytes become a setup and a
//! sequence of packets, each goes through [`tunlb::Engine::handle_packet`] in
//! either direction, and every verdict is checked against the invariants.
//!
//! # Input format
//! - Byte 0 chooses the [`Setup`]: checksum verification, SNAT pool, table
//!   limit, port range, and whether the engine is dual-stack (IPv6 services
//!   and flows next to the IPv4 ones).
//! - Then chunks, each a header byte, a length byte `L` and `L` bytes of
//!   packet (fewer if the input ends). The header byte holds:
//!   - bits 0-1, the [`Fixup`]: the bytes as they are; with their
//!     checksums fixed; or *steered* onto a tracked flow (or a new client)
//!     in the ORIGINAL or the REPLY direction, then checksums fixed. Random
//!     bytes almost never carry valid checksums or hit a tracked tuple, so
//!     the fixups are what let the fuzzer reach the state machine, the
//!     table limits and ICMP translation;
//!   - bits 2-4, how far the clock moves first ([`STEPS`]), expiring flows
//!     as the datapath would;
//!   - bits 5-7, which flow (in tuple order) or which new client to steer to.
//!
//!   A chunk whose first nibble is 6 is an IPv6 packet: its checksums fixed
//!   with the IPv6 pseudo-header, and, on a dual-stack setup, steered onto
//!   the IPv6 flows (its extension headers walked, a fragment header turned
//!   into destination options, an ICMPv6 error made to quote the flow).
//!
//! # Invariants ([`Harness::step`])
//! - no panic;
//! - a forwarded packet parses with smoltcp's checked views, its IPv4 total
//!   length (IPv6 payload length plus 40) is its length, it is not a
//!   fragment, and it is TCP or ICMP (ICMPv6);
//! - its IPv4 and TCP or ICMP checksums (IPv6: TCP or ICMPv6, with the
//!   pseudo-header) verify (summed here, not with the engine's code)
//!   whenever the input's did; with verification on, the engine forwards
//!   nothing whose checksums did not verify;
//! - a forwarded TCP segment carries exactly the translation of the flow
//!   its tuple belongs to (ORIGINAL `C -> VIP` leaves as `SNAT -> backend`,
//!   REPLY `backend -> SNAT` as `VIP -> C`), never its own tuple;
//! - a forwarded ICMP error goes to a client or a backend of a tracked flow,
//!   from the VIP or a SNAT address; a response is a RST from the drained
//!   service to the sender of the SYN;
//! - the table never holds more than `max_flows`, and every packet ends in
//!   exactly one counter;
//! - at the end, once every timeout has passed, the table is empty, no
//!   expiry is pending and no backend counts an active flow.
//!
//! The checks use their own checksum sums: under `cfg(fuzzing)` smoltcp's
//! `verify_checksum` always returns `true`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};
use tunlb::conntrack::tcp::flags::{ACK, FIN, SYN};
use tunlb::conntrack::Tuple;
use tunlb::craft::Segment;
use tunlb::select::Mode;
use tunlb::{BackendConfig, Engine, EngineConfig, ServiceConfig, Snapshot, Timestamp, Verdict};

/// The service every flow belongs to.
pub const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80);
/// A service whose only backend is drained: a SYN to it gets a RST.
pub const DRAINED_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 80);
/// The SNAT pool, when the setup asks for one.
pub const POOL: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 11), Ipv4Addr::new(198, 18, 0, 12)];
/// The backends of [`VIP`] (on different ports).
pub const BACKENDS: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 3), 80),
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 4), 8080),
];
/// The drained backend of [`DRAINED_VIP`].
pub const DRAINED_BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 5), 80);
/// The clients; steering picks one for a new connection.
pub const CLIENTS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(198, 18, 1, 2),
    Ipv4Addr::new(198, 18, 1, 3),
    Ipv4Addr::new(198, 18, 1, 4),
    Ipv4Addr::new(198, 18, 1, 5),
];
/// A router on the clients' side (the source of steered ICMP errors).
pub const CLIENT_HOP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// A router on the backends' side.
pub const BACKEND_HOP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// Clock steps in milliseconds, indexed by bits 2-4 of a chunk header:
/// nothing, a little, beyond CLOSE (10 s), SYN_RECV (60 s), SYN_SENT and
/// TIME_WAIT (120 s), and ESTABLISHED (5 days).
pub const STEPS: [u64; 8] = [0, 1, 500, 10_001, 60_001, 120_001, 432_000_001, 3];
/// The pre-established flows' client ports (client [`CLIENTS`]`[0]`, and
/// [`CLIENTS6`]`[0]` on a dual-stack setup).
pub const LIVE_PORTS: [u16; 5] = [1000, 1001, 1002, 1003, 1004];

/// An address of the IPv6 plan (RFC 5180's 2001:2::/48):
/// `2001:2:0:<subnet>::<host>`.
const fn v6(subnet: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, subnet, 0, 0, 0, host)
}

/// The IPv6 service (dual-stack setups).
pub const VIP6: SocketAddrV6 = SocketAddrV6::new(v6(0, 1), 80, 0, 0);
/// The IPv6 service whose only backend is drained.
pub const DRAINED_VIP6: SocketAddrV6 = SocketAddrV6::new(v6(0, 2), 80, 0, 0);
/// The IPv6 SNAT pool, when the setup asks for one.
pub const POOL6: [Ipv6Addr; 2] = [v6(0, 0x11), v6(0, 0x12)];
/// The backends of [`VIP6`] (on different ports).
pub const BACKENDS6: [SocketAddrV6; 2] = [
    SocketAddrV6::new(v6(2, 3), 80, 0, 0),
    SocketAddrV6::new(v6(2, 4), 8080, 0, 0),
];
/// The drained backend of [`DRAINED_VIP6`].
pub const DRAINED_BACKEND6: SocketAddrV6 = SocketAddrV6::new(v6(2, 5), 80, 0, 0);
/// The IPv6 clients.
pub const CLIENTS6: [Ipv6Addr; 4] = [v6(1, 2), v6(1, 3), v6(1, 4), v6(1, 5)];
/// A router on the IPv6 clients' side.
pub const CLIENT_HOP6: Ipv6Addr = v6(1, 1);
/// A router on the IPv6 backends' side.
pub const BACKEND_HOP6: Ipv6Addr = v6(2, 1);

/// The engine's configuration, from byte 0 of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Verify incoming checksums (bit 0).
    pub verify_checksums: bool,
    /// MASQUERADE to [`POOL`] instead of the VIP's address (bit 1).
    pub pool: bool,
    /// The table limit: 6, 8, 16 or 64 (bits 2-3).
    pub max_flows: usize,
    /// Search only ports 40000-40003 when the client's is taken (bit 4),
    /// so that ports run out.
    pub few_ports: bool,
    /// Dual stack (bit 5): the IPv6 services next to the IPv4 ones, five
    /// more live flows in IPv6, and a table limit five flows higher.
    pub ipv6: bool,
}

impl Setup {
    /// Decode byte 0.
    pub fn from_byte(b: u8) -> Self {
        Setup {
            verify_checksums: b & 1 != 0,
            pool: b & 2 != 0,
            max_flows: [6, 8, 16, 64][usize::from(b >> 2 & 3)],
            few_ports: b & 16 != 0,
            ipv6: b & 32 != 0,
        }
    }

    /// Encode as byte 0.
    pub fn to_byte(self) -> u8 {
        let m = [6, 8, 16, 64]
            .iter()
            .position(|&m| m == self.max_flows)
            .unwrap_or(0) as u8;
        u8::from(self.verify_checksums)
            | u8::from(self.pool) << 1
            | m << 2
            | u8::from(self.few_ports) << 4
            | u8::from(self.ipv6) << 5
    }

    /// The table limit the engine gets: [`Setup::max_flows`], plus room for
    /// the IPv6 live flows on a dual-stack setup (the limit is shared).
    pub fn table_limit(self) -> usize {
        self.max_flows + if self.ipv6 { LIVE_PORTS.len() } else { 0 }
    }

    /// Return the engine configuration.
    pub fn config(self) -> EngineConfig {
        let backend = |addr: SocketAddr, weight| BackendConfig { addr, weight };
        let service =
            |vip: SocketAddr, backends: &[SocketAddr], weight, snat: Vec<IpAddr>| ServiceConfig {
                vip,
                backends: backends.iter().map(|&b| backend(b, weight)).collect(),
                mode: Mode::Nth,
                snat,
            };
        let pool = |p: &[IpAddr]| if self.pool { p.to_vec() } else { Vec::new() };
        let mut services = vec![
            service(
                VIP.into(),
                &BACKENDS.map(SocketAddr::from),
                1,
                pool(&POOL.map(IpAddr::from)),
            ),
            service(DRAINED_VIP.into(), &[DRAINED_BACKEND.into()], 0, Vec::new()),
        ];
        if self.ipv6 {
            services.push(service(
                VIP6.into(),
                &BACKENDS6.map(SocketAddr::from),
                1,
                pool(&POOL6.map(IpAddr::from)),
            ));
            services.push(service(
                DRAINED_VIP6.into(),
                &[DRAINED_BACKEND6.into()],
                0,
                Vec::new(),
            ));
        }
        EngineConfig {
            services,
            max_flows: self.table_limit(),
            snat_ports: if self.few_ports {
                40000..=40003
            } else {
                1024..=65535
            },
            seed: 0x00f0_22ed,
            verify_checksums: self.verify_checksums,
            ..Default::default()
        }
    }
}

/// What happens to a chunk's bytes before the engine sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixup {
    /// Nothing: the bytes as they are.
    None = 0,
    /// Recompute the IPv4 header checksum and the TCP or ICMP checksum.
    Checksums = 1,
    /// Address the packet as the ORIGINAL direction of a flow (client ->
    /// VIP), or of a new client, then fix the checksums. An ICMP error is
    /// made to quote the flow's last packet to the client instead.
    Original = 2,
    /// Address the packet as the REPLY direction of a flow (backend ->
    /// SNAT), then fix the checksums. An ICMP error is made to quote the
    /// flow's last packet to the backend instead.
    Reply = 3,
}

impl Fixup {
    fn from_bits(b: u8) -> Self {
        [Fixup::None, Fixup::Checksums, Fixup::Original, Fixup::Reply][usize::from(b & 3)]
    }
}

/// One packet of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// What to do to the bytes first.
    pub fixup: Fixup,
    /// Index into [`STEPS`]: how far the clock moves before the packet.
    pub step: u8,
    /// Which flow or new client to steer to (0-7).
    pub target: u8,
    /// The packet (at most 255 bytes).
    pub bytes: Vec<u8>,
}

impl Chunk {
    /// A chunk whose bytes are a well-formed packet, only time moving.
    pub fn packet(bytes: Vec<u8>, step: u8) -> Self {
        Chunk {
            fixup: Fixup::None,
            step,
            target: 0,
            bytes,
        }
    }
}

/// Encode a setup and chunks in the input format.
pub fn encode(setup: Setup, chunks: &[Chunk]) -> Vec<u8> {
    let mut out = vec![setup.to_byte()];
    for c in chunks {
        assert!(c.bytes.len() <= 255, "a chunk holds at most 255 bytes");
        out.push(c.fixup as u8 | (c.step & 7) << 2 | (c.target & 7) << 5);
        out.push(c.bytes.len() as u8);
        out.extend_from_slice(&c.bytes);
    }
    out
}

/// Decode an input: the setup and the chunks (the last may be short).
pub fn decode(data: &[u8]) -> (Setup, Vec<Chunk>) {
    let Some((&first, mut rest)) = data.split_first() else {
        return (Setup::from_byte(1), Vec::new());
    };
    let mut chunks = Vec::new();
    while let [h, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        chunks.push(Chunk {
            fixup: Fixup::from_bits(*h),
            step: h >> 2 & 7,
            target: h >> 5,
            bytes: tail[..n].to_vec(),
        });
        rest = &tail[n..];
    }
    (Setup::from_byte(first), chunks)
}

/// What one input did: the verdict of each chunk and the final counters.
#[derive(Debug)]
pub struct Report {
    /// One verdict per chunk, in order.
    pub verdicts: Vec<Verdict>,
    /// The counters once every timeout has passed.
    pub stats: Snapshot,
}

/// Run one input: decode it, build the engine with its live flows, process
/// every chunk and check the invariants; panics on a violation.
pub fn run(data: &[u8]) -> Report {
    let (setup, chunks) = decode(data);
    let mut h = Harness::new(setup);
    let verdicts = chunks.iter().map(|c| h.step(c)).collect();
    h.finish();
    Report {
        verdicts,
        stats: h.engine.stats(),
    }
}

/// An engine with live flows, a clock, and the expected counters.
pub struct Harness {
    setup: Setup,
    engine: Engine,
    now: u64,
    /// Packets handed to the engine, including the setup's.
    processed: u64,
    /// Counters before any packet (all zero).
    base: Snapshot,
}

/// The client address of pre-established flow `i`.
pub fn live_client(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENTS[0], LIVE_PORTS[i])
}

impl Harness {
    /// Build the engine and, at t = 1 s, five flows from client 0: two
    /// ESTABLISHED (ports 1000, 1001), one SYN_SENT (1002), one FIN_WAIT
    /// (1003) and one TIME_WAIT (1004); on a dual-stack setup, the same five
    /// from IPv6 client 0 to the IPv6 service.
    pub fn new(setup: Setup) -> Self {
        let engine = Engine::new(setup.config()).expect("a valid configuration");
        let base = engine.stats();
        let mut h = Harness {
            setup,
            engine,
            now: 1000,
            processed: 0,
            base,
        };
        let mut families: Vec<(IpAddr, SocketAddr)> = vec![(CLIENTS[0].into(), VIP.into())];
        if setup.ipv6 {
            families.push((CLIENTS6[0].into(), VIP6.into()));
        }
        for &(client_ip, vip) in &families {
            for (i, &port) in LIVE_PORTS.iter().enumerate() {
                let client = SocketAddr::new(client_ip, port);
                let seg = |src, dst, flags, seq, ack| Segment {
                    seq,
                    ack,
                    ..Segment::between(src, dst, flags)
                };
                // In sequence from the SYN on: the engine tracks windows.
                let (snat, backend) = h.send_ok(seg(client, vip, SYN, 100, 0));
                if i == 2 {
                    continue; // half-open
                }
                h.send_ok(seg(backend, snat, SYN | ACK, 5000, 101));
                h.send_ok(seg(client, vip, ACK, 101, 5001));
                if i >= 3 {
                    h.send_ok(seg(client, vip, FIN | ACK, 101, 5001));
                }
                if i == 4 {
                    h.send_ok(seg(backend, snat, ACK, 5001, 102));
                    h.send_ok(seg(backend, snat, FIN | ACK, 5001, 102));
                    h.send_ok(seg(client, vip, ACK, 102, 5002));
                }
            }
        }
        assert_eq!(h.engine.flow_count(), LIVE_PORTS.len() * families.len());
        h
    }

    /// Process a well-formed segment of the setup, which must be forwarded;
    /// returns the forwarded source and destination.
    fn send_ok(&mut self, seg: Segment<'_, SocketAddr>) -> (SocketAddr, SocketAddr) {
        let mut p = seg.build();
        let v = self.process_checked(&mut p);
        let Verdict::Forward { len } = v else {
            panic!("setup segment not forwarded: {v:?}");
        };
        let p = &p[..len];
        match p[0] >> 4 {
            4 => {
                let t = tcp_tuple(p).expect("parses");
                (t.src.to_socket(), t.dst.to_socket())
            }
            _ => {
                let t = tcp_tuple6(p).expect("parses");
                (t.src.to_socket(), t.dst.to_socket())
            }
        }
    }

    /// Return the engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The tracked flows' (ORIGINAL, REPLY) tuples, in tuple order (the
    /// table's own order depends on a per-process hash seed).
    fn flows(&self) -> Vec<(Tuple, Tuple)> {
        let mut v: Vec<(Tuple, Tuple)> = self
            .engine
            .flows_of::<Ipv4Addr>()
            .into_iter()
            .map(|f| (f.original, f.reply))
            .collect();
        v.sort();
        v
    }

    /// The tracked IPv6 flows' tuples, in tuple order.
    fn flows6(&self) -> Vec<(Tuple<Ipv6Addr>, Tuple<Ipv6Addr>)> {
        let mut v: Vec<_> = self
            .engine
            .flows_of::<Ipv6Addr>()
            .into_iter()
            .map(|f| (f.original, f.reply))
            .collect();
        v.sort();
        v
    }

    /// Move the clock, apply the chunk's fixup, process it and check.
    pub fn step(&mut self, c: &Chunk) -> Verdict {
        self.now += STEPS[usize::from(c.step & 7)];
        while self.engine.handle_timeout(Timestamp::from_millis(self.now)) {}
        let mut pkt = c.bytes.clone();
        match c.fixup {
            Fixup::None => {}
            Fixup::Checksums => fix_checksums(&mut pkt),
            Fixup::Original | Fixup::Reply => {
                let reply = c.fixup == Fixup::Reply;
                if self.setup.ipv6 && pkt.first().is_some_and(|b| b >> 4 == 6) {
                    self.steer6(&mut pkt, reply, c.target);
                } else {
                    self.steer(&mut pkt, reply, c.target);
                }
                fix_checksums(&mut pkt);
            }
        }
        self.process_checked(&mut pkt)
    }

    /// Rewrite `pkt`'s addresses (and ports, for TCP) onto flow `target`,
    /// or a new client when `target` is beyond the flows.
    fn steer(&self, pkt: &mut [u8], reply: bool, target: u8) {
        if pkt.len() < 20 {
            return;
        }
        let flows = self.flows();
        let t = usize::from(target);
        let (src, dst) = match flows.get(t) {
            Some((_, r)) if reply => (r.src.into(), r.dst.into()),
            Some((o, _)) => (o.src.into(), o.dst.into()),
            None => {
                // A new client (its port from the packet) or a stray reply.
                let port = pkt
                    .get(20..22)
                    .map_or(1, |p| u16::from_be_bytes([p[0], p[1]]));
                let client = SocketAddrV4::new(CLIENTS[t % CLIENTS.len()], port);
                let vip = if t == 7 { DRAINED_VIP } else { VIP };
                if reply {
                    (BACKENDS[t % 2], SocketAddrV4::new(*VIP.ip(), port))
                } else {
                    (client, vip)
                }
            }
        };
        // A sane IPv4 header: version 4, the IHL kept when it fits, the
        // total length of the buffer, not a fragment.
        let ihl = (usize::from(pkt[0] & 0x0f) * 4).clamp(20, 60);
        let ihl = if ihl > pkt.len() { 20 } else { ihl };
        pkt[0] = 0x40 | (ihl / 4) as u8;
        let total = pkt.len() as u16;
        pkt[2..4].copy_from_slice(&total.to_be_bytes());
        pkt[6] = 0x40;
        pkt[7] = 0;
        if pkt[9] == 1 && pkt.len() >= ihl + 8 + 28 {
            // An ICMP error about the flow: from a hop on the side the
            // quoted packet was going to, quoting the packet as tunlb sent it.
            let (hop, quoted) = match flows.get(t) {
                Some((_, r)) if reply => (BACKEND_HOP, (r.dst.into(), r.src.into())),
                Some((o, _)) => (CLIENT_HOP, (o.dst.into(), o.src.into())),
                None if reply => (BACKEND_HOP, (dst, src)),
                None => (CLIENT_HOP, (dst, src)),
            };
            let nat = quoted.0;
            put_addrs(pkt, 0, SocketAddrV4::new(hop, 0), nat);
            let inner = ihl + 8;
            let inner_ihl = 20;
            pkt[inner] = 0x45;
            pkt[inner + 9] = 6;
            put_addrs(pkt, inner, quoted.0, quoted.1);
            put_ports(pkt, inner + inner_ihl, quoted.0, quoted.1);
            return;
        }
        pkt[9] = 6;
        put_addrs(pkt, 0, src, dst);
        if pkt.len() >= ihl + 4 {
            put_ports(pkt, ihl, src, dst);
        }
    }

    /// Rewrite an IPv6 `pkt` onto IPv6 flow `target` (or a new client), as
    /// [`Harness::steer`] does for IPv4: a sane header (version 6, the
    /// payload length of the buffer), the extension headers kept as far as
    /// they are whole (a fragment header becomes destination options), then
    /// TCP, or an ICMPv6 error quoting the flow.
    fn steer6(&self, pkt: &mut [u8], reply: bool, target: u8) {
        if pkt.len() < 40 {
            return;
        }
        pkt[0] = 0x60 | (pkt[0] & 0x0f);
        let payload = (pkt.len() - 40) as u16;
        pkt[4..6].copy_from_slice(&payload.to_be_bytes());
        // Walk the chain; the upper layer starts where it ends.
        let (mut at, mut field) = (40, 6);
        while at + 8 <= pkt.len() && matches!(pkt[field], 0 | 43 | 44 | 60) {
            if pkt[field] == 44 {
                pkt[field] = 60;
                pkt[at + 1] = 0;
            }
            let len = (usize::from(pkt[at + 1]) + 1) * 8;
            if at + len > pkt.len() {
                break;
            }
            field = at;
            at += len;
        }
        if matches!(pkt[field], 0 | 43 | 44 | 60) {
            pkt[field] = 6;
        }
        let flows = self.flows6();
        let t = usize::from(target);
        let (src, dst) = match flows.get(t) {
            Some((_, r)) if reply => (r.src.to_socket(), r.dst.to_socket()),
            Some((o, _)) => (o.src.to_socket(), o.dst.to_socket()),
            None => {
                let port = pkt
                    .get(at..at + 2)
                    .map_or(1, |p| u16::from_be_bytes([p[0], p[1]]));
                let client = SocketAddrV6::new(CLIENTS6[t % CLIENTS6.len()], port, 0, 0);
                let vip = if t == 7 { DRAINED_VIP6 } else { VIP6 };
                if reply {
                    (
                        BACKENDS6[t % 2].into(),
                        SocketAddrV6::new(*VIP6.ip(), port, 0, 0).into(),
                    )
                } else {
                    (client.into(), vip.into())
                }
            }
        };
        if pkt[field] == 58 && pkt.len() >= at + 8 + 48 {
            // An ICMPv6 error about the flow from a hop on the side the
            // quoted packet was going to, quoting it as tunlb sent it.
            let (hop, quoted) = match flows.get(t) {
                Some((_, r)) if reply => (BACKEND_HOP6, (r.dst.to_socket(), r.src.to_socket())),
                Some((o, _)) => (CLIENT_HOP6, (o.dst.to_socket(), o.src.to_socket())),
                None if reply => (BACKEND_HOP6, (dst, src)),
                None => (CLIENT_HOP6, (dst, src)),
            };
            put_addrs6(pkt, 0, SocketAddr::new(hop.into(), 0), quoted.0);
            let inner = at + 8;
            pkt[inner] = 0x60;
            pkt[inner + 6] = 6;
            put_addrs6(pkt, inner, quoted.0, quoted.1);
            put_ports(pkt, inner + 40, quoted.0, quoted.1);
            return;
        }
        pkt[field] = 6;
        put_addrs6(pkt, 0, src, dst);
        if pkt.len() >= at + 4 {
            put_ports(pkt, at, src, dst);
        }
    }

    /// Process `pkt` and check every invariant on the verdict; returns it.
    fn process_checked(&mut self, pkt: &mut [u8]) -> Verdict {
        let input = pkt.to_vec();
        let input_valid = checksums_valid(&input);
        let (before, before6) = (self.flows(), self.flows6());
        let verdict = self
            .engine
            .handle_packet(pkt, Timestamp::from_millis(self.now));
        self.processed += 1;
        let (after, after6) = (self.flows(), self.flows6());
        match verdict {
            Verdict::Drop(_) => {}
            Verdict::Forward { len } => {
                assert!(len <= pkt.len(), "length {len} beyond the buffer");
                let out = &pkt[..len];
                if self.setup.verify_checksums {
                    assert!(
                        input_valid,
                        "forwarded a packet whose checksums do not verify"
                    );
                }
                if out.first().is_some_and(|b| b >> 4 == 6) {
                    check_forward6(&input, out, input_valid, &before6, &after6);
                } else {
                    check_forward(&input, out, input_valid, &before, &after);
                }
            }
            Verdict::Respond { len } => {
                assert!(len <= pkt.len(), "length {len} beyond the buffer");
                check_response(&input, &pkt[..len]);
            }
        }
        assert!(
            self.engine.flow_count() <= self.setup.table_limit(),
            "{} flows, limit {}",
            self.engine.flow_count(),
            self.setup.table_limit()
        );
        assert_eq!(after.len() + after6.len(), self.engine.flow_count());
        let s = self.engine.stats();
        let accounted = |s: &Snapshot| s.total_dropped() + s.forwarded[0] + s.forwarded[1];
        assert_eq!(
            accounted(&s) - accounted(&self.base),
            self.processed,
            "every packet ends in exactly one counter: {s}"
        );
        verdict
    }

    /// Let every timeout pass: the table must end empty and clean.
    pub fn finish(&mut self) {
        self.now += 6 * 24 * 3600 * 1000;
        let now = Timestamp::from_millis(self.now);
        while self.engine.handle_timeout(now) {}
        assert_eq!(self.engine.flow_count(), 0, "flows outlived every timeout");
        assert_eq!(self.engine.poll_timeout(), None, "an expiry left pending");
        let s = self.engine.stats();
        for b in &s.backends {
            assert_eq!(
                b.active, 0,
                "{} counts active flows in an empty table",
                b.backend
            );
        }
        assert_eq!(s.flows, 0);
    }
}

/// Write `src` and `dst` addresses into the IPv4 header at `at`.
fn put_addrs(pkt: &mut [u8], at: usize, src: SocketAddrV4, dst: SocketAddrV4) {
    pkt[at + 12..at + 16].copy_from_slice(&src.ip().octets());
    pkt[at + 16..at + 20].copy_from_slice(&dst.ip().octets());
}

/// Write `src` and `dst` addresses into the IPv6 header at `at` (both IPv6).
fn put_addrs6(pkt: &mut [u8], at: usize, src: SocketAddr, dst: SocketAddr) {
    let octets = |s: SocketAddr| match s.ip() {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    };
    pkt[at + 8..at + 24].copy_from_slice(&octets(src));
    pkt[at + 24..at + 40].copy_from_slice(&octets(dst));
}

/// Write `src` and `dst` ports into the TCP header at `at`.
fn put_ports<S: Into<SocketAddr>>(pkt: &mut [u8], at: usize, src: S, dst: S) {
    let (src, dst) = (src.into(), dst.into());
    pkt[at..at + 2].copy_from_slice(&src.port().to_be_bytes());
    pkt[at + 2..at + 4].copy_from_slice(&dst.port().to_be_bytes());
}

/// The one's-complement sum of `data` as 16-bit big-endian words (an odd
/// last byte padded with zero), folded.
pub fn ones_sum(data: &[u8], initial: u32) -> u16 {
    let mut s = initial as u64;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        s += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        s += u64::from(*b) << 8;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The IPv4 pseudo-header sum for a TCP segment of `len` bytes.
fn pseudo(ip: &[u8], len: usize) -> u32 {
    u32::from(ones_sum(&ip[12..20], 0)) + 6 + len as u32
}

/// Where a packet's parts lie, if its IPv4 header is sane: (IHL, total length, protocol).
fn layout(pkt: &[u8]) -> Option<(usize, usize, u8)> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    (ihl >= 20 && ihl <= total && total <= pkt.len()).then_some((ihl, total, pkt[9]))
}

/// Recompute the IPv4 header checksum and, for TCP and ICMP, the payload's,
/// where the header says where they are.
pub fn fix_checksums(pkt: &mut [u8]) {
    if pkt.first().is_some_and(|b| b >> 4 == 6) {
        return fix_checksums6(pkt);
    }
    let Some((ihl, total, proto)) = layout(pkt) else {
        return;
    };
    pkt[10..12].fill(0);
    let c = !ones_sum(&pkt[..ihl], 0);
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
    let l4 = ihl..total;
    match proto {
        6 if l4.len() >= 20 => {
            pkt[ihl + 16..ihl + 18].fill(0);
            let c = !ones_sum(&pkt[l4.clone()], pseudo(pkt, l4.len()));
            pkt[ihl + 16..ihl + 18].copy_from_slice(&c.to_be_bytes());
        }
        1 if l4.len() >= 8 => {
            pkt[ihl + 2..ihl + 4].fill(0);
            let c = !ones_sum(&pkt[l4], 0);
            pkt[ihl + 2..ihl + 4].copy_from_slice(&c.to_be_bytes());
        }
        _ => {}
    }
}

/// Return whether `pkt`'s IPv4 header checksum and its TCP or ICMP
/// checksum verify (`false` if it is not a sane IPv4 TCP/ICMP packet).
pub fn checksums_valid(pkt: &[u8]) -> bool {
    if pkt.first().is_some_and(|b| b >> 4 == 6) {
        return checksums_valid6(pkt);
    }
    let Some((ihl, total, proto)) = layout(pkt) else {
        return false;
    };
    if ones_sum(&pkt[..ihl], 0) != 0xffff {
        return false;
    }
    let l4 = &pkt[ihl..total];
    match proto {
        6 => l4.len() >= 20 && ones_sum(l4, pseudo(pkt, l4.len())) == 0xffff,
        1 => l4.len() >= 8 && ones_sum(l4, 0) == 0xffff,
        _ => false,
    }
}

/// The TCP tuple of a sane packet.
fn tcp_tuple(pkt: &[u8]) -> Option<Tuple> {
    let (ihl, total, proto) = layout(pkt)?;
    if proto != 6 || total < ihl + 20 {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(pkt[o], pkt[o + 1], pkt[o + 2], pkt[o + 3]);
    let port = |o: usize| u16::from_be_bytes([pkt[ihl + o], pkt[ihl + o + 1]]);
    Some(Tuple::new(ip(12), port(0), ip(16), port(2)))
}

/// Check a forwarded packet against its input and the flows around it.
fn check_forward(
    input: &[u8],
    out: &[u8],
    input_valid: bool,
    before: &[(Tuple, Tuple)],
    after: &[(Tuple, Tuple)],
) {
    let ip = Ipv4Packet::new_checked(out).expect("a forwarded packet parses");
    assert_eq!(
        usize::from(ip.total_len()),
        out.len(),
        "total length is the packet's length"
    );
    assert!(
        !ip.more_frags() && ip.frag_offset() == 0,
        "a fragment forwarded"
    );
    if input_valid {
        assert!(
            checksums_valid(out),
            "valid checksums in, invalid out: {input:02x?} -> {out:02x?}"
        );
    }
    let flows = || before.iter().chain(after);
    match ip.next_header() {
        IpProtocol::Tcp => {
            TcpPacket::new_checked(ip.payload()).expect("a forwarded segment parses");
            let got = tcp_tuple(out).expect("a TCP tuple");
            let sent = tcp_tuple(input).expect("the input was TCP");
            assert_ne!(got, sent, "forwarded untranslated: {got}");
            let want: Vec<Tuple> = flows()
                .filter_map(|(o, r)| {
                    if sent == *o {
                        Some(r.invert())
                    } else if sent == *r {
                        Some(o.invert())
                    } else {
                        None
                    }
                })
                .collect();
            assert!(
                !want.is_empty(),
                "{sent} forwarded as {got} but matches no flow"
            );
            assert!(
                want.contains(&got),
                "{sent} forwarded as {got}, want one of {want:?}"
            );
        }
        IpProtocol::Icmp => {
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            let to_endpoint = flows().any(|(o, r)| dst == *o.src.ip() || dst == *r.src.ip());
            assert!(to_endpoint, "ICMP to {dst}, no client or backend of a flow");
            let from_nat = flows().any(|(o, r)| src == *o.dst.ip() || src == *r.dst.ip());
            assert!(
                from_nat,
                "ICMP from {src}, neither a VIP nor a SNAT address"
            );
            assert!(
                ones_sum(ip.payload(), 0) == 0xffff,
                "the ICMP checksum is recomputed, so it always verifies"
            );
        }
        other => panic!("forwarded protocol {other}"),
    }
}

/// Check a response: a RST|ACK from the drained service to the SYN's sender.
fn check_response(input: &[u8], out: &[u8]) {
    assert!(
        checksums_valid(out),
        "a response with bad checksums: {out:02x?}"
    );
    let flags_at = if out[0] >> 4 == 6 {
        let t = tcp_tuple6(out).expect("a response is TCP");
        let sent = tcp_tuple6(input).expect("responses answer TCP");
        assert_eq!(t, sent.invert(), "a RST goes back to the sender");
        assert_eq!(t.src.to_socket(), SocketAddr::from(DRAINED_VIP6));
        layout6(out).expect("sane").0 + 13
    } else {
        let t = tcp_tuple(out).expect("a response is TCP");
        let sent = tcp_tuple(input).expect("responses answer TCP");
        assert_eq!(
            t,
            sent.invert(),
            "a RST goes back to the sender, from the service"
        );
        assert_eq!(t.src, DRAINED_VIP);
        usize::from(out[0] & 0x0f) * 4 + 13
    };
    assert_eq!(out[flags_at] & 0x14, 0x14, "RST|ACK");
}

/// Where an IPv6 packet's parts lie, if its header is sane and its
/// extension headers (hop-by-hop, routing, destination options, in any
/// order and number: at least what the engine walks) lead to an upper
/// layer within its payload: (upper-layer offset, total length, protocol).
/// `None` for a fragment.
pub fn layout6(pkt: &[u8]) -> Option<(usize, usize, u8)> {
    if pkt.len() < 40 || pkt[0] >> 4 != 6 {
        return None;
    }
    let total = 40 + usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
    if total > pkt.len() {
        return None;
    }
    let (mut at, mut next) = (40, pkt[6]);
    while matches!(next, 0 | 43 | 60) {
        if at + 8 > total {
            return None;
        }
        next = pkt[at];
        at += (usize::from(pkt[at + 1]) + 1) * 8;
    }
    (next != 44 && at <= total).then_some((at, total, next))
}

/// The IPv6 pseudo-header sum for an upper layer `proto` of `len` bytes.
fn pseudo6(pkt: &[u8], len: usize, proto: u8) -> u32 {
    u32::from(ones_sum(&pkt[8..40], 0))
        + (len >> 16) as u32
        + (len & 0xffff) as u32
        + u32::from(proto)
}

/// Recompute the TCP or ICMPv6 checksum of an IPv6 packet where its
/// headers say where it is.
pub fn fix_checksums6(pkt: &mut [u8]) {
    let Some((at, total, proto)) = layout6(pkt) else {
        return;
    };
    let csum = match proto {
        6 if total - at >= 20 => at + 16,
        58 if total - at >= 4 => at + 2,
        _ => return,
    };
    pkt[csum..csum + 2].fill(0);
    let c = !ones_sum(&pkt[at..total], pseudo6(pkt, total - at, proto));
    pkt[csum..csum + 2].copy_from_slice(&c.to_be_bytes());
}

/// Return whether an IPv6 packet's TCP or ICMPv6 checksum verifies
/// (`false` if it is not a sane IPv6 TCP/ICMPv6 packet).
pub fn checksums_valid6(pkt: &[u8]) -> bool {
    let Some((at, total, proto)) = layout6(pkt) else {
        return false;
    };
    let l4 = &pkt[at..total];
    match proto {
        6 => l4.len() >= 20 && ones_sum(l4, pseudo6(pkt, l4.len(), 6)) == 0xffff,
        58 => l4.len() >= 4 && ones_sum(l4, pseudo6(pkt, l4.len(), 58)) == 0xffff,
        _ => false,
    }
}

/// The TCP tuple of a sane IPv6 packet.
fn tcp_tuple6(pkt: &[u8]) -> Option<Tuple<Ipv6Addr>> {
    let (at, total, proto) = layout6(pkt)?;
    if proto != 6 || total < at + 20 {
        return None;
    }
    let ip = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[o..o + 16]).unwrap());
    let port = |o: usize| u16::from_be_bytes([pkt[at + o], pkt[at + o + 1]]);
    Some(Tuple::new(ip(8), port(0), ip(24), port(2)))
}

/// [`check_forward`] for an IPv6 packet.
fn check_forward6(
    input: &[u8],
    out: &[u8],
    input_valid: bool,
    before: &[(Tuple<Ipv6Addr>, Tuple<Ipv6Addr>)],
    after: &[(Tuple<Ipv6Addr>, Tuple<Ipv6Addr>)],
) {
    let ip = Ipv6Packet::new_checked(out).expect("a forwarded packet parses");
    assert_eq!(
        usize::from(ip.payload_len()) + 40,
        out.len(),
        "the payload length is the packet's"
    );
    let (at, _, proto) = layout6(out).expect("a forwarded packet's chain is whole, no fragment");
    if input_valid {
        assert!(
            checksums_valid6(out),
            "valid checksums in, invalid out: {input:02x?} -> {out:02x?}"
        );
    }
    let flows = || before.iter().chain(after);
    match proto {
        6 => {
            TcpPacket::new_checked(&out[at..]).expect("a forwarded segment parses");
            let got = tcp_tuple6(out).expect("a TCP tuple");
            let sent = tcp_tuple6(input).expect("the input was TCP");
            assert_ne!(got, sent, "forwarded untranslated: {got}");
            let want: Vec<Tuple<Ipv6Addr>> = flows()
                .filter_map(|(o, r)| {
                    if sent == *o {
                        Some(r.invert())
                    } else if sent == *r {
                        Some(o.invert())
                    } else {
                        None
                    }
                })
                .collect();
            assert!(
                !want.is_empty(),
                "{sent} forwarded as {got} but matches no flow"
            );
            assert!(
                want.contains(&got),
                "{sent} forwarded as {got}, want one of {want:?}"
            );
        }
        58 => {
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            assert!(
                (1..=4).contains(&out[at]),
                "ICMPv6 type {} forwarded",
                out[at]
            );
            let to_endpoint = flows().any(|(o, r)| dst == *o.src.ip() || dst == *r.src.ip());
            assert!(
                to_endpoint,
                "ICMPv6 to {dst}, no client or backend of a flow"
            );
            let from_nat = flows().any(|(o, r)| src == *o.dst.ip() || src == *r.dst.ip());
            assert!(
                from_nat,
                "ICMPv6 from {src}, neither a VIP nor a SNAT address"
            );
            assert!(
                checksums_valid6(out),
                "the ICMPv6 checksum is recomputed, so it always verifies"
            );
            let quote = &out[at + 8..];
            assert!(
                quote.len() >= 40 && quote[8..24] == out[24..40],
                "the quote is about a packet its receiver sent"
            );
        }
        other => panic!("forwarded protocol {other}"),
    }
}
