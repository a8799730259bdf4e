//! The rootfs overlay as systemd sees it: the unit verifies against a root
//! that holds what it references, and its hardening stays tight.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use camgate_tests::camgate::binary;
use camgate_tests::process::require_binary;

const UNIT: &str = "camgate.service";

fn unit_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rootfs/etc/systemd/system")
        .join(UNIT)
}

/// A root with the unit, the binaries it runs and systemd's own units:
/// what `systemd-analyze verify --root` needs to resolve everything.
fn unit_root(unit_text: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in ["usr/bin", "usr/lib/systemd", "etc/systemd/system"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
    std::fs::copy(binary(), r.join("usr/bin/camgate")).unwrap();
    std::fs::copy(require_binary("kill", "procps"), r.join("usr/bin/kill")).unwrap();
    let status = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(status.success(), "copy systemd's units (Debian package systemd)");
    std::fs::write(r.join("etc/systemd/system").join(UNIT), unit_text).unwrap();
    root
}

fn analyze(args: &[&str], root: &Path) -> Output {
    Command::new(require_binary("systemd-analyze", "systemd"))
        .args(args)
        .arg(format!("--root={}", root.display()))
        .arg(UNIT)
        .output()
        .unwrap()
}

#[test]
fn unit_verifies_and_a_broken_one_does_not() {
    let text = std::fs::read_to_string(unit_source()).unwrap();
    let root = unit_root(&text);
    let output = analyze(&["verify"], root.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );

    let broken = unit_root(&text.replace("ExecStart=/usr/bin/camgate", "ExecStart=/usr/bin/camgated"));
    let output = analyze(&["verify"], broken.path());
    assert!(
        !output.status.success(),
        "verify accepted a unit whose binary is missing"
    );
}

#[test]
fn unit_hardening_keeps_exposure_low() {
    let text = std::fs::read_to_string(unit_source()).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "RestartPreventExitStatus=65",
        "ProtectSystem=strict",
        "ReadWritePaths=/etc/camgate /var/lib/camgate /proc/sys/net",
        "ProtectKernelTunables=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_SETUID CAP_SETGID",
    ] {
        assert!(text.lines().any(|l| l == line), "camgate.service lacks {line}");
    }
    let root = unit_root(&text);
    let output = analyze(&["security", "--offline=true"], root.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let score: f64 = stdout
        .lines()
        .find_map(|line| line.split("Overall exposure level for camgate.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {stdout}"));
    assert!(score <= 3.0, "exposure {score} > 3.0:\n{stdout}");
}
