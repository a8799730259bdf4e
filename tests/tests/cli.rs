//! The command line as a user meets it: check-config on every broken
//! fixture and on the shipped example, version, and `run` with a bad config.

use std::path::{Path, PathBuf};
use std::process::Command;

use camgate_tests::camgate::binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn camgate(args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run camgate")
}

#[test]
fn check_config_accepts_the_shipped_example() {
    let example = repo().join("rootfs/etc/camgate/camgate.toml");
    let output = camgate(&["check-config", example.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).ends_with(": OK (appliance mode)\n"));
}

#[test]
fn check_config_rejects_each_broken_fixture_with_exit_65_and_its_error() {
    let dir = repo().join("gateway/testdata/config/bad");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let output = camgate(&["check-config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(65), "{}: {stderr}", path.display());
        let want = format!("camgate: {}:{}", path.display(), expected.trim_end());
        assert!(
            stderr.starts_with(&want),
            "{}:\n got: {stderr}\nwant: {want}",
            path.display()
        );
        checked += 1;
    }
    let expected_files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "expected")
        })
        .count();
    assert_eq!(checked, expected_files, "every .expected file has its fixture");
    assert!(checked >= 12);
}

#[test]
fn run_with_a_bad_config_exits_65_before_binding_anything() {
    let path = repo().join("gateway/testdata/config/bad/bad-mode.toml");
    let output = camgate(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown variant `turbo`"));
}

#[test]
fn run_with_a_missing_explicit_config_is_an_error_not_setup_mode() {
    let output = camgate(&["run", "--config", "/nonexistent/camgate.toml"]);
    assert_eq!(output.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/camgate.toml: cannot read config: No such file"),
        "{stderr}"
    );
}

#[test]
fn version_prints_the_package_version() {
    let output = camgate(&["version"]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("camgate {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// `camgate explain --config CONFIG --site SITE --from FROM ARGS…`
fn explain(config: &Path, site: &str, from: &str, args: &[&str]) -> std::process::Output {
    let config = config.to_str().unwrap();
    camgate(
        &[
            &["explain", "--config", config, "--site", site, "--from", from][..],
            args,
        ]
        .concat(),
    )
}

#[test]
fn explain_prints_the_decision_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("camgate.toml");
    let site = "[[site]]\nname = \"dvr\"\nhosts = [\"dvr.example.org\"]\nupstream = \"http://192.168.1.20\"\nprofile = \"agentdvr\"\n";
    std::fs::write(&config, site).unwrap();

    let output = explain(
        &config,
        "dvr",
        "203.0.113.7",
        &["--json", "GET /a/..//Video.mjpg?oids=1"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["decision"], "auth");
    assert_eq!(json["rule"], "api");
    assert_eq!(json["canonical_path"], "/Video.mjpg");
    assert_eq!(json["status"], 401);
    assert_eq!(json["rules"][0]["matched"], true);

    let human = explain(&config, "dvr", "192.168.1.2", &["GET /grab.jpg"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("decision: allow (forwarded as /grab.jpg)"),
        "{text}"
    );

    let unknown = explain(&config, "nope", "1.2.3.4", &["GET /"]);
    assert_eq!(unknown.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("sites: dvr"));
}

#[test]
fn profiles_lists_and_shows_the_built_in_profiles() {
    let list = String::from_utf8(camgate(&["profiles"]).stdout).unwrap();
    for name in [
        "agentdvr",
        "blueiris",
        "frigate",
        "zoneminder",
        "shinobi",
        "motion",
        "motioneye",
        "go2rtc",
        "moonfire",
        "generic",
    ] {
        assert!(
            list.lines().any(|line| line.starts_with(name)),
            "{name} missing:\n{list}"
        );
    }
    let agent = String::from_utf8(camgate(&["profiles", "show", "agentdvr"]).stdout).unwrap();
    assert!(agent.contains("ports = \"50000-50100\""), "{agent}");
    let agent_line = list.lines().find(|line| line.starts_with("agentdvr")).unwrap();
    assert!(
        agent_line.contains("forwards udp 3478 (STUN only), udp 50000-50100"),
        "{agent_line}"
    );
    assert_eq!(camgate(&["profiles", "show", "nope"]).status.code(), Some(64));
}
