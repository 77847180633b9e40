//! The packet manipulations of NAT (`nf_nat_ipv4_manip_pkt`), in place.
//!
//! Each function rewrites an address or port and fixes every checksum that
//! covers it by RFC 1624 ([`crate::checksum`]), never by summing the packet
//! again. Offsets are [`crate::wire`]'s; the caller has already parsed the
//! packet there, so indexing cannot fail.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::checksum::{self, Delta};
use crate::craft::Segment;
use crate::wire::field::{icmp, ipv4, tcp};
use crate::wire::{IcmpQuote, TcpRepr};

const IP_CSUM: usize = ipv4::CHECKSUM.start;
const IP_SRC: usize = ipv4::SRC_ADDR.start;
const IP_DST: usize = ipv4::DST_ADDR.start;
const TCP_SPORT: usize = tcp::SRC_PORT.start;
const TCP_DPORT: usize = tcp::DST_PORT.start;
const TCP_CSUM: usize = tcp::CHECKSUM.start;

/// Replace the 32-bit word at `at` with `new`, updating each checksum stored
/// at the offsets in `csums`.
#[inline]
fn replace_u32(buf: &mut [u8], at: usize, new: Ipv4Addr, csums: &[usize]) {
    let d = write_u32(buf, at, new);
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

/// Write `new` at `at`; return the checksum change.
#[inline]
fn write_u32(buf: &mut [u8], at: usize, new: Ipv4Addr) -> Delta {
    let old = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let new = new.to_bits();
    buf[at..at + 4].copy_from_slice(&new.to_be_bytes());
    let mut d = Delta::new();
    d.u32(old, new);
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
/// and MASQUERADE in one pass. `ihl` is the IPv4 header length in bytes.
///
/// The IPv4 checksum covers the addresses; the TCP checksum covers the
/// ports and, through the pseudo-header, the addresses as well. Each
/// checksum is folded once, for all four changes together.
#[inline]
pub fn rewrite_tcp(
    pkt: &mut [u8],
    ihl: usize,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    l4: L4Checksum,
) {
    let addrs = write_u32(pkt, IP_SRC, *src.ip()).plus(write_u32(pkt, IP_DST, *dst.ip()));
    let ports = write_u16(pkt, ihl + TCP_SPORT, src.port()).plus(write_u16(
        pkt,
        ihl + TCP_DPORT,
        dst.port(),
    ));
    checksum::put(pkt, IP_CSUM, addrs.apply(checksum::get(pkt, IP_CSUM)));
    let at = ihl + TCP_CSUM;
    let old = checksum::get(pkt, at);
    let new = match l4 {
        L4Checksum::Complete => addrs.plus(ports).apply(old),
        L4Checksum::Partial => addrs.apply_partial(old),
    };
    checksum::put(pkt, at, new);
}

/// Translate an ICMP error (RELATED to a flow, `nf_nat_icmp_reply_translation`):
/// the outer header becomes `outer_src -> outer_dst`, the quoted packet
/// becomes `inner_src -> inner_dst`, the quoted headers' checksums are updated
/// incrementally and the ICMP checksum is computed afresh over the message.
pub fn rewrite_icmp_error(
    pkt: &mut [u8],
    q: IcmpQuote,
    outer: (Ipv4Addr, Ipv4Addr),
    inner_src: SocketAddrV4,
    inner_dst: SocketAddrV4,
) {
    replace_u32(pkt, IP_SRC, outer.0, &[IP_CSUM]);
    replace_u32(pkt, IP_DST, outer.1, &[IP_CSUM]);
    let inner_csum = q.inner_ip + IP_CSUM;
    let tcp_csum = q.inner_tcp + TCP_CSUM;
    // The quoted TCP checksum is updated only if the quote includes it.
    let (with_ip, with_tcp): (&[usize], &[usize]) = if q.has_tcp_csum {
        (&[inner_csum, tcp_csum], &[tcp_csum])
    } else {
        (&[inner_csum], &[])
    };
    replace_u32(pkt, q.inner_ip + IP_SRC, *inner_src.ip(), with_ip);
    replace_u32(pkt, q.inner_ip + IP_DST, *inner_dst.ip(), with_ip);
    replace_u16(pkt, q.inner_tcp + TCP_SPORT, inner_src.port(), with_tcp);
    replace_u16(pkt, q.inner_tcp + TCP_DPORT, inner_dst.port(), with_tcp);
    let l = ipv4::LENGTH.start;
    let total = usize::from(u16::from_be_bytes([pkt[l], pkt[l + 1]]));
    let icmp = &mut pkt[q.icmp..total];
    checksum::put(icmp, icmp::CHECKSUM.start, 0);
    let c = checksum::full(icmp);
    checksum::put(icmp, icmp::CHECKSUM.start, c);
}

/// Turn a client's SYN `syn` in `pkt` into a RST|ACK from `from` back to the
/// client, in place (RFC 793: "If the incoming segment has no ACK field, the
/// reset has sequence number zero and the ACK field is set to the sum of the
/// sequence number and segment length"). Returns the reply's length.
///
/// `pkt` holds the segment `syn` was parsed from, so at least the 40 bytes
/// the reset overwrites.
pub fn syn_to_reset(pkt: &mut [u8], syn: &TcpRepr, from: SocketAddrV4) -> usize {
    use crate::conntrack::tcp::flags::{ACK, RST};
    Segment {
        ack: syn.segment.end(),
        ..Segment::new(from, syn.tuple.src, RST | ACK)
    }
    .emit(pkt)
}
