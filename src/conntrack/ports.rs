//! MASQUERADE source-port allocation (`nf_nat_l4proto_unique_tuple`).
//!
//! The REPLY tuple `backend:bport -> snat:sport` must be unique, so at most
//! about 64 k concurrent flows share one (SNAT address, backend ip:port) pair;
//! a pool of SNAT addresses multiplies the ceiling. As Linux does, tunlb first
//! tries to keep the client's own port (port preservation); failing that it
//! searches the configured range from an offset derived from a keyed hash of
//! the ORIGINAL tuple (RFC 6056 algorithm 3: unpredictable, yet repeatable in
//! tests with a fixed seed). The search gives up after [`MAX_TRIES`] ports per
//! address, like the kernel's bounded search; the SYN is then dropped and
//! counted as ports exhausted.

use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;

use super::table::ConnTable;
use super::tuple::Tuple;

/// How many ports one SNAT address is searched for before giving up.
pub const MAX_TRIES: u32 = 2048;

/// Find and claim a REPLY tuple for the connection `original` going to
/// `backend`, with a source from `pool` and a port preserved or from `range`.
/// Returns the claimed reply tuple (already reserved in `table`).
pub fn allocate(
    table: &ConnTable,
    original: &Tuple,
    backend: SocketAddrV4,
    pool: &[Ipv4Addr],
    range: &RangeInclusive<u16>,
    secret: u64,
) -> Option<Tuple> {
    let client_port = original.src.port();
    // Port preservation, on each address of the pool in turn, and only for a
    // port inside the range (as MASQUERADE --to-ports keeps a port only when
    // it lies in the range it was given).
    let preserve: &[Ipv4Addr] = if range.contains(&client_port) {
        pool
    } else {
        &[]
    };
    for &snat in preserve {
        let reply = Tuple {
            src: backend,
            dst: SocketAddrV4::new(snat, client_port),
        };
        if table.claim_reply(reply, *original) {
            return Some(reply);
        }
    }
    let (lo, hi) = (u32::from(*range.start()), u32::from(*range.end()));
    if lo > hi {
        return None;
    }
    let size = hi - lo + 1;
    let mut h = std::hash::DefaultHasher::new();
    (secret, original, backend).hash(&mut h);
    let offset = (h.finish() % u64::from(size)) as u32;
    for &snat in pool {
        for i in 0..size.min(MAX_TRIES) {
            let port = (lo + (offset + i) % size) as u16;
            let reply = Tuple {
                src: backend,
                dst: SocketAddrV4::new(snat, port),
            };
            if table.claim_reply(reply, *original) {
                return Some(reply);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orig(port: u16) -> Tuple {
        Tuple::new(
            Ipv4Addr::new(198, 18, 1, 2),
            port,
            Ipv4Addr::new(198, 18, 0, 1),
            80,
        )
    }
    const B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 3), 80);
    const S: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    #[test]
    fn a_client_port_outside_the_range_is_not_preserved() {
        let t = ConnTable::new(10);
        for port in [80, 1023, 40000] {
            let r = allocate(&t, &orig(port), B, &[S], &(20000..=20099), 7).unwrap();
            assert!(
                (20000..=20099).contains(&r.dst.port()),
                "client port {port} -> {}",
                r.dst
            );
        }
        // Inside the range, it is kept.
        let r = allocate(&t, &orig(20050), B, &[S], &(20000..=20099), 7).unwrap();
        assert_eq!(r.dst.port(), 20050);
    }

    #[test]
    fn preserves_the_client_port_when_free() {
        let t = ConnTable::new(10);
        let r = allocate(&t, &orig(40000), B, &[S], &(1024..=65535), 7).unwrap();
        assert_eq!(r.dst, SocketAddrV4::new(S, 40000));
        assert_eq!(r.src, B);
    }

    #[test]
    fn a_clash_moves_to_another_port_and_a_full_range_fails() {
        let t = ConnTable::new(10);
        let other = Tuple::new(Ipv4Addr::new(198, 18, 1, 3), 40000, S, 80);
        let a = allocate(&t, &orig(40000), B, &[S], &(39999..=40001), 7).unwrap();
        let b = allocate(&t, &other, B, &[S], &(39999..=40001), 7).unwrap();
        assert_eq!(a.dst.port(), 40000);
        assert!([39999, 40001].contains(&b.dst.port()));
        let c = allocate(
            &t,
            &Tuple::new(Ipv4Addr::new(198, 18, 1, 4), 40000, S, 80),
            B,
            &[S],
            &(39999..=40001),
            7,
        )
        .unwrap();
        assert_ne!(b.dst.port(), c.dst.port());
        let d = allocate(
            &t,
            &Tuple::new(Ipv4Addr::new(198, 18, 1, 5), 40000, S, 80),
            B,
            &[S],
            &(39999..=40001),
            7,
        );
        assert_eq!(d, None);
    }

    #[test]
    fn a_pool_raises_the_ceiling() {
        let t = ConnTable::new(10);
        let pool = [S, Ipv4Addr::new(198, 18, 0, 2)];
        let a = allocate(&t, &orig(1), B, &pool, &(50000..=50000), 1).unwrap();
        let b = allocate(
            &t,
            &Tuple::new(Ipv4Addr::new(198, 18, 1, 3), 1, S, 80),
            B,
            &pool,
            &(50000..=50000),
            1,
        )
        .unwrap();
        assert_ne!(a.dst.ip(), b.dst.ip());
    }
}
