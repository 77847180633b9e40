//! The packet manipulations of NAT (`nf_nat_ipv4_manip_pkt`,
//! `nf_nat_ipv6_manip_pkt`), in place.
//!
//! Each function rewrites an address or port and fixes every checksum that
//! covers it by RFC 1624 ([`crate::checksum`]), never by summing the packet
//! again. Offsets are [`crate::wire`]'s; the caller has already parsed the
//! packet there, so indexing cannot fail. Every function is generic over the
//! address family: IPv4 has a header checksum to fix as well, IPv6 has none
//! (`A::VERSION` is a constant, so each instance keeps only its own branch).

use crate::checksum::{self, Delta};
use crate::conntrack::tuple::{Endpoint, IpAddress};
use crate::craft::Segment;
use crate::wire::field::{self, icmp, ipv4, ipv6, tcp};
use crate::wire::{IcmpQuote, TcpRepr};

const IP_CSUM: usize = ipv4::CHECKSUM.start;
const TCP_SPORT: usize = tcp::SRC_PORT.start;
const TCP_DPORT: usize = tcp::DST_PORT.start;
const TCP_CSUM: usize = tcp::CHECKSUM.start;

/// The offsets of the source and destination address in an IP header of
/// `A`'s family.
#[inline(always)]
const fn addr_at<A: IpAddress>() -> (usize, usize) {
    let (src, dst) = field::addrs(A::VERSION);
    (src.start, dst.start)
}

/// Replace the address at `at` with `new`, updating each checksum stored
/// at the offsets in `csums`.
#[inline]
fn replace_addr<A: IpAddress>(buf: &mut [u8], at: usize, new: A, csums: &[usize]) {
    let d = write_addr(buf, at, new);
    for &c in csums {
        checksum::put(buf, c, d.apply(checksum::get(buf, c)));
    }
}

/// Replace the 16-bit word at `at` with `new`, updating each checksum stored
/// at the offsets in `csums`.
#[inline]
fn replace_u16(buf: &mut [u8], at: usize, new: u16, csums: &[usize]) {
    let d = write_u16(buf, at, new);
    for &c in csums {
        checksum::put(buf, c, d.apply(checksum::get(buf, c)));
    }
}

/// Write the address `new` at `at`; return the checksum change.
#[inline(always)]
fn write_addr<A: IpAddress>(buf: &mut [u8], at: usize, new: A) -> Delta {
    let field = &mut buf[at..at + A::LEN];
    let old = A::read(field);
    field.copy_from_slice(new.octets().as_ref());
    let mut d = Delta::new();
    d.addr(old, new);
    d
}

/// Write `new` at `at`; return the checksum change.
#[inline]
fn write_u16(buf: &mut [u8], at: usize, new: u16) -> Delta {
    let old = checksum::get(buf, at);
    checksum::put(buf, at, new);
    let mut d = Delta::new();
    d.u16(old, new);
    d
}

/// How the TCP checksum field of a segment is to be updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Checksum {
    /// A complete checksum (the normal case).
    Complete,
    /// A partial checksum left for offload: it holds the uncomplemented
    /// pseudo-header sum, so only address changes touch it.
    Partial,
}

/// Rewrite a TCP segment's source and destination (address and port): DNAT
/// and MASQUERADE in one pass. `ihl` is the IP header length in bytes (the
/// TCP header's offset; for IPv6, after the extension headers).
///
/// The IPv4 checksum covers the addresses; the TCP checksum covers the
/// ports and, through the pseudo-header, the addresses as well (in both
/// families). Each checksum is folded once, for all four changes together.
#[inline]
pub fn rewrite_tcp<A: IpAddress>(
    pkt: &mut [u8],
    ihl: usize,
    src: Endpoint<A>,
    dst: Endpoint<A>,
    l4: L4Checksum,
) {
    let (ip_src, ip_dst) = addr_at::<A>();
    let addrs = write_addr(pkt, ip_src, *src.ip()).plus(write_addr(pkt, ip_dst, *dst.ip()));
    let ports = write_u16(pkt, ihl + TCP_SPORT, src.port()).plus(write_u16(
        pkt,
        ihl + TCP_DPORT,
        dst.port(),
    ));
    if A::VERSION == 4 {
        checksum::put(pkt, IP_CSUM, addrs.apply(checksum::get(pkt, IP_CSUM)));
    }
    let at = ihl + TCP_CSUM;
    let old = checksum::get(pkt, at);
    let new = match l4 {
        L4Checksum::Complete => addrs.plus(ports).apply(old),
        L4Checksum::Partial => addrs.apply_partial(old),
    };
    checksum::put(pkt, at, new);
}

/// Translate an ICMP or ICMPv6 error (RELATED to a flow,
/// `nf_nat_icmp_reply_translation`, `nf_nat_icmpv6_reply_translation`): the
/// outer header becomes `outer_src -> outer_dst`, the quoted packet becomes
/// `inner_src -> inner_dst`, the quoted headers' checksums are updated
/// incrementally and the ICMP checksum is computed afresh over the message
/// (ICMPv6's with its pseudo-header, RFC 4443 section 2.3). `len` is the
/// packet's length.
pub fn rewrite_icmp_error<A: IpAddress>(
    pkt: &mut [u8],
    len: usize,
    q: IcmpQuote,
    outer: (A, A),
    inner_src: Endpoint<A>,
    inner_dst: Endpoint<A>,
) {
    let (ip_src, ip_dst) = addr_at::<A>();
    let outer_csum: &[usize] = if A::VERSION == 4 { &[IP_CSUM] } else { &[] };
    replace_addr(pkt, ip_src, outer.0, outer_csum);
    replace_addr(pkt, ip_dst, outer.1, outer_csum);
    let inner_csum = q.inner_ip + IP_CSUM;
    let tcp_csum = q.inner_tcp + TCP_CSUM;
    // The quoted TCP checksum is updated only if the quote includes it; an
    // IPv6 header has no checksum of its own.
    let with_ip: &[usize] = match (A::VERSION == 4, q.has_tcp_csum) {
        (true, true) => &[inner_csum, tcp_csum],
        (true, false) => &[inner_csum],
        (false, true) => &[tcp_csum],
        (false, false) => &[],
    };
    let with_tcp: &[usize] = if q.has_tcp_csum { &[tcp_csum] } else { &[] };
    replace_addr(pkt, q.inner_ip + ip_src, *inner_src.ip(), with_ip);
    replace_addr(pkt, q.inner_ip + ip_dst, *inner_dst.ip(), with_ip);
    replace_u16(pkt, q.inner_tcp + TCP_SPORT, inner_src.port(), with_tcp);
    replace_u16(pkt, q.inner_tcp + TCP_DPORT, inner_dst.port(), with_tcp);
    let at = q.icmp + icmp::CHECKSUM.start;
    checksum::put(pkt, at, 0);
    let c = if A::VERSION == 4 {
        checksum::full(&pkt[q.icmp..len])
    } else {
        checksum::full_l4(outer.0, outer.1, checksum::ICMPV6, &pkt[q.icmp..len])
    };
    checksum::put(pkt, at, c);
}

// The IPv6 header's offsets are read through `field::addrs`; this names
// the module for readers looking for where IPv6 is handled.
const _: usize = ipv6::HEADER_LEN;

/// Turn a client's SYN `syn` in `pkt` into a RST|ACK from `from` back to the
/// client, in place (RFC 793: "If the incoming segment has no ACK field, the
/// reset has sequence number zero and the ACK field is set to the sum of the
/// sequence number and segment length"). Returns the reply's length.
///
/// `pkt` holds the segment `syn` was parsed from, so at least the 40 bytes
/// the reset overwrites.
pub fn syn_to_reset<A: IpAddress>(pkt: &mut [u8], syn: &TcpRepr<A>, from: Endpoint<A>) -> usize {
    use crate::conntrack::tcp::flags::{ACK, RST};
    Segment {
        ack: syn.segment.end(),
        ..Segment::between(from, syn.tuple.src, RST | ACK)
    }
    .emit(pkt)
}
