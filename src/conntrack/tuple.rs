//! The conntrack tuple: what identifies one direction of a TCP flow.
//!
//! Netfilter describes every connection by two tuples. The ORIGINAL tuple is
//! the first packet as the client sent it (`C:cp -> VIP:vport`); the REPLY
//! tuple is what an answer looks like *after* NAT, as the backend sends it
//! (`B:bport -> S:sport`, with `S` the MASQUERADE address). A packet belongs to
//! a flow when its own `(src, dst)` equals one of the two; which one tells its
//! direction. tunlb tracks TCP only, so the protocol is implicit.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};

/// One direction of a TCP flow: source and destination address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tuple {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
}

impl Tuple {
    /// Build a tuple from its four parts.
    pub const fn new(src_ip: Ipv4Addr, src_port: u16, dst_ip: Ipv4Addr, dst_port: u16) -> Self {
        Tuple {
            src: SocketAddrV4::new(src_ip, src_port),
            dst: SocketAddrV4::new(dst_ip, dst_port),
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

impl Hash for Tuple {
    /// Two writes of the packed 12 bytes: the flow table hashes every packet.
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(
            u64::from(self.src.ip().to_bits()) << 32 | u64::from(self.dst.ip().to_bits()),
        );
        state.write_u32(u32::from(self.src.port()) << 16 | u32::from(self.dst.port()));
    }
}

impl fmt::Display for Tuple {
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
