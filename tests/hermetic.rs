//! Hermetic integration tests of the NAT engine: real TCP endpoints
//! (smoltcp) talk through `Engine::handle_packet` over an in-memory router, on
//! virtual time. No root, no TUN, no kernel: `cargo test --test hermetic`.
//!
//! - `net`, `wire`, `device`: the harness (hosts, router, impairments);
//!   `family`: the address plan of each family (the harness is written once
//!   for IPv4 and IPv6).
//! - `check`, `craft`: judging packets with smoltcp, building them with pnet.
//! - `cycle`: crafted connections straight through the engine, for floods
//!   and churn (no endpoints).
//! - the other modules are the specification, one behaviour per test.

/// Run a test body generic over the address plan in each family:
/// `twins!(ipv4_test_name, ipv6_test_name, body)` makes two tests, one
/// calling `body::<Ipv4Addr>()`, the other `body::<Ipv6Addr>()`.
macro_rules! twins {
    ($v4:ident, $v6:ident, $body:ident) => {
        #[test]
        fn $v4() {
            $body::<std::net::Ipv4Addr>();
        }

        #[test]
        fn $v6() {
            $body::<std::net::Ipv6Addr>();
        }
    };
}

#[path = "hermetic/check.rs"]
mod check;
#[path = "hermetic/craft.rs"]
mod craft;
#[path = "hermetic/cycle.rs"]
mod cycle;
#[path = "hermetic/device.rs"]
mod device;
#[path = "hermetic/family.rs"]
mod family;
#[path = "hermetic/net.rs"]
mod net;
#[path = "hermetic/wire.rs"]
mod wire;

#[path = "hermetic/balance.rs"]
mod balance;
#[path = "hermetic/churn.rs"]
mod churn;
#[path = "hermetic/exhaust.rs"]
mod exhaust;
#[path = "hermetic/flood.rs"]
mod flood;
#[path = "hermetic/icmp.rs"]
mod icmp;
#[path = "hermetic/invalid.rs"]
mod invalid;
#[path = "hermetic/ipv6.rs"]
mod ipv6;
#[path = "hermetic/lifecycle.rs"]
mod lifecycle;
#[path = "hermetic/limits.rs"]
mod limits;
#[path = "hermetic/malformed.rs"]
mod malformed;
#[path = "hermetic/restart.rs"]
mod restart;
#[path = "hermetic/sequences.rs"]
mod sequences;
#[path = "hermetic/threads.rs"]
mod threads;
#[path = "hermetic/transfer.rs"]
mod transfer;
