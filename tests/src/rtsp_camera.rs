//! A camera's RTSP server: `tests/peers/rtsp_camera.py` (gst-rtsp-server
//! through python3-gi) serving a test pattern in H.264 or H.265, with or
//! without a login (Basic or Digest), optionally with G.711 or AAC audio and
//! a client limit. It prints one line per client and session event, so a
//! test can prove what the camera saw (e.g. that a relay pulled it once).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::netns::Netns;
use crate::process::{Peer, wait_until};

/// Debian's `gi` is installed for the system Python only (not pyenv's).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Starts the camera in `netns` on `address` with `args` (split at spaces)
/// and waits for its "listening" line. Arguments:
/// - `--port N` (554), `--path /P` (`/stream1`);
/// - `--auth none|basic|digest`, `--user`, `--password`;
/// - `--video h264|h265`, `--width`, `--height`, `--fps` (320, 240, 15),
///   `--bitrate KBIT` (300), `--gop FRAMES` (= fps: a keyframe a second);
/// - `--audio [pcma|pcmu|aac]` (no value: G.711 A-law; G.711 is 8 kHz mono),
///   `--audio-rate HZ` (AAC only, 16000; AAC is mono);
/// - `--max-clients N`: connections beyond N are closed at once, as cheap
///   cameras do (counted by [`refused`]).
///
/// Killing and restarting it on the same port works at once (SO_REUSEADDR).
pub fn start(netns: &Netns, address: &str, log_dir: &Path, name: &str, args: &str) -> Peer {
    assert!(
        Path::new(SYSTEM_PYTHON).is_file(),
        "{SYSTEM_PYTHON} not found: install Debian packages python3-gi gir1.2-gst-rtsp-server-1.0 \
         gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/rtsp_camera.py");
    let mut command: Command = netns.command(SYSTEM_PYTHON);
    command
        .arg(script)
        .args(["--address", address])
        .args(args.split_whitespace());
    let mut peer = Peer::spawn(name, command, log_dir);
    wait_until(&format!("{name} to listen"), Duration::from_secs(20), || {
        assert!(
            peer.try_exit().is_none(),
            "{name} exited: {}{}",
            peer.stdout(),
            peer.stderr()
        );
        peer.stdout().contains("listening rtsp://").then_some(())
    });
    peer
}

/// Open RTSP connections now (the last `clients=` the camera printed).
pub fn clients_now(peer: &Peer) -> usize {
    last_count(peer, "clients=")
}

/// RTSP connections accepted since the start (refused ones not included).
pub fn connections_total(peer: &Peer) -> usize {
    events(peer, "client-connected")
}

/// Connections closed at once for exceeding `--max-clients`.
pub fn refused(peer: &Peer) -> usize {
    events(peer, "client-refused")
}

/// RTSP sessions (SETUPs that made one) since the start: the number of
/// times the camera was really pulled, unlike connections, which also
/// count DESCRIBE-only probes and failed logins.
pub fn sessions_total(peer: &Peer) -> usize {
    events(peer, "session-new")
}

/// Sessions alive now: ended by TEARDOWN or with their connection.
pub fn sessions_now(peer: &Peer) -> usize {
    last_count(peer, "sessions=")
}

/// PLAY requests answered 200 since the start.
pub fn plays_total(peer: &Peer) -> usize {
    events(peer, "play")
}

/// Complete lines only: the camera may be mid-line when the log is read.
fn lines(stdout: &str) -> impl DoubleEndedIterator<Item = &str> {
    let complete = stdout.rfind('\n').map_or("", |end| &stdout[..end]);
    complete.lines()
}

fn events(peer: &Peer, event: &str) -> usize {
    lines(&peer.stdout())
        .filter(|line| line.split(' ').next() == Some(event))
        .count()
}

/// The value of the last `key` (`clients=`, `sessions=`) printed, 0 before any.
fn last_count(peer: &Peer, key: &str) -> usize {
    let stdout = peer.stdout();
    lines(&stdout)
        .rev()
        .find_map(|line| line.split(' ').find_map(|word| word.strip_prefix(key)))
        .map_or(0, |n| {
            n.parse()
                .unwrap_or_else(|e| panic!("bad {key}{n} from the camera: {e}"))
        })
}
