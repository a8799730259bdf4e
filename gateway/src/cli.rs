//! Command line: argument parsing, process setup and exit codes. This is the
//! edge where errors become messages on stderr and sysexits(3) codes.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigSource, Overrides};
use crate::daemon::{self, DaemonError, Listeners, Startup};
use crate::telemetry;

/// EX_DATAERR: the config is invalid.
pub const EXIT_CONFIG: u8 = 65;
/// EX_OSERR: a socket or runtime could not be set up.
pub const EXIT_OS: u8 = 71;
/// EX_CANTCREAT: the state directory could not be created.
pub const EXIT_CANT_CREATE: u8 = 73;

#[derive(Debug, Parser)]
#[command(
    name = "camgate",
    version,
    about = "Self-hosted edge gateway for video surveillance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway. Without a config file at the default path, starts in
    /// setup mode: the admin listener only, with a one-time setup code.
    Run {
        /// Config file [default: /etc/camgate/camgate.toml; var/camgate.toml with --dev].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Developer mode: unprivileged ports, state under ./var, no firewall
        /// or interface changes.
        #[arg(long)]
        dev: bool,
    },
    /// Validate a config file: exit 0 if valid, 65 with the error if not.
    CheckConfig {
        path: PathBuf,
        /// Validate as `run --dev` would.
        #[arg(long)]
        dev: bool,
    },
    /// Print the version.
    Version,
}

pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config, dev } => run(ConfigSource::new(config, Overrides { dev })),
        Command::CheckConfig { path, dev } => match config::load(&path, Overrides { dev }) {
            Ok(config) => {
                println!("{}: OK ({} mode)", path.display(), config.daemon.mode.as_str());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("camgate: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Version => {
            println!("camgate {}", crate::VERSION);
            ExitCode::SUCCESS
        }
    }
}

fn run(source: ConfigSource) -> ExitCode {
    let loaded = match source.load() {
        Ok(loaded) => loaded,
        Err(e) => {
            // Under systemd every line needs the priority prefix, or the
            // snippet lines are logged as info.
            let prefix = if std::io::stderr().is_terminal() {
                ""
            } else {
                "<3>"
            };
            for line in format!("camgate: {e}").lines() {
                eprintln!("{prefix}{line}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log = telemetry::init(&loaded.config.daemon.log);
    let listeners = match Listeners::bind(&loaded.config) {
        Ok(listeners) => listeners,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_OS);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(err = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_OS);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        stop_on_signals(shutdown.clone())?;
        daemon::run(Startup { source, loaded, log }, listeners, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(match e {
                DaemonError::StateDir { .. } | DaemonError::SetupCode(_) => EXIT_CANT_CREATE,
                DaemonError::ListenerCount { .. } | DaemonError::Io(_) => EXIT_OS,
            })
        }
    }
}

/// First SIGTERM/SIGINT: graceful drain. Second: exit at once.
fn stop_on_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!("{first}: stopping");
        shutdown.cancel();
        let (second, code) = tokio::select! {
            _ = terminate.recv() => ("SIGTERM", 128 + 15),
            _ = interrupt.recv() => ("SIGINT", 128 + 2),
        };
        tracing::warn!("second signal ({second}): stopping now without draining");
        #[allow(clippy::exit)] // the documented meaning of a second signal
        std::process::exit(code);
    });
    Ok(())
}
