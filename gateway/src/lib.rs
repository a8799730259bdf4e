//! camgate: a self-hosted edge gateway for video surveillance.
//!
//! The binary (`main.rs`) only calls [`cli::main`]. Everything else is a
//! library, and [`daemon::Daemon::start`] takes already-bound listeners
//! (`127.0.0.1:0` in an embedding test); today's integration tests run the
//! binary:
//!
//! - [`config`]: the TOML file → validated [`config::Config`]; the config store.
//! - [`daemon`]: start, reload (two-phase), drain; systemd notifications.
//! - [`admin`]: the admin HTTP listener: pages, the wizard's and dashboard's API, status, metrics.
//! - [`detect`]: which DVR answers at an address; the wizard's connection test.
//! - [`events`]: the recent security (audit) events the dashboard shows.
//! - [`auth`]: users, API tokens and the brute-force guard for `auth` rules.
//! - [`shutdown`]: the one drain mechanism.
//! - [`telemetry`]: logging setup; the recent-events recorder.
//! - [`setup`]: setup mode's one-time code.
//! - [`proxy`]: the reverse proxy: canonical paths, rules, profiles, forwarding.
//! - [`tls`]: server TLS config and the hot-swappable certificate resolver.
//! - [`acme`]: certificates from an ACME CA: orders, challenges, renewal.
//! - [`forward`]: port forwards to the DVR (kernel or userspace) with the STUN guard; STUN responder.
//! - [`firewall`]: the only code that talks to nftables (`table inet camgate`).
//! - [`streams`]: camera streams pulled once and re-served over RTSP.
//! - [`backoff`]: reconnect delays with jitter.
//! - [`net`]: binding, and the hardened accept loop every listener uses.
//!
//! See ARCHITECTURE.md at the repository root for the invariants.

pub mod acme;
pub mod admin;
pub mod auth;
pub mod backoff;
pub mod cameras;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod events;
pub mod firewall;
pub mod forward;
mod fsutil;
pub mod net;
pub mod proxy;
pub mod setup;
pub mod shutdown;
pub mod streams;
pub mod telemetry;
pub mod tls;

/// camgate's version, as built.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
