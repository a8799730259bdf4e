//! Applying a config from the admin API (`POST /api/config`): invalid text
//! is refused with its line, a harmless change applies at once, a change
//! that could lock the admin out (here: the admin listener) is reverted
//! unless confirmed in time — also when camgate restarts meanwhile — and
//! stays once confirmed. Real camgate in a namespace, curl as the client.

use std::net::TcpStream;
use std::time::Duration;

use camgate_tests::camgate::{Camgate, Launch};
use camgate_tests::http::curl;
use camgate_tests::lab::{basic, hash_password};
use camgate_tests::netns::Netns;
use camgate_tests::process::wait_until;

const API: &str = "http://127.0.0.1:8080/api";
const PASSWORD: &str = "apply test password";

fn config(hash: &str, extra_listen: bool, log: &str) -> String {
    let listen = if extra_listen {
        r#"["127.0.0.1:8080", "127.0.0.1:8081"]"#
    } else {
        r#"["127.0.0.1:8080"]"#
    };
    format!(
        "[daemon]\nmode = \"dev\"\nstate_dir = \"var/lib\"\nlog = \"{log}\"\n\n\
         [admin]\nlisten = {listen}\nconfirm_within = \"3s\"\n\n\
         [[user]]\nname = \"root\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n"
    )
}

/// (status, JSON body) of an admin request with Basic credentials.
fn admin(
    netns: &Netns,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(serde_json::Value::to_string);
    let authorization = basic("root", PASSWORD);
    let answer = curl(
        netns,
        "127.0.0.1",
        method,
        &format!("{API}{path}"),
        body.as_deref(),
        &[authorization.trim_end()],
    );
    (answer.status, answer.body)
}

fn apply(netns: &Netns, text: &str) -> (u16, serde_json::Value) {
    admin(
        netns,
        "POST",
        "/config",
        Some(&serde_json::json!({ "config": text })),
    )
}

fn second_listener_open(netns: &Netns) -> bool {
    netns.run(|| TcpStream::connect("127.0.0.1:8081").is_ok())
}

#[test]
fn risky_changes_are_reverted_unless_confirmed() {
    let netns = Netns::new("apply");
    let hash = hash_password(PASSWORD);
    let base = config(&hash, false, "info");
    let mut camgate = Camgate::start(Launch {
        netns: Some(&netns),
        config: Some(base.clone()),
        env: Vec::new(),
        appliance_setup: false,
    });
    let path = camgate.dir.path().join("camgate.toml");
    let file = || std::fs::read_to_string(&path).unwrap();

    let (status, shown) = admin(&netns, "GET", "/config", None);
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["config"], base.as_str());
    assert!(shown["unconfirmed"].is_null());

    // Invalid: refused with the line and key, nothing changes.
    let (status, refused) = apply(&netns, &base.replace("mode = \"dev\"", "mode = \"turbo\""));
    assert_eq!(status, 422, "{refused}");
    let message = refused["error"].as_str().unwrap();
    assert!(
        message.contains("2:8: `daemon.mode`: unknown variant `turbo`"),
        "{message}"
    );
    assert_eq!(file(), base);

    // Harmless: applies at once, nothing to confirm.
    let quieter = config(&hash, false, "warn,camgate=info");
    let (status, applied) = apply(&netns, &quieter);
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["generation"], 2);
    assert!(applied["unconfirmed"].is_null(), "{applied}");
    assert_eq!(file(), quieter);

    // The admin listener changes: applied, then reverted when nobody confirms.
    let risky = config(&hash, true, "warn,camgate=info");
    let (status, applied) = apply(&netns, &risky);
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["generation"], 3);
    assert_eq!(
        applied["unconfirmed"]["reasons"],
        serde_json::json!(["admin interface addresses"])
    );
    assert_eq!(applied["unconfirmed"]["confirm_within_secs"], 3);
    assert!(second_listener_open(&netns), "the new listener is not serving");
    let (status, busy) = apply(&netns, &quieter);
    assert_eq!(status, 409, "{busy}");
    let (_, shown) = admin(&netns, "GET", "/config", None);
    assert!(!shown["unconfirmed"].is_null(), "{shown}");
    wait_until(
        "the unconfirmed change to be reverted",
        Duration::from_secs(15),
        || (!second_listener_open(&netns)).then_some(()),
    );
    wait_until("the file to be reverted", Duration::from_secs(5), || {
        (file() == quieter).then_some(())
    });
    assert!(
        camgate
            .stderr()
            .contains("was not confirmed within 3s: back to the previous configuration")
    );
    let (status, nothing) = admin(&netns, "POST", "/config/confirm", None);
    assert_eq!(status, 409, "{nothing}");

    // Confirmed in time: it stays.
    let (status, _) = apply(&netns, &risky);
    assert_eq!(status, 200);
    let (status, confirmed) = admin(&netns, "POST", "/config/confirm", None);
    assert_eq!(status, 200, "{confirmed}");
    std::thread::sleep(Duration::from_secs(5));
    assert!(second_listener_open(&netns), "a confirmed change was reverted");
    assert_eq!(file(), risky);

    // Unconfirmed when camgate stops (the admin, locked out, power-cycles
    // it): the next start goes back to the last confirmed config.
    let (status, applied) = apply(&netns, &quieter);
    assert_eq!(status, 200, "{applied}");
    assert!(
        !applied["unconfirmed"].is_null(),
        "taking a listener away is risky too: {applied}"
    );
    camgate.restart(Some(&netns));
    let restarted_log = camgate.dir.path().join("camgate-restarted.stderr");
    let restarted = wait_until(
        "the restarted camgate to be ready",
        Duration::from_secs(20),
        || {
            let log = std::fs::read_to_string(&restarted_log).unwrap_or_default();
            log.contains("camgate ready").then_some(log)
        },
    );
    assert!(
        restarted.contains("the last change was not confirmed before camgate stopped"),
        "{restarted}"
    );
    assert_eq!(file(), risky, "the unconfirmed change survived a restart");
    assert!(second_listener_open(&netns));
}
