//! `GET /api/cameras/{camera}/snapshot`: a still image from a `[[camera]]`,
//! fetched from the snapshot URI its last ONVIF discovery found (of the
//! profile with the largest picture), with the camera's own login: Digest or
//! Basic, as its 401 asks, answered by `http-auth` (the crate retina answers
//! the same cameras' RTSP challenges with). No password is sent before the
//! camera asks, and none is logged.
//!
//! Plain HTTP to the camera's own address only (checked at discovery and
//! again here), one deadline of 5 s for the whole exchange, 4 MiB at most,
//! and only JPEG or PNG passed on. A camera never discovered is not looked
//! up here: its device service URL (port, path) comes from WS-Discovery, so
//! the answer asks for a discovery instead of guessing one.

use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_auth::{PasswordClient, PasswordParams};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};

use super::discovery::{self, HttpClient};
use super::onvif::Profile;
use crate::config::network::CameraLogin;

/// For the whole exchange: the challenge, the answer with the login and
/// the image.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Snapshots are tens to hundreds of KiB, a 4K camera's a few MiB at most.
pub const MAX_IMAGE: usize = 4 << 20;

/// An image as the camera sent it.
#[derive(Debug)]
pub struct Snapshot {
    /// `image/jpeg` or `image/png`.
    pub content_type: &'static str,
    pub image: Bytes,
}

/// Why there is no image, in words an admin can act on.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no [[camera]] named {0:?}")]
    UnknownCamera(String),
    #[error(
        "no ONVIF discovery has found this camera yet: run a discovery first (POST /api/cameras/discover)"
    )]
    NotDiscovered,
    /// The last discovery's error for the camera, if it had one.
    #[error("{}", no_snapshot(.0.as_deref()))]
    NoSnapshot(Option<String>),
    #[error("the camera refused its login (user {0:?} in [[camera]])")]
    Refused(String),
    #[error("the camera asks for a login and its [[camera]] has none (username, password)")]
    NoLogin,
    #[error("the camera asks for a login camgate cannot give ({0})")]
    Challenge(String),
    #[error("cannot reach the camera at {address}: {why}")]
    Unreachable { address: String, why: String },
    #[error("the camera did not send its snapshot within {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error("the camera answered {0} for its snapshot")]
    Status(StatusCode),
    #[error("the camera's snapshot is {0}, not a JPEG or PNG image")]
    NotAnImage(String),
    #[error("the camera's snapshot is over {} MiB", MAX_IMAGE >> 20)]
    TooLarge,
}

fn no_snapshot(discovery_error: Option<&str>) -> String {
    match discovery_error {
        Some(why) => {
            format!("the camera offers no snapshot: the last discovery could not read its profiles ({why})")
        }
        None => {
            "the camera offers no snapshot (no ONVIF profile of it has a snapshot URI on its own address)"
                .to_owned()
        }
    }
}

impl SnapshotError {
    /// 404 for what a discovery or the config must change, 504 for a
    /// silent camera, 502 for the rest (the camera's doing).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownCamera(_) | Self::NotDiscovered | Self::NoSnapshot(_) => StatusCode::NOT_FOUND,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// The snapshot URI of the profile with the largest picture (width ×
/// height; none given counts as 0), the first on a tie: cameras mostly give
/// every profile the same URI, and where they differ the main stream's is
/// the sharp one.
pub(super) fn choose(profiles: &[Profile]) -> Option<&str> {
    let area = |p: &&Profile| u64::from(p.width.unwrap_or(0)) * u64::from(p.height.unwrap_or(0));
    profiles
        .iter()
        .filter(|p| p.snapshot_uri.is_some())
        .rev()
        .max_by_key(area)
        .and_then(|p| p.snapshot_uri.as_deref())
}

/// GETs `uri`, which must be plain HTTP on `camera`, logging in with
/// `login` if the camera asks.
pub(super) async fn fetch(
    uri: &str,
    camera: Ipv4Addr,
    login: Option<&CameraLogin>,
) -> Result<Snapshot, SnapshotError> {
    let target = uri
        .parse::<http::Uri>()
        .ok()
        .filter(|t| t.scheme_str() == Some("http") && t.host() == Some(camera.to_string().as_str()))
        .ok_or(SnapshotError::NoSnapshot(None))?;
    tokio::time::timeout(TIMEOUT, exchange(&discovery::client(), &target, login))
        .await
        .map_err(|_| SnapshotError::Timeout)?
}

async fn exchange(
    client: &HttpClient,
    target: &http::Uri,
    login: Option<&CameraLogin>,
) -> Result<Snapshot, SnapshotError> {
    let mut response = get(client, target, None).await?;
    // With the login once; again only if the camera says its nonce went
    // stale meanwhile.
    for attempt in 0..2 {
        if response.status() != StatusCode::UNAUTHORIZED {
            break;
        }
        let login = login.ok_or(SnapshotError::NoLogin)?;
        let mut challenge = challenge(response.headers(), attempt > 0, &login.username)?;
        if attempt > 0 && !matches!(&challenge, PasswordClient::Digest(digest) if digest.stale()) {
            return Err(SnapshotError::Refused(login.username.clone()));
        }
        let authorization = challenge
            .respond(&PasswordParams {
                username: &login.username,
                password: &login.password,
                uri: target
                    .path_and_query()
                    .map_or("/", http::uri::PathAndQuery::as_str),
                method: "GET",
                body: Some(&[]),
            })
            .map_err(SnapshotError::Challenge)?;
        let mut authorization = HeaderValue::from_str(&authorization)
            .map_err(|_| SnapshotError::Challenge("not ASCII".to_owned()))?;
        authorization.set_sensitive(true);
        response = get(client, target, Some(authorization)).await?;
    }
    if response.status() == StatusCode::UNAUTHORIZED {
        let username = login.map(|l| l.username.clone()).unwrap_or_default();
        return Err(SnapshotError::Refused(username));
    }
    if response.status() != StatusCode::OK {
        return Err(SnapshotError::Status(response.status()));
    }
    let content_type = image_type(response.headers())?;
    let announced = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > MAX_IMAGE as u64) {
        return Err(SnapshotError::TooLarge);
    }
    let image = Limited::new(response.into_body(), MAX_IMAGE)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                SnapshotError::TooLarge
            } else {
                unreachable(target, &*e)
            }
        })?
        .to_bytes();
    Ok(Snapshot { content_type, image })
}

/// The camera's challenge: Digest preferred over Basic when it offers both.
/// A 401 to the login without one is a refusal.
fn challenge(
    headers: &HeaderMap,
    after_login: bool,
    username: &str,
) -> Result<PasswordClient, SnapshotError> {
    let mut builder = PasswordClient::builder();
    let mut any = false;
    for value in headers.get_all(header::WWW_AUTHENTICATE) {
        if let Ok(value) = value.to_str() {
            builder = builder.challenges(value);
            any = true;
        }
    }
    match builder.build() {
        Ok(client) => Ok(client),
        Err(_) if !any && after_login => Err(SnapshotError::Refused(username.to_owned())),
        Err(_) if !any => Err(SnapshotError::Challenge("its 401 names no scheme".to_owned())),
        Err(why) => Err(SnapshotError::Challenge(why)),
    }
}

async fn get(
    client: &HttpClient,
    target: &http::Uri,
    authorization: Option<HeaderValue>,
) -> Result<http::Response<hyper::body::Incoming>, SnapshotError> {
    let mut request = http::Request::get(target.clone())
        .header(header::ACCEPT, "image/jpeg, image/png")
        .body(Full::new(Bytes::new()))
        .map_err(|e| SnapshotError::Challenge(e.to_string()))?;
    if let Some(authorization) = authorization {
        request.headers_mut().insert(header::AUTHORIZATION, authorization);
    }
    client.request(request).await.map_err(|e| unreachable(target, &e))
}

fn unreachable(target: &http::Uri, e: &dyn std::error::Error) -> SnapshotError {
    SnapshotError::Unreachable {
        address: target.authority().map_or_else(String::new, ToString::to_string),
        why: crate::net::error_chain(e),
    }
}

/// `image/jpeg` or `image/png` from the answer's `Content-Type` (parameters
/// and case aside; `image/jpg`, which some cameras send, is a JPEG): the
/// only types passed on to the browser.
fn image_type(headers: &HeaderMap) -> Result<&'static str, SnapshotError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(SnapshotError::NotAnImage(
            "sent without a Content-Type".to_owned(),
        ));
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "image/jpeg" | "image/jpg" => Ok("image/jpeg"),
        "image/png" => Ok("image/png"),
        _ => Err(SnapshotError::NotAnImage(
            text.chars().take(100).filter(|c| !c.is_control()).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(token: &str, size: Option<(u32, u32)>, snapshot: Option<&str>) -> Profile {
        Profile {
            token: token.to_owned(),
            name: None,
            encoding: None,
            width: size.map(|s| s.0),
            height: size.map(|s| s.1),
            stream_uri: None,
            snapshot_uri: snapshot.map(str::to_owned),
        }
    }

    #[test]
    fn the_largest_profile_with_a_snapshot_is_chosen() {
        let profiles = [
            profile("sub", Some((640, 360)), Some("http://c/sub.jpg")),
            profile("main", Some((1920, 1080)), Some("http://c/main.jpg")),
            profile("4k", Some((3840, 2160)), None),
            profile("unsized", None, Some("http://c/unsized.jpg")),
        ];
        assert_eq!(choose(&profiles), Some("http://c/main.jpg"));
        let tie = [
            profile("a", Some((640, 360)), Some("http://c/a.jpg")),
            profile("b", Some((640, 360)), Some("http://c/b.jpg")),
        ];
        assert_eq!(choose(&tie), Some("http://c/a.jpg"), "the first on a tie");
        assert_eq!(choose(&profiles[2..3]), None);
        assert_eq!(choose(&[]), None);
        assert_eq!(choose(&profiles[3..]), Some("http://c/unsized.jpg"));
    }

    #[test]
    fn only_jpeg_and_png_pass() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            image_type(&headers)
        };
        assert_eq!(with("image/jpeg").unwrap(), "image/jpeg");
        assert_eq!(with("Image/JPEG; charset=binary").unwrap(), "image/jpeg");
        assert_eq!(with("image/jpg").unwrap(), "image/jpeg");
        assert_eq!(with("image/png").unwrap(), "image/png");
        for refused in [
            "text/html",
            "image/svg+xml",
            "application/octet-stream",
            "image/jpeg2000",
            "",
        ] {
            let e = with(refused).unwrap_err();
            assert!(matches!(e, SnapshotError::NotAnImage(_)), "{refused}");
            assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        }
        assert_eq!(
            with("text/html; charset=utf-8").unwrap_err().to_string(),
            "the camera's snapshot is text/html; charset=utf-8, not a JPEG or PNG image"
        );
        assert_eq!(
            image_type(&HeaderMap::new()).unwrap_err().to_string(),
            "the camera's snapshot is sent without a Content-Type, not a JPEG or PNG image"
        );
    }

    #[test]
    fn challenges_are_digest_first_and_a_bare_401_after_the_login_is_a_refusal() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"cam\""),
        );
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Digest realm=\"cam\", nonce=\"abc\", qop=\"auth\""),
        );
        assert!(matches!(
            challenge(&headers, false, "admin"),
            Ok(PasswordClient::Digest(_))
        ));
        headers.remove(header::WWW_AUTHENTICATE);
        assert!(matches!(
            challenge(&headers, true, "admin"),
            Err(SnapshotError::Refused(user)) if user == "admin"
        ));
        assert!(matches!(
            challenge(&headers, false, "admin"),
            Err(SnapshotError::Challenge(_))
        ));
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Negotiate"));
        assert!(matches!(
            challenge(&headers, false, "admin"),
            Err(SnapshotError::Challenge(_))
        ));
    }

    /// A camera on 127.0.0.1 answering its connections in turn with
    /// `answers` (raw HTTP; `None`: read the request and stay silent); the
    /// request heads it got.
    async fn camera(answers: Vec<Option<Vec<u8>>>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/snap?ch=1", listener.local_addr().unwrap());
        let heads = tokio::spawn(async move {
            let mut heads = Vec::new();
            for answer in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8];
                    if stream.read(&mut byte).await.unwrap() == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                heads.push(String::from_utf8(head).unwrap());
                match answer {
                    Some(answer) => {
                        let _ = stream.write_all(&answer).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            }
            heads
        });
        (uri, heads)
    }

    fn answer(status: &str, headers: &str, body: &[u8]) -> Option<Vec<u8>> {
        let head = format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        Some([head.as_bytes(), body].concat())
    }

    fn login() -> CameraLogin {
        CameraLogin {
            username: "admin".to_owned(),
            password: "hunter2".to_owned(),
        }
    }

    const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

    #[tokio::test]
    async fn digest_is_answered_again_only_for_a_stale_nonce() {
        let digest = |nonce: &str, stale: bool| {
            format!(
                "WWW-Authenticate: Digest realm=\"cam\", qop=\"auth\", nonce=\"{nonce}\", stale={stale}\r\n"
            )
        };
        let (uri, heads) = camera(vec![
            answer("401 Unauthorized", &digest("n1", false), b""),
            answer("401 Unauthorized", &digest("n2", true), b""),
            answer("200 OK", "Content-Type: image/png\r\n", b"\x89PNG"),
        ])
        .await;
        let snapshot = fetch(&uri, LOCAL, Some(&login())).await.unwrap();
        assert_eq!(
            (snapshot.content_type, &snapshot.image[..]),
            ("image/png", &b"\x89PNG"[..])
        );
        let heads = heads.await.unwrap();
        assert!(
            heads[0].starts_with("GET /snap?ch=1 HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            !heads[0].to_ascii_lowercase().contains("authorization"),
            "no login before it is asked"
        );
        assert!(
            heads[1].contains("nonce=\"n1\"") && heads[1].contains("uri=\"/snap?ch=1\""),
            "{}",
            heads[1]
        );
        assert!(heads[2].contains("nonce=\"n2\""), "{}", heads[2]);
        assert!(heads.iter().all(|h| !h.contains("hunter2")));

        let (uri, _) = camera(vec![
            answer("401 Unauthorized", &digest("n1", false), b""),
            answer("401 Unauthorized", &digest("n2", false), b""),
        ])
        .await;
        let refused = fetch(&uri, LOCAL, Some(&login())).await.unwrap_err();
        assert!(
            matches!(refused, SnapshotError::Refused(ref user) if user == "admin"),
            "{refused}"
        );
        let (uri, _) = camera(vec![answer("401 Unauthorized", &digest("n1", false), b"")]).await;
        assert!(matches!(
            fetch(&uri, LOCAL, None).await,
            Err(SnapshotError::NoLogin)
        ));
    }

    #[tokio::test]
    async fn basic_is_sent_only_when_asked() {
        let (uri, heads) = camera(vec![
            answer(
                "401 Unauthorized",
                "WWW-Authenticate: Basic realm=\"cam\"\r\n",
                b"",
            ),
            answer("200 OK", "Content-Type: image/jpeg\r\n", b"\xff\xd8\xff\xd9"),
        ])
        .await;
        let snapshot = fetch(&uri, LOCAL, Some(&login())).await.unwrap();
        assert_eq!(snapshot.content_type, "image/jpeg");
        let heads = heads.await.unwrap();
        // admin:hunter2
        assert!(heads[1].contains("Basic YWRtaW46aHVudGVyMg=="), "{}", heads[1]);
    }

    #[tokio::test]
    async fn what_is_not_a_small_image_is_refused_in_words() {
        let (uri, _) = camera(vec![answer(
            "200 OK",
            "Content-Type: text/html\r\n",
            b"<h1>login</h1>",
        )])
        .await;
        let e = fetch(&uri, LOCAL, None).await.unwrap_err();
        assert!(matches!(e, SnapshotError::NotAnImage(_)), "{e}");
        let (uri, _) = camera(vec![answer("404 Not Found", "Content-Type: image/jpeg\r\n", b"")]).await;
        let e = fetch(&uri, LOCAL, None).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "the camera answered 404 Not Found for its snapshot"
        );
        // Announced too large, and too large without announcing it.
        let big = Some(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                MAX_IMAGE + 1
            )
            .into_bytes(),
        );
        let (uri, _) = camera(vec![big]).await;
        assert!(matches!(
            fetch(&uri, LOCAL, None).await,
            Err(SnapshotError::TooLarge)
        ));
        let endless = [
            &b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n"[..],
            &vec![0u8; MAX_IMAGE + 1],
        ]
        .concat();
        let (uri, _) = camera(vec![Some(endless)]).await;
        assert!(matches!(
            fetch(&uri, LOCAL, None).await,
            Err(SnapshotError::TooLarge)
        ));
        // Only the camera's own address.
        assert!(matches!(
            fetch(&uri, Ipv4Addr::new(10, 77, 0, 11), None).await,
            Err(SnapshotError::NoSnapshot(None))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_camera_times_out() {
        let (uri, _) = camera(vec![None]).await;
        let e = fetch(&uri, LOCAL, None).await.unwrap_err();
        assert!(matches!(e, SnapshotError::Timeout), "{e}");
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn errors_name_the_status_an_admin_acts_on() {
        assert_eq!(SnapshotError::NotDiscovered.status(), StatusCode::NOT_FOUND);
        assert_eq!(SnapshotError::NoSnapshot(None).status(), StatusCode::NOT_FOUND);
        assert_eq!(
            SnapshotError::Refused("admin".to_owned()).to_string(),
            "the camera refused its login (user \"admin\" in [[camera]])"
        );
        assert_eq!(
            SnapshotError::Refused(String::new()).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(SnapshotError::Timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(
            SnapshotError::NoSnapshot(Some("the camera refused the login".to_owned()))
                .to_string()
                .contains("could not read its profiles (the camera refused the login)")
        );
    }
}
