//! Hand-crafted packets, built with pnet_packet's mutable builders.
//!
//! The builders do not validate anything, which is what a test of a parser
//! needs: [`Ip`] and [`Tcp`] describe a packet field by field, including
//! nonsense (an IHL of 15 on a 20-byte header, a data offset of 2, a total
//! length longer than the buffer), and [`Ip::build`] writes exactly that.
//! Checksums are correct unless a test asks otherwise.
//!
//! IPv6 packets start from `tunlb::craft::Segment` (a plain IPv6/TCP
//! segment); [`with_ext`] splices extension headers in front of its TCP
//! header, [`icmp6`] writes ICMPv6 messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

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

/// A sane TCP packet of either family from `src` to `dst` with these flags
/// and numbers and `payload` (built by `tunlb::craft::Segment`, whose
/// checksums are correct).
pub fn segment<S: Into<SocketAddr> + Copy>(
    src: S,
    dst: S,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut s = tunlb::craft::Segment::between(src, dst, flags);
    s.seq = seq;
    s.ack = ack;
    s.payload = payload;
    s.build()
}

/// A sane IPv6/TCP packet with no payload.
pub fn tcp6(src: SocketAddrV6, dst: SocketAddrV6, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    segment(src, dst, flags, seq, ack, &[])
}

/// IPv6 next-header numbers of the extension headers (RFC 8200).
pub mod ext {
    /// Hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// Routing.
    pub const ROUTING: u8 = 43;
    /// Fragment.
    pub const FRAGMENT: u8 = 44;
    /// Destination options.
    pub const DEST_OPTIONS: u8 = 60;
}

/// One IPv6 extension header to splice in: its kind (next-header number),
/// its length field (in 8-byte units beyond the first 8) and how many of
/// its bytes to write (a truncated header writes fewer than the field says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext {
    /// The next-header number that announces it.
    pub kind: u8,
    /// Its length field.
    pub len_field: u8,
    /// Bytes written: `(len_field + 1) * 8` for a whole header.
    pub bytes: usize,
}

impl Ext {
    /// A whole header of `kind` holding `8 * (len_field + 1)` bytes: options
    /// headers carry PadN (type 1) over their option space, a routing
    /// header is type 4 (segment routing) with no segments left, a fragment
    /// header says offset 0, more fragments.
    pub fn new(kind: u8, len_field: u8) -> Self {
        Ext {
            kind,
            len_field,
            bytes: (usize::from(len_field) + 1) * 8,
        }
    }

    /// Write the header (announcing `next`) into `out`.
    fn write(&self, next: u8, out: &mut Vec<u8>) {
        let mut h = vec![0u8; (usize::from(self.len_field) + 1) * 8];
        h[0] = next;
        h[1] = self.len_field;
        match self.kind {
            ext::HOP_BY_HOP | ext::DEST_OPTIONS => {
                // One PadN option over the rest: type 1, length.
                h[2] = 1;
                h[3] = (h.len() - 4) as u8;
            }
            ext::ROUTING => {
                h[2] = 4; // routing type: segment routing
                h[3] = 0; // segments left: the destination is the final one
            }
            ext::FRAGMENT => {
                h[1] = 0;
                h[3] = 1; // offset 0, more fragments
                h[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            }
            _ => {}
        }
        h.truncate(self.bytes);
        out.extend_from_slice(&h);
    }
}

/// Splice `exts` between the 40-byte IPv6 header of `pkt` and its upper
/// layer, in order, fixing the chain of next headers and the payload
/// length. The upper layer's checksum is unchanged: its pseudo-header holds
/// its own length, not the extension headers'.
pub fn with_ext(pkt: &[u8], exts: &[Ext]) -> Vec<u8> {
    let upper = pkt[6];
    let mut out = pkt[..40].to_vec();
    let kinds: Vec<u8> = exts.iter().map(|e| e.kind).chain([upper]).collect();
    out[6] = kinds[0];
    for (i, e) in exts.iter().enumerate() {
        e.write(kinds[i + 1], &mut out);
    }
    out.extend_from_slice(&pkt[40..]);
    let payload = (out.len() - 40) as u16;
    out[4..6].copy_from_slice(&payload.to_be_bytes());
    out
}

/// An IPv6 packet from `src` to `dst` whose header says next header
/// `next` and whose payload is `payload` (nothing checked, nothing fixed).
pub fn ip6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 40];
    out[0] = 0x60;
    out[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    out[6] = next;
    out[7] = 64;
    out[8..24].copy_from_slice(&src.octets());
    out[24..40].copy_from_slice(&dst.octets());
    out.extend_from_slice(payload);
    out
}

/// An ICMPv6 message from `from` to `to` (hop limit 64): type, code, the
/// four bytes after the checksum (the MTU of "packet too big", the pointer
/// of "parameter problem") and the data, with a correct checksum (over the
/// pseudo-header) unless `good_checksum` is false.
pub fn icmp6(
    from: Ipv6Addr,
    to: Ipv6Addr,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    data: &[u8],
    good_checksum: bool,
) -> Vec<u8> {
    let mut body = vec![ty, code, 0, 0];
    body.extend_from_slice(&rest);
    body.extend_from_slice(data);
    let mut pkt = ip6(from, to, 58, &body);
    let mut icmp = smoltcp::wire::Icmpv6Packet::new_unchecked(&mut pkt[40..]);
    icmp.fill_checksum(&from, &to);
    if !good_checksum {
        pkt[42] ^= 0x01;
    }
    pkt
}

/// The "packet too big" a router at `from` sends to `to` about `pkt`
/// announcing `mtu`: for IPv6 an ICMPv6 type 2 quoting as much of `pkt`
/// as fits in 1280 bytes (RFC 4443 2.4), for IPv4 "fragmentation needed"
/// quoting as much as fits in 576 (RFC 1812 4.3.2.3).
pub fn too_big<A: Into<IpAddr>>(from: A, to: A, mtu: u16, pkt: &[u8]) -> Vec<u8> {
    match (from.into(), to.into()) {
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            let quote = &pkt[..pkt.len().min(1280 - 48)];
            icmp6(from, to, 2, 0, u32::from(mtu).to_be_bytes(), quote, true)
        }
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            frag_needed(from, to, mtu, &pkt[..pkt.len().min(576 - 28)])
        }
        (from, to) => panic!("an error from {from} to {to} mixes families"),
    }
}
