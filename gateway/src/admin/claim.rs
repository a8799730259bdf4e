//! Claiming a fresh appliance: the one-time setup code (console, boot
//! partition, log), typed in from the LAN, creates the first admin user.
//! The config file exists from then on, so setup mode is over for good.
//!
//! Only from a network camgate is on itself (not routed, not the cameras'),
//! failures limited per client and overall, and the code expires
//! ([`crate::setup::CODE_LIFETIME`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;

use super::{AppState, api_error};
use crate::config::store::{ConfigStore, StoreError};
use crate::daemon::ReloadHandle;
use crate::setup::{self, CodeCheck};

/// Wrong codes a client may try per window, and all clients together.
const CLIENT_FAILURES: u32 = 5;
const TOTAL_FAILURES: u32 = 30;
const WINDOW: Duration = Duration::from_secs(10 * 60);
/// Clients remembered; beyond this only the total counts.
const MAX_CLIENTS: usize = 4096;
/// The first admin's password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// What a claim needs from the daemon.
#[derive(Debug)]
pub struct Claims {
    store: ConfigStore,
    state_dir: PathBuf,
    reload: ReloadHandle,
    /// Never a place a claim may come from, even if on-link.
    camera_network: Option<IpNet>,
    failures: Mutex<Failures>,
    /// One claim at a time: the second sees that setup is over.
    claiming: tokio::sync::Mutex<()>,
}

impl Claims {
    pub fn new(store: ConfigStore, config: &crate::config::Config, reload: ReloadHandle) -> Self {
        let camera_network = config
            .network
            .as_ref()
            .and_then(|n| n.cameras.as_ref())
            .map(|c| IpNet::V4(c.address.trunc()));
        Self {
            store,
            state_dir: config.daemon.state_dir.clone(),
            reload,
            camera_network,
            failures: Mutex::default(),
            claiming: tokio::sync::Mutex::new(()),
        }
    }
}

/// Failed attempts in the current window: per client, and in total.
#[derive(Debug, Default)]
struct Failures {
    clients: HashMap<IpAddr, Window>,
    total: Window,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    start: Option<Instant>,
    count: u32,
}

impl Window {
    fn current(&mut self, now: Instant) -> &mut Self {
        if self.start.is_none_or(|start| now.duration_since(start) >= WINDOW) {
            *self = Self {
                start: Some(now),
                count: 0,
            };
        }
        self
    }

    /// How long until the window ends.
    fn left(&self, now: Instant) -> Duration {
        self.start.map_or(Duration::ZERO, |start| {
            WINDOW.saturating_sub(now.duration_since(start))
        })
    }
}

impl Failures {
    /// `Err(wait)` while the client, or everyone, has used up the window.
    fn admit(&mut self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let total = self.total.current(now);
        if total.count >= TOTAL_FAILURES {
            return Err(total.left(now));
        }
        if let Some(window) = self.clients.get_mut(&client) {
            let window = window.current(now);
            if window.count >= CLIENT_FAILURES {
                return Err(window.left(now));
            }
        }
        Ok(())
    }

    fn record(&mut self, client: IpAddr, now: Instant) {
        self.total.current(now).count += 1;
        if self.clients.len() >= MAX_CLIENTS && !self.clients.contains_key(&client) {
            self.clients
                .retain(|_, w| w.start.is_some_and(|s| now.duration_since(s) < WINDOW));
            if self.clients.len() >= MAX_CLIENTS {
                return;
            }
        }
        self.clients.entry(client).or_default().current(now).count += 1;
    }
}

/// True for the machine itself, and for addresses on a network one of its
/// interfaces is on (not loopback, not the cameras'): someone in the
/// building, not someone whose packets a router forwarded.
fn on_link(client: IpAddr, networks: &[IpNet], camera_network: Option<IpNet>) -> bool {
    if client.is_loopback() {
        return true;
    }
    if camera_network.is_some_and(|cameras| cameras.contains(&client)) {
        return false;
    }
    networks.iter().any(|net| net.contains(&client))
}

/// The networks of this machine's non-loopback interfaces.
fn local_networks() -> Vec<IpNet> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter(|interface| {
            !interface
                .flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|interface| {
            let (address, netmask) = (interface.address?, interface.netmask?);
            if let (Some(ip), Some(mask)) = (address.as_sockaddr_in(), netmask.as_sockaddr_in()) {
                return IpNet::with_netmask(IpAddr::V4(ip.ip()), IpAddr::V4(mask.ip())).ok();
            }
            let (ip, mask) = (address.as_sockaddr_in6()?, netmask.as_sockaddr_in6()?);
            IpNet::with_netmask(IpAddr::V6(ip.ip()), IpAddr::V6(mask.ip())).ok()
        })
        .collect()
}

/// The first config: the claiming admin, every other key at its default.
fn claimed_config(user: &str, password_hash: &str) -> String {
    let quoted = |text: &str| toml::Value::String(text.to_owned()).to_string();
    format!(
        "# camgate's configuration, begun when {user} claimed this appliance with its setup code.\n\
         # Keys not set here have their defaults: see the reference configuration\n\
         # (/usr/share/doc/camgate/camgate.toml on the appliance).\n\
         \n\
         [[user]]\n\
         name = {}\n\
         password_hash = {}\n\
         role = \"admin\"\n",
        quoted(user),
        quoted(password_hash),
        user = user.escape_debug(),
    )
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClaimRequest {
    code: String,
    user: String,
    password: String,
}

/// `POST /api/setup/claim`.
pub(super) async fn claim(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    body: Result<Json<ClaimRequest>, JsonRejection>,
) -> Response {
    let client = client.ip().to_canonical();
    let claims = Arc::clone(&state.claims);
    if !state.status.borrow().setup {
        return api_error(
            StatusCode::GONE,
            "camgate is set up already: sign in as an admin user",
        );
    }
    let networks = tokio::task::spawn_blocking(local_networks)
        .await
        .unwrap_or_default();
    if !on_link(client, &networks, claims.camera_network) {
        tracing::warn!(target: "camgate::audit", event = "claim", outcome = "off-lan", client.addr = %client,
            "setup code offered from outside camgate's networks: refused");
        return api_error(
            StatusCode::FORBIDDEN,
            format!(
                "the setup code is accepted only from the network camgate is on; {client} is not on it \
                 (use a computer plugged into the same router or switch)"
            ),
        );
    }
    let now = Instant::now();
    if let Err(wait) = lock(&claims.failures).admit(client, now) {
        return too_many(wait);
    }
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return api_error(rejection.status(), rejection.body_text()),
    };
    let _one_at_a_time = claims.claiming.lock().await;
    if !state.status.borrow().setup {
        return api_error(
            StatusCode::GONE,
            "camgate is set up already: sign in as an admin user",
        );
    }

    let state_dir = claims.state_dir.clone();
    let code = request.code.clone();
    let check =
        tokio::task::spawn_blocking(move || setup::check_code(&state_dir, &code, SystemTime::now())).await;
    let refusal = match check {
        Ok(Ok(CodeCheck::Valid)) => None,
        Ok(Ok(CodeCheck::Wrong)) => Some(
            "wrong setup code: it is on the screen of camgate's console and in SETUP.TXT on its boot partition",
        ),
        Ok(Ok(CodeCheck::Expired)) => Some(
            "that setup code has expired: camgate shows a new one on its console and in SETUP.TXT on its boot \
             partition",
        ),
        Ok(Err(e)) => {
            tracing::error!("setup code: {e}");
            return api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "camgate cannot read its setup code",
            );
        }
        Err(e) => {
            tracing::error!("setup code check: {e}");
            return api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "camgate cannot read its setup code",
            );
        }
    };
    if let Some(message) = refusal {
        lock(&claims.failures).record(client, now);
        tracing::warn!(target: "camgate::audit", event = "claim", outcome = "wrong-code", client.addr = %client,
            "wrong or expired setup code");
        return api_error(StatusCode::FORBIDDEN, message);
    }

    if request.password.chars().count() < MIN_PASSWORD_CHARS {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "choose a password of at least {MIN_PASSWORD_CHARS} characters (a few words make a good one)"
            ),
        );
    }
    let password = request.password;
    let hash =
        match tokio::task::spawn_blocking(move || crate::auth::password::hash(password.as_bytes())).await {
            Ok(Ok(hash)) => hash,
            Ok(Err(e)) => return api_error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            Err(e) => {
                tracing::error!("password hashing: {e}");
                return api_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "camgate cannot hash the password",
                );
            }
        };
    let text = claimed_config(&request.user, &hash);
    let writer = Arc::clone(&claims);
    let written = text.clone();
    match tokio::task::spawn_blocking(move || writer.store.create(&written)).await {
        Ok(Ok(_)) => {}
        Ok(Err(StoreError::Invalid(e))) => {
            let (key, message) = e.key_and_message();
            // The only keys a claim writes are the user's.
            let what = if key.is_some_and(|k| k.ends_with(".name")) {
                format!("user name: {message}")
            } else {
                message
            };
            return api_error(StatusCode::UNPROCESSABLE_ENTITY, what);
        }
        Ok(Err(StoreError::Exists(_))) => {
            return api_error(
                StatusCode::CONFLICT,
                "a configuration appeared meanwhile (camgate is being set up another way): reload the page",
            );
        }
        Ok(Err(e)) => {
            tracing::error!("claim: {e}");
            return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        Err(e) => {
            tracing::error!("claim: {e}");
            return api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "camgate cannot save its configuration",
            );
        }
    }
    match claims.reload.reload().await {
        Ok(generation) => {
            tracing::info!(target: "camgate::audit", event = "claim", outcome = "claimed", principal = %request.user,
                client.addr = %client, generation, "camgate claimed: setup mode is over");
            (
                StatusCode::CREATED,
                Json(serde_json::json!({ "user": request.user, "generation": generation })),
            )
                .into_response()
        }
        Err(why) => {
            // The file would say "set up" while camgate runs setup mode.
            let store = Arc::clone(&claims);
            let withdrawn = tokio::task::spawn_blocking(move || store.store.withdraw(&text)).await;
            if !matches!(withdrawn, Ok(Ok(()))) {
                tracing::error!(
                    "claim: cannot remove the configuration camgate could not apply: {withdrawn:?}"
                );
            }
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("camgate could not apply the new configuration and stays in setup mode: {why}"),
            )
        }
    }
}

fn lock(failures: &Mutex<Failures>) -> std::sync::MutexGuard<'_, Failures> {
    // Counters only: a panic elsewhere leaves nothing half-done.
    failures.lock().unwrap_or_else(PoisonError::into_inner)
}

fn too_many(wait: Duration) -> Response {
    let mut response = api_error(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many wrong setup codes: try again in {} s",
            wait.as_secs().max(1)
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
    response
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn only_on_link_clients_that_are_not_cameras() {
        let networks = [net("192.168.1.20/24"), net("10.77.0.1/24"), net("fd00::5/64")];
        let cameras = Some(net("10.77.0.0/24"));
        for (client, expected) in [
            ("127.0.0.1", true),
            ("::1", true),
            ("192.168.1.77", true),
            ("fd00::99", true),
            ("10.77.0.50", false),
            ("192.168.2.1", false),
            ("203.0.113.9", false),
        ] {
            assert_eq!(
                on_link(client.parse().unwrap(), &networks, cameras),
                expected,
                "{client}"
            );
        }
        assert!(!on_link(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)), &[], None));
    }

    #[test]
    fn failures_are_limited_per_client_then_overall() {
        let mut failures = Failures::default();
        let start = Instant::now();
        let client: IpAddr = "192.168.1.5".parse().unwrap();
        for _ in 0..CLIENT_FAILURES {
            assert!(failures.admit(client, start).is_ok());
            failures.record(client, start);
        }
        let wait = failures.admit(client, start).unwrap_err();
        assert_eq!(wait, WINDOW);
        assert!(failures.admit("192.168.1.6".parse().unwrap(), start).is_ok());
        // The window ends: the client may try again.
        assert!(failures.admit(client, start + WINDOW).is_ok());

        let mut failures = Failures::default();
        for i in 0..TOTAL_FAILURES {
            let other = IpAddr::V4(Ipv4Addr::new(192, 168, 1, u8::try_from(i).unwrap()));
            failures.record(other, start);
        }
        assert!(failures.admit("192.168.1.200".parse().unwrap(), start).is_err());
    }

    #[test]
    fn claimed_config_quotes_what_it_is_given() {
        let text = claimed_config("ann\"\n[daemon]", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA");
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["user"][0]["name"].as_str(), Some("ann\"\n[daemon]"));
        assert!(value.get("daemon").is_none(), "{text}");
    }
}
