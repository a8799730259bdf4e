//! The setup wizard's "RTSP URL test": connect to a camera's RTSP URL,
//! `DESCRIBE` it with the login it asks for (Digest or Basic, through
//! retina), and say in words what it serves, or why not.
//!
//! `DESCRIBE` proves reachability, the login and the path, and its SDP names
//! the codecs (and, for H.264/H.265 with parameter sets in the SDP, the
//! resolution); no `SETUP`/`PLAY`, so the camera spends no stream on it.
//!
//! A plain TCP connect comes first: retina's errors are opaque text, and
//! "nothing listens" versus "no answer" versus "not an RTSP port" are what a
//! person can act on. The admin API calls this only for camera-subnet
//! addresses (its handler checks); this module does not.

use std::io::ErrorKind;
use std::time::Duration;

use retina::client::{Credentials, Session, SessionOptions, Stream};
use retina::codec::ParametersRef;
use serde::Serialize;
use tokio::time::Instant;
use tracing::Instrument;
use url::Url;

/// The wizard's default bound for one check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// RTSP's well-known port, as retina assumes when the URL names none.
const RTSP_PORT: u16 = 554;
/// Bound on the camera's `a=tool` text shown back.
const MAX_TOOL_CHARS: usize = 100;

/// What a camera's RTSP URL serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RtspCheck {
    /// The URL tested (never with credentials).
    pub url: String,
    /// The server software as the SDP names it (`a=tool`), e.g. "GStreamer".
    pub server: Option<String>,
    pub streams: Vec<RtspStream>,
    /// One line for a person, e.g. "H.264 video 1280×720 at 25 fps, no audio".
    pub summary: String,
}

/// One media stream of the description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RtspStream {
    /// The SDP media type: "video", "audio", "application", …
    pub media: String,
    /// e.g. "H.264", "H.265", "MJPEG", "AAC", "G.711 A-law".
    pub codec: String,
    /// e.g. "1280×720 at 25 fps" or "8 kHz mono", when the SDP says.
    pub details: Option<String>,
}

/// Why the URL test failed, worded for the person at the wizard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtspCheckError {
    #[error("not an RTSP URL: {0}")]
    NotRtsp(String),
    #[error(
        "the URL contains a user name or password: enter them in the login fields instead \
         (URLs are shown and logged, passwords must not be)"
    )]
    CredentialsInUrl,
    #[error("cannot resolve the camera's name {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("nothing listens on {address}: check the port, and that the camera's RTSP service is on")]
    NothingListens { address: String },
    #[error("{address} is unreachable: check the address, and that the camera is on and connected")]
    Unreachable { address: String },
    #[error(
        "no answer within {} from {address}: check the address, and that the camera is on and connected",
        seconds(*.timeout)
    )]
    NoAnswer { address: String, timeout: Duration },
    #[error(
        "{address} accepted the connection but sent no RTSP answer within {}: is this the camera's RTSP port?",
        seconds(*.timeout)
    )]
    NoRtspAnswer { address: String, timeout: Duration },
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("the camera refused the login (401): check the user name and password")]
    LoginRefused,
    #[error("the camera refused the login (401): it needs a user name and password")]
    LoginRequired,
    #[error(
        "the camera answered 404 Not Found for this path: check the path (discovery lists the camera's stream URLs)"
    )]
    NotFound,
    #[error("the camera answered {}", status_text(*.status))]
    Status { status: u16 },
    #[error("the camera's answer is not usable RTSP: {0}")]
    Protocol(String),
}

impl RtspCheckError {
    /// A stable name for the API and the wizard (e.g. to open the login
    /// fields on `login_required`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotRtsp(_) => "not_rtsp",
            Self::CredentialsInUrl => "credentials_in_url",
            Self::Resolve { .. } => "resolve",
            Self::NothingListens { .. } => "nothing_listens",
            Self::Unreachable { .. } => "unreachable",
            Self::NoAnswer { .. } => "no_answer",
            Self::NoRtspAnswer { .. } => "no_rtsp_answer",
            Self::Connect { .. } => "connect",
            Self::LoginRefused => "login_refused",
            Self::LoginRequired => "login_required",
            Self::NotFound => "not_found",
            Self::Status { .. } => "status",
            Self::Protocol(_) => "protocol",
        }
    }
}

/// Tests `url` with `login` (user name, password), all within `timeout`.
pub async fn check(
    url: &str,
    login: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<RtspCheck, RtspCheckError> {
    let span = tracing::info_span!(
        "rtsp_check",
        url = shown_url(url).as_deref().unwrap_or("(not a URL)"),
        login = login.is_some()
    );
    async move {
        let result = run(url, login, timeout).await;
        match &result {
            Ok(found) => tracing::info!(summary = %found.summary, "RTSP URL test passed"),
            Err(why) => tracing::info!(code = why.code(), "RTSP URL test failed: {why}"),
        }
        result
    }
    .instrument(span)
    .await
}

async fn run(url: &str, login: Option<(&str, &str)>, timeout: Duration) -> Result<RtspCheck, RtspCheckError> {
    let target = Target::parse(url)?;
    let deadline = Instant::now() + timeout;
    let address = target.address();

    // Reachability first, in words retina's errors do not give.
    let connect = tokio::net::TcpStream::connect((target.host.as_str(), target.port));
    match tokio::time::timeout_at(deadline, connect).await {
        Err(_) => return Err(RtspCheckError::NoAnswer { address, timeout }),
        Ok(Err(e)) => return Err(connect_error(&target, address, timeout, &e)),
        Ok(Ok(probe)) => drop(probe),
    }

    let options = SessionOptions::default().creds(login.map(|(user, password)| Credentials {
        username: user.to_owned(),
        password: password.to_owned(),
    }));
    let describe = Session::describe(target.url.clone(), options);
    let session = match tokio::time::timeout_at(deadline, describe).await {
        Err(_) => return Err(RtspCheckError::NoRtspAnswer { address, timeout }),
        Ok(Err(e)) => return Err(describe_error(&e, login.is_some(), address)),
        Ok(Ok(session)) => session,
    };
    let streams: Vec<RtspStream> = session.streams().iter().map(describe_stream).collect();
    let server = session.tool().map(|tool| printable(tool));
    Ok(RtspCheck {
        url: target.url.to_string(),
        server,
        summary: summary(&streams),
        streams,
    })
}

/// A URL retina may connect to: `rtsp://`, a host, no credentials.
#[derive(Debug)]
struct Target {
    url: Url,
    /// As the URL has it (IPv6 without brackets), for connecting.
    host: String,
    port: u16,
}

impl Target {
    fn parse(text: &str) -> Result<Self, RtspCheckError> {
        let text = text.trim();
        let url = Url::parse(text).map_err(|e| {
            let why = if text.contains("://") {
                format!("it does not parse ({e})")
            } else {
                "a camera stream's URL looks like rtsp://10.77.0.20:554/stream1".to_owned()
            };
            RtspCheckError::NotRtsp(why)
        })?;
        match url.scheme() {
            "rtsp" => {}
            "rtsps" => {
                return Err(RtspCheckError::NotRtsp(
                    "rtsps:// (RTSP over TLS) is not supported: use the camera's rtsp:// URL".to_owned(),
                ));
            }
            other => {
                return Err(RtspCheckError::NotRtsp(format!(
                    "it starts with {other}://, a camera stream's URL starts with rtsp://"
                )));
            }
        }
        // Before anything that could echo the URL.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(RtspCheckError::CredentialsInUrl);
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
            _ => {
                return Err(RtspCheckError::NotRtsp(
                    "it names no camera address (rtsp://ADDRESS:PORT/PATH)".to_owned(),
                ));
            }
        };
        let port = url.port().unwrap_or(RTSP_PORT);
        if port == 0 {
            return Err(RtspCheckError::NotRtsp("port 0 is not a port".to_owned()));
        }
        Ok(Self { url, host, port })
    }

    /// `host:port` as people write it (IPv6 in brackets).
    fn address(&self) -> String {
        match self.url.host_str() {
            Some(host) => format!("{host}:{}", self.port),
            None => format!("{}:{}", self.host, self.port),
        }
    }
}

/// `url` without credentials, for the log; `None` if it does not parse.
fn shown_url(url: &str) -> Option<String> {
    let mut url = Url::parse(url.trim()).ok()?;
    if !url.username().is_empty() || url.password().is_some() {
        // Cannot fail for a URL with credentials (it has a host).
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    Some(url.to_string())
}

fn connect_error(target: &Target, address: String, timeout: Duration, e: &std::io::Error) -> RtspCheckError {
    match e.kind() {
        ErrorKind::ConnectionRefused => RtspCheckError::NothingListens { address },
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => RtspCheckError::Unreachable { address },
        ErrorKind::TimedOut => RtspCheckError::NoAnswer { address, timeout },
        // Name resolution failures come as other kinds, with the resolver's text.
        _ if target.host.parse::<std::net::IpAddr>().is_err() && e.raw_os_error().is_none() => {
            RtspCheckError::Resolve {
                host: target.host.clone(),
                reason: e.to_string(),
            }
        }
        _ => RtspCheckError::Connect {
            address,
            reason: e.to_string(),
        },
    }
}

/// retina's errors are opaque: the status code, and else the first line of
/// its message (the rest is connection context for Wireshark).
fn describe_error(e: &retina::Error, with_login: bool, address: String) -> RtspCheckError {
    match e.status_code() {
        Some(401) if with_login => RtspCheckError::LoginRefused,
        Some(401) => RtspCheckError::LoginRequired,
        Some(404) => RtspCheckError::NotFound,
        Some(status) => RtspCheckError::Status { status },
        None => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            match first.strip_prefix("Unable to connect to RTSP server: ") {
                Some(reason) => RtspCheckError::Connect {
                    address,
                    reason: reason.to_owned(),
                },
                None => RtspCheckError::Protocol(first.to_owned()),
            }
        }
    }
}

fn describe_stream(stream: &Stream) -> RtspStream {
    let encoding = stream.encoding_name();
    let mut details = Vec::new();
    match stream.parameters() {
        Some(ParametersRef::Video(video)) => {
            let (width, height) = video.pixel_dimensions();
            if width > 0 && height > 0 {
                details.push(format!("{width}×{height}"));
            }
        }
        Some(ParametersRef::Audio(_) | ParametersRef::Message(_)) | None => {}
    }
    if stream.media() == "video" {
        let fps = stream
            .framerate()
            .map(f64::from)
            .or_else(|| match stream.parameters() {
                // A frame's duration in seconds, as (numerator, denominator).
                Some(ParametersRef::Video(video)) => video
                    .frame_rate()
                    .filter(|&(num, den)| num > 0 && den > 0)
                    .map(|(num, den)| f64::from(den) / f64::from(num)),
                _ => None,
            });
        if let Some(fps) = fps.filter(|fps| fps.is_finite() && *fps > 0.0) {
            details.push(format!("at {} fps", decimal(fps)));
        }
    }
    if stream.media() == "audio" {
        // RFC 3551: G.722's RTP clock is 8 kHz, its sampling 16 kHz.
        let rate = if encoding == "g722" {
            16_000
        } else {
            stream.clock_rate_hz()
        };
        if rate > 0 {
            details.push(hertz(rate));
        }
        // RFC 4566: an `a=rtpmap` without a channel count means one.
        match stream.channels().map_or(1, std::num::NonZeroU16::get) {
            1 => details.push("mono".to_owned()),
            2 => details.push("stereo".to_owned()),
            n => details.push(format!("{n} channels")),
        }
    }
    RtspStream {
        media: printable(stream.media()),
        codec: codec_name(encoding),
        details: (!details.is_empty()).then(|| details.join(" ")),
    }
}

/// retina's lower-case encoding names as people know them.
fn codec_name(encoding: &str) -> String {
    let known = match encoding {
        "h264" => "H.264",
        "h265" => "H.265",
        "jpeg" => "MJPEG",
        "mp4v-es" => "MPEG-4",
        "mpeg4-generic" => "AAC",
        "mp4a-latm" => "AAC (LATM)",
        "pcma" => "G.711 A-law",
        "pcmu" => "G.711 µ-law",
        "g722" => "G.722",
        "g723" => "G.723",
        "g726-16" | "g726-24" | "g726-32" | "g726-40" => "G.726",
        "dvi4" => "DVI4 ADPCM",
        "l8" | "l16" => "PCM",
        "opus" => "Opus",
        name if name.starts_with("vnd.onvif.metadata") => "ONVIF metadata",
        name => return printable(&name.to_uppercase()),
    };
    known.to_owned()
}

fn summary(streams: &[RtspStream]) -> String {
    let describe = |media: &str| -> Vec<String> {
        streams
            .iter()
            .filter(|s| s.media == media)
            .map(|s| match &s.details {
                Some(details) => format!("{} {media} {details}", s.codec),
                None => format!("{} {media}", s.codec),
            })
            .collect()
    };
    let video = describe("video");
    let audio = describe("audio");
    let mut parts = Vec::new();
    if video.is_empty() {
        parts.push("no video".to_owned());
    } else {
        parts.extend(video);
    }
    if audio.is_empty() {
        parts.push("no audio".to_owned());
    } else {
        parts.extend(audio);
    }
    for other in streams
        .iter()
        .filter(|s| s.media != "video" && s.media != "audio")
    {
        parts.push(other.codec.clone());
    }
    parts.join(", ")
}

/// Camera-supplied text, safe to show: no control characters, bounded.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_TOOL_CHARS)
        .collect()
}

fn hertz(rate: u32) -> String {
    if rate.is_multiple_of(1000) {
        format!("{} kHz", rate / 1000)
    } else {
        format!("{} kHz", decimal(f64::from(rate) / 1000.0))
    }
}

/// `15`, `29.97`, `44.1`: at most two decimals, no trailing zeros.
fn decimal(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `5 s`, `1.5 s`, `0.25 s`.
fn seconds(duration: Duration) -> String {
    format!("{} s", decimal(duration.as_secs_f64()))
}

/// "503 Service Unavailable: it may be …"
fn status_text(status: u16) -> String {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        415 => "Unsupported Media Type",
        451 => "Parameter Not Understood",
        453 => "Not Enough Bandwidth",
        454 => "Session Not Found",
        455 => "Method Not Valid in This State",
        461 => "Unsupported Transport",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "RTSP Version Not Supported",
        _ => return status.to_string(),
    };
    let hint = match status {
        403 => {
            ": the login may lack the right to view streams, or the camera locked it after failed attempts"
        }
        453 | 503 => ": it may be serving as many clients as it can",
        _ => "",
    };
    format!("{status} {reason}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> RtspCheckError {
        Target::parse(url).unwrap_err()
    }

    #[test]
    fn only_rtsp_urls_without_credentials() {
        assert_eq!(
            refused("http://10.77.0.20/onvif/device_service").to_string(),
            "not an RTSP URL: it starts with http://, a camera stream's URL starts with rtsp://"
        );
        assert!(
            refused("10.77.0.20:554/stream1")
                .to_string()
                .starts_with("not an RTSP URL: ")
        );
        assert!(
            refused("rtsps://10.77.0.20/s")
                .to_string()
                .contains("not supported")
        );
        assert_eq!(refused("rtsp:///stream1").code(), "not_rtsp");
        assert_eq!(refused("rtsp://10.77.0.20:0/s").code(), "not_rtsp");
        for url in [
            "rtsp://admin:hunter2@10.77.0.20/stream1",
            "rtsp://admin@10.77.0.20/stream1",
            "rtsp://:hunter2@10.77.0.20/stream1",
        ] {
            let error = refused(url);
            assert_eq!(error, RtspCheckError::CredentialsInUrl, "{url}");
            assert!(!error.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn targets() {
        let target = Target::parse(" rtsp://10.77.0.20/stream1?channel=1 ").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("10.77.0.20", 554));
        assert_eq!(target.address(), "10.77.0.20:554");
        assert_eq!(target.url.as_str(), "rtsp://10.77.0.20/stream1?channel=1");
        let target = Target::parse("rtsp://[fd00::20]:8554/live").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("fd00::20", 8554));
        assert_eq!(target.address(), "[fd00::20]:8554");
        let target = Target::parse("RTSP://Cam.Local/x").unwrap();
        assert_eq!(target.host, "Cam.Local");
    }

    #[test]
    fn the_log_never_sees_a_password() {
        assert_eq!(
            shown_url("rtsp://admin:hunter2@10.77.0.20/s").as_deref(),
            Some("rtsp://10.77.0.20/s")
        );
        assert_eq!(shown_url("not a url"), None);
    }

    #[tokio::test]
    async fn refuses_without_connecting() {
        let error = check("https://10.77.0.20/", Some(("admin", "pw")), DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(error.code(), "not_rtsp");
    }

    #[test]
    fn check_is_send() {
        fn send<T: Send>(_: &T) {}
        send(&check("rtsp://127.0.0.1/", None, DEFAULT_TIMEOUT));
    }

    #[test]
    fn words() {
        assert_eq!(seconds(Duration::from_secs(5)), "5 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(hertz(8000), "8 kHz");
        assert_eq!(hertz(44_100), "44.1 kHz");
        assert_eq!(decimal(30_000.0 / 1001.0), "29.97");
        assert_eq!(
            RtspCheckError::NoAnswer {
                address: "10.77.0.20:554".to_owned(),
                timeout: DEFAULT_TIMEOUT
            }
            .to_string(),
            "no answer within 5 s from 10.77.0.20:554: check the address, and that the camera is on and connected"
        );
        assert_eq!(
            RtspCheckError::Status { status: 503 }.to_string(),
            "the camera answered 503 Service Unavailable: it may be serving as many clients as it can"
        );
        assert_eq!(
            RtspCheckError::Status { status: 499 }.to_string(),
            "the camera answered 499"
        );
        assert_eq!(codec_name("vnd.onvif.metadata.gzip"), "ONVIF metadata");
        assert_eq!(codec_name("x-weird\u{7}"), "X-WEIRD");
    }

    #[test]
    fn summaries() {
        let stream = |media: &str, codec: &str, details: Option<&str>| RtspStream {
            media: media.to_owned(),
            codec: codec.to_owned(),
            details: details.map(str::to_owned),
        };
        assert_eq!(
            summary(&[stream("video", "H.264", Some("320×240 at 15 fps"))]),
            "H.264 video 320×240 at 15 fps, no audio"
        );
        assert_eq!(
            summary(&[
                stream("video", "H.265", None),
                stream("audio", "G.711 A-law", Some("8 kHz mono")),
                stream("application", "ONVIF metadata", None),
            ]),
            "H.265 video, G.711 A-law audio 8 kHz mono, ONVIF metadata"
        );
        assert_eq!(summary(&[]), "no video, no audio");
    }
}
