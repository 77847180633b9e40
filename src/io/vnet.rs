//! The virtio-net header a TUN opened with `IFF_VNET_HDR` puts before every
//! packet (`struct virtio_net_hdr`, 10 bytes, little-endian fields).
//!
//! With `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)` the kernel may
//! hand tunlb a TCP *super-packet* of up to 64 KiB (`gso_type` TCPV4,
//! `gso_size` = MSS) whose TCP checksum is *partial* (`NEEDS_CSUM`: the field
//! holds the pseudo-header sum and the checksum is computed when the packet
//! is finally segmented). tunlb rewrites such a packet once and writes it back
//! with the same header, so the kernel segments it later: one read and one
//! write move up to 44 segments.

use crate::nat::L4Checksum;

/// Size of the header (`sizeof(struct virtio_net_hdr)`, no `num_buffers`).
pub const LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_ECN` flag bit.
pub const GSO_ECN: u8 = 0x80;

/// A parsed virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `flags`: [`F_NEEDS_CSUM`], [`F_DATA_VALID`].
    pub flags: u8,
    /// `gso_type`: [`GSO_NONE`], [`GSO_TCPV4`], ... with [`GSO_ECN`].
    pub gso_type: u8,
    /// `hdr_len`: length of the headers (IP + TCP) of a super-packet.
    pub hdr_len: u16,
    /// `gso_size`: the segment payload size (MSS) of a super-packet.
    pub gso_size: u16,
    /// `csum_start`: where checksumming starts (the TCP header).
    pub csum_start: u16,
    /// `csum_offset`: where, from `csum_start`, the checksum is stored.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parse the first [`LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`LEN`].
    pub fn parse(buf: &[u8]) -> Self {
        let u = |i: usize| u16::from_le_bytes([buf[i], buf[i + 1]]);
        VnetHdr {
            flags: buf[0],
            gso_type: buf[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }

    /// Write the header into the first [`LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.flags;
        buf[1] = self.gso_type;
        buf[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        buf[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        buf[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        buf[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// Return how the engine must treat the TCP checksum of this packet.
    pub fn l4_checksum(&self) -> L4Checksum {
        if self.flags & F_NEEDS_CSUM != 0 {
            L4Checksum::Partial
        } else if self.flags & F_DATA_VALID != 0 {
            L4Checksum::Verified
        } else {
            L4Checksum::Complete
        }
    }

    /// Return whether this is a GSO super-packet.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_on_garbage() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0xa5u8; LEN];
        h.emit(&mut b);
        assert_eq!(b, [1, 1, 52, 0, 0xa8, 0x05, 20, 0, 16, 0]);
        assert_eq!(VnetHdr::parse(&b), h);
        assert!(h.is_gso());
        assert_eq!(h.l4_checksum(), L4Checksum::Partial);
        assert_eq!(VnetHdr::default().l4_checksum(), L4Checksum::Complete);
        let valid = VnetHdr {
            flags: F_DATA_VALID,
            ..VnetHdr::default()
        };
        assert_eq!(valid.l4_checksum(), L4Checksum::Verified);
        // A partial checksum is partial, whatever else the flags say.
        let both = VnetHdr {
            flags: F_NEEDS_CSUM | F_DATA_VALID,
            ..VnetHdr::default()
        };
        assert_eq!(both.l4_checksum(), L4Checksum::Partial);
    }
}
