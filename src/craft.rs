//! Building well-formed IPv4 or IPv6 TCP segments: the resets tunlb sends, and the packets of tests, benches and fuzzing.
//!
//! tunlb never builds forwarded packets (it rewrites them in place). This
//! builds the packets it writes itself (a reset to a client when every
//! backend is drained, [`crate::nat::syn_to_reset`]; on the packet
//! datapath, the ICMP errors a router would send, [`IcmpError`]) and the
//! client and backend side of tests, benches and fuzzing: a segment with
//! any flags, sequence numbers and payload, with correct checksums, through
//! smoltcp's field setters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};

/// A TCP segment to build, from `S` to `S`: [`SocketAddrV4`] (the
/// default), [`std::net::SocketAddrV6`], or [`SocketAddr`] with both ends of
/// one family.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a, S = SocketAddrV4> {
    /// Source address and port.
    pub src: S,
    /// Destination address and port.
    pub dst: S,
    /// The flag byte (see [`crate::conntrack::tcp::flags`]).
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Payload.
    pub payload: &'a [u8],
}

impl Segment<'_, SocketAddrV4> {
    /// An IPv4 segment with these endpoints and flags, sequence numbers 0
    /// and no payload.
    pub fn new(src: impl Into<SocketAddrV4>, dst: impl Into<SocketAddrV4>, flags: u8) -> Self {
        Segment::between(src.into(), dst.into(), flags)
    }
}

impl<'a, S: Into<SocketAddr> + Copy> Segment<'a, S> {
    /// A segment of either family with these endpoints and flags, sequence
    /// numbers 0 and no payload.
    pub fn between(src: S, dst: S, flags: u8) -> Self {
        Segment {
            src,
            dst,
            flags,
            seq: 0,
            ack: 0,
            payload: &[],
        }
    }

    /// The IP header's length: 20 bytes for IPv4, 40 for IPv6.
    fn ip_header_len(&self) -> usize {
        match self.src.into() {
            SocketAddr::V4(_) => 20,
            SocketAddr::V6(_) => 40,
        }
    }

    /// Return the segment as an IP packet with valid checksums.
    pub fn build(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.ip_header_len() + 20 + self.payload.len()];
        self.emit(&mut b);
        b
    }

    /// Write the segment as an IP packet with valid checksums (a 20-byte
    /// IPv4 header, DF set, TTL 64, or a 40-byte IPv6 header, hop limit 64;
    /// a 20-byte TCP header, window 65535, or 0 for a reset, which
    /// advertises none) at the start of `buf`, and return its length.
    ///
    /// # Panics
    /// If `buf` is shorter than the headers plus the payload, or if the two
    /// ends are of different families.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let ihl = self.ip_header_len();
        let len = ihl + 20 + self.payload.len();
        let buf = &mut buf[..len];
        buf.fill(0);
        let (src, dst): (SocketAddr, SocketAddr) = (self.src.into(), self.dst.into());
        let (src_ip, dst_ip) = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
                ip.set_version(4);
                ip.set_header_len(20);
                ip.set_total_len(len as u16);
                ip.set_dont_frag(true);
                ip.set_hop_limit(64);
                ip.set_next_header(IpProtocol::Tcp);
                ip.set_src_addr(s);
                ip.set_dst_addr(d);
                ip.fill_checksum();
                (IpAddress::Ipv4(s), IpAddress::Ipv4(d))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut ip = Ipv6Packet::new_unchecked(&mut buf[..]);
                ip.set_version(6);
                ip.set_payload_len((len - ihl) as u16);
                ip.set_hop_limit(64);
                ip.set_next_header(IpProtocol::Tcp);
                ip.set_src_addr(s);
                ip.set_dst_addr(d);
                (IpAddress::Ipv6(s), IpAddress::Ipv6(d))
            }
            _ => panic!("a segment from {src} to {dst} mixes families"),
        };
        let mut t = TcpPacket::new_unchecked(&mut buf[ihl..]);
        t.set_src_port(src.port());
        t.set_dst_port(dst.port());
        t.set_seq_number(smoltcp::wire::TcpSeqNumber(self.seq as i32));
        t.set_ack_number(smoltcp::wire::TcpSeqNumber(self.ack as i32));
        t.set_header_len(20);
        let reset = self.flags & crate::conntrack::tcp::flags::RST != 0;
        t.set_window_len(if reset { 0 } else { 65535 });
        t.payload_mut().copy_from_slice(self.payload);
        // Flags last: set_header_len shares the byte pair with the flags.
        let raw = t.into_inner();
        raw[13] = self.flags;
        let mut t = TcpPacket::new_unchecked(raw);
        t.fill_checksum(&src_ip, &dst_ip);
        len
    }
}

/// An ICMP error about a packet (RFC 792), as a router sends it when it
/// cannot forward the packet (RFC 1812 4.3.2): "destination unreachable",
/// or "time exceeded" when its TTL ran out.
#[derive(Debug, Clone, Copy)]
pub struct IcmpError<'a> {
    /// The router's address: the source of the error.
    pub from: Ipv4Addr,
    /// The ICMP type: [`IcmpError::UNREACHABLE`] or [`IcmpError::TIME_EXCEEDED`].
    pub msg_type: u8,
    /// The ICMP code. Of type 3: 0 net, 1 host, 4 fragmentation needed, 13
    /// administratively prohibited; of type 11: 0, TTL exceeded in transit.
    pub code: u8,
    /// The next-hop MTU of "fragmentation needed" (RFC 1191), else 0.
    pub mtu: u16,
    /// The packet it is about, from its IPv4 header on.
    pub about: &'a [u8],
}

impl IcmpError<'_> {
    /// ICMP type 3, "destination unreachable".
    pub const UNREACHABLE: u8 = 3;
    /// ICMP type 11, "time exceeded" (code 0: the TTL reached zero in transit).
    pub const TIME_EXCEEDED: u8 = 11;
    /// The largest error: 576 bytes, as Linux sends (RFC 1812 4.3.2.3: "as
    /// much of the original datagram as possible without the length of
    /// the ICMP datagram exceeding 576 bytes").
    pub const MAX_LEN: usize = 576;
    /// IPv4 and ICMP headers.
    const HEADERS: usize = 28;

    /// Write the error at the start of `buf` and return its length, or
    /// `None` when the packet is not an IPv4 packet with a whole header.
    /// It goes to the packet's source; it quotes as much of the packet as
    /// fits in [`Self::MAX_LEN`]. A TCP segment quoted whole gets a
    /// complete checksum in the quote (a partial one, left for offload,
    /// would have been completed on the wire).
    ///
    /// # Panics
    /// If `buf` is shorter than [`Self::MAX_LEN`].
    pub fn emit(&self, buf: &mut [u8]) -> Option<usize> {
        let p = self.about;
        let ihl = usize::from(*p.first()? & 0x0f) * 4;
        if p[0] >> 4 != 4 || ihl < 20 || p.len() < ihl {
            return None;
        }
        let to = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let quoted = p.len().min(Self::MAX_LEN - Self::HEADERS);
        let len = Self::HEADERS + quoted;
        let buf = &mut buf[..len];
        buf.fill(0);
        buf[Self::HEADERS..].copy_from_slice(&p[..quoted]);
        let q = &mut buf[Self::HEADERS..];
        let whole = quoted == p.len() && usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len();
        let first_fragment = u16::from_be_bytes([p[6], p[7]]) & 0x3fff == 0;
        if whole && first_fragment && p[9] == u8::from(IpProtocol::Tcp) && p.len() >= ihl + 20 {
            let (src, dst) = (
                Ipv4Addr::new(p[12], p[13], p[14], p[15]),
                Ipv4Addr::new(p[16], p[17], p[18], p[19]),
            );
            TcpPacket::new_unchecked(&mut q[ihl..])
                .fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
        }
        let icmp = &mut buf[20..];
        icmp[0] = self.msg_type;
        icmp[1] = self.code;
        icmp[6..8].copy_from_slice(&self.mtu.to_be_bytes());
        let c = crate::checksum::full(icmp);
        crate::checksum::put(icmp, 2, c);
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_dscp(0x30); // precedence 6, internetwork control (as Linux)
        ip.set_total_len(len as u16);
        ip.set_hop_limit(64);
        ip.set_next_header(IpProtocol::Icmp);
        ip.set_src_addr(self.from);
        ip.set_dst_addr(to);
        ip.fill_checksum();
        Some(len)
    }
}

/// An ICMPv6 error about a packet (RFC 4443), as a router sends it when it
/// cannot forward the packet: "destination unreachable", "packet too big"
/// (with the MTU) or "time exceeded" (the hop limit ran out).
#[derive(Debug, Clone, Copy)]
pub struct Icmpv6Error<'a> {
    /// The router's address: the source of the error.
    pub from: Ipv6Addr,
    /// The ICMPv6 type: [`Icmpv6Error::UNREACHABLE`],
    /// [`Icmpv6Error::TOO_BIG`] or [`Icmpv6Error::TIME_EXCEEDED`].
    pub msg_type: u8,
    /// The code. Of type 1: 0 no route, 1 administratively prohibited, 3
    /// address unreachable; of types 2 and 3: 0.
    pub code: u8,
    /// The 32-bit word after the checksum: the MTU of "packet too big",
    /// else 0.
    pub param: u32,
    /// The packet it is about, from its IPv6 header on.
    pub about: &'a [u8],
}

impl Icmpv6Error<'_> {
    /// ICMPv6 type 1, "destination unreachable".
    pub const UNREACHABLE: u8 = 1;
    /// ICMPv6 type 2, "packet too big".
    pub const TOO_BIG: u8 = 2;
    /// ICMPv6 type 3, "time exceeded" (code 0: the hop limit reached zero
    /// in transit).
    pub const TIME_EXCEEDED: u8 = 3;
    /// The largest error: the IPv6 minimum MTU (RFC 4443 2.4(c): as much of
    /// the invoking packet as fits without exceeding it).
    pub const MAX_LEN: usize = 1280;
    /// IPv6 and ICMPv6 headers.
    const HEADERS: usize = 48;

    /// Write the error at the start of `buf` and return its length, or
    /// `None` when the packet is not an IPv6 packet with a whole header.
    /// It goes to the packet's source and quotes as much of the packet as
    /// fits in [`Self::MAX_LEN`]; a TCP segment (right after the IPv6
    /// header) quoted whole gets a complete checksum in the quote, as in
    /// [`IcmpError::emit`].
    ///
    /// # Panics
    /// If `buf` is shorter than [`Self::MAX_LEN`].
    pub fn emit(&self, buf: &mut [u8]) -> Option<usize> {
        let p = self.about;
        if p.len() < 40 || p[0] >> 4 != 6 {
            return None;
        }
        let addr = |at: usize| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&p[at..at + 16]);
            Ipv6Addr::from(b)
        };
        let (src, dst) = (addr(8), addr(24));
        let quoted = p.len().min(Self::MAX_LEN - Self::HEADERS);
        let len = Self::HEADERS + quoted;
        let buf = &mut buf[..len];
        buf.fill(0);
        buf[Self::HEADERS..].copy_from_slice(&p[..quoted]);
        let whole =
            quoted == p.len() && 40 + usize::from(u16::from_be_bytes([p[4], p[5]])) == p.len();
        if whole && p[6] == u8::from(IpProtocol::Tcp) && p.len() >= 60 {
            TcpPacket::new_unchecked(&mut buf[Self::HEADERS + 40..])
                .fill_checksum(&IpAddress::Ipv6(src), &IpAddress::Ipv6(dst));
        }
        let icmp = &mut buf[40..];
        icmp[0] = self.msg_type;
        icmp[1] = self.code;
        icmp[4..8].copy_from_slice(&self.param.to_be_bytes());
        let c = crate::checksum::full_l4(self.from, src, crate::checksum::ICMPV6, icmp);
        crate::checksum::put(icmp, 2, c);
        let mut ip = Ipv6Packet::new_unchecked(&mut buf[..]);
        ip.set_version(6);
        ip.set_payload_len((len - 40) as u16);
        ip.set_next_header(IpProtocol::Icmpv6);
        ip.set_hop_limit(64);
        ip.set_src_addr(self.from);
        ip.set_dst_addr(src);
        Some(len)
    }
}

/// An ICMP error a router sends, in both families: type, code and the
/// 32-bit word after the checksum (the MTU of "fragmentation needed" or
/// "packet too big", else 0) as IPv4's ICMP and as ICMPv6 say it. Which
/// one goes out is the family of the router's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterError {
    /// ICMP type, code and next-hop MTU ([`IcmpError`]).
    pub v4: (u8, u8, u16),
    /// ICMPv6 type, code and parameter ([`Icmpv6Error`]).
    pub v6: (u8, u8, u32),
}

impl RouterError {
    /// The largest error of either family ([`Icmpv6Error::MAX_LEN`]).
    pub const MAX_LEN: usize = if IcmpError::MAX_LEN > Icmpv6Error::MAX_LEN {
        IcmpError::MAX_LEN
    } else {
        Icmpv6Error::MAX_LEN
    };

    /// "Time exceeded": the TTL or hop limit reached zero in transit.
    pub const TIME_EXCEEDED: RouterError = RouterError {
        v4: (IcmpError::TIME_EXCEEDED, 0, 0),
        v6: (Icmpv6Error::TIME_EXCEEDED, 0, 0),
    };

    /// Write at the start of `buf` this error, from `from`, about `about`
    /// (a packet of `from`'s family) and return its length; `None` when
    /// `about` is not a packet of that family with a whole header.
    ///
    /// # Panics
    /// If `buf` is shorter than the family's `MAX_LEN`.
    pub fn emit(self, from: IpAddr, about: &[u8], buf: &mut [u8]) -> Option<usize> {
        match from {
            IpAddr::V4(from) => {
                let (msg_type, code, mtu) = self.v4;
                IcmpError {
                    from,
                    msg_type,
                    code,
                    mtu,
                    about,
                }
                .emit(buf)
            }
            IpAddr::V6(from) => {
                let (msg_type, code, param) = self.v6;
                Icmpv6Error {
                    from,
                    msg_type,
                    code,
                    param,
                    about,
                }
                .emit(buf)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::tcp::flags::SYN;
    use smoltcp::wire::{Icmpv4Packet, Ipv4Packet};

    #[test]
    fn an_icmp_error_quotes_the_packet_and_checks_out() {
        let syn = Segment::new(
            "198.18.0.1:40000".parse::<SocketAddrV4>().unwrap(),
            "198.18.2.5:80".parse::<SocketAddrV4>().unwrap(),
            SYN,
        )
        .build();
        let mut about = syn.clone();
        about[36] ^= 0x5a; // a partial checksum, say: completed in the quote
        let mut buf = [0xa5u8; IcmpError::MAX_LEN];
        let from = Ipv4Addr::new(198, 18, 1, 1);
        let e = IcmpError {
            from,
            msg_type: IcmpError::UNREACHABLE,
            code: 4,
            mtu: 1280,
            about: &about,
        };
        let n = e.emit(&mut buf).unwrap();
        assert_eq!(n, 28 + syn.len());
        let ip = Ipv4Packet::new_checked(&buf[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), from);
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(198, 18, 0, 1), "to the source");
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!((icmp.msg_type().into(), icmp.msg_code()), (3u8, 4u8));
        assert_eq!(&ip.payload()[6..8], &1280u16.to_be_bytes());
        assert_eq!(
            &ip.payload()[8..],
            &syn[..],
            "the whole SYN, checksum completed"
        );
    }

    #[test]
    fn an_icmpv6_error_quotes_the_packet_and_checks_out() {
        use smoltcp::wire::{Icmpv6Packet, Ipv6Packet};
        let client: SocketAddr = "[2001:2:0:1::2]:40000".parse().unwrap();
        let vip: SocketAddr = "[2001:2::1]:80".parse().unwrap();
        let syn = Segment::between(client, vip, SYN).build();
        let mut about = syn.clone();
        about[56] ^= 0x5a; // a partial checksum, say: completed in the quote
        let from: Ipv6Addr = "2001:2:0:1::1".parse().unwrap();
        let mut buf = [0xa5u8; Icmpv6Error::MAX_LEN];
        for (msg_type, param) in [
            (Icmpv6Error::TIME_EXCEEDED, 0),
            (Icmpv6Error::TOO_BIG, 1280),
        ] {
            let e = Icmpv6Error {
                from,
                msg_type,
                code: 0,
                param,
                about: &about,
            };
            let n = e.emit(&mut buf).unwrap();
            assert_eq!(n, 48 + syn.len());
            let ip = Ipv6Packet::new_checked(&buf[..n]).unwrap();
            assert_eq!(ip.src_addr(), from);
            assert_eq!(
                ip.dst_addr(),
                "2001:2:0:1::2".parse::<Ipv6Addr>().unwrap(),
                "to the source"
            );
            assert_eq!(ip.next_header(), IpProtocol::Icmpv6);
            assert_eq!(usize::from(ip.payload_len()), n - 40);
            let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum(&from, &ip.dst_addr()));
            assert_eq!((u8::from(icmp.msg_type()), icmp.msg_code()), (msg_type, 0));
            assert_eq!(&ip.payload()[4..8], &param.to_be_bytes());
            assert_eq!(
                &ip.payload()[8..],
                &syn[..],
                "quoted whole, its checksum completed"
            );
        }
        // Quoted up to 1280 bytes in all; not IPv6, or no whole header: none.
        let mut seg = Segment::between(client, vip, SYN);
        let payload = vec![7u8; 1400];
        seg.payload = &payload;
        let big = seg.build();
        let e = Icmpv6Error {
            from,
            msg_type: Icmpv6Error::UNREACHABLE,
            code: 3,
            param: 0,
            about: &big,
        };
        assert_eq!(e.emit(&mut buf), Some(Icmpv6Error::MAX_LEN));
        assert_eq!(&buf[48..], &big[..1280 - 48]);
        assert_eq!(
            Icmpv6Error {
                about: &[0x45; 40],
                ..e
            }
            .emit(&mut buf),
            None
        );
        assert_eq!(
            Icmpv6Error {
                about: &big[..39],
                ..e
            }
            .emit(&mut buf),
            None
        );
    }

    #[test]
    fn a_time_exceeded_error_says_so() {
        let syn = Segment::new(
            "198.18.1.2:40000".parse::<SocketAddrV4>().unwrap(),
            "198.18.0.1:80".parse::<SocketAddrV4>().unwrap(),
            SYN,
        )
        .build();
        let mut buf = [0u8; IcmpError::MAX_LEN];
        let e = IcmpError {
            from: Ipv4Addr::new(198, 18, 1, 1),
            msg_type: IcmpError::TIME_EXCEEDED,
            code: 0,
            mtu: 0,
            about: &syn,
        };
        let n = e.emit(&mut buf).unwrap();
        let ip = Ipv4Packet::new_checked(&buf[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(198, 18, 1, 2), "to the source");
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!((u8::from(icmp.msg_type()), icmp.msg_code()), (11, 0));
        assert_eq!(&ip.payload()[8..], &syn[..], "the packet quoted whole");
    }

    #[test]
    fn a_big_packet_is_quoted_up_to_576_bytes_as_it_is() {
        let payload = vec![7u8; 1400];
        let mut seg = Segment::new(
            "198.18.1.2:40000".parse::<SocketAddrV4>().unwrap(),
            "198.18.2.5:80".parse::<SocketAddrV4>().unwrap(),
            0x10,
        );
        seg.payload = &payload;
        let mut big = seg.build();
        big[36] ^= 0x5a; // not whole in the quote: left as it is
        let mut buf = [0u8; IcmpError::MAX_LEN];
        let e = IcmpError {
            from: Ipv4Addr::new(198, 18, 2, 1),
            msg_type: IcmpError::UNREACHABLE,
            code: 1,
            mtu: 0,
            about: &big,
        };
        let n = e.emit(&mut buf).unwrap();
        assert_eq!(n, IcmpError::MAX_LEN);
        assert_eq!(&buf[28..n], &big[..n - 28]);
        assert!(Icmpv4Packet::new_checked(&buf[20..n])
            .unwrap()
            .verify_checksum());
        assert_eq!(
            IcmpError {
                about: &[0x60; 40],
                ..e
            }
            .emit(&mut buf),
            None,
            "not IPv4"
        );
        assert_eq!(
            IcmpError {
                about: &big[..10],
                ..e
            }
            .emit(&mut buf),
            None
        );
    }
}
