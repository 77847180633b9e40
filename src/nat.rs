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
        checksum::put_ne(buf, c, d.apply(checksum::get_ne(buf, c)));
    }
}

/// Replace the 16-bit word at `at` with `new`, updating each checksum stored
/// at the offsets in `csums`.
#[inline]
fn replace_u16(buf: &mut [u8], at: usize, new: u16, csums: &[usize]) {
    let d = write_u16(buf, at, new);
    for &c in csums {
        checksum::put_ne(buf, c, d.apply(checksum::get_ne(buf, c)));
    }
}

/// Write the address `new` at `at`; return the checksum change (in native
/// byte order, see [`checksum::get_ne`]).
#[inline(always)]
fn write_addr<A: IpAddress>(buf: &mut [u8], at: usize, new: A) -> Delta {
    let field = &mut buf[at..at + A::LEN];
    let new = new.octets();
    let mut d = Delta::new();
    d.octets(field, new.as_ref());
    field.copy_from_slice(new.as_ref());
    d
}

/// Write `new` at `at`; return the checksum change (in native byte order).
#[inline]
fn write_u16(buf: &mut [u8], at: usize, new: u16) -> Delta {
    let old = checksum::get_ne(buf, at);
    checksum::put(buf, at, new);
    let mut d = Delta::new();
    d.u16(old, u16::from_ne_bytes(new.to_be_bytes()));
    d
}

/// How the TCP checksum field of a segment is to be updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Checksum {
    /// A complete checksum (the normal case), verified by the engine
    /// (when `verify_checksums` is on) before it is trusted.
    Complete,
    /// A complete checksum the kernel (or the NIC under it) has already
    /// verified: virtio-net's `DATA_VALID`, the skb's
    /// `CHECKSUM_UNNECESSARY`. Updated as [`Complete`](Self::Complete), not
    /// verified again, as netfilter's `nf_ip_checksum` skips such packets.
    Verified,
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
    // All checksum arithmetic in native byte order on the bytes as they lie
    // (see `checksum::get_ne`). One bounds check for the IP header's
    // addresses (and IPv4's checksum, before them), one for the TCP header's
    // ports and checksum; fixed offsets within each.
    let (ip_src, ip_dst) = addr_at::<A>();
    let (new_src, new_dst) = (src.ip().octets(), dst.ip().octets());
    let mut addrs = Delta::new();
    let ip = &mut pkt[..ip_dst + A::LEN];
    addrs.octets(&ip[ip_src..ip_src + A::LEN], new_src.as_ref());
    addrs.octets(&ip[ip_dst..], new_dst.as_ref());
    ip[ip_src..ip_src + A::LEN].copy_from_slice(new_src.as_ref());
    ip[ip_dst..].copy_from_slice(new_dst.as_ref());
    if A::VERSION == 4 {
        let c = checksum::get_ne(ip, IP_CSUM);
        checksum::put_ne(ip, IP_CSUM, addrs.apply(c));
    }
    let tcp = &mut pkt[ihl..ihl + TCP_CSUM + 2];
    // Both ports as one 32-bit word.
    let ports_at = TCP_SPORT..TCP_DPORT + 2;
    let old_ports = u32::from_ne_bytes(tcp[ports_at.clone()].try_into().expect("4 bytes"));
    let [s0, s1] = src.port().to_be_bytes();
    let [d0, d1] = dst.port().to_be_bytes();
    let new_ports = [s0, s1, d0, d1];
    tcp[ports_at].copy_from_slice(&new_ports);
    let old = checksum::get_ne(tcp, TCP_CSUM);
    let new = match l4 {
        L4Checksum::Complete | L4Checksum::Verified => {
            let mut all = addrs;
            all.u32(old_ports, u32::from_ne_bytes(new_ports));
            all.apply(old)
        }
        L4Checksum::Partial => addrs.apply_partial(old),
    };
    checksum::put_ne(tcp, TCP_CSUM, new);
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    /// The rewrite as RFC 1624 states it: each changed 16-bit word in
    /// network order, one update at a time, into each checksum covering it.
    fn word_by_word<A: IpAddress>(
        pkt: &mut [u8],
        ihl: usize,
        src: Endpoint<A>,
        dst: Endpoint<A>,
        l4: L4Checksum,
    ) {
        let (ip_src, ip_dst) = addr_at::<A>();
        let tcp_csum = ihl + TCP_CSUM;
        let mut words = Vec::new();
        for (at, new) in [(ip_src, src.ip().octets()), (ip_dst, dst.ip().octets())] {
            for (i, pair) in new.as_ref().chunks(2).enumerate() {
                words.push((at + 2 * i, u16::from_be_bytes([pair[0], pair[1]]), true));
            }
        }
        words.push((ihl + TCP_SPORT, src.port(), false));
        words.push((ihl + TCP_DPORT, dst.port(), false));
        for (at, new, is_addr) in words {
            let old = checksum::get(pkt, at);
            checksum::put(pkt, at, new);
            if is_addr && A::VERSION == 4 {
                let c = checksum::update_u16(checksum::get(pkt, IP_CSUM), old, new);
                checksum::put(pkt, IP_CSUM, c);
            }
            let c = checksum::get(pkt, tcp_csum);
            let c = match l4 {
                L4Checksum::Complete | L4Checksum::Verified => checksum::update_u16(c, old, new),
                // The uncomplemented sum: moved by the addresses only.
                L4Checksum::Partial if is_addr => !checksum::update_u16(!c, old, new),
                L4Checksum::Partial => c,
            };
            checksum::put(pkt, tcp_csum, c);
        }
    }

    /// Check [`rewrite_tcp`] against [`word_by_word`] on `pkt` (any bytes).
    fn same_bytes<A: IpAddress>(
        pkt: &[u8],
        ihl: usize,
        src: Endpoint<A>,
        dst: Endpoint<A>,
    ) -> Result<(), TestCaseError> {
        for l4 in [
            L4Checksum::Complete,
            L4Checksum::Verified,
            L4Checksum::Partial,
        ] {
            let (mut fast, mut plain) = (pkt.to_vec(), pkt.to_vec());
            rewrite_tcp(&mut fast, ihl, src, dst, l4);
            word_by_word(&mut plain, ihl, src, dst, l4);
            prop_assert_eq!(fast, plain, "{:?}", l4);
        }
        Ok(())
    }

    /// A 32-bit value, often all zeros or all ones (the words where
    /// one's complement has its two zeros).
    fn edgy_u32() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()]
    }

    /// A checksum field, often 0x0000 or 0xffff.
    fn edgy_u16() -> impl Strategy<Value = u16> {
        prop_oneof![Just(0u16), Just(0xffff), any::<u16>()]
    }

    proptest! {
        #[test]
        fn ipv4_rewrite_equals_word_by_word_rfc1624(
            mut pkt in proptest::collection::vec(any::<u8>(), 40),
            ip_csum in edgy_u16(), tcp_csum in edgy_u16(),
            ips in proptest::array::uniform4(edgy_u32()),
            ports in proptest::array::uniform4(prop_oneof![Just(0u16), Just(0xffff), any::<u16>()]),
        ) {
            checksum::put(&mut pkt, IP_CSUM, ip_csum);
            checksum::put(&mut pkt, 20 + TCP_CSUM, tcp_csum);
            pkt[12..16].copy_from_slice(&ips[0].to_be_bytes());
            pkt[16..20].copy_from_slice(&ips[1].to_be_bytes());
            checksum::put(&mut pkt, 20 + TCP_SPORT, ports[0]);
            checksum::put(&mut pkt, 20 + TCP_DPORT, ports[1]);
            let src = Endpoint::new(Ipv4Addr::from_bits(ips[2]), ports[2]);
            let dst = Endpoint::new(Ipv4Addr::from_bits(ips[3]), ports[3]);
            same_bytes(&pkt, 20, src, dst)?;
        }

        #[test]
        fn ipv6_rewrite_equals_word_by_word_rfc1624(
            mut pkt in proptest::collection::vec(any::<u8>(), 60),
            tcp_csum in edgy_u16(),
            ips in proptest::array::uniform4(prop_oneof![Just(0u128), Just(u128::MAX), any::<u128>()]),
            ports in proptest::array::uniform4(edgy_u16()),
        ) {
            checksum::put(&mut pkt, 40 + TCP_CSUM, tcp_csum);
            pkt[8..24].copy_from_slice(&ips[0].to_be_bytes());
            pkt[24..40].copy_from_slice(&ips[1].to_be_bytes());
            checksum::put(&mut pkt, 40 + TCP_SPORT, ports[0]);
            checksum::put(&mut pkt, 40 + TCP_DPORT, ports[1]);
            let src = Endpoint::new(Ipv6Addr::from_bits(ips[2]), ports[2]);
            let dst = Endpoint::new(Ipv6Addr::from_bits(ips[3]), ports[3]);
            same_bytes(&pkt, 40, src, dst)?;
        }
    }
}
