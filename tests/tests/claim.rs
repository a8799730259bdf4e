//! Claiming a fresh camgate with its setup code (`POST /api/setup/claim`):
//! only from a network camgate is on, wrong codes limited, an expired code
//! replaced, bad input refused with a reason, and then setup mode is over
//! for good. Real camgate in a namespace; requests by curl from chosen
//! source addresses.

use std::process::Command;

use camgate_tests::camgate::{Camgate, Launch};
use camgate_tests::http::{get_ok, request};
use camgate_tests::netns::Netns;

const URL: &str = "http://127.0.0.1:8080/api/setup/claim";

struct Answer {
    status: u16,
    headers: String,
    body: serde_json::Value,
}

/// POSTs `body` from source address `from` (curl --interface).
fn claim(netns: &Netns, from: &str, body: &str) -> Answer {
    let output = netns
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--interface",
            from,
            "-D",
            "-",
            "-X",
            "POST",
        ])
        .args(["-H", "content-type: application/json", "--data-binary", body, URL])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap();
    let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    Answer {
        status,
        headers: headers.to_owned(),
        body,
    }
}

fn json(code: &str, user: &str, password: &str) -> String {
    serde_json::json!({ "code": code, "user": user, "password": password }).to_string()
}

fn error(answer: &Answer) -> &str {
    answer.body["error"].as_str().unwrap_or_default()
}

#[test]
fn the_setup_code_claims_camgate_once_and_only_from_its_network() {
    let netns = Netns::new("claim");
    // 192.168.50.1 is on one of camgate's networks (a LAN client's view);
    // 10.9.9.9 is on none (only on lo): like a client a router forwarded.
    netns.ip(&[
        "link", "add", "name", "lan0", "type", "veth", "peer", "name", "lan1",
    ]);
    netns.ip(&["addr", "add", "192.168.50.1/24", "dev", "lan0"]);
    netns.ip(&["link", "set", "lan0", "up"]);
    netns.ip(&["link", "set", "lan1", "up"]);
    netns.ip(&["addr", "add", "10.9.9.9/32", "dev", "lo"]);
    let camgate = Camgate::start(Launch {
        netns: Some(&netns),
        config: None,
        env: Vec::new(),
    });
    let dir = camgate.dir.path();
    let code_path = dir.join("var/lib/setup-code");
    let config_path = dir.join("var/camgate.toml");
    let code = std::fs::read_to_string(&code_path).unwrap().trim().to_owned();
    let password = "correct horse battery";

    let routed = claim(&netns, "10.9.9.9", &json(&code, "ann", password));
    assert_eq!(routed.status, 403, "{}", routed.body);
    assert!(
        error(&routed).contains("accepted only from the network camgate is on"),
        "{}",
        routed.body
    );

    for _ in 0..5 {
        let wrong = claim(&netns, "192.168.50.1", &json("ABCDE-FGHJK", "ann", password));
        assert_eq!(wrong.status, 403, "{}", wrong.body);
        assert!(error(&wrong).contains("wrong setup code"), "{}", wrong.body);
    }
    // This client has had its tries: even the right code waits now.
    let limited = claim(&netns, "192.168.50.1", &json(&code, "ann", password));
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(
        limited.headers.to_ascii_lowercase().contains("retry-after: "),
        "{}",
        limited.headers
    );

    // Bad input: refused with a reason, nothing written (from the machine itself).
    for (body, status, reason) in [
        ("{\"code\": 1}".to_owned(), 422, "code"),
        ("not json".to_owned(), 400, "JSON"),
        (json(&code, "ann", "short"), 422, "at least 10 characters"),
        (
            json(&code, "Ann Smith", password),
            422,
            "user name: user names use a-z",
        ),
    ] {
        let answer = claim(&netns, "127.0.0.1", &body);
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        assert!(error(&answer).contains(reason), "{body}: {}", answer.body);
        assert!(!config_path.exists(), "{body} wrote a config");
    }

    // A day-old code no longer works; a new one takes its place.
    let aged = Command::new("touch")
        .args(["-d", "25 hours ago"])
        .arg(&code_path)
        .status()
        .unwrap();
    assert!(aged.success());
    let expired = claim(&netns, "127.0.0.1", &json(&code, "ann", password));
    assert_eq!(expired.status, 403, "{}", expired.body);
    assert!(error(&expired).contains("expired"), "{}", expired.body);
    let fresh = std::fs::read_to_string(&code_path).unwrap().trim().to_owned();
    assert_ne!(fresh, code);
    assert!(
        camgate
            .stderr()
            .contains(&format!("the new setup code is: {fresh}")),
        "{}",
        camgate.stderr()
    );

    // Typed as people do: lower case, a space for the dash.
    let typed = fresh.replace('-', " ").to_ascii_lowercase();
    let claimed = claim(&netns, "127.0.0.1", &json(&typed, "ann", password));
    assert_eq!(claimed.status, 201, "{}", claimed.body);
    assert_eq!(claimed.body["user"], "ann");
    assert_eq!(claimed.body["generation"], 2);

    let status = get_ok(&netns, "http://127.0.0.1:8080/api/status").json();
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
        &netns,
        "GET",
        "http://127.0.0.1:8080/api/bans",
        &[("authorization", &basic("ann", password))],
    )
    .unwrap();
    assert_eq!(bans.status, 200, "{}", bans.body);
    let wrong = request(
        &netns,
        "GET",
        "http://127.0.0.1:8080/api/bans",
        &[("authorization", &basic("ann", "not the password"))],
    )
    .unwrap();
    assert_eq!(wrong.status, 401, "{}", wrong.body);

    // Setup is over for good: the code (even the right one) claims nothing.
    let again = claim(&netns, "127.0.0.1", &json(&fresh, "eve", password));
    assert_eq!(again.status, 410, "{}", again.body);
    assert!(!std::fs::read_to_string(&config_path).unwrap().contains("eve"));
    let log = camgate.stderr();
    assert!(log.contains("camgate claimed: setup mode is over"), "{log}");
    assert!(log.contains("wrong or expired setup code"), "{log}");
}
