//! Browser sessions and the ban list over the wire: camgate in `gw`
//! between the WAN and the LAN (see `camgate_tests::lab`), the login form
//! posted the way a browser posts it, the admin API on camgate's admin
//! listener, and restarts and reloads in between. The real browser is in
//! `browser.rs`.

use base64::Engine as _;
use camgate_tests::http::{self, Reply};
use camgate_tests::lab::{Lab, basic, credentials_config, hash_password};
use camgate_tests::tls::{RawResponse, get_request_with};

const HOST: &str = "agentdvr.test";
const SESSION: &str = "__Host-camgate-session";
const CSRF: &str = "__Host-camgate-csrf";

/// alice (viewer) and the token from `credentials_config`, plus `root`
/// (admin, password `admin pass`), plus `extra`.
fn lab(tag: &str, extra: &str) -> (Lab, String) {
    let dir = tempfile::tempdir().unwrap();
    let (credentials, secret) = credentials_config(dir.path());
    let root = hash_password("admin pass");
    let config = format!(
        "{credentials}[[user]]\nname = \"root\"\npassword_hash = \"{root}\"\nrole = \"admin\"\n{extra}"
    );
    (Lab::start(tag, &config), secret)
}

fn get(lab: &Lab, host: &str, target: &str, id: &str, headers: &str) -> RawResponse {
    lab.raw("wan", host, &get_request_with(target, host, id, headers))
}

fn post(lab: &Lab, host: &str, target: &str, headers: &str, body: &str) -> RawResponse {
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
        body.len()
    );
    lab.raw("wan", host, request.as_bytes())
}

/// `name=value` from the response's `Set-Cookie` for `name`, with its attributes.
fn set_cookie(response: &RawResponse, name: &str) -> Option<(String, String)> {
    response.headers_named("set-cookie").into_iter().find_map(|line| {
        let (pair, attributes) = line.split_once(';').unwrap_or((&line, ""));
        let value = pair.strip_prefix(&format!("{name}="))?;
        Some((value.to_owned(), attributes.to_owned()))
    })
}

fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// Opens the login page like a browser and returns the CSRF token.
fn csrf_token(lab: &Lab, host: &str) -> String {
    let page = get(lab, host, "/.camgate/login", "csrf", "Accept: text/html\r\n");
    assert_eq!(page.status(), 200, "{}", page.text());
    let (token, attributes) = set_cookie(&page, CSRF).expect("the login page sets the CSRF cookie");
    assert!(page.body().contains(&format!("name=\"csrf\" value=\"{token}\"")));
    assert!(
        attributes.contains("Secure") && attributes.contains("HttpOnly"),
        "{attributes}"
    );
    token
}

/// Logs `user` in on `host` and returns the session cookie's value.
fn log_in(lab: &Lab, host: &str, user: &str, password: &str) -> String {
    let csrf = csrf_token(lab, host);
    let response = post(
        lab,
        host,
        "/.camgate/login",
        &format!("Cookie: {CSRF}={csrf}\r\nOrigin: https://{host}\r\n"),
        &form(&[
            ("user", user),
            ("password", password),
            ("csrf", &csrf),
            ("next", "/"),
        ]),
    );
    assert_eq!(response.status(), 303, "{}", response.text());
    set_cookie(&response, SESSION).expect("a session cookie").0
}

fn with_session(cookie: &str) -> String {
    format!("Cookie: {SESSION}={cookie}\r\n")
}

fn admin(lab: &Lab, method: &str, path: &str, credentials: Option<(&str, &str)>) -> Reply {
    let authorization = credentials.map(|(user, password)| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    });
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|value| ("Authorization", value))
        .into_iter()
        .collect();
    http::request(
        lab.net.ns("gw"),
        method,
        &format!("http://127.0.0.1:8080{path}"),
        &headers,
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

#[test]
fn browser_sessions_log_in_survive_restart_and_reload_and_end_on_logout_or_revocation() {
    let (mut lab, _) = lab("sess", "");

    // A browser opening a protected page is sent to the login form, and
    // comes back to the page (without any token parameter) afterwards.
    let navigate = get(&lab, HOST, "/grab.jpg?oids=1", "n0", "Accept: text/html\r\n");
    assert_eq!(navigate.status(), 303, "{}", navigate.text());
    assert_eq!(
        navigate.header("location").as_deref(),
        Some("/.camgate/login?next=%2Fgrab.jpg%3Foids%3D1")
    );
    let page = get(
        &lab,
        HOST,
        "/.camgate/login?next=%2Fgrab.jpg%3Foids%3D1",
        "p0",
        "Accept: text/html\r\n",
    );
    let policy = page.header("content-security-policy").unwrap_or_default();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
    assert!(page.body().contains("name=\"next\" value=\"/grab.jpg?oids=1\""));
    assert!(lab.dvr.received_with_id("n0").is_empty() && lab.dvr.received_with_id("p0").is_empty());

    // CSRF: no cookie, a cookie that does not match, another origin: refused.
    let csrf = csrf_token(&lab, HOST);
    let good = |password: &str| form(&[("user", "alice"), ("password", password), ("csrf", &csrf)]);
    let cookie_and_origin = |origin: &str| format!("Cookie: {CSRF}={csrf}\r\nOrigin: {origin}\r\n");
    for (headers, why) in [
        (String::new(), "no CSRF cookie"),
        (
            format!("Cookie: {CSRF}={}\r\n", "0".repeat(64)),
            "another CSRF value",
        ),
        (cookie_and_origin("https://evil.example"), "another origin"),
        (
            format!("Cookie: {CSRF}={csrf}\r\nSec-Fetch-Site: cross-site\r\n"),
            "a cross-site form",
        ),
    ] {
        let refused = post(&lab, HOST, "/.camgate/login", &headers, &good("correct horse"));
        assert_eq!(refused.status(), 403, "{why}: {}", refused.text());
        assert!(set_cookie(&refused, SESSION).is_none(), "{why}");
    }
    // A wrong password: 401 and the form again, no session.
    let origin = cookie_and_origin(&format!("https://{HOST}"));
    let wrong = post(&lab, HOST, "/.camgate/login", &origin, &good("guess"));
    assert_eq!(wrong.status(), 401);
    assert!(wrong.body().contains("Wrong user name or password"));
    assert!(set_cookie(&wrong, SESSION).is_none());
    // An open redirect is not possible: `next` stays on the site.
    let evil_next = form(&[
        ("user", "alice"),
        ("password", "correct horse"),
        ("csrf", &csrf),
        ("next", "//evil.example/"),
    ]);
    let login = post(&lab, HOST, "/.camgate/login", &origin, &evil_next);
    assert_eq!(login.status(), 303);
    assert_eq!(login.header("location").as_deref(), Some("/"));
    let (first, attributes) = set_cookie(&login, SESSION).unwrap();
    for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age=604800"] {
        assert!(attributes.contains(attribute), "{attributes}");
    }
    assert!(!attributes.contains("Domain"), "{attributes}");

    // Logging in again rotates the session: the first cookie is dead.
    let rotated = post(
        &lab,
        HOST,
        "/.camgate/login",
        &format!("Cookie: {CSRF}={csrf}; {SESSION}={first}\r\n"),
        &good("correct horse"),
    );
    let cookie = set_cookie(&rotated, SESSION).unwrap().0;
    assert_ne!(cookie, first);
    assert_eq!(
        get(&lab, HOST, "/grab.jpg", "r0", &with_session(&first)).status(),
        401
    );

    // The session opens the API path; the DVR sees its own cookie, never
    // camgate's (nor the admin interface's, which browsers send to every port).
    let both = format!("Cookie: dvrsid=42; {SESSION}={cookie}; {CSRF}={csrf}; camgate-admin=cgs_1\r\n");
    assert_eq!(get(&lab, HOST, "/grab.jpg", "s1", &both).status(), 200);
    assert_eq!(
        get(&lab, HOST, "/", "s2", &both).status(),
        200,
        "GUI (allow rule)"
    );
    for id in ["s1", "s2"] {
        let seen = &lab.dvr.received_with_id(id)[0];
        assert_eq!(seen.header("cookie"), Some("dvrsid=42"), "{id}");
    }

    // Tampered and forged cookies: 401 for scripts; a browser is sent to
    // log in again and told to forget the dead cookie.
    let mut tampered = cookie.clone();
    tampered.replace_range(10..11, if &cookie[10..11] == "a" { "b" } else { "a" });
    for (value, id) in [(tampered.as_str(), "x1"), ("cgs_forged", "x2"), ("", "x3")] {
        assert_eq!(
            get(&lab, HOST, "/grab.jpg", id, &with_session(value)).status(),
            401,
            "{value}"
        );
        assert!(lab.dvr.received_with_id(id).is_empty());
    }
    let dead = get(
        &lab,
        HOST,
        "/grab.jpg",
        "x4",
        &format!("Accept: text/html\r\n{}", with_session(&tampered)),
    );
    assert_eq!(dead.status(), 303);
    assert!(set_cookie(&dead, SESSION).is_some_and(|(v, a)| v.is_empty() && a.contains("Max-Age=0")));

    // A session from another site does not open this one.
    let elsewhere = log_in(&lab, "blueiris.test", "alice", "correct horse");
    assert_eq!(
        get(&lab, HOST, "/grab.jpg", "o1", &with_session(&elsewhere)).status(),
        403
    );
    // (fake-dvr has no /json: its own 404 shows the request was let through.)
    assert_eq!(
        get(&lab, "blueiris.test", "/json", "o2", &with_session(&elsewhere)).status(),
        404
    );
    assert_eq!(lab.dvr.received_with_id("o2").len(), 1);

    // Kept 0600 under the state dir, without the cookies themselves.
    let file = lab.camgate.dir.path().join("state/sessions.json");
    let stored = std::fs::read_to_string(&file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !stored.contains(&cookie[4..]) && stored.contains("alice"),
        "{stored}"
    );

    // A reload and a restart keep sessions.
    lab.camgate.reload();
    assert_eq!(
        get(&lab, HOST, "/grab.jpg", "k1", &with_session(&cookie)).status(),
        200
    );
    let gw = lab.net.ns("gw");
    lab.camgate.restart(Some(gw));
    assert_eq!(
        get(&lab, HOST, "/grab.jpg", "k2", &with_session(&cookie)).status(),
        200
    );

    // The admin API lists sessions and revokes one: admins only.
    assert_eq!(admin(&lab, "GET", "/api/sessions", None).status, 401);
    assert_eq!(
        admin(&lab, "GET", "/api/sessions", Some(("alice", "correct horse"))).status,
        403
    );
    let listed = admin(&lab, "GET", "/api/sessions", Some(("root", "admin pass")));
    assert_eq!(listed.status, 200, "{}", listed.body);
    let sessions = listed.json();
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let garage = sessions.iter().find(|s| s["site"] == "blueiris").unwrap();
    let id = garage["id"].as_str().unwrap();
    let path = format!("/api/sessions/{id}");
    assert_eq!(
        admin(&lab, "DELETE", &path, Some(("root", "admin pass"))).status,
        204
    );
    assert_eq!(
        admin(&lab, "DELETE", &path, Some(("root", "admin pass"))).status,
        404
    );
    assert_eq!(
        get(&lab, "blueiris.test", "/json", "o3", &with_session(&elsewhere)).status(),
        401
    );

    // Logout: a CSRF-protected form that ends the session server-side.
    let logout_page = get(&lab, HOST, "/.camgate/logout", "l0", &with_session(&cookie));
    assert_eq!(logout_page.status(), 200);
    let logout_csrf = set_cookie(&logout_page, CSRF).unwrap().0;
    let forged = post(
        &lab,
        HOST,
        "/.camgate/logout",
        &with_session(&cookie),
        &form(&[("csrf", &logout_csrf)]),
    );
    assert_eq!(forged.status(), 403, "no CSRF cookie: not logged out");
    assert_eq!(
        get(&lab, HOST, "/grab.jpg", "l1", &with_session(&cookie)).status(),
        200
    );
    let out = post(
        &lab,
        HOST,
        "/.camgate/logout",
        &format!("Cookie: {SESSION}={cookie}; {CSRF}={logout_csrf}\r\n"),
        &form(&[("csrf", &logout_csrf)]),
    );
    assert_eq!(out.status(), 303);
    assert_eq!(out.header("location").as_deref(), Some("/.camgate/login"));
    assert!(set_cookie(&out, SESSION).is_some_and(|(v, a)| v.is_empty() && a.contains("Max-Age=0")));
    assert_eq!(
        get(&lab, HOST, "/grab.jpg", "l2", &with_session(&cookie)).status(),
        401
    );

    // camgate's own paths never reach the DVR, however they are spelled.
    for (i, target) in ["/.camgate/nothing", "/%2Ecamgate/login", "/x/../.camgate/login"]
        .iter()
        .enumerate()
    {
        let id = format!("c{i}");
        assert_eq!(get(&lab, HOST, target, &id, "").status(), 404, "{target}");
        assert!(lab.dvr.received_with_id(&id).is_empty(), "{target}");
    }

    // The audit log has the logins and revocations, never a secret.
    let log: String = ["camgate.stderr", "camgate-restarted.stderr"]
        .iter()
        .map(|name| std::fs::read_to_string(lab.camgate.dir.path().join(name)).unwrap())
        .collect();
    assert!(
        log.contains("session started") && log.contains("session revoked by an admin"),
        "{log}"
    );
    assert!(
        log.contains("session ended") && log.contains("CSRF check failed"),
        "{log}"
    );
    for secret in [
        &cookie[4..],
        &first[4..],
        &elsewhere[4..],
        &csrf,
        "correct horse",
        "admin pass",
    ] {
        assert!(!log.contains(secret), "the log holds a secret");
    }
}

#[test]
fn bans_survive_a_reload_admins_lift_them_and_the_login_form_is_rate_limited() {
    let (mut lab, _) = lab("bans", "[auth]\nban_after_failures = 3\n");
    let statuses: Vec<u16> = (0..3)
        .map(|i| {
            get(
                &lab,
                HOST,
                "/grab.jpg",
                &format!("w{i}"),
                &basic("alice", "guess"),
            )
            .status()
        })
        .collect();
    assert_eq!(statuses, [401, 401, 429]);
    lab.camgate.reload();
    let right = basic("alice", "correct horse");
    assert_eq!(
        get(&lab, HOST, "/grab.jpg", "w3", &right).status(),
        429,
        "still banned after a reload"
    );

    let as_root = |method: &str, path: &str| admin(&lab, method, path, Some(("root", "admin pass")));
    let bans = as_root("GET", "/api/bans");
    assert_eq!(bans.status, 200);
    let bans = bans.json();
    assert_eq!(bans[0]["address"], "203.0.113.2", "{bans}");
    // The first ban lasts the default minute.
    let remaining = bans[0]["remaining_secs"].as_u64().unwrap();
    assert!((1..=60).contains(&remaining), "{bans}");
    let lift = "/api/bans/203.0.113.2";
    assert_eq!(admin(&lab, "DELETE", lift, None).status, 401);
    assert_eq!(
        admin(&lab, "DELETE", lift, Some(("alice", "correct horse"))).status,
        403
    );
    assert_eq!(as_root("DELETE", "/api/bans/nonsense").status, 400);
    assert_eq!(as_root("DELETE", lift).status, 204);
    assert_eq!(as_root("DELETE", lift).status, 404, "lifted already");
    assert_eq!(get(&lab, HOST, "/grab.jpg", "w4", &right).status(), 200);
    assert!(lab.camgate.stderr().contains("ban lifted by an admin"));

    // The login form takes 10 posts a minute per address, right or wrong.
    let statuses: Vec<u16> = (0..11)
        .map(|_| post(&lab, HOST, "/.camgate/login", "", "user=alice&password=x").status())
        .collect();
    assert_eq!(
        statuses[..10],
        [403; 10],
        "no CSRF cookie: refused before any password check"
    );
    let limited = post(&lab, HOST, "/.camgate/login", "", "user=alice&password=x");
    assert_eq!(limited.status(), 429);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(statuses[10], 429);
}
