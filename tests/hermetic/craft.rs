//! Hand-crafted packets, built with pnet_packet's mutable builders.
//!
//! The builders do not validate anything, which is what a test of a parser
//! needs: [`Ip`] and [`Tcp`] describe a packet field by field, including
//! nonsense (an IHL of 15 on a 20-byte header, a data offset of 2, a total
//! length longer than the buffer), and [`Ip::build`] writes exactly that.
//! Checksums are correct unless a test asks otherwise.

use std::net::{Ipv4Addr, SocketAddrV4};

use pnet_packet::icmp::{self, IcmpCode, IcmpType, MutableIcmpPacket};
use pnet_packet::ip::{IpNextHeaderProtocol, IpNextHeaderProtocols};
use pnet_packet::ipv4::{self, MutableIpv4Packet};
use pnet_packet::tcp::{self, MutableTcpPacket};

/// TCP flag bits.
pub mod flags {
    pub use pnet_packet::tcp::TcpFlags::{ACK, FIN, PSH, RST, SYN, URG};
}

/// An IPv4 header, field by field, with the payload that follows it.
#[derive(Debug, Clone)]
pub struct Ip {
    /// The version nibble (4 for a sane packet).
    pub version: u8,
    /// The IHL nibble, in 32-bit words (5 for a header without options).
    pub ihl: u8,
    /// The total length field; `None` writes the real length.
    pub total_len: Option<u16>,
    /// The three flag bits (2 = don't fragment, 1 = more fragments).
    pub flags: u8,
    /// The fragment offset, in 8-byte units.
    pub frag_offset: u16,
    /// The protocol number.
    pub proto: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Write a correct header checksum (else the correct one plus 1).
    pub good_checksum: bool,
}

impl Ip {
    /// A sane header from `src` to `dst` carrying protocol `proto`.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: IpNextHeaderProtocol) -> Self {
        Ip {
            version: 4,
            ihl: 5,
            total_len: None,
            flags: 2,
            frag_offset: 0,
            proto: proto.0,
            src,
            dst,
            good_checksum: true,
        }
    }

    /// Write the header (and options space, zero-filled, when IHL > 5)
    /// followed by `payload`.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let hlen = (usize::from(self.ihl) * 4).max(20);
        let mut buf = vec![0u8; hlen + payload.len()];
        buf[hlen..].copy_from_slice(payload);
        let total = self.total_len.unwrap_or(buf.len() as u16);
        let mut ip = MutableIpv4Packet::new(&mut buf).expect("at least 20 bytes");
        ip.set_version(self.version);
        ip.set_header_length(self.ihl);
        ip.set_total_length(total);
        ip.set_identification(0x1234);
        ip.set_flags(self.flags);
        ip.set_fragment_offset(self.frag_offset);
        ip.set_ttl(64);
        ip.set_next_level_protocol(IpNextHeaderProtocol(self.proto));
        ip.set_source(self.src);
        ip.set_destination(self.dst);
        let c = ipv4::checksum(&ip.to_immutable());
        ip.set_checksum(if self.good_checksum {
            c
        } else {
            c.wrapping_add(1)
        });
        buf
    }
}

/// A TCP header, field by field, with its payload.
#[derive(Debug, Clone)]
pub struct Tcp {
    /// Source address and port (the address feeds the pseudo-header).
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// The flag byte.
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// The data offset nibble, in 32-bit words (5 without options).
    pub data_offset: u8,
    /// Payload bytes after the header.
    pub payload: Vec<u8>,
    /// Write a correct checksum (else the correct one plus 1).
    pub good_checksum: bool,
}

impl Tcp {
    /// A sane segment from `src` to `dst` with these flags and numbers.
    pub fn new(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, seq: u32, ack: u32) -> Self {
        Tcp {
            src,
            dst,
            flags,
            seq,
            ack,
            data_offset: 5,
            payload: Vec::new(),
            good_checksum: true,
        }
    }

    /// Write the segment: header (options space zero-filled when the data
    /// offset is above 5), then the payload. The checksum covers the bytes
    /// written, with the pseudo-header of `src` and `dst`.
    pub fn segment(&self) -> Vec<u8> {
        let hlen = (usize::from(self.data_offset) * 4).max(20);
        let mut buf = vec![0u8; hlen + self.payload.len()];
        buf[hlen..].copy_from_slice(&self.payload);
        let mut tcp = MutableTcpPacket::new(&mut buf).expect("at least 20 bytes");
        tcp.set_source(self.src.port());
        tcp.set_destination(self.dst.port());
        tcp.set_sequence(self.seq);
        tcp.set_acknowledgement(self.ack);
        tcp.set_data_offset(self.data_offset);
        tcp.set_flags(self.flags);
        tcp.set_window(65535);
        let c = tcp::ipv4_checksum(&tcp.to_immutable(), self.src.ip(), self.dst.ip());
        tcp.set_checksum(if self.good_checksum {
            c
        } else {
            c.wrapping_add(1)
        });
        buf
    }

    /// Write the whole IPv4 packet with a sane header.
    pub fn packet(&self) -> Vec<u8> {
        Ip::new(*self.src.ip(), *self.dst.ip(), IpNextHeaderProtocols::Tcp).build(&self.segment())
    }
}

/// A sane TCP packet from `src` to `dst` with these flags and numbers and no payload.
pub fn tcp(
    src: impl Into<SocketAddrV4>,
    dst: impl Into<SocketAddrV4>,
    flags: u8,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    Tcp::new(src.into(), dst.into(), flags, seq, ack).packet()
}

/// An ICMP message body: type, code, the four "rest of header" bytes (the
/// next-hop MTU for frag-needed) and the data (the quoted packet for errors),
/// with a correct checksum unless `good_checksum` is false.
pub fn icmp_body(ty: u8, code: u8, rest: [u8; 4], data: &[u8], good_checksum: bool) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + data.len()];
    buf[4..8].copy_from_slice(&rest);
    buf[8..].copy_from_slice(data);
    let mut icmp = MutableIcmpPacket::new(&mut buf).expect("at least 8 bytes");
    icmp.set_icmp_type(IcmpType(ty));
    icmp.set_icmp_code(IcmpCode(code));
    let c = icmp::checksum(&icmp.to_immutable());
    icmp.set_checksum(if good_checksum { c } else { c.wrapping_add(1) });
    buf
}

/// An ICMP "fragmentation needed" (type 3 code 4) from `from` to `to`
/// announcing `mtu` and quoting `quote` (the start of the offending packet).
pub fn frag_needed(from: Ipv4Addr, to: Ipv4Addr, mtu: u16, quote: &[u8]) -> Vec<u8> {
    let [hi, lo] = mtu.to_be_bytes();
    let body = icmp_body(3, 4, [0, 0, hi, lo], quote, true);
    Ip::new(from, to, IpNextHeaderProtocols::Icmp).build(&body)
}
