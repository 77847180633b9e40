//! The test network: smoltcp clients and backends, a router, and the engine in between.
//!
//! ```text
//!  clients 198.18.1.2-5                                   backends 198.18.2.3-6:80
//!  [smoltcp] --+                                       +-- [smoltcp] "b1"
//!  [smoltcp] --+-- Wire --> Engine::handle_packet --> Wire --+-- [smoltcp] "b2" ...
//! ```
//!
//! The network is of one family, the address type `A` ([`Plan`]): `Net` is
//! the IPv4 one above, `Net<Ipv6Addr>` the same with the 2001:2::/48
//! addresses of [`crate::family::v6`]. Everything below is written once.
//!
//! [`Net`] owns everything and a virtual clock. Hosts send into the [`Wire`];
//! the router delivers each packet by destination: the VIP and the SNAT
//! addresses belong to the engine, whose rewritten output goes back on the
//! wire; any other address belongs to a host (or to nobody: counted in
//! [`Net::unroutable`]). Every packet the engine emits is checked with
//! smoltcp's views before it moves on, so a broken checksum fails the test
//! at once instead of making a receiver silently drop it.
//!
//! Clients open connections with [`Net::connect`]; each backend accepts on
//! port 80 and answers as [`Serve`] says, with its own identity ("b1\n") or
//! its own byte pattern. Both ends record what they received in a
//! [`Stream`], so tests compare real outcomes.
//!
//! # Hops with a smaller MTU, and path MTU discovery
//! [`Net::mtu_hop`] puts a router with a smaller MTU on the clients' or
//! the backends' side: a packet the engine sends that way and that does not
//! fit is lost, and the hop answers its source with "packet too big"
//! (ICMPv6 type 2; for IPv4, "fragmentation needed", type 3 code 4) from
//! its own address ([`Plan::CLIENT_HOP`], [`Plan::BACKEND_HOP`]), like a
//! router that never fragments. smoltcp 0.14 ignores both errors (its
//! `process_icmpv6` has no arm for them) and fixes its MTU when the
//! interface is made, so the harness plays the host's path MTU cache (RFC
//! 8201, RFC 1191) when [`Net::pmtu_discovery`] is on: an error delivered
//! to a host that verifies and quotes one of that host's own connections
//! (source and destination address and port, as Linux's `tcp_v6_err`
//! looks the socket up) lowers the host's MTU to the one announced, by
//! remaking its interface; the sockets, kept in their `SocketSet`, live on
//! and cut their next (re)transmissions to the new MSS.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpCidr, IpEndpoint};
use tunlb::select::Mode;
use tunlb::{BackendConfig, DropReason, Engine, EngineConfig, ServiceConfig, Timestamp, Verdict};

use crate::check;
use crate::device::MemDevice;
use crate::family::Plan;
use crate::wire::{Leg, Wire};

/// The service address clients connect to (and, by default, the SNAT address).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The service port.
pub const VIP_PORT: u16 = 80;
/// The client hosts, in index order.
pub const CLIENTS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(198, 18, 1, 2),
    Ipv4Addr::new(198, 18, 1, 3),
    Ipv4Addr::new(198, 18, 1, 4),
    Ipv4Addr::new(198, 18, 1, 5),
];
/// The backend hosts, in index order; they listen on [`BACKEND_PORT`].
pub const BACKENDS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(198, 18, 2, 3),
    Ipv4Addr::new(198, 18, 2, 4),
    Ipv4Addr::new(198, 18, 2, 5),
    Ipv4Addr::new(198, 18, 2, 6),
];
/// The port every backend listens on.
pub const BACKEND_PORT: u16 = 80;
/// A router on the backends' side, the source of ICMP errors "from a hop".
pub const BACKEND_HOP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// A router on the clients' side.
pub const CLIENT_HOP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// How many sockets each backend keeps listening (SYNs arriving together).
const LISTENERS: usize = 4;
/// Size of each socket's receive and transmit buffer.
const SOCKET_BUFFER: usize = 64 * 1024;
/// The engine's seed in every test configuration.
pub const SEED: u64 = 0x7e57_0001;

/// The service address and port.
pub fn vip() -> SocketAddrV4 {
    vip_of::<Ipv4Addr>()
}

/// Backend `i`'s address and port.
pub fn backend(i: usize) -> SocketAddrV4 {
    backend_of::<Ipv4Addr>(i)
}

/// The service address and port in `A`'s plan.
pub fn vip_of<A: Plan>() -> A::Sock {
    A::sock(A::VIP, VIP_PORT)
}

/// Backend `i`'s address and port in `A`'s plan.
pub fn backend_of<A: Plan>(i: usize) -> A::Sock {
    A::sock(A::BACKENDS[i], BACKEND_PORT)
}

/// The identity backend `i` answers with: "b1\n" for backend 0.
pub fn greeting(i: usize) -> Vec<u8> {
    format!("b{}\n", i + 1).into_bytes()
}

/// `len` pseudo-random bytes determined by `seed`: transfer content that
/// shows any loss, duplication or reordering of data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// The service `VIP:80` over backends `0..weights.len()` with these weights.
pub fn service(mode: Mode, weights: &[u32]) -> ServiceConfig {
    service_of::<Ipv4Addr>(mode, weights)
}

/// An engine configuration with one service, [`SEED`] and defaults otherwise.
pub fn config(mode: Mode, weights: &[u32]) -> EngineConfig {
    config_of::<Ipv4Addr>(mode, weights)
}

/// [`service`] in `A`'s plan.
pub fn service_of<A: Plan>(mode: Mode, weights: &[u32]) -> ServiceConfig {
    ServiceConfig {
        vip: vip_of::<A>().into(),
        backends: weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| BackendConfig {
                addr: backend_of::<A>(i).into(),
                weight,
            })
            .collect(),
        mode,
        snat: vec![],
    }
}

/// [`config`] in `A`'s plan.
pub fn config_of<A: Plan>(mode: Mode, weights: &[u32]) -> EngineConfig {
    EngineConfig {
        services: vec![service_of::<A>(mode, weights)],
        seed: SEED,
        // The same table growth on every run.
        hash_seed: Some(SEED),
        ..Default::default()
    }
}

/// How a backend answers each connection it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Send its greeting ("b1\n") and close at once (the backend closes first).
    Greet,
    /// Send its greeting and close only after the client has closed.
    GreetThenWait,
    /// Read the client's request until its FIN, then send `n` bytes of its
    /// own pattern ([`Net::backend_pattern`]) and close: one direction carries
    /// data at a time, like HTTP/1.0.
    ///
    /// (Why not both at once: after a retransmission timeout smoltcp 0.14
    /// rewinds its send sequence and sends pure ACKs from the rewound
    /// number, which the peer finds below its window and ignores. When both
    /// ends of a bidirectional transfer time out together on a lossy wire
    /// neither accepts the other's ACKs again. Endpoint behaviour, not NAT.)
    Stream(usize),
}

/// When one end of a connection closes its sending half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// As soon as the connection is up and everything sent is acknowledged.
    AfterSend,
    /// After the peer has closed and everything sent is acknowledged.
    AfterPeer,
    /// Only when the test calls [`Net::close`].
    Manual,
}

/// How a connection ended, as one endpoint saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still open (or opening).
    Open,
    /// Both FINs exchanged and everything sent: an orderly end.
    Done,
    /// Closed without the peer's FIN: reset, refused or aborted.
    Aborted,
}

/// The index of a stream in the network ([`Net::stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamId(usize);

/// One end of one TCP connection and what happened to it.
#[derive(Debug)]
pub struct Stream<A: Plan = Ipv4Addr> {
    /// The host it lives on (an index into the network's hosts).
    pub host: usize,
    /// Whether this is a backend's accepted end.
    pub server: bool,
    handle: Option<SocketHandle>,
    /// Local address and port.
    pub local: A::Sock,
    /// The peer as this end sees it (after NAT: a backend sees the SNAT address).
    pub remote: A::Sock,
    to_send: Vec<u8>,
    /// Bytes handed to the socket so far.
    pub sent: usize,
    /// Bytes received, in order.
    pub received: Vec<u8>,
    close: Close,
    close_called: bool,
    /// Hold the data back until the peer's FIN (a response to a request).
    respond: bool,
    /// The handshake completed.
    pub established: bool,
    /// The peer's FIN arrived.
    pub peer_fin: bool,
    /// The socket's last observed state.
    pub state: tcp::State,
    /// How it ended.
    pub outcome: Outcome,
    /// Virtual time (ms) the stream was created.
    pub opened_at: u64,
    /// Virtual time (ms) it reached its outcome.
    pub ended_at: Option<u64>,
}

impl<A: Plan> Stream<A> {
    /// Return whether every byte this end meant to send was handed to the socket.
    pub fn sent_all(&self) -> bool {
        self.sent == self.to_send.len()
    }

    /// Return what this end meant to send.
    pub fn to_send(&self) -> &[u8] {
        &self.to_send
    }
}

/// One smoltcp host: an interface with one address and a default route,
/// its device, its sockets and (on a backend) its listeners.
struct Host<A: Plan> {
    addr: A,
    /// Which backend this host is, if it is one.
    backend: Option<usize>,
    iface: Interface,
    dev: MemDevice,
    sockets: SocketSet<'static>,
    listeners: Vec<SocketHandle>,
    /// Streams with a live socket on this host.
    active: Vec<usize>,
    /// The stack's random seed.
    seed: u64,
    /// How many times the interface was remade (path MTU changes).
    remade: u64,
}

impl<A: Plan> Host<A> {
    fn new(addr: A, backend: Option<usize>, seed: u64) -> Self {
        let mut dev = MemDevice::default();
        let seed = seed ^ addr.seed_bits();
        let iface = Self::interface(addr, &mut dev, seed, Instant::ZERO);
        let mut host = Host {
            addr,
            backend,
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            listeners: Vec::new(),
            active: Vec::new(),
            seed,
            remade: 0,
        };
        if backend.is_some() {
            for _ in 0..LISTENERS {
                host.add_listener();
            }
        }
        host
    }

    /// An interface on `dev` with `addr` in its subnet and a default route
    /// through the subnet's router.
    fn interface(addr: A, dev: &mut MemDevice, seed: u64, now: Instant) -> Interface {
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = seed;
        let mut iface = Interface::new(cfg, dev, now);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(addr.smol(), A::PREFIX_LEN))
                .expect("one address")
        });
        A::add_default_route(&mut iface, addr.gateway());
        iface
    }

    /// Lower the host's MTU to `mtu` (never raise it): remake the
    /// interface on a device with that MTU. smoltcp reads the MTU only when
    /// an interface is made; the sockets keep their state.
    fn lower_mtu(&mut self, mtu: usize, now: Instant) -> bool {
        if mtu >= self.dev.mtu {
            return false;
        }
        self.dev.mtu = mtu;
        self.remade += 1;
        // Another seed, so new connections do not repeat sequence numbers.
        let seed = self.seed ^ self.remade.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.iface = Self::interface(self.addr, &mut self.dev, seed, now);
        true
    }

    /// Whether `(local, remote)` is one of this host's connections.
    fn has_connection(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        self.sockets.iter().any(|(_, s)| match s {
            smoltcp::socket::Socket::Tcp(t) => {
                let sock = |ep: Option<IpEndpoint>| {
                    ep.and_then(|ep| A::from_smol(ep.addr).map(|a| A::sock(a, ep.port).into()))
                };
                sock(t.local_endpoint()) == Some(local) && sock(t.remote_endpoint()) == Some(remote)
            }
            #[allow(unreachable_patterns)]
            _ => false,
        })
    }

    /// Add a socket listening on port 80 after every other socket.
    ///
    /// smoltcp hands a segment to the first socket in slot order that
    /// accepts it, and a listener accepts any SYN: one placed before a
    /// half-open connection would steal that connection's retransmitted
    /// SYN. Listeners are consumed in slot order, so adding each new one
    /// last keeps every connection ahead of every listener (as Linux looks
    /// up established sockets before listeners). Holes left by removed
    /// sockets are plugged with closed placeholders while the listener is
    /// placed, then freed.
    fn add_listener(&mut self) {
        let mut plugs = Vec::new();
        loop {
            let h = self.sockets.add(tcp::Socket::new(
                tcp::SocketBuffer::new(Vec::new()),
                tcp::SocketBuffer::new(Vec::new()),
            ));
            if self.sockets.iter().all(|(other, _)| other <= h) {
                self.sockets.remove(h);
                break;
            }
            plugs.push(h);
        }
        let mut sock = new_socket();
        sock.listen(BACKEND_PORT).expect("listen");
        self.listeners.push(self.sockets.add(sock));
        for h in plugs {
            self.sockets.remove(h);
        }
    }
}

/// A socket with 64 KiB buffers that acknowledges at once: a delayed ACK
/// would still be pending when a TIME_WAIT socket is discarded.
fn new_socket() -> tcp::Socket<'static> {
    let mut sock = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    );
    sock.set_ack_delay(None);
    sock
}

/// A smoltcp endpoint of `A`'s family as a std socket address.
fn sock_of<A: Plan>(ep: IpEndpoint) -> A::Sock {
    let ip = A::from_smol(ep.addr).unwrap_or_else(|| panic!("{ep} is not an {} endpoint", A::NAME));
    A::sock(ip, ep.port)
}

/// Which side of the engine a hop is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Between the engine and the clients.
    Clients,
    /// Between the engine and the backends.
    Backends,
}

/// The whole test network. See the module docs.
pub struct Net<A: Plan = Ipv4Addr> {
    /// The engine under test.
    pub engine: Engine,
    /// The router's links.
    pub wire: Wire,
    hosts: Vec<Host<A>>,
    streams: Vec<Stream<A>>,
    nat_addrs: Vec<A>,
    /// The MTU of the hop on each side ([`Net::mtu_hop`]): clients, backends.
    hop_mtu: [Option<usize>; 2],
    /// Hosts act on "packet too big" as Linux does (see the module docs).
    /// Off by default: smoltcp itself ignores it.
    pub pmtu_discovery: bool,
    /// The "packet too big" errors the hops sent, in order.
    pub too_big: Vec<Vec<u8>>,
    /// The hosts whose MTU a "packet too big" lowered: (host, new MTU, time).
    pub pmtu_changes: Vec<(A, usize, u64)>,
    now: u64,
    serve: Serve,
    /// Keep TIME_WAIT sockets until smoltcp closes them (so a late FIN is
    /// answered properly) instead of discarding them at once. Needed on a
    /// lossy wire; costs polling time with many connections.
    pub keep_time_wait: bool,
    /// Packets addressed to nobody.
    pub unroutable: Vec<Vec<u8>>,
    /// Packets the engine dropped, with the reason and the time.
    pub drops: Vec<(u64, DropReason, Vec<u8>)>,
    /// Virtual time (ms) the engine last processed a packet.
    pub last_engine_packet: u64,
}

impl Net<Ipv4Addr> {
    /// Build the IPv4 network around an engine with configuration `cfg`
    /// (see [`Net::build`]).
    pub fn new(cfg: EngineConfig) -> Self {
        Self::build(cfg)
    }

    /// Return the pattern backend `i` sends in [`Serve::Stream`] mode
    /// (whatever the family: [`backend_pattern`]).
    pub fn backend_pattern(i: usize, len: usize) -> Vec<u8> {
        backend_pattern(i, len)
    }
}

/// Return the pattern backend `i` sends in [`Serve::Stream`] mode.
pub fn backend_pattern(i: usize, len: usize) -> Vec<u8> {
    pattern(0xb0 + i as u64, len)
}

/// The IPv6 network.
pub type Net6 = Net<Ipv6Addr>;

impl<A: Plan> Net<A> {
    /// Build the network of `A`'s family around an engine with
    /// configuration `cfg`: four clients and four backends (whether the
    /// configuration uses them or not), each backend answering with
    /// [`Serve::Greet`]. The engine owns every VIP and SNAT address of
    /// `A`'s family in `cfg`.
    pub fn build(cfg: EngineConfig) -> Self {
        let mut nat_addrs = Vec::new();
        for s in &cfg.services {
            nat_addrs.extend(A::from_ip(s.vip.ip()));
            nat_addrs.extend(s.snat.iter().filter_map(|&a| A::from_ip(a)));
        }
        let seed = cfg.seed;
        let engine = Engine::new(cfg).expect("valid engine configuration");
        let mut hosts: Vec<Host<A>> = A::CLIENTS
            .iter()
            .map(|&a| Host::new(a, None, seed))
            .collect();
        hosts.extend(
            A::BACKENDS
                .iter()
                .enumerate()
                .map(|(i, &a)| Host::new(a, Some(i), seed)),
        );
        Net {
            engine,
            wire: Wire::new(seed),
            hosts,
            streams: Vec::new(),
            nat_addrs,
            hop_mtu: [None; 2],
            pmtu_discovery: false,
            too_big: Vec::new(),
            pmtu_changes: Vec::new(),
            now: 0,
            serve: Serve::Greet,
            keep_time_wait: false,
            unroutable: Vec::new(),
            drops: Vec::new(),
            last_engine_packet: 0,
        }
    }

    /// Make the backends answer new connections this way.
    pub fn serve(&mut self, serve: Serve) {
        self.serve = serve;
    }

    /// Return the virtual time.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.now)
    }

    /// Put a router with this MTU between the engine and `side`: what the
    /// engine sends that way and does not fit is lost and answered with
    /// "packet too big" (see the module docs).
    pub fn mtu_hop(&mut self, side: Side, mtu: usize) {
        self.hop_mtu[side as usize] = Some(mtu);
    }

    /// Return the MTU of `host`'s device (1500 until a "packet too big"
    /// lowers it, with [`Net::pmtu_discovery`] on).
    pub fn host_mtu(&self, host: A) -> usize {
        self.hosts
            .iter()
            .find(|h| h.addr == host)
            .expect("a host")
            .dev
            .mtu
    }

    /// Return a stream.
    pub fn stream(&self, id: StreamId) -> &Stream<A> {
        &self.streams[id.0]
    }

    /// Return the streams backend `i` accepted, in order.
    pub fn accepted(&self, i: usize) -> impl Iterator<Item = &Stream<A>> {
        let host = A::CLIENTS.len() + i;
        self.streams
            .iter()
            .filter(move |s| s.server && s.host == host)
    }

    /// Open a connection from client `client` (an index into [`CLIENTS`]),
    /// source port `port`, to `VIP:80`, sending `data` and closing as `close` says.
    pub fn connect(&mut self, client: usize, port: u16, data: Vec<u8>, close: Close) -> StreamId {
        self.connect_to(client, port, vip_of::<A>(), data, close)
    }

    /// Like [`Net::connect`] to any address and port.
    pub fn connect_to(
        &mut self,
        client: usize,
        port: u16,
        to: A::Sock,
        data: Vec<u8>,
        close: Close,
    ) -> StreamId {
        let host = &mut self.hosts[client];
        let mut sock = new_socket();
        let to_ip = A::sock_ip(to);
        sock.connect(host.iface.context(), (to_ip.smol(), to.into().port()), port)
            .expect("connect");
        let handle = host.sockets.add(sock);
        let id = self.streams.len();
        host.active.push(id);
        self.streams.push(Stream {
            host: client,
            server: false,
            handle: Some(handle),
            local: A::sock(host.addr, port),
            remote: to,
            to_send: data,
            sent: 0,
            received: Vec::new(),
            close,
            close_called: false,
            respond: false,
            established: false,
            peer_fin: false,
            state: tcp::State::SynSent,
            outcome: Outcome::Open,
            opened_at: self.now,
            ended_at: None,
        });
        StreamId(id)
    }

    /// Queue more bytes for a stream to send (on either end), after what it
    /// already meant to send: traffic on a connection that is already open.
    pub fn send(&mut self, id: StreamId, data: &[u8]) {
        let s = &mut self.streams[id.0];
        assert!(
            !s.close_called,
            "{} has already closed its sending half",
            s.local
        );
        s.to_send.extend_from_slice(data);
    }

    /// Return the backend end of client stream `id`: the accepted stream whose
    /// peer is the client's flow as the backend sees it (the SNAT address and
    /// port of the flow's REPLY tuple), the latest if the port was reused.
    /// `None` if the engine tracks no flow for
    /// the client or no backend accepted it.
    pub fn server_end(&self, id: StreamId) -> Option<StreamId> {
        let client = self.stream(id).local;
        let reply = self
            .engine
            .flows_of::<A>()
            .into_iter()
            .find(|f| A::ep(f.original.src) == client)?
            .reply;
        self.streams
            .iter()
            .rposition(|s| {
                s.server
                    && s.local == A::ep(reply.src)
                    && s.remote == A::ep(reply.dst)
                    && s.outcome != Outcome::Aborted
            })
            .map(StreamId)
    }

    /// Close the sending half of a stream (a FIN once its data is out).
    pub fn close(&mut self, id: StreamId) {
        let s = &mut self.streams[id.0];
        s.close = Close::AfterSend;
        if let Some(h) = s.handle {
            self.hosts[s.host].sockets.get_mut::<tcp::Socket>(h).close();
            s.close_called = true;
        }
    }

    /// Abort a stream: its socket sends a RST and closes.
    pub fn abort(&mut self, id: StreamId) {
        let s = &self.streams[id.0];
        if let Some(h) = s.handle {
            self.hosts[s.host].sockets.get_mut::<tcp::Socket>(h).abort();
        }
    }

    /// Hand a packet to the engine as if it had arrived from the wire now
    /// (an ICMP error from a hop, a hand-crafted segment); forward the
    /// engine's output like any other. Returns the verdict and the emitted
    /// packet, which must be valid (checked with smoltcp, else a panic).
    pub fn inject(&mut self, mut pkt: Vec<u8>) -> (Verdict, Option<Vec<u8>>) {
        let verdict = self.engine.handle_packet(&mut pkt, self.now());
        self.last_engine_packet = self.now;
        match verdict {
            Verdict::Forward { len } | Verdict::Respond { len } => {
                pkt.truncate(len);
                if let Err(e) = check::valid::<A>(&pkt) {
                    panic!("engine emitted an invalid packet: {e}");
                }
                self.wire.send(Leg::Nat, pkt.clone());
                (verdict, Some(pkt))
            }
            Verdict::Drop(reason) => {
                self.drops.push((self.now, reason, pkt));
                (verdict, None)
            }
        }
    }

    /// Deliver packets and let the hosts react until nothing moves at the
    /// current instant.
    pub fn pump(&mut self) {
        for _ in 0..1_000_000 {
            let mut moved = false;
            for h in 0..self.hosts.len() {
                self.poll_host(h);
                while let Some(p) = self.hosts[h].dev.tx.pop_front() {
                    self.wire.send(Leg::Host, p);
                }
            }
            while let Some((leg, pkt)) = self.wire.pop() {
                moved = true;
                self.route(leg, pkt);
            }
            if !moved && !self.wire.flush() {
                return;
            }
        }
        panic!("the network never settled at t={} ms", self.now);
    }

    fn route(&mut self, leg: Leg, pkt: Vec<u8>) {
        let version_ok = pkt.first().is_some_and(|b| b >> 4 == A::VERSION);
        let Some((src, dst)) = A::addrs(&pkt).filter(|_| version_ok) else {
            return self.unroutable.push(pkt);
        };
        // The engine's own output never loops back into it.
        if leg != Leg::Nat && self.nat_addrs.contains(&dst) {
            let _ = self.inject(pkt);
        } else if let Some(h) = self.hosts.iter().position(|h| h.addr == dst) {
            if leg == Leg::Nat && self.too_big_for_hop(h, src, &pkt) {
                return;
            }
            if self.pmtu_discovery {
                self.path_mtu(h, &pkt);
            }
            self.hosts[h].dev.rx.push_back(pkt);
        } else {
            self.unroutable.push(pkt);
        }
    }

    /// If a hop with a smaller MTU sits between the engine and host `h` and
    /// `pkt` does not fit, lose it and send "packet too big" to its source
    /// `src` from the hop (through the wire, like any packet): return true.
    fn too_big_for_hop(&mut self, h: usize, src: A, pkt: &[u8]) -> bool {
        let (side, hop) = if h < A::CLIENTS.len() {
            (Side::Clients, A::CLIENT_HOP)
        } else {
            (Side::Backends, A::BACKEND_HOP)
        };
        match self.hop_mtu[side as usize] {
            Some(mtu) if pkt.len() > mtu => {
                let err = crate::craft::too_big(hop, src, mtu as u16, pkt);
                self.too_big.push(err.clone());
                self.wire.send(Leg::Host, err);
                true
            }
            _ => false,
        }
    }

    /// Play host `h`'s path MTU cache: a "packet too big" (ICMPv6 type 2,
    /// or ICMP "fragmentation needed") that verifies and quotes one of the
    /// host's connections lowers its MTU (see the module docs).
    fn path_mtu(&mut self, h: usize, pkt: &[u8]) {
        let Ok(s) = check::valid::<A>(pkt) else {
            return;
        };
        let announced = match (A::VERSION, s.icmp) {
            (6, Some((2, 0))) | (4, Some((3, 4))) => {
                let at = s.header_len + 4;
                let m = &pkt[at..at + 4];
                match A::VERSION {
                    6 => u32::from_be_bytes([m[0], m[1], m[2], m[3]]) as usize,
                    _ => usize::from(u16::from_be_bytes([m[2], m[3]])),
                }
            }
            _ => return,
        };
        // The quote: an IP header of the family (IPv6: no extension headers
        // here, the hosts send none) and at least the TCP ports.
        let quote = &pkt[s.header_len + 8..];
        let Some((qsrc, qdst)) = A::addrs(quote) else {
            return;
        };
        let tcp_at = match A::VERSION {
            6 => 40,
            _ => usize::from(quote[0] & 0x0f) * 4,
        };
        let Some(ports) = quote.get(tcp_at..tcp_at + 4) else {
            return;
        };
        let local = A::sock(qsrc, u16::from_be_bytes([ports[0], ports[1]])).into();
        let remote = A::sock(qdst, u16::from_be_bytes([ports[2], ports[3]])).into();
        let host = &mut self.hosts[h];
        if qsrc != host.addr || !host.has_connection(local, remote) {
            return;
        }
        let now = Instant::from_millis(self.now as i64);
        if host.lower_mtu(announced, now) {
            self.pmtu_changes.push((host.addr, announced, self.now));
        }
    }

    fn poll_host(&mut self, h: usize) {
        let now = Instant::from_millis(self.now as i64);
        let host = &mut self.hosts[h];
        host.iface.poll(now, &mut host.dev, &mut host.sockets);
        self.accept(h);
        for i in self.hosts[h].active.clone() {
            self.drive(i);
        }
        let host = &mut self.hosts[h];
        host.iface.poll(now, &mut host.dev, &mut host.sockets);
    }

    /// Turn listeners that left LISTEN into server streams; keep two listening.
    fn accept(&mut self, h: usize) {
        let host = &mut self.hosts[h];
        let Some(b) = host.backend else { return };
        let taken: Vec<SocketHandle> = host
            .listeners
            .iter()
            .copied()
            .filter(|&l| !host.sockets.get_mut::<tcp::Socket>(l).is_listening())
            .collect();
        for handle in taken {
            let host = &mut self.hosts[h];
            host.listeners.retain(|&l| l != handle);
            host.add_listener();
            let sock = host.sockets.get_mut::<tcp::Socket>(handle);
            let (to_send, close, respond) = match self.serve {
                Serve::Greet => (greeting(b), Close::AfterSend, false),
                Serve::GreetThenWait => (greeting(b), Close::AfterPeer, false),
                Serve::Stream(n) => (backend_pattern(b, n), Close::AfterSend, true),
            };
            let id = self.streams.len();
            host.active.push(id);
            self.streams.push(Stream {
                host: h,
                server: true,
                handle: Some(handle),
                local: sock
                    .local_endpoint()
                    .map_or(A::sock(host.addr, BACKEND_PORT), sock_of::<A>),
                remote: sock
                    .remote_endpoint()
                    .map_or(A::sock(A::UNSPECIFIED, 0), sock_of::<A>),
                to_send,
                sent: 0,
                received: Vec::new(),
                close,
                close_called: false,
                respond,
                established: false,
                peer_fin: false,
                state: sock.state(),
                outcome: Outcome::Open,
                opened_at: self.now,
                ended_at: None,
            });
        }
    }

    /// Move data for one stream and record how it progresses.
    fn drive(&mut self, i: usize) {
        use tcp::State::*;
        let s = &mut self.streams[i];
        let Some(handle) = s.handle else { return };
        let host = &mut self.hosts[s.host];
        let sock = host.sockets.get_mut::<tcp::Socket>(handle);
        let mut state = sock.state();
        if state == Listen {
            // A half-open accept was reset and the socket went back to
            // listening: it is a listener again, this stream never existed.
            s.handle = None;
            s.outcome = Outcome::Aborted;
            s.ended_at = Some(self.now);
            host.active.retain(|&a| a != i);
            host.listeners.push(handle);
            return;
        }
        if matches!(
            state,
            Established | FinWait1 | FinWait2 | CloseWait | Closing | LastAck | TimeWait
        ) {
            s.established = true;
        }
        if matches!(state, CloseWait | Closing | LastAck | TimeWait) {
            s.peer_fin = true;
        }
        while sock.can_recv() {
            let got = sock
                .recv(|buf| {
                    s.received.extend_from_slice(buf);
                    (buf.len(), buf.len())
                })
                .expect("recv");
            if got == 0 {
                break;
            }
        }
        if sock.can_send() && s.sent < s.to_send.len() && (s.peer_fin || !s.respond) {
            s.sent += sock.send_slice(&s.to_send[s.sent..]).expect("send");
        }
        let may_close = match s.close {
            Close::AfterSend => s.established,
            Close::AfterPeer => s.peer_fin,
            Close::Manual => false,
        };
        // Close only once every byte is acknowledged, so the FIN travels
        // alone. smoltcp 0.14 discards a FIN that arrives behind a hole in
        // the data, and if the sender's only unacknowledged byte is then
        // that FIN, three duplicate ACKs send it down a fast-retransmit path
        // that finds its transmit buffer empty and disarms the timer: the
        // FIN is never resent and the connection hangs in FIN_WAIT_1 /
        // CLOSING (seen on the 5%-impaired wire). Endpoint behaviour, not NAT.
        let drained = sock.send_queue() == 0;
        if may_close && s.sent_all() && drained && !s.close_called {
            sock.close();
            s.close_called = true;
            state = sock.state();
        }
        s.state = state;
        let finished = state == Closed || state == TimeWait;
        if finished && s.outcome == Outcome::Open {
            s.outcome = if s.peer_fin && s.established && s.sent_all() && s.close_called {
                Outcome::Done
            } else {
                Outcome::Aborted
            };
            s.ended_at = Some(self.now);
        }
        if state == Closed || (state == TimeWait && !self.keep_time_wait) {
            host.sockets.remove(handle);
            s.handle = None;
            host.active.retain(|&a| a != i);
        }
    }

    /// Move the clock to `t` (not backwards), then expire due flows as the
    /// datapath would.
    pub fn advance_to(&mut self, t: Timestamp) {
        assert!(t.as_millis() >= self.now, "time runs forwards");
        self.now = t.as_millis();
        while self.engine.handle_timeout(self.now()) {}
    }

    /// Return the next time something is scheduled: a smoltcp timer or a flow expiry.
    fn next_event(&mut self) -> Option<u64> {
        let now = Instant::from_millis(self.now as i64);
        let hosts = self
            .hosts
            .iter_mut()
            .filter_map(|h| h.iface.poll_at(now, &h.sockets))
            .map(|t| t.total_millis().max(0) as u64);
        let engine = self.engine.poll_timeout().map(|t| t.as_millis());
        hosts.chain(engine).min()
    }

    /// Run the network on virtual time until `done` holds, for at most
    /// `limit`. Returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = self.now + limit.as_millis() as u64;
        loop {
            self.pump();
            if done(self) {
                return true;
            }
            if self.now >= deadline {
                return false;
            }
            let next = self
                .next_event()
                .unwrap_or(deadline)
                .clamp(self.now + 1, deadline);
            self.advance_to(Timestamp::from_millis(next));
        }
    }

    /// Run for `d` of virtual time, whatever happens.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    /// Run until every stream given has an outcome; panics after `limit`.
    pub fn finish(&mut self, ids: &[StreamId], limit: Duration) {
        let ok = self.run_until(limit, |n| {
            ids.iter().all(|&i| n.stream(i).outcome != Outcome::Open)
        });
        assert!(ok, "{}", self.report("streams still open", ids));
    }

    /// Describe the streams and the engine for a failure message.
    pub fn report(&self, what: &str, ids: &[StreamId]) -> String {
        let mut out = format!(
            "{what} at t={} ms\n  engine: {}\n",
            self.now,
            self.engine.stats()
        );
        for &id in ids {
            let s = self.stream(id);
            out += &format!(
                "  {} -> {}: {:?} {:?} sent {}/{} received {}\n",
                s.local,
                s.remote,
                s.outcome,
                s.state,
                s.sent,
                s.to_send.len(),
                s.received.len()
            );
        }
        for s in self.streams.iter().filter(|s| s.server) {
            out += &format!(
                "  backend {} <- {}: {:?} {:?} sent {}/{} received {}\n",
                s.local,
                s.remote,
                s.outcome,
                s.state,
                s.sent,
                s.to_send.len(),
                s.received.len()
            );
        }
        for f in self.engine.flows_of::<A>() {
            out += &format!("  flow {} / {} {}\n", f.original, f.reply, f.state);
        }
        for (t, r, p) in self.drops.iter().rev().take(10) {
            out += &format!("  drop at {t} ms: {r} {}\n", check::describe(p));
        }
        out
    }
}
