//! The dashboard's live view end to end: Debian's headless Chromium, driven
//! by playwright-core (`tests/browser/live.js`) from the LAN, signs in to a
//! camgate in appliance mode and watches a camera stream over
//! `GET /api/streams/{camera}/{stream}/live` (a WebSocket of fragmented MP4
//! fed to Media Source Extensions); a stream the browser cannot decode is
//! refused in words; a page of another site on camgate's host, whose
//! handshake carries the admin's cookie, is refused for its `Origin`. Then
//! raw handshakes from the LAN check who may open the socket (the admin only,
//! and only with camgate's own `Origin`), the messages (header, init segment,
//! media segments, pong), and the close with a reason when the camera does
//! not start. Screenshots: `tests/output/live/`.
//!
//! ```text
//!  lan switch ── camgate uplink 192.168.77.2 (admin :8080, RTSP :8554; fake-dvr :9999: another site)
//!             ├── dvr   192.168.77.50 (the browser)
//!             └── home  192.168.77.254
//!  camgate cameras NIC 10.77.0.1 ── cam 10.77.0.11: :554 /stream1 (H.264 640×360 + G.711, Digest),
//!                                                   :8554 /sub (H.265 + AAC, Digest),
//!                                                   :9554 nothing (the `gone` stream)
//! ```

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use camgate_tests::camera_lab::{self, ADMIN_PASSWORD, CAMERA, topology};
use camgate_tests::dvr::FakeDvr;
use camgate_tests::lab::basic;
use camgate_tests::netns::Netns;
use camgate_tests::process::require_binary;
use camgate_tests::rtsp_camera;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

const ADMIN: &str = "192.168.77.2:8080";
/// Seconds the browser watches: long enough for the page to trim its buffer
/// (it keeps 10 s behind the playing position, trimming past 20 s).
const WATCH_SECS: u32 = 30;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// `main` (H.264 + G.711 on the camera's 554), `sub` (H.265 + AAC on 8554)
/// and `gone` (nothing listens); a camera must start within 5 s.
fn config(state: &Path, cam: &Netns) -> String {
    camera_lab::config(
        state,
        cam,
        &format!(
            "main = \"/stream1\", sub = \"rtsp://{CAMERA}:8554/sub\", gone = \"rtsp://{CAMERA}:9554/gone\""
        ),
        "open_timeout = \"5s\"\n",
    )
}

/// Runs `tests/browser/live.js` in `lan`; its JSON result.
fn browser(lan: &Netns, dir: &Path) -> serde_json::Value {
    let node = require_binary("node", "nodejs");
    let browser_dir = repo().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `npm ci` in tests/browser (tests/run.sh does)"
    );
    let shots = repo().join("tests/output/live");
    let _ = std::fs::remove_dir_all(&shots);
    let output = lan
        .command("timeout")
        .arg("300")
        .arg(node)
        .arg(browser_dir.join("live.js"))
        .current_dir(&browser_dir)
        .env("CAMGATE_URL", format!("http://{ADMIN}/"))
        .env("ADMIN_USER", "root")
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("STREAM", "porch/main")
        .env("UNPLAYABLE", "porch/sub")
        // Another origin of camgate's own host: same site, so the browser
        // sends the admin's cookie along.
        .env("FOREIGN_URL", "http://192.168.77.2:9999/")
        .env("WATCH_SECS", WATCH_SECS.to_string())
        .env("SHOTS", &shots)
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .env("HOME", dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "live.js failed ({}):\n{}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("live.js prints its result")
}

/// A WebSocket handshake to the admin listener from `ns`, with extra
/// headers: the socket, or the refusal's status and body.
fn handshake(
    ns: &Netns,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<WebSocket<TcpStream>, (u16, String)> {
    let mut request = format!("ws://{ADMIN}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let stream = ns.run(|| TcpStream::connect(ADMIN).unwrap());
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    match tungstenite::client(request, stream) {
        Ok((socket, response)) => {
            assert_eq!(response.status(), 101);
            Ok(socket)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("handshake to {path}: {e}"),
    }
}

fn refused(ns: &Netns, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    match handshake(ns, path, headers) {
        Ok(_) => panic!("{path} opened with {headers:?}"),
        Err(refusal) => refusal,
    }
}

/// The next data message (control frames skipped).
fn next_data(socket: &mut WebSocket<TcpStream>) -> Message {
    loop {
        let message = socket.read().unwrap();
        if matches!(message, Message::Text(_) | Message::Binary(_) | Message::Close(_)) {
            return message;
        }
    }
}

fn box_type(segment: &[u8]) -> &[u8] {
    &segment[4..8]
}

#[test]
fn the_admin_watches_a_camera_live_in_a_browser_and_nobody_else_can() {
    require_binary("chromium", "chromium");
    let net = topology("live");
    let (gw, cam, dvr) = (net.ns("gw"), net.ns("cam"), net.ns("dvr"));
    let dir = tempfile::tempdir().unwrap();
    let _main_camera = rtsp_camera::start(
        cam,
        CAMERA,
        dir.path(),
        "camera-main",
        "--port 554 --path /stream1 --auth digest --user admin --password s3cret --width 640 --height 360 --fps 15 --audio pcma",
    );
    let _sub_camera = rtsp_camera::start(
        cam,
        CAMERA,
        dir.path(),
        "camera-sub",
        "--port 8554 --path /sub --auth digest --user admin --password s3cret --video h265 --width 320 --height 240 --fps 10 --audio aac",
    );
    let mut camgate = camera_lab::start(gw, config(&dir.path().join("state"), cam));

    // Another site on camgate's host (a DVR's pages, or anything else
    // there): another web server, on another port.
    let _other_site = FakeDvr::start(gw, &["--listen", "192.168.77.2:9999"], dir.path());

    let result = browser(dvr, dir.path());
    let samples = result["samples"].as_array().unwrap();
    let sample = |i: usize, key: &str| samples[i][key].as_f64().unwrap_or_default();
    let last = samples.len() - 1;
    let advanced = sample(last, "current_time") - sample(0, "current_time");
    let watched = (sample(last, "at_ms") - sample(0, "at_ms")) / 1000.0;
    eprintln!(
        "first frame {} ms after the click; currentTime advanced {advanced:.2} s in {watched:.2} s; last sample {:#}",
        result["first_frame_ms"], samples[last]
    );
    assert!(advanced >= 2.0, "the video barely played: {samples:#?}");
    assert!(
        advanced >= watched * 0.5,
        "the video stalled: {advanced:.2} s in {watched:.2} s: {samples:#?}"
    );
    assert!(result["first_frame_ms"].as_u64().unwrap() < 15_000, "{result:#}");
    assert_eq!(
        (samples[last]["width"].as_u64(), samples[last]["height"].as_u64()),
        (Some(640), Some(360)),
        "the camera's size"
    );
    // Near the newest frame, and the buffer trimmed behind.
    let (start, end) = (sample(last, "buffered_start"), sample(last, "buffered_end"));
    assert!(
        end - sample(last, "current_time") < 3.0,
        "fell behind the live edge: {:#}",
        samples[last]
    );
    assert!(
        start > 0.0 && end - start < 25.0,
        "the buffer was not trimmed: {:#}",
        samples[last]
    );
    assert!(
        samples[last]["status"]
            .as_str()
            .unwrap()
            .starts_with("Playing H.264 640×360"),
        "{:#}",
        samples[last]
    );
    assert_eq!(result["restream_url"], "rtsp://192.168.77.2:8554/porch/main");
    assert!(
        result["hint"]
            .as_str()
            .unwrap()
            .contains("token made for the site"),
        "{result:#}"
    );
    assert!(result["phone_width"].as_u64().unwrap() <= 360, "{result:#}");
    let watching = result["streams_while_watching"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == "/porch/main")
        .unwrap();
    assert_eq!(watching["readers"], 1, "{watching:#}");
    assert_eq!(watching["state"], "playing", "{watching:#}");

    // H.265: said in words where the browser cannot decode it.
    let unplayable = result["unplayable_status"].as_str().unwrap();
    eprintln!(
        "H.265 in this Chromium: supported {}; the page said: {unplayable}",
        result["unplayable_supported"]
    );
    if result["unplayable_supported"] == false {
        assert!(
            unplayable.starts_with(
                "This browser cannot play this camera's H.265 320×240 video (video/mp4; codecs=\"hvc1."
            ),
            "{unplayable}"
        );
    } else {
        assert!(unplayable.starts_with("Playing H.265"), "{unplayable}");
    }
    assert_eq!(result["stopped_hidden"], true);

    // A page on another port of the same host sent the admin's cookie with
    // its handshake, and was refused for its Origin.
    assert!(
        result["foreign_origin"].as_str().unwrap().starts_with("closed"),
        "{result:#}"
    );
    assert!(
        camgate
            .stderr()
            .contains("live view asked from another site's page: refused"),
        "the foreign page's handshake did not reach the Origin check: {result:#}"
    );

    // Raw handshakes: only the admin, only with camgate's own Origin.
    let cookie = format!("camgate-admin={}", result["admin_cookie"].as_str().unwrap());
    let admin = basic("root", ADMIN_PASSWORD);
    let admin = admin.trim_start_matches("Authorization: ").trim_end();
    let viewer = basic("alice", "correct horse");
    let viewer = viewer.trim_start_matches("Authorization: ").trim_end();
    let own = format!("http://{ADMIN}");
    let path = "/api/streams/porch/main/live";
    for (who, headers, expected) in [
        ("nobody", vec![("Origin", own.as_str())], 401),
        (
            "a viewer",
            vec![("Authorization", viewer), ("Origin", own.as_str())],
            403,
        ),
        (
            "the admin's cookie from another site",
            vec![("Cookie", cookie.as_str()), ("Origin", "http://evil.example")],
            403,
        ),
        (
            "the admin's cookie from another port",
            vec![
                ("Cookie", cookie.as_str()),
                ("Origin", "http://192.168.77.2:9999"),
            ],
            403,
        ),
        (
            "the admin's cookie, a cross-site fetch",
            vec![("Cookie", cookie.as_str()), ("Sec-Fetch-Site", "cross-site")],
            403,
        ),
        (
            "the admin's password from another site",
            vec![("Authorization", admin), ("Origin", "http://evil.example")],
            403,
        ),
    ] {
        let (status, body) = refused(dvr, path, &headers);
        assert_eq!(status, expected, "{who}: {body}");
    }
    let (status, body) = refused(dvr, "/api/streams/porch/side/live", &[("Authorization", admin)]);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no stream /porch/side"), "{body}");
    let plain = camgate_tests::http::request(
        dvr,
        "GET",
        &format!("http://{ADMIN}{path}"),
        &[("Authorization", admin)],
    )
    .unwrap();
    assert_eq!(plain.status, 400, "not a WebSocket handshake: {}", plain.body);

    // The admin's session with camgate's Origin: header, init, segments;
    // pings answered.
    let opened = Instant::now();
    let mut socket = handshake(dvr, path, &[("Cookie", &cookie), ("Origin", &own)]).unwrap();
    let Message::Text(header) = next_data(&mut socket) else {
        panic!("no header first")
    };
    let header: serde_json::Value = serde_json::from_str(&header).unwrap();
    assert!(
        header["mime"]
            .as_str()
            .unwrap()
            .starts_with("video/mp4; codecs=\"avc1."),
        "G.711 is left out: {header}"
    );
    assert_eq!(
        (&header["codec"], &header["width"], &header["height"]),
        (&"H.264".into(), &640.into(), &360.into())
    );
    let Message::Binary(init) = next_data(&mut socket) else {
        panic!("no init segment")
    };
    assert_eq!(box_type(&init), b"ftyp");
    let mut segments = 0;
    let mut first_segment = None;
    let counting = Instant::now();
    while counting.elapsed() < Duration::from_secs(3) {
        let Message::Binary(segment) = next_data(&mut socket) else {
            panic!("only media segments after the init segment")
        };
        assert_eq!(box_type(&segment), b"moof");
        first_segment.get_or_insert_with(|| opened.elapsed());
        segments += 1;
    }
    eprintln!(
        "raw socket: first media segment {:?} after the handshake began, {segments} segments in 3 s",
        first_segment.unwrap()
    );
    assert!(segments >= 30, "15 frames/s: {segments} segments in 3 s");
    socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    let answered = Instant::now();
    loop {
        match socket.read().unwrap() {
            Message::Pong(payload) if &payload[..] == b"are you there" => break,
            _ => assert!(answered.elapsed() < Duration::from_secs(5), "no pong"),
        }
    }
    socket.close(None).unwrap();

    // A camera that never answers: closed after open_timeout, in words.
    let started = Instant::now();
    let mut socket = handshake(dvr, "/api/streams/porch/gone/live", &[("Authorization", admin)]).unwrap();
    let Message::Text(error) = next_data(&mut socket) else {
        panic!("no error message")
    };
    let error: serde_json::Value = serde_json::from_str(&error).unwrap();
    let Message::Close(Some(close)) = next_data(&mut socket) else {
        panic!("no close frame")
    };
    eprintln!("gone: {error} then {close:?} after {:?}", started.elapsed());
    assert_eq!(u16::from(close.code), 1011);
    assert!(
        close
            .reason
            .starts_with("the camera did not start streaming within 5 s"),
        "{close:?}"
    );
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .starts_with(close.reason.as_str()),
        "the message has the whole reason: {error}"
    );
    assert!(started.elapsed() >= Duration::from_secs(5));

    camgate.signal(nix::sys::signal::Signal::SIGTERM);
    camgate.wait_exit(Duration::from_secs(20));
}
