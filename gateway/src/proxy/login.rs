//! camgate's own pages under `/.camgate/` on every site: the login form
//! (which starts a browser session), logout, and their stylesheet. Served
//! from the binary: no CDN, no script, a layout that works on a phone.
//!
//! The forms are CSRF-safe twice over: a double-submit cookie (`__Host-`,
//! so no sibling host can plant one) that must equal the form's field, and
//! the `Origin`/`Sec-Fetch-Site` headers, which must say same-origin when a
//! browser sends them.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::ResponseBody;
use super::headers::RequestHost;
use super::pages;
use super::path::{PathPolicy, canonicalize};
use super::rules::Requirement;
use crate::auth::session::{COOKIE, CSRF_COOKIE};
use crate::auth::{self, Attempt, AuthShared, Outcome, token};

/// Every path camgate answers itself starts with this; the DVR never sees
/// requests for it.
pub const PREFIX: &str = "/.camgate/";
pub const LOGIN_PATH: &str = "/.camgate/login";
const LOGOUT_PATH: &str = "/.camgate/logout";
const STYLE_PATH: &str = "/.camgate/style.css";
/// A login form is a few hundred bytes.
const MAX_FORM_BYTES: usize = 8 * 1024;
const STYLE: &str = include_str!("login.css");
const SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// What the pages need to know about the request's site and client.
#[derive(Debug)]
pub struct PageContext<'a> {
    pub site: &'a str,
    pub host: &'a RequestHost,
    pub client: IpAddr,
    pub exempt: bool,
    /// The users the site's `auth` rules accept; `None`: no rule takes a
    /// password, so there is nothing to log in to.
    pub login: Option<&'a Requirement>,
    pub auth: &'a Arc<AuthShared>,
}

/// Answers a request for `PREFIX…`.
pub async fn serve(context: &PageContext<'_>, request: Request<Incoming>) -> Response<ResponseBody> {
    let path = request.uri().path();
    match (path, request.method()) {
        (STYLE_PATH, &Method::GET | &Method::HEAD) => {
            let mut response = Response::new(pages::full(STYLE));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=86400"));
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            response
        }
        (LOGIN_PATH | LOGOUT_PATH, _) if context.login.is_none() => pages::respond(pages::NOT_FOUND, true),
        (LOGIN_PATH, &Method::GET | &Method::HEAD) => {
            let next = next_target(request.uri().query());
            login_page(&request, &next, None, StatusCode::OK, context.site)
        }
        (LOGIN_PATH, &Method::POST) => login(context, request).await,
        (LOGOUT_PATH, &Method::GET | &Method::HEAD) => logout_page(&request),
        (LOGOUT_PATH, &Method::POST) => logout(context, request).await,
        (LOGIN_PATH | LOGOUT_PATH | STYLE_PATH, _) => {
            let mut response = pages::respond(pages::METHOD_NOT_ALLOWED, true);
            let allow = if path == LOGIN_PATH || path == LOGOUT_PATH {
                "GET, HEAD, POST"
            } else {
                "GET, HEAD"
            };
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            response
        }
        _ => pages::respond(pages::NOT_FOUND, pages::wants_html(request.headers())),
    }
}

/// Where a browser that needs to log in is sent: the login page, coming
/// back to `target` afterwards.
pub fn login_redirect(target: &str) -> Response<ResponseBody> {
    let next: String = form_urlencoded::byte_serialize(target.as_bytes()).collect();
    see_other(&format!("{LOGIN_PATH}?next={next}"))
}

async fn login(context: &PageContext<'_>, request: Request<Incoming>) -> Response<ResponseBody> {
    let Some(requirement) = context.login else {
        return pages::respond(pages::NOT_FOUND, true);
    };
    if let Err(retry) = context.auth.guard.login_attempt(context.client, Instant::now()) {
        tracing::warn!(target: "camgate::audit", event = "login", ok = false, method = "form",
            client.addr = %context.client, site = context.site, why = "login rate limit", "access refused");
        return pages::retry_after(pages::LOGIN_RATE_LIMITED, true, retry);
    }
    let (parts, body) = request.into_parts();
    let form = match read_form(body).await {
        Ok(form) => form,
        Err(problem) => return pages::respond(problem, true),
    };
    let next = form
        .next
        .as_deref()
        .map_or_else(|| "/".to_owned(), |n| local_target(n).into_owned());
    if !csrf_ok(&parts.headers, context.host, form.csrf.as_deref()) {
        tracing::warn!(target: "camgate::audit", event = "login", ok = false, method = "form",
            client.addr = %context.client, site = context.site, why = "CSRF check failed", "access refused");
        let request = Request::from_parts(parts, ());
        let message = "The form expired or came from another page. Please sign in again.";
        return login_page(
            &request,
            &next,
            Some(message),
            StatusCode::FORBIDDEN,
            context.site,
        );
    }
    let login_path = canonicalize(LOGIN_PATH, PathPolicy::default()).expect("a canonical constant");
    let attempt = Attempt {
        site: context.site,
        rule: None,
        requirement,
        client: context.client,
        exempt: context.exempt,
        path: &login_path,
        query: None,
    };
    let previous = auth::cookie(&parts.headers, COOKIE).map(str::to_owned);
    let user = form.user.unwrap_or_default();
    let password = form.password.unwrap_or_default().into_bytes();
    let request = Request::from_parts(parts, ());
    match auth::login(context.auth, &attempt, user, password, previous.as_deref()).await {
        Ok(cookie) => {
            let mut response = see_other(&next);
            let lifetime = context.auth.sessions.settings().lifetime.as_secs();
            set_cookie(&mut response, &session_cookie(&cookie, lifetime));
            response
        }
        Err(Outcome::Banned(left)) => pages::retry_after(pages::BANNED, true, left),
        Err(refused) => {
            let (status, message) = match refused {
                Outcome::Forbidden(_) => (StatusCode::FORBIDDEN, "This user has no access to this site."),
                _ => (StatusCode::UNAUTHORIZED, "Wrong user name or password."),
            };
            login_page(&request, &next, Some(message), status, context.site)
        }
    }
}

async fn logout(context: &PageContext<'_>, request: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let form = match read_form(body).await {
        Ok(form) => form,
        Err(problem) => return pages::respond(problem, true),
    };
    if !csrf_ok(&parts.headers, context.host, form.csrf.as_deref()) {
        return pages::respond(pages::FORBIDDEN, true);
    }
    if let Some(cookie) = auth::cookie(&parts.headers, COOKIE) {
        auth::logout(context.auth, cookie, context.client, context.site).await;
    }
    let mut response = see_other(LOGIN_PATH);
    response
        .headers_mut()
        .append(header::SET_COOKIE, expired_session_cookie());
    response
}

#[derive(Debug, Default)]
struct LoginForm {
    user: Option<String>,
    password: Option<String>,
    csrf: Option<String>,
    next: Option<String>,
}

async fn read_form(body: Incoming) -> Result<LoginForm, pages::Problem> {
    let bytes = match Limited::new(body, MAX_FORM_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(pages::TOO_LARGE),
    };
    let mut form = LoginForm::default();
    for (key, value) in form_urlencoded::parse(&bytes) {
        let slot = match key.as_ref() {
            "user" => &mut form.user,
            "password" => &mut form.password,
            "csrf" => &mut form.csrf,
            "next" => &mut form.next,
            _ => continue,
        };
        if slot.is_some() {
            return Err(pages::BAD_REQUEST);
        }
        *slot = Some(value.into_owned());
    }
    Ok(form)
}

/// The form's CSRF field equals the cookie, and the browser (when it says)
/// sent the form from this origin.
fn csrf_ok(headers: &HeaderMap, host: &RequestHost, field: Option<&str>) -> bool {
    let cookie = auth::cookie(headers, CSRF_COOKIE);
    let tokens_match = match (cookie, field) {
        (Some(cookie), Some(field)) if valid_csrf(cookie) => {
            // Compared as digests, so the time taken says nothing.
            token::digest(cookie) == token::digest(field)
        }
        _ => false,
    };
    let origin_ok = headers.get(header::ORIGIN).is_none_or(|origin| {
        origin.to_str().is_ok_and(|origin| {
            origin
                .strip_prefix("https://")
                .is_some_and(|authority| authority.eq_ignore_ascii_case(&host.original))
        })
    });
    let fetch_site_ok = headers
        .get("sec-fetch-site")
        .is_none_or(|site| site == "same-origin");
    tokens_match && origin_ok && fetch_site_ok
}

fn valid_csrf(value: &str) -> bool {
    token::parse_digest(value).is_some()
}

/// The request's CSRF cookie if it is one camgate could have set, else a
/// new one (to be set with the page).
fn csrf_token(headers: &HeaderMap) -> (String, bool) {
    if let Some(existing) = auth::cookie(headers, CSRF_COOKIE).filter(|c| valid_csrf(c)) {
        return (existing.to_owned(), false);
    }
    // Without randomness the form cannot be protected: an empty value
    // never matches, so the login fails closed.
    token::random_hex().map_or((String::new(), false), |fresh| (fresh, true))
}

/// `next` from a query, as a local target.
fn next_target(query: Option<&str>) -> String {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(key, _)| key == "next")
        .map_or_else(|| "/".to_owned(), |(_, value)| local_target(&value).into_owned())
}

/// Only a path on this site: `/x`, never `//host`, `/\host`, a scheme or
/// control characters (an open redirect would make camgate's login page a
/// phishing tool).
fn local_target(next: &str) -> Cow<'_, str> {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.len() <= 2048
        && next.bytes().all(|b| b.is_ascii_graphic())
        && !next.starts_with(PREFIX)
        && next.parse::<http::uri::PathAndQuery>().is_ok();
    if local {
        Cow::Borrowed(next)
    } else {
        Cow::Borrowed("/")
    }
}

fn login_page(
    request: &Request<impl Sized>,
    next: &str,
    error: Option<&str>,
    status: StatusCode,
    site: &str,
) -> Response<ResponseBody> {
    let (csrf, new_csrf) = csrf_token(request.headers());
    let error = error.map_or_else(String::new, |message| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", escape(message))
    });
    let body = format!(
        "<form method=\"post\" action=\"{LOGIN_PATH}\">{error}\
         <label for=\"user\">User name</label>\
         <input id=\"user\" name=\"user\" autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" required autofocus>\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <button type=\"submit\">Sign in</button></form>",
        next = escape(next),
    );
    let mut response = page(status, &format!("Sign in to {}", escape(site)), &body);
    if new_csrf {
        set_cookie(&mut response, &csrf_cookie(&csrf));
    }
    response
}

fn logout_page(request: &Request<impl Sized>) -> Response<ResponseBody> {
    let (csrf, new_csrf) = csrf_token(request.headers());
    let body = format!(
        "<form method=\"post\" action=\"{LOGOUT_PATH}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Sign out</button></form>"
    );
    let mut response = page(StatusCode::OK, "Sign out of camgate", &body);
    if new_csrf {
        set_cookie(&mut response, &csrf_cookie(&csrf));
    }
    response
}

fn page(status: StatusCode, title: &str, body: &str) -> Response<ResponseBody> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><link rel=\"stylesheet\" href=\"{STYLE_PATH}\"></head>\
         <body><main><h1>{title}</h1>{body}<p class=\"brand\">camgate</p></main></body></html>"
    );
    let mut response = Response::new(pages::full(html));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: with it, Chromium sends `Origin: null` on the
        // form's POST, and the origin check would refuse every login.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, SECURITY_POLICY),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Strict: sent only with same-site requests, i.e. the form's own POST.
fn csrf_cookie(value: &str) -> String {
    format!("{CSRF_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

fn session_cookie(value: &str, max_age: u64) -> String {
    format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

fn set_cookie(response: &mut Response<ResponseBody>, cookie: &str) {
    if let Ok(value) = HeaderValue::try_from(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn see_other(location: &str) -> Response<ResponseBody> {
    let mut response = Response::new(pages::full(""));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// HTML-escapes text for element content and quoted attributes. The pages
/// put only a site name, a local path and fixed messages in: a few lines
/// here instead of a template engine.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `Set-Cookie` that ends a session the browser still holds (sent with
/// the login redirect when the cookie was dead).
pub fn expired_session_cookie() -> HeaderValue {
    HeaderValue::try_from(session_cookie("", 0)).expect("a constant cookie is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(original: &str) -> RequestHost {
        RequestHost {
            name: original.split(':').next().unwrap().to_owned(),
            original: original.to_owned(),
            is_ip: false,
        }
    }

    #[test]
    fn next_stays_on_the_site() {
        for (next, expected) in [
            ("/", "/"),
            ("/video.mjpg?oids=1", "/video.mjpg?oids=1"),
            ("//evil.example/", "/"),
            ("/\\evil.example", "/"),
            ("https://evil.example/", "/"),
            ("javascript:alert(1)", "/"),
            ("/a\r\nSet-Cookie: x=1", "/"),
            ("/a b", "/"),
            ("/.camgate/logout", "/"),
            ("", "/"),
        ] {
            assert_eq!(local_target(next), expected, "{next:?}");
        }
        assert_eq!(
            next_target(Some("next=%2Fgrab.jpg%3Foids%3D1")),
            "/grab.jpg?oids=1"
        );
        assert_eq!(next_target(Some("next=%2F%2Fevil")), "/");
        assert_eq!(next_target(None), "/");
    }

    #[test]
    fn csrf_needs_the_matching_cookie_and_a_same_origin_browser() {
        let token = "a".repeat(64);
        let site = host("dvr.example.com:8443");
        let with = |pairs: &[(&'static str, &str)]| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::COOKIE,
                HeaderValue::from_str(&format!("{CSRF_COOKIE}={token}")).unwrap(),
            );
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            headers
        };
        assert!(csrf_ok(&with(&[]), &site, Some(&token)));
        let same_origin = [
            ("origin", "https://dvr.example.com:8443"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert!(csrf_ok(&with(&same_origin), &site, Some(&token)));
        assert!(!csrf_ok(&with(&[]), &site, Some(&"b".repeat(64))));
        assert!(!csrf_ok(&with(&[]), &site, None));
        assert!(!csrf_ok(&HeaderMap::new(), &site, Some(&token)));
        for refused in [
            ("origin", "https://evil.example"),
            ("origin", "http://dvr.example.com:8443"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            assert!(!csrf_ok(&with(&[refused]), &site, Some(&token)), "{refused:?}");
        }
        let mut short = HeaderMap::new();
        short.insert(header::COOKIE, HeaderValue::from_static("__Host-camgate-csrf=x"));
        assert!(
            !csrf_ok(&short, &site, Some("x")),
            "only values camgate could have set"
        );
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
