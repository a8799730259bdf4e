//! Stage two: raw values → domain types with defaults filled in. Anything that
//! can be wrong about a value that has the right TOML type is checked here,
//! and the error points at the value.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::Overrides;
use super::acme::{self, Acme};
use super::auth::{self, Auth};
use super::error::Problem;
use super::forward::{self, Forwarding};
use super::network::{self, Network};
use super::proxy::{self, Proxy, Site};
use super::raw::{RawAdmin, RawConfig, RawDaemon};
use super::streams::{self, Streams};

/// The longest graceful stop we accept; systemd's `TimeoutStopSec` in
/// camgate.service must stay above it.
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Production: privileged ports; firewall and interfaces are managed and
    /// must apply, or camgate exposes nothing.
    Appliance,
    /// Developer machine: unprivileged ports, state under `./var`, and no
    /// changes to the system (firewall, interfaces).
    Dev,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Appliance => "appliance",
            Self::Dev => "dev",
        }
    }
}

/// A validated configuration. Only [`super::parse`] builds one from text.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: Daemon,
    pub admin: Admin,
    pub proxy: Proxy,
    pub sites: Vec<Site>,
    pub auth: Auth,
    /// `None`: no ACME; sites use their files or the self-signed certificate.
    pub acme: Option<Acme>,
    pub forwarding: Forwarding,
    /// `None`: no interface roles; camgate isolates nothing.
    pub network: Option<Network>,
    pub streams: Streams,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Daemon {
    pub mode: Mode,
    /// Absolute in appliance mode; may be relative to the working directory in dev mode.
    pub state_dir: PathBuf,
    /// tracing `EnvFilter` directives, already checked to parse.
    pub log: String,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Non-empty, no duplicates, no port 0.
    pub listen: Vec<SocketAddr>,
    /// A change applied from the admin API that could cut the admin off is
    /// reverted unless confirmed within this.
    pub confirm_within: Duration,
}

impl Config {
    /// The configuration of an appliance (or, with `--dev`, a developer
    /// machine) that has no config file yet.
    pub fn defaults(overrides: Overrides) -> Self {
        validate(RawConfig::default(), overrides).expect("built-in defaults are valid")
    }

    /// Whether system changes (firewall, interfaces, addresses) are allowed.
    pub fn manages_system(&self) -> bool {
        self.daemon.mode == Mode::Appliance
    }
}

pub(super) fn validate(raw: RawConfig, overrides: Overrides) -> Result<Config, Problem> {
    let mode = if overrides.dev {
        Mode::Dev
    } else {
        raw.daemon.mode.unwrap_or(Mode::Appliance)
    };
    let daemon = daemon(raw.daemon, mode)?;
    let admin = admin(raw.admin, mode)?;
    let proxy = proxy::proxy(raw.proxy, mode)?;
    let principals = auth::principals(&raw.users, &raw.tokens);
    let users = auth::users(raw.users)?;
    let sites = proxy::sites(raw.sites, &proxy, &principals, mode)?;
    let tokens = auth::tokens(raw.tokens, &sites)?;
    let sessions = auth::sessions(&raw.auth)?;
    let guard = auth::guard(raw.auth)?;
    let acme = acme::acme(raw.acme, &proxy, &sites)?;
    let forwarding = forward::forwarding(raw.forwards, raw.forwarding, &sites, mode)?;
    let network = network::network(raw.network, raw.cameras, &raw.camera_list, &forwarding)?;
    let streams = streams::streams(raw.streams, &raw.camera_list, network.as_ref(), &principals, mode)?;
    forward::check_listener_clashes(&forwarding, &admin, &proxy, &streams.listen)?;
    let config = Config {
        daemon,
        admin,
        proxy,
        sites,
        auth: Auth {
            users,
            tokens,
            guard,
            sessions,
        },
        acme,
        forwarding,
        network,
        streams,
    };
    check_listener_clashes(&config)?;
    Ok(config)
}

/// No two listeners, in one list or across lists, may compete for a port
/// (see [`crate::net::overlaps`]): one of them would fail to bind.
fn check_listener_clashes(config: &Config) -> Result<(), Problem> {
    let listeners: Vec<(&str, SocketAddr)> = [
        ("admin.listen", &config.admin.listen),
        ("proxy.https_listen", &config.proxy.https_listen),
        ("proxy.http_listen", &config.proxy.http_listen),
        ("streams.listen", &config.streams.listen),
    ]
    .into_iter()
    .flat_map(|(key, list)| list.iter().map(move |&address| (key, address)))
    .collect();
    for (i, &(key_a, a)) in listeners.iter().enumerate() {
        if let Some(&(key_b, b)) = listeners[i + 1..]
            .iter()
            .find(|(_, b)| crate::net::overlaps(a, *b))
        {
            return Err(Problem::unlocated(
                key_b,
                format!(
                    "{b} clashes with {a} in `{key_a}`: both would use port {}",
                    b.port()
                ),
            ));
        }
    }
    Ok(())
}

fn daemon(raw: RawDaemon, mode: Mode) -> Result<Daemon, Problem> {
    let state_dir = match raw.state_dir {
        None => PathBuf::from(match mode {
            Mode::Appliance => "/var/lib/camgate",
            Mode::Dev => "var/lib",
        }),
        Some(dir) => {
            let span = dir.span();
            let path = PathBuf::from(dir.into_inner());
            if path.as_os_str().is_empty() {
                return Err(Problem::new(span, "daemon.state_dir", "must not be empty"));
            }
            if mode == Mode::Appliance && !path.is_absolute() {
                return Err(Problem::new(
                    span,
                    "daemon.state_dir",
                    format!(
                        "must be an absolute path in appliance mode, got {:?}",
                        path.display()
                    ),
                ));
            }
            path
        }
    };

    let log = match raw.log {
        None => "info".to_owned(),
        Some(log) => {
            let span = log.span();
            let directives = log.into_inner();
            crate::telemetry::check_filter(&directives).map_err(|e| {
                Problem::new(
                    span,
                    "daemon.log",
                    format!("invalid log filter: {e}; expected e.g. \"info\" or \"info,camgate=debug\""),
                )
            })?
        }
    };

    let shutdown_grace = optional_duration(
        raw.shutdown_grace.as_ref(),
        "daemon.shutdown_grace",
        MAX_SHUTDOWN_GRACE,
        Duration::from_secs(10),
    )?;

    Ok(Daemon {
        mode,
        state_dir,
        log,
        shutdown_grace,
    })
}

fn admin(raw: RawAdmin, mode: Mode) -> Result<Admin, Problem> {
    let default = match mode {
        Mode::Appliance => "0.0.0.0:8080",
        Mode::Dev => "127.0.0.1:8080",
    };
    let listen = socket_addresses(
        raw.listen,
        "admin.listen",
        default,
        "the admin interface, which is how camgate is set up",
    )?;
    let confirm_within = optional_duration(
        raw.confirm_within.as_ref(),
        "admin.confirm_within",
        MAX_CONFIRM_WITHIN,
        Duration::from_secs(60),
    )?;
    if confirm_within < MIN_CONFIRM_WITHIN {
        let span = raw.confirm_within.as_ref().map_or(0..0, Spanned::span);
        return Err(Problem::new(
            span,
            "admin.confirm_within",
            "too short to confirm a change from a browser; the minimum is 2s",
        ));
    }
    Ok(Admin {
        listen,
        confirm_within,
    })
}

/// Bounds of `[admin] confirm_within`: a person must manage to confirm,
/// and a locked-out one must not wait long for the revert.
const MIN_CONFIRM_WITHIN: Duration = Duration::from_secs(2);
const MAX_CONFIRM_WITHIN: Duration = Duration::from_secs(600);

/// A non-empty list of distinct `IP:PORT`s, or `[default]`. `what` says
/// what listens there, for the empty-list error.
pub(super) fn socket_addresses(
    raw: Option<Spanned<Vec<Spanned<String>>>>,
    key: &str,
    default: &str,
    what: &str,
) -> Result<Vec<SocketAddr>, Problem> {
    let Some(listen) = raw else {
        return Ok(vec![default.parse().expect("valid default address")]);
    };
    let list_span = listen.span();
    let entries = listen.into_inner();
    if entries.is_empty() {
        return Err(Problem::new(
            list_span,
            key,
            format!("needs at least one address for {what}"),
        ));
    }
    let mut seen = HashSet::new();
    let mut addresses = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("{key}[{i}]");
        let address = socket_address(entry, &key)?;
        if !seen.insert(address) {
            return Err(Problem::new(
                entry.span(),
                key,
                format!("{address} is listed twice"),
            ));
        }
        addresses.push(address);
    }
    Ok(addresses)
}

fn socket_address(value: &Spanned<String>, key: &str) -> Result<SocketAddr, Problem> {
    let address: SocketAddr = value.get_ref().parse().map_err(|_| {
        Problem::new(
            value.span(),
            key,
            format!(
                "invalid address {:?}: expected IP:PORT such as \"0.0.0.0:8080\" or \"[::]:8080\" \
                 (host names are not resolved)",
                value.get_ref()
            ),
        )
    })?;
    if address.port() == 0 {
        return Err(Problem::new(
            value.span(),
            key,
            "port 0 would pick a random port; choose a fixed port",
        ));
    }
    Ok(address)
}

/// [`duration`], or `default` when the key is absent.
pub(super) fn optional_duration(
    value: Option<&Spanned<String>>,
    key: &str,
    max: Duration,
    default: Duration,
) -> Result<Duration, Problem> {
    value.map_or(Ok(default), |value| duration(value, key, max))
}

pub(super) fn duration(value: &Spanned<String>, key: &str, max: Duration) -> Result<Duration, Problem> {
    let parsed = humantime::parse_duration(value.get_ref()).map_err(|e| {
        Problem::new(
            value.span(),
            key,
            format!(
                "invalid duration {:?} ({e}); expected e.g. \"10s\" or \"1m 30s\"",
                value.get_ref()
            ),
        )
    })?;
    if parsed > max {
        return Err(Problem::new(
            value.span(),
            key,
            format!(
                "{} is too long; the maximum is {}",
                value.get_ref(),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(parsed)
}
