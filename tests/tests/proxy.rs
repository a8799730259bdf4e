//! The reverse proxy end to end. camgate runs in `gw` between a WAN
//! namespace and a LAN namespace; `fake-dvr` (an Agent-DVR-like upstream
//! that records every request it receives) runs on the LAN. Assertions are
//! made on what the upstream received, not only on status codes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use camgate_tests::lab::{DVR, GW_WAN, LAN, Lab, PROFILES, WAN, basic, credentials_config, wan_https};
use camgate_tests::process::require_binary;
use camgate_tests::tls::{RawResponse, TlsClient, get_request, get_request_with, read_to_close};
use tungstenite::Message;

/// Protected paths per profile: each must be refused from the WAN.
fn protected_paths(profile: &str) -> [&'static str; 2] {
    match profile {
        // Not video.mjpg: from the LAN the fake DVR would stream it forever.
        "agentdvr" => ["/grab.jpg", "/cam/video.mp4"],
        "blueiris" => ["/image/cam1", "/json"],
        "frigate" => ["/api/config/save", "/vod/cam/index.m3u8"],
        "generic" => ["/index.html", "/api/x"],
        "go2rtc" => ["/api/streams", "/stream.html"],
        "moonfire" => ["/api/cameras/c1/main/live.m4s", "/api/x"],
        "motion" => ["/0/stream", "/0/action/snapshot"],
        "motioneye" => ["/config/main/set", "/picture/1/current"],
        "shinobi" => ["/super", "/key/mjpeg/group/cam"],
        "zoneminder" => ["/zm/api/states/change/restart", "/zm/cgi-bin/nph-zms"],
        other => panic!("no protected paths for {other}"),
    }
}

/// Crafted spellings of `base`: encodings, dot segments, slashes, case,
/// backslashes, `;`, NUL, overlong UTF-8, absolute-form and more.
fn variants(base: &str, host: &str) -> Vec<String> {
    let (dir, last) = base.rsplit_once('/').unwrap();
    let first_segment_end = base[1..].find('/').map_or(base.len(), |i| i + 1);
    let (head, tail) = base.split_at(first_segment_end);
    let encoded_last: String = last.bytes().map(|b| format!("%{b:02X}")).collect();
    let encoded_last_lower: String = last.bytes().map(|b| format!("%{b:02x}")).collect();
    let mut flipped_case = String::new();
    for (i, c) in base.chars().enumerate() {
        flipped_case.push(if i % 2 == 0 { c.to_ascii_uppercase() } else { c });
    }
    let double_encoded = match last.char_indices().last() {
        Some((i, c)) => format!("{dir}/{}%25{:02X}", &last[..i], c as u32),
        None => format!("{base}%252F"),
    };
    vec![
        base.to_owned(),
        base.to_uppercase(),
        flipped_case,
        format!("/x/..{base}"),
        format!("/.{base}"),
        format!("/{base}"),
        base.replace('/', "//"),
        format!("/x/%2e%2e{base}"),
        format!("/x/%2E%2E{base}"),
        format!("/x/.%2e{base}"),
        format!("/%2e{base}"),
        format!("/%2e%2e{base}"),
        format!("{head}/x/..{tail}"),
        format!("{head}/./{}", tail.trim_start_matches('/')),
        format!("{dir}%2f{last}"),
        format!("{dir}%2F{last}"),
        base.replace('/', "\\"),
        format!("{dir}\\{last}"),
        format!("{dir}%5c{last}"),
        format!("{base};x=1"),
        format!("{head};jsessionid=1{tail}"),
        format!("/..;{base}"),
        format!("{base}%00"),
        format!("{base}%00.html"),
        format!("/%c0%af{}", &base[1..]),
        format!("/x/%c0%ae%c0%ae{base}"),
        format!("{base}."),
        format!("{base}%20"),
        format!("{base}/"),
        format!("{base}/."),
        format!("{base}?.html"),
        format!("{base}%3f.html"),
        format!("{base}%23.html"),
        format!("{base}#.html"),
        format!("{dir}/{encoded_last}"),
        format!("{dir}/{encoded_last_lower}"),
        double_encoded,
        format!("http://{host}{base}"),
        format!("HTTP://{}{base}", host.to_uppercase()),
        format!("https://{host}:443{base}"),
        format!("http://evil.test{base}"),
        format!("{dir}%ef%bc%8f{last}"),
        format!("{base}%09"),
        format!("{base}%e2%80%8b"),
        format!("/{}{}{}", "a/".repeat(64), "../".repeat(64), &base[1..]),
        format!("{base}/..%2f"),
        "*".to_owned(),
    ]
}

/// What a request's outcome was, on the wire and at the upstream.
#[derive(Debug)]
struct Observed {
    status: u16,
    from_upstream: bool,
    received: Vec<String>,
}

/// Asserts the proxy did what `camgate explain` says for `target`.
fn assert_agrees(lab: &Lab, site: &str, target: &str, observed: &Observed, how: &str) {
    let explanation = lab.explain(site, WAN, &format!("GET {target}"));
    let context = format!("{how} {site} GET {target:?}: observed {observed:?}, explain {explanation}");
    match explanation["status"].as_u64() {
        Some(status) => {
            assert_eq!(u64::from(observed.status), status, "{context}");
            assert!(
                !observed.from_upstream && observed.received.is_empty(),
                "{context}"
            );
        }
        None => {
            let forwarded = explanation["forwarded_target"].as_str().unwrap();
            assert!(observed.from_upstream, "{context}");
            assert_eq!(observed.received, [forwarded], "{context}");
        }
    }
}

#[test]
fn bypass_table_from_the_wan_matches_explain_and_never_reaches_a_protected_path() {
    let lab = Lab::start("bypass", "");
    let curl = require_binary("curl", "curl");
    let mut total = 0;
    let started = Instant::now();
    for profile in PROFILES {
        eprintln!(
            "{profile}: starting after {:?}, {total} requests so far",
            started.elapsed()
        );
        let host = format!("{profile}.test");
        for (b, base) in protected_paths(profile).into_iter().enumerate() {
            let wan = lab.explain(profile, WAN, &format!("GET {base}"));
            assert_ne!(
                wan["decision"], "allow",
                "{profile} {base} must be protected: {wan}"
            );
            // The same path from the LAN reaches the DVR: the table can fail.
            let id = format!("{profile}-{b}-lan");
            let lan = lab.get("lan", &host, base, &id);
            assert_eq!(
                lab.dvr.received_with_id(&id).len(),
                1,
                "{profile} {base} from the LAN: {}",
                lan.text()
            );

            let targets = variants(base, &host);
            for (i, target) in targets.iter().enumerate() {
                let id = format!("{profile}-{b}-{i}");
                let response = lab.get("wan", &host, target, &id);
                let observed = Observed {
                    status: response.status(),
                    from_upstream: response.header("server").as_deref() == Some("fake-dvr"),
                    received: lab
                        .dvr
                        .received_with_id(&id)
                        .into_iter()
                        .map(|r| r.target)
                        .collect(),
                };
                assert_agrees(&lab, profile, target, &observed, "HTTP/1.1");
                total += 1;
            }
            // HTTP/2 `:path` oddities, through curl.
            for (i, target) in targets.iter().enumerate().take(16) {
                if target.contains('#') || target.contains('\\') || target == "*" {
                    continue; // curl rewrites these itself
                }
                let id = format!("{profile}-{b}-h2-{i}");
                let output = lab
                    .net
                    .ns("wan")
                    .command(&curl)
                    .args([
                        "--http2",
                        "-k",
                        "-s",
                        "-D",
                        "-",
                        "-o",
                        "/dev/null",
                        "--max-time",
                        "10",
                    ])
                    .args(["--resolve", &format!("{host}:443:{GW_WAN}")])
                    .args(["-H", &format!("X-Test-Id: {id}"), "--request-target", target])
                    .arg(format!("https://{host}/"))
                    .output()
                    .unwrap();
                let head = String::from_utf8_lossy(&output.stdout).to_lowercase();
                let received = lab.dvr.received_with_id(&id);
                if head.is_empty() {
                    // The HTTP/2 layer reset a malformed `:path` itself:
                    // curl reports an HTTP/2 (16) or stream (92) error, not a
                    // refused connection or a TLS failure.
                    assert!(
                        matches!(output.status.code(), Some(16 | 92)),
                        "{target}: curl failed otherwise: {:?}",
                        output.status
                    );
                    let verdict = lab.explain(profile, WAN, &format!("GET {target}"));
                    assert_eq!(
                        verdict["decision"], "reject",
                        "{target}: no response, but explain: {verdict}"
                    );
                    assert!(received.is_empty(), "{target}: {received:?}");
                    continue;
                }
                assert!(head.starts_with("http/2 "), "{target}: not HTTP/2: {head}");
                let observed = Observed {
                    status: head[7..10].parse().unwrap(),
                    from_upstream: head.contains("server: fake-dvr"),
                    received: received.into_iter().map(|r| r.target).collect(),
                };
                assert_agrees(&lab, profile, target, &observed, "HTTP/2");
                total += 1;
            }
        }
    }
    // Whatever reached the DVR from the WAN is something the WAN may see.
    for received in lab.dvr.received() {
        let id = received.header("x-test-id").unwrap_or_default().to_owned();
        if id.ends_with("-lan") {
            continue;
        }
        let site = id.split('-').next().unwrap();
        let verdict = lab.explain(site, WAN, &format!("GET {}", received.target));
        assert_eq!(
            verdict["decision"], "allow",
            "{id} reached the DVR as {}: {verdict}",
            received.target
        );
    }
    eprintln!("{total} requests checked against explain");
}

#[test]
fn host_and_sni_must_agree_and_unknown_hosts_reach_nothing() {
    let lab = Lab::start(
        "sni",
        "[[site]]\nname = \"byip\"\nhosts = [\"203.0.113.1\"]\nupstream = \"http://192.168.50.2:8090\"\n[[site.rule]]\nprefix = \"/\"\naction = \"allow\"\n",
    );
    let mismatch = lab.raw(
        "wan",
        "agentdvr.test",
        &get_request("/index.html", "motion.test", "m1"),
    );
    assert_eq!(mismatch.status(), 421, "{}", mismatch.text());
    // No SNI (an IP) but a name in Host.
    let no_sni = lab.raw("wan", GW_WAN, &get_request("/index.html", "agentdvr.test", "m2"));
    assert_eq!(no_sni.status(), 421, "{}", no_sni.text());
    // An IP site without SNI is fine.
    let by_ip = lab.raw("wan", GW_WAN, &get_request("/index.html", GW_WAN, "m3"));
    assert_eq!(by_ip.status(), 200, "{}", by_ip.text());
    // Absolute-form naming another site than Host.
    let absolute = lab.raw(
        "wan",
        "agentdvr.test",
        &get_request("http://motion.test/0/stream", "agentdvr.test", "m4"),
    );
    assert_eq!(absolute.status(), 400, "{}", absolute.text());
    // Unknown name (the client has to accept camgate's fallback certificate).
    let curl = require_binary("curl", "curl");
    let output = lab
        .net
        .ns("wan")
        .command(&curl)
        .args([
            "-k",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "X-Test-Id: m5",
        ])
        .args([
            "--resolve",
            &format!("nosuch.test:443:{GW_WAN}"),
            "https://nosuch.test/index.html",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "404");
    assert_eq!(lab.dvr.received_ids(), [Some("m3".to_owned())]);
}

#[test]
fn http_listener_redirects_known_hosts_to_https() {
    let lab = Lab::start("redir", "");
    let exchange = |request: &str| {
        lab.net.ns("wan").run(|| {
            let mut stream = TcpStream::connect((GW_WAN, 80)).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            RawResponse {
                bytes: read_to_close(&mut stream),
            }
        })
    };
    let get = exchange("GET /x/y?z=1 HTTP/1.1\r\nHost: AgentDVR.test\r\nConnection: close\r\n\r\n");
    assert_eq!(get.status(), 301, "{}", get.text());
    assert_eq!(
        get.header("location").as_deref(),
        Some("https://agentdvr.test/x/y?z=1")
    );
    let post =
        exchange("POST /x HTTP/1.1\r\nHost: motion.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(post.status(), 308);
    let unknown = exchange("GET / HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n");
    assert_eq!(unknown.status(), 404);
    assert!(lab.dvr.received().is_empty());
}

#[test]
fn smuggling_attempts_never_reach_a_protected_path() {
    let lab = Lab::start("smuggle", "");
    let host = "agentdvr.test";
    let smuggled = format!("GET /grab.jpg HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let cases: Vec<(&str, String, Option<u16>)> = vec![
        (
            "CL.TE",
            format!(
                "POST /index.html HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
                5 + smuggled.len()
            ),
            None,
        ),
        (
            "TE.CL",
            format!(
                "POST /index.html HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
            None,
        ),
        (
            "TE gzip,chunked",
            format!(
                "POST /index.html HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some(400),
        ),
        (
            "TE twice",
            format!(
                "POST /index.html HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some(400),
        ),
        (
            "TE xchunked",
            format!(
                "POST /index.html HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some(400),
        ),
        (
            "TE space before colon",
            format!(
                "POST /index.html HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some(400),
        ),
        (
            "TE folded",
            format!(
                "POST /index.html HTTP/1.1\r\nHost: {host}\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some(400),
        ),
        (
            "CL conflict",
            format!(
                "POST /index.html HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            Some(400),
        ),
        (
            "CL plus sign",
            format!("POST /index.html HTTP/1.1\r\nHost: {host}\r\nContent-Length: +0\r\n\r\n{smuggled}"),
            Some(400),
        ),
        (
            "CL empty",
            format!("POST /index.html HTTP/1.1\r\nHost: {host}\r\nContent-Length: \r\n\r\n{smuggled}"),
            Some(400),
        ),
        (
            "empty header name",
            format!("GET /index.html HTTP/1.1\r\nHost: {host}\r\n: x\r\n\r\n{smuggled}"),
            Some(400),
        ),
        (
            "HTTP/1.0 with TE",
            format!(
                "POST /index.html HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some(400),
        ),
        (
            "chunk size overflow",
            format!(
                "POST /index.html HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\n{smuggled}\r\n0\r\n\r\n"
            ),
            None,
        ),
        (
            "LF in chunk extension",
            format!(
                "POST /index.html HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0;x\n{smuggled}\r\n0\r\n\r\n"
            ),
            None,
        ),
        (
            "two Hosts",
            format!("GET /index.html HTTP/1.1\r\nHost: {host}\r\nHost: motion.test\r\n\r\n"),
            Some(400),
        ),
        (
            "bare LF lines",
            format!("GET /grab.jpg HTTP/1.1\nHost: {host}\n\n"),
            Some(401),
        ),
        (
            "pipelined",
            format!(
                "GET /index.html HTTP/1.1\r\nHost: {host}\r\n\r\n{smuggled}GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            ),
            Some(200),
        ),
    ];
    for (name, request, first_status) in &cases {
        let response = lab.raw("wan", host, request.as_bytes());
        if let Some(status) = first_status {
            assert_eq!(response.status(), *status, "{name}: {}", response.text());
        }
        let statuses = response.statuses();
        if *name == "pipelined" {
            assert_eq!(
                statuses,
                [200, 401, 404],
                "{name}: each pipelined request is judged on its own"
            );
        }
        let leaked: Vec<_> = lab
            .dvr
            .received()
            .into_iter()
            .filter(|r| r.target.to_ascii_lowercase().contains("grab.jpg"))
            .collect();
        assert!(
            leaked.is_empty(),
            "{name}: smuggled request reached the DVR: {leaked:?}"
        );
    }
}

#[test]
fn forwarding_headers_redirects_lenient_parsing_and_bodies() {
    let strict = "[[site]]\nname = \"strict\"\nhosts = [\"strict.test\"]\nupstream = \"http://192.168.50.2:8090\"\n\
                  lenient_headers = false\n[[site.rule]]\nprefix = \"/\"\naction = \"allow\"\n\
                  [[site]]\nname = \"down\"\nhosts = [\"down.test\"]\nupstream = \"http://192.168.50.2:9\"\n\
                  [[site.rule]]\nprefix = \"/\"\naction = \"allow\"\n";
    let lab = Lab::start("fwd", strict);
    let host = "agentdvr.test";

    // Client claims are replaced; `Connection` cannot remove camgate's headers.
    let spoof = format!(
        "GET /index.html HTTP/1.1\r\nHost: {host}\r\nX-Test-Id: spoof\r\nX-Forwarded-For: 192.168.50.9\r\nX-Real-IP: 10.0.0.1\r\n\
         Forwarded: for=10.0.0.1\r\nConnection: close, X-Forwarded-For, X-Private\r\nX-Private: secret\r\nKeep-Alive: 5\r\n\r\n"
    );
    assert_eq!(lab.raw("wan", host, spoof.as_bytes()).status(), 200);
    let received = &lab.dvr.received_with_id("spoof")[0];
    assert_eq!(received.header("x-forwarded-for"), Some(WAN));
    assert_eq!(received.header("x-real-ip"), Some(WAN));
    assert_eq!(received.header("x-forwarded-proto"), Some("https"));
    assert_eq!(received.header("x-forwarded-host"), Some(host));
    assert_eq!(received.header("x-forwarded-port"), Some("443"));
    assert_eq!(
        received.header("forwarded"),
        Some("for=203.0.113.2;proto=https;host=\"agentdvr.test\"")
    );
    assert_eq!(received.header("host"), Some(host));
    for gone in ["x-private", "keep-alive", "connection"] {
        assert_eq!(received.header(gone), None, "{gone} was forwarded");
    }
    // A forged X-Forwarded-For does not make the WAN the LAN.
    let forged = format!(
        "GET /grab.jpg HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: {LAN}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(lab.raw("wan", host, forged.as_bytes()).status(), 401);

    // ProxyPassReverse: the DVR's own address becomes the public name.
    let redirect = lab.get("wan", host, "/redirect", "r");
    assert_eq!(redirect.status(), 302);
    assert_eq!(
        redirect.header("location").as_deref(),
        Some("https://agentdvr.test/login?next=%2F")
    );
    assert_eq!(
        redirect.header("content-location").as_deref(),
        Some("https://agentdvr.test/redirect")
    );
    assert_eq!(
        redirect.header("refresh").as_deref(),
        Some("0; url=https://agentdvr.test/gui.html")
    );
    assert_eq!(
        redirect.header("strict-transport-security"),
        None,
        "not with the self-signed certificate"
    );

    // ProxyBadHeader Ignore: Agent DVR's profile drops broken header lines.
    let lenient = lab.get("wan", host, "/malformed", "l1");
    assert_eq!(
        (lenient.status(), lenient.body().as_str()),
        (200, "malformed"),
        "{}",
        lenient.text()
    );
    assert_eq!(lenient.header("x-good").as_deref(), Some("yes"));
    assert_eq!(lab.get("wan", "strict.test", "/malformed", "l2").status(), 502);
    // NUL is never accepted.
    assert_eq!(lab.get("wan", host, "/malformed-nul", "l3").status(), 502);

    // The DVR is down: a branded page for browsers, JSON for the API.
    let html = lab.raw(
        "wan",
        "down.test",
        b"GET / HTTP/1.1\r\nHost: down.test\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(html.status(), 502);
    assert!(html.body().contains("not answering"), "{}", html.text());
    let json = lab.get("wan", "down.test", "/api/x", "d");
    assert_eq!(json.status(), 502);
    let body: serde_json::Value = serde_json::from_str(&json.body()).unwrap();
    assert_eq!(body["error"], "upstream_unreachable");

    // Request bodies are streamed through (chunked, 1 MiB) intact.
    let payload: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut upload = format!(
        "POST /upload HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in payload.chunks(100_000) {
        upload.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        upload.extend_from_slice(chunk);
        upload.extend_from_slice(b"\r\n");
    }
    upload.extend_from_slice(b"0\r\n\r\n");
    let uploaded = lab.raw("lan", host, &upload);
    let digest = ring::digest::digest(&ring::digest::SHA256, &payload);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(uploaded.body(), format!("received 1048576 bytes sha256 {hex}"));

    // The access log scrubs credentials from queries.
    lab.get("lan", host, "/grab.jpg?oids=1&token=s3cret&password=hunter2", "q");
    let log = lab.camgate.stderr();
    assert!(
        !log.contains("s3cret") && !log.contains("hunter2"),
        "secrets in the log"
    );
    assert!(log.contains("token=REDACTED"), "{log}");
}

#[test]
fn websocket_echo_passes_only_where_rules_allow() {
    let lab = Lab::start("ws", "");
    let echoed = lab.net.ns("wan").run(|| {
        let stream = lab.client.connect(wan_https(), "agentdvr.test").unwrap();
        let (mut socket, response) = tungstenite::client("wss://agentdvr.test/ws", stream).unwrap();
        assert_eq!(response.status(), 101);
        socket.send(Message::text("hello through camgate")).unwrap();
        let reply = socket.read().unwrap();
        socket.close(None).unwrap();
        reply
    });
    assert_eq!(echoed, Message::text("hello through camgate"));
    // Frigate's live websocket needs the LAN: refused before any upgrade.
    let denied = lab.raw(
        "wan",
        "frigate.test",
        b"GET /ws HTTP/1.1\r\nHost: frigate.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(denied.status(), 401);
    assert_eq!(
        lab.dvr.received().len(),
        1,
        "only the allowed upgrade reached the DVR"
    );
}

fn rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_slow_mjpeg_reader_for_60_s_keeps_memory_bounded() {
    let lab = Lab::start("mjpeg", "");
    let pid = lab.camgate.peer.pid();
    let before = rss_kib(pid);
    // 64 KiB frames at 50 fps (3.3 MB/s) offered; the reader takes 160 kB/s.
    let (received, peak) = lab.net.ns("lan").run(|| {
        let address = SocketAddr::new("192.168.50.1".parse().unwrap(), 443);
        let mut stream = lab.client.connect(address, "agentdvr.test").unwrap();
        let request = get_request("/video.mjpg?size=65536&fps=50", "agentdvr.test", "slow");
        stream.write_all(&request).unwrap();
        let mut buffer = [0u8; 8192];
        let (mut received, mut peak) = (0usize, 0u64);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "stream ended after {received} bytes");
            received += n;
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        (received, peak)
    });
    assert!(received > 3_000_000, "only {received} bytes in 60 s");
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!("RSS before {before} KiB, peak {peak} KiB, received {received} bytes");
    assert!(
        growth_mib < 16,
        "camgate grew {growth_mib} MiB serving one slow reader"
    );
    // The stream is still live for a fast reader afterwards.
    let quick = lab.net.ns("lan").run(|| {
        let address = SocketAddr::new("192.168.50.1".parse().unwrap(), 443);
        let mut stream = lab.client.connect(address, "agentdvr.test").unwrap();
        stream
            .write_all(&get_request(
                "/video.mjpg?size=1000&fps=50",
                "agentdvr.test",
                "quick",
            ))
            .unwrap();
        // Up to the end of the response head.
        let mut head = Vec::new();
        let mut buffer = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "closed before the response head");
            head.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&head).to_ascii_lowercase()
    });
    assert!(quick.starts_with("http/1.1 200"), "{quick}");
    assert!(quick.contains("multipart/x-mixed-replace"), "{quick}");
}

/// Writes a fresh self-signed certificate for `names` as PEM files.
fn write_certificate(dir: &Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
    let certified =
        rcgen::generate_simple_self_signed(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .unwrap();
    let certificate = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&certificate, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (certificate, key, certified.cert.der().to_vec())
}

fn peer_certificate(stream: &camgate_tests::tls::TlsStream) -> Vec<u8> {
    stream.conn.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn certificates_hot_swap_on_reload_without_dropping_connections() {
    let certs = tempfile::tempdir().unwrap();
    let (first, first_key, first_der) = write_certificate(certs.path(), "first", &["own.test"]);
    let site = |certificate: &Path, key: &Path| {
        format!(
            "[[site]]\nname = \"own\"\nhosts = [\"own.test\"]\nupstream = \"{DVR}\"\ncertificate = \"{}\"\nkey = \"{}\"\n\
             [[site.rule]]\nprefix = \"/\"\naction = \"allow\"\n",
            certificate.display(),
            key.display()
        )
    };
    let mut lab = Lab::start("swap", &site(&first, &first_key));
    let (second, second_key, second_der) = write_certificate(certs.path(), "second", &["own.test"]);
    let client = TlsClient::trusting(&[&first, &second], &[b"http/1.1"]);
    let wan = lab.net.ns("wan");
    let address = wan_https();
    let mut kept = wan.run(|| client.connect(address, "own.test").unwrap());
    assert_eq!(peer_certificate(&kept), first_der);
    let keep_alive = |stream: &mut camgate_tests::tls::TlsStream, id: &str| {
        wan.run(|| {
            let request = format!("GET /index.html HTTP/1.1\r\nHost: own.test\r\nX-Test-Id: {id}\r\n\r\n");
            stream.write_all(request.as_bytes()).unwrap();
            let mut buffer = [0u8; 4096];
            let n = stream.read(&mut buffer).unwrap();
            String::from_utf8_lossy(&buffer[..n]).into_owned()
        })
    };
    let first_response = keep_alive(&mut kept, "k1");
    assert!(first_response.starts_with("HTTP/1.1 200"), "{first_response}");
    assert!(
        first_response.contains("strict-transport-security: max-age=31536000"),
        "HSTS with a real certificate: {first_response}"
    );

    let config = std::fs::read_to_string(&lab.camgate.config_path).unwrap();
    lab.camgate
        .write_config(&config.replace(&site(&first, &first_key), &site(&second, &second_key)));
    let ready = lab.camgate.reload();
    assert!(
        ready.contains("generation 2"),
        "{ready}\n{}",
        lab.camgate.stderr()
    );
    let fresh = wan.run(|| client.connect(address, "own.test").unwrap());
    assert_eq!(
        peer_certificate(&fresh),
        second_der,
        "new handshakes get the new certificate"
    );
    assert!(
        keep_alive(&mut kept, "k2").starts_with("HTTP/1.1 200"),
        "the open connection survived"
    );

    // A broken certificate file fails the reload and keeps the old one.
    std::fs::write(&second, "garbage").unwrap();
    let ready = lab.camgate.reload();
    assert!(ready.contains("generation 2"), "{ready}");
    assert!(
        lab.camgate
            .stderr()
            .contains("reload failed; still running the previous configuration"),
        "{}",
        lab.camgate.stderr()
    );
    let still = wan.run(|| client.connect(address, "own.test").unwrap());
    assert_eq!(
        peer_certificate(&still),
        second_der,
        "the last good certificate is still served"
    );
    assert!(
        lab.camgate.stderr().contains("second.crt"),
        "the failed reload names the file"
    );
}

#[test]
fn https_upstreams_are_checked_against_their_pinned_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let (certificate, key, der) = write_certificate(dir.path(), "dvr", &["192.168.50.2"]);
    let pin: String = ring::digest::digest(&ring::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let wrong = "00".repeat(32);
    let sites = format!(
        "[[site]]\nname = \"pinned\"\nhosts = [\"pinned.test\"]\nupstream = \"https://192.168.50.2:8443\"\nupstream_sha256 = \"{pin}\"\n\
         [[site.rule]]\nprefix = \"/\"\naction = \"allow\"\n\
         [[site]]\nname = \"wrongpin\"\nhosts = [\"wrongpin.test\"]\nupstream = \"https://192.168.50.2:8443\"\nupstream_sha256 = \"{wrong}\"\n\
         [[site.rule]]\nprefix = \"/\"\naction = \"allow\"\n\
         [[site]]\nname = \"ca\"\nhosts = [\"ca.test\"]\nupstream = \"https://192.168.50.2:8443\"\nupstream_ca = \"{}\"\n\
         [[site.rule]]\nprefix = \"/\"\naction = \"allow\"\n",
        certificate.display()
    );
    let (cert_arg, key_arg) = (certificate.display().to_string(), key.display().to_string());
    let lab = Lab::start_with_dvr_args(
        "pin",
        &sites,
        &[
            "--tls-listen",
            "192.168.50.2:8443",
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
        ],
    );
    assert_eq!(lab.get("wan", "pinned.test", "/index.html", "p1").status(), 200);
    assert_eq!(lab.get("wan", "ca.test", "/index.html", "p2").status(), 200);
    assert_eq!(lab.get("wan", "wrongpin.test", "/index.html", "p3").status(), 502);
    let reached: Vec<String> = lab.dvr.received_ids().into_iter().flatten().collect();
    assert_eq!(reached, ["p1", "p2"]);
}

#[test]
fn users_and_tokens_open_auth_rules_and_never_reach_the_dvr() {
    let dir = tempfile::tempdir().unwrap();
    let (credentials, secret) = credentials_config(dir.path());
    let lab = Lab::start("auth", &format!("{credentials}[auth]\nban_after_failures = 5\n"));
    let host = "agentdvr.test";
    let ask = |from: &str, target: &str, id: &str, header: &str| {
        lab.raw(from, host, &get_request_with(target, host, id, header))
    };

    // No credentials: 401 with both challenges; nothing reaches the DVR.
    let missing = ask("wan", "/grab.jpg", "a0", "");
    assert_eq!(missing.status(), 401, "{}", missing.text());
    let head = missing.text().to_ascii_lowercase();
    assert!(
        head.contains("www-authenticate: basic realm=\"camgate agentdvr\""),
        "{head}"
    );
    assert!(head.contains("www-authenticate: bearer realm="), "{head}");
    assert!(lab.dvr.received_with_id("a0").is_empty());

    // A user: 200, and the DVR never sees the Authorization header.
    assert_eq!(
        ask("wan", "/grab.jpg", "a1", &basic("alice", "correct horse")).status(),
        200
    );
    let seen = &lab.dvr.received_with_id("a1")[0];
    assert_eq!(seen.header("authorization"), None);

    // The token in scope, as header and as query: the DVR sees neither.
    let bearer = format!("Authorization: Bearer {secret}\r\n");
    assert_eq!(ask("wan", "/grab.jpg?oids=1", "t1", &bearer).status(), 200);
    assert_eq!(lab.dvr.received_with_id("t1")[0].header("authorization"), None);
    let query = format!("/grab.jpg?oids=1&token={secret}");
    assert_eq!(ask("wan", &query, "t2", "").status(), 200);
    assert_eq!(lab.dvr.received_with_id("t2")[0].target, "/grab.jpg?oids=1");
    // Out of scope (another camera, another path, smuggled spellings): 403, nothing forwarded.
    for (i, target) in [
        "/grab.jpg?oids=2",
        "/grab.jpg?oids=1&oids=2",
        "/video.mp4?oids=1",
        "/x/../grab.jpg%3Foids=1",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("t-out{i}");
        let status = ask("wan", target, &id, &bearer).status();
        assert!(status == 403 || status == 400, "{target}: {status}");
        assert!(
            lab.dvr.received_with_id(&id).is_empty(),
            "{target} reached the DVR"
        );
    }

    // The LAN passes on its address (the rule's `from`): its passwords are
    // never checked, so 8 wrong ones (over the ban threshold) neither ban it
    // nor reach the DVR.
    for i in 0..8 {
        let id = format!("l{i}");
        assert_eq!(
            ask("lan", "/grab.jpg", &id, &basic("alice", "wrong")).status(),
            200
        );
        assert_eq!(lab.dvr.received_with_id(&id)[0].header("authorization"), None);
    }

    // Rules that take no credentials (the GUI) still hold back what is
    // camgate's: its tokens, and Basic credentials it verified (a browser
    // resends them everywhere after camgate's prompt); the DVR's own login
    // passes.
    let ours = [
        format!("Authorization: Bearer {secret}\r\n"),
        basic("alice", "correct horse"),
    ];
    for (i, header) in ours.iter().enumerate() {
        let id = format!("g{i}");
        let target = format!("/index.html?token={secret}&lang=en");
        assert_eq!(ask("wan", &target, &id, header).status(), 200);
        let seen = &lab.dvr.received_with_id(&id)[0];
        assert_eq!(seen.header("authorization"), None, "{header}");
        assert_eq!(seen.target, "/index.html?lang=en");
    }
    let dvr_login = basic("dvr-admin", "dvr password");
    assert_eq!(
        ask("wan", "/index.html?token=dvr-own", "g2", &dvr_login).status(),
        200
    );
    let seen = &lab.dvr.received_with_id("g2")[0];
    assert_eq!(
        seen.header("authorization"),
        Some(dvr_login.trim_end().trim_start_matches("Authorization: "))
    );
    assert_eq!(seen.target, "/index.html?token=dvr-own");

    // The WAN: 5 wrong passwords ban the address; then even the right one gets 429.
    let statuses: Vec<u16> = (0..5)
        .map(|i| ask("wan", "/grab.jpg", &format!("w{i}"), &basic("alice", "guess")).status())
        .collect();
    assert_eq!(statuses, [401, 401, 401, 401, 429]);
    let banned = ask("wan", "/grab.jpg", "w-ok", &basic("alice", "correct horse"));
    assert_eq!(banned.status(), 429);
    assert!(
        banned
            .header("retry-after")
            .is_some_and(|s| s.parse::<u64>().unwrap() >= 1)
    );
    assert!(lab.dvr.received_with_id("w-ok").is_empty());
    // The audit log names the user and address, never the password.
    let log = lab.camgate.stderr();
    assert!(
        log.contains("address banned") && log.contains("203.0.113.2"),
        "{log}"
    );
    assert!(!log.contains("correct horse") && !log.contains("guess") && !log.contains(&secret));
}
