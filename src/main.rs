//! The `tunlb` program: flags in, a validated configuration out, then the
//! datapath until SIGINT/SIGTERM. Usage errors exit 2 with one line; runtime
//! failures exit 1 with what to do about them.

mod cli;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use tunlb::config::IoKind;
use tunlb::config::RunConfig;
use tunlb::control::{self, Control, Limits, Metrics, Source};
use tunlb::datapath::{self, Clock, Device, Options};
use tunlb::io::mqtun::MqTun;
use tunlb::io::packet::{AfPacket, Blackholes, PacketSpec};
use tunlb::io::tun::{TunIo, TunSpec};
use tunlb::io::PacketIo;
use tunlb::notify::Notifier;
use tunlb::{health, preflight, Engine};

/// How often `STATUS=` is refreshed for systemd (when it listens).
const STATUS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return cli::usage_error(e),
    };
    match cli.command {
        cli::Command::Run(args) => {
            let cfg = match args.config() {
                Ok(c) => c,
                Err(e) => return cli::fail(2, &e),
            };
            init_logging(args.run.trace);
            match run(cfg, &args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(msg) => {
                    tracing::error!("{msg}");
                    ExitCode::from(1)
                }
            }
        }
        cli::Command::Iptables(args) => match tunlb::config::engine_config(&args) {
            Ok((cfg, _)) => emit(&tunlb::iptables::ruleset(&cfg)),
            Err(e) => cli::fail(2, &e),
        },
        cli::Command::Flows(q) => query(&q, "flows"),
        cli::Command::Stats(q) => query(&q, "stats"),
        cli::Command::Events(q) => {
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            match control::follow(&q.path(), q.json, &mut out, &mut err) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => cli::fail(1, &e),
            }
        }
        cli::Command::Ladder(a) => cli::ladder(&a),
        cli::Command::Completions(a) => cli::completions(&a),
        cli::Command::Man(a) => cli::man(&a),
    }
}

fn query(q: &cli::QueryArgs, what: &str) -> ExitCode {
    match control::request(&q.path(), what, q.json) {
        Ok(out) => emit(&out),
        Err(e) => cli::fail(1, &e),
    }
}

/// Write a command's output to stdout. A reader that stops early (`tunlb
/// flows | head`) is not an error: the output is simply not wanted further.
fn emit(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => cli::fail(1, &format!("cannot write the output: {e}")),
    }
}

fn init_logging(trace: bool) {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if trace {
        filter = filter.add_directive(
            format!("{}=debug", tunlb::trace::TARGET)
                .parse()
                .expect("a valid directive"),
        );
    }
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if tunlb::notify::stderr_is_journal() {
        // The journal adds the time; it reads the level from a `<N>` prefix.
        fmt.event_format(JournalFormat).init();
    } else {
        fmt.with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// Log lines for the journal (stderr is `$JOURNAL_STREAM`): a syslog
/// priority prefix (`<6>` for info) and the message, no timestamp.
struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = tunlb::notify::journal_priority(*event.metadata().level());
        write!(writer, "<{priority}>")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// One line for `systemctl status`: flows and backends up.
fn status_line(engine: &Engine) -> String {
    let rt = engine.runtime();
    let backends = rt.services.iter().flat_map(|s| s.backends.iter());
    let (up, all) = backends.fold((0, 0), |(u, a), b| (u + usize::from(b.is_up()), a + 1));
    format!(
        "{} flows, {up}/{all} backends up, {} service(s)",
        engine.flow_count(),
        rt.services.len()
    )
}

/// Why `tunlb run` stopped with a failure (exit 1). Each message says what
/// to do about it.
#[derive(Debug, thiserror::Error)]
enum RunError {
    /// A start-up check failed (forwarding off, an address that is local,
    /// a VIP not routed into the TUN).
    #[error(transparent)]
    Preflight(#[from] preflight::Problem),
    /// The TUN cannot be opened.
    #[error(transparent)]
    Tun(#[from] tunlb::io::tun::TunError),
    /// The packet sockets or their routes cannot be set up.
    #[error(transparent)]
    Packet(#[from] tunlb::io::packet::PacketError),
    /// The engine refuses the configuration.
    #[error(transparent)]
    Engine(#[from] tunlb::ConfigError),
    /// The metrics listener cannot be bound.
    #[error(transparent)]
    Control(#[from] control::Error),
    /// A signal handler or a thread cannot be set up.
    #[error("cannot {what}: {source}")]
    Setup {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// `--nice` (or `nice` in the file) asks for a nice value this process
    /// may not give its threads.
    #[error("--nice {value}: cannot give the packet threads that nice value: {source}; {hint}, or leave --nice (and the file's nice) out: the threads then run at the process's nice value", hint = nice_hint(source))]
    Nice {
        /// The value asked for.
        value: i32,
        /// The cause.
        source: std::io::Error,
    },
    /// The `--pcap` file cannot be created.
    #[error("--pcap {}: cannot create it: {source}", path.display())]
    Pcap {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The device failed while running.
    #[error("the {what} failed: {source}; tunlb stops here{hint}")]
    Datapath {
        /// Which device: "TUN tl0", "packet datapath on c0,br0".
        what: String,
        /// What to do about it, after the stop.
        hint: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// What to do about a refused `--nice`: `EACCES` is the capability (or
/// `RLIMIT_NICE`); anything else (`EPERM`) a policy such as a seccomp
/// filter (systemd's `SystemCallFilter=~@resources`).
fn nice_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::EACCES) {
        "a value below the process's needs CAP_SYS_NICE (or a high enough RLIMIT_NICE): grant it"
    } else {
        "setpriority is refused here (a seccomp filter? under systemd, set Nice= in the unit instead)"
    }
}

/// The device `run` reads and writes, and what it set up for it.
struct Opened {
    io: Arc<dyn PacketIo>,
    device: Arc<Device>,
    /// `--io packet`: the sockets (for their drop counts at exit).
    packet: Option<Arc<AfPacket>>,
    /// `--io packet`: the blackhole routes, extended by a reload that adds
    /// addresses, and held for their `Drop` (which removes them when `run`
    /// returns).
    blackholes: Option<Blackholes>,
}

fn run(cfg: RunConfig, args: &cli::RunArgs) -> Result<(), RunError> {
    let packet = cfg.io == IoKind::Packet;
    // Before anything is set up: a --nice this process may not give is refused.
    let (nice, nice_said) = packet_nice(cfg.nice)?;
    let mut opened = prepare_host(&cfg, args.run.set_sysctls)?;
    let engine = Arc::new(Engine::new(cfg.engine.clone())?);
    let clock = Clock::start();
    if let Some(path) = &cfg.state_file {
        restore_state(&engine, path, &clock);
    }
    let (stop, reload) = signal_flags()?;
    let source = Source {
        engine: engine.clone(),
        device: opened.device.clone(),
        clock,
    };
    let (control, metrics) = serve_queries(&cfg, source, &stop)?;
    let health = spawn_health(&cfg, &engine, &stop)?;
    log_ready(&cfg, &opened, &engine, &nice_said);
    let notifier = Notifier::from_env();
    notifier.ready(&status_line(&engine));
    let capture = open_capture(&cfg)?;
    let opts = Options {
        threads: cfg.threads,
        stats_interval: cfg.stats_interval,
        busy_poll: cfg.busy_poll,
        capture: capture.clone(),
        nice,
    };
    let mut last_status = clock.now();
    let mut on_tick = |engine: &Engine, now: tunlb::Timestamp| {
        if let Some(c) = &capture {
            c.tick(now);
        }
        if reload.swap(false, Ordering::Relaxed) {
            notifier.reloading();
            let host = opened.packet.as_deref().zip(opened.blackholes.as_mut());
            reconfigure(engine, args, &cfg, host);
            notifier.ready(&status_line(engine));
            last_status = now;
        } else if notifier.enabled() && last_status.until(now) >= STATUS_INTERVAL {
            notifier.status(&status_line(engine));
            last_status = now;
        }
    };
    let saver = spawn_saver(&cfg, &engine, &stop, clock)?;
    let result = datapath::run(
        engine.clone(),
        opened.io.clone(),
        &opts,
        stop.clone(),
        opened.device.clone(),
        clock,
        &mut on_tick,
    );
    notifier.stopping();
    if let (Some(rec), Some(path)) = (&capture, &cfg.pcap) {
        let (packets, bytes) = rec.finish();
        tracing::info!(
            "--pcap {}: {packets} packets, {bytes} bytes",
            path.display()
        );
    }
    // The packet threads are done: the table no longer changes. The last
    // periodic save finishes first, so it cannot overwrite this one.
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = saver {
        let _ = t.join();
    }
    if let Some(path) = &cfg.state_file {
        save_state(&engine, path, &clock);
    }
    // The health thread is not joined: a connect in flight may take its whole
    // timeout, and shutdown must stay under a second. It holds no state.
    drop(health);
    drop((control, metrics));
    log_stopped(&engine, &opened);
    result.map_err(|source| RunError::Datapath {
        what: if packet {
            format!("packet datapath on {}", opened.device.name)
        } else {
            format!("TUN {}", cfg.tun)
        },
        hint: if packet {
            ""
        } else {
            "; was the device removed? start it again once the device is back"
        },
        source,
    })
}

/// The host side before the engine exists: forwarding on (for the families
/// served), the service addresses not local, the device opened, and (on
/// the TUN) the addresses routed into it.
fn prepare_host(cfg: &RunConfig, set_sysctls: bool) -> Result<Opened, RunError> {
    let packet = cfg.io == IoKind::Packet;
    if !packet {
        if cfg.engine.services.iter().any(|s| s.vip.is_ipv4()) {
            preflight::forwarding(set_sysctls)?;
        }
        if has_ipv6(cfg) {
            preflight::forwarding6(set_sysctls)?;
        }
    }
    let addrs = service_addrs(cfg);
    preflight::not_local(&addrs)?;
    let opened = open_device(cfg, &addrs)?;
    if !packet {
        if ipv6_turned_off(cfg) {
            preflight::disable_ipv6(&cfg.tun);
        }
        // Once the TUN exists its own addresses are local too: check again.
        preflight::not_local(&addrs)?;
        preflight::routed_into(&cfg.tun, &addrs)?;
    }
    Ok(opened)
}

/// The health-check thread, if checks are enabled.
fn spawn_health(
    cfg: &RunConfig,
    engine: &Arc<Engine>,
    stop: &Arc<AtomicBool>,
) -> Result<Option<std::thread::JoinHandle<()>>, RunError> {
    let Some(h) = cfg.health else {
        return Ok(None);
    };
    let (e, s) = (engine.clone(), stop.clone());
    std::thread::Builder::new()
        .name("tunlb-health".into())
        .spawn(move || health::run(e, h, s))
        .map(Some)
        .map_err(|source| RunError::Setup {
            what: "start the health-check thread",
            source,
        })
}

/// The thread that saves the flow table every `--state-interval`, if a
/// state file is kept and the interval is not 0.
fn spawn_saver(
    cfg: &RunConfig,
    engine: &Arc<Engine>,
    stop: &Arc<AtomicBool>,
    clock: Clock,
) -> Result<Option<std::thread::JoinHandle<()>>, RunError> {
    let (Some(path), Some(every)) = (&cfg.state_file, cfg.state_interval) else {
        return Ok(None);
    };
    let (e, p, s) = (engine.clone(), path.clone(), stop.clone());
    std::thread::Builder::new()
        .name("tunlb-state".into())
        .spawn(move || save_periodically(&e, &p, every, &clock, &s))
        .map(Some)
        .map_err(|source| RunError::Setup {
            what: "start the state-file thread",
            source,
        })
}

/// Open the datapath's device: the TUN (`--io vnet`, `--io tun`) or the
/// packet sockets and their blackhole routes (`--io packet`).
fn open_device(
    cfg: &RunConfig,
    addrs: &[(std::net::IpAddr, &'static str)],
) -> Result<Opened, RunError> {
    let spec = TunSpec {
        name: cfg.tun.clone(),
        addr: cfg.tun_addr,
        mtu: cfg.mtu,
    };
    if cfg.io != IoKind::Packet {
        let addrs: Vec<_> = addrs.iter().map(|a| a.0).collect();
        tunlb::io::packet::remove_stale_for_tun(&addrs);
    }
    let (io, device, packet, blackholes): (Arc<dyn PacketIo>, _, _, _) = match cfg.io {
        IoKind::Tun => (
            Arc::new(TunIo::open(&spec)?),
            Device::tun_crate(&cfg.tun, cfg.threads),
            None,
            None,
        ),
        IoKind::Vnet => {
            let (dev, opened) = MqTun::open(&spec, cfg.threads, cfg.offload)?;
            let device = Device::new(&cfg.tun, opened.queues, opened.offload, cfg.threads);
            (Arc::new(dev), device, None, None)
        }
        IoKind::Packet => {
            let (dev, device, holes) = open_packet(cfg, addrs)?;
            (dev.clone(), device, Some(dev), Some(holes))
        }
    };
    Ok(Opened {
        io,
        device: Arc::new(device),
        packet,
        blackholes,
    })
}

/// SIGINT and SIGTERM set the first flag (stop), SIGHUP the second (reload).
fn signal_flags() -> Result<(Arc<AtomicBool>, Arc<AtomicBool>), RunError> {
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    let error = |source| RunError::Setup {
        what: "install a signal handler",
        source,
    };
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(error)?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone()).map_err(error)?;
    Ok((stop, reload))
}

/// The control socket and the metrics listener, each served on threads of
/// its own (never by the housekeeping loop: no client can delay expiry or
/// shutdown; those threads are not joined). The control socket is a
/// convenience: without it, the datapath still runs; a metrics address that
/// cannot be bound is an error.
fn serve_queries(
    cfg: &RunConfig,
    source: Source,
    stop: &Arc<AtomicBool>,
) -> Result<(Option<Control>, Option<Metrics>), RunError> {
    let control = Control::bind(&cfg.control)
        .inspect_err(|e| tracing::warn!("no control socket: {e}"))
        .ok();
    if let Some(c) = &control {
        tracing::info!(
            "control socket {} (tunlb flows / tunlb stats)",
            cfg.control.display()
        );
        if let Err(e) = c.spawn(source.clone(), Limits::DEFAULT, stop.clone()) {
            tracing::warn!("no control socket: cannot start its thread: {e}");
        }
    }
    let metrics = match &cfg.metrics {
        Some(addr) => Some(Metrics::bind(addr)?),
        None => None,
    };
    if let Some(m) = &metrics {
        if let Ok(a) = m.local_addr() {
            tracing::info!("metrics on http://{a}/metrics");
        }
        m.spawn(source, Limits::DEFAULT, stop.clone())
            .map_err(|source| RunError::Setup {
                what: "start the metrics thread",
                source,
            })?;
    }
    Ok((control, metrics))
}

/// `--pcap FILE`: the recorder, or nothing.
fn open_capture(cfg: &RunConfig) -> Result<Option<Arc<tunlb::pcap::Recorder>>, RunError> {
    let Some(path) = &cfg.pcap else {
        return Ok(None);
    };
    let rec =
        tunlb::pcap::Recorder::create(path, cfg.pcap_limit).map_err(|source| RunError::Pcap {
            path: path.clone(),
            source,
        })?;
    tracing::info!(
        "recording packets before and after NAT in {} (up to {})",
        path.display(),
        cfg.pcap_limit
    );
    Ok(Some(rec))
}

/// The nice value the packet threads will take (`None`: the process's,
/// which they inherit), and how the ready line says it. A `--nice` (or
/// `nice` in the file) this process may not give its threads is an error.
fn packet_nice(nice: Option<i32>) -> Result<(Option<i32>, String), RunError> {
    let Some(value) = nice else {
        let said = datapath::current_thread_nice().map_or_else(
            |_| "the process's nice value".into(),
            |p| format!("nice {p} (the process's)"),
        );
        return Ok((None, said));
    };
    match datapath::try_nice(value) {
        Ok(()) => Ok((Some(value), format!("nice {value}"))),
        Err(source) => Err(RunError::Nice { value, source }),
    }
}

/// The `ready` line that scripts wait for.
fn log_ready(cfg: &RunConfig, opened: &Opened, engine: &Engine, nice: &str) {
    let (packet, device) = (cfg.io == IoKind::Packet, &opened.device);
    let kept_off = opened.blackholes.as_ref().map(Blackholes::describe);
    tracing::info!(
        "ready: {} {} ({}, {}), {}; {} thread(s) at {nice}, max {} flows",
        if packet { "packet on" } else { "tun" },
        device.name,
        if let Some(kept_off) = &kept_off {
            kept_off
        } else if !cfg.tun_addr.is_empty() {
            "created"
        } else {
            "attached"
        },
        device.describe(),
        engine.runtime().describe(),
        cfg.threads,
        cfg.engine.max_flows
    );
}

/// The last lines: the counters, the packet sockets' drops, each backend.
fn log_stopped(engine: &Engine, opened: &Opened) {
    let stats = engine.stats();
    tracing::info!("stopped: {stats}");
    if let Some(line) = opened.packet.as_ref().and_then(|p| p.describe_drops()) {
        tracing::info!("{line}");
    }
    for b in &stats.backends {
        tracing::info!(
            "  {} -> {}: {} connections, {} packets, {} bytes",
            b.service,
            b.backend,
            b.connections,
            b.packets,
            b.bytes
        );
    }
}

/// `--state-file` at start: put the saved flows back, or say why not and
/// start empty.
fn restore_state(engine: &Engine, path: &std::path::Path, clock: &Clock) {
    match tunlb::state::read(path) {
        Ok(None) => tracing::info!(
            "state file {}: none yet, starting with no flows",
            path.display()
        ),
        Ok(Some(saved)) => {
            let age = saved.age();
            let report = engine.restore_flows(&saved.flows, clock.now(), age, saved.exact);
            tracing::info!(
                "state file {}: {report} (saved {:.1} s ago by tunlb {})",
                path.display(),
                age.as_secs_f64(),
                saved.writer
            );
        }
        Err(e) => tracing::error!("{e}"),
    }
}

/// Write the flow table to `--state-file`, logging the outcome.
fn save_state(engine: &Engine, path: &std::path::Path, clock: &Clock) {
    let flows = engine.export_flows(clock.now());
    let n = flows.len();
    match tunlb::state::write(path, &tunlb::state::Saved::now(flows, true)) {
        Ok(()) => tracing::info!("state file {}: {n} flows saved", path.display()),
        Err(e) => tracing::error!("{e}; the flows are not saved"),
    }
}

/// The state-file thread: save every `every` until `stop`, so a crash loses
/// only what changed since the last save.
fn save_periodically(
    engine: &Engine,
    path: &std::path::Path,
    every: std::time::Duration,
    clock: &Clock,
    stop: &AtomicBool,
) {
    const STEP: std::time::Duration = std::time::Duration::from_millis(100);
    let mut waited = std::time::Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(STEP);
        waited += STEP;
        if waited >= every && !stop.load(Ordering::Relaxed) {
            waited = std::time::Duration::ZERO;
            let flows = engine.export_flows(clock.now());
            if let Err(e) = tunlb::state::write(path, &tunlb::state::Saved::now(flows, false)) {
                tracing::warn!("{e}; will try again in {} s", every.as_secs());
            }
        }
    }
}

/// Whether any service is IPv6.
fn has_ipv6(cfg: &RunConfig) -> bool {
    cfg.engine.services.iter().any(|s| s.vip.is_ipv6())
}

/// Whether `run` turns IPv6 off on the TUN: one it creates, when no IPv6
/// prefix and no IPv6 service is configured. The kernel's own IPv6 chatter
/// (router solicitations, MLD) then has no business in the TUN; with IPv6
/// on, the engine counts that chatter quietly (`ipv6_control`).
fn ipv6_turned_off(cfg: &RunConfig) -> bool {
    cfg.io != IoKind::Packet
        && !cfg.tun_addr.is_empty()
        && cfg.tun_addr.v6.is_none()
        && !has_ipv6(cfg)
}

/// The VIP and SNAT addresses of both families, with what each is for.
fn service_addrs(cfg: &RunConfig) -> Vec<(std::net::IpAddr, &'static str)> {
    let mut addrs = Vec::new();
    for s in &cfg.engine.services {
        addrs.push((s.vip.ip(), "VIP"));
        addrs.extend(s.snat.iter().map(|&a| (a, "SNAT")));
    }
    addrs
}

/// `--io packet`, after a reload: route the addresses of `wanted` not
/// received yet to the blackhole and let the sockets receive them, or say
/// that they receive nothing.
fn receive_added(dev: &AfPacket, holes: &mut Blackholes, wanted: &[(std::net::IpAddr, &str)]) {
    let mut new: Vec<std::net::IpAddr> = (wanted.iter())
        .map(|&(a, _)| a)
        .filter(|a| !holes.addrs().contains(a))
        .collect();
    new.sort_unstable();
    new.dedup();
    if new.is_empty() {
        return;
    }
    let list = new
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match holes
        .extend(&new)
        .and_then(|_| dev.receive_for(holes.addrs()))
    {
        Ok(_) => tracing::info!("--io packet: now receiving for {list} (blackhole routes added)"),
        Err(e) => tracing::error!(
            "reload: the new addresses {list} receive nothing: {e}; restart tunlb to serve them"
        ),
    }
}

/// `--io packet`: the sockets, the device as reports show it, and the
/// blackhole routes that keep the kernel from forwarding or answering.
fn open_packet(
    cfg: &RunConfig,
    addrs: &[(std::net::IpAddr, &'static str)],
) -> Result<(Arc<AfPacket>, Device, Blackholes), RunError> {
    let spec = PacketSpec {
        ifaces: cfg.ifaces.clone(),
        queues: cfg.threads,
        addrs: addrs.iter().map(|a| a.0).collect(),
    };
    let (dev, opened) = AfPacket::open(&spec)?;
    let holes = Blackholes::install(&spec.addrs, &opened.ifaces)?;
    let backends: Vec<_> = (cfg.engine.services.iter())
        .flat_map(|s| s.backends.iter())
        .map(|b| b.addr.ip())
        .collect();
    dev.warm(&backends);
    let names: Vec<&str> = opened.ifaces.iter().map(|i| i.name.as_str()).collect();
    let dev = Arc::new(dev);
    let mut device = Device::new(&names.join(","), opened.queues, true, cfg.threads);
    device.drops = Some(dev.clone());
    Ok((dev, device, holes))
}

/// SIGHUP: read the flags' configuration file again and swap it in. A bad
/// file is refused and the running configuration stays; settings that need a
/// restart (the device, threads, their nice value) are reported, not applied. With `--io
/// packet` (`packet`: the sockets and the blackhole routes), new VIP and
/// SNAT addresses are checked as at start (not local, else the reload is
/// refused) and received once the engine serves them: blackhole routes
/// first, then the sockets' filter. Addresses the new file no longer names
/// are still received until exit, for the flows in flight to them.
fn reconfigure(
    engine: &Engine,
    args: &cli::RunArgs,
    running: &RunConfig,
    packet: Option<(&AfPacket, &mut Blackholes)>,
) {
    let new = match args.config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, still running the previous configuration: {e}");
            return;
        }
    };
    if new.tun != running.tun || new.tun_addr != running.tun_addr || new.threads != running.threads
    {
        tracing::warn!("reload: the TUN device and thread count change only on restart");
    }
    if new.nice != running.nice {
        tracing::warn!("reload: the packet threads' nice value changes only on restart");
    }
    if ipv6_turned_off(running) && has_ipv6(&new) {
        tracing::warn!("reload: tunlb turned IPv6 off on TUN {} at start (no IPv6 was configured), so the new IPv6 service(s) receive nothing until a restart", running.tun);
    }
    // A new VIP or SNAT address must not be local, as at start: the kernel
    // would answer for it.
    let old = service_addrs(running);
    let wanted = service_addrs(&new);
    let fresh: Vec<_> = (wanted.iter())
        .filter(|(a, _)| !old.iter().any(|(o, _)| o == a))
        .copied()
        .collect();
    if let Err(e) = preflight::not_local(&fresh) {
        tracing::error!("reload refused, still running the previous configuration: {e}");
        return;
    }
    match engine.reconfigure(&new.engine) {
        Ok(()) => {
            if let Some((dev, holes)) = packet {
                receive_added(dev, holes, &wanted);
            }
            tracing::info!(
                "reloaded: {}; {} flows kept",
                engine.runtime().describe(),
                engine.flow_count()
            );
        }
        Err(e) => tracing::error!("reload refused, still running the previous configuration: {e}"),
    }
}
