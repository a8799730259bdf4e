//! Fragmented MP4 for the dashboard's live view: a camera stream's frames
//! as ISO BMFF (ISO/IEC 14496-12) segments a browser's Media Source
//! Extensions play without transcoding.
//!
//! [`LiveTracks`] picks the tracks a browser can play (the first H.264 or
//! H.265 track and the first AAC track; G.711 and the other RTP audio
//! codecs have no MSE byte stream format) and writes the initialization
//! segment (`ftyp` + `moov`) from the sample entries retina built.
//! [`Fragmenter`] turns frames into media segments, one `moof` + `mdat` per
//! frame. A frame's duration is only known when its track's next frame
//! arrives, so each segment goes out one frame late (as Moonfire NVR's live
//! view does).
//!
//! Timing: each track's RTP timestamps are extended to a `u64` decode time
//! in the track's clock (the `mdhd` timescale). Video starts at 0 with its
//! first key frame. Audio waits for the video (frames before it are dropped)
//! and starts at the video's latest decode time, so the two start together
//! as the frames arrived (RTP timestamps of different tracks share no
//! origin; without RTCP sender reports, arrival is what we have). A frame's
//! duration is the RTP timestamp delta to the next; a delta that is zero,
//! negative or beyond 10 s (`MAX_FRAME_SECS`: a timestamp jump, not a frame) is
//! replaced by a fallback (audio: 1024 samples; video: the last good
//! duration, else the stream's frame rate, else 1 tick) and the timeline
//! carries on from there: decode times only ever increase. Composition
//! times equal decode times (cameras' live streams have no B-frames).
//!
//! Parameter sets (H.264 SPS/PPS, H.265 VPS/SPS/PPS) that the sample entry's
//! `avcC`/`hvcC` already holds are stripped from the samples. Ones that
//! differ (the camera changed its parameters, or the sample entry came from
//! the SDP and the camera sends others in-band) stay in the sample, so the
//! browser's decoder sees them, and [`Fragmenter::parameters_changed`]
//! says so: the caller should start over with a new init segment.

use bytes::{BufMut, Bytes, BytesMut};

use super::media::{Codec, Frame, Track};

/// A timestamp delta longer than this (in seconds) is a jump in the
/// camera's timeline, not a frame's duration.
const MAX_FRAME_SECS: u32 = 10;

/// `mvhd` timescale: milliseconds (nothing is timed in it; durations are 0).
const MOVIE_TIMESCALE: u32 = 1000;

/// AAC-LC's samples per frame: the audio fallback duration.
const AAC_FRAME_LENGTH: u32 = 1024;

/// `tfhd` flag: offsets are relative to the `moof`.
const TFHD_DEFAULT_BASE_IS_MOOF: u32 = 0x02_0000;

/// `trun` flags: data-offset, sample-duration, sample-size and sample-flags present.
const TRUN_FLAGS: u32 = 0x00_0001 | 0x00_0100 | 0x00_0200 | 0x00_0400;

/// Sample flags of a sync sample: `sample_depends_on` = 2 (depends on no other).
const SYNC_SAMPLE_FLAGS: u32 = 0x0200_0000;

/// Sample flags of a non-key video frame: `sample_depends_on` = 1 and
/// `sample_is_non_sync_sample`.
const NON_SYNC_SAMPLE_FLAGS: u32 = 0x0100_0000 | 0x0001_0000;

/// Why a stream's tracks can't go out as fMP4.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Fmp4Error {
    /// No H.264, H.265 or AAC track (G.711 and the like don't play in MSE).
    #[error("no track a browser can play (H.264, H.265 or AAC)")]
    NoPlayableTrack,
    /// The track has no sample entry (parameters not known yet, or retina
    /// couldn't build one).
    #[error("track {track} has no MP4 sample entry")]
    MissingSampleEntry { track: usize },
    /// The track has no RFC 6381 codec string, or one unfit for a MIME type.
    #[error("track {track} has no usable RFC 6381 codec string")]
    NoCodecString { track: usize },
    /// The sample entry isn't one this track's codec can use.
    #[error("track {track}'s MP4 sample entry is unusable: {reason}")]
    BadSampleEntry { track: usize, reason: &'static str },
    /// A clock rate of 0 can't be an `mdhd` timescale.
    #[error("track {track} has a clock rate of 0")]
    ZeroClockRate { track: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    H264,
    H265,
    Aac,
}

impl Kind {
    fn of(codec: &Codec) -> Option<Self> {
        match codec {
            Codec::H264 { .. } => Some(Self::H264),
            Codec::H265 { .. } => Some(Self::H265),
            Codec::Aac { .. } => Some(Self::Aac),
            Codec::Audio { .. } => None,
        }
    }

    fn is_video(self) -> bool {
        matches!(self, Self::H264 | Self::H265)
    }

    /// Whether a NAL unit (with its header) is a parameter set.
    fn is_parameter_set(self, nal: &[u8]) -> bool {
        let Some(&header) = nal.first() else {
            return false;
        };
        match self {
            Self::H264 => matches!(header & 0x1f, 7 | 8),
            Self::H265 => matches!((header >> 1) & 0x3f, 32..=34),
            Self::Aac => false,
        }
    }
}

/// One track of the fMP4.
#[derive(Debug, Clone)]
struct LiveTrack {
    /// Index into the stream's tracks (`Frame::track`).
    index: usize,
    /// fMP4 `track_ID`: 1, 2… in init segment order.
    id: u32,
    kind: Kind,
    clock_rate: u32,
    /// Video: `tkhd` width and height.
    dimensions: (u16, u16),
    rfc6381: String,
    sample_entry: Bytes,
    /// The parameter set NALs the sample entry's `avcC`/`hvcC` holds.
    parameter_sets: Vec<Bytes>,
    /// Audio: the frame length; video: one frame at the stream's frame rate.
    nominal_duration: Option<u32>,
}

/// The tracks a browser can play (H.264/H.265 video, AAC), in the order the
/// init segment lists them, and the MSE type:
/// `video/mp4; codecs="avc1.4D401E,mp4a.40.2"`.
///
/// At most one video track (the stream's first H.264/H.265 one) and one
/// audio track (its first AAC one), in stream order: a `SourceBuffer` plays
/// one of each. The video track must be usable (else an error: the caller
/// should wait for its parameters); an unusable AAC track is left out.
#[derive(Debug, Clone)]
pub struct LiveTracks {
    tracks: Vec<LiveTrack>,
}

impl LiveTracks {
    pub fn new(tracks: &[Track]) -> Result<Self, Fmp4Error> {
        let video = tracks.iter().position(|t| t.codec.is_video());
        let audio = tracks.iter().position(|t| matches!(t.codec, Codec::Aac { .. }));
        let mut chosen = Vec::with_capacity(2);
        if let Some(index) = video {
            chosen.push(LiveTrack::new(index, &tracks[index])?);
        }
        let mut audio_error = None;
        if let Some(index) = audio {
            match LiveTrack::new(index, &tracks[index]) {
                Ok(track) => chosen.push(track),
                Err(e) => audio_error = Some(e),
            }
        }
        if chosen.is_empty() {
            return Err(audio_error.unwrap_or(Fmp4Error::NoPlayableTrack));
        }
        chosen.sort_by_key(|t| t.index);
        for (id, track) in (1..).zip(chosen.iter_mut()) {
            track.id = id;
        }
        Ok(Self { tracks: chosen })
    }

    /// The `SourceBuffer` type: `video/mp4; codecs="avc1.4D401E,mp4a.40.2"`
    /// (`audio/mp4` when there is no video).
    pub fn mime_type(&self) -> String {
        let media = if self.tracks.iter().any(|t| t.kind.is_video()) {
            "video"
        } else {
            "audio"
        };
        let codecs: Vec<&str> = self.tracks.iter().map(|t| t.rfc6381.as_str()).collect();
        format!("{media}/mp4; codecs=\"{}\"", codecs.join(","))
    }

    /// ftyp + moov (mvhd, one trak per playable track with the given sample
    /// entry, mvex/trex), durations 0 (fragmented).
    pub fn init_segment(&self) -> Bytes {
        let entries: usize = self.tracks.iter().map(|t| t.sample_entry.len()).sum();
        let mut b = BytesMut::with_capacity(1024 + entries);
        write_box(&mut b, b"ftyp", |b| {
            b.put_slice(b"iso5"); // major_brand
            b.put_u32(512); // minor_version
            for brand in [b"iso5", b"iso6", b"mp41"] {
                b.put_slice(brand); // compatible_brands
            }
        });
        write_box(&mut b, b"moov", |b| {
            write_full_box(b, b"mvhd", 0, 0, |b| {
                b.put_u32(0); // creation_time
                b.put_u32(0); // modification_time
                b.put_u32(MOVIE_TIMESCALE);
                b.put_u32(0); // duration
                b.put_u32(0x0001_0000); // rate 1.0
                b.put_u16(0x0100); // volume 1.0
                b.put_bytes(0, 10); // reserved
                put_unity_matrix(b);
                b.put_bytes(0, 24); // pre_defined
                b.put_u32(self.next_track_id());
            });
            for track in &self.tracks {
                track.write_trak(b);
            }
            write_box(b, b"mvex", |b| {
                for track in &self.tracks {
                    write_full_box(b, b"trex", 0, 0, |b| {
                        b.put_u32(track.id);
                        b.put_u32(1); // default_sample_description_index
                        b.put_u32(0); // default_sample_duration
                        b.put_u32(0); // default_sample_size
                        b.put_u32(0); // default_sample_flags
                    });
                }
            });
        });
        b.freeze()
    }

    fn next_track_id(&self) -> u32 {
        self.tracks.last().map_or(1, |t| t.id + 1)
    }
}

impl LiveTrack {
    fn new(index: usize, track: &Track) -> Result<Self, Fmp4Error> {
        let kind = Kind::of(&track.codec).ok_or(Fmp4Error::NoPlayableTrack)?;
        let sample_entry = track
            .sample_entry
            .clone()
            .ok_or(Fmp4Error::MissingSampleEntry { track: index })?;
        let rfc6381 = track
            .rfc6381
            .clone()
            .filter(|s| is_codec_string(s))
            .ok_or(Fmp4Error::NoCodecString { track: index })?;
        if track.clock_rate == 0 {
            return Err(Fmp4Error::ZeroClockRate { track: index });
        }
        let parameter_sets = check_sample_entry(kind, &sample_entry)
            .map_err(|reason| Fmp4Error::BadSampleEntry { track: index, reason })?;
        let dimensions = match (kind.is_video(), track.dimensions) {
            (false, _) => (0, 0),
            (true, Some((w, h))) => (saturate_u16(w), saturate_u16(h)),
            // VisualSampleEntry's width and height.
            (true, None) => (
                u16::from_be_bytes([sample_entry[32], sample_entry[33]]),
                u16::from_be_bytes([sample_entry[34], sample_entry[35]]),
            ),
        };
        let nominal_duration = if kind.is_video() {
            track.frame_rate.and_then(|(num, den)| {
                let ticks = u64::from(track.clock_rate) * u64::from(num) / u64::from(den.max(1));
                u32::try_from(ticks)
                    .ok()
                    .filter(|&d| d > 0 && d <= max_duration(track.clock_rate))
            })
        } else {
            Some(AAC_FRAME_LENGTH)
        };
        Ok(Self {
            index,
            id: 0,
            kind,
            clock_rate: track.clock_rate,
            dimensions,
            rfc6381,
            sample_entry,
            parameter_sets,
            nominal_duration,
        })
    }

    fn write_trak(&self, b: &mut BytesMut) {
        let video = self.kind.is_video();
        write_box(b, b"trak", |b| {
            // flags: track_enabled | track_in_movie.
            write_full_box(b, b"tkhd", 0, 0x3, |b| {
                b.put_u32(0); // creation_time
                b.put_u32(0); // modification_time
                b.put_u32(self.id);
                b.put_u32(0); // reserved
                b.put_u32(0); // duration
                b.put_bytes(0, 8); // reserved
                b.put_u16(0); // layer
                b.put_u16(0); // alternate_group
                b.put_u16(if video { 0 } else { 0x0100 }); // volume
                b.put_u16(0); // reserved
                put_unity_matrix(b);
                b.put_u32(u32::from(self.dimensions.0) << 16); // width, 16.16
                b.put_u32(u32::from(self.dimensions.1) << 16); // height, 16.16
            });
            write_box(b, b"mdia", |b| {
                write_full_box(b, b"mdhd", 0, 0, |b| {
                    b.put_u32(0); // creation_time
                    b.put_u32(0); // modification_time
                    b.put_u32(self.clock_rate); // timescale
                    b.put_u32(0); // duration
                    b.put_u16(0x55c4); // language: "und"
                    b.put_u16(0); // pre_defined
                });
                write_full_box(b, b"hdlr", 0, 0, |b| {
                    b.put_u32(0); // pre_defined
                    b.put_slice(if video { b"vide" } else { b"soun" });
                    b.put_bytes(0, 12); // reserved
                    b.put_slice(if video {
                        b"VideoHandler\0"
                    } else {
                        b"SoundHandler\0"
                    });
                });
                write_box(b, b"minf", |b| {
                    if video {
                        write_full_box(b, b"vmhd", 0, 1, |b| {
                            b.put_u16(0); // graphicsmode
                            b.put_bytes(0, 6); // opcolor
                        });
                    } else {
                        write_full_box(b, b"smhd", 0, 0, |b| {
                            b.put_u16(0); // balance
                            b.put_u16(0); // reserved
                        });
                    }
                    write_box(b, b"dinf", |b| {
                        write_full_box(b, b"dref", 0, 0, |b| {
                            b.put_u32(1); // entry_count
                            // flags: media data in this file.
                            write_full_box(b, b"url ", 0, 1, |_| {});
                        });
                    });
                    write_box(b, b"stbl", |b| {
                        write_full_box(b, b"stsd", 0, 0, |b| {
                            b.put_u32(1); // entry_count
                            b.put_slice(&self.sample_entry);
                        });
                        for empty in [b"stts", b"stsc", b"stco"] {
                            write_full_box(b, empty, 0, 0, |b| b.put_u32(0));
                        }
                        write_full_box(b, b"stsz", 0, 0, |b| {
                            b.put_u32(0); // sample_size
                            b.put_u32(0); // sample_count
                        });
                    });
                });
            });
        });
    }

    /// When a frame's duration can't be told from the timestamps.
    fn fallback_duration(&self, last_good: Option<u32>) -> u32 {
        if self.kind.is_video() {
            last_good.or(self.nominal_duration).unwrap_or(1)
        } else {
            self.nominal_duration.or(last_good).unwrap_or(1)
        }
    }
}

/// Turns frames into media segments (moof + mdat). A frame's duration is
/// only known when the track's next frame arrives, so `push` returns the
/// segment of the PREVIOUS frame of that track (one frame of latency, as
/// Moonfire NVR's live view does).
#[derive(Debug)]
pub struct Fragmenter {
    tracks: Vec<TrackState>,
    /// Position in `tracks` of the video track, if any.
    video: Option<usize>,
    /// The last `mfhd` sequence number written.
    sequence: u32,
    parameters_changed: bool,
}

#[derive(Debug)]
struct TrackState {
    track: LiveTrack,
    /// The latest frame, waiting for the next to know its duration.
    pending: Option<Pending>,
    /// The last duration told by timestamps.
    last_good_duration: Option<u32>,
}

#[derive(Debug)]
struct Pending {
    timestamp: u32,
    decode_time: u64,
    key: bool,
    sample: Bytes,
}

impl Fragmenter {
    pub fn new(tracks: &LiveTracks) -> Self {
        Self {
            tracks: tracks
                .tracks
                .iter()
                .map(|t| TrackState {
                    track: t.clone(),
                    pending: None,
                    last_good_duration: None,
                })
                .collect(),
            video: tracks.tracks.iter().position(|t| t.kind.is_video()),
            sequence: 0,
            parameters_changed: false,
        }
    }

    /// Frames of tracks not in `LiveTracks` are ignored (None). The first
    /// frame of each video track must be a key frame; non-key frames before
    /// it are skipped (None). Audio frames before the video's first key
    /// frame are skipped too.
    pub fn push(&mut self, frame: &Frame) -> Option<Bytes> {
        let pos = self.tracks.iter().position(|t| t.track.index == frame.track)?;
        let kind = self.tracks[pos].track.kind;
        let key = !kind.is_video() || frame.key;
        let start_time = if self.tracks[pos].pending.is_some() {
            None
        } else if kind.is_video() {
            if !frame.key {
                return None;
            }
            Some(0)
        } else {
            match self.video {
                // Start with the video, at its latest frame's time.
                Some(video) => {
                    let video = &self.tracks[video];
                    let pending = video.pending.as_ref()?;
                    Some(rescale(
                        pending.decode_time,
                        video.track.clock_rate,
                        self.tracks[pos].track.clock_rate,
                    ))
                }
                None => Some(0),
            }
        };
        let sample = self.sample(pos, &frame.data);
        let state = &mut self.tracks[pos];
        if let Some(decode_time) = start_time {
            state.pending = Some(Pending {
                timestamp: frame.timestamp,
                decode_time,
                key,
                sample,
            });
            return None;
        }
        let previous = state.pending.as_ref()?;
        let delta = frame.timestamp.wrapping_sub(previous.timestamp);
        let duration = if delta > 0 && delta <= max_duration(state.track.clock_rate) {
            state.last_good_duration = Some(delta);
            delta
        } else {
            // Zero, negative (as i32: from 2^31 up) or a jump.
            state.track.fallback_duration(state.last_good_duration)
        };
        let next = Pending {
            timestamp: frame.timestamp,
            decode_time: previous.decode_time.saturating_add(u64::from(duration)),
            key,
            sample,
        };
        let previous = state.pending.replace(next)?;
        let track_id = state.track.id;
        self.sequence = self.sequence.checked_add(1).unwrap_or(1);
        media_segment(self.sequence, track_id, &previous, duration)
    }

    /// Whether a frame carried parameter sets other than the init segment's
    /// (kept in its sample): the caller should send a new init segment
    /// (new `LiveTracks`, new `Fragmenter`) when it can.
    pub fn parameters_changed(&self) -> bool {
        self.parameters_changed
    }

    /// A frame's sample: video without the parameter sets the sample entry has.
    fn sample(&mut self, pos: usize, data: &Bytes) -> Bytes {
        let track = &self.tracks[pos].track;
        if !track.kind.is_video() {
            return data.clone();
        }
        let (sample, changed) = strip_parameter_sets(track.kind, &track.parameter_sets, data);
        self.parameters_changed |= changed;
        sample
    }
}

/// Drops the parameter set NALs `known` has from length-prefixed `data`;
/// says whether it has others. Data that doesn't parse goes as it came.
fn strip_parameter_sets(kind: Kind, known: &[Bytes], data: &Bytes) -> (Bytes, bool) {
    // (start, end) of each NAL with its length prefix, and whether to keep it.
    let mut nals = Vec::new();
    let mut pos = 0;
    let mut changed = false;
    while pos < data.len() {
        let Some(prefix) = data.get(pos..pos + 4) else {
            return (data.clone(), false);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|len| (pos + 4).checked_add(len))
            .filter(|&end| end <= data.len())
        else {
            return (data.clone(), false);
        };
        let nal = &data[pos + 4..end];
        let mut keep = true;
        if kind.is_parameter_set(nal) {
            if known.iter().any(|k| k == nal) {
                keep = false;
            } else {
                changed = true;
            }
        }
        nals.push((pos, end, keep));
        pos = end;
    }
    let dropped = nals.iter().filter(|n| !n.2).count();
    if dropped == 0 {
        return (data.clone(), changed);
    }
    // Parameter sets usually lead the frame: then the rest is one slice.
    if nals.iter().take(dropped).all(|n| !n.2) {
        let start = nals.get(dropped).map_or(data.len(), |n| n.0);
        return (data.slice(start..), changed);
    }
    let mut out = BytesMut::with_capacity(data.len());
    for &(start, end, _) in nals.iter().filter(|n| n.2) {
        out.put_slice(&data[start..end]);
    }
    (out.freeze(), changed)
}

/// `moof` + `mdat` holding one sample; None if it's too big for a 32-bit box.
fn media_segment(sequence: u32, track_id: u32, sample: &Pending, duration: u32) -> Option<Bytes> {
    let size = u32::try_from(sample.sample.len()).ok()?;
    let mdat_size = size.checked_add(8)?;
    let mut b = BytesMut::with_capacity(128 + sample.sample.len());
    let mut data_offset_at = 0;
    write_box(&mut b, b"moof", |b| {
        write_full_box(b, b"mfhd", 0, 0, |b| b.put_u32(sequence));
        write_box(b, b"traf", |b| {
            write_full_box(b, b"tfhd", 0, TFHD_DEFAULT_BASE_IS_MOOF, |b| {
                b.put_u32(track_id);
            });
            write_full_box(b, b"tfdt", 1, 0, |b| b.put_u64(sample.decode_time));
            write_full_box(b, b"trun", 0, TRUN_FLAGS, |b| {
                b.put_u32(1); // sample_count
                data_offset_at = b.len();
                b.put_u32(0); // data_offset, below
                b.put_u32(duration);
                b.put_u32(size);
                b.put_u32(if sample.key {
                    SYNC_SAMPLE_FLAGS
                } else {
                    NON_SYNC_SAMPLE_FLAGS
                });
            });
        });
    });
    // From the moof's start to the sample, just past the mdat header.
    let data_offset = u32::try_from(b.len() + 8).ok()?;
    b[data_offset_at..data_offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
    b.put_u32(mdat_size);
    b.put_slice(b"mdat");
    b.put_slice(&sample.sample);
    Some(b.freeze())
}

/// Checks a sample entry is a box of this codec's kind with its decoder
/// configuration; returns the parameter set NALs that holds (video).
fn check_sample_entry(kind: Kind, entry: &[u8]) -> Result<Vec<Bytes>, &'static str> {
    let (types, children_at, config): (&[&[u8; 4]], usize, &[u8; 4]) = match kind {
        // After the box header, SampleEntry (8) and VisualSampleEntry (70).
        Kind::H264 => (&[b"avc1", b"avc3"], 86, b"avcC"),
        Kind::H265 => (&[b"hvc1", b"hev1"], 86, b"hvcC"),
        // After the box header, SampleEntry (8) and AudioSampleEntry (20).
        Kind::Aac => (&[b"mp4a"], 36, b"esds"),
    };
    if entry.len() < children_at {
        return Err("too short");
    }
    if u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize != entry.len() {
        return Err("its box size isn't its length");
    }
    if !types.iter().any(|t| t[..] == entry[4..8]) {
        return Err("its box type isn't this codec's");
    }
    let mut pos = children_at;
    let body = loop {
        let Some(header) = entry.get(pos..pos + 8) else {
            return Err("no decoder configuration box");
        };
        let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if size < 8 || entry.len() - pos < size {
            return Err("a child box's size is wrong");
        }
        if header[4..8] == config[..] {
            break &entry[pos + 8..pos + size];
        }
        pos += size;
    };
    match kind {
        Kind::H264 => avcc_parameter_sets(body),
        Kind::H265 => hvcc_parameter_sets(body),
        Kind::Aac => Ok(Vec::new()),
    }
}

/// The SPS and PPS NALs of an `AVCDecoderConfigurationRecord` (ISO/IEC
/// 14496-15 5.3.3.1), which must say NALs have 4-byte lengths.
fn avcc_parameter_sets(record: &[u8]) -> Result<Vec<Bytes>, &'static str> {
    const BAD: &str = "avcC isn't an AVCDecoderConfigurationRecord (Annex B extra data?)";
    let mut r = Reader(record);
    if r.u8().ok_or(BAD)? != 1 {
        return Err(BAD);
    }
    r.take(3).ok_or(BAD)?; // profile, compatibility, level
    if r.u8().ok_or(BAD)? & 0x3 != 3 {
        return Err("avcC says NALs don't have 4-byte lengths");
    }
    let mut sets = Vec::new();
    let sps_count = r.u8().ok_or(BAD)? & 0x1f;
    for _ in 0..sps_count {
        sets.push(r.nal().ok_or(BAD)?);
    }
    let pps_count = r.u8().ok_or(BAD)?;
    for _ in 0..pps_count {
        sets.push(r.nal().ok_or(BAD)?);
    }
    Ok(sets)
}

/// The NALs (VPS, SPS, PPS, SEI…) of an `HEVCDecoderConfigurationRecord`
/// (ISO/IEC 14496-15 8.3.3.1), which must say NALs have 4-byte lengths.
fn hvcc_parameter_sets(record: &[u8]) -> Result<Vec<Bytes>, &'static str> {
    const BAD: &str = "hvcC isn't an HEVCDecoderConfigurationRecord (Annex B extra data?)";
    let mut r = Reader(record);
    if r.u8().ok_or(BAD)? != 1 {
        return Err(BAD);
    }
    // Profile, tier, level, segmentation, parallelism, chroma, bit depths,
    // frame rate.
    r.take(20).ok_or(BAD)?;
    if r.u8().ok_or(BAD)? & 0x3 != 3 {
        return Err("hvcC says NALs don't have 4-byte lengths");
    }
    let mut sets = Vec::new();
    let arrays = r.u8().ok_or(BAD)?;
    for _ in 0..arrays {
        r.u8().ok_or(BAD)?; // array_completeness, NAL_unit_type
        let count = r.u16().ok_or(BAD)?;
        for _ in 0..count {
            sets.push(r.nal().ok_or(BAD)?);
        }
    }
    Ok(sets)
}

/// Reads a decoder configuration record.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A NAL with a 16-bit length.
    fn nal(&mut self) -> Option<Bytes> {
        let len = self.u16()?;
        self.take(usize::from(len)).map(Bytes::copy_from_slice)
    }
}

/// Writes a box: size, type, then what `body` writes.
fn write_box(b: &mut BytesMut, box_type: &[u8; 4], body: impl FnOnce(&mut BytesMut)) {
    let start = b.len();
    b.put_u32(0); // size, below
    b.put_slice(box_type);
    body(b);
    // Boxes hold at most a sample entry (whose own size is a u32) and some
    // fixed fields; media_segment checks its sample's size.
    let size = u32::try_from(b.len() - start).expect("box sizes fit in 32 bits");
    b[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// Writes a full box: a box starting with version and flags.
fn write_full_box(
    b: &mut BytesMut,
    box_type: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut BytesMut),
) {
    write_box(b, box_type, |b| {
        b.put_u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
        body(b);
    });
}

fn put_unity_matrix(b: &mut BytesMut) {
    for v in [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000_u32] {
        b.put_u32(v);
    }
}

/// The longest frame: [`MAX_FRAME_SECS`], and less than 2^31 ticks, so a
/// negative timestamp delta (wrapped) is never taken for a duration.
fn max_duration(clock_rate: u32) -> u32 {
    clock_rate.saturating_mul(MAX_FRAME_SECS).min(0x7fff_ffff)
}

fn saturate_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// `ticks` of a `from` Hz clock in a `to` Hz clock.
fn rescale(ticks: u64, from: u32, to: u32) -> u64 {
    let scaled = u128::from(ticks) * u128::from(to) / u128::from(from.max(1));
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// Whether `s` can go between a MIME type's quotes: "avc1.4D401E".
fn is_codec_string(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use base64::Engine as _;
    use retina::codec::{Depacketizer, ParametersRef};

    use super::*;

    // Made with ffmpeg's lavfi test sources (see the README beside them).
    const H264_CLIP: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/fmp4/h264_64x64.h264"
    ));
    const H265_CLIP: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/fmp4/h265_64x64.h265"
    ));
    const AAC_CLIP: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/fmp4/aac_16k_mono.adts"
    ));

    // ---- Test media: Annex B and ADTS to what the stream source gives. ----

    /// The NALs of an Annex B stream, without start codes.
    fn annex_b_nals(data: &[u8]) -> Vec<&[u8]> {
        let mut starts = Vec::new();
        let mut i = 0;
        while i + 3 <= data.len() {
            if data[i..i + 3] == [0, 0, 1] {
                starts.push(i + 3);
                i += 3;
            } else {
                i += 1;
            }
        }
        let mut nals = Vec::new();
        for (n, &start) in starts.iter().enumerate() {
            let mut end = starts.get(n + 1).map_or(data.len(), |&next| next - 3);
            while end > start && data[end - 1] == 0 {
                end -= 1; // a 4-byte start code's leading zero
            }
            nals.push(&data[start..end]);
        }
        nals
    }

    struct AccessUnit<'a> {
        nals: Vec<&'a [u8]>,
        key: bool,
    }

    /// Groups NALs into access units: a new one starts at a first slice, or
    /// at a non-VCL NAL after the current one's slices.
    fn access_units(kind: Kind, nals: Vec<&[u8]>) -> Vec<AccessUnit<'_>> {
        let mut aus: Vec<AccessUnit<'_>> = Vec::new();
        let mut has_vcl = false;
        for nal in nals {
            let (vcl, first_slice, key) = match kind {
                Kind::H264 => {
                    let t = nal[0] & 0x1f;
                    let vcl = t == 1 || t == 5;
                    (vcl, vcl && nal[1] & 0x80 != 0, t == 5)
                }
                Kind::H265 => {
                    let t = (nal[0] >> 1) & 0x3f;
                    let vcl = t < 32;
                    (vcl, vcl && nal[2] & 0x80 != 0, (16..=21).contains(&t))
                }
                Kind::Aac => unreachable!(),
            };
            if aus.is_empty() || (has_vcl && (!vcl || first_slice)) {
                aus.push(AccessUnit {
                    nals: Vec::new(),
                    key: false,
                });
                has_vcl = false;
            }
            let au = aus.last_mut().unwrap();
            au.nals.push(nal);
            au.key |= key;
            has_vcl |= vcl;
        }
        aus
    }

    /// NALs, each after its 4-byte big-endian length.
    fn length_prefixed(nals: &[&[u8]]) -> Bytes {
        let mut out = BytesMut::new();
        for nal in nals {
            out.put_u32(u32::try_from(nal.len()).unwrap());
            out.put_slice(nal);
        }
        out.freeze()
    }

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    /// A video track as the stream source describes it, retina building
    /// its sample entry from the SDP's parameter sets.
    fn video_track(codec: Codec, fmtp: &str) -> Track {
        let encoding = if matches!(codec, Codec::H264 { .. }) {
            "h264"
        } else {
            "h265"
        };
        let depacketizer = Depacketizer::new("video", encoding, 90_000, None, Some(fmtp)).unwrap();
        let Some(ParametersRef::Video(params)) = depacketizer.parameters() else {
            panic!("no video parameters from {fmtp}");
        };
        Track {
            codec,
            payload_type: 96,
            clock_rate: 90_000,
            channels: None,
            dimensions: Some(params.pixel_dimensions()),
            frame_rate: params.frame_rate(),
            rfc6381: Some(params.rfc6381_codec().to_owned()),
            sample_entry: Some(params.mp4_sample_entry().build().unwrap().into()),
        }
    }

    fn h264_params() -> (Bytes, Bytes) {
        let nals = annex_b_nals(H264_CLIP);
        let find = |t| Bytes::copy_from_slice(nals.iter().find(|n| n[0] & 0x1f == t).unwrap());
        (find(7), find(8))
    }

    fn h264_track() -> Track {
        let (sps, pps) = h264_params();
        let fmtp = format!(
            "packetization-mode=1;sprop-parameter-sets={},{}",
            b64(&sps),
            b64(&pps)
        );
        video_track(Codec::H264 { sps, pps }, &fmtp)
    }

    fn h265_track() -> Track {
        let nals = annex_b_nals(H265_CLIP);
        let find = |t| Bytes::copy_from_slice(nals.iter().find(|n| (n[0] >> 1) & 0x3f == t).unwrap());
        let (vps, sps, pps) = (find(32), find(33), find(34));
        let fmtp = format!(
            "sprop-vps={};sprop-sps={};sprop-pps={}",
            b64(&vps),
            b64(&sps),
            b64(&pps)
        );
        video_track(Codec::H265 { vps, sps, pps }, &fmtp)
    }

    /// The raw access units of an ADTS stream, and its AudioSpecificConfig.
    fn adts_frames(data: &[u8]) -> (Vec<&[u8]>, [u8; 2]) {
        let mut frames = Vec::new();
        let mut pos = 0;
        let mut config = [0; 2];
        while pos < data.len() {
            let h = &data[pos..];
            assert_eq!((h[0], h[1] & 0xf0), (0xff, 0xf0), "ADTS sync word");
            let header_len = if h[1] & 1 == 1 { 7 } else { 9 };
            let len = (usize::from(h[3] & 0x3) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
            let object_type = (h[2] >> 6) + 1;
            let frequency_index = (h[2] >> 2) & 0xf;
            let channels = ((h[2] & 1) << 2) | (h[3] >> 6);
            config = [
                (object_type << 3) | (frequency_index >> 1),
                ((frequency_index & 1) << 7) | (channels << 3),
            ];
            frames.push(&h[header_len..len]);
            pos += len;
        }
        (frames, config)
    }

    fn aac_track() -> Track {
        let (_, config) = adts_frames(AAC_CLIP);
        let fmtp = format!(
            "streamtype=5;profile-level-id=15;mode=AAC-hbr;config={:02x}{:02x};\
             sizelength=13;indexlength=3;indexdeltalength=3",
            config[0], config[1]
        );
        let depacketizer =
            Depacketizer::new("audio", "mpeg4-generic", 16_000, NonZeroU16::new(1), Some(&fmtp)).unwrap();
        let Some(ParametersRef::Audio(params)) = depacketizer.parameters() else {
            panic!("no audio parameters from {fmtp}");
        };
        Track {
            codec: Codec::Aac {
                config: Bytes::copy_from_slice(&config),
            },
            payload_type: 97,
            clock_rate: params.clock_rate(),
            channels: Some(1),
            dimensions: None,
            frame_rate: None,
            rfc6381: params.rfc6381_codec().map(str::to_owned),
            sample_entry: Some(params.mp4_sample_entry().build().unwrap().into()),
        }
    }

    fn pcma_track() -> Track {
        Track::audio("PCMA", 8, 8000, Some(1))
    }

    fn frame(track: usize, timestamp: u32, key: bool, data: &[u8]) -> Frame {
        Frame {
            track,
            timestamp,
            key,
            data: Bytes::copy_from_slice(data),
            packets: Vec::new(),
        }
    }

    /// A made-up H.264 frame: one slice NAL holding `tag`.
    fn slice(key: bool, tag: u8) -> Vec<u8> {
        let nal_type = if key { 0x65 } else { 0x41 };
        vec![0, 0, 0, 3, nal_type, 0x88, tag]
    }

    // ---- A box walker. ----

    #[derive(Debug)]
    struct Mp4Box<'a> {
        box_type: [u8; 4],
        body: &'a [u8],
        children: Vec<Mp4Box<'a>>,
    }

    const CONTAINERS: [&[u8; 4]; 9] = [
        b"moov", b"trak", b"mdia", b"minf", b"dinf", b"stbl", b"mvex", b"moof", b"traf",
    ];

    /// Parses a run of boxes that must fill `data` exactly, descending into
    /// containers (and `dref`/`stsd`, past their full box header and count).
    fn parse(data: &[u8]) -> Vec<Mp4Box<'_>> {
        let mut boxes = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            assert!(data.len() - pos >= 8, "truncated box header at {pos}");
            let size = be32(data, pos) as usize;
            assert!(
                size >= 8 && pos + size <= data.len(),
                "box size {size} at {pos} overruns its parent ({} bytes)",
                data.len()
            );
            let box_type: [u8; 4] = data[pos + 4..pos + 8].try_into().unwrap();
            let body = &data[pos + 8..pos + size];
            let children = if CONTAINERS.contains(&&box_type) {
                parse(body)
            } else if &box_type == b"dref" || &box_type == b"stsd" {
                let children = parse(&body[8..]);
                assert_eq!(be32(body, 4) as usize, children.len(), "entry_count");
                children
            } else {
                Vec::new()
            };
            boxes.push(Mp4Box {
                box_type,
                body,
                children,
            });
            pos += size;
        }
        assert_eq!(pos, data.len());
        boxes
    }

    fn types(boxes: &[Mp4Box<'_>]) -> Vec<String> {
        boxes
            .iter()
            .map(|b| String::from_utf8_lossy(&b.box_type).into_owned())
            .collect()
    }

    impl Mp4Box<'_> {
        fn child(&self, box_type: &[u8; 4]) -> &Self {
            let mut found = self.children.iter().filter(|c| &c.box_type == box_type);
            let child = found.next().expect("child box");
            assert!(found.next().is_none(), "one {box_type:?}");
            child
        }

        fn path(&self, path: &[&[u8; 4]]) -> &Self {
            path.iter().fold(self, |b, t| b.child(t))
        }

        /// A full box's version and flags.
        fn version_flags(&self) -> (u8, u32) {
            (self.body[0], be32(self.body, 0) & 0x00ff_ffff)
        }
    }

    fn be16(data: &[u8], at: usize) -> u16 {
        u16::from_be_bytes(data[at..at + 2].try_into().unwrap())
    }

    fn be32(data: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(data[at..at + 4].try_into().unwrap())
    }

    fn be64(data: &[u8], at: usize) -> u64 {
        u64::from_be_bytes(data[at..at + 8].try_into().unwrap())
    }

    /// One media segment, checked and read.
    #[derive(Debug, PartialEq, Eq)]
    struct Segment {
        sequence: u32,
        track_id: u32,
        decode_time: u64,
        duration: u32,
        flags: u32,
        data: Vec<u8>,
    }

    fn segment(data: &[u8]) -> Segment {
        let boxes = parse(data);
        assert_eq!(types(&boxes), ["moof", "mdat"]);
        let moof = &boxes[0];
        assert_eq!(types(&moof.children), ["mfhd", "traf"]);
        let traf = moof.child(b"traf");
        assert_eq!(types(&traf.children), ["tfhd", "tfdt", "trun"]);
        let mfhd = moof.child(b"mfhd");
        assert_eq!(mfhd.version_flags(), (0, 0));
        let tfhd = traf.child(b"tfhd");
        assert_eq!(tfhd.version_flags(), (0, 0x02_0000), "default-base-is-moof");
        assert_eq!(tfhd.body.len(), 8);
        let tfdt = traf.child(b"tfdt");
        assert_eq!(tfdt.version_flags(), (1, 0));
        assert_eq!(tfdt.body.len(), 12);
        let trun = traf.child(b"trun");
        assert_eq!(trun.version_flags(), (0, 0x701));
        assert_eq!(trun.body.len(), 24);
        assert_eq!(be32(trun.body, 4), 1, "sample_count");
        let moof_size = moof.body.len() + 8;
        assert_eq!(be32(trun.body, 8) as usize, moof_size + 8, "data_offset");
        let mdat = &boxes[1];
        assert_eq!(be32(trun.body, 16) as usize, mdat.body.len(), "sample_size");
        assert_eq!(&data[be32(trun.body, 8) as usize..], mdat.body);
        Segment {
            sequence: be32(mfhd.body, 4),
            track_id: be32(tfhd.body, 4),
            decode_time: be64(tfdt.body, 4),
            duration: be32(trun.body, 12),
            flags: be32(trun.body, 20),
            data: mdat.body.to_vec(),
        }
    }

    fn push(f: &mut Fragmenter, frame: &Frame) -> Option<Segment> {
        f.push(frame).map(|s| segment(&s))
    }

    // ---- Tests. ----

    #[test]
    fn init_segment_layout() {
        let video = Track {
            dimensions: Some((640, 360)),
            ..h264_track()
        };
        let tracks = [pcma_track(), video, aac_track()];
        let live = LiveTracks::new(&tracks).unwrap();
        let init = live.init_segment();
        let boxes = parse(&init);
        assert_eq!(types(&boxes), ["ftyp", "moov"]);
        assert_eq!(boxes[0].body, b"iso5\0\0\x02\0iso5iso6mp41");
        let moov = &boxes[1];
        assert_eq!(types(&moov.children), ["mvhd", "trak", "trak", "mvex"]);

        let mvhd = moov.child(b"mvhd");
        assert_eq!(mvhd.version_flags(), (0, 0));
        assert_eq!(mvhd.body.len(), 100);
        assert_eq!(be32(mvhd.body, 12), 1000, "timescale");
        assert_eq!(be32(mvhd.body, 16), 0, "duration");
        assert_eq!(be32(mvhd.body, 20), 0x0001_0000, "rate");
        assert_eq!(be32(mvhd.body, 96), 3, "next_track_ID");

        let expected = [
            (1, &tracks[1], b"vide", 90_000, b"vmhd"),
            (2, &tracks[2], b"soun", 16_000, b"smhd"),
        ];
        for (trak, (id, track, handler, timescale, header)) in moov.children[1..3].iter().zip(expected) {
            assert_eq!(types(&trak.children), ["tkhd", "mdia"]);
            let tkhd = trak.child(b"tkhd");
            assert_eq!(tkhd.version_flags(), (0, 3), "enabled, in movie");
            assert_eq!(tkhd.body.len(), 84);
            assert_eq!(be32(tkhd.body, 12), id, "track_ID");
            assert_eq!(be32(tkhd.body, 20), 0, "duration");
            let video = handler == b"vide";
            assert_eq!(be16(tkhd.body, 36), if video { 0 } else { 0x0100 });
            let (w, h) = if video { (640 << 16, 360 << 16) } else { (0, 0) };
            assert_eq!((be32(tkhd.body, 76), be32(tkhd.body, 80)), (w, h));

            let mdia = trak.child(b"mdia");
            assert_eq!(types(&mdia.children), ["mdhd", "hdlr", "minf"]);
            let mdhd = mdia.child(b"mdhd");
            assert_eq!(mdhd.body.len(), 24);
            assert_eq!(be32(mdhd.body, 12), timescale);
            assert_eq!(be32(mdhd.body, 16), 0, "duration");
            assert_eq!(be16(mdhd.body, 20), 0x55c4, "und");
            assert_eq!(&mdia.child(b"hdlr").body[8..12], handler);

            let minf = mdia.child(b"minf");
            assert_eq!(
                types(&minf.children),
                [&String::from_utf8_lossy(header)[..], "dinf", "stbl"]
            );
            let dref = minf.path(&[b"dinf", b"dref"]);
            assert_eq!(types(&dref.children), ["url "]);
            assert_eq!(dref.children[0].version_flags(), (0, 1), "self-contained");
            assert_eq!(dref.children[0].body.len(), 4);

            let stbl = minf.child(b"stbl");
            assert_eq!(types(&stbl.children), ["stsd", "stts", "stsc", "stco", "stsz"]);
            let stsd = stbl.child(b"stsd");
            assert_eq!(&stsd.body[8..], &track.sample_entry.as_ref().unwrap()[..]);
            for empty in [b"stts", b"stsc", b"stco"] {
                assert_eq!(stbl.child(empty).body, [0; 8]);
            }
            assert_eq!(stbl.child(b"stsz").body, [0; 12]);
        }

        let mvex = moov.child(b"mvex");
        assert_eq!(types(&mvex.children), ["trex", "trex"]);
        for (trex, id) in mvex.children.iter().zip(1..) {
            assert_eq!(trex.body.len(), 24);
            assert_eq!(be32(trex.body, 4), id);
            assert_eq!(be32(trex.body, 8), 1, "sample description index");
        }

        // Without the track's dimensions, the sample entry's.
        let video = Track {
            dimensions: None,
            ..h264_track()
        };
        let init = LiveTracks::new(&[video]).unwrap().init_segment();
        let boxes = parse(&init);
        let tkhd = boxes[1].path(&[b"trak", b"tkhd"]);
        assert_eq!((be32(tkhd.body, 76), be32(tkhd.body, 80)), (64 << 16, 64 << 16));
    }

    #[test]
    fn mime_types() {
        let live = |tracks: &[Track]| LiveTracks::new(tracks).unwrap().mime_type();
        assert_eq!(
            live(&[h264_track(), aac_track()]),
            r#"video/mp4; codecs="avc1.4D400A,mp4a.40.2""#
        );
        // Stream order; G.711 left out.
        assert_eq!(
            live(&[aac_track(), pcma_track(), h264_track()]),
            r#"video/mp4; codecs="mp4a.40.2,avc1.4D400A""#
        );
        assert_eq!(live(&[h265_track()]), r#"video/mp4; codecs="hvc1.1.6.L30.90""#);
        assert_eq!(
            live(&[pcma_track(), aac_track()]),
            r#"audio/mp4; codecs="mp4a.40.2""#
        );
        // One video and one audio track: the first of each.
        assert_eq!(
            live(&[h265_track(), h264_track(), aac_track(), aac_track()]),
            r#"video/mp4; codecs="hvc1.1.6.L30.90,mp4a.40.2""#
        );
    }

    #[test]
    fn unplayable_tracks() {
        let err = |tracks: &[Track]| LiveTracks::new(tracks).unwrap_err();
        assert_eq!(err(&[]), Fmp4Error::NoPlayableTrack);
        let pcmu = Track {
            codec: Codec::Audio {
                encoding: "PCMU".to_owned(),
            },
            ..pcma_track()
        };
        assert_eq!(err(&[pcma_track(), pcmu]), Fmp4Error::NoPlayableTrack);

        // The video must be usable: the caller waits for its parameters.
        let no_entry = Track {
            sample_entry: None,
            ..h264_track()
        };
        assert_eq!(
            err(&[pcma_track(), no_entry, aac_track()]),
            Fmp4Error::MissingSampleEntry { track: 1 }
        );
        let no_codecs = Track {
            rfc6381: None,
            ..h264_track()
        };
        assert_eq!(err(&[no_codecs]), Fmp4Error::NoCodecString { track: 0 });
        let quote = Track {
            rfc6381: Some("avc1\"".to_owned()),
            ..h264_track()
        };
        assert_eq!(err(&[quote]), Fmp4Error::NoCodecString { track: 0 });
        let no_clock = Track {
            clock_rate: 0,
            ..h264_track()
        };
        assert_eq!(err(&[no_clock]), Fmp4Error::ZeroClockRate { track: 0 });
        // An H.265 entry on an H.264 track.
        let mismatched = Track {
            sample_entry: h265_track().sample_entry,
            ..h264_track()
        };
        assert!(matches!(
            err(&[mismatched]),
            Fmp4Error::BadSampleEntry { track: 0, .. }
        ));
        // retina's entry from Annex B extra data: avcC starts 00 00 00 01.
        let mut entry = h264_track().sample_entry.unwrap().to_vec();
        entry[94..98].copy_from_slice(&[0, 0, 0, 1]);
        let annex_b = Track {
            sample_entry: Some(entry.into()),
            ..h264_track()
        };
        assert!(matches!(
            err(&[annex_b]),
            Fmp4Error::BadSampleEntry { track: 0, .. }
        ));
        let mut entry = h264_track().sample_entry.unwrap().to_vec();
        entry.push(0);
        let bad_size = Track {
            sample_entry: Some(entry.into()),
            ..h264_track()
        };
        assert!(matches!(
            err(&[bad_size]),
            Fmp4Error::BadSampleEntry { track: 0, .. }
        ));

        // Unusable audio is left out, unless it's all there is.
        let no_audio_entry = Track {
            sample_entry: None,
            ..aac_track()
        };
        let live = LiveTracks::new(&[h264_track(), no_audio_entry.clone()]).unwrap();
        assert_eq!(live.mime_type(), r#"video/mp4; codecs="avc1.4D400A""#);
        assert_eq!(
            err(&[pcma_track(), no_audio_entry]),
            Fmp4Error::MissingSampleEntry { track: 1 }
        );
    }

    #[test]
    fn other_tracks_frames_are_ignored() {
        let live = LiveTracks::new(&[pcma_track(), h264_track()]).unwrap();
        let init = live.init_segment();
        let boxes = parse(&init);
        assert_eq!(types(&boxes[1].children), ["mvhd", "trak", "mvex"]);
        let mut f = Fragmenter::new(&live);
        assert_eq!(push(&mut f, &frame(0, 0, false, b"g711")), None);
        assert_eq!(push(&mut f, &frame(1, 0, true, &slice(true, 1))), None);
        assert_eq!(push(&mut f, &frame(0, 160, false, b"g711")), None);
        assert_eq!(push(&mut f, &frame(7, 160, true, b"?")), None);
        let s = push(&mut f, &frame(1, 9000, false, &slice(false, 2))).unwrap();
        assert_eq!((s.sequence, s.track_id, s.duration), (1, 1, 9000));
        assert_eq!(s.data, slice(true, 1));
    }

    #[test]
    fn one_frame_of_latency() {
        let live = LiveTracks::new(&[h264_track()]).unwrap();
        let mut f = Fragmenter::new(&live);
        assert_eq!(push(&mut f, &frame(0, 1000, true, &slice(true, 1))), None);
        assert_eq!(
            push(&mut f, &frame(0, 4000, false, &slice(false, 2))),
            Some(Segment {
                sequence: 1,
                track_id: 1,
                decode_time: 0,
                duration: 3000,
                flags: 0x0200_0000,
                data: slice(true, 1),
            })
        );
        assert_eq!(
            push(&mut f, &frame(0, 7600, true, &slice(true, 3))),
            Some(Segment {
                sequence: 2,
                track_id: 1,
                decode_time: 3000,
                duration: 3600,
                flags: 0x0101_0000,
                data: slice(false, 2),
            })
        );
        assert_eq!(
            push(&mut f, &frame(0, 10_600, false, &slice(false, 4))),
            Some(Segment {
                sequence: 3,
                track_id: 1,
                decode_time: 6600,
                duration: 3000,
                flags: 0x0200_0000,
                data: slice(true, 3),
            })
        );
    }

    #[test]
    fn leading_non_key_video_frames_are_skipped() {
        let live = LiveTracks::new(&[h264_track()]).unwrap();
        let mut f = Fragmenter::new(&live);
        assert_eq!(push(&mut f, &frame(0, 0, false, &slice(false, 1))), None);
        assert_eq!(push(&mut f, &frame(0, 3000, false, &slice(false, 2))), None);
        assert_eq!(push(&mut f, &frame(0, 6000, true, &slice(true, 3))), None);
        let s = push(&mut f, &frame(0, 9000, false, &slice(false, 4))).unwrap();
        assert_eq!(
            (s.sequence, s.decode_time, s.duration, s.flags),
            (1, 0, 3000, 0x0200_0000)
        );
        assert_eq!(s.data, slice(true, 3));
    }

    #[test]
    fn decode_time_extends_across_wrap() {
        let live = LiveTracks::new(&[h264_track()]).unwrap();
        let mut f = Fragmenter::new(&live);
        // The third frame wraps, with a delta unlike the others (so no
        // fallback could pass for it).
        let mut ts = u32::MAX - 4499;
        let mut times = Vec::new();
        for (n, delta) in [3000, 3500, 3000, 2500, 3000].into_iter().enumerate() {
            if let Some(s) = push(&mut f, &frame(0, ts, n == 0, &slice(n == 0, 0))) {
                times.push((s.decode_time, s.duration));
            }
            ts = ts.wrapping_add(delta);
        }
        assert_eq!(ts, 10_500, "wrapped");
        assert_eq!(times, [(0, 3000), (3000, 3500), (6500, 3000), (9500, 2500)]);
    }

    #[test]
    fn bad_timestamp_deltas_use_a_fallback() {
        let track = Track {
            frame_rate: Some((1, 25)),
            ..h264_track()
        };
        let live = LiveTracks::new(&[track]).unwrap();
        let mut f = Fragmenter::new(&live);
        let jump = 5000 + 10 * 90_000 + 1;
        let mut times = Vec::new();
        for (n, ts) in [1000, 1000, 4000, 2000, 5000, jump, jump + 3000]
            .into_iter()
            .enumerate()
        {
            if let Some(s) = push(&mut f, &frame(0, ts, n == 0, &slice(n == 0, 0))) {
                times.push((s.decode_time, s.duration));
            }
        }
        assert_eq!(
            times,
            [
                (0, 3600),      // zero delta, no good one yet: the frame rate's
                (3600, 3000),   // good
                (6600, 3000),   // negative: the last good one
                (9600, 3000),   // good again (from the going-back timestamp)
                (12_600, 3000), // a jump past 10 s
                (15_600, 3000), // good
            ]
        );

        // Nothing to go by: 1 tick.
        let track = Track {
            frame_rate: None,
            ..h264_track()
        };
        let live = LiveTracks::new(&[track]).unwrap();
        let mut f = Fragmenter::new(&live);
        assert_eq!(push(&mut f, &frame(0, 5, true, &slice(true, 0))), None);
        let s = push(&mut f, &frame(0, 5, false, &slice(false, 0))).unwrap();
        assert_eq!((s.decode_time, s.duration), (0, 1));
        let s = push(&mut f, &frame(0, 5, false, &slice(false, 0))).unwrap();
        assert_eq!((s.decode_time, s.duration), (1, 1));

        // AAC: 1024 samples.
        let live = LiveTracks::new(&[aac_track()]).unwrap();
        let mut f = Fragmenter::new(&live);
        assert_eq!(push(&mut f, &frame(0, 0, false, b"au")), None);
        let s = push(&mut f, &frame(0, 0, false, b"au")).unwrap();
        assert_eq!((s.decode_time, s.duration, s.flags), (0, 1024, 0x0200_0000));
    }

    #[test]
    fn audio_starts_with_the_video() {
        let live = LiveTracks::new(&[h264_track(), aac_track()]).unwrap();
        let mut f = Fragmenter::new(&live);
        // Before the video's first key frame: dropped.
        assert_eq!(push(&mut f, &frame(1, 100, false, b"a0")), None);
        assert_eq!(push(&mut f, &frame(0, 50, false, &slice(false, 0))), None);
        assert_eq!(push(&mut f, &frame(1, 1124, false, b"a1")), None);
        assert_eq!(push(&mut f, &frame(0, 9050, true, &slice(true, 1))), None);
        let v = push(&mut f, &frame(0, 18_050, false, &slice(false, 2))).unwrap();
        assert_eq!((v.sequence, v.track_id, v.decode_time), (1, 1, 0));
        // The video's latest frame is at 0.1 s: 1600 in AAC's 16 kHz.
        assert_eq!(push(&mut f, &frame(1, 2148, false, b"a2")), None);
        let a = push(&mut f, &frame(1, 3172, false, b"a3")).unwrap();
        assert_eq!(
            a,
            Segment {
                sequence: 2,
                track_id: 2,
                decode_time: 1600,
                duration: 1024,
                flags: 0x0200_0000,
                data: b"a2".to_vec(),
            }
        );
        let v = push(&mut f, &frame(0, 27_050, false, &slice(false, 3))).unwrap();
        assert_eq!((v.sequence, v.track_id, v.decode_time), (3, 1, 9000));

        // Audio alone starts at 0.
        let live = LiveTracks::new(&[pcma_track(), aac_track()]).unwrap();
        let mut f = Fragmenter::new(&live);
        assert_eq!(push(&mut f, &frame(1, 77, false, b"a0")), None);
        let a = push(&mut f, &frame(1, 77 + 1024, false, b"a1")).unwrap();
        assert_eq!((a.track_id, a.decode_time, a.data), (1, 0, b"a0".to_vec()));
    }

    #[test]
    fn known_parameter_sets_are_stripped() {
        let (sps, pps) = h264_params();
        let aud: &[u8] = &[0x09, 0xf0];
        let sei: &[u8] = &[0x06, 0x05, 0x01, 0x00, 0x80];
        let idr: &[u8] = &[0x65, 0x88, 0x84, 0x21];
        let live = LiveTracks::new(&[h264_track()]).unwrap();
        let mut f = Fragmenter::new(&live);
        let mut next_ts = 0;
        let mut mux = |f: &mut Fragmenter, nals: &[&[u8]]| {
            // Push the frame, then a next one to get its segment out.
            let first = next_ts == 0;
            let s = push(f, &frame(0, next_ts, true, &length_prefixed(nals)));
            assert_eq!(s.is_some(), !first);
            next_ts += 3000;
            let s = push(f, &frame(0, next_ts, true, &length_prefixed(&[idr]))).unwrap();
            next_ts += 3000;
            s.data
        };
        // Leading: the rest goes as a slice of the frame.
        assert_eq!(mux(&mut f, &[&sps, &pps, idr]), length_prefixed(&[idr]));
        assert_eq!(
            mux(&mut f, &[aud, &sps, &pps, sei, idr]),
            length_prefixed(&[aud, sei, idr])
        );
        assert_eq!(
            mux(&mut f, &[aud, &sps, sei, &pps, idr]),
            length_prefixed(&[aud, sei, idr])
        );
        assert!(!f.parameters_changed());

        // Others stay, and say the init segment is stale.
        let mut new_sps = sps.to_vec();
        *new_sps.last_mut().unwrap() ^= 0x40;
        assert_eq!(
            mux(&mut f, &[&new_sps, &pps, idr]),
            length_prefixed(&[&new_sps, idr])
        );
        assert!(f.parameters_changed());

        // Data that doesn't parse goes as it came.
        let mut bad = length_prefixed(&[&sps, idr]).to_vec();
        bad.push(0);
        let live = LiveTracks::new(&[h264_track()]).unwrap();
        let mut f = Fragmenter::new(&live);
        assert_eq!(push(&mut f, &frame(0, 0, true, &bad)), None);
        let s = push(&mut f, &frame(0, 1, true, &slice(true, 0))).unwrap();
        assert_eq!(s.data, bad);
    }

    // ---- Real media, muxed and decoded. ----

    /// Muxes the clip's frames (10 fps video from near the u32 wrap, AAC
    /// interleaved by time); returns the file and each segment read back.
    fn mux_clip(tracks: &[Track], kind: Kind, clip: &[u8], audio: bool) -> (Vec<u8>, Vec<Segment>) {
        let live = LiveTracks::new(tracks).unwrap();
        let mut f = Fragmenter::new(&live);
        let mut file = live.init_segment().to_vec();
        let mut segments = Vec::new();
        let video_start = u32::MAX - 20_000;
        let audio_start = 123_456_u32;
        let mut frames: Vec<(u64, Frame)> = Vec::new();
        for (n, au) in (0_u32..).zip(access_units(kind, annex_b_nals(clip))) {
            let ts = video_start.wrapping_add(n * 9000);
            let frame = frame(0, ts, au.key, &length_prefixed(&au.nals));
            frames.push((u64::from(n) * 9000 * 16, frame));
        }
        if audio {
            for (n, au) in (0_u32..).zip(adts_frames(AAC_CLIP).0) {
                let at = u64::from(n) * 1024 * 90;
                frames.push((at, frame(1, audio_start + n * 1024, false, au)));
            }
        }
        frames.sort_by_key(|(at, frame)| (*at, frame.track)); // stable: video first
        for (_, frame) in &frames {
            if let Some(s) = f.push(frame) {
                file.extend_from_slice(&s);
                segments.push(segment(&s));
            }
        }
        assert!(!f.parameters_changed());
        (file, segments)
    }

    fn check_video_segments(segments: &[Segment], kind: Kind, clip: &[u8]) {
        let aus = access_units(kind, annex_b_nals(clip));
        let video: Vec<&Segment> = segments.iter().filter(|s| s.track_id == 1).collect();
        assert_eq!(video.len(), aus.len() - 1, "all but the last frame");
        let mut decode_time = 0;
        for (s, au) in video.iter().zip(&aus) {
            assert_eq!((s.decode_time, s.duration), (decode_time, 9000));
            decode_time += 9000;
            assert_eq!(s.flags == 0x0200_0000, au.key);
            let kept: Vec<&[u8]> = au
                .nals
                .iter()
                .copied()
                .filter(|n| !kind.is_parameter_set(n))
                .collect();
            assert!(
                kept.len() < au.nals.len() || !au.key,
                "key frames had parameter sets"
            );
            assert_eq!(s.data, length_prefixed(&kept));
        }
        let keys = video.iter().filter(|s| s.flags == 0x0200_0000).count();
        assert_eq!(keys, 2);
    }

    #[test]
    fn real_h264_and_aac() {
        let (file, segments) = mux_clip(&[h264_track(), aac_track()], Kind::H264, H264_CLIP, true);
        check_video_segments(&segments, Kind::H264, H264_CLIP);
        let audio: Vec<&Segment> = segments.iter().filter(|s| s.track_id == 2).collect();
        let aus = adts_frames(AAC_CLIP).0;
        // All but the last, from the first at or after the video's start.
        assert_eq!(audio.len(), aus.len() - 1);
        for (n, (s, au)) in audio.iter().zip(&aus).enumerate() {
            assert_eq!((s.decode_time, s.duration), (1024 * n as u64, 1024));
            assert_eq!(s.data, *au);
        }
        let sequences: Vec<u32> = segments.iter().map(|s| s.sequence).collect();
        assert_eq!(
            sequences,
            (1..=u32::try_from(segments.len()).unwrap()).collect::<Vec<_>>()
        );
        ffprobe_check(&file, 9, Some(aus.len() - 1));
    }

    #[test]
    fn real_h265() {
        let (file, segments) = mux_clip(&[h265_track()], Kind::H265, H265_CLIP, false);
        check_video_segments(&segments, Kind::H265, H265_CLIP);
        ffprobe_check(&file, 9, None);
    }

    /// Decodes the file with ffprobe, if it's installed: every frame, the
    /// right size, times increasing.
    fn ffprobe_check(file: &[u8], video_frames: usize, audio_frames: Option<usize>) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, file).unwrap();
        if let Some(dir) = std::env::var_os("FMP4_TEST_OUT") {
            let name = format!("{}.mp4", std::thread::current().name().unwrap_or("out"));
            std::fs::write(std::path::Path::new(&dir).join(name.replace("::", "-")), file).unwrap();
        }
        let output = match std::process::Command::new("ffprobe")
            .args(["-v", "error", "-show_entries"])
            .arg("frame=media_type,key_frame,pts,width,height,nb_samples")
            .args(["-of", "csv=p=0"])
            .arg(tmp.path())
            .output()
        {
            Ok(output) => output,
            Err(e) => {
                eprintln!("no ffprobe ({e}): not decoding");
                return;
            }
        };
        assert!(output.status.success(), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.trim().is_empty(), "ffprobe: {stderr}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let mut video = Vec::new();
        let mut audio = Vec::new();
        // (A frame with side data ends in a comma and an empty line.)
        for line in stdout.lines().filter(|l| !l.is_empty()) {
            let fields: Vec<&str> = line.split(',').collect();
            match fields[0] {
                // video,key_frame,pts,width,height
                "video" => {
                    assert_eq!(fields[3..5], ["64", "64"], "{line}");
                    video.push(fields[2].parse::<u64>().unwrap());
                }
                // audio,key_frame,pts,nb_samples
                "audio" => {
                    assert_eq!(fields[3], "1024", "{line}");
                    audio.push(fields[2].parse::<u64>().unwrap());
                }
                _ => panic!("{line}"),
            }
        }
        assert_eq!(video.len(), video_frames, "{stdout}");
        assert!(video.windows(2).all(|w| w[0] < w[1]), "{video:?}");
        if let Some(n) = audio_frames {
            assert_eq!(audio.len(), n, "{stdout}");
            assert!(audio.windows(2).all(|w| w[0] < w[1]), "{audio:?}");
        }
    }
}
