//! The brute-force guard: failure counters per client address and per user
//! name (the caller keys names by site), and temporary bans that double
//! with each repeat (fail2ban's idea, built in, with a visible list and
//! manual unban).
//!
//! Pure bookkeeping: the caller passes the time, so tests need no clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardSettings {
    /// Failures within `window` that start a ban.
    pub failures: u32,
    pub window: Duration,
    /// The first ban; each further ban doubles, up to `max_ban`.
    pub ban: Duration,
    pub max_ban: Duration,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            failures: 10,
            window: Duration::from_secs(10 * 60),
            ban: Duration::from_secs(60),
            max_ban: Duration::from_secs(24 * 3600),
        }
    }
}

/// Where bans go besides camgate's own check; the firewall pushes them
/// into an nftables set so a banned address cannot even open a connection.
pub trait BanSink: Send + Sync {
    fn banned(&self, address: IpAddr, until: SystemTime);
    fn lifted(&self, address: IpAddr);
}

/// No firewall yet: camgate's own 429 is the whole ban.
#[derive(Debug, Default)]
pub struct NoSink;

impl BanSink for NoSink {
    fn banned(&self, _: IpAddr, _: SystemTime) {}
    fn lifted(&self, _: IpAddr) {}
}

/// Counters are dropped beyond this many tracked keys (see [`prune`]), so a
/// flood from many addresses cannot grow memory without bound.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Counter {
    failures: u32,
    window_start: Instant,
    /// Bans so far; the next lasts `ban × 2^bans`.
    bans: u32,
    banned_until: Option<Instant>,
    last_failure: Instant,
}

#[derive(Debug, Default)]
struct Tables {
    addresses: HashMap<IpAddr, Counter>,
    users: HashMap<String, Counter>,
    /// Login form posts per address in the current minute.
    logins: HashMap<IpAddr, (Instant, u32)>,
}

/// Login form posts one address may make per minute, right or wrong: each
/// costs an argon2 run, and guessing stays slow even from exempt networks.
const LOGINS_PER_MINUTE: u32 = 10;
const MINUTE: Duration = Duration::from_secs(60);

/// A ban, as listed by the admin API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ban {
    pub address: IpAddr,
    pub remaining_secs: u64,
    /// How many times this address has been banned recently.
    pub count: u32,
}

pub struct Guard {
    settings: Mutex<GuardSettings>,
    tables: Mutex<Tables>,
    sink: Box<dyn BanSink>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

/// What a failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Penalty {
    None,
    /// The address was banned for this long.
    AddressBanned(Duration),
}

impl Guard {
    pub fn new(settings: GuardSettings, sink: Box<dyn BanSink>) -> Self {
        Self {
            settings: Mutex::new(settings),
            tables: Mutex::new(Tables::default()),
            sink,
        }
    }

    /// New settings apply to the next failure; bans and counters stay.
    pub fn configure(&self, settings: GuardSettings) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = settings;
    }

    fn settings(&self) -> GuardSettings {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Some(retry_after)` while `address` is banned.
    pub fn address_ban(&self, address: IpAddr, now: Instant) -> Option<Duration> {
        remaining(self.tables().addresses.get(&address), now)
    }

    /// `Some(retry_after)` while logins as `user` are locked for clients
    /// outside the site's own networks.
    pub fn user_lock(&self, user: &str, now: Instant) -> Option<Duration> {
        remaining(self.tables().users.get(user), now)
    }

    /// Counts a failed credential. `exempt` clients (the site's own `from`
    /// networks) are never banned and never lock a user out.
    pub fn failure(&self, address: IpAddr, user: Option<&str>, exempt: bool, now: Instant) -> Penalty {
        if exempt {
            return Penalty::None;
        }
        let settings = self.settings();
        let mut tables = self.tables();
        let ban = count(
            tables.addresses.entry(address).or_insert_with(|| fresh(now)),
            &settings,
            now,
        );
        if let Some(user) = user {
            let counter = tables.users.entry(user.to_owned()).or_insert_with(|| fresh(now));
            // A user name takes several times an address's failures: one
            // attacker must not lock the real user out as easily.
            let user_settings = GuardSettings {
                failures: settings.failures.saturating_mul(3),
                ..settings
            };
            let _ = count(counter, &user_settings, now);
        }
        prune(&mut tables, now);
        drop(tables);
        // The firewall's sink does I/O: not under the lock.
        match ban {
            Some(length) => {
                self.sink.banned(address, SystemTime::now() + length);
                Penalty::AddressBanned(length)
            }
            None => Penalty::None,
        }
    }

    /// Counts a login form post; `Err(retry_after)` over the rate limit.
    pub fn login_attempt(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut tables = self.tables();
        if tables.logins.len() >= MAX_TRACKED {
            tables
                .logins
                .retain(|_, (start, _)| now.duration_since(*start) < MINUTE);
            if tables.logins.len() >= MAX_TRACKED {
                // Flooded from very many addresses: refuse new ones until a
                // minute passes rather than grow.
                return Err(MINUTE);
            }
        }
        let (start, count) = tables.logins.entry(address).or_insert((now, 0));
        if now.duration_since(*start) >= MINUTE {
            *start = now;
            *count = 0;
        }
        if *count >= LOGINS_PER_MINUTE {
            return Err(MINUTE.saturating_sub(now.duration_since(*start)));
        }
        *count += 1;
        Ok(())
    }

    /// A correct credential clears the failure counts (not the ban history).
    pub fn success(&self, address: IpAddr, user: &str) {
        let mut tables = self.tables();
        if let Some(counter) = tables.addresses.get_mut(&address) {
            counter.failures = 0;
        }
        if let Some(counter) = tables.users.get_mut(user) {
            counter.failures = 0;
        }
    }

    pub fn bans(&self, now: Instant) -> Vec<Ban> {
        let mut bans: Vec<Ban> = self
            .tables()
            .addresses
            .iter()
            .filter_map(|(address, counter)| {
                remaining(Some(counter), now).map(|left| Ban {
                    address: *address,
                    remaining_secs: left.as_secs().max(1),
                    count: counter.bans,
                })
            })
            .collect();
        bans.sort_by_key(|ban| ban.address);
        bans
    }

    /// Lifts a ban and forgets the address's history. False if it was not banned.
    pub fn lift(&self, address: IpAddr, now: Instant) -> bool {
        let mut tables = self.tables();
        let banned = remaining(tables.addresses.get(&address), now).is_some();
        tables.addresses.remove(&address);
        drop(tables);
        if banned {
            self.sink.lifted(address);
        }
        banned
    }
}

fn fresh(now: Instant) -> Counter {
    Counter {
        failures: 0,
        window_start: now,
        bans: 0,
        banned_until: None,
        last_failure: now,
    }
}

fn remaining(counter: Option<&Counter>, now: Instant) -> Option<Duration> {
    counter
        .and_then(|c| c.banned_until)
        .and_then(|until| until.checked_duration_since(now))
        .filter(|left| !left.is_zero())
}

/// Adds a failure; returns the ban length if this failure starts a ban.
fn count(counter: &mut Counter, settings: &GuardSettings, now: Instant) -> Option<Duration> {
    // The history is forgotten after `max_ban` of good behaviour, counted
    // from the end of the last ban.
    let quiet_since = counter
        .banned_until
        .map_or(counter.last_failure, |until| until.max(counter.last_failure));
    if now.saturating_duration_since(quiet_since) > settings.max_ban {
        counter.bans = 0;
    }
    if now.duration_since(counter.window_start) > settings.window {
        counter.failures = 0;
        counter.window_start = now;
    }
    counter.last_failure = now;
    counter.failures += 1;
    if counter.failures < settings.failures.max(1) {
        return None;
    }
    let length = settings
        .ban
        .saturating_mul(1u32.checked_shl(counter.bans.min(31)).unwrap_or(u32::MAX))
        .min(settings.max_ban);
    counter.bans = counter.bans.saturating_add(1);
    counter.failures = 0;
    counter.window_start = now;
    counter.banned_until = Some(now + length);
    Some(length)
}

/// Over [`MAX_TRACKED`], keeps active bans first, then the most recent
/// failures, down to three quarters of the cap (so this runs once per many
/// new keys): a flood of fresh keys cannot wipe a count under way.
fn prune(tables: &mut Tables, now: Instant) {
    fn prune_map<K: Clone + Eq + std::hash::Hash>(map: &mut HashMap<K, Counter>, now: Instant) {
        if map.len() <= MAX_TRACKED {
            return;
        }
        let mut ranked: Vec<(K, (bool, Instant))> = map
            .iter()
            .map(|(k, c)| (k.clone(), (remaining(Some(c), now).is_some(), c.last_failure)))
            .collect();
        ranked.sort_unstable_by_key(|(_, rank)| std::cmp::Reverse(*rank));
        for (key, _) in ranked.into_iter().skip(MAX_TRACKED / 4 * 3) {
            map.remove(&key);
        }
    }
    prune_map(&mut tables.addresses, now);
    prune_map(&mut tables.users, now);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);
    impl BanSink for Arc<Recorder> {
        fn banned(&self, address: IpAddr, _: SystemTime) {
            self.0.lock().unwrap().push(format!("ban {address}"));
        }
        fn lifted(&self, address: IpAddr) {
            self.0.lock().unwrap().push(format!("lift {address}"));
        }
    }

    fn settings() -> GuardSettings {
        GuardSettings {
            failures: 3,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(10),
            max_ban: Duration::from_secs(100),
        }
    }

    #[test]
    fn bans_start_at_the_threshold_and_double_up_to_the_cap() {
        let recorder = Arc::new(Recorder::default());
        let guard = Guard::new(settings(), Box::new(Arc::clone(&recorder)));
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let mut now = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..6 {
            assert_eq!(guard.failure(ip, Some("alice"), false, now), Penalty::None);
            assert_eq!(guard.failure(ip, Some("alice"), false, now), Penalty::None);
            let Penalty::AddressBanned(length) = guard.failure(ip, Some("alice"), false, now) else {
                panic!("third failure bans");
            };
            assert_eq!(guard.address_ban(ip, now), Some(length));
            lengths.push(length.as_secs());
            now += length + Duration::from_secs(1);
            assert_eq!(guard.address_ban(ip, now), None);
        }
        assert_eq!(lengths, [10, 20, 40, 80, 100, 100]);
        assert_eq!(recorder.0.lock().unwrap().len(), 6);
    }

    #[test]
    fn exempt_clients_never_count_and_success_resets() {
        let guard = Guard::new(settings(), Box::new(NoSink));
        let lan: IpAddr = "192.168.1.5".parse().unwrap();
        let now = Instant::now();
        for _ in 0..50 {
            assert_eq!(guard.failure(lan, Some("alice"), true, now), Penalty::None);
        }
        assert_eq!(guard.address_ban(lan, now), None);
        assert_eq!(guard.user_lock("alice", now), None);

        let wan: IpAddr = "203.0.113.9".parse().unwrap();
        guard.failure(wan, None, false, now);
        guard.failure(wan, None, false, now);
        guard.success(wan, "alice");
        assert_eq!(guard.failure(wan, None, false, now), Penalty::None);
    }

    #[test]
    fn failures_outside_the_window_start_over_and_users_lock_later() {
        let guard = Guard::new(settings(), Box::new(NoSink));
        let mut now = Instant::now();
        for i in 0..8u8 {
            let ip = IpAddr::from([198, 51, 100, i]);
            assert_eq!(guard.failure(ip, Some("bob"), false, now), Penalty::None);
            now += Duration::from_secs(1);
        }
        assert_eq!(guard.user_lock("bob", now), None);
        let ip = IpAddr::from([198, 51, 100, 99]);
        guard.failure(ip, Some("bob"), false, now);
        assert!(
            guard.user_lock("bob", now).is_some(),
            "9 = 3 × 3 failures lock the name"
        );

        let slow: IpAddr = "203.0.113.1".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(guard.failure(slow, None, false, now), Penalty::None);
            guard.failure(slow, None, false, now);
            now += Duration::from_secs(61);
        }
    }

    #[test]
    fn bans_are_listed_and_lifted() {
        let recorder = Arc::new(Recorder::default());
        let guard = Guard::new(settings(), Box::new(Arc::clone(&recorder)));
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            guard.failure(ip, None, false, now);
        }
        assert_eq!(
            guard.bans(now),
            [Ban {
                address: ip,
                remaining_secs: 10,
                count: 1
            }]
        );
        assert!(guard.lift(ip, now));
        assert!(!guard.lift(ip, now));
        assert!(guard.bans(now).is_empty());
        assert_eq!(
            *recorder.0.lock().unwrap(),
            ["ban 2001:db8::1", "lift 2001:db8::1"]
        );
    }

    #[test]
    fn the_login_form_is_rate_limited_per_address() {
        let guard = Guard::new(settings(), Box::new(NoSink));
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("203.0.113.7".parse().unwrap(), "203.0.113.8".parse().unwrap());
        for i in 0..LOGINS_PER_MINUTE {
            assert_eq!(
                guard.login_attempt(a, t0 + Duration::from_secs(u64::from(i))),
                Ok(())
            );
        }
        assert_eq!(
            guard.login_attempt(a, t0 + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        assert_eq!(guard.login_attempt(b, t0 + Duration::from_secs(20)), Ok(()));
        assert_eq!(guard.login_attempt(a, t0 + MINUTE), Ok(()));
    }

    #[test]
    fn a_flood_of_new_keys_keeps_bans_and_recent_counts() {
        let guard = Guard::new(settings(), Box::new(NoSink));
        let t0 = Instant::now();
        let banned: IpAddr = "203.0.113.1".parse().unwrap();
        for _ in 0..3 {
            let _ = guard.failure(banned, None, false, t0);
        }
        let counting: IpAddr = "203.0.113.2".parse().unwrap();
        let _ = guard.failure(counting, None, false, t0 + Duration::from_secs(2));
        // Older one-off failures, then more keys than the cap.
        for i in 0..MAX_TRACKED as u32 {
            let address = IpAddr::from(std::net::Ipv6Addr::from(u128::from(i) + 1));
            let _ = guard.failure(address, None, false, t0 + Duration::from_secs(1));
        }
        let tables = guard.tables();
        assert!(tables.addresses.len() <= MAX_TRACKED);
        assert!(tables.addresses.contains_key(&banned));
        assert_eq!(tables.addresses[&counting].failures, 1, "the recent count stays");
    }
}
