//! Packet I/O: where IP packets come from and go to.
//!
//! The datapath reads and writes whole IPv4 packets through [`PacketIo`] and
//! knows nothing else of the device. [`tun::TunIo`] is the TUN of the `tun`
//! crate; [`memory::MemoryIo`] is an in-memory pair of queues for tests and
//! benches. A multi-queue or offload-capable TUN, or a raw socket, would be
//! one more implementation; the engine would not change.

pub mod memory;
pub mod tun;

use std::io;
use std::time::Duration;

/// A source and sink of IP packets, shared by the datapath's threads.
pub trait PacketIo: Send + Sync {
    /// Receive one packet into `buf`, waiting at most `timeout`. Returns the
    /// packet's length, or `Ok(None)` if nothing arrived in time.
    fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>>;

    /// Send one packet.
    fn send(&self, pkt: &[u8]) -> io::Result<()>;
}
