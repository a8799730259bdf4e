//! The admin API's OpenAPI document (`gateway/src/admin/openapi.json`, served at
//! `GET /api/openapi.json`) against the implementation: every route of the router is in the
//! document and every operation of the document is answered by a running camgate (admin-only
//! ones refuse a client without credentials); then schemathesis (tests/openapi/requirements.txt,
//! installed by tests/run.sh) fuzzes every operation from the document, as an admin over HTTP
//! Basic, and fails on any 5xx and on any answer the document does not describe (status,
//! content type, headers, body schema). Real camgate in a namespace, set up and in setup mode.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use camgate_tests::camgate::{Camgate, Launch};
use camgate_tests::http::{Reply, request};
use camgate_tests::lab::{basic, hash_password};
use camgate_tests::netns::Netns;
use nix::sys::signal::Signal;

const DOCUMENT: &str = include_str!("../../gateway/src/admin/openapi.json");
/// The router's source. axum cannot list a `Router`'s routes (it has no introspection), so the
/// `.route("…", get(…).post(…))` calls in `admin::router` are the list the document is held to.
const ROUTER_SOURCE: &str = include_str!("../../gateway/src/admin/mod.rs");

/// The keys of a path item that are operations.
const OPERATION_KEYS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

const ORIGIN: &str = "http://127.0.0.1:8080";
const USER: &str = "root";
const PASSWORD: &str = "openapi test password";
/// Test cases per operation and phase: the whole document takes about half a minute.
const MAX_EXAMPLES: &str = "200";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// A set-up camgate: dev mode, the admin listener on 127.0.0.1:8080, one admin user. Failed
/// sign-ins (the fuzzer's logins) ban only after 1,000, so the fuzzer keeps its own access; a
/// change that could lock the admin out is reverted after 5 s unless confirmed.
fn config() -> String {
    let hash = hash_password(PASSWORD);
    format!(
        "[daemon]\nmode = \"dev\"\nstate_dir = \"var/lib\"\n\n\
         [admin]\nlisten = [\"127.0.0.1:8080\"]\nconfirm_within = \"5s\"\n\n\
         [auth]\nban_after_failures = 1000\n\n\
         [[user]]\nname = \"{USER}\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n"
    )
}

fn start(netns: &Netns, config: Option<String>) -> Camgate {
    Camgate::start(Launch {
        netns: Some(netns),
        config,
        env: Vec::new(),
        appliance_setup: false,
    })
}

/// `(path, METHOD)` of every operation in the document, and whether it is for admins only (it
/// has security requirements).
fn documented_operations() -> Vec<(String, String, bool)> {
    let document: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
    let paths = document["paths"].as_object().expect("the document has paths");
    let mut operations = Vec::new();
    for (path, item) in paths {
        for (key, operation) in item.as_object().expect("a path item is an object") {
            if !OPERATION_KEYS.contains(&key.as_str()) {
                continue; // `parameters`, `summary`…
            }
            let admin_only = operation["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{key} {path}: every operation states its security"))
                .iter()
                .any(|requirement| requirement.as_object().is_some_and(|r| !r.is_empty()));
            operations.push((path.clone(), key.to_uppercase(), admin_only));
        }
    }
    operations
}

/// `(path, METHOD)` for every `.route("path", get(…).post(…))` in `admin::router`'s source.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let start = ROUTER_SOURCE
        .find("pub fn router(")
        .expect("admin/mod.rs has `pub fn router(`");
    let body = &ROUTER_SOURCE[start..];
    let body = &body[..body.find("\n}\n").expect("the end of `fn router`")];
    let mut routes = BTreeSet::new();
    for (at, call) in body.match_indices(".route(") {
        let arguments = &body[at + call.len()..];
        let arguments = &arguments[..closing_parenthesis(arguments)];
        let arguments = arguments.trim_start();
        assert!(
            arguments.starts_with('"'),
            "a route's path is a string literal: {arguments}"
        );
        let path_end = 1 + arguments[1..].find('"').expect("the end of a route's path");
        let path = &arguments[1..path_end];
        let methods = method_calls(&arguments[path_end + 1..]);
        assert!(!methods.is_empty(), "no method for route {path}: {arguments}");
        for method in methods {
            routes.insert((path.to_owned(), method));
        }
    }
    assert!(
        routes.len() > 10,
        "the router's routes were not found: {routes:?}"
    );
    routes
}

/// Where the parenthesis opened just before `text` closes (string literals skipped).
fn closing_parenthesis(text: &str) -> usize {
    let mut depth = 0_u32;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match (in_string, c) {
            (true, _) if escaped => escaped = false,
            (true, '\\') => escaped = true,
            (_, '"') => in_string = !in_string,
            (false, '(') => depth += 1,
            (false, ')') if depth == 0 => return i,
            (false, ')') => depth -= 1,
            _ => {}
        }
    }
    panic!("unbalanced parentheses in the router's source: {text}")
}

/// The method-router calls (`get(`, `.post(`…) outside any parentheses in `text`.
fn method_calls(text: &str) -> Vec<String> {
    let mut methods = Vec::new();
    let mut depth = 0_u32;
    let mut in_string = false;
    let mut escaped = false;
    let mut word = String::new();
    for c in text.chars() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' => {
                if depth == 0 && ["get", "put", "post", "delete", "patch"].contains(&word.as_str()) {
                    methods.push(word.to_uppercase());
                }
                depth += 1;
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            word.clear();
        }
    }
    methods
}

/// A body-less request to the admin listener, with extra headers.
fn send(netns: &Netns, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let url = format!("{ORIGIN}{path}");
    request(netns, method, &url, headers).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Answered by the router's fallback (404 `not found`, plain text) or refused for the method
/// (405): the route is not there.
fn no_such_route(reply: &Reply) -> bool {
    reply.status == 405
        || (reply.status == 404
            && !reply
                .header("content-type")
                .is_some_and(|value| value.starts_with("application/json")))
}

#[test]
fn the_document_and_the_router_agree() {
    let documented: BTreeSet<(String, String)> = documented_operations()
        .into_iter()
        .map(|(path, method, _)| (path, method))
        .collect();
    let routed = routes_in_source();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from gateway/src/admin/openapi.json: {undocumented:?}; \
         operations of the document the router lacks: {unrouted:?}"
    );

    let netns = Netns::new("openapi");
    let camgate = start(&netns, Some(config()));
    let served = send(&netns, "GET", "/api/openapi.json", &[]);
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.header("content-type"), Some("application/json"));
    assert_eq!(
        served.json(),
        serde_json::from_str::<serde_json::Value>(DOCUMENT).unwrap(),
        "camgate serves another document: rebuild it (cargo build --workspace --bins)"
    );

    let authorization = basic(USER, PASSWORD);
    let authorization = authorization.strip_prefix("Authorization: ").unwrap().trim_end();
    for (path, method, admin_only) in documented_operations() {
        // Path parameters: any value reaches the handler (which may answer 400 or 404 in JSON).
        let path = path
            .replace("{address}", "192.0.2.7")
            .replace("{id}", "0123456789abcdef")
            .replace("{camera}", "porch")
            .replace("{stream}", "main");
        assert!(
            !path.contains('{'),
            "a path parameter this test does not fill in: {path}"
        );
        let admin = send(&netns, &method, &path, &[("authorization", authorization)]);
        assert!(
            !no_such_route(&admin),
            "{method} {path} is documented but not routed: {} {}",
            admin.status,
            admin.body
        );
        let anonymous = send(&netns, &method, &path, &[]);
        if admin_only {
            assert_eq!(
                anonymous.status, 401,
                "{method} {path} is documented as admin-only: {}",
                anonymous.body
            );
            assert_eq!(
                anonymous.header("www-authenticate"),
                Some("Basic realm=\"camgate admin\", charset=\"UTF-8\"")
            );
        } else {
            assert!(
                anonymous.status != 401 && !no_such_route(&anonymous),
                "{method} {path} is documented as open: {} {}",
                anonymous.status,
                anonymous.body
            );
        }
    }
    drop(camgate);
}

/// The venv's schemathesis (`$SCHEMATHESIS` overrides it), at the version requirements.txt pins:
/// missing or another version fails the test, naming the install step.
fn schemathesis() -> PathBuf {
    let install = "python3 -m venv target/openapi-venv && \
                   target/openapi-venv/bin/pip install -r tests/openapi/requirements.txt (tests/run.sh does)";
    let path = std::env::var_os("SCHEMATHESIS").map_or_else(
        || repo().join("target/openapi-venv/bin/schemathesis"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "schemathesis is missing ({}): {install}",
        path.display()
    );
    let requirements = std::fs::read_to_string(repo().join("tests/openapi/requirements.txt")).unwrap();
    let pinned = requirements
        .lines()
        .find_map(|line| line.strip_prefix("schemathesis=="))
        .expect("requirements.txt pins schemathesis")
        .trim();
    let output = Command::new(&path).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(
        version.trim().ends_with(&format!("version {pinned}")),
        "{} is `{}`, requirements.txt pins {pinned}: {install}",
        path.display(),
        version.trim()
    );
    path
}

/// Runs schemathesis from inside `netns` against the document camgate serves there; `args`
/// choose credentials and operations. Its JUnit report goes to tests/output/openapi/<report>.xml.
fn fuzz(netns: &Netns, camgate: &Camgate, report: &str, args: &[&str]) {
    let schemathesis = schemathesis();
    let reports = repo().join("tests/output/openapi");
    std::fs::create_dir_all(&reports).unwrap();
    let junit = reports.join(format!("{report}.xml"));
    let mut command = netns.command("timeout");
    command
        .arg("600")
        .arg(schemathesis)
        .arg("--config-file")
        .arg(repo().join("tests/openapi/schemathesis.toml"))
        .args(["run", &format!("{ORIGIN}/api/openapi.json"), "--url", ORIGIN])
        // Every check but positive_data_acceptance: a valid request may still be refused with
        // 4xx (a config, an address or a URL has rules a schema cannot state).
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        // No OpenAPI links in the document: no stateful phase.
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", MAX_EXAMPLES, "--no-color"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&junit)
        .args(args)
        // Its caches and hypothesis's files stay in the run directory.
        .current_dir(camgate.dir.path())
        .env("HOME", camgate.dir.path());
    let output = { command.output().unwrap() };
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{}\ncamgate's log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        camgate.peer.stderr()
    );
}

#[test]
fn schemathesis_finds_no_server_error_and_nothing_the_document_does_not_describe() {
    let netns = Netns::new("openapi-fuzz");
    let mut camgate = start(&netns, Some(config()));
    let credentials = format!("{USER}:{PASSWORD}");
    // Every operation as the admin, over Basic (so POST /api/logout ends no session of its own),
    // in three runs, as schemathesis feeds values from answers back into requests: given the
    // drafts POST /api/config/edit answers with, POST /api/config applies them, and a draft
    // without the admin user locks the admin out (401, then a ban: 429) until the change is
    // reverted a minute later. So the first run leaves POST /api/config out; the second runs it
    // with GET /api/config and the confirmation: random text is refused (422), the text GET
    // /api/config showed applies unchanged (200); the third, last, adds the drafts: one applies
    // unconfirmed (200 with `unconfirmed`) and the rest of that run answers 401 and 429.
    let auth = ["--auth", credentials.as_str()];
    fuzz(
        &netns,
        &camgate,
        "admin",
        &[&auth[..], &["--exclude-name", "POST /api/config"]].concat(),
    );
    fuzz(
        &netns,
        &camgate,
        "apply",
        &[
            &auth[..],
            &["--include-name-regex", "^(GET|POST) /api/config(/confirm)?$"],
        ]
        .concat(),
    );
    fuzz(
        &netns,
        &camgate,
        "drafts",
        &[&auth[..], &["--include-path-regex", "^/api/config"]].concat(),
    );
    assert!(
        camgate.peer.try_exit().is_none(),
        "camgate exited:\n{}",
        camgate.peer.stderr()
    );
    let status = send(&netns, "GET", "/api/status", &[]);
    assert_eq!(status.status, 200, "{}", status.body);
    // Its daemon loop still runs: SIGTERM stops it.
    camgate.peer.signal(Signal::SIGTERM);
    let exit = camgate.peer.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "camgate: {exit}\n{}", camgate.peer.stderr());
}

#[test]
fn schemathesis_claims_nothing_in_setup_mode() {
    // No config: setup mode, where the claim reads its body and checks the code (no attempt
    // limit for the machine itself, so every case reaches the code check).
    let netns = Netns::new("openapi-setup");
    let mut camgate = start(&netns, None);
    fuzz(
        &netns,
        &camgate,
        "setup",
        &[
            "--include-path",
            "/api/setup/claim",
            "--include-path",
            "/api/status",
            "--include-path",
            "/api/login",
        ],
    );
    assert!(
        camgate.peer.try_exit().is_none(),
        "camgate exited:\n{}",
        camgate.peer.stderr()
    );
    let status = send(&netns, "GET", "/api/status", &[]).json();
    assert_eq!(status["setup"], true, "{status}");
}
