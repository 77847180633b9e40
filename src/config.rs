//! The program's configuration: command-line flags and a TOML file, merged
//! into one validated [`RunConfig`].
//!
//! # How flags and the file combine
//! - The file (`--config FILE`) may declare any number of `[[service]]`
//!   tables, plus `tun`, `tun_addr` (one prefix, or a list of one IPv4 and
//!   one IPv6 prefix), `threads`, `max_flows`, `snat_ports`,
//!   `mtu`, `busy_poll`, `nice`, `stats_interval`, `tcp_liberal`, `pickup`,
//!   `hash_key`, `state_file`, `state_interval`, `io`, `ifaces`, `pcap`,
//!   `pcap_limit` and a
//!   `[timeouts]` table (seconds per TCP state).
//! - `--vip` with its `--backend`s, `--mode` and `--snat` on the command line
//!   adds one more service; a VIP declared twice is an error.
//! - Every other flag given on the command line overrides the file's value.
//!
//! ```toml
//! tun = "tl0"
//! tun_addr = "198.18.0.254/24"
//! max_flows = 100000
//!
//! [timeouts]
//! established = 7440   # RFC 5382 REQ-5: at least 2 h 4 min
//!
//! [[service]]
//! vip = "198.18.0.1:80"
//! mode = "random"
//! backends = ["198.18.2.3:80", "198.18.2.4:80,weight=3"]
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use serde::Deserialize;

use crate::conntrack::ports::HashKey;
use crate::conntrack::{TcpState, Timeouts};
use crate::health::HealthConfig;
use crate::select::Mode;
use crate::service::{BackendConfig, ConfigError, EngineConfig, ServiceConfig};

/// `--busy-poll` when not given, in microseconds: what one bulk stream
/// needed on the benchmark machine (see `datapath`'s module docs).
pub const DEFAULT_BUSY_POLL_US: u32 = 50;

/// The `--nice` value the documentation recommends for a balancer that
/// shares its CPUs with the endpoints it serves. The kernel forwards in
/// softirq, ahead of every task; a balancer in userspace that runs at the
/// priority of the endpoints it wakes is preempted by each of them (see
/// `datapath`'s module docs for the measurement, and why it is not the
/// default).
pub const RECOMMENDED_NICE: i32 = -10;

/// The longest `--busy-poll` accepted, in microseconds: past a millisecond a
/// spinning thread costs a core for nothing a sleeping one would miss.
pub const MAX_BUSY_POLL_US: u32 = 1000;

/// How often the flow table is saved to `--state-file` while running, when
/// `--state-interval` is not given: what a crash (`kill -9`) can lose.
pub const DEFAULT_STATE_INTERVAL: Duration = Duration::from_secs(5);

/// A value whose syntax is wrong (a flag's or a file key's), in one line
/// with the syntax expected and an example. `clap` prints it after the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// Not `IP:PORT` (IPv4) or `[IP]:PORT` (IPv6).
    #[error(
        "'{0}' is not an IP address with a port (IP:PORT, e.g. 198.18.0.1:80 or [2001:2::1]:80)"
    )]
    NotSocket(String),
    /// `IP:0`.
    #[error("'{0}' has port 0; give a port from 1 to 65535")]
    PortZero(String),
    /// The address of a backend is wrong (one of the two above).
    #[error("{0}; expected IP:PORT[,weight=N], e.g. 198.18.2.3:80,weight=2")]
    BackendAddr(Box<SyntaxError>),
    /// `weight=` is not a `u32`.
    #[error("weight '{0}' is not a whole number; use weight=N with N from 0 to 4294967295")]
    Weight(String),
    /// A backend option other than `weight=N`.
    #[error("unknown backend option '{0}'; the only option is weight=N")]
    BackendOption(String),
    /// Not `ADDR/PREFIX` with an IPv4 or IPv6 address.
    #[error("'{0}' is not a CIDR; use ADDR/PREFIX, e.g. 198.18.0.254/24 or 2001:2::fe/64")]
    NotCidr(String),
    /// The prefix length of an IPv4 CIDR is not 1 to 30.
    #[error("prefix length in '{0}' must be 1 to 30, so the TUN's prefix holds the VIP")]
    Prefix(String),
    /// The prefix length of an IPv6 CIDR is not 1 to 126.
    #[error("prefix length in '{0}' must be 1 to 126, so the TUN's prefix holds the VIP")]
    Prefix6(String),
    /// Not `LOW-HIGH` with two ports.
    #[error("'{0}' is not a port range; use LOW-HIGH, e.g. 1024-65535")]
    NotPortRange(String),
    /// `LOW-HIGH` with LOW > HIGH or LOW = 0.
    #[error("port range '{0}' is empty or starts at 0; use LOW-HIGH with 1 <= LOW <= HIGH")]
    EmptyPortRange(String),
}

/// Parse `IP:PORT[,weight=N]`, the syntax of `--backend`.
pub fn parse_backend(s: &str) -> Result<BackendConfig, SyntaxError> {
    let mut parts = s.split(',');
    let addr = parts.next().unwrap_or_default();
    let addr = parse_socket(addr).map_err(|e| SyntaxError::BackendAddr(Box::new(e)))?;
    let mut weight = 1;
    for opt in parts {
        match opt.split_once('=') {
            Some(("weight", w)) => {
                weight = w
                    .parse::<u32>()
                    .map_err(|_| SyntaxError::Weight(w.to_owned()))?
            }
            _ => return Err(SyntaxError::BackendOption(opt.to_owned())),
        }
    }
    Ok(BackendConfig { addr, weight })
}

/// Parse `IP:PORT` (IPv4) or `[IP]:PORT` (IPv6) with a non-zero port.
pub fn parse_socket(s: &str) -> Result<SocketAddr, SyntaxError> {
    let a = SocketAddr::from_str(s).map_err(|_| SyntaxError::NotSocket(s.to_owned()))?;
    if a.port() == 0 {
        return Err(SyntaxError::PortZero(s.to_owned()));
    }
    Ok(a)
}

/// Parse `ADDR/PREFIX`, the syntax of `--tun-addr`: an IPv4 address with a
/// prefix of 1 to 30, or an IPv6 address with a prefix of 1 to 126 (so the
/// prefix holds the host address and at least one other).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), SyntaxError> {
    let bad = || SyntaxError::NotCidr(s.to_owned());
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let a = IpAddr::from_str(a).map_err(|_| bad())?;
    let (longest, err): (u8, fn(String) -> SyntaxError) = match a {
        IpAddr::V4(_) => (30, SyntaxError::Prefix),
        IpAddr::V6(_) => (126, SyntaxError::Prefix6),
    };
    let p = p
        .parse::<u8>()
        .ok()
        .filter(|p| (1..=longest).contains(p))
        .ok_or_else(|| err(s.to_owned()))?;
    Ok((a, p))
}

/// The TUN's host-side prefixes (`--tun-addr`, repeatable): at most one
/// IPv4 and one IPv6 prefix. Any prefix means tunlb creates the TUN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunAddrs {
    /// The IPv4 host address and prefix length.
    pub v4: Option<(Ipv4Addr, u8)>,
    /// The IPv6 host address and prefix length.
    pub v6: Option<(Ipv6Addr, u8)>,
}

impl TunAddrs {
    /// Return whether no prefix is given (tunlb attaches to the TUN).
    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }

    /// Sort `prefixes` by family; two of one family are refused, naming
    /// `flag` (`--tun-addr` or `tun_addr`).
    pub fn from_prefixes(flag: &'static str, prefixes: &[(IpAddr, u8)]) -> Result<Self, Error> {
        let mut t = TunAddrs::default();
        for &(a, p) in prefixes {
            let (slot, family) = match a {
                IpAddr::V4(a) => (t.v4.replace((a, p)).map(|(o, q)| (IpAddr::V4(o), q)), 4),
                IpAddr::V6(a) => (t.v6.replace((a, p)).map(|(o, q)| (IpAddr::V6(o), q)), 6),
            };
            if let Some((first, first_prefix)) = slot {
                return Err(Error::TunAddrTwice {
                    flag,
                    family,
                    first: format!("{first}/{first_prefix}"),
                    second: format!("{a}/{p}"),
                });
            }
        }
        Ok(t)
    }
}

/// Return the netmask of a prefix length: 24 gives 255.255.255.0, 0 gives
/// 0.0.0.0, and 32 or more 255.255.255.255.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let host_bits = 32u32.saturating_sub(u32::from(prefix));
    Ipv4Addr::from_bits(u32::MAX.checked_shl(host_bits).unwrap_or(0))
}

/// Parse `LOW-HIGH`, a port range.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), SyntaxError> {
    let bad = || SyntaxError::NotPortRange(s.to_owned());
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b) = (
        a.parse::<u16>().map_err(|_| bad())?,
        b.parse::<u16>().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(SyntaxError::EmptyPortRange(s.to_owned()));
    }
    Ok((a, b))
}

/// One `[[service]]` of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    vip: String,
    backends: Vec<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    snat: Vec<String>,
}

/// The file's `[timeouts]`, in seconds per state.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTimeouts {
    syn_sent: Option<u64>,
    syn_recv: Option<u64>,
    established: Option<u64>,
    fin_wait: Option<u64>,
    close_wait: Option<u64>,
    last_ack: Option<u64>,
    time_wait: Option<u64>,
    close: Option<u64>,
    syn_sent2: Option<u64>,
}

/// The file's `[health]`: enables checks; each value has HAProxy's default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealth {
    interval: Option<f64>,
    rise: Option<u32>,
    fall: Option<u32>,
    timeout: Option<f64>,
}

/// The whole file. After [`engine_config`] has taken the services and
/// limits out, the rest is the file's settings for `run`, which flags override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    tun: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    tun_addr: Vec<String>,
    threads: Option<usize>,
    max_flows: Option<usize>,
    snat_ports: Option<String>,
    mtu: Option<u16>,
    busy_poll: Option<u32>,
    nice: Option<i32>,
    stats_interval: Option<u64>,
    control: Option<PathBuf>,
    metrics: Option<String>,
    health: Option<FileHealth>,
    offload: Option<bool>,
    io: Option<IoKind>,
    ifaces: Option<Vec<String>>,
    tcp_liberal: Option<bool>,
    pickup: Option<bool>,
    hash_key: Option<String>,
    state_file: Option<PathBuf>,
    state_interval: Option<u64>,
    pcap: Option<PathBuf>,
    pcap_limit: Option<String>,
    #[serde(default)]
    timeouts: FileTimeouts,
    #[serde(default)]
    service: Vec<FileService>,
}

/// Read a string or a list of strings (`tun_addr = "198.18.0.254/24"` or
/// `tun_addr = ["198.18.0.254/24", "2001:2::fe/64"]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a CIDR string or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_owned()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element::<String>()? {
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// What the command line says about services and limits: the service flags,
/// shared by `run` and `iptables`. Every field is optional so the file can
/// supply it. Each field's doc is its `--help` line.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct FlagService {
    /// The virtual IP and port clients connect to.
    #[arg(long, value_name = "IP:PORT", value_parser = parse_socket)]
    pub vip: Option<SocketAddr>,
    /// A backend; repeat for each. weight defaults to 1; 0 takes no new connections.
    #[arg(long = "backend", value_name = "IP:PORT[,weight=N]", value_parser = parse_backend)]
    pub backends: Vec<BackendConfig>,
    /// How NEW connections pick a backend.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// MASQUERADE source address (default: the VIP's address); repeat for a pool.
    #[arg(long, value_name = "IP")]
    pub snat: Vec<IpAddr>,
    /// The most flows tracked at once (default 262144).
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000_000))]
    pub max_flows: Option<usize>,
    /// A TOML file with services, timeouts and limits (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// What the command line says about the device and the process: the flags
/// of `run` besides the service's. Each field's doc is its `--help` line.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct FlagRun {
    /// The TUN device: created if --tun-addr is given, else attached (it must exist).
    #[arg(long, value_name = "NAME")]
    pub tun: Option<String>,
    /// Create the TUN with this host-side address; the rest of the prefix routes into it. Repeat for one IPv4 and one IPv6 prefix.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub tun_addr: Vec<(IpAddr, u8)>,
    /// Packet threads sharing the flow table (default 1).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// MTU of a TUN tunlb creates (default 1500).
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u16>,
    /// While bulk data flows, keep reading an empty TUN queue for USECS microseconds before sleeping (default 50; 0: off).
    #[arg(long, value_name = "USECS")]
    pub busy_poll: Option<u32>,
    /// Nice value of the packet threads, -20 to 19 (default: the process's); below the process's needs CAP_SYS_NICE. -10 is worth 1.1-1.35x new connections/s with one instance per host.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub nice: Option<i32>,
    /// Log a one-line counter summary every SECS seconds (default 0: off).
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<u64>,
    /// Print every NAT decision and state change, in netfilter's words.
    #[arg(long)]
    pub trace: bool,
    /// Set net.ipv4.ip_forward=1 (net.ipv6.conf.all.forwarding=1 for IPv6 services) in this namespace instead of refusing to start.
    #[arg(long)]
    pub set_sysctls: bool,
    /// Control socket for `tunlb flows` / `tunlb stats` (default /run/tunlb/TUN.NETNS.sock).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// Check backends by TCP connect (every 2 s, rise 2, fall 3; tune in `[health]` of the config).
    #[arg(
        long,
        help = "Check backends by TCP connect (every 2 s, rise 2, fall 3; tune in [health] of the config)"
    )]
    pub health_check: bool,
    /// Pick up flows already under way (an ACK with no entry), like nf_conntrack_tcp_loose=1; needs --mode maglev.
    #[arg(long)]
    pub pickup: bool,
    /// Secret keying the SNAT address and port choices; instances that must agree (ECMP, restarts) share it.
    #[arg(long, value_name = "SECRET")]
    pub hash_key: Option<String>,
    /// Save the flow table here on SIGTERM/SIGINT (and every --state-interval) and restore it at start.
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// Seconds between saves of the flow table to --state-file while running; 0: only on exit [default: 5].
    #[arg(long, value_name = "SECS")]
    pub state_interval: Option<u64>,
    /// Do not ask the TUN for TSO/checksum offloads (one packet per read and write).
    #[arg(long)]
    pub no_offload: bool,
    /// Let TCP segments outside the sequence window through (RSTs are still checked), like nf_conntrack_tcp_be_liberal=1.
    #[arg(long)]
    pub liberal: bool,
    /// Datapath: vnet (multi-queue TUN, offloads; default), tun (the tun crate, one queue) or packet (packet sockets, no TUN).
    #[arg(long, value_enum)]
    pub io: Option<IoKind>,
    /// With --io packet: an interface to listen and send on; repeat for more (default: every one that is up).
    #[arg(long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,
    /// Record every packet as received (before NAT) and as sent (after NAT) in a pcapng file for Wireshark.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub pcap: Option<PathBuf>,
    /// Stop recording --pcap after N packets, or a size such as 10MiB [default: 64MiB].
    #[arg(long, value_name = "N|SIZE")]
    pub pcap_limit: Option<String>,
}

/// Which TUN implementation the datapath uses. The config file and `--io`
/// spell each the same; `help` is what `--help` says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoKind {
    /// tunlb's multi-queue TUN with virtio-net header and TCP offloads.
    #[default]
    #[value(help = "Multi-queue TUN with virtio-net header and TCP offloads")]
    Vnet,
    /// The `tun` crate: one queue, one packet per read and write.
    #[value(help = "The `tun` crate: one queue, no offloads")]
    Tun,
    /// Packet sockets on the host's interfaces: no TUN (needs CAP_NET_RAW).
    #[value(
        help = "Packet sockets with receive rings on the host's interfaces, no TUN (CAP_NET_RAW)"
    )]
    Packet,
}

/// A complete, validated configuration for `tunlb run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The engine's configuration.
    pub engine: EngineConfig,
    /// The TUN's name.
    pub tun: String,
    /// The TUN's host-side prefixes, when tunlb creates it (empty: attach).
    pub tun_addr: TunAddrs,
    /// Packet threads.
    pub threads: usize,
    /// The TUN's MTU when created.
    pub mtu: u16,
    /// The longest a packet thread keeps reading an empty queue before it
    /// sleeps in `poll` (`net.core.busy_read` for the TUN): while bulk data
    /// flows, and on the packet datapath after any packet for a window
    /// that adapts to the traffic; zero: never.
    pub busy_poll: Duration,
    /// The packet threads' nice value (`--nice`); `None`: the process's,
    /// which they inherit.
    pub nice: Option<i32>,
    /// Period of the one-line counter summary; `None`: off.
    pub stats_interval: Option<Duration>,
    /// The control socket's path.
    pub control: PathBuf,
    /// The metrics listener's address, if any.
    pub metrics: Option<String>,
    /// Health checks, if enabled.
    pub health: Option<HealthConfig>,
    /// The TUN implementation.
    pub io: IoKind,
    /// Whether to ask for TUN offloads (vnet only).
    pub offload: bool,
    /// Where the flow table is saved and restored (`--state-file`).
    pub state_file: Option<PathBuf>,
    /// How often the flow table is saved while running; `None`: only on exit.
    pub state_interval: Option<Duration>,
    /// Interfaces of the packet datapath; empty: every one that is up.
    pub ifaces: Vec<String>,
    /// Where every packet is recorded before and after NAT (`--pcap`).
    pub pcap: Option<PathBuf>,
    /// How much `--pcap` may record.
    pub pcap_limit: crate::pcap::Limit,
}

/// A configuration problem, reported in one line with the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for tunlb.
    #[error("config file {path}: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its position.
        msg: String,
    },
    /// A key of the file has the wrong syntax.
    #[error("{key}: {source}")]
    Value {
        /// The key: `service vip`, `snat_ports`, `tun_addr`.
        key: &'static str,
        /// What is wrong with its value.
        source: SyntaxError,
    },
    /// A backend of a `[[service]]` has the wrong syntax.
    #[error("service {vip}: backend {source}")]
    Backend {
        /// The service.
        vip: SocketAddr,
        /// What is wrong with the backend.
        source: SyntaxError,
    },
    /// A `snat` address of a `[[service]]` is not an IP address.
    #[error("service {vip}: snat '{addr}' is not an IP address")]
    Snat {
        /// The service.
        vip: SocketAddr,
        /// The value given.
        addr: String,
    },
    /// Service flags without `--vip`.
    #[error("--backend, --mode and --snat describe the service of --vip: add --vip ADDR:PORT")]
    NoVip,
    /// `--busy-poll` above [`MAX_BUSY_POLL_US`].
    #[error("--busy-poll {0} is out of range: use 0 (off) to {max} microseconds, e.g. 50", max = MAX_BUSY_POLL_US)]
    BusyPoll(u32),
    /// A number outside its range.
    #[error("{flag} {value} is out of range: use {low} to {high}")]
    OutOfRange {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// The least value accepted.
        low: String,
        /// The greatest value accepted.
        high: String,
    },
    /// `--hash-key ""`.
    #[error("--hash-key is empty: give a secret string shared by the instances that must agree")]
    EmptyHashKey,
    /// `--state-interval` alone.
    #[error("--state-interval without --state-file: give --state-file FILE too")]
    StateIntervalWithoutFile,
    /// `--pcap-limit` alone.
    #[error("--pcap-limit without --pcap: give --pcap FILE too")]
    PcapLimitWithoutPcap,
    /// `--pcap-limit` has the wrong syntax (the message is `pcap`'s).
    #[error("{0}")]
    PcapLimit(String),
    /// A TUN datapath without `--tun`.
    #[error("no TUN device named: give --tun NAME (or tun = \"NAME\" in the config file)")]
    NoTun,
    /// A TUN name the kernel refuses.
    #[error("'{0}' is not a valid interface name: use 1 to 15 characters without '/' or spaces, e.g. tl0")]
    TunName(String),
    /// `--tun-addr` is a VIP or SNAT address, which the kernel would answer
    /// itself.
    #[error("the {role} {host} is the --tun-addr host address, which the kernel answers itself: give the TUN's host side another address of the prefix (e.g. --tun-addr {other}/{prefix})")]
    TunAddrClash {
        /// `VIP` or `SNAT address`.
        role: &'static str,
        /// The `--tun-addr` host address.
        host: IpAddr,
        /// Another host address of the prefix to suggest.
        other: IpAddr,
        /// The prefix length.
        prefix: u8,
    },
    /// Two `--tun-addr` prefixes of one family.
    #[error("{flag} {first} and {second} are both IPv{family}: give at most one IPv4 and one IPv6 prefix")]
    TunAddrTwice {
        /// `--tun-addr` or `tun_addr`.
        flag: &'static str,
        /// 4 or 6.
        family: u8,
        /// The first prefix of that family.
        first: String,
        /// The second one.
        second: String,
    },
    /// An IPv6 `--tun-addr` on a TUN whose MTU is below the IPv6 minimum
    /// (the kernel turns IPv6 off on such a device).
    #[error("--mtu {0} is below 1280, the IPv6 minimum, so the TUN could not hold the IPv6 --tun-addr: use --mtu 1280 or more")]
    MtuBelowIpv6(u16),
    /// A duration of `[health]` out of range.
    #[error("health {name} = {value}: use seconds from 0.05 to 3600")]
    HealthSeconds {
        /// The key.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A count of `[health]` out of range.
    #[error("health {name} = {value}: use 1 to 100")]
    HealthCount {
        /// The key.
        name: &'static str,
        /// The value given.
        value: u32,
    },
    /// The engine refuses the services.
    #[error(transparent)]
    Engine(#[from] ConfigError),
}

fn load(path: &Path) -> Result<File, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| Error::Parse {
        path: path.to_owned(),
        msg: e.message().replace('\n', " ").trim().to_string()
            + &e.span()
                .map(|s| format!(" (at byte {})", s.start))
                .unwrap_or_default(),
    })
}

/// Merge the file named by `--config` (if any) and the flags into an engine
/// configuration, as documented in the module docs.
pub fn engine_config(flags: &FlagService) -> Result<(EngineConfig, Option<File>), Error> {
    let file = match &flags.config {
        Some(p) => Some(load(p)?),
        None => None,
    };
    let mut cfg = EngineConfig::default();
    let mut run = None;
    if let Some(mut f) = file {
        for s in std::mem::take(&mut f.service) {
            let vip = parse_socket(&s.vip).map_err(|source| Error::Value {
                key: "service vip",
                source,
            })?;
            let backends = s
                .backends
                .iter()
                .map(|b| parse_backend(b))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| Error::Backend { vip, source })?;
            let snat = s
                .snat
                .iter()
                .map(|a| {
                    IpAddr::from_str(a).map_err(|_| Error::Snat {
                        vip,
                        addr: a.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            cfg.services.push(ServiceConfig {
                vip,
                backends,
                mode: s.mode,
                snat,
            });
        }
        if let Some(m) = f.max_flows {
            cfg.max_flows = m;
        }
        if let Some(r) = &f.snat_ports {
            let (a, b) = parse_port_range(r).map_err(|source| Error::Value {
                key: "snat_ports",
                source,
            })?;
            cfg.snat_ports = a..=b;
        }
        apply_timeouts(&mut cfg.timeouts, &f.timeouts);
        run = Some(f);
    }
    match flags.vip {
        Some(vip) => cfg.services.push(ServiceConfig {
            vip,
            backends: flags.backends.clone(),
            mode: flags.mode.unwrap_or_default(),
            snat: flags.snat.clone(),
        }),
        None if !flags.backends.is_empty() || flags.mode.is_some() || !flags.snat.is_empty() => {
            return Err(Error::NoVip)
        }
        None => {}
    }
    if let Some(m) = flags.max_flows {
        cfg.max_flows = m;
    }
    cfg.seed = rand::random();
    cfg.validate()?;
    Ok((cfg, run))
}

fn apply_timeouts(t: &mut Timeouts, f: &FileTimeouts) {
    for (state, v) in [
        (TcpState::SynSent, f.syn_sent),
        (TcpState::SynRecv, f.syn_recv),
        (TcpState::Established, f.established),
        (TcpState::FinWait, f.fin_wait),
        (TcpState::CloseWait, f.close_wait),
        (TcpState::LastAck, f.last_ack),
        (TcpState::TimeWait, f.time_wait),
        (TcpState::Close, f.close),
        (TcpState::SynSent2, f.syn_sent2),
    ] {
        if let Some(s) = v {
            t.set(state, Duration::from_secs(s));
        }
    }
}

/// Build the configuration of `tunlb run` from its flags and the file.
pub fn run_config(svc: &FlagService, run: &FlagRun) -> Result<RunConfig, Error> {
    let (mut engine, file) = engine_config(svc)?;
    let file = file.unwrap_or_default();
    conntrack_settings(&mut engine, run, &file)?;
    let (state_file, state_interval) = state_settings(run, &file)?;
    let (pcap, pcap_limit) = pcap_settings(run, &file)?;
    let io = run.io.or(file.io).unwrap_or_default();
    let tun = device_name(io, run, &file)?;
    let threads = in_range(
        "--threads",
        run.threads.or(file.threads).unwrap_or(1),
        1..=64,
    )?;
    let mtu = in_range("--mtu", run.mtu.or(file.mtu).unwrap_or(1500), 576..=65535)?;
    let busy_poll = run
        .busy_poll
        .or(file.busy_poll)
        .unwrap_or(DEFAULT_BUSY_POLL_US);
    if busy_poll > MAX_BUSY_POLL_US {
        return Err(Error::BusyPoll(busy_poll));
    }
    let nice = match run.nice.or(file.nice) {
        Some(n) => Some(in_range("--nice", n, -20..=19)?),
        None => None,
    };
    let tun_addr = tun_addr(run, &file, &engine)?;
    if tun_addr.v6.is_some() && mtu < 1280 {
        return Err(Error::MtuBelowIpv6(mtu));
    }
    let stats = run.stats_interval.or(file.stats_interval).unwrap_or(0);
    let health = match (&file.health, run.health_check) {
        (None, false) => None,
        (h, _) => Some(health_config(h.clone().unwrap_or_default())?),
    };
    Ok(RunConfig {
        engine,
        control: run
            .control
            .clone()
            .or(file.control)
            .unwrap_or_else(|| crate::control::default_path(&tun)),
        tun,
        tun_addr,
        threads,
        mtu,
        busy_poll: Duration::from_micros(u64::from(busy_poll)),
        nice,
        stats_interval: (stats > 0).then(|| Duration::from_secs(stats)),
        metrics: run.metrics.clone().or(file.metrics),
        health,
        io,
        offload: !run.no_offload && file.offload.unwrap_or(true),
        state_file,
        state_interval,
        pcap,
        pcap_limit,
        ifaces: if run.ifaces.is_empty() {
            file.ifaces.unwrap_or_default()
        } else {
            run.ifaces.clone()
        },
    })
}

/// The conntrack switches of `run` (`--liberal`, `--pickup`, `--hash-key`),
/// then the engine's own check again: `--pickup` needs hash selection.
fn conntrack_settings(engine: &mut EngineConfig, run: &FlagRun, file: &File) -> Result<(), Error> {
    engine.tcp_liberal = run.liberal || file.tcp_liberal.unwrap_or(false);
    engine.pickup = run.pickup || file.pickup.unwrap_or(false);
    if let Some(secret) = run.hash_key.as_ref().or(file.hash_key.as_ref()) {
        if secret.is_empty() {
            return Err(Error::EmptyHashKey);
        }
        engine.hash_key = Some(HashKey::from_secret(secret));
    }
    Ok(engine.validate()?)
}

/// `--state-file` and how often it is saved (every 5 s unless told).
fn state_settings(
    run: &FlagRun,
    file: &File,
) -> Result<(Option<PathBuf>, Option<Duration>), Error> {
    let state_file = run.state_file.clone().or(file.state_file.clone());
    let interval = match run.state_interval.or(file.state_interval) {
        Some(_) if state_file.is_none() => return Err(Error::StateIntervalWithoutFile),
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => state_file.as_ref().map(|_| DEFAULT_STATE_INTERVAL),
    };
    Ok((state_file, interval))
}

/// `--pcap` and its limit.
fn pcap_settings(
    run: &FlagRun,
    file: &File,
) -> Result<(Option<PathBuf>, crate::pcap::Limit), Error> {
    let pcap = run.pcap.clone().or(file.pcap.clone());
    let limit = match run.pcap_limit.as_ref().or(file.pcap_limit.as_ref()) {
        Some(_) if pcap.is_none() => return Err(Error::PcapLimitWithoutPcap),
        Some(l) => crate::pcap::Limit::parse(l).map_err(Error::PcapLimit)?,
        None => crate::pcap::Limit::DEFAULT,
    };
    Ok((pcap, limit))
}

/// The TUN's name (`--tun`): required for a TUN datapath; the packet
/// datapath has no TUN, and its name only names the instance.
fn device_name(io: IoKind, run: &FlagRun, file: &File) -> Result<String, Error> {
    let default_tun = (io == IoKind::Packet).then(|| "packet".to_string());
    let tun = run
        .tun
        .clone()
        .or(file.tun.clone())
        .or(default_tun)
        .ok_or(Error::NoTun)?;
    if tun.is_empty() || tun.len() > 15 || tun.contains(['/', ' ']) {
        return Err(Error::TunName(tun));
    }
    Ok(tun)
}

/// `value` of `flag` if it lies in `range`; otherwise the error names the
/// range.
fn in_range<T>(flag: &'static str, value: T, range: RangeInclusive<T>) -> Result<T, Error>
where
    T: PartialOrd + std::fmt::Display,
{
    if range.contains(&value) {
        return Ok(value);
    }
    Err(Error::OutOfRange {
        flag,
        value: value.to_string(),
        low: range.start().to_string(),
        high: range.end().to_string(),
    })
}

/// `--tun-addr` (the flags' prefixes, else the file's), at most one per
/// family, each refused when it is a VIP or SNAT address (the kernel would
/// answer those itself); the error suggests another host address.
fn tun_addr(run: &FlagRun, file: &File, engine: &EngineConfig) -> Result<TunAddrs, Error> {
    let tun_addr = if run.tun_addr.is_empty() {
        let prefixes = (file.tun_addr.iter())
            .map(|c| parse_cidr(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Value {
                key: "tun_addr",
                source,
            })?;
        TunAddrs::from_prefixes("tun_addr", &prefixes)?
    } else {
        TunAddrs::from_prefixes("--tun-addr", &run.tun_addr)?
    };
    let v4 = tun_addr.v4.map(|(host, prefix)| {
        let mask = netmask(prefix).to_bits();
        let other = other_host(host.to_bits(), mask);
        (
            IpAddr::V4(host),
            IpAddr::V4(Ipv4Addr::from_bits(other)),
            prefix,
        )
    });
    let v6 = tun_addr.v6.map(|(host, prefix)| {
        let mask = u128::MAX << (128 - u32::from(prefix));
        let other = other_host(host.to_bits(), mask);
        (
            IpAddr::V6(host),
            IpAddr::V6(Ipv6Addr::from_bits(other)),
            prefix,
        )
    });
    for (host, other, prefix) in v4.into_iter().chain(v6) {
        for s in &engine.services {
            let clash = (s.vip.ip() == host)
                .then_some("VIP")
                .or_else(|| s.snat.contains(&host).then_some("SNAT address"));
            if let Some(role) = clash {
                return Err(Error::TunAddrClash {
                    role,
                    host,
                    other,
                    prefix,
                });
            }
        }
    }
    Ok(tun_addr)
}

/// Another host address of `host`'s prefix (`mask`) to suggest: the last
/// usable one (below the IPv4 broadcast address), or the one before when
/// that is `host` itself.
fn other_host<T>(host: T, mask: T) -> T
where
    T: Copy
        + PartialEq
        + std::ops::BitOr<Output = T>
        + std::ops::Not<Output = T>
        + std::ops::Sub<Output = T>
        + From<u8>,
{
    let last = (host | !mask) - T::from(1);
    if last == host {
        last - T::from(1)
    } else {
        last
    }
}

fn health_config(f: FileHealth) -> Result<HealthConfig, Error> {
    let d = HealthConfig::default();
    let secs = |v: Option<f64>, dflt: Duration, name: &'static str| match v {
        None => Ok(dflt),
        Some(s) if s.is_finite() && (0.05..=3600.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        Some(value) => Err(Error::HealthSeconds { name, value }),
    };
    let count = |v: Option<u32>, dflt: u32, name: &'static str| match v {
        None => Ok(dflt),
        Some(n) if (1..=100).contains(&n) => Ok(n),
        Some(value) => Err(Error::HealthCount { name, value }),
    };
    Ok(HealthConfig {
        interval: secs(f.interval, d.interval, "interval")?,
        timeout: secs(f.timeout, d.timeout, "timeout")?,
        rise: count(f.rise, d.rise, "rise")?,
        fall: count(f.fall, d.fall, "fall")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(vip: &str, backends: &[&str]) -> FlagService {
        FlagService {
            vip: Some(parse_socket(vip).unwrap()),
            backends: backends.iter().map(|b| parse_backend(b).unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn netmasks_of_every_kind_of_prefix() {
        for (prefix, mask) in [
            (0, "0.0.0.0"),
            (1, "128.0.0.0"),
            (15, "255.254.0.0"),
            (24, "255.255.255.0"),
            (30, "255.255.255.252"),
            (32, "255.255.255.255"),
            (33, "255.255.255.255"),
        ] {
            assert_eq!(netmask(prefix).to_string(), mask, "/{prefix}");
        }
    }

    #[test]
    fn backend_syntax() {
        assert_eq!(parse_backend("198.18.2.3:80").unwrap().weight, 1);
        assert_eq!(parse_backend("198.18.2.3:80,weight=3").unwrap().weight, 3);
        assert_eq!(parse_backend("198.18.2.3:80,weight=0").unwrap().weight, 0);
        let e = parse_backend("198.18.2.3").unwrap_err();
        assert_eq!(
            e,
            SyntaxError::BackendAddr(Box::new(SyntaxError::NotSocket("198.18.2.3".into())))
        );
        assert_eq!(
            e.to_string(),
            "'198.18.2.3' is not an IP address with a port (IP:PORT, e.g. 198.18.0.1:80 or [2001:2::1]:80); expected IP:PORT[,weight=N], e.g. 198.18.2.3:80,weight=2"
        );
        let e = parse_backend("198.18.2.3:80,weight=x").unwrap_err();
        assert_eq!(e, SyntaxError::Weight("x".into()));
        assert!(
            e.to_string()
                .starts_with("weight 'x' is not a whole number"),
            "{e}"
        );
        let e = parse_backend("198.18.2.3:80,wieght=2").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown backend option 'wieght=2'; the only option is weight=N"
        );
        let e = parse_backend("198.18.2.3:0").unwrap_err();
        assert_eq!(
            e,
            SyntaxError::BackendAddr(Box::new(SyntaxError::PortZero("198.18.2.3:0".into())))
        );
        assert!(e.to_string().contains("has port 0"), "{e}");
    }

    #[test]
    fn cidr_and_range_syntax() {
        assert_eq!(
            parse_cidr("198.18.0.254/24").unwrap(),
            (Ipv4Addr::new(198, 18, 0, 254).into(), 24)
        );
        assert_eq!(
            parse_cidr("2001:2::fe/64").unwrap(),
            ("2001:2::fe".parse::<IpAddr>().unwrap(), 64)
        );
        assert_eq!(parse_cidr("2001:2::fe/126").unwrap().1, 126);
        assert_eq!(
            parse_cidr("2001:2::fe/127").unwrap_err().to_string(),
            "prefix length in '2001:2::fe/127' must be 1 to 126, so the TUN's prefix holds the VIP"
        );
        assert_eq!(
            parse_cidr("2001:2::fe/0").unwrap_err(),
            SyntaxError::Prefix6("2001:2::fe/0".into())
        );
        assert_eq!(
            parse_cidr("[2001:2::fe]/64").unwrap_err().to_string(),
            "'[2001:2::fe]/64' is not a CIDR; use ADDR/PREFIX, e.g. 198.18.0.254/24 or 2001:2::fe/64"
        );
        for (bad, want) in [
            ("198.18.0.254", SyntaxError::NotCidr("198.18.0.254".into())),
            ("x/24", SyntaxError::NotCidr("x/24".into())),
            (
                "198.18.0.254/32",
                SyntaxError::Prefix("198.18.0.254/32".into()),
            ),
            (
                "198.18.0.254/x",
                SyntaxError::Prefix("198.18.0.254/x".into()),
            ),
        ] {
            assert_eq!(parse_cidr(bad).unwrap_err(), want, "{bad}");
        }
        assert!(parse_cidr("198.18.0.254")
            .unwrap_err()
            .to_string()
            .contains("use ADDR/PREFIX"));
        assert!(parse_cidr("198.18.0.254/32")
            .unwrap_err()
            .to_string()
            .contains("must be 1 to 30"));
        assert_eq!(parse_port_range("1024-2047").unwrap(), (1024, 2047));
        assert_eq!(
            parse_port_range("2047-1024").unwrap_err(),
            SyntaxError::EmptyPortRange("2047-1024".into())
        );
        assert_eq!(
            parse_port_range("0-10").unwrap_err(),
            SyntaxError::EmptyPortRange("0-10".into())
        );
        assert!(parse_port_range("2047-1024")
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        assert_eq!(
            parse_port_range("x").unwrap_err().to_string(),
            "'x' is not a port range; use LOW-HIGH, e.g. 1024-65535"
        );
    }

    #[test]
    fn each_error_is_one_line_naming_the_value_and_the_fix() {
        let vip = parse_socket("198.18.0.1:80").unwrap();
        let cases = [
            (
                Error::Value {
                    key: "snat_ports",
                    source: SyntaxError::NotPortRange("x".into()),
                },
                "snat_ports: 'x' is not a port range; use LOW-HIGH, e.g. 1024-65535",
            ),
            (
                Error::Backend {
                    vip,
                    source: SyntaxError::Weight("-1".into()),
                },
                "service 198.18.0.1:80: backend weight '-1' is not a whole number; use weight=N with N from 0 to 4294967295",
            ),
            (
                Error::Snat {
                    vip,
                    addr: "x".into(),
                },
                "service 198.18.0.1:80: snat 'x' is not an IP address",
            ),
            (
                in_range("--mtu", 100u16, 576..=65535).unwrap_err(),
                "--mtu 100 is out of range: use 576 to 65535",
            ),
            (
                Error::TunName("a b".into()),
                "'a b' is not a valid interface name: use 1 to 15 characters without '/' or spaces, e.g. tl0",
            ),
            (
                Error::HealthSeconds {
                    name: "interval",
                    value: 0.01,
                },
                "health interval = 0.01: use seconds from 0.05 to 3600",
            ),
            (
                Error::HealthCount {
                    name: "rise",
                    value: 0,
                },
                "health rise = 0: use 1 to 100",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
        let health = |f: FileHealth| health_config(f).unwrap_err().to_string();
        assert_eq!(
            health(FileHealth {
                timeout: Some(5000.0),
                ..Default::default()
            }),
            "health timeout = 5000: use seconds from 0.05 to 3600"
        );
        assert_eq!(
            health(FileHealth {
                fall: Some(101),
                ..Default::default()
            }),
            "health fall = 101: use 1 to 100"
        );
    }

    #[test]
    fn flags_alone_make_one_service() {
        let (c, _) = engine_config(&flags(
            "198.18.0.1:80",
            &["198.18.2.3:80", "198.18.2.4:80,weight=3"],
        ))
        .unwrap();
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].mode, Mode::Nth);
        assert_eq!(c.services[0].backends[1].weight, 3);
    }

    #[test]
    fn engine_errors_name_the_fix() {
        let e = engine_config(&flags("198.18.0.1:80", &[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "service 198.18.0.1:80 has no backend: add --backend ADDR:PORT"
        );
        let e = engine_config(&FlagService::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("no service configured"), "{e}");
        let e = engine_config(&flags("198.18.0.1:80", &["198.18.2.3:80", "198.18.2.3:80"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("appears twice"), "{e}");
        let mut f = flags("198.18.0.1:80", &["198.18.2.3:80"]);
        f.max_flows = Some(0);
        assert_eq!(
            engine_config(&f).unwrap_err().to_string(),
            "max-flows must be at least 1"
        );
        let f = FlagService {
            backends: vec![parse_backend("198.18.2.3:80").unwrap()],
            ..Default::default()
        };
        assert!(engine_config(&f)
            .unwrap_err()
            .to_string()
            .contains("add --vip"));
    }

    fn write(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tunlb-test-{}-{name}.toml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn file_and_flags_combine() {
        let p = write(
            "combine",
            r#"
tun = "tl9"
max_flows = 10
threads = 2
[timeouts]
established = 7440
[[service]]
vip = "198.18.0.1:80"
mode = "random"
backends = ["198.18.2.3:80", "198.18.2.4:80,weight=3"]
"#,
        );
        let mut f = flags("198.18.0.1:443", &["198.18.2.3:443"]);
        f.config = Some(p.clone());
        f.max_flows = Some(20);
        let r = run_config(
            &f,
            &FlagRun {
                threads: None,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.tun, "tl9");
        assert_eq!(r.threads, 2);
        assert_eq!(r.engine.max_flows, 20, "the flag overrides the file");
        assert_eq!(
            r.engine.services.len(),
            2,
            "file service, then the flag service"
        );
        assert_eq!(r.engine.services[0].mode, Mode::Random);
        assert_eq!(
            r.engine.timeouts.get(TcpState::Established),
            Duration::from_secs(7440)
        );
        // The same VIP in both is refused.
        let mut f = flags("198.18.0.1:80", &["198.18.2.3:80"]);
        f.config = Some(p.clone());
        assert!(run_config(&f, &FlagRun::default())
            .unwrap_err()
            .to_string()
            .contains("configured twice"));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn file_errors_are_one_line_with_the_place() {
        let p = write(
            "bad",
            "[[service]]\nvip = \"198.18.0.1:80\"\nbackends = [\"x\"]\n",
        );
        let f = FlagService {
            config: Some(p.clone()),
            ..Default::default()
        };
        let e = engine_config(&f).unwrap_err().to_string();
        assert!(e.contains("backend 'x' is not an IP address"), "{e}");
        std::fs::write(&p, "bogus = 1\n").unwrap();
        let e = engine_config(&f).unwrap_err().to_string();
        assert!(
            e.contains("unknown field `bogus`") && !e.contains('\n'),
            "{e}"
        );
        std::fs::remove_file(&p).unwrap();
        let e = engine_config(&f).unwrap_err().to_string();
        assert!(e.starts_with("cannot read config file"), "{e}");
    }

    #[test]
    fn one_tun_prefix_per_family_from_the_flags_or_the_file() {
        let v4 = parse_cidr("198.18.0.254/24").unwrap();
        let v6 = parse_cidr("2001:2::fe/64").unwrap();
        let f = flags("198.18.0.1:80", &["198.18.2.3:80"]);
        let run = |prefixes: &[(IpAddr, u8)]| FlagRun {
            tun: Some("tl0".into()),
            tun_addr: prefixes.to_vec(),
            ..Default::default()
        };
        let r = run_config(&f, &run(&[v6, v4])).unwrap();
        assert_eq!(
            r.tun_addr,
            TunAddrs {
                v4: Some((Ipv4Addr::new(198, 18, 0, 254), 24)),
                v6: Some(("2001:2::fe".parse().unwrap(), 64)),
            }
        );
        assert!(run_config(&f, &run(&[])).unwrap().tun_addr.is_empty());
        let e = run_config(&f, &run(&[v4, parse_cidr("198.18.9.1/24").unwrap()]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--tun-addr 198.18.0.254/24 and 198.18.9.1/24 are both IPv4: give at most one IPv4 and one IPv6 prefix"
        );
        let e = run_config(&f, &run(&[v6, v4, parse_cidr("2001:2::1:fe/112").unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--tun-addr 2001:2::fe/64 and 2001:2::1:fe/112 are both IPv6"),
            "{e}"
        );
        // IPv6 needs an MTU of 1280 or more on the device.
        let e = run_config(
            &f,
            &FlagRun {
                mtu: Some(1000),
                ..run(&[v6])
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--mtu 1000 is below 1280"), "{e}");
        // The file: a string or a list; the flags replace it entirely.
        for (text, want) in [
            ("tun_addr = \"2001:2::fe/64\"\n", (false, true)),
            (
                "tun_addr = [\"198.18.0.254/24\", \"2001:2::fe/64\"]\n",
                (true, true),
            ),
        ] {
            let p = write("tun-addr", text);
            let fc = FlagService {
                config: Some(p.clone()),
                ..f.clone()
            };
            let t = run_config(&fc, &run(&[])).unwrap().tun_addr;
            assert_eq!((t.v4.is_some(), t.v6.is_some()), want, "{text}");
            let t = run_config(&fc, &run(&[v4])).unwrap().tun_addr;
            assert_eq!((t.v4.is_some(), t.v6.is_some()), (true, false), "flags win");
            std::fs::remove_file(p).unwrap();
        }
        let p = write(
            "tun-addr-bad",
            "tun_addr = [\"2001:2::fe/64\", \"2001:2::fd/64\"]\n",
        );
        let fc = FlagService {
            config: Some(p.clone()),
            ..f.clone()
        };
        let e = run_config(&fc, &run(&[])).unwrap_err().to_string();
        assert!(
            e.starts_with("tun_addr 2001:2::fe/64 and 2001:2::fd/64 are both IPv6"),
            "{e}"
        );
        std::fs::write(&p, "tun_addr = 5\n").unwrap();
        let e = run_config(&fc, &run(&[])).unwrap_err().to_string();
        assert!(
            e.contains("expected a CIDR string or a list of them") && !e.contains('\n'),
            "{e}"
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn an_ipv6_service_is_served_by_either_datapath() {
        let f = flags("[2001:2::1]:80", &["[2001:2:0:2::3]:80"]);
        let run = FlagRun {
            io: Some(IoKind::Packet),
            ..Default::default()
        };
        assert!(run_config(&f, &run).is_ok());
        let tun = FlagRun {
            tun: Some("tl0".into()),
            ..Default::default()
        };
        assert!(run_config(&f, &tun).is_ok());
    }

    #[test]
    fn the_ipv6_vip_cannot_be_the_tun_host_address() {
        let r = FlagRun {
            tun: Some("tl0".into()),
            tun_addr: vec![
                parse_cidr("198.18.0.254/24").unwrap(),
                parse_cidr("2001:2::fe/64").unwrap(),
            ],
            ..Default::default()
        };
        let e = run_config(&flags("[2001:2::fe]:80", &["[2001:2:0:2::3]:80"]), &r)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "the VIP 2001:2::fe is the --tun-addr host address, which the kernel answers itself: give the TUN's host side another address of the prefix (e.g. --tun-addr 2001:2::ffff:ffff:ffff:fffe/64)"
        );
        let mut f = flags("[2001:2::1]:80", &["[2001:2:0:2::3]:80"]);
        f.snat = vec!["2001:2::fe".parse().unwrap()];
        let e = run_config(&f, &r).unwrap_err().to_string();
        assert!(
            e.starts_with("the SNAT address 2001:2::fe is the --tun-addr host address"),
            "{e}"
        );
        assert!(run_config(&flags("[2001:2::1]:80", &["[2001:2:0:2::3]:80"]), &r).is_ok());
    }

    #[test]
    fn the_vip_cannot_be_the_tun_host_address() {
        let r = FlagRun {
            tun: Some("tl0".into()),
            tun_addr: vec![(Ipv4Addr::new(198, 18, 0, 254).into(), 24)],
            ..Default::default()
        };
        let e = run_config(&flags("198.18.0.254:80", &["198.18.2.3:80"]), &r)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "the VIP 198.18.0.254 is the --tun-addr host address, which the kernel answers itself: give the TUN's host side another address of the prefix (e.g. --tun-addr 198.18.0.253/24)"
        );
        let mut f = flags("198.18.0.1:80", &["198.18.2.3:80"]);
        f.snat = vec![Ipv4Addr::new(198, 18, 0, 254).into()];
        let e = run_config(&f, &r).unwrap_err().to_string();
        assert!(
            e.starts_with("the SNAT address 198.18.0.254 is the --tun-addr host address"),
            "{e}"
        );
        assert!(run_config(&flags("198.18.0.1:80", &["198.18.2.3:80"]), &r).is_ok());
    }

    #[test]
    fn busy_poll_range_and_device() {
        let f = flags("198.18.0.1:80", &["198.18.2.3:80"]);
        let run = |busy_poll, io| FlagRun {
            tun: Some("tl0".into()),
            busy_poll,
            io,
            ..Default::default()
        };
        let r = run_config(&f, &run(None, None)).unwrap();
        assert_eq!(r.busy_poll, Duration::from_micros(50), "the default");
        let r = run_config(&f, &run(Some(0), None)).unwrap();
        assert_eq!(r.busy_poll, Duration::ZERO, "0 turns it off");
        let e = run_config(&f, &run(Some(MAX_BUSY_POLL_US + 1), None))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--busy-poll 1001 is out of range: use 0 (off) to 1000 microseconds, e.g. 50"
        );
        assert!(run_config(&f, &run(Some(50), Some(IoKind::Tun))).is_ok());
    }

    #[test]
    fn nice_is_the_process_s_unless_given() {
        let f = flags("198.18.0.1:80", &["198.18.2.3:80"]);
        let run = |nice| FlagRun {
            tun: Some("tl0".into()),
            nice,
            ..Default::default()
        };
        assert_eq!(run_config(&f, &run(None)).unwrap().nice, None);
        for n in [-20, RECOMMENDED_NICE, 0, 19] {
            assert_eq!(run_config(&f, &run(Some(n))).unwrap().nice, Some(n));
        }
        let e = run_config(&f, &run(Some(-21))).unwrap_err().to_string();
        assert_eq!(e, "--nice -21 is out of range: use -20 to 19");
        // From the file; the flag overrides it.
        let p = write("nice", "tun = \"tl0\"\nnice = 5\n");
        let mut ff = f.clone();
        ff.config = Some(p.clone());
        assert_eq!(run_config(&ff, &run(None)).unwrap().nice, Some(5));
        assert_eq!(run_config(&ff, &run(Some(-5))).unwrap().nice, Some(-5));
        std::fs::remove_file(p).unwrap();
        // A negative value parses as one, not as a flag.
        let cli = clap::Command::new("t");
        let m = <FlagRun as clap::Args>::augment_args(cli)
            .try_get_matches_from(["t", "--nice", "-10"])
            .unwrap();
        assert_eq!(m.get_one::<i32>("nice"), Some(&-10));
    }

    #[test]
    fn pcap_from_flags_or_file_with_its_limit() {
        use crate::pcap::Limit;
        let f = flags("198.18.0.1:80", &["198.18.2.3:80"]);
        let tun = |pcap: Option<&str>, limit: Option<&str>| FlagRun {
            tun: Some("tl0".into()),
            pcap: pcap.map(PathBuf::from),
            pcap_limit: limit.map(str::to_owned),
            ..Default::default()
        };
        let r = run_config(&f, &tun(None, None)).unwrap();
        assert_eq!(r.pcap, None, "off by default");
        let r = run_config(&f, &tun(Some("/tmp/x.pcapng"), None)).unwrap();
        assert_eq!(
            (r.pcap.as_deref(), r.pcap_limit),
            (Some(Path::new("/tmp/x.pcapng")), Limit::DEFAULT)
        );
        let r = run_config(&f, &tun(Some("/tmp/x.pcapng"), Some("500"))).unwrap();
        assert_eq!(r.pcap_limit, Limit::Packets(500));
        let e = run_config(&f, &tun(None, Some("500")))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--pcap-limit without --pcap: give --pcap FILE too");
        let e = run_config(&f, &tun(Some("/tmp/x.pcapng"), Some("lots")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--pcap-limit \"lots\""), "{e}");
        let dir = std::env::temp_dir().join(format!("tunlb-cfg-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        std::fs::write(&path, "pcap = \"/tmp/f.pcapng\"\npcap_limit = \"1MiB\"\n").unwrap();
        let mut fc = f.clone();
        fc.config = Some(path);
        let r = run_config(&fc, &tun(None, None)).unwrap();
        assert_eq!(
            (r.pcap.as_deref(), r.pcap_limit),
            (Some(Path::new("/tmp/f.pcapng")), Limit::Bytes(1 << 20))
        );
        let r = run_config(&fc, &tun(None, Some("7"))).unwrap();
        assert_eq!(
            r.pcap_limit,
            Limit::Packets(7),
            "the flag overrides the file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn packet_datapath_needs_no_tun_and_takes_interfaces_from_flags_or_file() {
        let f = flags("198.18.0.1:80", &["198.18.2.3:80"]);
        let run = FlagRun {
            io: Some(IoKind::Packet),
            ..Default::default()
        };
        let r = run_config(&f, &run).unwrap();
        assert_eq!((r.io, r.tun.as_str()), (IoKind::Packet, "packet"));
        assert!(r.ifaces.is_empty(), "default: every interface that is up");
        assert!(
            run_config(&f, &FlagRun::default()).is_err(),
            "the TUN datapaths still need --tun"
        );
        let dir = std::env::temp_dir().join(format!("tunlb-cfg-ifaces-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        std::fs::write(&path, "io = \"packet\"\nifaces = [\"c0\", \"br0\"]\n").unwrap();
        let mut fc = f.clone();
        fc.config = Some(path.clone());
        let r = run_config(&fc, &FlagRun::default()).unwrap();
        assert_eq!(
            (r.io, r.ifaces.clone()),
            (IoKind::Packet, vec!["c0".into(), "br0".into()])
        );
        let flagged = FlagRun {
            ifaces: vec!["eth1".into()],
            ..Default::default()
        };
        assert_eq!(
            run_config(&fc, &flagged).unwrap().ifaces,
            ["eth1"],
            "flags win"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn liberal_from_the_flag_or_the_file() {
        let f = flags("198.18.0.1:80", &["198.18.2.3:80"]);
        let run = |liberal| FlagRun {
            tun: Some("tl0".into()),
            liberal,
            ..Default::default()
        };
        assert!(
            !run_config(&f, &run(false)).unwrap().engine.tcp_liberal,
            "off by default"
        );
        assert!(run_config(&f, &run(true)).unwrap().engine.tcp_liberal);
        let p = write("liberal", "tcp_liberal = true\n");
        let from_file = FlagService {
            config: Some(p.clone()),
            ..f
        };
        assert!(
            run_config(&from_file, &run(false))
                .unwrap()
                .engine
                .tcp_liberal
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn restart_settings_from_the_flags_or_the_file_and_their_errors() {
        let mut f = flags("198.18.0.1:80", &["198.18.2.3:80"]);
        f.mode = Some(Mode::Maglev);
        let tun = || FlagRun {
            tun: Some("tl0".into()),
            ..Default::default()
        };
        let r = run_config(&f, &tun()).unwrap();
        assert!(!r.engine.pickup && r.engine.hash_key.is_none() && r.state_file.is_none());
        assert_eq!(r.state_interval, None);
        let p = write(
            "restart",
            "pickup = true\nhash_key = \"k\"\nstate_file = \"/tmp/x.state\"\nstate_interval = 2\n",
        );
        let from_file = FlagService {
            config: Some(p.clone()),
            ..f.clone()
        };
        let r = run_config(&from_file, &tun()).unwrap();
        assert!(r.engine.pickup);
        assert_eq!(r.engine.hash_key, Some(HashKey::from_secret("k")));
        assert_eq!(r.state_file, Some(PathBuf::from("/tmp/x.state")));
        assert_eq!(r.state_interval, Some(Duration::from_secs(2)));
        std::fs::remove_file(p).unwrap();
        // The flags: a state file saves every 5 s unless told otherwise.
        let with = |run: FlagRun| run_config(&f, &run);
        let r = with(FlagRun {
            state_file: Some("/tmp/y".into()),
            ..tun()
        })
        .unwrap();
        assert_eq!(r.state_interval, Some(DEFAULT_STATE_INTERVAL));
        let r = with(FlagRun {
            state_file: Some("/tmp/y".into()),
            state_interval: Some(0),
            ..tun()
        })
        .unwrap();
        assert_eq!(r.state_interval, None, "0: only on exit");
        let e = with(FlagRun {
            state_interval: Some(3),
            ..tun()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--state-file"), "{e}");
        let e = with(FlagRun {
            hash_key: Some(String::new()),
            ..tun()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--hash-key is empty"), "{e}");
        // Pickup with a mode that is not a function of the tuple.
        f.mode = Some(Mode::Nth);
        let e = run_config(
            &f,
            &FlagRun {
                pickup: true,
                ..tun()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--mode maglev"), "{e}");
    }

    #[test]
    fn run_needs_a_tun() {
        let e = run_config(
            &flags("198.18.0.1:80", &["198.18.2.3:80"]),
            &FlagRun::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("give --tun NAME"));
        let r = FlagRun {
            tun: Some("a/b".into()),
            ..Default::default()
        };
        let e = run_config(&flags("198.18.0.1:80", &["198.18.2.3:80"]), &r).unwrap_err();
        assert!(e.to_string().contains("not a valid interface name"));
    }
}
