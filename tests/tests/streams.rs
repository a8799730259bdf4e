//! The restream: camgate pulls each camera stream once and re-serves it
//! over RTSP to the LAN, with real cameras (gst-rtsp-server,
//! `tests/peers/rtsp_camera.py`) and real readers (ffprobe, ffmpeg).
//!
//! ```text
//!  lan switch ── camgate uplink 192.168.77.2 (RTSP :8554, admin :8080)
//!             ├── dvr   192.168.77.50 (the readers)
//!  home 192.168.77.254 ── wan 203.0.113.2 (routes to camgate via home)
//!  camgate cameras NIC 10.77.0.1 ── cam 10.77.0.11: :554 /stream1 (H.264 + G.711, Digest),
//!                                                   :8554 /sub (H.265 + AAC, Digest)
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use camgate_tests::camera_lab::{
    self, CAMERA, RESTREAM, start as start_camgate, stream_token, streams, topology,
};
use camgate_tests::netns::Netns;
use camgate_tests::process::{Peer, require_binary, wait_until};
use camgate_tests::rtsp_camera;

/// Both of `porch`'s streams: `/stream1` on its port 554 and `/sub` on 8554.
fn config(state: &Path, cam: &Netns, extra: &str) -> String {
    camera_lab::config(
        state,
        cam,
        &format!("main = \"/stream1\", sub = \"rtsp://{CAMERA}:8554/sub\""),
        extra,
    )
}

fn stream<'a>(all: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    all.as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == path)
        .unwrap_or_else(|| panic!("no {path} in {all}"))
}

/// ffprobe reading `seconds` of `url`: per stream, its codec, size and
/// packets read.
fn probe(ns: &Netns, dir: &Path, name: &str, url: &str, seconds: u32) -> Peer {
    let mut command = ns.command(require_binary("ffprobe", "ffmpeg"));
    command.args([
        "-v",
        "error",
        "-rtsp_transport",
        "tcp",
        "-count_packets",
        "-read_intervals",
        &format!("%+{seconds}"),
        "-show_entries",
        "stream=codec_name,codec_type,width,height,sample_rate,nb_read_packets",
        "-of",
        "json",
        url,
    ]);
    Peer::spawn(name, command, dir)
}

fn probed(mut peer: Peer, deadline: Duration) -> Vec<serde_json::Value> {
    let status = peer.wait_exit(deadline);
    assert!(status.success(), "ffprobe failed: {}", peer.stderr());
    let out: serde_json::Value = serde_json::from_str(&peer.stdout()).unwrap();
    out["streams"].as_array().unwrap().clone()
}

fn packets(stream: &serde_json::Value) -> u64 {
    stream["nb_read_packets"].as_str().unwrap().parse().unwrap()
}

fn url(user: &str, password: &str, path: &str) -> String {
    let encode =
        |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    format!("rtsp://{}:{}@{RESTREAM}{path}", encode(user), encode(password))
}

#[test]
fn ten_readers_share_one_camera_session_with_the_right_codecs() {
    let net = topology("strm");
    let (gw, cam, dvr, wan) = (net.ns("gw"), net.ns("cam"), net.ns("dvr"), net.ns("wan"));
    let dir = tempfile::tempdir().unwrap();
    let main_camera = rtsp_camera::start(
        cam,
        CAMERA,
        dir.path(),
        "camera-main",
        "--port 554 --path /stream1 --auth digest --user admin --password s3cret --width 640 --height 360 --fps 15 --audio pcma",
    );
    let sub_camera = rtsp_camera::start(
        cam,
        CAMERA,
        dir.path(),
        "camera-sub",
        "--port 8554 --path /sub --auth digest --user admin --password s3cret --video h265 --width 320 --height 240 --fps 10 --audio aac",
    );
    let (token_lines, token) = stream_token(dir.path(), "nvr", "/porch/main");
    let mut camgate = start_camgate(gw, config(&dir.path().join("state"), cam, &token_lines));

    let before = streams(gw);
    let main = stream(&before, "/porch/main");
    assert_eq!(main["state"], "idle", "on demand: nobody reads yet: {main}");
    assert_eq!(rtsp_camera::connections_total(&main_camera), 0);

    // Ten DVR readers at once, five with alice's password, five with the
    // token.
    let started = Instant::now();
    let readers: Vec<Peer> = (0..10)
        .map(|i| {
            let url = if i % 2 == 0 {
                url("alice", "correct horse", "/porch/main")
            } else {
                url("nvr", &token, "/porch/main")
            };
            probe(dvr, dir.path(), &format!("reader-{i}"), &url, 4)
        })
        .collect();
    for (i, reader) in readers.into_iter().enumerate() {
        let streams = probed(reader, Duration::from_secs(60));
        eprintln!("reader {i}: {streams:?}");
        assert_eq!(streams.len(), 2, "{streams:?}");
        let (video, audio) = (&streams[0], &streams[1]);
        assert_eq!(
            (
                video["codec_name"].as_str(),
                video["width"].as_u64(),
                video["height"].as_u64()
            ),
            (Some("h264"), Some(640), Some(360))
        );
        assert!(
            packets(video) >= 30,
            "reader {i} got {} video frames",
            packets(video)
        );
        assert_eq!(
            (audio["codec_name"].as_str(), audio["sample_rate"].as_str()),
            (Some("pcm_alaw"), Some("8000"))
        );
        // The camera sends G.711 in packets of about 125 ms.
        assert!(
            packets(audio) >= 20,
            "reader {i} got {} audio frames",
            packets(audio)
        );
    }
    eprintln!("ten readers in {:?}", started.elapsed());
    assert_eq!(
        rtsp_camera::sessions_total(&main_camera),
        1,
        "the camera saw one session: {}",
        main_camera.stdout()
    );

    let after = streams(gw);
    let main = stream(&after, "/porch/main");
    eprintln!("{main:#}");
    assert_eq!(main["state"], "playing");
    assert_eq!(main["tracks"][0]["codec"], "H.264");
    assert_eq!(
        (
            main["tracks"][0]["width"].as_u64(),
            main["tracks"][0]["height"].as_u64()
        ),
        (Some(640), Some(360))
    );
    assert_eq!(main["tracks"][1]["codec"], "PCMA");
    assert!(main["frames"].as_u64().unwrap() >= 60, "{main}");
    assert_eq!(main["camera_sessions"], 1);
    let metrics = camgate_tests::http::get_ok(gw, "http://127.0.0.1:8080/metrics").body;
    for line in [
        "camgate_stream_playing{stream=\"/porch/main\"} 1",
        "camgate_stream_camera_sessions{stream=\"/porch/main\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
    assert!(
        metrics.contains("camgate_stream_frames_total{stream=\"/porch/main\"} "),
        "{metrics}"
    );

    // The second stream: H.265 and AAC.
    let sub = probed(
        probe(
            dvr,
            dir.path(),
            "reader-sub",
            &url("alice", "correct horse", "/porch/sub"),
            3,
        ),
        Duration::from_secs(60),
    );
    eprintln!("sub: {sub:?}");
    assert_eq!(
        (
            sub[0]["codec_name"].as_str(),
            sub[0]["width"].as_u64(),
            sub[0]["height"].as_u64()
        ),
        (Some("hevc"), Some(320), Some(240))
    );
    assert!(packets(&sub[0]) >= 15, "{sub:?}");
    assert_eq!(
        (sub[1]["codec_name"].as_str(), sub[1]["sample_rate"].as_str()),
        (Some("aac"), Some("16000"))
    );
    assert!(packets(&sub[1]) >= 20, "{sub:?}");
    assert_eq!(rtsp_camera::sessions_total(&sub_camera), 1);

    // No login, a wrong one, and a token outside its scope: refused.
    for (name, url, expected) in [
        ("anonymous", format!("rtsp://{RESTREAM}/porch/main"), "401"),
        ("wrong", url("alice", "wrong horse", "/porch/main"), "401"),
        ("out-of-scope", url("nvr", &token, "/porch/sub"), "403"),
        (
            "no-such-stream",
            url("alice", "correct horse", "/porch/side"),
            "404",
        ),
    ] {
        let mut refused = probe(dvr, dir.path(), name, &url, 1);
        let status = refused.wait_exit(Duration::from_secs(30));
        assert!(!status.success(), "{name} was let in");
        assert!(
            refused.stderr().contains(expected),
            "{name}: {}",
            refused.stderr()
        );
    }

    // The restream is the LAN's: the WAN does not reach it, and neither
    // does a camera.
    for (ns, who) in [(wan, "the WAN"), (cam, "a camera")] {
        let reached = ns.run(|| {
            std::net::TcpStream::connect_timeout(&RESTREAM.parse().unwrap(), Duration::from_secs(2)).is_ok()
        });
        assert!(!reached, "{who} reached the restream");
    }

    // With no reader left, the camera is let go after `close_after`.
    wait_until(
        "the main camera session to close",
        Duration::from_secs(30),
        || (rtsp_camera::sessions_now(&main_camera) == 0).then_some(()),
    );
    assert_eq!(stream(&streams(gw), "/porch/main")["state"], "idle");
    camgate.signal(nix::sys::signal::Signal::SIGTERM);
    camgate.wait_exit(Duration::from_secs(20));
}

/// An `ffmpeg` reader copying the stream to nowhere, reporting progress.
fn reader(ns: &Netns, dir: &Path, name: &str, url: &str) -> Peer {
    let mut command = ns.command(require_binary("ffmpeg", "ffmpeg"));
    command.args([
        "-nostdin",
        "-v",
        "error",
        "-rtsp_transport",
        "tcp",
        "-i",
        url,
        "-map",
        "0:v",
        "-c",
        "copy",
        "-f",
        "null",
        "-progress",
        "pipe:1",
        "-",
    ]);
    Peer::spawn(name, command, dir)
}

/// Video frames the reader has copied so far (its last `frame=`).
fn frames(reader: &Peer) -> u64 {
    reader
        .stdout()
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("frame=")?.trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn wait_frames(readers: &[&Peer], at_least: u64, deadline: Duration, what: &str) {
    wait_until(what, deadline, || {
        readers.iter().all(|r| frames(r) >= at_least).then_some(())
    });
}

#[test]
fn readers_ride_out_a_stalled_reader_and_a_camera_restart() {
    let net = topology("strr");
    let (gw, cam, dvr) = (net.ns("gw"), net.ns("cam"), net.ns("dvr"));
    // Small socket buffers on both sides, so a stopped reader fills them
    // in moments and camgate's own bound is what holds.
    dvr.sysctl("net.ipv4.tcp_rmem", "4096 16384 65536");
    gw.sysctl("net.ipv4.tcp_wmem", "4096 16384 65536");
    let dir = tempfile::tempdir().unwrap();
    let camera_args = "--port 554 --path /stream1 --auth digest --user admin --password s3cret \
                       --width 640 --height 360 --fps 15 --bitrate 1000 --audio pcma";
    let camera = rtsp_camera::start(cam, CAMERA, dir.path(), "camera", camera_args);
    let mut camgate = start_camgate(gw, config(&dir.path().join("state"), cam, ""));
    let url = url("alice", "correct horse", "/porch/main");
    let readers: Vec<Peer> = (0..3)
        .map(|i| reader(dvr, dir.path(), &format!("reader-{i}"), &url))
        .collect();
    let (stalled, others) = (&readers[0], [&readers[1], &readers[2]]);
    wait_frames(
        &[stalled, others[0], others[1]],
        30,
        Duration::from_secs(30),
        "three readers",
    );
    let rss_before = rss_kib(camgate.peer.pid());

    // One reader stops for 30 s: the others keep their pace.
    stalled.signal(nix::sys::signal::Signal::SIGSTOP);
    let stalled_at = frames(stalled);
    let mut last: Vec<u64> = others.iter().map(|r| frames(r)).collect();
    let mut peak_rss = rss_before;
    for second in 1..=30 {
        std::thread::sleep(Duration::from_secs(1));
        peak_rss = peak_rss.max(rss_kib(camgate.peer.pid()));
        if second % 10 == 0 {
            let now: Vec<u64> = others.iter().map(|r| frames(r)).collect();
            for (before, after) in last.iter().zip(&now) {
                // 15 frames/s: at least half of 150 in each 10 s.
                assert!(
                    after - before >= 75,
                    "a reader slowed down while another was stopped: {last:?} -> {now:?}"
                );
            }
            last = now;
        }
    }
    let status = streams(gw);
    let main = stream(&status, "/porch/main");
    eprintln!("after the stall: {main:#}; RSS {rss_before} -> peak {peak_rss} KiB");
    assert!(
        main["dropped"].as_u64().unwrap() > 0,
        "the stopped reader lost frames: {main}"
    );
    assert!(
        peak_rss < rss_before + 8 * 1024,
        "camgate grew from {rss_before} to {peak_rss} KiB while a reader was stopped"
    );
    stalled.signal(nix::sys::signal::Signal::SIGCONT);
    wait_frames(
        &[stalled],
        stalled_at + 30,
        Duration::from_secs(20),
        "the stopped reader to go on",
    );

    // The camera goes away and comes back: every reader goes on, and the
    // new camera sees one session.
    drop(camera);
    let gone = Instant::now();
    wait_until("the source to back off", Duration::from_secs(30), || {
        (stream(&streams(gw), "/porch/main")["state"] == "backoff").then_some(())
    });
    assert!(stream(&streams(gw), "/porch/main")["last_error"].is_string());
    std::thread::sleep(Duration::from_secs(3));
    let counts: Vec<u64> = readers.iter().map(frames).collect();
    let camera = rtsp_camera::start(cam, CAMERA, dir.path(), "camera-again", camera_args);
    let back = Instant::now();
    wait_until(
        "every reader to get frames again",
        Duration::from_secs(40),
        || {
            readers
                .iter()
                .zip(&counts)
                .all(|(r, before)| frames(r) >= before + 30)
                .then_some(())
        },
    );
    eprintln!(
        "readers recovered {:?} after the camera came back ({:?} after it went)",
        back.elapsed(),
        gone.elapsed()
    );
    assert!(
        back.elapsed() < Duration::from_secs(35),
        "within the 30 s backoff cap"
    );
    assert_eq!(rtsp_camera::sessions_total(&camera), 1, "{}", camera.stdout());
    // A reload that leaves the stream alone leaves its readers and its
    // camera session alone.
    let before: Vec<u64> = readers.iter().map(frames).collect();
    let state = dir.path().join("state");
    camgate.write_config(&config(&state, cam, "[auth]\nban_after_failures = 7\n"));
    let ready = camgate.reload();
    assert!(!camgate.stderr().contains("reload failed"), "{ready}");
    assert_eq!(stream(&streams(gw), "/porch/main")["readers"], 3);
    wait_until(
        "readers to go on after the reload",
        Duration::from_secs(20),
        || {
            readers
                .iter()
                .zip(&before)
                .all(|(r, before)| frames(r) >= before + 30)
                .then_some(())
        },
    );
    assert_eq!(
        rtsp_camera::sessions_total(&camera),
        1,
        "a reload reopened the camera"
    );

    // Readers gone: the camera is let go.
    drop(readers);
    wait_until("the camera session to close", Duration::from_secs(30), || {
        (rtsp_camera::sessions_now(&camera) == 0).then_some(())
    });
    camgate.signal(nix::sys::signal::Signal::SIGTERM);
    camgate.wait_exit(Duration::from_secs(20));
}

/// A real DVR on the restream: `motion` reads the camera through camgate
/// with a `streams` token, as the wizard tells a user to set it up.
#[test]
fn motion_reads_the_restream_with_a_token() {
    let net = topology("strmo");
    let (gw, cam, dvr) = (net.ns("gw"), net.ns("cam"), net.ns("dvr"));
    let dir = tempfile::tempdir().unwrap();
    let camera = rtsp_camera::start(
        cam,
        CAMERA,
        dir.path(),
        "camera",
        "--port 554 --path /stream1 --auth digest --user admin --password s3cret --width 640 --height 360 --fps 10",
    );
    let (token_lines, token) = stream_token(dir.path(), "motion", "/porch/*");
    let mut camgate = start_camgate(gw, config(&dir.path().join("state"), cam, &token_lines));
    let motion_dir = dir.path().join("motion");
    std::fs::create_dir_all(&motion_dir).unwrap();
    let _motion = camgate_tests::motion::start_with_camera(
        dvr,
        "192.168.77.50",
        &motion_dir,
        None,
        Some((
            &format!("rtsp://{RESTREAM}/porch/main"),
            &format!("motion:{token}"),
        )),
    );
    wait_until("motion to read the restream", Duration::from_secs(30), || {
        let status = streams(gw);
        let main = stream(&status, "/porch/main");
        (main["readers"] == 1 && main["state"] == "playing").then_some(())
    });
    // motion decodes it: it saw the camera's size and connected.
    wait_until("motion to decode the restream", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(motion_dir.join("motion.log")).unwrap_or_default();
        (log.contains("Netcam: 640 x 360") && log.contains("connected")).then_some(())
    });
    assert_eq!(rtsp_camera::sessions_total(&camera), 1);
    camgate.signal(nix::sys::signal::Signal::SIGTERM);
    camgate.wait_exit(Duration::from_secs(20));
}
