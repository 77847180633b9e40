//! The packet datapath (`--io packet`): AF_PACKET sockets on the host's
//! own Ethernet interfaces, no TUN and no second IP forwarding pass.
//!
//! # Receive
//! Each packet thread has, on each interface, a packet socket with a
//! `TPACKET_V2` frame ring (a frame is handed over as soon as it is filled:
//! the V3 block ring waits for a timer at light load, milliseconds). The
//! sockets of one interface form a `PACKET_FANOUT` group whose classic BPF
//! program (`fanout_program`) sends both directions of a flow to one
//! thread, and one direction always to the same (no reordering). A
//! classic BPF socket filter copies into the ring only IPv4 TCP and ICMP,
//! and IPv6 (any next header: the engine judges and counts extension
//! headers), addressed to the host (`PACKET_HOST`) and to a VIP or SNAT
//! address: other traffic on a busy interface costs tunlb nothing. The
//! sockets take every protocol (`ETH_P_ALL`, the filter choosing), so one
//! ring serves both families, and the kernel reads the protocol of what
//! they send from its Ethernet header.
//! `PACKET_IGNORE_OUTGOING` keeps what the host sends out (with several
//! threads, `PACKET_FANOUT_FLAG_IGNORE_OUTGOING` for the fanout group, where
//! the kernel has it). A filter too large for the socket
//! (`net.core.optmem_max`) gives way to one that takes those packets to any
//! address, with a warning.
//!
//! The kernel still receives its own copy of each frame. Blackhole routes
//! for the VIPs and SNAT addresses ([`Blackholes`], tagged with
//! [`netlink::PROTO`]) make it drop them silently: it neither forwards nor
//! answers them. They are removed on exit, and a start after `kill -9`
//! replaces the stale ones. In front of them, a tc filter on each
//! interface's ingress hook ([`IngressDrop`]) drops that copy before the
//! kernel's IP layer sees it, sparing it `ip_rcv` and a route lookup per
//! frame; the sockets are taps (`ETH_P_ALL`), served before that hook.
//!
//! # Offloads
//! `PACKET_VNET_HDR` puts a virtio-net header before each frame, as on the
//! TUN (see [`super::vnet`]): TCP super-packets up to 64 KiB pass whole
//! and partial checksums are said so, so users' TSO/GRO may stay on.
//!
//! # Ring geometry
//! A ring's frames are of one size, and a full ring drops what arrives.
//! Frames sized for a 64 KiB super-packet (as this ring first had) made
//! 8 MiB a ring of 120 frames: a burst of small frames (the segments of
//! eight paced downloads through an interface without offloads, and
//! their ACKs) overflowed it, 13 % of the packets were lost, and with
//! them SYN-ACKs (a second each). So a frame holds one Ethernet frame of
//! a 1500-byte MTU (2 KiB: up to [`RING_IP_MAX`] bytes of IP),
//! and the same 8 MiB hold [`FRAMES`] of them. What is longer (a
//! super-packet, a jumbo frame) the kernel queues whole on the socket
//! (`PACKET_COPY_THRESH`; no copy, a reference to the packet) and marks
//! its truncated frame `TP_STATUS_COPY`: the reader takes it with `recv`,
//! in ring order. That is one copy of a super-packet's bytes (kernel to
//! buffer) where the ring made two (kernel to ring, ring to buffer). The
//! socket's receive buffer is raised (8 MiB, `SO_RCVBUFFORCE`) to hold a burst of
//! them; past it the kernel truncates without queueing, and the frame is
//! counted as lost to a full socket queue.
//!
//! # Transmit
//! The buffer holds `[virtio-net header][Ethernet header][IP packet]`. The
//! Ethernet header is rewritten: destination = the next hop the kernel's
//! own routing and neighbour tables name for the packet's destination
//! (`RTM_GETROUTE`, then `RTM_GETNEIGH`; cached per destination for
//! [`HOP_TTL`] by each thread, and forgotten by all as soon as the kernel
//! reports a change of route, neighbour, address or link), source = the
//! egress interface's MAC. When the neighbour is not resolved, the kernel
//! is made to resolve it (an empty UDP datagram to the next hop's discard
//! port) and the packet is dropped and counted: no frame ever leaves with a
//! guessed MAC. A stale entry is used, and the kernel is made to check it
//! again the same way (frames sent here are no use of the entry that it
//! sees, so it would stay stale long after its host went away).
//!
//! Small frames wait in the thread's queue and go together, one `sendmmsg`
//! per interface, when the thread's rings run dry (before it would wait)
//! or [`TX_BATCH`] wait; a super-packet goes at once, after what waits. At
//! light load that is one frame at a time, as soon as it is processed.
//! Measured side by side (one packet thread, 3 interleaved rounds, a loaded
//! machine): new connections/s +9 %, keep-alive requests/s +3 %, the same
//! light-load latency, and 20 times fewer frames lost to a full receive
//! ring under 50 concurrent connections (the thread drains it faster). The
//! rest of a send is per frame anyway: a profile puts 90 % of the packet
//! thread in `send`, of which the receiving namespace's TCP stack, run in
//! softirq at the end of each frame's transmission, and the wake-up of its
//! process are most (docs/datapaths.md).
//!
//! # What a router would answer
//! The kernel no longer forwards these packets, so it no longer tells
//! their sources when it cannot. This device does instead: a packet whose
//! route is `unreachable` or `prohibit` (or missing), whose next hop failed
//! the kernel's ARP probes, or that is larger than the egress MTU (the
//! route's, else the interface's) with "don't fragment" set and is not a
//! super-packet whose segments fit, is dropped and reported through
//! [`PacketIo::take_unsent`] with the ICMP code, from the host's address on
//! the interface it arrived on; the datapath builds the error and the
//! engine translates it back to the flow's other end (see
//! [`crate::datapath`]). At most [`ICMP_PER_SEC`] a second per thread. A
//! `blackhole` route drops silently, as it does for the kernel.
//!
//! IPv6 gets the same answers as ICMPv6 errors (RFC 4443: "no route",
//! "address unreachable", "administratively prohibited", "packet too big"
//! with the egress MTU for every packet too big, since IPv6 routers never
//! fragment), from the host's global IPv6 address on that interface.
//!
//! Like the kernel's forwarding (RFC 1812 5.3.1, `ip_forward`; RFC 8200
//! for IPv6's hop limit), this
//! device decrements the TTL of every packet it forwards, once, after the
//! next hop and the MTU are found good, and updates the header checksum
//! ([`checksum::decrement_ttl`]; IPv6 has none); packets tunlb makes itself (resets, ICMP
//! errors) start at 64. A packet that arrives with a TTL of 0 or 1 is not
//! handed to the engine at all (so it makes no flow, as conntrack's
//! unconfirmed entry dies with the packet in `ip_forward`): it is dropped,
//! counted, and answered with ICMP "time exceeded" quoting it as it
//! arrived, from the same address and within the same rate limit as the
//! errors above. So `traceroute` and `tcptraceroute` through tunlb show
//! it as one hop, as through kernel NAT.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::netlink::{self, Netlink};
use super::sys;
use super::vnet::{self, VnetHdr};
use super::{Frame, PacketIo, Unreachable, Unsent};
use crate::checksum;
use crate::conntrack::tuple::SPREAD_MULTIPLIER;
use crate::craft::RouterError;
use crate::nat::L4Checksum;

/// How long a thread trusts a resolved next hop before asking the kernel
/// again.
pub const HOP_TTL: Duration = Duration::from_secs(1);
/// How long a thread waits before asking again about an unresolved one.
const UNKNOWN_TTL: Duration = Duration::from_millis(20);
/// At most this many destinations cached per thread (then it starts over).
const MAX_HOPS: usize = 1 << 16;

/// Length of an Ethernet header.
const ETH_LEN: usize = 14;
/// Where the IP packet starts in a buffer: after the virtio-net and
/// Ethernet headers.
pub const IP_START: usize = vnet::LEN + ETH_LEN;

/// Ring geometry (see the module docs): 2 KiB frames, 512 to a 1 MiB
/// block, 8 blocks: 4096 frames in 8 MiB.
const FRAME_SIZE: usize = 2048;
const BLOCK_SIZE: usize = 1 << 20;
const BLOCKS: usize = 8;
const FRAMES_PER_BLOCK: usize = BLOCK_SIZE / FRAME_SIZE;
/// Frames in a ring.
pub const FRAMES: usize = FRAMES_PER_BLOCK * BLOCKS;
/// Where the kernel puts a frame's link header in its ring slot: after
/// the tpacket2 header and `sockaddr_ll` (52 bytes, with room for a
/// 16-byte link header: `TPACKET_ALIGN(52 + 16)` = 80), then the
/// virtio-net header, then the 14-byte Ethernet header ends at 80 + 10.
const RING_MAC: usize = 80 + vnet::LEN - ETH_LEN;
/// The longest IP packet a ring slot holds; longer ones come by `recv`.
pub const RING_IP_MAX: usize = FRAME_SIZE - RING_MAC - ETH_LEN;
/// The receive buffer each socket asks for (`SO_RCVBUFFORCE`, which the
/// kernel doubles): room for about 200 super-packets queued beside the
/// ring.
const RCVBUF: libc::c_int = 8 << 20;

// `linux/if_packet.h`.
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TPACKET_V2: libc::c_int = 1;
const PACKET_FANOUT_CBPF: u32 = 6;
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;
const PACKET_FANOUT_FLAG_IGNORE_OUTGOING: u32 = 0x4000;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
/// The frame is truncated and the whole packet waits on the socket.
const TP_STATUS_COPY: u32 = 1 << 1;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
/// `PACKET_COPY_THRESH`: queue on the socket what does not fit a frame.
const PACKET_COPY_THRESH: libc::c_int = 7;
/// `sizeof(struct tpacket2_hdr)`.
const TPACKET2_HDR: usize = 32;

/// Capability bits in `/proc/self/status` `CapEff`.
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

/// Why the packet datapath cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// A capability is missing.
    #[error("--io packet needs {missing}, which this process lacks (packet sockets need CAP_NET_RAW, the blackhole routes CAP_NET_ADMIN); --io vnet (the TUN, the default) needs only CAP_NET_ADMIN")]
    Capability {
        /// The missing capabilities, e.g. `CAP_NET_RAW`.
        missing: String,
    },
    /// A named interface does not exist.
    #[error("--iface {0}: no such interface in this network namespace (see 'ip link')")]
    NoSuchInterface(String),
    /// A named interface is not Ethernet.
    #[error(
        "--iface {0}: not an Ethernet interface; --io packet reads and writes Ethernet frames"
    )]
    NotEthernet(String),
    /// No interface to listen on.
    #[error("--io packet: no Ethernet interface is up here (loopback and bridge or bond ports do not count); name them with --iface")]
    NoInterface,
    /// The main table already routes exactly a VIP or SNAT address.
    #[error("{0} already has a host route (/32, /128) in the main table; --io packet adds a blackhole route for it (so the kernel neither forwards nor answers it): remove that route ('ip route del {0}')")]
    RouteExists(IpAddr),
    /// A system call failed.
    #[error("--io packet: {what}: {err}")]
    Sys {
        /// What was being done.
        what: String,
        /// The error.
        err: io::Error,
    },
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> PacketError {
    let what = what.into();
    move |err| match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => PacketError::Capability {
            missing: if what.contains("route") {
                "CAP_NET_ADMIN".into()
            } else {
                "CAP_NET_RAW".into()
            },
        },
        _ => PacketError::Sys { what, err },
    }
}

/// Check the effective capabilities the packet datapath needs.
pub fn check_capabilities() -> Result<(), PacketError> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Ok(()); // cannot tell: the system calls will say
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return Ok(());
    };
    let missing: Vec<&str> = [
        (CAP_NET_RAW, "CAP_NET_RAW"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .into_iter()
    .filter(|&(bit, _)| eff & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PacketError::Capability {
            missing: missing.join(" and "),
        })
    }
}

/// What to open.
#[derive(Debug, Clone, Default)]
pub struct PacketSpec {
    /// Interfaces by name; empty: every Ethernet interface that is up,
    /// except loopback and ports of a bridge or bond.
    pub ifaces: Vec<String>,
    /// Queues (one per packet thread).
    pub queues: usize,
    /// The addresses tunlb receives for: VIPs and SNAT addresses, of
    /// either family.
    pub addrs: Vec<IpAddr>,
}

/// An interface tunlb listens and sends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    /// Index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Its MAC: the source of every frame sent on it.
    pub mac: [u8; 6],
}

/// Choose the interfaces: the named ones (each must exist and be
/// Ethernet), or by default every Ethernet interface that is up, except
/// loopback and ports of a master (their frames reach the master too).
pub fn select_ifaces(links: &[netlink::Link], names: &[String]) -> Result<Vec<Iface>, PacketError> {
    let ether = |l: &netlink::Link| {
        (l.kind == libc::ARPHRD_ETHER && l.flags & libc::IFF_LOOPBACK as u32 == 0)
            .then_some(l.mac)
            .flatten()
    };
    let mut out = Vec::new();
    if names.is_empty() {
        for l in links {
            if l.flags & libc::IFF_UP as u32 != 0 && l.master.is_none() {
                if let Some(mac) = ether(l) {
                    out.push(Iface {
                        index: l.index,
                        name: l.name.clone(),
                        mac,
                    });
                }
            }
        }
        if out.is_empty() {
            return Err(PacketError::NoInterface);
        }
        return Ok(out);
    }
    for n in names {
        let l = links
            .iter()
            .find(|l| &l.name == n)
            .ok_or_else(|| PacketError::NoSuchInterface(n.clone()))?;
        let mac = ether(l).ok_or_else(|| PacketError::NotEthernet(n.clone()))?;
        if l.flags & libc::IFF_UP as u32 == 0 {
            tracing::warn!("--iface {n} is down: nothing arrives on it until it is up");
        }
        if out.iter().all(|i: &Iface| i.index != l.index) {
            out.push(Iface {
                index: l.index,
                name: n.clone(),
                mac,
            });
        }
    }
    Ok(out)
}

/// The most addresses of one family a filter lists; with more, it takes
/// that family's packets to any destination (the engine drops the rest).
pub const FILTER_MAX_ADDRS: usize = 240;

/// The classic BPF program of the receive sockets: accept a frame sent to
/// this host (`PACKET_HOST`) that is IPv4 TCP or ICMP, or IPv6 (any next
/// header), to one of `addrs` (to any address of a family with more than
/// [`FILTER_MAX_ADDRS`]; to none of a family without any). The offsets are
/// those of an Ethernet frame (SOCK_RAW). Every jump is short (the 8-bit
/// offsets of classic BPF): each family's block ends in its own returns,
/// each listed address is followed by its own "accept", and IPv6 addresses
/// sharing their first 96 bits share one check of them.
pub fn filter(addrs: &[IpAddr]) -> Vec<libc::sock_filter> {
    let [v4, v6] = destinations(addrs);
    program(v4, v6, SOCKET_VERDICTS)
}

/// An IPv6 address (as a `u128`) as the four 32-bit words a classic BPF
/// program loads and compares, first to last.
fn words(a: u128) -> [u32; 4] {
    [
        (a >> 96) as u32,
        (a >> 64) as u32,
        (a >> 32) as u32,
        a as u32,
    ]
}

/// Each family's destinations among `addrs`, IPv4 then IPv6, as the
/// programs load them (big-endian words), sorted and without duplicates;
/// `None`: too many to list ([`FILTER_MAX_ADDRS`]).
fn destinations(addrs: &[IpAddr]) -> [Option<Vec<u128>>; 2] {
    [true, false].map(|four| {
        let mut l: Vec<u128> = (addrs.iter())
            .filter(|a| a.is_ipv4() == four)
            .map(|a| match a {
                IpAddr::V4(a) => u128::from(u32::from(*a)),
                IpAddr::V6(a) => u128::from(*a),
            })
            .collect();
        l.sort_unstable();
        l.dedup();
        (l.len() <= FILTER_MAX_ADDRS).then_some(l)
    })
}

/// The filter that takes IPv4 TCP and ICMP, and IPv6, to any address (the
/// fallback when a listing one is too large for the socket, see [`attach`]).
fn filter_any() -> Vec<libc::sock_filter> {
    program(None, None, SOCKET_VERDICTS)
}

/// What a program returns for a frame it matches and for one it does not,
/// and whether a VLAN-tagged frame is one it does not.
#[derive(Debug, Clone, Copy)]
struct Verdicts {
    yes: u32,
    no: u32,
    /// Frames with a VLAN tag get `no`. The socket filter takes them, so
    /// that the datapath counts them as bad frames; the drop filter must
    /// not drop them, since the datapath serves none (the kernel hands
    /// them to the VLAN's interface after the ingress hook).
    untagged_only: bool,
}

/// A socket filter's: the bytes to keep (all of them), or none.
const SOCKET_VERDICTS: Verdicts = Verdicts {
    yes: 0x0004_0000,
    no: 0,
    untagged_only: false,
};

/// A direct-action tc filter's: `TC_ACT_SHOT` (drop), or `TC_ACT_UNSPEC`
/// (-1: on to the next filter, as if this one were not there).
const TC_VERDICTS: Verdicts = Verdicts {
    yes: 2,
    no: u32::MAX,
    untagged_only: true,
};

/// The program of the ingress drop filter ([`IngressDrop`]): the same test
/// as [`filter`]'s, a frame it accepts dropped (`TC_ACT_SHOT`), any other
/// passed on. `None` when a family has too many addresses to list: that
/// filter would drop traffic that is not tunlb's.
pub fn drop_filter(addrs: &[IpAddr]) -> Option<Vec<libc::sock_filter>> {
    let [v4, v6] = destinations(addrs);
    Some(program(Some(v4?), Some(v6?), TC_VERDICTS))
}

/// How many IPv6 addresses of one /96 share one prefix check (their jumps
/// stay within classic BPF's 8-bit offsets).
const V6_GROUP: usize = 100;

/// The program of [`filter`] and [`drop_filter`]: IPv4 destinations `v4`
/// and IPv6 ones `v6` (sorted, as `u128`s), `None` for any; it returns
/// `verdicts.yes` for a frame it matches, `verdicts.no` for any other.
fn program(
    v4: Option<Vec<u128>>,
    v6: Option<Vec<u128>>,
    verdicts: Verdicts,
) -> Vec<libc::sock_filter> {
    const LD_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const LD_H: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const LD_B: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const LD_LEN: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_LEN) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    let Verdicts {
        yes: accept,
        no: reject,
        untagged_only,
    } = verdicts;
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };

    // IPv4: TCP or ICMP, then the destination.
    // Each family's block first checks that the frame holds every byte it
    // loads: a load past the end would end the program with 0, which a
    // direct-action tc filter means as "pass, and skip the later filters".
    let mut b4 = vec![
        ins(LD_LEN, 0, 0, 0),
        ins(JGE, 1, 0, 34),
        ins(RET, 0, 0, reject),
        ins(LD_B, 0, 0, 23),
        ins(JEQ, 2, 0, libc::IPPROTO_TCP as u32),
        ins(JEQ, 1, 0, libc::IPPROTO_ICMP as u32),
        ins(RET, 0, 0, reject),
    ];
    match &v4 {
        None => b4.push(ins(RET, 0, 0, accept)),
        Some(list) => {
            b4.push(ins(LD_W, 0, 0, 30));
            for &a in list {
                b4.push(ins(JEQ, 0, 1, a as u32));
                b4.push(ins(RET, 0, 0, accept));
            }
            b4.push(ins(RET, 0, 0, reject));
        }
    }
    // IPv6: addresses grouped by their first 96 bits (VIPs and SNAT
    // addresses usually share a prefix): per group, the three prefix words
    // once (a mismatch jumps to the next group), then the last word of
    // each address, each followed by its own accept.
    let mut b6 = vec![
        ins(LD_LEN, 0, 0, 0),
        ins(JGE, 1, 0, 54),
        ins(RET, 0, 0, reject),
    ];
    match &v6 {
        None => b6.push(ins(RET, 0, 0, accept)),
        Some(list) => {
            for group in list.chunk_by(|a, b| a >> 32 == b >> 32) {
                for chunk in group.chunks(V6_GROUP) {
                    let w = words(chunk[0]);
                    // The group's length: 7 + 2 per address.
                    let end = 7 + 2 * chunk.len();
                    for (k, &word) in w[..3].iter().enumerate() {
                        b6.push(ins(LD_W, 0, 0, 38 + 4 * k as u32));
                        b6.push(ins(JEQ, 0, (end - 2 * k - 2) as u8, word));
                    }
                    b6.push(ins(LD_W, 0, 0, 50));
                    for &a in chunk {
                        b6.push(ins(JEQ, 0, 1, words(a)[3]));
                        b6.push(ins(RET, 0, 0, accept));
                    }
                }
            }
            b6.push(ins(RET, 0, 0, reject));
        }
    }
    let mut p = Vec::with_capacity(11 + b4.len() + b6.len());
    if untagged_only {
        p.extend([
            ins(
                LD_W,
                0,
                0,
                (libc::SKF_AD_OFF + libc::SKF_AD_VLAN_TAG_PRESENT) as u32,
            ),
            ins(JEQ, 1, 0, 0),
            ins(RET, 0, 0, reject),
        ]);
    }
    p.extend([
        ins(LD_W, 0, 0, (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32),
        ins(JEQ, 1, 0, libc::PACKET_HOST as u32),
        ins(RET, 0, 0, reject),
        ins(LD_H, 0, 0, 12),
        ins(JEQ, 3, 0, libc::ETH_P_IP as u32), // to the IPv4 block (8)
        ins(JEQ, 1, 0, libc::ETH_P_IPV6 as u32), // to the jump (7)
        ins(RET, 0, 0, reject),
        ins(JA, 0, 0, b4.len() as u32), // over the IPv4 block
    ]);
    p.extend(b4);
    p.extend(b6);
    p
}

/// The classic BPF program of the fanout groups (`PACKET_FANOUT_CBPF`):
/// which thread's socket a packet goes to. Both directions of a flow go to
/// the same thread (its flow's entry stays in one core's cache, and at light
/// load one thread serves a whole request and its answer, its busy polling
/// kept warm by both directions); each direction always to one thread (no
/// reordering).
///
/// It hashes the larger of the packet's two ports: the client's port in
/// both directions, since it is the source port of the ORIGINAL direction
/// and MASQUERADE keeps it as the SNAT port, the REPLY direction's
/// destination, whenever it can (see `conntrack::ports`), and a client's
/// port is above the service's and the backend's. Where that fails (a port
/// remapped, a client port below the service's), the two directions may go
/// to two threads, each to its own: as correct, a little slower.
///
/// The fanout hook runs before the frame's link header is pushed back, so
/// offsets here start at the IP header (the socket filter's start at the
/// Ethernet header). The kernel takes the result modulo the group's size.
fn fanout_program() -> Vec<libc::sock_filter> {
    let ins = |code: u32, jt, jf, k| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_H, BPF_IND, BPF_JA, BPF_JEQ, BPF_JGT, BPF_JMP, BPF_K,
        BPF_LD, BPF_LDX, BPF_MEM, BPF_MISC, BPF_MSH, BPF_MUL, BPF_RET, BPF_RSH, BPF_ST, BPF_TXA,
        BPF_W, BPF_X,
    };
    vec![
        // A = the packet's protocol (`skb->protocol`, host order).
        ins(
            BPF_LD | BPF_W | BPF_ABS,
            0,
            0,
            (libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL) as u32,
        ),
        ins(BPF_JMP | BPF_JEQ | BPF_K, 5, 0, libc::ETH_P_IPV6 as u32), // to IPv6 (7)
        // IPv4: X = the header's length; M[0] = source port; A = destination port.
        ins(BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0),
        ins(BPF_LD | BPF_H | BPF_IND, 0, 0, 0),
        ins(BPF_ST, 0, 0, 0),
        ins(BPF_LD | BPF_H | BPF_IND, 0, 0, 2),
        ins(BPF_JMP | BPF_JA, 0, 0, 3), // to the hash (10)
        // IPv6 (TCP right after the fixed header).
        ins(BPF_LD | BPF_H | BPF_ABS, 0, 0, 40),
        ins(BPF_ST, 0, 0, 0),
        ins(BPF_LD | BPF_H | BPF_ABS, 0, 0, 42),
        // A = max(A, M[0]), then a multiplicative hash's high half (ports
        // that Linux gives connect() are even: their low bit says nothing).
        ins(BPF_LDX | BPF_W | BPF_MEM, 0, 0, 0),
        ins(BPF_JMP | BPF_JGT | BPF_X, 1, 0, 0),
        ins(BPF_MISC | BPF_TXA, 0, 0, 0),
        ins(BPF_ALU | BPF_MUL | BPF_K, 0, 0, SPREAD_MULTIPLIER),
        ins(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 16),
        ins(BPF_RET | BPF_A, 0, 0, 0),
    ]
}

/// One drop counter of the packet datapath, as reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropCount {
    /// Its key in JSON and its `reason` label in metrics (`ring_full`);
    /// text shows it with spaces (`ring full`).
    pub key: &'static str,
    /// Packets dropped so far.
    pub count: u64,
}

impl DropCount {
    fn new(key: &'static str, count: u64) -> Self {
        DropCount { key, count }
    }
}

impl std::fmt::Display for DropCount {
    /// `ring full 7`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.key.replace('_', " "), self.count)
    }
}

impl crate::datapath::DeviceDrops for AfPacket {
    fn drops(&self) -> Vec<DropCount> {
        self.drop_counts().to_vec()
    }
}

/// Drops and other events of the packet datapath, over all threads.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames the kernel dropped because the ring was full, as read so far
    /// from the sockets ([`AfPacket::drop_counts`]).
    pub ring_full: AtomicU64,
    /// Frames dropped because they carried a VLAN tag or a link header
    /// other than Ethernet, or their lengths did not add up.
    pub bad_frames: AtomicU64,
    /// Packets longer than a ring frame lost because the socket's receive
    /// buffer was full (the kernel truncates them instead of queueing).
    pub queue_full: AtomicU64,
    /// Packets dropped because the kernel has no route for their
    /// destination through one of tunlb's interfaces.
    pub no_route: AtomicU64,
    /// Packets dropped because the next hop's MAC was not (yet) known.
    pub no_neighbour: AtomicU64,
    /// Times the kernel was made to resolve a next hop (or to check a
    /// stale one again).
    pub resolutions: AtomicU64,
    /// Packets dropped because the route to their destination refuses
    /// them (`unreachable`, `prohibit`, none at all) or drops them
    /// (`blackhole`), or their next hop did not answer the kernel's ARP
    /// probes.
    pub unreachable: AtomicU64,
    /// Packets dropped because they were larger than the egress MTU.
    pub too_big: AtomicU64,
    /// ICMP errors asked for (each about a dropped packet above, at most
    /// [`ICMP_PER_SEC`] a second per thread).
    pub icmp_errors: AtomicU64,
    /// Frames sent in a batch that the kernel refused.
    pub tx_errors: AtomicU64,
    /// Packets dropped because their TTL ran out (0 or 1 on arrival).
    pub ttl_exceeded: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One socket and its receive ring.
#[derive(Debug)]
struct Ring {
    fd: OwnedFd,
    map: sys::Mapping,
    head: usize,
}

impl Ring {
    fn frame_offset(&self, i: usize) -> usize {
        (i / FRAMES_PER_BLOCK) * BLOCK_SIZE + (i % FRAMES_PER_BLOCK) * FRAME_SIZE
    }

    /// Take the frame at the head, if the kernel has filled it: copy it
    /// into `buf` (virtio-net header first) and hand it back. `None`:
    /// empty; `Some(Err(why))`: a frame that was dropped. A frame marked
    /// `TP_STATUS_COPY` is a truncated one whose whole packet waits on the
    /// socket: it is received from there, so that every such frame takes
    /// exactly one packet off the socket's queue (which keeps the two in
    /// step), whatever is wrong with it.
    fn take(&mut self, buf: &mut [u8]) -> Option<Result<Frame, Lost>> {
        let off = self.frame_offset(self.head);
        let status = self.map.load_acquire(off);
        if status & TP_STATUS_USER == 0 {
            return None;
        }
        let mut h = [0u8; TPACKET2_HDR];
        self.map.read(off, &mut h);
        let u32_at = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u16_at = |i: usize| usize::from(u16::from_ne_bytes([h[i], h[i + 1]]));
        let (len, snap) = (u32_at(4) as usize, u32_at(8) as usize);
        let (mac, net, vlan) = (u16_at(12), u16_at(14), u16_at(24));
        let sane = net == mac + ETH_LEN
            && mac >= TPACKET2_HDR + vnet::LEN
            && len >= ETH_LEN + 20
            && vnet::LEN + len <= buf.len()
            && (status & TP_STATUS_VLAN_VALID == 0 || vlan == 0);
        let got = if status & TP_STATUS_COPY != 0 {
            // The whole packet, virtio-net header first, as it would be
            // in the ring (`MSG_TRUNC`: its full length, to see one that
            // the buffer cuts short).
            match sys::recv(&self.fd, buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
                Ok(n) if sane && n == vnet::LEN + len => Ok(()),
                _ => Err(Lost::Bad),
            }
        } else if len != snap {
            // Too long for a frame, and the socket's queue was full.
            Err(Lost::QueueFull)
        } else if sane && mac + snap <= FRAME_SIZE {
            self.map
                .read(off + mac - vnet::LEN, &mut buf[..vnet::LEN + snap]);
            Ok(())
        } else {
            Err(Lost::Bad)
        };
        self.map.store_release(off, TP_STATUS_KERNEL);
        self.head = (self.head + 1) % FRAMES;
        Some(got.and_then(|()| parse_frame(buf, len).ok_or(Lost::Bad)))
    }
}

/// Why [`Ring::take`] dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// A VLAN tag, a link header other than Ethernet, an IP version that
    /// is not the Ethernet type's, or a length that does not add up.
    Bad,
    /// Longer than a ring frame, and the socket's receive buffer was full
    /// (the kernel truncated it instead of queueing it).
    QueueFull,
}

/// The frame in `buf` (`[virtio-net header][Ethernet header][IP]`, `len`
/// bytes from the Ethernet header on), or `None` when its IP version is
/// not its Ethernet type's.
fn parse_frame(buf: &[u8], len: usize) -> Option<Frame> {
    let hdr = VnetHdr::parse(buf);
    let ip_len = len - ETH_LEN;
    // Short frames are padded to 60 bytes: the IP length says (IPv6's
    // counts the payload after its 40-byte header).
    let word = |at: usize| usize::from(u16::from_be_bytes([buf[at], buf[at + 1]]));
    let total = match buf[IP_START] >> 4 {
        6 => 40 + word(IP_START + 4),
        _ => word(IP_START + 2),
    };
    // The version must be the Ethernet type's: the filter read the
    // addresses where that type puts them.
    let version = match word(IP_START - 2) as libc::c_int {
        libc::ETH_P_IP => 4,
        libc::ETH_P_IPV6 => 6,
        _ => 0,
    };
    (buf[IP_START] >> 4 == version).then_some(Frame {
        start: IP_START,
        len: if (20..ip_len).contains(&total) {
            total
        } else {
            ip_len
        },
        l4: hdr.l4_checksum(),
        gso: hdr.is_gso(),
    })
}

/// A resolved or unresolved next hop, as one thread cached it.
#[derive(Debug, Clone, Copy)]
enum Hop {
    /// Send on interface `pos` (of the datapath's list) to `mac`, packets
    /// of up to `mtu` bytes.
    Via {
        pos: usize,
        mac: [u8; 6],
        mtu: usize,
        until: Instant,
    },
    /// Not sendable now: no route through tunlb's interfaces, or the
    /// neighbour is being resolved.
    Unknown { until: Instant },
    /// Not sendable: a router tells the source why (`None`: a blackhole
    /// route, it does not).
    Refused {
        why: Option<Unreachable>,
        until: Instant,
    },
}

/// Where to send a packet, as [`Hops::lookup`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// On interface `pos` to `mac`, packets of up to `mtu` bytes.
    Via {
        pos: usize,
        mac: [u8; 6],
        mtu: usize,
    },
    /// Not now: drop it, say nothing (the neighbour is being resolved, or
    /// the route leaves through an interface tunlb does not use).
    Wait,
    /// Not at all: drop it, and a router would say `why` (`None`: it
    /// would say nothing).
    Refused(Option<Unreachable>),
}

/// What a thread knows of an interface: its MTU and its addresses (the
/// sources of the ICMP and ICMPv6 errors about packets that arrived on it).
#[derive(Debug, Clone, Copy, Default)]
struct IfInfo {
    mtu: Option<usize>,
    addr: Option<Ipv4Addr>,
    addr6: Option<Ipv6Addr>,
}

impl IfInfo {
    /// Its address of the family of `v6`.
    fn addr_for(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.addr6.map(IpAddr::V6)
        } else {
            self.addr.map(IpAddr::V4)
        }
    }
}

/// At most this many ICMP errors a second per thread (as Linux's
/// `icmp_msgs_per_sec`), in bursts of up to 50.
pub const ICMP_PER_SEC: u32 = 1000;
/// The largest burst of ICMP errors (as Linux's `icmp_msgs_burst`).
const ICMP_BURST: u32 = 50;

/// A token bucket: [`ICMP_PER_SEC`] tokens a second, at most
/// [`ICMP_BURST`].
#[derive(Debug, Clone, Copy)]
struct Tokens {
    left: u32,
    at: Instant,
}

impl Tokens {
    fn new(now: Instant) -> Self {
        Tokens {
            left: ICMP_BURST,
            at: now,
        }
    }

    /// Take a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let ms = now.saturating_duration_since(self.at).as_millis();
        if ms > 0 {
            let add = u32::try_from(ms)
                .unwrap_or(u32::MAX)
                .saturating_mul(ICMP_PER_SEC / 1000);
            self.left = self.left.saturating_add(add).min(ICMP_BURST);
            self.at = now;
        }
        if self.left > 0 {
            self.left -= 1;
            true
        } else {
            false
        }
    }
}

/// One thread's next hops: its netlink socket and caches.
#[derive(Debug)]
struct Hops {
    nl: Netlink,
    udp: Option<UdpSocket>,
    udp6: Option<UdpSocket>,
    cache: HashMap<IpAddr, Hop, foldhash::fast::RandomState>,
    /// Interfaces by index.
    ifinfo: HashMap<u32, IfInfo, foldhash::fast::RandomState>,
    /// The [`Changes::generation`] the caches were filled under.
    seen: u64,
}

/// Changes of the kernel's routes, neighbours and links, counted by a
/// monitor thread; each thread empties its cache when the count moves.
#[derive(Debug, Default)]
struct Changes {
    generation: AtomicU64,
    stop: AtomicBool,
}

/// Count rtnetlink change notifications until `changes.stop` is set.
fn watch(fd: OwnedFd, changes: Arc<Changes>) {
    let mut buf = vec![0u8; 1 << 16];
    while !changes.stop.load(Ordering::Relaxed) {
        match sys::poll_any(&[fd.as_fd()], Duration::from_millis(100)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => break,
        }
        // Drain what is queued; an overflow (ENOBUFS) is a change too.
        for _ in 0..1024 {
            match sys::recv(&fd, &mut buf, libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(_) => break,
            }
        }
        changes.generation.fetch_add(1, Ordering::Release);
    }
}

impl Hops {
    fn new() -> io::Result<Self> {
        Ok(Hops {
            nl: Netlink::open()?,
            udp: UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok(),
            udp6: UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).ok(),
            cache: HashMap::default(),
            ifinfo: HashMap::default(),
            seen: 0,
        })
    }

    /// Forget everything when the kernel reported a change since.
    fn refresh(&mut self, generation: u64) {
        if generation != self.seen {
            self.cache.clear();
            self.ifinfo.clear();
            self.seen = generation;
        }
    }

    /// Where to send a packet for `dst`.
    fn lookup(&mut self, dst: IpAddr, ifaces: &[Iface], c: &Counters, generation: u64) -> Next {
        self.refresh(generation);
        let now = Instant::now();
        match self.cache.get(&dst) {
            Some(&Hop::Via {
                pos,
                mac,
                mtu,
                until,
            }) if until > now => return Next::Via { pos, mac, mtu },
            Some(&Hop::Unknown { until }) if until > now => {
                Counters::bump(&c.no_neighbour);
                return Next::Wait;
            }
            Some(&Hop::Refused { why, until }) if until > now => {
                Counters::bump(&c.unreachable);
                return Next::Refused(why);
            }
            _ => {}
        }
        if self.cache.len() >= MAX_HOPS {
            self.cache.clear();
        }
        let hop = self.resolve(dst, ifaces, c, now);
        self.cache.insert(dst, hop);
        match hop {
            Hop::Via { pos, mac, mtu, .. } => Next::Via { pos, mac, mtu },
            Hop::Unknown { .. } => Next::Wait,
            Hop::Refused { why, .. } => Next::Refused(why),
        }
    }

    /// What this thread knows of interface `index` (asked of the kernel
    /// once per change).
    fn iface(&mut self, index: u32) -> IfInfo {
        if let Some(i) = self.ifinfo.get(&index) {
            return *i;
        }
        let info = IfInfo {
            mtu: match self.nl.link(index) {
                Ok(l) => l.map(|l| l.mtu as usize).filter(|&m| m >= 68),
                Err(e) => {
                    tracing::debug!("link {index}: {e}");
                    None
                }
            },
            addr: self.nl.ipv4_addr(index).unwrap_or_else(|e| {
                tracing::debug!("addresses of link {index}: {e}");
                None
            }),
            addr6: self.nl.ipv6_addr(index).unwrap_or_else(|e| {
                tracing::debug!("IPv6 addresses of link {index}: {e}");
                None
            }),
        };
        self.ifinfo.insert(index, info);
        info
    }

    /// Make the kernel resolve `next` on interface `oif` (or check a stale
    /// entry again): any datagram to it does (ARP, or IPv6 neighbour
    /// discovery; a link-local next hop is named with its interface).
    fn poke(&self, next: IpAddr, oif: u32, c: &Counters) {
        Counters::bump(&c.resolutions);
        match next {
            IpAddr::V4(a) => {
                if let Some(u) = &self.udp {
                    let _ = u.send_to(&[], (a, 9));
                }
            }
            IpAddr::V6(a) => {
                if let Some(u) = &self.udp6 {
                    let scope = if a.is_unicast_link_local() { oif } else { 0 };
                    let _ = u.send_to(&[], SocketAddrV6::new(a, 9, 0, scope));
                }
            }
        }
    }

    fn resolve(&mut self, dst: IpAddr, ifaces: &[Iface], c: &Counters, now: Instant) -> Hop {
        let unknown = Hop::Unknown {
            until: now + UNKNOWN_TTL,
        };
        let refused = |why| {
            Counters::bump(&c.unreachable);
            Hop::Refused {
                why,
                until: now + UNKNOWN_TTL,
            }
        };
        let route = match self.nl.route_get(dst) {
            Ok(Some(r)) if r.is_unicast() => r,
            Ok(Some(r)) => {
                return refused(match r.kind {
                    netlink::RTN_UNREACHABLE => Some(Unreachable::Host),
                    netlink::RTN_PROHIBIT => Some(Unreachable::Prohibited),
                    _ => None, // blackhole: silence
                });
            }
            Ok(None) => return refused(Some(Unreachable::Net)),
            Err(e) => {
                tracing::debug!("route lookup for {dst}: {e}");
                Counters::bump(&c.no_route);
                return unknown;
            }
        };
        let Some((pos, oif)) = route
            .oif
            .and_then(|o| ifaces.iter().position(|i| i.index == o).map(|p| (p, o)))
        else {
            Counters::bump(&c.no_route);
            return unknown;
        };
        let next = route.gateway.unwrap_or(dst);
        match self.nl.neigh_get(oif, next) {
            Ok(Some(n)) if n.usable_mac().is_some() => {
                // Packets sent from here are no use of the entry that the
                // kernel sees: unless asked, it would never check a stale
                // entry again, and it would be used long after its host
                // went away.
                if n.stale() {
                    self.poke(next, oif, c);
                }
                let link_mtu = self.iface(oif).mtu;
                Hop::Via {
                    pos,
                    mac: n.usable_mac().unwrap_or_default(),
                    mtu: route
                        .mtu
                        .map(|m| m as usize)
                        .or(link_mtu)
                        .unwrap_or(usize::MAX),
                    until: now + HOP_TTL,
                }
            }
            Ok(Some(n)) if n.failed() => {
                // The kernel's probes went unanswered: a router says so.
                // Asking again lets a host that came back be found.
                self.poke(next, oif, c);
                refused(Some(Unreachable::Neighbour))
            }
            Ok(_) => {
                Counters::bump(&c.no_neighbour);
                self.poke(next, oif, c);
                unknown
            }
            Err(e) => {
                tracing::debug!("neighbour lookup for {next}: {e}");
                Counters::bump(&c.no_neighbour);
                unknown
            }
        }
    }
}

/// One packet thread's sockets (one per interface) and next hops.
#[derive(Debug)]
struct Queue {
    rings: Vec<Ring>,
    next: usize,
    /// The interface (position) the last packet came from.
    arrived: usize,
    hops: Hops,
    /// Why the last `send` did not send, when its source is to be told.
    unsent: Option<Unsent>,
    /// The rate limit of those.
    tokens: Tokens,
    /// Small frames not sent yet, with the interface (position) of each:
    /// sent together when the rings run dry or [`TX_BATCH`] wait.
    pending: Vec<(usize, Vec<u8>)>,
    /// How many of `pending` are in use.
    npending: usize,
    /// The rings' sockets, to wait on when they run dry.
    waiting: sys::PollSet,
    /// Room for the ICMP errors this device makes itself (built once).
    spare: Vec<u8>,
}

/// Room for the ICMP or ICMPv6 errors a thread makes itself, after the
/// virtio-net and Ethernet headers.
const SPARE_LEN: usize = IP_START + RouterError::MAX_LEN;

/// At most this many frames wait to be sent together (one `sendmmsg`).
pub const TX_BATCH: usize = 32;
const _: () = assert!(TX_BATCH <= sys::SENDMMSG_MAX);
/// Frames up to this size wait; bigger ones (super-packets) go at once.
const TX_SMALL: usize = 2048;

impl Queue {
    /// Send the frames that wait, one `sendmmsg` per interface. A frame the
    /// kernel refuses is counted and dropped.
    fn flush(&mut self, c: &Counters) {
        if self.npending == 0 {
            return;
        }
        for pos in 0..self.rings.len() {
            // This interface's frames, in order (no allocation: TX_BATCH
            // slices on the stack).
            let mut bufs: [&[u8]; TX_BATCH] = [&[]; TX_BATCH];
            let mut n = 0;
            for (p, b) in &self.pending[..self.npending] {
                if *p == pos {
                    bufs[n] = b;
                    n += 1;
                }
            }
            let bufs = &bufs[..n];
            let mut at = 0;
            // Bounded: each turn sends at least one frame or drops one.
            while at < bufs.len() {
                match sys::sendmmsg(&self.rings[pos].fd, &bufs[at..], libc::MSG_DONTWAIT) {
                    Ok(n) if n > 0 => at += n,
                    Ok(_) | Err(_) => {
                        Counters::bump(&c.tx_errors);
                        at += 1;
                    }
                }
            }
        }
        self.npending = 0;
    }
}

impl Queue {
    /// One pass over the rings, starting after the one that last gave a
    /// packet (so no interface starves another).
    fn try_recv(&mut self, buf: &mut [u8], c: &Counters) -> Option<Frame> {
        let n = self.rings.len();
        for k in 0..n {
            let r = (self.next + k) % n;
            // Bounded: at most the whole ring of dropped frames.
            for _ in 0..FRAMES {
                match self.rings[r].take(buf) {
                    None => break,
                    Some(Ok(f)) => {
                        self.next = (r + 1) % n;
                        self.arrived = r;
                        return Some(f);
                    }
                    Some(Err(Lost::Bad)) => Counters::bump(&c.bad_frames),
                    Some(Err(Lost::QueueFull)) => Counters::bump(&c.queue_full),
                }
            }
        }
        None
    }
}

/// What [`AfPacket::open`] ended up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The interfaces.
    pub ifaces: Vec<Iface>,
    /// Queues (threads) open.
    pub queues: usize,
}

/// Packet sockets with receive rings on the host's interfaces.
#[derive(Debug)]
pub struct AfPacket {
    ifaces: Vec<Iface>,
    queues: Vec<Mutex<Queue>>,
    /// A second descriptor of every ring's socket, to change its filter
    /// ([`AfPacket::receive_for`]) without waiting for the thread that
    /// holds the queue's lock while it polls.
    filter_fds: Vec<OwnedFd>,
    /// The addresses received for (the VIPs and SNAT addresses).
    addrs: Mutex<Vec<IpAddr>>,
    counters: Counters,
    changes: Arc<Changes>,
}

impl Drop for AfPacket {
    fn drop(&mut self) {
        self.changes.stop.store(true, Ordering::Relaxed);
        for q in &self.queues {
            q.lock()
                .unwrap_or_else(|p| p.into_inner())
                .flush(&self.counters);
        }
    }
}

fn open_ring(iface: &Iface, prog: &[libc::sock_filter]) -> Result<Ring, PacketError> {
    let name = &iface.name;
    let fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0).map_err(sys_err("packet socket"))?;
    let opt = |what: &str, name_: libc::c_int, v: libc::c_int| {
        sys::setsockopt(&fd, libc::SOL_PACKET, name_, &v)
            .map_err(sys_err(format!("{what} on {name}")))
    };
    // The filter first: nothing unwanted is queued between bind and here.
    attach(&fd, prog).map_err(sys_err(format!("socket filter on {name}")))?;
    opt("PACKET_VERSION", PACKET_VERSION, TPACKET_V2)?;
    opt("PACKET_VNET_HDR", PACKET_VNET_HDR, 1)?;
    opt("PACKET_IGNORE_OUTGOING", PACKET_IGNORE_OUTGOING, 1)?;
    // What does not fit a frame waits whole on the socket (module docs).
    opt("PACKET_COPY_THRESH", PACKET_COPY_THRESH, 1)?;
    let buffer = |force| sys::setsockopt(&fd, libc::SOL_SOCKET, force, &RCVBUF);
    // FORCE goes past net.core.rmem_max (CAP_NET_ADMIN, which the routes
    // need anyway); without it, as much as rmem_max lets.
    buffer(libc::SO_RCVBUFFORCE)
        .or_else(|_| buffer(libc::SO_RCVBUF))
        .map_err(sys_err(format!("SO_RCVBUF on {name}")))?;
    let req: [u32; 4] = [
        BLOCK_SIZE as u32,
        BLOCKS as u32,
        FRAME_SIZE as u32,
        FRAMES as u32,
    ];
    sys::setsockopt(&fd, libc::SOL_PACKET, PACKET_RX_RING, &req)
        .map_err(sys_err(format!("PACKET_RX_RING on {name}")))?;
    let map = sys::Mapping::ring(&fd, BLOCK_SIZE * BLOCKS)
        .map_err(sys_err(format!("mapping the ring of {name}")))?;
    // Every protocol: the filter chooses (IPv4 and IPv6 in one ring), and
    // what the socket sends gets its protocol from its Ethernet header.
    // It also makes the socket a tap, served before the ingress hook where
    // `IngressDrop` drops the kernel's copy: bound to one protocol, it
    // would be served after it, and starve.
    sys::bind_packet(&fd, iface.index, libc::ETH_P_ALL as u16)
        .map_err(sys_err(format!("binding to {name}")))?;
    Ok(Ring { fd, map, head: 0 })
}

impl AfPacket {
    /// Open one socket with a ring per queue and interface (fanout groups
    /// per interface when there are several queues).
    pub fn open(spec: &PacketSpec) -> Result<(Self, Opened), PacketError> {
        check_capabilities()?;
        let links = Netlink::open()
            .and_then(|mut nl| nl.links())
            .map_err(sys_err("listing interfaces"))?;
        let ifaces = select_ifaces(&links, &spec.ifaces)?;
        let prog = filter(&spec.addrs);
        let queues = spec.queues.max(1);
        let mut filter_fds = Vec::with_capacity(queues * ifaces.len());
        let mut rings: Vec<Vec<Ring>> = Vec::with_capacity(queues);
        let mut groups: Vec<u32> = Vec::with_capacity(ifaces.len());
        // A fanout group's hook does not inherit its sockets'
        // PACKET_IGNORE_OUTGOING: the group takes the flag itself, where
        // the kernel knows it (else every frame the host sends on the
        // interface would be cloned to the group and filtered out).
        let mut ignore = PACKET_FANOUT_FLAG_IGNORE_OUTGOING;
        for q in 0..queues {
            let mut mine = Vec::with_capacity(ifaces.len());
            for (k, iface) in ifaces.iter().enumerate() {
                let ring = open_ring(iface, &prog)?;
                if queues > 1 {
                    let what = format!("PACKET_FANOUT on {}", iface.name);
                    let arg = |ignore: u32| {
                        if q == 0 {
                            (PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_UNIQUEID | ignore) << 16
                        } else {
                            groups[k] | ((PACKET_FANOUT_CBPF | ignore) << 16)
                        }
                    };
                    let mut set =
                        sys::setsockopt(&ring.fd, libc::SOL_PACKET, PACKET_FANOUT, &arg(ignore));
                    if q == 0
                        && k == 0
                        && ignore != 0
                        && set
                            .as_ref()
                            .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
                    {
                        tracing::debug!("this kernel has no PACKET_FANOUT_FLAG_IGNORE_OUTGOING");
                        ignore = 0;
                        set = sys::setsockopt(
                            &ring.fd,
                            libc::SOL_PACKET,
                            PACKET_FANOUT,
                            &arg(ignore),
                        );
                    }
                    set.map_err(sys_err(what.clone()))?;
                    if q == 0 {
                        sys::set_fanout_program(&ring.fd, &fanout_program())
                            .map_err(sys_err(format!("PACKET_FANOUT_DATA on {}", iface.name)))?;
                        let got = sys::getsockopt_u32(&ring.fd, libc::SOL_PACKET, PACKET_FANOUT)
                            .map_err(sys_err(what))?;
                        groups.push(got & 0xffff);
                    }
                }
                filter_fds.push(
                    ring.fd
                        .try_clone()
                        .map_err(sys_err("duplicating a packet socket"))?,
                );
                mine.push(ring);
            }
            rings.push(mine);
        }
        let queues = rings
            .into_iter()
            .map(|rings| {
                let fds: Vec<_> = rings.iter().map(|r: &Ring| r.fd.as_fd()).collect();
                let waiting = sys::PollSet::new(&fds);
                Ok(Mutex::new(Queue {
                    waiting,
                    rings,
                    next: 0,
                    arrived: 0,
                    hops: Hops::new().map_err(sys_err("netlink socket"))?,
                    unsent: None,
                    tokens: Tokens::new(Instant::now()),
                    pending: (0..TX_BATCH)
                        .map(|_| (0, Vec::with_capacity(IP_START + TX_SMALL)))
                        .collect(),
                    npending: 0,
                    spare: vec![0; SPARE_LEN],
                }))
            })
            .collect::<Result<Vec<_>, PacketError>>()?;
        let changes = Arc::new(Changes::default());
        let fd = netlink::monitor().map_err(sys_err("netlink monitor socket"))?;
        let c = changes.clone();
        std::thread::Builder::new()
            .name("tunlb-netlink".into())
            .spawn(move || watch(fd, c))
            .map_err(sys_err("starting the netlink monitor thread"))?;
        let opened = Opened {
            ifaces: ifaces.clone(),
            queues: queues.len(),
        };
        Ok((
            AfPacket {
                ifaces,
                queues,
                filter_fds,
                addrs: Mutex::new(spec.addrs.clone()),
                counters: Counters::default(),
                changes,
            },
            opened,
        ))
    }

    fn generation(&self) -> u64 {
        self.changes.generation.load(Ordering::Acquire)
    }

    /// Receive for `addrs` from now on (a reload's VIPs and SNAT
    /// addresses): every socket gets the new filter, which the kernel swaps
    /// in at once (a frame meets the old filter or the new one, never
    /// none). On an error, the sockets already changed keep the new filter.
    pub fn receive_for(&self, addrs: &[IpAddr]) -> Result<(), PacketError> {
        let prog = filter(addrs);
        for fd in &self.filter_fds {
            attach(fd, &prog).map_err(sys_err("replacing the socket filter"))?;
        }
        *self.addrs.lock().unwrap_or_else(|p| p.into_inner()) = addrs.to_vec();
        Ok(())
    }

    /// Return the drop counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Ask the kernel to resolve the next hops of `addrs` (the backends)
    /// ahead of the first packet, so a first SYN is not dropped for want
    /// of a MAC. Best effort.
    pub fn warm(&self, addrs: &[IpAddr]) {
        // Not packets: what this finds missing is not a drop.
        let scratch = Counters::default();
        for q in &self.queues {
            let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
            for a in addrs {
                let generation = self.generation();
                let _: Next = q.hops.lookup(*a, &self.ifaces, &scratch, generation);
            }
        }
    }

    /// Every drop counter, in a fixed order: the kernel's count of frames
    /// lost to a full ring (`PACKET_STATISTICS`, which clears on read: it
    /// is added to [`Counters::ring_full`] here, so any reader sees the
    /// running total), then this datapath's own.
    pub fn drop_counts(&self) -> [DropCount; 9] {
        let c = &self.counters;
        for fd in &self.filter_fds {
            if let Ok((_, lost)) = sys::packet_statistics(fd) {
                c.ring_full.fetch_add(u64::from(lost), Ordering::Relaxed);
            }
        }
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            DropCount::new("ring_full", n(&c.ring_full)),
            DropCount::new("socket_queue_full", n(&c.queue_full)),
            DropCount::new("bad_frame", n(&c.bad_frames)),
            DropCount::new("no_route", n(&c.no_route)),
            DropCount::new("no_neighbour", n(&c.no_neighbour)),
            DropCount::new("unreachable", n(&c.unreachable)),
            DropCount::new("too_big", n(&c.too_big)),
            DropCount::new("refused_in_a_batch", n(&c.tx_errors)),
            DropCount::new("ttl_exceeded", n(&c.ttl_exceeded)),
        ]
    }

    /// Describe the drops in one line, or `None` when there were none.
    pub fn describe_drops(&self) -> Option<String> {
        let c = &self.counters;
        let v = self.drop_counts();
        v.iter().any(|d| d.count > 0).then(|| {
            let parts: Vec<String> = v.iter().map(DropCount::to_string).collect();
            format!(
                "packet datapath drops: {} ({} resolutions asked, {} ICMP errors made)",
                parts.join(", "),
                c.resolutions.load(Ordering::Relaxed),
                c.icmp_errors.load(Ordering::Relaxed)
            )
        })
    }
}

impl PacketIo for AfPacket {
    fn queues(&self) -> usize {
        self.queues.len()
    }

    fn recv(&self, queue: usize, buf: &mut [u8], timeout: Duration) -> io::Result<Option<Frame>> {
        let mut q = self.queue(queue);
        if let Some(f) = self.next_frame(&mut q, buf) {
            return Ok(Some(f));
        }
        // The rings ran dry: what waits goes now.
        q.flush(&self.counters);
        if timeout.is_zero() {
            return Ok(None);
        }
        if !q.waiting.wait(timeout)? {
            return Ok(None);
        }
        Ok(self.next_frame(&mut q, buf))
    }

    fn send(
        &self,
        queue: usize,
        buf: &mut [u8],
        frame: &Frame,
        len: usize,
        replaced: bool,
    ) -> io::Result<()> {
        let start = frame.start;
        if start < IP_START || start + len > buf.len() || len < 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a frame of the packet datapath",
            ));
        }
        let mut q = self.queue(queue);
        self.send_locked(&mut q, buf, frame, len, replaced)
    }

    fn take_unsent(&self, queue: usize) -> Option<Unsent> {
        self.queue(queue).unsent.take()
    }

    /// An empty read looks at the rings' next frames (memory) and sends
    /// nothing when nothing waits: no system call.
    fn cheap_to_poll(&self) -> bool {
        true
    }
}

impl AfPacket {
    /// Queue `queue` (modulo their number), locked.
    fn queue(&self, queue: usize) -> std::sync::MutexGuard<'_, Queue> {
        self.queues[queue % self.queues.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// [`PacketIo::send`] on the thread's queue, locked by the caller.
    fn send_locked(
        &self,
        q: &mut Queue,
        buf: &mut [u8],
        frame: &Frame,
        len: usize,
        replaced: bool,
    ) -> io::Result<()> {
        let start = frame.start;
        let v6 = buf[start] >> 4 == 6;
        if v6 && len < 40 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let dst = ip_dst(&buf[start..]);
        q.unsent = None;
        let generation = self.generation();
        let (pos, mac) = match q.hops.lookup(dst, &self.ifaces, &self.counters, generation) {
            Next::Via { pos, mac, mtu } => {
                let gso = frame.gso && !replaced;
                if len > mtu && !(gso && segments_fit(&buf[start - IP_START..], mtu)) {
                    Counters::bump(&self.counters.too_big);
                    // IPv6 routers never fragment: always "packet too big".
                    let df = v6 || buf[start + 6] & 0x40 != 0;
                    if df {
                        let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
                        self.refuse(q, Unreachable::TooBig { mtu }, generation, v6);
                    }
                    // The details at debug level only: a drop allocates nothing.
                    tracing::debug!("{len} bytes for {dst}: larger than the MTU {mtu}");
                    return Err(io::ErrorKind::InvalidInput.into());
                }
                (pos, mac)
            }
            Next::Wait => {
                tracing::debug!("no next hop known for {dst} yet");
                return Err(io::ErrorKind::HostUnreachable.into());
            }
            Next::Refused(why) => {
                if let Some(why) = why {
                    self.refuse(q, why, generation, v6);
                }
                tracing::debug!("{dst} is unreachable");
                return Err(io::ErrorKind::HostUnreachable.into());
            }
        };
        // Forwarded, so one hop less to live (RFC 1812 5.3.1). Every
        // packet handed out by `recv` had a TTL of 2 or more.
        if !replaced && decrement_hops(&mut buf[start..]).is_none() {
            let c = &self.counters;
            Counters::bump(if hops_left(&buf[start..]).is_some() {
                &c.ttl_exceeded
            } else {
                &c.bad_frames
            });
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let eth = start - ETH_LEN;
        buf[eth..eth + 6].copy_from_slice(&mac);
        buf[eth + 6..eth + 12].copy_from_slice(&self.ifaces[pos].mac);
        let ethertype = if v6 { libc::ETH_P_IPV6 } else { libc::ETH_P_IP };
        buf[eth + 12..eth + 14].copy_from_slice(&(ethertype as u16).to_be_bytes());
        let v = eth - vnet::LEN;
        if replaced {
            VnetHdr::default().emit(&mut buf[v..eth]);
        } else {
            // "Checksum verified" is a receive-side statement.
            buf[v] &= !vnet::F_DATA_VALID;
        }
        let bytes = &buf[v..start + len];
        if bytes.len() <= IP_START + TX_SMALL && !frame_gso(bytes) {
            let k = q.npending;
            let (p, b) = &mut q.pending[k];
            *p = pos;
            b.clear();
            b.extend_from_slice(bytes);
            q.npending += 1;
            if q.npending == TX_BATCH {
                q.flush(&self.counters);
            }
            return Ok(());
        }
        q.flush(&self.counters);
        sys::send(&q.rings[pos].fd, bytes, libc::MSG_DONTWAIT).map(drop)
    }

    /// The next frame for the engine, copied into `buf`, or `None` when the
    /// rings are empty. A frame whose TTL ran out is answered here (ICMP
    /// "time exceeded", see the module docs) and not handed out.
    fn next_frame(&self, q: &mut Queue, buf: &mut [u8]) -> Option<Frame> {
        // Bounded: each turn takes a frame out of a ring.
        for _ in 0..FRAMES * q.rings.len() {
            let f = q.try_recv(buf, &self.counters)?;
            let ip = &buf[f.start..f.start + f.len];
            if hops_left(ip).is_none_or(|h| h > 1) {
                return Some(f);
            }
            Counters::bump(&self.counters.ttl_exceeded);
            if may_answer(ip) && self.is_ours(ip_dst(ip)) {
                self.time_exceeded(q, ip);
            }
        }
        None
    }

    /// Tell the source of `about`, a packet as it arrived, that its TTL
    /// (hop limit) ran out here: ICMP type 11 code 0, ICMPv6 type 3 code
    /// 0, within the rate limit.
    fn time_exceeded(&self, q: &mut Queue, about: &[u8]) {
        if !q.tokens.take(Instant::now()) {
            return;
        }
        let generation = self.generation();
        let v6 = about[0] >> 4 == 6;
        let Some(from) = self.router_addr(q, generation, v6) else {
            return;
        };
        let mut spare = std::mem::take(&mut q.spare);
        if let Some(n) = RouterError::TIME_EXCEEDED.emit(from, about, &mut spare[IP_START..]) {
            Counters::bump(&self.counters.icmp_errors);
            let frame = Frame {
                start: IP_START,
                len: n,
                l4: L4Checksum::Complete,
                gso: false,
            };
            if let Err(e) = self.send_locked(q, &mut spare, &frame, n, true) {
                tracing::debug!("the ICMP time exceeded could not be sent: {e}");
                q.unsent = None;
            }
        }
        q.spare = spare;
    }

    /// Whether `addr` is one tunlb receives for (a VIP or SNAT address):
    /// the filter also passes others when it cannot list them all.
    fn is_ours(&self, addr: IpAddr) -> bool {
        (self.addrs.lock().unwrap_or_else(|p| p.into_inner())).contains(&addr)
    }

    /// The source of the ICMP (`v6`: ICMPv6) errors this device sends:
    /// the host's address of that family on the interface the packet
    /// arrived on, else on any of tunlb's.
    fn router_addr(&self, q: &mut Queue, generation: u64, v6: bool) -> Option<IpAddr> {
        q.hops.refresh(generation);
        let arrived = self.ifaces[q.arrived.min(self.ifaces.len() - 1)].index;
        let hops = &mut q.hops;
        hops.iface(arrived)
            .addr_for(v6)
            .or_else(|| (self.ifaces.iter()).find_map(|i| hops.iface(i.index).addr_for(v6)))
    }
    /// Record that the packet `q` could not send is to be answered with
    /// `why`, from the host's address on the interface it arrived on (RFC
    /// 1812 4.3.2.4; any of tunlb's interfaces' when that one has none),
    /// within the rate limit.
    fn refuse(&self, q: &mut Queue, why: Unreachable, generation: u64, v6: bool) {
        if !q.tokens.take(Instant::now()) {
            return;
        }
        if let Some(from) = self.router_addr(q, generation, v6) {
            Counters::bump(&self.counters.icmp_errors);
            q.unsent = Some(Unsent { from, why });
        }
    }
}

/// Whether the frame at `buf` (virtio-net header first) is a super-packet.
fn frame_gso(buf: &[u8]) -> bool {
    VnetHdr::parse(buf).is_gso()
}

/// The destination of the IP packet at the start of `ip` (IPv6 when its
/// version says so, else IPv4); the caller has checked its length.
fn ip_dst(ip: &[u8]) -> IpAddr {
    if ip[0] >> 4 == 6 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&ip[24..40]);
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]))
    }
}

/// The TTL (IPv4) or hop limit (IPv6) of the packet at the start of `ip`;
/// `None` for another version.
fn hops_left(ip: &[u8]) -> Option<u8> {
    match ip[0] >> 4 {
        4 => ip.get(8).copied(),
        6 => ip.get(7).copied(),
        _ => None,
    }
}

/// Whether a router may answer the packet `ip` (as it arrived) with an
/// ICMP error: a whole, first-fragment IPv4 header with a good checksum, or
/// an IPv6 header, from a unicast source, that is not itself an ICMP error
/// (RFC 1122 3.2.2, RFC 1812 4.3.2.7, RFC 4443 2.4(e)).
fn may_answer(ip: &[u8]) -> bool {
    match ip.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ihl < 20 || ip.len() < ihl || !checksum::sums_to_ones(&ip[..ihl]) {
                return false;
            }
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let first = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
            let error = ip[9] == 1 && ip.get(ihl).is_none_or(|t| matches!(t, 3 | 4 | 5 | 11 | 12));
            first
                && !error
                && !(src.is_unspecified()
                    || src.is_loopback()
                    || src.is_multicast()
                    || src.is_broadcast())
        }
        Some(6) if ip.len() >= 40 => {
            let src = ip_src6(ip);
            let error = ip[6] == 58 && ip.get(40).is_none_or(|&t| t < 128);
            !(error || src.is_unspecified() || src.is_loopback() || src.is_multicast())
        }
        _ => false,
    }
}

/// The source address of the IPv6 header at the start of `ip` (40 bytes
/// or more).
fn ip_src6(ip: &[u8]) -> Ipv6Addr {
    let mut b = [0u8; 16];
    b.copy_from_slice(&ip[8..24]);
    Ipv6Addr::from(b)
}

/// Attach the socket filter `prog` to `fd`. A program the kernel cannot
/// hold (`ENOMEM`: larger than `net.core.optmem_max` lets a socket keep,
/// the old and new one counted together while one replaces the other)
/// is replaced by one that takes the packets of both families to any
/// address: the engine drops what is not for tunlb, at some cost.
fn attach(fd: &impl std::os::fd::AsRawFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    match sys::attach_filter(fd, prog) {
        Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
            tracing::warn!(
                "the socket filter for tunlb's addresses ({} instructions) is larger than net.core.optmem_max lets a socket hold: the packet sockets take TCP and ICMP to any address instead (the engine drops the rest); raise net.core.optmem_max to filter in the kernel",
                prog.len()
            );
            sys::attach_filter(fd, &filter_any())
        }
        r => r,
    }
}

/// Forward the packet at the start of `ip` one hop: decrement its TTL
/// (with the header checksum) or hop limit. `None`, and nothing changed,
/// when it had 1 or 0 left (or is neither IPv4 nor IPv6).
fn decrement_hops(ip: &mut [u8]) -> Option<u8> {
    match ip[0] >> 4 {
        4 => checksum::decrement_ttl(ip),
        6 if ip[7] > 1 => {
            ip[7] -= 1;
            Some(ip[7])
        }
        _ => None,
    }
}

/// Whether the segments of the super-packet at `buf` (virtio-net and
/// Ethernet headers, then the IP packet) fit in `mtu`: the kernel cuts it into
/// IP header + TCP header + `gso_size` payload each (as Linux's forwarding
/// checks, `skb_gso_validate_network_len`).
fn segments_fit(buf: &[u8], mtu: usize) -> bool {
    let h = VnetHdr::parse(buf);
    let ip = &buf[IP_START..];
    // IPv6: TCP right after the fixed header (a super-packet has no
    // extension headers; with them the packet does not fit, and is refused).
    let ihl = match ip[0] >> 4 {
        6 if ip.get(6) == Some(&6) => 40,
        6 => return false,
        _ => usize::from(ip[0] & 0x0f) * 4,
    };
    let Some(&off) = ip.get(ihl + 12) else {
        return false;
    };
    let headers = ihl + usize::from(off >> 4) * 4;
    h.is_gso() && h.gso_size > 0 && headers + usize::from(h.gso_size) <= mtu
}

/// Before a TUN datapath (`--io vnet`, `--io tun`) starts: remove what a
/// tunlb on the packet datapath, killed with `kill -9`, left for this run's
/// addresses `addrs`, which would drop their traffic before it reaches the
/// TUN: tunlb's blackhole routes for them, and tunlb's ingress drop filters
/// whose program drops frames for one of them (with their `clsact` qdisc
/// when nothing else is on it, as the packet datapath takes it for its own
/// after `kill -9`). Routes and filters for other addresses are not
/// touched (another tunlb may run). Each removal is logged; what cannot be
/// removed (no CAP_NET_ADMIN) is a warning naming the command that would.
pub fn remove_stale_for_tun(addrs: &[IpAddr]) {
    let Ok(mut nl) = Netlink::open() else {
        return;
    };
    let proto = netlink::PROTO;
    for a in nl.blackholes().unwrap_or_default() {
        if !addrs.contains(&a) {
            continue;
        }
        match nl.blackhole_del(a) {
            Ok(_) => tracing::info!(
                "removed a stale blackhole route for {a} (proto {proto}) left by a tunlb on the packet datapath: it dropped what the TUN is to receive"
            ),
            Err(e) => tracing::warn!(
                "a stale blackhole route for {a} (proto {proto}) drops what the TUN is to receive, and cannot be removed ({e}): 'ip route del blackhole {a} proto {proto}'"
            ),
        }
    }
    for link in nl.links().unwrap_or_default() {
        let Ok(Some(constants)) = nl.drop_filter_constants(link.index) else {
            continue;
        };
        // The words the programs compare an address with (see `program`).
        let ours = |a: &&IpAddr| match a {
            IpAddr::V4(v4) => constants.contains(&u32::from(*v4)),
            IpAddr::V6(v6) => words(u128::from(*v6)).iter().all(|w| constants.contains(w)),
        };
        let Some(a) = addrs.iter().find(ours) else {
            continue;
        };
        let name = &link.name;
        let pref = netlink::TC_PREF;
        match nl.drop_filter_del(link.index) {
            Ok(_) => {
                if nl.clsact_filters(link.index).is_ok_and(|n| n == 0) {
                    let _ = nl.clsact_del(link.index);
                }
                tracing::info!(
                    "removed a stale ingress drop filter on {name} (pref {pref}) left by a tunlb on the packet datapath: it dropped frames for {a} before the TUN"
                );
            }
            Err(e) => tracing::warn!(
                "a stale ingress drop filter on {name} (pref {pref}) drops frames for {a} before the TUN, and cannot be removed ({e}): 'tc filter del dev {name} ingress pref {pref}'"
            ),
        }
    }
}

/// tunlb's blackhole routes for the VIPs and SNAT addresses, removed when
/// dropped. Installing first removes tunlb's stale routes for the same
/// addresses (a `kill -9` leaves them); routes tagged [`netlink::PROTO`]
/// for other addresses are reported, not touched (another tunlb may own
/// them).
///
/// They hold the interfaces' [`IngressDrop`] filters too, which spare the
/// kernel most of that work: the routes are the guarantee, the filters a
/// shortcut in front of them.
#[derive(Debug)]
pub struct Blackholes {
    addrs: Vec<IpAddr>,
    /// Removed after the routes, as a field (its own `Drop`).
    ingress: IngressDrop,
}

impl Blackholes {
    /// Add `blackhole ADDR/32 proto 213` (`/128` for IPv6) for each address,
    /// then the ingress drop filter on each of `ifaces`.
    pub fn install(addrs: &[IpAddr], ifaces: &[Iface]) -> Result<Self, PacketError> {
        let mut want = addrs.to_vec();
        want.sort_unstable();
        want.dedup();
        let mut nl = Netlink::open().map_err(sys_err("netlink socket"))?;
        let existing = nl.blackholes().map_err(sys_err("listing routes"))?;
        for a in existing.iter().filter(|a| want.contains(a)) {
            nl.blackhole_del(*a)
                .map_err(sys_err("removing a stale route"))?;
            tracing::info!(
                "removed a stale blackhole route for {a} (proto {}) left by an earlier tunlb",
                netlink::PROTO
            );
        }
        let others: Vec<String> = existing
            .iter()
            .filter(|a| !want.contains(a))
            .map(|a| a.to_string())
            .collect();
        if !others.is_empty() {
            tracing::warn!(
                "blackhole routes of another tunlb or an earlier configuration left in place: {} ('ip route del blackhole ADDR proto {}' if none runs)",
                others.join(", "),
                netlink::PROTO
            );
        }
        let mut me = Blackholes {
            addrs: Vec::new(),
            ingress: IngressDrop::default(),
        };
        me.extend(&want)?;
        me.ingress = IngressDrop::install(ifaces, &me.addrs);
        Ok(me)
    }

    /// What keeps the kernel off tunlb's packets, for the `ready` line:
    /// `blackhole routes added, ingress drop filter on eth0,eth1` (or `no
    /// ingress drop filter`).
    pub fn describe(&self) -> String {
        let on: Vec<&str> = self.ingress.ifaces().collect();
        if on.is_empty() {
            "blackhole routes added, no ingress drop filter".into()
        } else {
            format!(
                "blackhole routes added, ingress drop filter on {}",
                on.join(",")
            )
        }
    }

    /// Return the addresses routed to the blackhole.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// Add `blackhole ADDR/32 proto 213` (`/128`) for each of `addrs` not routed
    /// there yet (a reload's new VIPs and SNAT addresses); return those
    /// added. Addresses a reload no longer names keep theirs until exit:
    /// flows to them may still be in flight.
    pub fn extend(&mut self, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, PacketError> {
        let mut new: Vec<IpAddr> = (addrs.iter())
            .filter(|a| !self.addrs.contains(a))
            .copied()
            .collect();
        new.sort_unstable();
        new.dedup();
        if new.is_empty() {
            return Ok(new);
        }
        let mut nl = Netlink::open().map_err(sys_err("netlink socket"))?;
        for &a in &new {
            match nl.blackhole_add(a) {
                Ok(()) => self.addrs.push(a),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    return Err(PacketError::RouteExists(a))
                }
                Err(e) => return Err(sys_err("adding a blackhole route")(e)),
            }
        }
        self.ingress.update(&self.addrs);
        Ok(new)
    }
}

impl Drop for Blackholes {
    fn drop(&mut self) {
        if self.addrs.is_empty() {
            return;
        }
        let removed = Netlink::open().and_then(|mut nl| {
            for a in &self.addrs {
                nl.blackhole_del(*a)?;
            }
            Ok(())
        });
        if let Err(e) = removed {
            tracing::warn!(
                "cannot remove the blackhole routes ({e}): 'ip route flush proto {}' does",
                netlink::PROTO
            );
        }
    }
}

/// tunlb's ingress drop filters: on each interface of the datapath, a `bpf`
/// filter at priority [`netlink::TC_PREF`] on the ingress hook of a
/// `clsact` qdisc (`tc filter show dev X ingress`), in direct-action mode,
/// drops the frames the packet sockets take ([`drop_filter`]: the same
/// test as their socket filter).
///
/// # Why it is safe
/// The packet sockets are bound to every protocol (`ETH_P_ALL`), which
/// makes them taps: `__netif_receive_skb_core` hands a frame to every tap
/// *before* the ingress hook runs. So each socket has copied its frame into
/// its ring when this filter drops it, and the frame's only other reader
/// is the kernel's IP layer, which would drop it on the blackhole route.
/// A socket bound to one protocol (`ETH_P_IP`) would be served after the
/// hook, and starved by it.
///
/// # Why
/// Without it, the kernel's copy of each frame tunlb handles goes through
/// `ip_rcv` and a route lookup before the blackhole route drops it. Dropped
/// at the hook instead, it costs a short BPF program run. Measured side by
/// side (5 interleaved rounds of `bench/e2e.sh`, twice): machine softirq
/// time -5 to -9 % per new connection and -7 to -14 % per keep-alive
/// request, keep-alive requests/s +3 to +5 %.
///
/// What it drops, it drops for every later hook too: tc filters of a
/// higher `pref` and nftables `netdev` ingress chains no longer see
/// tunlb's frames (any other frame goes on to them: the program returns
/// `TC_ACT_UNSPEC`, never `TC_ACT_OK`, even for a frame too short to read).
/// One tunlb per interface: a second one replaces the first's filter.
///
/// # Lifetime
/// Best effort: where the kernel has no `clsact` qdisc or `bpf` classifier,
/// or a family has too many addresses for [`drop_filter`] to list, one
/// line says so and the blackhole routes alone keep the kernel away (they
/// stay in every case: the guarantee, where this is the shortcut). Removed
/// on drop, and the `clsact` qdisc with it if tunlb added it and no other
/// filter is left on it (a user's qdisc stays, even empty); a start after
/// `kill -9` replaces the stale filter and takes its qdisc for tunlb's,
/// and warns of stale filters on interfaces it does not use.
#[derive(Debug, Default)]
pub struct IngressDrop {
    /// The interfaces that hold the filter.
    on: Vec<Held>,
}

/// One interface's filter.
#[derive(Debug)]
struct Held {
    index: u32,
    name: String,
    /// Its `clsact` qdisc is tunlb's: added by this run, or found holding a
    /// stale filter of an earlier one. Only then is it removed at exit
    /// (when no other filter is on it): a user's qdisc stays, even empty.
    own_qdisc: bool,
}

impl IngressDrop {
    /// Add the filter for `addrs` on each of `ifaces` (and a `clsact`
    /// qdisc where there is none); report stale filters of an earlier
    /// tunlb on the host's other interfaces.
    pub fn install(ifaces: &[Iface], addrs: &[IpAddr]) -> Self {
        let mut me = IngressDrop::default();
        let Some(prog) = drop_filter(addrs) else {
            tracing::warn!(
                "no ingress drop filter: more than {FILTER_MAX_ADDRS} addresses of one family (the blackhole routes alone keep the kernel off tunlb's packets, at some cost per packet)"
            );
            return me;
        };
        let mut nl = match Netlink::open() {
            Ok(nl) => nl,
            Err(e) => {
                tracing::warn!("no ingress drop filter: netlink socket: {e}");
                return me;
            }
        };
        for iface in ifaces {
            let (index, name) = (iface.index, &iface.name);
            let added = nl.clsact_add(index).and_then(|created| {
                match nl.drop_filter_set(index, &prog, false) {
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                        nl.drop_filter_set(index, &prog, true)?;
                        tracing::info!(
                            "replaced a stale ingress drop filter on {name} (pref {}) left by an earlier tunlb",
                            netlink::TC_PREF
                        );
                        // Its qdisc is most likely that tunlb's too.
                        Ok(true)
                    }
                    Err(e) => {
                        if created {
                            let _ = nl.clsact_del(index);
                        }
                        Err(e)
                    }
                    Ok(()) => Ok(created),
                }
            });
            match added {
                Ok(own_qdisc) => me.on.push(Held {
                    index,
                    name: name.clone(),
                    own_qdisc,
                }),
                Err(e) => tracing::warn!(
                    "no ingress drop filter on {name} ({e}): the blackhole routes alone keep the kernel off tunlb's packets there, at some cost per packet"
                ),
            }
        }
        // A `kill -9` of a tunlb on other interfaces left its filters there.
        let stale: Vec<String> = (nl.links().unwrap_or_default().into_iter())
            .filter(|l| !ifaces.iter().any(|i| i.index == l.index))
            .filter(|l| nl.drop_filter_present(l.index).unwrap_or(false))
            .map(|l| l.name)
            .collect();
        if !stale.is_empty() {
            tracing::warn!(
                "ingress drop filters of another tunlb or an earlier run left on {}: they drop frames to its addresses ('tc filter del dev IFACE ingress pref {}' if none runs there)",
                stale.join(", "),
                netlink::TC_PREF
            );
        }
        me
    }

    /// Drop the frames for `addrs` from now on (a reload's new addresses):
    /// the kernel swaps each interface's program at once. With too many
    /// addresses to list, the old program stays (it drops a part of what
    /// it should; the routes drop the rest).
    pub fn update(&mut self, addrs: &[IpAddr]) {
        if self.on.is_empty() {
            return;
        }
        let Some(prog) = drop_filter(addrs) else {
            tracing::warn!(
                "ingress drop filter unchanged: more than {FILTER_MAX_ADDRS} addresses of one family (the blackhole routes drop the new addresses' frames)"
            );
            return;
        };
        let mut nl = match Netlink::open() {
            Ok(nl) => nl,
            Err(e) => {
                tracing::warn!("ingress drop filter unchanged: netlink socket: {e}");
                return;
            }
        };
        for h in &self.on {
            if let Err(e) = nl.drop_filter_set(h.index, &prog, true) {
                tracing::warn!("cannot update the ingress drop filter on {}: {e}", h.name);
            }
        }
    }

    /// The interfaces that hold the filter.
    pub fn ifaces(&self) -> impl Iterator<Item = &str> {
        self.on.iter().map(|h| h.name.as_str())
    }
}

impl Drop for IngressDrop {
    fn drop(&mut self) {
        if self.on.is_empty() {
            return;
        }
        let mut nl = match Netlink::open() {
            Ok(nl) => nl,
            Err(e) => {
                tracing::warn!(
                    "cannot remove the ingress drop filters (netlink socket: {e}): 'tc filter del dev IFACE ingress pref {}' does",
                    netlink::TC_PREF
                );
                return;
            }
        };
        for h in &self.on {
            let removed = nl.drop_filter_del(h.index).and_then(|_| {
                // The qdisc too, if tunlb added it and no one else's
                // filter is on it now.
                if h.own_qdisc && nl.clsact_filters(h.index)? == 0 {
                    nl.clsact_del(h.index)?;
                }
                Ok(())
            });
            match removed {
                // The interface is gone, and its qdisc with it.
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                Err(e) => tracing::warn!(
                    "cannot remove the ingress drop filter on {name} ({e}): 'tc filter del dev {name} ingress pref {}' does",
                    netlink::TC_PREF,
                    name = h.name
                ),
                Ok(()) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::craft::{IcmpError, Icmpv6Error};

    /// Run the subset of classic BPF that [`filter`] uses over `frame`
    /// with packet type `pkttype`.
    fn run(prog: &[libc::sock_filter], frame: &[u8], pkttype: u32) -> u32 {
        exec(prog, frame, [pkttype, 0, 0])
    }

    /// Run the subset of classic BPF that tunlb's programs use over `pkt`,
    /// with `[packet type, protocol, VLAN tag present]` for the ancillary
    /// loads; a load past the end returns 0, as in the kernel.
    fn exec(prog: &[libc::sock_filter], pkt: &[u8], anc: [u32; 3]) -> u32 {
        let [pkttype, protocol, tagged] = anc;
        use libc::*;
        let (mut a, mut x, mut mem): (u32, u32, [u32; 16]) = (0, 0, [0; 16]);
        let mut pc = 0;
        for _ in 0..prog.len() {
            let i = prog[pc];
            let code = u32::from(i.code);
            let load = |off: usize, n: usize| {
                pkt.get(off..off + n)
                    .map(|b| b.iter().fold(0u32, |v, &byte| v << 8 | u32::from(byte)))
            };
            let k = i.k as usize;
            match code {
                c if c == BPF_LD | BPF_W | BPF_ABS
                    && i.k == (SKF_AD_OFF + SKF_AD_PKTTYPE) as u32 =>
                {
                    a = pkttype
                }
                c if c == BPF_LD | BPF_W | BPF_ABS
                    && i.k == (SKF_AD_OFF + SKF_AD_PROTOCOL) as u32 =>
                {
                    a = protocol
                }
                c if c == BPF_LD | BPF_W | BPF_ABS
                    && i.k == (SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT) as u32 =>
                {
                    a = tagged
                }
                c if c == BPF_LD | BPF_W | BPF_LEN => a = pkt.len() as u32,
                c if c & 0x07 == BPF_LD && (c & 0xe0 == BPF_ABS || c & 0xe0 == BPF_IND) => {
                    let n = match c & 0x18 {
                        s if s == BPF_W => 4,
                        s if s == BPF_H => 2,
                        _ => 1,
                    };
                    let off = if c & 0xe0 == BPF_IND {
                        x as usize + k
                    } else {
                        k
                    };
                    let Some(v) = load(off, n) else { return 0 };
                    a = v;
                }
                c if c == BPF_LDX | BPF_B | BPF_MSH => {
                    let Some(v) = load(k, 1) else { return 0 };
                    x = 4 * (v & 0xf);
                }
                c if c == BPF_LDX | BPF_W | BPF_MEM => x = mem[k],
                c if c == BPF_ST => mem[k] = a,
                c if c == BPF_MISC | BPF_TXA => a = x,
                c if c == BPF_ALU | BPF_MUL | BPF_K => a = a.wrapping_mul(i.k),
                c if c == BPF_ALU | BPF_RSH | BPF_K => a >>= i.k,
                c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                    pc += 1 + usize::from(if a == i.k { i.jt } else { i.jf });
                    continue;
                }
                c if c == BPF_JMP | BPF_JGE | BPF_K => {
                    pc += 1 + usize::from(if a >= i.k { i.jt } else { i.jf });
                    continue;
                }
                c if c == BPF_JMP | BPF_JGT | BPF_X => {
                    pc += 1 + usize::from(if a > x { i.jt } else { i.jf });
                    continue;
                }
                c if c == BPF_JMP | BPF_JA => {
                    pc += 1 + k;
                    continue;
                }
                c if c == BPF_RET | BPF_K => return i.k,
                c if c == BPF_RET | BPF_A => return a,
                c => panic!("opcode {c:#x} not in the subset"),
            }
            pc += 1;
        }
        panic!("ran off the end of the program");
    }

    fn frame(ethertype: u16, proto: u8, dst: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40];
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f[14] = 0x45;
        f[14 + 9] = proto;
        f[14 + 16..14 + 20].copy_from_slice(&dst.octets());
        f
    }

    fn frame6(ethertype: u16, next: u8, dst: Ipv6Addr) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 60];
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f[14] = 0x60;
        f[14 + 6] = next;
        f[14 + 24..14 + 40].copy_from_slice(&dst.octets());
        f
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_filter_takes_tcp_and_icmp_to_our_addresses_only() {
        let vip = Ipv4Addr::new(198, 18, 0, 1);
        let snat = Ipv4Addr::new(198, 18, 0, 2);
        let other = Ipv4Addr::new(198, 18, 1, 1);
        let p = filter(&[vip.into(), snat.into(), vip.into()]);
        assert!(
            p.len() <= 26,
            "duplicates are listed once: {} insns",
            p.len()
        );
        let yes = |f: &[u8], t| run(&p, f, t) > 0;
        assert!(yes(&frame(0x0800, 6, vip), 0));
        assert!(yes(&frame(0x0800, 6, snat), 0));
        assert!(yes(&frame(0x0800, 1, vip), 0), "ICMP errors for flows");
        assert!(
            !yes(&frame(0x0800, 6, other), 0),
            "TCP to the host's own address"
        );
        assert!(!yes(&frame(0x0800, 1, other), 0), "a ping to the host");
        assert!(!yes(&frame(0x0800, 17, vip), 0), "UDP");
        assert!(!yes(&frame(0x86dd, 6, vip), 0), "no IPv6 address listed");
        assert!(!yes(&frame(0x0806, 6, vip), 0), "ARP");
        assert!(!yes(&frame(0x0800, 6, vip), 3), "PACKET_OTHERHOST");
        assert!(!yes(&frame(0x0800, 6, vip), 4), "PACKET_OUTGOING");
        assert!(!yes(&frame(0x0800, 6, vip)[..20], 0), "truncated");
    }

    /// An IP packet (no link header, as the fanout hook sees it) of TCP
    /// from `src` to `dst`, IPv4 with `options` words of IP options.
    fn tcp_packet(src: (IpAddr, u16), dst: (IpAddr, u16), options: usize) -> Vec<u8> {
        let mut p = match (src.0, dst.0) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut p = vec![0u8; 20 + 4 * options];
                p[0] = 0x40 | (5 + options as u8);
                p[9] = 6;
                p[12..16].copy_from_slice(&s.octets());
                p[16..20].copy_from_slice(&d.octets());
                p
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut p = vec![0u8; 40];
                p[0] = 0x60;
                p[6] = 6;
                p[8..24].copy_from_slice(&s.octets());
                p[24..40].copy_from_slice(&d.octets());
                p
            }
            _ => unreachable!(),
        };
        p.extend_from_slice(&src.1.to_be_bytes());
        p.extend_from_slice(&dst.1.to_be_bytes());
        p.resize(p.len() + 16, 0);
        p
    }

    #[test]
    fn the_fanout_program_sends_both_directions_of_a_flow_to_one_thread() {
        let prog = fanout_program();
        let pick = |p: &[u8], v6: bool| {
            let proto = if v6 { libc::ETH_P_IPV6 } else { libc::ETH_P_IP };
            exec(&prog, p, [0, proto as u32, 0])
        };
        let (client, vip, backend): (IpAddr, IpAddr, IpAddr) = (
            "198.18.1.2".parse().unwrap(),
            "198.18.0.1".parse().unwrap(),
            "198.18.2.3".parse().unwrap(),
        );
        let (client6, vip6, backend6): (IpAddr, IpAddr, IpAddr) = (
            "2001:2:0:1::2".parse().unwrap(),
            "2001:2::1".parse().unwrap(),
            "2001:2:0:2::3".parse().unwrap(),
        );
        let mut seen = [0usize; 2];
        // Even ports, as Linux gives connect(); the service's port differs
        // from the backend's in half of them.
        for port in (40_000..40_064u16).step_by(2) {
            let bport = if port % 4 == 0 { 80 } else { 8080 };
            for (c, v, b, options) in [
                (client, vip, backend, 0),
                (client, vip, backend, 3),
                (client6, vip6, backend6, 0),
            ] {
                let v6 = c.is_ipv6();
                // ORIGINAL client:port -> VIP:80, REPLY backend -> SNAT
                // (here the VIP's address) at the client's own port.
                let original = pick(&tcp_packet((c, port), (v, 80), options), v6);
                let reply = pick(&tcp_packet((b, bport), (v, port), options), v6);
                assert_eq!(original, reply, "port {port} {c} options {options}");
                // The flow table shards by the same value.
                assert_eq!(original, crate::conntrack::tuple::spread(port, 80));
                seen[(original % 2) as usize] += 1;
            }
        }
        // And the flows spread over two threads.
        assert!(seen[0] >= 24 && seen[1] >= 24, "{seen:?}");
        // Too short to hold ports: socket 0, no panic.
        assert_eq!(pick(&[0x45, 0, 0, 20], false), 0);
    }

    #[test]
    fn the_drop_filter_drops_what_the_sockets_take_and_passes_the_rest_on() {
        const SHOT: u32 = 2;
        const UNSPEC: u32 = u32::MAX;
        let vip = Ipv4Addr::new(198, 18, 0, 1);
        let vip6 = v6("2001:2::1");
        let addrs = [vip.into(), vip6.into()];
        let (take, drop) = (filter(&addrs), drop_filter(&addrs).unwrap());
        let frames = [
            (frame(0x0800, 6, vip), 0),
            (frame(0x0800, 1, vip), 0),
            (frame(0x0800, 6, Ipv4Addr::new(198, 18, 1, 1)), 0),
            (frame(0x0800, 17, vip), 0),
            (frame(0x0806, 6, vip), 0),
            (frame(0x0800, 6, vip), 3),
            (frame6(0x86dd, 6, vip6), 0),
            (frame6(0x86dd, 58, vip6), 0),
            (frame6(0x86dd, 6, v6("2001:2::3")), 0),
            (frame6(0x86dd, 58, v6("fe80::1")), 0),
        ];
        for (k, (f, pkttype)) in frames.iter().enumerate() {
            let taken = run(&take, f, *pkttype) > 0;
            let verdict = run(&drop, f, *pkttype);
            assert_eq!(verdict, if taken { SHOT } else { UNSPEC }, "frame {k}");
        }
        assert_eq!(run(&drop, &frame(0x0800, 6, vip), 0), SHOT);
        assert_eq!(
            run(&drop, &frame(0x0800, 6, vip), 4),
            UNSPEC,
            "PACKET_OUTGOING"
        );
        // Never 0 (TC_ACT_OK: pass, and skip the later filters), even for a
        // frame too short for the loads.
        assert_eq!(
            run(&drop, &frame(0x0800, 6, vip)[..33], 0),
            UNSPEC,
            "truncated"
        );
        assert_eq!(
            run(&drop, &frame6(0x86dd, 6, vip6)[..53], 0),
            UNSPEC,
            "truncated"
        );
        assert_eq!(run(&drop, &frame(0x0800, 6, vip)[..14], 0), UNSPEC);
        // A VLAN-tagged frame: the sockets take it (and count it bad), the
        // drop filter passes it on to the VLAN's interface.
        assert!(exec(&take, &frame(0x0800, 6, vip), [0, 0, 1]) > 0);
        assert_eq!(exec(&drop, &frame(0x0800, 6, vip), [0, 0, 1]), UNSPEC);
        // A family with too many addresses to list: no drop filter at all
        // (one for any destination would drop traffic not tunlb's).
        let many: Vec<IpAddr> = (0..FILTER_MAX_ADDRS as u32 + 1)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)))
            .collect();
        assert!(drop_filter(&many).is_none());
        assert!(drop_filter(&many[..FILTER_MAX_ADDRS]).is_some());
    }

    #[test]
    fn the_filter_takes_ipv6_to_our_addresses_only() {
        let vip6 = v6("2001:2::1");
        let snat6 = v6("2001:2::2");
        let vip = Ipv4Addr::new(198, 18, 0, 1);
        let p = filter(&[vip.into(), vip6.into(), snat6.into()]);
        let yes = |f: &[u8]| run(&p, f, 0) > 0;
        assert!(yes(&frame6(0x86dd, 6, vip6)));
        assert!(yes(&frame6(0x86dd, 6, snat6)));
        assert!(yes(&frame6(0x86dd, 58, vip6)), "ICMPv6 errors for flows");
        assert!(
            yes(&frame6(0x86dd, 0, vip6)),
            "extension headers: the engine judges"
        );
        assert!(yes(&frame(0x0800, 6, vip)), "IPv4 still");
        for other in [
            "2001:2::3",
            "2001:2:0:1::1",
            "2001:3::1",
            "ff02::1:ff00:1",
            "fe80::1",
        ] {
            assert!(!yes(&frame6(0x86dd, 6, v6(other))), "{other}");
        }
        // Each of the four words must match.
        for k in 0..4 {
            let mut o = vip6.octets();
            o[4 * k + 3] ^= 1;
            assert!(!yes(&frame6(0x86dd, 6, Ipv6Addr::from(o))), "word {k}");
        }
        assert!(
            !yes(&frame6(0x0800, 6, vip6)),
            "an IPv6 header under IPv4's type"
        );
        assert!(!yes(&frame6(0x86dd, 6, vip6)[..50]), "truncated");
        assert!(!yes(&frame6(0x86dd, 6, vip6)[..30]));
        assert_eq!(run(&p, &frame6(0x86dd, 6, vip6), 4), 0, "PACKET_OUTGOING");
        // IPv6 only: IPv4 goes nowhere.
        let p = filter(&[vip6.into()]);
        assert_eq!(run(&p, &frame(0x0800, 6, vip), 0), 0);
        assert!(run(&p, &frame6(0x86dd, 6, vip6), 0) > 0);
    }

    #[test]
    fn with_too_many_addresses_the_filter_takes_any_destination() {
        let many: Vec<IpAddr> = (0..300u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)))
            .collect();
        let p = filter(&many);
        let yes = |f: &[u8]| run(&p, f, 0) > 0;
        assert!(yes(&frame(0x0800, 6, Ipv4Addr::new(10, 0, 0, 1))));
        assert!(yes(&frame(0x0800, 1, Ipv4Addr::new(10, 0, 0, 1))));
        assert!(!yes(&frame(0x0800, 17, Ipv4Addr::new(198, 18, 0, 0))));
        // The longest listed programs of both families, in one: every jump
        // is short, every address found, the next one not.
        let mut list: Vec<IpAddr> = many[..FILTER_MAX_ADDRS].to_vec();
        let six: Vec<Ipv6Addr> = (0..FILTER_MAX_ADDRS as u128 + 1)
            .map(|i| Ipv6Addr::from(0x2001_0002_0000_0000_0000_0000_0000_0000u128 + (i << 64) + i))
            .collect();
        list.extend(six[..FILTER_MAX_ADDRS].iter().map(|&a| IpAddr::V6(a)));
        let p = filter(&list);
        assert!(p.len() <= 4096, "BPF_MAXINSNS: {}", p.len());
        for a in &list {
            let f = match a {
                IpAddr::V4(a) => frame(0x0800, 6, *a),
                IpAddr::V6(a) => frame6(0x86dd, 6, *a),
            };
            assert!(run(&p, &f, 0) > 0, "{a}");
        }
        assert_eq!(
            run(&p, &frame(0x0800, 6, Ipv4Addr::from(0xc612_0000 + 299)), 0),
            0
        );
        assert_eq!(run(&p, &frame6(0x86dd, 6, six[FILTER_MAX_ADDRS]), 0), 0);
        // One IPv6 address more than listable: any IPv6 destination.
        let p = filter(&six.iter().map(|&a| IpAddr::V6(a)).collect::<Vec<_>>());
        assert!(run(&p, &frame6(0x86dd, 17, v6("2001:db8::1")), 0) > 0);
        assert_eq!(run(&p, &frame(0x0800, 6, Ipv4Addr::new(10, 0, 0, 1)), 0), 0);
    }

    #[test]
    fn the_largest_filters_fit_a_socket_while_one_replaces_another() {
        // Classic programs are converted and charged to the socket (up to
        // net.core.optmem_max), the old and the new one together while a
        // reload replaces one: the usual largest, every address listed
        // (the IPv6 ones in one /96), goes on twice; the worst (every IPv6
        // address in its own /96) at least through `attach`'s fallback.
        // An unbound UDP socket takes filters as a packet socket does.
        let v4: Vec<IpAddr> = (0..FILTER_MAX_ADDRS as u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)))
            .collect();
        let one96 = |i: u128| {
            IpAddr::V6(Ipv6Addr::from(
                0x2001_0002_0000_0000_0000_0000_0000_0000u128 + i,
            ))
        };
        let spread = |i: u128| {
            IpAddr::V6(Ipv6Addr::from(
                0x2001_0002_0000_0000_0000_0000_0000_0000u128 + (i << 40),
            ))
        };
        let usual: Vec<IpAddr> = v4
            .iter()
            .copied()
            .chain((0..FILTER_MAX_ADDRS as u128).map(one96))
            .collect();
        let worst: Vec<IpAddr> = v4
            .iter()
            .copied()
            .chain((0..FILTER_MAX_ADDRS as u128).map(spread))
            .collect();
        let fd = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        let p = filter(&usual);
        assert!(p.len() < 1100, "{} instructions", p.len());
        sys::attach_filter(&fd, &p).unwrap();
        sys::attach_filter(&fd, &p).unwrap();
        let p = filter(&worst);
        assert!(p.len() <= 4096, "BPF_MAXINSNS: {}", p.len());
        attach(&fd, &p).unwrap();
        attach(&fd, &p).unwrap();
        // And every address of the usual one is found, grouped.
        for a in &usual {
            let f = match a {
                IpAddr::V4(a) => frame(0x0800, 6, *a),
                IpAddr::V6(a) => frame6(0x86dd, 6, *a),
            };
            assert!(run(&filter(&usual), &f, 0) > 0, "{a}");
        }
        assert_eq!(
            run(
                &filter(&usual),
                &frame6(
                    0x86dd,
                    6,
                    Ipv6Addr::from(0x2001_0002_0000_0000_0000_0000_0000_1000u128)
                ),
                0
            ),
            0
        );
        let any = filter_any();
        assert!(run(&any, &frame6(0x86dd, 6, v6("2001:db8::1")), 0) > 0);
        assert!(run(&any, &frame(0x0800, 6, Ipv4Addr::new(10, 0, 0, 1)), 0) > 0);
        assert_eq!(
            run(&any, &frame(0x0800, 17, Ipv4Addr::new(10, 0, 0, 1)), 0),
            0
        );
    }

    /// A segment from the client to the VIP, IPv4.
    fn seg4(flags: u8) -> crate::craft::Segment<'static, std::net::SocketAddr> {
        let (c, v): (std::net::SocketAddr, std::net::SocketAddr) = (
            "198.18.1.2:40000".parse().unwrap(),
            "198.18.0.1:80".parse().unwrap(),
        );
        crate::craft::Segment::between(c, v, flags)
    }

    /// A segment from the client to the VIP, IPv6.
    fn seg6(flags: u8) -> crate::craft::Segment<'static, std::net::SocketAddr> {
        let (c, v): (std::net::SocketAddr, std::net::SocketAddr) = (
            "[2001:2:0:1::2]:40000".parse().unwrap(),
            "[2001:2::1]:80".parse().unwrap(),
        );
        crate::craft::Segment::between(c, v, flags)
    }

    #[test]
    fn a_router_answers_only_what_it_may() {
        use crate::conntrack::tcp::flags::SYN;
        let syn4 = seg4(SYN).build();
        assert!(may_answer(&syn4));
        let mut bad = syn4.clone();
        bad[10] ^= 1;
        assert!(!may_answer(&bad), "a bad header checksum");
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = syn4.clone();
            f(&mut p);
            crate::checksum::put(&mut p, 10, 0);
            let c = crate::checksum::full(&p[..20]);
            crate::checksum::put(&mut p, 10, c);
            may_answer(&p)
        };
        assert!(!with(&|p| p[7] = 8), "a later fragment");
        assert!(with(&|p| p[6] = 0x20), "a first fragment");
        for (src, what) in [
            ([224, 0, 0, 1], "a multicast source"),
            ([0, 0, 0, 0], "no source"),
            ([127, 0, 0, 1], "loopback"),
            ([255, 255, 255, 255], "broadcast"),
        ] {
            assert!(!with(&|p| p[12..16].copy_from_slice(&src)), "{what}");
        }
        for (icmp_type, answered) in [(11, false), (3, false), (8, true)] {
            let icmp = |p: &mut Vec<u8>| {
                p[9] = 1;
                p[20] = icmp_type;
            };
            assert_eq!(with(&icmp), answered, "ICMP type {icmp_type}");
        }
        assert!(!may_answer(&syn4[..12]), "truncated");
        let syn6 = seg6(SYN).build();
        assert!(may_answer(&syn6));
        let mut p = syn6.clone();
        p[6] = 58;
        p[40] = 1;
        assert!(!may_answer(&p), "an ICMPv6 error");
        p[40] = 128;
        assert!(may_answer(&p), "an echo request");
        let mut p = syn6.clone();
        p[8] = 0xff;
        assert!(!may_answer(&p), "a multicast source");
        assert!(!may_answer(&syn6[..39]));
        assert!(!may_answer(&[]));
    }

    #[test]
    fn time_exceeded_fits_the_spare_room_for_any_packet() {
        use crate::conntrack::tcp::flags::ACK;
        let payload = vec![9u8; 1400];
        let mut seg = seg6(ACK);
        seg.payload = &payload;
        let big6 = seg.build();
        let mut out = vec![0u8; SPARE_LEN];
        let n = RouterError::TIME_EXCEEDED
            .emit(IpAddr::V6(v6("2001:2:0:1::1")), &big6, &mut out[IP_START..])
            .unwrap();
        assert_eq!(n, Icmpv6Error::MAX_LEN);
        assert_eq!(
            (out[IP_START + 40], out[IP_START + 41]),
            (3, 0),
            "ICMPv6 time exceeded"
        );
        let mut seg4 = seg4(ACK);
        seg4.payload = &payload;
        let big4 = seg4.build();
        let n = RouterError::TIME_EXCEEDED
            .emit(
                IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
                &big4,
                &mut out[IP_START..],
            )
            .unwrap();
        assert_eq!(n, IcmpError::MAX_LEN);
        assert_eq!(
            (out[IP_START + 20], out[IP_START + 21]),
            (11, 0),
            "ICMP time exceeded"
        );
        assert_eq!(
            RouterError::TIME_EXCEEDED.emit(
                IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
                &big6,
                &mut out[IP_START..]
            ),
            None,
            "families must match"
        );
    }

    #[test]
    fn hops_are_decremented_per_family() {
        let mut p4 = vec![0u8; 20];
        p4[0] = 0x45;
        p4[8] = 2;
        let c = crate::checksum::full(&p4);
        crate::checksum::put(&mut p4, 10, c);
        assert_eq!(hops_left(&p4), Some(2));
        assert_eq!(decrement_hops(&mut p4), Some(1));
        assert!(crate::checksum::sums_to_ones(&p4));
        assert_eq!(decrement_hops(&mut p4), None, "a router drops it instead");
        let mut p6 = frame6(0x86dd, 6, v6("2001:2::1"))[14..].to_vec();
        p6[7] = 64;
        assert_eq!(decrement_hops(&mut p6), Some(63));
        assert_eq!(hops_left(&p6), Some(63));
        assert_eq!(ip_dst(&p6), IpAddr::V6(v6("2001:2::1")));
        p6[7] = 1;
        assert_eq!(decrement_hops(&mut p6), None);
        assert_eq!(p6[7], 1, "left as it was");
        assert_eq!(hops_left(&[0x20, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    fn link(index: u32, name: &str, up: bool, kind: u16, master: Option<u32>) -> netlink::Link {
        netlink::Link {
            index,
            name: name.into(),
            flags: if up { libc::IFF_UP as u32 } else { 0 }
                | if name == "lo" {
                    libc::IFF_LOOPBACK as u32
                } else {
                    0
                },
            kind,
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            master,
            mtu: 1500,
        }
    }

    #[test]
    fn default_interfaces_skip_loopback_ports_down_and_non_ethernet() {
        let links = vec![
            link(1, "lo", true, 772, None),
            link(2, "c0", true, 1, None),
            link(3, "br0", true, 1, None),
            link(4, "vb1", true, 1, Some(3)),
            link(5, "down0", false, 1, None),
            link(6, "tl0", true, 65534, None),
        ];
        let names = |v: Vec<Iface>| v.into_iter().map(|i| i.name).collect::<Vec<_>>();
        assert_eq!(names(select_ifaces(&links, &[]).unwrap()), ["c0", "br0"]);
        let pick = |n: &[&str]| {
            select_ifaces(&links, &n.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(names(pick(&["br0", "vb1", "br0"]).unwrap()), ["br0", "vb1"]);
        assert!(matches!(
            pick(&["nope"]),
            Err(PacketError::NoSuchInterface(_))
        ));
        assert!(matches!(pick(&["tl0"]), Err(PacketError::NotEthernet(_))));
        assert!(matches!(pick(&["lo"]), Err(PacketError::NotEthernet(_))));
        assert!(matches!(
            select_ifaces(&links[..1], &[]),
            Err(PacketError::NoInterface)
        ));
    }

    #[test]
    fn icmp_errors_come_in_bursts_of_50_then_one_a_millisecond() {
        let t0 = Instant::now();
        let mut t = Tokens::new(t0);
        assert_eq!((0..200).filter(|_| t.take(t0)).count(), 50);
        assert!(!t.take(t0 + Duration::from_micros(500)));
        assert!(t.take(t0 + Duration::from_millis(1)));
        assert!(!t.take(t0 + Duration::from_millis(1)));
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..200).filter(|_| t.take(later)).count(), 50, "capped");
    }

    /// `[virtio-net][Ethernet][IPv4 20][TCP 32]` with `gso_size`.
    fn super_packet(gso_size: u16) -> Vec<u8> {
        let mut b = vec![0u8; IP_START + 52];
        VnetHdr {
            gso_type: vnet::GSO_TCPV4,
            gso_size,
            ..VnetHdr::default()
        }
        .emit(&mut b);
        b[IP_START] = 0x45;
        b[IP_START + 20 + 12] = 8 << 4;
        b
    }

    #[test]
    fn a_super_packet_fits_when_its_segments_do() {
        // 20 + 32 + 1228 = 1280.
        assert!(segments_fit(&super_packet(1228), 1280));
        assert!(!segments_fit(&super_packet(1229), 1280));
        assert!(segments_fit(&super_packet(1448), 1500));
        let mut plain = super_packet(1000);
        VnetHdr::default().emit(&mut plain);
        assert!(!segments_fit(&plain, 1500), "not a super-packet");
    }

    #[test]
    fn ring_geometry_follows_the_kernel_rules() {
        const {
            assert!(FRAME_SIZE.is_multiple_of(16), "TPACKET_ALIGNMENT");
            assert!(BLOCK_SIZE.is_multiple_of(4096), "a block is whole pages");
            assert!(FRAMES_PER_BLOCK >= 1);
            // tpacket2_hdr (32) + sockaddr_ll (20), aligned to 16 with
            // room for a 16-byte link header, then the virtio-net header.
            assert!(RING_MAC + ETH_LEN == (TPACKET2_HDR + 20 + 16).div_ceil(16) * 16 + vnet::LEN);
            // An Ethernet frame of a 1500-byte MTU fits a frame.
            assert!(RING_IP_MAX >= 1500);
            assert!(FRAMES >= 4096, "room for a burst of small frames");
        }
    }
}
