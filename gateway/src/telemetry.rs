//! Logging: tracing to stderr. Human format with colours on a terminal;
//! otherwise one line per event with a `<N>` syslog priority prefix and no
//! timestamp, which journald turns into the entry's priority and time.

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

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
    let registry = tracing_subscriber::registry().with(filter);
    let stderr = std::io::stderr;
    if std::io::stderr().is_terminal() {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(stderr))
            .init();
    } else {
        let format = tracing_subscriber::fmt::format().without_time().with_ansi(false);
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(stderr)
                    // Span fields are formatted by the layer, not the event
                    // format: without this they carry ANSI colour codes.
                    .with_ansi(false)
                    .event_format(SyslogPrefix(format)),
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
    use super::check_filter;

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
