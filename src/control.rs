//! Talking to a running tunlb: `tunlb flows`, `tunlb stats`, Prometheus metrics.
//!
//! The running process listens on a Unix socket (mode 0600: only its owner
//! may ask) and on an optional TCP address for `/metrics`. The protocol of
//! the Unix socket is one line in, the answer out, then close: `flows`,
//! `stats`, `flows json`, `stats json`. `events` and `events json` are
//! answered by a stream instead, until the client or tunlb goes: a first
//! line `tunlb: listening for events ...`, then one line per flow event
//! ([`crate::events`]), and `tunlb: N events lost ...` (JSON: `{"lost":
//! N}`) where a slow reader lost some.
//!
//! # No client can hold up the datapath
//! Neither listener is served by the housekeeping loop (expiry, signals) or
//! a packet thread. Each has an acceptor thread of its own
//! ([`Control::spawn`], [`Metrics::spawn`]) that hands every connection to a
//! short-lived worker thread, within [`Limits`]: at most
//! [`Limits::clients`] connections in service at once per listener (the
//! rest are closed at once, unanswered), each read or write of a client
//! waits at most [`Limits::io_timeout`], and a whole exchange lasts at most
//! [`Limits::deadline`]. A client that sends nothing, or stops reading the
//! answer (`tunlb flows` suspended with Ctrl-Z), is dropped when its time
//! is up and only ever holds its own worker. The acceptors stop within
//! [`POLL`] of the stop flag; workers are never waited for, so shutdown
//! does not wait for any client.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::datapath::{Clock, Device, DeviceTotals, POLL};
use crate::engine::Engine;
use crate::stats::{BackendSnapshot, DropReason, Snapshot};
use crate::time::Timestamp;

/// How many clients a listener serves at once, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections in service at once; a connection beyond is closed
    /// unanswered as soon as it is accepted.
    pub clients: usize,
    /// How long one read or write may wait for the client: a client that
    /// sends nothing, or reads nothing, for this long is dropped.
    pub io_timeout: Duration,
    /// How long a whole exchange may last, from accept to the last byte of
    /// the answer, however the client trickles.
    pub deadline: Duration,
}

impl Limits {
    /// What `tunlb run` uses: 8 clients per listener, 2 s per read or
    /// write, 10 s per exchange. `tunlb flows` reads its whole answer before
    /// printing it, so a table of a million flows (some 250 MB of text)
    /// still goes out well within the deadline.
    pub const DEFAULT: Limits = Limits {
        clients: 8,
        io_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(10),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// What requests are answered from: the engine, the device counters, and
/// the datapath's clock (flows show the seconds left until their deadline).
#[derive(Debug, Clone)]
pub struct Source {
    /// The engine the datapath runs.
    pub engine: Arc<Engine>,
    /// The device the packet threads count on.
    pub device: Arc<Device>,
    /// The clock the datapath hands the engine.
    pub clock: Clock,
}

/// Return the default control-socket path for a TUN name in this network
/// namespace: `/run/tunlb/TUN.NETNS.sock` (under `$XDG_RUNTIME_DIR` for an
/// ordinary user), where NETNS is the namespace's inode number. Instances in
/// different namespaces may all use `tl0` and still never share a socket,
/// while `tunlb flows` run in the same namespace finds its instance.
pub fn default_path(tun: &str) -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !is_root() => PathBuf::from(d).join("tunlb"),
        _ => PathBuf::from("/run/tunlb"),
    };
    // The link reads "net:[4026531840]".
    let netns: Option<String> = std::fs::read_link("/proc/self/ns/net").ok().map(|l| {
        l.to_string_lossy()
            .chars()
            .filter(char::is_ascii_digit)
            .collect()
    });
    match netns {
        Some(n) if !n.is_empty() => dir.join(format!("{tun}.{n}.sock")),
        _ => dir.join(format!("{tun}.sock")),
    }
}

fn is_root() -> bool {
    // The owner of /proc/self is our effective uid.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// What can go wrong on either end of the control socket or the metrics
/// listener. Each message names the path or address and the way out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket's directory cannot be made.
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A live instance already answers at the path.
    #[error("another tunlb answers on {}: give this one its own --control PATH", .0.display())]
    InUse(PathBuf),
    /// The socket cannot be bound or set up.
    #[error("cannot {what} {}: {source}", path.display())]
    Listen {
        /// What was being done: "listen on", "restrict", "set up".
        what: &'static str,
        /// The socket's path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The metrics address cannot be bound.
    #[error("cannot listen for metrics on {addr}: {source}; choose a free --metrics ADDR:PORT")]
    Metrics {
        /// The address asked for.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No instance answers at the path (`tunlb flows`, `stats`, `events`).
    #[error(
        "cannot reach a running tunlb at {}: {source}; is it running, and is this its --control path (or --tun name)?",
        path.display()
    )]
    Unreachable {
        /// The socket's path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The exchange with the instance failed midway.
    #[error("the conversation with tunlb at {} failed: {source}", path.display())]
    Exchange {
        /// The socket's path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The instance refused the request (its own words).
    #[error("{0}")]
    Refused(String),
    /// Our own output cannot be written.
    #[error("cannot write to stdout: {0}")]
    Output(std::io::Error),
}

/// The control socket of a running instance.
#[derive(Debug)]
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
}

impl Control {
    /// Listen at `path`, replacing a stale socket left by a dead instance;
    /// refuses if a live instance answers there.
    pub fn bind(path: &Path) -> Result<Self, Error> {
        let listen = |what| {
            move |source| Error::Listen {
                what,
                path: path.to_owned(),
                source,
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                dir: dir.to_owned(),
                source,
            })?;
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::InUse(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(listen("listen on"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(listen("restrict"))?;
        listener.set_nonblocking(true).map_err(listen("set up"))?;
        Ok(Control {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serve requests on threads of their own (see the module docs) until
    /// `stop` is set. The socket file stays with `self`, and is removed when
    /// it is dropped, whether or not the acceptor has ended by then.
    pub fn spawn(
        &self,
        source: Source,
        limits: Limits,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<JoinHandle<()>> {
        let listener = self.listener.try_clone()?;
        spawn_acceptor(
            "tunlb-control",
            listener,
            |l| l.accept().map(|(s, _)| s),
            limits,
            stop.clone(),
            {
                move |stream, deadline| {
                    let _ = answer(stream, &source, limits, deadline, &stop);
                }
            },
        )
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn answer(
    stream: UnixStream,
    source: &Source,
    limits: Limits,
    deadline: Instant,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut stream = Timed::new(stream, limits.io_timeout, deadline)?;
    let mut line = String::new();
    BufReader::new(&mut stream).take(256).read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (what, json) = (words.next().unwrap_or(""), words.next() == Some("json"));
    if what == "events" {
        return stream_events(stream.stream, source, json, stop);
    }
    let (engine, device, now) = (&source.engine, &source.device, source.clock.now());
    let body = match (what, json) {
        ("flows", false) => flows_text(engine, now),
        ("flows", true) => flows_json(engine, now).to_string() + "\n",
        ("stats", false) => stats_text(engine, device),
        ("stats", true) => stats_json(engine, device).to_string() + "\n",
        _ => format!(
            "error: unknown request '{}': use flows, stats or events\n",
            line.trim()
        ),
    };
    stream.write_all(body.as_bytes())
}

/// How long a write of events may wait for a reader that does not read:
/// meanwhile its queue fills and it loses events; past this, it is dropped.
pub const EVENTS_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve `events`: stream the engine's flow events to the client until it
/// goes, stops reading for [`EVENTS_WRITE_TIMEOUT`], or `stop` is set.
fn stream_events(
    mut s: UnixStream,
    source: &Source,
    json: bool,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let hub = source.engine.events();
    let Some(sub) = hub.subscribe() else {
        return s.write_all(
            format!(
                "error: {} event listeners already: stop one first\n",
                crate::events::MAX_LISTENERS
            )
            .as_bytes(),
        );
    };
    s.set_read_timeout(None)?;
    s.set_write_timeout(Some(EVENTS_WRITE_TIMEOUT))?;
    writeln!(
        s,
        "tunlb: listening for events ({} listener(s)); NEW, UPDATE and DESTROY follow",
        hub.listeners()
    )?;
    let mut out = String::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(first) = sub.next(POLL) else {
            if client_gone(&s) {
                return Ok(());
            }
            continue;
        };
        out.clear();
        let now = source.clock.now();
        let mut next = Some(first);
        while let Some(e) = next {
            if json {
                out += &e.json(now).to_string();
            } else {
                out += &e.text(now);
            }
            out.push('\n');
            next = if out.len() < 1 << 16 {
                sub.try_next()
            } else {
                None
            };
        }
        let lost = sub.take_lost();
        if lost > 0 {
            out += &if json {
                format!("{{\"lost\":{lost}}}\n")
            } else {
                format!("tunlb: {lost} events lost: this reader did not keep up\n")
            };
        }
        s.write_all(out.as_bytes())?;
    }
    Ok(())
}

/// Return whether the client of `s` has closed its end (checked without
/// waiting while no event comes). A client sends nothing after its request:
/// anything readable is its end of file, or chatter, read and ignored.
fn client_gone(mut s: &UnixStream) -> bool {
    match crate::io::sys::poll_readable(s, Duration::ZERO) {
        Ok(false) => false,
        Ok(true) => {
            let mut b = [0u8; 64];
            let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
            !matches!(s.read(&mut b), Ok(n) if n > 0)
        }
        Err(_) => true,
    }
}

/// Follow the event stream of the instance at `path` (`tunlb events`):
/// events to `out`, a line at a time, until the instance goes; the
/// instance's greeting to `note`.
pub fn follow(
    path: &Path,
    json: bool,
    out: &mut dyn Write,
    note: &mut dyn Write,
) -> Result<(), Error> {
    let mut s = connect(path)?;
    let exchange = |source| Error::Exchange {
        path: path.to_owned(),
        source,
    };
    let req = if json { "events json\n" } else { "events\n" };
    s.write_all(req.as_bytes()).map_err(exchange)?;
    let mut lines = BufReader::new(s).lines();
    match lines.next() {
        Some(Ok(l)) if l.starts_with("error:") => {
            return Err(Error::Refused(l.trim_start_matches("error: ").into()))
        }
        Some(Ok(l)) => {
            let _ = writeln!(note, "{l}");
        }
        Some(Err(e)) => return Err(exchange(e)),
        None => {
            return Err(exchange(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the instance closed the connection",
            )))
        }
    }
    for line in lines {
        let line = line.map_err(exchange)?;
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(Error::Output(e)),
        }
    }
    Ok(())
}

/// Connect to the instance at `path`.
fn connect(path: &Path) -> Result<UnixStream, Error> {
    UnixStream::connect(path).map_err(|source| Error::Unreachable {
        path: path.to_owned(),
        source,
    })
}

/// A stream of a client whose every read and write waits at most
/// `io_timeout`, and nothing past `deadline`.
#[derive(Debug)]
struct Timed<S> {
    stream: S,
    io_timeout: Duration,
    deadline: Instant,
}

/// The two kinds of client stream, for [`Timed`].
trait Conn: Read + Write {
    fn set_blocking(&self) -> std::io::Result<()>;
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()>;
}

impl Conn for UnixStream {
    fn set_blocking(&self) -> std::io::Result<()> {
        self.set_nonblocking(false)
    }
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Conn for TcpStream {
    fn set_blocking(&self) -> std::io::Result<()> {
        self.set_nonblocking(false)
    }
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl<S: Conn> Timed<S> {
    fn new(stream: S, io_timeout: Duration, deadline: Instant) -> std::io::Result<Self> {
        stream.set_blocking()?;
        Ok(Timed {
            stream,
            io_timeout,
            deadline,
        })
    }

    /// Arm the socket's timeouts for one more call: the shorter of
    /// `io_timeout` and what is left until the deadline.
    fn arm(&self) -> std::io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        // A zero timeout would mean "none": at least a millisecond.
        self.stream
            .set_timeouts(left.min(self.io_timeout).max(Duration::from_millis(1)))
    }
}

impl<S: Conn> Read for Timed<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.stream.read(buf)
    }
}

impl<S: Conn> Write for Timed<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.stream.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// One connection in service; dropping it frees its place.
#[derive(Debug)]
struct InService(Arc<AtomicUsize>);

impl InService {
    /// Take a place if fewer than `max` connections are in service.
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InService(count.clone()))
    }
}

impl Drop for InService {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Start a thread that accepts connections on `listener` (non-blocking)
/// until `stop` is set, and hands each to `serve` on a worker thread of its
/// own, with the exchange's deadline; beyond `limits.clients` connections in
/// service, a new one is closed at once. Workers are detached: nothing ever
/// waits for a client.
fn spawn_acceptor<L, S>(
    name: &str,
    listener: L,
    accept: fn(&L) -> std::io::Result<S>,
    limits: Limits,
    stop: Arc<AtomicBool>,
    serve: impl Fn(S, Instant) + Send + Sync + 'static,
) -> std::io::Result<JoinHandle<()>>
where
    L: AsRawFd + Send + 'static,
    S: Send + 'static,
{
    let serve = Arc::new(serve);
    let worker = format!("{name}-client");
    thread::Builder::new().name(name.into()).spawn(move || {
        let in_service = Arc::new(AtomicUsize::new(0));
        let mut refused = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match crate::io::sys::poll_readable(&listener, POLL) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::debug!("{worker}: poll failed: {e}");
                    thread::sleep(POLL);
                    continue;
                }
            }
            loop {
                let stream = match accept(&listener) {
                    Ok(s) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // Out of descriptors, say: the connection waits in
                        // the backlog; try again later, without spinning.
                        tracing::debug!("{worker}: accept failed: {e}");
                        thread::sleep(POLL);
                        break;
                    }
                };
                let deadline = Instant::now() + limits.deadline;
                let Some(place) = InService::take(&in_service, limits.clients) else {
                    refused += 1;
                    tracing::debug!(
                        "{worker}: {} clients in service already, connection closed ({refused} so far)",
                        limits.clients
                    );
                    continue;
                };
                let serve = serve.clone();
                let spawned = thread::Builder::new()
                    .name(worker.clone())
                    .spawn(move || {
                        let _place = place;
                        serve(stream, deadline);
                    });
                if let Err(e) = spawned {
                    tracing::debug!("{worker}: cannot start a thread: {e}");
                }
            }
        }
    })
}

/// Send one request to the instance at `path` and return its answer.
pub fn request(path: &Path, what: &str, json: bool) -> Result<String, Error> {
    let mut s = connect(path)?;
    let exchange = |source| Error::Exchange {
        path: path.to_owned(),
        source,
    };
    let req = if json {
        format!("{what} json\n")
    } else {
        format!("{what}\n")
    };
    s.write_all(req.as_bytes()).map_err(exchange)?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(exchange)?;
    Ok(out)
}

/// The flow table as `conntrack -L` prints it, plus the backend. Flows
/// whose deadline has passed but that the sweep has not removed yet are
/// left out, as `conntrack -L` leaves them out.
pub fn flows_text(engine: &Engine, now: Timestamp) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for f in engine.flows().into_iter().filter(|f| f.deadline() > now) {
        shown += 1;
        let (o, r) = (f.original, f.reply);
        let _ = writeln!(
            out,
            "tcp      6 {} {} src={} dst={} sport={} dport={} packets={} bytes={} src={} dst={} sport={} dport={} packets={} bytes={}{} backend={}",
            now.until(f.deadline()).as_secs(),
            f.state,
            o.src.ip(),
            o.dst.ip(),
            o.src.port(),
            o.dst.port(),
            f.packets[0],
            f.bytes[0],
            r.src.ip(),
            r.dst.ip(),
            r.src.port(),
            r.dst.port(),
            f.packets[1],
            f.bytes[1],
            if f.assured { " [ASSURED]" } else if !f.seen_reply { " [UNREPLIED]" } else { "" },
            f.backend.addr,
        );
    }
    let _ = writeln!(out, "tunlb: {shown} flow entries");
    out
}

/// The flow table as JSON: `{"flows": [...]}` (without expired flows, as
/// [`flows_text`]).
pub fn flows_json(engine: &Engine, now: Timestamp) -> serde_json::Value {
    let flows: Vec<_> = engine
        .flows()
        .iter()
        .filter(|f| f.deadline() > now)
        .map(|f| {
            json!({
                "original": {"src": f.original.src.to_string(), "dst": f.original.dst.to_string(),
                             "packets": f.packets[0], "bytes": f.bytes[0]},
                "reply": {"src": f.reply.src.to_string(), "dst": f.reply.dst.to_string(),
                          "packets": f.packets[1], "bytes": f.bytes[1]},
                "backend": f.backend.addr.to_string(),
                "state": f.state.name(),
                "timeout_secs": now.until(f.deadline()).as_secs(),
                "assured": f.assured,
                "seen_reply": f.seen_reply,
            })
        })
        .collect();
    json!({ "flows": flows })
}

/// Counters per service and backend, like `ipvsadm -L -n --stats`, then drops.
pub fn stats_text(engine: &Engine, device: &Device) -> String {
    let s = engine.stats();
    let mut out = String::new();
    let _ = writeln!(out, "Prot LocalAddress:Port Scheduler\n  -> RemoteAddress:Port  Weight State      Flows Conns Packets Bytes");
    let rt = engine.runtime();
    for svc in &rt.services {
        let _ = writeln!(out, "TCP  {} {}", svc.vip, svc.mode.name());
        for b in s.backends.iter().filter(|b| b.service == svc.vip) {
            let _ = writeln!(
                out,
                "  -> {:<21} {:>6} {:<5} {:>10} {:>5} {:>7} {}",
                b.backend.to_string(),
                b.weight,
                if b.up { "up" } else { "down" },
                b.active,
                b.connections,
                b.packets,
                b.bytes
            );
        }
    }
    let d = device.totals();
    let _ = writeln!(
        out,
        "device {}: {}; read {} packets ({} super-packets), {} bytes; write errors {}",
        device.name,
        device.describe(),
        d.packets,
        d.super_packets,
        d.bytes,
        d.write_errors
    );
    if let Some(src) = &device.drops {
        let parts: Vec<String> = src.drops().iter().map(|d| d.to_string()).collect();
        let _ = writeln!(out, "device drops: {}", parts.join(", "));
    }
    let _ = writeln!(out, "{s}");
    out
}

/// The counters as JSON.
pub fn stats_json(engine: &Engine, device: &Device) -> serde_json::Value {
    snapshot_json(&engine.stats(), device)
}

/// The counters `s` and those of `device` as JSON.
fn snapshot_json(s: &Snapshot, device: &Device) -> serde_json::Value {
    let d = device.totals();
    let threads: Vec<_> = device
        .per_thread()
        .iter()
        .map(|t| {
            json!({"packets_read": t.packets, "super_packets_read": t.super_packets,
                   "bytes_read": t.bytes, "write_errors": t.write_errors})
        })
        .collect();
    let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
        .iter()
        .map(|r| (r.name().to_string(), json!(s.dropped(*r))))
        .collect();
    let backends: Vec<_> = s
        .backends
        .iter()
        .map(|b| {
            json!({"service": b.service.to_string(), "backend": b.backend.to_string(), "weight": b.weight,
                   "up": b.up, "active": b.active, "connections": b.connections,
                   "packets": b.packets, "bytes": b.bytes})
        })
        .collect();
    let mut out = json!({
        "flows": s.flows,
        "forwarded": {"original": s.forwarded[0], "reply": s.forwarded[1]},
        "dropped": drops, "backends": backends,
        "device": {"name": device.name, "queues": device.queues, "offload": device.offload,
                   "packets_read": d.packets, "super_packets_read": d.super_packets,
                   "bytes_read": d.bytes, "write_errors": d.write_errors, "threads": threads},
    });
    if let Some(src) = &device.drops {
        let drops: serde_json::Map<String, serde_json::Value> = (src.drops().iter())
            .map(|d| (d.key.to_string(), json!(d.count)))
            .collect();
        out["device"]["drops"] = drops.into();
    }
    for e in Snapshot::EVENTS {
        out[e.key] = json!((e.get)(s));
    }
    out
}

/// The counters in Prometheus text format (version 0.0.4).
pub fn metrics_text(engine: &Engine, device: &Device) -> String {
    snapshot_metrics(&engine.stats(), device)
}

/// The counters `s` and those of `device` in Prometheus text format: the
/// engine's families, then one per backend counter, then the device's.
fn snapshot_metrics(s: &Snapshot, device: &Device) -> String {
    let mut o = Exposition::default();
    engine_metrics(&mut o, s);
    backend_metrics(&mut o, &s.backends);
    device_metrics(&mut o, device);
    o.0
}

/// Prometheus text being written, one metric family at a time.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// Write the family `name` of type `kind` ("gauge", "counter"): its
    /// HELP and TYPE lines, then one sample per (labels, value) row.
    fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        rows: impl IntoIterator<Item = (String, u64)>,
    ) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(self.0, "{name}{labels} {v}");
        }
    }

    /// Write a family of one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help, [(String::new(), value)]);
    }
}

/// The engine's families: the flow gauge, the event counters, with the
/// forwarded and dropped packets after `evicted`.
fn engine_metrics(o: &mut Exposition, s: &Snapshot) {
    o.single(
        "tunlb_flows",
        "gauge",
        "Flows in the connection table.",
        s.flows as u64,
    );
    let (flows, rest) = Snapshot::EVENTS.split_at(3);
    for e in flows {
        o.single(e.metric, "counter", e.help, (e.get)(s));
    }
    o.family(
        "tunlb_packets_forwarded_total",
        "counter",
        "Packets translated and forwarded, by conntrack direction.",
        [
            ("{direction=\"original\"}".into(), s.forwarded[0]),
            ("{direction=\"reply\"}".into(), s.forwarded[1]),
        ],
    );
    o.family(
        "tunlb_packets_dropped_total",
        "counter",
        "Packets dropped, by reason.",
        DropReason::ALL
            .iter()
            .map(|r| (format!("{{reason=\"{}\"}}", r.name()), s.dropped(*r))),
    );
    for e in rest {
        o.single(e.metric, "counter", e.help, (e.get)(s));
    }
}

/// A metric family with one sample per row of a table, the value read by
/// `get`.
struct Family<G> {
    /// The metric's name.
    name: &'static str,
    /// "gauge" or "counter".
    kind: &'static str,
    /// The HELP line.
    help: &'static str,
    /// How to read the value of a row.
    get: G,
}

/// How a per-backend family reads its value.
type BackendGet = fn(&BackendSnapshot) -> u64;

/// The per-backend families.
const BACKEND_METRICS: [Family<BackendGet>; 5] = [
    Family {
        name: "tunlb_backend_up",
        kind: "gauge",
        help: "1 if health checks consider the backend up.",
        get: |b| u64::from(b.up),
    },
    Family {
        name: "tunlb_backend_active_flows",
        kind: "gauge",
        help: "Flows in the table using the backend.",
        get: |b| b.active,
    },
    Family {
        name: "tunlb_backend_connections_total",
        kind: "counter",
        help: "Connections sent to the backend.",
        get: |b| b.connections,
    },
    Family {
        name: "tunlb_backend_packets_total",
        kind: "counter",
        help: "Packets forwarded to and from the backend.",
        get: |b| b.packets,
    },
    Family {
        name: "tunlb_backend_bytes_total",
        kind: "counter",
        help: "IP bytes forwarded to and from the backend.",
        get: |b| b.bytes,
    },
];

/// [`BACKEND_METRICS`], each labelled by service and backend.
fn backend_metrics(o: &mut Exposition, backends: &[BackendSnapshot]) {
    let label =
        |b: &BackendSnapshot| format!("{{service=\"{}\",backend=\"{}\"}}", b.service, b.backend);
    for f in BACKEND_METRICS {
        let rows = backends.iter().map(|b| (label(b), (f.get)(b)));
        o.family(f.name, f.kind, f.help, rows);
    }
}

/// How a device family reads its value: from the device or its totals.
type DeviceGet = fn(&Device, &DeviceTotals) -> u64;

/// The device's families.
const DEVICE_METRICS: [Family<DeviceGet>; 6] = [
    Family {
        name: "tunlb_device_queues",
        kind: "gauge",
        help: "TUN queues open (one per packet thread when the device allows).",
        get: |dev, _| dev.queues as u64,
    },
    Family {
        name: "tunlb_device_offload",
        kind: "gauge",
        help: "1 if the TUN has TSO/checksum offloads on.",
        get: |dev, _| u64::from(dev.offload),
    },
    Family {
        name: "tunlb_device_packets_read_total",
        kind: "counter",
        help: "Packets read from the TUN.",
        get: |_, t| t.packets,
    },
    Family {
        name: "tunlb_device_super_packets_read_total",
        kind: "counter",
        help: "TCP super-packets (GSO) read from the TUN, among its packets.",
        get: |_, t| t.super_packets,
    },
    Family {
        name: "tunlb_device_bytes_read_total",
        kind: "counter",
        help: "IP bytes read from the TUN.",
        get: |_, t| t.bytes,
    },
    Family {
        name: "tunlb_device_write_errors_total",
        kind: "counter",
        help: "Writes the TUN refused (those packets are lost).",
        get: |_, t| t.write_errors,
    },
];

/// [`DEVICE_METRICS`], each labelled by the device's name.
fn device_metrics(o: &mut Exposition, device: &Device) {
    let totals = device.totals();
    let label = format!("{{device=\"{}\"}}", label_value(&device.name));
    for f in DEVICE_METRICS {
        let value = (f.get)(device, &totals);
        o.family(f.name, f.kind, f.help, [(label.clone(), value)]);
    }
    if let Some(src) = &device.drops {
        let name = label_value(&device.name);
        o.family(
            "tunlb_device_dropped_total",
            "counter",
            "Packets the device dropped on its own, by reason (the packet datapath: a full ring, no next hop, ...).",
            src.drops()
                .iter()
                .map(|d| (format!("{{device=\"{name}\",reason=\"{}\"}}", d.key), d.count)),
        );
    }
}

/// A tiny HTTP/1.0 responder for `GET /metrics`.
#[derive(Debug)]
pub struct Metrics {
    listener: TcpListener,
}

impl Metrics {
    /// Listen on `addr` (e.g. 127.0.0.1:9100).
    pub fn bind(addr: &str) -> Result<Self, Error> {
        let error = |source| Error::Metrics {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(error)?;
        listener.set_nonblocking(true).map_err(error)?;
        Ok(Metrics { listener })
    }

    /// Return the bound address.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve `GET /metrics` on threads of their own (see the module docs)
    /// until `stop` is set.
    pub fn spawn(
        &self,
        source: Source,
        limits: Limits,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<JoinHandle<()>> {
        let listener = self.listener.try_clone()?;
        spawn_acceptor(
            "tunlb-metrics",
            listener,
            |l| l.accept().map(|(s, _)| s),
            limits,
            stop,
            move |stream, deadline| {
                let _ = respond(stream, &source, limits, deadline);
            },
        )
    }
}

/// Escape a Prometheus label value (backslash, double quote, newline).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn respond(
    stream: TcpStream,
    source: &Source,
    limits: Limits,
    deadline: Instant,
) -> std::io::Result<()> {
    let mut stream = Timed::new(stream, limits.io_timeout, deadline)?;
    let mut line = String::new();
    BufReader::new(&mut stream)
        .take(1024)
        .read_line(&mut line)?;
    let (engine, device) = (&source.engine, &source.device);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = if path == "/metrics" {
        (
            "200 OK",
            "text/plain; version=0.0.4",
            metrics_text(engine, device),
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "only /metrics is served\n".to_string(),
        )
    };
    let head = format!("HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Mutex;

    /// A socket path of this test process.
    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tunlb-{}-{name}.sock", std::process::id()))
    }

    #[test]
    fn events_stream_to_several_listeners_until_stop() {
        let engine = Arc::new(crate::testing::engine());
        let path = socket_path("events");
        let control = Control::bind(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let source = Source {
            engine: engine.clone(),
            device: Arc::new(Device::new("mem0", 1, false, 1)),
            clock: Clock::start(),
        };
        let acceptor = control
            .spawn(source, Limits::DEFAULT, stop.clone())
            .unwrap();
        let listen = |json: bool| {
            let mut s = UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(if json { b"events json\n" } else { b"events\n" })
                .unwrap();
            let mut r = BufReader::new(s);
            let mut greeting = String::new();
            r.read_line(&mut greeting).unwrap();
            assert!(
                greeting.starts_with("tunlb: listening for events"),
                "{greeting}"
            );
            r
        };
        let (mut text, mut json) = (listen(false), listen(true));
        assert_eq!(engine.events().listeners(), 2);
        let client: std::net::SocketAddrV4 = "198.18.1.2:40000".parse().unwrap();
        let vip: std::net::SocketAddrV4 = "198.18.0.1:80".parse().unwrap();
        let mut syn = crate::craft::Segment::new(client, vip, 0x02).build();
        assert!(matches!(
            engine.handle_packet(&mut syn, Timestamp::ZERO),
            crate::Verdict::Forward { .. }
        ));
        let mut rst = crate::craft::Segment::new(client, vip, 0x04).build();
        let _ = engine.handle_packet(&mut rst, Timestamp::ZERO);
        let mut lines = String::new();
        for _ in 0..3 {
            text.read_line(&mut lines).unwrap();
        }
        let l: Vec<&str> = lines.lines().collect();
        // The seconds left (120 at the flow's time 0) by the clock's now.
        let secs = |line: &str| {
            line.split_whitespace()
                .nth(3)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        assert!(l[0].starts_with("    [NEW] tcp      6 "), "{}", l[0]);
        assert!(l[0].contains(" SYN_SENT src=198.18.1.2 dst=198.18.0.1 sport=40000 dport=80 [UNREPLIED] src=198.18.2.3"), "{}", l[0]);
        assert!((100..=120).contains(&secs(l[0])), "{}", l[0]);
        assert!(
            l[0].ends_with("backend=198.18.2.3:80 (nth: backend 1 of 1)"),
            "{}",
            l[0]
        );
        assert!(l[1].starts_with(" [UPDATE] tcp      6 "), "{}", l[1]);
        assert!(l[1].contains(" CLOSE src=198.18.1.2 "), "{}", l[1]);
        assert!(l[2].starts_with("[DESTROY] tcp      6 src=198.18.1.2 dst=198.18.0.1 sport=40000 dport=80 packets=2 "), "{}", l[2]);
        assert!(l[2].ends_with("(reset before any reply)"), "{}", l[2]);
        let mut j = String::new();
        let kinds: Vec<String> = (0..3)
            .map(|_| {
                j.clear();
                json.read_line(&mut j).unwrap();
                let v: serde_json::Value = serde_json::from_str(&j).unwrap();
                v["type"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(kinds, ["new", "update", "destroy"]);
        // A listener that goes is noticed; at stop, the others' streams end.
        drop(json);
        let deadline = Instant::now() + Duration::from_secs(10);
        while engine.events().listeners() > 1 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(engine.events().listeners(), 1);
        stop.store(true, Ordering::Relaxed);
        let mut rest = String::new();
        text.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "");
        acceptor.join().unwrap();
        assert!(!engine.events().listening());
    }

    /// A listener whose workers read one line and answer `body`; each
    /// reports the line and whether the whole answer went out.
    struct Echo {
        control: Control,
        stop: Arc<AtomicBool>,
        acceptor: JoinHandle<()>,
        done: mpsc::Receiver<(String, bool)>,
    }

    impl Echo {
        fn start(name: &str, limits: Limits, body: Vec<u8>) -> Echo {
            let control = Control::bind(&socket_path(name)).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, done) = mpsc::channel();
            let tx = Mutex::new(tx);
            let acceptor = spawn_acceptor(
                "test",
                control.listener.try_clone().unwrap(),
                |l| l.accept().map(|(s, _)| s),
                limits,
                stop.clone(),
                move |stream: UnixStream, deadline| {
                    let mut s = Timed::new(stream, limits.io_timeout, deadline).unwrap();
                    let mut line = String::new();
                    let _ = BufReader::new(&mut s).take(64).read_line(&mut line);
                    let whole = s.write_all(&body).is_ok();
                    let _ = tx.lock().unwrap().send((line.trim().to_owned(), whole));
                },
            )
            .unwrap();
            Echo {
                control,
                stop,
                acceptor,
                done,
            }
        }

        fn connect(&self) -> UnixStream {
            UnixStream::connect(&self.control.path).unwrap()
        }

        /// The next worker's report (a minute at most).
        fn next_done(&self) -> (String, bool) {
            self.done.recv_timeout(Duration::from_secs(60)).unwrap()
        }

        /// Set the stop flag and wait for the acceptor; it must end whatever
        /// its workers are blocked on.
        fn stop(self) {
            self.stop.store(true, Ordering::Relaxed);
            self.acceptor.join().unwrap();
        }
    }

    #[test]
    fn a_client_that_never_reads_is_dropped_after_the_write_timeout_and_holds_no_one_else() {
        const BODY: usize = 8 << 20; // far more than a socket buffer holds
        let limits = Limits {
            clients: 4,
            io_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(60),
        };
        let echo = Echo::start("never-reads", limits, vec![b'x'; BODY]);
        let mut stalled = echo.connect();
        stalled.write_all(b"stall\n").unwrap();
        // Another client, meanwhile, gets its whole answer.
        let mut reader = echo.connect();
        reader.write_all(b"read\n").unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), BODY, "the reading client got the whole answer");
        let mut reports = [echo.next_done(), echo.next_done()];
        reports.sort();
        assert_eq!(
            reports,
            [("read".to_string(), true), ("stall".to_string(), false)],
            "the stalled client's answer was cut short, the other went out"
        );
        // The worker gave up and closed: what the socket held, then EOF.
        let mut rest = Vec::new();
        stalled.read_to_end(&mut rest).unwrap();
        assert!(
            rest.len() < BODY,
            "the stalled client got {} bytes of {BODY}",
            rest.len()
        );
        echo.stop();
    }

    #[test]
    fn connections_beyond_the_limit_are_closed_unanswered() {
        let limits = Limits {
            clients: 1,
            io_timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(60),
        };
        let echo = Echo::start("limit", limits, b"answer\n".to_vec());
        // The first connection takes the only place (accepted first: the
        // backlog is in order) and holds it while it sends nothing.
        let mut first = echo.connect();
        let mut second = echo.connect();
        let mut got = Vec::new();
        second.read_to_end(&mut got).unwrap();
        assert!(got.is_empty(), "beyond the limit: closed unanswered");
        first.write_all(b"first\n").unwrap();
        let mut answer = String::new();
        first.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "answer\n");
        assert_eq!(echo.next_done(), ("first".to_string(), true));
        // The place is free once the worker has ended: a later client is
        // answered (it may be refused while that worker is still ending).
        let mut answered = false;
        for _ in 0..1000 {
            let mut c = echo.connect();
            // Refused: the write may find the connection closed already.
            let _ = c.write_all(b"later\n");
            let mut out = String::new();
            if c.read_to_string(&mut out).is_ok() && out == "answer\n" {
                answered = true;
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert!(answered, "a client after the first was answered");
        // A client that sends nothing holds a worker for a minute: the
        // acceptor still stops.
        let _silent = echo.connect();
        echo.stop();
    }

    #[test]
    fn the_deadline_bounds_a_whole_exchange() {
        // A write that would wait past the deadline is cut off there, even
        // though the I/O timeout is longer.
        let limits = Limits {
            clients: 1,
            io_timeout: Duration::from_secs(60),
            deadline: Duration::from_millis(300),
        };
        let echo = Echo::start("deadline", limits, vec![b'x'; 8 << 20]);
        let mut c = echo.connect();
        c.write_all(b"slow\n").unwrap();
        assert_eq!(echo.next_done(), ("slow".to_string(), false));
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.len() < 8 << 20);
        echo.stop();
    }

    #[test]
    fn a_listing_leaves_out_flows_that_expired_before_the_sweep() {
        let engine = crate::testing::engine();
        let client: std::net::SocketAddrV4 = "198.18.1.2:40001".parse().unwrap();
        let vip: std::net::SocketAddrV4 = "198.18.0.1:80".parse().unwrap();
        let mut syn = crate::craft::Segment::new(client, vip, 0x02).build();
        assert!(matches!(
            engine.handle_packet(&mut syn, Timestamp::ZERO),
            crate::Verdict::Forward { .. }
        ));
        // SYN_SENT: 120 s. A second before, it is listed with 1 s left.
        let before = flows_text(&engine, Timestamp::from_secs(119));
        assert!(before.starts_with("tcp      6 1 SYN_SENT "), "{before}");
        assert!(before.ends_with("tunlb: 1 flow entries\n"), "{before}");
        // At its deadline, unswept, it is not (conntrack -L alike).
        let at = Timestamp::from_secs(120);
        assert_eq!(engine.flow_count(), 1, "not swept yet");
        assert_eq!(flows_text(&engine, at), "tunlb: 0 flow entries\n");
        assert_eq!(flows_json(&engine, at), json!({"flows": []}));
    }

    #[test]
    fn requests_are_answered_and_the_socket_file_removed() {
        let engine = Arc::new(crate::testing::engine());
        let path = socket_path("requests");
        let control = Control::bind(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let source = Source {
            engine,
            device: Arc::new(Device::new("mem0", 1, false, 1)),
            clock: Clock::start(),
        };
        let acceptor = control
            .spawn(source, Limits::DEFAULT, stop.clone())
            .unwrap();
        // A client that sends nothing takes one worker, not the service.
        let _silent = UnixStream::connect(&path).unwrap();
        let stats = request(&path, "stats", false).unwrap();
        assert!(stats.contains("TCP  198.18.0.1:80 nth"), "{stats}");
        assert!(
            stats.contains("device mem0: 1 queue(s), offload off"),
            "{stats}"
        );
        assert_eq!(
            request(&path, "flows", false).unwrap(),
            "tunlb: 0 flow entries\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&request(&path, "flows", true).unwrap()).unwrap();
        assert_eq!(json, json!({"flows": []}));
        assert_eq!(
            request(&path, "bogus", false).unwrap(),
            "error: unknown request 'bogus': use flows, stats or events\n"
        );
        stop.store(true, Ordering::Relaxed);
        acceptor.join().unwrap();
        drop(control);
        assert!(!path.exists(), "the socket file is removed");
    }

    /// `tunlb stats --json` of [`Snapshot::sample`], byte for byte.
    const STATS_JSON_PINNED: &str = r#"{"backends":[{"active":21,"backend":"198.18.2.3:8080","bytes":24,"connections":22,"packets":23,"service":"198.18.0.1:80","up":true,"weight":2}],"device":{"bytes_read":0,"name":"mem0","offload":false,"packets_read":0,"queues":1,"super_packets_read":0,"threads":[{"bytes_read":0,"packets_read":0,"super_packets_read":0,"write_errors":0}],"write_errors":0},"dropped":{"bad_checksum":104,"bad_flags":108,"bad_header":103,"fragment":105,"icmp_not_error":117,"icmp_untracked":118,"ignored":113,"invalid_no_flow":109,"invalid_state":110,"ipv6_control":101,"no_backend":114,"no_service":107,"not_ip":100,"not_tcp":106,"out_of_window":111,"ports_exhausted":115,"rst_out_of_window":112,"table_full":116,"truncated":102},"evicted":3,"expired":2,"flows":9,"forwarded":{"original":11,"reply":12},"icmp_translated":4,"new_flows":1,"picked_up":8,"pickup_remapped":10,"redispatched":7,"resets_sent":5,"restored":11,"untracked":6}"#;

    /// `/metrics` of [`Snapshot::sample`], byte for byte.
    const METRICS_PINNED: &str = r#"# HELP tunlb_flows Flows in the connection table.
# TYPE tunlb_flows gauge
tunlb_flows 9
# HELP tunlb_flows_created_total NEW connections admitted.
# TYPE tunlb_flows_created_total counter
tunlb_flows_created_total 1
# HELP tunlb_flows_expired_total Flows removed by timeout.
# TYPE tunlb_flows_expired_total counter
tunlb_flows_expired_total 2
# HELP tunlb_flows_evicted_total Flows evicted to admit new ones (table full).
# TYPE tunlb_flows_evicted_total counter
tunlb_flows_evicted_total 3
# HELP tunlb_packets_forwarded_total Packets translated and forwarded, by conntrack direction.
# TYPE tunlb_packets_forwarded_total counter
tunlb_packets_forwarded_total{direction="original"} 11
tunlb_packets_forwarded_total{direction="reply"} 12
# HELP tunlb_packets_dropped_total Packets dropped, by reason.
# TYPE tunlb_packets_dropped_total counter
tunlb_packets_dropped_total{reason="not_ip"} 100
tunlb_packets_dropped_total{reason="ipv6_control"} 101
tunlb_packets_dropped_total{reason="truncated"} 102
tunlb_packets_dropped_total{reason="bad_header"} 103
tunlb_packets_dropped_total{reason="bad_checksum"} 104
tunlb_packets_dropped_total{reason="fragment"} 105
tunlb_packets_dropped_total{reason="not_tcp"} 106
tunlb_packets_dropped_total{reason="no_service"} 107
tunlb_packets_dropped_total{reason="bad_flags"} 108
tunlb_packets_dropped_total{reason="invalid_no_flow"} 109
tunlb_packets_dropped_total{reason="invalid_state"} 110
tunlb_packets_dropped_total{reason="out_of_window"} 111
tunlb_packets_dropped_total{reason="rst_out_of_window"} 112
tunlb_packets_dropped_total{reason="ignored"} 113
tunlb_packets_dropped_total{reason="no_backend"} 114
tunlb_packets_dropped_total{reason="ports_exhausted"} 115
tunlb_packets_dropped_total{reason="table_full"} 116
tunlb_packets_dropped_total{reason="icmp_not_error"} 117
tunlb_packets_dropped_total{reason="icmp_untracked"} 118
# HELP tunlb_icmp_translated_total ICMP errors translated (RELATED).
# TYPE tunlb_icmp_translated_total counter
tunlb_icmp_translated_total 4
# HELP tunlb_resets_sent_total RSTs sent to clients (no backend).
# TYPE tunlb_resets_sent_total counter
tunlb_resets_sent_total 5
# HELP tunlb_packets_untracked_total Packets forwarded without changing their flow (old retransmissions, late ACKs, inexact in-window RSTs, ignored replies).
# TYPE tunlb_packets_untracked_total counter
tunlb_packets_untracked_total 6
# HELP tunlb_syns_redispatched_total Retransmitted SYNs sent to another backend: the first never answered and is down, drained or removed.
# TYPE tunlb_syns_redispatched_total counter
tunlb_syns_redispatched_total 7
# HELP tunlb_flows_picked_up_total Flows picked up mid-stream (--pickup): created by an ORIGINAL ACK, not a SYN.
# TYPE tunlb_flows_picked_up_total counter
tunlb_flows_picked_up_total 8
# HELP tunlb_flows_picked_up_remapped_total Picked-up flows whose client port could not be kept: their translation may differ from the one chosen at the SYN.
# TYPE tunlb_flows_picked_up_remapped_total counter
tunlb_flows_picked_up_remapped_total 10
# HELP tunlb_flows_restored_total Flows restored from the state file at start (--state-file).
# TYPE tunlb_flows_restored_total counter
tunlb_flows_restored_total 11
# HELP tunlb_backend_up 1 if health checks consider the backend up.
# TYPE tunlb_backend_up gauge
tunlb_backend_up{service="198.18.0.1:80",backend="198.18.2.3:8080"} 1
# HELP tunlb_backend_active_flows Flows in the table using the backend.
# TYPE tunlb_backend_active_flows gauge
tunlb_backend_active_flows{service="198.18.0.1:80",backend="198.18.2.3:8080"} 21
# HELP tunlb_backend_connections_total Connections sent to the backend.
# TYPE tunlb_backend_connections_total counter
tunlb_backend_connections_total{service="198.18.0.1:80",backend="198.18.2.3:8080"} 22
# HELP tunlb_backend_packets_total Packets forwarded to and from the backend.
# TYPE tunlb_backend_packets_total counter
tunlb_backend_packets_total{service="198.18.0.1:80",backend="198.18.2.3:8080"} 23
# HELP tunlb_backend_bytes_total IP bytes forwarded to and from the backend.
# TYPE tunlb_backend_bytes_total counter
tunlb_backend_bytes_total{service="198.18.0.1:80",backend="198.18.2.3:8080"} 24
# HELP tunlb_device_queues TUN queues open (one per packet thread when the device allows).
# TYPE tunlb_device_queues gauge
tunlb_device_queues{device="mem0"} 1
# HELP tunlb_device_offload 1 if the TUN has TSO/checksum offloads on.
# TYPE tunlb_device_offload gauge
tunlb_device_offload{device="mem0"} 0
# HELP tunlb_device_packets_read_total Packets read from the TUN.
# TYPE tunlb_device_packets_read_total counter
tunlb_device_packets_read_total{device="mem0"} 0
# HELP tunlb_device_super_packets_read_total TCP super-packets (GSO) read from the TUN, among its packets.
# TYPE tunlb_device_super_packets_read_total counter
tunlb_device_super_packets_read_total{device="mem0"} 0
# HELP tunlb_device_bytes_read_total IP bytes read from the TUN.
# TYPE tunlb_device_bytes_read_total counter
tunlb_device_bytes_read_total{device="mem0"} 0
# HELP tunlb_device_write_errors_total Writes the TUN refused (those packets are lost).
# TYPE tunlb_device_write_errors_total counter
tunlb_device_write_errors_total{device="mem0"} 0
"#;

    #[test]
    fn the_stats_json_is_pinned() {
        let device = Device::new("mem0", 1, false, 1);
        let json = snapshot_json(&Snapshot::sample(), &device);
        assert_eq!(json.to_string(), STATS_JSON_PINNED);
    }

    #[test]
    fn the_metrics_text_is_pinned() {
        let device = Device::new("mem0", 1, false, 1);
        let text = snapshot_metrics(&Snapshot::sample(), &device);
        assert_eq!(text, METRICS_PINNED);
    }

    /// A device with drops of its own, as the packet datapath has.
    #[derive(Debug)]
    struct TwoDrops;

    impl crate::datapath::DeviceDrops for TwoDrops {
        fn drops(&self) -> Vec<crate::io::packet::DropCount> {
            use crate::io::packet::DropCount;
            vec![
                DropCount {
                    key: "ring_full",
                    count: 7,
                },
                DropCount {
                    key: "no_route",
                    count: 0,
                },
            ]
        }
    }

    #[test]
    fn a_device_s_own_drops_show_in_text_json_and_metrics() {
        let mut device = Device::new("c0,br0", 1, true, 1);
        device.drops = Some(Arc::new(TwoDrops));
        let s = Snapshot::sample();
        let json = snapshot_json(&s, &device);
        assert_eq!(
            json["device"]["drops"],
            json!({"ring_full": 7, "no_route": 0})
        );
        let metrics = snapshot_metrics(&s, &device);
        assert!(metrics.contains("# TYPE tunlb_device_dropped_total counter\n"));
        assert!(metrics
            .contains("tunlb_device_dropped_total{device=\"c0,br0\",reason=\"ring_full\"} 7\n"));
        assert!(metrics
            .contains("tunlb_device_dropped_total{device=\"c0,br0\",reason=\"no_route\"} 0\n"));
        let engine = crate::testing::engine();
        let text = stats_text(&engine, &device);
        assert!(
            text.contains("\ndevice drops: ring full 7, no route 0\n"),
            "{text}"
        );
        // A device without (the TUN) shows none.
        let tun = Device::new("tl0", 1, true, 1);
        assert!(snapshot_json(&s, &tun)["device"].get("drops").is_none());
        assert!(!snapshot_metrics(&s, &tun).contains("tunlb_device_dropped_total"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::label_value("tl0"), "tl0");
        assert_eq!(super::label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
