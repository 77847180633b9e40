//! The TUN device, through the `tun` crate.
//!
//! Two ways in:
//! - **create**: tunlb creates the TUN (CAP_NET_ADMIN), gives the host side its
//!   addresses (an IPv4 and an IPv6 prefix, either or both) and brings it up;
//!   the device disappears when tunlb exits. The `tun` crate sets the IPv4
//!   address; tunlb adds the IPv6 one ([`give_ipv6`]), as for `--io vnet`.
//! - **attach**: the TUN already exists, persistent and owned by the user
//!   (`ip tuntap add dev tl0 mode tun user alice`); tunlb only opens it and
//!   needs no privilege at all. Addressing is the owner's business.
//!
//! Limits of the `tun` crate, stated rather than faked: one queue only (no
//! `IFF_MULTI_QUEUE`), so `--threads N` shares one file descriptor; no
//! virtio-net header offloads (one packet per syscall).

use std::io;
use std::net::Ipv6Addr;
use std::time::Duration;

use super::{Frame, PacketIo};
use crate::config::TunAddrs;

/// How to open the TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunSpec {
    /// The interface name.
    pub name: String,
    /// Host-side prefixes: create mode. None at all: attach.
    pub addr: TunAddrs,
    /// The MTU to set when creating.
    pub mtu: u16,
}

/// An open TUN device.
pub struct TunIo {
    dev: ::tun::Device,
    name: String,
}

impl std::fmt::Debug for TunIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunIo").field("name", &self.name).finish()
    }
}

/// Why the TUN could not be opened, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// No permission to create or configure the device.
    #[error("cannot open TUN {name}: permission denied. Creating a TUN needs CAP_NET_ADMIN (run as root or with setpriv/capsh), or pre-create it for your user with 'ip tuntap add dev {name} mode tun user $USER', address it, and run tunlb without --tun-addr; /dev/net/tun must also be readable and writable by you (it is mode 0666 on a stock system)")]
    Permission {
        /// The device name.
        name: String,
    },
    /// The device is held by another process.
    #[error("cannot open TUN {name}: device busy (another process has it open); stop that process or choose another --tun name")]
    Busy {
        /// The device name.
        name: String,
    },
    /// The name belongs to a device that is not a usable TUN.
    #[error("cannot open TUN {name}: an interface of that name exists and is not a TUN tunlb can attach to (a TAP, a veth, or a TUN made with other flags); choose another --tun name, or delete it ('ip link del {name}')")]
    NotATun {
        /// The device name.
        name: String,
    },
    /// The address is already on another interface.
    #[error("cannot configure TUN {name}: {source}; is the --tun-addr address already used by another interface?")]
    Configure {
        /// The device name.
        name: String,
        /// The cause.
        source: ::tun::Error,
    },
    /// The IPv6 prefix cannot be put on the TUN.
    #[error("cannot give TUN {name} the address {addr}: {source}{hint}")]
    Ipv6 {
        /// The device name.
        name: String,
        /// The address and prefix length.
        addr: String,
        /// The cause.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// Anything else.
    #[error("cannot open TUN {name}: {source}")]
    Other {
        /// The device name.
        name: String,
        /// The cause.
        source: ::tun::Error,
    },
}

/// Turn an error of opening `name` into one that says what to do.
pub(crate) fn classify(name: &str, e: ::tun::Error) -> TunError {
    let name = name.to_string();
    let os = match &e {
        ::tun::Error::Io(io) => io.raw_os_error(),
        _ => None,
    };
    match os {
        Some(libc::EPERM) | Some(libc::EACCES) => TunError::Permission { name },
        Some(libc::EBUSY) => TunError::Busy { name },
        Some(libc::EINVAL) => TunError::NotATun { name },
        Some(libc::EEXIST) | Some(libc::EADDRINUSE) => TunError::Configure { name, source: e },
        _ => TunError::Other { name, source: e },
    }
}

/// Give the TUN `name` (created by tunlb, up) the IPv6 host address
/// `addr/prefix`; the kernel adds the prefix route with it. IPv6 is turned
/// on for the device first if the namespace's default turned it off. An
/// ioctl on an AF_INET6 socket, like the IPv4 address's on an AF_INET one
/// (no netlink socket: the systemd units allow AF_UNIX, AF_INET and
/// AF_INET6 only). The kernel runs no duplicate address detection on a TUN
/// (`IFF_NOARP`), so the address is usable at once.
pub fn give_ipv6(name: &str, addr: Ipv6Addr, prefix: u8) -> Result<(), TunError> {
    let sysctl = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if std::fs::read_to_string(&sysctl).is_ok_and(|v| v.trim() == "1") {
        // Best effort: if this fails, adding the address says why.
        let _ = std::fs::write(&sysctl, "0");
    }
    let result = super::sys::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0)
        .and_then(|sock| super::sys::add_ipv6(&sock, name, addr, prefix));
    result.map_err(|source| TunError::Ipv6 {
        name: name.to_string(),
        addr: format!("{addr}/{prefix}"),
        hint: match source.raw_os_error() {
            Some(libc::EACCES) => "; IPv6 is disabled on it: run 'sysctl -w net.ipv6.conf.all.disable_ipv6=0' and 'sysctl -w net.ipv6.conf.default.disable_ipv6=0' in this namespace, or give no IPv6 --tun-addr",
            Some(libc::EPERM) => "; addressing a TUN needs CAP_NET_ADMIN (or pre-create and address it yourself and run tunlb without --tun-addr)",
            Some(libc::EEXIST) => "; is the --tun-addr address already on this interface?",
            Some(libc::EAFNOSUPPORT) | Some(libc::EPROTONOSUPPORT) => "; this kernel or namespace has no IPv6",
            _ => "",
        },
        source,
    })
}

impl TunIo {
    /// Create or attach to the TUN described by `spec`.
    pub fn open(spec: &TunSpec) -> Result<Self, TunError> {
        let mut cfg = ::tun::Configuration::default();
        cfg.tun_name(&spec.name);
        if spec.addr.is_empty() {
            cfg.platform_config(|p| {
                p.ensure_root_privileges(false);
            });
        } else {
            if let Some((addr, prefix)) = spec.addr.v4 {
                cfg.address(addr).netmask(crate::config::netmask(prefix));
            }
            cfg.mtu(spec.mtu).up();
        }
        let dev = ::tun::create(&cfg).map_err(|e| classify(&spec.name, e))?;
        dev.set_nonblock()
            .map_err(|e| classify(&spec.name, e.into()))?;
        if let Some((addr, prefix)) = spec.addr.v6 {
            give_ipv6(&spec.name, addr, prefix)?;
        }
        Ok(TunIo {
            dev,
            name: spec.name.clone(),
        })
    }
}

impl PacketIo for TunIo {
    fn recv(&self, _queue: usize, buf: &mut [u8], timeout: Duration) -> io::Result<Option<Frame>> {
        let frame = Frame::plain;
        // Fast path: one non-blocking read. Only an idle device costs a poll.
        match self.dev.recv(buf) {
            Ok(n) => return Ok(Some(frame(n))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && timeout.is_zero() => {
                return Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
            Err(e) => return Err(e),
        }
        match self.dev.recv_timeout(buf, timeout) {
            Ok(n) => Ok(Some(frame(n))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn send(
        &self,
        _queue: usize,
        buf: &mut [u8],
        frame: &Frame,
        len: usize,
        _replaced: bool,
    ) -> io::Result<()> {
        self.dev
            .send(&buf[frame.start..frame.start + len])
            .map(|_| ())
    }
}
