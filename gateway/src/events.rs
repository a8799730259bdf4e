//! Recent security events for the admin dashboard: the `camgate::audit`
//! tracing events (logins, bans, sessions, claims, config changes, refused
//! admin requests), kept in a bounded in-memory ring.
//!
//! [`AuditLayer`] copies each audit event at INFO, WARN or ERROR into a
//! [`RecentEvents`] ring; [`crate::telemetry::init`] installs it next to the
//! log output with its own filter, so the ring gets them even when the log
//! filter hides them. Nothing is persisted: the ring starts empty and its
//! sequence numbers start at 1 in every camgate process.
//!
//! Memory is bounded: [`CAPACITY`] events, each with at most [`MAX_FIELDS`]
//! fields of at most [`MAX_VALUE_CHARS`] characters and a message of at most
//! [`MAX_MESSAGE_CHARS`]. Audit events never carry secrets (see
//! [`crate::auth`]), but their values can come from clients (a user name
//! someone tried): whoever shows them must escape them.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// The tracing target of security events.
pub const AUDIT_TARGET: &str = "camgate::audit";
/// How many events the process-wide ring keeps.
pub const CAPACITY: usize = 500;
/// Fields kept per event besides `event` and `message`; later ones are dropped.
pub const MAX_FIELDS: usize = 16;
/// Longest field value kept, in characters (a cut value ends with `…`).
pub const MAX_VALUE_CHARS: usize = 200;
/// Longest message kept, in characters (a cut message ends with `…`).
pub const MAX_MESSAGE_CHARS: usize = 500;

/// One recorded audit event, as the admin API serializes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecurityEvent {
    /// Increases by one per recorded event, from 1, within this process.
    pub seq: u64,
    /// Unix seconds.
    pub unix_time: u64,
    /// The same time in RFC 3339, UTC: `2026-11-21T13:46:33Z`.
    pub time: String,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: &'static str,
    /// The `event` field (`login`, `ban`, `unban`, `session`, `claim`,
    /// `config`, `admin`, …); `None` if the event had none.
    pub event: Option<String>,
    /// The human-readable message (empty if none).
    pub message: String,
    /// The other fields by name (`outcome`, `action`, `ok`, `method`,
    /// `principal`, `client.addr`, `site`, `rule`, `why`, …) as text.
    pub fields: BTreeMap<&'static str, String>,
}

/// A bounded ring of the most recent security events, newest kept.
#[derive(Debug)]
pub struct RecentEvents {
    capacity: usize,
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    /// The last sequence number handed out (0: none yet).
    last_seq: u64,
    /// Oldest first.
    events: VecDeque<SecurityEvent>,
}

impl RecentEvents {
    /// An empty ring keeping at most `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            ring: Mutex::new(Ring {
                last_seq: 0,
                events: VecDeque::with_capacity(capacity.min(CAPACITY)),
            }),
        }
    }

    /// Events with a sequence number above `since` (all when `None`),
    /// newest first, at most `limit` of them. When more than `limit` are
    /// newer than `since`, the oldest of those are left out: a caller sees
    /// the gap in the sequence numbers.
    pub fn list(&self, since: Option<u64>, limit: usize) -> Vec<SecurityEvent> {
        let since = since.unwrap_or(0);
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.events
            .iter()
            .rev()
            .take_while(|event| event.seq > since)
            .take(limit)
            .cloned()
            .collect()
    }

    /// The sequence number of the newest event recorded (0: none yet), so a
    /// dashboard can start polling from now.
    pub fn last_seq(&self) -> u64 {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner).last_seq
    }

    /// Stores an event, numbering it and dropping the oldest when full.
    fn push(&self, mut event: SecurityEvent) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.last_seq += 1;
        event.seq = ring.last_seq;
        if ring.events.len() >= self.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(event);
    }
}

/// A tracing layer that records `camgate::audit` events into a
/// [`RecentEvents`]. Add it with [`AuditLayer::filtered`], whose per-layer
/// filter lets audit events through whatever the other layers' filters say.
#[derive(Debug, Clone)]
pub struct AuditLayer {
    events: Arc<RecentEvents>,
}

impl AuditLayer {
    pub fn new(events: Arc<RecentEvents>) -> Self {
        Self { events }
    }

    /// This layer behind a per-layer filter that passes exactly the events
    /// with target [`AUDIT_TARGET`] at INFO, WARN or ERROR.
    pub fn filtered<S>(self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        // The level hint keeps the process's maximum level where the log
        // filter puts it (or INFO): a filter without one raises it to
        // TRACE, and every dependency's `log::trace!` record would then be
        // built and offered to the subscriber.
        self.with_filter(tracing_subscriber::filter::filter_fn(is_audit).with_max_level_hint(Level::INFO))
    }
}

fn is_audit(metadata: &Metadata<'_>) -> bool {
    metadata.is_event() && metadata.target() == AUDIT_TARGET && *metadata.level() <= Level::INFO
}

impl<S: Subscriber> Layer<S> for AuditLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let metadata = event.metadata();
        if !is_audit(metadata) {
            return;
        }
        // Everything is formatted before the ring's lock is taken: a value's
        // `Display` may itself log.
        let mut visitor = Collect::default();
        event.record(&mut visitor);
        let now = SystemTime::now();
        // Clamped to what RFC 3339 (and humantime, which panics beyond)
        // can show: 1970 to 9999.
        let unix_time = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .min(253_402_300_799);
        self.events.push(SecurityEvent {
            seq: 0,
            unix_time,
            time: crate::clock::rfc3339(UNIX_EPOCH + Duration::from_secs(unix_time)),
            level: level_name(*metadata.level()),
            event: visitor.event,
            message: visitor.message.unwrap_or_default(),
            fields: visitor.fields,
        });
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// An event's fields as capped text.
#[derive(Default)]
struct Collect {
    event: Option<String>,
    message: Option<String>,
    fields: BTreeMap<&'static str, String>,
}

impl Collect {
    fn put(&mut self, field: &Field, text: impl FnOnce(usize) -> String) {
        match field.name() {
            "message" => self.message = Some(text(MAX_MESSAGE_CHARS)),
            "event" => self.event = Some(text(MAX_VALUE_CHARS)),
            name if self.fields.len() < MAX_FIELDS || self.fields.contains_key(name) => {
                self.fields.insert(name, text(MAX_VALUE_CHARS));
            }
            _ => {}
        }
    }
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |max| cap(value, max));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |_| value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |_| value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |_| value.to_string());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, |max| render(format_args!("{value}"), max));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` arrives here too, as its `Display`.
        self.put(field, |max| render(format_args!("{value:?}"), max));
    }
}

/// Formats `value` keeping at most `max` characters, without ever holding
/// much more than that; a Debug-quoted string (`"text"`) loses its quotes
/// and simple escapes.
fn render(value: fmt::Arguments<'_>, max: usize) -> String {
    // Room for a string's quotes and escapes, and to see that it is cut.
    let mut out = Bounded {
        text: String::new(),
        room: max.saturating_mul(2).saturating_add(2),
        cut: false,
    };
    // `Bounded` never fails; an error from the value's own formatting
    // leaves what it wrote.
    let _ = out.write_fmt(value);
    let text = match unquote(&out.text, out.cut) {
        Some(unquoted) => unquoted,
        None => out.text,
    };
    if out.cut { cut(&text, max) } else { cap(&text, max) }
}

/// A `fmt::Write` that keeps the first `room` characters and drops the rest.
struct Bounded {
    text: String,
    room: usize,
    cut: bool,
}

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.room == 0 {
                self.cut = true;
                break;
            }
            self.text.push(c);
            self.room -= 1;
        }
        Ok(())
    }
}

/// `"a \"b\""` → `a "b"`: the text of a `Debug`-formatted string, if `text`
/// is one (or, when `cut`, the start of one). Escapes other than `\"`, `\\`,
/// `\'`, `\n`, `\r`, `\t` and `\0` stay as written.
fn unquote(text: &str, cut: bool) -> Option<String> {
    let inner = text.strip_prefix('"')?;
    let inner = if cut { inner } else { inner.strip_suffix('"')? };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None, // Not one quoted string: `"a", "b"`.
            '\\' => match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('\'') => out.push('\''),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('0') => out.push('\0'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                // A lone backslash ends a quoted string only when cut.
                None if cut => {}
                None => return None,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

/// `text` if it has at most `max` characters, else cut with [`cut`].
fn cap(text: &str, max: usize) -> String {
    if text.chars().nth(max).is_none() {
        text.to_owned()
    } else {
        cut(text, max)
    }
}

/// The first `max - 1` characters of `text` and `…`.
fn cut(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// A subscriber with only an [`AuditLayer`].
    fn test_subscriber(events: &Arc<RecentEvents>) -> impl Subscriber + Send + Sync {
        tracing_subscriber::registry().with(AuditLayer::new(Arc::clone(events)).filtered())
    }

    fn recorded(capacity: usize, emit: impl FnOnce()) -> Vec<SecurityEvent> {
        let events = Arc::new(RecentEvents::new(capacity));
        tracing::subscriber::with_default(test_subscriber(&events), emit);
        events.list(None, usize::MAX)
    }

    #[test]
    fn audit_events_are_recorded_with_their_fields() {
        let address: std::net::IpAddr = [192, 0, 2, 7].into();
        let name = Some("alice");
        let list = recorded(10, || {
            tracing::warn!(target: "camgate::audit", event = "login", ok = false, method = "basic",
                principal = name, client.addr = %address, seconds = 30_u64, delta = -2_i64,
                quoted = ?"say \"hi\"", list = ?["a", "b"], "access refused");
        });
        assert_eq!(list.len(), 1);
        let event = &list[0];
        assert_eq!(event.seq, 1);
        assert_eq!(event.level, "warn");
        assert_eq!(event.event.as_deref(), Some("login"));
        assert_eq!(event.message, "access refused");
        let fields: Vec<(&str, &str)> = event.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            fields,
            [
                ("client.addr", "192.0.2.7"),
                ("delta", "-2"),
                ("list", r#"["a", "b"]"#),
                ("method", "basic"),
                ("ok", "false"),
                ("principal", "alice"),
                ("quoted", r#"say "hi""#),
                ("seconds", "30"),
            ]
        );
        assert!(event.unix_time > 1_600_000_000);
        assert_eq!(
            event.time,
            crate::clock::rfc3339(UNIX_EPOCH + Duration::from_secs(event.unix_time))
        );
        let json = serde_json::to_value(event).unwrap();
        assert_eq!(json["event"], "login");
        assert_eq!(json["fields"]["client.addr"], "192.0.2.7");
        assert_eq!(json["unix_time"], event.unix_time);
    }

    #[test]
    fn other_targets_are_not_recorded() {
        let list = recorded(10, || {
            tracing::warn!(event = "login", "not audit: this module's target");
            tracing::warn!(target: "camgate::audit::more", event = "login", "not exactly the target");
            tracing::error!(target: "camgate", "other");
            let _span = tracing::info_span!(target: "camgate::audit", "a span, not an event").entered();
            tracing::info!(target: "camgate::audit", event = "unban", "recorded");
            tracing::debug!(target: "camgate::audit", event = "session", "debug: not recorded");
            tracing::error!(target: "camgate::audit", event = "config", "recorded too");
        });
        let summary: Vec<(u64, &str, &str)> = list
            .iter()
            .map(|e| (e.seq, e.level, e.message.as_str()))
            .collect();
        assert_eq!(summary, [(2, "error", "recorded too"), (1, "info", "recorded")]);
    }

    #[test]
    fn the_ring_keeps_the_newest_and_since_and_limit_work() {
        let events = Arc::new(RecentEvents::new(3));
        assert_eq!(events.last_seq(), 0);
        assert!(events.list(None, 10).is_empty());
        tracing::subscriber::with_default(test_subscriber(&events), || {
            for n in 1..=5 {
                tracing::info!(target: "camgate::audit", event = "config", n, "change {n}");
            }
        });
        let seqs = |list: Vec<SecurityEvent>| list.into_iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(events.last_seq(), 5);
        assert_eq!(seqs(events.list(None, 10)), [5, 4, 3]);
        assert_eq!(events.list(None, 10)[0].message, "change 5");
        assert_eq!(seqs(events.list(Some(3), 10)), [5, 4]);
        assert_eq!(seqs(events.list(Some(0), 10)), [5, 4, 3]);
        assert_eq!(seqs(events.list(Some(5), 10)), Vec::<u64>::new());
        assert_eq!(seqs(events.list(Some(99), 10)), Vec::<u64>::new());
        assert_eq!(seqs(events.list(None, 2)), [5, 4]);
        assert_eq!(seqs(events.list(Some(1), 1)), [5]);
        assert!(events.list(None, 0).is_empty());
    }

    #[test]
    fn values_messages_and_field_counts_are_capped() {
        let long = "x".repeat(10_000);
        let long_debug = "é\"".repeat(5_000);
        let list = recorded(10, || {
            tracing::info!(target: "camgate::audit", event = long.as_str(), s = long.as_str(),
                d = %long, q = ?long_debug, "{long}");
            tracing::info!(target: "camgate::audit", event = "many",
                f01 = 1, f02 = 2, f03 = 3, f04 = 4, f05 = 5, f06 = 6, f07 = 7, f08 = 8, f09 = 9,
                f10 = 10, f11 = 11, f12 = 12, f13 = 13, f14 = 14, f15 = 15, f16 = 16, f17 = 17,
                f18 = 18, "many fields");
        });
        let [many, long_event] = &list[..] else {
            panic!("{list:?}")
        };
        let capped = format!("{}…", "x".repeat(MAX_VALUE_CHARS - 1));
        assert_eq!(long_event.event.as_deref(), Some(capped.as_str()));
        assert_eq!(long_event.fields["s"], capped);
        assert_eq!(long_event.fields["d"], capped);
        let q = &long_event.fields["q"];
        assert_eq!(q.chars().count(), MAX_VALUE_CHARS);
        assert!(q.starts_with("é\"é\""), "{q}");
        assert!(q.ends_with('…'));
        assert_eq!(
            long_event.message,
            format!("{}…", "x".repeat(MAX_MESSAGE_CHARS - 1))
        );
        assert_eq!(many.fields.len(), MAX_FIELDS);
        assert_eq!(many.fields["f16"], "16");
        assert!(!many.fields.contains_key("f17"));
    }

    #[test]
    fn debug_strings_lose_their_quotes_only_when_whole() {
        assert_eq!(render(format_args!("{:?}", "a\\b\n"), 50), "a\\b\n");
        assert_eq!(render(format_args!("{:?}", "tab\u{1b}"), 50), "tab\\u{1b}");
        assert_eq!(render(format_args!("{:?}", ("a", "b")), 50), r#"("a", "b")"#);
        assert_eq!(render(format_args!("{}", r#""a", "b""#), 50), r#""a", "b""#);
        assert_eq!(render(format_args!("{}", "\""), 50), "\"");
        assert_eq!(render(format_args!("{:?}", ""), 50), "");
        assert_eq!(render(format_args!("{}", "short"), 5), "short");
        assert_eq!(render(format_args!("{}", "longer"), 5), "long…");
    }

    #[test]
    fn an_empty_ring_lists_nothing() {
        let events = RecentEvents::new(0);
        assert!(events.list(None, usize::MAX).is_empty());
        events.push(SecurityEvent {
            seq: 0,
            unix_time: 0,
            time: String::new(),
            level: "info",
            event: None,
            message: String::new(),
            fields: BTreeMap::new(),
        });
        assert_eq!(events.list(None, 10).len(), 1, "capacity is at least one");
    }
}
