//! Building well-formed IPv4/TCP segments: the resets tunlb sends, and the packets of tests, benches and fuzzing.
//!
//! tunlb never builds forwarded packets (it rewrites them in place). This
//! builds the one packet it writes itself (a reset to a client when every
//! backend is drained, [`crate::nat::syn_to_reset`]) and the client and
//! backend side of tests, benches and fuzzing: a segment with any flags,
//! sequence numbers and payload, with correct checksums, through smoltcp's
//! field setters.

use std::net::SocketAddrV4;

use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket};

/// A TCP segment to build.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// The flag byte (see [`crate::conntrack::tcp::flags`]).
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Payload.
    pub payload: &'a [u8],
}

impl<'a> Segment<'a> {
    /// A segment with these endpoints and flags, sequence numbers 0 and no payload.
    pub fn new(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Segment {
            src,
            dst,
            flags,
            seq: 0,
            ack: 0,
            payload: &[],
        }
    }

    /// Return the segment as an IPv4 packet with valid checksums.
    pub fn build(&self) -> Vec<u8> {
        let mut b = vec![0u8; 40 + self.payload.len()];
        self.emit(&mut b);
        b
    }

    /// Write the segment as an IPv4 packet with valid checksums (a 20-byte
    /// IPv4 header, DF set, TTL 64; a 20-byte TCP header, window 65535, or 0
    /// for a reset, which advertises none) at the start of `buf`, and return
    /// its length.
    ///
    /// # Panics
    /// If `buf` is shorter than 40 bytes plus the payload.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let len = 40 + self.payload.len();
        let buf = &mut buf[..len];
        buf.fill(0);
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(len as u16);
        ip.set_dont_frag(true);
        ip.set_hop_limit(64);
        ip.set_next_header(IpProtocol::Tcp);
        ip.set_src_addr(*self.src.ip());
        ip.set_dst_addr(*self.dst.ip());
        ip.fill_checksum();
        let mut t = TcpPacket::new_unchecked(ip.payload_mut());
        t.set_src_port(self.src.port());
        t.set_dst_port(self.dst.port());
        t.set_seq_number(smoltcp::wire::TcpSeqNumber(self.seq as i32));
        t.set_ack_number(smoltcp::wire::TcpSeqNumber(self.ack as i32));
        t.set_header_len(20);
        let reset = self.flags & crate::conntrack::tcp::flags::RST != 0;
        t.set_window_len(if reset { 0 } else { 65535 });
        t.payload_mut().copy_from_slice(self.payload);
        // Flags last: set_header_len shares the byte pair with the flags.
        let raw = t.into_inner();
        raw[13] = self.flags;
        let mut t = TcpPacket::new_unchecked(raw);
        t.fill_checksum(
            &IpAddress::Ipv4(*self.src.ip()),
            &IpAddress::Ipv4(*self.dst.ip()),
        );
        len
    }
}
