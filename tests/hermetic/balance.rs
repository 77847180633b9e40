//! Load balancing: where NEW connections go, in either family (each test
//! body is generic over the address plan; the `_over_ipv6` twins run it on
//! 2001:2::/48).

use std::time::Duration;

use tunlb::select::Mode;

use crate::craft::{self, flags};
use crate::family::{self, Plan, SockAddr as _};
use crate::net::{self, greeting, Close, Net, Outcome};
use tunlb::{Engine, Timestamp, Verdict};

/// Open `n` connections from client 0 one after another, each reading the
/// backend's greeting, and return the backend each went to, in order.
///
/// Checks on the way that every connection completed, that the greeting
/// names the backend that recorded the connection, that the backend saw
/// the client's port preserved on the SNAT address, and that the backends
/// accepted these `n` connections and no other.
fn sequential_greetings<A: Plan>(net: &mut Net<A>, n: u16) -> Vec<usize> {
    let mut order = Vec::new();
    for i in 0..n {
        let port = 20000 + i;
        let id = net.connect(0, port, Vec::new(), Close::AfterSend);
        net.finish(&[id], Duration::from_secs(30));
        let c = net.stream(id);
        assert_eq!(
            c.outcome,
            Outcome::Done,
            "{}",
            net.report("connection failed", &[id])
        );
        let b = (0..4)
            .find(|&b| net.accepted(b).any(|s| s.remote.port() == port))
            .unwrap_or_else(|| panic!("no backend accepted port {port}"));
        assert_eq!(
            c.received,
            greeting(b),
            "connection {i} greeted by the wrong backend"
        );
        let s = net.accepted(b).find(|s| s.remote.port() == port).unwrap();
        assert_eq!(
            A::sock_ip(s.remote),
            A::VIP,
            "the backend sees the SNAT address"
        );
        order.push(b);
    }
    let accepted: [usize; 4] = std::array::from_fn(|b| net.accepted(b).count());
    assert_eq!(accepted, counts(&order), "each connection accepted once");
    order
}

/// How many connections of `order` each backend got.
fn counts(order: &[usize]) -> [usize; 4] {
    let mut n = [0; 4];
    for &b in order {
        n[b] += 1;
    }
    n
}

/// Whether `order` is a round robin over the backends in `cycle` (each
/// index repeated as many times as its weight): the same cycle throughout,
/// starting anywhere. Random selection is not (at 400 draws the odds of
/// one looking like it are below 10^-100), nth is.
fn is_round_robin(order: &[usize], cycle: &[usize]) -> bool {
    (0..cycle.len()).any(|start| {
        order
            .iter()
            .enumerate()
            .all(|(i, &b)| b == cycle[(start + i) % cycle.len()])
    })
}

/// Check that the engine's per-backend connection counters say `want`.
fn assert_engine_counts<A: Plan>(net: &Net<A>, want: [usize; 4]) {
    let stats = net.engine.stats();
    for (b, bs) in stats.backends.iter().enumerate() {
        assert_eq!(bs.backend.ip(), family::ip(A::BACKENDS[b]));
        assert_eq!(bs.connections, want[b] as u64, "backend {b}: {stats}");
    }
}

twins!(
    nth_spreads_400_sequential_connections_exactly_100_per_backend,
    nth_spreads_400_sequential_connections_exactly_100_per_backend_over_ipv6,
    nth_400
);

fn nth_400<A: Plan>() {
    let mut net = Net::<A>::build(net::config_of::<A>(Mode::Nth, &[1, 1, 1, 1]));
    let order = sequential_greetings(&mut net, 400);
    let seen = counts(&order);
    assert_eq!(seen, [100; 4]);
    assert!(is_round_robin(&order, &[0, 1, 2, 3]), "{order:?}");
    assert_engine_counts(&net, seen);
    let stats = net.engine.stats();
    assert_eq!(stats.new_flows, 400);
    assert_eq!(stats.total_dropped(), 0, "{stats}");
    // Every packet went through the engine or to a host: the stacks sent
    // nothing else (no neighbour discovery or MLD on an IP medium).
    assert!(net.unroutable.is_empty(), "{:?}", net.unroutable.len());
}

/// The range `n * p +- 5 sigma` for a binomial count (sigma = sqrt(n p (1 - p))):
/// a seeded run outside it would point at a biased selector, not bad luck
/// (a 5-sigma excursion has odds below one in a million).
fn five_sigma(n: usize, p: f64) -> std::ops::RangeInclusive<usize> {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    let lo = (mean - 5.0 * sigma).ceil().max(0.0) as usize;
    let hi = (mean + 5.0 * sigma).floor() as usize;
    lo..=hi
}

#[test]
fn five_sigma_is_the_binomial_range_worked_out_by_hand() {
    // p = 1/4 and 3/4: sigma = sqrt(400 * 3/16) = 8.66, 5 sigma = 43.3.
    assert_eq!(five_sigma(400, 0.25), 57..=143);
    assert_eq!(five_sigma(400, 0.75), 257..=343);
}

twins!(
    random_with_equal_weights_keeps_each_backend_within_five_sigma_of_a_quarter,
    random_with_equal_weights_keeps_each_backend_within_five_sigma_of_a_quarter_over_ipv6,
    random_quarters
);

fn random_quarters<A: Plan>() {
    let mut net = Net::<A>::build(net::config_of::<A>(Mode::Random, &[1, 1, 1, 1]));
    let order = sequential_greetings(&mut net, 400);
    let seen = counts(&order);
    println!("{}: random 1:1:1:1 over 400: {seen:?}", A::NAME);
    // 400 draws at p = 1/4: mean 100, sigma 8.66.
    let bound = five_sigma(400, 0.25);
    for (b, &n) in seen.iter().enumerate() {
        assert!(bound.contains(&n), "backend {b} got {n} of 400: {seen:?}");
    }
    // A round robin also gives 100 each: the draws must not be one.
    assert!(
        !is_round_robin(&order, &[0, 1, 2, 3]),
        "random picked in turn: {order:?}"
    );
    assert_eq!(seen.iter().sum::<usize>(), 400);
    assert_engine_counts(&net, seen);
    assert_eq!(net.engine.stats().total_dropped(), 0);
}

twins!(
    random_with_weights_3_1_0_0_follows_the_weights_and_never_picks_weight_0,
    random_with_weights_3_1_0_0_follows_the_weights_and_never_picks_weight_0_over_ipv6,
    random_3_1_0_0
);

fn random_3_1_0_0<A: Plan>() {
    let mut net = Net::<A>::build(net::config_of::<A>(Mode::Random, &[3, 1, 0, 0]));
    let order = sequential_greetings(&mut net, 400);
    let seen = counts(&order);
    println!("{}: random 3:1:0:0 over 400: {seen:?}", A::NAME);
    assert_eq!(seen[2], 0, "weight 0 takes no connection: {seen:?}");
    assert_eq!(seen[3], 0, "weight 0 takes no connection: {seen:?}");
    // 400 draws at p = 3/4: mean 300, sigma 8.66.
    let bound = five_sigma(400, 0.75);
    assert!(
        bound.contains(&seen[0]),
        "backend 0 got {} of 400 (want {bound:?})",
        seen[0]
    );
    assert_eq!(seen[0] + seen[1], 400);
    assert!(
        !is_round_robin(&order, &[0, 0, 0, 1]),
        "random picked in turn: {order:?}"
    );
    assert_engine_counts(&net, seen);
}

/// The backend index each of `n` SYNs from distinct ports is sent to.
fn choices<A: Plan>(seed: u64, n: u16) -> Vec<usize> {
    let mut cfg = net::config_of::<A>(Mode::Random, &[1, 1, 1, 1]);
    cfg.seed = seed;
    let engine = Engine::new(cfg).unwrap();
    (0..n)
        .map(|i| {
            let client = A::sock(A::CLIENTS[0], 1000 + i);
            let mut syn = craft::segment(client, net::vip_of::<A>(), flags::SYN, 1, 0, &[]);
            let Verdict::Forward { len } = engine.handle_packet(&mut syn, Timestamp::ZERO) else {
                panic!("SYN {i} not forwarded")
            };
            let dst = crate::check::valid::<A>(&syn[..len]).unwrap().dst;
            A::BACKENDS
                .iter()
                .position(|&b| b == dst)
                .expect("sent to a backend")
        })
        .collect()
}

twins!(
    random_selection_is_reproducible_from_the_seed,
    random_selection_is_reproducible_from_the_seed_over_ipv6,
    reproducible
);

fn reproducible<A: Plan>() {
    assert_eq!(
        choices::<A>(7, 64),
        choices::<A>(7, 64),
        "same seed, same choices"
    );
    assert_ne!(
        choices::<A>(7, 64),
        choices::<A>(8, 64),
        "another seed, other choices"
    );
}
