//! Judging packets with smoltcp's checked views: the engine's output must
//! parse and carry valid checksums, whatever went in.

use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::wire::{
    Icmpv4Packet, Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
};

use crate::family::Plan;

/// The addresses and, for TCP, ports and flags of a packet: what a test
/// needs to know about where the engine sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary<A = Ipv4Addr> {
    /// The source address.
    pub src: A,
    /// The destination address.
    pub dst: A,
    /// The TCP ports and flag byte, if the packet is TCP.
    pub tcp: Option<TcpSummary>,
    /// ICMP (ICMPv6 for IPv6) type and code, if the packet is ICMP.
    pub icmp: Option<(u8, u8)>,
    /// The length of the IP header (IPv6: with its extension headers).
    pub header_len: usize,
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

impl<A: Plan> Summary<A> {
    /// Return the source as address and port (port 0 if not TCP).
    pub fn src_sock(&self) -> A::Sock {
        A::sock(self.src, self.tcp.map_or(0, |t| t.sport))
    }

    /// Return the destination as address and port (port 0 if not TCP).
    pub fn dst_sock(&self) -> A::Sock {
        A::sock(self.dst, self.tcp.map_or(0, |t| t.dport))
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
    valid::<Ipv4Addr>(pkt)
}

/// Check that `pkt` is exactly one well-formed IPv6 packet (extension
/// headers allowed, no fragment header) whose TCP or ICMPv6 checksum
/// verifies, and summarise it.
pub fn valid_packet6(pkt: &[u8]) -> Result<Summary<Ipv6Addr>, String> {
    valid::<Ipv6Addr>(pkt)
}

/// Check that `pkt` is exactly one well-formed packet of `A`'s family with
/// valid checksums (IPv4: header and TCP or ICMP; IPv6: TCP or ICMPv6, with
/// the pseudo-header), and summarise it.
pub fn valid<A: Plan>(pkt: &[u8]) -> Result<Summary<A>, String> {
    let (src, dst, proto, header_len) = match A::VERSION {
        4 => ipv4_header(pkt)?,
        _ => ipv6_header(pkt)?,
    };
    let (src, dst) = (
        A::from_smol(src).expect("the family's own"),
        A::from_smol(dst).expect("the family's own"),
    );
    let mut s = Summary {
        src,
        dst,
        tcp: None,
        icmp: None,
        header_len,
    };
    let payload = &pkt[header_len..];
    match proto {
        IpProtocol::Tcp => {
            let tcp =
                TcpPacket::new_checked(payload).map_err(|_| "truncated TCP header".to_string())?;
            if !tcp.verify_checksum(&src.smol(), &dst.smol()) {
                return Err(format!("bad TCP checksum: {pkt:02x?}"));
            }
            s.tcp = Some(TcpSummary {
                sport: tcp.src_port(),
                dport: tcp.dst_port(),
                flags: payload[13],
                seq: tcp.seq_number().0 as u32,
                ack: tcp.ack_number().0 as u32,
                payload: tcp.payload().len(),
            });
        }
        IpProtocol::Icmp if A::VERSION == 4 => {
            let icmp = Icmpv4Packet::new_checked(payload)
                .map_err(|_| "truncated ICMP header".to_string())?;
            if !icmp.verify_checksum() {
                return Err(format!("bad ICMP checksum: {pkt:02x?}"));
            }
            s.icmp = Some((payload[0], icmp.msg_code()));
        }
        IpProtocol::Icmpv6 if A::VERSION == 6 => {
            let icmp = Icmpv6Packet::new_checked(payload)
                .map_err(|_| "truncated ICMPv6 header".to_string())?;
            let v6 = |a: A| match a.smol() {
                IpAddress::Ipv6(a) => a,
                IpAddress::Ipv4(_) => unreachable!("an IPv6 packet"),
            };
            if !icmp.verify_checksum(&v6(src), &v6(dst)) {
                return Err(format!("bad ICMPv6 checksum: {pkt:02x?}"));
            }
            s.icmp = Some((payload[0], icmp.msg_code()));
        }
        other => return Err(format!("unexpected protocol {other}")),
    }
    Ok(s)
}

/// The addresses, protocol and header length of a checked IPv4 packet.
fn ipv4_header(pkt: &[u8]) -> Result<(IpAddress, IpAddress, IpProtocol, usize), String> {
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
    Ok((
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
        ip.next_header(),
        ip.header_len().into(),
    ))
}

/// The addresses, upper-layer protocol and header length (extension
/// headers included) of a checked IPv6 packet.
fn ipv6_header(pkt: &[u8]) -> Result<(IpAddress, IpAddress, IpProtocol, usize), String> {
    let ip = Ipv6Packet::new_checked(pkt)
        .map_err(|_| format!("not a parsable IPv6 packet: {pkt:02x?}"))?;
    if ip.version() != 6 {
        return Err(format!("version {}", ip.version()));
    }
    if usize::from(ip.payload_len()) + 40 != pkt.len() {
        return Err(format!(
            "payload length {} but {} bytes",
            ip.payload_len(),
            pkt.len()
        ));
    }
    let (header_len, next) = ext_headers(pkt)?;
    Ok((
        IpAddress::Ipv6(ip.src_addr()),
        IpAddress::Ipv6(ip.dst_addr()),
        IpProtocol::from(next),
        header_len,
    ))
}

/// Walk the extension headers of an IPv6 packet (hop-by-hop, routing,
/// destination options) to the upper-layer header: its offset and protocol.
/// A fragment header is an error: the engine never emits a fragment.
pub fn ext_headers(pkt: &[u8]) -> Result<(usize, u8), String> {
    let (mut at, mut next) = (40, pkt[6]);
    loop {
        match next {
            0 | 43 | 60 => {
                let h = pkt
                    .get(at..at + 2)
                    .ok_or_else(|| format!("extension header {next} truncated"))?;
                next = h[0];
                at += (usize::from(h[1]) + 1) * 8;
                if at > pkt.len() {
                    return Err("extension header beyond the packet".into());
                }
            }
            44 => return Err("a fragment".into()),
            upper => return Ok((at, upper)),
        }
    }
}

/// Describe a packet of either family in one line for failure messages,
/// valid or not.
pub fn describe(pkt: &[u8]) -> String {
    match pkt.first().map(|b| b >> 4) {
        Some(6) => describe_as::<Ipv6Addr>(pkt),
        _ => describe_as::<Ipv4Addr>(pkt),
    }
}

fn describe_as<A: Plan>(pkt: &[u8]) -> String {
    match valid::<A>(pkt) {
        Ok(Summary {
            src,
            dst,
            tcp: Some(t),
            ..
        }) => format!(
            "{} -> {} flags={:#04x} seq={} ack={} len={}",
            A::sock(src, t.sport),
            A::sock(dst, t.dport),
            t.flags,
            t.seq,
            t.ack,
            t.payload
        ),
        Ok(Summary {
            src,
            dst,
            icmp: Some((ty, code)),
            ..
        }) => format!("{src} -> {dst} ICMP {ty}/{code} ({} bytes)", pkt.len()),
        Ok(s) => format!("{s:?}"),
        Err(e) => format!("invalid ({e})"),
    }
}
