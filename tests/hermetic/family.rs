//! The address plan of each family: where the clients, the backends, the
//! VIP and the hops are, and the little that differs between an IPv4 and an
//! IPv6 packet for the harness (where the addresses sit, how a host routes).
//!
//! ```text
//!              IPv4            IPv6 (RFC 5180's 2001:2::/48)
//!  VIP/SNAT    198.18.0.1      2001:2::1
//!  clients     198.18.1.2-5    2001:2:0:1::2-5
//!  client hop  198.18.1.1      2001:2:0:1::1
//!  backends    198.18.2.3-6    2001:2:0:2::3-6
//!  backend hop 198.18.2.1      2001:2:0:2::1
//! ```
//!
//! The harness ([`crate::net::Net`], [`crate::check`]) is written once,
//! generic over [`Plan`]; a test picks its family with the address type:
//! `Net::new` is IPv4, `Net::<Ipv6Addr>::build` IPv6.

use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use smoltcp::iface::Interface;
use smoltcp::wire::IpAddress;
use tunlb::conntrack::tuple::Endpoint;
use tunlb::engine::Family;

use crate::net;

/// One family's address plan and packet layout.
pub trait Plan: Family {
    /// Its socket address type: [`SocketAddrV4`] or [`SocketAddrV6`].
    type Sock: SockAddr<Self>
        + Copy
        + Eq
        + Hash
        + Ord
        + fmt::Debug
        + fmt::Display
        + Into<SocketAddr>
        + 'static;
    /// "IPv4" or "IPv6", for messages.
    const NAME: &'static str;
    /// The service address (and, by default, the SNAT address).
    const VIP: Self;
    /// The client hosts, in index order.
    const CLIENTS: [Self; 4];
    /// The backend hosts, in index order.
    const BACKENDS: [Self; 4];
    /// A router on the clients' side.
    const CLIENT_HOP: Self;
    /// A router on the backends' side.
    const BACKEND_HOP: Self;
    /// The prefix length of each host's subnet.
    const PREFIX_LEN: u8;

    /// A socket address of this family.
    fn sock(ip: Self, port: u16) -> Self::Sock;
    /// The address of a socket address.
    fn sock_ip(s: Self::Sock) -> Self {
        *s.ip()
    }
    /// The socket address of a tuple's endpoint.
    fn ep(e: Endpoint<Self>) -> Self::Sock {
        Self::sock(*e.ip(), e.port())
    }
    /// The address as smoltcp spells it.
    fn smol(self) -> IpAddress;
    /// The address of a smoltcp endpoint, if it is of this family.
    fn from_smol(a: IpAddress) -> Option<Self>;
    /// The router of a host's subnet (`.1`, `::1`).
    fn gateway(self) -> Self;
    /// Route everything through `gw`.
    fn add_default_route(iface: &mut Interface, gw: Self);
    /// A host's contribution to its stack's random seed.
    fn seed_bits(self) -> u64;
    /// The source and destination addresses of a packet of this family
    /// (`None` if too short to hold them).
    fn addrs(pkt: &[u8]) -> Option<(Self, Self)> {
        let (src, dst) = match Self::VERSION {
            4 => (12, 16),
            _ => (8, 24),
        };
        let end = dst + Self::LEN;
        (pkt.len() >= end).then(|| (Self::read(&pkt[src..]), Self::read(&pkt[dst..])))
    }
}

/// What tests read of a socket address of either family: what
/// [`SocketAddrV4`] and [`SocketAddrV6`] both offer.
pub trait SockAddr<A> {
    /// The address.
    fn ip(&self) -> &A;
    /// The port.
    fn port(&self) -> u16;
}

impl SockAddr<Ipv4Addr> for SocketAddrV4 {
    fn ip(&self) -> &Ipv4Addr {
        SocketAddrV4::ip(self)
    }
    fn port(&self) -> u16 {
        SocketAddrV4::port(self)
    }
}

impl SockAddr<Ipv6Addr> for SocketAddrV6 {
    fn ip(&self) -> &Ipv6Addr {
        SocketAddrV6::ip(self)
    }
    fn port(&self) -> u16 {
        SocketAddrV6::port(self)
    }
}

impl Plan for Ipv4Addr {
    type Sock = SocketAddrV4;
    const NAME: &'static str = "IPv4";
    const VIP: Self = net::VIP;
    const CLIENTS: [Self; 4] = net::CLIENTS;
    const BACKENDS: [Self; 4] = net::BACKENDS;
    const CLIENT_HOP: Self = net::CLIENT_HOP;
    const BACKEND_HOP: Self = net::BACKEND_HOP;
    const PREFIX_LEN: u8 = 24;

    fn sock(ip: Self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(ip, port)
    }
    fn smol(self) -> IpAddress {
        IpAddress::Ipv4(self)
    }
    fn from_smol(a: IpAddress) -> Option<Self> {
        match a {
            IpAddress::Ipv4(a) => Some(a),
            IpAddress::Ipv6(_) => None,
        }
    }
    fn gateway(self) -> Self {
        let [a, b, c, _] = self.octets();
        Ipv4Addr::new(a, b, c, 1)
    }
    fn add_default_route(iface: &mut Interface, gw: Self) {
        iface
            .routes_mut()
            .add_default_ipv4_route(gw)
            .expect("one route");
    }
    fn seed_bits(self) -> u64 {
        u64::from(self.to_bits())
    }
}

/// The IPv6 plan's addresses: 2001:2::/48 (RFC 5180, benchmarking), the
/// subnets `:0:1::/64` (clients) and `:0:2::/64` (backends).
pub mod v6 {
    use std::net::Ipv6Addr;

    /// An address of the plan: `2001:2:0:<subnet>::<host>`.
    const fn at(subnet: u16, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 2, 0, subnet, 0, 0, 0, host)
    }

    /// The service address (and, by default, the SNAT address).
    pub const VIP: Ipv6Addr = at(0, 1);
    /// The client hosts, in index order.
    pub const CLIENTS: [Ipv6Addr; 4] = [at(1, 2), at(1, 3), at(1, 4), at(1, 5)];
    /// The backend hosts, in index order.
    pub const BACKENDS: [Ipv6Addr; 4] = [at(2, 3), at(2, 4), at(2, 5), at(2, 6)];
    /// A router on the clients' side.
    pub const CLIENT_HOP: Ipv6Addr = at(1, 1);
    /// A router on the backends' side, the source of ICMPv6 errors "from a hop".
    pub const BACKEND_HOP: Ipv6Addr = at(2, 1);
}

impl Plan for Ipv6Addr {
    type Sock = SocketAddrV6;
    const NAME: &'static str = "IPv6";
    const VIP: Self = v6::VIP;
    const CLIENTS: [Self; 4] = v6::CLIENTS;
    const BACKENDS: [Self; 4] = v6::BACKENDS;
    const CLIENT_HOP: Self = v6::CLIENT_HOP;
    const BACKEND_HOP: Self = v6::BACKEND_HOP;
    const PREFIX_LEN: u8 = 64;

    fn sock(ip: Self, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(ip, port, 0, 0)
    }
    fn smol(self) -> IpAddress {
        IpAddress::Ipv6(self)
    }
    fn from_smol(a: IpAddress) -> Option<Self> {
        match a {
            IpAddress::Ipv6(a) => Some(a),
            IpAddress::Ipv4(_) => None,
        }
    }
    fn gateway(self) -> Self {
        let s = self.segments();
        Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 1)
    }
    fn add_default_route(iface: &mut Interface, gw: Self) {
        iface
            .routes_mut()
            .add_default_ipv6_route(gw)
            .expect("one route");
    }
    fn seed_bits(self) -> u64 {
        let b = self.to_bits();
        (b >> 64) as u64 ^ b as u64
    }
}

/// The address of `a` as a std [`IpAddr`] (for comparisons with stats).
pub fn ip<A: Plan>(a: A) -> IpAddr {
    a.into()
}
