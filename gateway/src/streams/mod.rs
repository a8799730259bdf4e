//! Camera streams: each camera stream pulled once (retina), fanned out to
//! every reader, and re-served to the LAN over RTSP.
//!
//! - `media.rs`: tracks and frames. `bus.rs`: the hub per stream (GOP cache,
//!   bounded reader queues, source state). `source.rs`: the source task
//!   (on demand or always on, backoff, one timeline across reconnects) over
//!   the `CameraOpener` trait; `camera.rs`: retina's opener.
//! - `rtp.rs` and `sdp.rs` (pure): packetization, RTCP sender reports, SDP.
//!   `fmp4.rs` (pure): fragmented MP4 for the dashboard's live view.
//! - `server.rs`: the RTSP server.

mod bus;
mod camera;
pub mod fmp4;
pub mod media;
pub mod rtp;
pub mod sdp;
pub mod server;
pub mod source;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use bus::{Hub, HubSnapshot, Lease, Reader, SourceState, StreamInfo, SubscribeError};
pub use camera::RetinaOpener;

use crate::auth::AuthShared;
use crate::config::Config;
use crate::config::streams::{StreamSource, Streams};
use crate::daemon::{SubsystemState, SubsystemStatus};
use crate::net::{ConnectionCaps, ListenError, ListenerKind, ListenerSet, Serving, StagedListeners};
use crate::proxy::rules::Requirement;
use crate::shutdown::Drain;
use server::{Route, Routes, ServerContext};
use source::{CameraOpener, Timing};

const KIND: ListenerKind = ListenerKind {
    name: "RTSP",
    key: "[streams] listen",
};

/// RTSP connections: a DVR holds one per camera stream.
const CAPS: ConnectionCaps = ConnectionCaps {
    max_connections: 512,
    max_per_client: 128,
};

/// The streams subsystem: the RTSP listeners and one hub and source task
/// per configured stream.
#[derive(Debug)]
pub struct StreamService {
    listeners: ListenerSet,
    context: ServerContext,
    opener: Arc<dyn CameraOpener>,
    running: HashMap<String, Running>,
    status: Arc<StreamStatusSource>,
}

#[derive(Debug)]
struct Running {
    source: StreamSource,
    timing: Timing,
    max_readers: usize,
    hub: Arc<Hub>,
    stop: CancellationToken,
}

impl Running {
    fn same(&self, source: &StreamSource, timing: Timing, max_readers: usize) -> bool {
        self.source == *source && self.timing == timing && self.max_readers == max_readers
    }

    fn stop(&self) {
        self.stop.cancel();
        self.hub.close();
    }
}

/// A reload's bound listeners, not yet serving.
#[derive(Debug)]
pub struct StagedStreams {
    listeners: StagedListeners,
    streams: Streams,
}

impl StreamService {
    pub fn start(
        config: &Config,
        auth: &Arc<AuthShared>,
        status: Arc<StreamStatusSource>,
        drain: &Drain,
    ) -> Result<Self, ListenError> {
        let context = ServerContext {
            routes: Arc::clone(&status.routes),
            auth: Arc::clone(auth),
        };
        let bound = config
            .streams
            .listen
            .iter()
            .map(|&address| crate::net::bind(KIND, address).map(|listener| (address, listener)))
            .collect::<Result<Vec<_>, _>>()?;
        let listeners = ListenerSet::start(KIND, bound, &serve_with(&context, drain))?;
        let mut service = Self {
            listeners,
            context,
            opener: Arc::clone(&status.opener),
            running: HashMap::new(),
            status,
        };
        service.apply(&config.streams, drain);
        Ok(service)
    }

    /// Binds what the new config adds; nothing changes yet.
    pub fn prepare(&self, config: &Config) -> Result<StagedStreams, ListenError> {
        Ok(StagedStreams {
            listeners: self.listeners.stage(&config.streams.listen)?,
            streams: config.streams.clone(),
        })
    }

    pub async fn commit(&mut self, staged: StagedStreams, drain: &Drain) {
        self.listeners
            .commit(staged.listeners, &serve_with(&self.context, drain))
            .await;
        self.apply(&staged.streams, drain);
    }

    /// Starts, keeps or stops each stream's hub and source: an unchanged
    /// stream keeps its readers and its camera session.
    fn apply(&mut self, streams: &Streams, drain: &Drain) {
        let timing = Timing {
            open_timeout: streams.open_timeout,
            close_after: streams.close_after,
        };
        let mut running = HashMap::new();
        for source in &streams.sources {
            let path = source.path();
            match self.running.remove(&path) {
                Some(kept) if kept.same(source, timing, streams.max_readers) => {
                    running.insert(path, kept);
                }
                replaced => {
                    if let Some(old) = replaced {
                        old.stop();
                    }
                    let hub = Hub::new(streams.max_readers);
                    let stop = drain.token().child_token();
                    let task = source::run(
                        Arc::clone(&hub),
                        source.clone(),
                        Arc::clone(&self.opener),
                        timing,
                        stop.clone(),
                    );
                    let span = tracing::info_span!("stream", stream = %path);
                    drain.spawn(tracing::Instrument::instrument(task, span));
                    running.insert(
                        path,
                        Running {
                            source: source.clone(),
                            timing,
                            max_readers: streams.max_readers,
                            hub,
                            stop,
                        },
                    );
                }
            }
        }
        for removed in self.running.values() {
            removed.stop();
        }
        self.running = running;
        self.context.routes.store(Arc::new(Routes {
            streams: self
                .running
                .iter()
                .map(|(path, r)| {
                    let route = Route {
                        source: r.source.clone(),
                        hub: Arc::clone(&r.hub),
                    };
                    (path.clone(), route)
                })
                .collect(),
            requirement: Requirement {
                from: Vec::new(),
                users: streams.users.clone(),
                tokens: streams.tokens.clone(),
            },
            open_timeout: streams.open_timeout,
        }));
    }

    pub fn status_source(&self) -> Arc<StreamStatusSource> {
        Arc::clone(&self.status)
    }

    pub fn status(&self) -> SubsystemStatus {
        let addrs = self.listeners.local_addrs();
        if self.running.is_empty() {
            return SubsystemStatus {
                name: "streams",
                state: SubsystemState::Disabled,
                detail: "no camera has streams".to_owned(),
            };
        }
        let listen: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        SubsystemStatus {
            name: "streams",
            state: SubsystemState::Running,
            detail: format!("{} stream(s); RTSP on {}", self.running.len(), listen.join(", ")),
        }
    }
}

fn serve_with(
    context: &ServerContext,
    drain: &Drain,
) -> impl Fn(tokio::net::TcpListener) -> std::io::Result<Serving> + use<> {
    let context = context.clone();
    let drain = drain.clone();
    move |listener| {
        let context = context.clone();
        crate::net::serve_tcp(
            listener,
            CAPS,
            move |stream, client, local, part| server::serve(stream, client, local, context.clone(), part),
            &drain,
        )
    }
}

/// What the admin API reads: every stream's state (`/api/streams`,
/// `/metrics`) and its hub (the live view). The RTSP server reads the same
/// routes.
#[derive(Debug)]
pub struct StreamStatusSource {
    routes: Arc<ArcSwap<Routes>>,
    /// Opens the cameras; counts their sessions.
    opener: Arc<dyn CameraOpener>,
}

/// One stream as `/api/streams` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub camera: String,
    pub stream: String,
    /// `/<camera>/<stream>`, the restream's path.
    pub path: String,
    /// idle, connecting, playing or backoff.
    pub state: &'static str,
    /// Unix seconds: playing since, or the next attempt.
    pub since: Option<u64>,
    pub retry_at: Option<u64>,
    pub last_error: Option<String>,
    pub always_on: bool,
    pub tracks: Vec<TrackStatus>,
    pub readers: usize,
    /// Readers and requests that want the camera open.
    pub wanted_by: usize,
    pub frames: u64,
    pub bytes: u64,
    /// Frames readers lost by falling behind.
    pub dropped: u64,
    pub fps: f64,
    pub bitrate: f64,
    /// Sessions camgate holds with the camera (open or not yet closed).
    pub camera_sessions: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrackStatus {
    pub codec: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub clock_rate: u32,
    pub channels: Option<u16>,
}

impl StreamStatusSource {
    pub fn new(opener: Arc<dyn CameraOpener>) -> Self {
        Self {
            routes: Arc::default(),
            opener,
        }
    }

    /// How long a reader waits for a camera to start streaming.
    pub fn open_timeout(&self) -> std::time::Duration {
        self.routes.load().open_timeout
    }

    /// The hub of the stream at `path` (`/<camera>/<stream>`).
    pub fn hub(&self, path: &str) -> Option<Arc<Hub>> {
        self.routes
            .load()
            .streams
            .get(path)
            .map(|route| Arc::clone(&route.hub))
    }

    pub fn snapshot(&self) -> Vec<StreamStatus> {
        self.routes
            .load()
            .streams
            .values()
            .map(|entry| {
                let snapshot = entry.hub.snapshot();
                let unix = |t: std::time::SystemTime| {
                    t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
                };
                let (since, retry_at) = match &snapshot.state {
                    SourceState::Playing { since } => (unix(*since), None),
                    SourceState::Backoff { retry_at, .. } => (None, unix(*retry_at)),
                    SourceState::Idle | SourceState::Connecting => (None, None),
                };
                let live = usize::from(matches!(snapshot.state, SourceState::Playing { .. }));
                let stale = self.opener.sessions(&entry.source);
                StreamStatus {
                    camera: entry.source.camera.clone(),
                    stream: entry.source.name.clone(),
                    path: entry.source.path(),
                    state: snapshot.state.name(),
                    since,
                    retry_at,
                    last_error: snapshot.last_error.clone(),
                    always_on: entry.source.always_on,
                    tracks: snapshot
                        .info
                        .iter()
                        .flat_map(|info| info.tracks.iter())
                        .map(|t| TrackStatus {
                            codec: t.codec.name().to_owned(),
                            width: t.dimensions.map(|d| d.0),
                            height: t.dimensions.map(|d| d.1),
                            clock_rate: t.clock_rate,
                            channels: t.channels,
                        })
                        .collect(),
                    readers: snapshot.readers,
                    wanted_by: snapshot.leases,
                    frames: snapshot.frames,
                    bytes: snapshot.bytes,
                    dropped: snapshot.dropped,
                    fps: snapshot.fps,
                    bitrate: snapshot.bitrate,
                    camera_sessions: live + stale,
                }
            })
            .collect()
    }
}

/// A metric's name, help and value from a stream's status.
type Reading<T> = (&'static str, &'static str, fn(&StreamStatus) -> T);

/// The streams' counters on `/metrics`, read at each scrape.
impl prometheus_client::collector::Collector for StreamStatusSource {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let streams = self.snapshot();
        let counters: [Reading<u64>; 3] = [
            ("stream_frames", "Frames received from the camera", |s| s.frames),
            ("stream_bytes", "Payload bytes received from the camera", |s| {
                s.bytes
            }),
            (
                "stream_dropped_frames",
                "Frames readers lost by falling behind",
                |s| s.dropped,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for stream in &streams {
                let labels = [("stream", stream.path.as_str())];
                ConstCounter::new(value(stream)).encode(family.encode_family(&labels)?)?;
            }
        }
        let gauges: [Reading<i64>; 3] = [
            ("stream_readers", "Readers of the restream", |s| {
                i64::try_from(s.readers).unwrap_or(i64::MAX)
            }),
            ("stream_playing", "1 while the camera stream plays", |s| {
                i64::from(s.state == "playing")
            }),
            ("stream_camera_sessions", "Sessions held with the camera", |s| {
                i64::try_from(s.camera_sessions).unwrap_or(i64::MAX)
            }),
        ];
        for (name, help, value) in gauges {
            let mut family =
                encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
            for stream in &streams {
                let labels = [("stream", stream.path.as_str())];
                ConstGauge::new(value(stream)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
