//! `motion` (Debian's package) as a real DVR behind camgate with the
//! `motion` profile: its GUI passes to motion's own login from anywhere,
//! its streams and controls only from the LAN; streams go to motion's
//! second port (8081) by the profile's rule.

use std::net::SocketAddr;
use std::time::Duration;

use camgate_tests::camgate::{Camgate, Launch};
use camgate_tests::netns::Topology;
use camgate_tests::process::wait_until;
use camgate_tests::tls::{RawResponse, TlsClient, get_request};

const HOST: &str = "motion.test";

#[test]
fn motion_gui_passes_to_its_login_and_streams_need_the_lan() {
    let net = Topology::builder("motion")
        .link(("gw", "203.0.113.1/24"), ("wan", "203.0.113.2/24"))
        .link(("gw", "192.168.50.1/24"), ("lan", "192.168.50.2/24"))
        .build();
    let dir = tempfile::tempdir().unwrap();
    let _motion =
        camgate_tests::motion::start(net.ns("lan"), "192.168.50.2", dir.path(), Some("admin:secret"));

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
        appliance_setup: false,
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
