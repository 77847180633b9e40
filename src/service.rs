//! Services and backends: what the engine balances, validated once.
//!
//! A service is one `VIP:port` (the `-d VIP --dport port` of a DNAT rule) with
//! its backends, its selection mode and its MASQUERADE pool. [`EngineConfig`]
//! is the plain data the CLI and the config file produce; [`EngineConfig::validate`]
//! refuses anything the engine could not honour, with a message that names the
//! problem and the fix.
//!
//! A service is of one family: its VIP, its backends and its MASQUERADE
//! addresses are all IPv4 or all IPv6 (NAT66 as ip6tables does it; NAT46
//! and NAT64 are another job). One engine serves services of both families.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::backend::Backend;
use crate::conntrack::ports::HashKey;
use crate::conntrack::tuple::IpAddress;
use crate::conntrack::Timeouts;
use crate::select::{self, Mode, Selector};

/// One backend: where DNAT sends a connection, and its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    /// The backend's address and port.
    pub addr: SocketAddr,
    /// Relative weight; 0 takes no new connections (drained).
    pub weight: u32,
}

/// One service: a VIP:port, its backends and how to pick one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The virtual address and port clients connect to.
    pub vip: SocketAddr,
    /// The backends, in order (nth walks them in this order).
    pub backends: Vec<BackendConfig>,
    /// The selection mode.
    pub mode: Mode,
    /// MASQUERADE source addresses; empty means the VIP's own address.
    pub snat: Vec<IpAddr>,
}

/// Everything the engine needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// The services.
    pub services: Vec<ServiceConfig>,
    /// Per-state TCP timeouts.
    pub timeouts: Timeouts,
    /// The most flows tracked at once.
    pub max_flows: usize,
    /// The range MASQUERADE searches when the client's port is taken.
    pub snat_ports: RangeInclusive<u16>,
    /// Seed for random selection and the port-search offset.
    pub seed: u64,
    /// Verify IPv4 and TCP checksums of incoming packets (as conntrack does
    /// with `nf_conntrack_checksum=1`).
    pub verify_checksums: bool,
    /// Let segments outside the sequence window through (but RSTs), as
    /// `nf_conntrack_tcp_be_liberal=1` does: for networks where the window
    /// check misfires (asymmetric paths, broken middleboxes).
    pub tcp_liberal: bool,
    /// Fix the flow table's hash keys (tests that must grow the same way on
    /// every run); `None`, the default, draws them at random per process, as
    /// keys of tuples that come from the network must be.
    pub hash_seed: Option<u64>,
    /// Pick up mid-stream flows (`nf_conntrack_tcp_loose=1`): an ORIGINAL
    /// ACK of an unknown flow to a service creates its entry, translated as
    /// its SYN would have been. Needs every service's selection to be a
    /// function of the tuple ([`Mode::is_function_of_tuple`]).
    pub pickup: bool,
    /// The key of the SNAT address and port choices (`--hash-key`): the same
    /// on every instance that must agree; `None` derives one from the seed.
    pub hash_key: Option<HashKey>,
}

impl ServiceConfig {
    /// The service at `vip` over `backends`, weight 1 each, mode nth,
    /// MASQUERADE to the VIP's address: what tests, benches and examples
    /// start from (set the other fields on the result).
    pub fn new<B: Into<SocketAddr>>(
        vip: impl Into<SocketAddr>,
        backends: impl IntoIterator<Item = B>,
    ) -> Self {
        ServiceConfig {
            vip: vip.into(),
            backends: backends
                .into_iter()
                .map(|b| BackendConfig {
                    addr: b.into(),
                    weight: 1,
                })
                .collect(),
            mode: Mode::default(),
            snat: Vec::new(),
        }
    }
}

impl EngineConfig {
    /// The defaults with one service.
    pub fn one(service: ServiceConfig) -> Self {
        EngineConfig {
            services: vec![service],
            ..Default::default()
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            services: Vec::new(),
            timeouts: Timeouts::default(),
            max_flows: 262_144,
            snat_ports: 1024..=65535,
            seed: 0,
            verify_checksums: true,
            tcp_liberal: false,
            hash_seed: None,
            pickup: false,
            hash_key: None,
        }
    }
}

/// A configuration the engine refuses. Each message names the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No service at all.
    #[error("no service configured: give --vip ADDR:PORT and at least one --backend ADDR:PORT")]
    NoServices,
    /// A service without backends.
    #[error("service {0} has no backend: add --backend ADDR:PORT")]
    NoBackends(SocketAddr),
    /// Two services with the same VIP:port.
    #[error("service {0} is configured twice: give each --vip once")]
    DuplicateService(SocketAddr),
    /// A backend listed twice in one service.
    #[error("backend {1} appears twice in service {0}: list it once and use weight=N")]
    DuplicateBackend(SocketAddr, SocketAddr),
    /// Port 0 or address 0.0.0.0 (or `::`) somewhere.
    #[error("{0} is not a usable address: use a real IP address and a port from 1 to 65535")]
    Unspecified(SocketAddr),
    /// A service whose backends or MASQUERADE addresses are of another
    /// family than its VIP.
    #[error(
        "service {vip} is IPv{vip_family} but its {flag} {addr} is IPv{other}: give every \
         --backend and --snat of a service in the VIP's family (NAT46/64 is not supported)",
        vip_family = if vip.is_ipv4() { 4 } else { 6 },
        other = if addr.is_ipv4() { 4 } else { 6 }
    )]
    MixedFamilies {
        /// The service.
        vip: SocketAddr,
        /// The flag that names the other address: `--backend` or `--snat`.
        flag: &'static str,
        /// The address of the other family.
        addr: IpAddr,
    },
    /// `max_flows` of 0.
    #[error("max-flows must be at least 1")]
    ZeroMaxFlows,
    /// An empty port range.
    #[error("snat port range {0}-{1} is empty: give LOW-HIGH with LOW <= HIGH")]
    EmptyPortRange(u16, u16),
    /// A backend equal to the VIP would loop packets back into tunlb.
    #[error("backend {0} is the service address itself: backends must be other hosts")]
    BackendIsVip(SocketAddr),
    /// `--pickup` with a selection that depends on order or chance.
    #[error(
        "--pickup needs a backend choice that is a function of the connection, but service {0} \
         uses --mode {1}: use --mode maglev (nth, random, wrr and lc depend on order, \
         chance or load, so a picked-up flow would land on another backend)"
    )]
    PickupNeedsHash(SocketAddr, &'static str),
}

impl EngineConfig {
    /// Check the configuration; the engine relies on it being valid.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.services.is_empty() {
            return Err(ConfigError::NoServices);
        }
        if self.max_flows == 0 {
            return Err(ConfigError::ZeroMaxFlows);
        }
        if self.snat_ports.is_empty() {
            return Err(ConfigError::EmptyPortRange(
                *self.snat_ports.start(),
                *self.snat_ports.end(),
            ));
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.vip.ip().is_unspecified() || s.vip.port() == 0 {
                return Err(ConfigError::Unspecified(s.vip));
            }
            if self.services[..i].iter().any(|o| o.vip == s.vip) {
                return Err(ConfigError::DuplicateService(s.vip));
            }
            if s.backends.is_empty() {
                return Err(ConfigError::NoBackends(s.vip));
            }
            for (j, b) in s.backends.iter().enumerate() {
                if b.addr.is_ipv4() != s.vip.is_ipv4() {
                    return Err(ConfigError::MixedFamilies {
                        vip: s.vip,
                        flag: "--backend",
                        addr: b.addr.ip(),
                    });
                }
                if b.addr.ip().is_unspecified() || b.addr.port() == 0 {
                    return Err(ConfigError::Unspecified(b.addr));
                }
                if b.addr == s.vip {
                    return Err(ConfigError::BackendIsVip(b.addr));
                }
                if s.backends[..j].iter().any(|o| o.addr == b.addr) {
                    return Err(ConfigError::DuplicateBackend(s.vip, b.addr));
                }
            }
            if let Some(&addr) = s.snat.iter().find(|a| a.is_ipv4() != s.vip.is_ipv4()) {
                return Err(ConfigError::MixedFamilies {
                    vip: s.vip,
                    flag: "--snat",
                    addr,
                });
            }
            if self.pickup && !s.mode.is_function_of_tuple() {
                return Err(ConfigError::PickupNeedsHash(s.vip, s.mode.name()));
            }
        }
        Ok(())
    }
}

/// A service as the engine runs it: configuration, selector, backends.
#[derive(Debug)]
pub struct Service {
    /// The virtual address and port.
    pub vip: SocketAddr,
    /// The backends, in configuration order.
    pub backends: Vec<Arc<Backend>>,
    /// Their weights, same order.
    pub weights: Vec<u32>,
    /// The MASQUERADE pool (never empty), in the VIP's family.
    pub snat: Vec<IpAddr>,
    /// The pool again, typed, when the service is IPv4 (else empty): what
    /// the port allocator reads.
    pub snat_v4: Vec<Ipv4Addr>,
    /// The pool again, typed, when the service is IPv6 (else empty).
    pub snat_v6: Vec<Ipv6Addr>,
    /// The mode the selector implements.
    pub mode: Mode,
    /// Picks a backend for each NEW connection; shared with the previous
    /// version of the service when a reload kept its mode and backends.
    pub selector: Arc<dyn Selector>,
}

impl Service {
    /// Build the runtime form of a validated service, reusing the backends
    /// of `previous` (an older version of the same service) by address.
    ///
    /// When `previous` has the same mode and the same backends with the same
    /// weights in the same order, its selector is kept as it is: a reload
    /// that leaves the service alone continues nth's rotation, random's
    /// sequence and wrr's state instead of starting over. Any change to the
    /// list starts a new selector.
    pub fn new(cfg: &ServiceConfig, seed: u64, previous: Option<&Service>) -> Self {
        let weights: Vec<u32> = cfg.backends.iter().map(|b| b.weight).collect();
        let snat = if cfg.snat.is_empty() {
            vec![cfg.vip.ip()]
        } else {
            cfg.snat.clone()
        };
        let snat_v4 = snat.iter().filter_map(|&a| Ipv4Addr::from_ip(a)).collect();
        let snat_v6 = snat.iter().filter_map(|&a| Ipv6Addr::from_ip(a)).collect();
        let backends = cfg
            .backends
            .iter()
            .map(|b| {
                previous
                    .and_then(|p| p.backends.iter().find(|o| o.addr == b.addr))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Backend::new(b.addr)))
            })
            .collect();
        let unchanged = |p: &&Service| {
            p.mode == cfg.mode
                && p.backends.len() == cfg.backends.len()
                && p.backends
                    .iter()
                    .zip(&p.weights)
                    .zip(&cfg.backends)
                    .all(|((b, &w), c)| b.addr == c.addr && w == c.weight)
        };
        let selector = match previous.filter(unchanged) {
            Some(p) => Arc::clone(&p.selector),
            None => {
                let list: Vec<(SocketAddr, u32)> =
                    cfg.backends.iter().map(|b| (b.addr, b.weight)).collect();
                select::build(cfg.mode, &list, seed)
            }
        };
        Service {
            vip: cfg.vip,
            backends,
            snat,
            snat_v4,
            snat_v6,
            mode: cfg.mode,
            selector,
            weights,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mode: Mode, weights: &[u32]) -> ServiceConfig {
        ServiceConfig {
            vip: SocketAddr::new(Ipv4Addr::new(198, 18, 0, 1).into(), 80),
            backends: (3u8..)
                .zip(weights)
                .map(|(i, &weight)| BackendConfig {
                    addr: SocketAddr::new(Ipv4Addr::new(198, 18, 2, i).into(), 80),
                    weight,
                })
                .collect(),
            mode,
            snat: vec![],
        }
    }

    fn pick(s: &Service) -> usize {
        let client = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
        s.selector.select(&s.backends, client).unwrap()
    }

    #[test]
    fn a_reload_with_the_same_backends_keeps_the_rotation() {
        let c = cfg(Mode::Nth, &[1, 1, 1, 1]);
        let old = Service::new(&c, 1, None);
        assert_eq!([pick(&old), pick(&old)], [0, 1]);
        let new = Service::new(&c, 1, Some(&old));
        assert_eq!([pick(&new), pick(&new), pick(&new)], [2, 3, 0]);
        assert!(Arc::ptr_eq(&old.selector, &new.selector));
        // Random keeps its generator too (another seed would not matter).
        let r = cfg(Mode::Random, &[1, 1, 1, 1]);
        let old = Service::new(&r, 1, None);
        assert!(Arc::ptr_eq(
            &old.selector,
            &Service::new(&r, 2, Some(&old)).selector
        ));
    }

    #[test]
    fn a_reload_that_changes_the_service_starts_a_new_rotation() {
        let old = Service::new(&cfg(Mode::Nth, &[1, 1, 1, 1]), 1, None);
        assert_eq!([pick(&old), pick(&old)], [0, 1]);
        let mut reordered = cfg(Mode::Nth, &[1, 1, 1, 1]);
        reordered.backends.swap(0, 1);
        for changed in [
            cfg(Mode::Nth, &[1, 1, 1, 2]),
            cfg(Mode::Nth, &[1, 1, 1]),
            cfg(Mode::Wrr, &[1, 1, 1, 1]),
            reordered,
        ] {
            let new = Service::new(&changed, 1, Some(&old));
            assert!(!Arc::ptr_eq(&old.selector, &new.selector), "{changed:?}");
            assert_eq!(pick(&new), 0, "{changed:?}");
        }
    }
}
