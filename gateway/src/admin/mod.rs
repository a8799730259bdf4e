//! The admin listener: health, status and metrics; the ban and session
//! lists (admin-role users only); the wizard's API later. It is for the LAN
//! only: until camgate manages the firewall, by where it is bound; the
//! wizard will add its own check.

pub mod apply;
pub mod claim;
mod credentials;
mod lan;
mod live;
pub mod metrics;
mod wizard;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get, post};
use tokio::sync::watch;
use tower::ServiceExt;
use tracing::Instrument;

use crate::acme::AcmeHostStatus;
use crate::auth::{AuthShared, Principal};
use crate::daemon::{DaemonStatus, SubsystemState, SubsystemStatus};
use crate::net::{self, HttpLimits, ListenError, ListenerKind, ListenerSet, Serving, StagedListeners};
use crate::shutdown::Drain;
use crate::tls::{CertResolver, TableStatus};
pub use metrics::Metrics;

pub const LISTENER: ListenerKind = ListenerKind {
    name: "admin",
    key: "[admin] listen",
};

/// The admin interface is for people on the LAN; these bound what one
/// client can hold open.
const LIMITS: HttpLimits = HttpLimits {
    header_read_timeout: Duration::from_secs(10),
    max_connections: 256,
    max_per_client: 64,
    write_timeout: Duration::from_secs(30),
    http2: false,
};

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct AppState {
    pub status: watch::Receiver<DaemonStatus>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Host names the admin interface answers to, besides IP literals.
    pub host_names: Arc<Vec<String>>,
    /// Users, bans and sessions (shared with the proxy).
    pub auth: Arc<AuthShared>,
    /// The proxy's certificates: self-signed and sites' files.
    pub certificates: Arc<CertResolver>,
    /// Certificates from the ACME CA, per host.
    pub acme: watch::Receiver<Vec<AcmeHostStatus>>,
    /// Port forwards and their counters.
    pub forwards: Arc<crate::forward::ForwardStatusSource>,
    /// The camera segment: leases and what cameras asked DNS.
    pub cameras: Arc<crate::cameras::CameraReport>,
    /// The camera streams camgate relays.
    pub streams: Arc<crate::streams::StreamStatusSource>,
    /// Setup mode's claim: the setup code makes the first admin.
    pub claims: Arc<claim::Claims>,
    /// Whole configs from the admin API, confirmed or reverted.
    pub applier: Arc<apply::Applier>,
}

/// `localhost`, `camgate.local`, and this machine's host name (plain and
/// `.local`): what a person types to reach the appliance.
pub fn default_host_names() -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "camgate.local".to_owned()];
    if let Ok(hostname) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let hostname = hostname.trim().to_ascii_lowercase();
        if !hostname.is_empty() {
            names.push(format!("{hostname}.local"));
            names.push(hostname);
        }
    }
    names
}

pub fn router(state: AppState) -> Router {
    let admin_only = Router::new()
        .route("/api/bans", get(list_bans))
        .route("/api/bans/{address}", delete(lift_ban))
        .route("/api/sessions", get(list_sessions))
        .route("/api/sessions/{id}", delete(revoke_session))
        .route("/api/events", get(list_events))
        .route("/api/cameras", get(list_cameras))
        .route("/api/cameras/discover", post(discover_cameras))
        .route("/api/cameras/{camera}/snapshot", get(camera_snapshot))
        .route("/api/streams", get(list_streams))
        .route("/api/streams/{camera}/{stream}/live", get(live::live))
        .route(
            "/api/cameras/rtsp-test",
            post(wizard::test_rtsp).layer(DefaultBodyLimit::max(claim::MAX_BODY_BYTES)),
        )
        .route("/api/config", get(apply::show).post(apply::apply))
        .route("/api/config/confirm", post(apply::confirm))
        .route("/api/config/edit", post(wizard::edit))
        .route("/api/interfaces", get(wizard::interfaces))
        .route("/api/profiles", get(wizard::profiles))
        .route(
            "/api/dvr/detect",
            post(wizard::detect_dvr).layer(DefaultBodyLimit::max(claim::MAX_BODY_BYTES)),
        )
        .route(
            "/api/dvr/test",
            post(wizard::test_dvr).layer(DefaultBodyLimit::max(claim::MAX_BODY_BYTES)),
        )
        .route("/api/session", get(credentials::session))
        .route("/api/logout", post(credentials::logout))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            credentials::require_admin,
        ));
    Router::new()
        .merge(admin_only)
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { page("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { page("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/status", get(status))
        .route(
            "/api/setup/claim",
            post(claim::claim).layer(DefaultBodyLimit::max(claim::MAX_BODY_BYTES)),
        )
        .route(
            "/api/login",
            post(credentials::login).layer(DefaultBodyLimit::max(claim::MAX_BODY_BYTES)),
        )
        .route(
            "/api/openapi.json",
            get(|| async { page("application/json", OPENAPI_JSON) }),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(middleware::from_fn_with_state(state.clone(), request_context))
        .with_state(state)
}

/// A span per request; refuses host names that are not the appliance's
/// (a DNS-rebinding page must not read the admin API through a LAN
/// browser); adds headers that keep the pages out of frames, caches and
/// other origins' reach.
async fn request_context(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(host) = request.headers().get(header::HOST)
        && !host
            .to_str()
            .is_ok_and(|host| host_allowed(host, &state.host_names))
    {
        let message = "camgate's admin interface answers only to its own names and addresses\n";
        return (StatusCode::MISDIRECTED_REQUEST, message).into_response();
    }
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    if let Some(client) = client {
        let address = client.ip().to_canonical();
        let running = state.applier.running();
        if !lan::admits(address, running.network.as_ref()) {
            tracing::warn!(target: "camgate::audit", event = "admin", outcome = "off-lan", client.addr = %address,
                path = %request.uri().path(), "admin request from outside camgate's network: refused");
            return api_error(
                StatusCode::FORBIDDEN,
                format!(
                    "the admin interface is only for the network camgate is on; {address} is not on it \
                     (use a computer plugged into the same router or switch)"
                ),
            );
        }
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && cross_site(request.headers())
    {
        let message = "camgate's admin interface refuses changes sent from another site's page";
        return api_error(StatusCode::FORBIDDEN, message);
    }
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
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
             media-src blob:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A browser says a request comes from another site's page: by
/// `Sec-Fetch-Site`, or an `Origin` that is not this host. Scripts (curl)
/// send neither.
fn cross_site(headers: &axum::http::HeaderMap) -> bool {
    let header_text = |name| {
        headers
            .get(name)
            .map(|value: &HeaderValue| value.to_str().unwrap_or("?"))
    };
    if header_text(HeaderName::from_static("sec-fetch-site")).is_some_and(|site| site == "cross-site") {
        return true;
    }
    let Some(origin) = header_text(header::ORIGIN) else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = header_text(header::HOST);
    !matches!((authority, host), (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host))
}

/// An IP literal (any port), or one of `names`.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<IpAddr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.parse::<IpAddr>().is_ok() || names.iter().any(|allowed| allowed.eq_ignore_ascii_case(name))
}

#[derive(serde::Serialize)]
struct StatusBody<'a> {
    version: &'static str,
    uptime_seconds: u64,
    #[serde(flatten)]
    daemon: &'a DaemonStatus,
    certificates: Certificates,
    forwarding: crate::forward::ForwardingStatus,
}

#[derive(serde::Serialize)]
struct Certificates {
    #[serde(flatten)]
    table: TableStatus,
    acme: Vec<AcmeHostStatus>,
}

async fn status(State(state): State<AppState>) -> Response {
    let daemon = state.status.borrow().clone();
    // Kernel forwards' counters come from `nft`, a process.
    let source = Arc::clone(&state.forwards);
    let forwarding = match tokio::task::spawn_blocking(move || source.status()).await {
        Ok(forwarding) => forwarding,
        Err(e) => {
            tracing::error!("forward status: {e}");
            return api_error(StatusCode::INTERNAL_SERVER_ERROR, "forward status unavailable");
        }
    };
    Json(StatusBody {
        forwarding,
        version: crate::VERSION,
        uptime_seconds: state.started.elapsed().as_secs(),
        daemon: &daemon,
        certificates: Certificates {
            table: state.certificates.table_status(),
            acme: state.acme.borrow().clone(),
        },
    })
    .into_response()
}

async fn list_cameras(State(state): State<AppState>) -> Response {
    // Reads dnsmasq's lease file.
    let report = Arc::clone(&state.cameras);
    match tokio::task::spawn_blocking(move || report.cameras()).await {
        Ok(cameras) => Json(cameras).into_response(),
        Err(e) => {
            tracing::error!("camera list: {e}");
            api_error(StatusCode::INTERNAL_SERVER_ERROR, "camera list unavailable")
        }
    }
}

async fn list_streams(State(state): State<AppState>) -> Json<Vec<crate::streams::StreamStatus>> {
    Json(state.streams.snapshot())
}

/// An ONVIF discovery on the camera segment (a few seconds); the devices
/// found, also listed by `/api/cameras` from then on.
async fn discover_cameras(State(state): State<AppState>) -> Response {
    match state.cameras.discover().await {
        Ok(devices) => Json(devices).into_response(),
        Err(e) => {
            let status = match e {
                crate::cameras::DiscoverError::NoSegment => StatusCode::CONFLICT,
                crate::cameras::DiscoverError::Probe(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            tracing::warn!("ONVIF discovery: {e}");
            (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
        }
    }
}

/// A still image from a `[[camera]]` (`cameras::snapshot`): JPEG or PNG as
/// the camera sent it, never cached; 404 until a discovery found its
/// snapshot URI, 502/504 for what the camera did.
async fn camera_snapshot(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let name = match path {
        Ok(Path(name)) => name,
        Err(rejection) => return api_error(rejection.status(), rejection.body_text()),
    };
    match state.cameras.snapshot(&name).await {
        Ok(snapshot) => (
            [
                (header::CONTENT_TYPE, snapshot.content_type),
                (header::CACHE_CONTROL, "no-store"),
            ],
            snapshot.image,
        )
            .into_response(),
        Err(e) => api_error(e.status(), e.to_string()),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Only events after this sequence number.
    since: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/events`: the recent security events (sign-ins, bans,
/// sessions, claims, config changes, refusals), newest first.
async fn list_events(query: Result<Query<EventsQuery>, QueryRejection>) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return api_error(rejection.status(), rejection.body_text()),
    };
    let events = crate::telemetry::recent_events();
    Json(serde_json::json!({
        "last_seq": events.last_seq(),
        "events": events.list(query.since, query.limit.unwrap_or(100).min(crate::events::CAPACITY)),
    }))
    .into_response()
}

async fn list_bans(State(state): State<AppState>) -> Response {
    Json(state.auth.guard.bans(Instant::now())).into_response()
}

async fn lift_ban(
    State(state): State<AppState>,
    axum::Extension(admin): axum::Extension<Principal>,
    Path(address): Path<String>,
) -> Response {
    let Ok(address) = address.parse::<IpAddr>() else {
        return api_error(StatusCode::BAD_REQUEST, "not an IP address");
    };
    let address = address.to_canonical();
    if !state.auth.guard.lift(address, Instant::now()) {
        return api_error(StatusCode::NOT_FOUND, "this address is not banned");
    }
    tracing::info!(target: "camgate::audit", event = "unban", client.addr = %address,
        by = %principal_name(&admin), "ban lifted by an admin");
    StatusCode::NO_CONTENT.into_response()
}

#[derive(serde::Serialize)]
struct SessionView {
    id: String,
    user: String,
    site: String,
    created: u64,
    last_seen: u64,
}

async fn list_sessions(State(state): State<AppState>) -> Response {
    let settings = state.auth.sessions.settings();
    let sessions: Vec<SessionView> = state
        .auth
        .sessions
        .table()
        .list(crate::clock::unix_now(), settings)
        .into_iter()
        .map(|(id, s)| SessionView {
            id,
            user: s.user,
            site: s.site,
            created: s.created,
            last_seen: s.last_seen,
        })
        .collect();
    Json(sessions).into_response()
}

async fn revoke_session(
    State(state): State<AppState>,
    axum::Extension(admin): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let Some(ended) = state.auth.sessions.table().revoke_public(&id) else {
        return api_error(StatusCode::NOT_FOUND, "no such session");
    };
    state.auth.save_sessions().await;
    tracing::info!(target: "camgate::audit", event = "session", action = "revoke", principal = %ended.user,
        site = %ended.site, session = %id, by = %principal_name(&admin), "session revoked by an admin");
    StatusCode::NO_CONTENT.into_response()
}

fn principal_name(principal: &Principal) -> &str {
    match principal {
        Principal::User(name) | Principal::Token(name) => name,
    }
}

fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// 429 with `Retry-After` (whole seconds, at least 1).
fn too_many_requests(message: impl Into<String>, wait: Duration) -> Response {
    let mut response = api_error(StatusCode::TOO_MANY_REQUESTS, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
    response
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

/// The admin pages (webui/), embedded: the binary is the whole product.
const INDEX_HTML: &str = include_str!("../../../webui/index.html");
const APP_JS: &str = include_str!("../../../webui/app.js");
const STYLE_CSS: &str = include_str!("../../../webui/style.css");
/// The admin API's description; `tests/tests/openapi.rs` holds it to the routes.
const OPENAPI_JSON: &str = include_str!("openapi.json");

fn page(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The running admin listeners.
#[derive(Debug)]
pub struct AdminServer {
    router: Router,
    listeners: ListenerSet,
}

impl AdminServer {
    pub fn start(
        listeners: Vec<(SocketAddr, TcpListener)>,
        router: Router,
        drain: &Drain,
    ) -> Result<Self, ListenError> {
        let listeners = ListenerSet::start(LISTENER, listeners, &|listener| serve(&router, listener, drain))?;
        Ok(Self { router, listeners })
    }

    /// Binds whatever addresses the new config adds; nothing changes yet.
    pub fn prepare(&self, config: &crate::config::Admin) -> Result<StagedListeners, ListenError> {
        self.listeners.stage(&config.listen)
    }

    /// Serves the new listeners, then closes the ones the config dropped.
    pub async fn commit(&mut self, staged: StagedListeners, drain: &Drain) {
        let router = &self.router;
        self.listeners
            .commit(staged, &|listener| serve(router, listener, drain))
            .await;
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.local_addrs()
    }

    pub fn status(&self) -> SubsystemStatus {
        let addrs: Vec<String> = self.local_addrs().iter().map(ToString::to_string).collect();
        SubsystemStatus {
            name: "admin",
            state: SubsystemState::Running,
            detail: format!("listening on {}", addrs.join(", ")),
        }
    }
}

fn serve(router: &Router, listener: tokio::net::TcpListener, drain: &Drain) -> std::io::Result<Serving> {
    let router = router.clone();
    let make_service = move |connection: &net::ConnectionInfo| {
        let router = router.clone();
        let client = connection.client;
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(client));
            router.clone().oneshot(request)
        })
    };
    net::serve_http(listener, net::Transport::Plain, make_service, LIMITS, drain)
}

#[cfg(test)]
mod tests {
    use super::{cross_site, host_allowed};
    use axum::http::{HeaderMap, HeaderValue};

    #[test]
    fn changes_from_another_sites_page_are_cross_site() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        for (pairs, expected) in [
            (&[("host", "camgate.local:8080")][..], false),
            (
                &[
                    ("host", "camgate.local:8080"),
                    ("origin", "http://camgate.local:8080"),
                ][..],
                false,
            ),
            (
                &[
                    ("host", "Camgate.local:8080"),
                    ("origin", "http://camgate.local:8080"),
                ][..],
                false,
            ),
            (
                &[("host", "camgate.local:8080"), ("sec-fetch-site", "same-origin")][..],
                false,
            ),
            (
                &[("host", "camgate.local:8080"), ("origin", "http://evil.example")][..],
                true,
            ),
            (
                &[
                    ("host", "camgate.local:8080"),
                    ("origin", "http://camgate.local:8081"),
                ][..],
                true,
            ),
            (&[("host", "camgate.local:8080"), ("origin", "null")][..], true),
            (&[("origin", "http://camgate.local:8080")][..], true),
            (
                &[("host", "camgate.local:8080"), ("sec-fetch-site", "cross-site")][..],
                true,
            ),
        ] {
            assert_eq!(cross_site(&headers(pairs)), expected, "{pairs:?}");
        }
    }

    #[test]
    fn admin_answers_to_its_names_and_ip_literals_only() {
        let names = vec!["localhost".to_owned(), "camgate.local".to_owned()];
        for host in [
            "192.168.1.2",
            "192.168.1.2:8080",
            "[::1]:8080",
            "[fe80::1]",
            "Camgate.local:8080",
            "localhost",
        ] {
            assert!(host_allowed(host, &names), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "camgate.local.evil.example",
            "[nope]:1",
            "localhost:x",
        ] {
            assert!(!host_allowed(host, &names), "{host}");
        }
    }
}
