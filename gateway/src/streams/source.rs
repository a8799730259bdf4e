//! A stream's source task: opens the camera when someone wants the stream
//! (or always), turns its frames into the restream's (one timeline per
//! track that carries on across reconnects, RTP packets made once), hands
//! them to the hub, and reconnects with backoff when the camera fails.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::bus::{Hub, SourceState};
use super::media::{Frame, Track};
use super::rtp::Packetizer;
use crate::backoff::Backoff;
use crate::config::streams::StreamSource;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens camera sessions. The real one is retina's (`camera.rs`); unit
/// tests use a scripted one.
pub trait CameraOpener: Send + Sync + std::fmt::Debug + 'static {
    /// Opens `source` and returns once its tracks are known (for video:
    /// after the first key frame, which the session yields first).
    fn open<'a>(
        &'a self,
        source: &'a StreamSource,
    ) -> BoxFuture<'a, Result<Box<dyn CameraSession>, SourceError>>;

    /// Waits until the camera has no stale sessions of ours left (cameras
    /// count them against their client limit).
    fn settle<'a>(&'a self, source: &'a StreamSource) -> BoxFuture<'a, ()>;

    /// Sessions with the camera of `source` that are open or not yet known
    /// to be closed.
    fn sessions(&self, source: &StreamSource) -> usize;
}

pub trait CameraSession: Send + std::fmt::Debug {
    fn tracks(&self) -> Vec<Track>;
    /// The next frame; `Ok(None)` when the camera ended the session.
    fn next_frame(&mut self) -> BoxFuture<'_, Result<Option<CameraFrame>, SourceError>>;
}

/// A frame as the camera gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraFrame {
    pub track: usize,
    /// In the track's clock, extended past 32 bits, from the session's start.
    pub timestamp: i64,
    pub key: bool,
    pub data: Bytes,
    /// The track's parameters changed with this frame.
    pub new_track: Option<Track>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("{0}")]
    Camera(String),
    #[error("the camera did not open the stream within {}s", .0.as_secs())]
    OpenTimeout(Duration),
    #[error("the camera sent no frame for {}s", .0.as_secs())]
    Silent(Duration),
    #[error("the camera ended the session")]
    Ended,
    #[error("the camera offers no track camgate can relay ({0})")]
    NoUsableTrack(String),
}

/// A camera that sends nothing this long is reconnected.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// A session that lasted this long was healthy: the backoff starts over.
const HEALTHY: Duration = Duration::from_secs(60);
/// Stale sessions are waited for at most this long (retina assumes 65 s
/// for live555's).
const MAX_SETTLE: Duration = Duration::from_secs(70);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub open_timeout: Duration,
    pub close_after: Duration,
}

/// Runs the source of `hub` until `stop`.
pub async fn run(
    hub: Arc<Hub>,
    source: StreamSource,
    opener: Arc<dyn CameraOpener>,
    timing: Timing,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY, HEALTHY);
    let mut timeline = Timeline::default();
    let mut demand = hub.demand();
    loop {
        hub.set_state(SourceState::Idle);
        if !source.always_on {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = demand.wait_for(|&n| n > 0) => if changed.is_err() { return },
            }
        }
        hub.set_state(SourceState::Connecting);
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tokio::time::timeout(MAX_SETTLE, opener.settle(&source)) => {}
        }
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = tokio::time::timeout(timing.open_timeout, opener.open(&source)) => {
                opened.unwrap_or(Err(SourceError::OpenTimeout(timing.open_timeout)))
            }
        };
        let error = match opened {
            Ok(mut session) => {
                let tracks = session.tracks();
                timeline.open(&tracks);
                let generation = hub.open(tracks);
                let since = SystemTime::now();
                tracing::info!(generation, "camera stream playing");
                hub.set_state(SourceState::Playing { since });
                let started = tokio::time::Instant::now();
                let ended = pump(&hub, session.as_mut(), &mut timeline, &source, timing, &stop).await;
                backoff.connected_for(started.elapsed());
                match ended {
                    Ended::Stopped => return,
                    Ended::Unwanted => {
                        tracing::info!("no readers left: camera stream closed");
                        continue;
                    }
                    Ended::Failed(error) => error,
                }
            }
            Err(error) => error,
        };
        let delay = backoff.next_delay(fastrand::f64());
        tracing::warn!(err = %error, retry_in_ms = delay.as_millis() as u64, "camera stream failed");
        hub.set_state(SourceState::Backoff {
            error: error.to_string(),
            retry_at: SystemTime::now() + delay,
        });
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

enum Ended {
    Stopped,
    /// On demand, and nobody wanted it for `close_after`.
    Unwanted,
    Failed(SourceError),
}

/// Moves frames from the camera to the hub until something ends it.
async fn pump(
    hub: &Hub,
    session: &mut dyn CameraSession,
    timeline: &mut Timeline,
    source: &StreamSource,
    timing: Timing,
    stop: &CancellationToken,
) -> Ended {
    let mut demand = hub.demand();
    let mut unwanted_since: Option<tokio::time::Instant> = None;
    loop {
        let unwanted = !source.always_on && *demand.borrow_and_update() == 0;
        if unwanted {
            unwanted_since.get_or_insert_with(tokio::time::Instant::now);
        } else {
            unwanted_since = None;
        }
        let close_at = unwanted_since.map(|since| since + timing.close_after);
        tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            () = sleep_until(close_at) => return Ended::Unwanted,
            _ = demand.changed() => {}
            next = tokio::time::timeout(FRAME_TIMEOUT, session.next_frame()) => match next {
                Err(_) => return Ended::Failed(SourceError::Silent(FRAME_TIMEOUT)),
                Ok(Err(e)) => return Ended::Failed(e),
                Ok(Ok(None)) => return Ended::Failed(SourceError::Ended),
                Ok(Ok(Some(frame))) => {
                    if let Some(track) = &frame.new_track {
                        hub.update_track(frame.track, track.clone());
                    }
                    if let Some(frame) = timeline.frame(frame, tokio::time::Instant::now()) {
                        hub.publish(&Arc::new(frame), SystemTime::now(), Instant::now());
                    }
                }
            },
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Per track: the restream's RTP timestamps and packetizer. Timestamps
/// carry on across reconnects (advanced by the wall-clock gap), and so do
/// sequence numbers while the tracks keep their shape, so a reader that
/// stays sees one continuous stream.
#[derive(Debug, Default)]
struct Timeline {
    tracks: Vec<TrackTimeline>,
}

#[derive(Debug)]
struct TrackTimeline {
    track: Track,
    packetizer: Packetizer,
    /// The camera timestamp of this session's first frame, and the
    /// restream timestamp it maps to.
    anchor: Option<(i64, u32)>,
    /// The restream timestamp and (monotonic) time of the last frame sent.
    last: Option<(u32, tokio::time::Instant)>,
}

impl Timeline {
    fn open(&mut self, tracks: &[Track]) {
        let old: Vec<Track> = self.tracks.iter().map(|t| t.track.clone()).collect();
        let same = super::media::same_shape(&old, tracks);
        if same {
            for (timeline, track) in self.tracks.iter_mut().zip(tracks) {
                timeline.track = track.clone();
                timeline.anchor = None;
            }
        } else {
            self.tracks = tracks
                .iter()
                .map(|track| TrackTimeline {
                    track: track.clone(),
                    packetizer: Packetizer::new(track.payload_type, fastrand::u32(..), fastrand::u16(..)),
                    anchor: None,
                    last: None,
                })
                .collect();
        }
    }

    /// The restream's frame for a camera frame; `None` (logged) when it
    /// cannot be packetized.
    fn frame(&mut self, frame: CameraFrame, now: tokio::time::Instant) -> Option<Frame> {
        let timeline = self.tracks.get_mut(frame.track)?;
        if let Some(track) = frame.new_track {
            timeline.track = track;
        }
        let &mut (camera_start, restream_start) = timeline.anchor.get_or_insert_with(|| {
            let start = match timeline.last {
                // Advance by the time the camera was away, so timestamps
                // never go back and keep pace with the clock.
                Some((last, at)) => {
                    let gap = now.duration_since(at).as_secs_f64();
                    let ticks = (gap * f64::from(timeline.track.clock_rate)).max(1.0);
                    last.wrapping_add(ticks.min(f64::from(u32::MAX / 2)) as u32)
                }
                None => fastrand::u32(..),
            };
            (frame.timestamp, start)
        });
        let offset = frame.timestamp.wrapping_sub(camera_start);
        let timestamp = restream_start.wrapping_add(offset as u32);
        let mut packets = Vec::new();
        if let Err(e) =
            timeline
                .packetizer
                .packetize(&timeline.track.codec, timestamp, &frame.data, &mut packets)
        {
            tracing::debug!(err = %e, track = frame.track, "frame dropped: cannot packetize it");
            return None;
        }
        timeline.last = Some((timestamp, now));
        Some(Frame {
            track: frame.track,
            timestamp,
            key: frame.key,
            data: frame.data,
            packets,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::streams::media::Codec;
    use crate::streams::rtp;

    fn video() -> Track {
        Track {
            codec: Codec::H264 {
                sps: Bytes::from_static(b"\x67\x42\xc0\x1e"),
                pps: Bytes::from_static(b"\x68\xce"),
            },
            payload_type: 96,
            clock_rate: 90_000,
            channels: None,
            dimensions: Some((320, 240)),
            frame_rate: None,
            rfc6381: None,
            sample_entry: None,
        }
    }

    /// An AVCC access unit: one IDR or non-IDR slice of `size` bytes.
    fn access_unit(key: bool, size: usize) -> Bytes {
        let mut data = (size as u32).to_be_bytes().to_vec();
        data.push(if key { 0x65 } else { 0x41 });
        data.resize(4 + size, 0xab);
        Bytes::from(data)
    }

    /// What each attempt to open does.
    #[derive(Debug, Clone, Copy)]
    enum Script {
        Fail,
        /// Plays this many frames 40 ms apart (a key frame every 25), then
        /// ends, or stays silent forever after them when `hang`.
        Play {
            frames: usize,
            hang: bool,
        },
    }

    #[derive(Debug, Default)]
    struct Opener {
        script: Mutex<VecDeque<Script>>,
        opened_at: Mutex<Vec<tokio::time::Instant>>,
        live: Arc<Mutex<usize>>,
    }

    #[derive(Debug)]
    struct Session {
        frames: usize,
        hang: bool,
        sent: usize,
        live: Arc<Mutex<usize>>,
    }

    impl Drop for Session {
        fn drop(&mut self) {
            *self.live.lock().unwrap() -= 1;
        }
    }

    impl CameraOpener for Opener {
        fn open<'a>(
            &'a self,
            _: &'a StreamSource,
        ) -> BoxFuture<'a, Result<Box<dyn CameraSession>, SourceError>> {
            Box::pin(async move {
                self.opened_at.lock().unwrap().push(tokio::time::Instant::now());
                let step = self.script.lock().unwrap().pop_front().unwrap_or(Script::Fail);
                match step {
                    Script::Fail => Err(SourceError::Camera("connection refused".to_owned())),
                    Script::Play { frames, hang } => {
                        *self.live.lock().unwrap() += 1;
                        Ok(Box::new(Session {
                            frames,
                            hang,
                            sent: 0,
                            live: Arc::clone(&self.live),
                        }) as Box<dyn CameraSession>)
                    }
                }
            })
        }

        fn settle<'a>(&'a self, _: &'a StreamSource) -> BoxFuture<'a, ()> {
            Box::pin(async {})
        }

        fn sessions(&self, _: &StreamSource) -> usize {
            *self.live.lock().unwrap()
        }
    }

    impl CameraSession for Session {
        fn tracks(&self) -> Vec<Track> {
            vec![video()]
        }

        fn next_frame(&mut self) -> BoxFuture<'_, Result<Option<CameraFrame>, SourceError>> {
            Box::pin(async move {
                if self.sent == self.frames {
                    if self.hang {
                        std::future::pending::<()>().await;
                    }
                    return Ok(None);
                }
                if self.sent > 0 {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                let key = self.sent.is_multiple_of(25);
                let frame = CameraFrame {
                    track: 0,
                    timestamp: 1000 + i64::try_from(self.sent).unwrap() * 3600,
                    key,
                    data: access_unit(key, if key { 3000 } else { 300 }),
                    new_track: None,
                };
                self.sent += 1;
                Ok(Some(frame))
            })
        }
    }

    fn source(always_on: bool) -> StreamSource {
        StreamSource {
            camera: "porch".to_owned(),
            name: "main".to_owned(),
            url: url::Url::parse("rtsp://10.77.0.11:554/stream1").unwrap(),
            login: None,
            always_on,
            transport: crate::config::streams::RtspTransport::Tcp,
            quirks: std::collections::BTreeMap::new(),
        }
    }

    const TIMING: Timing = Timing {
        open_timeout: Duration::from_secs(20),
        close_after: Duration::from_secs(10),
    };

    fn start(opener: &Arc<Opener>, always_on: bool) -> (Arc<Hub>, CancellationToken) {
        let hub = Hub::new(8);
        let stop = CancellationToken::new();
        tokio::spawn(run(
            Arc::clone(&hub),
            source(always_on),
            Arc::clone(opener) as Arc<dyn CameraOpener>,
            TIMING,
            stop.clone(),
        ));
        (hub, stop)
    }

    async fn state_becomes(hub: &Hub, name: &str) {
        let mut state = hub.state();
        tokio::time::timeout(Duration::from_secs(600), state.wait_for(|s| s.name() == name))
            .await
            .unwrap_or_else(|_| panic!("never {name}: {:?}", hub.snapshot().state))
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn on_demand_opens_for_the_first_reader_and_closes_after_the_last() {
        let opener = Arc::new(Opener::default());
        opener.script.lock().unwrap().push_back(Script::Play {
            frames: 100_000,
            hang: false,
        });
        let (hub, stop) = start(&opener, false);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            opener.opened_at.lock().unwrap().is_empty(),
            "opened without a reader"
        );

        let lease = hub.lease();
        state_becomes(&hub, "playing").await;
        let generation = hub.info().unwrap().generation;
        let reader = hub.subscribe(generation).unwrap();
        drop(lease);
        let first = reader.next().await.unwrap();
        assert!(first.key, "a reader starts at a key frame");
        assert!(!first.packets.is_empty());
        let second = reader.next().await.unwrap();
        assert_eq!(
            second.timestamp.wrapping_sub(first.timestamp),
            3600,
            "the camera's spacing is kept"
        );
        assert_eq!(*opener.live.lock().unwrap(), 1);

        drop(reader);
        let left = tokio::time::Instant::now();
        state_becomes(&hub, "idle").await;
        let closed_after = left.elapsed();
        assert!(
            closed_after >= TIMING.close_after && closed_after < TIMING.close_after + Duration::from_secs(1),
            "{closed_after:?}"
        );
        assert_eq!(*opener.live.lock().unwrap(), 0, "the camera session ended");
        assert_eq!(opener.opened_at.lock().unwrap().len(), 1);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_to_the_cap_and_a_healthy_session_resets_it() {
        let opener = Arc::new(Opener::default());
        {
            let mut script = opener.script.lock().unwrap();
            script.extend([Script::Fail; 7]);
            // 100 s of frames (healthy), then the camera goes away again.
            script.push_back(Script::Play {
                frames: 2500,
                hang: false,
            });
            script.extend([Script::Fail; 2]);
            script.push_back(Script::Play {
                frames: 100_000,
                hang: false,
            });
        }
        let (hub, stop) = start(&opener, true);
        let mut state = hub.state();
        state.wait_for(|s| s.name() == "backoff").await.unwrap();
        assert!(hub.snapshot().last_error.unwrap().contains("connection refused"));
        tokio::time::timeout(Duration::from_secs(600), async {
            while opener.opened_at.lock().unwrap().len() < 11 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap();
        let opened = opener.opened_at.lock().unwrap().clone();
        let gaps: Vec<f64> = opened.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        eprintln!("{gaps:?}");
        for (gap, base) in gaps[..7].iter().zip([1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]) {
            assert!(
                (base * 0.8..=(base * 1.2f64).min(30.0)).contains(&((*gap * 100.0).round() / 100.0)),
                "{gaps:?}"
            );
        }
        // The 100 s session was healthy: its end is retried after 1 s, and
        // the failures after it double from there.
        assert!(gaps[7] >= 100.79 && gaps[7] <= 101.21, "{gaps:?}");
        assert!(gaps[8] >= 1.59 && gaps[8] <= 2.41, "{gaps:?}");
        assert!(gaps[9] >= 3.19 && gaps[9] <= 4.81, "{gaps:?}");
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_camera_is_reconnected_and_timestamps_carry_on() {
        let opener = Arc::new(Opener::default());
        {
            let mut script = opener.script.lock().unwrap();
            script.push_back(Script::Play {
                frames: 50,
                hang: true,
            });
            script.push_back(Script::Play {
                frames: 100_000,
                hang: false,
            });
        }
        let (hub, stop) = start(&opener, true);
        state_becomes(&hub, "playing").await;
        let generation = hub.info().unwrap().generation;
        let reader = hub.subscribe(generation).unwrap();
        let mut last: Option<(u32, u16)> = None;
        let mut jump = 0;
        for _ in 0..100 {
            let frame = reader.next().await.expect("the reader survives the reconnect");
            let (seq, timestamp) = rtp::seq_and_timestamp(&frame.packets[0]).unwrap();
            assert_eq!(timestamp, frame.timestamp);
            if let Some((last_ts, last_seq)) = last {
                let advance = timestamp.wrapping_sub(last_ts);
                assert!(advance > 0 && advance < u32::MAX / 2, "timestamps never go back");
                assert_eq!(seq, last_seq.wrapping_add(1), "sequence numbers continue");
                jump = jump.max(advance);
            }
            last = Some((timestamp, seq + frame.packets.len() as u16 - 1));
        }
        // The silent camera was given FRAME_TIMEOUT, then a 1 s backoff: the
        // timeline advanced by that gap.
        let gap = f64::from(jump) / 90_000.0;
        assert!(
            gap > FRAME_TIMEOUT.as_secs_f64() && gap < FRAME_TIMEOUT.as_secs_f64() + 2.0,
            "{gap}"
        );
        assert_eq!(hub.info().unwrap().generation, generation);
        assert_eq!(opener.opened_at.lock().unwrap().len(), 2);
        stop.cancel();
    }
}
