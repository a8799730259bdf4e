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
use crate::proxy::server::ProxyError;
use crate::telemetry;
use crate::tls::TlsError;

/// EX_USAGE: the command line names something that does not exist.
pub const EXIT_USAGE: u8 = 64;
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
    /// Show how a site's rules decide a request, with the same code the
    /// proxy runs: canonical path, every rule considered, the decision.
    Explain {
        #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The `[[site]]` name.
        #[arg(long)]
        site: String,
        /// Client address.
        #[arg(long, value_name = "IP")]
        from: std::net::IpAddr,
        /// A websocket upgrade request.
        #[arg(long)]
        websocket: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// `METHOD TARGET`, e.g. 'GET /video.mjpg?oids=1'.
        request: String,
    },
    /// Read a password from standard input (no echo on a terminal) and
    /// print its argon2id hash for a `[[user]]` `password_hash`.
    HashPassword,
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// camgate's nftables table.
    Firewall {
        #[command(subcommand)]
        command: FirewallCommand,
    },
    /// List the built-in DVR profiles, or print one.
    Profiles {
        #[command(subcommand)]
        show: Option<ProfilesCommand>,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Add a `[[token]]` to the config (through the config store, so an
    /// invalid result is never written) and print its secret, once.
    Create {
        /// The token's name, as rules' `tokens` lists refer to it.
        name: String,
        #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The `[[site]]` the token is for.
        #[arg(long)]
        site: String,
        /// `rule:NAME`, or a path glob with optional pinned query values
        /// (`/video.mjpg?oids=1`). Repeat for more.
        #[arg(long, required = true)]
        scope: Vec<String>,
        /// RFC 3339 expiry, e.g. 2027-01-31T00:00:00Z.
        #[arg(long)]
        expires: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum FirewallCommand {
    /// Print the table the config gives on this machine (routes and the
    /// uplink's subnets are read from it), without applying it. nft syntax,
    /// loadable with `nft -f`; rendered by nft in a scratch network
    /// namespace, so it needs root. `--json`: the batch camgate sends, as is.
    Show {
        #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ProfilesCommand {
    /// Print a profile's definition (TOML, as built in).
    Show { name: String },
}

fn firewall_show(path: &std::path::Path, json: bool) -> ExitCode {
    let config = match config::load(path, Overrides::default()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("camgate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let shown = crate::firewall::plan(&config, &crate::firewall::Nft).and_then(|ruleset| {
        if json {
            serde_json::to_string_pretty(&ruleset)
                .map_err(|e| crate::firewall::FirewallError::Nft(e.to_string()))
        } else {
            crate::firewall::render(&ruleset)
        }
    });
    match shown {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("camgate: {e}");
            ExitCode::from(EXIT_OS)
        }
    }
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
        Command::Explain {
            config: path,
            site,
            from,
            websocket,
            json,
            request,
        } => explain(&path, &site, from, websocket, json, &request),
        Command::Firewall {
            command: FirewallCommand::Show { config: path, json },
        } => firewall_show(&path, json),
        Command::Profiles { show: None } => {
            for profile in crate::proxy::profiles::all() {
                let udp = if profile.forwards.is_empty() {
                    String::new()
                } else {
                    format!("; forwards {}", profile.forwards_summary())
                };
                println!(
                    "{:<11} port {:<5} {}{udp}",
                    profile.name, profile.upstream_port, profile.description
                );
            }
            ExitCode::SUCCESS
        }
        Command::Profiles {
            show: Some(ProfilesCommand::Show { name }),
        } => match crate::proxy::profiles::get(&name) {
            Some(profile) => {
                print!("{}", profile.source);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("camgate: no profile {name:?}; `camgate profiles` lists them");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::HashPassword => hash_password(),
        Command::Token {
            command:
                TokenCommand::Create {
                    name,
                    config,
                    site,
                    scope,
                    expires,
                },
        } => create_token(&config, &name, &site, &scope, expires.as_deref()),
        Command::Version => {
            println!("camgate {}", crate::VERSION);
            ExitCode::SUCCESS
        }
    }
}

fn run(source: ConfigSource) -> ExitCode {
    let reverted = crate::admin::apply::revert_at_start(&crate::config::store::ConfigStore::new(
        source.path.clone(),
        source.overrides,
    ));
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
    match reverted {
        Ok(false) => {}
        Ok(true) => tracing::warn!(target: "camgate::audit", event = "config", action = "reverted",
            "the last change was not confirmed before camgate stopped: back to the previous configuration"),
        Err(e) => tracing::error!("cannot revert the change left unconfirmed when camgate stopped: {e}"),
    }
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
                DaemonError::ListenerCount { .. }
                | DaemonError::Listen(_)
                | DaemonError::Io(_)
                | DaemonError::Firewall(_)
                | DaemonError::Forward(_) => EXIT_OS,
                DaemonError::Proxy(ProxyError::Tls(e)) | DaemonError::Tls(e) => tls_exit_code(&e),
                // A CA file that the config names.
                DaemonError::Proxy(ProxyError::Upstream(_)) | DaemonError::Acme(_) => EXIT_CONFIG,
                DaemonError::Proxy(ProxyError::Listen(_)) => EXIT_OS,
            })
        }
    }
}

fn tls_exit_code(e: &TlsError) -> u8 {
    match e {
        // A site's certificate file that the config names.
        TlsError::Pem { .. } | TlsError::Key { .. } => EXIT_CONFIG,
        TlsError::SelfSignedIo { .. } => EXIT_CANT_CREATE,
        TlsError::Generate(_) | TlsError::Rustls(_) => EXIT_OS,
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

fn explain(
    path: &std::path::Path,
    site_name: &str,
    from: std::net::IpAddr,
    websocket: bool,
    json: bool,
    request: &str,
) -> ExitCode {
    let config = match config::load(path, Overrides::default()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("camgate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(site) = config.sites.iter().find(|site| site.name == site_name) else {
        let names: Vec<&str> = config.sites.iter().map(|site| site.name.as_str()).collect();
        eprintln!(
            "camgate: no site {site_name:?} in {}; sites: {}",
            path.display(),
            names.join(", ")
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let Some((method, target)) = request.trim().split_once(' ') else {
        eprintln!("camgate: expected 'METHOD TARGET', e.g. 'GET /video.mjpg?oids=1'");
        return ExitCode::from(EXIT_USAGE);
    };
    let explanation = match crate::proxy::evaluate::explain(site, method, target.trim(), from, websocket) {
        Ok(explanation) => explanation,
        Err(e) => {
            eprintln!("camgate: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&explanation).expect("explanations serialize")
        );
        return ExitCode::SUCCESS;
    }
    let e = &explanation;
    let kind = if e.websocket { " (websocket)" } else { "" };
    println!(
        "site {} (profile {}): {} {}{kind} from {}",
        e.site, site.profile.name, e.method, e.target, e.from
    );
    match &e.canonical_path {
        Some(path) => println!("canonical path: {path}"),
        None => println!("canonical path: none"),
    }
    if !e.rules.is_empty() {
        println!("rules:");
    }
    for rule in &e.rules {
        let mark = if rule.matched { "MATCH" } else { "  -  " };
        println!(
            "  {mark} {:>2}. [{}] {}: {}",
            rule.index + 1,
            rule.source,
            rule.name,
            rule.detail
        );
    }
    let outcome = match (e.status, &e.forwarded_target) {
        (None, Some(target)) => format!("forwarded as {target}"),
        (Some(status), _) => format!("answered {status} by camgate"),
        (None, None) => String::new(),
    };
    println!("decision: {} ({outcome}): {}", e.decision, e.reason);
    ExitCode::SUCCESS
}

fn hash_password() -> ExitCode {
    use std::io::BufRead as _;
    // Bytes, not text: Basic auth carries the password as bytes.
    let password = if std::io::stdin().is_terminal() {
        eprint!("Password: ");
        rpassword::read_password().map(String::into_bytes)
    } else {
        let mut line = Vec::new();
        std::io::stdin().lock().read_until(b'\n', &mut line).map(|_| line)
    };
    let mut password = match password {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("camgate: cannot read the password: {e}");
            return ExitCode::from(EXIT_OS);
        }
    };
    while password.last().is_some_and(|b| matches!(b, b'\r' | b'\n')) {
        password.pop();
    }
    match crate::auth::password::hash(&password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("camgate: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn create_token(
    path: &std::path::Path,
    name: &str,
    site: &str,
    scope: &[String],
    expires: Option<&str>,
) -> ExitCode {
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        name: &'a str,
        secret_sha256: String,
        site: &'a str,
        scope: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        expires: Option<&'a str>,
    }
    #[derive(serde::Serialize)]
    struct Tables<'a> {
        token: [Entry<'a>; 1],
    }

    let (secret, digest) = match crate::auth::token::generate() {
        Ok(generated) => generated,
        Err(e) => {
            eprintln!("camgate: no randomness for the secret: {e}");
            return ExitCode::from(EXIT_OS);
        }
    };
    let block = toml::to_string(&Tables {
        token: [Entry {
            name,
            secret_sha256: crate::auth::token::hex(&digest),
            site,
            scope,
            expires,
        }],
    })
    .expect("strings and a list of strings serialize");
    let store = config::store::ConfigStore::new(path, Overrides::default());
    let saved = store.edit(|text| {
        let separator = if text.ends_with('\n') || text.is_empty() {
            ""
        } else {
            "\n"
        };
        format!("{text}{separator}\n{block}")
    });
    match saved {
        Ok(_) => {
            eprintln!(
                "camgate: token {name:?} added to {}; reload camgate (systemctl reload camgate) to use it. \
                 The secret is shown only now:",
                path.display()
            );
            println!("{secret}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("camgate: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
