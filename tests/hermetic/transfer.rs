//! Data through the NAT: byte-exact transfers, on a clean and on a lossy
//! wire, in either family (the `_over_ipv6` twins run the same body on
//! 2001:2::/48).

use std::time::Duration;

use tunlb::select::Mode;
use tunlb::DropReason;

use crate::family::{Plan, SockAddr as _};
use crate::net::{self, backend_pattern, pattern, Close, Net, Outcome, Serve, StreamId};
use crate::wire::Leg;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Assert two transfers are identical without printing a megabyte on failure.
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}; first difference at {:?}",
            got.len(),
            want.len(),
            at
        );
    }
}

/// Find the backend end of the connection the client opened from `port`
/// (ports are preserved, so the backend sees `VIP:port`), and its backend.
fn server_end_by_port<A: Plan>(net: &Net<A>, port: u16) -> (usize, &crate::net::Stream<A>) {
    (0..4)
        .find_map(|b| {
            net.accepted(b)
                .find(|s| s.remote.port() == port && s.outcome != Outcome::Aborted)
                .map(|s| (b, s))
        })
        .unwrap_or_else(|| panic!("no backend accepted the connection from port {port}"))
}

/// Check both ends of each client stream: an orderly close and every byte
/// of both directions delivered in order.
fn assert_transfers_complete<A: Plan>(net: &Net<A>, ids: &[StreamId], download: usize) {
    for &id in ids {
        let c = net.stream(id);
        assert_eq!(
            c.outcome,
            Outcome::Done,
            "{}",
            net.report("client end", ids)
        );
        let (b, s) = server_end_by_port(net, c.local.port());
        assert_eq!(
            s.outcome,
            Outcome::Done,
            "{}",
            net.report("backend end", ids)
        );
        assert_eq!(*s.remote.ip(), A::VIP);
        assert_same(
            &format!("download by {}", c.local),
            &c.received,
            &backend_pattern(b, download),
        );
        assert_same(
            &format!("upload from {}", c.local),
            &s.received,
            c.to_send(),
        );
    }
}

/// Run until every client stream and its backend end have ended.
fn finish_both_ends<A: Plan>(net: &mut Net<A>, ids: &[StreamId], limit: Duration) {
    let n = ids.len();
    let ok = net.run_until(limit, |net| {
        let servers: Vec<_> = (0..4).flat_map(|b| net.accepted(b)).collect();
        ids.iter().all(|&i| net.stream(i).outcome != Outcome::Open)
            && servers
                .iter()
                .filter(|s| s.outcome == Outcome::Done)
                .count()
                >= n
            && servers.iter().all(|s| s.outcome != Outcome::Open)
    });
    assert!(ok, "{}", net.report("transfers did not finish", ids));
}

twins!(
    one_mebibyte_each_way_arrives_byte_exact,
    one_mebibyte_each_way_arrives_byte_exact_over_ipv6,
    one_mebibyte
);

fn one_mebibyte<A: Plan>() {
    let mut net = Net::<A>::build(net::config_of::<A>(Mode::Nth, &[1, 1, 1, 1]));
    net.serve(Serve::Stream(MIB));
    let id = net.connect(0, 40000, pattern(1, MIB), Close::AfterSend);
    finish_both_ends(&mut net, &[id], Duration::from_secs(120));
    assert_transfers_complete(&net, &[id], MIB);
    let stats = net.engine.stats();
    assert_eq!(stats.new_flows, 1);
    assert!(
        stats.backends[0].bytes > 2 * MIB as u64,
        "{:?}",
        stats.backends[0]
    );
    assert_eq!(stats.total_dropped(), 0, "{stats}");
    println!("{} 1 MiB each way: {:?}", A::NAME, stats.backends[0]);
}

twins!(
    five_percent_loss_duplication_and_reordering_still_completes_every_transfer,
    five_percent_loss_duplication_and_reordering_still_completes_every_transfer_over_ipv6,
    lossy
);

fn lossy<A: Plan>() {
    let mut net = Net::<A>::build(net::config_of::<A>(Mode::Nth, &[1, 1, 1, 1]));
    net.keep_time_wait = true;
    net.serve(Serve::Stream(64 * KIB));
    net.wire.impair(0.05, 0.05, 0.05);
    let ids: Vec<StreamId> = (0..8)
        .map(|i| {
            net.connect(
                i % 2,
                41000 + i as u16,
                pattern(100 + i as u64, 64 * KIB),
                Close::AfterSend,
            )
        })
        .collect();
    finish_both_ends(&mut net, &ids, Duration::from_secs(900));
    assert_transfers_complete(&net, &ids, 64 * KIB);
    // The impairments really happened, on every kind.
    let w = &net.wire.stats;
    assert!(
        w.lost > 10 && w.duplicated > 10 && w.reordered > 10,
        "{w:?}"
    );
    // Each connection is one flow: duplicated or retransmitted SYNs made no extra flow.
    let stats = net.engine.stats();
    assert_eq!(stats.new_flows, 8, "{stats}");
    for b in &stats.backends {
        assert_eq!(b.connections, 2, "{stats}");
    }
    // Loss, duplication and reordering are not attacks: the window check
    // dropped none of these legitimate segments (retransmissions of data
    // already acknowledged may pass untracked, as in Linux).
    for r in [
        DropReason::OutOfWindow,
        DropReason::RstOutOfWindow,
        DropReason::Ignored,
    ] {
        assert_eq!(stats.dropped(r), 0, "{r}: {stats}");
    }
    println!("{} lossy transfers: {w:?}\n  {stats}", A::NAME);
}

twins!(
    two_clients_with_the_same_source_port_get_distinct_reply_tuples,
    two_clients_with_the_same_source_port_get_distinct_reply_tuples_over_ipv6,
    same_source_port
);

fn same_source_port<A: Plan>() {
    let mut net = Net::<A>::build(net::config_of::<A>(Mode::Nth, &[1]));
    net.serve(Serve::Stream(64 * KIB));
    let a = net.connect(0, 33333, pattern(1, 64 * KIB), Close::AfterSend);
    let b = net.connect(1, 33333, pattern(2, 64 * KIB), Close::AfterSend);
    let ok = net.run_until(Duration::from_secs(60), |net| {
        net.accepted(0)
            .filter(|s| s.outcome == Outcome::Done)
            .count()
            == 2
            && [a, b]
                .iter()
                .all(|&i| net.stream(i).outcome != Outcome::Open)
    });
    assert!(ok, "{}", net.report("transfers did not finish", &[a, b]));

    let flows = net.engine.flows_of::<A>();
    assert_eq!(flows.len(), 2);
    let reply_of = |id: StreamId| {
        let local = net.stream(id).local;
        flows
            .iter()
            .find(|f| A::ep(f.original.src) == local)
            .unwrap()
            .reply
    };
    let (ra, rb) = (reply_of(a), reply_of(b));
    assert_ne!(ra, rb, "reply tuples must differ");
    assert_eq!(A::ep(ra.src), net::backend_of::<A>(0));
    assert_eq!(A::ep(rb.src), net::backend_of::<A>(0));
    assert_eq!(ra.dst.port(), 33333, "the first client keeps its port");
    assert_ne!(rb.dst.port(), 33333, "the second is moved to another port");
    for f in &flows {
        assert_eq!(A::ep(f.original.dst), net::vip_of::<A>());
    }

    // Each backend end saw its own SNAT port and got the right client's bytes.
    for (id, reply) in [(a, ra), (b, rb)] {
        let c = net.stream(id);
        let s = net
            .accepted(0)
            .find(|s| s.remote == A::ep(reply.dst))
            .expect("backend end");
        assert_eq!(c.outcome, Outcome::Done);
        assert_eq!(s.outcome, Outcome::Done);
        assert_same("upload", &s.received, c.to_send());
        assert_same("download", &c.received, &backend_pattern(0, 64 * KIB));
    }
    assert_eq!(net.engine.stats().total_dropped(), 0);
}

twins!(
    a_clean_run_drops_nothing_and_accounts_for_every_packet,
    a_clean_run_drops_nothing_and_accounts_for_every_packet_over_ipv6,
    clean_run
);

fn clean_run<A: Plan>() {
    let mut net = Net::<A>::build(net::config_of::<A>(Mode::Nth, &[1, 1, 1, 1]));
    net.wire.capture();
    let mut ids: Vec<StreamId> = (0..12)
        .map(|i| {
            net.connect(
                i % 4,
                42000 + i as u16,
                b"GET / HTTP/1.0\r\n\r\n".to_vec(),
                Close::AfterSend,
            )
        })
        .collect();
    net.finish(&ids, Duration::from_secs(30));
    net.serve(Serve::Stream(256 * KIB));
    ids.push(net.connect(0, 43000, pattern(9, 256 * KIB), Close::AfterSend));
    net.finish(&ids, Duration::from_secs(60));
    for &id in &ids {
        assert_eq!(
            net.stream(id).outcome,
            Outcome::Done,
            "{}",
            net.report("", &ids)
        );
    }

    let stats = net.engine.stats();
    assert_eq!(stats.total_dropped(), 0, "{stats}");
    assert!(
        net.unroutable.is_empty(),
        "{} unroutable packets",
        net.unroutable.len()
    );
    assert_eq!(stats.new_flows, 13);
    // Every packet the hosts sent to the NAT came out of it, in the right
    // direction: ORIGINAL from clients, REPLY from backends.
    let from_hosts = |hosts: [A; 4]| {
        net.wire
            .captured()
            .iter()
            .filter(|(leg, p)| {
                *leg == Leg::Host && A::addrs(p).is_some_and(|(src, _)| hosts.contains(&src))
            })
            .count() as u64
    };
    assert_eq!(stats.forwarded[0], from_hosts(A::CLIENTS));
    assert_eq!(stats.forwarded[1], from_hosts(A::BACKENDS));
    let out = net
        .wire
        .captured()
        .iter()
        .filter(|(leg, _)| *leg == Leg::Nat)
        .count() as u64;
    assert_eq!(out, stats.forwarded[0] + stats.forwarded[1]);
}
