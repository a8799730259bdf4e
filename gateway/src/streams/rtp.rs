//! RTP packetization for the restream: turns the frames retina depacketized
//! back into RTP packets (RFC 3550), plus the RTCP sender report and the
//! header fields the RTSP server needs.

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut as _, Bytes, BytesMut};

use super::media::Codec;

/// Largest RTP payload camgate sends (fits a 1500-byte MTU with IP/UDP/RTP headers; also fine interleaved on TCP).
pub const MAX_PAYLOAD: usize = 1400;

/// The fixed RTP header: version 2, no padding, extension or CSRCs.
const HEADER_LEN: usize = 12;

/// Interleaved RTSP framing (RFC 2326 §10.12) gives a packet a 16-bit
/// length; stay well under it.
const MAX_AUDIO_PAYLOAD: usize = 65_000;

/// `sizelength=13`: the AU-header's size field holds at most 8191.
const MAX_AAC_AU: usize = (1 << 13) - 1;

/// AU-headers-length (2 bytes) plus one 16-bit AU-header.
const AAC_HEADERS_LEN: usize = 4;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: Duration = Duration::from_secs(2_208_988_800);

/// RTP's own NAL unit types: H.264 STAP-A and FU-A (RFC 6184 §5.2), H.265
/// AP and FU (RFC 7798 §4.4).
const STAP_A: u8 = 24;
const FU_A: u8 = 28;
const AP: u8 = 48;
const FU: u8 = 49;

/// Why a frame could not be packetized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketizeError {
    #[error("frame is empty")]
    EmptyFrame,
    #[error("NAL unit length prefix at byte {offset} is truncated")]
    TruncatedLength { offset: usize },
    #[error("NAL unit at byte {offset} claims {len} bytes but only {available} follow")]
    LengthPastEnd {
        offset: usize,
        len: u32,
        available: usize,
    },
    #[error("NAL unit at byte {offset} has {len} bytes, less than its header")]
    ShortNal { offset: usize, len: usize },
    #[error("NAL unit at byte {offset} has type {nal_type}, which RTP reserves for its packet types")]
    ReservedNalType { offset: usize, nal_type: u8 },
    #[error("AAC access unit of {0} bytes is over the {MAX_AAC_AU} a 13-bit AU-size can say")]
    AacTooLarge(usize),
    #[error("audio frame of {0} bytes is over {MAX_AUDIO_PAYLOAD}")]
    AudioTooLarge(usize),
}

/// Turns one track's frames into RTP packets, numbering them as it goes.
#[derive(Debug, Clone)]
pub struct Packetizer {
    payload_type: u8,
    ssrc: u32,
    next_seq: u16,
}

impl Packetizer {
    pub fn new(payload_type: u8, ssrc: u32, first_seq: u16) -> Self {
        Self {
            payload_type,
            ssrc,
            next_seq: first_seq,
        }
    }

    /// Appends the RTP packets (12-byte header + payload, version 2, no CSRC/extension) carrying one frame to `out`.
    ///
    /// `data` is as `Frame::data` describes it for `codec`. The packets are
    /// slices of one allocation. Sequence numbers continue across calls
    /// (wrapping). On error nothing is appended and the sequence number does
    /// not advance.
    pub fn packetize(
        &mut self,
        codec: &Codec,
        timestamp: u32,
        data: &[u8],
        out: &mut Vec<Bytes>,
    ) -> Result<(), PacketizeError> {
        match codec {
            Codec::H264 { .. } => self.nal_units(NalFormat::H264, timestamp, data, out),
            Codec::H265 { .. } => self.nal_units(NalFormat::H265, timestamp, data, out),
            Codec::Aac { .. } => self.aac(timestamp, data, out),
            Codec::Audio { .. } => self.audio(timestamp, data, out),
        }
    }

    pub fn next_seq(&self) -> u16 {
        self.next_seq
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Writes the next packet's RTP header.
    fn header(&mut self, buf: &mut BytesMut, timestamp: u32, marker: bool) {
        buf.put_u8(0x80); // version 2
        // The payload type is 7 bits; the marker owns the top bit.
        buf.put_u8(u8::from(marker) << 7 | (self.payload_type & 0x7f));
        buf.put_u16(self.next_seq);
        buf.put_u32(timestamp);
        buf.put_u32(self.ssrc);
        self.next_seq = self.next_seq.wrapping_add(1);
    }

    /// H.264 (RFC 6184, packetization-mode=1) and H.265 (RFC 7798): a run of
    /// NAL units that fits one packet goes as a single NAL unit packet, or
    /// aggregated (STAP-A / AP) when there are several, which saves a packet
    /// per parameter set on key frames; a NAL unit too large for one packet
    /// is fragmented (FU-A / FU). The marker ends the access unit.
    fn nal_units(
        &mut self,
        format: NalFormat,
        timestamp: u32,
        data: &[u8],
        out: &mut Vec<Bytes>,
    ) -> Result<(), PacketizeError> {
        let nals = format.split(data)?;
        let groups = format.group(&nals);
        let size = groups
            .iter()
            .map(|group| format.packets_size(&nals[group.clone()]))
            .sum();
        let mut buf = BytesMut::with_capacity(size);
        let last_group = groups.len() - 1;
        for (i, group) in groups.into_iter().enumerate() {
            let ends_frame = i == last_group;
            match &nals[group] {
                [nal] if nal.len() > MAX_PAYLOAD => {
                    let hlen = format.header_len();
                    let body = &nal[hlen..];
                    let chunk = MAX_PAYLOAD - hlen - 1;
                    let count = body.len().div_ceil(chunk);
                    for (j, piece) in body.chunks(chunk).enumerate() {
                        let last = j + 1 == count;
                        self.header(&mut buf, timestamp, ends_frame && last);
                        let (prefix, len) = format.fu_prefix(nal, j == 0, last);
                        buf.put_slice(&prefix[..len]);
                        buf.put_slice(piece);
                        out.push(buf.split().freeze());
                    }
                }
                [nal] => {
                    self.header(&mut buf, timestamp, ends_frame);
                    buf.put_slice(nal);
                    out.push(buf.split().freeze());
                }
                nals => {
                    self.header(&mut buf, timestamp, ends_frame);
                    buf.put_slice(&format.aggregate_header(nals)[..format.header_len()]);
                    for nal in nals {
                        // `group` only aggregates NAL units that fit MAX_PAYLOAD.
                        buf.put_u16(u16::try_from(nal.len()).expect("aggregated NAL fits a packet"));
                        buf.put_slice(nal);
                    }
                    out.push(buf.split().freeze());
                }
            }
        }
        debug_assert_eq!(buf.capacity(), 0, "packets_size is exact");
        Ok(())
    }

    /// AAC (RFC 3640 `mode=AAC-hbr`): each packet carries AU-headers-length
    /// (in bits: one 16-bit AU-header), the AU-header (13-bit AU size, 3-bit
    /// index 0 as nothing is interleaved) and the AU, or a fragment of it when
    /// it does not fit (§3.2.3: every fragment repeats the AU-header with the
    /// whole AU's size, and only the last one is marked).
    fn aac(&mut self, timestamp: u32, au: &[u8], out: &mut Vec<Bytes>) -> Result<(), PacketizeError> {
        if au.is_empty() {
            return Err(PacketizeError::EmptyFrame);
        }
        if au.len() > MAX_AAC_AU {
            return Err(PacketizeError::AacTooLarge(au.len()));
        }
        let au_header = u16::try_from(au.len() << 3).expect("13-bit size fits");
        let chunk = MAX_PAYLOAD - AAC_HEADERS_LEN;
        let count = au.len().div_ceil(chunk);
        let mut buf = BytesMut::with_capacity(count * (HEADER_LEN + AAC_HEADERS_LEN) + au.len());
        for (i, piece) in au.chunks(chunk).enumerate() {
            self.header(&mut buf, timestamp, i + 1 == count);
            buf.put_u16(16);
            buf.put_u16(au_header);
            buf.put_slice(piece);
            out.push(buf.split().freeze());
        }
        Ok(())
    }

    /// G.711 and the other simple audio codecs: the payload as received
    /// (retina hands over one packet's worth per frame). The marker is left
    /// clear: for audio it flags the start of a talkspurt (RFC 3551 §4.1),
    /// and cameras send audio continuously.
    fn audio(&mut self, timestamp: u32, data: &[u8], out: &mut Vec<Bytes>) -> Result<(), PacketizeError> {
        if data.is_empty() {
            return Err(PacketizeError::EmptyFrame);
        }
        if data.len() > MAX_AUDIO_PAYLOAD {
            return Err(PacketizeError::AudioTooLarge(data.len()));
        }
        let mut buf = BytesMut::with_capacity(HEADER_LEN + data.len());
        self.header(&mut buf, timestamp, false);
        buf.put_slice(data);
        out.push(buf.freeze());
        Ok(())
    }
}

/// What differs between H.264 and H.265 NAL units as far as RTP cares.
#[derive(Debug, Clone, Copy)]
enum NalFormat {
    H264,
    H265,
}

impl NalFormat {
    fn header_len(self) -> usize {
        match self {
            Self::H264 => 1,
            Self::H265 => 2,
        }
    }

    /// Splits length-prefixed NAL units, rejecting what cannot be sent.
    fn split(self, data: &[u8]) -> Result<Vec<&[u8]>, PacketizeError> {
        if data.is_empty() {
            return Err(PacketizeError::EmptyFrame);
        }
        let mut nals = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let offset = data.len() - rest.len();
            let Some((len, after)) = rest.split_first_chunk::<4>() else {
                return Err(PacketizeError::TruncatedLength { offset });
            };
            let len = u32::from_be_bytes(*len);
            let Some((nal, after)) = usize::try_from(len)
                .ok()
                .and_then(|len| after.split_at_checked(len))
            else {
                return Err(PacketizeError::LengthPastEnd {
                    offset,
                    len,
                    available: after.len(),
                });
            };
            if nal.len() < self.header_len() {
                return Err(PacketizeError::ShortNal {
                    offset,
                    len: nal.len(),
                });
            }
            // Types the payload formats use for their own packets (H.264:
            // 24–29 and the reserved 0, 30, 31; H.265: 48–50 and the
            // unspecified 51–63) would be misread as those packets.
            let nal_type = match self {
                Self::H264 => nal[0] & 0x1f,
                Self::H265 => (nal[0] >> 1) & 0x3f,
            };
            let reserved = match self {
                Self::H264 => nal_type == 0 || nal_type >= STAP_A,
                Self::H265 => nal_type >= AP,
            };
            if reserved {
                return Err(PacketizeError::ReservedNalType { offset, nal_type });
            }
            nals.push(nal);
            rest = after;
        }
        Ok(nals)
    }

    /// Groups consecutive NAL units into packets: a run whose aggregation
    /// packet fits `MAX_PAYLOAD`, or a lone NAL unit (to be fragmented when
    /// it is over `MAX_PAYLOAD`).
    fn group(self, nals: &[&[u8]]) -> Vec<Range<usize>> {
        let mut groups = Vec::new();
        let mut start = 0;
        let mut size = 0; // aggregation payload of nals[start..i]
        for (i, nal) in nals.iter().enumerate() {
            if i > start && size + 2 + nal.len() <= MAX_PAYLOAD {
                size += 2 + nal.len();
                continue;
            }
            if i > start {
                groups.push(start..i);
            }
            start = i;
            size = self.header_len() + 2 + nal.len();
        }
        groups.push(start..nals.len());
        groups
    }

    /// The bytes (headers included) of the packets carrying one group.
    fn packets_size(self, nals: &[&[u8]]) -> usize {
        match nals {
            [nal] if nal.len() > MAX_PAYLOAD => {
                let body = nal.len() - self.header_len();
                let count = body.div_ceil(MAX_PAYLOAD - self.header_len() - 1);
                count * (HEADER_LEN + self.header_len() + 1) + body
            }
            [nal] => HEADER_LEN + nal.len(),
            nals => HEADER_LEN + self.header_len() + nals.iter().map(|nal| 2 + nal.len()).sum::<usize>(),
        }
    }

    /// The payload header of an aggregation packet (the first `header_len`
    /// bytes). H.264 STAP-A (RFC 6184 §5.7): F if any NAL unit has it, the
    /// highest NRI, type 24. H.265 AP (RFC 7798 §4.4.2): F likewise, type 48,
    /// the lowest layer id and temporal id.
    fn aggregate_header(self, nals: &[&[u8]]) -> [u8; 2] {
        let forbidden = nals.iter().fold(0, |f, nal| f | (nal[0] & 0x80));
        match self {
            Self::H264 => {
                let nri = nals.iter().map(|nal| nal[0] & 0x60).max().unwrap_or(0);
                [forbidden | nri | STAP_A, 0]
            }
            Self::H265 => {
                let layer = nals
                    .iter()
                    .map(|nal| (nal[0] & 1) << 5 | nal[1] >> 3)
                    .min()
                    .unwrap_or(0);
                let tid = nals.iter().map(|nal| nal[1] & 7).min().unwrap_or(0);
                [forbidden | AP << 1 | layer >> 5, (layer & 0x1f) << 3 | tid]
            }
        }
    }

    /// The headers of one fragment of `nal` and their length. The NAL unit
    /// header itself is not sent: the receiver rebuilds it from these.
    /// H.264 FU-A (RFC 6184 §5.8): indicator = F and NRI with type 28, then
    /// S, E and the original type. H.265 FU (RFC 7798 §4.4.3): the NAL
    /// header with type 49, then S, E and the original type.
    fn fu_prefix(self, nal: &[u8], start: bool, end: bool) -> ([u8; 3], usize) {
        let flags = u8::from(start) << 7 | u8::from(end) << 6;
        match self {
            Self::H264 => ([nal[0] & 0xe0 | FU_A, flags | (nal[0] & 0x1f), 0], 2),
            Self::H265 => ([nal[0] & 0x81 | FU << 1, nal[1], flags | (nal[0] >> 1 & 0x3f)], 3),
        }
    }
}

/// RTCP sender report (RFC 3550 §6.4.1, no report blocks), 28 bytes.
pub fn sender_report(ssrc: u32, ntp: u64, rtp_timestamp: u32, packets: u32, octets: u32) -> [u8; 28] {
    let mut sr = [0; 28];
    sr[0] = 0x80; // version 2, no padding, no report blocks
    sr[1] = 200; // SR
    sr[2..4].copy_from_slice(&6u16.to_be_bytes()); // length in 32-bit words, minus one
    sr[4..8].copy_from_slice(&ssrc.to_be_bytes());
    sr[8..16].copy_from_slice(&ntp.to_be_bytes());
    sr[16..20].copy_from_slice(&rtp_timestamp.to_be_bytes());
    sr[20..24].copy_from_slice(&packets.to_be_bytes());
    sr[24..28].copy_from_slice(&octets.to_be_bytes());
    sr
}

/// NTP 64-bit timestamp (seconds since 1900 in the high 32 bits, fraction in the low 32) of a wall-clock time.
///
/// The seconds wrap in 2036 (NTP era 1), as RFC 5905 §6 has them do.
pub fn ntp_timestamp(time: SystemTime) -> u64 {
    let since_1900 = match time.duration_since(UNIX_EPOCH) {
        Ok(since) => NTP_UNIX_OFFSET.saturating_add(since),
        Err(before) => NTP_UNIX_OFFSET.saturating_sub(before.duration()),
    };
    let seconds = since_1900.as_secs() & u64::from(u32::MAX);
    let fraction = (u64::from(since_1900.subsec_nanos()) << 32) / 1_000_000_000;
    seconds << 32 | fraction
}

/// The first packet's sequence number and timestamp of a packet slice (for the RTSP `RTP-Info` header): `(seq, rtptime)` read from an RTP header, None if shorter than 12 bytes.
pub fn seq_and_timestamp(packet: &[u8]) -> Option<(u16, u32)> {
    let (header, _) = packet.split_first_chunk::<HEADER_LEN>()?;
    Some((
        u16::from_be_bytes([header[2], header[3]]),
        u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
    ))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use proptest::prelude::*;
    use retina::codec::{CodecItem, Depacketizer, FrameFormat};
    use retina::rtp::{PacketHeader, PacketMeta};
    use retina::testutil::DepacketizeBuf;

    use super::super::media::Track;
    use super::super::sdp::tests::{aac_track, h264_track, h265_track, pcma_track, retina_depacketizer};
    use super::*;

    const SSRC: u32 = 0x1234_5678;

    /// retina's depacketizer fed our packets the way its client feeds it.
    struct Receiver {
        depacketizer: Depacketizer,
        buf: DepacketizeBuf,
        clock_rate: NonZeroU32,
    }

    impl Receiver {
        fn new(track: &Track, format: FrameFormat) -> Self {
            let mut depacketizer = retina_depacketizer(track);
            depacketizer.set_frame_format(format);
            Self::with(depacketizer, track.clock_rate)
        }

        fn with(depacketizer: Depacketizer, clock_rate: u32) -> Self {
            Self {
                depacketizer,
                buf: DepacketizeBuf::new(1 << 16),
                clock_rate: NonZeroU32::new(clock_rate).unwrap(),
            }
        }

        /// Pushes `packets`, returning what retina completes.
        fn push(&mut self, packets: &[Bytes]) -> Vec<CodecItem> {
            let mut items = Vec::new();
            for packet in packets {
                let (header, payload) = PacketHeader::validate(&packet[..]).unwrap();
                let meta = PacketMeta {
                    ctx: retina::PacketContext::dummy(),
                    stream_id: 0,
                    timestamp: retina::Timestamp::new(i64::from(header.timestamp()), self.clock_rate, 0)
                        .unwrap(),
                    sequence_number: header.sequence_number(),
                    ssrc: header.ssrc(),
                    mark: header.mark(),
                    loss: 0,
                };
                let payload = &packet[usize::from(payload.start)..usize::from(payload.end)];
                self.buf
                    .push(&mut self.depacketizer, meta, payload)
                    .unwrap_or_else(|e| panic!("retina rejects {packet:02x?}: {e}"));
                while let Some(item) = self.depacketizer.pull() {
                    items.push(item.unwrap());
                }
            }
            items
        }
    }

    /// Checks retina gave back `frames` (timestamp, data) byte for byte.
    fn assert_frames(items: &[CodecItem], frames: &[(u32, Vec<u8>)]) {
        assert_eq!(items.len(), frames.len());
        for (item, (timestamp, data)) in items.iter().zip(frames) {
            let (got, got_timestamp) = match item {
                CodecItem::VideoFrame(frame) => (frame.data(), frame.timestamp()),
                CodecItem::AudioFrame(frame) => (frame.data(), frame.timestamp()),
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(got, &data[..]);
            assert_eq!(got_timestamp.timestamp(), i64::from(*timestamp));
        }
    }

    /// Length-prefixes NAL units as `Frame::data` holds them.
    fn frame(nals: &[&[u8]]) -> Vec<u8> {
        let mut data = Vec::new();
        for nal in nals {
            data.extend_from_slice(&u32::try_from(nal.len()).unwrap().to_be_bytes());
            data.extend_from_slice(nal);
        }
        data
    }

    /// `len` pseudo-random bytes, a third of them zero.
    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let b = state.to_be_bytes()[0];
                if b < 85 { 0 } else { b }
            })
            .collect()
    }

    /// A NAL unit of `len` bytes starting with `header`, its body escaped as
    /// an encoder would.
    fn nal(header: &[u8], len: usize, seed: u32) -> Vec<u8> {
        let mut nal = header.to_vec();
        nal.extend(escape(&noise(len, seed)));
        nal.truncate(len);
        // Truncating may have left a trailing zero or half an escape.
        *nal.last_mut().unwrap() = 0x80;
        nal
    }

    /// H.264/H.265 emulation prevention: no `00 00 0x` (x ≤ 3) inside a NAL
    /// unit and no trailing zero, which retina would read as Annex B framing.
    fn escape(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len() + raw.len() / 2 + 1);
        let mut zeros = 0;
        for &b in raw {
            if zeros >= 2 && b <= 3 {
                out.push(3);
                zeros = 0;
            }
            out.push(b);
            zeros = if b == 0 { zeros + 1 } else { 0 };
        }
        if out.last() == Some(&0) {
            out.push(0x80);
        }
        out
    }

    /// The invariants of one frame's packets: RTP v2 headers with the
    /// track's payload type, our SSRC and one timestamp; consecutive sequence
    /// numbers from `first_seq`; nothing over `MAX_PAYLOAD`, the marker on
    /// the last packet only (simple audio: one packet as received, no
    /// marker); one allocation.
    fn check_packets(packets: &[Bytes], track: &Track, first_seq: u16, timestamp: u32) {
        let simple_audio = matches!(track.codec, Codec::Audio { .. });
        assert!(!packets.is_empty());
        for (i, packet) in packets.iter().enumerate() {
            assert!(packet.len() > HEADER_LEN, "packet {i} has no payload");
            assert!(simple_audio || packet.len() <= HEADER_LEN + MAX_PAYLOAD);
            assert_eq!(packet[0], 0x80);
            let last = i + 1 == packets.len();
            assert_eq!(packet[1] >> 7 == 1, !simple_audio && last, "marker on packet {i}");
            assert_eq!(packet[1] & 0x7f, track.payload_type);
            let seq = first_seq.wrapping_add(u16::try_from(i).unwrap());
            assert_eq!(seq_and_timestamp(packet), Some((seq, timestamp)));
            assert_eq!(packet[8..12], SSRC.to_be_bytes());
            if let Some(next) = packets.get(i + 1) {
                assert_eq!(packet.as_ptr_range().end, next.as_ptr(), "one allocation");
            }
        }
    }

    /// Packetizes `frames` (timestamp, data), checks the packets and returns
    /// what retina makes of them.
    fn round_trip(
        track: &Track,
        receiver: &mut Receiver,
        packetizer: &mut Packetizer,
        frames: &[(u32, Vec<u8>)],
    ) -> (Vec<Vec<Bytes>>, Vec<CodecItem>) {
        let mut sent = Vec::new();
        let mut items = Vec::new();
        for (timestamp, data) in frames {
            let first_seq = packetizer.next_seq();
            let mut packets = Vec::new();
            packetizer
                .packetize(&track.codec, *timestamp, data, &mut packets)
                .unwrap();
            check_packets(&packets, track, first_seq, *timestamp);
            let count = u16::try_from(packets.len()).unwrap();
            assert_eq!(packetizer.next_seq(), first_seq.wrapping_add(count));
            items.extend(receiver.push(&packets));
            sent.push(packets);
        }
        (sent, items)
    }

    #[test]
    fn h264_round_trip_through_retina() {
        let track = h264_track();
        let Codec::H264 { sps, pps } = &track.codec else {
            unreachable!()
        };
        let sei = nal(&[0x06], 20, 1);
        let idr = nal(&[0x65], 5000, 2);
        let exact = nal(&[0x41], MAX_PAYLOAD, 3);
        let over = nal(&[0x41], MAX_PAYLOAD + 1, 4);
        let frames = [
            frame(&[sps, pps, &sei, &idr]),
            frame(&[&nal(&[0x41], 800, 5)]),
            frame(&[&exact, &over]),
            frame(&[&nal(&[0x01], 30, 6), &nal(&[0x01], 40, 7)]),
        ];
        let frames: Vec<(u32, Vec<u8>)> = (0..).step_by(3600).zip(frames).collect();

        // retina's default format prepends the SDP's SPS and PPS to key
        // frames, which is where ours already have them.
        let mut receiver = Receiver::new(&track, FrameFormat::default());
        let mut packetizer = Packetizer::new(track.payload_type, SSRC, 0xfffe);
        let (sent, items) = round_trip(&track, &mut receiver, &mut packetizer, &frames);
        assert_frames(&items, &frames);
        for item in &items {
            let CodecItem::VideoFrame(video) = item else {
                panic!("{item:?}")
            };
            assert!(!video.has_new_parameters());
        }
        assert_eq!(packetizer.next_seq(), 0xfffe_u16.wrapping_add(10));

        // SPS, PPS and SEI share a STAP-A; the IDR slice is FU-A fragmented
        // without repeating its header byte.
        let key = &sent[0];
        assert_eq!(key[0][HEADER_LEN], 0x60 | STAP_A); // the highest NRI, 3
        let stap_nals: Vec<u8> = key[0][HEADER_LEN + 1..].to_vec();
        let expected: Vec<u8> = [&sps[..], &pps[..], &sei[..]]
            .iter()
            .flat_map(|n| {
                let len = u16::try_from(n.len()).unwrap().to_be_bytes();
                len.into_iter().chain(n.iter().copied())
            })
            .collect();
        assert_eq!(stap_nals, expected);
        let fragments = &key[1..];
        assert_eq!(fragments.len(), (idr.len() - 1).div_ceil(MAX_PAYLOAD - 2));
        let mut body = Vec::new();
        for (i, fu) in fragments.iter().enumerate() {
            assert_eq!(fu[HEADER_LEN], 0x60 | FU_A);
            let start = u8::from(i == 0) << 7;
            let end = u8::from(i + 1 == fragments.len()) << 6;
            assert_eq!(fu[HEADER_LEN + 1], start | end | idr[0] & 0x1f);
            body.extend_from_slice(&fu[HEADER_LEN + 2..]);
        }
        assert_eq!(body, idr[1..]);
        // A NAL unit of exactly MAX_PAYLOAD goes whole; one byte more is fragmented.
        assert_eq!(sent[2].len(), 3);
        assert_eq!(sent[2][0][HEADER_LEN..], exact);

        // A receiver without sprop-parameter-sets learns them in-band.
        let blind = Depacketizer::new("video", "h264", 90_000, None, Some("packetization-mode=1")).unwrap();
        let mut blind = Receiver::with(blind, 90_000);
        let items = blind.push(&sent[0]);
        let [CodecItem::VideoFrame(key)] = &items[..] else {
            panic!("{items:?}")
        };
        assert!(key.has_new_parameters());
        assert!(key.is_random_access_point());
        assert_eq!(key.data(), &frames[0].1[..]);
        let expected = retina::codec::h264::parameters_from_sps_and_pps(
            sps,
            pps,
            retina::codec::h26x::Framing::FourByteLength,
        )
        .unwrap();
        assert_eq!(
            blind.depacketizer.parameters(),
            Some(retina::codec::ParametersRef::Video(&expected))
        );
    }

    #[test]
    fn h265_round_trip_through_retina() {
        let track = h265_track();
        let Codec::H265 { vps, sps, pps } = &track.codec else {
            unreachable!()
        };
        let idr = nal(&[19 << 1, 1], 4000, 1); // IDR_W_RADL
        let frames = [
            frame(&[vps, sps, pps, &idr]),
            frame(&[&nal(&[1 << 1, 1], 900, 2)]), // TRAIL_R
            frame(&[&nal(&[1 << 1, 1], 3000, 3), &nal(&[1 << 1, 1], 100, 4)]),
        ];
        let frames: Vec<(u32, Vec<u8>)> = (1000..).step_by(3000).zip(frames).collect();
        let mut receiver = Receiver::new(&track, FrameFormat::default());
        let mut packetizer = Packetizer::new(track.payload_type, SSRC, 100);
        let (sent, items) = round_trip(&track, &mut receiver, &mut packetizer, &frames);
        assert_frames(&items, &frames);

        // VPS, SPS and PPS share an AP (type 48, layer 0, TID 1); the IDR
        // slice goes in FUs (type 49) carrying its type.
        let key = &sent[0];
        assert_eq!(key[0][HEADER_LEN..HEADER_LEN + 2], [AP << 1, 1]);
        let fragments = &key[1..];
        assert_eq!(fragments.len(), (idr.len() - 2).div_ceil(MAX_PAYLOAD - 3));
        let mut body = Vec::new();
        for (i, fu) in fragments.iter().enumerate() {
            assert_eq!(fu[HEADER_LEN..HEADER_LEN + 2], [FU << 1, 1]);
            let start = u8::from(i == 0) << 7;
            let end = u8::from(i + 1 == fragments.len()) << 6;
            assert_eq!(fu[HEADER_LEN + 2], start | end | idr[0] >> 1);
            body.extend_from_slice(&fu[HEADER_LEN + 3..]);
        }
        assert_eq!(body, idr[2..]);
    }

    #[test]
    fn aac_round_trip_through_retina() {
        let track = aac_track();
        let chunk = MAX_PAYLOAD - AAC_HEADERS_LEN;
        let sizes = [300, chunk, chunk + 1, MAX_AAC_AU];
        let frames: Vec<(u32, Vec<u8>)> = (0..)
            .step_by(1024)
            .zip(sizes)
            .map(|(ts, size)| (ts, noise(size, ts)))
            .collect();
        let mut receiver = Receiver::new(&track, FrameFormat::default());
        let mut packetizer = Packetizer::new(track.payload_type, SSRC, 7);
        let (sent, items) = round_trip(&track, &mut receiver, &mut packetizer, &frames);
        assert_frames(&items, &frames);
        let counts: Vec<usize> = sent.iter().map(Vec::len).collect();
        assert_eq!(counts, [1, 1, 2, 6]);
        // Every fragment repeats the AU-header with the whole AU's size.
        for packet in &sent[3] {
            let au_header = u16::try_from(MAX_AAC_AU << 3).unwrap().to_be_bytes();
            assert_eq!(
                packet[HEADER_LEN..HEADER_LEN + 4],
                [0, 16, au_header[0], au_header[1]]
            );
        }
    }

    #[test]
    fn pcma_round_trip_through_retina() {
        let track = pcma_track();
        let frames: Vec<(u32, Vec<u8>)> = (0..3u8)
            .map(|i| (u32::from(i) * 160, vec![0xd5 ^ i; 160]))
            .collect();
        let mut receiver = Receiver::new(&track, FrameFormat::default());
        let mut packetizer = Packetizer::new(track.payload_type, SSRC, u16::MAX);
        let (sent, items) = round_trip(&track, &mut receiver, &mut packetizer, &frames);
        assert_frames(&items, &frames);
        assert!(sent.iter().all(|packets| packets.len() == 1));
        assert_eq!(packetizer.next_seq(), 2);
    }

    #[test]
    fn aggregation_headers() {
        let mut packetizer = Packetizer::new(96, SSRC, 0);
        let mut out = Vec::new();
        // STAP-A: F if any NAL unit has it, the highest NRI.
        let data = frame(&[&[0x06, 1], &[0x41, 2], &[0x81, 3]]);
        packetizer
            .packetize(&h264_track().codec, 0, &data, &mut out)
            .unwrap();
        assert_eq!(
            out[0][HEADER_LEN..],
            [0xd8, 0, 2, 6, 1, 0, 2, 0x41, 2, 0, 2, 0x81, 3]
        );
        // AP: F if any NAL unit has it, the lowest layer id and temporal id
        // (layer 40 TID 3 and layer 33 TID 6 give layer 33 TID 3).
        let data = frame(&[&[1 << 1 | 1, 8 << 3 | 3, 1], &[0x80 | 1 << 1 | 1, 1 << 3 | 6, 2]]);
        out.clear();
        packetizer
            .packetize(&h265_track().codec, 0, &data, &mut out)
            .unwrap();
        assert_eq!(
            out[0][HEADER_LEN..HEADER_LEN + 2],
            [0x80 | AP << 1 | 1, 1 << 3 | 3]
        );
    }

    #[test]
    fn malformed_frames() {
        let h264 = h264_track().codec;
        let h265 = h265_track().codec;
        let aac = aac_track().codec;
        let pcma = pcma_track().codec;
        let cases: [(&Codec, Vec<u8>, PacketizeError); 11] = [
            (&h264, vec![], PacketizeError::EmptyFrame),
            (
                &h264,
                vec![0, 0, 0],
                PacketizeError::TruncatedLength { offset: 0 },
            ),
            (
                &h264,
                vec![0, 0, 0, 1, 0x65, 0, 0],
                PacketizeError::TruncatedLength { offset: 5 },
            ),
            (
                &h264,
                vec![0, 0, 0, 0],
                PacketizeError::ShortNal { offset: 0, len: 0 },
            ),
            (
                &h264,
                vec![0, 0, 0, 5, 0x65, 1],
                PacketizeError::LengthPastEnd {
                    offset: 0,
                    len: 5,
                    available: 2,
                },
            ),
            (
                &h264,
                vec![0, 0, 0, 2, 0x7c, 0x85],
                PacketizeError::ReservedNalType {
                    offset: 0,
                    nal_type: 28,
                },
            ),
            (
                &h265,
                vec![0, 0, 0, 1, 0x26],
                PacketizeError::ShortNal { offset: 0, len: 1 },
            ),
            (
                &h265,
                vec![0, 0, 0, 2, 48 << 1, 1],
                PacketizeError::ReservedNalType {
                    offset: 0,
                    nal_type: 48,
                },
            ),
            (
                &aac,
                vec![0; MAX_AAC_AU + 1],
                PacketizeError::AacTooLarge(MAX_AAC_AU + 1),
            ),
            (&aac, vec![], PacketizeError::EmptyFrame),
            (
                &pcma,
                vec![0; MAX_AUDIO_PAYLOAD + 1],
                PacketizeError::AudioTooLarge(MAX_AUDIO_PAYLOAD + 1),
            ),
        ];
        for (codec, data, error) in cases {
            let mut packetizer = Packetizer::new(96, SSRC, 10);
            let mut out = vec![Bytes::from_static(b"earlier")];
            assert_eq!(packetizer.packetize(codec, 0, &data, &mut out), Err(error));
            assert_eq!(out, [Bytes::from_static(b"earlier")]);
            assert_eq!(packetizer.next_seq(), 10);
        }
    }

    #[test]
    fn sender_reports() {
        let sr = sender_report(SSRC, 0x0102_0304_0506_0708, 90_000, 5, 6000);
        let (packet, rest) = retina::rtcp::PacketRef::parse(&sr).unwrap();
        assert!(rest.is_empty());
        let sr_ref = packet.as_sender_report().unwrap().unwrap();
        assert_eq!(sr_ref.ssrc(), SSRC);
        assert_eq!(sr_ref.ntp_timestamp().0, 0x0102_0304_0506_0708);
        assert_eq!(sr_ref.rtp_timestamp(), 90_000);
        assert_eq!(sr[..4], [0x80, 200, 0, 6]);
        assert_eq!(sr[20..], [0, 0, 0, 5, 0, 0, 0x17, 0x70]);
    }

    #[test]
    fn ntp_timestamps() {
        let unix = 2_208_988_800_u64 << 32;
        assert_eq!(ntp_timestamp(UNIX_EPOCH), unix);
        let later = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(ntp_timestamp(later), unix + (1 << 32) + (1 << 31));
        let earlier = UNIX_EPOCH - Duration::from_millis(250);
        assert_eq!(ntp_timestamp(earlier), unix - (1 << 30));
        // 2036-02-07T06:28:16Z starts NTP era 1.
        let era1 = UNIX_EPOCH + Duration::from_secs((1 << 32) - 2_208_988_800);
        assert_eq!(ntp_timestamp(era1 + Duration::from_secs(3)), 3 << 32);
    }

    #[test]
    fn sequence_and_timestamp() {
        let mut out = Vec::new();
        let mut packetizer = Packetizer::new(0, SSRC, 0xabcd);
        packetizer
            .packetize(&pcma_track().codec, 0xdead_beef, &[1; 8], &mut out)
            .unwrap();
        assert_eq!(seq_and_timestamp(&out[0]), Some((0xabcd, 0xdead_beef)));
        assert_eq!(
            seq_and_timestamp(&out[0][..HEADER_LEN]),
            Some((0xabcd, 0xdead_beef))
        );
        assert_eq!(seq_and_timestamp(&out[0][..HEADER_LEN - 1]), None);
        assert_eq!(packetizer.ssrc(), SSRC);
    }

    /// A NAL unit for the round-trip property: a header of a type retina
    /// passes through unchanged (not a parameter set, which it parses and
    /// moves; a slice last, since retina won't end an access unit on e.g.
    /// an SEI) and an escaped body.
    fn arb_nal(h265: bool, last: bool) -> impl Strategy<Value = Vec<u8>> {
        let types: Vec<u8> = match (h265, last) {
            (false, false) => (1..=23).filter(|t| ![7, 8].contains(t)).collect(),
            (false, true) => vec![1, 5],
            (true, false) => (0..=47).filter(|t| !(32..=34).contains(t)).collect(),
            (true, true) => (0..=9).chain(16..=21).collect(),
        };
        let body = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(any::<u8>(), MAX_PAYLOAD - 20..MAX_PAYLOAD + 20),
            prop::collection::vec(any::<u8>(), 0..6000),
        ];
        (prop::sample::select(types), any::<u8>(), 1..=7u8, body).prop_map(
            move |(nal_type, bits, tid, body)| {
                let mut nal = if h265 {
                    // F = 0, type, a 6-bit layer id, a non-zero temporal id.
                    vec![nal_type << 1 | bits >> 7, (bits & 0x1f) << 3 | tid]
                } else {
                    vec![bits & 0x60 | nal_type] // F = 0, any NRI
                };
                nal.extend(escape(&body));
                nal
            },
        )
    }

    fn arb_frame(h265: bool) -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(arb_nal(h265, false), 0..5),
            arb_nal(h265, true),
        )
            .prop_map(|(mut nals, last)| {
                nals.push(last);
                let nals: Vec<&[u8]> = nals.iter().map(Vec::as_slice).collect();
                frame(&nals)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn h26x_round_trip(
            (h265, frames) in any::<bool>().prop_flat_map(|h265| {
                (Just(h265), prop::collection::vec(arb_frame(h265), 1..4))
            }),
            first_seq: u16,
            first_timestamp: u32,
        ) {
            let track = if h265 { h265_track() } else { h264_track() };
            // Nothing inserted: the frames must come back exactly.
            let mut receiver = Receiver::new(&track, FrameFormat::MP4);
            let mut packetizer = Packetizer::new(track.payload_type, SSRC, first_seq);
            let frames: Vec<(u32, Vec<u8>)> = frames
                .into_iter()
                .enumerate()
                .map(|(i, data)| {
                    (first_timestamp.wrapping_add(3000 * u32::try_from(i).unwrap()), data)
                })
                .collect();
            let (_, items) = round_trip(&track, &mut receiver, &mut packetizer, &frames);
            assert_frames(&items, &frames);
        }

        #[test]
        fn aac_round_trip(au in prop::collection::vec(any::<u8>(), 1..=MAX_AAC_AU)) {
            let track = aac_track();
            let mut receiver = Receiver::new(&track, FrameFormat::default());
            let mut packetizer = Packetizer::new(track.payload_type, SSRC, 0);
            let frames = [(0, au)];
            let (_, items) = round_trip(&track, &mut receiver, &mut packetizer, &frames);
            assert_frames(&items, &frames);
        }
    }

    /// Length-prefixed data whose prefixes are sometimes wrong.
    fn arb_prefixed() -> impl Strategy<Value = Vec<u8>> {
        let nal = (
            prop::collection::vec(any::<u8>(), 0..2000),
            prop::option::weighted(0.1, any::<u32>()),
        );
        (
            prop::collection::vec(nal, 0..6),
            prop::collection::vec(any::<u8>(), 0..4),
        )
            .prop_map(|(nals, tail)| {
                let mut data = Vec::new();
                for (nal, len) in nals {
                    let len = len.unwrap_or(u32::try_from(nal.len()).unwrap());
                    data.extend_from_slice(&len.to_be_bytes());
                    data.extend(nal);
                }
                data.extend(tail);
                data
            })
    }

    proptest! {
        #[test]
        fn any_input_is_packetized_or_refused(
            data in prop_oneof![prop::collection::vec(any::<u8>(), 0..3000), arb_prefixed()],
            first_seq: u16,
        ) {
            for track in [h264_track(), h265_track(), aac_track(), pcma_track()] {
                let mut packetizer = Packetizer::new(track.payload_type, SSRC, first_seq);
                let mut out = Vec::new();
                if packetizer.packetize(&track.codec, 1, &data, &mut out).is_ok() {
                    check_packets(&out, &track, first_seq, 1);
                    let count = u16::try_from(out.len()).unwrap();
                    prop_assert_eq!(packetizer.next_seq(), first_seq.wrapping_add(count));
                } else {
                    prop_assert!(out.is_empty());
                    prop_assert_eq!(packetizer.next_seq(), first_seq);
                }
            }
        }
    }
}
