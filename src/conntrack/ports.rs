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
//!
//! With a pool of SNAT addresses, a client starts on the address its own
//! address hashes to (as Linux's SNAT to a range hashes the source to pick
//! one), then tries the others in pool order.
//!
//! Every choice here is a function of the ORIGINAL tuple, the backend, the
//! configuration and a [`HashKey`], except where a clash forces the search
//! on. That is what lets another instance, or this one after a restart,
//! rebuild a flow's translation from any of its packets (`--pickup`): with
//! the same `--hash-key` the same tuple gets the same address and port
//! unless the table held a clash on one side and not on the other.

use std::hash::Hasher;
use std::ops::RangeInclusive;

use siphasher::sip::SipHasher13;

use super::table::{Absent, Admission, ConnTable};
use super::tuple::{Endpoint, IpAddress, Tuple};

/// The key of the hashes that choose an SNAT address and a port search's
/// starting point (SipHash-1-3, whose output is fixed by its specification:
/// the same on every build, machine and version, so instances agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKey(pub [u64; 2]);

impl HashKey {
    /// Derive a key from a configured secret (`--hash-key`): instances
    /// given the same secret make the same choices.
    pub fn from_secret(secret: &str) -> Self {
        let word = |k: u64| {
            let mut h = SipHasher13::new_with_keys(k, !k);
            h.write(secret.as_bytes());
            h.finish()
        };
        HashKey([word(0x7475_6e6c_622d_6b30), word(0x7475_6e6c_622d_6b31)])
    }

    /// Hash `bytes` (in network order, so every machine agrees) under this key.
    fn hash(&self, bytes: &[u8]) -> u64 {
        // One shot: the same value as a streaming `write` and `finish`,
        // without the buffering of a partial word.
        SipHasher13::new_with_keys(self.0[0], self.0[1]).hash(bytes)
    }

    /// Return the index in a pool of `n` addresses (`n > 0`) where `client`
    /// starts.
    pub fn pool_start<A: IpAddress>(&self, client: A, n: usize) -> usize {
        (self.hash(client.octets().as_ref()) % n as u64) as usize
    }

    /// Return the port search's starting point for `original` towards
    /// `backend`.
    /// The bytes hashed are the three endpoints in network order (address
    /// then port): 18 bytes for IPv4, 54 for IPv6.
    fn port_offset<A: IpAddress>(&self, original: &Tuple<A>, backend: Endpoint<A>) -> u64 {
        let mut b = [0u8; 54];
        let mut at = 0;
        for e in [original.src, original.dst, backend] {
            b[at..at + A::LEN].copy_from_slice(e.ip().octets().as_ref());
            b[at + A::LEN..at + A::LEN + 2].copy_from_slice(&e.port().to_be_bytes());
            at += A::LEN + 2;
        }
        self.hash(&b[..at])
    }
}

/// How many ports one SNAT address is searched for before giving up.
pub const MAX_TRIES: u32 = 2048;

/// Find a free REPLY tuple for the connection `original` going to
/// `backend`, with a source from `pool` and a port preserved or from `range`.
/// `_admission` is the proof that the caller holds the admission lock (see
/// [`Admission`]): the tuple returned then stays free until the flow is
/// inserted, since only admitters insert. Returns the tuple with the proof
/// that it was free (for `ConnTable::insert_proven`).
pub fn allocate<A: IpAddress>(
    _admission: &Admission,
    table: &ConnTable<A>,
    original: &Tuple<A>,
    backend: Endpoint<A>,
    pool: &[A],
    range: &RangeInclusive<u16>,
    key: &HashKey,
) -> Option<(Tuple<A>, Absent)> {
    let client_port = original.src.port();
    let start = if pool.len() > 1 {
        key.pool_start(*original.src.ip(), pool.len())
    } else {
        0
    };
    let pool = || pool[start..].iter().chain(&pool[..start]).copied();
    // Port preservation, on each address of the pool in turn, and only for a
    // port inside the range (as MASQUERADE --to-ports keeps a port only when
    // it lies in the range it was given).
    let preserve = range.contains(&client_port);
    for snat in pool().filter(|_| preserve) {
        let reply = Tuple {
            src: backend,
            dst: Endpoint::new(snat, client_port),
        };
        if let Some(proof) = table.absent(&reply) {
            return Some((reply, proof));
        }
    }
    let (lo, hi) = (u32::from(*range.start()), u32::from(*range.end()));
    if lo > hi {
        return None;
    }
    let size = hi - lo + 1;
    let offset = (key.port_offset(original, backend) % u64::from(size)) as u32;
    for snat in pool() {
        for i in 0..size.min(MAX_TRIES) {
            let port = (lo + (offset + i) % size) as u16;
            let reply = Tuple {
                src: backend,
                dst: Endpoint::new(snat, port),
            };
            if let Some(proof) = table.absent(&reply) {
                return Some((reply, proof));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::conntrack::Flow;
    use crate::time::Timestamp;
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    fn orig(port: u16) -> Tuple {
        Tuple::new(
            Ipv4Addr::new(198, 18, 1, 2),
            port,
            Ipv4Addr::new(198, 18, 0, 1),
            80,
        )
    }
    const B: Endpoint<Ipv4Addr> = Endpoint::new(Ipv4Addr::new(198, 18, 2, 3), 80);
    const S: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    #[test]
    fn a_client_port_outside_the_range_is_not_preserved() {
        let t = ConnTable::new(10);
        for port in [80, 1023, 40000] {
            let r = take(&t, &orig(port), B, &[S], &(20000..=20099), &HashKey([7, 0])).unwrap();
            assert!(
                (20000..=20099).contains(&r.dst.port()),
                "client port {port} -> {}",
                r.dst
            );
        }
        // Inside the range, it is kept.
        let r = take(
            &t,
            &orig(20050),
            B,
            &[S],
            &(20000..=20099),
            &HashKey([7, 0]),
        )
        .unwrap();
        assert_eq!(r.dst.port(), 20050);
    }

    #[test]
    fn preserves_the_client_port_when_free() {
        let t = ConnTable::new(10);
        let r = take(&t, &orig(40000), B, &[S], &(1024..=65535), &HashKey([7, 0])).unwrap();
        assert_eq!(r.dst, Endpoint::new(S, 40000));
        assert_eq!(r.src, B);
    }

    #[test]
    fn a_clash_moves_to_another_port_and_a_full_range_fails() {
        let t = ConnTable::new(10);
        let other = Tuple::new(Ipv4Addr::new(198, 18, 1, 3), 40000, S, 80);
        let a = take(
            &t,
            &orig(40000),
            B,
            &[S],
            &(39999..=40001),
            &HashKey([7, 0]),
        )
        .unwrap();
        let b = take(&t, &other, B, &[S], &(39999..=40001), &HashKey([7, 0])).unwrap();
        assert_eq!(a.dst.port(), 40000);
        assert!([39999, 40001].contains(&b.dst.port()));
        let c = take(
            &t,
            &Tuple::new(Ipv4Addr::new(198, 18, 1, 4), 40000, S, 80),
            B,
            &[S],
            &(39999..=40001),
            &HashKey([7, 0]),
        )
        .unwrap();
        assert_ne!(b.dst.port(), c.dst.port());
        let d = take(
            &t,
            &Tuple::new(Ipv4Addr::new(198, 18, 1, 5), 40000, S, 80),
            B,
            &[S],
            &(39999..=40001),
            &HashKey([7, 0]),
        );
        assert_eq!(d, None);
    }

    #[test]
    fn a_pool_raises_the_ceiling() {
        let t = ConnTable::new(10);
        let pool = [S, Ipv4Addr::new(198, 18, 0, 2)];
        let a = take(&t, &orig(1), B, &pool, &(50000..=50000), &HashKey([1, 0])).unwrap();
        let b = take(
            &t,
            &Tuple::new(Ipv4Addr::new(198, 18, 1, 3), 1, S, 80),
            B,
            &pool,
            &(50000..=50000),
            &HashKey([1, 0]),
        )
        .unwrap();
        assert_ne!(a.dst.ip(), b.dst.ip());
    }

    /// Allocate as the engine does and insert a flow with the result, so
    /// that its REPLY tuple is taken for the next allocation.
    fn take(
        t: &ConnTable<Ipv4Addr>,
        original: &Tuple<Ipv4Addr>,
        backend: Endpoint<Ipv4Addr>,
        pool: &[Ipv4Addr],
        range: &RangeInclusive<u16>,
        key: &HashKey,
    ) -> Option<Tuple<Ipv4Addr>> {
        // One admission per call: these tests look at ports, not flow ids.
        let mut admission = Admission::new();
        let (reply, _) = allocate(&admission, t, original, backend, pool, range, key)?;
        let b = Arc::new(Backend::new(backend.to_socket()));
        let flow = Flow::new(*original, reply, b, Timestamp::from_secs(9));
        assert!(t.insert(&mut admission, flow));
        Some(reply)
    }

    const PINNED_STARTS: [usize; 8] = [2, 1, 0, 3, 0, 3, 1, 0];
    const PINNED_OFFSET: u64 = 46892;

    #[test]
    fn the_hash_key_gives_the_same_choices_on_every_build_and_machine() {
        // SipHash-1-3 over bytes in network order: these values are fixed
        // by the algorithm, so instances and later versions agree. Were they
        // to change, instances of two versions would translate differently.
        let k = HashKey::from_secret("tunlb");
        assert_eq!(k, HashKey::from_secret("tunlb"));
        assert_ne!(k, HashKey::from_secret("tunlc"));
        let starts: Vec<usize> = (0..8)
            .map(|i| k.pool_start(Ipv4Addr::new(198, 18, 1, i), 4))
            .collect();
        assert_eq!(starts, PINNED_STARTS);
        assert_eq!(k.port_offset(&orig(40000), B) % 64512, PINNED_OFFSET);
    }
}
