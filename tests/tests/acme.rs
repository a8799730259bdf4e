//! Certificates from a real ACME CA: Debian's Pebble in the WAN namespace,
//! validating for real (no sleeps, no authorization reuse) against camgate
//! in `gw`, which answers HTTP-01 and TLS-ALPN-01 itself. A client that
//! trusts only Pebble's root (fetched per run) checks what camgate serves.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use camgate_tests::lab::{DVR, GW_WAN, Lab, WAN, wan_https};
use camgate_tests::pebble::{Pebble, PebbleSettings};
use camgate_tests::process::wait_until;
use camgate_tests::tls::{TlsClient, TlsStream};
use serde_json::Value;

const HOST: &str = "agentdvr.test";

fn settings(
    http_port: u16,
    validity: Option<u64>,
    nonce_reject: Option<u32>,
    names: &[&str],
) -> PebbleSettings {
    PebbleSettings {
        http_port,
        tls_port: 443,
        validity,
        nonce_reject,
        names: names
            .iter()
            .map(|n| ((*n).to_owned(), GW_WAN.to_owned()))
            .collect(),
    }
}

fn acme_config(pebble: &Pebble, email: &str, challenge: &str, hosts: &[&str]) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "[acme]\nemail = \"{email}\"\ndirectory = \"{}\"\ndirectory_ca = \"{}\"\naccept_terms = true\n\
         challenge = \"{challenge}\"\nhosts = [{}]\n",
        pebble.directory(),
        pebble.listener_ca().display(),
        hosts.join(", ")
    )
}

/// camgate with Pebble (started first) and `[acme]` from `config`.
fn start(tag: &str, pebble: PebbleSettings, config: impl FnOnce(&Pebble) -> String) -> (Lab, Pebble) {
    Lab::start_after(tag, &[], |net| {
        let pebble = Pebble::start(net.ns("wan"), WAN, pebble);
        let extra = config(&pebble);
        (pebble, extra)
    })
}

fn host_status(lab: &Lab, host: &str) -> Value {
    let status = lab.status();
    status["certificates"]["acme"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .cloned()
        .unwrap_or_else(|| panic!("no ACME status for {host}: {status}"))
}

fn wait_for(lab: &Lab, host: &str, what: &str, deadline: Duration, done: impl Fn(&Value) -> bool) -> Value {
    wait_until(what, deadline, || {
        let status = host_status(lab, host);
        done(&status).then_some(status)
    })
}

fn served(stream: &TlsStream) -> String {
    camgate::tls::sha256_hex(&stream.conn.peer_certificates().unwrap()[0])
}

/// A request on an open connection; the response head and as much body as
/// the first read brings.
fn request_on(lab: &Lab, stream: &mut TlsStream, target: &str) -> String {
    lab.net.ns("wan").run(|| {
        let request = format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut buffer = [0u8; 8192];
        let n = stream.read(&mut buffer).unwrap();
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    })
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn http01_issues_renews_and_swaps_without_dropping_connections() {
    let (mut lab, pebble) = start("acme-http", settings(80, Some(40), Some(0), &[HOST]), |pebble| {
        acme_config(pebble, "ops@example.org", "http-01", &[HOST])
    });
    let wan = lab.net.ns("wan");
    let issued = wait_for(&lab, HOST, "a certificate", Duration::from_secs(30), |s| {
        s["state"] == "valid"
    });
    assert_eq!(issued["challenge"], "http-01");
    assert_eq!(issued["failures"], 0);
    assert!(issued["issuer"].as_str().unwrap().contains("Pebble"), "{issued}");
    assert!(
        issued["next_renewal"].is_string() && issued["not_after"].is_string(),
        "{issued}"
    );

    // A client trusting only Pebble's root verifies the chain and the name.
    let root = pebble.root(wan);
    let client = TlsClient::trusting(&[&root], &[b"http/1.1"]);
    let mut kept = wan
        .run(|| client.connect(wan_https(), HOST))
        .expect("verified by Pebble's root");
    assert_eq!(served(&kept), issued["sha256"].as_str().unwrap());
    let first = request_on(&lab, &mut kept, "/");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        first.contains("strict-transport-security: max-age=31536000"),
        "HSTS with a trusted certificate: {first}"
    );

    // camgate answered the three validation requests on port 80 itself.
    let log = lab.camgate.stderr();
    let answered = log
        .lines()
        .filter(|l| {
            l.contains("/.well-known/acme-challenge/") && l.contains("acme-challenge") && l.contains(WAN)
        })
        .count();
    assert!(
        answered >= 1,
        "no validation request in camgate's access log:\n{log}"
    );
    // Unknown tokens are 404 on port 80, not a redirect.
    let unknown =
        camgate_tests::http::get(wan, &format!("http://{GW_WAN}/.well-known/acme-challenge/nope")).unwrap();
    assert_eq!(unknown.status, 404);

    // State: the bundle and the account are private files.
    let state = lab.camgate.dir.path().join("state/acme");
    assert_eq!(mode(&state.join(format!("certs/{HOST}.pem"))), 0o600);
    let account_file = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("account-"))
        .expect("the account file");
    assert_eq!(mode(&account_file), 0o600);
    let account: Value = serde_json::from_slice(&std::fs::read(&account_file).unwrap()).unwrap();
    assert_eq!(account["contact"][0], "mailto:ops@example.org");

    // A new contact: the same account is updated at the next use.
    let config = std::fs::read_to_string(&lab.camgate.config_path)
        .unwrap()
        .replace("ops@example.org", "new@example.org");
    lab.camgate.write_config(&config);
    lab.camgate.reload();

    // Renewal at about ⅔ of 40 s, while the connection stays in use (idle
    // keep-alive connections close after 20 s)...
    let renewed = wait_until("the renewal", Duration::from_secs(60), || {
        let answer = request_on(&lab, &mut kept, "/");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        std::thread::sleep(Duration::from_millis(500));
        let status = host_status(&lab, HOST);
        (status["state"] == "valid" && status["sha256"] != issued["sha256"]).then_some(status)
    });
    let fresh = wan.run(|| client.connect(wan_https(), HOST)).unwrap();
    assert_eq!(served(&fresh), renewed["sha256"].as_str().unwrap());
    // ...while the open connection carries on.
    let again = request_on(&lab, &mut kept, "/");
    assert!(
        again.starts_with("HTTP/1.1 200"),
        "the kept connection survived the swap: {again}"
    );

    let after: Value = serde_json::from_slice(&std::fs::read(&account_file).unwrap()).unwrap();
    assert_eq!(
        after["credentials"]["id"], account["credentials"]["id"],
        "the account is reused"
    );
    assert_eq!(after["contact"][0], "mailto:new@example.org");
    assert!(
        lab.camgate
            .stderr()
            .contains("updated the ACME account's contact"),
        "{}",
        lab.camgate.stderr()
    );

    // A restart serves the stored certificate at once.
    lab.camgate.restart(Some(lab.net.ns("gw")));
    wait_for(
        &lab,
        HOST,
        "the stored certificate",
        Duration::from_secs(10),
        |s| s["state"] == "valid" && s["sha256"] == renewed["sha256"],
    );
    assert!(
        lab.camgate.stderr().contains("serving the stored certificate"),
        "{}",
        lab.camgate.stderr()
    );
}

#[test]
fn tls_alpn01_takes_over_when_port_80_is_unreachable() {
    // Pebble validates HTTP-01 on a port nothing listens on.
    let (lab, pebble) = start("acme-alpn", settings(5002, None, Some(0), &[HOST]), |pebble| {
        acme_config(pebble, "ops@example.org", "auto", &[HOST])
    });
    let wan = lab.net.ns("wan");
    let issued = wait_for(&lab, HOST, "a certificate", Duration::from_secs(30), |s| {
        s["state"] == "valid"
    });
    assert_eq!(issued["challenge"], "tls-alpn-01", "{issued}");
    let log = lab.camgate.stderr();
    assert!(
        log.contains("port 80 not reachable from the internet: check the router forwards TCP 80 to camgate"),
        "the HTTP-01 failure is explained:\n{log}"
    );

    let root = pebble.root(wan);
    let verified =
        wan.run(|| TlsClient::trusting(&[&root], &[b"h2", b"acme-tls/1"]).connect(wan_https(), HOST));
    let verified = verified.expect("a browser-like client gets the issued certificate");
    assert_eq!(served(&verified), issued["sha256"].as_str().unwrap());
    assert_eq!(verified.conn.alpn_protocol(), Some(&b"h2"[..]));

    // Only a lone `acme-tls/1` is a validation, and with none pending there
    // is no certificate at all for it.
    let lone = wan.run(|| TlsClient::trusting(&[&root], &[b"acme-tls/1"]).connect(wan_https(), HOST));
    assert!(lone.is_err(), "no challenge certificate outside a validation");
}

#[test]
fn twenty_issuances_in_a_row_with_pebbles_nonce_rejection() {
    let hosts: Vec<String> = (1..=20).map(|i| format!("h{i}.test")).collect();
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let site = format!(
        "[[site]]\nname = \"many\"\nhosts = [{}]\nupstream = \"{DVR}\"\n",
        names
            .iter()
            .map(|h| format!("\"{h}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Pebble's default: 5 % of good nonces are refused as badNonce.
    let (lab, pebble) = start("acme-many", settings(80, None, None, &names), |pebble| {
        format!(
            "{site}{}",
            acme_config(pebble, "ops@example.org", "http-01", &names)
        )
    });
    let status = wait_until("20 certificates", Duration::from_secs(120), || {
        let status = lab.status();
        let hosts = status["certificates"]["acme"].as_array().unwrap().clone();
        (hosts.len() == 20 && hosts.iter().all(|h| h["state"] == "valid")).then_some(hosts)
    });
    for host in &status {
        assert_eq!(host["failures"], 0, "every issuance succeeded first time: {host}");
        assert_eq!(host["last_error"], Value::Null);
    }
    assert!(
        pebble.log().contains("Configured to reject 5% of good nonces"),
        "{}",
        pebble.log()
    );
    // About 8 of some 160 requests are refused; none refused has p < 0.001.
    let refusals = lab.camgate.stderr().matches("(badNonce); retrying").count();
    assert!(refusals >= 1, "no badNonce seen:\n{}", lab.camgate.stderr());
    eprintln!("{refusals} badNonce refusals retried");
    let root = pebble.root(lab.net.ns("wan"));
    let client = TlsClient::trusting(&[&root], &[b"http/1.1"]);
    for host in &names {
        lab.net
            .ns("wan")
            .run(|| client.connect(wan_https(), host))
            .unwrap();
    }
}

#[test]
fn a_ca_outage_keeps_the_certificate_then_falls_back_loudly_and_recovers() {
    let (mut lab, mut pebble) = start("acme-down", settings(80, Some(45), Some(0), &[HOST]), |pebble| {
        acme_config(pebble, "ops@example.org", "http-01", &[HOST])
    });
    let wan = lab.net.ns("wan");
    let issued = wait_for(&lab, HOST, "a certificate", Duration::from_secs(30), |s| {
        s["state"] == "valid"
    });
    let root = pebble.root(wan);
    let client = TlsClient::trusting(&[&root], &[b"http/1.1"]);

    pebble.stop();
    // The renewal (about 30 s in) fails; the current certificate keeps serving.
    let retrying = wait_for(&lab, HOST, "a failed renewal", Duration::from_secs(60), |s| {
        s["state"] == "retrying" && s["failures"].as_u64() >= Some(2)
    });
    let error = retrying["last_error"].as_str().unwrap();
    eprintln!("CA down: {error}");
    assert!(error.contains("cannot talk to the CA"), "{error}");
    assert!(
        retrying["detail"]
            .as_str()
            .unwrap()
            .starts_with("serving the certificate from Pebble"),
        "{retrying}"
    );
    let still = wan.run(|| client.connect(wan_https(), HOST)).unwrap();
    assert_eq!(served(&still), issued["sha256"].as_str().unwrap());

    // At expiry it is withdrawn: the self-signed certificate, said loudly.
    let expired = wait_for(&lab, HOST, "the expiry", Duration::from_secs(60), |s| {
        s["state"] == "expired"
    });
    assert!(
        expired["detail"].as_str().unwrap().starts_with("EXPIRED at "),
        "{expired}"
    );
    assert!(
        lab.camgate
            .stderr()
            .contains("the certificate EXPIRED and could not be renewed")
    );
    let fallback = TlsClient::trusting(&[&lab.camgate.self_signed_certificate()], &[b"http/1.1"]);
    let mut self_signed = wan
        .run(|| fallback.connect(wan_https(), HOST))
        .expect("the self-signed certificate");
    let answer = request_on(&lab, &mut self_signed, "/");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("strict-transport-security"),
        "no HSTS with the self-signed certificate: {answer}"
    );

    // The CA is back, without the account (Pebble forgets everything); a
    // changed [acme] retries at once, and a new account is made.
    pebble.restart(wan);
    let config = std::fs::read_to_string(&lab.camgate.config_path)
        .unwrap()
        .replace("ops@example.org", "second@example.org");
    lab.camgate.write_config(&config);
    lab.camgate.reload();
    let back = wait_for(&lab, HOST, "a new certificate", Duration::from_secs(30), |s| {
        s["state"] == "valid"
    });
    assert_eq!(back["failures"], 0);
    let root = pebble.root(wan);
    let verified = wan.run(|| TlsClient::trusting(&[&root], &[b"http/1.1"]).connect(wan_https(), HOST));
    assert_eq!(served(&verified.unwrap()), back["sha256"].as_str().unwrap());
    assert!(
        lab.camgate.stderr().contains("created an ACME account"),
        "{}",
        lab.camgate.stderr()
    );
}
