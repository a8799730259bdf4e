//! The restream's RTSP server (RTSP/1.0 over TCP, media interleaved on the
//! same connection): `rtsp://camgate:8554/<camera>/<stream>` for the LAN's
//! DVRs and players. Messages are parsed and written with `rtsp-types`
//! (retina is a client only); the session logic is ours.
//!
//! Every request for a stream needs Basic credentials of a camgate user, or
//! a `streams` token as the password (any user name), checked by
//! `auth::authenticate` like the proxy's (same bans, same audit). Digest is
//! not offered: camgate keeps passwords only as argon2 hashes, and Digest
//! needs the password (or an MD5 of it) on the server.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::{BufMut, BytesMut};
use rtsp_types::headers;
use rtsp_types::{Method, Response, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::bus::{Hub, Lease, Reader, SubscribeError};
use super::{rtp, sdp};
use crate::auth::{self, AuthShared, Outcome, Presented};
use crate::config::streams::STREAMS_SITE;
use crate::proxy::path::{PathPolicy, canonicalize};
use crate::proxy::rules::Requirement;
use crate::shutdown::Drain;

/// A request larger than this is refused (and the connection closed).
const MAX_REQUEST: usize = 16 * 1024;
/// The session timeout the server announces; a client silent for this long
/// (no request, no RTCP) is gone.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that takes no data for this long is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// RTCP sender reports per track, this often.
const SENDER_REPORT_EVERY: Duration = Duration::from_secs(5);
const PUBLIC: &str = "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER";

/// The configured streams, as the server, the live view and the status
/// read them; swapped whole on reload.
#[derive(Debug, Default)]
pub struct Routes {
    /// By path, `/<camera>/<stream>`.
    pub streams: std::collections::BTreeMap<String, Route>,
    pub requirement: Requirement,
    pub open_timeout: Duration,
}

#[derive(Debug)]
pub struct Route {
    pub source: crate::config::streams::StreamSource,
    pub hub: Arc<Hub>,
}

#[derive(Debug, Clone)]
pub struct ServerContext {
    pub routes: Arc<ArcSwap<Routes>>,
    pub auth: Arc<AuthShared>,
}

/// One parsed client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Request(rtsp_types::Request<Vec<u8>>),
    /// Interleaved data from the client (RTCP receiver reports): ignored.
    Data,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("malformed RTSP message")]
    Malformed,
    #[error("request larger than {MAX_REQUEST} bytes")]
    TooLarge,
    #[error("a response where a request belongs")]
    Unexpected,
}

/// The first message in `buf` and its length; `Ok(None)` when it is not
/// all there yet.
pub fn next_message(buf: &[u8]) -> Result<Option<(Incoming, usize)>, FramingError> {
    match rtsp_types::Message::<Vec<u8>>::parse(buf) {
        Ok((rtsp_types::Message::Request(request), used)) => Ok(Some((Incoming::Request(request), used))),
        Ok((rtsp_types::Message::Data(_), used)) => Ok(Some((Incoming::Data, used))),
        Ok((rtsp_types::Message::Response(_), _)) => Err(FramingError::Unexpected),
        Err(rtsp_types::ParseError::Incomplete(_)) if buf.len() < MAX_REQUEST => Ok(None),
        Err(rtsp_types::ParseError::Incomplete(_)) => Err(FramingError::TooLarge),
        Err(rtsp_types::ParseError::Error) => Err(FramingError::Malformed),
    }
}

/// The stream a request URL names (`/<camera>/<stream>`, a trailing slash
/// allowed) and, for SETUP, the track (`/<camera>/<stream>/trackID=N`).
/// Names are `[a-z0-9_-]`, so anything else (escapes, dot segments) names
/// nothing.
pub fn stream_of(path: &str) -> Option<(String, Option<usize>)> {
    let mut segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    if segments.last() == Some(&"") {
        segments.pop();
    }
    let (camera, stream, track) = match segments[..] {
        [camera, stream] => (camera, stream, None),
        [camera, stream, control] => (camera, stream, Some(sdp::track_from_control(control)?)),
        _ => return None,
    };
    let named = |s: &str| crate::config::proxy::is_identifier(s);
    (named(camera) && named(stream)).then(|| (format!("/{camera}/{stream}"), track))
}

/// The interleaved channels for a SETUP: the client's, or `2n, 2n+1`.
/// Only RTP over the RTSP connection is offered.
pub fn interleaved_channels(transports: &headers::Transports, track: usize) -> Option<(u8, u8)> {
    transports.iter().find_map(|transport| {
        let headers::Transport::Rtp(rtp) = transport else {
            return None;
        };
        if rtp.lower_transport != Some(headers::RtpLowerTransport::Tcp) || rtp.params.multicast {
            return None;
        }
        let recording = rtp.params.mode.contains(&headers::TransportMode::Record);
        if recording {
            return None;
        }
        match rtp.params.interleaved {
            Some((rtp_channel, rtcp)) => {
                let rtcp = rtcp.unwrap_or(rtp_channel.checked_add(1)?);
                Some((rtp_channel, rtcp))
            }
            None => {
                let rtp_channel = u8::try_from(track * 2).ok()?;
                Some((rtp_channel, rtp_channel.checked_add(1)?))
            }
        }
    })
}

/// A set-up track of the session.
#[derive(Debug, Clone, Copy)]
struct SetupTrack {
    track: usize,
    rtp_channel: u8,
    rtcp_channel: u8,
    packets: u32,
    octets: u32,
    ssrc: Option<u32>,
}

#[derive(Debug)]
struct Session {
    id: String,
    path: String,
    generation: u64,
    tracks: Vec<SetupTrack>,
    reader: Option<Reader>,
}

/// One client connection.
struct Connection {
    stream: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    context: ServerContext,
    /// The stream this connection asked for, kept wanted (started, on
    /// demand) until TEARDOWN or close.
    lease: Option<Lease>,
    session: Option<Session>,
    /// The Authorization value and path already granted on this
    /// connection: not re-verified (and re-audited) per request.
    granted: Option<(String, String)>,
}

pub async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    context: ServerContext,
    part: Drain,
) {
    let mut connection = Connection {
        stream,
        client,
        local,
        context,
        lease: None,
        session: None,
        granted: None,
    };
    if let Err(e) = connection.run(&part).await {
        tracing::debug!(err = %e, "RTSP connection ended");
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the client took no data for {}s", WRITE_TIMEOUT.as_secs())]
    WriteTimeout,
    #[error("the client was silent for {}s", SESSION_TIMEOUT.as_secs())]
    Silent,
    #[error("{0}")]
    Framing(#[from] FramingError),
    #[error("the stream ended (camera changed, or the stream was removed)")]
    StreamEnded,
    #[error("closed by the client")]
    Closed,
}

/// What a handled request does next.
enum After {
    Continue,
    Close,
}

impl Connection {
    async fn run(&mut self, part: &Drain) -> Result<(), ConnectionError> {
        let mut input = BytesMut::with_capacity(4096);
        let mut reports = tokio::time::interval(SENDER_REPORT_EVERY);
        reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deadline = tokio::time::Instant::now() + SESSION_TIMEOUT;
        loop {
            // Requests already buffered come first.
            while let Some((message, used)) = next_message(&input)? {
                let _ = input.split_to(used);
                if let Incoming::Request(request) = message
                    && let After::Close = self.handle(&request).await?
                {
                    return Ok(());
                }
            }
            let playing = self.session.as_ref().and_then(|s| s.reader.as_ref());
            tokio::select! {
                () = part.started() => return Ok(()),
                () = tokio::time::sleep_until(deadline) => return Err(ConnectionError::Silent),
                read = self.stream.read_buf(&mut input) => {
                    if read? == 0 {
                        return Err(ConnectionError::Closed);
                    }
                    deadline = tokio::time::Instant::now() + SESSION_TIMEOUT;
                }
                frame = next_frame(playing) => {
                    let frame = frame.ok_or(ConnectionError::StreamEnded)?;
                    self.send_frame(&frame).await?;
                }
                _ = reports.tick(), if playing.is_some() => self.send_reports().await?,
            }
        }
    }

    async fn handle(&mut self, request: &rtsp_types::Request<Vec<u8>>) -> Result<After, ConnectionError> {
        let cseq = request.header(&headers::CSEQ).map(|v| v.as_str().to_owned());
        let response = match self.respond(request).await {
            Ok(response) => response,
            Err(refusal) => refusal.response(),
        };
        let mut response = response;
        if let Some(cseq) = cseq {
            response.insert_header(headers::CSEQ, cseq);
        }
        response.insert_header(headers::SERVER, format!("camgate/{}", crate::VERSION));
        let close = response.status() == StatusCode::BadRequest;
        self.write_response(&response).await?;
        Ok(if close { After::Close } else { After::Continue })
    }

    async fn respond(
        &mut self,
        request: &rtsp_types::Request<Vec<u8>>,
    ) -> Result<Response<Vec<u8>>, Refusal> {
        if request.version() != Version::V1_0 {
            return Err(Refusal::status(StatusCode::RTSPVersionNotSupported));
        }
        match request.method() {
            Method::Options => Ok(ok().header(headers::PUBLIC, PUBLIC).build(Vec::new())),
            Method::Describe => self.describe(request).await,
            Method::Setup => self.setup(request).await,
            Method::Play => self.play(request).await,
            Method::Pause => {
                let session = self.session_of(request)?;
                session.reader = None;
                Ok(ok().build(Vec::new()))
            }
            Method::Teardown => {
                self.session_of(request)?;
                self.session = None;
                self.lease = None;
                Ok(ok().build(Vec::new()))
            }
            Method::GetParameter | Method::SetParameter => {
                if request.header(&headers::SESSION).is_some() {
                    self.session_of(request)?;
                }
                Ok(ok().build(Vec::new()))
            }
            Method::Announce | Method::Record => Err(Refusal::status(StatusCode::MethodNotAllowed)),
            _ => Err(Refusal::status(StatusCode::NotImplemented)),
        }
    }

    /// The stream and track the request URL names, after authentication.
    async fn authorized(
        &mut self,
        request: &rtsp_types::Request<Vec<u8>>,
    ) -> Result<(String, Option<usize>, Arc<Hub>), Refusal> {
        let url = request
            .request_uri()
            .ok_or(Refusal::status(StatusCode::BadRequest))?;
        let (path, track) = stream_of(url.path()).ok_or(Refusal::status(StatusCode::NotFound))?;
        let routes = self.context.routes.load_full();
        let hub = routes
            .streams
            .get(&path)
            .map(|route| Arc::clone(&route.hub))
            .ok_or(Refusal::status(StatusCode::NotFound))?;
        let authorization = request
            .header(&headers::AUTHORIZATION)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let already = self
            .granted
            .as_ref()
            .is_some_and(|(value, granted)| *value == authorization && *granted == path);
        if !already {
            self.authenticate(&authorization, &path, &routes.requirement)
                .await?;
            self.granted = Some((authorization, path.clone()));
        }
        Ok((path, track, hub))
    }

    async fn authenticate(
        &self,
        authorization: &str,
        path: &str,
        requirement: &Requirement,
    ) -> Result<(), Refusal> {
        let canonical =
            canonicalize(path, PathPolicy::default()).map_err(|_| Refusal::status(StatusCode::NotFound))?;
        let attempt = auth::Attempt {
            site: STREAMS_SITE,
            rule: None,
            requirement,
            client: self.client.ip(),
            exempt: false,
            path: &canonical,
            query: None,
        };
        match auth::authenticate(&self.context.auth, &attempt, presented(authorization)).await {
            Outcome::Granted(_) => Ok(()),
            Outcome::Missing | Outcome::Invalid(_) => Err(Refusal::Unauthorized),
            Outcome::Forbidden(_) => Err(Refusal::status(StatusCode::Forbidden)),
            Outcome::Banned(left) => Err(Refusal::Banned(left)),
        }
    }

    async fn describe(
        &mut self,
        request: &rtsp_types::Request<Vec<u8>>,
    ) -> Result<Response<Vec<u8>>, Refusal> {
        let (path, track, hub) = self.authorized(request).await?;
        if track.is_some() {
            return Err(Refusal::status(StatusCode::NotFound));
        }
        let open_timeout = self.context.routes.load().open_timeout;
        let lease = self.lease_for(&path, &hub);
        let info = lease.hub().playing(open_timeout).await.ok_or_else(|| {
            tracing::info!("the camera stream did not start in time");
            Refusal::status(StatusCode::ServiceUnavailable)
        })?;
        let url = request.request_uri().map(ToString::to_string).unwrap_or_default();
        let base = if url.ends_with('/') {
            url
        } else {
            format!("{url}/")
        };
        let body = sdp::describe(&info.tracks, &path, self.local.ip(), info.generation);
        Ok(ok()
            .header(headers::CONTENT_TYPE, "application/sdp")
            .header(headers::CONTENT_BASE, base)
            .build(body.into_bytes()))
    }

    async fn setup(&mut self, request: &rtsp_types::Request<Vec<u8>>) -> Result<Response<Vec<u8>>, Refusal> {
        let (path, track, hub) = self.authorized(request).await?;
        let info = hub
            .info()
            .ok_or(Refusal::status(StatusCode::ServiceUnavailable))?;
        // A URL without a track names the only track of a one-track stream.
        let track = match track {
            Some(track) if track < info.tracks.len() => track,
            None if info.tracks.len() == 1 => 0,
            _ => return Err(Refusal::status(StatusCode::NotFound)),
        };
        let transports = request
            .typed_header::<headers::Transports>()
            .ok()
            .flatten()
            .ok_or(Refusal::status(StatusCode::BadRequest))?;
        let (rtp_channel, rtcp_channel) = interleaved_channels(&transports, track)
            .ok_or(Refusal::status(StatusCode::UnsupportedTransport))?;
        if let Some(session) = &self.session {
            let named = request.header(&headers::SESSION).map(|v| session_id(v.as_str()));
            if named != Some(session.id.as_str()) {
                // One session per connection (aggregate control).
                return Err(Refusal::status(StatusCode::AggregateOperationNotAllowed));
            }
            if session.path != path || session.generation != info.generation || session.reader.is_some() {
                return Err(Refusal::status(StatusCode::MethodNotValidInThisState));
            }
        } else {
            self.lease_for(&path, &hub);
            self.session = Some(Session {
                id: crate::auth::token::random_hex()
                    .map(|hex| hex[..16].to_owned())
                    .map_err(|_| Refusal::status(StatusCode::InternalServerError))?,
                path,
                generation: info.generation,
                tracks: Vec::new(),
                reader: None,
            });
        }
        let session = self.session.as_mut().expect("set above");
        let used = session.tracks.iter().any(|t| {
            t.track != track
                && [t.rtp_channel, t.rtcp_channel]
                    .iter()
                    .any(|c| *c == rtp_channel || *c == rtcp_channel)
        });
        if used {
            return Err(Refusal::status(StatusCode::UnsupportedTransport));
        }
        session.tracks.retain(|t| t.track != track);
        session.tracks.push(SetupTrack {
            track,
            rtp_channel,
            rtcp_channel,
            packets: 0,
            octets: 0,
            ssrc: None,
        });
        Ok(ok()
            .header(
                headers::TRANSPORT,
                format!("RTP/AVP/TCP;unicast;interleaved={rtp_channel}-{rtcp_channel}"),
            )
            .header(
                headers::SESSION,
                format!("{};timeout={}", session.id, SESSION_TIMEOUT.as_secs()),
            )
            .build(Vec::new()))
    }

    async fn play(&mut self, request: &rtsp_types::Request<Vec<u8>>) -> Result<Response<Vec<u8>>, Refusal> {
        self.authorized(request).await?;
        let hub = Arc::clone(
            self.lease
                .as_ref()
                .ok_or(Refusal::status(StatusCode::SessionNotFound))?
                .hub(),
        );
        let url = request.request_uri().map(ToString::to_string).unwrap_or_default();
        let session = self.session_of(request)?;
        if session.tracks.is_empty() {
            return Err(Refusal::status(StatusCode::MethodNotValidInThisState));
        }
        if session.reader.is_none() {
            let reader = hub.subscribe(session.generation).map_err(|e| match e {
                SubscribeError::Full(_) => Refusal::status(StatusCode::ServiceUnavailable),
                SubscribeError::Changed => Refusal::status(StatusCode::SessionNotFound),
            })?;
            session.reader = Some(reader);
        }
        let reader = session.reader.as_ref().expect("set above");
        let base = url.trim_end_matches('/');
        let rtp_info: Vec<String> = session
            .tracks
            .iter()
            .filter_map(|t| {
                let (seq, rtptime) = reader.first_packet(t.track)?;
                Some(format!(
                    "url={base}/{};seq={seq};rtptime={rtptime}",
                    sdp::track_control(t.track)
                ))
            })
            .collect();
        let mut response = ok()
            .header(
                headers::SESSION,
                format!("{};timeout={}", session.id, SESSION_TIMEOUT.as_secs()),
            )
            .header(headers::RANGE, "npt=0.000-");
        if !rtp_info.is_empty() {
            response = response.header(headers::RTP_INFO, rtp_info.join(","));
        }
        tracing::info!(path = %session.path, "reader playing");
        Ok(response.build(Vec::new()))
    }

    /// The session the request names; it must be this connection's.
    fn session_of(&mut self, request: &rtsp_types::Request<Vec<u8>>) -> Result<&mut Session, Refusal> {
        let named = request
            .header(&headers::SESSION)
            .map(|v| session_id(v.as_str()).to_owned())
            .ok_or(Refusal::status(StatusCode::SessionNotFound))?;
        self.session
            .as_mut()
            .filter(|s| s.id == named)
            .ok_or(Refusal::status(StatusCode::SessionNotFound))
    }

    fn lease_for(&mut self, path: &str, hub: &Arc<Hub>) -> &Lease {
        let same = self.lease.as_ref().is_some_and(|l| Arc::ptr_eq(l.hub(), hub));
        if !same {
            if self.session.as_ref().is_some_and(|s| s.path != path) {
                self.session = None;
            }
            self.lease = Some(hub.lease());
        }
        self.lease.as_ref().expect("set above")
    }

    async fn write_response(&mut self, response: &Response<Vec<u8>>) -> Result<(), ConnectionError> {
        let mut bytes = Vec::with_capacity(256 + response.body().len());
        response
            .write(&mut bytes)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.write(&bytes).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        tokio::time::timeout(WRITE_TIMEOUT, self.stream.write_all(bytes))
            .await
            .map_err(|_| ConnectionError::WriteTimeout)??;
        Ok(())
    }

    /// A frame's RTP packets, interleaved: one vectored write of the shared
    /// packets behind their 4-byte headers, so no reader copies a frame.
    async fn send_frame(&mut self, frame: &super::media::Frame) -> Result<(), ConnectionError> {
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let Some(setup) = session.tracks.iter_mut().find(|t| t.track == frame.track) else {
            return Ok(());
        };
        // The packetizer keeps packets under 64 KiB: interleaving's limit.
        let packets: Vec<(u16, &bytes::Bytes)> = frame
            .packets
            .iter()
            .filter_map(|packet| Some((u16::try_from(packet.len()).ok()?, packet)))
            .collect();
        let headers: Vec<[u8; 4]> = packets
            .iter()
            .map(|&(len, _)| {
                let [high, low] = len.to_be_bytes();
                [b'$', setup.rtp_channel, high, low]
            })
            .collect();
        for &(len, _) in &packets {
            setup.packets = setup.packets.wrapping_add(1);
            setup.octets = setup.octets.wrapping_add(u32::from(len).saturating_sub(12));
        }
        if setup.ssrc.is_none() {
            setup.ssrc = frame
                .packets
                .first()
                .and_then(|p| p.get(8..12))
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        }
        let mut slices: Vec<IoSlice<'_>> = headers
            .iter()
            .zip(&packets)
            .flat_map(|(header, (_, packet))| [IoSlice::new(header), IoSlice::new(packet)])
            .collect();
        tokio::time::timeout(WRITE_TIMEOUT, write_all_vectored(&mut self.stream, &mut slices))
            .await
            .map_err(|_| ConnectionError::WriteTimeout)??;
        Ok(())
    }

    /// An RTCP sender report per set-up track that sent something: the
    /// reader maps RTP time to wall-clock time with it (lip sync, DVR
    /// timestamps).
    async fn send_reports(&mut self) -> Result<(), ConnectionError> {
        let Some(session) = &self.session else {
            return Ok(());
        };
        let Some(hub) = self.lease.as_ref().map(|l| Arc::clone(l.hub())) else {
            return Ok(());
        };
        let Some(info) = hub.info() else {
            return Ok(());
        };
        let now = SystemTime::now();
        let mut out = BytesMut::new();
        for setup in &session.tracks {
            let (Some(ssrc), Some((at, timestamp)), Some(track)) =
                (setup.ssrc, hub.latest(setup.track), info.tracks.get(setup.track))
            else {
                continue;
            };
            let since = now.duration_since(at).unwrap_or_default().as_secs_f64();
            let rtp_now = timestamp.wrapping_add((since * f64::from(track.clock_rate)) as u32);
            let report = rtp::sender_report(
                ssrc,
                rtp::ntp_timestamp(now),
                rtp_now,
                setup.packets,
                setup.octets,
            );
            interleave(&mut out, setup.rtcp_channel, &report);
        }
        if out.is_empty() {
            return Ok(());
        }
        self.write(&out).await
    }
}

/// `write_all` for a list of slices (tokio has none): writes until every
/// slice has gone, resuming after partial writes.
async fn write_all_vectored(stream: &mut TcpStream, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !slices.is_empty() {
        let written = stream.write_vectored(slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

fn interleave(out: &mut BytesMut, channel: u8, packet: &[u8]) {
    let Ok(len) = u16::try_from(packet.len()) else {
        return;
    };
    out.reserve(4 + packet.len());
    out.put_u8(b'$');
    out.put_u8(channel);
    out.put_u16(len);
    out.put_slice(packet);
}

async fn next_frame(reader: Option<&Reader>) -> Option<Arc<super::media::Frame>> {
    match reader {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
    }
}

/// `Session: ID;timeout=60` → `ID`.
fn session_id(value: &str) -> &str {
    value.split(';').next().unwrap_or("").trim()
}

/// The credentials of an RTSP request: Basic (a user, or a `cgt_` token as
/// the password), or Bearer.
fn presented(authorization: &str) -> Presented {
    if authorization.is_empty() {
        return Presented::None;
    }
    match auth::authorization(authorization.as_bytes()) {
        Presented::Basic { password, .. } if password.starts_with(auth::token::SECRET_PREFIX.as_bytes()) => {
            match String::from_utf8(password) {
                Ok(token) => Presented::Token(token),
                Err(_) => Presented::Malformed("the token is not UTF-8"),
            }
        }
        other => other,
    }
}

#[derive(Debug)]
enum Refusal {
    Status(StatusCode),
    Unauthorized,
    Banned(Duration),
}

impl Refusal {
    fn status(status: StatusCode) -> Self {
        Self::Status(status)
    }

    fn response(&self) -> Response<Vec<u8>> {
        match self {
            Self::Status(status) => Response::builder(Version::V1_0, *status).build(Vec::new()),
            Self::Unauthorized => Response::builder(Version::V1_0, StatusCode::Unauthorized)
                .header(headers::WWW_AUTHENTICATE, "Basic realm=\"camgate\"")
                .build(Vec::new()),
            Self::Banned(left) => Response::builder(Version::V1_0, StatusCode::Forbidden)
                .header(headers::RETRY_AFTER, left.as_secs().max(1).to_string())
                .build(Vec::new()),
        }
    }
}

fn ok() -> rtsp_types::ResponseBuilder {
    Response::builder(Version::V1_0, StatusCode::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> rtsp_types::Request<Vec<u8>> {
        match next_message(text.as_bytes()) {
            Ok(Some((Incoming::Request(request), used))) => {
                assert_eq!(used, text.len());
                request
            }
            other => panic!("{other:?}"),
        }
    }

    fn transports(value: &str) -> headers::Transports {
        let text =
            format!("SETUP rtsp://h/cam/main/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: {value}\r\n\r\n");
        request(&text)
            .typed_header::<headers::Transports>()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn stream_paths_name_a_camera_stream_and_maybe_a_track() {
        assert_eq!(stream_of("/porch/main"), Some(("/porch/main".to_owned(), None)));
        assert_eq!(stream_of("/porch/main/"), Some(("/porch/main".to_owned(), None)));
        assert_eq!(
            stream_of("/porch/main/trackID=1"),
            Some(("/porch/main".to_owned(), Some(1)))
        );
        for path in [
            "",
            "/",
            "/porch",
            "/porch/",
            "/porch/main/x",
            "/porch/main/trackID=1/x",
            "/Porch/main",
            "/porch/m%61in",
            "/porch/../main",
            "//porch/main",
            "/porch//main",
            "porch/main",
            "/porch/main/trackID=-1",
        ] {
            assert_eq!(stream_of(path), None, "{path}");
        }
    }

    #[test]
    fn only_rtp_over_the_connection_is_offered() {
        assert_eq!(
            interleaved_channels(&transports("RTP/AVP/TCP;unicast;interleaved=4-5"), 0),
            Some((4, 5))
        );
        assert_eq!(
            interleaved_channels(&transports("RTP/AVP/TCP;unicast"), 1),
            Some((2, 3))
        );
        assert_eq!(
            interleaved_channels(
                &transports("RTP/AVP;unicast;client_port=5000-5001,RTP/AVP/TCP;unicast;interleaved=0-1"),
                0
            ),
            Some((0, 1)),
            "the first acceptable of the client's choices"
        );
        assert_eq!(
            interleaved_channels(&transports("RTP/AVP;unicast;client_port=5000-5001"), 0),
            None
        );
        assert_eq!(
            interleaved_channels(&transports("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record"), 0),
            None
        );
        assert_eq!(
            interleaved_channels(&transports("RTP/AVP/TCP;unicast;interleaved=255"), 0),
            None
        );
    }

    #[test]
    fn messages_are_framed_and_bad_ones_refused() {
        let describe =
            "DESCRIBE rtsp://10.0.0.1:8554/porch/main RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n\r\n";
        assert_eq!(request(describe).method(), &Method::Describe);
        assert_eq!(next_message(&describe.as_bytes()[..20]), Ok(None), "incomplete");
        // RTCP from the client, then a request.
        let mut both = vec![b'$', 1, 0, 4, 0x81, 0xc9, 0, 0];
        both.extend_from_slice(describe.as_bytes());
        let (first, used) = next_message(&both).unwrap().unwrap();
        assert_eq!((first, used), (Incoming::Data, 8));
        assert!(matches!(
            next_message(&both[used..]),
            Ok(Some((Incoming::Request(_), _)))
        ));
        assert_eq!(
            next_message(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
            Err(FramingError::Malformed)
        );
        assert_eq!(
            next_message(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n"),
            Err(FramingError::Unexpected)
        );
        let mut huge = b"OPTIONS * RTSP/1.0\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST + 1, b'a');
        assert_eq!(next_message(&huge), Err(FramingError::TooLarge));
    }

    #[test]
    fn tokens_may_come_as_the_basic_password() {
        use base64::Engine;
        let basic = |pair: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
        assert_eq!(presented(""), Presented::None);
        assert_eq!(
            presented(&basic("dvr:cgt_abc")),
            Presented::Token("cgt_abc".to_owned())
        );
        assert_eq!(
            presented(&basic("alice:pw")),
            Presented::Basic {
                user: "alice".to_owned(),
                password: b"pw".to_vec()
            }
        );
        assert_eq!(presented("Bearer cgt_x"), Presented::Token("cgt_x".to_owned()));
        assert!(matches!(
            presented("Digest username=\"a\""),
            Presented::Malformed(_)
        ));
        assert_eq!(session_id("A1B2;timeout=60"), "A1B2");
    }

    proptest::proptest! {
        #[test]
        fn framing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = next_message(&bytes);
        }
    }
}
