//! The real camera opener: retina (DESCRIBE, SETUP, PLAY, depacketized
//! frames), one `SessionGroup` per camera so a reconnect first waits for the
//! camera to forget our stale sessions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::StreamExt;
use retina::client::{
    Credentials, Demuxed, PlayOptions, Session, SessionGroup, SessionOptions, SetupOptions,
    TcpTransportOptions, Transport, UdpTransportOptions,
};
use retina::codec::{CodecItem, FrameFormat, ParameterSetInsertion, ParametersRef, VideoParametersCodec};

use super::media::{Codec, Track};
use super::source::{BoxFuture, CameraFrame, CameraOpener, CameraSession, SourceError};
use crate::config::streams::{RtspTransport, StreamSource};

/// Length-prefixed NAL units (what fMP4 wants, and easy to split for RTP)
/// with the parameter sets before every key frame (so a reader starting
/// at one can decode it); AAC as raw access units.
const FRAME_FORMAT: FrameFormat = FrameFormat {
    h26x_framing: retina::codec::h26x::Framing::FourByteLength,
    parameter_set_insertion: ParameterSetInsertion::EachKeyFrame,
    aac_framing: retina::codec::aac::Framing::Raw,
};

#[derive(Default)]
pub struct RetinaOpener {
    /// Per camera: shared by its streams, whose sessions the camera counts
    /// together.
    groups: Mutex<HashMap<String, Arc<SessionGroup>>>,
}

impl std::fmt::Debug for RetinaOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetinaOpener").finish_non_exhaustive()
    }
}

impl RetinaOpener {
    fn group(&self, camera: &str) -> Arc<SessionGroup> {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            groups
                .entry(camera.to_owned())
                .or_insert_with(|| Arc::new(SessionGroup::default().named(camera.to_owned()))),
        )
    }
}

impl CameraOpener for RetinaOpener {
    fn open<'a>(
        &'a self,
        source: &'a StreamSource,
    ) -> BoxFuture<'a, Result<Box<dyn CameraSession>, SourceError>> {
        Box::pin(async move {
            let session = open(source, self.group(&source.camera)).await?;
            Ok(Box::new(session) as Box<dyn CameraSession>)
        })
    }

    fn settle<'a>(&'a self, source: &'a StreamSource) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let group = self.group(&source.camera);
            let stale = group.stale_sessions();
            if stale.num_sessions > 0 {
                tracing::info!(
                    sessions = stale.num_sessions,
                    "waiting for the camera to close our stale sessions"
                );
                group.await_stale_sessions(&stale).await;
            }
        })
    }

    fn sessions(&self, source: &StreamSource) -> usize {
        self.group(&source.camera).stale_sessions().num_sessions
    }
}

struct RetinaSession {
    demuxed: Demuxed,
    /// camgate's track index per retina stream index.
    tracks_of_streams: HashMap<usize, usize>,
    tracks: Vec<Track>,
    /// Frames read while opening (the first key frame and what came with it).
    pending: VecDeque<CameraFrame>,
}

fn camera_error(e: &retina::Error) -> SourceError {
    SourceError::Camera(e.to_string())
}

async fn open(source: &StreamSource, group: Arc<SessionGroup>) -> Result<RetinaSession, SourceError> {
    let quirk = |name: &str| source.quirks.get(name).map(String::as_str);
    let mut options = SessionOptions::default()
        .creds(source.login.as_ref().map(|login| Credentials {
            username: login.username.clone(),
            password: login.password.clone(),
        }))
        .user_agent(format!("camgate/{}", crate::VERSION))
        .session_group(group);
    // Values were checked when the config was read.
    if let Some(value) = quirk("teardown").and_then(|v| v.parse().ok()) {
        options = options.teardown(value);
    }
    if let Some(value) = quirk("unassigned_channel_data").and_then(|v| v.parse().ok()) {
        options = options.unassigned_channel_data(value);
    }
    if let Some(value) = quirk("session_id").and_then(|v| v.parse().ok()) {
        options = options.session_id(value);
    }
    let mut session = Session::describe(source.url.clone(), options)
        .await
        .map_err(|e| camera_error(&e))?;
    let chosen = choose_streams(session.streams())?;
    let transport = match source.transport {
        RtspTransport::Tcp => Transport::Tcp(TcpTransportOptions::default()),
        RtspTransport::Udp => Transport::Udp(UdpTransportOptions::default()),
    };
    for &stream in &chosen {
        session
            .setup(
                stream,
                SetupOptions::default()
                    .transport(transport.clone())
                    .frame_format(FRAME_FORMAT),
            )
            .await
            .map_err(|e| camera_error(&e))?;
    }
    let mut play = PlayOptions::default();
    if let Some(value) = quirk("initial_timestamp").and_then(|v| v.parse().ok()) {
        play = play.initial_timestamp(value);
    }
    if let Some(value) = quirk("initial_seq").and_then(|v| v.parse().ok()) {
        play = play.initial_seq(value);
    }
    if let Some(value) = quirk("unknown_rtcp_ssrc").and_then(|v| v.parse().ok()) {
        play = play.unknown_rtcp_ssrc(value);
    }
    let mut demuxed = session
        .play(play)
        .await
        .map_err(|e| camera_error(&e))?
        .demuxed()
        .map_err(|e| camera_error(&e))?;
    let tracks_of_streams: HashMap<usize, usize> = chosen.iter().enumerate().map(|(t, &s)| (s, t)).collect();
    // Video parameters are certain only from the first key frame: wait
    // for it, keeping what follows it.
    let video = chosen
        .iter()
        .position(|&s| demuxed.streams()[s].media() == "video");
    let mut pending = VecDeque::new();
    loop {
        let item = demuxed
            .next()
            .await
            .ok_or(SourceError::Ended)?
            .map_err(|e| camera_error(&e))?;
        let Some(frame) = camera_frame(item, &tracks_of_streams, None) else {
            continue;
        };
        match video {
            Some(track) if pending.is_empty() && !(frame.track == track && frame.key) => {}
            _ => pending.push_back(frame),
        }
        if !pending.is_empty() {
            break;
        }
    }
    let tracks = chosen
        .iter()
        .map(|&s| track(&demuxed.streams()[s]))
        .collect::<Result<Vec<_>, _>>()?;
    for frame in &mut pending {
        frame.new_track = None;
    }
    Ok(RetinaSession {
        demuxed,
        tracks_of_streams,
        tracks,
        pending,
    })
}

/// The first video stream camgate can relay (H.264, H.265) and the first
/// such audio stream; metadata and back channels are left alone.
fn choose_streams(streams: &[retina::client::Stream]) -> Result<Vec<usize>, SourceError> {
    let video = streams
        .iter()
        .position(|s| s.media() == "video" && matches!(s.encoding_name(), "h264" | "h265"));
    let audio = streams
        .iter()
        .position(|s| s.media() == "audio" && relayable_audio(s.encoding_name()));
    let chosen: Vec<usize> = video.into_iter().chain(audio).collect();
    if chosen.is_empty() {
        let offered: Vec<String> = streams
            .iter()
            .map(|s| format!("{} {}", s.media(), s.encoding_name()))
            .collect();
        return Err(SourceError::NoUsableTrack(offered.join(", ")));
    }
    Ok(chosen)
}

/// Audio retina depacketizes and the restream can send again as it came.
fn relayable_audio(encoding: &str) -> bool {
    matches!(
        encoding,
        "mpeg4-generic" | "pcma" | "pcmu" | "g722" | "l16" | "l8" | "dvi4"
    ) || encoding.starts_with("g726-")
}

fn track(stream: &retina::client::Stream) -> Result<Track, SourceError> {
    let missing = || {
        SourceError::Camera(format!(
            "no parameters for the {} {} stream",
            stream.media(),
            stream.encoding_name()
        ))
    };
    let mut track = Track::audio(
        &stream.encoding_name().to_ascii_uppercase(),
        stream.rtp_payload_type(),
        stream.clock_rate_hz(),
        stream.channels().map(std::num::NonZeroU16::get),
    );
    match stream.parameters().ok_or_else(missing)? {
        ParametersRef::Video(video) => {
            track.codec = match video.codec_params() {
                VideoParametersCodec::H264 { sps, pps } => Codec::H264 {
                    sps: sps.clone(),
                    pps: pps.clone(),
                },
                VideoParametersCodec::H265 { vps, sps, pps } => Codec::H265 {
                    vps: vps.clone(),
                    sps: sps.clone(),
                    pps: pps.clone(),
                },
                _ => return Err(SourceError::NoUsableTrack(stream.encoding_name().to_owned())),
            };
            track.dimensions = Some(video.pixel_dimensions());
            track.frame_rate = video.frame_rate();
            track.rfc6381 = Some(video.rfc6381_codec().to_owned());
            track.sample_entry = video.mp4_sample_entry().build().ok().map(Bytes::from);
        }
        ParametersRef::Audio(audio) => {
            if stream.encoding_name() == "mpeg4-generic" {
                track.codec = Codec::Aac {
                    config: Bytes::copy_from_slice(audio.extra_data()),
                };
                track.rfc6381 = audio.rfc6381_codec().map(str::to_owned);
                track.sample_entry = audio.mp4_sample_entry().build().ok().map(Bytes::from);
            }
            track.channels = Some(audio.channels().get());
        }
        ParametersRef::Message(_) => {
            return Err(SourceError::NoUsableTrack(stream.encoding_name().to_owned()));
        }
    }
    Ok(track)
}

/// A depacketized item as a camera frame (with new parameters, when
/// `streams` is given and the frame brought them); other items are `None`.
fn camera_frame(
    item: CodecItem,
    tracks_of_streams: &HashMap<usize, usize>,
    streams: Option<&[retina::client::Stream]>,
) -> Option<CameraFrame> {
    match item {
        CodecItem::VideoFrame(frame) => {
            let track = *tracks_of_streams.get(&frame.stream_id())?;
            let new_track = if frame.has_new_parameters() {
                streams.and_then(|streams| track_of(streams, frame.stream_id()))
            } else {
                None
            };
            if frame.loss() > 0 {
                tracing::debug!(lost = frame.loss(), "camera packets lost before a video frame");
            }
            Some(CameraFrame {
                track,
                timestamp: frame.timestamp().timestamp(),
                key: frame.is_random_access_point(),
                new_track,
                data: Bytes::from(frame.into_data()),
            })
        }
        CodecItem::AudioFrame(frame) => Some(CameraFrame {
            track: *tracks_of_streams.get(&frame.stream_id())?,
            timestamp: frame.timestamp().timestamp(),
            key: true,
            data: Bytes::copy_from_slice(frame.data()),
            new_track: None,
        }),
        _ => None,
    }
}

fn track_of(streams: &[retina::client::Stream], index: usize) -> Option<Track> {
    streams.get(index).and_then(|stream| track(stream).ok())
}

impl std::fmt::Debug for RetinaSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetinaSession")
            .field("tracks", &self.tracks)
            .finish_non_exhaustive()
    }
}

impl CameraSession for RetinaSession {
    fn tracks(&self) -> Vec<Track> {
        self.tracks.clone()
    }

    fn next_frame(&mut self) -> BoxFuture<'_, Result<Option<CameraFrame>, SourceError>> {
        Box::pin(async move {
            if let Some(frame) = self.pending.pop_front() {
                return Ok(Some(frame));
            }
            loop {
                let Some(item) = self.demuxed.next().await else {
                    return Ok(None);
                };
                let item = item.map_err(|e| camera_error(&e))?;
                if let Some(frame) = camera_frame(item, &self.tracks_of_streams, Some(self.demuxed.streams()))
                {
                    return Ok(Some(frame));
                }
            }
        })
    }
}
