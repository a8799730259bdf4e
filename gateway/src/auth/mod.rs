//! Credentials for `auth` rules: users (argon2id passwords, HTTP Basic or
//! the login page's session cookie), API tokens (Bearer or `?token=`), and
//! the brute-force guard.
//!
//! The rule engine says *that* credentials are needed ([`Verdict::NeedsCredentials`]);
//! this module says whether the request has them. Audit events go to the
//! `camgate::audit` log target and never carry secrets.
//!
//! [`Verdict::NeedsCredentials`]: crate::proxy::rules::Verdict::NeedsCredentials

pub mod guard;
pub mod password;
pub mod session;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine as _;
use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use tokio::sync::Semaphore;

pub use guard::{Ban, BanSink, Guard, GuardSettings, NoSink, Penalty};
pub use password::PasswordDigest;
pub use session::{SessionSettings, Sessions};
pub use token::{ScopeEntry, Token};

use crate::proxy::path::CanonicalPath;
use crate::proxy::rules::Requirement;

/// The query parameter that carries a token (`<img src=…?token=…>`).
const TOKEN_PARAMETER: &str = "token";

/// The query as the DVR gets it: without camgate's token parameter.
pub fn without_token(query: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    crate::proxy::headers::without_query_param(query, |key, _| key == TOKEN_PARAMETER)
}

/// The query without `token` parameters that hold a camgate token, for
/// rules that do not consume credentials (other `token` parameters may be
/// the DVR's own).
pub fn without_camgate_tokens(query: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    match query {
        Some(q) if q.contains(token::SECRET_PREFIX) => {
            crate::proxy::headers::without_query_param(Some(q), |k, v| {
                k == TOKEN_PARAMETER && v.starts_with(token::SECRET_PREFIX)
            })
        }
        other => other.map(std::borrow::Cow::Borrowed),
    }
}

/// Longer `Authorization` values are refused unread.
const MAX_AUTHORIZATION_BYTES: usize = 4096;
/// argon2 runs at once; each holds 19 MiB, so this also bounds memory.
const CONCURRENT_VERIFICATIONS: usize = 2;
/// Verified Basic credentials are remembered this long, so a script that
/// sends them with every request pays argon2 once, not per request.
const VERIFIED_TTL: Duration = Duration::from_secs(300);
const VERIFIED_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Viewer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub digest: PasswordDigest,
    pub role: Role,
}

/// `[[user]]` and `[[token]]` from the config, indexed for lookups.
#[derive(Debug, Default)]
pub struct Credentials {
    users: HashMap<String, KnownUser>,
    tokens: HashMap<token::Digest, Token>,
    /// The admin API's requirement: any admin-role user.
    admin: Requirement,
}

#[derive(Debug)]
struct KnownUser {
    user: User,
    /// The password fingerprint a live session must carry (computed once
    /// here, not per request).
    fingerprint: String,
}

impl Credentials {
    pub fn new(users: &[User], tokens: &[Token]) -> Self {
        let known = |user: &User| KnownUser {
            user: user.clone(),
            fingerprint: session::credential_fingerprint(user.digest.as_str()),
        };
        let mut admins: Vec<String> = users
            .iter()
            .filter(|user| user.role == Role::Admin)
            .map(|user| user.name.clone())
            .collect();
        admins.sort();
        Self {
            users: users.iter().map(|u| (u.name.clone(), known(u))).collect(),
            tokens: tokens.iter().map(|t| (t.digest, t.clone())).collect(),
            admin: Requirement {
                from: Vec::new(),
                users: admins,
                tokens: Vec::new(),
            },
        }
    }

    fn fingerprint(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(|known| known.fingerprint.as_str())
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name).map(|known| &known.user)
    }

    /// Who may use the admin API's privileged routes: admin-role users.
    pub fn admin_requirement(&self) -> &Requirement {
        &self.admin
    }
}

/// Authentication state shared by the proxy and the admin API. It outlives
/// config reloads: bans, sessions and the verification pool stay; users,
/// tokens and settings are replaced by [`AuthShared::configure`].
#[derive(Debug)]
pub struct AuthShared {
    credentials: ArcSwap<Credentials>,
    pub guard: Guard,
    pub sessions: Sessions,
    verifications: Semaphore,
    verified: Mutex<HashMap<token::Digest, Instant>>,
    /// Keys the verified-credentials cache, so its entries are useless
    /// outside this process.
    cache_key: [u8; 32],
}

impl AuthShared {
    pub fn new(config: &crate::config::auth::Auth, sessions: Sessions, sink: Box<dyn BanSink>) -> Self {
        let mut cache_key = [0u8; 32];
        // Without randomness the cache is keyed by a constant: still a cache
        // of this process's own successes, and still cleared on restart.
        let _ = getrandom::fill(&mut cache_key);
        sessions.configure(config.sessions);
        Self {
            credentials: ArcSwap::from_pointee(Credentials::new(&config.users, &config.tokens)),
            guard: Guard::new(config.guard, sink),
            sessions,
            verifications: Semaphore::new(CONCURRENT_VERIFICATIONS),
            verified: Mutex::new(HashMap::new()),
            cache_key,
        }
    }

    /// A reloaded config's users, tokens and settings; bans and sessions stay
    /// (a session whose user is gone or has a new password ends on next use).
    pub fn configure(&self, config: &crate::config::auth::Auth) {
        self.credentials
            .store(Arc::new(Credentials::new(&config.users, &config.tokens)));
        self.guard.configure(config.guard);
        self.sessions.configure(config.sessions);
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials.load_full()
    }

    /// Saves the sessions file off the async workers.
    pub async fn save_sessions(self: &Arc<Self>) {
        let shared = Arc::clone(self);
        let saved = tokio::task::spawn_blocking(move || shared.sessions.save()).await;
        if let Ok(Err(e)) = saved {
            tracing::error!(err = %e, "cannot save the sessions file; sessions will not survive a restart");
        }
    }

    /// Saves session use (`last_seen`) once a minute, and everything when
    /// camgate drains.
    pub async fn keep_sessions_saved(self: Arc<Self>, drain: crate::shutdown::Drain) {
        const EVERY: Duration = Duration::from_secs(60);
        loop {
            tokio::select! {
                () = tokio::time::sleep(EVERY) => self.save_sessions().await,
                () = drain.started() => break,
            }
        }
        self.save_sessions().await;
    }

    fn cache_id(&self, user: &User, password: &[u8]) -> token::Digest {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            &self.cache_key[..],
            user.name.as_bytes(),
            b"\0",
            user.digest.as_str().as_bytes(),
            b"\0",
            password,
        ] {
            context.update(part);
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(context.finish().as_ref());
        id
    }

    /// Checks a password off the async workers (argon2 blocks for tens of
    /// milliseconds). Unknown users are checked against a decoy so their
    /// answer takes as long.
    async fn verify(&self, user: Option<&User>, password: &[u8]) -> bool {
        let now = Instant::now();
        let id = user.map(|user| self.cache_id(user, password));
        if id.is_some_and(|id| self.verified_until(&id, now)) {
            return true;
        }
        let digest = user.map(|user| user.digest.clone());
        let password = password.to_vec();
        let Ok(_permit) = self.verifications.acquire().await else {
            return false;
        };
        // The decoy is made on first use (an argon2 run too): in here.
        let matched = tokio::task::spawn_blocking(move || {
            digest
                .as_ref()
                .unwrap_or_else(|| PasswordDigest::decoy())
                .verify(&password)
        })
        .await
        .unwrap_or(false);
        let Some(id) = id.filter(|_| matched) else {
            return false;
        };
        let mut verified = self.verified();
        if verified.len() >= VERIFIED_MAX {
            verified.retain(|_, until| *until > now);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
        }
        verified.insert(id, now + VERIFIED_TTL);
        true
    }

    fn recently_verified(&self, user: &User, password: &[u8], now: Instant) -> bool {
        self.verified_until(&self.cache_id(user, password), now)
    }

    fn verified_until(&self, id: &token::Digest, now: Instant) -> bool {
        self.verified().get(id).is_some_and(|until| *until > now)
    }

    /// Whether the request's `Authorization` is camgate's own: a camgate
    /// token, or Basic credentials camgate verified in the last minutes
    /// (what a browser resends after camgate's Basic prompt). Rules that
    /// do not consume credentials still must not pass these to the DVR;
    /// anything else is the DVR's own login.
    pub fn is_camgate_authorization(&self, headers: &HeaderMap) -> bool {
        if !headers.contains_key(AUTHORIZATION) {
            return false;
        }
        match presented(headers, None) {
            Presented::Token(secret) => secret.starts_with(token::SECRET_PREFIX),
            Presented::Basic { user, password } => self
                .credentials()
                .user(&user)
                .is_some_and(|user| self.recently_verified(user, &password, Instant::now())),
            _ => false,
        }
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<token::Digest, Instant>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The credentials a request carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    None,
    Basic {
        user: String,
        password: Vec<u8>,
    },
    /// From `Authorization: Bearer` or the `token` query parameter.
    Token(String),
    /// The login page's cookie.
    Session(String),
    Malformed(&'static str),
}

/// Reads `Authorization` (Basic or Bearer), else the `token` query
/// parameter, else the session cookie: what a client sends on purpose
/// wins over what a browser sends by itself.
pub fn presented(headers: &HeaderMap, query: Option<&str>) -> Presented {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    if let Some(value) = values.next() {
        if values.next().is_some() {
            return Presented::Malformed("more than one Authorization header");
        }
        return authorization(value.as_bytes());
    }
    let mut tokens = query_values(query, TOKEN_PARAMETER);
    match (tokens.next(), tokens.next()) {
        (None, _) => match cookie(headers, session::COOKIE) {
            Some(value) => Presented::Session(value.to_owned()),
            None => Presented::None,
        },
        (Some(_), Some(_)) => Presented::Malformed("more than one token parameter"),
        (Some(token), None) if token.is_empty() => Presented::Malformed("empty token parameter"),
        (Some(token), None) => Presented::Token(token),
    }
}

/// The first cookie named `name` in the request's `Cookie` header(s)
/// (HTTP/2 may split them).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    cookies(headers, name).next()
}

/// Every cookie named `name`, in order (a page on another port of the same
/// host name can add its own of the same name).
pub fn cookies<'h>(headers: &'h HeaderMap, name: &str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

fn query_values<'q>(query: Option<&'q str>, key: &'q str) -> impl Iterator<Item = String> + 'q {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(move |(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// One `Authorization` value: Basic or Bearer.
pub fn authorization(value: &[u8]) -> Presented {
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Presented::Malformed("Authorization header too long");
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return Presented::Malformed("Authorization header is not UTF-8");
    };
    let text = text.trim();
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return Presented::Malformed("Basic credentials are not base64");
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return Presented::Malformed("Basic credentials have no ':'");
        };
        let (user, password) = decoded.split_at(colon);
        let Ok(user) = String::from_utf8(user.to_vec()) else {
            return Presented::Malformed("the user name is not UTF-8");
        };
        if user.is_empty() {
            return Presented::Malformed("empty user name");
        }
        Presented::Basic {
            user,
            password: password[1..].to_vec(),
        }
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() || rest.contains(' ') {
            return Presented::Malformed("Bearer needs exactly one token");
        }
        Presented::Token(rest.to_owned())
    } else {
        Presented::Malformed("unsupported Authorization scheme")
    }
}

/// Who was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User(String),
    Token(String),
}

/// The answer to "may this request pass this `auth` rule?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Granted(Principal),
    /// No credentials: ask for them.
    Missing,
    /// Wrong or malformed credentials (counted by the guard).
    Invalid(&'static str),
    /// Real credentials that do not cover this request.
    Forbidden(&'static str),
    /// The address (or, from outside, the user name) is banned.
    Banned(Duration),
}

/// The request, as far as authentication needs it.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub site: &'a str,
    pub rule: Option<&'a str>,
    pub requirement: &'a Requirement,
    pub client: IpAddr,
    /// The client is in one of the site's own networks: never banned.
    pub exempt: bool,
    pub path: &'a CanonicalPath,
    pub query: Option<&'a str>,
}

/// Checks `presented` against `attempt`'s rule; counts failures and audits.
pub async fn authenticate(shared: &AuthShared, attempt: &Attempt<'_>, presented: Presented) -> Outcome {
    let now = Instant::now();
    if let Some(left) = shared.guard.address_ban(attempt.client, now) {
        return Outcome::Banned(left);
    }
    let credentials = shared.credentials();
    // `name`: the user or token the request claimed, for the audit log and
    // (user names only) the per-name failure count.
    let (method, name, outcome) = match presented {
        Presented::None => return Outcome::Missing,
        Presented::Malformed(why) => ("malformed", None, Outcome::Invalid(why)),
        Presented::Token(secret) => {
            let (name, outcome) = token_outcome(&credentials, attempt, &secret);
            ("token", name, outcome)
        }
        Presented::Session(cookie) => {
            let (name, outcome) = session_outcome(&credentials, shared, attempt, &cookie);
            ("session", name, outcome)
        }
        Presented::Basic { user, password } => {
            let outcome = password_outcome(&credentials, shared, attempt, &user, &password, now).await;
            ("basic", Some(user), outcome)
        }
    };
    let name = name.as_deref();
    match outcome {
        // A session was audited at login; every image of a page is not news.
        Outcome::Granted(_) if method == "session" => outcome,
        Outcome::Granted(_) => {
            tracing::info!(target: "camgate::audit", event = "login", ok = true, method, principal = name,
                client.addr = %attempt.client, site = attempt.site, rule = attempt.rule, "access granted");
            outcome
        }
        Outcome::Invalid(why) => {
            audit(attempt, method, name, why);
            let user = name
                .filter(|_| method == "basic")
                .map(|name| user_key(attempt.site, name));
            match shared
                .guard
                .failure(attempt.client, user.as_deref(), attempt.exempt, now)
            {
                Penalty::None => outcome,
                Penalty::AddressBanned(length) => {
                    tracing::warn!(target: "camgate::audit", event = "ban", client.addr = %attempt.client,
                        site = attempt.site, seconds = length.as_secs(), "address banned after repeated failures");
                    Outcome::Banned(length)
                }
            }
        }
        Outcome::Forbidden(why) => {
            audit(attempt, method, name, why);
            outcome
        }
        Outcome::Banned(_) => {
            audit(attempt, method, name, "user name locked after repeated failures");
            outcome
        }
        Outcome::Missing => {
            if method == "session" {
                tracing::info!(target: "camgate::audit", event = "login", ok = false, method, principal = name,
                    client.addr = %attempt.client, site = attempt.site, rule = attempt.rule,
                    why = "session unknown, expired or revoked", "access refused");
            }
            outcome
        }
    }
}

/// A session cookie: one camgate issued, still alive, for this site, made
/// with the user's current password, and the rule admits the user.
fn session_outcome(
    credentials: &Credentials,
    shared: &AuthShared,
    attempt: &Attempt<'_>,
    cookie: &str,
) -> (Option<String>, Outcome) {
    let Some(digest) = session::parse_secret(cookie) else {
        return (None, Outcome::Invalid("malformed session cookie"));
    };
    let settings = shared.sessions.settings();
    let mut table = shared.sessions.table();
    let (user, same_site, current) = match table.check(&digest, crate::clock::unix_now(), settings) {
        session::Lookup::Gone => return (None, Outcome::Missing),
        session::Lookup::Valid(session) => (
            session.user.clone(),
            session.site == attempt.site,
            credentials.fingerprint(&session.user) == Some(session.credential.as_str()),
        ),
    };
    if !same_site {
        return (Some(user), Outcome::Forbidden("the session is for another site"));
    }
    if !current {
        // The user was removed or has a new password: the session ends.
        table.revoke(&digest);
        return (Some(user), Outcome::Missing);
    }
    drop(table);
    if admits(&attempt.requirement.users, &user) {
        // Granted sessions are not audited per request: no name needed.
        (None, Outcome::Granted(Principal::User(user)))
    } else {
        (Some(user), Outcome::Forbidden("this user may not use this path"))
    }
}

fn admits(users: &[String], user: &str) -> bool {
    users.iter().any(|u| u == "*" || u == user)
}

/// The login form: checks the password like Basic credentials (same guard,
/// same audit), then starts a new session and returns its cookie value. Any
/// session the browser had is ended first, so a login always rotates the
/// cookie.
pub async fn login(
    shared: &Arc<AuthShared>,
    attempt: &Attempt<'_>,
    user: String,
    password: Vec<u8>,
    previous: Option<&str>,
) -> Result<String, Outcome> {
    let outcome = authenticate(shared, attempt, Presented::Basic { user, password }).await;
    let Outcome::Granted(Principal::User(user)) = outcome else {
        return Err(outcome);
    };
    // Removed by a reload since the password was checked: no session.
    let Some(credential) = shared.credentials().fingerprint(&user).map(str::to_owned) else {
        return Err(Outcome::Invalid("wrong user name or password"));
    };
    let Ok((cookie, digest)) = session::generate() else {
        tracing::error!("no randomness for a session cookie");
        return Err(Outcome::Invalid("camgate cannot start a session"));
    };
    let now = crate::clock::unix_now();
    {
        let mut table = shared.sessions.table();
        if let Some(previous) = previous.and_then(session::parse_secret) {
            table.revoke(&previous);
        }
        table.insert(
            digest,
            session::Session {
                user: user.clone(),
                site: attempt.site.to_owned(),
                credential,
                created: now,
                last_seen: now,
            },
        );
    }
    shared.save_sessions().await;
    tracing::info!(target: "camgate::audit", event = "session", action = "start", principal = %user,
        client.addr = %attempt.client, site = attempt.site, session = %session::public_id(&digest),
        "session started");
    Ok(cookie)
}

/// Ends the browser's session (logout). True if there was one.
pub async fn logout(shared: &Arc<AuthShared>, cookie: &str, client: IpAddr, site: &str) -> bool {
    let Some(digest) = session::parse_secret(cookie) else {
        return false;
    };
    let Some(ended) = shared.sessions.table().revoke(&digest) else {
        return false;
    };
    shared.save_sessions().await;
    tracing::info!(target: "camgate::audit", event = "session", action = "logout", principal = %ended.user,
        client.addr = %client, site, session = %session::public_id(&digest), "session ended");
    true
}

/// The guard counts a user name's failures per site (the admin API is the
/// site "admin"): guessing on a public site must not lock the same user
/// out of the LAN-only admin API, or out of another site.
fn user_key(site: &str, user: &str) -> String {
    format!("{site}\0{user}")
}

/// Basic credentials: a locked name (from outside), the password, the rule's user list.
async fn password_outcome(
    credentials: &Credentials,
    shared: &AuthShared,
    attempt: &Attempt<'_>,
    user: &str,
    password: &[u8],
    now: Instant,
) -> Outcome {
    let key = user_key(attempt.site, user);
    if !attempt.exempt
        && let Some(left) = shared.guard.user_lock(&key, now)
    {
        return Outcome::Banned(left);
    }
    if !shared.verify(credentials.user(user), password).await {
        return Outcome::Invalid("wrong user name or password");
    }
    shared.guard.success(attempt.client, &key);
    if admits(&attempt.requirement.users, user) {
        Outcome::Granted(Principal::User(user.to_owned()))
    } else {
        Outcome::Forbidden("this user may not use this path")
    }
}

/// The token's name (if the secret is known) and the outcome.
fn token_outcome(
    credentials: &Credentials,
    attempt: &Attempt<'_>,
    secret: &str,
) -> (Option<String>, Outcome) {
    let Some(token) = credentials.tokens.get(&token::digest(secret)) else {
        return (None, Outcome::Invalid("unknown token"));
    };
    let outcome = if token.expired(SystemTime::now()) {
        Outcome::Forbidden("the token has expired")
    } else if token.site != attempt.site {
        Outcome::Forbidden("the token is for another site")
    } else if !admits(&attempt.requirement.tokens, &token.name) {
        Outcome::Forbidden("this rule does not accept this token")
    } else if !token.permits(attempt.rule, attempt.path, attempt.query) {
        Outcome::Forbidden("the request is outside the token's scope")
    } else {
        Outcome::Granted(Principal::Token(token.name.clone()))
    };
    (Some(token.name.clone()), outcome)
}

fn audit(attempt: &Attempt<'_>, method: &str, principal: Option<&str>, why: &str) {
    tracing::warn!(target: "camgate::audit", event = "login", ok = false, method, principal,
        client.addr = %attempt.client, site = attempt.site, rule = attempt.rule, why, "access refused");
}

#[cfg(test)]
mod tests;
