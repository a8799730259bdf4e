//! The real `camgate` binary under test: a temp dir with its config, a
//! `NOTIFY_SOCKET` the test owns (so readiness is what systemd would see),
//! and a [`Peer`] guard.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::netns::Netns;
use crate::process::Peer;

/// How long camgate may take to report READY (debug build, busy machine).
pub const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The `camgate` binary: `$CAMGATE_BIN`, else next to this test executable
/// (`target/<profile>/camgate`, which `cargo test --workspace` builds).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CAMGATE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps");
    let path = profile_dir.join("camgate");
    assert!(
        path.is_file(),
        "{} not found: build it first (`cargo build --workspace`) or set CAMGATE_BIN",
        path.display()
    );
    path
}

/// A `NOTIFY_SOCKET` endpoint: every datagram camgate sends, in order,
/// read as they come by a thread of its own (as systemd reads its socket:
/// camgate must never wait for the test to look).
#[derive(Debug)]
pub struct NotifySocket {
    path: PathBuf,
    inbox: Arc<Inbox>,
    /// How many of the received messages `wait_for` has gone past.
    seen: usize,
}

#[derive(Debug, Default)]
struct Inbox {
    messages: Mutex<Vec<String>>,
    arrived: Condvar,
}

impl NotifySocket {
    pub fn bind(path: PathBuf) -> Self {
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        let inbox = Arc::new(Inbox::default());
        let filling = Arc::clone(&inbox);
        // Ends when the socket file's directory goes (recv fails) or the
        // process does; a reader per camgate started.
        std::thread::spawn(move || {
            let mut buf = vec![0; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                filling.messages.lock().unwrap().push(message);
                filling.arrived.notify_all();
            }
        });
        Self { path, inbox, seen: 0 }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All messages so far.
    pub fn received(&self) -> Vec<String> {
        self.inbox.messages.lock().unwrap().clone()
    }

    /// Waits for the next message (after those already returned) that has
    /// the line `line`, e.g. `READY=1`, and returns it whole.
    pub fn wait_for(&mut self, line: &str, deadline: Duration) -> String {
        self.try_wait_for(line, deadline).unwrap_or_else(|| {
            panic!(
                "no {line} from camgate within {deadline:?}; got {:?}",
                self.received()
            )
        })
    }

    /// Passes over every message received so far: the next wait is for
    /// what comes after (a restarted camgate's, not its predecessor's).
    pub fn skip_received(&mut self) {
        self.seen = self.inbox.messages.lock().unwrap().len();
    }

    /// Like [`Self::wait_for`], but `None` when `deadline` passes.
    pub fn try_wait_for(&mut self, line: &str, deadline: Duration) -> Option<String> {
        let start = Instant::now();
        let mut messages = self.inbox.messages.lock().unwrap();
        loop {
            while self.seen < messages.len() {
                let message = &messages[self.seen];
                self.seen += 1;
                if message.lines().any(|l| l == line) {
                    return Some(message.clone());
                }
            }
            let left = deadline.checked_sub(start.elapsed())?;
            messages = self.inbox.arrived.wait_timeout(messages, left).unwrap().0;
        }
    }
}

/// A running camgate.
#[derive(Debug)]
pub struct Camgate {
    pub peer: Peer,
    pub notify: NotifySocket,
    pub config_path: PathBuf,
    // Dropped last: holds the config, the logs and the state dir.
    pub dir: TempDir,
}

/// How to start camgate.
#[derive(Debug, Default)]
pub struct Launch<'a> {
    /// Run inside this namespace (else in the test's own).
    pub netns: Option<&'a Netns>,
    /// Written to `<dir>/camgate.toml` and passed with `--config`; `None`
    /// runs `camgate run --dev` without a config (setup mode).
    pub config: Option<String>,
    pub env: Vec<(&'a str, String)>,
    /// Without a config: run as the appliance does (`camgate run`, appliance
    /// mode, default paths), in setup mode. Its `/etc/camgate` and
    /// `/var/lib/camgate` are the run directory's `etc` and `state`, bound
    /// over the real ones in a mount namespace of its own.
    pub appliance_setup: bool,
}

/// `camgate run` in `dir` (inside `netns` if given), reporting to `notify`;
/// the caller adds `--config` or `--dev`.
fn run_command(netns: Option<&Netns>, dir: &Path, notify: &NotifySocket) -> Command {
    let binary = binary();
    let mut command = match netns {
        Some(netns) => netns.command(&binary),
        None => Command::new(&binary),
    };
    command
        .arg("run")
        .current_dir(dir)
        .env("NOTIFY_SOCKET", notify.path())
        .env_remove("RUST_LOG");
    command
}

/// `camgate run` with the appliance's default paths, which a private mount
/// namespace points at `dir/etc` and `dir/state` (the mount points are
/// created on the host if missing, and left empty there).
fn appliance_command(netns: Option<&Netns>, dir: &Path, notify: &NotifySocket) -> Command {
    let mut command = match netns {
        Some(netns) => netns.command("unshare"),
        None => Command::new("unshare"),
    };
    for (inside, outside) in [("/etc/camgate", "etc"), ("/var/lib/camgate", "state")] {
        std::fs::create_dir_all(inside).expect("a mount point");
        std::fs::create_dir_all(dir.join(outside)).expect("a run directory");
    }
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1\" /etc/camgate && mount --bind \"$2\" /var/lib/camgate && exec \"$3\" run")
        .arg("sh")
        .arg(dir.join("etc"))
        .arg(dir.join("state"))
        .arg(binary())
        .current_dir(dir)
        .env("NOTIFY_SOCKET", notify.path())
        .env_remove("RUST_LOG");
    command
}

impl Camgate {
    /// camgate's self-signed certificate, for a config with
    /// `state_dir = "state"` (relative to the run directory).
    pub fn self_signed_certificate(&self) -> PathBuf {
        camgate::tls::self_signed_certificate_path(&self.dir.path().join("state"))
    }

    /// Starts camgate and waits for READY=1; panics with its log if it
    /// exits first or takes too long.
    pub fn start(launch: Launch<'_>) -> Self {
        let Launch {
            netns,
            config,
            env,
            appliance_setup,
        } = launch;
        let dir = tempfile::Builder::new()
            .prefix("camgate-test-")
            .tempdir()
            .expect("tempdir");
        let mut config_path = dir.path().join("camgate.toml");
        let notify = NotifySocket::bind(dir.path().join("notify.sock"));
        let mut command = run_command(netns, dir.path(), &notify);
        match config {
            Some(text) => {
                std::fs::write(&config_path, text).expect("write config");
                command.arg("--config").arg(&config_path);
            }
            None if appliance_setup => {
                config_path = dir.path().join("etc/camgate.toml");
                command = appliance_command(netns, dir.path(), &notify);
            }
            None => {
                command.arg("--dev");
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let peer = Peer::spawn("camgate", command, dir.path());
        let mut camgate = Self {
            peer,
            notify,
            config_path,
            dir,
        };
        camgate.wait_notify("READY=1");
        camgate
    }

    /// Waits for a notify message with `line`; panics with camgate's log if
    /// it exits first or takes longer than [`READY_DEADLINE`].
    pub fn wait_notify(&mut self, line: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(status) = self.peer.try_exit() {
                panic!(
                    "camgate exited ({status}) while the test waited for {line}:\n{}",
                    self.peer.stderr()
                );
            }
            assert!(
                start.elapsed() < READY_DEADLINE,
                "no {line} from camgate within {READY_DEADLINE:?}:\n{}",
                self.peer.stderr()
            );
            // Short waits so an early exit is noticed promptly.
            if let Some(message) = self.notify.try_wait_for(line, Duration::from_millis(200)) {
                return message;
            }
        }
    }

    /// Stops camgate with SIGTERM and starts it again on the same config
    /// and state dir (in `netns`, as before); waits for READY=1. The new
    /// process logs to `camgate-restarted.stderr`.
    pub fn restart(&mut self, netns: Option<&Netns>) {
        self.peer.signal(Signal::SIGTERM);
        let status = self.peer.wait_exit(Duration::from_secs(30));
        assert!(
            status.success(),
            "camgate exited with {status}:\n{}",
            self.peer.stderr()
        );
        self.notify.skip_received();
        let mut command = run_command(netns, self.dir.path(), &self.notify);
        command.arg("--config").arg(&self.config_path);
        self.peer = Peer::spawn("camgate-restarted", command, self.dir.path());
        self.wait_notify("READY=1");
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// SIGHUP, then waits for RELOADING=1 and the READY=1 that ends the
    /// reload (sent whether it succeeded or not). Returns the READY message.
    pub fn reload(&mut self) -> String {
        self.peer.signal(Signal::SIGHUP);
        self.wait_notify("RELOADING=1");
        self.wait_notify("READY=1")
    }

    pub fn stderr(&self) -> String {
        self.peer.stderr()
    }

    pub fn signal(&self, signal: Signal) {
        self.peer.signal(signal);
    }

    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        self.peer.wait_exit(deadline)
    }
}

/// `camgate explain --json` for `request` ("METHOD TARGET") from `from`.
pub fn explain_json(config: &Path, site: &str, from: &str, request: &str) -> serde_json::Value {
    let output = Command::new(binary())
        .arg("explain")
        .arg("--config")
        .arg(config)
        .args(["--site", site, "--from", from, "--json", request])
        .output()
        .expect("run camgate explain");
    assert!(
        output.status.success(),
        "explain {request:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("explain prints JSON")
}
