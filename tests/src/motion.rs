//! Debian's `motion` as a real DVR in a namespace: webcontrol (GUI and
//! controls) on 8080, MJPEG streams and status on 8081, its camera a test
//! pattern file made by ffmpeg.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::netns::Netns;
use crate::process::{Peer, require_binary, wait_until};

/// Starts motion in `netns` on `address`, with a Digest login
/// (`user:password`) on its webcontrol if given, and waits until its camera
/// runs (its stream port answers a few seconds after it listens).
pub fn start(netns: &Netns, address: &str, dir: &Path, webcontrol_login: Option<&str>) -> Peer {
    start_with_camera(netns, address, dir, webcontrol_login, None)
}

/// [`start`], with its camera an RTSP URL and a `user:password` for it
/// (`netcam_url`, `netcam_userpass`) instead of the test pattern file.
pub fn start_with_camera(
    netns: &Netns,
    address: &str,
    dir: &Path,
    webcontrol_login: Option<&str>,
    camera: Option<(&str, &str)>,
) -> Peer {
    let motion = require_binary("motion", "motion");
    let netcam = match camera {
        Some((url, userpass)) => format!("netcam_url {url}\nnetcam_userpass {userpass}\n"),
        None => format!("netcam_url file://{}\n", test_pattern(dir).display()),
    };
    let login = webcontrol_login.map_or_else(String::new, |login| {
        format!("webcontrol_auth_method 2\nwebcontrol_authentication {login}\n")
    });
    std::fs::create_dir_all(dir.join("target")).unwrap();
    let config = dir.join("motion.conf");
    std::fs::write(
        &config,
        format!(
            "daemon off\nlog_file {dir}/motion.log\ntarget_dir {dir}/target\n{netcam}\
             width 320\nheight 240\nframerate 10\npicture_output off\nmovie_output off\n\
             webcontrol_port 8080\nwebcontrol_localhost off\nwebcontrol_interface 1\nwebcontrol_parms 2\n\
             {login}stream_port 8081\nstream_localhost off\nstream_maxrate 10\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    let mut command = netns.command(motion);
    command.arg("-n").arg("-c").arg(&config);
    let peer = Peer::spawn("motion", command, dir);
    wait_until("motion's camera status", Duration::from_secs(30), || {
        netns
            .run(|| {
                TcpStream::connect((address, 8080)).is_ok()
                    && stream_status(address).contains("camera_status")
            })
            .then_some(())
    });
    peer
}

/// A 10-second test pattern for motion to loop over.
fn test_pattern(dir: &Path) -> std::path::PathBuf {
    let ffmpeg = require_binary("ffmpeg", "ffmpeg");
    let path = dir.join("test.mkv");
    let movie = Command::new(ffmpeg)
        .args([
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=10",
            "-t",
            "10",
        ])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "10"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(movie.success());
    path
}

/// `GET /status.json` on motion's stream port, the answer as text.
fn stream_status(address: &str) -> String {
    let Ok(mut stream) = TcpStream::connect((address, 8081)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /status.json HTTP/1.1\r\nHost: {address}:8081\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}
