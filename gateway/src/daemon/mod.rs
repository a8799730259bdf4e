//! The daemon: starts every subsystem from one validated config, reloads
//! them together, and drains them together.
//!
//! Reload is two-phase. Each subsystem first *prepares* everything the new
//! config needs (binds sockets, parses certificates, builds rulesets)
//! without touching what runs; only when all have prepared does each
//! *commit*. Any failure leaves the old state running and is reported in
//! the log, in `/api/status` and in the metrics. Later subsystems follow the
//! same `prepare` → `commit` shape as [`AdminServer`].

pub(crate) mod notify;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::acme::AcmeService;
use crate::acme::ca::CaError;
use crate::admin::{self, AdminServer, AppState, Metrics};
use crate::auth::{AuthShared, Sessions};
use crate::cameras::CameraService;
use crate::clock::{unix_now, unix_now_f64};
use crate::config::store::ConfigStore;
use crate::config::{Config, ConfigError, ConfigSource, Loaded, Mode};
use crate::firewall::{Firewall, FirewallError, Nft};
use crate::forward::{ForwardError, ForwardService, ReloadFailure};
use crate::net::{self, ListenError};
use crate::proxy::server::{self, ProxyError, ProxyServer};
use crate::setup;
use crate::shutdown::Drain;
use crate::streams::{RetinaOpener, StreamService, StreamStatusSource};
use crate::telemetry::LogControl;
use crate::tls::{self, CertResolver, CertTable, TlsError};

/// Browser sessions, under the state dir (0600).
const SESSIONS_FILE: &str = "sessions.json";

/// Sockets bound before the daemon starts: by `main` from the config, or by
/// a test on `127.0.0.1:0`. `admin[i]` serves `config.admin.listen[i]`,
/// likewise `https` and `http` for `[proxy]`.
#[derive(Debug)]
pub struct Listeners {
    pub admin: Vec<std::net::TcpListener>,
    pub https: Vec<std::net::TcpListener>,
    pub http: Vec<std::net::TcpListener>,
}

impl Listeners {
    pub fn bind(config: &Config) -> Result<Self, ListenError> {
        let bind_all = |kind, addresses: &[SocketAddr]| {
            addresses
                .iter()
                .map(|&address| net::bind(kind, address))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            admin: bind_all(admin::LISTENER, &config.admin.listen)?,
            https: bind_all(server::HTTPS_LISTENER, &config.proxy.https_listen)?,
            http: bind_all(server::HTTP_LISTENER, &config.proxy.http_listen)?,
        })
    }
}

/// What the daemon starts from.
#[derive(Debug)]
pub struct Startup {
    pub source: ConfigSource,
    pub loaded: Loaded,
    pub log: LogControl,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create state directory {}: {source}", path.display())]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    SetupCode(#[from] setup::SetupCodeError),
    #[error("{given} {kind} listener(s) given for {configured} configured address(es)")]
    ListenerCount {
        kind: &'static str,
        given: usize,
        configured: usize,
    },
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Acme(#[from] CaError),
    #[error("cannot apply the firewall, so camgate exposes nothing: {0}")]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

impl ReloadError {
    /// One line, without config text.
    pub fn summary(&self) -> String {
        match self {
            Self::Config(e) => e.summary(),
            other => other.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("`{key}` changed; restart camgate to apply it")]
    NeedsRestart { key: &'static str },
    #[error("the config file is gone; keeping the running configuration")]
    ConfigRemoved,
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Acme(#[from] CaError),
    #[error(transparent)]
    Forward(#[from] ReloadFailure),
    #[error("the firewall kept its previous rules: {0}")]
    Firewall(#[from] FirewallError),
    #[error("cannot apply: {0}")]
    Io(#[from] std::io::Error),
}

/// The daemon's state as `/api/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonStatus {
    pub mode: Mode,
    pub setup: bool,
    pub config_path: PathBuf,
    /// 1 at start, +1 per successful reload.
    pub generation: u64,
    pub last_reload: Option<ReloadReport>,
    pub system_changes: SystemChanges,
    pub subsystems: Vec<SubsystemStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub ok: bool,
    pub unix_time: u64,
    pub error: Option<String>,
}

/// Whether camgate may change the system (firewall, interfaces). Subsystems
/// that need to must check this, and in appliance mode fail closed when
/// they cannot apply.
#[derive(Debug, Clone, Serialize)]
pub struct SystemChanges {
    pub enabled: bool,
    pub reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubsystemStatus {
    pub name: &'static str,
    pub state: SubsystemState,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubsystemState {
    Running,
    Disabled,
}

/// What a reload asked through [`ReloadHandle`] answers: the new generation,
/// or why the running configuration stays.
type ReloadReply = oneshot::Sender<Result<u64, String>>;

/// Lets the admin API apply a config it saved: the daemon's own loop
/// reloads, one reload at a time as on SIGHUP.
#[derive(Debug, Clone)]
pub struct ReloadHandle(mpsc::Sender<ReloadReply>);

/// Why a [`ReloadHandle::reload`] did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskedReloadFailure {
    #[error("camgate is stopping")]
    Stopping,
    /// The reload's one-line error; the previous config keeps running.
    #[error("{0}")]
    Refused(String),
}

impl ReloadHandle {
    pub async fn reload(&self) -> Result<u64, AskedReloadFailure> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(reply)
            .await
            .map_err(|_| AskedReloadFailure::Stopping)?;
        answer
            .await
            .map_err(|_| AskedReloadFailure::Stopping)?
            .map_err(AskedReloadFailure::Refused)
    }
}

/// A started daemon. [`run`] drives it from signals; tests may drive it
/// directly.
#[derive(Debug)]
pub struct Daemon {
    source: ConfigSource,
    config: Config,
    setup: bool,
    log: LogControl,
    drain: Drain,
    admin: AdminServer,
    proxy: ProxyServer,
    acme: AcmeService,
    forwards: ForwardService,
    cameras: CameraService,
    streams: StreamService,
    auth: Arc<AuthShared>,
    status: watch::Sender<DaemonStatus>,
    metrics: Arc<Metrics>,
    reload_requests: mpsc::Receiver<ReloadReply>,
    /// The config that runs, for the admin API to compare changes with.
    running: watch::Sender<Arc<Config>>,
}

impl Daemon {
    pub fn start(
        startup: Startup,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> Result<Self, DaemonError> {
        let Startup {
            source,
            loaded: Loaded { config, setup },
            log,
        } = startup;
        for (kind, given, configured) in [
            ("admin", listeners.admin.len(), config.admin.listen.len()),
            ("HTTPS", listeners.https.len(), config.proxy.https_listen.len()),
            ("HTTP", listeners.http.len(), config.proxy.http_listen.len()),
        ] {
            if given != configured {
                return Err(DaemonError::ListenerCount {
                    kind,
                    given,
                    configured,
                });
            }
        }
        create_state_dir(&config.daemon.state_dir)?;
        if !config.manages_system() {
            tracing::info!("dev mode: camgate will not change the firewall or network interfaces");
        }

        // First: in appliance mode nothing listens before the firewall
        // applies (fail closed).
        let firewall = Firewall::start(&config, Arc::new(Nft))?;
        let drain = Drain::new(shutdown);
        let started = Instant::now();
        let stream_status = Arc::new(StreamStatusSource::new(Arc::new(RetinaOpener::default())));
        let metrics = Arc::new(Metrics::new(unix_now_f64(), Arc::clone(&stream_status)));
        let (status, status_rx) = watch::channel(DaemonStatus {
            mode: config.daemon.mode,
            setup,
            config_path: source.path.clone(),
            generation: 1,
            last_reload: None,
            system_changes: system_changes(&config),
            subsystems: Vec::new(),
        });
        // Bans also go into the firewall's ban sets (appliance mode).
        let auth = Arc::new(AuthShared::new(
            &config.auth,
            Sessions::load(config.daemon.state_dir.join(SESSIONS_FILE)),
            firewall.ban_sink(),
        ));
        drain.spawn(Arc::clone(&auth).keep_sessions_saved(drain.clone()));
        let challenges = Arc::default();
        let table = CertTable::load(&config.sites, &config.daemon.state_dir, &tls::local_addresses())?;
        if let Some(self_signed) = &table.status().self_signed {
            tracing::info!(sha256 = %self_signed.sha256, path = %self_signed.path.display(),
                "self-signed certificate for sites without another; browsers show this SHA-256 fingerprint");
        }
        let resolver = Arc::new(CertResolver::new(table, Arc::clone(&challenges)));
        let acme = AcmeService::start(&config, Arc::clone(&resolver), Arc::clone(&challenges), &drain)?;
        let forwards = ForwardService::start(&config, firewall, &drain)?;
        // After the firewall: the camera NIC is isolated and addressed.
        let cameras = CameraService::start(&config, &drain);
        if config.manages_system() {
            crate::firewall::nflog::spawn(cameras.report(), &drain);
        }
        let streams = StreamService::start(&config, &auth, stream_status, &drain)?;
        let (reload_handle, reload_requests) = mpsc::channel(4);
        let reload_handle = ReloadHandle(reload_handle);
        let store = Arc::new(ConfigStore::new(source.path.clone(), source.overrides));
        let claims = admin::claim::Claims::new(
            Arc::clone(&store),
            config.daemon.state_dir.clone(),
            reload_handle.clone(),
        );
        let (running, running_rx) = watch::channel(Arc::new(config.clone()));
        let applier = admin::apply::Applier::new(store, reload_handle, running_rx);
        let router = admin::router(AppState {
            status: status_rx,
            auth: Arc::clone(&auth),
            metrics: Arc::clone(&metrics),
            started,
            host_names: Arc::new(admin::default_host_names()),
            certificates: Arc::clone(&resolver),
            acme: acme.host_status(),
            forwards: forwards.status_source(),
            cameras: cameras.report(),
            streams: streams.status_source(),
            claims: Arc::new(claims),
            applier: Arc::new(applier),
        });
        let admin = AdminServer::start(
            config.admin.listen.iter().copied().zip(listeners.admin).collect(),
            router,
            &drain,
        )?;
        let proxy = ProxyServer::start(
            &config,
            config
                .proxy
                .https_listen
                .iter()
                .copied()
                .zip(listeners.https)
                .collect(),
            config
                .proxy
                .http_listen
                .iter()
                .copied()
                .zip(listeners.http)
                .collect(),
            &auth,
            resolver,
            &challenges,
            &drain,
        )?;

        let daemon = Self {
            source,
            config,
            setup,
            log,
            drain,
            admin,
            proxy,
            acme,
            forwards,
            cameras,
            streams,
            auth,
            status,
            metrics,
            reload_requests,
            running,
        };
        daemon.publish_status(1);
        if daemon.setup {
            daemon.announce_setup()?;
        } else {
            // Set up while stopped (a config put in place from outside): the
            // code from the setup-mode run is void.
            setup::remove_code(&daemon.config.daemon.state_dir);
            for url in admin_urls(&daemon.admin.local_addrs()) {
                tracing::info!("camgate admin interface: {url}");
            }
        }
        notify::spawn_watchdog();
        notify::ready(&daemon.status_line());
        tracing::info!(
            generation = 1,
            mode = daemon.config.daemon.mode.as_str(),
            "camgate ready"
        );
        Ok(daemon)
    }

    /// Re-reads the config and applies it whole, or not at all.
    pub async fn reload(&mut self) -> Result<u64, ReloadError> {
        notify::reloading();
        let result = self.try_reload().await;
        let generation = self.status.borrow().generation;
        let report = match &result {
            Ok(generation) => {
                self.metrics.reload(true);
                tracing::info!(generation, "configuration reloaded");
                ReloadReport {
                    ok: true,
                    unix_time: unix_now(),
                    error: None,
                }
            }
            Err(e) => {
                self.metrics.reload(false);
                // One line: journald keeps the priority, and the status API
                // never shows config text (`check-config` shows the snippet).
                let summary = e.summary();
                tracing::error!(
                    generation,
                    "reload failed; still running the previous configuration: {summary}"
                );
                ReloadReport {
                    ok: false,
                    unix_time: unix_now(),
                    error: Some(summary),
                }
            }
        };
        self.status
            .send_modify(|status| status.last_reload = Some(report));
        notify::ready(&self.status_line());
        result
    }

    async fn try_reload(&mut self) -> Result<u64, ReloadError> {
        let source = self.source.clone();
        let loaded = tokio::task::spawn_blocking(move || source.load())
            .await
            .map_err(|e| std::io::Error::other(format!("config loader panicked: {e}")))??;
        if loaded.setup && !self.setup {
            return Err(ReloadError::ConfigRemoved);
        }
        let new = loaded.config;
        if new.daemon.mode != self.config.daemon.mode {
            return Err(ReloadError::NeedsRestart { key: "daemon.mode" });
        }
        if new.daemon.state_dir != self.config.daemon.state_dir {
            return Err(ReloadError::NeedsRestart {
                key: "daemon.state_dir",
            });
        }

        // Prepare every subsystem; nothing running has changed yet.
        let admin = self.admin.prepare(&new.admin)?;
        let proxy = self.proxy.prepare(&new)?;
        let acme = self.acme.prepare(&new)?;
        let mut forwards = self.forwards.prepare(&new)?;
        let streams = self.streams.prepare(&new)?;

        // Commit. The firewall first: it is the one step that can fail, and
        // nothing else has changed yet when it does.
        self.forwards.apply_firewall(&mut forwards)?;
        self.admin.commit(admin, &self.drain).await;
        self.auth.configure(&new.auth);
        self.proxy.commit(proxy, &self.drain).await;
        self.acme.commit(acme);
        self.forwards.commit(forwards, &self.drain);
        self.cameras.configure(&new, &self.drain);
        self.streams.commit(streams, &self.drain).await;
        self.log.apply(&new.daemon.log);
        self.running.send_replace(Arc::new(new.clone()));
        self.config = new;
        if self.setup && !loaded.setup {
            setup::remove_code(&self.config.daemon.state_dir);
        }
        self.setup = loaded.setup;
        let generation = self.status.borrow().generation + 1;
        self.publish_status(generation);
        Ok(generation)
    }

    /// Drains everything, at most for the configured grace period.
    pub async fn stop(self) {
        let grace = self.config.daemon.shutdown_grace;
        notify::stopping("draining connections");
        tracing::info!(grace = ?grace, "draining; send SIGTERM or SIGINT again to stop at once");
        let drained = self.drain.finish(grace).await;
        self.forwards.stop();
        match drained {
            Ok(()) => tracing::info!("drained; bye"),
            Err(e) => tracing::warn!("{e}; stopping anyway"),
        }
        notify::flush(std::time::Duration::from_secs(1));
    }

    fn publish_status(&self, generation: u64) {
        let mut subsystems = vec![
            self.admin.status(),
            self.proxy.status(),
            self.acme.status(),
            self.forwards.firewall().status(),
            self.forwards.status(),
            self.cameras.status(),
            self.streams.status(),
        ];
        if !self.config.manages_system() {
            subsystems.push(SubsystemStatus {
                name: "interfaces",
                state: SubsystemState::Disabled,
                detail: "dev mode: camgate makes no system changes".to_owned(),
            });
        }
        self.status.send_modify(|status| {
            status.setup = self.setup;
            status.generation = generation;
            status.subsystems = subsystems;
        });
        self.metrics.config_applied(generation, self.setup);
    }

    fn status_line(&self) -> String {
        let status = self.status.borrow();
        let state = if status.setup {
            "waiting for setup"
        } else {
            "running"
        };
        let addrs: Vec<String> = self.admin.local_addrs().iter().map(ToString::to_string).collect();
        format!(
            "{state}; generation {}; admin on {}",
            status.generation,
            addrs.join(", ")
        )
    }

    fn announce_setup(&self) -> Result<(), DaemonError> {
        let code = setup::ensure_code(&self.config.daemon.state_dir)?;
        tracing::warn!(
            "camgate is not set up yet (no config at {}). Open {} in a browser on this network; \
             setup code: {}",
            self.source.path.display(),
            admin_urls(&self.admin.local_addrs()).join(" or "),
            code.as_str(),
        );
        Ok(())
    }
}

/// Runs the daemon until `shutdown` is cancelled, reloading on SIGHUP, then
/// drains.
pub async fn run(
    startup: Startup,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    // Before READY=1: SIGHUP's default action is to terminate.
    let mut hangups = signal(SignalKind::hangup())?;
    let mut daemon = Daemon::start(startup, listeners, shutdown.clone())?;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
                        _ = hangups.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                // Failures are logged and reported by `reload`. A reload stuck
                // on a slow file system must not delay a stop: the staged
                // state is dropped and the running state drains.
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = daemon.reload() => {}
                }
            }
            Some(reply) = daemon.reload_requests.recv() => {
                tracing::info!("reloading the configuration the admin API saved");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    result = daemon.reload() => {
                        // The asker may have gone (client disconnected): the reload stands.
                        let _ = reply.send(result.map_err(|e| e.summary()));
                    }
                }
            }
        }
    }
    // Reloads asked from now on fail at once ("stopping") instead of
    // waiting out the drain.
    daemon.reload_requests.close();
    while let Ok(reply) = daemon.reload_requests.try_recv() {
        drop(reply); // the asker sees "stopping"
    }
    daemon.stop().await;
    Ok(())
}

fn system_changes(config: &Config) -> SystemChanges {
    if config.manages_system() {
        SystemChanges {
            enabled: true,
            reason: None,
        }
    } else {
        SystemChanges {
            enabled: false,
            reason: Some("dev mode"),
        }
    }
}

/// Creates the state directory, and makes it private whoever created it.
fn create_state_dir(path: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let error = |source| DaemonError::StateDir {
        path: path.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(error)
}

/// URLs a person can open; a wildcard address becomes the host's name.
fn admin_urls(addrs: &[SocketAddr]) -> Vec<String> {
    addrs
        .iter()
        .map(|addr| {
            if addr.ip().is_unspecified() {
                format!("http://<this machine's address>:{}/", addr.port())
            } else {
                format!("http://{addr}/")
            }
        })
        .collect()
}
