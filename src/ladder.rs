//! `tunlb ladder CAPTURE --flow N`: one connection of a `--pcap` capture as
//! the textbook's sequence diagram, in SVG.
//!
//! Three columns: the client, tunlb, the backend. Each packet is one arrow
//! from its sender to tunlb's column, labelled with its flags, relative
//! sequence and acknowledgment numbers, length and addresses as received;
//! then one arrow from tunlb to its receiver with the addresses as sent,
//! after NAT. A dropped packet ends at tunlb with a red cross and the
//! reason. What tunlb noted in the capture (the NAT decision, state
//! changes, drops) is written in a box on tunlb's column under the packet
//! that caused it.
//!
//! Flows are numbered from 1 in the order their first packet appears in
//! the capture; without `--flow`, `tunlb ladder CAPTURE` lists them. A flow
//! is recognised by its NAT decision comment, or, for one that began before
//! the capture, by the first packet tunlb translated for it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};

use crate::conntrack::tuple::Endpoint;
use crate::conntrack::{Direction, Tuple};
use crate::pcap::{Capture, AFTER, BEFORE};

/// The endpoint of a socket address, either family.
fn endpoint(s: SocketAddr) -> Endpoint<IpAddr> {
    Endpoint::new(s.ip(), s.port())
}

/// A TCP segment as the ladder shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// The TCP flags byte.
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Payload length.
    pub len: usize,
}

impl Seg {
    /// Parse an IPv4 or IPv6 TCP packet (IPv6 without extension headers);
    /// `None` for anything else.
    pub fn parse(data: &[u8]) -> Option<Seg> {
        let (src, dst, payload): (IpAddr, IpAddr, &[u8]) = match data.first()? >> 4 {
            4 => {
                let ip = Ipv4Packet::new_checked(data).ok()?;
                if ip.next_header() != IpProtocol::Tcp {
                    return None;
                }
                let payload = &data[usize::from(ip.header_len())..usize::from(ip.total_len())];
                (ip.src_addr().into(), ip.dst_addr().into(), payload)
            }
            6 => {
                let ip = Ipv6Packet::new_checked(data).ok()?;
                if ip.next_header() != IpProtocol::Tcp {
                    return None;
                }
                let payload = &data[40..ip.total_len()];
                (ip.src_addr().into(), ip.dst_addr().into(), payload)
            }
            _ => return None,
        };
        let tcp = TcpPacket::new_checked(payload).ok()?;
        Some(Seg {
            src: SocketAddr::new(src, tcp.src_port()),
            dst: SocketAddr::new(dst, tcp.dst_port()),
            flags: payload[13],
            seq: tcp.seq_number().0 as u32,
            ack: tcp.ack_number().0 as u32,
            len: tcp.payload().len(),
        })
    }

    /// The segment's tuple.
    pub fn tuple(&self) -> Tuple<IpAddr> {
        Tuple {
            src: endpoint(self.src),
            dst: endpoint(self.dst),
        }
    }

    /// The flags as Wireshark lists them: `SYN, ACK`.
    pub fn flag_names(&self) -> String {
        const NAMES: [(u8, &str); 6] = [
            (0x02, "SYN"),
            (0x01, "FIN"),
            (0x04, "RST"),
            (0x08, "PSH"),
            (0x10, "ACK"),
            (0x20, "URG"),
        ];
        let names: Vec<&str> = NAMES
            .iter()
            .filter(|(bit, _)| self.flags & bit != 0)
            .map(|(_, n)| *n)
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

/// One packet of a flow: as received, as sent (if it was), and tunlb's notes.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Microseconds since the Unix epoch.
    pub ts_us: u64,
    /// As received, before NAT.
    pub before: Seg,
    /// As sent, after NAT; `None` when dropped.
    pub after: Option<Seg>,
    /// The conntrack direction.
    pub dir: Direction,
    /// tunlb's comments on it.
    pub notes: Vec<String>,
}

/// One connection found in a capture.
#[derive(Debug, Clone)]
pub struct Flow {
    /// The ORIGINAL tuple (client -> VIP).
    pub original: Tuple<IpAddr>,
    /// The REPLY tuple (backend -> MASQUERADE address).
    pub reply: Tuple<IpAddr>,
    /// The NAT decision comment, when the capture holds the flow's start.
    pub decision: Option<String>,
    /// Its packets, in capture order.
    pub packets: Vec<Packet>,
}

/// Parse `NEW C -> V => DNAT B, MASQ S (...)` into (original, reply).
fn parse_decision(c: &str) -> Option<(Tuple<IpAddr>, Tuple<IpAddr>)> {
    let w: Vec<&str> = c.split_whitespace().collect();
    if !matches!(w.first(), Some(&"NEW" | &"PICKUP")) || w.len() < 9 {
        return None;
    }
    let addr = |s: &str| {
        s.trim_end_matches(',')
            .parse::<SocketAddr>()
            .ok()
            .map(endpoint)
    };
    let original = Tuple {
        src: addr(w[1])?,
        dst: addr(w[3])?,
    };
    let reply = Tuple {
        src: addr(w[6])?,
        dst: addr(w[8])?,
    };
    Some((original, reply))
}

/// Find the TCP connections of a capture written by `--pcap`.
pub fn flows(cap: &Capture) -> Vec<Flow> {
    let mut flows: Vec<Flow> = Vec::new();
    let mut index: HashMap<Tuple<IpAddr>, (usize, Direction)> = HashMap::new();
    let recs = &cap.records;
    for (i, rec) in recs.iter().enumerate() {
        if rec.iface != BEFORE {
            continue;
        }
        let Some(before) = Seg::parse(&rec.data) else {
            continue;
        };
        let sent = recs.get(i + 1).filter(|r| r.iface == AFTER);
        let after = sent.and_then(|r| Seg::parse(&r.data));
        let mut notes = rec.comments.clone();
        notes.extend(sent.iter().flat_map(|r| r.comments.iter().cloned()));
        let decided = rec.comments.iter().find_map(|c| {
            let (o, r) = parse_decision(c)?;
            Some((o, r, c.clone()))
        });
        if let Some((original, reply, decision)) = decided {
            index.insert(original, (flows.len(), Direction::Original));
            index.insert(reply, (flows.len(), Direction::Reply));
            flows.push(Flow {
                original,
                reply,
                decision: Some(decision),
                packets: Vec::new(),
            });
        }
        let (fi, dir) = match (index.get(&before.tuple()), after) {
            (Some(&found), _) => found,
            (None, Some(a)) => {
                // Under way before the capture began: this packet, as
                // received and as sent, gives both tuples.
                let (original, reply) = (before.tuple(), a.tuple().invert());
                index.insert(original, (flows.len(), Direction::Original));
                index.insert(reply, (flows.len(), Direction::Reply));
                flows.push(Flow {
                    original,
                    reply,
                    decision: None,
                    packets: Vec::new(),
                });
                (flows.len() - 1, Direction::Original)
            }
            (None, None) => continue,
        };
        flows[fi].packets.push(Packet {
            ts_us: rec.ts_us,
            before,
            after,
            dir,
            notes,
        });
    }
    flows
}

/// One line per flow: `N  client -> VIP => backend (P packets)`.
pub fn list(flows: &[Flow]) -> String {
    let mut out = String::new();
    for (i, f) in flows.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>4}  {} => {} ({} packets){}",
            i + 1,
            f.original,
            f.reply.src,
            f.packets.len(),
            if f.decision.is_none() {
                ", begun before the capture"
            } else {
                ""
            }
        );
    }
    out
}

/// Escape text for XML.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            c if (c as u32) < 0x20 => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

const X_TIME: i32 = 92;
const X_CLIENT: i32 = 200;
const X_TUNLB: i32 = 500;
const X_BACKEND: i32 = 800;
const WIDTH: i32 = 960;
const ROW: i32 = 56;
const NOTE: i32 = 22;
const TOP: i32 = 150;

/// The short form of a note beside tunlb's column.
fn short_note(n: &str) -> String {
    let w: Vec<&str> = n.split_whitespace().collect();
    match w.first() {
        // STATE C -> V OLD -> NEW
        Some(&"STATE") if w.len() >= 7 => format!("{} \u{2192} {}", w[4], w[6]),
        Some(&"NEW" | &"PICKUP") => match n.split_once("=> ") {
            Some((_, rest)) => format!("{} {rest}", w[0]),
            None => n.to_owned(),
        },
        Some(&"DESTROY") => match n.split_once(" in ") {
            Some((_, rest)) => format!("DESTROY in {rest}"),
            None => n.to_owned(),
        },
        _ => n.to_owned(),
    }
}

/// Draw `flow` as an SVG sequence diagram (see the module docs).
pub fn svg(flow: &Flow) -> String {
    // Relative sequence numbers, from each side's SYN (or first segment).
    let isn = |dir: Direction| {
        let first = flow.packets.iter().find(|p| p.dir == dir)?;
        let syn = flow
            .packets
            .iter()
            .find(|p| p.dir == dir && p.before.flags & 0x02 != 0);
        Some(syn.unwrap_or(first).before.seq)
    };
    let (isn_c, isn_b) = (isn(Direction::Original), isn(Direction::Reply));
    let rel = |v: u32, base: Option<u32>| base.map_or(v, |b| v.wrapping_sub(b));
    let t0 = flow.packets.first().map_or(0, |p| p.ts_us);
    let column = |a: SocketAddr, fallback: i32| {
        if endpoint(a) == flow.original.src {
            X_CLIENT
        } else if endpoint(a) == flow.reply.src {
            X_BACKEND
        } else {
            fallback
        }
    };

    let mut body = String::new();
    let mut y = TOP;
    for (n, p) in flow.packets.iter().enumerate() {
        let (isn_self, isn_peer) = match p.dir {
            Direction::Original => (isn_c, isn_b),
            Direction::Reply => (isn_b, isn_c),
        };
        let s = &p.before;
        let mut label = format!("{} seq={}", s.flag_names(), rel(s.seq, isn_self));
        if s.flags & 0x10 != 0 {
            let _ = write!(label, " ack={}", rel(s.ack, isn_peer));
        }
        let _ = write!(label, " len={}", s.len);
        let from = column(s.src, X_CLIENT);
        let title = format!(
            "packet {}: {} -> {} as received; {}; seq {} ack {}{}",
            n + 1,
            s.src,
            s.dst,
            p.after.map_or("dropped".to_owned(), |a| format!(
                "{} -> {} as sent",
                a.src, a.dst
            )),
            s.seq,
            s.ack,
            p.notes.iter().map(|c| format!("; {c}")).collect::<String>()
        );
        let _ = writeln!(
            body,
            r#"<g class="packet" data-n="{}" data-dir="{}"><title>{}</title>"#,
            n + 1,
            p.dir,
            esc(&title)
        );
        let _ = writeln!(
            body,
            r#"<text x="{X_TIME}" y="{}" class="time">+{:.3} ms</text>"#,
            y + 12,
            p.ts_us.saturating_sub(t0) as f64 / 1000.0
        );
        arrow(
            &mut body,
            (from, y + 10),
            (X_TUNLB, y + 24),
            &label,
            &format!("{} \u{2192} {}", s.src, s.dst),
            p.after.is_none(),
        );
        if let Some(a) = p.after {
            let to = column(
                a.dst,
                if from == X_CLIENT {
                    X_BACKEND
                } else {
                    X_CLIENT
                },
            );
            arrow(
                &mut body,
                (X_TUNLB, y + 24),
                (to, y + 38),
                &label,
                &format!("{} \u{2192} {}", a.src, a.dst),
                false,
            );
        }
        y += ROW;
        for note in &p.notes {
            let text = short_note(note);
            let w = (text.chars().count() as i32 * 7 + 16).min(WIDTH - 40);
            let class = if note.starts_with("DROP") {
                "note drop"
            } else {
                "note"
            };
            let _ = writeln!(
                body,
                r#"<rect class="{class}" x="{}" y="{}" width="{w}" height="18" rx="4"/><text class="notetext" x="{X_TUNLB}" y="{}">{}</text>"#,
                (X_TUNLB - w / 2).max(20),
                y - 4,
                y + 9,
                esc(&text)
            );
            y += NOTE;
        }
        body.push_str("</g>\n");
    }
    let height = y + 30;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">
<title>{}</title>
<style>
  .life {{ stroke: #888; stroke-dasharray: 4 4; }}
  .head {{ fill: #eef3fb; stroke: #4a6fa5; }}
  .name {{ font-weight: bold; text-anchor: middle; }}
  .addr {{ fill: #444; text-anchor: middle; font-size: 11px; }}
  .arrow {{ stroke: #1f4e8c; stroke-width: 1.4; }}
  .dropped {{ stroke: #b22; stroke-width: 1.4; }}
  .flags {{ text-anchor: middle; fill: #111; }}
  .tuple {{ text-anchor: middle; fill: #666; font-size: 10px; }}
  .time {{ text-anchor: end; fill: #666; font-size: 10px; }}
  .note {{ fill: #fff8dc; stroke: #c9a227; }}
  .drop {{ fill: #fde2e2; stroke: #b22; }}
  .notetext {{ text-anchor: middle; font-size: 11px; }}
  .caption {{ text-anchor: middle; font-size: 12px; fill: #333; }}
</style>
<defs><marker id="head" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#1f4e8c"/></marker></defs>
<rect width="100%" height="100%" fill="white"/>"##,
        esc(&format!("tunlb ladder: {}", flow.original))
    );
    let caption = flow.decision.clone().unwrap_or_else(|| {
        format!(
            "{} (begun before the capture): DNAT {}, MASQ {}",
            flow.original, flow.reply.src, flow.reply.dst
        )
    });
    let _ = writeln!(
        out,
        r#"<text class="caption" x="{}" y="22">{}</text>"#,
        WIDTH / 2,
        esc(&caption)
    );
    let heads = [
        (X_CLIENT, "client", flow.original.src.ip().to_string()),
        (
            X_TUNLB,
            "tunlb",
            format!(
                "VIP {} / MASQ {}",
                flow.original.dst.ip(),
                flow.reply.dst.ip()
            ),
        ),
        (X_BACKEND, "backend", flow.reply.src.ip().to_string()),
    ];
    for (x, name, addr) in heads {
        let _ = writeln!(
            out,
            r#"<rect class="head" x="{}" y="44" width="200" height="46" rx="6"/><text class="name" x="{x}" y="63">{name}</text><text class="addr" x="{x}" y="81">{}</text><line class="life" x1="{x}" y1="90" x2="{x}" y2="{}"/>"#,
            x - 100,
            esc(&addr),
            height - 20
        );
    }
    let _ = writeln!(
        out,
        r#"<text class="caption" x="{}" y="118">client side: to and from the VIP</text><text class="caption" x="{}" y="118">backend side: after DNAT and MASQUERADE</text>"#,
        (X_CLIENT + X_TUNLB) / 2,
        (X_TUNLB + X_BACKEND) / 2
    );
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

/// One arrow from `(x1, ya)` to `(x2, yb)`, with its label above and the
/// addresses below; `dropped`: it ends in a red cross.
fn arrow(
    out: &mut String,
    (x1, ya): (i32, i32),
    (x2, yb): (i32, i32),
    label: &str,
    tuple: &str,
    dropped: bool,
) {
    let (mid, ymid) = ((x1 + x2) / 2, (ya + yb) / 2);
    if dropped {
        let end = x2 - (x2 - x1).signum() * 12;
        let _ = writeln!(
            out,
            r#"<line class="dropped" x1="{x1}" y1="{ya}" x2="{end}" y2="{yb}"/><path class="dropped" d="M{},{} l12,12 m0,-12 l-12,12"/>"#,
            end - 6,
            yb - 6
        );
    } else {
        let _ = writeln!(
            out,
            r#"<line class="arrow" x1="{x1}" y1="{ya}" x2="{x2}" y2="{yb}" marker-end="url(#head)"/>"#
        );
    }
    let _ = writeln!(
        out,
        r#"<text class="flags" x="{mid}" y="{}">{}</text><text class="tuple" x="{mid}" y="{}">{}</text>"#,
        ymid - 10,
        esc(label),
        ymid + 17,
        esc(tuple)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::craft::Segment;
    use crate::engine::Verdict;
    use crate::nat::L4Checksum;
    use crate::pcap::{Limit, Recorder};
    use crate::time::Timestamp;

    /// A capture of one whole connection (handshake, data, FIN both ways),
    /// one stray packet dropped, and a second connection's SYN.
    fn capture() -> Capture {
        let e = crate::testing::engine();
        let path = std::env::temp_dir().join(format!("tunlb-{}-ladder.pcapng", std::process::id()));
        let rec = Recorder::create(&path, Limit::DEFAULT).unwrap();
        let c: std::net::SocketAddrV4 = "198.18.1.2:40000".parse().unwrap();
        let v: std::net::SocketAddrV4 = "198.18.0.1:80".parse().unwrap();
        let send = |mut p: Vec<u8>| {
            let verdict =
                rec.handle_packet(&e, &mut p, Timestamp::ZERO, L4Checksum::Complete, false);
            matches!(verdict, Verdict::Forward { .. })
        };
        let seg = |src, dst, flags, seq, ack, payload: &[u8]| {
            Segment {
                seq,
                ack,
                payload,
                ..Segment::new(src, dst, flags)
            }
            .build()
        };
        assert!(send(seg(c, v, 0x02, 1000, 0, b"")));
        let (b, s) = {
            let (f, _) = e
                .flow_of(&Tuple {
                    src: c.into(),
                    dst: v.into(),
                })
                .unwrap();
            (
                std::net::SocketAddrV4::from(f.reply.src),
                std::net::SocketAddrV4::from(f.reply.dst),
            )
        };
        assert!(send(seg(b, s, 0x12, 5000, 1001, b"")));
        assert!(send(seg(c, v, 0x10, 1001, 5001, b"")));
        let stray: std::net::SocketAddrV4 = "198.18.1.9:9".parse().unwrap();
        assert!(!send(seg(stray, v, 0x10, 0, 0, b"")));
        assert!(send(seg(c, v, 0x18, 1001, 5001, b"GET / HTTP/1.0\r\n\r\n")));
        assert!(send(seg(b, s, 0x11, 5001, 1019, b"")));
        assert!(send(seg(c, v, 0x11, 1019, 5002, b"")));
        assert!(send(seg(b, s, 0x10, 5002, 1020, b"")));
        let other: std::net::SocketAddrV4 = "198.18.1.2:40001".parse().unwrap();
        assert!(send(seg(other, v, 0x02, 0, 0, b"")));
        rec.finish();
        let cap = crate::pcap::read(std::fs::File::open(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        cap
    }

    #[test]
    fn finds_the_flows_with_every_packet_and_direction() {
        let flows = flows(&capture());
        assert_eq!(flows.len(), 2);
        let f = &flows[0];
        assert_eq!(f.packets.len(), 7);
        let dirs: String = f
            .packets
            .iter()
            .map(|p| match p.dir {
                Direction::Original => 'o',
                Direction::Reply => 'r',
            })
            .collect();
        assert_eq!(dirs, "orooror");
        assert!(f.packets.iter().all(|p| p.after.is_some()));
        assert_eq!(
            f.packets[1].after.unwrap().dst,
            f.original.src.to_socket(),
            "the SYN-ACK goes to the client"
        );
        assert!(f
            .decision
            .as_deref()
            .unwrap()
            .starts_with("NEW 198.18.1.2:40000 -> 198.18.0.1:80 => DNAT 198.18.2.3:80"));
        assert_eq!(flows[1].packets.len(), 1);
        let l = list(&flows);
        assert!(
            l.starts_with("   1  198.18.1.2:40000 -> 198.18.0.1:80 => 198.18.2.3:80 (7 packets)\n"),
            "{l}"
        );
    }

    #[test]
    fn the_svg_is_well_formed_and_holds_every_packet() {
        let flows = flows(&capture());
        let svg = svg(&flows[0]);
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        let packets: Vec<_> = root
            .descendants()
            .filter(|n| n.attribute("class") == Some("packet"))
            .collect();
        assert_eq!(packets.len(), 7);
        let ns: Vec<&str> = packets
            .iter()
            .map(|p| p.attribute("data-n").unwrap())
            .collect();
        assert_eq!(ns, ["1", "2", "3", "4", "5", "6", "7"]);
        let texts = |n: &roxmltree::Node| -> Vec<String> {
            n.descendants()
                .filter(|t| t.is_text())
                .map(|t| t.text().unwrap().to_owned())
                .collect()
        };
        let first = texts(&packets[0]);
        assert!(first.contains(&"SYN seq=0 len=0".to_owned()), "{first:?}");
        assert!(
            first.contains(&"198.18.1.2:40000 \u{2192} 198.18.0.1:80".to_owned()),
            "{first:?}"
        );
        assert!(
            first
                .iter()
                .any(|t| t.starts_with("198.18.0.1:") && t.ends_with("\u{2192} 198.18.2.3:80")),
            "{first:?}"
        );
        assert!(
            first
                .iter()
                .any(|t| t.starts_with("NEW DNAT 198.18.2.3:80")),
            "{first:?}"
        );
        let second = texts(&packets[1]);
        assert!(
            second.contains(&"SYN, ACK seq=0 ack=1 len=0".to_owned()),
            "{second:?}"
        );
        assert!(
            second.contains(&"SYN_SENT \u{2192} SYN_RECV".to_owned()),
            "{second:?}"
        );
        let request = texts(&packets[3]);
        assert!(
            request.contains(&"PSH, ACK seq=1 ack=1 len=18".to_owned()),
            "{request:?}"
        );
        let last = texts(&packets[6]);
        assert!(
            last.iter().any(|t| t.ends_with("\u{2192} TIME_WAIT")),
            "{last:?}"
        );
    }
}
