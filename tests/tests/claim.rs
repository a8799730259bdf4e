//! Claiming a fresh camgate with its setup code (`POST /api/setup/claim`):
//! only from a network camgate is on, attempts limited (also when sent in
//! parallel), bad input refused with a reason, and then setup mode is over
//! for good; the new admin then signs in (session, CSRF, cross-site
//! refusal, sign-out). Real camgate in a namespace, a LAN neighbour and a
//! client behind a router in another, requests by curl.

use camgate_tests::camgate::{Camgate, Launch};
use camgate_tests::http::{Answer, curl, get_ok, request};
use camgate_tests::netns::{Netns, Topology};

/// camgate's admin address from the LAN; it reaches the admin listener
/// (127.0.0.1:8080 in dev mode) through a DNAT in camgate's namespace, which
/// keeps the client's own source address.
const LAN_URL: &str = "http://192.168.50.1:8080/api/setup/claim";
const LOCAL_URL: &str = "http://127.0.0.1:8080/api/setup/claim";

/// POSTs `body` to `url` from `netns`, source address `from`.
fn claim(netns: &Netns, from: &str, url: &str, body: &str) -> Answer {
    curl(netns, from, "POST", url, Some(body), &[])
}

fn json(code: &str, user: &str, password: &str) -> String {
    serde_json::json!({ "code": code, "user": user, "password": password }).to_string()
}

fn error(answer: &Answer) -> &str {
    answer.body["error"].as_str().unwrap_or_default()
}

#[test]
fn the_setup_code_claims_camgate_once_and_only_from_its_network() {
    // gw (camgate) ── lan (192.168.50.2, and 10.9.9.2 behind it as if
    // routed from elsewhere).
    let net = Topology::builder("claim")
        .link(("gw", "192.168.50.1/24"), ("lan", "192.168.50.2/24"))
        .route("gw", "10.9.9.0/24", "192.168.50.2")
        .sysctl("gw", "net.ipv4.conf.all.route_localnet", "1")
        .build();
    let (gw, lan) = (net.ns("gw"), net.ns("lan"));
    lan.ip(&["addr", "add", "10.9.9.2/32", "dev", "lo"]);
    for rule in [
        "add table ip claimtest",
        "add chain ip claimtest pre { type nat hook prerouting priority -100; }",
        "add rule ip claimtest pre ip daddr 192.168.50.1 tcp dport 8080 dnat to 127.0.0.1:8080",
    ] {
        let status = gw.command("nft").arg(rule).status().unwrap();
        assert!(status.success(), "nft {rule}");
    }
    let camgate = Camgate::start(Launch {
        netns: Some(gw),
        config: None,
        env: Vec::new(),
        appliance_setup: false,
    });
    let dir = camgate.dir.path();
    let code_path = dir.join("var/lib/setup-code");
    let config_path = dir.join("var/camgate.toml");
    let code = std::fs::read_to_string(&code_path).unwrap().trim().to_owned();
    let password = "correct horse battery";

    let routed = claim(lan, "10.9.9.2", LAN_URL, &json(&code, "ann", password));
    assert_eq!(routed.status, 403, "{}", routed.body);
    assert!(
        error(&routed).contains("only for the network camgate is on; 10.9.9.2"),
        "{}",
        routed.body
    );

    // Ten wrong codes at once from the neighbour: five are checked, the
    // rest wait, however they race.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let guesses: Vec<_> = (0..10)
            .map(|_| {
                scope.spawn(|| {
                    claim(
                        lan,
                        "192.168.50.2",
                        LAN_URL,
                        &json("ABCDE-FGHJK", "ann", password),
                    )
                })
            })
            .collect();
        guesses
            .into_iter()
            .map(|guess| guess.join().unwrap().status)
            .collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5, "{statuses:?}");
    // The neighbour has had its tries: even the right code waits now.
    let limited = claim(lan, "192.168.50.2", LAN_URL, &json(&code, "ann", password));
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(
        limited.headers.to_ascii_lowercase().contains("retry-after: "),
        "{}",
        limited.headers
    );
    let wrong = claim(gw, "127.0.0.1", LOCAL_URL, &json("ABCDE-FGHJK", "ann", password));
    assert!(error(&wrong).contains("wrong setup code"), "{}", wrong.body);

    // Bad input: refused with a reason, nothing written (from the machine
    // itself, which is not limited).
    for (body, status, reason) in [
        ("{\"code\": 1}".to_owned(), 422, "code"),
        ("not json".to_owned(), 400, "JSON"),
        (format!("{{\"code\": \"{}\"}}", "x".repeat(8000)), 413, ""),
        (json(&code, "ann", "short"), 422, "at least 10 characters"),
        (
            json(&code, "Ann Smith", password),
            422,
            "user name: user names use a-z",
        ),
    ] {
        let answer = claim(gw, "127.0.0.1", LOCAL_URL, &body);
        assert_eq!(answer.status, status, "{body:.60}: {}", answer.body);
        assert!(error(&answer).contains(reason), "{body:.60}: {}", answer.body);
        assert!(!config_path.exists(), "{body:.60} wrote a config");
    }

    // Typed as people do: lower case, a space for the dash.
    let typed = code.replace('-', " ").to_ascii_lowercase();
    let claimed = claim(gw, "127.0.0.1", LOCAL_URL, &json(&typed, "ann", password));
    assert_eq!(claimed.status, 201, "{}", claimed.body);
    assert_eq!(claimed.body["user"], "ann");
    assert_eq!(claimed.body["generation"], 2);

    let status = get_ok(gw, "http://127.0.0.1:8080/api/status").json();
    assert_eq!(status["setup"], false);
    assert!(!code_path.exists(), "the setup code outlived the claim");
    use std::os::unix::fs::PermissionsExt;
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(
        config.contains("name = \"ann\"") && config.contains("role = \"admin\""),
        "{config}"
    );
    assert!(!config.contains(password), "{config}");
    assert_eq!(
        std::fs::metadata(&config_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Ann is the admin now.
    use base64::Engine;
    let basic = |user: &str, password: &str| {
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {credentials}")
    };
    let bans = request(
        gw,
        "GET",
        "http://127.0.0.1:8080/api/bans",
        &[("authorization", &basic("ann", password))],
    )
    .unwrap();
    assert_eq!(bans.status, 200, "{}", bans.body);
    let wrong = request(
        gw,
        "GET",
        "http://127.0.0.1:8080/api/bans",
        &[("authorization", &basic("ann", "not the password"))],
    )
    .unwrap();
    assert_eq!(wrong.status, 401, "{}", wrong.body);

    // Setup is over for good: the code (even the right one) claims nothing.
    let again = claim(gw, "127.0.0.1", LOCAL_URL, &json(&code, "eve", password));
    assert_eq!(again.status, 410, "{}", again.body);
    assert!(!std::fs::read_to_string(&config_path).unwrap().contains("eve"));
    let log = camgate.stderr();
    assert!(log.contains("camgate claimed: setup mode is over"), "{log}");
    assert!(log.contains("wrong or expired setup code"), "{log}");

    admin_session(gw, password);
}

/// Ann, now admin, signs in from the browser: a session cookie (script-proof,
/// same-site), a CSRF token for changes, no changes from other sites' pages,
/// and sign-out ends it.
fn admin_session(gw: &Netns, password: &str) {
    const API: &str = "http://127.0.0.1:8080/api";
    let local = |method: &str, path: &str, headers: &[&str]| {
        curl(gw, "127.0.0.1", method, &format!("{API}{path}"), None, headers)
    };
    let login = |user: &str, password: &str| {
        let body = serde_json::json!({ "user": user, "password": password }).to_string();
        curl(gw, "127.0.0.1", "POST", &format!("{API}/login"), Some(&body), &[])
    };
    let wrong = login("ann", "not the password");
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.header("set-cookie").is_none());

    let signed_in = login("ann", password);
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    let set_cookie = signed_in.header("set-cookie").unwrap().to_owned();
    for attribute in ["camgate-admin=cgs_", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = format!("cookie: {}", set_cookie.split(';').next().unwrap());
    let csrf = signed_in.body["csrf"].as_str().unwrap().to_owned();
    let with_token = format!("x-csrf-token: {csrf}");

    let session = local("GET", "/session", &[cookie.as_str()]);
    assert_eq!(session.status, 200, "{}", session.body);
    assert_eq!(session.body["user"], "ann");
    assert_eq!(session.body["csrf"], csrf.as_str());
    let bans = local("GET", "/bans", &[cookie.as_str()]);
    assert_eq!(bans.status, 200, "{}", bans.body);

    // A change needs the token; a page of another site is refused even with it.
    let no_token = local("DELETE", "/bans/203.0.113.9", &[cookie.as_str()]);
    assert_eq!(no_token.status, 403, "{}", no_token.body);
    assert!(error(&no_token).contains("X-CSRF-Token"), "{}", no_token.body);
    let bad_token = local(
        "DELETE",
        "/bans/203.0.113.9",
        &[cookie.as_str(), "x-csrf-token: 0000"],
    );
    assert_eq!(bad_token.status, 403, "{}", bad_token.body);
    let evil = "origin: http://evil.example";
    let cross = local(
        "DELETE",
        "/bans/203.0.113.9",
        &[cookie.as_str(), with_token.as_str(), evil],
    );
    assert_eq!(cross.status, 403, "{}", cross.body);
    assert!(error(&cross).contains("another site"), "{}", cross.body);
    let lifted = local(
        "DELETE",
        "/bans/203.0.113.9",
        &[cookie.as_str(), with_token.as_str()],
    );
    assert!(
        ![401, 403].contains(&lifted.status),
        "{} {}",
        lifted.status,
        lifted.body
    );
    let cross_login = curl(
        gw,
        "127.0.0.1",
        "POST",
        &format!("{API}/login"),
        Some(&serde_json::json!({ "user": "ann", "password": password }).to_string()),
        &[evil],
    );
    assert_eq!(cross_login.status, 403, "{}", cross_login.body);

    let out = local("POST", "/logout", &[cookie.as_str(), with_token.as_str()]);
    assert_eq!(out.status, 204, "{}", out.body);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after = local("GET", "/session", &[cookie.as_str()]);
    assert_eq!(after.status, 401, "{}", after.body);
}
