//! The few system calls `std` and the `tun` crate do not offer: multi-queue
//! TUN attach, the virtio-net header and offloads, interface addressing
//! (IPv4 and IPv6), poll, a thread's nice value; and for the packet
//! datapath, packet and netlink sockets, their options, the socket filter
//! and the shared memory of a receive ring.
//!
//! This is the only module of tunlb with `unsafe` code; each call says why it
//! is sound. Everything else (open, read, write, close) goes through `std`.

#![allow(unsafe_code)]

use std::ffi::c_int;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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
pub(crate) fn tun_set_iff(fd: &File, name: &str, flags: c_int) -> io::Result<()> {
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
pub(crate) fn ioctl_int_ptr(fd: &File, request: libc::Ioctl, value: c_int) -> io::Result<()> {
    let mut v = value;
    // SAFETY: the request reads one `int` through the pointer, valid for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut v as *mut c_int) })
}

/// An ioctl that takes an integer argument by value (`TUNSETOFFLOAD`).
pub(crate) fn ioctl_value(fd: &File, request: libc::Ioctl, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the request takes its argument by value; no memory is passed.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request, value) })
}

/// Give interface `name` the IPv4 address `addr/prefix` (if any) and `mtu`,
/// and bring it up. `sock` is any AF_INET socket (the ioctls are addressed
/// by name).
pub(crate) fn configure(
    sock: &impl AsRawFd,
    name: &str,
    v4: Option<(Ipv4Addr, u8)>,
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
    // SAFETY (this and the following ioctls): each SIOC* request reads or
    // writes one `struct ifreq`, which `req` is, valid for the call.
    if let Some((addr, prefix)) = v4 {
        let mask = crate::config::netmask(prefix);
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr(addr);
        check(unsafe { libc::ioctl(fd, libc::SIOCSIFADDR, &mut req as *mut libc::ifreq) })?;
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_netmask = sockaddr(mask);
        check(unsafe { libc::ioctl(fd, libc::SIOCSIFNETMASK, &mut req as *mut libc::ifreq) })?;
    }
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

/// Give interface `name` the IPv6 address `addr/prefix` (`SIOCSIFADDR` with
/// an `in6_ifreq`; the kernel adds the prefix route with it). `sock` is an
/// AF_INET6 socket. No duplicate address detection runs on a TUN (the
/// kernel skips it on `IFF_NOARP` devices), so the address is usable at
/// once. Fails with `EEXIST` when the interface has it already, `EACCES`
/// when IPv6 is disabled on it.
pub(crate) fn add_ipv6(
    sock: &impl AsRawFd,
    name: &str,
    addr: Ipv6Addr,
    prefix: u8,
) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFINDEX reads the name and writes the index of one
    // `struct ifreq`, which `req` is, valid for the call.
    check(unsafe { libc::ioctl(fd, libc::SIOCGIFINDEX, &mut req as *mut libc::ifreq) })?;
    let mut in6 = libc::in6_ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        ifr6_prefixlen: u32::from(prefix),
        // SAFETY: SIOCGIFINDEX just filled the index member of the union.
        ifr6_ifindex: unsafe { req.ifr_ifru.ifru_ifindex },
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads one `struct
    // in6_ifreq`, which `in6` is, valid for the call.
    check(unsafe { libc::ioctl(fd, libc::SIOCSIFADDR, &mut in6 as *mut libc::in6_ifreq) })
}

/// Wait until `fd` is readable or `timeout` passes. Returns whether it is.
pub(crate) fn poll_readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(c_int::MAX as u128) as c_int;
    // SAFETY: one valid pollfd, count 1, for the duration of the call.
    polled(unsafe { libc::poll(&mut p, 1, ms) })
}

/// What `poll` returned: whether a descriptor is ready; an interrupted
/// wait is a timeout.
fn polled(n: c_int) -> io::Result<bool> {
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

// ---- sockets: packet sockets and netlink (for `io::packet`, `io::netlink`) ----

/// Set the calling thread's nice value (`setpriority(PRIO_PROCESS, gettid(),
/// nice)`: on Linux a thread id names one thread, not the process). Lowering
/// it below the current value needs `CAP_SYS_NICE` or a large enough
/// `RLIMIT_NICE` (`EACCES` otherwise); raising it needs nothing. A thread
/// already at `nice` makes no system call (so a seccomp filter that refuses
/// `setpriority` does not refuse what is already so).
pub(crate) fn set_thread_nice(nice: c_int) -> io::Result<()> {
    if thread_nice().ok() == Some(nice) {
        return Ok(());
    }
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority takes plain integers; `tid` is this thread's id.
    check(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) })
}

/// Return how many times the calling thread has been preempted: its
/// involuntary context switches (`getrusage(RUSAGE_THREAD)`, in systemd's
/// `@process` group). A thread that busy-polls reads it to tell whether
/// other tasks wait for its CPU.
pub(crate) fn thread_preemptions() -> io::Result<u64> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the buffer we own and
    // reads nothing; on success it is initialised.
    check(unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful call above (and zeroed before).
    let ru = unsafe { ru.assume_init() };
    Ok(u64::try_from(ru.ru_nivcsw).unwrap_or(0))
}

/// Return the calling thread's nice value.
pub(crate) fn thread_nice() -> io::Result<c_int> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // getpriority returns the value itself, and -1 is a valid nice value:
    // errno, cleared before the call, tells an error apart.
    // SAFETY: __errno_location returns this thread's errno; getpriority
    // takes plain integers.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if n == -1 && *libc::__errno_location() != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n)
    }
}

/// `socket(domain, ty | SOCK_CLOEXEC, protocol)`.
pub(crate) fn socket(domain: c_int, ty: c_int, protocol: c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket: open, and owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(fd, level, name, &value, sizeof value)`. `T` must be the
/// plain C struct or integer the option expects.
pub(crate) fn setsockopt<T: Copy>(
    fd: &impl AsRawFd,
    level: c_int,
    name: c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: the kernel reads at most size_of::<T>() bytes from `value`,
    // a live reference for the whole call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
}

/// `getsockopt` of an `int`-sized option.
pub(crate) fn getsockopt_u32(fd: &impl AsRawFd, level: c_int, name: c_int) -> io::Result<u32> {
    let mut v: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` (4) bytes into `v` and the
    // length into `len`, both live for the call.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut u32).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

/// `getsockopt(PACKET_STATISTICS)`: frames received and dropped (ring
/// full) since the last call, which resets them.
pub(crate) fn packet_statistics(fd: &impl AsRawFd) -> io::Result<(u32, u32)> {
    let mut st = [0u32; 2];
    let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
    // SAFETY: `struct tpacket_stats` is two u32 (packets, drops); the kernel
    // writes at most `len` bytes into `st`, live for the call.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            6, // PACKET_STATISTICS
            st.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    Ok((st[0], st[1]))
}

/// Bind a packet socket to interface `ifindex` for frames of `protocol`
/// (host order, e.g. `ETH_P_IP`).
pub(crate) fn bind_packet(fd: &impl AsRawFd, ifindex: u32, protocol: u16) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; zero is valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = protocol.to_be();
    sa.sll_ifindex = ifindex as c_int;
    // SAFETY: bind reads one sockaddr_ll of the length given, live for the call.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
}

/// `send(fd, buf, flags)`: the bytes the kernel took.
pub(crate) fn send(fd: &impl AsRawFd, buf: &[u8], flags: c_int) -> io::Result<usize> {
    // SAFETY: the kernel reads at most buf.len() bytes from buf.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// At most this many datagrams go in one [`sendmmsg`] call (its headers
/// live on the stack: nothing is allocated per call).
pub(crate) const SENDMMSG_MAX: usize = 64;

/// `sendmmsg(fd, bufs, flags)`: send each buffer as one datagram in one
/// system call, at most [`SENDMMSG_MAX`] of them (the first ones); returns
/// how many the kernel took, in order: of those sent, the first one it did
/// not take failed (the error is returned if none was taken).
pub(crate) fn sendmmsg(fd: &impl AsRawFd, bufs: &[&[u8]], flags: c_int) -> io::Result<usize> {
    let n = bufs.len().min(SENDMMSG_MAX);
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; SENDMMSG_MAX];
    for (v, b) in iov.iter_mut().zip(&bufs[..n]) {
        v.iov_base = b.as_ptr() as *mut libc::c_void;
        v.iov_len = b.len();
    }
    // SAFETY: all-zero is a valid mmsghdr (no name, no iovec, no control).
    let mut msgs: [libc::mmsghdr; SENDMMSG_MAX] = unsafe { std::mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()).take(n) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first n headers each point at one iovec of `iov`, each
    // describing a live buffer of `bufs` the kernel only reads; all of them
    // outlive the call.
    let sent =
        unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, flags) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// `recv(fd, buf, flags)`: the bytes received (or, with `MSG_TRUNC` on a
/// datagram socket, the datagram's full length).
pub(crate) fn recv(fd: &impl AsRawFd, buf: &mut [u8], flags: c_int) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The descriptors a thread waits on, prepared once: waiting allocates
/// nothing. The descriptors must stay open as long as the set is used (its
/// owner holds them).
#[derive(Debug)]
pub(crate) struct PollSet(Vec<libc::pollfd>);

impl PollSet {
    /// A set of `fds`, each waited on for input.
    pub(crate) fn new(fds: &[BorrowedFd<'_>]) -> Self {
        PollSet(
            fds.iter()
                .map(|f| libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect(),
        )
    }

    /// Wait until one descriptor is readable (or has an error) or `timeout`
    /// passes. Returns whether one is (an interrupted wait is a timeout).
    ///
    /// A socket with a pending error (a packet socket's interface went
    /// down: `ENETDOWN`) is reported by `poll` at once, every time, until
    /// the error is read: it is read here (`SO_ERROR`, which clears it) and
    /// logged at debug level, or the thread would spin on it, at 100 % of a
    /// CPU, until exit.
    pub(crate) fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        let ms = timeout.as_millis().min(c_int::MAX as u128) as c_int;
        // SAFETY: self.0 holds self.0.len() pollfds for the duration of the
        // call; the kernel writes only their `revents`.
        let n = unsafe { libc::poll(self.0.as_mut_ptr(), self.0.len() as libc::nfds_t, ms) };
        let ready = polled(n)?;
        for p in &self.0 {
            if p.revents & libc::POLLERR != 0 {
                if let Ok(Some(e)) = take_socket_error(p.fd) {
                    tracing::debug!("socket {}: {e}", p.fd);
                }
            }
        }
        Ok(ready)
    }
}

/// Read and clear a socket's pending error (`getsockopt(SO_ERROR)`).
fn take_socket_error(fd: c_int) -> io::Result<Option<io::Error>> {
    let mut err: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes of the sizes given; an
    // invalid fd is an error return, not undefined behaviour.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut c_int).cast(),
            &mut len,
        )
    };
    check(r)?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// Wait until one of `fds` is readable or `timeout` passes. Returns whether
/// one is. (Allocates: for waits off the packet path; see [`PollSet`].)
pub(crate) fn poll_any(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<bool> {
    PollSet::new(fds).wait(timeout)
}

/// A shared memory mapping of a packet socket's ring. Frame headers are
/// read and written through the bounds-checked accessors below; the status
/// word that hands a frame between kernel and user is accessed atomically.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving it to
// another thread moves the ownership (the kernel's side does not care).
unsafe impl Send for Mapping {}

impl Mapping {
    /// Map `len` bytes of the ring of `fd` (after `PACKET_RX_RING`).
    pub(crate) fn ring(fd: &impl AsRawFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping chosen by the kernel (no fixed
        // address), so no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Mapping { ptr, len })
    }

    fn atomic(&self, off: usize) -> &std::sync::atomic::AtomicU32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len,
            "ring offset {off} out of bounds"
        );
        // SAFETY: in bounds and 4-aligned (the mapping is page-aligned); the
        // kernel only accesses this word atomically too (the frame status).
        unsafe { std::sync::atomic::AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast()) }
    }

    /// Load the u32 at `off` with acquire ordering (a frame's status).
    pub(crate) fn load_acquire(&self, off: usize) -> u32 {
        self.atomic(off).load(std::sync::atomic::Ordering::Acquire)
    }

    /// Store the u32 at `off` with release ordering (a frame's status).
    pub(crate) fn store_release(&self, off: usize, v: u32) {
        self.atomic(off)
            .store(v, std::sync::atomic::Ordering::Release)
    }

    /// Copy `dst.len()` bytes at `off` out of the mapping. Only for a frame
    /// the kernel handed over (its status, loaded with acquire, said so).
    pub(crate) fn read(&self, off: usize, dst: &mut [u8]) {
        assert!(
            off.checked_add(dst.len())
                .is_some_and(|end| end <= self.len),
            "ring read out of bounds"
        );
        // SAFETY: in bounds; the kernel does not write a frame it handed to
        // user space until it is handed back; `dst` cannot overlap a mapping
        // we own exclusively.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the region mmap returned; nothing borrows it past
        // `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// `SO_ATTACH_FILTER`: attach the classic BPF program `prog` to `fd`.
pub(crate) fn attach_filter(fd: &impl AsRawFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    set_program(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, prog)
}

/// `PACKET_FANOUT_DATA`: give the fanout group of packet socket `fd` (in
/// `PACKET_FANOUT_CBPF` mode) the classic BPF program `prog` that chooses
/// each packet's socket.
pub(crate) fn set_fanout_program(fd: &impl AsRawFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    const PACKET_FANOUT_DATA: libc::c_int = 22;
    set_program(fd, libc::SOL_PACKET, PACKET_FANOUT_DATA, prog)
}

/// Set the socket option `level`/`name` to a `sock_fprog` of `prog`.
fn set_program(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    prog: &[libc::sock_filter],
) -> io::Result<()> {
    let len = u16::try_from(prog.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel reads the sock_fprog and, through it, `len`
    // instructions from `prog` (it copies them; it never writes), both live
    // for the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
}

/// Bind a netlink socket to the multicast `groups` (`RTMGRP_*` bits).
pub(crate) fn bind_netlink(fd: &impl AsRawFd, groups: u32) -> io::Result<()> {
    // SAFETY: sockaddr_nl is plain data; zero is valid.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = groups;
    // SAFETY: bind reads one sockaddr_nl of the length given, live for the call.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })
}
