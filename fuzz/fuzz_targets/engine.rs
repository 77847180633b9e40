//! Arbitrary bytes as a sequence of packets, both directions, into an engine
//! with live flows; the invariants are checked after every packet (see
//! `tunlb_fuzz`). Run with `scripts/fuzz.sh`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tunlb_fuzz::run(data);
});
