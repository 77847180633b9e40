//! The conntrack tuple: what identifies one direction of a TCP flow.
//!
//! Netfilter describes every connection by two tuples. The ORIGINAL tuple is
//! the first packet as the client sent it (`C:cp -> VIP:vport`); the REPLY
//! tuple is what an answer looks like *after* NAT, as the backend sends it
//! (`B:bport -> S:sport`, with `S` the MASQUERADE address). A packet belongs to
//! a flow when its own `(src, dst)` equals one of the two; which one tells its
//! direction. tunlb tracks TCP only, so the protocol is implicit.
//!
//! # Two families, one logic
//! A tuple is generic over its address type, [`Ipv4Addr`] or [`Ipv6Addr`]
//! (the [`IpAddress`] trait), as conntrack keeps `l3num` in the tuple: the
//! engine, the table and the port allocator are written once and
//! instantiated per family. Each family has its own table, so an IPv4 flow
//! stays as small as it was before IPv6 existed (a [`Tuple<Ipv4Addr>`] is 12
//! bytes, a [`Tuple<Ipv6Addr>`] 36).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The multiplier of [`spread`] (2^32 divided by the golden ratio).
pub const SPREAD_MULTIPLIER: u32 = 0x9e37_79b1;

/// A flow's spread value, 0..65536: a multiplicative hash of the larger of
/// its two ports (the client's, as a rule: servers listen on low ports),
/// so the same for both directions of a flow whose port MASQUERADE kept
/// (its usual case), and the same for every packet of one direction.
///
/// Two places spread flows by it and must agree: the packet datapath's
/// fanout program computes it in the kernel and sends each packet to
/// thread `spread % threads`; the flow table keeps each entry in shard
/// `spread % shards`. With a thread count that divides the shard count,
/// each thread then locks only shards of its own.
pub fn spread(sport: u16, dport: u16) -> u32 {
    u32::from(sport.max(dport)).wrapping_mul(SPREAD_MULTIPLIER) >> 16
}

/// An IP address type the engine translates: [`Ipv4Addr`] or [`Ipv6Addr`].
///
/// What differs between the families is here: how wide an address is,
/// where it sits in the IP header, how it is hashed; everything else is
/// written once.
pub trait IpAddress:
    Copy + Eq + Ord + Hash + fmt::Debug + fmt::Display + Send + Sync + Into<IpAddr> + 'static
{
    /// The IP version: 4 or 6.
    const VERSION: u8;
    /// The address width in bytes: 4 or 16.
    const LEN: usize;
    /// The unspecified address (`0.0.0.0`, `::`).
    const UNSPECIFIED: Self;

    /// Read an address from the first [`IpAddress::LEN`] bytes of `b`
    /// (network order). Panics if `b` is shorter: callers read from a
    /// checked view.
    fn read(b: &[u8]) -> Self;

    /// Return the address in network order.
    fn octets(self) -> Self::Octets;

    /// The array [`IpAddress::octets`] returns.
    type Octets: AsRef<[u8]> + AsMut<[u8]> + Copy + Default;

    /// Return the address of `ip` if it is of this family.
    fn from_ip(ip: IpAddr) -> Option<Self>;

    /// Feed the address to a hasher in one or two word writes (the flow
    /// table hashes every packet's tuple).
    fn hash_words<H: Hasher>(self, other: Self, ports: u32, state: &mut H);

    /// The sum of the address's 16-bit words (network order), not folded:
    /// what the address adds to a checksum's pseudo-header.
    fn word_sum(self) -> u64;

    /// The number of 16-bit words in an address: 2 or 8.
    const WORDS: u64 = Self::LEN as u64 / 2;
}

impl IpAddress for Ipv4Addr {
    const VERSION: u8 = 4;
    const LEN: usize = 4;
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;
    type Octets = [u8; 4];

    #[inline(always)]
    fn read(b: &[u8]) -> Self {
        let a: [u8; 4] = b[..4].try_into().unwrap_or_default();
        Ipv4Addr::from(a)
    }

    #[inline(always)]
    fn word_sum(self) -> u64 {
        let bits = self.to_bits();
        u64::from(bits >> 16) + u64::from(bits & 0xffff)
    }

    #[inline(always)]
    fn octets(self) -> [u8; 4] {
        Ipv4Addr::octets(&self)
    }

    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }

    /// Two writes of the packed 12 bytes.
    #[inline(always)]
    fn hash_words<H: Hasher>(self, other: Self, ports: u32, state: &mut H) {
        state.write_u64(u64::from(self.to_bits()) << 32 | u64::from(other.to_bits()));
        state.write_u32(ports);
    }
}

impl IpAddress for Ipv6Addr {
    const VERSION: u8 = 6;
    const LEN: usize = 16;
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;
    type Octets = [u8; 16];

    #[inline(always)]
    fn read(b: &[u8]) -> Self {
        let a: [u8; 16] = b[..16].try_into().unwrap_or_default();
        Ipv6Addr::from(a)
    }

    #[inline(always)]
    fn word_sum(self) -> u64 {
        self.segments().iter().map(|&w| u64::from(w)).sum()
    }

    #[inline(always)]
    fn octets(self) -> [u8; 16] {
        Ipv6Addr::octets(&self)
    }

    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }

    /// Five writes of the packed 36 bytes.
    #[inline(always)]
    fn hash_words<H: Hasher>(self, other: Self, ports: u32, state: &mut H) {
        state.write_u128(self.to_bits());
        state.write_u128(other.to_bits());
        state.write_u32(ports);
    }
}

/// An address and a TCP port of one family: [`SocketAddrV4`]'s shape for
/// both, without the flow label and scope id a [`SocketAddrV6`] carries
/// (which a tuple never uses and a flow should not pay for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint<A> {
    ip: A,
    port: u16,
}

impl<A> Endpoint<A> {
    /// Build an endpoint.
    pub const fn new(ip: A, port: u16) -> Self {
        Endpoint { ip, port }
    }

    /// Return the address (by reference, as [`SocketAddrV4::ip`] does).
    #[inline(always)]
    pub const fn ip(&self) -> &A {
        &self.ip
    }

    /// Return the port.
    #[inline(always)]
    pub const fn port(&self) -> u16 {
        self.port
    }
}

impl<A: Copy + Into<IpAddr>> Endpoint<A> {
    /// Return the endpoint as a standard socket address.
    pub fn to_socket(self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), self.port)
    }

    /// Return the endpoint with its address of either family: what
    /// listings that show both families hold.
    pub fn widen(self) -> Endpoint<IpAddr> {
        Endpoint::new(self.ip.into(), self.port)
    }
}

impl<A: IpAddress> Endpoint<A> {
    /// Return the endpoint of `s` if it is of this family.
    pub fn from_socket(s: SocketAddr) -> Option<Self> {
        Some(Endpoint::new(A::from_ip(s.ip())?, s.port()))
    }
}

impl From<SocketAddrV4> for Endpoint<Ipv4Addr> {
    fn from(s: SocketAddrV4) -> Self {
        Endpoint::new(*s.ip(), s.port())
    }
}

impl From<Endpoint<Ipv4Addr>> for SocketAddrV4 {
    fn from(e: Endpoint<Ipv4Addr>) -> Self {
        SocketAddrV4::new(e.ip, e.port)
    }
}

impl PartialEq<SocketAddrV4> for Endpoint<Ipv4Addr> {
    fn eq(&self, other: &SocketAddrV4) -> bool {
        self.ip == *other.ip() && self.port == other.port()
    }
}

impl PartialEq<Endpoint<Ipv4Addr>> for SocketAddrV4 {
    fn eq(&self, other: &Endpoint<Ipv4Addr>) -> bool {
        other == self
    }
}

impl From<SocketAddrV6> for Endpoint<Ipv6Addr> {
    fn from(s: SocketAddrV6) -> Self {
        Endpoint::new(*s.ip(), s.port())
    }
}

impl<A: Copy + Into<IpAddr>> From<Endpoint<A>> for SocketAddr {
    fn from(e: Endpoint<A>) -> Self {
        e.to_socket()
    }
}

impl<A: Copy + Into<IpAddr>> fmt::Display for Endpoint<A> {
    /// `198.18.0.1:80`, `[2001:2::1]:80`, as [`SocketAddr`] prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_socket(), f)
    }
}

/// One direction of a TCP flow: source and destination address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tuple<A = Ipv4Addr> {
    /// Source address and port.
    pub src: Endpoint<A>,
    /// Destination address and port.
    pub dst: Endpoint<A>,
}

impl<A: Copy> Tuple<A> {
    /// Build a tuple from its four parts.
    pub const fn new(src_ip: A, src_port: u16, dst_ip: A, dst_port: u16) -> Self {
        Tuple {
            src: Endpoint::new(src_ip, src_port),
            dst: Endpoint::new(dst_ip, dst_port),
        }
    }

    /// Return the tuple of a packet travelling the other way (`nf_ct_invert_tuple`).
    pub const fn invert(self) -> Self {
        Tuple {
            src: self.dst,
            dst: self.src,
        }
    }
}

impl<A: Copy + Into<IpAddr>> Tuple<A> {
    /// Return the tuple with addresses of either family (see [`Endpoint::widen`]).
    pub fn widen(self) -> Tuple<IpAddr> {
        Tuple {
            src: self.src.widen(),
            dst: self.dst.widen(),
        }
    }
}

impl<A: IpAddress> Hash for Tuple<A> {
    /// The packed addresses and ports in a few word writes: the flow table
    /// hashes every packet.
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.src.ip.hash_words(
            self.dst.ip,
            u32::from(self.src.port) << 16 | u32::from(self.dst.port),
            state,
        );
    }
}

impl Hash for Tuple<IpAddr> {
    /// Listings of both families key maps by it (not the packet path).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.src.hash(state);
        self.dst.hash(state);
    }
}

impl<A: Copy + Into<IpAddr>> fmt::Display for Tuple<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.src, self.dst)
    }
}

/// Which of its two tuples a packet matched (`enum ip_conntrack_dir`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to backend: the packet matched the ORIGINAL tuple.
    Original = 0,
    /// Backend to client: the packet matched the REPLY tuple.
    Reply = 1,
}

impl Direction {
    /// Return the index of this direction in per-direction arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Original => "ORIGINAL",
            Direction::Reply => "REPLY",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_tuple_costs_what_it_did_before_ipv6() {
        assert_eq!(std::mem::size_of::<Tuple<Ipv4Addr>>(), 12);
        assert_eq!(std::mem::size_of::<Tuple<Ipv6Addr>>(), 36);
    }

    #[test]
    fn endpoints_print_as_socket_addresses() {
        let v4 = Endpoint::new(Ipv4Addr::new(198, 18, 0, 1), 80);
        let v6 = Endpoint::new("2001:2::1".parse::<Ipv6Addr>().unwrap(), 80);
        assert_eq!(v4.to_string(), "198.18.0.1:80");
        assert_eq!(v6.to_string(), "[2001:2::1]:80");
        assert_eq!(v6.to_string(), v6.to_socket().to_string());
        assert_eq!(Endpoint::<Ipv6Addr>::from_socket(v4.to_socket()), None);
    }
}
