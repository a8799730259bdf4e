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

/// Changes the log filter at run time (on reload).
#[derive(Debug, Clone)]
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, tracing_subscriber::Registry>>,
}

impl LogControl {
    /// For embedding camgate where someone else owns the subscriber (tests).
    pub fn detached() -> Self {
        Self { handle: None }
    }

    /// Applies config filter directives, unless `RUST_LOG` overrides them.
    /// The directives were validated with the config.
    pub fn apply(&self, directives: &str) {
        let Some(handle) = &self.handle else { return };
        if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() {
            return;
        }
        match EnvFilter::builder().parse(directives) {
            Ok(filter) => {
                if let Err(e) = handle.reload(filter) {
                    tracing::warn!(err = %e, "cannot change the log filter");
                }
            }
            Err(e) => tracing::warn!(err = %e, directives, "ignoring invalid log filter"),
        }
    }
}

/// Installs the global subscriber with `default_directives` (overridden by
/// `RUST_LOG`). Call once, before anything logs.
pub fn init(default_directives: &str) -> LogControl {
    let filter = EnvFilter::builder()
        .with_default_directive(Level::INFO.into())
        .parse(std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_else(|_| default_directives.to_owned()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
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
                    .event_format(SyslogPrefix(format)),
            )
            .init();
    }
    LogControl { handle: Some(handle) }
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
