//! Admin-role Basic credentials for the admin API's privileged routes,
//! checked by the same code (guard, audit, argon2 pool) as the proxy's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::LazyLock;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AppState, api_error};
use crate::auth::{self, Attempt, Outcome, Presented};
use crate::proxy::path::{CanonicalPath, PathPolicy, canonicalize};

/// The path the admin API's requirement is checked for (scoped tokens
/// never apply: the admin API takes Basic only).
static API_PATH: LazyLock<CanonicalPath> =
    LazyLock::new(|| canonicalize("/api", PathPolicy::default()).expect("a canonical constant"));

/// Lets the request through with the admin's [`auth::Principal`] in its
/// extensions, or answers 401/403/429.
pub(super) async fn require_admin(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| {
            info.0.ip().to_canonical()
        });
    // Only Basic: a session cookie or token for a proxied site (same host
    // name, another port) is no admin credential.
    let presented = match auth::presented(request.headers(), None) {
        basic @ Presented::Basic { .. } => basic,
        Presented::None | Presented::Session(_) => Presented::None,
        Presented::Token(_) => Presented::Malformed("the admin API takes Basic credentials only"),
        malformed @ Presented::Malformed(_) => malformed,
    };
    let credentials = state.auth.credentials();
    let attempt = Attempt {
        site: "admin",
        rule: None,
        requirement: credentials.admin_requirement(),
        client,
        exempt: false,
        path: &API_PATH,
        query: None,
    };
    match auth::authenticate(&state.auth, &attempt, presented).await {
        Outcome::Granted(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Outcome::Missing | Outcome::Invalid(_) => {
            let mut response = api_error(StatusCode::UNAUTHORIZED, "admin credentials needed");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"camgate admin\", charset=\"UTF-8\""),
            );
            response
        }
        Outcome::Forbidden(_) => api_error(StatusCode::FORBIDDEN, "this user is not an admin"),
        Outcome::Banned(left) => {
            let mut response = api_error(StatusCode::TOO_MANY_REQUESTS, "too many failed sign-ins");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(left.as_secs().max(1)));
            response.into_response()
        }
    }
}
