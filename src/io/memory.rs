//! An in-memory packet device: two queues, for tests and benches of the
//! datapath without a TUN.

use std::collections::VecDeque;
use std::io;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::{Frame, PacketIo};

/// A device whose "wire" is two queues: packets pushed with
/// [`MemoryIo::inject`] are received by the datapath, packets the datapath
/// sends are collected for [`MemoryIo::take_sent`].
#[derive(Debug, Default)]
pub struct MemoryIo {
    rx: Mutex<VecDeque<Vec<u8>>>,
    ready: Condvar,
    tx: Mutex<Vec<Vec<u8>>>,
}

impl MemoryIo {
    /// Create an empty device.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue a packet for the datapath to receive.
    pub fn inject(&self, pkt: &[u8]) {
        self.rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(pkt.to_vec());
        self.ready.notify_one();
    }

    /// Take every packet the datapath has sent so far.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.tx.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl PacketIo for MemoryIo {
    fn recv(&self, _queue: usize, buf: &mut [u8], timeout: Duration) -> io::Result<Option<Frame>> {
        let q = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let (mut q, _) = self
            .ready
            .wait_timeout_while(q, timeout, |q| q.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        Ok(q.pop_front().map(|p| {
            let n = p.len().min(buf.len());
            buf[..n].copy_from_slice(&p[..n]);
            Frame::plain(n)
        }))
    }

    fn send(
        &self,
        _queue: usize,
        buf: &mut [u8],
        frame: &Frame,
        len: usize,
        _replaced: bool,
    ) -> io::Result<()> {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buf[frame.start..frame.start + len].to_vec());
        Ok(())
    }
}
