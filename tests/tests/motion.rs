//! `motion` (Debian's package) as a real DVR behind camgate with the
//! `motion` profile: its GUI passes to motion's own login from anywhere,
//! its streams and controls only from the LAN; streams go to motion's
//! second port (8081) by the profile's rule.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use camgate_tests::camgate::{Camgate, Launch};
use camgate_tests::netns::Topology;
use camgate_tests::process::{Peer, require_binary, wait_until};
use camgate_tests::tls::{RawResponse, TlsClient, get_request};

const HOST: &str = "motion.test";

fn motion_config(dir: &std::path::Path) -> String {
    format!(
        "daemon off\nlog_file {dir}/motion.log\ntarget_dir {dir}/target\nnetcam_url file://{dir}/test.mkv\n\
         width 320\nheight 240\nframerate 10\npicture_output off\nmovie_output off\n\
         webcontrol_port 8080\nwebcontrol_localhost off\nwebcontrol_interface 1\nwebcontrol_parms 2\n\
         webcontrol_auth_method 2\nwebcontrol_authentication admin:secret\n\
         stream_port 8081\nstream_localhost off\nstream_maxrate 10\n",
        dir = dir.display()
    )
}

#[test]
fn motion_gui_passes_to_its_login_and_streams_need_the_lan() {
    let motion = require_binary("motion", "motion");
    let ffmpeg = require_binary("ffmpeg", "ffmpeg");
    let net = Topology::builder("motion")
        .link(("gw", "203.0.113.1/24"), ("wan", "203.0.113.2/24"))
        .link(("gw", "192.168.50.1/24"), ("lan", "192.168.50.2/24"))
        .build();
    let dir = tempfile::tempdir().unwrap();
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
        .arg(dir.path().join("test.mkv"))
        .status()
        .unwrap();
    assert!(movie.success());
    std::fs::create_dir_all(dir.path().join("target")).unwrap();
    let config = dir.path().join("motion.conf");
    std::fs::write(&config, motion_config(dir.path())).unwrap();
    let mut command = net.ns("lan").command(motion);
    command.arg("-n").arg("-c").arg(&config);
    let _motion = Peer::spawn("motion", command, dir.path());
    // Motion keeps running without a port it could not bind: check both.
    wait_until("motion's ports", Duration::from_secs(20), || {
        net.ns("lan")
            .run(|| {
                [8080, 8081]
                    .iter()
                    .all(|&port| TcpStream::connect(("192.168.50.2", port)).is_ok())
            })
            .then_some(())
    });

    let camgate = Camgate::start(Launch {
        netns: Some(net.ns("gw")),
        config: Some(format!(
            "[daemon]\nmode = \"dev\"\nstate_dir = \"state\"\nlog = \"info\"\n[admin]\nlisten = [\"127.0.0.1:8080\"]\n\
             [proxy]\nhttps_listen = [\"0.0.0.0:443\"]\nhttp_listen = [\"0.0.0.0:80\"]\n\
             [[site]]\nname = \"motion\"\nhosts = [\"{HOST}\"]\nupstream = \"http://192.168.50.2:8080\"\nprofile = \"motion\"\n\
             # motion's webcontrol has its own login here: open its start page.\n\
             [[site.rule]]\npath = \"/\"\naction = \"allow\"\n"
        )),
        env: Vec::new(),
    });
    let certificate = camgate.self_signed_certificate();
    let client = TlsClient::trusting(&[&certificate], &[b"http/1.1"]);
    let get = |from: &str, target: &str| -> RawResponse {
        let gateway = if from == "lan" {
            "192.168.50.1"
        } else {
            "203.0.113.1"
        };
        let address = SocketAddr::new(gateway.parse().unwrap(), 443);
        client.exchange(net.ns(from), address, HOST, &get_request(target, HOST, target))
    };

    // The GUI from the WAN reaches motion, which asks for its own login.
    let gui = get("wan", "/");
    assert_eq!(gui.status(), 401, "{}", gui.text());
    assert!(
        gui.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Digest")),
        "{}",
        gui.text()
    );

    // Streams, snapshots and controls are camgate's to refuse from the WAN.
    for target in [
        "/0/stream",
        "/0/current",
        "/status.json",
        "/0/action/snapshot",
        "/0/detection/pause",
        "/0/config/list",
    ] {
        // camgate's own challenge, not motion's Digest one.
        let response = get("wan", target);
        assert_eq!(response.status(), 401, "WAN {target}: {}", response.text());
        assert!(
            response
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Basic realm=\"camgate")),
            "{}",
            response.text()
        );
    }

    // From the LAN they pass, streams to motion's stream port.
    let current = wait_until("a frame from motion", Duration::from_secs(20), || {
        let response = get("lan", "/0/current");
        (response.status() == 200).then_some(response)
    });
    assert_eq!(current.header("content-type").as_deref(), Some("image/jpeg"));
    let jpeg_start = current.bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&current.bytes[jpeg_start..jpeg_start + 2], [0xFF, 0xD8]);
    let status = get("lan", "/0/status.json");
    assert_eq!(status.status(), 200);
    assert!(status.body().contains("camera_status"), "{}", status.text());
    // The control port answers the LAN with its own login, as it should.
    assert_eq!(get("lan", "/0/detection/status").status(), 401);

    // The live MJPEG stream through camgate.
    let stream = net.ns("lan").run(|| {
        use std::io::{Read, Write};
        let address = SocketAddr::new("192.168.50.1".parse().unwrap(), 443);
        let mut stream = client.connect(address, HOST).unwrap();
        stream
            .write_all(&get_request("/0/stream", HOST, "stream"))
            .unwrap();
        let mut received = Vec::new();
        let mut buffer = [0u8; 16384];
        while received.len() < 100_000 {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "stream ended");
            received.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&received).into_owned()
    });
    assert!(stream.contains("multipart/x-mixed-replace"), "{}", &stream[..200]);
    assert!(stream.matches("image/jpeg").count() >= 2, "several frames");
    drop(camgate);
}
