//! The command line: the fixed contract scripts drive tunlb with.
//!
//! ```text
//! tunlb run --tun tl0 --tun-addr 198.18.0.254/24 --vip 198.18.0.1:80 \
//!           --backend 198.18.2.3:80 --backend 198.18.2.4:80,weight=3 \
//!           [--mode nth|random|wrr|lc|maglev] [--snat 198.18.0.2] [--max-flows N]
//!           [--threads N] [--io vnet|tun] [--config FILE] [...]
//! tunlb run --tun tl0 --tun-addr 198.18.0.254/24 --tun-addr 2001:2::fe/64 \
//!           --vip '[2001:2::1]:80' --backend '[2001:2:0:2::3]:80,weight=2' \
//!           [--snat 2001:2::2] [...]
//! tunlb iptables <same service flags>
//! tunlb flows|stats|events [--tun NAME | --control PATH] [--json]
//! tunlb ladder CAPTURE [--flow N]
//! tunlb completions bash|zsh|fish
//! tunlb man [--out DIR]
//! ```
//!
//! The flags of `run` and `iptables` are defined once, in `config`
//! ([`FlagService`], [`FlagRun`]), and flattened in here; the structs clap
//! fills are the ones `config` merges with the file.
//!
//! The man pages and completion scripts are generated from these same
//! definitions ([`man_pages`], [`completion_script`]); `contrib/man` and
//! `contrib/completions` hold copies made by `scripts/gen-docs.sh`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use tunlb::config::{self, FlagRun, FlagService, RunConfig};

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
    Run(Box<RunArgs>),
    /// Print the equivalent iptables ruleset (correctly cascaded) and exit.
    Iptables(FlagService),
    /// List the flows of a running tunlb, like `conntrack -L`.
    Flows(QueryArgs),
    /// Print the counters of a running tunlb, like `ipvsadm -L -n --stats`.
    Stats(QueryArgs),
    /// Follow the flow events of a running tunlb (NEW, UPDATE, DESTROY), like `conntrack -E`.
    Events(QueryArgs),
    /// Draw one connection of a --pcap capture as a sequence diagram (SVG on stdout); without --flow, list them.
    Ladder(LadderArgs),
    /// Print a shell completion script to stdout.
    Completions(CompletionsArgs),
    /// Print the man page tunlb(1) to stdout, or write every page with --out.
    Man(ManArgs),
}

/// The flags of `ladder`.
#[derive(Debug, Args)]
pub struct LadderArgs {
    /// A capture written by `tunlb run --pcap`.
    #[arg(value_name = "CAPTURE", value_hint = clap::ValueHint::FilePath)]
    pub capture: PathBuf,
    /// The connection to draw, numbered from 1 as the listing shows.
    #[arg(long, value_name = "N")]
    pub flow: Option<usize>,
}

/// Run `tunlb ladder`: the listing, or flow N's SVG, on stdout.
pub fn ladder(args: &LadderArgs) -> ExitCode {
    let file = match std::fs::File::open(&args.capture) {
        Ok(f) => f,
        Err(e) => return fail(1, &format!("cannot open {}: {e}", args.capture.display())),
    };
    let cap = match tunlb::pcap::read(std::io::BufReader::new(file)) {
        Ok(c) => c,
        Err(e) => return fail(1, &format!("{}: {e}", args.capture.display())),
    };
    let flows = tunlb::ladder::flows(&cap);
    match args.flow {
        None => write_stdout(tunlb::ladder::list(&flows).as_bytes()),
        Some(n) if (1..=flows.len()).contains(&n) => {
            write_stdout(tunlb::ladder::svg(&flows[n - 1]).as_bytes())
        }
        Some(n) => fail(
            2,
            &format!(
                "--flow {n}: {} holds {} connection(s); run tunlb ladder {} to list them",
                args.capture.display(),
                flows.len(),
                args.capture.display()
            ),
        ),
    }
}

/// The flags of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: CliShell,
}

/// The shells `completions` writes for, as clap sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CliShell {
    /// Bash (with the bash-completion package).
    Bash,
    /// Zsh (save as `_tunlb` in a directory of `$fpath`).
    Zsh,
    /// Fish (save as `tunlb.fish` in ~/.config/fish/completions).
    Fish,
}

/// The flags of `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write one page per command (tunlb.1, tunlb-run.1, ...) into DIR instead.
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub out: Option<PathBuf>,
}

/// How to reach a running instance.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The instance's control socket (default: derived from --tun).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// The instance's TUN name, to find its default control socket
    /// (default: tl0's, or if there is none, that of the instance on the
    /// packet datapath in this namespace).
    #[arg(long, value_name = "NAME")]
    pub tun: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

impl QueryArgs {
    /// Return the control socket to ask.
    pub fn path(&self) -> PathBuf {
        use tunlb::control::default_path;
        if let Some(c) = &self.control {
            return c.clone();
        }
        if let Some(t) = &self.tun {
            return default_path(t);
        }
        // `tunlb run --io packet` names its socket after the datapath.
        let tl0 = default_path("tl0");
        let packet = default_path("packet");
        if !tl0.exists() && packet.exists() {
            packet
        } else {
            tl0
        }
    }
}

/// The flags of `run`: the service flags, then those of the device and the
/// process, each defined once, in `config`, as the structs it reads.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The service.
    #[command(flatten)]
    pub service: FlagService,
    /// The device and the process.
    #[command(flatten)]
    pub run: FlagRun,
}

impl RunArgs {
    /// Merge with the config file into the configuration of `run`.
    pub fn config(&self) -> Result<RunConfig, config::Error> {
        config::run_config(&self.service, &self.run)
    }
}

/// Return the completion script for `shell`, generated from [`Cli`].
pub fn completion_script(shell: CliShell) -> Vec<u8> {
    use clap_complete::Shell;
    let shell = match shell {
        CliShell::Bash => Shell::Bash,
        CliShell::Zsh => Shell::Zsh,
        CliShell::Fish => Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tunlb", &mut out);
    out
}

/// Return the man pages generated from [`Cli`] as (file name, roff source):
/// `tunlb.1` first, then `tunlb-SUBCOMMAND.1` for every subcommand. The
/// pages carry the crate version and no date, so the output changes only
/// with the CLI.
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    // As clap_mangen::generate_to: `help` is a flag in a man page, not a page.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    push_man_pages(cmd, &mut pages);
    pages
}

/// Render `cmd`'s page, then its subcommands' pages, into `pages`.
fn push_man_pages(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) {
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    // Every page names the program, not the subcommand, as its source.
    let man = clap_mangen::Man::new(cmd).source(concat!("tunlb ", env!("CARGO_PKG_VERSION")));
    let mut roff = Vec::new();
    man.render(&mut roff)
        .expect("rendering into a Vec cannot fail");
    pages.push((man.get_filename(), roff));
    for sub in subs {
        push_man_pages(sub, pages);
    }
}

/// Run `tunlb completions`: the script on stdout.
pub fn completions(args: &CompletionsArgs) -> ExitCode {
    write_stdout(&completion_script(args.shell))
}

/// Run `tunlb man`: `tunlb.1` on stdout, or every page written into `--out`
/// (created if missing; pages already there are replaced).
pub fn man(args: &ManArgs) -> ExitCode {
    let pages = man_pages();
    let Some(dir) = &args.out else {
        return write_stdout(&pages[0].1);
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        return fail(1, &format!("cannot create {}: {e}", dir.display()));
    }
    for (name, roff) in &pages {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, roff) {
            return fail(1, &format!("cannot write {}: {e}", path.display()));
        }
    }
    ExitCode::SUCCESS
}

/// Write `bytes` to stdout. A reader that stops early (`tunlb man | head`)
/// is not an error.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(1, &format!("cannot write to stdout: {e}")),
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
    use tunlb::config::IoKind;
    use tunlb::select::Mode;

    fn err(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).unwrap_err();
        one_line(&e.render().to_string())
    }

    #[test]
    fn mode_and_io_values_parse_to_the_library_s_own_enums() {
        let run = |args: &[&str]| -> RunArgs {
            let mut argv = vec!["tunlb", "run"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Run(r) => *r,
                c => panic!("{c:?}"),
            }
        };
        for (value, mode) in [
            ("nth", Mode::Nth),
            ("random", Mode::Random),
            ("wrr", Mode::Wrr),
            ("lc", Mode::LeastConn),
            ("maglev", Mode::Maglev),
        ] {
            assert_eq!(run(&["--mode", value]).service.mode, Some(mode));
            assert_eq!(mode.name(), value, "the name stats print is the flag's");
        }
        assert_eq!(run(&["--io", "vnet"]).run.io, Some(IoKind::Vnet));
        assert_eq!(run(&["--io", "tun"]).run.io, Some(IoKind::Tun));
        let r = run(&["--io", "packet", "--iface", "c0", "--iface", "br0"]);
        assert_eq!(
            (r.run.io, r.run.ifaces),
            (Some(IoKind::Packet), vec!["c0".into(), "br0".into()])
        );
        assert_eq!(run(&[]).run.io, None);
        assert!(err(&["tunlb", "run", "--mode", "leastconn"]).contains("invalid value"));
        assert!(err(&["tunlb", "run", "--io", "x"]).contains("possible values: vnet, tun, packet"));
    }

    #[test]
    fn bad_flags_give_one_line_naming_the_value() {
        let cases: [(&[&str], &str); 5] = [
            (
                &["tunlb", "run", "--vip", "nonsense"],
                "'nonsense' is not an IP address with a port",
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

    /// The names of the subcommands, as clap lists them (without `help`).
    fn subcommands() -> Vec<String> {
        Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect()
    }

    #[test]
    fn there_is_one_man_page_per_command() {
        let names: Vec<String> = man_pages().into_iter().map(|(n, _)| n).collect();
        let mut want = vec!["tunlb.1".to_string()];
        want.extend(subcommands().iter().map(|s| format!("tunlb-{s}.1")));
        assert_eq!(names, want);
        for s in ["run", "iptables", "flows", "stats", "completions", "man"] {
            assert!(names.contains(&format!("tunlb-{s}.1")), "{names:?}");
        }
    }

    /// Every page documents each long flag of its command in OPTIONS (as
    /// `\fB--flag\fR`, roff's `\-` read as `-`), not only in the synopsis.
    #[test]
    fn each_man_page_documents_every_long_flag() {
        let mut cmd = Cli::command().disable_help_subcommand(true);
        cmd.build();
        let pages = man_pages();
        let mut commands = vec![("tunlb.1".to_string(), &cmd)];
        commands.extend(
            cmd.get_subcommands()
                .map(|c| (format!("tunlb-{}.1", c.get_name()), c)),
        );
        let mut run_flags = 0;
        for (file, c) in commands {
            let (_, roff) = pages.iter().find(|(n, _)| *n == file).expect(&file);
            let text = String::from_utf8(roff.clone()).unwrap().replace("\\-", "-");
            assert!(text.starts_with(".ie") && text.contains("\n.TH "), "{file}");
            let options = text
                .split_once("\n.SH OPTIONS\n")
                .unwrap_or_else(|| panic!("{file}: no OPTIONS"))
                .1;
            for arg in c.get_arguments().filter(|a| !a.is_hide_set()) {
                let Some(long) = arg.get_long() else { continue };
                assert!(
                    options.contains(&format!("\\fB--{long}\\fR")),
                    "{file} does not document --{long}"
                );
                if file == "tunlb-run.1" {
                    run_flags += 1;
                }
            }
        }
        // run's own flags plus the service flags, --help and --version.
        assert!(run_flags >= 22, "{run_flags} flags of run walked");
    }

    #[test]
    fn each_completion_script_offers_every_subcommand() {
        for shell in [CliShell::Bash, CliShell::Zsh, CliShell::Fish] {
            let script = String::from_utf8(completion_script(shell)).unwrap();
            assert!(script.len() > 1000, "{shell:?}: {} bytes", script.len());
            for sub in subcommands() {
                // How each generator spells "this word is a subcommand".
                let needle = match shell {
                    CliShell::Bash => format!("tunlb,{sub})"),
                    CliShell::Zsh => format!("\n'{sub}:"),
                    CliShell::Fish => format!("-a \"{sub}\""),
                };
                assert!(script.contains(&needle), "{shell:?} lacks {sub}");
            }
        }
    }

    #[test]
    fn completions_and_man_parse() {
        let c = Cli::try_parse_from(["tunlb", "completions", "zsh"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Completions(CompletionsArgs {
                shell: CliShell::Zsh
            })
        ));
        let c = Cli::try_parse_from(["tunlb", "man", "--out", "d"]).unwrap();
        let Command::Man(m) = c.command else {
            panic!("man")
        };
        assert_eq!(m.out, Some(PathBuf::from("d")));
        let m = err(&["tunlb", "completions", "nosuchshell"]);
        assert!(
            m.contains("invalid value 'nosuchshell'") && m.contains("bash, zsh, fish"),
            "{m}"
        );
        assert!(!m.contains('\n'), "{m}");
    }

    #[test]
    fn the_ipv6_contract_parses() {
        let c = Cli::try_parse_from([
            "tunlb",
            "run",
            "--tun",
            "tl0",
            "--tun-addr",
            "198.18.0.254/24",
            "--tun-addr",
            "2001:2::fe/64",
            "--vip",
            "[2001:2::1]:80",
            "--backend",
            "[2001:2:0:2::3]:80,weight=2",
            "--snat",
            "2001:2::2",
        ])
        .unwrap();
        let Command::Run(r) = c.command else {
            panic!("run")
        };
        let cfg = r.config().unwrap();
        assert_eq!(
            cfg.tun_addr.v6,
            Some(("2001:2::fe".parse().unwrap(), 64)),
            "{:?}",
            cfg.tun_addr
        );
        assert!(cfg.tun_addr.v4.is_some());
        let s = &cfg.engine.services[0];
        assert_eq!(s.vip, "[2001:2::1]:80".parse().unwrap());
        assert_eq!(s.backends[0].weight, 2);
        assert_eq!(
            s.snat,
            vec!["2001:2::2".parse::<std::net::IpAddr>().unwrap()]
        );
        // A prefix length an IPv6 TUN cannot use: one line naming the flag.
        let m = err(&["tunlb", "run", "--tun-addr", "2001:2::fe/128"]);
        assert!(
            m.contains("'--tun-addr <CIDR>'")
                && m.contains("must be 1 to 126")
                && !m.contains('\n'),
            "{m}"
        );
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
            vec![std::net::Ipv4Addr::new(198, 18, 0, 2)]
        );
    }
}
