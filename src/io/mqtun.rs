//! A TUN device with one queue per packet thread and TCP offloads.
//!
//! The `tun` crate opens one queue and passes no virtio-net header, so every
//! packet costs a read and a write. This device opens `/dev/net/tun` once per
//! queue with `IFF_MULTI_QUEUE` (the kernel spreads flows over the queues by
//! their hash, so each thread gets its own share and per-flow order is kept),
//! and with `IFF_VNET_HDR` plus `TUNSETOFFLOAD(CSUM | TSO4 | TSO6)` so that
//! one read or write carries a whole TCP super-packet (see [`super::vnet`]).
//!
//! Fallbacks, each said once in the log: offloads refused by the kernel ->
//! header kept, offloads off; a persistent TUN created without multi-queue ->
//! one queue. A persistent multi-queue TUN serves one thread as well (its
//! multi-queue flag must be matched on attach). When attaching to a
//! persistent TUN, tunlb sets the offload mask itself, so a mask left by a
//! previous user never applies.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use super::tun::{TunError, TunSpec};
use super::vnet::{self, VnetHdr};
use super::{Frame, PacketIo};

/// The offloads tunlb asks for.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

/// What opening the device ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Queues (file descriptors) open.
    pub queues: usize,
    /// Whether TSO/checksum offloads are on.
    pub offload: bool,
}

/// A multi-queue TUN with optional offloads.
#[derive(Debug)]
pub struct MqTun {
    queues: Vec<File>,
}

fn open_queue(name: &str, multi: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    super::sys::tun_set_iff(&f, name, flags)?;
    super::sys::ioctl_int_ptr(&f, libc::TUNSETVNETHDRSZ, vnet::LEN as libc::c_int)?;
    Ok(f)
}

fn tun_error(name: &str, e: io::Error) -> TunError {
    super::tun::classify(name, ::tun::Error::Io(e))
}

impl MqTun {
    /// Open (create or attach to) the TUN of `spec` with up to `queues`
    /// queues, with offloads if `offload`.
    pub fn open(spec: &TunSpec, queues: usize, offload: bool) -> Result<(Self, Opened), TunError> {
        let name = spec.name.as_str();
        let mut files = Vec::with_capacity(queues);
        match open_queue(name, queues > 1) {
            Ok(f) => {
                files.push(f);
                for _ in 1..queues {
                    match open_queue(name, true) {
                        Ok(f) => files.push(f),
                        Err(e) => {
                            tracing::warn!(
                                "{name}: only {} of {queues} queues could be opened ({e})",
                                files.len()
                            );
                            break;
                        }
                    }
                }
            }
            // A persistent TUN refuses a multi-queue setting other than the
            // one it was made with: attach the way it was made.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let made_multi = queues == 1;
                let f = open_queue(name, made_multi).map_err(|_| tun_error(name, e))?;
                if !made_multi {
                    tracing::warn!(
                        "{name} was created without multi-queue: one queue for {queues} threads"
                    );
                }
                files.push(f);
            }
            Err(e) => return Err(tun_error(name, e)),
        }
        let mask = if offload { OFFLOADS } else { 0 };
        let offload = match super::sys::ioctl_value(
            &files[0],
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(mask),
        ) {
            Ok(()) => offload,
            Err(e) => {
                tracing::warn!(
                    "{name}: the kernel refused TUN offloads ({e}): one packet per read and write"
                );
                let _ = super::sys::ioctl_value(&files[0], libc::TUNSETOFFLOAD, 0);
                false
            }
        };
        if !spec.addr.is_empty() {
            // Any socket addresses the ioctls (by name); an IPv4 one exists
            // even where IPv6 is off.
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| tun_error(name, e))?;
            super::sys::configure(&sock, name, spec.addr.v4, spec.mtu)
                .map_err(|e| tun_error(name, e))?;
        }
        if let Some((addr, prefix)) = spec.addr.v6 {
            super::tun::give_ipv6(name, addr, prefix)?;
        }
        let opened = Opened {
            queues: files.len(),
            offload,
        };
        Ok((MqTun { queues: files }, opened))
    }
}

/// One non-blocking read: its length, or `None` when the queue is empty or a
/// signal interrupted the call.
fn try_read(f: &File, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match (&*f).read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Where the packet of an `n`-byte read (virtio-net header first) sits.
fn frame(buf: &[u8], n: usize) -> Frame {
    if n < vnet::LEN {
        return Frame::plain(0);
    }
    let hdr = VnetHdr::parse(buf);
    Frame {
        start: vnet::LEN,
        len: n - vnet::LEN,
        l4: hdr.l4_checksum(),
        gso: hdr.is_gso(),
    }
}

impl PacketIo for MqTun {
    fn queues(&self) -> usize {
        self.queues.len()
    }

    fn recv(&self, queue: usize, buf: &mut [u8], timeout: Duration) -> io::Result<Option<Frame>> {
        let f = &self.queues[queue % self.queues.len()];
        // The fast path is one read; only an empty queue costs a poll.
        if let Some(n) = try_read(f, buf)? {
            return Ok(Some(frame(buf, n)));
        }
        if timeout.is_zero() || !super::sys::poll_readable(f, timeout)? {
            return Ok(None);
        }
        Ok(try_read(f, buf)?.map(|n| frame(buf, n)))
    }

    fn send(
        &self,
        queue: usize,
        buf: &mut [u8],
        frame: &Frame,
        len: usize,
        replaced: bool,
    ) -> io::Result<()> {
        if replaced {
            // tunlb built this packet with full checksums: no offload work.
            VnetHdr::default().emit(&mut buf[..vnet::LEN]);
        }
        let f = &self.queues[queue % self.queues.len()];
        (&*f).write(&buf[..frame.start + len]).map(|_| ())
    }
}
