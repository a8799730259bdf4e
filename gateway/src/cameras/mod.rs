//! The camera segment's services, started, supervised and reconfigured by
//! camgate: dnsmasq (DHCP with fixed leases for `[[camera]]`, and a DNS
//! that resolves nothing) and chronyd (NTP from the appliance's clock:
//! ONVIF's WS-Security timestamps and recordings need the right time); and
//! what cameras reveal through them (leases, the names they try to resolve)
//! for `GET /api/cameras`.

pub mod chrony;
pub mod discovery;
pub mod dnsmasq;
pub mod onvif;
mod report;
pub mod rtsp_check;
pub mod snapshot;

pub use report::{CameraReport, CameraView, DiscoverError};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::config::Config;
use crate::config::network::Cameras;
use crate::daemon::{SubsystemState, SubsystemStatus};
use crate::shutdown::Drain;

const FIRST_RESTART: Duration = Duration::from_secs(1);
const MAX_RESTART: Duration = Duration::from_secs(30);
/// A dnsmasq that ran this long is healthy again: the backoff restarts.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Runs dnsmasq for the camera segment in appliance mode.
#[derive(Debug)]
pub struct CameraService {
    managed: bool,
    state_dir: PathBuf,
    dnsmasq: Option<Running>,
    chrony: Option<Running>,
    report: Arc<CameraReport>,
}

#[derive(Debug)]
struct Running {
    config: String,
    drain: Drain,
    stopped: Option<oneshot::Receiver<()>>,
}

/// A program camgate supervises for the camera segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Dnsmasq,
    Chrony,
}

impl Program {
    fn binary(self) -> &'static str {
        match self {
            Self::Dnsmasq => "dnsmasq",
            Self::Chrony => "chronyd",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Self::Dnsmasq => "dnsmasq-base",
            Self::Chrony => "chrony",
        }
    }

    fn config_file(self) -> &'static str {
        match self {
            Self::Dnsmasq => "dnsmasq.conf",
            Self::Chrony => "chrony.conf",
        }
    }

    /// Both stay in the foreground and log to stderr.
    fn args(self, config_file: &Path) -> Vec<String> {
        match self {
            Self::Dnsmasq => vec![
                "--keep-in-foreground".to_owned(),
                format!("--conf-file={}", config_file.display()),
            ],
            // -x: chronyd never sets the system clock; it serves the time
            // the appliance keeps (its own NTP client sets that).
            Self::Chrony => vec![
                "-d".to_owned(),
                "-x".to_owned(),
                "-f".to_owned(),
                config_file.display().to_string(),
            ],
        }
    }
}

impl CameraService {
    pub fn start(config: &Config, drain: &Drain) -> Self {
        let mut service = Self {
            managed: config.manages_system(),
            state_dir: config.daemon.state_dir.join("cameras"),
            dnsmasq: None,
            chrony: None,
            report: Arc::default(),
        };
        service.configure(config, drain);
        service
    }

    /// Restarts dnsmasq or chronyd where their configuration changed (a
    /// reload's commit: it cannot fail; a program that cannot start is
    /// retried and shows in the status).
    pub fn configure(&mut self, config: &Config, drain: &Drain) {
        let cameras = config.network.as_ref().and_then(|n| n.cameras.as_ref());
        let lease_file = self.state_dir.join("dnsmasq.leases");
        self.report.set_segment(cameras.map(|cameras| report::Segment {
            lease_file: lease_file.clone(),
            address: cameras.address,
            known: cameras.known.clone(),
        }));
        let cameras = cameras.filter(|_| self.managed);
        let dnsmasq = cameras.map(|c| dnsmasq::config(c, &lease_file));
        let chrony = cameras.map(|c| chrony::config(c, &self.state_dir.join("chronyd.pid")));
        let running = self.dnsmasq.take();
        self.dnsmasq = self.restart_if_changed(Program::Dnsmasq, running, dnsmasq, cameras, drain);
        let running = self.chrony.take();
        self.chrony = self.restart_if_changed(Program::Chrony, running, chrony, cameras, drain);
    }

    /// What runs `program` after this: `running` if its config is
    /// `wanted`, else a new supervisor (or none).
    fn restart_if_changed(
        &self,
        program: Program,
        running: Option<Running>,
        wanted: Option<String>,
        cameras: Option<&Cameras>,
        drain: &Drain,
    ) -> Option<Running> {
        if running.as_ref().map(|r| &r.config) == wanted.as_ref() {
            return running;
        }
        let previous = running.and_then(|mut old| {
            old.drain.stop();
            old.stopped.take()
        });
        match (wanted, cameras) {
            (Some(text), Some(cameras)) => Some(self.supervise(program, text, cameras, previous, drain)),
            _ => {
                self.report
                    .set_state(program.binary(), "not running: no [cameras] segment");
                None
            }
        }
    }

    fn supervise(
        &self,
        program: Program,
        text: String,
        cameras: &Cameras,
        previous: Option<oneshot::Receiver<()>>,
        drain: &Drain,
    ) -> Running {
        let child = drain.child();
        let (done, stopped) = oneshot::channel();
        let supervisor = Supervisor {
            program,
            config_file: self.state_dir.join(program.config_file()),
            state_dir: self.state_dir.clone(),
            text: text.clone(),
            report: Arc::clone(&self.report),
            drain: child.clone(),
        };
        let span = tracing::info_span!("camera_service", program = program.binary(), interface = %cameras.interface());
        child.spawn(
            async move {
                // The old process must have let go of its ports.
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                supervisor.run().await;
                drop(done);
            }
            .instrument(span),
        );
        Running {
            config: text,
            drain: child,
            stopped: Some(stopped),
        }
    }

    pub fn report(&self) -> Arc<CameraReport> {
        Arc::clone(&self.report)
    }

    pub fn status(&self) -> SubsystemStatus {
        let state = if self.dnsmasq.is_some() {
            SubsystemState::Running
        } else {
            SubsystemState::Disabled
        };
        let detail = if self.managed {
            self.report.state()
        } else {
            "dev mode: camgate makes no system changes".to_owned()
        };
        SubsystemStatus {
            name: "cameras",
            state,
            detail,
        }
    }
}

struct Supervisor {
    program: Program,
    config_file: PathBuf,
    state_dir: PathBuf,
    text: String,
    report: Arc<CameraReport>,
    drain: Drain,
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = FIRST_RESTART;
        loop {
            let started = Instant::now();
            match self.run_once().await {
                Ok(()) => return,
                Err(why) => {
                    tracing::warn!("{why}; restarting in {}s", backoff.as_secs());
                    self.report
                        .set_state(self.program.binary(), &format!("restarting: {why}"));
                }
            }
            if started.elapsed() >= HEALTHY_AFTER {
                backoff = FIRST_RESTART;
            }
            tokio::select! {
                () = self.drain.started() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_RESTART);
        }
    }

    /// Runs the program until it exits (an error) or camgate stops it (`Ok`).
    async fn run_once(&self) -> Result<(), String> {
        write_config(&self.state_dir, &self.config_file, &self.text)
            .map_err(|e| format!("cannot write {}: {e}", self.config_file.display()))?;
        let binary = self.program.binary();
        let mut child = tokio::process::Command::new(binary)
            .args(self.program.args(&self.config_file))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {binary} (Debian package {}): {e}",
                    self.program.package()
                )
            })?;
        self.report.set_state(self.program.binary(), "running");
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        loop {
            tokio::select! {
                () = self.drain.started() => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Ok(());
                }
                line = lines.next_line() => match line {
                    Ok(Some(line)) => self.log(&line),
                    // It closed its stderr: it is exiting.
                    Ok(None) | Err(_) => break,
                },
            }
        }
        let status = child.wait().await.map_err(|e| e.to_string())?;
        Err(format!("{binary} exited ({status})"))
    }

    fn log(&self, line: &str) {
        if let Some(query) = dnsmasq::query(line) {
            tracing::debug!(camera = %query.from, name = %query.name, kind = %query.kind, "camera DNS query");
            self.report.record_query(&query, unix_now());
        } else if ["warning", "FAILED", "failed", "Fatal", "Could not"]
            .iter()
            .any(|word| line.contains(word))
        {
            tracing::warn!("{line}");
        } else if line.contains("DHCPACK") {
            tracing::info!("{line}");
        } else {
            tracing::debug!("{line}");
        }
    }
}

fn write_config(dir: &Path, file: &Path, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(file, text)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
