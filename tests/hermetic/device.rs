//! An in-memory IP device for smoltcp: two packet queues and nothing else.
//!
//! Unlike smoltcp's `Loopback`, which declares every checksum "ignored", this
//! device keeps `ChecksumCapabilities::default()`: the smoltcp endpoints
//! compute every checksum they send and verify every checksum they receive,
//! so a NAT rewrite that breaks a checksum makes the receiver drop the packet.

use std::collections::VecDeque;

use smoltcp::phy::{self, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// The IP MTU of every device to begin with, as on an Ethernet link.
pub const MTU: usize = 1500;

/// A `Medium::Ip` device whose wire is two queues the harness moves packets between.
#[derive(Debug)]
pub struct MemDevice {
    /// Packets waiting for the interface to receive them.
    pub rx: VecDeque<Vec<u8>>,
    /// Packets the interface transmitted, waiting for the wire.
    pub tx: VecDeque<Vec<u8>>,
    /// The IP MTU the device reports ([`MTU`] unless the harness lowers it:
    /// smoltcp reads it when an interface is made on the device).
    pub mtu: usize,
}

impl Default for MemDevice {
    fn default() -> Self {
        MemDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu: MTU,
        }
    }
}

impl Device for MemDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let buffer = self.rx.pop_front()?;
        Some((
            RxToken { buffer },
            TxToken {
                queue: &mut self.tx,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            queue: &mut self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps.checksum = ChecksumCapabilities::default();
        caps
    }
}

/// A received packet, handed to the interface once.
pub struct RxToken {
    buffer: Vec<u8>,
}

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.buffer)
    }
}

/// A transmit slot: the interface fills a buffer and it joins the `tx` queue.
pub struct TxToken<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buffer = vec![0; len];
        let result = f(&mut buffer);
        self.queue.push_back(buffer);
        result
    }
}
