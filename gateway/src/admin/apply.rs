//! Applying a whole config from the admin API, the way network gear does
//! "commit confirmed": a change that could cut the admin off (network and
//! cameras, port forwards, the admin listener, the admin users, ban
//! settings), judged against the config that runs, is reverted
//! unless confirmed within `[admin] confirm_within`, also across a restart
//! or a power cycle (the config store keeps the text to go back to).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{AppState, api_error};
use crate::config::Config;
use crate::config::store::{ConfigStore, StoreError};
use crate::daemon::{AskedReloadFailure, ReloadHandle};

/// What changed that could lock the admin out, in words for the browser.
pub fn risky_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let admins = |config: &Config| {
        let mut admins: Vec<(String, String)> = config
            .auth
            .users
            .iter()
            .filter(|user| user.role == crate::auth::Role::Admin)
            .map(|user| (user.name.clone(), user.digest.as_str().to_owned()))
            .collect();
        admins.sort();
        admins
    };
    // Naming cameras (fixed leases) cannot cut the admin off.
    let interfaces = |config: &Config| {
        config.network.clone().map(|mut network| {
            if let Some(cameras) = &mut network.cameras {
                cameras.known.clear();
            }
            network
        })
    };
    let mut reasons = Vec::new();
    if interfaces(old) != interfaces(new) {
        reasons.push("network and camera interfaces");
    }
    if old.forwarding != new.forwarding {
        reasons.push("port forwards (firewall)");
    }
    if old.admin.listen != new.admin.listen {
        reasons.push("admin interface addresses");
    }
    if admins(old) != admins(new) {
        reasons.push("admin users");
    }
    // Stricter ban settings can ban the admin's own address.
    if old.auth.guard != new.auth.guard {
        reasons.push("sign-in bans");
    }
    reasons
}

/// The change waiting for its confirmation.
#[derive(Debug)]
struct Pending {
    reasons: Vec<&'static str>,
    /// Unix seconds.
    revert_at: u64,
    cancel: CancellationToken,
}

#[derive(Debug)]
pub struct Applier {
    pub(super) store: Arc<ConfigStore>,
    reload: ReloadHandle,
    /// The config that runs: what a change is compared with (the file may
    /// have been edited by hand and not reloaded).
    running: watch::Receiver<Arc<Config>>,
    pending: Mutex<Option<Pending>>,
    /// One apply, confirm or revert at a time.
    applying: tokio::sync::Mutex<()>,
}

impl Applier {
    pub fn new(store: Arc<ConfigStore>, reload: ReloadHandle, running: watch::Receiver<Arc<Config>>) -> Self {
        Self {
            store,
            reload,
            running,
            pending: Mutex::default(),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    /// The config camgate runs now.
    pub(super) fn running(&self) -> Arc<Config> {
        Arc::clone(&self.running.borrow())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Option<Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unconfirmed(&self) -> serde_json::Value {
        self.pending().as_ref().map_or(
            serde_json::Value::Null,
            |pending| serde_json::json!({ "reasons": pending.reasons, "revert_at": pending.revert_at }),
        )
    }

    /// Waits out the confirmation window, then puts the old config back.
    async fn revert_unless_confirmed(self: Arc<Self>, within: Duration, cancel: CancellationToken) {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(within) => {}
        }
        let _one_at_a_time = self.applying.lock().await;
        if cancel.is_cancelled() {
            return; // confirmed while waiting for the lock
        }
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || store.revert()).await {
            Ok(Ok(Some(_))) => match self.reload.reload().await {
                Ok(generation) => tracing::warn!(
                    target: "camgate::audit", event = "config", action = "reverted", generation,
                    "the change was not confirmed within {}: back to the previous configuration",
                    humantime::format_duration(within)
                ),
                Err(why) => tracing::error!(
                    "the previous configuration is back in the file, but camgate could not apply it ({why}); \
                     restart camgate to run it"
                ),
            },
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!("reverting an unconfirmed change: {e}"),
            Err(e) => tracing::error!("reverting an unconfirmed change: {e}"),
        }
        *self.pending() = None;
    }
}

/// `GET /api/config`: the config file and the change waiting, if any.
pub(super) async fn show(State(state): State<AppState>) -> Response {
    let store = Arc::clone(&state.applier.store);
    let read = tokio::task::spawn_blocking(move || {
        let text = store.read()?;
        // A file edited by hand into something invalid still shows.
        let values = store
            .check(&text)
            .ok()
            .map(|config| super::wizard::form_values(&config));
        Ok::<_, StoreError>((text, values))
    });
    match read.await {
        Ok(Ok((text, values))) => Json(serde_json::json!({
            "config": text,
            "values": values,
            "unconfirmed": state.applier.unconfirmed(),
        }))
        .into_response(),
        _ => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "camgate cannot read its configuration",
        ),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApplyRequest {
    config: String,
}

/// `POST /api/config`: validates, saves and applies a whole config.
pub(super) async fn apply(
    State(state): State<AppState>,
    body: Result<Json<ApplyRequest>, JsonRejection>,
) -> Response {
    let text = match body {
        Ok(Json(request)) => request.config,
        Err(rejection) => return api_error(rejection.status(), rejection.body_text()),
    };
    let applier = Arc::clone(&state.applier);
    // Its own task: a client that disconnects must not stop it between
    // saving and applying (or putting back) the config.
    match tokio::spawn(apply_text(applier, text)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!("apply: {e}");
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "camgate could not finish applying",
            )
        }
    }
}

async fn apply_text(applier: Arc<Applier>, text: String) -> Response {
    let _one_at_a_time = applier.applying.lock().await;
    if applier.pending().is_some() {
        return api_error(
            StatusCode::CONFLICT,
            "the previous change waits for its confirmation: confirm it, or wait for it to be reverted",
        );
    }
    let store = Arc::clone(&applier.store);
    let running = Arc::clone(&applier.running.borrow());
    let checked = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let new = store.check(&text)?;
        let previous = store.read()?;
        let reasons = risky_changes(&running, &new);
        if reasons.is_empty() {
            store.save(&text)?;
        } else {
            store.save_unconfirmed(&text)?;
        }
        Ok((previous, new, reasons))
    })
    .await;
    let (previous, new, reasons) = match checked {
        Ok(Ok(checked)) => checked,
        Ok(Err(StoreError::Invalid(e))) => return invalid_config(&applier.store, &e),
        Ok(Err(e)) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => {
            tracing::error!("apply: {e}");
            return api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "camgate could not save the configuration",
            );
        }
    };
    let generation = match applier.reload.reload().await {
        Ok(generation) => generation,
        Err(why) => {
            // The daemon kept running the previous config: so must the file.
            let store = Arc::clone(&applier.store);
            let unconfirmed = !reasons.is_empty();
            let restored = tokio::task::spawn_blocking(move || {
                if unconfirmed {
                    store.revert().map(|_| ())
                } else {
                    store.save(&previous).map(|_| ())
                }
            })
            .await;
            if !matches!(restored, Ok(Ok(()))) {
                tracing::error!("apply: cannot put the running configuration back in the file: {restored:?}");
            }
            let status = match why {
                AskedReloadFailure::Stopping => StatusCode::SERVICE_UNAVAILABLE,
                AskedReloadFailure::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            return api_error(
                status,
                format!("not applied; camgate kept the running configuration: {why}"),
            );
        }
    };
    if reasons.is_empty() {
        tracing::info!(target: "camgate::audit", event = "config", action = "applied", generation,
            "configuration applied from the admin API");
        return Json(serde_json::json!({ "generation": generation, "unconfirmed": null })).into_response();
    }
    let within = new.admin.confirm_within;
    let cancel = CancellationToken::new();
    let revert_at = crate::clock::unix_now() + within.as_secs();
    *applier.pending() = Some(Pending {
        reasons: reasons.clone(),
        revert_at,
        cancel: cancel.clone(),
    });
    tokio::spawn(Arc::clone(&applier).revert_unless_confirmed(within, cancel));
    tracing::warn!(target: "camgate::audit", event = "config", action = "applied-unconfirmed", generation,
        reasons = ?reasons, "configuration applied from the admin API; reverted unless confirmed within {}",
        humantime::format_duration(within));
    Json(serde_json::json!({
        "generation": generation,
        "unconfirmed": { "reasons": reasons, "revert_at": revert_at, "confirm_within_secs": within.as_secs() },
    }))
    .into_response()
}

/// 422 naming the line and key of the text sent (the file's name means
/// nothing there).
pub(super) fn invalid_config(store: &ConfigStore, error: &crate::config::error::ConfigError) -> Response {
    let message = error.summary();
    let file = format!("{}:", store.path().display());
    let rest = message
        .strip_prefix(&file)
        .map_or(message.as_str(), str::trim_start);
    // "12:8: `key`: …" has a place; "config has no settings" has none.
    let text = if rest.starts_with(|c: char| c.is_ascii_digit()) {
        format!("not valid: line {rest}")
    } else {
        format!("not valid: {rest}")
    };
    api_error(StatusCode::UNPROCESSABLE_ENTITY, text)
}

/// `POST /api/config/confirm`: keeps the change that waits.
pub(super) async fn confirm(State(state): State<AppState>) -> Response {
    let applier = Arc::clone(&state.applier);
    let _one_at_a_time = applier.applying.lock().await;
    if applier.pending().is_none() {
        return api_error(StatusCode::CONFLICT, "no change waits for a confirmation");
    }
    // The store first: if it cannot forget the old text, the change still
    // waits (and a retry can confirm it), rather than being reverted at the
    // next start although confirmed.
    let store = Arc::clone(&applier.store);
    match tokio::task::spawn_blocking(move || store.confirm()).await {
        Ok(Ok(_)) => {
            if let Some(pending) = applier.pending().take() {
                pending.cancel.cancel();
            }
            tracing::info!(target: "camgate::audit", event = "config", action = "confirmed",
                "configuration change confirmed");
            Json(serde_json::json!({ "confirmed": true })).into_response()
        }
        other => {
            tracing::error!("confirm: {other:?}");
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "camgate could not record the confirmation: try again",
            )
        }
    }
}

/// At start: a change still unconfirmed when camgate stopped is reverted
/// before the config is loaded. `Ok(true)` if it was.
pub fn revert_at_start(store: &ConfigStore) -> Result<bool, StoreError> {
    store.revert().map(|reverted| reverted.is_some())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::risky_changes;
    use crate::config::{Config, Overrides, parse};

    fn config(extra: &str) -> Config {
        let text = format!("[daemon]\nmode = \"dev\"\n{extra}");
        parse(&text, Path::new("t.toml"), Overrides::default()).unwrap()
    }

    #[test]
    fn what_could_lock_the_admin_out_needs_a_confirmation() {
        let hash = crate::auth::password::hash(b"a password").unwrap();
        let user = |name: &str, role: &str| {
            format!("[[user]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\nrole = \"{role}\"\n")
        };
        let base = config(&user("ann", "admin"));
        let same = config(&user("ann", "admin"));
        assert!(risky_changes(&base, &same).is_empty());
        let viewer = config(&format!("{}{}", user("ann", "admin"), user("bob", "viewer")));
        assert!(
            risky_changes(&base, &viewer).is_empty(),
            "a viewer locks no admin out"
        );
        let proxy = config(&format!(
            "[proxy]\nhttps_listen = [\"127.0.0.1:9443\"]\n{}",
            user("ann", "admin")
        ));
        assert!(risky_changes(&base, &proxy).is_empty());

        let listen = config(&format!(
            "[admin]\nlisten = [\"127.0.0.1:9000\"]\n{}",
            user("ann", "admin")
        ));
        assert_eq!(risky_changes(&base, &listen), ["admin interface addresses"]);
        let renamed = config(&user("anna", "admin"));
        assert_eq!(risky_changes(&base, &renamed), ["admin users"]);
        let demoted = config(&user("ann", "viewer"));
        assert_eq!(risky_changes(&base, &demoted), ["admin users"]);

        let segment =
            "[network]\nuplink = \"eth0\"\n[cameras]\ninterface = \"eth1\"\naddress = \"10.77.0.1/24\"\n";
        let cameras = config(&format!("{segment}{}", user("ann", "admin")));
        assert_eq!(risky_changes(&base, &cameras), ["network and camera interfaces"]);
        let named = config(&format!(
            "{segment}[[camera]]\nname = \"porch\"\nmac = \"02:00:00:00:00:01\"\naddress = \"10.77.0.20\"\n{}",
            user("ann", "admin")
        ));
        assert!(
            risky_changes(&cameras, &named).is_empty(),
            "naming a camera locks no admin out"
        );
    }
}
