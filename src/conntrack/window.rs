//! Sequence tracking, enough to refuse a blind RST (a reduced `tcp_in_window`).
//!
//! Linux conntrack follows each direction's sequence space and marks a
//! segment outside the receiver's window INVALID, so a spoofed RST with a
//! guessed sequence number cannot tear a flow down. tunlb keeps the part of
//! that which matters for a NAT: for each direction, the highest sequence
//! number sent (`end`) and the largest window advertised (`max_win`, scaled
//! as negotiated by the SYNs). An RST is accepted only if its sequence number
//! lies within the receiver's window around the sender's `end`; an RST that
//! answers a SYN (nothing seen from the sender yet) must acknowledge exactly
//! that SYN (RFC 793, SYN-SENT). Other segments are not window-checked: the
//! endpoints drop them themselves, and passing them keeps tunlb from
//! stalling a connection on a reordering it misjudged.

/// The sequence state of one direction of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    /// One past the highest sequence number sent (SYN and FIN count one).
    pub end: u32,
    /// The largest window advertised by this direction, scaled.
    pub max_win: u32,
    /// The window scale this direction announced in its SYN (RFC 7323).
    pub scale: Option<u8>,
    /// Whether any segment of this direction has been seen.
    pub seen: bool,
    /// The acknowledgment number of this direction's last ACK, if any: the
    /// next sequence number it expects from the other side (RCV.NXT).
    pub last_ack: Option<u32>,
}

/// What the window check needs of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number, if ACK is set.
    pub ack: Option<u32>,
    /// Payload length plus one for SYN and for FIN.
    pub len: u32,
    /// The raw window field.
    pub window: u16,
    /// Whether SYN is set (its window is never scaled).
    pub syn: bool,
    /// The window-scale option of a SYN, if present.
    pub wscale: Option<u8>,
}

/// The window assumed for a receiver that has not advertised one yet.
const DEFAULT_WINDOW: u32 = 65535;

/// `a` is at or after `b` in sequence space.
fn after_eq(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) as i32 >= 0
}

/// Return whether an RST with `seg`, sent by `sender` to `receiver`, is acceptable.
pub fn rst_acceptable(sender: &Window, receiver: &Window, seg: &SegmentInfo) -> bool {
    // Exactly the sequence number the receiver last acknowledged (RFC 5961
    // 3.2): also how a client resets a backend's TIME_WAIT that answered its
    // new SYN with an old ACK, in a sequence space tunlb never saw.
    if receiver.last_ack == Some(seg.seq) {
        return true;
    }
    if !sender.seen {
        // Answering a SYN: it must acknowledge that SYN exactly.
        return receiver.seen && seg.ack == Some(receiver.end);
    }
    let win = if receiver.max_win == 0 {
        DEFAULT_WINDOW
    } else {
        receiver.max_win
    };
    let lo = sender.end.wrapping_sub(win);
    let hi = sender.end.wrapping_add(win);
    after_eq(seg.seq, lo) && after_eq(hi, seg.seq)
}

/// Record a segment sent by `sender` (whose peer is `receiver`).
pub fn update(sender: &mut Window, receiver: &Window, seg: &SegmentInfo) {
    if seg.syn {
        sender.scale = seg.wscale;
    }
    let end = seg.seq.wrapping_add(seg.len);
    // A SYN starts a sequence space: it replaces whatever came before.
    if !sender.seen || seg.syn || after_eq(end, sender.end) {
        sender.end = end;
    }
    sender.seen = true;
    if seg.ack.is_some() {
        sender.last_ack = seg.ack;
    }
    // Scaling applies only when both sides offered it, and never to a SYN.
    let shift = match (sender.scale, receiver.scale) {
        (Some(s), Some(_)) if !seg.syn => u32::from(s.min(14)),
        _ => 0,
    };
    sender.max_win = sender.max_win.max(u32::from(seg.window) << shift);
}

/// Return the window-scale option of a SYN's TCP options, if any.
pub fn parse_wscale(options: &[u8]) -> Option<u8> {
    let mut o = options;
    while let Some((&kind, rest)) = o.split_first() {
        match kind {
            0 => return None, // end of options
            1 => o = rest,    // NOP
            _ => {
                let len = usize::from(*rest.first()?);
                if len < 2 || len > o.len() {
                    return None;
                }
                if kind == 3 && len == 3 {
                    return Some(o[2]);
                }
                o = &o[len..];
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(
        seq: u32,
        ack: Option<u32>,
        len: u32,
        window: u16,
        syn: bool,
        wscale: Option<u8>,
    ) -> SegmentInfo {
        SegmentInfo {
            seq,
            ack,
            len,
            window,
            syn,
            wscale,
        }
    }

    #[test]
    fn an_rst_must_fall_in_the_receivers_window() {
        let (mut c, mut s) = (Window::default(), Window::default());
        update(&mut c, &s, &seg(1000, None, 1, 64240, true, Some(7)));
        update(&mut s, &c, &seg(5000, Some(1001), 1, 65160, true, Some(7)));
        update(&mut c, &s, &seg(1001, Some(5001), 100, 502, false, None));
        assert_eq!(c.end, 1101);
        assert_eq!(c.max_win, 502 << 7);
        // The server's window is 65160 (its SYN-ACK, unscaled).
        assert!(rst_acceptable(&c, &s, &seg(1101, None, 0, 0, false, None)));
        assert!(rst_acceptable(
            &c,
            &s,
            &seg(1101 + 65000, None, 0, 0, false, None)
        ));
        assert!(!rst_acceptable(
            &c,
            &s,
            &seg(1101 + 70000, None, 0, 0, false, None)
        ));
        assert!(!rst_acceptable(
            &c,
            &s,
            &seg(1101u32.wrapping_sub(70000), None, 0, 0, false, None)
        ));
        assert!(!rst_acceptable(
            &c,
            &s,
            &seg(0x8000_0000, None, 0, 0, false, None)
        ));
    }

    #[test]
    fn an_rst_answering_a_syn_must_ack_it() {
        let (mut c, s) = (Window::default(), Window::default());
        update(&mut c, &s, &seg(1000, None, 1, 64240, true, None));
        assert!(rst_acceptable(
            &s,
            &c,
            &seg(0, Some(1001), 0, 0, false, None)
        ));
        assert!(!rst_acceptable(
            &s,
            &c,
            &seg(0, Some(1000), 0, 0, false, None)
        ));
        assert!(!rst_acceptable(&s, &c, &seg(0, None, 0, 0, false, None)));
    }

    #[test]
    fn an_rst_answering_a_stray_ack_is_accepted() {
        // The backend's TIME_WAIT answers a new SYN with an ACK from its old
        // connection; the client resets it with seq = that ACK's ack number.
        let (mut c, mut s) = (Window::default(), Window::default());
        update(&mut c, &s, &seg(1000, None, 1, 64240, true, None));
        update(
            &mut s,
            &c,
            &seg(0x7000_0000, Some(0x3000_0000), 0, 502, false, None),
        );
        assert!(rst_acceptable(
            &c,
            &s,
            &seg(0x3000_0000, None, 0, 0, false, None)
        ));
        assert!(!rst_acceptable(
            &c,
            &s,
            &seg(0x3000_0001, None, 0, 0, false, None)
        ));
        // Then the backend's real SYN-ACK restarts its sequence space.
        update(&mut s, &c, &seg(9, Some(1001), 1, 65160, true, None));
        assert_eq!(s.end, 10);
    }

    #[test]
    fn wraparound_is_handled() {
        let (mut c, mut s) = (Window::default(), Window::default());
        update(&mut c, &s, &seg(u32::MAX - 10, None, 1, 1000, true, None));
        update(&mut s, &c, &seg(7, Some(u32::MAX - 9), 1, 1000, true, None));
        update(
            &mut c,
            &s,
            &seg(u32::MAX - 9, Some(8), 100, 1000, false, None),
        );
        assert_eq!(c.end, 90);
        assert!(rst_acceptable(&c, &s, &seg(80, None, 0, 0, false, None)));
        assert!(rst_acceptable(
            &c,
            &s,
            &seg(u32::MAX - 500, None, 0, 0, false, None)
        ));
    }

    #[test]
    fn wscale_is_found_among_options() {
        // MSS 1460, SACK permitted, timestamps, NOP, wscale 7.
        let opts = [
            2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        assert_eq!(parse_wscale(&opts), Some(7));
        assert_eq!(parse_wscale(&[2, 4, 5, 180]), None);
        assert_eq!(parse_wscale(&[3, 200]), None, "a bad length ends the parse");
        assert_eq!(parse_wscale(&[]), None);
    }
}
