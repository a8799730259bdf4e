//! The setup wizard end to end in a real browser: Debian's headless
//! Chromium, driven by playwright-core (`tests/browser/journey.js`) from
//! the LAN, sets up a fresh camgate that runs as the appliance does (setup
//! mode, appliance mode, default paths): claim, network with a camera port,
//! `motion` as the DVR (detected), remote access with a certificate from
//! Pebble, a person and a token, review, apply and confirm; then names the
//! camera that DHCP'd on the camera port. A second run applies a network
//! change that cuts the browser off, does not confirm it, and sees camgate
//! go back. Screenshots of every step, desktop and phone: `tests/output/wizard/`.
//!
//! ```text
//!  lan (browser, motion)           ca (Pebble)
//!   192.168.60.2                    203.0.113.2
//!        │ v0-lan                        │ v1-ca
//!        └────────── gw (camgate) ───────┘
//!                        │ v2-cam (camera port: camgate's 10.77.0.1/24)
//!                   cam (udhcpc)
//! ```

use std::path::{Path, PathBuf};

use camgate_tests::camgate::{Camgate, Launch};
use camgate_tests::netns::{Netns, Topology};
use camgate_tests::pebble::{Pebble, PebbleSettings};
use camgate_tests::process::{Peer, require_binary};

const GW_LAN: &str = "192.168.60.1";
const LAN: &str = "192.168.60.2";
const GW_WAN: &str = "203.0.113.1";
const CA: &str = "203.0.113.2";
const PUBLIC_HOST: &str = "dvr.example.org";
const CAMERA_MAC: &str = "02:00:00:77:00:20";
const CAMERA_PASSWORD: &str = "camera-password";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Runs one phase of journey.js in `lan`; its JSON result.
fn journey(lan: &Netns, phase: &str, vars: &[(&str, String)], dir: &Path) -> serde_json::Value {
    let node = require_binary("node", "nodejs");
    let browser_dir = repo().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `npm ci` in tests/browser (tests/run.sh does)"
    );
    let output = lan
        .command("timeout")
        .arg("400")
        .arg(node)
        .arg(browser_dir.join("journey.js"))
        .current_dir(&browser_dir)
        .env("PHASE", phase)
        .env("SHOTS", repo().join("tests/output/wizard"))
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .env("HOME", dir)
        .envs(vars.iter().map(|(key, value)| (*key, value)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "journey.js {phase} failed ({}):\n{}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("journey.js prints its result")
}

#[test]
fn a_browser_sets_up_a_fresh_camgate_and_an_unconfirmed_change_is_reverted() {
    require_binary("chromium", "chromium");
    let udhcpc = require_binary("udhcpc", "udhcpc");
    let net = Topology::builder("wiz")
        .link(("gw", &format!("{GW_LAN}/24")), ("lan", &format!("{LAN}/24")))
        .link(("gw", &format!("{GW_WAN}/24")), ("ca", &format!("{CA}/24")))
        .link(("gw", "192.0.2.1/30"), ("cam", "192.0.2.2/30"))
        .build();
    let (gw, lan, cam) = (net.ns("gw"), net.ns("lan"), net.ns("cam"));
    // The camera port comes without addresses: camgate gives it its own.
    gw.ip(&["addr", "flush", "dev", "v2-cam"]);
    cam.ip(&["addr", "flush", "dev", "v2-gw"]);
    cam.ip(&["link", "set", "v2-gw", "address", CAMERA_MAC]);
    let dir = tempfile::tempdir().unwrap();

    let _motion = camgate_tests::motion::start(lan, LAN, dir.path(), None);
    let pebble = Pebble::start(
        net.ns("ca"),
        CA,
        PebbleSettings {
            http_port: 80,
            tls_port: 443,
            validity: None,
            nonce_reject: Some(0),
            names: vec![(PUBLIC_HOST.to_owned(), GW_WAN.to_owned())],
        },
    );
    let camgate = Camgate::start(Launch {
        netns: Some(gw),
        config: None,
        env: Vec::new(),
        appliance_setup: true,
    });
    let code = std::fs::read_to_string(camgate.dir.path().join("state/setup-code")).unwrap();

    // The camera asks for an address until camgate's camera network runs.
    let hook = dir.path().join("udhcpc.hook");
    std::fs::write(
        &hook,
        "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/$mask\" dev \"$interface\" && \
         ip route add default via \"$router\"\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut dhcp = cam.command(udhcpc);
    dhcp.args(["-i", "v2-gw", "-f", "-t", "0", "-T", "1", "-A", "1", "-s"])
        .arg(&hook)
        .args(["-x", "hostname:porch-cam"]);
    let _camera = Peer::spawn("udhcpc", dhcp, dir.path());
    // Once it has an address, it phones home like a hacked camera: telnet
    // to a host beyond camgate (the CA's namespace), every second.
    let mut phone_home = cam.command("sh");
    phone_home.args([
        "-c",
        &format!("while :; do curl -s --max-time 1 -o /dev/null telnet://{CA}:23; sleep 1; done"),
    ]);
    let _phone_home = Peer::spawn("phone-home", phone_home, dir.path());
    // Its RTSP server, behind a Digest login.
    let _rtsp = camgate_tests::rtsp_camera::start(
        cam,
        "0.0.0.0",
        dir.path(),
        "rtsp-camera",
        &format!("--port 8554 --path /stream1 --auth digest --user admin --password {CAMERA_PASSWORD}"),
    );

    let shots = repo().join("tests/output/wizard");
    let _ = std::fs::remove_dir_all(&shots);
    let vars = [
        ("CAMGATE_URL", format!("http://{GW_LAN}:8080/")),
        ("SETUP_CODE", code.trim().to_owned()),
        ("UPLINK", "v0-lan".to_owned()),
        ("WRONG_UPLINK", "v1-ca".to_owned()),
        ("CAMERA_NIC", "v2-cam".to_owned()),
        ("CAMERA_MAC", CAMERA_MAC.to_owned()),
        ("CAMERA_PASSWORD", CAMERA_PASSWORD.to_owned()),
        ("DVR_ADDRESS", LAN.to_owned()),
        ("PUBLIC_HOST", PUBLIC_HOST.to_owned()),
        ("ACME_DIRECTORY", pebble.directory()),
        ("ACME_CA", pebble.listener_ca().display().to_string()),
    ];
    let setup = journey(lan, "setup", &vars, dir.path());
    let text = |key: &str| setup[key].as_str().unwrap_or_default().to_owned();
    assert!(
        text("detected").contains("Found: motion on port 8080"),
        "{setup:#}"
    );
    assert!(text("connection").contains("It answers"), "{setup:#}");
    assert!(
        text("short_password").contains("at least 10 characters"),
        "{setup:#}"
    );
    assert!(text("router_forwards").contains("TCP 443"), "{setup:#}");
    assert_eq!(
        text("token_scope"),
        "/0/stream",
        "motion's stream, by its profile"
    );
    assert!(
        text("token_url").starts_with(&format!("https://{PUBLIC_HOST}/0/stream?token=")),
        "{setup:#}"
    );
    let diff = text("diff");
    for expected in [
        "+uplink = \"v0-lan\"",
        "+interface = \"v2-cam\"",
        "+upstream = \"http://192.168.60.2:8080\"",
        "+profile = \"motion\"",
        "+hosts = [\"dvr.example.org\"]",
        "+name = \"viewer1\"",
        "+name = \"homeassistant\"",
    ] {
        assert!(diff.contains(expected), "{expected} not in the review:\n{diff}");
    }
    assert!(
        text("confirm_text").contains("network and camera interfaces"),
        "{setup:#}"
    );
    assert!(text("camera_diff").contains("+name = \"porch\""), "{setup:#}");
    assert!(
        text("rtsp_refused").contains("the camera refused the login (401): check the user name and password"),
        "{setup:#}"
    );
    assert!(
        text("rtsp").starts_with("It streams: H.264 video 320×240"),
        "{setup:#}"
    );
    // The login the test used is the camera's, kept for ONVIF.
    assert!(text("camera_diff").contains("+username = \"admin\""), "{setup:#}");
    assert!(
        text("dashboard_cameras").contains(&format!("mirai: tcp {CA}:23")),
        "{setup:#}"
    );
    assert!(
        text("dashboard_events").contains("camgate claimed: setup mode is over"),
        "{setup:#}"
    );
    assert!(
        text("dashboard_dvr").contains("motion at http://192.168.60.2:8080: answers (HTTP 200 OK"),
        "{setup:#}"
    );

    // What the browser did is what camgate runs.
    let config = std::fs::read_to_string(&camgate.config_path).unwrap();
    assert!(
        config.contains("[[camera]]\nname = \"porch\"\nmac = \"02:00:00:77:00:20\""),
        "{config}"
    );
    assert!(!camgate.dir.path().join("etc/.camgate.toml.unconfirmed").exists());
    assert_eq!(text("backup"), config, "the backup is the file");
    assert!(
        text("restore_error").contains("not valid: line 2:8: `daemon.mode`: unknown variant `turbo`"),
        "{setup:#}"
    );
    let status = camgate_tests::http::get_ok(gw, "http://127.0.0.1:8080/api/status").json();
    let certificate = &status["certificates"]["acme"][0];
    assert_eq!(certificate["host"], PUBLIC_HOST, "{status:#}");
    assert_eq!(certificate["state"], "valid", "{status:#}");
    assert!(
        certificate["issuer"]
            .as_str()
            .unwrap_or_default()
            .contains("Pebble"),
        "{status:#}"
    );
    // The token opens motion's stream through camgate's HTTPS, by name.
    let token = text("token");
    let stream = lan
        .command("curl")
        .args([
            "-sk",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{content_type}",
        ])
        .args(["--resolve", &format!("{PUBLIC_HOST}:443:{GW_LAN}")])
        .arg(format!("https://{PUBLIC_HOST}/0/stream?token={token}"))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&stream.stdout);
    assert!(answer.starts_with("200 multipart/x-mixed-replace"), "{answer}");

    let revert = journey(lan, "revert", &vars, dir.path());
    let reverted = revert["reverted_text"].as_str().unwrap_or_default();
    assert!(
        reverted.contains("went back to the previous configuration"),
        "{revert:#}"
    );
    assert_eq!(revert["reverted_diff"], "Nothing to change.", "{revert:#}");
    assert_eq!(revert["apply_disabled"], true, "{revert:#}");
    let config_after = std::fs::read_to_string(&camgate.config_path).unwrap();
    assert_eq!(
        config_after, config,
        "the unconfirmed change is gone from the file"
    );
}
