//! Active health checks: a TCP connect to each backend, HAProxy style.
//!
//! One thread walks every backend of the running configuration each
//! `interval`: a check passes when a TCP connection to the backend's
//! address completes within `timeout` *and* the engine saw no passive
//! failure since the last check (a SYN the backend answered with RST, or one
//! it never answered before the SYN_SENT timeout). `fall` failures in a row
//! mark a backend down (no new connections; its flows are left alone),
//! `rise` successes mark it up again. Checks come from the load balancer's
//! own namespace, as HAProxy's would. Backends added by a reload are
//! checked from the next round on; a new backend starts up.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::Engine;

/// Health-check parameters (HAProxy's `inter 2s rise 2 fall 3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between two checks of a backend.
    pub interval: Duration,
    /// Successes in a row that bring a down backend up.
    pub rise: u32,
    /// Failures in a row that take an up backend down.
    pub fall: u32,
    /// How long a connect may take.
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            timeout: Duration::from_secs(1),
        }
    }
}

/// What the checker remembers of one backend between rounds.
#[derive(Debug, Default, Clone, Copy)]
struct Track {
    /// Consecutive results contrary to the current state.
    streak: u32,
    /// Passive failures counted at the last check.
    passive: u64,
}

/// The outcome of one check, folded into a backend's streak: returns the new
/// up/down state if it changes.
fn fold(track: &mut Track, up: bool, ok: bool, cfg: &HealthConfig) -> Option<bool> {
    if ok == up {
        track.streak = 0;
        return None;
    }
    track.streak += 1;
    let needed = if up { cfg.fall } else { cfg.rise };
    if track.streak >= needed {
        track.streak = 0;
        Some(!up)
    } else {
        None
    }
}

/// Run checks until `stop` is set.
pub fn run(engine: Arc<Engine>, cfg: HealthConfig, stop: Arc<AtomicBool>) {
    let mut tracks: HashMap<(SocketAddr, SocketAddr), Track> = HashMap::new();
    let mut all_down_logged: HashMap<SocketAddr, bool> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        let rt = engine.runtime();
        for svc in &rt.services {
            for b in &svc.backends {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let t = tracks.entry((svc.vip, b.addr)).or_default();
                let passive = b.syn_failures();
                let passive_failed = passive > t.passive;
                t.passive = passive;
                let connected = TcpStream::connect_timeout(&b.addr, cfg.timeout).is_ok();
                let ok = connected && !passive_failed;
                if let Some(up) = fold(t, b.is_up(), ok, &cfg) {
                    b.set_up(up);
                    if up {
                        tracing::info!("backend {} of {} is up", b.addr, svc.vip);
                    } else {
                        let why = if connected {
                            "it refused or ignored SYNs"
                        } else {
                            "connect failed"
                        };
                        tracing::warn!(
                            "backend {} of {} is down ({why}): it takes no new connections",
                            b.addr,
                            svc.vip
                        );
                    }
                }
            }
            let all_down = svc.backends.iter().all(|b| !b.is_up());
            let logged = all_down_logged.entry(svc.vip).or_default();
            if all_down && !*logged {
                tracing::warn!(
                    "every backend of {} is down: new connections get an RST",
                    svc.vip
                );
            }
            *logged = all_down;
        }
        // Sleep out the interval in short steps, to stop promptly.
        while round.elapsed() < cfg.interval && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50).min(cfg.interval));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_and_rise_need_streaks() {
        let cfg = HealthConfig::default();
        let mut t = Track::default();
        assert_eq!(fold(&mut t, true, false, &cfg), None);
        assert_eq!(fold(&mut t, true, false, &cfg), None);
        assert_eq!(
            fold(&mut t, true, true, &cfg),
            None,
            "a success resets the streak"
        );
        assert_eq!(fold(&mut t, true, false, &cfg), None);
        assert_eq!(fold(&mut t, true, false, &cfg), None);
        assert_eq!(
            fold(&mut t, true, false, &cfg),
            Some(false),
            "third failure in a row"
        );
        assert_eq!(fold(&mut t, false, true, &cfg), None);
        assert_eq!(
            fold(&mut t, false, true, &cfg),
            Some(true),
            "second success in a row"
        );
    }
}
