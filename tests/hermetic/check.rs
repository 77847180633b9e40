//! Judging packets with smoltcp's checked views: the engine's output must
//! parse and carry valid checksums, whatever went in.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::wire::{Icmpv4Packet, IpAddress, IpProtocol, Ipv4Packet, TcpPacket};

/// The addresses and, for TCP, ports and flags of a packet: what a test
/// needs to know about where the engine sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The IPv4 source address.
    pub src: Ipv4Addr,
    /// The IPv4 destination address.
    pub dst: Ipv4Addr,
    /// The TCP ports and flag byte, if the packet is TCP.
    pub tcp: Option<TcpSummary>,
    /// ICMP type and code, if the packet is ICMP.
    pub icmp: Option<(u8, u8)>,
}

/// The TCP part of a [`Summary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSummary {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// The flag byte (byte 13 of the header).
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Payload length.
    pub payload: usize,
}

impl Summary {
    /// Return the source as address and port (port 0 if not TCP).
    pub fn src_sock(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.src, self.tcp.map_or(0, |t| t.sport))
    }

    /// Return the destination as address and port (port 0 if not TCP).
    pub fn dst_sock(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.dst, self.tcp.map_or(0, |t| t.dport))
    }

    /// Return whether this is a TCP segment with exactly SYN set (a connection request).
    pub fn is_syn(&self) -> bool {
        self.tcp.is_some_and(|t| t.flags & 0x12 == 0x02)
    }

    /// Return whether this is a TCP SYN-ACK.
    pub fn is_syn_ack(&self) -> bool {
        self.tcp.is_some_and(|t| t.flags & 0x12 == 0x12)
    }
}

/// Check that `pkt` is exactly one well-formed IPv4 packet whose IPv4
/// checksum and TCP or ICMP checksum verify, and summarise it.
pub fn valid_packet(pkt: &[u8]) -> Result<Summary, String> {
    let ip = Ipv4Packet::new_checked(pkt)
        .map_err(|_| format!("not a parsable IPv4 packet: {pkt:02x?}"))?;
    if usize::from(ip.total_len()) != pkt.len() {
        return Err(format!(
            "total length {} but {} bytes",
            ip.total_len(),
            pkt.len()
        ));
    }
    if !ip.verify_checksum() {
        return Err(format!("bad IPv4 header checksum: {pkt:02x?}"));
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err("a fragment".into());
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let mut s = Summary {
        src,
        dst,
        tcp: None,
        icmp: None,
    };
    match ip.next_header() {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(ip.payload())
                .map_err(|_| "truncated TCP header".to_string())?;
            if !tcp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)) {
                return Err(format!("bad TCP checksum: {pkt:02x?}"));
            }
            let payload = tcp.payload().len();
            s.tcp = Some(TcpSummary {
                sport: tcp.src_port(),
                dport: tcp.dst_port(),
                flags: ip.payload()[13],
                seq: tcp.seq_number().0 as u32,
                ack: tcp.ack_number().0 as u32,
                payload,
            });
        }
        IpProtocol::Icmp => {
            let icmp = Icmpv4Packet::new_checked(ip.payload())
                .map_err(|_| "truncated ICMP header".to_string())?;
            if !icmp.verify_checksum() {
                return Err(format!("bad ICMP checksum: {pkt:02x?}"));
            }
            s.icmp = Some((ip.payload()[0], icmp.msg_code()));
        }
        other => return Err(format!("unexpected protocol {other}")),
    }
    Ok(s)
}

/// Describe a packet in one line for failure messages, valid or not.
pub fn describe(pkt: &[u8]) -> String {
    match valid_packet(pkt) {
        Ok(Summary {
            src,
            dst,
            tcp: Some(t),
            ..
        }) => format!(
            "{src}:{} -> {dst}:{} flags={:#04x} seq={} ack={} len={}",
            t.sport, t.dport, t.flags, t.seq, t.ack, t.payload
        ),
        Ok(Summary {
            src,
            dst,
            icmp: Some((ty, code)),
            ..
        }) => format!("{src} -> {dst} ICMP {ty}/{code}"),
        Ok(s) => format!("{s:?}"),
        Err(e) => format!("invalid ({e})"),
    }
}
