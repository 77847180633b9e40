//! Packet I/O: where IP packets come from and go to.
//!
//! The datapath reads and writes whole IP packets (IPv4 and IPv6) through [`PacketIo`] and
//! knows nothing else of the device. [`tun::TunIo`] is the TUN of the `tun`
//! crate; [`memory::MemoryIo`] is an in-memory pair of queues for tests and
//! benches; [`mqtun::MqTun`] is a multi-queue TUN with TCP offloads, through
//! a small ioctl wrapper (`io::sys`, the crate's only `unsafe`);
//! [`packet::AfPacket`] is the raw-socket datapath: packet sockets with
//! receive rings on the host's Ethernet interfaces. The engine is the same
//! for all.

pub mod memory;
pub mod mqtun;
pub mod netlink;
pub mod packet;
pub(crate) mod sys;
pub mod tun;
pub mod vnet;

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use crate::craft::{IcmpError, RouterError};
use crate::nat::L4Checksum;

/// Where a received packet sits in the buffer, and what the device said
/// about its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Offset of the IP packet (after any device header, e.g. virtio-net).
    pub start: usize,
    /// Length of the IP packet.
    pub len: usize,
    /// Whether the TCP checksum is complete or partial (offload).
    pub l4: L4Checksum,
    /// Whether this is a TCP super-packet the kernel segments later (GSO).
    pub gso: bool,
}

impl Frame {
    /// A packet at the start of the buffer with a complete checksum: what a
    /// device without a header (the `tun` crate, memory) hands over.
    pub const fn plain(len: usize) -> Self {
        Frame {
            start: 0,
            len,
            l4: L4Checksum::Complete,
            gso: false,
        }
    }
}

/// Why a device could not deliver a packet, when a router would tell the
/// packet's source (RFC 1812 4.3.2: an ICMP "destination unreachable";
/// RFC 4443 for IPv6). A
/// device that hands packets to the kernel's forwarding (the TUN) leaves
/// that to the kernel; one that sends them itself (the packet datapath)
/// says so, and the datapath answers for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsent {
    /// The address the answer comes from: the host's address of the
    /// packet's family on the interface the packet arrived on.
    pub from: IpAddr,
    /// Why.
    pub why: Unreachable,
}

/// The reasons of [`Unsent`], as ICMP "destination unreachable" codes
/// (and their ICMPv6 twins, [`Unreachable::icmpv6`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// No route to the destination's network (code 0).
    Net,
    /// An `unreachable` route (code 1, "host unreachable"; ICMPv6: "no
    /// route", as Linux answers for such a route).
    Host,
    /// The next hop does not answer ARP or neighbour discovery (code 1,
    /// "host unreachable"; ICMPv6: "address unreachable").
    Neighbour,
    /// A `prohibit` route (code 13, "communication administratively
    /// prohibited").
    Prohibited,
    /// Larger than the egress MTU with "don't fragment" set (code 4,
    /// "fragmentation needed", with the MTU).
    TooBig {
        /// The egress MTU.
        mtu: u16,
    },
}

impl Unreachable {
    /// Return the error a router sends for it, in both families.
    pub fn error(self) -> RouterError {
        let (code, mtu) = self.code_and_mtu();
        RouterError {
            v4: (IcmpError::UNREACHABLE, code, mtu),
            v6: self.icmpv6(),
        }
    }

    /// Return the ICMP code and the "next-hop MTU" (RFC 1191; zero but
    /// for [`Unreachable::TooBig`]).
    pub fn code_and_mtu(self) -> (u8, u16) {
        match self {
            Unreachable::Net => (0, 0),
            Unreachable::Host | Unreachable::Neighbour => (1, 0),
            Unreachable::Prohibited => (13, 0),
            Unreachable::TooBig { mtu } => (4, mtu),
        }
    }

    /// Return the ICMPv6 type, code and parameter (RFC 4443): type 1 "no
    /// route" (0), "address unreachable" (3), "administratively
    /// prohibited" (1); type 2 "packet too big" with the MTU.
    pub fn icmpv6(self) -> (u8, u8, u32) {
        match self {
            Unreachable::Net | Unreachable::Host => (1, 0, 0),
            Unreachable::Neighbour => (1, 3, 0),
            Unreachable::Prohibited => (1, 1, 0),
            Unreachable::TooBig { mtu } => (2, 0, u32::from(mtu)),
        }
    }
}

/// A source and sink of IP packets, shared by the datapath's threads. A
/// device may have several queues; thread `i` uses queue `i % queues()`.
pub trait PacketIo: Send + Sync {
    /// Return the number of queues.
    fn queues(&self) -> usize {
        1
    }

    /// Receive one packet from `queue` into `buf`, waiting at most
    /// `timeout`. Returns where it sits, or `Ok(None)` if nothing arrived.
    /// A zero `timeout` is one non-blocking attempt (no poll).
    fn recv(&self, queue: usize, buf: &mut [u8], timeout: Duration) -> io::Result<Option<Frame>>;

    /// Send the `len`-byte packet at `buf[frame.start..]` (the frame of a
    /// received packet, rewritten in place) on `queue`. `replaced` says the
    /// engine built a new packet there (a reset), so no offload metadata of
    /// the received one applies. A device may keep a copy to send with
    /// others, at the latest when [`recv`](Self::recv) on `queue` finds
    /// nothing to hand over (so before the thread waits); an error of that
    /// later send is the device's to count.
    fn send(
        &self,
        queue: usize,
        buf: &mut [u8],
        frame: &Frame,
        len: usize,
        replaced: bool,
    ) -> io::Result<()>;

    /// Whether reading an empty queue costs no system call (a memory-mapped
    /// ring): then a thread may busy-poll after any packet, for a window
    /// that adapts to the traffic (see `datapath`'s module docs). `false`
    /// by default: on a TUN each empty read is a system call.
    fn cheap_to_poll(&self) -> bool {
        false
    }

    /// After a [`send`](Self::send) on `queue` failed: take why the device
    /// could not deliver that packet, when its source is to be told (the
    /// device decides, and limits the rate). `None` by default: devices
    /// that hand packets to the kernel leave that to it.
    fn take_unsent(&self, queue: usize) -> Option<Unsent> {
        let _ = queue;
        None
    }
}
