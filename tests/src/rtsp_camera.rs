//! A camera's RTSP server: `tests/peers/rtsp_camera.py` (gst-rtsp-server
//! through python3-gi) serving a test pattern in H.264, with or without a
//! login (Basic or Digest), and optionally G.711 audio.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::netns::Netns;
use crate::process::{Peer, wait_until};

/// Debian's `gi` is installed for the system Python only (not pyenv's).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Starts the camera in `netns` on `address` with `args` (split at spaces:
/// `--port`, `--path`, `--auth none|basic|digest`, `--user`, `--password`,
/// `--width`, `--height`, `--fps`, `--audio`) and waits for its "listening" line.
pub fn start(netns: &Netns, address: &str, log_dir: &Path, name: &str, args: &str) -> Peer {
    assert!(
        Path::new(SYSTEM_PYTHON).is_file(),
        "{SYSTEM_PYTHON} not found: install Debian packages python3-gi gir1.2-gst-rtsp-server-1.0 \
         gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly"
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
