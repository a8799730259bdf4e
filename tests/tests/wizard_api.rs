//! The setup wizard's API over the wire, against a real camgate in a
//! namespace with Debian's `motion` beside it as the DVR: who may call it
//! (admins only, CSRF for sessions, the LAN only), the NICs, the profiles'
//! rules in words, DVR detection and the connection test, and each step's
//! edit — with bad input answered by a 4xx whose message says what to fix.
//!
//! ```text
//!  gw (camgate, 192.168.61.1) ── dvr (motion, 192.168.61.2; 10.9.8.2 routed)
//! ```

use camgate_tests::camgate::{Camgate, Launch};
use camgate_tests::http::{Answer, curl};
use camgate_tests::lab::{basic, hash_password};
use camgate_tests::netns::Topology;

const GW: &str = "192.168.61.1";
const DVR: &str = "192.168.61.2";
const ROUTED: &str = "10.9.8.2";
const PASSWORD: &str = "wizard api password";

fn error(answer: &Answer) -> &str {
    answer.body["error"].as_str().unwrap_or_default()
}

#[test]
fn the_wizard_api_serves_admins_on_the_lan_and_explains_bad_input() {
    let net = Topology::builder("wapi")
        .link(("gw", &format!("{GW}/24")), ("dvr", &format!("{DVR}/24")))
        .route("gw", "10.9.8.0/24", DVR)
        .build();
    let (gw, dvr) = (net.ns("gw"), net.ns("dvr"));
    dvr.ip(&["addr", "add", &format!("{ROUTED}/32"), "dev", "lo"]);
    let dir = tempfile::tempdir().unwrap();
    let _motion = camgate_tests::motion::start(dvr, DVR, dir.path(), Some("admin:secret"));
    let hash = hash_password(PASSWORD);
    let base = format!(
        "[daemon]\nmode = \"dev\"\nstate_dir = \"var/lib\"\n[admin]\nlisten = [\"0.0.0.0:8080\"]\n\n\
         [[user]]\nname = \"root\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n\n\
         [[user]]\nname = \"vic\"\npassword_hash = \"{hash}\"\nrole = \"viewer\"\n"
    );
    let _camgate = Camgate::start(Launch {
        netns: Some(gw),
        config: Some(base.clone()),
        env: Vec::new(),
        appliance_setup: false,
    });
    let api = |from: &str, method: &str, path: &str, body: Option<serde_json::Value>, headers: &[&str]| {
        let body = body.map(|body| body.to_string());
        curl(
            dvr,
            from,
            method,
            &format!("http://{GW}:8080/api{path}"),
            body.as_deref(),
            headers,
        )
    };
    let root = basic("root", PASSWORD);
    let root = root.trim_end();
    let admin =
        |method: &str, path: &str, body: Option<serde_json::Value>| api(DVR, method, path, body, &[root]);
    let edit = |step: serde_json::Value| {
        admin(
            "POST",
            "/config/edit",
            Some(serde_json::json!({ "config": base, "edit": step })),
        )
    };

    // Admins only; the LAN only.
    let viewer = basic("vic", PASSWORD);
    for (method, path) in [
        ("GET", "/interfaces"),
        ("GET", "/profiles"),
        ("POST", "/config/edit"),
        ("POST", "/dvr/detect"),
        ("POST", "/dvr/test"),
        ("POST", "/cameras/rtsp-test"),
    ] {
        let body = (method == "POST").then(|| serde_json::json!({}));
        assert_eq!(api(DVR, method, path, body.clone(), &[]).status, 401, "{path}");
        assert_eq!(
            api(DVR, method, path, body.clone(), &[viewer.trim_end()]).status,
            403,
            "{path}"
        );
        let routed = api(ROUTED, method, path, body, &[root]);
        assert_eq!(routed.status, 403, "{path}");
        assert!(
            error(&routed).contains(&format!(
                "only for the network camgate is on; {ROUTED} is not on it"
            )),
            "{}",
            routed.body
        );
    }

    // The refusals are security events, for admins to see.
    assert_eq!(api(DVR, "GET", "/events", None, &[]).status, 401);
    let events = admin("GET", "/events?limit=5", None);
    assert_eq!(events.status, 200, "{}", events.body);
    let listed = events.body["events"].as_array().unwrap();
    assert_eq!(listed.len(), 5);
    let refusal = listed.iter().find(|event| event["event"] == "admin");
    let refusal = refusal.unwrap_or_else(|| panic!("{:#}", events.body));
    assert_eq!(refusal["fields"]["client.addr"], ROUTED, "{refusal:#}");
    assert_eq!(refusal["level"], "warn", "{refusal:#}");
    let bad_query = admin("GET", "/events?since=soon", None);
    assert_eq!(bad_query.status, 400, "{}", bad_query.body);

    // A browser session's changes need its CSRF token.
    let login = api(
        DVR,
        "POST",
        "/login",
        Some(serde_json::json!({ "user": "root", "password": PASSWORD })),
        &[],
    );
    assert_eq!(login.status, 200, "{}", login.body);
    let cookie = format!(
        "cookie: {}",
        login.header("set-cookie").unwrap().split(';').next().unwrap()
    );
    let csrf = format!("x-csrf-token: {}", login.body["csrf"].as_str().unwrap());
    let step = serde_json::json!({ "config": base, "edit": { "step": "network", "uplink": "v0-dvr", "cameras": null } });
    let forged = api(
        DVR,
        "POST",
        "/config/edit",
        Some(step.clone()),
        &[cookie.as_str()],
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    let sent = api(
        DVR,
        "POST",
        "/config/edit",
        Some(step),
        &[cookie.as_str(), csrf.as_str()],
    );
    assert_eq!(sent.status, 200, "{}", sent.body);

    // The NICs, as the network step lists them.
    let nics = admin("GET", "/interfaces", None);
    assert_eq!(nics.status, 200);
    let uplink = nics
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|nic| nic["name"] == "v0-dvr");
    let uplink = uplink.unwrap_or_else(|| panic!("{:#}", nics.body));
    assert_eq!(uplink["kind"], "veth");
    assert_eq!(uplink["state"], "up");
    assert_eq!(uplink["carrier"], true);
    assert!(uplink["mac"].as_str().unwrap().len() == 17, "{uplink}");
    assert_eq!(uplink["addresses"][0], format!("{GW}/24").as_str(), "{uplink}");
    assert!(!nics.body.to_string().contains("\"lo\""), "loopback is no choice");

    // Each profile's rules in words.
    let profiles = admin("GET", "/profiles", None);
    let motion = profiles
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "motion")
        .unwrap();
    let rules = motion["rules"].as_array().unwrap();
    assert!(
        rules.iter().any(|rule| rule["goes_to"] == "port 8081 of the DVR"),
        "{motion:#}"
    );
    assert_eq!(rules.last().unwrap()["who"], "nobody (denied, 403)", "{motion:#}");

    // Detection: motion, on its webcontrol port, by its realm and stream status.
    let found = admin("POST", "/dvr/detect", Some(serde_json::json!({ "address": DVR })));
    assert_eq!(found.status, 200, "{}", found.body);
    let first = &found.body[0];
    assert_eq!(
        (first["profile"].as_str(), first["port"].as_u64()),
        (Some("motion"), Some(8080)),
        "{:#}",
        found.body
    );
    assert_eq!(first["confidence"], "high");
    let evidence = first["evidence"].to_string();
    assert!(
        evidence.contains("realm \\\"Motion\\\"") && evidence.contains("camera_status"),
        "{evidence}"
    );
    assert_eq!(
        found.body.as_array().unwrap().len(),
        1,
        "nothing else answers there: {:#}",
        found.body
    );
    let named = admin(
        "POST",
        "/dvr/detect",
        Some(serde_json::json!({ "address": "dvr.local" })),
    );
    assert_eq!(named.status, 422);
    assert!(
        error(&named).contains("give the DVR's IP address"),
        "{}",
        named.body
    );
    let missing = admin("POST", "/dvr/detect", Some(serde_json::json!({ "host": DVR })));
    assert_eq!(missing.status, 422);
    assert!(
        error(&missing).contains("unknown field `host`"),
        "{}",
        missing.body
    );

    // The connection test: motion asks for its login; a closed port and a
    // non-URL are explained.
    let tested = admin(
        "POST",
        "/dvr/test",
        Some(serde_json::json!({ "upstream": format!("http://{DVR}:8080") })),
    );
    assert_eq!(tested.status, 200, "{}", tested.body);
    assert_eq!(tested.body["reachable"], true);
    assert_eq!(tested.body["status"], 401);
    assert!(
        tested.body["summary"]
            .as_str()
            .unwrap()
            .starts_with(&format!("HTTP 401 Unauthorized from {DVR}:8080 in ")),
        "{}",
        tested.body
    );
    let closed = admin(
        "POST",
        "/dvr/test",
        Some(serde_json::json!({ "upstream": format!("http://{DVR}:8090") })),
    );
    // A DVR that does not answer is the test's result, not camgate's failure.
    assert_eq!(closed.status, 200);
    assert_eq!(closed.body["reachable"], false);
    assert_eq!(
        error(&closed),
        format!("nothing listens on {DVR}:8090 (connection refused)")
    );
    let nonsense = admin(
        "POST",
        "/dvr/test",
        Some(serde_json::json!({ "upstream": "my dvr" })),
    );
    assert_eq!(nonsense.status, 422);
    assert!(error(&nonsense).contains("as a URL"), "{}", nonsense.body);

    // The RTSP test is for cameras on the camera network, which this
    // camgate does not run.
    let rtsp = admin(
        "POST",
        "/cameras/rtsp-test",
        Some(serde_json::json!({ "url": format!("rtsp://{DVR}:554/stream1") })),
    );
    assert_eq!(rtsp.status, 409, "{}", rtsp.body);
    assert!(
        error(&rtsp).contains("apply the network step first"),
        "{}",
        rtsp.body
    );

    // Steps: a good one comes back as a checked draft with its diff.
    let dvr_step = edit(
        serde_json::json!({ "step": "dvr", "upstream": format!("http://{DVR}:8080"), "profile": "motion" }),
    );
    assert_eq!(dvr_step.status, 200, "{}", dvr_step.body);
    let draft = dvr_step.body["config"].as_str().unwrap();
    assert!(draft.starts_with(&base), "the rest of the file is kept:\n{draft}");
    assert!(
        dvr_step.body["diff"]
            .as_str()
            .unwrap()
            .contains(&format!("+upstream = \"http://{DVR}:8080\"")),
        "{}",
        dvr_step.body
    );
    // What the forms show next, read from the draft.
    let values = &dvr_step.body["values"];
    assert_eq!(values["dvr"]["profile"], "motion", "{values:#}");
    assert_eq!(values["dvr"]["host"], DVR, "{values:#}");
    assert_eq!(
        values["users"],
        serde_json::json!([{ "name": "root", "role": "admin" }, { "name": "vic", "role": "viewer" }])
    );
    // Bad ones: 422 with what to fix, checked by the config file's own parser.
    for (step, message) in [
        (
            serde_json::json!({ "step": "network", "uplink": "v0-dvr",
                "cameras": { "interface": "v0-dvr", "vlan": null, "address": "192.168.61.9/24" } }),
            "not valid: line",
        ),
        (
            serde_json::json!({ "step": "network", "uplink": "v0-dvr",
                "cameras": { "interface": "eth9", "vlan": null, "address": "192.168.61.200/25" } }),
            "the camera network 192.168.61.128/25 overlaps 192.168.61.0/24 on v0-dvr: choose another range",
        ),
        (
            serde_json::json!({ "step": "token", "name": "ha", "scope": ["/1/stream"], "expires": null }),
            "set up the DVR first",
        ),
        (
            serde_json::json!({ "step": "dvr", "upstream": format!("http://{DVR}:8080"), "profile": "nosuch" }),
            "nosuch",
        ),
        (
            serde_json::json!({ "step": "user", "name": "bob", "password": "short", "role": "viewer" }),
            "at least 10 characters",
        ),
        (
            serde_json::json!({ "step": "camera", "name": "porch", "mac": "02:00:00:00:00:01",
                "address": "10.77.0.20", "username": "admin", "password": null }),
            "user name and password, or neither",
        ),
        (
            serde_json::json!({ "step": "remove", "list": "camera", "name": "porch" }),
            "there is no camera named \"porch\"",
        ),
        (
            serde_json::json!({ "step": "reboot" }),
            "unknown variant `reboot`",
        ),
        (
            serde_json::json!({ "step": "remove", "list": "user", "name": "root" }),
            "keep at least one administrator",
        ),
    ] {
        let answer = edit(step.clone());
        assert_eq!(answer.status, 422, "{step}: {}", answer.body);
        assert!(error(&answer).contains(message), "{step}: {}", answer.body);
    }
    // An empty config: no place to point at, and no "line" either.
    let empty = admin("POST", "/config", Some(serde_json::json!({ "config": "" })));
    assert_eq!(empty.status, 422);
    assert!(
        error(&empty).starts_with("not valid: config has no settings"),
        "{}",
        empty.body
    );
    // Nothing of it reached the file.
    let shown = admin("GET", "/config", None);
    assert_eq!(shown.body["config"], base.as_str());
}
