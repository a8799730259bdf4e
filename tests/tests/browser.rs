//! A real browser (Debian's headless Chromium, driven by chromedriver from
//! `tests/browser/login_flow.py`) in the WAN namespace: a protected DVR page
//! leads to camgate's login page, a wrong password is refused, the right one
//! opens the DVR page and its MJPEG `<img>` plays, and logout ends it. The
//! screenshots are kept under `target/tmp/browser/`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use camgate_tests::lab::{DVR, GW_WAN, Lab, credentials_config};
use camgate_tests::process::{require_binary, wait_until};

const HOST: &str = "home.test";

/// `base64(sha256(SubjectPublicKeyInfo))` of camgate's self-signed
/// certificate: Chromium trusts exactly that key, nothing else.
fn spki_pin(certificate: &std::path::Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | base64",
        certificate.display()
    );
    let output = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_browser_logs_in_watches_the_mjpeg_tile_and_logs_out() {
    require_binary("chromium", "chromium");
    require_binary("chromedriver", "chromium-driver");
    require_binary("openssl", "openssl");
    let selenium = Command::new("/usr/bin/python3")
        .args(["-c", "import selenium"])
        .status()
        .unwrap();
    assert!(
        selenium.success(),
        "python3-selenium is missing (apt-get install python3-selenium)"
    );

    let dir = tempfile::tempdir().unwrap();
    let (credentials, _) = credentials_config(dir.path());
    // A site whose every path needs a user: the DVR's GUI too.
    let site = format!(
        "[[site]]\nname = \"home\"\nhosts = [\"{HOST}\"]\nupstream = \"{DVR}\"\n\
         [[site.rule]]\nname = \"everything\"\nprefix = \"/\"\naction = \"auth\"\nusers = [\"alice\"]\n"
    );
    let lab = Lab::start("brw", &format!("{credentials}{site}"));

    // Chromium aborts requests in flight with ERR_NETWORK_CHANGED when an
    // address appears, and the kernel adds the veth's IPv6 link-local
    // address a second or two after the link comes up (then runs duplicate
    // address detection on it): wait until it is there and settled.
    let wan = lab.net.ns("wan");
    wait_until(
        "the IPv6 link-local address in wan",
        Duration::from_secs(15),
        || {
            let output = wan.ip(&["-6", "addr", "show", "scope", "link"]);
            let text = String::from_utf8_lossy(&output.stdout);
            (text.contains("inet6 fe80:") && !text.contains("tentative")).then_some(())
        },
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/login_flow.py");
    let output = wan
        .command("/usr/bin/python3")
        .arg(script)
        .args([
            "--host",
            HOST,
            "--address",
            GW_WAN,
            "--path",
            "/cameras/live.html",
        ])
        .args(["--user", "alice", "--password", "correct horse"])
        .arg("--spki")
        .arg(spki_pin(&lab.camgate.self_signed_certificate()))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser could not be driven:\n{stdout}\n{stderr}"
    );
    let seen: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"));
    eprintln!("browser saw: {seen:#}\nscreenshots in {}", out.display());
    assert!(seen.get("error").is_none(), "{seen:#}\n{}", lab.camgate.stderr());

    let base = format!("https://{HOST}");
    assert_eq!(
        seen["login_url"],
        format!("{base}/.camgate/login?next=%2Fcameras%2Flive.html")
    );
    assert_eq!(seen["login_title"], "Sign in to home");
    assert_eq!(
        seen["login_styled"], "rgb(45, 108, 223)",
        "the stylesheet loaded under camgate's CSP"
    );
    assert_eq!(seen["wrong_password_message"], "Wrong user name or password.");
    assert_eq!(seen["after_login_url"], format!("{base}/cameras/live.html"));
    assert_eq!(seen["dvr_heading"], "fake-dvr live");
    assert_eq!(seen["img_width"], 16, "the MJPEG frames decoded");
    assert_eq!(
        seen["cookies_visible_to_script"], "",
        "camgate's cookies are HttpOnly"
    );
    assert_eq!(seen["after_logout_url"], format!("{base}/.camgate/login"));
    assert_eq!(
        seen["protected_after_logout_url"],
        format!("{base}/.camgate/login?next=%2Fcameras%2Flive.html")
    );
    for shot in ["login.png", "dvr.png"] {
        let png = std::fs::read(out.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{shot}");
    }

    // The DVR served the page and the stream, and never saw camgate's
    // cookies; nothing reached it before the login.
    let received = lab.dvr.received();
    let targets: Vec<&str> = received.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets.first(), Some(&"/cameras/live.html"), "{targets:?}");
    assert!(
        targets.contains(&"/cameras/video.mjpg?size=4096&fps=5"),
        "{targets:?}"
    );
    for request in &received {
        let cookie = request.header("cookie").unwrap_or_default();
        assert!(!cookie.contains("camgate"), "{cookie}");
        assert_eq!(request.header("authorization"), None);
    }
    let log = lab.camgate.stderr();
    assert!(
        log.contains("session started") && log.contains("session ended"),
        "{log}"
    );
}
