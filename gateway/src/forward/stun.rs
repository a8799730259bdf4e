//! STUN (RFC 8489) and TURN ChannelData (RFC 8656) framing: the guard's
//! classifier, and the Binding response of camgate's own STUN responder.
//!
//! Hand-written rather than a STUN crate: the guard must accept exactly the
//! datagrams the nftables expression in `firewall::ruleset` accepts (both are
//! built from [`STUN_LENGTHS`] and [`CHANNEL_DATA_LENGTHS`]), and the
//! responder needs one attribute.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
/// The largest UDP payload the guard passes: a full 1500-byte IPv4 packet.
/// TURN clients keep datagrams under the path MTU; larger ones would arrive
/// fragmented, which a WebRTC stack avoids.
pub const MAX_PAYLOAD: usize = 1472;
/// STUN method Allocate (TURN), class request.
pub const ALLOCATE_REQUEST: u16 = 0x0003;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// ChannelData channel numbers: RFC 5766's 0x4000-0x7FFF (the first two
/// bits 01), not RFC 8656's narrower 0x4000-0x4FFF, because clients in use
/// still pick from the old range (coturn's own client does, and coturn
/// accepts it): the strict range would drop their media.
pub const CHANNELS: RangeInclusive<u16> = 0x4000..=0x7FFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// A STUN message; `message_type` is the 14-bit type (method and class).
    Stun {
        message_type: u16,
    },
    ChannelData {
        channel: u16,
    },
    /// Neither: the guard drops it.
    Invalid,
}

impl Datagram {
    pub fn is_allocate(self) -> bool {
        self == Self::Stun {
            message_type: ALLOCATE_REQUEST,
        }
    }
}

/// What a datagram is, judged only by its framing.
pub fn classify(payload: &[u8]) -> Datagram {
    let len = payload.len();
    if !(4..=MAX_PAYLOAD).contains(&len) {
        return Datagram::Invalid;
    }
    let first = u16::from_be_bytes([payload[0], payload[1]]);
    let declared = usize::from(u16::from_be_bytes([payload[2], payload[3]]));
    if first >> 14 == 0 {
        let stun = len >= HEADER_LEN
            && u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]) == MAGIC_COOKIE
            && declared % 4 == 0
            && declared == len - HEADER_LEN;
        if stun {
            return Datagram::Stun { message_type: first };
        }
    } else if CHANNELS.contains(&first) && channel_data_fits(declared, len) {
        return Datagram::ChannelData { channel: first };
    }
    Datagram::Invalid
}

/// Over UDP the data may or may not be padded to a multiple of 4 (RFC 8656
/// §12.5): the datagram is the 4-byte header plus the data, plus at most
/// the padding.
fn channel_data_fits(declared: usize, len: usize) -> bool {
    (4 + declared..=4 + declared.next_multiple_of(4)).contains(&len)
}

/// Every valid `(UDP length, STUN length field)` pair: the STUN rule's set
/// in nftables, where a field cannot be compared with another.
pub fn stun_lengths() -> impl Iterator<Item = (u16, u16)> {
    (0..=MAX_PAYLOAD - HEADER_LEN)
        .step_by(4)
        .map(|declared| (udp_length(HEADER_LEN + declared), to_u16(declared)))
}

/// Every valid ChannelData length field with the range of UDP lengths it
/// fits in: the ChannelData rule's set in nftables.
pub fn channel_data_lengths() -> impl Iterator<Item = (RangeInclusive<u16>, u16)> {
    (0..=MAX_PAYLOAD - 4).map(|declared| {
        let shortest = 4 + declared;
        let longest = (4 + declared.next_multiple_of(4)).min(MAX_PAYLOAD);
        (udp_length(shortest)..=udp_length(longest), to_u16(declared))
    })
}

/// The UDP header's length field for a payload of `len` bytes.
fn udp_length(len: usize) -> u16 {
    to_u16(len + 8)
}

fn to_u16(n: usize) -> u16 {
    u16::try_from(n).expect("bounded by MAX_PAYLOAD")
}

/// The Binding success response to `request` from `client`, or `None` when
/// `request` is not a well-formed Binding request. The response carries
/// XOR-MAPPED-ADDRESS only; RFC 8489 requires nothing else of a server
/// without credentials.
pub fn binding_response(request: &[u8], client: SocketAddr) -> Option<Vec<u8>> {
    if classify(request)
        != (Datagram::Stun {
            message_type: BINDING_REQUEST,
        })
    {
        return None;
    }
    let transaction = &request[8..20];
    let port = client.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut xor = [0u8; 16];
    xor[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    xor[4..].copy_from_slice(transaction);
    let (family, address): (u8, Vec<u8>) = match client.ip().to_canonical() {
        IpAddr::V4(ip) => (1, ip.octets().iter().zip(&xor).map(|(a, k)| a ^ k).collect()),
        IpAddr::V6(ip) => (2, ip.octets().iter().zip(&xor).map(|(a, k)| a ^ k).collect()),
    };
    let value_len = 4 + address.len();
    let mut response = Vec::with_capacity(HEADER_LEN + 4 + value_len);
    response.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    response.extend_from_slice(&to_u16(4 + value_len).to_be_bytes());
    response.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    response.extend_from_slice(transaction);
    response.extend_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    response.extend_from_slice(&to_u16(value_len).to_be_bytes());
    response.extend_from_slice(&[0, family]);
    response.extend_from_slice(&port.to_be_bytes());
    response.extend_from_slice(&address);
    Some(response)
}

/// Properties the fuzz target and the property test check: no panic; the
/// classifier agrees with the length tables nftables gets; a response is
/// itself a well-formed STUN message.
pub fn check_properties(payload: &[u8]) {
    let class = classify(payload);
    if payload.len() >= 4 && payload.len() <= MAX_PAYLOAD {
        let udp = udp_length(payload.len());
        let declared = u16::from_be_bytes([payload[2], payload[3]]);
        let top = payload[0] >> 6;
        let nft_stun = top == 0
            && payload.len() >= 8
            && payload[4..8] == MAGIC_COOKIE.to_be_bytes()
            && stun_lengths().any(|pair| pair == (udp, declared));
        let nft_channel = payload[0] >> 6 == 1
            && channel_data_lengths().any(|(range, d)| d == declared && range.contains(&udp));
        assert_eq!(matches!(class, Datagram::Stun { .. }), nft_stun, "{payload:02x?}");
        assert_eq!(
            matches!(class, Datagram::ChannelData { .. }),
            nft_channel,
            "{payload:02x?}"
        );
    } else {
        assert_eq!(class, Datagram::Invalid);
    }
    let client = SocketAddr::from(([192, 0, 2, 1], 4242));
    if let Some(response) = binding_response(payload, client) {
        assert!(
            matches!(classify(&response), Datagram::Stun { message_type } if message_type == BINDING_SUCCESS)
        );
        assert_eq!(response[8..20], payload[8..20]);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn stun(message_type: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&message_type.to_be_bytes());
        m.extend_from_slice(&to_u16(body.len()).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn classifies_stun_and_channel_data() {
        assert_eq!(classify(&stun(1, &[])), Datagram::Stun { message_type: 1 });
        assert!(classify(&stun(ALLOCATE_REQUEST, &[0; 8])).is_allocate());
        // Wrong cookie, length not a multiple of 4, length not the datagram's,
        // top bits set, truncated header.
        let mut wrong_cookie = stun(1, &[]);
        wrong_cookie[4] ^= 1;
        assert_eq!(classify(&wrong_cookie), Datagram::Invalid);
        assert_eq!(classify(&stun(1, &[0; 3])), Datagram::Invalid);
        let mut long = stun(1, &[0; 8]);
        long[3] = 12;
        assert_eq!(classify(&long), Datagram::Invalid);
        let mut truncated = stun(1, &[0; 8]);
        truncated.truncate(24);
        assert_eq!(classify(&truncated), Datagram::Invalid);
        assert_eq!(classify(&stun(1, &[])[..19]), Datagram::Invalid);
        assert_eq!(classify(&stun(0x8001, &[])), Datagram::Invalid);

        assert_eq!(
            classify(&[0x40, 0x01, 0, 3, 1, 2, 3]),
            Datagram::ChannelData { channel: 0x4001 }
        );
        // Padded to 4 is allowed, more is not; nor is a short datagram or a
        // channel outside 0x4000-0x7FFF.
        assert!(matches!(
            classify(&[0x7F, 0xFF, 0, 3, 1, 2, 3, 0]),
            Datagram::ChannelData { .. }
        ));
        assert_eq!(classify(&[0x40, 0x01, 0, 3, 1, 2, 3, 0, 0]), Datagram::Invalid);
        assert_eq!(classify(&[0x40, 0x01, 0, 4, 1, 2, 3]), Datagram::Invalid);
        assert_eq!(classify(&[0x80, 0x00, 0, 0]), Datagram::Invalid);
        assert_eq!(
            classify(&[0x40, 0x00, 0, 0]),
            Datagram::ChannelData { channel: 0x4000 }
        );

        assert_eq!(
            classify(&stun(1, &vec![0; MAX_PAYLOAD - 20])),
            Datagram::Stun { message_type: 1 }
        );
        assert_eq!(classify(&stun(1, &vec![0; MAX_PAYLOAD - 16])), Datagram::Invalid);
    }

    #[test]
    fn binding_response_xors_the_client_address() {
        let request = stun(BINDING_REQUEST, &[]);
        let response = binding_response(&request, "192.0.2.1:32853".parse().unwrap()).unwrap();
        // RFC 5769 §2.2's address and port, XORed with the cookie.
        assert_eq!(&response[20..24], &[0x00, 0x20, 0x00, 0x08]);
        assert_eq!(
            &response[24..32],
            &[0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
        assert_eq!(&response[8..20], &request[8..20]);

        let v6 = binding_response(&request, "[2001:db8::1]:1".parse().unwrap()).unwrap();
        assert_eq!(v6.len(), 20 + 4 + 20);
        assert_eq!(v6[25], 2);
        // An IPv4 client on a dual-stack socket is answered as IPv4.
        let mapped = binding_response(&request, "[::ffff:192.0.2.1]:32853".parse().unwrap()).unwrap();
        assert_eq!(mapped, response);

        assert!(binding_response(&stun(ALLOCATE_REQUEST, &[]), "192.0.2.1:1".parse().unwrap()).is_none());
    }

    #[test]
    fn length_tables_cover_every_size() {
        assert_eq!(stun_lengths().count(), (MAX_PAYLOAD - HEADER_LEN) / 4 + 1);
        assert_eq!(stun_lengths().next(), Some((28, 0)));
        assert_eq!(channel_data_lengths().next(), Some((12..=12, 0)));
        assert_eq!(channel_data_lengths().nth(1), Some((13..=16, 1)));
        // Every datagram size is checked exhaustively against the tables.
        for len in 0..=MAX_PAYLOAD + 1 {
            let mut m = stun(1, &vec![0; len.saturating_sub(20)]);
            m.truncate(len);
            check_properties(&m);
            let mut c = vec![0x40, 0x00];
            c.extend_from_slice(&to_u16(len.saturating_sub(4)).to_be_bytes());
            c.resize(len.max(4), 0);
            check_properties(&c);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            check_properties(&payload);
        }

        #[test]
        fn near_valid_datagrams(body_len in 0usize..64, channel in any::<bool>(), flip in 0usize..24, bit in 0u8..8) {
            let mut m = if channel {
                let mut c = vec![0x40, 0x02];
                c.extend_from_slice(&to_u16(body_len).to_be_bytes());
                c.resize(4 + body_len, 0xAA);
                c
            } else {
                stun(ALLOCATE_REQUEST, &vec![0; body_len / 4 * 4])
            };
            let i = flip % m.len();
            m[i] ^= 1 << bit;
            check_properties(&m);
        }
    }
}
