//! The dashboard's live view: `GET /api/streams/{camera}/{stream}/live`, a
//! WebSocket carrying one camera stream as fragmented MP4 for the browser's
//! Media Source Extensions.
//!
//! The socket takes a lease on the stream's hub (an on-demand camera
//! starts), waits up to `[streams] open_timeout` for it to play, and reads
//! it like any other reader. It sends a TEXT message
//! `{"mime", "codec", "width", "height"}`, the init segment as BINARY, then
//! one BINARY media segment per frame. The same socket starts over (a new
//! TEXT header and init segment, from which the page builds a new
//! `MediaSource`) when the camera sends other parameter sets or comes back
//! with other tracks; when the stream itself goes (a reload replaced or
//! removed it), it closes with 1012 and the page reconnects. Errors close
//! with a reason in words, also sent in full first as `{"error": "…"}`
//! (a close frame holds 123 bytes).
//!
//! A slow browser never slows anyone else: the hub's reader queue is
//! bounded (it skips to the next key frame), this task sends one message at
//! a time and gives up on a browser that takes longer than `SEND_TIMEOUT`
//! for one. An idle socket is pinged; an unanswered ping ends it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use super::{AppState, api_error, cross_site, principal_name};
use crate::auth::Principal;
use crate::streams::fmp4::{Fmp4Error, Fragmenter, LiveTracks};
use crate::streams::media::Track;
use crate::streams::{Hub, Reader, StreamInfo, StreamStatusSource, SubscribeError};

/// Idle this long, the socket is pinged (Chrome drops a WebSocket silent
/// for a minute).
const PING_AFTER: Duration = Duration::from_secs(20);
/// A ping unanswered this long: the browser is gone.
const PONG_WITHIN: Duration = Duration::from_secs(40);
/// One message may take this long to leave; longer, the browser cannot
/// keep up (or is gone).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The browser sends nothing but control frames.
const MAX_INCOMING: usize = 4096;
/// Starts over at most this often per socket (new tracks or parameter
/// sets): a camera that never settles is not chased forever.
const MAX_STARTS: u32 = 32;
/// A close frame's reason: 125 bytes less the code.
const MAX_CLOSE_REASON: usize = 123;

/// `GET /api/streams/{camera}/{stream}/live`: the upgrade, or why not.
pub(super) async fn live(
    State(state): State<AppState>,
    Extension(admin): Extension<Principal>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // A WebSocket handshake is a GET the browser sends with its cookies
    // from any page of the same site (another port of this host, too):
    // only camgate's own pages may open one.
    if cross_site(&headers) {
        let client = client.map(|Extension(ConnectInfo(client))| client.ip().to_canonical());
        tracing::warn!(target: "camgate::audit", event = "admin", outcome = "cross-site",
            principal = %principal_name(&admin), client.addr = client.map(tracing::field::display),
            "live view asked from another site's page: refused");
        return api_error(
            StatusCode::FORBIDDEN,
            "the live view opens only from camgate's own pages",
        );
    }
    let (camera, stream) = match path {
        Ok(Path(names)) => names,
        Err(rejection) => return api_error(rejection.status(), rejection.body_text()),
    };
    let path = format!("/{camera}/{stream}");
    let Some(hub) = state.streams.hub(&path) else {
        return api_error(
            StatusCode::NOT_FOUND,
            format!("no stream {path}: GET /api/streams lists them"),
        );
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return api_error(rejection.status(), rejection.body_text()),
    };
    let streams = Arc::clone(&state.streams);
    let span = tracing::info_span!("live", stream = %path, principal = %principal_name(&admin));
    upgrade
        .max_message_size(MAX_INCOMING)
        .max_frame_size(MAX_INCOMING)
        .on_upgrade(move |socket| {
            async move {
                tracing::info!("live view opened");
                let mut live = Live::new(socket);
                let Err(end) = live.stream(&streams, &path, hub).await;
                live.close(end).await;
            }
            .instrument(span)
        })
}

/// Why a live view ended.
#[derive(Debug)]
enum End {
    /// The browser left, went silent or could not keep up: nothing to tell it.
    Gone(&'static str),
    /// Closed with a code and the reason in words.
    Close { code: u16, reason: String },
}

impl End {
    fn error(reason: impl Into<String>) -> Self {
        Self::Close {
            code: close_code::ERROR,
            reason: reason.into(),
        }
    }
}

/// One browser's socket.
struct Live {
    socket: WebSocket,
    last_sent: Instant,
    /// When the unanswered ping went.
    ping_sent: Option<Instant>,
}

impl Live {
    fn new(socket: WebSocket) -> Self {
        Self {
            socket,
            last_sent: Instant::now(),
            ping_sent: None,
        }
    }

    /// Plays the stream at `path` until something ends it: the camera's
    /// new tracks start over on the same socket, another hub for the same
    /// path (a reload) too.
    async fn stream(
        &mut self,
        streams: &StreamStatusSource,
        path: &str,
        mut hub: Arc<Hub>,
    ) -> Result<Infallible, End> {
        let open_timeout = streams.open_timeout();
        // The generation last played on `hub`.
        let mut played = None;
        for _ in 0..MAX_STARTS {
            let lease = hub.lease();
            let Some(info) = self.wait(hub.playing(open_timeout)).await? else {
                let why = hub
                    .snapshot()
                    .last_error
                    .map_or_else(String::new, |error| format!(": {error}"));
                return Err(End::error(format!(
                    "the camera did not start streaming within {} s{why}",
                    open_timeout.as_secs()
                )));
            };
            if played == Some(info.generation) {
                // Playing, same tracks, yet the reader ended: the hub was
                // closed (the stream changed or went, or camgate stops).
                return Err(End::Close {
                    code: close_code::RESTART,
                    reason: "the stream restarted: reconnect".to_owned(),
                });
            }
            let reader = match hub.subscribe(info.generation) {
                Ok(reader) => reader,
                Err(SubscribeError::Changed) => continue,
                Err(full @ SubscribeError::Full(_)) => {
                    return Err(End::Close {
                        code: close_code::AGAIN,
                        reason: full.to_string(),
                    });
                }
            };
            drop(lease); // the reader holds its own
            played = Some(info.generation);
            self.play(&hub, &reader, info).await?;
            drop(reader);
            match streams.hub(path) {
                None => return Err(End::error("the stream is no longer in camgate's configuration")),
                Some(current) if !Arc::ptr_eq(&current, &hub) => {
                    hub = current;
                    played = None;
                }
                Some(_) => tracing::debug!("the camera came back with other tracks: starting over"),
            }
        }
        Err(End::error("the camera's stream keeps changing: try again later"))
    }

    /// Sends the header and init segment, then the frames of `reader` as
    /// media segments until it ends; new parameter sets start over.
    async fn play(&mut self, hub: &Hub, reader: &Reader, mut info: Arc<StreamInfo>) -> Result<(), End> {
        let mut fragmenter = self.start(&info.tracks).await?;
        let mut starts = 1;
        loop {
            let frame = tokio::select! {
                frame = reader.next() => frame,
                event = self.event() => {
                    event?;
                    continue;
                }
            };
            let Some(frame) = frame else {
                return Ok(());
            };
            if let Some(segment) = fragmenter.push(&frame) {
                self.send(Message::Binary(segment)).await?;
            }
            // The source updated the hub's tracks before it published the
            // frame that brought the new parameters; a new init segment
            // starts at a key frame.
            if fragmenter.parameters_changed() && frame.key {
                let Some(now) = hub
                    .info()
                    .filter(|now| now.generation == info.generation && !Arc::ptr_eq(now, &info))
                else {
                    continue;
                };
                if starts == MAX_STARTS {
                    return Err(End::error(
                        "the camera's parameters keep changing: try again later",
                    ));
                }
                starts += 1;
                tracing::debug!("new parameter sets: starting over");
                info = now;
                fragmenter = self.start(&info.tracks).await?;
                fragmenter.push(&frame);
            }
        }
    }

    /// The header and the init segment for `tracks`; the fragmenter for
    /// the frames after them.
    async fn start(&mut self, tracks: &[Track]) -> Result<Fragmenter, End> {
        let live = LiveTracks::new(tracks).map_err(|e| End::error(unplayable(tracks, &e)))?;
        let shown = tracks
            .iter()
            .find(|t| t.codec.is_video())
            .or_else(|| tracks.first());
        let header = serde_json::json!({
            "mime": live.mime_type(),
            "codec": shown.map(|t| t.codec.name()),
            "width": shown.and_then(|t| t.dimensions).map(|d| d.0),
            "height": shown.and_then(|t| t.dimensions).map(|d| d.1),
        });
        self.send(Message::text(header.to_string())).await?;
        self.send(Message::Binary(live.init_segment())).await?;
        Ok(Fragmenter::new(&live))
    }

    /// Runs `future` while answering the browser and pinging it.
    async fn wait<T>(&mut self, future: impl Future<Output = T>) -> Result<T, End> {
        tokio::pin!(future);
        loop {
            tokio::select! {
                value = &mut future => return Ok(value),
                event = self.event() => event?,
            }
        }
    }

    /// The browser's next message, or the time to ping it. Pings are
    /// answered by the WebSocket layer as it reads; anything heard counts
    /// as an answer to ours.
    async fn event(&mut self) -> Result<(), End> {
        let deadline = match self.ping_sent {
            Some(sent) => sent + PONG_WITHIN,
            None => self.last_sent + PING_AFTER,
        };
        tokio::select! {
            message = self.socket.recv() => match message {
                Some(Ok(Message::Close(_))) | None => Err(End::Gone("the browser closed the live view")),
                Some(Err(_)) => Err(End::Gone("the browser's connection failed")),
                Some(Ok(_)) => {
                    self.ping_sent = None;
                    Ok(())
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                if self.ping_sent.is_some() {
                    return Err(End::Gone("the browser stopped answering"));
                }
                self.send(Message::Ping(Bytes::new())).await?;
                self.ping_sent = Some(Instant::now());
                Ok(())
            }
        }
    }

    async fn send(&mut self, message: Message) -> Result<(), End> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(message)).await {
            Ok(Ok(())) => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Ok(Err(_)) => Err(End::Gone("the browser's connection failed")),
            Err(_) => Err(End::Gone("the browser did not keep up")),
        }
    }

    /// Says why (in full as a message, then as the close frame's reason)
    /// and waits a moment for the browser's close.
    async fn close(mut self, end: End) {
        let (code, reason) = match end {
            End::Gone(why) => return tracing::info!("live view ended: {why}"),
            End::Close { code, reason } => (code, reason),
        };
        tracing::info!(code, "live view closed: {reason}");
        let error = serde_json::json!({ "error": reason }).to_string();
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(truncate(&reason, MAX_CLOSE_REASON)),
        };
        if self.send(Message::text(error)).await.is_err()
            || self.send(Message::Close(Some(frame))).await.is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.socket.recv().await {}
        })
        .await;
    }
}

/// Why the browser gets nothing, in words.
fn unplayable(tracks: &[Track], error: &Fmp4Error) -> String {
    match error {
        Fmp4Error::NoPlayableTrack => {
            let names: Vec<&str> = tracks.iter().map(|t| t.codec.name()).collect();
            let has = if names.is_empty() {
                "no tracks".to_owned()
            } else {
                format!("only {}", names.join(" and "))
            };
            format!("this stream has {has}: a browser plays H.264, H.265 and AAC; watch it over RTSP instead")
        }
        other => format!("the live view cannot play this stream: {other}"),
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::{truncate, unplayable};
    use crate::streams::fmp4::Fmp4Error;
    use crate::streams::media::Track;

    #[test]
    fn close_reasons_fit_a_close_frame_whole_characters_only() {
        assert_eq!(truncate("short", 123), "short");
        let long = "é".repeat(100);
        let cut = truncate(&long, 123);
        assert_eq!(cut.len(), 122);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_stream_without_browser_codecs_is_refused_in_words() {
        let pcma = Track::audio("PCMA", 8, 8000, Some(1));
        assert_eq!(
            unplayable(&[pcma], &Fmp4Error::NoPlayableTrack),
            "this stream has only PCMA: a browser plays H.264, H.265 and AAC; watch it over RTSP instead"
        );
    }
}
