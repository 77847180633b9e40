//! RFC 1624 incremental checksum updates: the only place tunlb touches a checksum.
//!
//! A NAT changes a few 16-bit words of a packet (an address, a port). Rather than
//! summing the whole packet again, RFC 1624 eqn. 3 updates the stored checksum
//! from the old and new values of the changed words:
//!
//! ```text
//! HC' = ~(~HC + ~m + m')        (one's-complement arithmetic)
//! ```
//!
//! The IPv4 header checksum covers the addresses; the TCP checksum covers the
//! ports *and*, through the pseudo-header, the addresses too. So a DNAT of
//! `dst addr:port` updates the IPv4 checksum for the address and the TCP
//! checksum for both. Eqn. 3 (unlike eqn. 2 of RFC 1141) never produces the
//! forbidden `0xFFFF`-for-zero result and handles `HC = 0x0000/0xFFFF` correctly;
//! the property tests compare it against a full recomputation.
//!
//! IPv6 has no header checksum; its TCP and ICMPv6 checksums cover a
//! pseudo-header with the 128-bit addresses, so an address change is eight
//! word changes ([`Delta::addr`]) and nothing else differs.

use crate::conntrack::tuple::IpAddress;

/// Fold a 64-bit one's-complement accumulator into 16 bits: each half added
/// to the other with end-around carry (2^32 and 2^16 are 1 modulo 0xffff).
/// Zero only for zero; otherwise in `1..=0xffff`.
#[inline]
const fn fold(sum: u64) -> u16 {
    let (s, c) = (sum as u32).overflowing_add((sum >> 32) as u32);
    // No overflow: with a carry out, `s` is at most 2^32 - 2.
    let s = s + c as u32;
    let (s, c) = (s as u16).overflowing_add((s >> 16) as u16);
    s + c as u16
}

/// Return `checksum` updated for one 16-bit word changing from `old` to `new`.
#[inline]
#[must_use]
pub const fn update_u16(checksum: u16, old: u16, new: u16) -> u16 {
    !fold((!checksum) as u64 + (!old) as u64 + new as u64)
}

/// Return `checksum` updated for one 32-bit word (an IPv4 address) changing from
/// `old` to `new`. Both words are given in network order as `u32::from_be_bytes`.
#[inline]
#[must_use]
pub const fn update_u32(checksum: u16, old: u32, new: u32) -> u16 {
    let mut d = Delta::new();
    d.u32(old, new);
    d.apply(checksum)
}

/// The sum of several word changes, applied to a checksum in one step: each
/// checksum covering the changed words costs one fold, however many words
/// changed (RFC 1624 eqn. 3 with `~m + m'` summed over the words).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// No change.
    pub const fn new() -> Self {
        Delta(0)
    }

    /// Add a 16-bit word changing from `old` to `new`.
    #[inline]
    pub const fn u16(&mut self, old: u16, new: u16) {
        self.0 += (!old) as u64 + new as u64;
    }

    /// Add a 32-bit word changing from `old` to `new`: its two 16-bit
    /// halves, added as one (2^16 is 1 modulo 0xffff, and `!old` is the
    /// complement of each half).
    #[inline]
    pub const fn u32(&mut self, old: u32, new: u32) {
        self.0 += (!old) as u64 + new as u64;
    }

    /// Add an address changing from `old` to `new`: two 16-bit words for
    /// IPv4, eight for IPv6 (the pseudo-header of RFC 8200 section 8.1
    /// holds the 128-bit addresses; RFC 1624 applies word by word).
    ///
    /// The words are taken as the address's bytes lie in the packet, read
    /// in native byte order (see [`get_ne`]): apply the result to a
    /// checksum read the same way.
    #[inline(always)]
    pub fn addr<A: IpAddress>(&mut self, old: A, new: A) {
        self.octets(old.octets().as_ref(), new.octets().as_ref());
    }

    /// Add the bytes `old` changing to `new` (of the same length, a multiple
    /// of 4, starting at an even offset), read as native-endian words.
    #[inline(always)]
    pub fn octets(&mut self, old: &[u8], new: &[u8]) {
        for (o, n) in old.chunks_exact(4).zip(new.chunks_exact(4)) {
            let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            self.u32(word(o), word(n));
        }
    }

    /// Return the changes of `self` and `other` together.
    #[inline]
    pub const fn plus(self, other: Delta) -> Delta {
        Delta(self.0 + other.0)
    }

    /// Return a stored (complemented) checksum updated by the changes.
    #[inline]
    #[must_use]
    pub const fn apply(self, checksum: u16) -> u16 {
        !fold((!checksum) as u64 + self.0)
    }

    /// Return a *partial* checksum updated by the changes: the uncomplemented
    /// pseudo-header sum a sender leaves for offload (`CHECKSUM_PARTIAL`,
    /// virtio-net `NEEDS_CSUM`), as Linux's `inet_proto_csum_replace4` does.
    #[inline]
    #[must_use]
    pub const fn apply_partial(self, partial: u16) -> u16 {
        fold(partial as u64 + self.0)
    }
}

/// Decrement the TTL of the IPv4 header at the start of `ip` and update its
/// header checksum to match, as a router forwarding the packet does (RFC
/// 1812 5.3.1; Linux's `ip_decrease_ttl`), and return the new TTL. The TTL
/// is the high byte of the header's fifth 16-bit word, so that word falls
/// by `0x0100`. A TTL of 0 or 1 is left as it is and `None` returned: a
/// router drops such a packet (and says so with ICMP "time exceeded").
///
/// # Panics
/// If `ip` is shorter than 12 bytes.
#[inline]
pub fn decrement_ttl(ip: &mut [u8]) -> Option<u8> {
    if ip[8] <= 1 {
        return None;
    }
    let old = u16::from_be_bytes([ip[8], ip[9]]);
    ip[8] -= 1;
    put(ip, 10, update_u16(get(ip, 10), old, old - 0x0100));
    Some(ip[8])
}

/// Return the one's-complement sum of `data` as big-endian 16-bit words
/// (RFC 1071), folded but not complemented.
///
/// The bytes are added as native-endian 64-bit words with end-around carry
/// (RFC 1071 section 4.1's "add with carry" on a wider word, as Linux's
/// `csum_partial`): a carry out of bit 63 is worth 2^64, which is 1 modulo
/// 0xffff, so it is added back at the bottom (kept in a second word and
/// added at the end). The one's-complement sum is byte-order independent
/// (RFC 1071 section 2(B)): every byte keeps the parity of its offset, so
/// one swap at the end gives the big-endian result.
#[inline]
pub fn sum(data: &[u8]) -> u16 {
    u16::from_be(fold(sum_ne(data)))
}

/// Return whether `data`, checksum included, sums to all ones: whether an
/// IPv4 header's checksum verifies (RFC 1071 section 1, "the result is
/// checked by adding up all the bytes, including the checksum"). A header
/// without options (20 bytes, nearly all of them) is summed in three words,
/// without a loop.
#[inline(always)]
pub fn sums_to_ones(data: &[u8]) -> bool {
    let s = match data.first_chunk::<20>() {
        Some(h) if data.len() == 20 => {
            let (a, rest) = h.split_first_chunk::<8>().expect("20 bytes");
            let (b, c) = rest.split_first_chunk::<8>().expect("12 bytes");
            let c: &[u8; 4] = c.try_into().expect("4 bytes");
            let wide = u128::from(u64::from_ne_bytes(*a))
                + u128::from(u64::from_ne_bytes(*b))
                + u128::from(u32::from_ne_bytes(*c));
            let (low, carries) = (wide as u64, (wide >> 64) as u64);
            (low & 0xffff_ffff) + (low >> 32) + carries
        }
        _ => sum_ne(data),
    };
    // All ones is all ones in either byte order.
    fold(s) == 0xffff
}

/// The unfolded native-endian sum of [`sum`]: 32 bytes per step, then what
/// is left (fewer than 32 bytes) by 16, 8, 4, 2 and 1, each at an even
/// offset, so in its place in a 16-bit word.
#[inline]
fn sum_ne(data: &[u8]) -> u64 {
    // The low word and the carries out of it: a carry is worth 2^64, which
    // is 1 modulo 0xffff.
    let mut acc: u128 = 0;
    let word = |b: &[u8; 8]| u128::from(u64::from_ne_bytes(*b));
    let mut rest = data;
    while let Some((block, r)) = rest.split_first_chunk::<32>() {
        let (a, b) = block.split_at(16);
        let (a, b) = (split16(a), split16(b));
        acc += word(a.0) + word(a.1) + word(b.0) + word(b.1);
        rest = r;
    }
    if let Some((sixteen, r)) = rest.split_first_chunk::<16>() {
        let (a, b) = split16(sixteen);
        acc += word(a) + word(b);
        rest = r;
    }
    if let Some((eight, r)) = rest.split_first_chunk::<8>() {
        acc += word(eight);
        rest = r;
    }
    let mut tail: u64 = 0;
    if let Some((four, r)) = rest.split_first_chunk::<4>() {
        tail += u64::from(u32::from_ne_bytes(*four));
        rest = r;
    }
    if let Some((two, r)) = rest.split_first_chunk::<2>() {
        tail += u64::from(u16::from_ne_bytes(*two));
        rest = r;
    }
    if let Some(&last) = rest.first() {
        tail += u64::from(u16::from_ne_bytes([last, 0]));
    }
    acc += u128::from(tail);
    // The carries (at most one per word) fit beside the halved low word.
    let (low, carries) = (acc as u64, (acc >> 64) as u64);
    (low & 0xffff_ffff) + (low >> 32) + carries
}

/// Split 16 bytes into two 8-byte words.
#[inline(always)]
fn split16(b: &[u8]) -> (&[u8; 8], &[u8; 8]) {
    let (x, y) = b.split_at(8);
    (
        x.try_into().expect("8 bytes"),
        y.try_into().expect("8 bytes"),
    )
}

/// The IP protocol number of TCP, in the pseudo-header.
pub const TCP: u8 = 6;
/// The IP protocol number of ICMPv6, in its pseudo-header.
pub const ICMPV6: u8 = 58;

/// Return the one's-complement sum (unfolded) of the pseudo-header of a
/// `len`-byte upper-layer message of `protocol` from `src` to `dst`: RFC 793's
/// for IPv4, RFC 8200 section 8.1's for IPv6 (the same words summed: the
/// 32-bit length's high half is zero for anything tunlb forwards).
#[inline(always)]
pub fn pseudo_header<A: IpAddress>(src: A, dst: A, protocol: u8, len: usize) -> u64 {
    src.word_sum()
        + dst.word_sum()
        + u64::from(protocol)
        + (len as u64 & 0xffff)
        + (len as u64 >> 16)
}

/// Return whether a TCP segment's checksum verifies, with the pseudo-header
/// of `src`, `dst` (either family).
#[inline]
pub fn verify_tcp<A: IpAddress>(src: A, dst: A, segment: &[u8]) -> bool {
    verify_l4(src, dst, TCP, segment)
}

/// Return whether an upper-layer message of `protocol` (TCP, ICMPv6) verifies
/// with the pseudo-header of `src`, `dst`.
#[inline]
pub fn verify_l4<A: IpAddress>(src: A, dst: A, protocol: u8, message: &[u8]) -> bool {
    // All in native byte order, folded once: a sum of all ones is all ones
    // in either byte order.
    let len = message.len() as u64;
    let pseudo = sum_ne(src.octets().as_ref())
        + sum_ne(dst.octets().as_ref())
        + u64::from(u16::from_ne_bytes([0, protocol]))
        + u64::from(u16::from_ne_bytes((len as u16).to_be_bytes()))
        + u64::from(u16::from_ne_bytes(((len >> 16) as u16).to_be_bytes()));
    fold(pseudo + sum_ne(message)) == 0xffff
}

/// Compute the complemented checksum of an upper-layer message of
/// `protocol` whose checksum field holds zero, pseudo-header included
/// (ICMPv6 messages tunlb translates or builds).
#[must_use]
pub fn full_l4<A: IpAddress>(src: A, dst: A, protocol: u8, message: &[u8]) -> u16 {
    let pseudo = pseudo_header(src, dst, protocol, message.len());
    !fold(pseudo + u64::from(sum(message)))
}

/// Read the big-endian checksum stored at `at..at + 2` in `buf`.
#[inline]
pub fn get(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Store `value` big-endian at `at..at + 2` in `buf`.
#[inline]
pub fn put(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Read the 16-bit word at `at..at + 2` in `buf` in native byte order.
///
/// One's-complement arithmetic is byte-order independent (RFC 1071 section
/// 2(B)): a checksum and the words changing under it, all read in native
/// order, update to the native-order reading of the big-endian result. So
/// the rewrite reads and writes the packet's bytes as they lie, with no
/// swap (the words must sit at even offsets, as every header field does).
#[inline]
pub fn get_ne(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([buf[at], buf[at + 1]])
}

/// Store `value` at `at..at + 2` in `buf` in native byte order (the inverse
/// of [`get_ne`]).
#[inline]
pub fn put_ne(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_ne_bytes());
}

/// Compute a full Internet checksum (RFC 1071) over `data`, complemented,
/// ready to store. Used only for packets tunlb builds or translates itself
/// (ICMP errors, resets), never for forwarded TCP segments.
#[must_use]
pub fn full(data: &[u8]) -> u16 {
    !sum(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::checksum;

    fn reference(words: &[u16]) -> u16 {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        !checksum::data(&bytes)
    }

    #[test]
    fn rfc1624_example_zero_cases() {
        // RFC 1624 section 4: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285 gives 0x0000.
        assert_eq!(update_u16(0xDD2F, 0x5555, 0x3285), 0x0000);
    }

    proptest::proptest! {
        #[test]
        fn incremental_equals_full(mut words in proptest::collection::vec(proptest::num::u16::ANY, 2..40),
                                   idx in 0usize..40, new in proptest::num::u16::ANY) {
            let idx = idx % words.len();
            let before = reference(&words);
            let old = words[idx];
            words[idx] = new;
            let after = reference(&words);
            let inc = update_u16(before, old, new);
            // One's complement has two zeros; a stored checksum of 0xFFFF and
            // 0x0000 verify identically, so compare modulo that equivalence.
            proptest::prop_assert!(inc == after || (inc ^ after == 0xffff && (inc == 0 || after == 0)),
                "inc {inc:#06x} full {after:#06x}");
        }

        #[test]
        fn wide_sum_equals_a_plain_rfc1071_sum(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2100),
                                               start in 0usize..8, cut in 0usize..2100) {
            // Any start (alignment) and any length, odd ones included,
            // against 16-bit big-endian words added one by one with
            // end-around carry (RFC 1071 section 4.1).
            let start = start.min(data.len());
            let end = (start + cut).min(data.len());
            let d = &data[start..end];
            let mut plain: u32 = 0;
            for pair in d.chunks(2) {
                plain += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
                plain = (plain & 0xffff) + (plain >> 16);
            }
            proptest::prop_assert_eq!(sum(d), plain as u16);
        }

        #[test]
        fn header_verification_equals_the_sum(mut data in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
                                              fill in proptest::bool::ANY) {
            // A 20-byte header takes the short way; with its checksum right
            // (half the time) or not, the answer is the full sum's.
            if fill && data.len() >= 12 {
                put(&mut data, 10, 0);
                let c = full(&data);
                put(&mut data, 10, c);
            }
            proptest::prop_assert_eq!(sums_to_ones(&data), sum(&data) == 0xffff);
            let mut header = [0u8; 20];
            let n = data.len().min(20);
            header[..n].copy_from_slice(&data[..n]);
            if fill {
                put(&mut header, 10, 0);
                let c = full(&header);
                put(&mut header, 10, c);
                proptest::prop_assert!(sums_to_ones(&header));
            }
            proptest::prop_assert_eq!(sums_to_ones(&header), sum(&header) == 0xffff);
        }

        #[test]
        fn a_decremented_ttl_keeps_the_header_checksum_right(mut header in proptest::array::uniform20(proptest::num::u8::ANY)) {
            put(&mut header, 10, 0);
            let c = full(&header);
            put(&mut header, 10, c);
            let ttl = header[8];
            let before = header;
            match decrement_ttl(&mut header) {
                None => {
                    proptest::prop_assert!(ttl <= 1);
                    proptest::prop_assert_eq!(header, before, "left as it was");
                }
                Some(t) => {
                    proptest::prop_assert_eq!(t, ttl - 1);
                    proptest::prop_assert_eq!(header[8], ttl - 1);
                    proptest::prop_assert!(sums_to_ones(&header), "the header still verifies");
                    proptest::prop_assert_eq!(&header[..8], &before[..8]);
                    proptest::prop_assert_eq!(&header[12..], &before[12..]);
                }
            }
        }

        #[test]
        fn wide_sum_equals_smoltcp(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            proptest::prop_assert_eq!(sum(&data), checksum::data(&data));
        }

        #[test]
        fn tcp_verification_equals_smoltcp(data in proptest::collection::vec(proptest::num::u8::ANY, 20..200),
                                           src in proptest::num::u32::ANY, dst in proptest::num::u32::ANY) {
            use smoltcp::wire::{IpAddress, Ipv4Address, TcpPacket};
            let (s, d) = (Ipv4Address::from_bits(src), Ipv4Address::from_bits(dst));
            let mut seg = data.clone();
            seg[12] = 0x50;
            TcpPacket::new_unchecked(&mut seg[..]).fill_checksum(&IpAddress::Ipv4(s), &IpAddress::Ipv4(d));
            proptest::prop_assert!(verify_tcp(std::net::Ipv4Addr::from_bits(src), std::net::Ipv4Addr::from_bits(dst), &seg));
            let last = seg.len() - 1;
            seg[last] ^= 0x01;
            let smol = TcpPacket::new_unchecked(&seg[..]).verify_checksum(&IpAddress::Ipv4(s), &IpAddress::Ipv4(d));
            proptest::prop_assert_eq!(verify_tcp(std::net::Ipv4Addr::from_bits(src), std::net::Ipv4Addr::from_bits(dst), &seg), smol);
        }

        #[test]
        fn ipv6_tcp_verification_equals_smoltcp(data in proptest::collection::vec(proptest::num::u8::ANY, 20..200),
                                                src in proptest::num::u128::ANY, dst in proptest::num::u128::ANY) {
            use smoltcp::wire::{IpAddress, Ipv6Address, TcpPacket};
            let (s, d) = (Ipv6Address::from_bits(src), Ipv6Address::from_bits(dst));
            let (ss, dd) = (std::net::Ipv6Addr::from_bits(src), std::net::Ipv6Addr::from_bits(dst));
            let mut seg = data.clone();
            seg[12] = 0x50;
            TcpPacket::new_unchecked(&mut seg[..]).fill_checksum(&IpAddress::Ipv6(s), &IpAddress::Ipv6(d));
            proptest::prop_assert!(verify_tcp(ss, dd, &seg));
            let last = seg.len() - 1;
            seg[last] ^= 0x01;
            let smol = TcpPacket::new_unchecked(&seg[..]).verify_checksum(&IpAddress::Ipv6(s), &IpAddress::Ipv6(d));
            proptest::prop_assert_eq!(verify_tcp(ss, dd, &seg), smol);
        }

        #[test]
        fn ipv6_address_change_equals_recomputation(data in proptest::collection::vec(proptest::num::u8::ANY, 20..200),
                                                    src in proptest::num::u128::ANY, dst in proptest::num::u128::ANY,
                                                    new_src in proptest::num::u128::ANY, new_dst in proptest::num::u128::ANY) {
            // A TCP checksum moved by the two address changes (RFC 1624 over
            // the 128-bit pseudo-header words) verifies with the new addresses.
            use std::net::Ipv6Addr as A;
            let (s, d, ns, nd) = (A::from_bits(src), A::from_bits(dst), A::from_bits(new_src), A::from_bits(new_dst));
            let mut seg = data.clone();
            seg[12] = 0x50;
            put(&mut seg, 16, 0);
            let c = full_l4(s, d, TCP, &seg);
            put(&mut seg, 16, c);
            proptest::prop_assert!(verify_tcp(s, d, &seg));
            let mut delta = Delta::new();
            delta.addr(s, ns);
            delta.addr(d, nd);
            let moved = delta.apply(get_ne(&seg, 16));
            put_ne(&mut seg, 16, moved);
            proptest::prop_assert!(verify_tcp(ns, nd, &seg));
        }

        #[test]
        fn partial_update_matches_recomputed_pseudo_sum(src in proptest::num::u32::ANY, new in proptest::num::u32::ANY,
                                                        dst in proptest::num::u32::ANY, len in 20u16..9000) {
            // The partial checksum is the folded pseudo-header sum; changing an
            // address must give the sum of the new pseudo-header.
            let pseudo = |s: u32| fold(u64::from(s) + u64::from(dst) + 6 + u64::from(len));
            let mut d = Delta::new();
            d.u32(src, new);
            let got = d.apply_partial(pseudo(src));
            let want = pseudo(new);
            proptest::prop_assert!(got == want || (got ^ want == 0xffff && (got == 0 || want == 0)), "{got:#06x} {want:#06x}");
        }

        #[test]
        fn incremental_u32_equals_two_u16(c in proptest::num::u16::ANY, old in proptest::num::u32::ANY, new in proptest::num::u32::ANY) {
            let two = update_u16(update_u16(c, (old >> 16) as u16, (new >> 16) as u16), old as u16, new as u16);
            proptest::prop_assert_eq!(update_u32(c, old, new), two);
        }
    }
}
