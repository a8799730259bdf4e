//! What flows through a camera stream: its tracks (as the restream
//! describes them) and its frames (shared by every consumer).

use bytes::Bytes;

/// A track's codec, with what a receiver needs to decode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codec {
    /// H.264 (RFC 6184), packetization mode 1.
    H264 { sps: Bytes, pps: Bytes },
    /// H.265 (RFC 7798).
    H265 { vps: Bytes, sps: Bytes, pps: Bytes },
    /// MPEG-4 AAC (RFC 3640, AAC-hbr); `config` is the AudioSpecificConfig.
    Aac { config: Bytes },
    /// Audio whose frames go out as they came, one RTP packet each: G.711
    /// (`PCMA`, `PCMU`) and the other simple audio codecs (`G722`, `L16`…).
    /// `encoding` is the RTP encoding name as the camera's SDP gave it.
    Audio { encoding: String },
}

impl Codec {
    pub fn is_video(&self) -> bool {
        matches!(self, Self::H264 { .. } | Self::H265 { .. })
    }

    /// The name a person reads: "H.264", "AAC", "PCMA"…
    pub fn name(&self) -> &str {
        match self {
            Self::H264 { .. } => "H.264",
            Self::H265 { .. } => "H.265",
            Self::Aac { .. } => "AAC",
            Self::Audio { encoding } => encoding,
        }
    }
}

/// One elementary stream of a camera stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    pub codec: Codec,
    /// The RTP payload type the restream uses (the camera's).
    pub payload_type: u8,
    /// RTP clock rate in Hz: 90000 for video.
    pub clock_rate: u32,
    /// Audio channels, when the camera said.
    pub channels: Option<u16>,
    /// Video: display width and height in pixels.
    pub dimensions: Option<(u32, u32)>,
    /// Video: the frame rate as `(numerator, denominator)` seconds per frame
    /// (retina's form: 1/25 s is `(1, 25)`), when the stream says.
    pub frame_rate: Option<(u32, u32)>,
    /// RFC 6381 codec string ("avc1.4D401E", "mp4a.40.2") for the browser.
    pub rfc6381: Option<String>,
    /// The ISO BMFF sample entry box (`avc1`, `hvc1`, `mp4a`…) for fMP4.
    pub sample_entry: Option<Bytes>,
}

impl Track {
    /// A track with what RTP needs, before sizes and MP4 boxes are known.
    pub fn new(codec: Codec, payload_type: u8, clock_rate: u32, channels: Option<u16>) -> Self {
        Self {
            codec,
            payload_type,
            clock_rate,
            channels,
            dimensions: None,
            frame_rate: None,
            rfc6381: None,
            sample_entry: None,
        }
    }

    /// An audio track sent as it came: G.711 and its kind.
    pub fn audio(encoding: &str, payload_type: u8, clock_rate: u32, channels: Option<u16>) -> Self {
        let encoding = encoding.to_owned();
        Self::new(Codec::Audio { encoding }, payload_type, clock_rate, channels)
    }
}

/// Same codecs, payload types, clock rates and channels, in the same order:
/// a reader (and the RTP timeline) can carry on from one to the other; new
/// parameter sets travel in band.
pub fn same_shape(a: &[Track], b: &[Track]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            std::mem::discriminant(&a.codec) == std::mem::discriminant(&b.codec)
                && a.payload_type == b.payload_type
                && a.clock_rate == b.clock_rate
                && a.channels == b.channels
        })
}

/// One frame of one track: an access unit of video, or a frame of audio.
/// Built once by the stream's source and shared (`Arc`) by every consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Index into the stream's tracks.
    pub track: usize,
    /// RTP timestamp on the restream's timeline, in the track's clock.
    pub timestamp: u32,
    /// Video: a random access point; its parameter sets precede it in `data`.
    pub key: bool,
    /// H.264/H.265: NAL units, each preceded by its 4-byte big-endian length
    /// (parameter sets before key frames); AAC: one raw access unit; other
    /// audio: the payload as received.
    pub data: Bytes,
    /// The RTP packets carrying this frame on the restream (header and
    /// payload; slices of one buffer).
    pub packets: Vec<Bytes>,
}

impl Frame {
    /// Bytes held: what a consumer's queue bound counts.
    pub fn size(&self) -> usize {
        self.data.len() + self.packets.iter().map(Bytes::len).sum::<usize>()
    }
}
