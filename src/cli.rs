//! The command line: the fixed contract scripts drive tunlb with.
//!
//! ```text
//! tunlb run --tun tl0 --tun-addr 198.18.0.254/24 --vip 198.18.0.1:80 \
//!           --backend 198.18.2.3:80 --backend 198.18.2.4:80,weight=3 \
//!           [--mode nth|random] [--snat 198.18.0.2] [--max-flows N] [--threads N] [--config FILE]
//! tunlb iptables <same service flags>
//! ```

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tunlb::config::{self, FlagRun, FlagService, IoKind, RunConfig};
use tunlb::select::Mode;
use tunlb::{BackendConfig, EngineConfig};

/// A userspace TCP NAT load balancer on a TUN device: conntrack, DNAT and
/// MASQUERADE without iptables.
#[derive(Debug, Parser)]
#[command(name = "tunlb", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Balance TCP connections to a VIP over backends, through a TUN device.
    Run(RunArgs),
    /// Print the equivalent iptables ruleset (correctly cascaded) and exit.
    Iptables(ServiceArgs),
    /// List the flows of a running tunlb, like `conntrack -L`.
    Flows(QueryArgs),
    /// Print the counters of a running tunlb, like `ipvsadm -L -n --stats`.
    Stats(QueryArgs),
}

/// How to reach a running instance.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The instance's control socket (default: derived from --tun).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// The instance's TUN name, to find its default control socket.
    #[arg(long, value_name = "NAME", default_value = "tl0")]
    pub tun: String,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

impl QueryArgs {
    /// Return the control socket to ask.
    pub fn path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| tunlb::control::default_path(&self.tun))
    }
}

/// The service flags, shared by `run` and `iptables`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The virtual IP and port clients connect to.
    #[arg(long, value_name = "IP:PORT", value_parser = config::parse_socket)]
    pub vip: Option<SocketAddrV4>,
    /// A backend; repeat for each. weight defaults to 1; 0 takes no new connections.
    #[arg(long = "backend", value_name = "IP:PORT[,weight=N]", value_parser = config::parse_backend)]
    pub backends: Vec<BackendConfig>,
    /// How NEW connections pick a backend.
    #[arg(long, value_enum)]
    pub mode: Option<CliMode>,
    /// MASQUERADE source address (default: the VIP's address); repeat for a pool.
    #[arg(long, value_name = "IP")]
    pub snat: Vec<Ipv4Addr>,
    /// The most flows tracked at once (default 262144).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_flows: Option<u64>,
    /// A TOML file with services, timeouts and limits (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `--mode`, as clap sees it.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CliMode {
    /// Round robin with one shared counter, like `-m statistic --mode nth`.
    Nth,
    /// One weighted random draw per connection, like `--mode random`.
    Random,
    /// Smooth weighted round robin (IPVS wrr).
    Wrr,
    /// Weighted least connections (IPVS wlc).
    Lc,
    /// Consistent hashing of the client address (Maglev, IPVS mh).
    Maglev,
}

/// The flags of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The service.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The TUN device: created if --tun-addr is given, else attached (it must exist).
    #[arg(long, value_name = "NAME")]
    pub tun: Option<String>,
    /// Create the TUN with this host-side address; the rest of the prefix routes into it.
    #[arg(long, value_name = "CIDR", value_parser = config::parse_cidr)]
    pub tun_addr: Option<(Ipv4Addr, u8)>,
    /// Packet threads sharing the flow table (default 1).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// MTU of a TUN tunlb creates (default 1500).
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u16>,
    /// While bulk data flows, keep reading an empty TUN queue for USECS microseconds before sleeping (default 50; 0: off).
    #[arg(long, value_name = "USECS")]
    pub busy_poll: Option<u32>,
    /// Log a one-line counter summary every SECS seconds (default 0: off).
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<u64>,
    /// Print every NAT decision and state change, in netfilter's words.
    #[arg(long)]
    pub trace: bool,
    /// Set net.ipv4.ip_forward=1 in this namespace instead of refusing to start.
    #[arg(long)]
    pub set_sysctls: bool,
    /// Control socket for `tunlb flows` / `tunlb stats` (default /run/tunlb/TUN.NETNS.sock).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// Check backends by TCP connect (every 2 s, rise 2, fall 3; tune in [health] of the config).
    #[arg(long)]
    pub health_check: bool,
    /// Do not ask the TUN for TSO/checksum offloads (one packet per read and write).
    #[arg(long)]
    pub no_offload: bool,
    /// Let TCP segments outside the sequence window through (RSTs are still checked), like nf_conntrack_tcp_be_liberal=1.
    #[arg(long)]
    pub liberal: bool,
    /// TUN implementation: vnet (multi-queue, offloads; default) or tun (the tun crate, one queue).
    #[arg(long, value_enum)]
    pub io: Option<CliIo>,
}

/// `--io`, as clap sees it.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CliIo {
    /// Multi-queue TUN with virtio-net header and TCP offloads.
    Vnet,
    /// The `tun` crate: one queue, no offloads.
    Tun,
}

impl ServiceArgs {
    fn flags(&self) -> FlagService {
        FlagService {
            vip: self.vip,
            backends: self.backends.clone(),
            mode: self.mode.map(|m| match m {
                CliMode::Nth => Mode::Nth,
                CliMode::Random => Mode::Random,
                CliMode::Wrr => Mode::Wrr,
                CliMode::Lc => Mode::LeastConn,
                CliMode::Maglev => Mode::Maglev,
            }),
            snat: self.snat.clone(),
            max_flows: self.max_flows.map(|n| n as usize),
            config: self.config.clone(),
        }
    }

    /// Merge with the config file into an engine configuration.
    pub fn engine_config(&self) -> Result<EngineConfig, config::Error> {
        config::engine_config(&self.flags()).map(|(c, _)| c)
    }
}

impl RunArgs {
    /// Merge with the config file into the configuration of `run`.
    pub fn config(&self) -> Result<RunConfig, config::Error> {
        let run = FlagRun {
            tun: self.tun.clone(),
            tun_addr: self.tun_addr,
            threads: self.threads,
            mtu: self.mtu,
            stats_interval: self.stats_interval,
            busy_poll: self.busy_poll,
            control: self.control.clone(),
            metrics: self.metrics.clone(),
            health_check: self.health_check,
            no_offload: self.no_offload,
            liberal: self.liberal,
            io: self.io.map(|i| match i {
                CliIo::Vnet => IoKind::Vnet,
                CliIo::Tun => IoKind::Tun,
            }),
        };
        config::run_config(&self.service.flags(), &run)
    }
}

/// Print a clap error: help and version go to stdout and exit 0; a usage
/// error becomes one line on stderr and exit 2.
pub fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    eprintln!("{}", one_line(&e.render().to_string()));
    ExitCode::from(2)
}

/// Fold clap's multi-line message into one line, dropping the usage block.
fn one_line(msg: &str) -> String {
    let mut out = String::new();
    for line in msg.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with("Usage:") || l.starts_with("For more information") {
            continue;
        }
        if l.starts_with("tip:") {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(l);
    }
    out.push_str(" (see 'tunlb --help')");
    out
}

/// Print a configuration error as one line and exit with `code`.
pub fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).unwrap_err();
        one_line(&e.render().to_string())
    }

    #[test]
    fn bad_flags_give_one_line_naming_the_value() {
        let cases: [(&[&str], &str); 5] = [
            (
                &["tunlb", "run", "--vip", "nonsense"],
                "'nonsense' is not an IPv4 address with a port",
            ),
            (
                &["tunlb", "run", "--backend", "198.18.2.3"],
                "expected IP:PORT[,weight=N]",
            ),
            (
                &["tunlb", "run", "--mode", "foo"],
                "invalid value 'foo' for '--mode <MODE>'",
            ),
            (
                &["tunlb", "run", "--max-flows", "0"],
                "0 is not in 1..=100000000",
            ),
            (
                &["tunlb", "run", "--bogus"],
                "unexpected argument '--bogus'",
            ),
        ];
        for (args, want) in cases {
            let m = err(args);
            assert!(m.contains(want), "{args:?}: {m}");
            assert!(!m.contains('\n'), "{m}");
        }
        assert!(err(&["tunlb", "run", "--mode", "foo"])
            .contains("possible values: nth, random, wrr, lc, maglev"));
    }

    #[test]
    fn the_contract_parses() {
        let c = Cli::try_parse_from([
            "tunlb",
            "run",
            "--tun",
            "tl0",
            "--tun-addr",
            "198.18.0.254/24",
            "--vip",
            "198.18.0.1:80",
            "--backend",
            "198.18.2.3:80",
            "--backend",
            "198.18.2.4:80,weight=3",
            "--mode",
            "random",
            "--snat",
            "198.18.0.2",
            "--max-flows",
            "1000",
            "--threads",
            "2",
        ])
        .unwrap();
        let Command::Run(r) = c.command else {
            panic!("run")
        };
        let cfg = r.config().unwrap();
        assert_eq!(cfg.tun, "tl0");
        assert_eq!(cfg.threads, 2);
        assert_eq!(cfg.engine.max_flows, 1000);
        assert_eq!(cfg.engine.services[0].backends[1].weight, 3);
        assert_eq!(cfg.engine.services[0].mode, Mode::Random);
        assert_eq!(
            cfg.engine.services[0].snat,
            vec![Ipv4Addr::new(198, 18, 0, 2)]
        );
    }
}
