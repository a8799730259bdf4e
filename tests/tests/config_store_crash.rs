//! SIGKILL during config saves: after every kill the file on disk is a
//! complete, valid config: the last save that returned, or the one in flight.

use std::process::Command;
use std::time::Duration;

use camgate::config::{self, Overrides};
use camgate_tests::process::Peer;
use camgate_tests::saver_config;
use nix::sys::signal::Signal;

#[test]
fn sigkill_during_saves_never_leaves_a_broken_config() {
    const SAVES: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("camgate.toml");
    let mut completed = 0; // saves that returned, over all runs
    let mut kills = 0;
    while completed < SAVES {
        let mut saver = Command::new(env!("CARGO_BIN_EXE_config-saver"));
        saver.arg(&path).arg(completed.to_string());
        let mut peer = Peer::spawn("config-saver", saver, dir.path());
        // Kill at a random point: anywhere from before the first save to
        // several saves in.
        std::thread::sleep(Duration::from_micros(fastrand::u64(0..30_000)));
        peer.signal(Signal::SIGKILL);
        peer.wait_exit(Duration::from_secs(10));
        kills += 1;

        let confirmed = peer
            .stdout()
            .lines()
            .filter_map(|line| line.strip_prefix("saved ")?.parse::<u64>().ok())
            .max();
        if let Some(last) = confirmed {
            completed = last + 1;
        }
        let on_disk = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if completed == 0 => {
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
                continue;
            }
            Err(e) => panic!("config vanished after {completed} saves: {e}"),
        };
        config::parse(&on_disk, &path, Overrides::default())
            .unwrap_or_else(|e| panic!("invalid config on disk after kill {kills}: {e}"));
        // The last confirmed save, or the one that was in flight.
        let candidates = [completed.checked_sub(1), Some(completed)];
        assert!(
            candidates.iter().flatten().any(|&n| on_disk == saver_config(n)),
            "after kill {kills} ({completed} saves confirmed) the file is neither of {candidates:?}:\n{on_disk}"
        );
        if on_disk == saver_config(completed) {
            completed += 1; // the in-flight save landed before the kill
        }
        // `.prev` holds the save before the current one (or, if the kill
        // came between linking it and renaming the new file, the current one).
        let current = (0..=completed)
            .rev()
            .find(|&n| on_disk == saver_config(n))
            .expect("matched above");
        if let Ok(previous) = std::fs::read_to_string(dir.path().join("camgate.toml.prev")) {
            let expected = [current.checked_sub(1), Some(current)];
            assert!(
                expected.iter().flatten().any(|&n| previous == saver_config(n)),
                "after kill {kills}, .prev is neither of {expected:?} (current is save {current}):\n{previous}"
            );
        }
    }
    assert!(
        kills >= 10,
        "only {kills} kills: the test did not interrupt saves often enough"
    );
    eprintln!("{completed} saves, {kills} SIGKILLs, config always valid");
}
