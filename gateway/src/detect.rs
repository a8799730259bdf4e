//! DVR detection and the connection test for the setup wizard's DVR step.
//!
//! The pure half, [`identify`], turns what a few HTTP GETs returned
//! ([`Observation`]s) into [`Detection`]s by the built-in profiles'
//! fingerprints (the `[[detect]]` entries of `gateway/profiles/*.toml`: a
//! port, a path and one sign, e.g. a page title or a realm). The I/O half,
//! [`detect`], makes those GETs: plain HTTP only (no built-in profile's
//! default is TLS), only the fingerprints' ports and paths (at most
//! [`MAX_PROBES`], all at once), each bounded by a timeout, at most
//! [`MAX_BODY`] bytes of body read, redirects never followed.
//!
//! [`test_connection`] is the wizard's "connection test": one GET on the
//! configured upstream, its status, `Server` header and time, or an error in
//! words a person can act on.
//!
//! The caller is an authenticated admin on the LAN; the bounds keep a
//! detection from being turned into a port scanner or a slow download.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ACCEPT, CONNECTION, CONTENT_TYPE, HOST, SERVER, SET_COOKIE, USER_AGENT, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use crate::proxy::profiles;

/// Body bytes read per probe (enough for any start page's `<title>`; MJPEG
/// streams never end).
pub const MAX_BODY: usize = 64 * 1024;
/// Requests per detection, whatever the profiles ask for.
pub const MAX_PROBES: usize = 20;
/// What detection calls a port that answers HTTP but matches nothing.
pub const GENERIC: &str = "generic";

/// One sign of a DVR: seen in the answer to `GET path` on `port`. Parsed
/// from a profile's `[[detect]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawFingerprint")]
pub struct Fingerprint {
    pub port: u16,
    /// Path and query, e.g. `/command.cgi?cmd=getStatus`.
    pub path: String,
    pub sign: Sign,
    /// Something other software could also show: counts less.
    pub weak: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sign {
    /// The `Server` header contains this (any case).
    Server(String),
    /// A `WWW-Authenticate` header contains this (any case), e.g. a realm.
    WwwAuthenticate(String),
    /// The page's `<title>` begins with these words (any case).
    Title(String),
    /// The body's first [`MAX_BODY`] bytes contain this, exactly.
    Body(String),
    /// A `Set-Cookie` with this cookie name.
    Cookie(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFingerprint {
    port: u16,
    path: String,
    server: Option<String>,
    www_authenticate: Option<String>,
    title: Option<String>,
    body: Option<String>,
    cookie: Option<String>,
    #[serde(default)]
    weak: bool,
}

impl TryFrom<RawFingerprint> for Fingerprint {
    type Error = String;

    fn try_from(raw: RawFingerprint) -> Result<Self, String> {
        let signs: Vec<Sign> = [
            raw.server.map(Sign::Server),
            raw.www_authenticate.map(Sign::WwwAuthenticate),
            raw.title.map(Sign::Title),
            raw.body.map(Sign::Body),
            raw.cookie.map(Sign::Cookie),
        ]
        .into_iter()
        .flatten()
        .collect();
        let Ok([sign]) = <[Sign; 1]>::try_from(signs) else {
            return Err(
                "give exactly one of `server`, `www_authenticate`, `title`, `body` or `cookie`".to_owned(),
            );
        };
        if sign.text().trim().is_empty() {
            return Err("an empty sign matches anything".to_owned());
        }
        if raw.port == 0 {
            return Err("port 0 cannot be probed".to_owned());
        }
        if !raw.path.starts_with('/') || raw.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "{:?} is not a request path (starts with /, no spaces)",
                raw.path
            ));
        }
        Ok(Self {
            port: raw.port,
            path: raw.path,
            sign,
            weak: raw.weak,
        })
    }
}

impl Sign {
    fn text(&self) -> &str {
        match self {
            Self::Server(s) | Self::WwwAuthenticate(s) | Self::Title(s) | Self::Body(s) | Self::Cookie(s) => {
                s
            }
        }
    }

    /// The sign in `observation`, in words; `None` if absent.
    fn seen_in(&self, observation: &Observation) -> Option<String> {
        let at = observation.place();
        match self {
            Self::Server(wanted) => {
                let server = observation.server.as_deref()?;
                contains_any_case(server, wanted)
                    .then(|| format!("{at}: the Server header says \"{}\"", shown(server)))
            }
            Self::WwwAuthenticate(wanted) => {
                let challenge = observation
                    .www_authenticate
                    .iter()
                    .find(|value| contains_any_case(value, wanted))?;
                Some(match realm(challenge) {
                    Some((scheme, realm)) => {
                        format!(
                            "{at}: asks for a {} login, realm \"{}\"",
                            shown(scheme),
                            shown(realm)
                        )
                    }
                    None => format!("{at}: asks for a login ({})", shown(challenge)),
                })
            }
            Self::Title(wanted) => {
                let title = title(&observation.body)?;
                title_begins_with(&title, wanted)
                    .then(|| format!("{at}: the page title is \"{}\"", shown(&title)))
            }
            // A JSON key's own quotes would only double the quotes shown.
            Self::Body(wanted) => contains_bytes(&observation.body, wanted.as_bytes()).then(|| {
                format!(
                    "{at}: the answer contains \"{}\"",
                    shown(wanted.trim_matches('"'))
                )
            }),
            Self::Cookie(wanted) => observation
                .cookies
                .iter()
                .any(|name| name == wanted)
                .then(|| format!("{at}: sets a cookie named \"{}\"", shown(wanted))),
        }
    }
}

/// What one `GET path` on `port` returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    pub port: u16,
    /// Path and query as requested.
    pub path: String,
    pub status: u16,
    pub server: Option<String>,
    pub www_authenticate: Vec<String>,
    pub content_type: Option<String>,
    /// Names of the cookies set (`Set-Cookie`), not their values.
    pub cookies: Vec<String>,
    /// At most [`MAX_BODY`] bytes.
    pub body: Vec<u8>,
}

impl Observation {
    /// From a response head and the body read so far.
    pub fn from_head(port: u16, path: &str, status: u16, headers: &HeaderMap, mut body: Vec<u8>) -> Self {
        let text = |value: &http::HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned();
        body.truncate(MAX_BODY);
        Self {
            port,
            path: path.to_owned(),
            status,
            server: headers.get(SERVER).map(text),
            www_authenticate: headers.get_all(WWW_AUTHENTICATE).iter().map(text).collect(),
            content_type: headers.get(CONTENT_TYPE).map(text),
            cookies: headers
                .get_all(SET_COOKIE)
                .iter()
                .filter_map(|value| {
                    let value = text(value);
                    let name = value.split_once('=')?.0.trim();
                    (!name.is_empty()).then(|| name.to_owned())
                })
                .collect(),
            body,
        }
    }

    fn place(&self) -> String {
        if self.path == "/" {
            format!("port {}", self.port)
        } else {
            format!("port {}, {}", self.port, self.path)
        }
    }
}

/// A DVR (or plain web server) found at an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// A built-in profile's name; [`GENERIC`] for an unrecognised web server.
    pub profile: &'static str,
    /// Where it answers: the port with the most evidence (for a tie, the
    /// one its profile lists first, the one to proxy to).
    pub port: u16,
    pub confidence: Confidence,
    /// Why, in plain words, strongest first.
    pub evidence: Vec<String>,
    #[serde(skip)]
    score: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// One weak sign, or a web server no fingerprint matched.
    Low,
    /// Several weak signs.
    Medium,
    /// At least one distinctive sign (a realm, title, cookie or API answer).
    High,
}

const STRONG: u32 = 3;
const WEAK: u32 = 1;

/// The profiles whose fingerprints `observations` show, best first, then a
/// [`GENERIC`] entry for each port that answered HTTP but matched nothing.
pub fn identify(observations: &[Observation]) -> Vec<Detection> {
    let mut detections = Vec::new();
    let mut recognised = Vec::new();
    for profile in profiles::all() {
        // (fingerprint index, port, weight, words)
        let mut seen: Vec<(usize, u16, u32, String)> = Vec::new();
        for (index, fingerprint) in profile.detect.iter().enumerate() {
            let words = observations
                .iter()
                .filter(|o| o.port == fingerprint.port && o.path == fingerprint.path)
                .find_map(|o| fingerprint.sign.seen_in(o));
            if let Some(words) = words {
                let weight = if fingerprint.weak { WEAK } else { STRONG };
                seen.push((index, fingerprint.port, weight, words));
            }
        }
        if seen.is_empty() {
            continue;
        }
        let score = seen.iter().map(|s| s.2).sum();
        let strong = seen.iter().filter(|s| s.2 == STRONG).count();
        let confidence = match (strong, seen.len()) {
            (1.., _) => Confidence::High,
            (0, 2..) => Confidence::Medium,
            _ => Confidence::Low,
        };
        let port_score = |port: u16| -> u32 { seen.iter().filter(|s| s.1 == port).map(|s| s.2).sum() };
        // The port to proxy to: the profile's own when it spoke for it
        // (motion's streams port also answers, but the GUI is the upstream);
        // else the one with the most evidence. `seen` is in the profile's
        // order and max_by_key keeps the last of equals: look from the end
        // to keep the first.
        let port = if port_score(profile.upstream_port) > 0 {
            profile.upstream_port
        } else {
            seen.iter()
                .rev()
                .max_by_key(|s| port_score(s.1))
                .map_or(0, |s| s.1)
        };
        recognised.extend(seen.iter().map(|s| s.1));
        seen.sort_by_key(|s| std::cmp::Reverse(s.2));
        detections.push(Detection {
            profile: profile.name,
            port,
            confidence,
            evidence: seen.into_iter().map(|s| s.3).collect(),
            score,
        });
    }
    // Stable: equal scores keep the profiles' order.
    detections.sort_by_key(|d| std::cmp::Reverse((d.score, d.confidence)));
    let mut unknown: Vec<&Observation> = Vec::new();
    for observation in observations {
        if !recognised.contains(&observation.port) && !unknown.iter().any(|o| o.port == observation.port) {
            unknown.push(observation);
        }
    }
    for observation in unknown {
        let port = observation.port;
        let mut evidence = vec![format!("answers HTTP on port {port}; not recognised")];
        if let Some(server) = &observation.server {
            evidence.push(format!(
                "port {port}: the Server header says \"{}\"",
                shown(server)
            ));
        }
        detections.push(Detection {
            profile: GENERIC,
            port,
            confidence: Confidence::Low,
            evidence,
            score: 0,
        });
    }
    detections
}

/// The `(port, path)` pairs [`detect`] requests: every fingerprint's, once,
/// in the profiles' order, at most [`MAX_PROBES`].
pub fn probes() -> Vec<(u16, &'static str)> {
    let mut probes: Vec<(u16, &'static str)> = Vec::new();
    for fingerprint in profiles::all().iter().flat_map(|p| &p.detect) {
        let probe = (fingerprint.port, fingerprint.path.as_str());
        if !probes.contains(&probe) {
            probes.push(probe);
        }
    }
    probes.truncate(MAX_PROBES);
    probes
}

/// Probes `address` over plain HTTP on the fingerprints' ports and paths,
/// all at once, each bounded by `per_probe` (connect, answer and body), and
/// identifies what answered. Never follows redirects.
pub async fn detect(address: IpAddr, per_probe: Duration) -> Vec<Detection> {
    let span = tracing::info_span!("detect", %address);
    async move {
        let probes = probes();
        let answers = futures_util::future::join_all(
            probes
                .iter()
                .map(|&(port, path)| probe(SocketAddr::new(address, port), path, per_probe)),
        )
        .await;
        let observations: Vec<Observation> = answers.into_iter().flatten().collect();
        let detections = identify(&observations);
        tracing::info!(
            probes = probes.len(),
            answered = observations.len(),
            best = detections
                .first()
                .map(|d| format!("{} on port {}", d.profile, d.port)),
            "detection done"
        );
        detections
    }
    .instrument(span)
    .await
}

/// One GET; `None` if nothing answered HTTP in time.
async fn probe(target: SocketAddr, path: &str, limit: Duration) -> Option<Observation> {
    let deadline = Instant::now() + limit;
    let exchange = tokio::time::timeout_at(deadline, get(target, &target.to_string(), path)).await;
    let (response, _connection) = match exchange {
        Ok(Ok(answer)) => answer,
        Ok(Err(failure)) => {
            tracing::debug!(port = target.port(), path, error = %failure, "no HTTP answer");
            return None;
        }
        Err(_) => {
            tracing::debug!(port = target.port(), path, "no answer in time");
            return None;
        }
    };
    let (head, body) = response.into_parts();
    let body = read_body(body, deadline).await;
    tracing::debug!(
        port = target.port(),
        path,
        status = head.status.as_u16(),
        bytes = body.len(),
        "answered"
    );
    Some(Observation::from_head(
        target.port(),
        path,
        head.status.as_u16(),
        &head.headers,
        body,
    ))
}

/// Up to [`MAX_BODY`] bytes, or what arrived by `deadline`.
async fn read_body(mut body: Incoming, deadline: Instant) -> Vec<u8> {
    let mut read = Vec::new();
    while read.len() < MAX_BODY {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(MAX_BODY - read.len());
                    read.extend_from_slice(&data[..take]);
                }
            }
            _ => break,
        }
    }
    read
}

/// Ends the HTTP connection's task when dropped (also mid-body: an MJPEG
/// stream would otherwise keep its socket open).
#[derive(Debug)]
struct Connection(tokio::task::JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
enum Failure {
    Connect(std::io::Error),
    Http(hyper::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Http(e) => write!(f, "HTTP: {e}"),
        }
    }
}

/// `GET path` over a connection of its own (`Connection: close`).
async fn get(
    target: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(Response<Incoming>, Connection), Failure> {
    let stream = TcpStream::connect(target).await.map_err(Failure::Connect)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(Failure::Http)?;
    let connection = Connection(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let request = Request::get(path)
        .header(HOST, host)
        .header(USER_AGENT, concat!("camgate/", env!("CARGO_PKG_VERSION")))
        .header(ACCEPT, "*/*")
        .header(CONNECTION, "close")
        .body(Empty::new())
        .expect("a GET of a checked path is a valid request");
    let response = sender.send_request(request).await.map_err(Failure::Http)?;
    Ok((response, connection))
}

/// The result of the wizard's connection test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionTest {
    /// The address that answered, e.g. `192.168.1.20:8090`.
    pub address: String,
    pub status: u16,
    pub server: Option<String>,
    /// From the start of the connection to the response head.
    pub millis: u64,
    /// E.g. `HTTP 401 Unauthorized from 192.168.1.20:8090 in 12 ms`.
    pub summary: String,
}

/// Why the connection test failed, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("{upstream} is not a usable upstream URL: {why}")]
    InvalidUpstream { upstream: String, why: &'static str },
    #[error(
        "{upstream} uses https; the connection test speaks plain HTTP only (open it in a browser instead)"
    )]
    Https { upstream: String },
    #[error("cannot find the host {host:?}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("cannot find the host {host:?}: it has no address")]
    NoAddress { host: String },
    #[error("nothing listens on {address} (connection refused)")]
    Refused { address: SocketAddr },
    #[error("{address} cannot be reached ({why}): check the address and that the DVR is switched on")]
    Unreachable { address: SocketAddr, why: &'static str },
    #[error("no answer within {}", in_words(*.after))]
    Timeout {
        address: Option<SocketAddr>,
        after: Duration,
    },
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{address} accepted the connection but did not answer HTTP ({detail})")]
    NotHttp { address: SocketAddr, detail: String },
}

/// GETs the upstream's path (`/` if none) over plain HTTP and reports the
/// status, `Server` header and time; bounded by `timeout` in all.
pub async fn test_connection(upstream: &Uri, timeout: Duration) -> Result<ConnectionTest, DetectError> {
    let span = tracing::info_span!("connection_test", %upstream);
    async move {
        let result = connection_test(upstream, timeout).await;
        match &result {
            Ok(test) => tracing::info!(
                status = test.status,
                millis = test.millis,
                "connection test passed"
            ),
            Err(e) => tracing::info!(error = %e, "connection test failed"),
        }
        result
    }
    .instrument(span)
    .await
}

async fn connection_test(upstream: &Uri, timeout: Duration) -> Result<ConnectionTest, DetectError> {
    let invalid = |why| DetectError::InvalidUpstream {
        upstream: upstream.to_string(),
        why,
    };
    match upstream.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(DetectError::Https {
                upstream: upstream.to_string(),
            });
        }
        _ => return Err(invalid("it does not start with http://")),
    }
    let host = upstream.host().ok_or_else(|| invalid("it names no host"))?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let port = upstream.port_u16().unwrap_or(80);
    let host_header = match upstream.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let path = upstream
        .path_and_query()
        .map(http::uri::PathAndQuery::as_str)
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");

    let started = Instant::now();
    let deadline = started + timeout;
    let timed_out = |address| DetectError::Timeout {
        address,
        after: timeout,
    };
    let address = match bare_host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => {
            let mut addresses = tokio::time::timeout_at(deadline, tokio::net::lookup_host((bare_host, port)))
                .await
                .map_err(|_| timed_out(None))?
                .map_err(|source| DetectError::Resolve {
                    host: bare_host.to_owned(),
                    source,
                })?;
            addresses.next().ok_or_else(|| DetectError::NoAddress {
                host: bare_host.to_owned(),
            })?
        }
    };
    let (response, _connection) = tokio::time::timeout_at(deadline, get(address, &host_header, path))
        .await
        .map_err(|_| timed_out(Some(address)))?
        .map_err(|failure| match failure {
            Failure::Connect(e) => connect_error(address, e),
            Failure::Http(e) => DetectError::NotHttp {
                address,
                detail: e.to_string(),
            },
        })?;
    let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let status = response.status();
    let server = response
        .headers()
        .get(SERVER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mut summary = format!(
        "HTTP {} {} from {address} in {millis} ms",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .replace("  from", " from");
    if let Some(server) = &server {
        summary.push_str(&format!(" (Server: {})", shown(server)));
    }
    Ok(ConnectionTest {
        address: address.to_string(),
        status: status.as_u16(),
        server,
        millis,
        summary,
    })
}

fn connect_error(address: SocketAddr, error: std::io::Error) -> DetectError {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => DetectError::Refused { address },
        ErrorKind::HostUnreachable => DetectError::Unreachable {
            address,
            why: "no route to host",
        },
        ErrorKind::NetworkUnreachable => DetectError::Unreachable {
            address,
            why: "network unreachable",
        },
        _ => DetectError::Connect {
            address,
            source: error,
        },
    }
}

/// `3 s`, `1500 ms`.
fn in_words(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{} s", millis / 1000)
    } else {
        format!("{millis} ms")
    }
}

/// A value from the network, fit to show: no control characters, at most
/// 80 characters.
fn shown(text: &str) -> String {
    const MAX: usize = 80;
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    if clean.chars().count() > MAX {
        format!("{}…", clean.chars().take(MAX).collect::<String>())
    } else {
        clean
    }
}

/// `Digest realm="Motion",qop=…` → `("Digest", "Motion")`.
fn realm(challenge: &str) -> Option<(&str, &str)> {
    let scheme = challenge.split_whitespace().next()?;
    let at = challenge.to_ascii_lowercase().find("realm=\"")? + "realm=\"".len();
    let length = challenge[at..].find('"')?;
    Some((scheme, &challenge[at..at + length]))
}

fn contains_any_case(haystack: &str, needle: &str) -> bool {
    haystack
        .to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|window| window == needle)
}

/// The text of the first `<title>`, entities for `&<>"'` decoded,
/// whitespace collapsed.
fn title(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let lower = text.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let raw = text[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    Some(raw.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// `wanted` begins `title` (any case) and does not end inside a word:
/// "Motion" fits "Motion" and "Motion - Cam 1", not "motionEye".
fn title_begins_with(title: &str, wanted: &str) -> bool {
    let (title, wanted) = (title.to_lowercase(), wanted.to_lowercase());
    let Some(rest) = title.strip_prefix(&wanted) else {
        return false;
    };
    let wanted_ends_in_word = wanted.chars().last().is_some_and(char::is_alphanumeric);
    !(wanted_ends_in_word && rest.chars().next().is_some_and(char::is_alphanumeric))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(port: u16, path: &str, status: u16, body: &str) -> Observation {
        Observation {
            port,
            path: path.to_owned(),
            status,
            body: body.as_bytes().to_vec(),
            ..Observation::default()
        }
    }

    fn html(title: &str) -> String {
        format!(
            "<!DOCTYPE html>\n<html><head>\n  <meta charset=\"utf-8\">\n  <title>{title}</title>\n</head><body></body></html>"
        )
    }

    fn best(observations: &[Observation]) -> (&'static str, u16, Confidence) {
        let detections = identify(observations);
        let first = detections.first().expect("a detection");
        (first.profile, first.port, first.confidence)
    }

    #[test]
    fn every_profile_but_generic_has_fingerprints_and_probes_stay_bounded() {
        for profile in profiles::all() {
            assert_eq!(
                profile.detect.is_empty(),
                profile.name == GENERIC,
                "{}: fingerprints",
                profile.name
            );
        }
        assert!(profiles::get(GENERIC).is_some());
        let probes = probes();
        let all: usize = profiles::all().iter().map(|p| p.detect.len()).sum();
        assert!(probes.len() <= MAX_PROBES);
        // Nothing cut off: every fingerprint can be checked.
        for fingerprint in profiles::all().iter().flat_map(|p| &p.detect) {
            assert!(probes.contains(&(fingerprint.port, fingerprint.path.as_str())));
        }
        assert!(probes.len() < all, "shared probes are asked once");
    }

    #[test]
    fn motion_by_its_realm_title_and_stream_port() {
        // As motion 4.5.1 answers (checked against the real program).
        let mut login = page(
            8080,
            "/",
            401,
            "<html><head><title>Access denied</title></head><body>Access denied</body></html>",
        );
        login.www_authenticate = vec![
            "Digest realm=\"Motion\",qop=\"auth\",nonce=\"7f58\",opaque=\"0151\",algorithm=md5".to_owned(),
        ];
        assert_eq!(
            best(std::slice::from_ref(&login)),
            ("motion", 8080, Confidence::High)
        );
        let detections = identify(std::slice::from_ref(&login));
        assert_eq!(
            detections[0].evidence,
            ["port 8080: asks for a Digest login, realm \"Motion\""]
        );

        let open = page(8080, "/", 200, &html("Motion"));
        let status = page(
            8081,
            "/status.json",
            200,
            "{\"camera_status\": [{\"id\": 0, \"name\": null}]}",
        );
        let detections = identify(&[status.clone(), open]);
        assert_eq!(detections[0].profile, "motion");
        assert_eq!(
            detections[0].port, 8080,
            "the profile's own port, when it answered"
        );
        assert_eq!(detections[0].evidence.len(), 2);
        // Its text interface (webcontrol_interface 1), as 4.5.1 answers it:
        // motion on its GUI port, which is no unrecognised server either.
        let text = page(8080, "/", 200, "Motion 4.5.1 Running [1] Camera \n");
        let detections = identify(&[text, status.clone()]);
        assert_eq!(detections.len(), 1, "{detections:?}");
        assert_eq!((detections[0].profile, detections[0].port), ("motion", 8080));
        // Only the stream port reachable: still motion, on that port.
        assert_eq!(best(&[status]), ("motion", 8081, Confidence::High));
    }

    #[test]
    fn motioneye_is_not_motion() {
        let mut observation = page(
            8765,
            "/",
            200,
            "<html><head><title>cam-box</title><link rel=\"shortcut icon\" href=\"static/img/motioneye-logo.svg\" /></head></html>",
        );
        observation.server = Some("TornadoServer/6.4".to_owned());
        let detections = identify(&[observation]);
        assert_eq!(detections.len(), 1);
        assert_eq!(detections[0].profile, "motioneye");
        assert_eq!(detections[0].confidence, Confidence::High);
        assert_eq!(detections[0].evidence.len(), 2);
        // A title "motionEye" is not the word "Motion".
        assert!(!title_begins_with("motionEye", "Motion"));
        assert!(title_begins_with("Motion - Cam 1", "Motion"));
        // Tornado alone is only a hint.
        let mut tornado = page(8765, "/", 200, &html("Some app"));
        tornado.server = Some("TornadoServer/6.4".to_owned());
        assert_eq!(best(&[tornado]), ("motioneye", 8765, Confidence::Low));
    }

    #[test]
    fn frigate_by_title_or_its_api() {
        let ui = page(8971, "/", 200, &html("Frigate"));
        let api = page(5000, "/api/", 200, "Frigate is running. Alive and healthy!");
        assert_eq!(
            best(std::slice::from_ref(&ui)),
            ("frigate", 8971, Confidence::High)
        );
        assert_eq!(
            best(std::slice::from_ref(&api)),
            ("frigate", 5000, Confidence::High)
        );
        // Both: the port to proxy to (8971, listed first) wins the tie.
        assert_eq!(best(&[api, ui]), ("frigate", 8971, Confidence::High));
    }

    #[test]
    fn go2rtc_zoneminder_agent_blueiris_shinobi_moonfire() {
        let mut go2rtc = page(1984, "/", 401, "Unauthorized\n");
        go2rtc.www_authenticate = vec!["Basic realm=\"go2rtc\"".to_owned()];
        assert_eq!(best(&[go2rtc]), ("go2rtc", 1984, Confidence::High));
        let go2rtc_ui = page(1984, "/", 200, &html("go2rtc"));
        let go2rtc_api = page(
            1984,
            "/api",
            200,
            "{\"host\":\"192.168.1.5:1984\",\"revision\":\"a1b2c3d\",\"version\":\"1.9.9\"}",
        );
        assert_eq!(
            best(std::slice::from_ref(&go2rtc_api)),
            ("go2rtc", 1984, Confidence::Low)
        );
        let both = identify(&[go2rtc_ui, go2rtc_api]);
        assert_eq!((both[0].profile, both[0].evidence.len()), ("go2rtc", 2));

        let zm_api = page(
            80,
            "/zm/api/host/getVersion.json",
            200,
            "{\"version\":\"1.36.33\",\"apiversion\":\"2.0\"}",
        );
        assert_eq!(best(&[zm_api]), ("zoneminder", 80, Confidence::High));
        let mut zm_ui = page(80, "/zm/", 200, &html("ZM - Console"));
        zm_ui.cookies = vec!["ZMSESSID".to_owned(), "zmSkin".to_owned()];
        let detections = identify(&[zm_ui]);
        assert_eq!(
            (detections[0].profile, detections[0].evidence.len()),
            ("zoneminder", 2)
        );

        let agent = page(
            8090,
            "/command.cgi?cmd=getStatus",
            200,
            "{\"armed\":false,\"devices\":2,\"name\":\"Agent\",\"remoteAccess\":false,\"unique\":\"x\",\"version\":\"6.1.2.0\"}",
        );
        assert_eq!(best(&[agent]), ("agentdvr", 8090, Confidence::High));

        let blue_iris = page(
            81,
            "/ui3.htm",
            200,
            "<title>Home UI3</title><script>var ui_version = \"268\";\n\t\tvar bi_version = \"5.9.1.0\";</script>",
        );
        assert_eq!(best(&[blue_iris]), ("blueiris", 81, Confidence::High));

        let shinobi = page(8080, "/", 200, &html("Shinobi"));
        assert_eq!(best(&[shinobi]), ("shinobi", 8080, Confidence::High));
        let moonfire = page(8080, "/", 200, &html("Moonfire NVR"));
        assert_eq!(best(&[moonfire]), ("moonfire", 8080, Confidence::High));
    }

    #[test]
    fn unrecognised_web_servers_are_generic() {
        // nginx's default page on Frigate's port: not Frigate.
        let mut nginx = page(8971, "/", 200, &html("Welcome to nginx!"));
        nginx.server = Some("nginx/1.22.1".to_owned());
        // A page that merely mentions DVR names is none of them.
        let blog = page(
            8080,
            "/",
            200,
            &html("My notes on Frigate, Motion and Shinobi: Frigate is running fine"),
        );
        let mut blog_motion_port = blog.clone();
        blog_motion_port.port = 8081;
        blog_motion_port.path = "/status.json".to_owned();
        let detections = identify(&[nginx, blog, blog_motion_port]);
        let found: Vec<(&str, u16)> = detections.iter().map(|d| (d.profile, d.port)).collect();
        assert_eq!(found, [(GENERIC, 8971), (GENERIC, 8080), (GENERIC, 8081)]);
        assert_eq!(
            detections[0].evidence[0],
            "answers HTTP on port 8971; not recognised"
        );
        assert_eq!(
            detections[0].evidence[1],
            "port 8971: the Server header says \"nginx/1.22.1\""
        );
        assert!(detections.iter().all(|d| d.confidence == Confidence::Low));
        // Frigate's text on a path Frigate never serves it from proves nothing.
        let elsewhere = page(8971, "/api/", 200, "Frigate is running. Alive and healthy!");
        assert_eq!(best(&[elsewhere]), (GENERIC, 8971, Confidence::Low));
        assert!(identify(&[]).is_empty());
    }

    #[test]
    fn a_recognised_port_yields_no_generic_entry_and_best_comes_first() {
        let motion = page(8080, "/", 200, &html("Motion"));
        let other = page(8971, "/", 404, "not found");
        let mut go2rtc = page(1984, "/", 200, &html("go2rtc"));
        go2rtc.www_authenticate = vec!["Basic realm=\"go2rtc\"".to_owned()];
        let detections = identify(&[other, motion, go2rtc]);
        let found: Vec<&str> = detections.iter().map(|d| d.profile).collect();
        assert_eq!(found, ["go2rtc", "motion", GENERIC]);
        let json = serde_json::to_value(&detections[1]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "profile": "motion",
                "port": 8080,
                "confidence": "high",
                "evidence": ["port 8080: the page title is \"Motion\""],
            })
        );
    }

    #[test]
    fn observations_keep_cookie_names_and_clean_values() {
        let mut headers = HeaderMap::new();
        headers.append(SET_COOKIE, "ZMSESSID=abc; path=/".parse().unwrap());
        headers.append(SET_COOKIE, "zmSkin=classic".parse().unwrap());
        headers.append(SERVER, "Apache/2.4.62 (Debian)".parse().unwrap());
        let observation = Observation::from_head(80, "/zm/", 200, &headers, vec![b'x'; MAX_BODY + 10]);
        assert_eq!(observation.cookies, ["ZMSESSID", "zmSkin"]);
        assert_eq!(observation.body.len(), MAX_BODY);
        assert_eq!(shown("a\u{1b}[31mb\r\n"), "a[31mb");
        assert_eq!(shown(&"x".repeat(100)).chars().count(), 81);
        assert_eq!(
            title(b"<HTML><TITLE>\n  Tom &amp; Jerry\n</TITLE>").as_deref(),
            Some("Tom & Jerry")
        );
        assert_eq!(title(b"<title>never closed"), None);
    }

    #[test]
    fn fingerprints_need_exactly_one_sign_and_a_path() {
        let parse = |text: &str| toml::from_str::<Fingerprint>(text).map_err(|e| e.to_string());
        assert!(parse("port = 80\npath = \"/\"\ntitle = \"X\"").is_ok());
        for bad in [
            "port = 80\npath = \"/\"",
            "port = 80\npath = \"/\"\ntitle = \"X\"\nbody = \"Y\"",
            "port = 80\npath = \"x\"\ntitle = \"X\"",
            "port = 80\npath = \"/a b\"\ntitle = \"X\"",
            "port = 0\npath = \"/\"\ntitle = \"X\"",
            "port = 80\npath = \"/\"\ntitle = \" \"",
            "port = 80\npath = \"/\"\nheader = \"X\"",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_read_as_advice() {
        let address: SocketAddr = "192.168.1.20:8090".parse().unwrap();
        assert_eq!(
            DetectError::Refused { address }.to_string(),
            "nothing listens on 192.168.1.20:8090 (connection refused)"
        );
        assert_eq!(
            DetectError::Timeout {
                address: Some(address),
                after: Duration::from_secs(3)
            }
            .to_string(),
            "no answer within 3 s"
        );
        assert_eq!(in_words(Duration::from_millis(1500)), "1500 ms");
    }

    #[tokio::test]
    async fn connection_test_refuses_what_it_cannot_test() {
        let test = |uri: &str| {
            let uri: Uri = uri.parse().unwrap();
            async move { test_connection(&uri, Duration::from_secs(1)).await }
        };
        assert!(matches!(
            test("https://192.0.2.1/").await,
            Err(DetectError::Https { .. })
        ));
        assert!(matches!(
            test("/relative").await,
            Err(DetectError::InvalidUpstream { .. })
        ));
    }

    #[tokio::test]
    async fn probes_and_tests_a_local_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let n = stream.read(&mut request).await.unwrap();
                assert!(request[..n].starts_with(b"GET /zm/ HTTP/1.1\r\n"));
                // A redirect (not followed) and an endless body (capped).
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 302 Found\r\nServer: Apache\r\nLocation: /zm/index.php\r\nSet-Cookie: ZMSESSID=1\r\n\r\n<title>ZM - Login</title>",
                    )
                    .await;
                let filler = vec![b'a'; 16 * 1024];
                while stream.write_all(&filler).await.is_ok() {}
            }
        });
        let (response, connection) = get(address, &address.to_string(), "/zm/").await.unwrap();
        let (head, body) = response.into_parts();
        let body = read_body(body, Instant::now() + Duration::from_secs(5)).await;
        drop(connection);
        assert_eq!(head.status, 302);
        assert_eq!(body.len(), MAX_BODY);
        let observation = Observation::from_head(80, "/zm/", 302, &head.headers, body);
        assert_eq!(best(&[observation]).0, "zoneminder");

        let uri: Uri = format!("http://{address}/zm/").parse().unwrap();
        let test = test_connection(&uri, Duration::from_secs(5)).await.unwrap();
        assert_eq!((test.status, test.server.as_deref()), (302, Some("Apache")));
        assert!(
            test.summary
                .starts_with(&format!("HTTP 302 Found from {address} in ")),
            "{}",
            test.summary
        );
        server.abort();

        // A port nobody listens on.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_address = closed.local_addr().unwrap();
        drop(closed);
        let uri: Uri = format!("http://{closed_address}/").parse().unwrap();
        let error = test_connection(&uri, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("nothing listens on {closed_address} (connection refused)")
        );
    }
}
