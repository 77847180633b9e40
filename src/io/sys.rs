//! The few system calls the `tun` crate does not offer: multi-queue TUN
//! attach, the virtio-net header and offloads, interface addressing, poll.
//!
//! This is the only module of tunlb with `unsafe` code; each call says why it
//! is sound. Everything else (open, read, write, close) goes through `std`.

#![allow(unsafe_code)]

use std::ffi::c_int;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// An `ifreq` with `name` filled in (NUL-terminated, at most 15 bytes).
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name must be 1 to 15 bytes",
        ));
    }
    // SAFETY: ifreq is a plain C struct (arrays and a union of plain data);
    // all-zero bytes are a valid value for every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn check(ret: c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `TUNSETIFF`: attach `fd` (an open `/dev/net/tun`) to the TUN `name`,
/// creating it if it does not exist, with these `IFF_*` flags.
pub fn tun_set_iff(fd: &File, name: &str, flags: c_int) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is,
    // and lives for the whole call; `fd` is an open descriptor.
    check(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut libc::ifreq,
        )
    })
}

/// An ioctl that takes an `int` argument by pointer (`TUNSETVNETHDRSZ`).
pub fn ioctl_int_ptr(fd: &File, request: libc::Ioctl, value: c_int) -> io::Result<()> {
    let mut v = value;
    // SAFETY: the request reads one `int` through the pointer, valid for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut v as *mut c_int) })
}

/// An ioctl that takes an integer argument by value (`TUNSETOFFLOAD`).
pub fn ioctl_value(fd: &File, request: libc::Ioctl, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the request takes its argument by value; no memory is passed.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request, value) })
}

/// Give interface `name` the address `addr/prefix` and `mtu`, and bring it up.
/// `sock` is any AF_INET socket (the ioctls are addressed by name).
pub fn configure(
    sock: &impl AsRawFd,
    name: &str,
    addr: Ipv4Addr,
    prefix: u8,
    mtu: u16,
) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let sockaddr = |a: Ipv4Addr| {
        // SAFETY: sockaddr is plain data; zero is valid.
        let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
        sa.sa_family = libc::AF_INET as libc::sa_family_t;
        // sockaddr_in: port (2 bytes) then the address (4 bytes).
        for (d, s) in sa.sa_data[2..6].iter_mut().zip(a.octets()) {
            *d = s as libc::c_char;
        }
        sa
    };
    let mask = crate::config::netmask(prefix);
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    // SAFETY (this and the following ioctls): each SIOC* request reads or
    // writes one `struct ifreq`, which `req` is, valid for the call.
    check(unsafe { libc::ioctl(fd, libc::SIOCSIFADDR, &mut req as *mut libc::ifreq) })?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr(mask);
    check(unsafe { libc::ioctl(fd, libc::SIOCSIFNETMASK, &mut req as *mut libc::ifreq) })?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = c_int::from(mtu);
    check(unsafe { libc::ioctl(fd, libc::SIOCSIFMTU, &mut req as *mut libc::ifreq) })?;
    let mut req = ifreq(name)?;
    check(unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req as *mut libc::ifreq) })?;
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    check(unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req as *mut libc::ifreq) })
}

/// Wait until `fd` is readable or `timeout` passes. Returns whether it is.
pub fn poll_readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(c_int::MAX as u128) as c_int;
    // SAFETY: one valid pollfd, count 1, for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0)
}
