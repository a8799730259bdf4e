//! Answers camgate gives itself: a small branded HTML page for browsers,
//! JSON for everything else (API clients and scripts), never the
//! upstream's address or an internal error text.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::ResponseBody;

/// What went wrong, as a client may learn it.
#[derive(Debug, Clone, Copy)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable machine-readable code for the JSON form.
    pub code: &'static str,
    pub message: &'static str,
}

impl Problem {
    pub const fn new(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        Self {
            status,
            code,
            message,
        }
    }
}

pub const BAD_REQUEST: Problem = Problem::new(
    StatusCode::BAD_REQUEST,
    "bad_request",
    "The request is malformed or uses a form camgate refuses.",
);
pub const FORBIDDEN: Problem = Problem::new(
    StatusCode::FORBIDDEN,
    "forbidden",
    "This address is not open to you.",
);
pub const UNAUTHORIZED: Problem = Problem::new(
    StatusCode::UNAUTHORIZED,
    "unauthorized",
    "Sign in, or send a valid API token, to open this address.",
);
pub const NOT_PERMITTED: Problem = Problem::new(
    StatusCode::FORBIDDEN,
    "forbidden",
    "Your credentials are valid but do not open this address.",
);
pub const BANNED: Problem = Problem::new(
    StatusCode::TOO_MANY_REQUESTS,
    "banned",
    "Too many failed sign-ins from your address. Wait before trying again.",
);
pub const LOGIN_RATE_LIMITED: Problem = Problem::new(
    StatusCode::TOO_MANY_REQUESTS,
    "rate_limited",
    "Too many sign-in attempts from your address. Wait a minute before trying again.",
);
pub const METHOD_NOT_ALLOWED: Problem = Problem::new(
    StatusCode::METHOD_NOT_ALLOWED,
    "method_not_allowed",
    "This address does not take that method.",
);
pub const TOO_LARGE: Problem = Problem::new(
    StatusCode::PAYLOAD_TOO_LARGE,
    "too_large",
    "The form is larger than camgate accepts.",
);
pub const NOT_FOUND: Problem = Problem::new(StatusCode::NOT_FOUND, "not_found", "There is nothing here.");
pub const UNKNOWN_SITE: Problem = Problem::new(
    StatusCode::NOT_FOUND,
    "unknown_site",
    "camgate serves no site under this name.",
);
pub const MISDIRECTED: Problem = Problem::new(
    StatusCode::MISDIRECTED_REQUEST,
    "misdirected",
    "The name in the request does not match the connection's name (SNI).",
);
pub const BAD_GATEWAY: Problem = Problem::new(
    StatusCode::BAD_GATEWAY,
    "upstream_unreachable",
    "The recorder behind camgate is not answering. It may be restarting or switched off.",
);
pub const BAD_UPSTREAM_RESPONSE: Problem = Problem::new(
    StatusCode::BAD_GATEWAY,
    "upstream_bad_response",
    "The recorder behind camgate sent a response camgate cannot pass on.",
);
pub const BUSY: Problem = Problem::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "busy",
    "Too many requests are waiting for the recorder. Try again shortly.",
);
pub const GATEWAY_TIMEOUT: Problem = Problem::new(
    StatusCode::GATEWAY_TIMEOUT,
    "upstream_timeout",
    "The recorder behind camgate took too long to answer.",
);

/// Browsers navigating ask for HTML; everything else gets JSON.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

pub fn respond(problem: Problem, html: bool) -> Response<ResponseBody> {
    let (content_type, body) = if html {
        let status = problem.status;
        let reason = status.canonical_reason().unwrap_or("Error");
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
                 <title>{code} {reason} · camgate</title>\
                 <style>body{{font:16px/1.5 system-ui,sans-serif;margin:0;display:grid;place-items:center;\
                 min-height:100vh;background:#f4f5f7;color:#1d2330}}main{{max-width:32rem;padding:2rem}}\
                 small{{color:#667}}</style></head><body><main><h1>{code} · {reason}</h1><p>{message}</p>\
                 <p><small>camgate</small></p></main></body></html>",
                code = status.as_u16(),
                message = problem.message,
            ),
        )
    } else {
        (
            "application/json",
            serde_json::json!({
                "error": problem.code,
                "status": problem.status.as_u16(),
                "message": problem.message,
            })
            .to_string(),
        )
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = problem.status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if problem.status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

/// `problem` with `Retry-After` (bans, rate limits).
pub fn retry_after(problem: Problem, html: bool, wait: std::time::Duration) -> Response<ResponseBody> {
    let mut response = respond(problem, html);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
    response
}

pub(super) fn full(body: impl Into<Bytes>) -> ResponseBody {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_for_browsers_json_otherwise() {
        let mut headers = HeaderMap::new();
        assert!(!wants_html(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/html,*/*;q=0.8"));
        assert!(wants_html(&headers));
        let page = respond(BAD_GATEWAY, true);
        assert_eq!(page.status(), 502);
        assert_eq!(page.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let json = respond(BUSY, false);
        assert_eq!(json.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(json.headers()[header::RETRY_AFTER], "5");
    }
}
