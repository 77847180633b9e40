//! A small synchronous rtnetlink client: just what the packet datapath asks
//! of the kernel. Interfaces (`RTM_GETLINK`), the route and the neighbour
//! for a destination (`RTM_GETROUTE`, `RTM_GETNEIGH`), tunlb's own
//! blackhole routes (`RTM_NEWROUTE` / `RTM_DELROUTE`, tagged with
//! [`PROTO`]) and its ingress drop filter (a `clsact` qdisc and a `bpf`
//! filter at priority [`TC_PREF`]: `RTM_NEWQDISC`, `RTM_NEWTFILTER` and
//! their deletes). Both families: a message carries the family of the address
//! it is about (`AF_INET`, `AF_INET6`), and the address is 4 or 16 bytes.
//!
//! Messages are built and parsed by hand (`struct nlmsghdr`, `rtmsg`,
//! `ndmsg`, `ifinfomsg` and `rtattr`s, native byte order); the socket calls
//! go through `io::sys`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use super::sys;

/// The routing protocol number tunlb tags its blackhole routes with
/// (`ip route show proto 213`), so that only its own are ever removed.
pub const PROTO: u8 = 213;

/// The priority (`tc filter ... pref 213`) of tunlb's ingress drop filter:
/// ahead of the filters `tc` numbers itself (from 49152), and only ever
/// replaced or removed by tunlb.
pub const TC_PREF: u16 = 213;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_METRICS: u16 = 8;
const RTA_TABLE: u16 = 15;
const RTAX_MTU: u16 = 2;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_SECONDARY: u8 = 0x01;
const IFA_F_DADFAILED: u8 = 0x08;
const IFA_F_DEPRECATED: u8 = 0x20;
const IFA_F_TENTATIVE: u8 = 0x40;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_HOST: u8 = 254;
const RT_TABLE_MAIN: u8 = 254;
/// `RTN_UNICAST`: a route packets are sent along.
pub const RTN_UNICAST: u8 = 1;
/// `RTN_BLACKHOLE`: packets are dropped silently.
pub const RTN_BLACKHOLE: u8 = 6;
/// `RTN_UNREACHABLE`: packets are refused with "host unreachable".
pub const RTN_UNREACHABLE: u8 = 7;
/// `RTN_PROHIBIT`: packets are refused with "administratively prohibited".
pub const RTN_PROHIBIT: u8 = 8;

/// `TC_H_CLSACT` (= `TC_H_INGRESS`): the parent of a `clsact` or `ingress`
/// qdisc, whose own handle is `ffff:`.
const TC_H_CLSACT: u32 = 0xffff_fff1;
/// The `clsact` qdisc's handle.
const TC_H_CLSACT_HANDLE: u32 = 0xffff_0000;
/// The ingress hook of a `clsact` (or `ingress`) qdisc, as a filter's parent
/// (`tc filter ... ingress`: `ffff:fff2`).
const TC_PARENT_INGRESS: u32 = 0xffff_fff2;
/// Its egress hook (`ffff:fff3`).
const TC_PARENT_EGRESS: u32 = 0xffff_fff3;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_OPS_LEN: u16 = 4;
const TCA_BPF_OPS: u16 = 5;
const TCA_BPF_FLAGS: u16 = 8;
/// An attribute's type without its flags (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// The program's return value is the action (`da`): `TC_ACT_SHOT` drops.
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;

/// Neighbour states whose link-layer address may be used
/// (`NUD_VALID`: permanent, noarp, reachable, probe, stale, delay).
const NUD_VALID: u16 = 0x80 | 0x40 | 0x02 | 0x10 | 0x04 | 0x08;
/// `NUD_FAILED`: resolution failed (no answer to the kernel's probes).
const NUD_FAILED: u16 = 0x20;
/// `NUD_STALE`: known, but not confirmed for a while.
const NUD_STALE: u16 = 0x04;

/// An interface, from `RTM_GETLINK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// `IFF_*` flags.
    pub flags: u32,
    /// `ARPHRD_*` type.
    pub kind: u16,
    /// Link-layer address (the MAC of an Ethernet interface).
    pub mac: Option<[u8; 6]>,
    /// The master (bridge, bond) it is a port of, if any.
    pub master: Option<u32>,
    /// MTU.
    pub mtu: u32,
}

/// Where the kernel would send a packet to some destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `RTN_*` type of the route: [`RTN_UNICAST`], or one that refuses
    /// ([`RTN_UNREACHABLE`], [`RTN_PROHIBIT`]) or drops ([`RTN_BLACKHOLE`]).
    pub kind: u8,
    /// Output interface.
    pub oif: Option<u32>,
    /// Gateway, when the destination is not on-link (for IPv6 often a
    /// link-local address, meaningful on [`Route::oif`] only).
    pub gateway: Option<IpAddr>,
    /// The route's MTU (`mtu` of `ip route`, or a learned path MTU), when
    /// it has one; otherwise the interface's applies.
    pub mtu: Option<u32>,
}

impl Route {
    /// Return whether packets can be sent along it.
    pub fn is_unicast(&self) -> bool {
        self.kind == RTN_UNICAST
    }
}

/// A neighbour entry, from `RTM_GETNEIGH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neigh {
    /// `NUD_*` state.
    pub state: u16,
    /// Its link-layer address, if known.
    pub mac: Option<[u8; 6]>,
}

impl Neigh {
    /// The MAC to send to, when the entry is usable.
    pub fn usable_mac(&self) -> Option<[u8; 6]> {
        (self.state & NUD_VALID != 0).then_some(self.mac).flatten()
    }

    /// Return whether the kernel's resolution failed (no answer to its
    /// probes): a router answers "host unreachable".
    pub fn failed(&self) -> bool {
        self.state & NUD_FAILED != 0
    }

    /// Return whether the entry is stale: usable, but only the kernel's
    /// own use of it makes the kernel check it again, and packets sent
    /// through packet sockets are not such a use.
    pub fn stale(&self) -> bool {
        self.state & NUD_STALE != 0
    }
}

/// An rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

/// One message of a reply: its type and body (after the `nlmsghdr`).
struct Msg {
    ty: u16,
    body: Vec<u8>,
}

fn push_attr(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The attributes in `buf` (a run of `rtattr`s): (type, data) pairs.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let data = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((ty, data))
    })
}

fn ipv4(data: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from)
}

/// An address attribute of either family: 4 or 16 bytes.
fn ip(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => ipv4(data).map(IpAddr::V4),
        16 => <[u8; 16]>::try_from(data)
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

/// The address family (`AF_INET`, `AF_INET6`) of `a`, as a message's
/// family byte.
fn family(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

/// The prefix length of `a` alone: 32 or 128.
fn host_len(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Append `a` as an attribute of type `ty`.
fn push_addr(out: &mut Vec<u8>, ty: u16, a: IpAddr) {
    match a {
        IpAddr::V4(v) => push_attr(out, ty, &v.octets()),
        IpAddr::V6(v) => push_attr(out, ty, &v.octets()),
    }
}

fn mac(data: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(data).ok()
}

/// Parse an `RTM_NEWLINK` message.
fn parse_link(m: &Msg) -> Option<Link> {
    if m.ty != libc::RTM_NEWLINK || m.body.len() < 16 {
        return None;
    }
    let b = &m.body;
    let mut link = Link {
        kind: u16::from_ne_bytes([b[2], b[3]]),
        index: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        flags: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        name: String::new(),
        mac: None,
        master: None,
        mtu: 0,
    };
    for (ty, data) in attrs(&b[16..]) {
        let word = <[u8; 4]>::try_from(data).ok().map(u32::from_ne_bytes);
        match ty {
            IFLA_IFNAME => {
                link.name = String::from_utf8_lossy(data)
                    .trim_end_matches('\0')
                    .to_string();
            }
            IFLA_ADDRESS => link.mac = mac(data),
            IFLA_MASTER => link.master = word.filter(|&m| m != 0),
            IFLA_MTU => link.mtu = word.unwrap_or(0),
            _ => {}
        }
    }
    Some(link)
}

/// An `rtmsg` (12 bytes).
fn rtmsg(family: u8, dst_len: u8, table: u8, protocol: u8, scope: u8, kind: u8) -> Vec<u8> {
    let mut b = vec![family, dst_len, 0, 0, table, protocol, scope, kind];
    b.extend_from_slice(&0u32.to_ne_bytes());
    b
}

/// The `rtmsg` and destination of tunlb's blackhole route for `addr` alone
/// (`/32`, `/128`) in the main table, tagged [`PROTO`].
fn blackhole(addr: IpAddr) -> Vec<u8> {
    let mut body = rtmsg(
        family(addr),
        host_len(addr),
        RT_TABLE_MAIN,
        PROTO,
        0,
        RTN_BLACKHOLE,
    );
    push_addr(&mut body, RTA_DST, addr);
    body
}

/// A `struct tcmsg` (family unspecified).
fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> Vec<u8> {
    let mut b = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    b.extend_from_slice(&ifindex.to_ne_bytes());
    b.extend_from_slice(&handle.to_ne_bytes());
    b.extend_from_slice(&parent.to_ne_bytes());
    b.extend_from_slice(&info.to_ne_bytes());
    b
}

/// The `tcm_info` of tunlb's filter: its priority and its protocol (every
/// protocol, `ETH_P_ALL` in network order).
fn drop_filter_info() -> u32 {
    (u32::from(TC_PREF) << 16) | u32::from((libc::ETH_P_ALL as u16).to_be())
}

/// The `tcmsg` of the `clsact` qdisc of interface `ifindex`, with its kind
/// (a delete then removes only a `clsact`, never an `ingress` qdisc).
fn clsact(ifindex: u32) -> Vec<u8> {
    let mut body = tcmsg(ifindex, TC_H_CLSACT_HANDLE, TC_H_CLSACT, 0);
    push_attr(&mut body, TCA_KIND, b"clsact\0");
    body
}

impl Netlink {
    /// Open a `NETLINK_ROUTE` socket.
    pub fn open() -> io::Result<Self> {
        let fd = sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
        // Strict checking: the kernel honours the filters of dump requests.
        let _ = sys::setsockopt(&fd, libc::SOL_NETLINK, libc::NETLINK_GET_STRICT_CHK, &1i32);
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0; 1 << 16],
        })
    }

    /// Send one request and collect the reply messages (not the final ACK
    /// or DONE). An error reply becomes the `Err`.
    fn request(&mut self, ty: u16, flags: u16, body: &[u8]) -> io::Result<Vec<Msg>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let flags = flags | libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16;
        let dump = flags & libc::NLM_F_DUMP as u16 == libc::NLM_F_DUMP as u16;
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
        msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        sys::send(&self.fd, &msg, 0)?;
        let mut out = Vec::new();
        // Bounded: a reply ends with DONE (dump) or an ACK/error; a dump of
        // a few thousand routes is a few hundred datagrams.
        for _ in 0..100_000 {
            let n = match sys::recv(&self.fd, &mut self.buf, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut b = &self.buf[..n];
            while b.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let mty = u16::from_ne_bytes([b[4], b[5]]);
                let mseq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if len < NLMSG_HDRLEN || len > b.len() {
                    break;
                }
                let body = &b[NLMSG_HDRLEN..len];
                b = &b[len.next_multiple_of(4).min(b.len())..];
                if mseq != seq {
                    continue; // a late answer to an earlier request
                }
                match mty {
                    NLMSG_ERROR => {
                        let err = body
                            .get(..4)
                            .map_or(0, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]));
                        if err != 0 {
                            return Err(io::Error::from_raw_os_error(-err));
                        }
                        if !dump {
                            return Ok(out);
                        }
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => out.push(Msg {
                        ty: mty,
                        body: body.to_vec(),
                    }),
                }
            }
        }
        Err(io::Error::other("netlink: no end to the reply"))
    }

    /// Return every interface.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let ifinfo = [0u8; 16]; // family AF_UNSPEC, all zero
        let msgs = self.request(libc::RTM_GETLINK, libc::NLM_F_DUMP as u16, &ifinfo)?;
        Ok(msgs.iter().filter_map(parse_link).collect())
    }

    /// Return interface `index`, or `None` when there is none.
    pub fn link(&mut self, index: u32) -> io::Result<Option<Link>> {
        let mut ifinfo = [0u8; 16];
        ifinfo[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
        match self.request(libc::RTM_GETLINK, 0, &ifinfo) {
            Ok(msgs) => Ok(msgs
                .iter()
                .filter_map(parse_link)
                .find(|l| l.index == index)),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Return the primary IPv4 address of interface `index` (the first
    /// one that is not secondary and not host-scoped), if it has one.
    pub fn ipv4_addr(&mut self, index: u32) -> io::Result<Option<Ipv4Addr>> {
        Ok(
            match self.if_addr(index, libc::AF_INET as u8, RT_SCOPE_HOST)? {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            },
        )
    }

    /// Return the first global IPv6 address of interface `index` (not
    /// temporary, tentative, failed or deprecated, not link- or
    /// host-scoped), if it has one: the source of the ICMPv6 errors tunlb
    /// sends about packets that arrived on it.
    pub fn ipv6_addr(&mut self, index: u32) -> io::Result<Option<Ipv6Addr>> {
        Ok(
            match self.if_addr(index, libc::AF_INET6 as u8, RT_SCOPE_LINK)? {
                Some(IpAddr::V6(a)) => Some(a),
                _ => None,
            },
        )
    }

    /// The first address of `family` on interface `index` whose scope is
    /// below `scope` and that is not secondary (IPv4) or temporary (IPv6:
    /// the same flag bit), nor tentative, failed or deprecated (IPv6).
    fn if_addr(&mut self, index: u32, family: u8, scope: u8) -> io::Result<Option<IpAddr>> {
        // struct ifaddrmsg: family, prefixlen, flags, scope, index.
        let mut body = vec![family, 0, 0, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        let msgs = self.request(libc::RTM_GETADDR, libc::NLM_F_DUMP as u16, &body)?;
        for m in msgs.iter().filter(|m| m.ty == libc::RTM_NEWADDR) {
            let b = &m.body;
            if b.len() < 8
                || b[0] != family
                || b[2] & (IFA_F_SECONDARY | IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE)
                    != 0
                || b[3] >= scope
                || u32::from_ne_bytes([b[4], b[5], b[6], b[7]]) != index
            {
                continue;
            }
            let (mut local, mut address) = (None, None);
            for (ty, data) in attrs(&b[8..]) {
                match ty {
                    IFA_LOCAL => local = ip(data),
                    IFA_ADDRESS => address = ip(data),
                    _ => {}
                }
            }
            if let Some(a) = local.or(address) {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }

    /// Ask the kernel how it would route a packet to `dst` (`ip route get`).
    /// `None` when it has no route. The kernel answers an error, not a
    /// route, when the route refuses or drops: those errors come back as a
    /// route of that kind without an interface (`EHOSTUNREACH`:
    /// [`RTN_UNREACHABLE`], `EACCES`: [`RTN_PROHIBIT`], `EINVAL`:
    /// [`RTN_BLACKHOLE`]).
    pub fn route_get(&mut self, dst: IpAddr) -> io::Result<Option<Route>> {
        let mut body = rtmsg(family(dst), host_len(dst), 0, 0, 0, 0);
        push_addr(&mut body, RTA_DST, dst);
        let refused = |kind| {
            Ok(Some(Route {
                kind,
                oif: None,
                gateway: None,
                mtu: None,
            }))
        };
        let msgs = match self.request(libc::RTM_GETROUTE, 0, &body) {
            Ok(m) => m,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::ENETUNREACH) => Ok(None),
                    Some(libc::EHOSTUNREACH) => refused(RTN_UNREACHABLE),
                    Some(libc::EACCES) => refused(RTN_PROHIBIT),
                    Some(libc::EINVAL) => refused(RTN_BLACKHOLE),
                    _ => Err(e),
                }
            }
        };
        let Some(m) = msgs
            .iter()
            .find(|m| m.ty == libc::RTM_NEWROUTE && m.body.len() >= 12)
        else {
            return Ok(None);
        };
        let mut r = Route {
            kind: m.body[7],
            oif: None,
            gateway: None,
            mtu: None,
        };
        for (ty, data) in attrs(&m.body[12..]) {
            match ty {
                RTA_OIF if data.len() == 4 => {
                    r.oif = Some(u32::from_ne_bytes([data[0], data[1], data[2], data[3]]));
                }
                RTA_GATEWAY => r.gateway = ip(data),
                RTA_METRICS => {
                    r.mtu = attrs(data)
                        .find(|&(t, d)| t == RTAX_MTU && d.len() == 4)
                        .map(|(_, d)| u32::from_ne_bytes([d[0], d[1], d[2], d[3]]))
                        .filter(|&m| m > 0);
                }
                _ => {}
            }
        }
        Ok(Some(r))
    }

    /// Look up the neighbour entry of `addr` on interface `ifindex`.
    /// `None` when the kernel has none.
    pub fn neigh_get(&mut self, ifindex: u32, addr: IpAddr) -> io::Result<Option<Neigh>> {
        let mut body = vec![family(addr), 0, 0, 0];
        body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        body.extend_from_slice(&[0, 0, 0, 0]); // state, flags, type
        push_addr(&mut body, NDA_DST, addr);
        let msgs = match self.request(libc::RTM_GETNEIGH, 0, &body) {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(m) = msgs
            .iter()
            .find(|m| m.ty == libc::RTM_NEWNEIGH && m.body.len() >= 12)
        else {
            return Ok(None);
        };
        let mut n = Neigh {
            state: u16::from_ne_bytes([m.body[8], m.body[9]]),
            mac: None,
        };
        for (ty, data) in attrs(&m.body[12..]) {
            if ty == NDA_LLADDR {
                n.mac = mac(data);
            }
        }
        Ok(Some(n))
    }

    /// Add the blackhole route `addr/32` (`/128`) to the main table, tagged
    /// [`PROTO`] (`ip route add blackhole ADDR proto 213`). Fails with
    /// `EEXIST` when the table already has a route for exactly that prefix.
    pub fn blackhole_add(&mut self, addr: IpAddr) -> io::Result<()> {
        let body = blackhole(addr);
        let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        self.request(libc::RTM_NEWROUTE, flags, &body).map(drop)
    }

    /// Remove tunlb's blackhole route for `addr/32` (`/128`; only one
    /// tagged [`PROTO`]). Returns whether there was one.
    pub fn blackhole_del(&mut self, addr: IpAddr) -> io::Result<bool> {
        let body = blackhole(addr);
        match self.request(libc::RTM_DELROUTE, 0, &body) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Return the destinations of the host blackhole routes (`/32`,
    /// `/128`) tagged [`PROTO`] in the main table, of both families.
    pub fn blackholes(&mut self) -> io::Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        for (fam, len) in [(libc::AF_INET as u8, 32), (libc::AF_INET6 as u8, 128)] {
            let body = rtmsg(fam, 0, RT_TABLE_MAIN, PROTO, 0, RTN_BLACKHOLE);
            let msgs = self.request(libc::RTM_GETROUTE, libc::NLM_F_DUMP as u16, &body)?;
            for m in msgs.iter().filter(|m| m.ty == libc::RTM_NEWROUTE) {
                let b = &m.body;
                if b.len() < 12 || b[0] != fam || b[5] != PROTO || b[7] != RTN_BLACKHOLE {
                    continue;
                }
                let mut table = u32::from(b[4]);
                let mut dst = None;
                for (ty, data) in attrs(&b[12..]) {
                    match ty {
                        RTA_DST => dst = ip(data),
                        RTA_TABLE if data.len() == 4 => {
                            table = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
                        }
                        _ => {}
                    }
                }
                if let (Some(d), true) = (dst, table == u32::from(RT_TABLE_MAIN) && b[1] == len) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Add a `clsact` qdisc to interface `ifindex` (`tc qdisc add dev X
    /// clsact`). Returns whether it was added: `false` when the interface
    /// already has one (or an `ingress` qdisc, whose ingress hook filters
    /// attach to the same way).
    pub fn clsact_add(&mut self, ifindex: u32) -> io::Result<bool> {
        let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        match self.request(libc::RTM_NEWQDISC, flags, &clsact(ifindex)) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Remove the `clsact` qdisc of interface `ifindex` (and every filter
    /// on it). Returns whether there was one.
    pub fn clsact_del(&mut self, ifindex: u32) -> io::Result<bool> {
        match self.request(libc::RTM_DELQDISC, 0, &clsact(ifindex)) {
            Ok(_) => Ok(true),
            // No such qdisc, or one of another kind.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Set tunlb's ingress filter on interface `ifindex` to the classic BPF
    /// program `prog`, run in direct-action mode (`tc filter add dev X
    /// ingress pref 213 bpf da bytecode ...`): its return value is the tc
    /// action. `replace`: change the program of the filter already there
    /// (the kernel swaps it at once); else add it, failing with `EEXIST`
    /// when the interface has one at that priority.
    pub fn drop_filter_set(
        &mut self,
        ifindex: u32,
        prog: &[libc::sock_filter],
        replace: bool,
    ) -> io::Result<()> {
        let mut body = tcmsg(ifindex, 1, TC_PARENT_INGRESS, drop_filter_info());
        push_attr(&mut body, TCA_KIND, b"bpf\0");
        let mut opts = Vec::new();
        push_attr(
            &mut opts,
            TCA_BPF_OPS_LEN,
            &(prog.len() as u16).to_ne_bytes(),
        );
        let mut ops = Vec::with_capacity(8 * prog.len());
        for i in prog {
            ops.extend_from_slice(&i.code.to_ne_bytes());
            ops.extend_from_slice(&[i.jt, i.jf]);
            ops.extend_from_slice(&i.k.to_ne_bytes());
        }
        push_attr(&mut opts, TCA_BPF_OPS, &ops);
        push_attr(
            &mut opts,
            TCA_BPF_FLAGS,
            &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes(),
        );
        push_attr(&mut body, TCA_OPTIONS, &opts);
        let flags = libc::NLM_F_CREATE | if replace { 0 } else { libc::NLM_F_EXCL };
        self.request(libc::RTM_NEWTFILTER, flags as u16, &body)
            .map(drop)
    }

    /// Remove tunlb's ingress filter (priority [`TC_PREF`], handle 1, kind
    /// `bpf`) from interface `ifindex`. Returns whether there was one.
    pub fn drop_filter_del(&mut self, ifindex: u32) -> io::Result<bool> {
        let mut body = tcmsg(ifindex, 1, TC_PARENT_INGRESS, drop_filter_info());
        push_attr(&mut body, TCA_KIND, b"bpf\0");
        match self.request(libc::RTM_DELTFILTER, 0, &body) {
            Ok(_) => Ok(true),
            // No such filter, or no qdisc to hold one.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether interface `ifindex` has a `bpf` ingress filter at priority
    /// [`TC_PREF`] (tunlb's, or a stale one of an earlier tunlb).
    pub fn drop_filter_present(&mut self, ifindex: u32) -> io::Result<bool> {
        Ok(self.drop_filter_constants(ifindex)?.is_some())
    }

    /// The constants that the program of the `bpf` ingress filter at
    /// priority [`TC_PREF`] on interface `ifindex` compares with (`jeq #k`):
    /// for tunlb's, the addresses it drops frames for, as 32-bit words in
    /// network order read into host order. `None` when there is no such
    /// filter.
    pub fn drop_filter_constants(&mut self, ifindex: u32) -> io::Result<Option<Vec<u32>>> {
        const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
        let mut msgs = self.filters(ifindex, TC_PARENT_INGRESS)?;
        // The dump has a message for the priority's classifier (no
        // options) and one for each of its filters (the program).
        msgs.retain(|m| {
            let info = u32::from_ne_bytes([m.body[16], m.body[17], m.body[18], m.body[19]]);
            info >> 16 == u32::from(TC_PREF)
                && attrs(&m.body[20..]).any(|(ty, data)| ty == TCA_KIND && data == b"bpf\0")
        });
        if msgs.is_empty() {
            return Ok(None);
        }
        let ops = (msgs.iter())
            .flat_map(|m| attrs(&m.body[20..]))
            .filter(|(ty, _)| ty & NLA_TYPE_MASK == TCA_OPTIONS)
            .flat_map(|(_, opts)| attrs(opts))
            .filter(|(ty, _)| ty & NLA_TYPE_MASK == TCA_BPF_OPS)
            .flat_map(|(_, ops)| ops.chunks_exact(8));
        let constants = ops
            .filter(|op| u16::from_ne_bytes([op[0], op[1]]) == JEQ_K)
            .map(|op| u32::from_ne_bytes([op[4], op[5], op[6], op[7]]))
            .collect();
        Ok(Some(constants))
    }

    /// How many filters the `clsact` (or `ingress`) qdisc of interface
    /// `ifindex` holds, on its ingress and egress hooks together.
    pub fn clsact_filters(&mut self, ifindex: u32) -> io::Result<usize> {
        let mut n = 0;
        for parent in [TC_PARENT_INGRESS, TC_PARENT_EGRESS] {
            n += match self.filters(ifindex, parent) {
                Ok(m) => m.len(),
                // An `ingress` qdisc has no egress hook.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => 0,
                Err(e) => return Err(e),
            };
        }
        Ok(n)
    }

    /// The filters on hook `parent` of interface `ifindex` (`RTM_GETTFILTER`
    /// dump): messages whose body holds at least a whole `tcmsg`.
    fn filters(&mut self, ifindex: u32, parent: u32) -> io::Result<Vec<Msg>> {
        let body = tcmsg(ifindex, 0, parent, 0);
        let mut msgs = self.request(libc::RTM_GETTFILTER, libc::NLM_F_DUMP as u16, &body)?;
        msgs.retain(|m| {
            m.ty == libc::RTM_NEWTFILTER
                && m.body.len() >= 20
                && m.body[4..8] == ifindex.to_ne_bytes()
        });
        Ok(msgs)
    }
}

/// A netlink socket that receives a message whenever an interface, an
/// address or route of either family or a neighbour entry changes
/// (`RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE |
/// RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE`).
pub fn monitor() -> io::Result<OwnedFd> {
    const GROUPS: u32 = 0x1 | 0x4 | 0x10 | 0x40 | 0x100 | 0x400;
    let fd = sys::socket(
        libc::AF_NETLINK,
        libc::SOCK_RAW | libc::SOCK_NONBLOCK,
        libc::NETLINK_ROUTE,
    )?;
    sys::bind_netlink(&fd, GROUPS)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut b = Vec::new();
        push_attr(&mut b, RTA_DST, &[198, 18, 0, 1]);
        push_attr(&mut b, IFLA_IFNAME, b"c0\0");
        push_attr(&mut b, IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1]);
        assert_eq!(b.len(), 8 + 8 + 12, "each attribute padded to 4 bytes");
        let got: Vec<(u16, Vec<u8>)> = attrs(&b).map(|(t, d)| (t, d.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (RTA_DST, vec![198, 18, 0, 1]),
                (IFLA_IFNAME, b"c0\0".to_vec()),
                (IFLA_ADDRESS, vec![2, 0, 0, 0, 0, 1]),
            ]
        );
        // A truncated attribute ends the walk instead of reading past it.
        assert_eq!(attrs(&b[..6]).count(), 0);
        assert_eq!(attrs(&b[..10]).count(), 1);
    }

    #[test]
    fn only_valid_neighbour_states_give_a_mac() {
        let m = Some([2, 0, 0, 0, 0, 9]);
        for (state, usable) in [
            (0x01u16, false), // incomplete
            (0x02, true),     // reachable
            (0x04, true),     // stale
            (0x08, true),     // delay
            (0x10, true),     // probe
            (0x20, false),    // failed
            (0x80, true),     // permanent
            (0x00, false),    // none
        ] {
            assert_eq!(
                Neigh { state, mac: m }.usable_mac().is_some(),
                usable,
                "state {state:#x}"
            );
        }
        assert_eq!(
            Neigh {
                state: 0x02,
                mac: None
            }
            .usable_mac(),
            None
        );
    }
}
