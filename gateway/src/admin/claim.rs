//! Claiming a fresh appliance: the one-time setup code (console, boot
//! partition, log), typed in from the LAN, creates the first admin user.
//! The config file exists from then on, so setup mode is over for good.
//!
//! Only from a network camgate is on itself (the admin listener's check, `lan.rs`),
//! attempts limited per client and overall, and the code expires
//! ([`crate::setup::CODE_LIFETIME`]). The code's 50 bits are the real lock;
//! these keep guessing and noise down.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{AppState, api_error, too_many_requests};
use crate::config::store::{ConfigStore, StoreError};
use crate::daemon::{AskedReloadFailure, ReloadHandle};
use crate::setup::{self, CodeCheck};

/// Wrong codes a client (an IPv6 /64 counts as one) may try per window,
/// and all clients together.
const CLIENT_ATTEMPTS: u32 = 5;
const TOTAL_ATTEMPTS: u32 = 100;
const WINDOW: Duration = Duration::from_secs(10 * 60);
/// Clients remembered; beyond this only the total counts.
const MAX_CLIENTS: usize = 4096;
/// The claim's JSON is a code, a name and a password.
pub const MAX_BODY_BYTES: usize = 4096;
/// The first admin's password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// What a claim needs from the daemon.
#[derive(Debug)]
pub struct Claims {
    store: Arc<ConfigStore>,
    state_dir: PathBuf,
    reload: ReloadHandle,
    attempts: Mutex<Attempts>,
    /// Since when camgate has been showing the current code.
    code_shown: Mutex<Instant>,
    /// One claim at a time: the second sees that setup is over.
    claiming: tokio::sync::Mutex<()>,
}

impl Claims {
    pub fn new(store: Arc<ConfigStore>, state_dir: PathBuf, reload: ReloadHandle) -> Self {
        Self {
            store,
            state_dir,
            reload,
            attempts: Mutex::default(),
            code_shown: Mutex::new(Instant::now()),
            claiming: tokio::sync::Mutex::new(()),
        }
    }
}

/// Attempts in the current window: per client, and in total.
#[derive(Debug, Default)]
struct Attempts {
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

/// The limiter's key: an IPv6 client may hold a whole /64.
fn client_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        v4 @ IpAddr::V4(_) => v4,
    }
}

impl Attempts {
    /// Counts an attempt, or `Err(wait)` while the client, or everyone, has
    /// used up the window. Counted before the code is checked, so parallel
    /// requests cannot all slip in; [`Self::refund`] gives a right code's
    /// attempt back.
    fn take(&mut self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        if client.is_loopback() {
            return Ok(()); // the machine itself: its console shows the code anyway
        }
        let key = client_key(client);
        let total = self.total.current(now);
        if total.count >= TOTAL_ATTEMPTS {
            return Err(total.left(now));
        }
        if !self.clients.contains_key(&key) && self.clients.len() >= MAX_CLIENTS {
            self.clients
                .retain(|_, w| w.start.is_some_and(|s| now.duration_since(s) < WINDOW));
        }
        let room = self.clients.len() < MAX_CLIENTS;
        let window = match self.clients.entry(key) {
            Entry::Occupied(entry) => Some(entry.into_mut().current(now)),
            Entry::Vacant(entry) if room => Some(entry.insert(Window::default()).current(now)),
            Entry::Vacant(_) => None,
        };
        if let Some(window) = window {
            if window.count >= CLIENT_ATTEMPTS {
                return Err(window.left(now));
            }
            window.count += 1;
        }
        self.total.count += 1;
        Ok(())
    }

    fn refund(&mut self, client: IpAddr) {
        if client.is_loopback() {
            return;
        }
        self.total.count = self.total.count.saturating_sub(1);
        if let Some(window) = self.clients.get_mut(&client_key(client)) {
            window.count = window.count.saturating_sub(1);
        }
    }
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
        return set_up_already();
    }
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return api_error(rejection.status(), rejection.body_text()),
    };
    if let Err(wait) = lock(&claims.attempts).take(client, Instant::now()) {
        return too_many(wait);
    }
    let _one_at_a_time = claims.claiming.lock().await;
    if !state.status.borrow().setup {
        return set_up_already();
    }

    let state_dir = claims.state_dir.clone();
    let code = request.code.clone();
    let shown_for = lock(&claims.code_shown).elapsed();
    let check = tokio::task::spawn_blocking(move || {
        setup::check_code(&state_dir, &code, SystemTime::now(), shown_for)
    })
    .await;
    let refusal = match check {
        Ok(Ok(CodeCheck::Valid)) => None,
        Ok(Ok(CodeCheck::Wrong)) => Some(
            "wrong setup code: it is on the screen of camgate's console and in SETUP.TXT on its boot partition",
        ),
        Ok(Ok(CodeCheck::Expired)) => {
            *lock(&claims.code_shown) = Instant::now();
            Some(
                "that setup code has expired: camgate shows a new one on its console and in SETUP.TXT on its \
                 boot partition",
            )
        }
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
        tracing::warn!(target: "camgate::audit", event = "claim", outcome = "wrong-code", client.addr = %client,
            "wrong or expired setup code");
        return api_error(StatusCode::FORBIDDEN, message);
    }
    // The right code: a bad name or password below costs no attempt.
    lock(&claims.attempts).refund(client);

    if request.password.chars().count() < MIN_PASSWORD_CHARS {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "choose a password of at least {MIN_PASSWORD_CHARS} characters (a few words make a good one)"
            ),
        );
    }
    // Its own task: a client that disconnects must not stop it between
    // writing the config and applying (or withdrawing) it.
    let user = request.user.clone();
    let outcome = tokio::spawn(establish(Arc::clone(&claims), request.user, request.password)).await;
    match outcome {
        Ok(Ok(generation)) => {
            tracing::info!(target: "camgate::audit", event = "claim", outcome = "claimed", principal = %user,
                client.addr = %client, generation, "camgate claimed: setup mode is over");
            (
                StatusCode::CREATED,
                Json(serde_json::json!({ "user": user, "generation": generation })),
            )
                .into_response()
        }
        Ok(Err(refusal)) => refusal,
        Err(e) => {
            tracing::error!("claim: {e}");
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "camgate could not finish the claim",
            )
        }
    }
}

/// Writes the first config and applies it; takes it back if it cannot
/// apply, so the file never says "set up" while camgate runs setup mode.
async fn establish(claims: Arc<Claims>, user: String, password: String) -> Result<u64, Response> {
    let hash =
        match tokio::task::spawn_blocking(move || crate::auth::password::hash(password.as_bytes())).await {
            Ok(Ok(hash)) => hash,
            Ok(Err(e)) => return Err(api_error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())),
            Err(e) => {
                tracing::error!("password hashing: {e}");
                return Err(api_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "camgate cannot hash the password",
                ));
            }
        };
    let text = claimed_config(&user, &hash);
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
            return Err(api_error(StatusCode::UNPROCESSABLE_ENTITY, what));
        }
        Ok(Err(StoreError::Exists(_))) => {
            return Err(api_error(
                StatusCode::CONFLICT,
                "a configuration appeared meanwhile (camgate is being set up another way): reload the page",
            ));
        }
        Ok(Err(e)) => {
            tracing::error!("claim: {e}");
            return Err(api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
        }
        Err(e) => {
            tracing::error!("claim: {e}");
            return Err(api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "camgate cannot save its configuration",
            ));
        }
    }
    match claims.reload.reload().await {
        Ok(generation) => Ok(generation),
        Err(why) => {
            let store = Arc::clone(&claims);
            let withdrawn = tokio::task::spawn_blocking(move || store.store.withdraw(&text)).await;
            if !matches!(withdrawn, Ok(Ok(()))) {
                tracing::error!(
                    "claim: cannot remove the configuration camgate could not apply: {withdrawn:?}"
                );
            }
            Err(api_error(
                reload_failure_status(&why),
                format!("camgate could not apply the new configuration and stays in setup mode: {why}"),
            ))
        }
    }
}

/// 503 while camgate stops (try again once it runs), else 500.
pub(super) fn reload_failure_status(failure: &AskedReloadFailure) -> StatusCode {
    match failure {
        AskedReloadFailure::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        AskedReloadFailure::Refused(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn set_up_already() -> Response {
    api_error(
        StatusCode::GONE,
        "camgate is set up already: sign in as an admin user",
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters and an instant: a panic elsewhere leaves nothing half-done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn too_many(wait: Duration) -> Response {
    let message = format!(
        "too many setup code attempts: try again in {} s",
        wait.as_secs().max(1)
    );
    too_many_requests(message, wait)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn attempts_are_limited_per_client_then_overall() {
        let mut attempts = Attempts::default();
        let start = Instant::now();
        let client: IpAddr = "192.168.1.5".parse().unwrap();
        for _ in 0..CLIENT_ATTEMPTS {
            attempts.take(client, start).unwrap();
        }
        assert_eq!(attempts.take(client, start).unwrap_err(), WINDOW);
        // A right code gives its attempt back.
        attempts.refund(client);
        attempts.take(client, start).unwrap();
        assert!(attempts.take("192.168.1.6".parse().unwrap(), start).is_ok());
        assert!(attempts.take(client, start + WINDOW).is_ok(), "the window ended");

        // One IPv6 /64 is one client; the machine itself is not limited.
        let mut attempts = Attempts::default();
        for i in 0..CLIENT_ATTEMPTS {
            attempts
                .take(format!("2001:db8:1:2::{i}").parse().unwrap(), start)
                .unwrap();
        }
        assert!(attempts.take("2001:db8:1:2::ff".parse().unwrap(), start).is_err());
        assert!(attempts.take("2001:db8:1:3::1".parse().unwrap(), start).is_ok());
        for _ in 0..2 * TOTAL_ATTEMPTS {
            attempts.take(IpAddr::V4(Ipv4Addr::LOCALHOST), start).unwrap();
        }

        let mut attempts = Attempts::default();
        for i in 0..TOTAL_ATTEMPTS {
            let other = IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + i));
            attempts.take(other, start).unwrap();
        }
        assert!(attempts.take("192.168.1.200".parse().unwrap(), start).is_err());
    }

    #[test]
    fn claimed_config_quotes_what_it_is_given() {
        let text = claimed_config("ann\"\n[daemon]", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA");
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["user"][0]["name"].as_str(), Some("ann\"\n[daemon]"));
        assert!(value.get("daemon").is_none(), "{text}");
    }
}
