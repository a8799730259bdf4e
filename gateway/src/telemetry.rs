//! Logging: tracing to stderr. Human format with colours on a terminal;
//! otherwise one line per event with a `<N>` syslog priority prefix and no
//! timestamp, which journald turns into the entry's priority and time.
//!
//! Security events (target `camgate::audit`) also go to the ring of recent
//! events the admin dashboard shows ([`recent_events`]), whatever the log
//! filter: the filter applies to the log output only.

use std::io::IsTerminal;
use std::sync::{Arc, LazyLock};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::events::{AuditLayer, RecentEvents};

/// Checks log filter directives against the subset camgate accepts:
/// comma-separated `LEVEL` or `TARGET=LEVEL`, and returns them normalized
/// (no spaces, which tracing-subscriber rejects). Its own parser panics on
/// some inputs (e.g. a leading space before non-ASCII), and a panic aborts
/// the daemon, so nothing reaches it unchecked.
pub fn check_filter(directives: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |s: &str| {
        LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s)) || matches!(s, "0" | "1" | "2" | "3" | "4" | "5")
    };
    let is_target = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-' | b'.'))
    };
    if directives.trim().is_empty() {
        return Err("it is empty".to_owned());
    }
    let parts: Vec<&str> = directives
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect();
    for part in &parts {
        let valid = match part.split_once('=') {
            Some((target, level)) => is_target(target) && is_level(level),
            None => is_level(part),
        };
        if !valid {
            return Err(format!(
                "{part:?} is not LEVEL or TARGET=LEVEL (levels: {}; span and field filters are not supported)",
                LEVELS.join(", ")
            ));
        }
    }
    let normalized = parts.join(",");
    EnvFilter::builder()
        .parse(&normalized)
        .map_err(|e| e.to_string())?;
    Ok(normalized)
}

/// Changes the log filter at run time (on reload).
#[derive(Debug, Clone)]
pub struct LogControl {
    /// `None` when someone else owns the subscriber, or a valid `RUST_LOG`
    /// (read once, at start) wins over the config.
    handle: Option<reload::Handle<EnvFilter, tracing_subscriber::Registry>>,
}

impl LogControl {
    /// For embedding camgate where someone else owns the subscriber (tests).
    pub fn detached() -> Self {
        Self { handle: None }
    }

    /// Applies config filter directives (validated with the config),
    /// unless a valid `RUST_LOG` overrides them.
    pub fn apply(&self, directives: &str) {
        let Some(handle) = &self.handle else { return };
        if let Err(e) = handle.reload(build_filter(directives)) {
            tracing::warn!(err = %e, "cannot change the log filter");
        }
    }
}

/// A filter from directives that passed [`check_filter`]; targets they do
/// not name log at INFO.
fn build_filter(directives: &str) -> EnvFilter {
    EnvFilter::builder()
        .with_default_directive(Level::INFO.into())
        .parse(directives)
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Filled by the subscriber [`init`] installs. A global because that
/// subscriber is one too (tracing's global default, for the whole process):
/// the admin API reads the ring without plumbing through the daemon.
static RECENT_EVENTS: LazyLock<Arc<RecentEvents>> =
    LazyLock::new(|| Arc::new(RecentEvents::new(crate::events::CAPACITY)));

/// The process-wide ring of recent security events, for the admin API.
/// Empty (and never filled) when [`init`] was not called, as in unit tests
/// and embedding tests that own the subscriber.
pub fn recent_events() -> &'static RecentEvents {
    &RECENT_EVENTS
}

/// Installs the global subscriber with `default_directives` (overridden by
/// a valid `RUST_LOG`). Call once, before anything logs.
pub fn init(default_directives: &str) -> LogControl {
    // `RUST_LOG` goes through the same check as the config: a typo there
    // must not crash camgate.
    let env = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .map(|env| check_filter(&env));
    let env_directives = env.as_ref().and_then(|checked| checked.as_ref().ok());
    let (filter, handle) = reload::Layer::new(build_filter(
        env_directives.map_or(default_directives, String::as_str),
    ));
    let stderr = std::io::stderr;
    let events = Arc::clone(&RECENT_EVENTS);
    if std::io::stderr().is_terminal() {
        subscriber(
            tracing_subscriber::fmt::layer().with_writer(stderr),
            filter,
            events,
        )
        .init();
    } else {
        let format = tracing_subscriber::fmt::format().without_time().with_ansi(false);
        subscriber(
            tracing_subscriber::fmt::layer()
                .with_writer(stderr)
                // Span fields are formatted by the layer, not the event
                // format: without this they carry ANSI colour codes.
                .with_ansi(false)
                .event_format(SyslogPrefix(format)),
            filter,
            events,
        )
        .init();
    }
    if let Some(Err(e)) = &env {
        tracing::warn!("ignoring RUST_LOG: {e}");
    }
    LogControl {
        handle: env_directives.is_none().then_some(handle),
    }
}

/// The subscriber: `output` (the log) behind the reloadable `filter`, and
/// next to it the recorder of security events behind its own filter, so
/// that a quiet log does not hide them from the dashboard. With the filter
/// per layer instead of global, events the log filter drops still reach the
/// registry; `callsite_enabled` keeps that cheap for all but audit events.
fn subscriber<L>(
    output: L,
    filter: reload::Layer<EnvFilter, Registry>,
    events: Arc<RecentEvents>,
) -> impl Subscriber + Send + Sync + 'static
where
    L: Layer<Registry> + Send + Sync + 'static,
{
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(AuditLayer::new(events).filtered())
}

/// Prefixes each line with its syslog priority (`<3>` error … `<7>` debug).
struct SyslogPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use tracing_subscriber::reload;

    use super::{LogControl, build_filter, check_filter, recent_events, subscriber};
    use crate::events::RecentEvents;

    /// A log destination tests can read.
    #[derive(Clone, Default)]
    struct Output(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Output {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Output {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(
                &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner),
            ))
            .unwrap()
        }
    }

    #[test]
    fn audit_events_are_recorded_whatever_the_log_filter() {
        let output = Output::default();
        let writer = output.clone();
        let log = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time();
        let (filter, handle) = reload::Layer::new(build_filter("warn"));
        let control = LogControl { handle: Some(handle) };
        let events = Arc::new(RecentEvents::new(10));
        tracing::subscriber::with_default(subscriber(log, filter, Arc::clone(&events)), || {
            tracing::info!(target: "camgate::audit", event = "session", action = "start", "quiet audit");
            tracing::info!("quiet other");
            tracing::warn!("loud other");
            let written = output.take();
            assert!(written.contains("loud other"), "{written}");
            assert!(!written.contains("quiet"), "{written}");

            control.apply("off");
            tracing::warn!(target: "camgate::audit", event = "ban", "silenced audit");
            assert_eq!(output.take(), "");

            control.apply("info");
            tracing::info!(target: "camgate::audit", event = "unban", "logged audit");
            tracing::info!("logged other");
            let written = output.take();
            assert!(written.contains("logged audit"), "{written}");
            assert!(written.contains("logged other"), "{written}");
        });
        let recorded: Vec<_> = events
            .list(None, 10)
            .into_iter()
            .map(|e| (e.seq, e.event.unwrap_or_default(), e.message))
            .collect();
        assert_eq!(
            recorded,
            [
                (3, "unban".to_owned(), "logged audit".to_owned()),
                (2, "ban".to_owned(), "silenced audit".to_owned()),
                (1, "session".to_owned(), "quiet audit".to_owned()),
            ]
        );
    }

    #[test]
    fn the_audit_recorder_raises_the_maximum_level_to_info_only() {
        use tracing::Subscriber as _;
        use tracing::level_filters::LevelFilter;

        for (directives, max) in [
            ("off", LevelFilter::INFO),
            ("warn", LevelFilter::INFO),
            ("debug", LevelFilter::DEBUG),
        ] {
            let (filter, _handle) = reload::Layer::new(build_filter(directives));
            let log = tracing_subscriber::fmt::layer().with_writer(std::io::sink);
            let events = Arc::new(RecentEvents::new(1));
            assert_eq!(
                subscriber(log, filter, events).max_level_hint(),
                Some(max),
                "{directives}"
            );
        }
    }

    #[test]
    fn without_init_the_recent_events_are_empty() {
        tracing::warn!(target: "camgate::audit", event = "ban", "no subscriber");
        assert!(recent_events().list(None, usize::MAX).is_empty());
        assert_eq!(recent_events().last_seq(), 0);
    }

    #[test]
    fn filter_check_accepts_levels_and_targets_only() {
        assert_eq!(
            check_filter(" warn, camgate::admin=trace ,").as_deref(),
            Ok("warn,camgate::admin=trace")
        );
        for good in ["info", "WARN", "info,camgate=debug", "3", "hyper=off,info"] {
            assert!(check_filter(good).is_ok(), "{good}");
        }
        // " é=|" panics inside tracing-subscriber 0.3.23.
        for bad in [
            "",
            " ",
            " é=|",
            "loud",
            "camgate=loud",
            "x[span]=debug",
            "a{b=1}=info",
            "=info",
            "info=",
            "é=info",
        ] {
            assert!(check_filter(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn filter_check_never_panics(directives in "\\PC{0,24}") {
            let _ = check_filter(&directives);
        }
    }
}
