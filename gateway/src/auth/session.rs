//! Browser sessions: what the login page hands out.
//!
//! The cookie holds 256 random bits; camgate keeps only their SHA-256, so
//! the sessions file (0600 under the state dir) cannot be replayed as
//! cookies. A session is bound to one site and to the user's password hash
//! at login (a new password ends it), and ends after `idle` without use or
//! `lifetime` after login, on logout, or when the admin revokes it.
//!
//! [`SessionTable`] is pure (the caller passes the time); [`Sessions`] adds
//! the lock and the file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::token::{self, Digest};
use crate::clock::unix_now;

/// `__Host-`: Secure, `Path=/`, no `Domain`, so no other host (not even a
/// sibling subdomain) can set or read it.
pub const COOKIE: &str = "__Host-camgate-session";
/// The login form's double-submit CSRF cookie.
pub const CSRF_COOKIE: &str = "__Host-camgate-csrf";
/// Every cookie the proxy sets starts with this; none reaches the DVR.
pub const COOKIE_PREFIX: &str = "__Host-camgate-";
/// The admin interface's session (plain HTTP on the LAN, so no `__Host-`,
/// which needs Secure). Browsers send it to every port of the host name,
/// the proxy's too: the proxy strips it like its own.
pub const ADMIN_COOKIE: &str = "camgate-admin";
/// The session of the admin interface: the site name no `[[site]]` may take.
pub const ADMIN_SITE: &str = "admin";

/// The CSRF token for a session cookie: derived from the cookie, so it
/// needs no storage, and only a page that can read camgate's JSON (same
/// origin) learns it.
pub fn csrf_token(cookie: &str) -> String {
    token::hex(&token::digest(&format!("camgate admin csrf\0{cookie}"))[..16])
}
const SECRET_PREFIX: &str = "cgs_";

/// Oldest sessions go first beyond these.
const MAX_SESSIONS: usize = 10_000;
const MAX_PER_USER: usize = 100;
/// `last_seen` moves at most this often, so a busy MJPEG wall does not
/// rewrite the file; the idle limit is this coarse.
const TOUCH_INTERVAL_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// Unused this long: ended.
    pub idle: Duration,
    /// This long after login: ended, however busy.
    pub lifetime: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(24 * 3600),
            lifetime: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub user: String,
    pub site: String,
    /// [`credential_fingerprint`] of the password hash at login.
    pub credential: String,
    /// Unix seconds.
    pub created: u64,
    pub last_seen: u64,
}

/// A short digest of a user's password hash: a session made before the
/// password changed no longer matches.
pub fn credential_fingerprint(password_hash: &str) -> String {
    token::hex(&token::digest(password_hash)[..16])
}

/// A new cookie value and the digest the table keeps.
pub fn generate() -> Result<(String, Digest), getrandom::Error> {
    token::generate_prefixed(SECRET_PREFIX)
}

/// A cookie value's digest, or `None` when it is not one camgate could
/// have issued (tampered or forged).
pub fn parse_secret(value: &str) -> Option<Digest> {
    let hex = value.strip_prefix(SECRET_PREFIX)?;
    token::parse_digest(hex)?;
    Some(token::digest(value))
}

/// The public name of a session (for the admin API): a prefix of its
/// digest, which says nothing about the cookie.
pub fn public_id(digest: &Digest) -> String {
    token::hex(&digest[..8])
}

#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    Valid(&'a Session),
    /// Unknown, expired or revoked: the browser must log in again.
    Gone,
}

/// The sessions, keyed by cookie digest.
#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: HashMap<Digest, Session>,
    /// Changed since the last save.
    dirty: bool,
}

impl SessionTable {
    pub fn insert(&mut self, digest: Digest, session: Session) {
        let user_sessions = self.sessions.values().filter(|s| s.user == session.user).count();
        if user_sessions >= MAX_PER_USER {
            self.evict_oldest(|s| s.user == session.user);
        }
        if self.sessions.len() >= MAX_SESSIONS {
            self.evict_oldest(|_| true);
        }
        self.sessions.insert(digest, session);
        self.dirty = true;
    }

    fn evict_oldest(&mut self, among: impl Fn(&Session) -> bool) {
        let oldest = self
            .sessions
            .iter()
            .filter(|(_, s)| among(s))
            .min_by_key(|(_, s)| s.last_seen)
            .map(|(digest, _)| *digest);
        if let Some(digest) = oldest {
            self.sessions.remove(&digest);
        }
    }

    /// Finds a live session and marks it used; drops it if it expired.
    pub fn check(&mut self, digest: &Digest, now: u64, settings: SessionSettings) -> Lookup<'_> {
        let Some(session) = self.sessions.get(digest) else {
            return Lookup::Gone;
        };
        if !alive(session, now, settings) {
            self.sessions.remove(digest);
            self.dirty = true;
            return Lookup::Gone;
        }
        let session = self.sessions.get_mut(digest).expect("present: checked above");
        if now >= session.last_seen + TOUCH_INTERVAL_SECS {
            session.last_seen = now;
            self.dirty = true;
        }
        Lookup::Valid(session)
    }

    pub fn revoke(&mut self, digest: &Digest) -> Option<Session> {
        let removed = self.sessions.remove(digest);
        self.dirty |= removed.is_some();
        removed
    }

    /// Revokes the session whose [`public_id`] is `id`.
    pub fn revoke_public(&mut self, id: &str) -> Option<Session> {
        let digest = *self.sessions.keys().find(|digest| public_id(digest) == id)?;
        self.revoke(&digest)
    }

    /// Live sessions with their public ids, newest first.
    pub fn list(&self, now: u64, settings: SessionSettings) -> Vec<(String, Session)> {
        let mut live: Vec<(String, Session)> = self
            .sessions
            .iter()
            .filter(|(_, s)| alive(s, now, settings))
            .map(|(digest, s)| (public_id(digest), s.clone()))
            .collect();
        live.sort_by(|a, b| b.1.created.cmp(&a.1.created).then_with(|| a.0.cmp(&b.0)));
        live
    }

    /// The file's contents, without expired sessions.
    fn to_file(&self, now: u64, settings: SessionSettings) -> SessionFile {
        SessionFile {
            sessions: self
                .sessions
                .iter()
                .filter(|(_, s)| alive(s, now, settings))
                .map(|(digest, s)| StoredSession {
                    id: token::hex(digest),
                    session: s.clone(),
                })
                .collect(),
        }
    }

    fn from_file(file: SessionFile) -> Result<Self, String> {
        let mut sessions = HashMap::new();
        for stored in file.sessions {
            let digest =
                token::parse_digest(&stored.id).ok_or_else(|| format!("bad session id {:?}", stored.id))?;
            sessions.insert(digest, stored.session);
        }
        Ok(Self {
            sessions,
            dirty: false,
        })
    }
}

fn alive(session: &Session, now: u64, settings: SessionSettings) -> bool {
    now < session.created.saturating_add(settings.lifetime.as_secs())
        && now < session.last_seen.saturating_add(settings.idle.as_secs())
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFile {
    sessions: Vec<StoredSession>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSession {
    /// SHA-256 of the cookie value, hex.
    id: String,
    #[serde(flatten)]
    session: Session,
}

/// The session table behind a lock, kept in a file.
#[derive(Debug)]
pub struct Sessions {
    table: Mutex<SessionTable>,
    settings: Mutex<SessionSettings>,
    /// `None`: kept in memory only (unit tests).
    path: Option<PathBuf>,
    /// Saves happen one at a time, so an older snapshot never lands last.
    saving: Mutex<()>,
}

impl Sessions {
    /// Reads `path`; a missing file is an empty table, an unreadable one
    /// is set aside (`.bad`) with a warning: users log in again. Settings
    /// come with [`Sessions::configure`].
    pub fn load(path: PathBuf) -> Self {
        let table = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes)
                .map_err(|e| e.to_string())
                .and_then(SessionTable::from_file)
            {
                Ok(table) => table,
                Err(why) => {
                    tracing::warn!(path = %path.display(), why, "the sessions file is damaged; everyone must log in again");
                    let mut aside = path.clone().into_os_string();
                    aside.push(".bad");
                    let _ = std::fs::rename(&path, aside);
                    SessionTable::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SessionTable::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), err = %e, "cannot read the sessions file; everyone must log in again");
                SessionTable::default()
            }
        };
        Self {
            table: Mutex::new(table),
            settings: Mutex::new(SessionSettings::default()),
            path: Some(path),
            saving: Mutex::new(()),
        }
    }

    pub fn in_memory() -> Self {
        Self {
            table: Mutex::new(SessionTable::default()),
            settings: Mutex::new(SessionSettings::default()),
            path: None,
            saving: Mutex::new(()),
        }
    }

    pub fn configure(&self, settings: SessionSettings) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = settings;
    }

    pub fn settings(&self) -> SessionSettings {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn table(&self) -> MutexGuard<'_, SessionTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the table if it changed (blocking: call it off the async
    /// workers). Atomic: a crash leaves the old file or the new one.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let _one_at_a_time = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let settings = self.settings();
        let bytes = {
            let mut table = self.table();
            if !table.dirty {
                return Ok(());
            }
            table.dirty = false;
            serde_json::to_vec(&table.to_file(unix_now(), settings)).map_err(std::io::Error::other)?
        };
        let result = crate::fsutil::replace_private(path, &bytes);
        if result.is_err() {
            self.table().dirty = true;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: SessionSettings = SessionSettings {
        idle: Duration::from_secs(3600),
        lifetime: Duration::from_secs(10 * 3600),
    };

    fn session(user: &str, at: u64) -> Session {
        Session {
            user: user.to_owned(),
            site: "home".to_owned(),
            credential: credential_fingerprint("$argon2id$x"),
            created: at,
            last_seen: at,
        }
    }

    #[test]
    fn secrets_parse_only_in_the_form_camgate_issues() {
        let (secret, digest) = generate().unwrap();
        assert_eq!(parse_secret(&secret), Some(digest));
        for bad in [
            "",
            "cgs_",
            &secret[..secret.len() - 1],
            &secret.replace("cgs_", "cgt_"),
            &format!("{secret}0"),
            &secret.to_uppercase(),
            "cgs_zz00000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(parse_secret(bad), None, "{bad}");
        }
    }

    #[test]
    fn sessions_end_when_idle_and_at_their_lifetime() {
        let mut table = SessionTable::default();
        let digest = [1u8; 32];
        table.insert(digest, session("ann", 1000));
        // Used every 50 minutes: alive until the lifetime ends.
        let mut now = 1000;
        while now + 3000 < 1000 + 10 * 3600 {
            now += 3000;
            assert!(
                matches!(table.check(&digest, now, SETTINGS), Lookup::Valid(_)),
                "{now}"
            );
        }
        assert_eq!(table.check(&digest, 1000 + 10 * 3600, SETTINGS), Lookup::Gone);
        assert_eq!(
            table.check(&digest, 1000, SETTINGS),
            Lookup::Gone,
            "removed, not just hidden"
        );

        table.insert(digest, session("ann", 1000));
        assert!(matches!(
            table.check(&digest, 1000 + 3599, SETTINGS),
            Lookup::Valid(_)
        ));
        // last_seen moved to 4599: idle until 8199.
        assert!(matches!(table.check(&digest, 8198, SETTINGS), Lookup::Valid(_)));
        assert_eq!(table.check(&[9u8; 32], 8198, SETTINGS), Lookup::Gone);
        table.dirty = false;
        assert_eq!(table.check(&digest, 8198 + 3601, SETTINGS), Lookup::Gone);
        assert!(table.dirty, "an expiry is saved");
    }

    #[test]
    fn touches_are_coarse_so_busy_sessions_do_not_rewrite_the_file() {
        let mut table = SessionTable::default();
        table.insert([1; 32], session("ann", 1000));
        table.dirty = false;
        for now in 1000..1000 + TOUCH_INTERVAL_SECS {
            assert!(matches!(table.check(&[1; 32], now, SETTINGS), Lookup::Valid(_)));
        }
        assert!(!table.dirty);
        let _ = table.check(&[1; 32], 1000 + TOUCH_INTERVAL_SECS, SETTINGS);
        assert!(table.dirty);
    }

    #[test]
    fn caps_evict_the_least_recently_used() {
        let mut table = SessionTable::default();
        for i in 0..MAX_PER_USER as u64 + 5 {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&i.to_be_bytes());
            table.insert(digest, session("ann", 1000 + i));
        }
        assert_eq!(table.sessions.len(), MAX_PER_USER);
        let oldest_left = table.sessions.values().map(|s| s.last_seen).min().unwrap();
        assert_eq!(oldest_left, 1005);
    }

    #[test]
    fn the_file_round_trips_and_keeps_no_cookie_and_no_expired_session() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.json");
        let sessions = Sessions::load(path.clone());
        sessions.configure(SETTINGS);
        let (secret, digest) = generate().unwrap();
        let now = unix_now();
        sessions.table().insert(digest, session("ann", now));
        sessions.table().insert([7; 32], session("bob", now - 20 * 3600));
        sessions.save().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&secret[4..]), "only digests are stored");
        assert!(!text.contains("bob"), "expired sessions are not written");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let again = Sessions::load(path.clone());
        assert!(matches!(again.table().check(&digest, now, SETTINGS), Lookup::Valid(s) if s.user == "ann"));

        std::fs::write(&path, b"{not json").unwrap();
        let damaged = Sessions::load(path);
        assert!(damaged.table().sessions.is_empty());
        assert!(dir.path().join("sessions.json.bad").exists());
    }

    #[test]
    fn revocation_by_public_id() {
        let mut table = SessionTable::default();
        table.insert([3; 32], session("ann", 1000));
        let listed = table.list(1000, SETTINGS);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0.len(), 16);
        assert!(table.revoke_public("0000000000000000").is_none());
        assert_eq!(
            table.revoke_public(&listed[0].0).map(|s| s.user),
            Some("ann".to_owned())
        );
        assert_eq!(table.check(&[3; 32], 1000, SETTINGS), Lookup::Gone);
    }
}
