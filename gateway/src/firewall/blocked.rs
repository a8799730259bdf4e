//! Pure: what a camera tried that the isolation rules blocked, read from
//! the packets those rules log (NFLOG group [`LOG_GROUP`]): where the
//! packet was dropped (the log prefix), the camera's MAC and the start of
//! the packet.

use std::net::IpAddr;

use etherparse::{LaxNetSlice, LaxSlicedPacket};
use serde::Serialize;

/// The NFLOG group the isolation rules log to; camgate binds it in its own
/// network namespace.
pub const LOG_GROUP: u16 = 3077;
/// Bytes of each logged packet: an IPv6 header with extension headers and
/// the start of the transport header.
pub const LOG_SNAPLEN: u32 = 128;

/// Ports Mirai and its variants scan and report to (telnet, TR-069,
/// Huawei HG532, the report port): an attempt means the camera is probably
/// compromised.
pub const MIRAI_PORTS: [u16; 5] = [23, 2323, 7547, 37215, 48101];
/// PPPP/CS2 "P2P cloud" registration and LAN search.
pub const P2P_CLOUD_PORTS: [u16; 2] = [32100, 32108];

/// Where a camera's packet was dropped; the log prefix says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DroppedAt {
    /// Routed elsewhere (the internet, the LAN).
    Forward,
    /// To camgate itself, on a port it does not serve cameras.
    Input,
    /// IPv6, at the camera NIC: camgate gives cameras none.
    Ingress,
    /// A known camera's address from another MAC, at the camera NIC.
    Spoofed,
}

impl DroppedAt {
    pub const ALL: [Self; 4] = [Self::Forward, Self::Input, Self::Ingress, Self::Spoofed];

    pub fn prefix(self) -> &'static str {
        match self {
            Self::Forward => "camera-forward",
            Self::Input => "camera-input",
            Self::Ingress => "camera-ipv6",
            Self::Spoofed => "camera-spoofed",
        }
    }
}

/// What an attempt looks like, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Sent with a known camera's address from another MAC.
    Spoofed,
    /// A Mirai port: the camera is probably compromised.
    Mirai,
    /// A P2P-cloud port: the camera phones its vendor's cloud.
    P2pCloud,
    /// camgate itself, a port it does not offer cameras.
    Camgate,
    /// Over IPv6.
    Ipv6,
    /// Anywhere else.
    Egress,
}

/// One blocked packet from a camera.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The sender's MAC, when the packet came in over Ethernet.
    pub mac: Option<String>,
    pub source: IpAddr,
    pub destination: IpAddr,
    /// `tcp`, `udp`, `icmp`, `ipv6-icmp`, … or the IP protocol number.
    pub protocol: String,
    /// TCP/UDP destination port (none for a later fragment).
    pub port: Option<u16>,
    /// ICMP type.
    pub icmp_type: Option<u8>,
    pub kind: Kind,
}

/// Receives the attempts camgate reads from the log.
pub trait AttemptSink: Send + Sync + std::fmt::Debug {
    /// `now` in Unix seconds.
    fn attempt(&self, attempt: Attempt, now: u64);
    /// Whether the log can be read, and if not why.
    fn log_state(&self, state: &str);
}

/// The attempt in a logged packet; `None` when the prefix is not one of the
/// isolation rules' or the packet is not IP.
pub fn parse(prefix: &str, mac: Option<[u8; 6]>, packet: &[u8]) -> Option<Attempt> {
    let dropped_at = DroppedAt::ALL.into_iter().find(|at| at.prefix() == prefix)?;
    let mac = mac.map(|m| {
        m.iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    });
    let sliced = LaxSlicedPacket::from_ip(packet).ok()?;
    let (source, destination, payload) = match sliced.net? {
        LaxNetSlice::Ipv4(ip) => (
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
            ip.payload().clone(),
        ),
        LaxNetSlice::Ipv6(ip) => (
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
            ip.payload().clone(),
        ),
        LaxNetSlice::Arp(_) => return None,
    };
    let number = payload.ip_number.0;
    // Read straight from the transport header's first bytes: the snapshot
    // may end inside a TCP header's options, which a full parse rejects.
    let start = (!payload.fragmented).then_some(payload.payload);
    let (port, icmp_type) = match number {
        6 | 17 | 132 | 136 => (
            start
                .and_then(|s| s.get(2..4))
                .map(|p| u16::from_be_bytes([p[0], p[1]])),
            None,
        ),
        1 | 58 => (None, start.and_then(|s| s.first().copied())),
        _ => (None, None),
    };
    let protocol = match number {
        1 => "icmp".to_owned(),
        2 => "igmp".to_owned(),
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        58 => "ipv6-icmp".to_owned(),
        132 => "sctp".to_owned(),
        other => other.to_string(),
    };
    let kind = match (port, dropped_at) {
        (_, DroppedAt::Spoofed) => Kind::Spoofed,
        (Some(port), _) if number == 6 && MIRAI_PORTS.contains(&port) => Kind::Mirai,
        (Some(port), _) if number == 17 && P2P_CLOUD_PORTS.contains(&port) => Kind::P2pCloud,
        (_, DroppedAt::Ingress) => Kind::Ipv6,
        (_, DroppedAt::Input) => Kind::Camgate,
        (_, DroppedAt::Forward) => Kind::Egress,
    };
    Some(Attempt {
        mac,
        source,
        destination,
        protocol,
        port,
        icmp_type,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0xaa, 0xbb, 0xcc, 0, 0x11, 0x22];

    fn ipv4(protocol: u8, destination: [u8; 4], transport: &[u8]) -> Vec<u8> {
        let total = u16::try_from(20 + transport.len()).unwrap() + 40; // snapped: longer than logged
        let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0, 10, 77, 0, 66];
        packet[2..4].copy_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&destination);
        packet.extend_from_slice(transport);
        packet
    }

    fn ipv6(next_header: u8, after: &[u8]) -> Vec<u8> {
        let mut packet = vec![0x60, 0, 0, 0];
        packet.extend_from_slice(&u16::try_from(after.len()).unwrap().to_be_bytes());
        packet.extend_from_slice(&[next_header, 64]);
        packet.extend_from_slice(&"fd77:1::66".parse::<std::net::Ipv6Addr>().unwrap().octets());
        packet.extend_from_slice(&"2001:db8:9::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        packet.extend_from_slice(after);
        packet
    }

    fn summary(attempt: &Attempt) -> (String, String, Option<u16>, Option<u8>, Kind) {
        (
            attempt.destination.to_string(),
            attempt.protocol.clone(),
            attempt.port,
            attempt.icmp_type,
            attempt.kind,
        )
    }

    #[test]
    fn classifies_by_port_then_by_where_it_was_dropped() {
        // A TCP SYN to telnet with only 4 bytes of its header logged.
        let telnet = parse(
            "camera-forward",
            Some(MAC),
            &ipv4(6, [203, 0, 113, 2], &[0x9c, 0x40, 0, 23]),
        )
        .unwrap();
        assert_eq!(
            summary(&telnet),
            (
                "203.0.113.2".to_owned(),
                "tcp".to_owned(),
                Some(23),
                None,
                Kind::Mirai
            )
        );
        assert_eq!(telnet.mac.as_deref(), Some("aa:bb:cc:00:11:22"));
        assert_eq!(telnet.source.to_string(), "10.77.0.66");
        let udp = |port: u16| {
            let mut header = vec![0x30, 0x39];
            header.extend_from_slice(&port.to_be_bytes());
            header.extend_from_slice(&[0, 8, 0, 0]);
            header
        };
        let p2p = parse("camera-forward", None, &ipv4(17, [8, 8, 8, 8], &udp(32100))).unwrap();
        assert_eq!(p2p.kind, Kind::P2pCloud);
        assert_eq!(p2p.mac, None);
        let dns = parse("camera-forward", None, &ipv4(17, [8, 8, 8, 8], &udp(53))).unwrap();
        assert_eq!((dns.kind, dns.port), (Kind::Egress, Some(53)));
        let on_camgate = parse("camera-input", None, &ipv4(17, [10, 77, 0, 1], &udp(1900))).unwrap();
        assert_eq!(on_camgate.kind, Kind::Camgate);
        let ping = parse(
            "camera-forward",
            None,
            &ipv4(1, [192, 168, 77, 50], &[8, 0, 0, 0]),
        )
        .unwrap();
        assert_eq!(
            summary(&ping),
            (
                "192.168.77.50".to_owned(),
                "icmp".to_owned(),
                None,
                Some(8),
                Kind::Egress
            )
        );
        let gre = parse("camera-forward", None, &ipv4(47, [192, 168, 77, 50], &[])).unwrap();
        assert_eq!((gre.protocol.as_str(), gre.port), ("47", None));
    }

    #[test]
    fn ipv6_is_read_through_extension_headers() {
        let ping = parse("camera-ipv6", Some(MAC), &ipv6(58, &[128, 0, 0, 0])).unwrap();
        assert_eq!(
            summary(&ping),
            (
                "2001:db8:9::2".to_owned(),
                "ipv6-icmp".to_owned(),
                None,
                Some(128),
                Kind::Ipv6
            )
        );
        // Hop-by-hop options (8 bytes) before a TCP header to telnet.
        let mut after = vec![6, 0, 1, 4, 0, 0, 0, 0];
        after.extend_from_slice(&[0xc0, 0x00, 0, 23]);
        let telnet = parse("camera-ipv6", None, &ipv6(0, &after)).unwrap();
        assert_eq!(
            (telnet.protocol.as_str(), telnet.port, telnet.kind),
            ("tcp", Some(23), Kind::Mirai)
        );
    }

    #[test]
    fn a_spoofed_address_is_reported_as_such_whatever_the_port() {
        let dns = parse(
            "camera-spoofed",
            Some(MAC),
            &ipv4(17, [10, 77, 0, 1], &[0, 1, 0, 53]),
        )
        .unwrap();
        assert_eq!((dns.kind, dns.port), (Kind::Spoofed, Some(53)));
        let telnet = parse(
            "camera-spoofed",
            Some(MAC),
            &ipv4(6, [10, 77, 0, 1], &[0, 1, 0, 23]),
        )
        .unwrap();
        assert_eq!(telnet.kind, Kind::Spoofed);
    }

    #[test]
    fn foreign_prefixes_and_junk_are_ignored() {
        let packet = ipv4(6, [203, 0, 113, 2], &[0, 1, 0, 80]);
        assert_eq!(parse("someone-else", None, &packet), None);
        assert_eq!(parse("camera-forward", None, &[]), None);
        assert_eq!(parse("camera-forward", None, &[0x45, 0, 0]), None);
        assert_eq!(parse("camera-forward", None, &[0xff; 64]), None);
        // Truncated right after the IP header: no port, still an attempt.
        let bare = parse("camera-forward", None, &ipv4(6, [203, 0, 113, 2], &[])).unwrap();
        assert_eq!((bare.port, bare.kind), (None, Kind::Egress));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(prefix in "camera-(forward|input|ipv6|spoofed)", bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..160)) {
            let _ = parse(&prefix, None, &bytes);
        }
    }
}
