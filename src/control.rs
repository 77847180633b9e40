//! Talking to a running tunlb: `tunlb flows`, `tunlb stats`, Prometheus metrics.
//!
//! The running process listens on a Unix socket (mode 0600: only its owner
//! may ask) and on an optional TCP address for `/metrics`. Both are served
//! from the housekeeping loop, one short request at a time, never from a
//! packet thread. The protocol of the Unix socket is one line in, the answer
//! out, then close: `flows`, `stats`, `flows json`, `stats json`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::datapath::Device;
use crate::engine::Engine;
use crate::stats::DropReason;
use crate::time::Timestamp;

/// How long a client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(200);

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

/// The control socket of a running instance.
#[derive(Debug)]
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
}

impl Control {
    /// Listen at `path`, replacing a stale socket left by a dead instance;
    /// refuses if a live instance answers there.
    pub fn bind(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another tunlb answers on {}: give this one its own --control PATH",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Control {
            listener,
            path: path.to_owned(),
        })
    }

    /// Answer every request waiting now.
    pub fn serve(&self, engine: &Engine, device: &Device, now: Timestamp) {
        while let Ok((stream, _)) = self.listener.accept() {
            let _ = answer(stream, engine, device, now);
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn answer(
    stream: UnixStream,
    engine: &Engine,
    device: &Device,
    now: Timestamp,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream).take(256).read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (what, json) = (words.next().unwrap_or(""), words.next() == Some("json"));
    let body = match (what, json) {
        ("flows", false) => flows_text(engine, now),
        ("flows", true) => flows_json(engine, now).to_string() + "\n",
        ("stats", false) => stats_text(engine, device),
        ("stats", true) => stats_json(engine, device).to_string() + "\n",
        _ => format!(
            "error: unknown request '{}': use flows or stats\n",
            line.trim()
        ),
    };
    (&stream).write_all(body.as_bytes())
}

/// Send one request to the instance at `path` and return its answer.
pub fn request(path: &Path, what: &str, json: bool) -> Result<String, String> {
    let mut s = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach a running tunlb at {}: {e}; is it running, and is this its --control path (or --tun name)?",
            path.display()
        )
    })?;
    let req = if json {
        format!("{what} json\n")
    } else {
        format!("{what}\n")
    };
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The flow table as `conntrack -L` prints it, plus the backend.
pub fn flows_text(engine: &Engine, now: Timestamp) -> String {
    let mut out = String::new();
    for info in engine.flows() {
        let f = &info.flow;
        let (o, r) = (f.original, f.reply);
        let _ = writeln!(
            out,
            "tcp      6 {} {} src={} dst={} sport={} dport={} packets={} bytes={} src={} dst={} sport={} dport={} packets={} bytes={}{} backend={}",
            now.until(f.deadline).as_secs(),
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
    let _ = writeln!(out, "tunlb: {} flow entries", engine.flow_count());
    out
}

/// The flow table as JSON: `{"flows": [...]}`.
pub fn flows_json(engine: &Engine, now: Timestamp) -> serde_json::Value {
    let flows: Vec<_> = engine
        .flows()
        .iter()
        .map(|i| {
            let f = &i.flow;
            json!({
                "original": {"src": f.original.src.to_string(), "dst": f.original.dst.to_string(),
                             "packets": f.packets[0], "bytes": f.bytes[0]},
                "reply": {"src": f.reply.src.to_string(), "dst": f.reply.dst.to_string(),
                          "packets": f.packets[1], "bytes": f.bytes[1]},
                "backend": f.backend.addr.to_string(),
                "state": f.state.name(),
                "timeout_secs": now.until(f.deadline).as_secs(),
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
    let _ = writeln!(out, "{s}");
    out
}

/// The counters as JSON.
pub fn stats_json(engine: &Engine, device: &Device) -> serde_json::Value {
    let s = engine.stats();
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
    json!({
        "flows": s.flows, "new_flows": s.new_flows, "expired": s.expired, "evicted": s.evicted,
        "forwarded": {"original": s.forwarded[0], "reply": s.forwarded[1]},
        "icmp_translated": s.icmp_translated, "resets_sent": s.resets_sent,
        "dropped": drops, "backends": backends,
        "device": {"name": device.name, "queues": device.queues, "offload": device.offload,
                   "packets_read": d.packets, "super_packets_read": d.super_packets,
                   "bytes_read": d.bytes, "write_errors": d.write_errors, "threads": threads},
    })
}

/// The counters in Prometheus text format (version 0.0.4).
pub fn metrics_text(engine: &Engine, device: &Device) -> String {
    let s = engine.stats();
    let d = device.totals();
    let mut o = String::new();
    let mut put = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    put(
        "tunlb_flows",
        "gauge",
        "Flows in the connection table.",
        vec![(String::new(), s.flows as u64)],
    );
    put(
        "tunlb_flows_created_total",
        "counter",
        "NEW connections admitted.",
        vec![(String::new(), s.new_flows)],
    );
    put(
        "tunlb_flows_expired_total",
        "counter",
        "Flows removed by timeout.",
        vec![(String::new(), s.expired)],
    );
    put(
        "tunlb_flows_evicted_total",
        "counter",
        "Flows evicted to admit new ones (table full).",
        vec![(String::new(), s.evicted)],
    );
    put(
        "tunlb_packets_forwarded_total",
        "counter",
        "Packets translated and forwarded, by conntrack direction.",
        vec![
            ("{direction=\"original\"}".into(), s.forwarded[0]),
            ("{direction=\"reply\"}".into(), s.forwarded[1]),
        ],
    );
    put(
        "tunlb_packets_dropped_total",
        "counter",
        "Packets dropped, by reason.",
        DropReason::ALL
            .iter()
            .map(|r| (format!("{{reason=\"{}\"}}", r.name()), s.dropped(*r)))
            .collect(),
    );
    put(
        "tunlb_icmp_translated_total",
        "counter",
        "ICMP errors translated (RELATED).",
        vec![(String::new(), s.icmp_translated)],
    );
    put(
        "tunlb_resets_sent_total",
        "counter",
        "RSTs sent to clients (no backend).",
        vec![(String::new(), s.resets_sent)],
    );
    let label = |b: &crate::stats::BackendSnapshot| {
        format!("{{service=\"{}\",backend=\"{}\"}}", b.service, b.backend)
    };
    put(
        "tunlb_backend_up",
        "gauge",
        "1 if health checks consider the backend up.",
        s.backends
            .iter()
            .map(|b| (label(b), u64::from(b.up)))
            .collect(),
    );
    put(
        "tunlb_backend_active_flows",
        "gauge",
        "Flows in the table using the backend.",
        s.backends.iter().map(|b| (label(b), b.active)).collect(),
    );
    put(
        "tunlb_backend_connections_total",
        "counter",
        "Connections sent to the backend.",
        s.backends
            .iter()
            .map(|b| (label(b), b.connections))
            .collect(),
    );
    put(
        "tunlb_backend_packets_total",
        "counter",
        "Packets forwarded to and from the backend.",
        s.backends.iter().map(|b| (label(b), b.packets)).collect(),
    );
    put(
        "tunlb_backend_bytes_total",
        "counter",
        "IP bytes forwarded to and from the backend.",
        s.backends.iter().map(|b| (label(b), b.bytes)).collect(),
    );
    let dev = format!("{{device=\"{}\"}}", label_value(&device.name));
    put(
        "tunlb_device_queues",
        "gauge",
        "TUN queues open (one per packet thread when the device allows).",
        vec![(dev.clone(), device.queues as u64)],
    );
    put(
        "tunlb_device_offload",
        "gauge",
        "1 if the TUN has TSO/checksum offloads on.",
        vec![(dev.clone(), u64::from(device.offload))],
    );
    put(
        "tunlb_device_packets_read_total",
        "counter",
        "Packets read from the TUN.",
        vec![(dev.clone(), d.packets)],
    );
    put(
        "tunlb_device_super_packets_read_total",
        "counter",
        "TCP super-packets (GSO) read from the TUN, among its packets.",
        vec![(dev.clone(), d.super_packets)],
    );
    put(
        "tunlb_device_bytes_read_total",
        "counter",
        "IP bytes read from the TUN.",
        vec![(dev.clone(), d.bytes)],
    );
    put(
        "tunlb_device_write_errors_total",
        "counter",
        "Writes the TUN refused (those packets are lost).",
        vec![(dev, d.write_errors)],
    );
    o
}

/// A tiny HTTP/1.0 responder for `GET /metrics`.
#[derive(Debug)]
pub struct Metrics {
    listener: TcpListener,
}

impl Metrics {
    /// Listen on `addr` (e.g. 127.0.0.1:9100).
    pub fn bind(addr: &str) -> Result<Self, String> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            format!("cannot listen for metrics on {addr}: {e}; choose a free --metrics ADDR:PORT")
        })?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(Metrics { listener })
    }

    /// Return the bound address.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Answer every request waiting now.
    pub fn serve(&self, engine: &Engine, device: &Device) {
        while let Ok((stream, _)) = self.listener.accept() {
            let _ = respond(stream, engine, device);
        }
    }
}

/// Escape a Prometheus label value (backslash, double quote, newline).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn respond(stream: TcpStream, engine: &Engine, device: &Device) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream).take(1024).read_line(&mut line)?;
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
    (&stream).write_all(head.as_bytes())?;
    (&stream).write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::label_value("tl0"), "tl0");
        assert_eq!(super::label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
