//! The state file (`--state-file`): the flow table saved on the way out and
//! restored on the way in, so a planned restart or an upgrade loses no flow.
//!
//! Conntrack forgets every flow on reboot; IPVS keeps its connections across
//! `ipvsadm` reloads because the kernel module stays. A userspace balancer
//! that restarts has only a file. What it must hold is what the engine cannot
//! rebuild from the next packet: the translation (backend, SNAT address and
//! port, which may have come from a clash or a health state that no longer
//! holds), the TCP state and both windows, and the time each flow has left.
//! A download whose client sends nothing for minutes needs all of it: its
//! first packet after the restart is the backend's, a REPLY packet, and
//! nothing in a REPLY tuple says which client it belongs to.
//!
//! # Format (version [`FORMAT`]; version 1, IPv4 only, is still read)
//! ```text
//! "TUNLBST\n"  8 bytes, the magic
//! format       u32 little-endian
//! body length  u64 little-endian
//! crc32        u32 little-endian, of the body (IEEE, as zlib and Ethernet)
//! body         postcard encoding of `Saved`
//! ```
//! A file is written whole to `FILE.tmp`, flushed to disk, then renamed over
//! `FILE`: a crash while writing leaves the previous file. A file with
//! another magic, another format version, a length or checksum that does not
//! match, or a body that does not decode is refused as a whole
//! ([`Error`]): tunlb then starts empty rather than guessing.
//!
//! Time: deadlines are saved as the time each flow had left, with the wall
//! clock of the save. On restore, the wall-clock time that passed (the
//! downtime) is taken off; flows whose time ran out meanwhile are not
//! restored. This module does the encoding and the file; the engine decides
//! which flows come back ([`crate::Engine::restore_flows`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::conntrack::window::Window;

/// The first bytes of every state file.
pub const MAGIC: &[u8; 8] = b"TUNLBST\n";
/// The format version this build writes (and reads, with [`FORMAT_V1`]).
pub const FORMAT: u32 = 2;
/// The format of the builds before IPv6: the same fields, IPv4 socket
/// addresses. Read, so an upgrade keeps its flows; never written.
pub const FORMAT_V1: u32 = 1;
/// Magic, format, body length and checksum.
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// The largest body accepted (a table of millions of flows fits many times).
const MAX_BODY: u64 = 4 << 30;

/// One flow as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFlow {
    /// The ORIGINAL tuple's source: the client.
    pub client: SocketAddr,
    /// The ORIGINAL tuple's destination: the service's VIP.
    pub vip: SocketAddr,
    /// The REPLY tuple's source: the backend.
    pub backend: SocketAddr,
    /// The REPLY tuple's destination: the SNAT address and port.
    pub snat: SocketAddr,
    /// The conntrack TCP state, as its index in [`crate::conntrack::TcpState::ALL`].
    pub state: u8,
    /// `IPS_SEEN_REPLY`.
    pub seen_reply: bool,
    /// `IPS_ASSURED`.
    pub assured: bool,
    /// Milliseconds the flow had left when saved.
    pub remaining_ms: u64,
    /// Packets per direction.
    pub packets: [u64; 2],
    /// Bytes per direction.
    pub bytes: [u64; 2],
    /// Sequence state per direction.
    pub window: [Window; 2],
    /// See [`crate::conntrack::Flow::stray_ack`].
    pub stray_ack: Option<u32>,
}

/// A whole saved table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// When it was saved: milliseconds since the Unix epoch.
    pub saved_at_ms: u64,
    /// The version of tunlb that saved it (for the log line).
    pub writer: String,
    /// Saved after the datapath stopped (SIGTERM/SIGINT): the flows' states
    /// and windows are exact. A periodic save is not: its flows may have
    /// moved on (or ended) before a crash.
    pub exact: bool,
    /// The flows.
    pub flows: Vec<SavedFlow>,
}

impl Saved {
    /// A table of `flows` saved now; `exact` as [`Saved::exact`].
    pub fn now(flows: Vec<SavedFlow>, exact: bool) -> Self {
        Saved {
            saved_at_ms: unix_ms(SystemTime::now()),
            writer: env!("CARGO_PKG_VERSION").to_string(),
            exact,
            flows,
        }
    }

    /// How long ago, by the wall clock, it was saved (zero if the clock went back).
    pub fn age(&self) -> Duration {
        Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(self.saved_at_ms))
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Format 1's flow: [`SavedFlow`] with IPv4 socket addresses.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct SavedFlowV1 {
    client: SocketAddrV4,
    vip: SocketAddrV4,
    backend: SocketAddrV4,
    snat: SocketAddrV4,
    state: u8,
    seen_reply: bool,
    assured: bool,
    remaining_ms: u64,
    packets: [u64; 2],
    bytes: [u64; 2],
    window: [Window; 2],
    stray_ack: Option<u32>,
}

/// Format 1's table.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct SavedV1 {
    saved_at_ms: u64,
    writer: String,
    exact: bool,
    flows: Vec<SavedFlowV1>,
}

impl From<SavedV1> for Saved {
    fn from(v1: SavedV1) -> Self {
        let flows = v1
            .flows
            .into_iter()
            .map(|f| SavedFlow {
                client: f.client.into(),
                vip: f.vip.into(),
                backend: f.backend.into(),
                snat: f.snat.into(),
                state: f.state,
                seen_reply: f.seen_reply,
                assured: f.assured,
                remaining_ms: f.remaining_ms,
                packets: f.packets,
                bytes: f.bytes,
                window: f.window,
                stray_ack: f.stray_ack,
            })
            .collect();
        Saved {
            saved_at_ms: v1.saved_at_ms,
            writer: v1.writer,
            exact: v1.exact,
            flows,
        }
    }
}

/// Why a state file was refused. Each says what tunlb does about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read or written.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Not a tunlb state file.
    #[error("state file {0} is not a tunlb state file (bad magic): starting with no flows")]
    Magic(PathBuf),
    /// Another format version.
    #[error(
        "state file {0} has format version {1}, this tunlb reads versions {FORMAT_V1} and \
         {FORMAT}: starting with no flows"
    )]
    Version(PathBuf, u32),
    /// Truncated, or the checksum does not match, or the body does not decode.
    #[error("state file {0} is damaged ({1}): starting with no flows")]
    Damaged(PathBuf, &'static str),
}

/// Encode a table into the file format.
pub fn encode(saved: &Saved) -> Vec<u8> {
    let body = postcard::to_stdvec(saved).expect("encoding plain data into memory cannot fail");
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decode the file format; `path` only names the file in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Saved, Error> {
    let damaged = |why| Error::Damaged(path.to_owned(), why);
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Error::Magic(path.to_owned()));
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    // The version first: another version may lay out the rest otherwise.
    let format = if bytes.len() >= 12 { word(8) } else { FORMAT };
    if format != FORMAT && format != FORMAT_V1 {
        return Err(Error::Version(path.to_owned(), format));
    }
    if bytes.len() < HEADER_LEN {
        return Err(damaged("truncated header"));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let body = &bytes[HEADER_LEN..];
    if len != body.len() as u64 {
        return Err(damaged("its length does not match its header"));
    }
    if crc32fast::hash(body) != word(20) {
        return Err(damaged("checksum mismatch"));
    }
    let undecodable = |_| damaged("the flows do not decode");
    if format == FORMAT_V1 {
        return postcard::from_bytes::<SavedV1>(body)
            .map(Saved::from)
            .map_err(undecodable);
    }
    postcard::from_bytes(body).map_err(undecodable)
}

/// Write `saved` to `path` atomically: whole to `path.tmp`, synced, renamed.
pub fn write(path: &Path, saved: &Saved) -> Result<(), Error> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let bytes = encode(saved);
    let mut f = File::create(&tmp).map_err(io_err)?;
    f.write_all(&bytes).map_err(io_err)?;
    f.sync_all().map_err(io_err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err)?;
    // The rename itself is durable once the directory is synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Read the table at `path`; `Ok(None)` when there is no file (a first start).
pub fn read(path: &Path) -> Result<Option<Saved>, Error> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut bytes = Vec::new();
    f.take(HEADER_LEN as u64 + MAX_BODY)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
    decode(&bytes, path).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Saved {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        Saved {
            saved_at_ms: 1_764_500_000_000,
            writer: "0.1.0".into(),
            exact: true,
            flows: vec![SavedFlow {
                client: a("198.18.1.2:40000"),
                vip: a("198.18.0.1:80"),
                backend: a("198.18.2.3:80"),
                snat: a("198.18.0.1:40000"),
                state: 3,
                seen_reply: true,
                assured: true,
                remaining_ms: 431_999_000,
                packets: [10, 12],
                bytes: [1000, 120_000],
                window: [Window::default(); 2],
                stray_ack: None,
            }],
        }
    }

    #[test]
    fn a_table_comes_back_as_it_was_saved() {
        let s = sample();
        assert_eq!(decode(&encode(&s), Path::new("f")).unwrap(), s);
    }

    #[test]
    fn an_ipv6_flow_comes_back_too() {
        let mut s = sample();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        s.flows.push(SavedFlow {
            client: a("[2001:2:0:1::2]:40000"),
            vip: a("[2001:2::1]:80"),
            backend: a("[2001:2:0:2::3]:80"),
            snat: a("[2001:2::1]:40000"),
            ..s.flows[0].clone()
        });
        assert_eq!(decode(&encode(&s), Path::new("f")).unwrap(), s);
    }

    #[test]
    fn a_file_of_format_1_is_read() {
        // Format 1 as the builds before IPv6 wrote it: the same layout with
        // IPv4 socket addresses (postcard: four address bytes, a varint port).
        let want = sample();
        let f = &want.flows[0];
        let v4 = |s: SocketAddr| match s {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("the sample is IPv4"),
        };
        let body = postcard::to_stdvec(&SavedV1 {
            saved_at_ms: want.saved_at_ms,
            writer: want.writer.clone(),
            exact: want.exact,
            flows: vec![SavedFlowV1 {
                client: v4(f.client),
                vip: v4(f.vip),
                backend: v4(f.backend),
                snat: v4(f.snat),
                state: f.state,
                seen_reply: f.seen_reply,
                assured: f.assured,
                remaining_ms: f.remaining_ms,
                packets: f.packets,
                bytes: f.bytes,
                window: f.window,
                stray_ack: f.stray_ack,
            }],
        })
        .unwrap();
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&FORMAT_V1.to_le_bytes());
        file.extend_from_slice(&(body.len() as u64).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        file.extend_from_slice(&body);
        assert_eq!(decode(&file, Path::new("f")).unwrap(), want);
    }

    #[test]
    fn every_damage_is_refused_with_its_reason() {
        let p = Path::new("f");
        let good = encode(&sample());
        assert!(matches!(decode(b"hello", p), Err(Error::Magic(_))));
        assert!(matches!(decode(&good[..10], p), Err(Error::Damaged(_, _))));
        let mut v3 = good.clone();
        v3[8] = 3;
        assert!(matches!(decode(&v3, p), Err(Error::Version(_, 3))));
        assert!(
            matches!(decode(&v3[..13], p), Err(Error::Version(_, 3))),
            "whatever follows"
        );
        assert!(matches!(
            decode(&good[..good.len() - 1], p),
            Err(Error::Damaged(_, "its length does not match its header"))
        ));
        // Every single flipped bit in the body is caught by the checksum.
        for i in HEADER_LEN..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(decode(&bad, p), Err(Error::Damaged(_, "checksum mismatch"))),
                "byte {i}"
            );
        }
    }

    #[test]
    fn a_write_replaces_the_file_whole_and_a_missing_file_is_a_first_start() {
        let dir = std::env::temp_dir().join(format!("tunlb-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("flows.state");
        assert!(read(&p).unwrap().is_none());
        write(&p, &sample()).unwrap();
        let mut empty = sample();
        empty.flows.clear();
        write(&p, &empty).unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), empty);
        assert!(!dir.join("flows.state.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
