//! The fan-out of one camera stream: the source publishes each frame once
//! (an `Arc`, payloads never copied), every reader has a bounded queue of
//! its own. A reader that falls behind loses what it queued and resumes at
//! the next key frame, its drops counted: it never slows the source or the
//! other readers, and never grows memory. A new reader starts at once from
//! the frames since the latest key frame (the GOP cache).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use tokio::sync::{Notify, watch};

use super::media::{Frame, Track, same_shape};

/// A reader's queue holds at most this many frames…
const QUEUE_FRAMES: usize = 512;
/// …and this many bytes (4 s of a 4 Mbit/s stream).
const QUEUE_BYTES: usize = 2 << 20;
/// The GOP cache gives up (until the next key frame) past these: a camera
/// with a very long key frame interval must not pin megabytes.
const GOP_FRAMES: usize = 1024;
const GOP_BYTES: usize = 4 << 20;

/// The stream's tracks as readers see them. A new `generation` means the
/// camera came back with a different set of tracks: readers of the old one
/// are ended and must describe the stream again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub generation: u64,
    pub tracks: Vec<Track>,
}

impl StreamInfo {
    /// The track whose key frames readers start at: the first video track.
    fn key_track(&self) -> Option<usize> {
        self.tracks.iter().position(|t| t.codec.is_video())
    }
}

/// Where the source is; readers wait for `Playing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    Idle,
    Connecting,
    Playing { since: SystemTime },
    Backoff { error: String, retry_at: SystemTime },
}

impl SourceState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Connecting => "connecting",
            Self::Playing { .. } => "playing",
            Self::Backoff { .. } => "backoff",
        }
    }
}

/// One camera stream's hub.
#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    info: watch::Sender<Option<Arc<StreamInfo>>>,
    state: watch::Sender<SourceState>,
    /// Leases held: readers and requests that want the source running.
    demand: watch::Sender<usize>,
    max_readers: usize,
}

#[derive(Debug)]
struct Inner {
    generation: u64,
    key_track: Option<usize>,
    gop: Vec<Arc<Frame>>,
    gop_bytes: usize,
    readers: Vec<Arc<Queue>>,
    /// Per track: the wall-clock time and RTP timestamp of its latest frame
    /// (for RTCP sender reports).
    latest: Vec<Option<(SystemTime, u32)>>,
    counters: Counters,
    last_error: Option<String>,
}

/// Totals since camgate started, and a one-second-slot meter.
#[derive(Debug, Clone, Default)]
struct Counters {
    frames: u64,
    bytes: u64,
    /// Frames readers lost by falling behind.
    dropped: u64,
    meter: Meter,
}

/// Frames and bytes of the key track in the last few whole seconds.
#[derive(Debug, Clone, Default)]
struct Meter {
    /// (second, video frames, bytes), newest last.
    slots: VecDeque<(u64, u64, u64)>,
    origin: Option<Instant>,
}

const METER_SECONDS: u64 = 5;

impl Meter {
    fn add(&mut self, now: Instant, video_frame: bool, bytes: usize) {
        let second = now.duration_since(*self.origin.get_or_insert(now)).as_secs();
        if self.slots.back().is_none_or(|&(s, _, _)| s != second) {
            self.slots.push_back((second, 0, 0));
            while self.slots.len() > (METER_SECONDS + 1) as usize {
                self.slots.pop_front();
            }
        }
        let slot = self.slots.back_mut().expect("a slot was just pushed");
        slot.1 += u64::from(video_frame);
        slot.2 += bytes as u64;
    }

    /// (frames per second, bits per second) over the last whole seconds.
    fn rates(&self, now: Instant) -> (f64, f64) {
        let Some(origin) = self.origin else {
            return (0.0, 0.0);
        };
        let current = now.duration_since(origin).as_secs();
        let first = current.saturating_sub(METER_SECONDS);
        let (frames, bytes) = self
            .slots
            .iter()
            .filter(|&&(s, _, _)| s >= first && s < current)
            .fold((0, 0), |(f, b), &(_, sf, sb)| (f + sf, b + sb));
        let seconds = (current - first).max(1) as f64;
        (frames as f64 / seconds, bytes as f64 * 8.0 / seconds)
    }
}

/// What [`Hub::snapshot`] reports.
#[derive(Debug, Clone)]
pub struct HubSnapshot {
    pub state: SourceState,
    pub last_error: Option<String>,
    pub info: Option<Arc<StreamInfo>>,
    pub readers: usize,
    pub leases: usize,
    pub frames: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub fps: f64,
    pub bitrate: f64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    #[error("the stream has its maximum of {0} readers")]
    Full(usize),
    #[error("the stream changed since it was described")]
    Changed,
}

impl Hub {
    pub fn new(max_readers: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                generation: 0,
                key_track: None,
                gop: Vec::new(),
                gop_bytes: 0,
                readers: Vec::new(),
                latest: Vec::new(),
                counters: Counters::default(),
                last_error: None,
            }),
            info: watch::channel(None).0,
            state: watch::channel(SourceState::Idle).0,
            demand: watch::channel(0).0,
            max_readers,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wants the source running while the lease lives.
    pub fn lease(self: &Arc<Self>) -> Lease {
        self.demand.send_modify(|n| *n += 1);
        Lease(Arc::clone(self))
    }

    pub fn demand(&self) -> watch::Receiver<usize> {
        self.demand.subscribe()
    }

    pub fn state(&self) -> watch::Receiver<SourceState> {
        self.state.subscribe()
    }

    pub fn info(&self) -> Option<Arc<StreamInfo>> {
        self.info.borrow().clone()
    }

    /// Waits up to `timeout` for the source to play (a lease starts it, on
    /// demand), then gives its tracks; `None` if it did not.
    pub async fn playing(&self, timeout: std::time::Duration) -> Option<Arc<StreamInfo>> {
        let mut state = self.state();
        let playing = tokio::time::timeout(
            timeout,
            state.wait_for(|s| matches!(s, SourceState::Playing { .. })),
        );
        match playing.await {
            Ok(Ok(_)) => self.info(),
            _ => None,
        }
    }

    pub(super) fn set_state(&self, state: SourceState) {
        if let SourceState::Backoff { error, .. } = &state {
            self.lock().last_error = Some(error.clone());
        }
        self.state.send_replace(state);
    }

    /// The source (re)opened with `tracks`. The same tracks in the same
    /// shape (codec, payload type, clock) keep the generation, and readers
    /// carry on (new parameter sets travel in band); any other change ends
    /// every reader. Returns the generation.
    pub(super) fn open(&self, tracks: Vec<Track>) -> u64 {
        let mut inner = self.lock();
        let current = self.info.borrow().clone();
        let same_shape = current
            .as_ref()
            .is_some_and(|info| same_shape(&info.tracks, &tracks));
        if !same_shape {
            inner.generation += 1;
            for reader in inner.readers.drain(..) {
                reader.end();
            }
        }
        inner.gop.clear();
        inner.gop_bytes = 0;
        inner.latest = vec![None; tracks.len()];
        let info = StreamInfo {
            generation: inner.generation,
            tracks,
        };
        inner.key_track = info.key_track();
        let generation = inner.generation;
        self.info.send_replace(Some(Arc::new(info)));
        generation
    }

    /// A track's parameters changed mid-stream (same codec): later
    /// DESCRIBEs show the new ones.
    pub(super) fn update_track(&self, index: usize, track: Track) {
        self.info.send_if_modified(|info| match info {
            Some(info) if info.tracks.get(index).is_some_and(|t| *t != track) => {
                let mut new = StreamInfo::clone(info);
                new.tracks[index] = track;
                *info = Arc::new(new);
                true
            }
            _ => false,
        });
    }

    /// Hands one frame to every reader and the GOP cache.
    pub(super) fn publish(&self, frame: &Arc<Frame>, now: SystemTime, instant: Instant) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let starts_gop = inner.key_track.is_none_or(|key| frame.track == key && frame.key);
        if starts_gop {
            inner.gop.clear();
            inner.gop_bytes = 0;
        }
        if !inner.gop.is_empty() || starts_gop {
            if inner.gop.len() < GOP_FRAMES && inner.gop_bytes + frame.size() <= GOP_BYTES {
                inner.gop.push(Arc::clone(frame));
                inner.gop_bytes += frame.size();
            } else {
                inner.gop.clear();
                inner.gop_bytes = 0;
            }
        }
        let mut dropped = 0;
        for reader in &inner.readers {
            dropped += reader.offer(frame, starts_gop);
        }
        if let Some(latest) = inner.latest.get_mut(frame.track) {
            *latest = Some((now, frame.timestamp));
        }
        let counters = &mut inner.counters;
        counters.frames += 1;
        counters.bytes += frame.data.len() as u64;
        counters.dropped += dropped;
        let video = inner.key_track == Some(frame.track);
        counters.meter.add(instant, video, frame.data.len());
    }

    /// A reader of generation `generation`, starting with the GOP cache.
    pub fn subscribe(self: &Arc<Self>, generation: u64) -> Result<Reader, SubscribeError> {
        let mut inner = self.lock();
        if inner.generation != generation {
            return Err(SubscribeError::Changed);
        }
        if inner.readers.len() >= self.max_readers {
            return Err(SubscribeError::Full(self.max_readers));
        }
        let queue = Arc::new(Queue::default());
        {
            let mut q = queue.lock();
            for frame in &inner.gop {
                q.bytes += frame.size();
                q.frames.push_back(Arc::clone(frame));
            }
            // Without a cached key frame, wait for one.
            q.waiting_key = inner.gop.is_empty() && inner.key_track.is_some();
        }
        inner.readers.push(Arc::clone(&queue));
        drop(inner);
        Ok(Reader {
            queue,
            lease: self.lease(),
        })
    }

    /// The latest (wall clock, RTP timestamp) of a track.
    pub fn latest(&self, track: usize) -> Option<(SystemTime, u32)> {
        self.lock().latest.get(track).copied().flatten()
    }

    /// The source is gone (config removed it, or camgate stops): every
    /// reader ends.
    pub(super) fn close(&self) {
        let mut inner = self.lock();
        for reader in inner.readers.drain(..) {
            reader.end();
        }
        inner.gop.clear();
        inner.gop_bytes = 0;
    }

    pub fn snapshot(&self) -> HubSnapshot {
        let inner = self.lock();
        let (fps, bitrate) = inner.counters.meter.rates(Instant::now());
        HubSnapshot {
            state: self.state.borrow().clone(),
            last_error: inner.last_error.clone(),
            info: self.info.borrow().clone(),
            readers: inner.readers.len(),
            leases: *self.demand.borrow(),
            frames: inner.counters.frames,
            bytes: inner.counters.bytes,
            dropped: inner.counters.dropped,
            fps,
            bitrate,
        }
    }

    fn unsubscribe(&self, queue: &Arc<Queue>) {
        self.lock().readers.retain(|q| !Arc::ptr_eq(q, queue));
    }
}

/// Keeps the source wanted; dropping it gives the demand back.
#[derive(Debug)]
pub struct Lease(Arc<Hub>);

impl Lease {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.demand.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A reader's queue.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    frames: VecDeque<Arc<Frame>>,
    bytes: usize,
    /// Lost its place: takes nothing until the next key frame.
    waiting_key: bool,
    dropped: u64,
    ended: bool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `frame`; returns how many frames this reader lost doing so.
    fn offer(&self, frame: &Arc<Frame>, key: bool) -> u64 {
        let mut q = self.lock();
        let mut lost = 0;
        if q.waiting_key && !key {
            q.dropped += 1;
            return 1;
        }
        q.waiting_key = false;
        if q.frames.len() >= QUEUE_FRAMES || q.bytes + frame.size() > QUEUE_BYTES {
            lost = q.frames.len() as u64;
            q.frames.clear();
            q.bytes = 0;
            if !key {
                q.waiting_key = true;
                q.dropped += lost + 1;
                return lost + 1;
            }
            q.dropped += lost;
        }
        q.bytes += frame.size();
        q.frames.push_back(Arc::clone(frame));
        drop(q);
        self.ready.notify_one();
        lost
    }

    fn end(&self) {
        self.lock().ended = true;
        self.ready.notify_one();
    }
}

/// One reader of a stream. Dropping it leaves the stream.
#[derive(Debug)]
pub struct Reader {
    queue: Arc<Queue>,
    lease: Lease,
}

impl Reader {
    /// The next frame, or `None` once the stream ended for this reader.
    pub async fn next(&self) -> Option<Arc<Frame>> {
        loop {
            {
                let mut q = self.queue.lock();
                if let Some(frame) = q.frames.pop_front() {
                    q.bytes -= frame.size();
                    return Some(frame);
                }
                if q.ended {
                    return None;
                }
            }
            // notify_one keeps a permit when nobody waits: no lost wakeup.
            self.queue.ready.notified().await;
        }
    }

    /// The sequence number and RTP timestamp of the first packet queued
    /// for `track` (the RTSP `RTP-Info` of a reader about to play).
    pub fn first_packet(&self, track: usize) -> Option<(u16, u32)> {
        let q = self.queue.lock();
        let frame = q.frames.iter().find(|f| f.track == track)?;
        super::rtp::seq_and_timestamp(frame.packets.first()?)
    }

    /// Frames this reader lost by falling behind.
    pub fn dropped(&self) -> u64 {
        self.queue.lock().dropped
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.lease.hub().unsubscribe(&self.queue);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::streams::media::Codec;

    fn tracks() -> Vec<Track> {
        vec![
            Track {
                codec: Codec::H264 {
                    sps: Bytes::from_static(b"\x67\x42"),
                    pps: Bytes::from_static(b"\x68"),
                },
                payload_type: 96,
                clock_rate: 90_000,
                channels: None,
                dimensions: Some((640, 360)),
                frame_rate: None,
                rfc6381: None,
                sample_entry: None,
            },
            Track::audio("PCMA", 8, 8000, Some(1)),
        ]
    }

    fn frame(track: usize, timestamp: u32, key: bool, size: usize) -> Arc<Frame> {
        Arc::new(Frame {
            track,
            timestamp,
            key,
            data: Bytes::from(vec![0; size]),
            packets: Vec::new(),
        })
    }

    fn publish(hub: &Hub, frame: &Arc<Frame>) {
        hub.publish(frame, SystemTime::now(), Instant::now());
    }

    fn drain(reader: &Reader) -> Vec<u32> {
        let mut q = reader.queue.lock();
        let out = q.frames.iter().map(|f| f.timestamp).collect();
        q.frames.clear();
        q.bytes = 0;
        out
    }

    #[test]
    fn a_new_reader_starts_at_the_latest_key_frame() {
        let hub = Hub::new(4);
        let generation = hub.open(tracks());
        publish(&hub, &frame(0, 1, false, 10));
        publish(&hub, &frame(0, 2, true, 10));
        publish(&hub, &frame(1, 3, false, 10));
        publish(&hub, &frame(0, 4, false, 10));
        let reader = hub.subscribe(generation).unwrap();
        assert_eq!(drain(&reader), [2, 3, 4]);
        publish(&hub, &frame(0, 5, true, 10));
        publish(&hub, &frame(0, 6, false, 10));
        assert_eq!(drain(&reader), [5, 6]);
        let late = hub.subscribe(generation).unwrap();
        assert_eq!(drain(&late), [5, 6]);
    }

    #[test]
    fn without_a_cached_key_frame_a_reader_waits_for_one() {
        let hub = Hub::new(4);
        let generation = hub.open(tracks());
        let reader = hub.subscribe(generation).unwrap();
        publish(&hub, &frame(1, 1, false, 10));
        publish(&hub, &frame(0, 2, false, 10));
        publish(&hub, &frame(0, 3, true, 10));
        publish(&hub, &frame(1, 4, false, 10));
        assert_eq!(drain(&reader), [3, 4]);
        assert_eq!(reader.dropped(), 2);
    }

    #[test]
    fn a_reader_that_falls_behind_skips_to_the_next_key_frame_and_never_holds_more_than_its_bound() {
        let hub = Hub::new(4);
        let generation = hub.open(tracks());
        publish(&hub, &frame(0, 0, true, 1000));
        let slow = hub.subscribe(generation).unwrap();
        let fast = hub.subscribe(generation).unwrap();
        drain(&fast);
        let mut fast_got = 0;
        for ts in 1..=3000u32 {
            publish(&hub, &frame(0, ts, ts % 100 == 0, 1000));
            fast_got += drain(&fast).len();
            let q = slow.queue.lock();
            assert!(q.bytes <= QUEUE_BYTES && q.frames.len() <= QUEUE_FRAMES);
        }
        assert_eq!(fast_got, 3000, "the fast reader lost nothing");
        assert_eq!(fast.dropped(), 0);
        let kept = drain(&slow);
        assert!(kept.len() <= QUEUE_FRAMES);
        let first = kept[0];
        assert_eq!(first % 100, 0, "resumed at a key frame: {first}");
        assert_eq!(*kept.last().unwrap(), 3000);
        assert_eq!(slow.dropped() + kept.len() as u64, 3001);
        assert_eq!(hub.snapshot().dropped, slow.dropped());
    }

    #[test]
    fn readers_are_capped_and_leaving_gives_the_demand_back() {
        let hub = Hub::new(2);
        let generation = hub.open(tracks());
        let a = hub.subscribe(generation).unwrap();
        let b = hub.subscribe(generation).unwrap();
        assert_eq!(hub.subscribe(generation).unwrap_err(), SubscribeError::Full(2));
        assert_eq!(*hub.demand().borrow(), 2);
        drop(a);
        assert_eq!(hub.snapshot().readers, 1);
        assert_eq!(*hub.demand().borrow(), 1);
        drop(b);
        assert_eq!(*hub.demand().borrow(), 0);
    }

    #[tokio::test]
    async fn a_camera_back_with_other_tracks_ends_the_readers_the_same_ones_keep_them() {
        let hub = Hub::new(4);
        let first = hub.open(tracks());
        let reader = hub.subscribe(first).unwrap();
        let mut again = tracks();
        if let Codec::H264 { sps, .. } = &mut again[0].codec {
            *sps = Bytes::from_static(b"\x67\x4d");
        }
        assert_eq!(hub.open(again), first, "new parameter sets, same shape");
        publish(&hub, &frame(0, 7, true, 10));
        assert_eq!(reader.next().await.unwrap().timestamp, 7);

        let video_only = tracks()[..1].to_vec();
        let second = hub.open(video_only);
        assert_ne!(second, first);
        assert!(reader.next().await.is_none(), "the old reader ended");
        assert_eq!(hub.subscribe(first).unwrap_err(), SubscribeError::Changed);
        assert!(hub.subscribe(second).is_ok());
    }

    #[tokio::test]
    async fn next_wakes_for_a_frame_published_later() {
        let hub = Hub::new(4);
        let generation = hub.open(tracks());
        publish(&hub, &frame(0, 1, true, 10));
        let reader = hub.subscribe(generation).unwrap();
        assert_eq!(reader.next().await.unwrap().timestamp, 1);
        let publisher = Arc::clone(&hub);
        let task = tokio::spawn(async move {
            tokio::task::yield_now().await;
            publish(&publisher, &frame(0, 2, false, 10));
        });
        assert_eq!(reader.next().await.unwrap().timestamp, 2);
        task.await.unwrap();
        hub.close();
        assert!(reader.next().await.is_none());
    }

    #[test]
    fn the_meter_counts_whole_seconds_of_the_key_track() {
        let mut meter = Meter::default();
        let start = Instant::now();
        for i in 0..100u64 {
            let at = start + std::time::Duration::from_millis(i * 40);
            meter.add(at, true, 5000);
            meter.add(at, false, 100);
        }
        let (fps, bitrate) = meter.rates(start + std::time::Duration::from_millis(4000));
        assert!((fps - 25.0).abs() < 0.01, "{fps}");
        assert!((bitrate - 1_020_000.0).abs() < 1.0, "{bitrate}");
    }
}
