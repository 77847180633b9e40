//! Packet parsing: the checked read of every byte the engine trusts, as
//! smoltcp's `wire` does it.
//!
//! A packet read from the TUN is untrusted. It enters through
//! [`IpRepr::parse_ipv4`] or [`IpRepr::parse_ipv6`], then [`TcpRepr::parse`]
//! or [`IcmpErrorRepr::parse`] (both generic over the address family);
//! each checks the lengths before reading a field and answers either a small
//! summary of the packet or the [`DropReason`] it is counted under. Once a
//! packet is parsed, the offsets the summary holds are in bounds, so
//! [`crate::nat`] rewrites it by plain indexing.
//!
//! The byte offsets of RFC 791 (IPv4), RFC 8200 (IPv6), RFC 793 (TCP),
//! RFC 792 (ICMP) and RFC 4443 (ICMPv6) live in one place, the `field` module (private to the crate: only
//! [`crate::nat`] reads it besides this module).
//!
//! Every check answers one reason, in this order:
//!
//! | packet | reason |
//! |---|---|
//! | empty | `Truncated` |
//! | version not 4 | `NotIpv4` |
//! | 20 bytes or more, IHL < 5 | `BadHeader` |
//! | shorter than 20 bytes, than its IHL or its total length; total length < IHL | `Truncated` |
//! | header checksum wrong (when verified) | `BadChecksum` |
//! | a fragment (MF set or an offset) | `Fragment` |
//! | TCP: 13 bytes or more, data offset < 5 | `BadHeader` |
//! | TCP: shorter than 20 bytes or than its data offset | `Truncated` |
//! | TCP: no flag class ([`FlagClass::of`]) | `BadFlags` |
//! | TCP: checksum wrong (when verified) | `BadChecksum` |
//! | ICMP: shorter than 8 bytes | `Truncated` |
//! | ICMP: not an error (types 3, 4, 11, 12) | `IcmpNotError` |
//! | ICMP: checksum wrong (when verified) | `BadChecksum` |
//! | ICMP: quote shorter than 20 bytes or not IPv4 | `Truncated` |
//! | ICMP: quoted IHL < 5 | `BadHeader` |
//! | ICMP: quote shorter than its IHL plus 8 bytes | `Truncated` |
//! | ICMP: the quoted packet is not TCP | `IcmpUntracked` |
//!
//! IPv6 ([`IpRepr::parse_ipv6`]) has no header checksum and no IHL; its
//! extension headers (hop-by-hop, routing, destination options) are walked
//! to the upper-layer header:
//!
//! | packet | reason |
//! |---|---|
//! | shorter than 40 bytes or than 40 + its payload length | `Truncated` |
//! | payload length 0 (a jumbogram) | `BadHeader` |
//! | an extension header cut by the payload's end | `Truncated` |
//! | hop-by-hop not first, or more than 8 extension headers | `BadHeader` |
//! | a fragment header | `Fragment` |
//! | ICMPv6: neighbour discovery, MLD, router solicitation (types 130-143) | `Ipv6Control` |
//! | ICMPv6: not an error (types 1-4) | `IcmpNotError` |
//! | ICMPv6: quote shorter than 40 bytes, its extension headers and 8 bytes, or not IPv6 | `Truncated` |
//!
//! then as for IPv4 (TCP checks, `BadChecksum` with the IPv6 pseudo-header).
//!
//! The protocol dispatch (TCP, ICMP or ICMPv6, anything else `NotTcp`) is
//! the engine's, on [`IpRepr::protocol`].

use std::net::Ipv4Addr;

use smoltcp::wire::IpProtocol;

use crate::checksum;
use crate::conntrack::tcp::{flags, FlagClass};
use crate::conntrack::tuple::IpAddress;
use crate::conntrack::window;
use crate::conntrack::Tuple;
use crate::stats::DropReason;

/// The byte offsets of the headers' fields (smoltcp's `field` modules).
pub(crate) mod field {
    /// A run of bytes in a header.
    pub(crate) type Field = core::ops::Range<usize>;

    /// The IPv4 header (RFC 791).
    pub(crate) mod ipv4 {
        use super::Field;
        /// Version (high nibble) and header length in words (low nibble).
        pub(crate) const VER_IHL: usize = 0;
        /// Total length.
        pub(crate) const LENGTH: Field = 2..4;
        /// Flags (high 3 bits) and fragment offset.
        pub(crate) const FLG_OFF: Field = 6..8;
        /// Protocol of the payload.
        pub(crate) const PROTOCOL: usize = 9;
        /// Header checksum.
        pub(crate) const CHECKSUM: Field = 10..12;
        /// Source address.
        pub(crate) const SRC_ADDR: Field = 12..16;
        /// Destination address.
        pub(crate) const DST_ADDR: Field = 16..20;
        /// The length of a header without options.
        pub(crate) const MIN_HEADER_LEN: usize = DST_ADDR.end;
        /// The more-fragments flag and the fragment offset, in [`FLG_OFF`].
        pub(crate) const MF_OR_OFFSET: u16 = 0x3fff;
    }

    /// The IPv6 header (RFC 8200 section 3).
    pub(crate) mod ipv6 {
        use super::Field;
        /// Version (high nibble), traffic class, flow label.
        pub(crate) const VER_TC_FL: usize = 0;
        /// Payload length: what follows the 40-byte header.
        pub(crate) const PAYLOAD_LEN: Field = 4..6;
        /// The type of the header that follows.
        pub(crate) const NEXT_HEADER: usize = 6;
        /// Source address.
        pub(crate) const SRC_ADDR: Field = 8..24;
        /// Destination address.
        pub(crate) const DST_ADDR: Field = 24..40;
        /// The length of the fixed header.
        pub(crate) const HEADER_LEN: usize = DST_ADDR.end;
    }

    /// An IPv6 extension header's first two bytes (RFC 8200 section 4):
    /// hop-by-hop, routing and destination options share them.
    pub(crate) mod ext {
        /// The type of the header that follows.
        pub(crate) const NEXT_HEADER: usize = 0;
        /// The length in 8-byte units, not counting the first 8 bytes.
        pub(crate) const LENGTH: usize = 1;
        /// The length of the shortest extension header.
        pub(crate) const MIN_LEN: usize = 8;
    }

    /// Where a header's addresses are, by IP version.
    pub(crate) const fn addrs(version: u8) -> (Field, Field) {
        if version == 6 {
            (ipv6::SRC_ADDR, ipv6::DST_ADDR)
        } else {
            (ipv4::SRC_ADDR, ipv4::DST_ADDR)
        }
    }

    /// The TCP header (RFC 793).
    pub(crate) mod tcp {
        use super::Field;
        /// Source port.
        pub(crate) const SRC_PORT: Field = 0..2;
        /// Destination port.
        pub(crate) const DST_PORT: Field = 2..4;
        /// Sequence number.
        pub(crate) const SEQ_NUM: Field = 4..8;
        /// Acknowledgment number.
        pub(crate) const ACK_NUM: Field = 8..12;
        /// Data offset in words (high nibble).
        pub(crate) const DATA_OFF: usize = 12;
        /// The flag byte (CWR ... FIN).
        pub(crate) const FLAGS: usize = 13;
        /// Window.
        pub(crate) const WIN_SIZE: Field = 14..16;
        /// Checksum.
        pub(crate) const CHECKSUM: Field = 16..18;
        /// Urgent pointer.
        pub(crate) const URGENT: Field = 18..20;
        /// The length of a header without options.
        pub(crate) const MIN_HEADER_LEN: usize = URGENT.end;

        /// The options of a header `header_len` bytes long.
        pub(crate) const fn options(header_len: usize) -> Field {
            MIN_HEADER_LEN..header_len
        }
    }

    /// The ICMP header (RFC 792), and ICMPv6's, which has the same shape
    /// (RFC 4443 section 2.1).
    pub(crate) mod icmp {
        use super::Field;
        /// Type.
        pub(crate) const TYPE: usize = 0;
        /// Checksum.
        pub(crate) const CHECKSUM: Field = 2..4;
        /// The length of the header; an error's quote follows it.
        pub(crate) const HEADER_LEN: usize = 8;
    }
}

use field::{ext as ext_f, icmp as icmp_f, ipv4 as ip_f, ipv6 as ip6_f, tcp as tcp_f};

/// Read the big-endian `u16` at `f`.
#[inline(always)]
fn read_u16(b: &[u8], f: field::Field) -> u16 {
    u16::from_be_bytes([b[f.start], b[f.start + 1]])
}

/// Read the big-endian `u32` at `f`.
#[inline(always)]
fn read_u32(b: &[u8], f: field::Field) -> u32 {
    u32::from_be_bytes([b[f.start], b[f.start + 1], b[f.start + 2], b[f.start + 3]])
}

/// Read the source and destination addresses of the IP header at the start
/// of `pkt` (of `A`'s family, long enough: checked by the caller).
#[inline(always)]
fn read_addrs<A: IpAddress>(pkt: &[u8]) -> (A, A) {
    let (src, dst) = field::addrs(A::VERSION);
    (A::read(&pkt[src]), A::read(&pkt[dst]))
}

/// ICMP types whose message quotes the offending packet and that tunlb
/// translates: destination unreachable, source quench, time exceeded,
/// parameter problem.
const ICMP_ERRORS: [u8; 4] = [3, 4, 11, 12];

/// ICMPv6 error types (RFC 4443): destination unreachable, packet too big,
/// time exceeded, parameter problem. All quote the offending packet.
const ICMPV6_ERRORS: [u8; 4] = [1, 2, 3, 4];

/// ICMPv6 types a host's own stack sends on any interface, the TUN
/// included: MLD (130-132, 143) and neighbour discovery (133-137: router
/// solicitation and advertisement, neighbour solicitation and
/// advertisement, redirect). Not errors: ignored quietly.
const ICMPV6_CONTROL: std::ops::RangeInclusive<u8> = 130..=143;

/// IPv6 next-header values tunlb walks past: hop-by-hop options, routing,
/// destination options (RFC 8200 section 4.1).
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTIONS: u8 = 60;

/// The most extension headers walked before a packet is refused: RFC 8200
/// recommends at most one of each, plus destination options twice.
const MAX_EXT_HEADERS: usize = 8;

/// Walk the IPv6 extension headers of `pkt` (an IPv6 header of at least 40
/// bytes, whose payload ends at `end <= pkt.len()`): return the offset of
/// the upper-layer header and its protocol number.
fn walk_ipv6(pkt: &[u8], end: usize) -> Result<(usize, u8), DropReason> {
    let mut next = pkt[ip6_f::NEXT_HEADER];
    let mut at = ip6_f::HEADER_LEN;
    for i in 0..=MAX_EXT_HEADERS {
        match next {
            FRAGMENT => return Err(DropReason::Fragment),
            HOP_BY_HOP if i > 0 => return Err(DropReason::BadHeader),
            HOP_BY_HOP | ROUTING | DEST_OPTIONS if i < MAX_EXT_HEADERS => {
                if end < at + ext_f::MIN_LEN {
                    return Err(DropReason::Truncated);
                }
                let len = (usize::from(pkt[at + ext_f::LENGTH]) + 1) * 8;
                if end < at + len {
                    return Err(DropReason::Truncated);
                }
                next = pkt[at + ext_f::NEXT_HEADER];
                at += len;
            }
            HOP_BY_HOP | ROUTING | DEST_OPTIONS => return Err(DropReason::BadHeader),
            upper => return Ok((at, upper)),
        }
    }
    Err(DropReason::BadHeader)
}

/// A checked IP header, either family: the packet holds `total_len` bytes
/// (maybe more, which are not part of it), the upper-layer header starts at
/// `header_len <= total_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRepr {
    /// Where the upper-layer header starts: the IPv4 IHL times 4 (at least
    /// 20), or 40 plus the IPv6 extension headers.
    pub header_len: usize,
    /// The total length in bytes.
    pub total_len: usize,
    /// The protocol of the payload (for IPv6, after the extension headers).
    pub protocol: IpProtocol,
}

impl IpRepr {
    /// Return the IP version of `pkt` (its first nibble), or `None` for an
    /// empty buffer.
    #[inline(always)]
    pub fn version(pkt: &[u8]) -> Option<u8> {
        pkt.first().map(|b| b >> 4)
    }

    /// Check the IPv6 header of `pkt` and walk its extension headers;
    /// refuse fragments and jumbograms.
    #[inline]
    pub fn parse_ipv6(pkt: &[u8]) -> Result<Self, DropReason> {
        match pkt.first() {
            None => return Err(DropReason::Truncated),
            Some(b) if b >> 4 != 6 => return Err(DropReason::NotIp),
            Some(_) => {}
        }
        if pkt.len() < ip6_f::HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        let payload = usize::from(read_u16(pkt, ip6_f::PAYLOAD_LEN));
        if payload == 0 {
            return Err(DropReason::BadHeader);
        }
        let total_len = ip6_f::HEADER_LEN + payload;
        if pkt.len() < total_len {
            return Err(DropReason::Truncated);
        }
        let (header_len, next) = walk_ipv6(pkt, total_len)?;
        Ok(IpRepr {
            header_len,
            total_len,
            protocol: IpProtocol::from(next),
        })
    }

    /// Check the IPv4 header of `pkt` (and its checksum when
    /// `verify_checksum`); refuse fragments.
    #[inline(always)]
    pub fn parse_ipv4(pkt: &[u8], verify_checksum: bool) -> Result<Self, DropReason> {
        match pkt.first() {
            None => return Err(DropReason::Truncated),
            Some(b) if b >> 4 != 4 => return Err(DropReason::NotIp),
            Some(_) => {}
        }
        if pkt.len() < ip_f::MIN_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        let header_len = usize::from(pkt[ip_f::VER_IHL] & 0x0f) * 4;
        if header_len < ip_f::MIN_HEADER_LEN {
            return Err(DropReason::BadHeader);
        }
        let total_len = usize::from(read_u16(pkt, ip_f::LENGTH));
        if pkt.len() < header_len || header_len > total_len || pkt.len() < total_len {
            return Err(DropReason::Truncated);
        }
        if verify_checksum && !checksum::sums_to_ones(&pkt[..header_len]) {
            return Err(DropReason::BadChecksum);
        }
        if read_u16(pkt, ip_f::FLG_OFF) & ip_f::MF_OR_OFFSET != 0 {
            return Err(DropReason::Fragment);
        }
        Ok(IpRepr {
            header_len,
            total_len,
            protocol: IpProtocol::from(pkt[ip_f::PROTOCOL]),
        })
    }
}

/// A checked TCP segment of either family: what conntrack and NAT read of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr<A = Ipv4Addr> {
    /// Its addresses and ports.
    pub tuple: Tuple<A>,
    /// Its flags, classified for the state table.
    pub class: FlagClass,
    /// What the window check reads.
    pub segment: window::Segment,
    /// The IP header length in bytes (IPv6: with its extension headers):
    /// the TCP header's offset.
    pub ip_header_len: usize,
    /// The TCP header length in bytes (data offset times 4).
    pub tcp_header_len: usize,
    /// The packet's length (its IP total length).
    pub len: usize,
}

impl<A: IpAddress> TcpRepr<A> {
    /// Check the TCP segment of `pkt`, whose IP header `ip` of `A`'s family
    /// describes (`ip.protocol` is TCP), and its checksum when
    /// `verify_checksum`.
    #[inline(always)]
    pub fn parse(pkt: &[u8], ip: &IpRepr, verify_checksum: bool) -> Result<Self, DropReason> {
        let pkt = &pkt[..ip.total_len];
        let seg = &pkt[ip.header_len..];
        if seg.len() > tcp_f::DATA_OFF && seg[tcp_f::DATA_OFF] >> 4 < 5 {
            return Err(DropReason::BadHeader);
        }
        if seg.len() < tcp_f::MIN_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        let tcp_header_len = usize::from(seg[tcp_f::DATA_OFF] >> 4) * 4;
        if seg.len() < tcp_header_len {
            return Err(DropReason::Truncated);
        }
        let flag_byte = seg[tcp_f::FLAGS];
        let class = FlagClass::of(flag_byte).ok_or(DropReason::BadFlags)?;
        let (src, dst) = read_addrs::<A>(pkt);
        if verify_checksum && !checksum::verify_tcp(src, dst, seg) {
            return Err(DropReason::BadChecksum);
        }
        let tuple = Tuple::new(
            src,
            read_u16(seg, tcp_f::SRC_PORT),
            dst,
            read_u16(seg, tcp_f::DST_PORT),
        );
        let syn = flag_byte & flags::SYN != 0;
        let fin = flag_byte & flags::FIN != 0;
        let options = &seg[tcp_f::options(tcp_header_len)];
        let segment = window::Segment {
            seq: read_u32(seg, tcp_f::SEQ_NUM),
            ack: read_u32(seg, tcp_f::ACK_NUM),
            len: (seg.len() - tcp_header_len) as u32 + u32::from(syn) + u32::from(fin),
            window: read_u16(seg, tcp_f::WIN_SIZE),
            syn,
            ack_flag: flag_byte & flags::ACK != 0,
            rst: flag_byte & flags::RST != 0,
            options: if options.is_empty() {
                window::Options::default()
            } else {
                window::Options::parse(options, syn)
            },
        };
        Ok(TcpRepr {
            tuple,
            class,
            segment,
            ip_header_len: ip.header_len,
            tcp_header_len,
            len: ip.total_len,
        })
    }
}

/// Where the parts of an ICMP error's quoted packet sit in the outer packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpQuote {
    /// Offset of the ICMP (or ICMPv6) header.
    pub icmp: usize,
    /// Offset of the quoted IP header.
    pub inner_ip: usize,
    /// Offset of the quoted TCP header (at least its ports are quoted).
    pub inner_tcp: usize,
    /// Whether the quote reaches the TCP checksum field.
    pub has_tcp_csum: bool,
}

/// A checked ICMP or ICMPv6 error quoting a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpErrorRepr<A = Ipv4Addr> {
    /// The quoted segment's tuple, as its sender sent it.
    pub quoted: Tuple<A>,
    /// Where the quote's parts are.
    pub quote: IcmpQuote,
    /// The packet's length (its IP total length).
    pub len: usize,
}

impl<A: IpAddress> IcmpErrorRepr<A> {
    /// Check the ICMP (IPv4) or ICMPv6 (IPv6) message of `pkt`, whose IP
    /// header `ip` of `A`'s family describes, and its checksum when
    /// `verify_checksum`: an error whose quote holds an IP header (IPv6:
    /// and its extension headers) and the first 8 bytes of a TCP header
    /// (RFC 792, RFC 4443).
    #[inline]
    pub fn parse(pkt: &[u8], ip: &IpRepr, verify_checksum: bool) -> Result<Self, DropReason> {
        let icmp = &pkt[ip.header_len..ip.total_len];
        if icmp.len() < icmp_f::HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        let kind = icmp[icmp_f::TYPE];
        if A::VERSION == 6 {
            if ICMPV6_CONTROL.contains(&kind) {
                return Err(DropReason::Ipv6Control);
            }
            if !ICMPV6_ERRORS.contains(&kind) {
                return Err(DropReason::IcmpNotError);
            }
            if verify_checksum {
                let (src, dst) = read_addrs::<A>(pkt);
                if !checksum::verify_l4(src, dst, checksum::ICMPV6, icmp) {
                    return Err(DropReason::BadChecksum);
                }
            }
            return Self::parse_quote_v6(icmp, ip);
        }
        if !ICMP_ERRORS.contains(&kind) {
            return Err(DropReason::IcmpNotError);
        }
        if verify_checksum && checksum::sum(icmp) != 0xffff {
            return Err(DropReason::BadChecksum);
        }
        let inner = &icmp[icmp_f::HEADER_LEN..];
        if inner.len() < ip_f::MIN_HEADER_LEN || inner[ip_f::VER_IHL] >> 4 != 4 {
            return Err(DropReason::Truncated);
        }
        let inner_ihl = usize::from(inner[ip_f::VER_IHL] & 0x0f) * 4;
        if inner_ihl < ip_f::MIN_HEADER_LEN {
            return Err(DropReason::BadHeader);
        }
        // RFC 792: the quote holds the header and 64 bits of the payload,
        // the TCP ports and sequence number.
        if inner.len() < inner_ihl + 8 {
            return Err(DropReason::Truncated);
        }
        if inner[ip_f::PROTOCOL] != u8::from(IpProtocol::Tcp) {
            return Err(DropReason::IcmpUntracked);
        }
        Ok(Self::quoting(inner, inner_ihl, ip))
    }

    /// The quote of an ICMPv6 error (`icmp` is the message): an IPv6 header,
    /// its extension headers, at least 8 bytes of TCP.
    fn parse_quote_v6(icmp: &[u8], ip: &IpRepr) -> Result<Self, DropReason> {
        let inner = &icmp[icmp_f::HEADER_LEN..];
        if inner.len() < ip6_f::HEADER_LEN || inner[ip6_f::VER_TC_FL] >> 4 != 6 {
            return Err(DropReason::Truncated);
        }
        // The quote is cut (at 1280 bytes for the whole error): walk the
        // extension headers within what was quoted.
        let (inner_hl, next) = walk_ipv6(inner, inner.len())?;
        if inner.len() < inner_hl + 8 {
            return Err(DropReason::Truncated);
        }
        if next != u8::from(IpProtocol::Tcp) {
            return Err(DropReason::IcmpUntracked);
        }
        Ok(Self::quoting(inner, inner_hl, ip))
    }

    /// The error whose quoted IP header `inner` (checked) carries a TCP
    /// header at `inner_hl`, with at least its first 8 bytes.
    #[inline]
    fn quoting(inner: &[u8], inner_hl: usize, ip: &IpRepr) -> Self {
        let tcp = &inner[inner_hl..];
        let (src, dst) = read_addrs::<A>(inner);
        let quoted = Tuple::new(
            src,
            read_u16(tcp, tcp_f::SRC_PORT),
            dst,
            read_u16(tcp, tcp_f::DST_PORT),
        );
        let inner_ip = ip.header_len + icmp_f::HEADER_LEN;
        IcmpErrorRepr {
            quoted,
            quote: IcmpQuote {
                icmp: ip.header_len,
                inner_ip,
                inner_tcp: inner_ip + inner_hl,
                has_tcp_csum: tcp.len() >= tcp_f::CHECKSUM.end,
            },
            len: ip.total_len,
        }
    }
}

/// Return the tuple of a TCP packet of either family, if it parses
/// (checksums not checked): for observers such as the capture, not for the
/// packet path.
pub fn tcp_tuple(pkt: &[u8]) -> Option<Tuple<std::net::IpAddr>> {
    match IpRepr::version(pkt)? {
        4 => {
            let ip = IpRepr::parse_ipv4(pkt, false).ok()?;
            (ip.protocol == IpProtocol::Tcp)
                .then(|| TcpRepr::<Ipv4Addr>::parse(pkt, &ip, false).ok())??
                .tuple
                .widen()
                .into()
        }
        6 => {
            let ip = IpRepr::parse_ipv6(pkt).ok()?;
            (ip.protocol == IpProtocol::Tcp)
                .then(|| TcpRepr::<std::net::Ipv6Addr>::parse(pkt, &ip, false).ok())??
                .tuple
                .widen()
                .into()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::tcp::flags::{ACK, FIN, PSH, RST, SYN};
    use std::net::{Ipv4Addr, SocketAddrV4};

    // Fixtures with valid checksums. Client 198.18.1.2, VIP 198.18.0.1,
    // backend 198.18.2.3, MASQUERADE address 198.18.0.2, router 198.18.9.9.

    /// A client's SYN to the VIP with Linux's options: MSS 1460,
    /// SACK-permitted, timestamps, NOP, window scale 7 (20 + 40 bytes).
    static SYN_BYTES: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x9b, 0x60, 0xc6, 0x12, 0x01,
        0x02, 0xc6, 0x12, 0x00, 0x01, 0x9c, 0x40, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00,
        0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x1f, 0x50, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04,
        0x02, 0x08, 0x0a, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    /// The client's next segment: PSH|ACK with 4 bytes of data (20 + 20 + 4).
    static DATA_BYTES: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x9b, 0x70, 0xc6, 0x12, 0x01,
        0x02, 0xc6, 0x12, 0x00, 0x01, 0x9c, 0x40, 0x00, 0x50, 0x01, 0x02, 0x03, 0x05, 0xa0, 0xb0,
        0xc0, 0xd1, 0x50, 0x18, 0x01, 0xf6, 0x83, 0x2b, 0x00, 0x00, 0x47, 0x45, 0x54, 0x20,
    ];

    /// A backend's ACK to the MASQUERADE address with one SACK block
    /// (NOP, NOP, SACK 0xa0b0c0e0..0xa0b0c1e0; 20 + 32 bytes).
    static SACK_BYTES: [u8; 52] = [
        0x45, 0x00, 0x00, 0x34, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x9a, 0x66, 0xc6, 0x12, 0x02,
        0x03, 0xc6, 0x12, 0x00, 0x02, 0x00, 0x50, 0xee, 0x48, 0x00, 0x00, 0x70, 0x00, 0x01, 0x02,
        0x03, 0x05, 0x80, 0x10, 0x03, 0xe8, 0xc0, 0xe8, 0x00, 0x00, 0x01, 0x01, 0x05, 0x0a, 0xa0,
        0xb0, 0xc0, 0xe0, 0xa0, 0xb0, 0xc1, 0xe0,
    ];

    /// A router's "fragmentation needed" (3/4, MTU 1400) quoting a segment
    /// from the MASQUERADE address to the backend: its IPv4 header and 8
    /// bytes of TCP (RFC 792's minimum, no TCP checksum).
    static ICMP_SHORT_BYTES: [u8; 56] = [
        0x45, 0x00, 0x00, 0x38, 0x12, 0x34, 0x00, 0x00, 0x40, 0x01, 0xd3, 0x61, 0xc6, 0x12, 0x09,
        0x09, 0xc6, 0x12, 0x00, 0x02, 0x03, 0x04, 0x04, 0xe4, 0x00, 0x00, 0x05, 0x78, 0x45, 0x00,
        0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x9a, 0x72, 0xc6, 0x12, 0x00, 0x02, 0xc6,
        0x12, 0x02, 0x03, 0xee, 0x48, 0x00, 0x50, 0x01, 0x02, 0x03, 0x05,
    ];

    /// A router's "time exceeded" (11/0) quoting the same segment whole
    /// (20 + 20 bytes, as RFC 1812 routers quote).
    static ICMP_FULL_BYTES: [u8; 68] = [
        0x45, 0x00, 0x00, 0x44, 0x12, 0x34, 0x00, 0x00, 0x40, 0x01, 0xd3, 0x55, 0xc6, 0x12, 0x09,
        0x09, 0xc6, 0x12, 0x00, 0x02, 0x0b, 0x00, 0x83, 0x44, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00,
        0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x9a, 0x72, 0xc6, 0x12, 0x00, 0x02, 0xc6,
        0x12, 0x02, 0x03, 0xee, 0x48, 0x00, 0x50, 0x01, 0x02, 0x03, 0x05, 0x00, 0x00, 0x70, 0x00,
        0x50, 0x10, 0x01, 0xf6, 0xbd, 0x14, 0x00, 0x00,
    ];

    fn sa(a: [u8; 4], port: u16) -> crate::conntrack::tuple::Endpoint<Ipv4Addr> {
        SocketAddrV4::new(Ipv4Addr::from(a), port).into()
    }

    fn ipv4(pkt: &[u8]) -> Result<IpRepr, DropReason> {
        IpRepr::parse_ipv4(pkt, true)
    }

    /// Parse `pkt` as an IPv4 TCP segment, verifying both checksums when `verify`.
    fn tcp(pkt: &[u8], verify: bool) -> Result<TcpRepr, DropReason> {
        let ip = IpRepr::parse_ipv4(pkt, verify)?;
        assert_eq!(ip.protocol, IpProtocol::Tcp);
        TcpRepr::parse(pkt, &ip, verify)
    }

    /// Parse `pkt` as an ICMP error, verifying both checksums when `verify`.
    fn icmp(pkt: &[u8], verify: bool) -> Result<IcmpErrorRepr, DropReason> {
        let ip = IpRepr::parse_ipv4(pkt, verify)?;
        assert_eq!(ip.protocol, IpProtocol::Icmp);
        IcmpErrorRepr::parse(pkt, &ip, verify)
    }

    /// Set the IPv4 total length to `n`, cut the buffer there and fix the
    /// header checksum: a well-formed IPv4 packet whose payload is cut.
    fn cut(pkt: &[u8], n: usize) -> Vec<u8> {
        let mut p = pkt[..n].to_vec();
        p[2..4].copy_from_slice(&(n as u16).to_be_bytes());
        fix_ip_checksum(&mut p);
        p
    }

    fn fix_ip_checksum(p: &mut [u8]) {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        p[10..12].fill(0);
        let c = checksum::full(&p[..ihl]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn a_syn_with_options_deconstructs() {
        let ip = ipv4(&SYN_BYTES).unwrap();
        assert_eq!(
            ip,
            IpRepr {
                header_len: 20,
                total_len: 60,
                protocol: IpProtocol::Tcp
            }
        );
        let p = tcp(&SYN_BYTES, true).unwrap();
        assert_eq!(
            p.tuple,
            Tuple {
                src: sa([198, 18, 1, 2], 40000),
                dst: sa([198, 18, 0, 1], 80)
            }
        );
        assert_eq!(p.class, FlagClass::Syn);
        assert_eq!((p.ip_header_len, p.tcp_header_len, p.len), (20, 40, 60));
        assert_eq!(
            p.segment,
            window::Segment {
                seq: 0x0102_0304,
                ack: 0,
                len: 1,
                window: 64240,
                syn: true,
                ack_flag: false,
                rst: false,
                options: window::Options::new(Some(7), true, None),
            }
        );
    }

    #[test]
    fn a_data_segment_deconstructs() {
        let p = tcp(&DATA_BYTES, true).unwrap();
        assert_eq!(p.class, FlagClass::Ack);
        assert_eq!((p.ip_header_len, p.tcp_header_len, p.len), (20, 20, 44));
        assert_eq!(
            p.segment,
            window::Segment {
                seq: 0x0102_0305,
                ack: 0xa0b0_c0d1,
                len: 4,
                window: 502,
                syn: false,
                ack_flag: true,
                rst: false,
                options: window::Options::default(),
            }
        );
        // Bytes past the total length are not part of the packet.
        let mut padded = DATA_BYTES.to_vec();
        padded.extend_from_slice(&[0xa5; 6]);
        assert_eq!(tcp(&padded, true), Ok(p));
    }

    #[test]
    fn a_sack_block_gives_its_right_edge_and_fin_counts_one() {
        let p = tcp(&SACK_BYTES, true).unwrap();
        assert_eq!(
            p.tuple,
            Tuple {
                src: sa([198, 18, 2, 3], 80),
                dst: sa([198, 18, 0, 2], 61000)
            }
        );
        assert_eq!(p.tcp_header_len, 32);
        assert_eq!(
            p.segment.options,
            window::Options::new(None, false, Some(0xa0b0_c1e0))
        );
        assert_eq!((p.segment.len, p.segment.ack), (0, 0x0102_0305));
        // The same with FIN: one sequence number (checksum not verified).
        let mut fin = SACK_BYTES;
        fin[33] = FIN | ACK;
        let p = tcp(&fin, false).unwrap();
        assert_eq!((p.class, p.segment.len), (FlagClass::Fin, 1));
        // Window scale and SACK-permitted count on a SYN only.
        let mut ack = SYN_BYTES;
        ack[33] = ACK;
        let o = tcp(&ack, false).unwrap().segment.options;
        assert_eq!((o.wscale(), o.sack_perm()), (None, false));
    }

    #[test]
    fn every_cut_of_the_buffer_is_truncated() {
        for fixture in [&SYN_BYTES[..], &DATA_BYTES, &SACK_BYTES, &ICMP_SHORT_BYTES] {
            for n in 0..fixture.len() {
                assert_eq!(
                    ipv4(&fixture[..n]),
                    Err(DropReason::Truncated),
                    "cut at {n} of {}",
                    fixture.len()
                );
            }
        }
    }

    #[test]
    fn every_cut_of_the_tcp_header_is_truncated() {
        // A well-formed IPv4 header whose total length stops inside the
        // TCP header (options included).
        for (fixture, header) in [(&SYN_BYTES[..], 60), (&DATA_BYTES, 40), (&SACK_BYTES, 52)] {
            for n in 20..header {
                assert_eq!(
                    tcp(&cut(fixture, n), false),
                    Err(DropReason::Truncated),
                    "cut at {n}"
                );
            }
            // The header whole, the payload cut: parsed (only the checksum
            // could tell).
            assert!(tcp(&cut(fixture, header), false).is_ok());
        }
        let p = tcp(&cut(&DATA_BYTES, 42), false).unwrap();
        assert_eq!(p.segment.len, 2);
        assert_eq!(
            tcp(&cut(&DATA_BYTES, 42), true),
            Err(DropReason::BadChecksum)
        );
    }

    #[test]
    fn a_bad_ihl_is_a_bad_header_or_truncated() {
        for ihl in 0..5 {
            let mut p = DATA_BYTES;
            p[0] = 0x40 | ihl;
            assert_eq!(ipv4(&p), Err(DropReason::BadHeader), "IHL {ihl}");
            // Shorter than a header: truncated before the IHL is read.
            assert_eq!(ipv4(&p[..19]), Err(DropReason::Truncated));
        }
        // Longer than the packet, or than its total length.
        let mut p = DATA_BYTES;
        p[0] = 0x4f;
        assert_eq!(ipv4(&p), Err(DropReason::Truncated));
        let mut p = cut(&DATA_BYTES, 20);
        p[0] = 0x46;
        p.extend_from_slice(&[0; 4]);
        assert_eq!(ipv4(&p), Err(DropReason::Truncated));
        // A total length below 20.
        let mut p = DATA_BYTES;
        p[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(ipv4(&p), Err(DropReason::Truncated));
    }

    #[test]
    fn ip_options_move_the_tcp_header() {
        // Two NOPs and an end of options (4 bytes) after the address fields.
        let mut p = DATA_BYTES[..20].to_vec();
        p.extend_from_slice(&[1, 1, 0, 0]);
        p.extend_from_slice(&DATA_BYTES[20..]);
        p[0] = 0x46;
        p[2..4].copy_from_slice(&48u16.to_be_bytes());
        fix_ip_checksum(&mut p);
        let want = tcp(&DATA_BYTES, true).unwrap();
        let got = tcp(&p, true).unwrap();
        assert_eq!((got.ip_header_len, got.len), (24, 48));
        assert_eq!((got.tuple, got.segment), (want.tuple, want.segment));
    }

    #[test]
    fn a_bad_data_offset_is_a_bad_header_or_truncated() {
        for off in 0..5u8 {
            let mut p = DATA_BYTES;
            p[32] = off << 4;
            assert_eq!(tcp(&p, false), Err(DropReason::BadHeader), "offset {off}");
            // With 13 bytes of TCP the offset is read; with 12 it is not.
            assert_eq!(tcp(&cut(&p, 33), false), Err(DropReason::BadHeader));
            assert_eq!(tcp(&cut(&p, 32), false), Err(DropReason::Truncated));
        }
        // Longer than the segment (24 bytes).
        for off in 7..16u8 {
            let mut p = DATA_BYTES;
            p[32] = off << 4;
            assert_eq!(tcp(&p, false), Err(DropReason::Truncated), "offset {off}");
        }
        // 6 words: the 4 bytes of data read as options (end of options).
        let mut p = DATA_BYTES;
        p[32] = 6 << 4;
        let r = tcp(&p, false).unwrap();
        assert_eq!((r.tcp_header_len, r.segment.len), (24, 0));
    }

    #[test]
    fn fragments_and_other_headers_are_refused() {
        assert_eq!(ipv4(&[]), Err(DropReason::Truncated));
        let mut v6 = DATA_BYTES;
        v6[0] = 0x60;
        assert_eq!(ipv4(&v6), Err(DropReason::NotIp));
        assert_eq!(ipv4(&v6[..1]), Err(DropReason::NotIp));
        // More fragments; an offset (of 8 bytes, and the highest); both.
        for flg_off in [0x2000u16, 0x0001, 0x1fff, 0x4001, 0x2001] {
            let mut p = DATA_BYTES;
            p[6..8].copy_from_slice(&flg_off.to_be_bytes());
            fix_ip_checksum(&mut p);
            assert_eq!(ipv4(&p), Err(DropReason::Fragment), "{flg_off:#06x}");
            // The header checksum is checked first.
            p[8] ^= 1;
            assert_eq!(ipv4(&p), Err(DropReason::BadChecksum));
        }
        // DF alone, and the reserved bit, are not fragments.
        for flg_off in [0x4000u16, 0x0000, 0x8000] {
            let mut p = DATA_BYTES;
            p[6..8].copy_from_slice(&flg_off.to_be_bytes());
            fix_ip_checksum(&mut p);
            assert!(ipv4(&p).is_ok(), "{flg_off:#06x}");
        }
        let mut udp = DATA_BYTES;
        udp[9] = 17;
        fix_ip_checksum(&mut udp);
        assert_eq!(ipv4(&udp).unwrap().protocol, IpProtocol::Udp);
    }

    #[test]
    fn checksums_are_verified_only_when_asked() {
        let mut ttl = DATA_BYTES;
        ttl[8] -= 1;
        assert_eq!(ipv4(&ttl), Err(DropReason::BadChecksum));
        assert!(IpRepr::parse_ipv4(&ttl, false).is_ok());
        let mut data = DATA_BYTES;
        data[43] ^= 0x20;
        assert_eq!(tcp(&data, true), Err(DropReason::BadChecksum));
        assert!(tcp(&data, false).is_ok());
    }

    #[test]
    fn invalid_flags_are_refused_before_the_checksum() {
        for flags in [
            0,
            FIN,
            SYN | FIN,
            SYN | RST | ACK,
            FIN | PSH | 0x20 | ACK | SYN,
        ] {
            let mut p = DATA_BYTES;
            p[33] = flags;
            assert_eq!(tcp(&p, true), Err(DropReason::BadFlags), "{flags:#04x}");
        }
    }

    #[test]
    fn an_icmp_error_quoting_8_bytes_of_tcp_deconstructs() {
        let q = icmp(&ICMP_SHORT_BYTES, true).unwrap();
        assert_eq!(
            q,
            IcmpErrorRepr {
                quoted: Tuple {
                    src: sa([198, 18, 0, 2], 61000),
                    dst: sa([198, 18, 2, 3], 80)
                },
                quote: IcmpQuote {
                    icmp: 20,
                    inner_ip: 28,
                    inner_tcp: 48,
                    has_tcp_csum: false
                },
                len: 56,
            }
        );
        let full = icmp(&ICMP_FULL_BYTES, true).unwrap();
        assert_eq!(full.quoted, q.quoted);
        assert!(full.quote.has_tcp_csum);
        // Just enough to hold the TCP checksum.
        assert!(
            icmp(&cut(&ICMP_FULL_BYTES, 66), false)
                .unwrap()
                .quote
                .has_tcp_csum
        );
        assert!(
            !icmp(&cut(&ICMP_FULL_BYTES, 65), false)
                .unwrap()
                .quote
                .has_tcp_csum
        );
    }

    #[test]
    fn every_cut_of_an_icmp_quote_is_truncated() {
        for n in 20..ICMP_SHORT_BYTES.len() {
            assert_eq!(
                icmp(&cut(&ICMP_SHORT_BYTES, n), false),
                Err(DropReason::Truncated),
                "cut at {n}"
            );
        }
    }

    #[test]
    fn icmp_refusals_name_their_reason() {
        // Not an error: echo request and reply, redirect.
        for ty in [8, 0, 5] {
            let mut p = ICMP_SHORT_BYTES;
            p[20] = ty;
            assert_eq!(icmp(&p, true), Err(DropReason::IcmpNotError), "type {ty}");
        }
        // Every error type is accepted (checksum not verified).
        for ty in [3, 4, 11, 12] {
            let mut p = ICMP_SHORT_BYTES;
            p[20] = ty;
            assert!(icmp(&p, false).is_ok(), "type {ty}");
        }
        let mut bad = ICMP_SHORT_BYTES;
        bad[27] ^= 1;
        assert_eq!(icmp(&bad, true), Err(DropReason::BadChecksum));
        assert!(icmp(&bad, false).is_ok());
        // The quote: not IPv4, a bad IHL, an IHL longer than the quote, not TCP.
        let mut v6 = ICMP_SHORT_BYTES;
        v6[28] = 0x60;
        assert_eq!(icmp(&v6, false), Err(DropReason::Truncated));
        for ihl in 0..5 {
            let mut p = ICMP_SHORT_BYTES;
            p[28] = 0x40 | ihl;
            assert_eq!(icmp(&p, false), Err(DropReason::BadHeader), "IHL {ihl}");
        }
        let mut long = ICMP_SHORT_BYTES;
        long[28] = 0x46;
        assert_eq!(icmp(&long, false), Err(DropReason::Truncated));
        let mut udp = ICMP_SHORT_BYTES;
        udp[37] = 17;
        assert_eq!(icmp(&udp, false), Err(DropReason::IcmpUntracked));
    }

    #[test]
    fn a_quote_with_ip_options_moves_the_tcp_header() {
        let mut p = ICMP_FULL_BYTES[..48].to_vec();
        p.extend_from_slice(&[1, 1, 1, 0]);
        p.extend_from_slice(&ICMP_FULL_BYTES[48..]);
        p[28] = 0x46;
        p[2..4].copy_from_slice(&72u16.to_be_bytes());
        fix_ip_checksum(&mut p);
        let q = icmp(&p, false).unwrap();
        assert_eq!(q.quoted, icmp(&ICMP_FULL_BYTES, true).unwrap().quoted);
        assert_eq!((q.quote.inner_ip, q.quote.inner_tcp), (28, 52));
        assert!(q.quote.has_tcp_csum);
    }

    #[test]
    fn the_fixtures_agree_with_smoltcp() {
        use smoltcp::wire::{Ipv4Packet, TcpPacket};
        for f in [&SYN_BYTES[..], &DATA_BYTES, &SACK_BYTES] {
            let ip = Ipv4Packet::new_checked(f).unwrap();
            let t = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(ip.verify_checksum());
            assert!(t.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
            let p = tcp(f, true).unwrap();
            assert_eq!(p.tuple.src.port(), t.src_port());
            assert_eq!(p.tuple.dst.port(), t.dst_port());
            assert_eq!(p.segment.seq, t.seq_number().0 as u32);
            assert_eq!(p.segment.window, t.window_len());
            assert_eq!(p.tcp_header_len, usize::from(t.header_len()));
        }
    }

    // IPv6 fixtures: built from a segment by `craft` (checksums right),
    // extension headers spliced in by hand. Client 2001:2:0:1::2, VIP
    // 2001:2::1, backend 2001:2:0:2::3, router 2001:2:0:9::9.

    mod v6 {
        use super::*;
        use crate::craft::Segment;
        use std::net::{Ipv6Addr, SocketAddrV6};

        pub(super) fn sa(a: &str, port: u16) -> SocketAddrV6 {
            SocketAddrV6::new(a.parse().unwrap(), port, 0, 0)
        }

        /// The client's SYN to the VIP (40 + 20 bytes).
        pub(super) fn syn() -> Vec<u8> {
            Segment {
                seq: 0x0102_0304,
                ..Segment::between(sa("2001:2:0:1::2", 40000), sa("2001:2::1", 80), SYN)
            }
            .build()
        }

        /// `pkt` with extension headers `(type, total length)` inserted after
        /// the fixed header, in order, each pointing to the next (the last to
        /// what the fixed header pointed to), payload length fixed.
        pub(super) fn with_ext(pkt: &[u8], exts: &[(u8, usize)]) -> Vec<u8> {
            let upper = pkt[6];
            let mut out = pkt[..40].to_vec();
            out[6] = exts.first().map_or(upper, |e| e.0);
            for (i, &(_, len)) in exts.iter().enumerate() {
                let next = exts.get(i + 1).map_or(upper, |e| e.0);
                let mut h = vec![0u8; len];
                h[0] = next;
                h[1] = (len / 8 - 1) as u8;
                if len > 2 {
                    // A PadN option filling the rest (valid in HBH/dest opts).
                    h[2] = 1;
                    h[3] = (len - 4) as u8;
                }
                out.extend_from_slice(&h);
            }
            out.extend_from_slice(&pkt[40..]);
            let payload = (out.len() - 40) as u16;
            out[4..6].copy_from_slice(&payload.to_be_bytes());
            out
        }

        /// An ICMPv6 error of `ty` from the router to the MASQUERADE address
        /// quoting `quote` (its first bytes), checksum right.
        pub(super) fn icmp_error(ty: u8, rest: u32, quote: &[u8]) -> Vec<u8> {
            let from: Ipv6Addr = "2001:2:0:9::9".parse().unwrap();
            let to: Ipv6Addr = "2001:2::1".parse().unwrap();
            let mut msg = vec![ty, 0, 0, 0];
            msg.extend_from_slice(&rest.to_be_bytes());
            msg.extend_from_slice(quote);
            let c = checksum::full_l4(from, to, checksum::ICMPV6, &msg);
            msg[2..4].copy_from_slice(&c.to_be_bytes());
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            p.extend_from_slice(&[58, 64]);
            p.extend_from_slice(&from.octets());
            p.extend_from_slice(&to.octets());
            p.extend_from_slice(&msg);
            p
        }

        pub(super) fn ip(pkt: &[u8]) -> Result<IpRepr, DropReason> {
            IpRepr::parse_ipv6(pkt)
        }

        pub(super) fn tcp(pkt: &[u8]) -> Result<TcpRepr<Ipv6Addr>, DropReason> {
            let ip = ip(pkt)?;
            assert_eq!(ip.protocol, IpProtocol::Tcp);
            TcpRepr::parse(pkt, &ip, true)
        }

        pub(super) fn icmp(pkt: &[u8]) -> Result<IcmpErrorRepr<Ipv6Addr>, DropReason> {
            let ip = ip(pkt)?;
            assert_eq!(ip.protocol, IpProtocol::Icmpv6);
            IcmpErrorRepr::parse(pkt, &ip, true)
        }
    }

    #[test]
    fn an_ipv6_syn_deconstructs() {
        let p = v6::syn();
        assert_eq!(
            v6::ip(&p),
            Ok(IpRepr {
                header_len: 40,
                total_len: 60,
                protocol: IpProtocol::Tcp
            })
        );
        let t = v6::tcp(&p).unwrap();
        assert_eq!(t.tuple.src, v6::sa("2001:2:0:1::2", 40000).into());
        assert_eq!(t.tuple.dst, v6::sa("2001:2::1", 80).into());
        assert_eq!(
            (t.class, t.segment.seq, t.segment.len),
            (FlagClass::Syn, 0x0102_0304, 1)
        );
        assert_eq!((t.ip_header_len, t.tcp_header_len, t.len), (40, 20, 60));
        // Bytes past the payload length are not part of the packet.
        let mut padded = p.clone();
        padded.extend_from_slice(&[0xa5; 7]);
        assert_eq!(v6::tcp(&padded), Ok(t));
        // A flipped payload bit fails the pseudo-header checksum.
        let mut bad = p.clone();
        bad[59] ^= 1;
        assert_eq!(v6::tcp(&bad), Err(DropReason::BadChecksum));
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_tcp() {
        let chain = v6::with_ext(&v6::syn(), &[(0, 8), (60, 16), (43, 8)]);
        let ip = v6::ip(&chain).unwrap();
        assert_eq!(
            (ip.header_len, ip.total_len, ip.protocol),
            (72, 92, IpProtocol::Tcp)
        );
        let t = v6::tcp(&chain).unwrap();
        assert_eq!(t.ip_header_len, 72);
        assert_eq!(t.tuple, v6::tcp(&v6::syn()).unwrap().tuple);
        // Every cut inside the chain or the TCP header is truncated (the
        // payload length says more than there is).
        for n in 0..chain.len() {
            let r = v6::ip(&chain[..n])
                .and_then(|ip| TcpRepr::<std::net::Ipv6Addr>::parse(&chain[..n], &ip, false));
            assert_eq!(r, Err(DropReason::Truncated), "cut at {n}");
        }
        // An extension header longer than the payload says.
        let mut long = chain.clone();
        long[41] = 200;
        assert_eq!(v6::ip(&long), Err(DropReason::Truncated));
    }

    #[test]
    fn ipv6_headers_tunlb_does_not_translate_are_refused_with_a_reason() {
        let syn = v6::syn();
        // A fragment header, first or after options.
        assert_eq!(
            v6::ip(&v6::with_ext(&syn, &[(44, 8)])),
            Err(DropReason::Fragment)
        );
        assert_eq!(
            v6::ip(&v6::with_ext(&syn, &[(60, 8), (44, 8)])),
            Err(DropReason::Fragment)
        );
        // Hop-by-hop anywhere but first.
        assert_eq!(
            v6::ip(&v6::with_ext(&syn, &[(60, 8), (0, 8)])),
            Err(DropReason::BadHeader)
        );
        // Eight extension headers pass, nine do not.
        assert!(v6::ip(&v6::with_ext(&syn, &[(60, 8); 8])).is_ok());
        assert_eq!(
            v6::ip(&v6::with_ext(&syn, &[(60, 8); 9])),
            Err(DropReason::BadHeader)
        );
        // A jumbogram (payload length 0).
        let mut jumbo = syn.clone();
        jumbo[4..6].fill(0);
        assert_eq!(v6::ip(&jumbo), Err(DropReason::BadHeader));
        // Not TCP after the chain: the engine's dispatch says not_tcp.
        let mut udp = v6::with_ext(&syn, &[(60, 8)]);
        udp[40] = 17;
        assert_eq!(v6::ip(&udp).map(|ip| ip.protocol), Ok(IpProtocol::Udp));
        // Version 6 asked of a version 4 packet, and the reverse.
        assert_eq!(v6::ip(&SYN_BYTES), Err(DropReason::NotIp));
        assert_eq!(ipv4(&syn), Err(DropReason::NotIp));
    }

    #[test]
    fn an_icmpv6_packet_too_big_gives_the_quoted_tuple() {
        // The backend-bound segment as the router saw it: MASQUERADE -> backend.
        let seg = crate::craft::Segment {
            seq: 5,
            ack: 7,
            payload: &[0x5a; 1300],
            ..crate::craft::Segment::between(
                v6::sa("2001:2::1", 61000),
                v6::sa("2001:2:0:2::3", 80),
                ACK,
            )
        }
        .build();
        // RFC 4443: as much of the packet as fits in 1280 bytes.
        let pkt = v6::icmp_error(2, 1280, &seg[..1280 - 48]);
        let e = v6::icmp(&pkt).unwrap();
        assert_eq!(e.quoted.src, v6::sa("2001:2::1", 61000).into());
        assert_eq!(e.quoted.dst, v6::sa("2001:2:0:2::3", 80).into());
        assert_eq!(
            e.quote,
            IcmpQuote {
                icmp: 40,
                inner_ip: 48,
                inner_tcp: 88,
                has_tcp_csum: true
            }
        );
        assert_eq!(e.len, 1280);
        // A quote with an extension header is walked; one cut inside it is not.
        let ext = v6::with_ext(&seg[..100], &[(60, 16)]);
        let e = v6::icmp(&v6::icmp_error(1, 0, &ext)).unwrap();
        assert_eq!(e.quote.inner_tcp, 48 + 40 + 16);
        assert_eq!(
            v6::icmp(&v6::icmp_error(1, 0, &ext[..50])),
            Err(DropReason::Truncated)
        );
        // Only the ports and sequence number quoted: enough.
        assert!(v6::icmp(&v6::icmp_error(3, 0, &seg[..48])).is_ok());
        assert_eq!(
            v6::icmp(&v6::icmp_error(3, 0, &seg[..47])),
            Err(DropReason::Truncated)
        );
        // A bad checksum.
        let mut bad = pkt.clone();
        bad[100] ^= 1;
        assert_eq!(v6::icmp(&bad), Err(DropReason::BadChecksum));
    }

    #[test]
    fn neighbour_discovery_and_echo_are_not_errors() {
        let quote = &v6::syn()[..48];
        // Router solicitation, neighbour solicitation, MLDv2 report.
        for ty in [133, 135, 143] {
            assert_eq!(
                v6::icmp(&v6::icmp_error(ty, 0, quote)),
                Err(DropReason::Ipv6Control),
                "type {ty}"
            );
        }
        // Echo request and reply.
        for ty in [128, 129] {
            assert_eq!(
                v6::icmp(&v6::icmp_error(ty, 0, quote)),
                Err(DropReason::IcmpNotError)
            );
        }
        // An MLD report behind a hop-by-hop header (router alert), as the
        // kernel sends it: still control traffic.
        let mld = v6::with_ext(&v6::icmp_error(143, 0, &[]), &[(0, 8)]);
        let ip = v6::ip(&mld).unwrap();
        assert_eq!(ip.protocol, IpProtocol::Icmpv6);
        assert_eq!(
            IcmpErrorRepr::<std::net::Ipv6Addr>::parse(&mld, &ip, false),
            Err(DropReason::Ipv6Control)
        );
    }

    #[test]
    fn ipv6_nat_keeps_the_tcp_checksum_right() {
        use smoltcp::wire::{IpAddress, Ipv6Packet, TcpPacket};
        let chain = v6::with_ext(&v6::syn(), &[(60, 8)]);
        let mut pkt = chain.clone();
        let p = v6::tcp(&pkt).unwrap();
        let src = v6::sa("2001:2::2", 40000).into();
        let dst = v6::sa("2001:2:0:2::3", 8080).into();
        crate::nat::rewrite_tcp(
            &mut pkt,
            p.ip_header_len,
            src,
            dst,
            crate::nat::L4Checksum::Complete,
        );
        let ip = Ipv6Packet::new_checked(&pkt[..]).unwrap();
        assert_eq!(
            ip.src_addr(),
            "2001:2::2".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(
            ip.dst_addr(),
            "2001:2:0:2::3".parse::<std::net::Ipv6Addr>().unwrap()
        );
        let t = TcpPacket::new_checked(&pkt[48..]).unwrap();
        assert_eq!((t.src_port(), t.dst_port()), (40000, 8080));
        assert!(t.verify_checksum(
            &IpAddress::Ipv6(ip.src_addr()),
            &IpAddress::Ipv6(ip.dst_addr())
        ));
        // Everything but the addresses, ports and checksum is as it was.
        let same = |r: std::ops::Range<usize>| assert_eq!(pkt[r.clone()], chain[r]);
        same(0..8);
        same(40..48);
        same(52..64);
        same(66..pkt.len());
    }

    /// What the engine made of a packet before this module existed, on
    /// smoltcp's views (its `check_ipv4`, `process_tcp` and `process_icmp`,
    /// verbatim but for the returns): the oracle of the test below.
    mod reference {
        use super::*;
        use smoltcp::wire::{Ipv4Packet, TcpPacket};

        #[derive(Debug, PartialEq, Eq)]
        pub(super) enum Parsed {
            Tcp(Tuple, FlagClass, window::Segment, usize, usize),
            Icmp(Tuple, IcmpQuote, usize),
        }

        pub(super) fn parse(pkt: &[u8], verify: bool) -> Result<Parsed, DropReason> {
            let (ihl, total, proto) = check_ipv4(pkt, verify)?;
            match proto {
                IpProtocol::Tcp => tcp(pkt, ihl, total, verify),
                IpProtocol::Icmp => icmp(pkt, ihl, total, verify),
                _ => Err(DropReason::NotTcp),
            }
        }

        fn check_ipv4(pkt: &[u8], verify: bool) -> Result<(usize, usize, IpProtocol), DropReason> {
            match pkt.first() {
                None => return Err(DropReason::Truncated),
                Some(b) if b >> 4 != 4 => return Err(DropReason::NotIp),
                Some(_) => {}
            }
            if pkt.len() >= 20 && pkt[0] & 0x0f < 5 {
                return Err(DropReason::BadHeader);
            }
            let ip = Ipv4Packet::new_checked(pkt).map_err(|_| DropReason::Truncated)?;
            if verify && checksum::sum(&pkt[..ip.header_len() as usize]) != 0xffff {
                return Err(DropReason::BadChecksum);
            }
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Err(DropReason::Fragment);
            }
            Ok((
                ip.header_len() as usize,
                ip.total_len() as usize,
                ip.next_header(),
            ))
        }

        fn tcp(pkt: &[u8], ihl: usize, total: usize, verify: bool) -> Result<Parsed, DropReason> {
            let ip = Ipv4Packet::new_unchecked(&pkt[..total]);
            let seg = &pkt[ihl..total];
            if seg.len() >= 13 && seg[12] >> 4 < 5 {
                return Err(DropReason::BadHeader);
            }
            let tcp = TcpPacket::new_checked(seg).map_err(|_| DropReason::Truncated)?;
            let class = FlagClass::of(seg[13]).ok_or(DropReason::BadFlags)?;
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            if verify && !checksum::verify_tcp(src, dst, seg) {
                return Err(DropReason::BadChecksum);
            }
            let tuple = Tuple::new(src, tcp.src_port(), dst, tcp.dst_port());
            let syn = tcp.syn();
            let options = tcp.options();
            let info = window::Segment {
                seq: tcp.seq_number().0 as u32,
                ack: tcp.ack_number().0 as u32,
                len: (seg.len() - usize::from(tcp.header_len())) as u32
                    + u32::from(syn)
                    + u32::from(tcp.fin()),
                window: tcp.window_len(),
                syn,
                ack_flag: tcp.ack(),
                rst: tcp.rst(),
                options: if options.is_empty() {
                    window::Options::default()
                } else {
                    window::Options::parse(options, syn)
                },
            };
            Ok(Parsed::Tcp(tuple, class, info, ihl, total))
        }

        fn icmp(pkt: &[u8], ihl: usize, total: usize, verify: bool) -> Result<Parsed, DropReason> {
            let icmp = &pkt[ihl..total];
            if icmp.len() < 8 {
                return Err(DropReason::Truncated);
            }
            if ![3, 4, 11, 12].contains(&icmp[0]) {
                return Err(DropReason::IcmpNotError);
            }
            if verify && checksum::sum(icmp) != 0xffff {
                return Err(DropReason::BadChecksum);
            }
            let inner = &icmp[8..];
            if inner.len() < 20 || inner[0] >> 4 != 4 {
                return Err(DropReason::Truncated);
            }
            let inner_ihl = usize::from(inner[0] & 0x0f) * 4;
            if inner_ihl < 20 {
                return Err(DropReason::BadHeader);
            }
            if inner.len() < inner_ihl + 8 {
                return Err(DropReason::Truncated);
            }
            if inner[9] != u8::from(IpProtocol::Tcp) {
                return Err(DropReason::IcmpUntracked);
            }
            let ip4 = |o: usize| Ipv4Addr::new(inner[o], inner[o + 1], inner[o + 2], inner[o + 3]);
            let port =
                |o: usize| u16::from_be_bytes([inner[inner_ihl + o], inner[inner_ihl + o + 1]]);
            let quoted = Tuple::new(ip4(12), port(0), ip4(16), port(2));
            let q = IcmpQuote {
                icmp: ihl,
                inner_ip: ihl + 8,
                inner_tcp: ihl + 8 + inner_ihl,
                has_tcp_csum: inner.len() >= inner_ihl + 18,
            };
            Ok(Parsed::Icmp(quoted, q, total))
        }
    }

    /// What the engine makes of a packet with this module.
    fn parsed(pkt: &[u8], verify: bool) -> Result<reference::Parsed, DropReason> {
        let ip = IpRepr::parse_ipv4(pkt, verify)?;
        match ip.protocol {
            IpProtocol::Tcp => {
                let p = TcpRepr::parse(pkt, &ip, verify)?;
                Ok(reference::Parsed::Tcp(
                    p.tuple,
                    p.class,
                    p.segment,
                    p.ip_header_len,
                    p.len,
                ))
            }
            IpProtocol::Icmp => {
                let q = IcmpErrorRepr::parse(pkt, &ip, verify)?;
                Ok(reference::Parsed::Icmp(q.quoted, q.quote, q.len))
            }
            _ => Err(DropReason::NotTcp),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 4096,
            rng_seed: proptest::test_runner::RngSeed::Fixed(17),
            ..Default::default()
        })]
        /// A fixture with a few bytes overwritten (biased to the header
        /// fields that decide), cut anywhere, its total length maybe made to
        /// match the cut: the outcome is the one of the engine's former parse.
        #[test]
        fn the_parse_is_the_former_one(
            which in 0..5usize,
            writes in proptest::collection::vec((0..80usize, proptest::num::u8::ANY), 0..4),
            cut_at in 0..80usize,
            fix_total in proptest::bool::ANY,
            verify in proptest::bool::ANY,
        ) {
            let fixtures: [&[u8]; 5] =
                [&SYN_BYTES, &DATA_BYTES, &SACK_BYTES, &ICMP_SHORT_BYTES, &ICMP_FULL_BYTES];
            let mut p = fixtures[which].to_vec();
            for (at, b) in writes {
                // Half the writes land on the first 40 bytes (the headers).
                let at = if at % 2 == 0 { at / 2 } else { at };
                if let Some(x) = p.get_mut(at) {
                    *x = b;
                }
            }
            p.truncate(cut_at.max(1));
            if fix_total && p.len() >= 20 {
                let n = p.len() as u16;
                p[2..4].copy_from_slice(&n.to_be_bytes());
            }
            proptest::prop_assert_eq!(parsed(&p, verify), reference::parse(&p, verify));
        }
    }
}
