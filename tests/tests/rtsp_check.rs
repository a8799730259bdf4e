//! The wizard's RTSP URL test (`camgate::cameras::rtsp_check::check`)
//! against simulated cameras: gst-rtsp-server (`tests/peers/rtsp_camera.py`,
//! python3-gi) in a camera namespace, checked from camgate's side of a veth.
//!
//! ```text
//!  gw 10.77.0.1 ── cam 10.77.0.20: :554 /stream1 (Digest), :8554 /live (Basic, with audio),
//!                                  :10554 /open (no login), :9554 a listener that never answers
//! ```

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use camgate::cameras::rtsp_check::{RtspCheck, RtspCheckError, check};
use camgate_tests::netns::{Netns, Topology};
use camgate_tests::process::Peer;

const CAMERA: &str = "10.77.0.20";
const TIMEOUT: Duration = Duration::from_secs(5);

fn camera(netns: &Netns, log_dir: &Path, name: &str, args: &str) -> Peer {
    camgate_tests::rtsp_camera::start(netns, CAMERA, log_dir, name, args)
}

fn topology(tag: &str) -> Topology {
    Topology::builder(tag)
        .link(("gw", "10.77.0.1/24"), ("cam", &format!("{CAMERA}/24")))
        .build()
}

/// Runs one check from inside `netns` on a current-thread runtime, as
/// camgate would from its camera-side address.
fn check_from(
    netns: &Netns,
    url: &str,
    login: Option<(&str, &str)>,
    timeout: Duration,
) -> (Result<RtspCheck, RtspCheckError>, Duration) {
    netns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let start = Instant::now();
        let result = runtime.block_on(check(url, login, timeout));
        (result, start.elapsed())
    })
}

fn found(result: Result<RtspCheck, RtspCheckError>) -> RtspCheck {
    result.unwrap_or_else(|e| panic!("the check failed: {e}"))
}

fn failed(result: Result<RtspCheck, RtspCheckError>) -> RtspCheckError {
    match result {
        Ok(found) => panic!("the check passed: {found:?}"),
        Err(e) => e,
    }
}

#[test]
fn digest_camera_shows_its_video_and_refuses_wrong_logins() {
    let net = topology("rtspd");
    let dir = tempfile::tempdir().unwrap();
    let _camera = camera(
        net.ns("cam"),
        dir.path(),
        "camera-digest",
        "--port 554 --path /stream1 --auth digest --user admin --password s3cret --width 320 --height 240",
    );
    let gw = net.ns("gw");
    let url = format!("rtsp://{CAMERA}:554/stream1");

    let (result, took) = check_from(gw, &url, Some(("admin", "s3cret")), TIMEOUT);
    let report = found(result);
    eprintln!("right login: {report:?} in {took:?}");
    assert_eq!(report.url, url);
    assert_eq!(report.server.as_deref(), Some("GStreamer"));
    assert_eq!(report.streams.len(), 1, "{report:?}");
    let video = &report.streams[0];
    assert_eq!((video.media.as_str(), video.codec.as_str()), ("video", "H.264"));
    assert!(
        video.details.as_deref().is_some_and(|d| d.starts_with("320×240")),
        "{report:?}"
    );
    assert!(
        report.summary.starts_with("H.264 video 320×240") && report.summary.ends_with(", no audio"),
        "{}",
        report.summary
    );
    // The URL without a port means 554.
    let (result, _) = check_from(
        gw,
        &format!("rtsp://{CAMERA}/stream1"),
        Some(("admin", "s3cret")),
        TIMEOUT,
    );
    assert_eq!(found(result).streams[0].codec, "H.264");

    let (result, took) = check_from(gw, &url, Some(("admin", "wrong")), TIMEOUT);
    let error = failed(result);
    eprintln!("wrong password: {error} in {took:?}");
    assert_eq!(error, RtspCheckError::LoginRefused);
    assert!(error.to_string().contains("refused the login (401)"), "{error}");

    let (result, _) = check_from(gw, &url, Some(("nobody", "s3cret")), TIMEOUT);
    assert_eq!(failed(result), RtspCheckError::LoginRefused);

    let (result, _) = check_from(gw, &url, None, TIMEOUT);
    let error = failed(result);
    eprintln!("no login: {error}");
    assert_eq!(error, RtspCheckError::LoginRequired);
    assert!(error.to_string().contains("refused the login (401)"), "{error}");

    let (result, _) = check_from(
        gw,
        &format!("rtsp://{CAMERA}:554/stream2"),
        Some(("admin", "s3cret")),
        TIMEOUT,
    );
    let error = failed(result);
    eprintln!("wrong path: {error}");
    assert_eq!(error, RtspCheckError::NotFound);
    assert!(
        error
            .to_string()
            .starts_with("the camera answered 404 Not Found for this path"),
        "{error}"
    );

    let (result, took) = check_from(gw, &format!("rtsp://{CAMERA}:555/stream1"), None, TIMEOUT);
    let error = failed(result);
    eprintln!("closed port: {error} in {took:?}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("nothing listens on {CAMERA}:555")),
        "{error}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Credentials in the URL are refused before anything is sent.
    let (result, _) = check_from(
        gw,
        &format!("rtsp://admin:s3cret@{CAMERA}:554/stream1"),
        None,
        TIMEOUT,
    );
    let error = failed(result);
    assert_eq!(error, RtspCheckError::CredentialsInUrl);
    assert!(!error.to_string().contains("s3cret"));
}

#[test]
fn basic_camera_with_audio() {
    let net = topology("rtspb");
    let dir = tempfile::tempdir().unwrap();
    let _camera = camera(
        net.ns("cam"),
        dir.path(),
        "camera-basic",
        "--port 8554 --path /live --auth basic --user viewer --password pa55 --width 640 --height 360 --fps 10 --audio",
    );
    let gw = net.ns("gw");
    let url = format!("rtsp://{CAMERA}:8554/live");

    let (result, took) = check_from(gw, &url, Some(("viewer", "pa55")), TIMEOUT);
    let report = found(result);
    eprintln!("right login: {report:?} in {took:?}");
    let codecs: Vec<_> = report
        .streams
        .iter()
        .map(|s| (s.media.as_str(), s.codec.as_str()))
        .collect();
    assert_eq!(codecs, [("video", "H.264"), ("audio", "G.711 A-law")]);
    assert!(
        report.streams[0]
            .details
            .as_deref()
            .is_some_and(|d| d.starts_with("640×360")),
        "{report:?}"
    );
    assert_eq!(report.streams[1].details.as_deref(), Some("8 kHz mono"));
    assert!(
        report.summary.starts_with("H.264 video 640×360")
            && report.summary.ends_with(", G.711 A-law audio 8 kHz mono"),
        "{}",
        report.summary
    );

    let (result, _) = check_from(gw, &url, Some(("viewer", "wrong")), TIMEOUT);
    assert_eq!(failed(result), RtspCheckError::LoginRefused);
    let (result, _) = check_from(gw, &url, None, TIMEOUT);
    assert_eq!(failed(result), RtspCheckError::LoginRequired);
}

#[test]
fn open_camera_silent_ports_absent_hosts_and_other_urls() {
    let net = topology("rtspo");
    let dir = tempfile::tempdir().unwrap();
    let _camera = camera(
        net.ns("cam"),
        dir.path(),
        "camera-open",
        "--port 10554 --path /open",
    );
    let gw = net.ns("gw");
    // A port that accepts connections (the kernel's backlog) but never answers.
    let silent = net.ns("cam").run(|| TcpListener::bind((CAMERA, 9554))).unwrap();
    silent.set_nonblocking(true).unwrap();

    // No login needed: with or without one, the stream is described.
    let url = format!("rtsp://{CAMERA}:10554/open");
    let (result, _) = check_from(gw, &url, None, TIMEOUT);
    assert!(found(result).summary.starts_with("H.264 video 320×240"));
    let (result, _) = check_from(gw, &url, Some(("admin", "unused")), TIMEOUT);
    assert_eq!(found(result).streams[0].codec, "H.264");

    // Not RTSP URLs: refused without a connection.
    for url in [
        format!("http://{CAMERA}:9554/onvif/device_service"),
        format!("{CAMERA}:9554/stream1"),
        format!("rtsps://{CAMERA}:9554/stream1"),
        String::new(),
    ] {
        let (result, took) = check_from(gw, &url, None, TIMEOUT);
        let error = failed(result);
        eprintln!("{url:?}: {error}");
        assert_eq!(error.code(), "not_rtsp", "{url:?}: {error}");
        assert!(error.to_string().starts_with("not an RTSP URL: "), "{error}");
        assert!(took < Duration::from_millis(100), "{took:?}");
    }
    assert_eq!(
        silent.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "a non-RTSP URL made a connection"
    );

    let short = Duration::from_millis(1500);
    let (result, took) = check_from(gw, &format!("rtsp://{CAMERA}:9554/stream1"), None, short);
    let error = failed(result);
    eprintln!("silent port: {error} in {took:?}");
    assert_eq!(error.code(), "no_rtsp_answer", "{error}");
    assert!(
        error.to_string().starts_with(&format!(
            "{CAMERA}:9554 accepted the connection but sent no RTSP answer within 1.5 s"
        )),
        "{error}"
    );
    assert!(took >= short && took < short + Duration::from_secs(1), "{took:?}");

    // An address in the subnet where nobody is: ARP goes unanswered.
    let (result, took) = check_from(gw, "rtsp://10.77.0.99/stream1", None, Duration::from_secs(1));
    let error = failed(result);
    eprintln!("absent host: {error} in {took:?}");
    assert!(
        error
            .to_string()
            .starts_with("no answer within 1 s from 10.77.0.99:554"),
        "{error}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
}
