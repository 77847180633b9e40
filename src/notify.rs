//! systemd's service protocol, for a unit of `Type=notify`: readiness,
//! reloads and shutdown told to the service manager (`sd_notify(3)`), and
//! log lines the journal understands.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the Unix socket named
//! by `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading
//! `@`); it is written here by hand rather than with a crate, since that is
//! all there is to it. Without `$NOTIFY_SOCKET` (not started by systemd, or
//! not `Type=notify`) every call is a no-op. A failed send is logged once
//! and never stops tunlb: the datapath matters more than the manager's view.
//!
//! What tunlb says, and when (the netns test `86-sd-notify` checks the order):
//! - `READY=1` with `STATUS=`, at the moment of the `ready` log line;
//! - `RELOADING=1`, then `READY=1` with `STATUS=`, around a SIGHUP reload
//!   (also when the new file is refused: the old configuration runs on);
//! - `STATUS=` every few seconds: flows and backends up;
//! - `STOPPING=1` when SIGINT or SIGTERM is seen.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

/// A connection to the service manager's notification socket, if any.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    warned: AtomicBool,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names; inert when it is unset, empty or
    /// unusable (said once in the log).
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET")
            .filter(|s| !s.is_empty())
            .and_then(|s| match Self::open(&s.to_string_lossy()) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(
                        "NOTIFY_SOCKET {s:?} is unusable ({e}): systemd will not hear from tunlb"
                    );
                    None
                }
            });
        Notifier {
            target,
            warned: AtomicBool::new(false),
        }
    }

    /// A notifier that says nothing.
    pub fn disabled() -> Self {
        Notifier {
            target: None,
            warned: AtomicBool::new(false),
        }
    }

    fn open(name: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            None => SocketAddr::from_pathname(name)?,
        };
        Ok((UnixDatagram::unbound()?, addr))
    }

    /// Return whether a service manager is listening.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Send one message (`KEY=VALUE` lines).
    pub fn send(&self, message: &str) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        if let Err(e) = sock.send_to_addr(message.as_bytes(), addr) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!("cannot notify systemd ({e}); going on without it");
            }
        }
    }

    /// The datapath is up.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A reload starts.
    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    /// A one-line summary for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }
}

/// A status value on one line (the protocol is line-based).
fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// Return whether stderr is the journal's stream (`$JOURNAL_STREAM` names
/// its device and inode, as systemd sets it for a service's output): then
/// log lines carry a `<N>` priority prefix and no timestamp of their own.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The syslog priority the journal reads from a `<N>` line prefix.
pub fn journal_priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_as_datagrams_in_order() {
        let dir = std::env::temp_dir().join(format!("tunlb-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some(Notifier::open(path.to_str().unwrap()).unwrap()),
            warned: AtomicBool::new(false),
        };
        assert!(n.enabled());
        n.ready("3 flows\n2/2 backends up");
        n.reloading();
        n.stopping();
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let len = listener.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(
            got,
            [
                "READY=1\nSTATUS=3 flows 2/2 backends up",
                "RELOADING=1",
                "STOPPING=1\nSTATUS=stopping"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_abstract_name_is_accepted_and_nothing_is_sent_without_a_socket() {
        assert!(Notifier::open("@tunlb-test-abstract").is_ok());
        let n = Notifier::disabled();
        assert!(!n.enabled());
        n.ready("nothing happens");
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        use tracing::Level;
        let p: Vec<u8> = [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ]
        .into_iter()
        .map(journal_priority)
        .collect();
        assert_eq!(p, [3, 4, 6, 7, 7]);
    }
}
