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
            init_logging(args.trace);
            match run(cfg, &args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(msg) => {
                    tracing::error!("{msg}");
                    ExitCode::from(1)
                }
            }
        }
        cli::Command::Iptables(args) => match args.engine_config() {
            Ok(cfg) => emit(&tunlb::iptables::ruleset(&cfg)),
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

fn run(cfg: RunConfig, args: &cli::RunArgs) -> Result<(), String> {
    let packet = cfg.io == IoKind::Packet;
    if !packet {
        preflight::forwarding(args.set_sysctls).map_err(|e| e.to_string())?;
    }
    let addrs = service_addrs(&cfg);
    preflight::not_local(&addrs).map_err(|e| e.to_string())?;
    // The packet datapath's blackhole routes, removed when this returns.
    let mut blackholes = None;
    let mut packet_io = None;

    let spec = TunSpec {
        name: cfg.tun.clone(),
        addr: cfg.tun_addr,
        mtu: cfg.mtu,
    };
    let (io, device): (Arc<dyn PacketIo>, Device) = match cfg.io {
        IoKind::Tun => (
            Arc::new(TunIo::open(&spec).map_err(|e| e.to_string())?),
            Device::tun_crate(&cfg.tun, cfg.threads),
        ),
        IoKind::Vnet => {
            let (dev, opened) =
                MqTun::open(&spec, cfg.threads, cfg.offload).map_err(|e| e.to_string())?;
            let device = Device::new(&cfg.tun, opened.queues, opened.offload, cfg.threads);
            (Arc::new(dev), device)
        }
        IoKind::Packet => {
            let (dev, device, holes) = open_packet(&cfg, &addrs)?;
            blackholes = Some(holes);
            packet_io = Some(dev.clone());
            (dev, device)
        }
    };
    let device = Arc::new(device);
    if cfg.tun_addr.is_some() && !packet {
        preflight::disable_ipv6(&cfg.tun);
    }
    // Once the TUN exists its own addresses are local too: check again.
    preflight::not_local(&addrs).map_err(|e| e.to_string())?;
    if !packet {
        preflight::routed_into(&cfg.tun, &addrs).map_err(|e| e.to_string())?;
    }
    let engine = Arc::new(Engine::new(cfg.engine.clone()).map_err(|e| e.to_string())?);
    let clock = Clock::start();
    if let Some(path) = &cfg.state_file {
        restore_state(&engine, path, &clock);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot install a signal handler: {e}"))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(|e| format!("cannot install a signal handler: {e}"))?;
    // The control socket is a convenience: without it, the datapath still runs.
    let control = Control::bind(&cfg.control)
        .inspect_err(|e| tracing::warn!("no control socket: {e}"))
        .ok();
    if control.is_some() {
        tracing::info!(
            "control socket {} (tunlb flows / tunlb stats)",
            cfg.control.display()
        );
    }
    let metrics = match &cfg.metrics {
        Some(addr) => Some(Metrics::bind(addr).map_err(|e| e.to_string())?),
        None => None,
    };
    if let Some(m) = &metrics {
        if let Ok(a) = m.local_addr() {
            tracing::info!("metrics on http://{a}/metrics");
        }
    }
    // Clients are served on threads of their own, never by the housekeeping
    // loop: none can delay expiry or shutdown. Those threads are not joined.
    let source = Source {
        engine: engine.clone(),
        device: device.clone(),
        clock,
    };
    if let Some(c) = &control {
        if let Err(e) = c.spawn(source.clone(), Limits::DEFAULT, stop.clone()) {
            tracing::warn!("no control socket: cannot start its thread: {e}");
        }
    }
    if let Some(m) = &metrics {
        m.spawn(source, Limits::DEFAULT, stop.clone())
            .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    }
    let health = cfg.health.map(|h| {
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("tunlb-health".into())
            .spawn(move || health::run(e, h, s))
            .expect("spawning the health thread")
    });
    tracing::info!(
        "ready: {} {} ({}, {}), {}; {} thread(s), max {} flows",
        if packet { "packet on" } else { "tun" },
        device.name,
        if packet {
            "blackhole routes added"
        } else if cfg.tun_addr.is_some() {
            "created"
        } else {
            "attached"
        },
        device.describe(),
        engine.runtime().describe(),
        cfg.threads,
        cfg.engine.max_flows
    );
    let notifier = Notifier::from_env();
    notifier.ready(&status_line(&engine));
    let capture = match &cfg.pcap {
        Some(path) => {
            let rec = tunlb::pcap::Recorder::create(path, cfg.pcap_limit)
                .map_err(|e| format!("--pcap {}: cannot create it: {e}", path.display()))?;
            tracing::info!(
                "recording packets before and after NAT in {} (up to {})",
                path.display(),
                cfg.pcap_limit
            );
            Some(rec)
        }
        None => None,
    };
    let opts = Options {
        threads: cfg.threads,
        stats_interval: cfg.stats_interval,
        busy_poll: cfg.busy_poll,
        capture: capture.clone(),
    };
    let mut last_status = clock.now();
    let mut on_tick = |engine: &Engine, now: tunlb::Timestamp| {
        if let Some(c) = &capture {
            c.tick(now);
        }
        if reload.swap(false, Ordering::Relaxed) {
            notifier.reloading();
            reconfigure(engine, args, &cfg);
            notifier.ready(&status_line(engine));
            last_status = now;
        } else if notifier.enabled() && last_status.until(now) >= STATUS_INTERVAL {
            notifier.status(&status_line(engine));
            last_status = now;
        }
    };
    let saver = match (&cfg.state_file, cfg.state_interval) {
        (Some(path), Some(every)) => {
            let (e, p, s) = (engine.clone(), path.clone(), stop.clone());
            let saver = std::thread::Builder::new()
                .name("tunlb-state".into())
                .spawn(move || save_periodically(&e, &p, every, &clock, &s))
                .map_err(|e| format!("cannot start the state-file thread: {e}"))?;
            Some(saver)
        }
        _ => None,
    };
    let result = datapath::run(
        engine.clone(),
        io,
        &opts,
        stop.clone(),
        device.clone(),
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
    let stats = engine.stats();
    tracing::info!("stopped: {stats}");
    if let Some(line) = packet_io.as_ref().and_then(|p| p.describe_drops()) {
        tracing::info!("{line}");
    }
    drop(blackholes);
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
    result.map_err(|e| {
        if packet {
            return format!("the packet datapath on {} failed: {e}; tunlb stops here", device.name);
        }
        format!("the TUN {} failed: {e}; was the device removed? tunlb stops here, start it again once the device is back", cfg.tun)
    })
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

/// The VIP and SNAT addresses, with what each is for.
fn service_addrs(cfg: &RunConfig) -> Vec<(std::net::Ipv4Addr, &'static str)> {
    let mut addrs = Vec::new();
    for s in &cfg.engine.services {
        addrs.push((*s.vip.ip(), "VIP"));
        addrs.extend(s.snat.iter().map(|a| (*a, "SNAT")));
    }
    addrs
}

/// `--io packet`: the sockets, the device as reports show it, and the
/// blackhole routes that keep the kernel from forwarding or answering.
fn open_packet(
    cfg: &RunConfig,
    addrs: &[(std::net::Ipv4Addr, &'static str)],
) -> Result<(Arc<AfPacket>, Device, Blackholes), String> {
    let spec = PacketSpec {
        ifaces: cfg.ifaces.clone(),
        queues: cfg.threads,
        addrs: addrs.iter().map(|a| a.0).collect(),
    };
    let (dev, opened) = AfPacket::open(&spec).map_err(|e| e.to_string())?;
    let holes = Blackholes::install(&spec.addrs).map_err(|e| e.to_string())?;
    let backends: Vec<_> = (cfg.engine.services.iter())
        .flat_map(|s| s.backends.iter().map(|b| *b.addr.ip()))
        .collect();
    dev.warm(&backends);
    let names: Vec<&str> = opened.ifaces.iter().map(|i| i.name.as_str()).collect();
    let device = Device::new(&names.join(","), opened.queues, true, cfg.threads);
    Ok((Arc::new(dev), device, holes))
}

/// SIGHUP: read the flags' configuration file again and swap it in. A bad
/// file is refused and the running configuration stays; settings that need a
/// restart (the device, threads) are reported, not applied.
fn reconfigure(engine: &Engine, args: &cli::RunArgs, running: &RunConfig) {
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
    if running.io == IoKind::Packet && service_addrs(&new) != service_addrs(running) {
        tracing::warn!("reload: with --io packet, new VIP or SNAT addresses are received only after a restart (the socket filter and blackhole routes are set at start)");
    }
    match engine.reconfigure(&new.engine) {
        Ok(()) => {
            tracing::info!(
                "reloaded: {}; {} flows kept",
                engine.runtime().describe(),
                engine.flow_count()
            );
        }
        Err(e) => tracing::error!("reload refused, still running the previous configuration: {e}"),
    }
}
