//! The real camgate binary in a namespace, reached from another namespace
//! over a veth: readiness via sd_notify, status, metrics, reload, drain.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use camgate_tests::camgate::{Camgate, Launch};
use camgate_tests::http::{self, get_ok};
use camgate_tests::netns::{Netns, Topology};
use camgate_tests::process::wait_until;
use nix::sys::signal::Signal;

const GW: &str = "10.77.0.1";

/// camgate's host `gw` and a LAN client `lan` on one veth.
fn lan_and_gateway(tag: &str) -> Topology {
    Topology::builder(tag)
        .link(("gw", "10.77.0.1/24"), ("lan", "10.77.0.2/24"))
        .build()
}

fn config(listen: &[&str], extra_daemon: &str) -> String {
    let listen: Vec<String> = listen.iter().map(|address| format!("\"{address}\"")).collect();
    format!(
        "[daemon]\nmode = \"dev\"\nstate_dir = \"state\"\n{extra_daemon}\n[admin]\nlisten = [{}]\n",
        listen.join(", ")
    )
}

fn start(net: &Topology, config: String) -> Camgate {
    Camgate::start(Launch {
        netns: Some(net.ns("gw")),
        config: Some(config),
        env: Vec::new(),
        appliance_setup: false,
    })
}

fn get_status(lan: &Netns, port: u16) -> serde_json::Value {
    get_ok(lan, &format!("http://{GW}:{port}/api/status")).json()
}

fn refused(lan: &Netns, port: u16) -> bool {
    lan.run(|| TcpStream::connect((GW, port)).is_err())
}

#[test]
fn ready_status_metrics_and_watchdog_across_a_veth() {
    let net = lan_and_gateway("ready");
    let mut camgate = Camgate::start(Launch {
        netns: Some(net.ns("gw")),
        config: Some(config(&["10.77.0.1:8080"], "")),
        env: vec![("WATCHDOG_USEC", "200000".to_owned())],
        appliance_setup: false,
    });
    let ready = camgate.notify.received().last().unwrap().clone();
    assert!(
        ready.contains("STATUS=running; generation 1; admin on 10.77.0.1:8080"),
        "{ready}"
    );
    camgate.notify.wait_for("WATCHDOG=1", Duration::from_secs(5));

    let lan = net.ns("lan");
    let status = get_status(lan, 8080);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["mode"], "dev");
    assert_eq!(status["setup"], false);
    assert_eq!(status["generation"], 1);
    assert_eq!(status["system_changes"]["enabled"], false);
    let subsystems = status["subsystems"].as_array().unwrap();
    assert_eq!(subsystems[0]["name"], "admin");
    assert_eq!(subsystems[0]["state"], "running");
    assert!(
        subsystems
            .iter()
            .any(|s| s["name"] == "firewall" && s["state"] == "disabled"),
        "{status}"
    );

    assert_eq!(get_ok(lan, &format!("http://{GW}:8080/healthz")).body, "ok\n");
    let metrics = get_ok(lan, &format!("http://{GW}:8080/metrics"));
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(
        metrics.body.contains("camgate_config_generation 1\n"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains(&format!(
        "camgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    // A DNS-rebinding page reaches the admin API under a foreign host name.
    let rebound = lan.run(|| {
        let mut stream = TcpStream::connect((GW, 8080)).unwrap();
        stream
            .write_all(b"GET /api/status HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    });
    assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
    assert!(!rebound.contains("generation"), "{rebound}");
    let missing = http::get(lan, &format!("http://{GW}:8080/nope")).unwrap();
    assert_eq!(missing.status, 404);
    assert!(
        missing
            .header("content-security-policy")
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
}

#[test]
fn sighup_applies_a_new_config_whole() {
    let net = lan_and_gateway("reload");
    let lan = net.ns("lan");
    let mut camgate = start(&net, config(&["10.77.0.1:8080"], ""));

    camgate.write_config(&config(&["10.77.0.1:8081"], "log = \"debug\""));
    let ready = camgate.reload();
    assert!(ready.contains("generation 2"), "{ready}");

    let status = get_status(lan, 8081);
    assert_eq!(status["generation"], 2);
    assert_eq!(status["last_reload"]["ok"], true);
    assert!(refused(lan, 8080), "the old listener should be gone");
    // The new log filter is in force: debug events now appear.
    get_ok(lan, &format!("http://{GW}:8081/healthz"));
    wait_until("a debug line in the log", Duration::from_secs(5), || {
        camgate.stderr().contains("<7>").then_some(())
    });
    let metrics = get_ok(lan, &format!("http://{GW}:8081/metrics")).body;
    assert!(
        metrics.contains("camgate_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[test]
fn broken_reload_keeps_the_old_config_running() {
    let net = lan_and_gateway("badreload");
    let lan = net.ns("lan");
    let good = config(&["10.77.0.1:8080"], "");
    let mut camgate = start(&net, good.clone());

    // An invalid file: rejected with its location, old state untouched.
    camgate.write_config("[daemon]\nmode = \"turbo\"\n");
    camgate.reload();
    let status = get_status(lan, 8080);
    assert_eq!(status["generation"], 1);
    assert_eq!(status["last_reload"]["ok"], false);
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains("camgate.toml:2:8: `daemon.mode`: unknown variant `turbo`"),
        "{error}"
    );
    assert!(
        camgate
            .stderr()
            .contains("reload failed; still running the previous configuration")
    );

    // A valid file that cannot be applied (port taken): nothing changes,
    // not even the listener that could have been bound.
    let squatter = net
        .ns("gw")
        .run(|| std::net::TcpListener::bind((GW, 8090)).unwrap());
    camgate.write_config(&config(
        &["10.77.0.1:8080", "10.77.0.1:8092", "10.77.0.1:8090"],
        "",
    ));
    camgate.reload();
    let status = get_status(lan, 8080);
    assert_eq!(status["generation"], 1);
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains("cannot listen on 10.77.0.1:8090 ([admin] listen): Address already in use"),
        "{error}"
    );
    assert!(
        refused(lan, 8092),
        "a listener from the failed reload was left serving"
    );
    drop(squatter);
    camgate.write_config(&config(&["10.77.0.1:8080", "10.77.0.1:8090"], ""));
    camgate.reload();
    assert_eq!(get_status(lan, 8090)["generation"], 2);
    assert_eq!(
        get_status(lan, 8080)["generation"],
        2,
        "unchanged listener kept serving"
    );

    // Moving a listener to an overlapping address on the same port needs a
    // restart; the running listeners stay as they are.
    camgate.write_config(&config(&["0.0.0.0:8080", "10.77.0.1:8090"], ""));
    camgate.reload();
    let status = get_status(lan, 8080);
    assert_eq!(status["generation"], 2);
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains("from 10.77.0.1:8080 to 0.0.0.0:8080 needs a restart"),
        "{error}"
    );

    // A change that needs a restart is refused, not half-applied.
    camgate.write_config(
        &good
            .replace("mode = \"dev\"", "mode = \"appliance\"")
            .replace("\"state\"", "\"/tmp/x\""),
    );
    camgate.reload();
    let status = get_status(lan, 8080);
    assert_eq!(status["generation"], 2);
    assert!(
        status["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("restart camgate"),
        "{status}"
    );
    let metrics = get_ok(lan, &format!("http://{GW}:8080/metrics")).body;
    assert!(
        metrics.contains("camgate_config_reloads_total{result=\"error\"} 4"),
        "{metrics}"
    );
}

/// Opens a connection from `lan` and sends half a request head, then waits
/// until camgate (in `gw`) has read it: the request is in flight.
fn half_request(net: &Topology) -> TcpStream {
    let mut stream = net.ns("lan").run(|| TcpStream::connect((GW, 8080)).unwrap());
    stream
        .write_all(b"GET /api/status HTTP/1.1\r\nHost: 10.77.0.1:8080\r\n")
        .unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let client = stream.local_addr().unwrap().to_string();
    wait_until(
        "camgate to read the partial request",
        Duration::from_secs(10),
        || {
            let output = net
                .ns("gw")
                .command("ss")
                .args(["-Htn", "state", "established", "( sport = :8080 )"])
                .output()
                .expect("ss (iproute2)");
            // Columns: Recv-Q Send-Q Local Peer. Nothing left unread on our connection.
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|line| line.split_whitespace().nth(3) == Some(client.as_str()) && line.starts_with('0'))
                .then_some(())
        },
    );
    stream
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let net = lan_and_gateway("drain");
    let lan = net.ns("lan");
    let mut camgate = start(&net, config(&["10.77.0.1:8080"], "shutdown_grace = \"20s\""));
    let mut stream = half_request(&net);

    camgate.signal(Signal::SIGTERM);
    let stopping = camgate.notify.wait_for("STOPPING=1", Duration::from_secs(5));
    assert!(stopping.contains("STATUS=draining"), "{stopping}");
    wait_until("the listener to close", Duration::from_secs(5), || {
        refused(lan, 8080).then_some(())
    });
    assert!(
        camgate.peer.try_exit().is_none(),
        "exited while a request was in flight"
    );

    stream.write_all(b"\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
    assert!(reply.contains("\"generation\":1"), "{reply}");

    let exit = camgate.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "{exit}");
    assert!(camgate.stderr().contains("drained; bye"));
}

#[test]
fn grace_period_bounds_the_drain() {
    let net = lan_and_gateway("grace");
    let mut camgate = start(&net, config(&["10.77.0.1:8080"], "shutdown_grace = \"1s\""));
    let _stuck = half_request(&net);
    let signalled = Instant::now();
    camgate.signal(Signal::SIGTERM);
    let exit = camgate.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "{exit}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "did not wait for the in-flight request ({took:?})"
    );
    assert!(
        took < Duration::from_secs(5),
        "the 1s grace period was not enforced ({took:?})"
    );
    assert!(camgate.stderr().contains("grace period of 1s expired with"));
}

#[test]
fn second_signal_stops_at_once() {
    use std::os::unix::process::ExitStatusExt;
    let net = lan_and_gateway("twice");
    let mut camgate = start(&net, config(&["10.77.0.1:8080"], "shutdown_grace = \"60s\""));
    let _stuck = half_request(&net);
    camgate.signal(Signal::SIGTERM);
    camgate.notify.wait_for("STOPPING=1", Duration::from_secs(5));
    camgate.signal(Signal::SIGINT);
    let exit = camgate.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(130), "{exit} {:?}", exit.signal());
    assert!(
        camgate
            .stderr()
            .contains("second signal (SIGINT): stopping now without draining")
    );
}

#[test]
fn setup_mode_without_a_config_prints_the_url_and_code() {
    let netns = Netns::new("setup");
    let mut camgate = Camgate::start(Launch {
        netns: Some(&netns),
        config: None,
        env: Vec::new(),
        appliance_setup: false,
    });
    let code_path = camgate.dir.path().join("var/lib/setup-code");
    let code = std::fs::read_to_string(&code_path).unwrap();
    let code = code.trim();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&code_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let state_dir = camgate.dir.path().join("var/lib");
    assert_eq!(
        std::fs::metadata(&state_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let log = camgate.stderr();
    assert!(
        log.contains(&format!(
            "Open http://127.0.0.1:8080/ in a browser on this network; setup code: {code}"
        )),
        "{log}"
    );
    let ready = camgate.notify.received().last().unwrap().clone();
    assert!(ready.contains("STATUS=waiting for setup"), "{ready}");

    let status = get_ok(&netns, "http://127.0.0.1:8080/api/status").json();
    assert_eq!(status["setup"], true);
    assert_eq!(status["mode"], "dev");
    assert_eq!(status["config_path"], "var/camgate.toml");
    assert!(
        !status.to_string().contains(code),
        "the setup code must not be served"
    );
    let page = get_ok(&netns, "http://127.0.0.1:8080/").body;
    assert!(page.contains("Claim this camgate"), "{page}");
    for path in ["/", "/metrics", "/healthz"] {
        let body = get_ok(&netns, &format!("http://127.0.0.1:8080{path}")).body;
        assert!(!body.contains(code), "{path} serves the setup code");
    }

    // A config appearing at the default path ends setup mode on reload.
    std::fs::write(
        camgate.dir.path().join("var/camgate.toml"),
        "[daemon]\nlog = \"info\"\n",
    )
    .unwrap();
    camgate.reload();
    let status = get_ok(&netns, "http://127.0.0.1:8080/api/status").json();
    assert_eq!(status["setup"], false);
    assert_eq!(status["generation"], 2);
    assert!(!code_path.exists(), "the setup code outlived setup mode");

    // A config put in place while camgate was stopped (the appliance's
    // import from the boot partition) voids a code left from setup mode.
    std::fs::write(&code_path, format!("{code}\n")).unwrap();
    camgate.write_config("[daemon]\nmode = \"dev\"\nstate_dir = \"var/lib\"\nlog = \"info\"\n");
    camgate.restart(Some(&netns));
    wait_until(
        "the restarted camgate to void the setup code",
        Duration::from_secs(10),
        || (!code_path.exists()).then_some(()),
    );
    let status = get_ok(&netns, "http://127.0.0.1:8080/api/status").json();
    assert_eq!(status["setup"], false);
}
