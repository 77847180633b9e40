//! `--pcap FILE`: every packet tunlb handles, before and after NAT, in a
//! pcapng file for Wireshark and tshark.
//!
//! The file has two interfaces, both raw IPv4 (`LINKTYPE_RAW`):
//!
//! - 0, `before-nat`: "as received, before NAT": every packet read, as it
//!   was read;
//! - 1, `after-nat`: "as sent, after NAT": what tunlb wrote for it, right
//!   after it in the file (the translated packet, or the RST it answered
//!   with). A dropped packet has no record here.
//!
//! Comments (pcapng `opt_comment`, shown by Wireshark under "Packet
//! comments" and by `tshark -T fields -e frame.comment`) say what tunlb did,
//! on the packet it did it for, in the words of `--trace`:
//!
//! ```text
//! NEW 198.18.1.2:40000 -> 198.18.0.1:80 => DNAT 198.18.2.3:80, MASQ 198.18.0.1:40000 (nth: backend 1 of 4)
//! STATE 198.18.1.2:40000 -> 198.18.0.1:80 SYN_SENT -> SYN_RECV
//! DESTROY 198.18.1.2:40000 -> 198.18.0.1:80 in CLOSE
//! DROP invalid_no_flow
//! ```
//!
//! A drop names its [`DropReason`](crate::DropReason).
//!
//! # Super-packets
//! With offloads on (and GRO on the interfaces that feed the TUN), a TCP
//! super-packet (GSO) is written as it was read and sent: one IP packet of
//! up to 64 KiB that the kernel cuts into segments later. Wireshark lists
//! it as one TCP segment with the whole payload (`Len=7240`, "TCP segment
//! of a reassembled PDU"), its IP total length being the whole packet's.
//! Its TCP checksum is partial (the pseudo-header's only, completed by
//! whoever segments it): with TCP checksum validation on (off by default)
//! Wireshark calls it "incorrect ... (maybe caused by TCP checksum
//! offload?)". Each such packet carries a comment saying so, on both sides
//! (`super-packet (GSO) of N bytes, segmented by the kernel later; TCP
//! checksum partial`), and so does a single packet read with a partial
//! checksum.
//!
//! The capture lives in the shell: the engine is not involved but for
//! [`Engine::flow_of`], read around [`Engine::handle_offloaded_packet`] to learn the
//! decision and the state changes. With no `--pcap` the datapath pays one
//! branch per packet. It is bounded by [`Limit`] (default
//! [`Limit::DEFAULT`]): once reached, nothing more is written.
//!
//! [`read`] reads such a file back (for `tunlb ladder` and tests).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::conntrack::{Direction, Flow};
use crate::engine::{Engine, Verdict};
use crate::nat::L4Checksum;
use crate::time::Timestamp;
use crate::wire::tcp_tuple;

/// `LINKTYPE_RAW`: each record is one IP packet, no link header.
pub const LINKTYPE_RAW: u16 = 101;
/// The interface of packets as read, before NAT.
pub const BEFORE: u32 = 0;
/// The interface of packets as written, after NAT.
pub const AFTER: u32 = 1;
/// The two interfaces' names and descriptions, in interface order.
pub const INTERFACES: [(&str, &str); 2] = [
    ("before-nat", "as received, before NAT"),
    ("after-nat", "as sent, after NAT"),
];

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
/// How often buffered records are flushed while packets flow.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How much a capture may hold: packets (records, both sides) or file bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// At most this many records.
    Packets(u64),
    /// At most this many bytes of file.
    Bytes(u64),
}

impl Limit {
    /// 64 MiB of file: a forgotten `--pcap` cannot fill a disk.
    pub const DEFAULT: Limit = Limit::Bytes(64 << 20);

    /// Parse `N` (records) or `N` with a unit of bytes: `B`, `KB`, `MB`,
    /// `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024).
    pub fn parse(s: &str) -> Result<Limit, String> {
        let s = s.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let bad = || format!("--pcap-limit {s:?}: expected N packets or a size such as 64MiB");
        let n: u64 = s[..digits].parse().map_err(|_| bad())?;
        let unit = match s[digits..].trim() {
            "" => return (n > 0).then_some(Limit::Packets(n)).ok_or_else(bad),
            "B" => 1,
            "KB" | "kB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(bad()),
        };
        match n.checked_mul(unit) {
            Some(b) if b > 0 => Ok(Limit::Bytes(b)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Packets(n) => write!(f, "{n} packets"),
            Limit::Bytes(n) if n % (1 << 20) == 0 => write!(f, "{} MiB", n >> 20),
            Limit::Bytes(n) => write!(f, "{n} bytes"),
        }
    }
}

/// A pcapng writer: a section header, interfaces, enhanced packet blocks
/// with comments. Little-endian, microsecond timestamps (the default).
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    /// Bytes written so far.
    pub bytes: u64,
    /// Packet records written so far.
    pub packets: u64,
}

/// Append option `code` with `value` (padded to 32 bits) to `buf`.
fn option(buf: &mut Vec<u8>, code: u16, value: &[u8]) {
    let len = value.len().min(u16::MAX as usize - 3);
    buf.extend_from_slice(&code.to_le_bytes());
    buf.extend_from_slice(&(len as u16).to_le_bytes());
    buf.extend_from_slice(&value[..len]);
    buf.resize(buf.len() + pad(len), 0);
}

/// Bytes of padding after `len` bytes to reach a multiple of 4.
const fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// The size of the packet block [`Writer::packet`] writes.
fn packet_block_len(data: usize, comments: &[String]) -> usize {
    let opts: usize = comments
        .iter()
        .map(|c| {
            let l = c.len().min(u16::MAX as usize - 3);
            4 + l + pad(l)
        })
        .sum();
    28 + data + pad(data) + if opts > 0 { opts + 4 } else { 0 } + 4
}

impl<W: Write> Writer<W> {
    /// Start a file on `out`: the section header and the two interfaces of
    /// [`INTERFACES`], raw IPv4.
    pub fn new(out: W) -> io::Result<Self> {
        let mut w = Writer {
            out,
            bytes: 0,
            packets: 0,
        };
        let mut body = Vec::new();
        body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&(-1i64).to_le_bytes());
        option(
            &mut body,
            SHB_USERAPPL,
            concat!("tunlb ", env!("CARGO_PKG_VERSION")).as_bytes(),
        );
        option(&mut body, OPT_END, &[]);
        w.block(SHB, &body)?;
        for (name, description) in INTERFACES {
            let mut body = Vec::new();
            body.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
            body.extend_from_slice(&0u16.to_le_bytes());
            body.extend_from_slice(&0u32.to_le_bytes()); // snaplen: none
            option(&mut body, IF_NAME, name.as_bytes());
            option(&mut body, IF_DESCRIPTION, description.as_bytes());
            option(&mut body, OPT_END, &[]);
            w.block(IDB, &body)?;
        }
        Ok(w)
    }

    fn block(&mut self, kind: u32, body: &[u8]) -> io::Result<()> {
        let total = (body.len() + 12) as u32;
        self.out.write_all(&kind.to_le_bytes())?;
        self.out.write_all(&total.to_le_bytes())?;
        self.out.write_all(body)?;
        self.out.write_all(&total.to_le_bytes())?;
        self.bytes += u64::from(total);
        Ok(())
    }

    /// Write one packet on interface `iface` at `ts_us` microseconds since
    /// the Unix epoch, with a comment per string in `comments`.
    pub fn packet(
        &mut self,
        iface: u32,
        ts_us: u64,
        data: &[u8],
        comments: &[String],
    ) -> io::Result<()> {
        let mut body = Vec::with_capacity(packet_block_len(data.len(), comments));
        body.extend_from_slice(&iface.to_le_bytes());
        body.extend_from_slice(&((ts_us >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(ts_us as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        body.resize(body.len() + pad(data.len()), 0);
        for c in comments {
            option(&mut body, OPT_COMMENT, c.as_bytes());
        }
        if !comments.is_empty() {
            option(&mut body, OPT_END, &[]);
        }
        self.packets += 1;
        self.block(EPB, &body)
    }

    /// Flush what is buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// One packet record read back by [`read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The interface: [`BEFORE`] or [`AFTER`] in tunlb's files.
    pub iface: u32,
    /// Microseconds since the Unix epoch.
    pub ts_us: u64,
    /// The IP packet.
    pub data: Vec<u8>,
    /// Its comments, in order.
    pub comments: Vec<String>,
}

/// A pcapng file read back: its interfaces' names and its packet records.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    /// Each interface's `if_name` (empty when it has none), in order.
    pub interfaces: Vec<String>,
    /// The enhanced packet blocks, in file order.
    pub records: Vec<Record>,
}

/// Read a little-endian pcapng file (one section, enhanced packet blocks;
/// other blocks are skipped).
pub fn read(mut input: impl Read) -> Result<Capture, String> {
    let mut buf = Vec::new();
    input
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the capture: {e}"))?;
    parse(&buf)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// Walk the options at `b`, calling `f(code, value)` for each.
fn options(b: &[u8], mut f: impl FnMut(u16, &[u8])) {
    let mut at = 0;
    while at + 4 <= b.len() {
        let (code, len) = (le16(b, at), usize::from(le16(b, at + 2)));
        if code == OPT_END || at + 4 + len > b.len() {
            break;
        }
        f(code, &b[at + 4..at + 4 + len]);
        at += 4 + len + pad(len);
    }
}

/// Parse a pcapng file held in memory (see [`read`]).
pub fn parse(buf: &[u8]) -> Result<Capture, String> {
    let mut cap = Capture::default();
    if buf.len() < 12 || le32(buf, 0) != SHB || le32(buf, 8) != BYTE_ORDER_MAGIC {
        return Err("not a little-endian pcapng file (as tunlb --pcap writes)".into());
    }
    let mut at = 0;
    while at + 12 <= buf.len() {
        let (kind, len) = (le32(buf, at), le32(buf, at + 4) as usize);
        if len < 12 || len % 4 != 0 || at + len > buf.len() {
            return Err(format!("a damaged block at byte {at}"));
        }
        let body = &buf[at + 8..at + len - 4];
        match kind {
            IDB if body.len() >= 8 => {
                let mut name = String::new();
                options(&body[8..], |code, v| {
                    if code == IF_NAME {
                        name = String::from_utf8_lossy(v).into_owned();
                    }
                });
                cap.interfaces.push(name);
            }
            EPB if body.len() >= 20 => {
                let caplen = le32(body, 12) as usize;
                if 20 + caplen > body.len() {
                    return Err(format!("a damaged packet block at byte {at}"));
                }
                let mut comments = Vec::new();
                options(&body[20 + caplen + pad(caplen)..], |code, v| {
                    if code == OPT_COMMENT {
                        comments.push(String::from_utf8_lossy(v).into_owned());
                    }
                });
                cap.records.push(Record {
                    iface: le32(body, 0),
                    ts_us: u64::from(le32(body, 4)) << 32 | u64::from(le32(body, 8)),
                    data: body[20..20 + caplen].to_vec(),
                    comments,
                });
            }
            _ => {}
        }
        at += len;
    }
    Ok(cap)
}

/// The file and what was written to it.
#[derive(Debug)]
struct Sink {
    writer: Writer<BufWriter<File>>,
    last_flush: Timestamp,
    /// Records written since the last flush.
    dirty: bool,
    /// The first write error, reported once.
    failed: bool,
}

/// A live capture: [`Recorder::handle_packet`] runs the engine on a packet and
/// records it, before and after. Shared by the packet threads (one lock
/// around the file).
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    limit: Limit,
    /// Set once the limit is reached or the file failed: packets then go
    /// straight to the engine.
    done: AtomicBool,
    sink: Mutex<Sink>,
}

impl Recorder {
    /// Create (or truncate) `path`, readable by its owner only, and write
    /// the file's header.
    pub fn create(path: &Path, limit: Limit) -> io::Result<Arc<Self>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        let mut writer = Writer::new(BufWriter::with_capacity(1 << 16, file))?;
        writer.flush()?;
        Ok(Arc::new(Recorder {
            path: path.to_owned(),
            limit,
            done: AtomicBool::new(false),
            sink: Mutex::new(Sink {
                writer,
                last_flush: Timestamp::ZERO,
                dirty: false,
                failed: false,
            }),
        }))
    }

    /// Run [`Engine::handle_offloaded_packet`] on `pkt` and record the packet as read
    /// and what was sent for it, with comments on the decision, state
    /// changes and drops (see the module docs). `gso`: it is a super-packet.
    pub fn handle_packet(
        &self,
        engine: &Engine,
        pkt: &mut [u8],
        now: Timestamp,
        l4: L4Checksum,
        gso: bool,
    ) -> Verdict {
        if self.done.load(Ordering::Relaxed) {
            return engine.handle_offloaded_packet(pkt, now, l4);
        }
        let before = pkt.to_vec();
        let tuple = tcp_tuple(pkt);
        let old = tuple.and_then(|t| engine.flow_of_any(&t));
        let verdict = engine.handle_offloaded_packet(pkt, now, l4);
        let new = tuple.and_then(|t| engine.flow_of_any(&t));
        let mut notes = Vec::new();
        let mut sent_notes = Vec::new();
        let sent = match verdict {
            Verdict::Forward { len } => {
                notes = flow_notes(engine, old.as_ref(), new.as_ref());
                Some(&pkt[..len.min(pkt.len())])
            }
            Verdict::Respond { len } => {
                notes.push("DROP no_backend: RST sent back".to_owned());
                sent_notes.push("RST answering a SYN no backend takes".to_owned());
                Some(&pkt[..len.min(pkt.len())])
            }
            Verdict::Drop(reason) => {
                notes.push(format!("DROP {}", reason.name()));
                None
            }
        };
        if l4 == L4Checksum::Partial && !matches!(verdict, Verdict::Respond { .. }) {
            let note = if gso {
                format!(
                    "super-packet (GSO) of {} bytes, segmented by the kernel later; TCP checksum partial",
                    before.len()
                )
            } else {
                "TCP checksum partial (offload): completed by the kernel later".to_owned()
            };
            notes.push(note.clone());
            if sent.is_some() {
                sent_notes.push(note);
            }
        }
        self.write(now, &before, &notes, sent, &sent_notes);
        verdict
    }

    fn write(
        &self,
        now: Timestamp,
        before: &[u8],
        notes: &[String],
        sent: Option<&[u8]>,
        sent_notes: &[String],
    ) {
        let ts_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if self.done.load(Ordering::Relaxed) {
            return;
        }
        let (records, bytes) = (
            1 + u64::from(sent.is_some()),
            (packet_block_len(before.len(), notes)
                + sent.map_or(0, |s| packet_block_len(s.len(), sent_notes))) as u64,
        );
        let over = match self.limit {
            Limit::Packets(n) => sink.writer.packets + records > n,
            Limit::Bytes(n) => sink.writer.bytes + bytes > n,
        };
        if over {
            self.done.store(true, Ordering::Relaxed);
            tracing::warn!(
                "--pcap {}: limit of {} reached after {} packets ({} bytes); later packets are not captured",
                self.path.display(),
                self.limit,
                sink.writer.packets,
                sink.writer.bytes
            );
            let _ = sink.writer.flush();
            return;
        }
        let mut result = sink.writer.packet(BEFORE, ts_us, before, notes);
        if let (Ok(()), Some(s)) = (&result, sent) {
            result = sink.writer.packet(AFTER, ts_us, s, sent_notes);
        }
        sink.dirty = true;
        if result.is_ok() && sink.last_flush.until(now) >= FLUSH_EVERY {
            sink.last_flush = now;
            sink.dirty = false;
            result = sink.writer.flush();
        }
        if let Err(e) = result {
            if !sink.failed {
                sink.failed = true;
                tracing::warn!(
                    "--pcap {}: cannot write: {e}; capture stopped",
                    self.path.display()
                );
            }
            self.done.store(true, Ordering::Relaxed);
        }
    }

    /// Flush what was recorded if it has waited [`FLUSH_EVERY`] or more:
    /// called by the housekeeping loop, so a capture read while tunlb runs
    /// (`tshark -r`) is at most about a second behind, even when traffic
    /// stops.
    pub fn tick(&self, now: Timestamp) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if sink.dirty && !sink.failed && sink.last_flush.until(now) >= FLUSH_EVERY {
            sink.last_flush = now;
            sink.dirty = false;
            if let Err(e) = sink.writer.flush() {
                sink.failed = true;
                self.done.store(true, Ordering::Relaxed);
                tracing::warn!(
                    "--pcap {}: cannot write: {e}; capture stopped",
                    self.path.display()
                );
            }
        }
    }

    /// Flush the file; returns (packets, bytes) written.
    pub fn finish(&self) -> (u64, u64) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = sink.writer.flush() {
            tracing::warn!("--pcap {}: cannot write: {e}", self.path.display());
        }
        (sink.writer.packets, sink.writer.bytes)
    }
}

/// The comments for a forwarded packet of a flow that was `old` before it
/// and is `new` after it.
fn flow_notes(
    engine: &Engine,
    old: Option<&(Flow<IpAddr>, Direction)>,
    new: Option<&(Flow<IpAddr>, Direction)>,
) -> Vec<String> {
    match (old, new) {
        (Some((o, _)), Some((n, _))) if o.id == n.id => {
            if o.state == n.state {
                Vec::new()
            } else {
                vec![format!("STATE {} {} -> {}", n.original, o.state, n.state)]
            }
        }
        (old, Some((n, _))) => {
            // A new flow; maybe replacing an old one on the same tuple (a
            // SYN reopening a closed flow, or redispatched).
            let mut notes: Vec<String> = old
                .map(|(o, _)| format!("DESTROY {} in {}", o.original, o.state))
                .into_iter()
                .collect();
            notes.push(decision(engine, n));
            notes
        }
        // Removed by this packet: an RST before any reply.
        (Some((o, _)), None) => vec![
            format!("STATE {} {} -> CLOSE", o.original, o.state),
            format!("DESTROY {} in CLOSE (reset before any reply)", o.original),
        ],
        (None, None) => Vec::new(),
    }
}

/// The NAT decision of a new flow, as `--trace` words it.
fn decision(engine: &Engine, flow: &Flow<IpAddr>) -> String {
    let rt = engine.runtime();
    let found = rt.services.iter().find_map(|svc| {
        let bi = svc
            .backends
            .iter()
            .position(|b| Arc::ptr_eq(b, &flow.backend))?;
        Some(crate::trace::decision(
            flow,
            svc,
            bi,
            flow.state != crate::conntrack::TcpState::SynSent,
        ))
    });
    found.unwrap_or_else(|| {
        format!(
            "NEW {} => DNAT {}, MASQ {}",
            flow.original, flow.reply.src, flow.reply.dst
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::craft::Segment;

    fn engine() -> Engine {
        Engine::new(crate::testing::config(&["198.18.2.3:80", "198.18.2.4:80"])).unwrap()
    }

    #[test]
    fn limits_parse() {
        assert_eq!(Limit::parse("1000"), Ok(Limit::Packets(1000)));
        assert_eq!(Limit::parse("64MiB"), Ok(Limit::Bytes(64 << 20)));
        assert_eq!(Limit::parse("2 MB"), Ok(Limit::Bytes(2_000_000)));
        assert_eq!(Limit::parse("512B"), Ok(Limit::Bytes(512)));
        for bad in ["", "0", "0MB", "ten", "5 parsecs", "-1", "99999999999GiB"] {
            assert!(Limit::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Limit::DEFAULT.to_string(), "64 MiB");
    }

    #[test]
    fn writer_and_reader_agree() {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.packet(BEFORE, 1_700_000_000_123_456, &[0x45, 1, 2], &[])
            .unwrap();
        w.packet(
            AFTER,
            7,
            &[1, 2, 3, 4, 5],
            &["one".into(), "two, longer".into()],
        )
        .unwrap();
        let bytes = w.out.clone();
        assert_eq!(w.bytes, bytes.len() as u64);
        assert_eq!(bytes.len() % 4, 0);
        // Sizes as predicted, so the limit is exact.
        let header = bytes.len() as u64
            - packet_block_len(3, &[]) as u64
            - packet_block_len(5, &["one".into(), "two, longer".into()]) as u64;
        let fresh = Writer::new(Vec::new()).unwrap();
        assert_eq!(header, fresh.bytes);
        let cap = parse(&bytes).unwrap();
        assert_eq!(cap.interfaces, ["before-nat", "after-nat"]);
        assert_eq!(
            cap.records,
            [
                Record {
                    iface: BEFORE,
                    ts_us: 1_700_000_000_123_456,
                    data: vec![0x45, 1, 2],
                    comments: vec![]
                },
                Record {
                    iface: AFTER,
                    ts_us: 7,
                    data: vec![1, 2, 3, 4, 5],
                    comments: vec!["one".into(), "two, longer".into()]
                }
            ]
        );
        assert!(parse(&bytes[..bytes.len() - 4]).is_err(), "truncated");
        assert!(parse(b"\xd4\xc3\xb2\xa1 not pcapng").is_err());
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tunlb-{}-{name}.pcapng", std::process::id()))
    }

    #[test]
    fn records_both_sides_decisions_states_and_drops() {
        let e = engine();
        let path = temp("sides");
        let rec = Recorder::create(&path, Limit::DEFAULT).unwrap();
        let client: std::net::SocketAddrV4 = "198.18.1.2:40000".parse().unwrap();
        let vip: std::net::SocketAddrV4 = "198.18.0.1:80".parse().unwrap();
        let mut syn = Segment::new(client, vip, 0x02).build();
        let v = rec.handle_packet(&e, &mut syn, Timestamp::ZERO, L4Checksum::Complete, false);
        assert!(matches!(v, Verdict::Forward { .. }));
        // The SYN-ACK from the backend to the MASQUERADE address.
        let (flow, _) = e
            .flow_of(&crate::conntrack::Tuple {
                src: client.into(),
                dst: vip.into(),
            })
            .unwrap();
        let mut synack = Segment::new(flow.reply.src, flow.reply.dst, 0x12).build();
        let v = rec.handle_packet(
            &e,
            &mut synack,
            Timestamp::ZERO,
            L4Checksum::Complete,
            false,
        );
        assert!(matches!(v, Verdict::Forward { .. }));
        // A stray ACK to the VIP: dropped.
        let mut stray = Segment::new(
            "198.18.1.9:1234".parse::<std::net::SocketAddrV4>().unwrap(),
            vip,
            0x10,
        )
        .build();
        let v = rec.handle_packet(&e, &mut stray, Timestamp::ZERO, L4Checksum::Complete, false);
        assert_eq!(v, Verdict::Drop(crate::DropReason::NoFlowNotSyn));
        assert_eq!(rec.finish().0, 5);
        let cap = read(File::open(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        let ifaces: Vec<u32> = cap.records.iter().map(|r| r.iface).collect();
        assert_eq!(ifaces, [BEFORE, AFTER, BEFORE, AFTER, BEFORE]);
        assert_eq!(cap.records[0].data, Segment::new(client, vip, 0x02).build());
        let dst = |r: &Record| {
            crate::wire::IpRepr::parse_ipv4(&r.data, true).map(|_| tcp_tuple(&r.data).unwrap().dst)
        };
        let v4 = |e: crate::conntrack::tuple::Endpoint<IpAddr>| e.to_socket();
        assert_eq!(dst(&cap.records[0]).map(v4), Ok(vip.into()));
        assert_eq!(
            dst(&cap.records[1]).map(v4),
            Ok(flow.reply.src.to_socket()),
            "the backend"
        );
        assert_eq!(dst(&cap.records[3]).map(v4), Ok(client.into()));
        assert_eq!(
            cap.records[0].comments,
            [format!(
                "NEW 198.18.1.2:40000 -> 198.18.0.1:80 => DNAT 198.18.2.3:80, MASQ {} (nth: backend 1 of 2)",
                flow.reply.dst
            )]
        );
        assert!(cap.records[1].comments.is_empty());
        assert_eq!(
            cap.records[2].comments,
            ["STATE 198.18.1.2:40000 -> 198.18.0.1:80 SYN_SENT -> SYN_RECV"]
        );
        assert_eq!(cap.records[4].comments, ["DROP invalid_no_flow"]);
    }

    #[test]
    fn stops_at_the_limit_with_pairs_whole() {
        let e = engine();
        let path = temp("limit");
        let rec = Recorder::create(&path, Limit::Packets(5)).unwrap();
        let vip: std::net::SocketAddrV4 = "198.18.0.1:80".parse().unwrap();
        for i in 0..10u16 {
            let mut syn = Segment::new(
                format!("198.18.1.2:{}", 40000 + i)
                    .parse::<std::net::SocketAddrV4>()
                    .unwrap(),
                vip,
                0x02,
            )
            .build();
            let v = rec.handle_packet(&e, &mut syn, Timestamp::ZERO, L4Checksum::Complete, false);
            assert!(
                matches!(v, Verdict::Forward { .. }),
                "captured or not, forwarded"
            );
        }
        assert_eq!(e.flow_count(), 10);
        assert_eq!(rec.finish().0, 4, "two whole pairs; the third would pass 5");
        let cap = read(File::open(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(cap.records.len(), 4);
    }
}
