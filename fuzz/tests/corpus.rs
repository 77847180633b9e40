//! The seed corpus on the stable toolchain: every committed input replays
//! clean through the harness, and each seed reaches the path it was written
//! for (so a change to the input format cannot silently turn the seeds into
//! noise).

use std::path::Path;

use tunlb::{DropReason, Verdict};
use tunlb_fuzz::run;

/// Read a committed seed.
fn seed(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus/engine")
        .join(format!("seed-{name}"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether a verdict forwarded the packet.
fn forwarded(v: &Verdict) -> bool {
    matches!(v, Verdict::Forward { .. })
}

#[test]
fn every_corpus_input_replays_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/engine");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus directory") {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        run(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= 11, "only {n} inputs in {}", dir.display());
}

#[test]
fn the_connection_seed_is_forwarded_from_syn_to_last_ack() {
    let r = run(&seed("connection"));
    assert_eq!(r.verdicts.len(), 9);
    assert!(r.verdicts.iter().all(forwarded), "{:?}", r.verdicts);
    assert_eq!(r.stats.new_flows, 6);
    assert_eq!(r.stats.total_dropped(), 0, "{}", r.stats);
}

#[test]
fn the_resets_seed_forwards_in_window_resets_and_drops_a_blind_one() {
    let r = run(&seed("resets"));
    assert!(
        forwarded(&r.verdicts[0]) && forwarded(&r.verdicts[2]),
        "{:?}",
        r.verdicts
    );
    assert_eq!(r.verdicts[1], Verdict::Drop(DropReason::RstOutOfWindow));
}

#[test]
fn the_icmp_seed_is_translated() {
    let r = run(&seed("icmp"));
    assert!(r.verdicts.iter().all(forwarded), "{:?}", r.verdicts);
    assert_eq!(r.stats.icmp_translated, 3);
}

#[test]
fn the_flood_seed_evicts() {
    let r = run(&seed("flood"));
    assert!(r.verdicts.iter().all(forwarded), "{:?}", r.verdicts);
    assert!(r.stats.evicted >= 6, "{}", r.stats);
}

#[test]
fn the_exhaustion_seed_runs_out_of_ports() {
    let r = run(&seed("exhaustion"));
    // Two addresses x four ports (the client's 40001 among them) x two
    // backends: 16 reply tuples, 5 of them held by the setup's live flows
    // (their ports lie outside the range, so they were not kept).
    assert_eq!(r.verdicts.len(), 20);
    assert!(r.verdicts[..11].iter().all(forwarded), "{:?}", r.verdicts);
    assert!(r.verdicts[11..]
        .iter()
        .all(|v| *v == Verdict::Drop(DropReason::PortsExhausted)));
}

#[test]
fn the_invalid_seed_is_dropped_for_the_right_reasons() {
    let r = run(&seed("invalid"));
    assert!(
        matches!(r.verdicts[0], Verdict::Respond { .. }),
        "{:?}",
        r.verdicts[0]
    );
    let want = [
        DropReason::BadFlags,
        DropReason::BadFlags,
        DropReason::BadFlags,
        DropReason::BadFlags,
        DropReason::NoFlowNotSyn,
        DropReason::InvalidTransition,
        DropReason::InvalidTransition,
    ];
    let got: Vec<Verdict> = r.verdicts[1..].to_vec();
    assert_eq!(got, want.map(Verdict::Drop));
}

#[test]
fn the_expiry_seed_reuses_a_port_and_outlives_timeouts() {
    let r = run(&seed("expiry"));
    let gone = Verdict::Drop(DropReason::NoFlowNotSyn);
    assert!(
        forwarded(&r.verdicts[0]) && forwarded(&r.verdicts[1]),
        "{:?}",
        r.verdicts
    );
    assert_eq!(r.verdicts[2..], [gone, gone]);
    assert_eq!(r.stats.new_flows, 6, "the TIME_WAIT flow's port was reused");
}

#[test]
fn the_ipv6_connection_seed_is_forwarded_behind_extension_headers() {
    let r = run(&seed("ipv6-connection"));
    assert_eq!(r.verdicts.len(), 9);
    assert!(r.verdicts.iter().all(forwarded), "{:?}", r.verdicts);
    // Five live flows in each family, and the new one.
    assert_eq!(r.stats.new_flows, 11);
    assert_eq!(r.stats.total_dropped(), 0, "{}", r.stats);
}

#[test]
fn the_ipv6_icmp_seed_is_translated_and_an_untracked_error_dropped() {
    let r = run(&seed("ipv6-icmp"));
    assert!(r.verdicts[..5].iter().all(forwarded), "{:?}", r.verdicts);
    assert_eq!(r.verdicts[5], Verdict::Drop(DropReason::IcmpUntracked));
    assert_eq!(r.stats.icmp_translated, 4);
}

#[test]
fn the_ipv6_dropped_seed_names_each_reason() {
    let r = run(&seed("ipv6-dropped"));
    let want = [
        DropReason::Ipv6Control,
        DropReason::Ipv6Control,
        DropReason::Ipv6Control,
        DropReason::Fragment,
        DropReason::Truncated,
        DropReason::Truncated,
        DropReason::BadHeader,
        DropReason::IcmpNotError,
        DropReason::NotTcp,
    ];
    assert_eq!(r.verdicts[..9], want.map(Verdict::Drop));
    assert!(
        matches!(r.verdicts[9], Verdict::Respond { .. }),
        "a RST from the drained IPv6 service: {:?}",
        r.verdicts[9]
    );
}
