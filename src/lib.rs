//! tunlb: a userspace TCP NAT load balancer, the iptables recipe without iptables.
//!
//! The classic stateful load balancer is `DNAT` in `PREROUTING` with the
//! `statistic` match, `MASQUERADE` in `POSTROUTING`, and conntrack to carry
//! every later packet of a flow to the same backend. tunlb does the same work
//! on IPv4 packets read from a TUN device.
//!
//! The crate is split the way smoltcp and quinn are: a sans-IO core
//! ([`engine`], [`wire`], [`conntrack`], [`select`], [`nat`], [`checksum`])
//! that takes bytes and a timestamp and returns a verdict, and a thin shell
//! ([`io`], [`datapath`] and the binary) that owns the TUN, the threads and
//! the clock.
//! Arrows point inward only: the engine knows nothing of devices or threads.

// `unsafe` is denied everywhere but the ioctl wrapper `io::sys`, which
// allows it module-wide with a SAFETY comment on each call, and the
// one-call prefetch hint `prefetch_write` in `conntrack::table`.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

mod backend;
pub mod checksum;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod craft;
pub mod datapath;
pub mod engine;
pub mod events;
pub mod health;
pub mod io;
pub mod iptables;
pub mod ladder;
pub mod nat;
pub mod notify;
pub mod pcap;
pub mod preflight;
pub mod select;
mod service;
pub mod state;
mod stats;
#[cfg(test)]
mod testing;
mod time;
pub mod trace;
pub mod wire;

// The modules above that are private are reached through these: what a
// user of the engine names (configuration, verdicts, counters, time).
pub use backend::{Backend, BackendCounters};
pub use engine::{Engine, Family, Verdict};
pub use nat::L4Checksum;
pub use service::{BackendConfig, ConfigError, EngineConfig, Service, ServiceConfig};
pub use stats::{BackendSnapshot, DropReason, Response, Snapshot};
pub use time::Timestamp;
