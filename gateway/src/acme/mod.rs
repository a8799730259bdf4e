//! Certificates from an ACME CA (Let's Encrypt by default): issued on
//! start, renewed before they expire, hot-swapped into the TLS resolver.
//!
//! One task, the [`Renewer`], keeps a state per configured host and sleeps
//! until the next thing is due: a renewal (a random point of the CA's ARI
//! window, else ⅔ of the lifetime), a retry (exponential backoff, at least
//! the CA's `Retry-After`) or an expiry. A new certificate is checked
//! ([`certificate::verify`]), stored, then installed; until then the old
//! one keeps serving. One that expires is withdrawn, so the host falls back
//! to the self-signed certificate, and the status says so loudly.
//!
//! The CA is behind [`CertificateAuthority`] and wall-clock time behind
//! [`Clock`], so the scheduling is tested with a fake CA and paused time.

pub mod ca;
pub mod certificate;
pub mod challenge;
pub mod problem;
pub mod schedule;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use tokio::sync::watch;

use self::ca::{AcmeCa, CaError};
use self::certificate::{CertStore, Installed, Origin};
use self::challenge::Challenges;
use self::problem::{AcmeError, ChallengeKind, FailureKind};
use self::schedule::{Window, renew_at, retry_delay};
use crate::clock::{Clock, SystemClock, rfc3339};
use crate::config::Config;
use crate::config::acme::{Acme, ChallengePreference, KeyType};
use crate::daemon::{SubsystemState, SubsystemStatus};
use crate::shutdown::Drain;
use crate::tls::CertResolver;

/// How often the CA's renewal window is asked for, at most and at least.
const WINDOW_CHECK_MIN: Duration = Duration::from_secs(60);
const WINDOW_CHECK_MAX: Duration = Duration::from_secs(24 * 3600);
/// The longest sleep: wall-clock jumps (suspend, NTP) are noticed within it.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// One order, as the renewer asks for it.
#[derive(Debug)]
pub struct OrderRequest<'a> {
    pub host: &'a str,
    pub challenge: ChallengeKind,
    pub csr_der: &'a [u8],
    /// The certificate this one replaces (ARI `replaces`), if the CA offers ARI.
    pub replaces: Option<&'a CertificateDer<'static>>,
}

/// An ACME CA as the renewer needs it.
pub trait CertificateAuthority: Send + Sync + 'static {
    fn directory(&self) -> &str;

    /// Orders a certificate, answering the challenge; the chain PEM.
    fn order(&self, request: OrderRequest<'_>) -> impl Future<Output = Result<String, AcmeError>> + Send;

    /// The CA's suggested renewal window and when to ask again, or `None`
    /// when the CA does not offer ARI.
    fn renewal_window(
        &self,
        leaf: &CertificateDer<'static>,
    ) -> impl Future<Output = Result<Option<(Window, Duration)>, AcmeError>> + Send;
}

/// What the renewer works from; replaced on reload.
#[derive(Debug)]
pub struct Plan<C> {
    pub settings: Acme,
    pub ca: Arc<C>,
    /// Whether camgate has an HTTP listener (HTTP-01 possible).
    pub has_http: bool,
}

/// Per host, for `/api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct AcmeHostStatus {
    pub host: String,
    /// `pending`, `issuing`, `valid`, `renewing`, `retrying` (still serving
    /// the current certificate), `failing` (never had one) or `expired`
    /// (serving the self-signed certificate).
    pub state: &'static str,
    /// One sentence on what is served and what happens next.
    pub detail: String,
    pub issuer: Option<String>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    pub sha256: Option<String>,
    /// The next renewal or retry.
    pub next_renewal: Option<String>,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub failures: u32,
    /// The challenge of the last attempt.
    pub challenge: Option<ChallengeKind>,
    /// Whether the CA's renewal information (ARI) sets the renewal time.
    pub renewal_info: bool,
}

#[derive(Debug)]
struct HostState {
    installed: Option<Installed>,
    /// Where the installed certificate came from, if known.
    origin: Option<Origin>,
    /// The next wake-up: renewal, ARI check or retry.
    due: SystemTime,
    /// When the installed certificate is to be renewed (for the status).
    renewal_at: Option<SystemTime>,
    /// The CA's `Retry-After`: no order before it, whatever else changes.
    not_before: Option<SystemTime>,
    jitter: f64,
    window: Option<Window>,
    /// `None` until the CA was asked.
    ari: Option<bool>,
    next_window_check: SystemTime,
    failures: u32,
    failed_challenge: Option<ChallengeKind>,
    challenge: Option<ChallengeKind>,
    working: bool,
    expired_at: Option<SystemTime>,
    last_attempt: Option<SystemTime>,
    last_success: Option<SystemTime>,
    last_error: Option<String>,
}

impl<C: CertificateAuthority> Plan<C> {
    /// What a certificate ordered under this plan is recorded as.
    fn origin(&self) -> Origin {
        Origin {
            directory: self.ca.directory().to_owned(),
            key_type: self.settings.key_type.as_str().to_owned(),
        }
    }
}

impl HostState {
    /// Whether the installed certificate came from the configured CA and
    /// key type (else the next wake-up orders anew).
    fn issued_by_current_ca<C: CertificateAuthority>(&self, plan: &Plan<C>) -> bool {
        self.origin.as_ref() == Some(&plan.origin())
    }
}

/// Keeps the configured hosts' certificates issued and fresh.
pub struct Renewer<C, K> {
    resolver: Arc<CertResolver>,
    store: CertStore,
    clock: K,
    jitter: fn() -> f64,
    status: watch::Sender<Vec<AcmeHostStatus>>,
    plan: Option<Arc<Plan<C>>>,
    hosts: BTreeMap<String, HostState>,
}

impl<C, K> std::fmt::Debug for Renewer<C, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewer")
            .field("hosts", &self.hosts.len())
            .finish_non_exhaustive()
    }
}

impl<C: CertificateAuthority, K: Clock> Renewer<C, K> {
    pub fn new(
        resolver: Arc<CertResolver>,
        state_dir: &Path,
        clock: K,
        jitter: fn() -> f64,
        status: watch::Sender<Vec<AcmeHostStatus>>,
    ) -> Self {
        Self {
            resolver,
            store: CertStore::new(state_dir),
            clock,
            jitter,
            status,
            plan: None,
            hosts: BTreeMap::new(),
        }
    }

    /// Runs until `drain` starts, following the plans sent on `plans`.
    pub async fn run(mut self, mut plans: watch::Receiver<Option<Arc<Plan<C>>>>, drain: Drain) {
        loop {
            let plan = plans.borrow_and_update().clone();
            self.apply(plan);
            loop {
                let now = self.clock.now();
                self.expire(now);
                let next = self.next_event();
                if let Some((host, due)) = &next
                    && *due <= now
                {
                    let host = host.clone();
                    tokio::select! {
                        () = drain.started() => return,
                        () = self.attempt(&host) => {}
                    }
                    continue;
                }
                let sleep = next.map_or(MAX_SLEEP, |(_, due)| {
                    due.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_SLEEP)
                });
                tokio::select! {
                    () = drain.started() => return,
                    changed = plans.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    () = tokio::time::sleep(sleep) => {}
                }
            }
        }
    }

    /// Takes a new plan: hosts removed go back to the table, hosts added
    /// start from what is stored, and a changed CA or key type re-issues.
    fn apply(&mut self, plan: Option<Arc<Plan<C>>>) {
        let now = self.clock.now();
        let wanted: Vec<String> = plan
            .as_ref()
            .map(|p| p.settings.hosts.clone())
            .unwrap_or_default();
        let removed: Vec<String> = self
            .hosts
            .keys()
            .filter(|h| !wanted.contains(h))
            .cloned()
            .collect();
        for host in removed {
            self.resolver.uninstall(&host);
            self.hosts.remove(&host);
        }
        let settings_changed = match (&self.plan, &plan) {
            (Some(old), Some(new)) => old.settings != new.settings,
            _ => true,
        };
        self.plan = plan;
        let Some(plan) = self.plan.clone() else {
            self.publish();
            return;
        };
        for host in &plan.settings.hosts {
            if let Some(state) = self.hosts.get_mut(host) {
                if settings_changed {
                    // What was learnt about the old CA's ARI no longer
                    // holds. A changed [acme] restarts the backoff, never
                    // before the CA's Retry-After.
                    state.ari = None;
                    state.window = None;
                    state.next_window_check = now;
                    state.failures = 0;
                    state.failed_challenge = None;
                    state.due = state.not_before.map_or(now, |not_before| not_before.max(now));
                }
                continue;
            }
            let mut state = HostState {
                installed: None,
                origin: None,
                due: now,
                renewal_at: None,
                not_before: None,
                jitter: (self.jitter)(),
                window: None,
                ari: None,
                next_window_check: now,
                failures: 0,
                failed_challenge: None,
                challenge: None,
                working: false,
                expired_at: None,
                last_attempt: None,
                last_success: None,
                last_error: None,
            };
            if let Some((chain, key, stored_origin)) = self.store.load(host) {
                match certificate::verify(&chain, &key, host) {
                    Ok(installed) => {
                        // One that expired meanwhile is withdrawn (and
                        // reported) by `expire`, before anything else runs.
                        if !installed.validity.expired(now) {
                            self.resolver.install(host, &installed.key);
                            tracing::info!(host = %host, issuer = %installed.issuer,
                                not_after = %rfc3339(installed.validity.not_after), "serving the stored certificate");
                        }
                        state.origin = stored_origin;
                        state.installed = Some(installed);
                    }
                    Err(e) => tracing::warn!(host = %host, "the stored certificate is not usable: {e}"),
                }
            }
            self.hosts.insert(host.clone(), state);
        }
        self.publish();
    }

    /// Withdraws certificates that expired: better the self-signed one,
    /// which a user can verify by fingerprint, than a dead one.
    fn expire(&mut self, now: SystemTime) {
        let mut changed = false;
        for (host, state) in &mut self.hosts {
            if let Some(installed) = &state.installed
                && installed.validity.expired(now)
            {
                tracing::error!(host = %host, expired = %rfc3339(installed.validity.not_after),
                    last_error = state.last_error.as_deref().unwrap_or("-"),
                    "the certificate EXPIRED and could not be renewed; serving the self-signed certificate");
                self.resolver.uninstall(host);
                state.expired_at = Some(installed.validity.not_after);
                state.installed = None;
                changed = true;
            }
        }
        if changed {
            self.publish();
        }
    }

    /// The host due first, and when; an expiry counts as an event.
    fn next_event(&self) -> Option<(String, SystemTime)> {
        self.hosts
            .iter()
            .map(|(host, state)| {
                let expiry = state.installed.as_ref().map(|i| i.validity.not_after);
                let at = expiry.map_or(state.due, |expiry| state.due.min(expiry));
                (host.clone(), at)
            })
            .min_by_key(|(_, at)| *at)
    }

    async fn attempt(&mut self, host: &str) {
        let Some(plan) = self.plan.clone() else { return };
        let now = self.clock.now();
        if self.renewal_not_due(&plan, host, now).await {
            self.publish();
            return;
        }
        let Some(state) = self.hosts.get_mut(host) else {
            return;
        };
        let challenge = ChallengeKind::choose(plan.settings.challenge, plan.has_http, state.failed_challenge);
        state.working = true;
        state.challenge = Some(challenge);
        state.last_attempt = Some(now);
        self.publish();

        let result = self.issue(&plan, host, challenge).await;
        let now = self.clock.now();
        let Some(state) = self.hosts.get_mut(host) else {
            return;
        };
        state.working = false;
        match result {
            Ok((installed, stored)) => {
                self.resolver.install(host, &installed.key);
                state.jitter = (self.jitter)();
                let renewal = renew_at(installed.validity, None, state.jitter);
                state.renewal_at = Some(renewal);
                // Ask the CA for its window for the new certificate now.
                state.due = if state.ari == Some(false) { renewal } else { now };
                state.next_window_check = now;
                state.window = None;
                state.failures = 0;
                state.failed_challenge = None;
                state.origin = Some(plan.origin());
                state.expired_at = None;
                state.not_before = None;
                state.last_success = Some(now);
                // Not stored: it serves until a restart, which orders again.
                state.last_error = stored.err();
                tracing::info!(host = %host, issuer = %installed.issuer,
                    not_after = %rfc3339(installed.validity.not_after), challenge = challenge.as_str(),
                    "installed a new certificate");
                state.installed = Some(installed);
            }
            Err(e) => {
                state.failures += 1;
                let previous = state.failed_challenge;
                state.failed_challenge = match e.kind {
                    FailureKind::Validation(kind) => Some(kind),
                    _ => None,
                };
                // In automatic mode the other challenge is tried at once,
                // then both back off together.
                let switch_now = plan.settings.challenge == ChallengePreference::Auto
                    && previous.is_none()
                    && state.failed_challenge.is_some()
                    && e.retry_after.is_none();
                let remaining = state.installed.as_ref().map(|i| i.validity.remaining(now));
                let delay = if switch_now {
                    Duration::ZERO
                } else {
                    retry_delay(state.failures, remaining, e.retry_after)
                };
                state.due = now + delay;
                state.not_before = e.retry_after.map(|_| state.due);
                tracing::warn!(host = %host, failures = state.failures, retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs())),
                    serving = if state.installed.is_some() { "the current certificate" } else { "the self-signed certificate" },
                    "certificate order failed: {}", e.message);
                state.last_error = Some(e.message);
            }
        }
        self.publish();
    }

    /// For a host with a good certificate from the configured CA: refreshes
    /// the CA's renewal window when due, and whether renewal can wait (then
    /// `due` is set to when to look again).
    async fn renewal_not_due(&mut self, plan: &Plan<C>, host: &str, now: SystemTime) -> bool {
        let Some(state) = self.hosts.get_mut(host) else {
            return true;
        };
        let Some(installed) = state
            .installed
            .as_ref()
            .filter(|_| state.issued_by_current_ca(plan))
        else {
            return false;
        };
        if state.ari != Some(false) && now >= state.next_window_check && state.failures == 0 {
            let leaf = installed.leaf().clone();
            match plan.ca.renewal_window(&leaf).await {
                Ok(Some((window, ask_again))) => {
                    state.ari = Some(true);
                    state.window = Some(window);
                    state.next_window_check = now + ask_again.clamp(WINDOW_CHECK_MIN, WINDOW_CHECK_MAX);
                }
                Ok(None) => state.ari = Some(false),
                Err(e) => {
                    // The ⅔ rule still applies; ask again later.
                    tracing::debug!(host = %host, "renewal information unavailable: {e}");
                    state.next_window_check = now + WINDOW_CHECK_MAX;
                }
            }
        }
        let Some(installed) = state.installed.as_ref() else {
            return false;
        };
        let renewal = renew_at(installed.validity, state.window, state.jitter);
        state.renewal_at = Some(renewal);
        if renewal <= now {
            return false;
        }
        state.due = if state.ari == Some(true) {
            renewal.min(state.next_window_check)
        } else {
            renewal
        };
        true
    }

    /// Key, CSR, order, check, store: the certificate ready to install, and
    /// whether it was stored. A certificate the CA issued is never thrown
    /// away for a storage error: ordering again would run into the CA's
    /// duplicate-certificate limit.
    async fn issue(
        &self,
        plan: &Plan<C>,
        host: &str,
        challenge: ChallengeKind,
    ) -> Result<(Installed, Result<(), String>), AcmeError> {
        let (key_pem, csr_der) = key_and_csr(host, plan.settings.key_type)
            .map_err(|e| AcmeError::other(format!("cannot make a key and CSR: {e}")))?;
        let state = self.hosts.get(host);
        // ARI `replaces` on the first try only: a refused one (e.g.
        // alreadyReplaced) must not fail every retry.
        let replaces = state
            .filter(|s| s.ari == Some(true) && s.issued_by_current_ca(plan) && s.failures == 0)
            .and_then(|s| s.installed.as_ref())
            .map(Installed::leaf);
        let chain = plan
            .ca
            .order(OrderRequest {
                host,
                challenge,
                csr_der: &csr_der,
                replaces,
            })
            .await?;
        let installed = certificate::verify(&chain, &key_pem, host)
            .map_err(|e| AcmeError::other(format!("the CA's certificate was refused: {e}")))?;
        let stored = self.store.save(host, &chain, &key_pem, &plan.origin()).map_err(|e| {
            tracing::error!(host = %host, "cannot store the new certificate; serving it from memory: {e}");
            format!("cannot store the certificate under the state dir: {e}; it serves until camgate restarts")
        });
        Ok((installed, stored))
    }

    fn publish(&self) {
        let statuses = self
            .hosts
            .iter()
            .map(|(host, state)| host_status(host, state))
            .collect();
        self.status.send_replace(statuses);
    }
}

/// A new private key (PEM) and a CSR for `host` alone, with an empty
/// subject as CAs expect.
fn key_and_csr(host: &str, key_type: KeyType) -> Result<(String, Vec<u8>), rcgen::Error> {
    let algorithm = match key_type {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
    };
    let key = rcgen::KeyPair::generate_for(algorithm)?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

fn host_status(host: &str, state: &HostState) -> AcmeHostStatus {
    let installed = state.installed.as_ref();
    let state_name = match (installed.is_some(), state.working, state.failures > 0) {
        (true, true, _) => "renewing",
        (false, true, _) => "issuing",
        (true, false, false) => "valid",
        (true, false, true) => "retrying",
        (false, false, _) if state.expired_at.is_some() => "expired",
        (false, false, true) => "failing",
        (false, false, false) => "pending",
    };
    // While all is well, the renewal; otherwise the next attempt.
    let next_time = match (installed, state.renewal_at) {
        (Some(_), Some(renewal)) if state.failures == 0 && !state.working => renewal,
        _ => state.due,
    };
    let next = rfc3339(next_time);
    let detail = match (installed, state.expired_at) {
        (Some(installed), _) => format!(
            "serving the certificate from {} valid until {}; {} {next}",
            installed.issuer,
            rfc3339(installed.validity.not_after),
            if state.failures > 0 {
                "next attempt"
            } else {
                "renewal from"
            },
        ),
        (None, Some(expired)) => format!(
            "EXPIRED at {}: browsers see camgate's self-signed certificate until a new one is issued; \
             next attempt {next}",
            rfc3339(expired)
        ),
        (None, None) => {
            format!("serving camgate's self-signed certificate until one is issued; next attempt {next}")
        }
    };
    AcmeHostStatus {
        host: host.to_owned(),
        state: state_name,
        detail,
        issuer: installed.map(|i| i.issuer.clone()),
        not_before: installed.map(|i| rfc3339(i.validity.not_before)),
        not_after: installed.map(|i| rfc3339(i.validity.not_after)),
        sha256: installed.map(|i| i.sha256.clone()),
        next_renewal: Some(next),
        last_attempt: state.last_attempt.map(rfc3339),
        last_success: state.last_success.map(rfc3339),
        last_error: state.last_error.clone(),
        failures: state.failures,
        challenge: state.challenge,
        renewal_info: state.ari == Some(true),
    }
}

/// A random fraction in `[0, 1)` for renewal jitter.
fn random_fraction() -> f64 {
    let mut bytes = [0; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    #[expect(clippy::cast_precision_loss, reason = "53 random bits are plenty")]
    let fraction = (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
    fraction
}

/// The ACME subsystem as the daemon runs it.
#[derive(Debug)]
pub struct AcmeService {
    plans: watch::Sender<Option<Arc<Plan<AcmeCa>>>>,
    status: watch::Receiver<Vec<AcmeHostStatus>>,
    challenges: Arc<Challenges>,
    state_dir: std::path::PathBuf,
}

/// A new config's plan, prepared (the extra root CA read).
#[derive(Debug)]
pub struct StagedAcme(Option<Arc<Plan<AcmeCa>>>);

impl AcmeService {
    pub fn start(
        config: &Config,
        resolver: Arc<CertResolver>,
        challenges: Arc<Challenges>,
        drain: &Drain,
    ) -> Result<Self, CaError> {
        let (status_tx, status) = watch::channel(Vec::new());
        let (plans, plans_rx) = watch::channel(None);
        let mut service = Self {
            plans,
            status,
            challenges,
            state_dir: config.daemon.state_dir.clone(),
        };
        let staged = service.prepare(config)?;
        service.commit(staged);
        let renewer = Renewer::<AcmeCa, _>::new(
            resolver,
            &config.daemon.state_dir,
            SystemClock,
            random_fraction,
            status_tx,
        );
        drain.spawn(renewer.run(plans_rx, drain.clone()));
        Ok(service)
    }

    /// Builds the plan; an unchanged CA setting keeps the CA (and its account
    /// session).
    pub fn prepare(&self, config: &Config) -> Result<StagedAcme, CaError> {
        let Some(settings) = &config.acme else {
            return Ok(StagedAcme(None));
        };
        let current = self.plans.borrow().clone();
        let same_ca = current.as_ref().filter(|plan| {
            plan.settings.directory == settings.directory
                && plan.settings.directory_ca == settings.directory_ca
                && plan.settings.contact == settings.contact
        });
        let ca = match same_ca {
            Some(plan) => Arc::clone(&plan.ca),
            None => Arc::new(AcmeCa::new(
                settings,
                Arc::clone(&self.challenges),
                &self.state_dir,
            )?),
        };
        Ok(StagedAcme(Some(Arc::new(Plan {
            settings: settings.clone(),
            ca,
            has_http: !config.proxy.http_listen.is_empty(),
        }))))
    }

    pub fn commit(&mut self, staged: StagedAcme) {
        self.plans.send_replace(staged.0);
    }

    pub fn host_status(&self) -> watch::Receiver<Vec<AcmeHostStatus>> {
        self.status.clone()
    }

    pub fn status(&self) -> SubsystemStatus {
        match &*self.plans.borrow() {
            None => SubsystemStatus {
                name: "acme",
                state: SubsystemState::Disabled,
                detail: "no [acme] section: sites use their own or the self-signed certificate".to_owned(),
            },
            Some(plan) => SubsystemStatus {
                name: "acme",
                state: SubsystemState::Running,
                detail: format!(
                    "{} host(s) from {}; each one's state is under certificates.acme",
                    plan.settings.hosts.len(),
                    plan.settings.directory,
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests;
