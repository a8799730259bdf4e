//! Who may use the admin API's privileged routes: an admin-role user, by
//! Basic credentials (scripts) or by the admin session a browser gets from
//! `POST /api/login`, checked by the same code (guard, audit, argon2 pool)
//! as the proxy's. A session's state-changing requests also need its CSRF
//! token in `X-CSRF-Token`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::LazyLock;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, api_error, too_many_requests};
use crate::auth::session::{self, ADMIN_COOKIE, ADMIN_SITE, csrf_token};
use crate::auth::{self, Attempt, Credentials, Outcome, Presented, Principal};
use crate::proxy::path::{CanonicalPath, PathPolicy, canonicalize};

/// The path the admin API's requirement is checked for (scoped tokens
/// never apply: the admin API takes Basic credentials and its own session).
static API_PATH: LazyLock<CanonicalPath> =
    LazyLock::new(|| canonicalize("/api", PathPolicy::default()).expect("a canonical constant"));

/// The header a session's state-changing requests carry its token in.
const CSRF_HEADER: &str = "x-csrf-token";

fn client_of(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| {
            info.0.ip().to_canonical()
        })
}

fn attempt(credentials: &Credentials, client: IpAddr) -> Attempt<'_> {
    Attempt {
        site: ADMIN_SITE,
        rule: None,
        requirement: credentials.admin_requirement(),
        client,
        exempt: false,
        path: &API_PATH,
        query: None,
    }
}

/// The admin session cookie: the first that camgate could have issued. A
/// page on another port of this host name can plant more cookies of this
/// name (browsers share cookies across ports); a planted value must not
/// count as a failed sign-in for the admin's address.
fn admin_cookie(headers: &HeaderMap) -> Option<&str> {
    auth::cookies(headers, ADMIN_COOKIE).find(|value| session::parse_secret(value).is_some())
}

/// Lets the request through with the admin's [`auth::Principal`] in its
/// extensions, or answers 401/403/429.
pub(super) async fn require_admin(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = client_of(&request);
    let session = admin_cookie(request.headers()).map(str::to_owned);
    // Basic first (scripts); otherwise the admin session. Never the proxy's
    // session cookie or a token: those are for sites.
    let presented = match auth::presented(request.headers(), None) {
        basic @ Presented::Basic { .. } => basic,
        Presented::Token(_) => {
            Presented::Malformed("the admin API takes Basic credentials or its own session")
        }
        malformed @ Presented::Malformed(_) => malformed,
        Presented::None | Presented::Session(_) => {
            session.clone().map_or(Presented::None, Presented::Session)
        }
    };
    let by_session = matches!(presented, Presented::Session(_));
    let credentials = state.auth.credentials();
    match auth::authenticate(&state.auth, &attempt(&credentials, client), presented).await {
        Outcome::Granted(principal) => {
            if by_session
                && !is_safe(request.method())
                && !session
                    .as_deref()
                    .is_some_and(|cookie| csrf_matches(request.headers(), cookie))
            {
                return api_error(
                    StatusCode::FORBIDDEN,
                    "missing or wrong X-CSRF-Token: use the token from POST /api/login or GET /api/session",
                );
            }
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        // A browser with a (dead) session signs in again on camgate's page:
        // no Basic prompt, whose remembered credentials would skip CSRF.
        Outcome::Missing | Outcome::Invalid(_) if by_session => {
            api_error(StatusCode::UNAUTHORIZED, "the session ended: sign in again")
        }
        Outcome::Missing | Outcome::Invalid(_) => sign_in_needed(request.headers()),
        Outcome::Forbidden(_) => api_error(StatusCode::FORBIDDEN, "this user is not an admin"),
        Outcome::Banned(left) => banned(left),
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn csrf_matches(headers: &HeaderMap, cookie: &str) -> bool {
    let expected = csrf_token(cookie);
    // Compared as digests: the time taken says nothing about the token.
    headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|given| auth::token::digest(given) == auth::token::digest(&expected))
}

/// 401; with a Basic challenge for scripts and for a person who opened an
/// API address in the browser, but not for a page's own requests: the admin
/// pages show camgate's sign-in form, and a browser's Basic prompt would
/// stall them. Those send `X-Requested-With` (the convention servers
/// already honour), because browsers send `Sec-Fetch-Mode` only to HTTPS
/// and localhost, not to the appliance's LAN address over HTTP.
fn sign_in_needed(headers: &HeaderMap) -> Response {
    let mut response = api_error(StatusCode::UNAUTHORIZED, "sign in as an admin user");
    let from_a_page = headers.contains_key("x-requested-with")
        || headers
            .get("sec-fetch-mode")
            .is_some_and(|mode| mode.as_bytes() != b"navigate");
    if !from_a_page {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"camgate admin\", charset=\"UTF-8\""),
        );
    }
    response
}

fn banned(left: std::time::Duration) -> Response {
    too_many_requests("too many failed sign-ins", left)
}

/// `Set-Cookie` for the admin session: script-proof, same-site only, for
/// the whole admin interface, as long as a session may live.
fn session_cookie(value: &str, max_age_secs: u64) -> HeaderValue {
    HeaderValue::try_from(format!(
        "{ADMIN_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}"
    ))
    .expect("a session value is printable ASCII")
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginRequest {
    user: String,
    password: String,
}

/// `POST /api/login`: an admin's password starts a browser session.
pub(super) async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Response {
    let client = client.ip().to_canonical();
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return api_error(rejection.status(), rejection.body_text()),
    };
    let previous = admin_cookie(&headers);
    let credentials = state.auth.credentials();
    let started = auth::login(
        &state.auth,
        &attempt(&credentials, client),
        request.user.clone(),
        request.password.into_bytes(),
        previous,
    )
    .await;
    match started {
        Ok(cookie) => {
            let lifetime = state.auth.sessions.settings().lifetime.as_secs();
            let mut response = Json(serde_json::json!({
                "user": request.user,
                "csrf": csrf_token(&cookie),
            }))
            .into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, session_cookie(&cookie, lifetime));
            response
        }
        Err(Outcome::Forbidden(_)) => api_error(StatusCode::FORBIDDEN, "this user is not an admin"),
        Err(Outcome::Banned(left)) => banned(left),
        Err(_) => api_error(StatusCode::UNAUTHORIZED, "wrong user name or password"),
    }
}

/// `GET /api/session`: who is signed in, and the CSRF token (a reloaded
/// page has lost it).
pub(super) async fn session(request: Request) -> Response {
    let user = match request.extensions().get::<Principal>() {
        Some(Principal::User(user)) => user.clone(),
        _ => return sign_in_needed(request.headers()),
    };
    let csrf = admin_cookie(request.headers()).map(csrf_token);
    Json(serde_json::json!({ "user": user, "csrf": csrf })).into_response()
}

/// `POST /api/logout`: ends the browser's admin session.
pub(super) async fn logout(State(state): State<AppState>, request: Request) -> Response {
    let client = client_of(&request);
    if let Some(cookie) = admin_cookie(request.headers()) {
        auth::logout(&state.auth, cookie, client, ADMIN_SITE).await;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", 0));
    response
}
