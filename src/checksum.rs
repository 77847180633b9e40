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

/// Fold a 32-bit one's-complement accumulator into 16 bits.
#[inline]
const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Return `checksum` updated for one 16-bit word changing from `old` to `new`.
#[inline]
#[must_use]
pub const fn update_u16(checksum: u16, old: u16, new: u16) -> u16 {
    !fold((!checksum) as u32 + (!old) as u32 + new as u32)
}

/// Return `checksum` updated for one 32-bit word (an IPv4 address) changing from
/// `old` to `new`. Both words are given in network order as `u32::from_be_bytes`.
#[inline]
#[must_use]
pub const fn update_u32(checksum: u16, old: u32, new: u32) -> u16 {
    let sum = (!checksum) as u32
        + (!(old >> 16) & 0xffff)
        + (!old & 0xffff)
        + (new >> 16)
        + (new & 0xffff);
    !fold(sum)
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

/// Compute a full Internet checksum (RFC 1071) over `data`, complemented,
/// ready to store. Used only for packets tunlb builds itself (ICMP errors it
/// translates, resets it sends), never for forwarded TCP segments.
#[must_use]
pub fn full(data: &[u8]) -> u16 {
    !smoltcp::wire::checksum::data(data)
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
        fn incremental_u32_equals_two_u16(c in proptest::num::u16::ANY, old in proptest::num::u32::ANY, new in proptest::num::u32::ANY) {
            let two = update_u16(update_u16(c, (old >> 16) as u16, (new >> 16) as u16), old as u16, new as u16);
            proptest::prop_assert_eq!(update_u32(c, old, new), two);
        }
    }
}
