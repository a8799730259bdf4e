//! The admin listener: health, status and metrics now; the wizard's API
//! later. It is for the LAN only; the firewall enforces that in appliance
//! mode (isolation issue) and the wizard adds its own check.

pub mod metrics;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use tokio::sync::watch;
use tracing::Instrument;

use crate::daemon::{DaemonStatus, SubsystemState, SubsystemStatus};
use crate::shutdown::Drain;
pub use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ([admin] listen): {source}")]
pub struct BindError {
    pub address: SocketAddr,
    pub source: std::io::Error,
}

/// Binds an admin listener (blocking; before or outside the runtime).
pub fn bind(address: SocketAddr) -> Result<TcpListener, BindError> {
    let listener = TcpListener::bind(address).map_err(|source| BindError { address, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| BindError { address, source })?;
    Ok(listener)
}

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct AppState {
    pub status: watch::Receiver<DaemonStatus>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

/// A span per request with the client address, and headers that keep the
/// admin pages out of frames, caches and other origins' reach.
async fn request_context(request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let span = tracing::debug_span!(
        "admin",
        client.addr = client.map(tracing::field::display),
        method = %request.method(),
        path = %request.uri().path(),
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "served"));
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[derive(serde::Serialize)]
struct StatusBody<'a> {
    version: &'static str,
    uptime_seconds: u64,
    #[serde(flatten)]
    daemon: &'a DaemonStatus,
}

async fn status(State(state): State<AppState>) -> Response {
    let daemon = state.status.borrow().clone();
    Json(StatusBody {
        version: crate::VERSION,
        uptime_seconds: state.started.elapsed().as_secs(),
        daemon: &daemon,
    })
    .into_response()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn index(State(state): State<AppState>) -> Html<String> {
    let status = state.status.borrow().clone();
    let what = if status.setup {
        "This camgate is not set up yet. The one-time setup code is in camgate's log \
         (<code>journalctl -u camgate</code>, or the terminal that runs it)."
    } else {
        "camgate is running."
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>camgate</title></head><body><main><h1>camgate {version}</h1><p>{what}</p>\
         <p>Mode: {mode} · configuration generation {generation}</p>\
         <ul><li><a href=\"/api/status\">Status (JSON)</a></li><li><a href=\"/metrics\">Metrics</a></li></ul>\
         </main></body></html>",
        version = crate::VERSION,
        mode = status.mode.as_str(),
        generation = status.generation,
    ))
}

/// The running admin listeners, keyed by their configured address (a test
/// may hand in a listener bound elsewhere, e.g. `127.0.0.1:0`).
#[derive(Debug)]
pub struct AdminServer {
    router: Router,
    running: HashMap<SocketAddr, Running>,
}

#[derive(Debug)]
struct Running {
    local: SocketAddr,
    part: Drain,
}

/// Listeners bound for a new config, not yet serving.
#[derive(Debug)]
pub struct Staged {
    wanted: Vec<SocketAddr>,
    new: Vec<(SocketAddr, TcpListener)>,
}

impl AdminServer {
    pub fn start(
        listeners: Vec<(SocketAddr, TcpListener)>,
        router: Router,
        drain: &Drain,
    ) -> std::io::Result<Self> {
        let mut server = Self {
            router,
            running: HashMap::new(),
        };
        for (configured, listener) in listeners {
            server.serve(configured, listener, drain)?;
        }
        Ok(server)
    }

    /// Binds whatever addresses the new config adds; nothing changes yet.
    pub fn prepare(&self, config: &crate::config::Admin) -> Result<Staged, BindError> {
        let new = config
            .listen
            .iter()
            .filter(|address| !self.running.contains_key(address))
            .map(|&address| bind(address).map(|listener| (address, listener)))
            .collect::<Result<_, _>>()?;
        Ok(Staged {
            wanted: config.listen.clone(),
            new,
        })
    }

    /// Serves the new listeners and drains the ones the config dropped.
    pub fn commit(&mut self, staged: Staged, drain: &Drain) -> std::io::Result<()> {
        self.running.retain(|address, running| {
            let keep = staged.wanted.contains(address);
            if !keep {
                tracing::info!(address = %running.local, "admin listener removed; draining it");
                running.part.stop();
            }
            keep
        });
        for (configured, listener) in staged.new {
            self.serve(configured, listener, drain)?;
        }
        Ok(())
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<_> = self.running.values().map(|running| running.local).collect();
        addrs.sort_unstable();
        addrs
    }

    pub fn status(&self) -> SubsystemStatus {
        let addrs: Vec<String> = self.local_addrs().iter().map(ToString::to_string).collect();
        SubsystemStatus {
            name: "admin",
            state: SubsystemState::Running,
            detail: format!("listening on {}", addrs.join(", ")),
        }
    }

    fn serve(&mut self, configured: SocketAddr, listener: TcpListener, drain: &Drain) -> std::io::Result<()> {
        let local = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let part = drain.child();
        let stop = part.token().clone();
        let service = self
            .router
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>();
        part.spawn(
            async move {
                if let Err(e) = axum::serve(listener, service)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                {
                    tracing::error!(err = %e, "admin listener failed");
                }
                tracing::debug!("admin listener drained");
            }
            .instrument(tracing::info_span!("admin_listener", server.addr = %local)),
        );
        tracing::info!(address = %local, "admin listener ready");
        self.running.insert(configured, Running { local, part });
        Ok(())
    }
}
