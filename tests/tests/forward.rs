//! UDP forwards to a real TURN server (Debian's coturn, playing Agent DVR's
//! built-in one) through camgate, in both modes and both topologies:
//!
//! - router: `wan` 10.78.2.2 — camgate `gw` 10.78.2.1 | 10.78.1.1 — `dvr`
//!   10.78.1.2 (default route via camgate): DNAT alone suffices.
//! - LAN host: `wan` 10.78.3.2 — home router `home` 10.78.3.1 | bridge
//!   10.78.4.1 — camgate `gw` 10.78.4.3 and `dvr` 10.78.4.2 on the bridge,
//!   both routing through the home router, which port-forwards to camgate:
//!   the DVR answers through camgate only if camgate masquerades, or if the
//!   DVR has a policy route (which a TURN peer that sends first needs).
//!
//! A recorder (an nftables counter in `dvr`) proves what reaches coturn.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use camgate_tests::camgate::{Camgate, Launch};
use camgate_tests::http::get_ok;
use camgate_tests::netns::{Netns, Topology};
use camgate_tests::nft::{Recorder, load as nft_load};
use camgate_tests::process::{Peer, require_binary, wait_until};

const STUN_MAGIC: u32 = 0x2112_A442;

/// coturn in `dvr` on `ip`:3478, relay range 50000-50010, announcing
/// `external` as its public address.
fn coturn(dvr: &Netns, dir: &Path, ip: &str, external: &str) -> Peer {
    let turnserver = require_binary("turnserver", "coturn");
    let config = dir.join("turnserver.conf");
    std::fs::write(
        &config,
        format!(
            "listening-ip={ip}\nrelay-ip={ip}\nexternal-ip={external}/{ip}\nlistening-port=3478\n\
             min-port=50000\nmax-port=50010\nlt-cred-mech\nuser=camgate:s3cret\nrealm=camgate.test\n\
             no-tls\nno-dtls\nfingerprint\nno-cli\nverbose\nlog-file=stdout\nsimple-log\n\
             pidfile={dir}/turnserver.pid\nuserdb={dir}/turndb\nmax-allocate-lifetime=60\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    let mut command = dvr.command(turnserver);
    command.arg("-c").arg(&config);
    let peer = Peer::spawn("turnserver", command, dir);
    wait_until("coturn to answer", Duration::from_secs(15), || {
        stunclient(dvr, ip, 2).status.success().then_some(())
    });
    peer
}

/// `turnutils_stunclient`, which waits forever without an answer.
fn stunclient(ns: &Netns, server: &str, seconds: u32) -> Output {
    stunclient_on(ns, server, 3478, seconds)
}

fn stunclient_on(ns: &Netns, server: &str, port: u16, seconds: u32) -> Output {
    let binary = require_binary("turnutils_stunclient", "coturn");
    let mut command = ns.command("timeout");
    command
        .arg(seconds.to_string())
        .arg(binary)
        .args(["-p", &port.to_string(), server]);
    command.output().unwrap()
}

fn reflexive_address(ns: &Netns, server: &str) -> String {
    reflexive_address_on(ns, server, 3478)
}

fn reflexive_address_on(ns: &Netns, server: &str, port: u16) -> String {
    let output = stunclient_on(ns, server, port, 10);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "no Binding response: {text}");
    let line = text
        .lines()
        .find(|l| l.contains("UDP reflexive addr:"))
        .unwrap_or_else(|| panic!("{text}"));
    line.rsplit(' ').next().unwrap().to_owned()
}

/// `turnutils_uclient` relaying 10 messages to the echo peer at `peer`;
/// it exits 0 even at 100 % loss, so the counts are checked.
fn uclient_relays(ns: &Netns, server: &str, peer: &str) {
    let binary = require_binary("turnutils_uclient", "coturn");
    let mut command = ns.command("timeout");
    command
        .arg("30")
        .arg(binary)
        .args(["-u", "camgate", "-w", "s3cret", "-e", peer, "-r", "3480"])
        .args(["-n", "10", "-m", "1", "-c", "-p", "3478", server]);
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("tot_recv_msgs=10"), "uclient via {server}:\n{text}");
    assert!(
        text.contains("Total lost packets 0 "),
        "uclient via {server}:\n{text}"
    );
}

/// The echo peer uclient relays to (also answers on 3481).
fn echo_peer(ns: &Netns, ip: &str, dir: &Path) -> Peer {
    let mut command = ns.command(require_binary("turnutils_peer", "coturn"));
    command.args(["-L", ip, "-p", "3480"]);
    let peer = Peer::spawn(&format!("turnutils_peer-{ip}"), command, dir);
    std::thread::sleep(Duration::from_millis(300));
    peer
}

/// The TURN client of `tests/peers/turn_peer_first.py` allocates and
/// permits `peer_ip`; then `sender` sends one datagram from `peer_ip` to
/// the relayed address `relay_via` (the public address: the relayed port
/// is forwarded 1:1). Returns whether coturn delivered it.
fn peer_sends_first(client: &Netns, server: &str, sender: &Netns, peer_ip: &str, relay_via: &str) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/turn_peer_first.py");
    let mut command = client.command("python3");
    command
        .arg(script)
        .args([server, "3478", "camgate", "s3cret", peer_ip, "4"])
        .stdout(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("relayed ")
        .and_then(|address| address.rsplit(':').next())
        .unwrap_or_else(|| panic!("no relayed address: {line:?}"))
        .parse()
        .unwrap();
    sender.run(|| {
        let socket = UdpSocket::bind((peer_ip, 4000)).unwrap();
        socket.send_to(b"hello from the peer", (relay_via, port)).unwrap();
    });
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    status.success() && rest.contains("hello from the peer")
}

/// Loads an nftables ruleset (text) in `ns`: the test's own tables, beside
/// camgate's.
fn stun_message(message_type: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&message_type.to_be_bytes());
    m.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    m.extend_from_slice(&STUN_MAGIC.to_be_bytes());
    m.extend_from_slice(&fastrand::u128(..).to_be_bytes()[..12]);
    m.extend_from_slice(body);
    m
}

/// Datagrams the guard must drop: random bytes, truncated STUN, a wrong
/// cookie, a length longer than the datagram, ChannelData that does not fit.
fn garbage() -> Vec<Vec<u8>> {
    let mut wrong_cookie = stun_message(1, &[]);
    wrong_cookie[4] = 0;
    let mut oversized = stun_message(1, &[0; 8]);
    oversized[2..4].copy_from_slice(&400u16.to_be_bytes());
    let mut random: Vec<u8> = (0..64).map(|_| fastrand::u8(..)).collect();
    random[0] = 0xFF;
    vec![
        random,
        stun_message(1, &[0; 8])[..22].to_vec(),
        wrong_cookie,
        oversized,
        vec![0x40, 0x01, 0x01, 0x00, 1, 2, 3],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ]
}

/// Sends each datagram from a fresh socket in `ns` to `to`.
fn send_all(ns: &Netns, to: SocketAddr, datagrams: &[Vec<u8>]) {
    ns.run(|| {
        for datagram in datagrams {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.send_to(datagram, to).unwrap();
        }
    });
}

fn forwards_status(gw: &Netns) -> Vec<serde_json::Value> {
    get_ok(gw, "http://127.0.0.1:8080/api/status").json()["forwarding"]["forwards"]
        .as_array()
        .unwrap()
        .clone()
}

fn forward_status(gw: &Netns, name: &str) -> serde_json::Value {
    forwards_status(gw)
        .into_iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no forward {name} in the status"))
}

fn appliance_config(state: &Path, body: &str) -> String {
    format!(
        "[daemon]\nmode = \"appliance\"\nstate_dir = \"{}\"\nlog = \"info,camgate=debug\"\n\
         [admin]\nlisten = [\"127.0.0.1:8080\"]\n{body}",
        state.display()
    )
}

/// The Agent DVR profile's forwards (3478 with the guard, the relay range)
/// in kernel mode; then, by reload, userspace forwards.
const AGENT_SITE: &str = "[[site]]\nname = \"agent\"\nhosts = [\"dvr.example.net\"]\n\
                          upstream = \"http://10.78.1.2:8090\"\nprofile = \"agentdvr\"\n";

const USERSPACE: &str = "[forwarding]\nmax_flows_per_client = 8\nstun_responder = [\"10.78.2.1:3479\"]\n\
    [[forward]]\nname = \"turn\"\nprotocol = \"udp\"\nports = 3478\nlisten_address = \"10.78.2.1\"\n\
    target = \"10.78.1.2\"\nmode = \"userspace\"\nstun = true\n\
    [[forward]]\nname = \"relay\"\nprotocol = \"udp\"\nports = \"50000-50010\"\nlisten_address = \"10.78.2.1\"\n\
    target = \"10.78.1.2\"\nmode = \"userspace\"\n";

#[test]
fn camgate_as_the_dvrs_router_kernel_then_userspace() {
    let net = Topology::builder("fwr")
        .link(("gw", "10.78.2.1/24"), ("wan", "10.78.2.2/24"))
        .link(("gw", "10.78.1.1/24"), ("dvr", "10.78.1.2/24"))
        .route("dvr", "default", "10.78.1.1")
        .build();
    let (gw, wan, dvr) = (net.ns("gw"), net.ns("wan"), net.ns("dvr"));
    let dir = tempfile::tempdir().unwrap();
    let _coturn = coturn(dvr, dir.path(), "10.78.1.2", "10.78.2.1");
    let _dvr_peer = echo_peer(dvr, "10.78.1.2", dir.path());
    let _wan_peer = echo_peer(wan, "10.78.2.2", dir.path());
    let recorder = Recorder::install(dvr, &["udp dport 3478"]);
    let state = dir.path().join("state");
    let mut camgate = Camgate::start(Launch {
        netns: Some(gw),
        config: Some(appliance_config(&state, AGENT_SITE)),
        env: Vec::new(),
        appliance_setup: false,
    });

    // Kernel mode: DNAT keeps the client's address (no masquerade: camgate
    // is the DVR's router), so STUN sees the real client.
    let turn = forward_status(gw, "agent-udp-3478");
    assert_eq!(turn["mode"], "kernel");
    assert_eq!(turn["masquerade"], false);
    assert!(reflexive_address(wan, "10.78.2.1").starts_with("10.78.2.2:"));
    // The relay with the DVR host as the peer (as Agent is), and with a peer
    // on the internet whose traffic flows through the forwarded range.
    uclient_relays(wan, "10.78.2.1", "10.78.1.2");
    uclient_relays(wan, "10.78.2.1", "10.78.2.2");
    assert!(peer_sends_first(wan, "10.78.2.1", wan, "10.78.2.2", "10.78.2.1"));
    let relay = forward_status(gw, "agent-udp-50000");
    assert!(relay["to_target"]["packets"].as_u64().unwrap() > 0, "{relay}");

    // Garbage never reaches coturn, and the guard counts each datagram.
    let dropped_before = forward_status(gw, "agent-udp-3478")["guard_dropped"]["packets"]
        .as_u64()
        .unwrap();
    let reached_before = recorder.packets();
    send_all(wan, "10.78.2.1:3478".parse().unwrap(), &garbage());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(recorder.packets(), reached_before, "garbage reached coturn");
    let turn = forward_status(gw, "agent-udp-3478");
    assert_eq!(
        turn["guard_dropped"]["packets"].as_u64().unwrap() - dropped_before,
        garbage().len() as u64,
        "{turn}"
    );
    // Valid STUN still passes, and is recorded.
    send_all(wan, "10.78.2.1:3478".parse().unwrap(), &[stun_message(1, &[])]);
    wait_until(
        "a Binding request to reach coturn",
        Duration::from_secs(5),
        || (recorder.packets() == reached_before + 1).then_some(()),
    );
    // Allocate floods are rate-limited per source (5/s, burst 10).
    let allocates: Vec<Vec<u8>> = (0..40).map(|_| stun_message(0x0003, &[])).collect();
    send_all(wan, "10.78.2.1:3478".parse().unwrap(), &allocates);
    let limited = forward_status(gw, "agent-udp-3478")["allocate_limited"]["packets"]
        .as_u64()
        .unwrap();
    assert!(
        (25..40).contains(&limited),
        "{limited} of 40 Allocate requests limited"
    );

    // Switch to userspace mode by reload: the daemon stays up.
    camgate.write_config(&appliance_config(
        &state,
        &format!("{AGENT_SITE}forwards = false\n{USERSPACE}"),
    ));
    let ready = camgate.reload();
    assert!(ready.contains("generation 2"), "{ready}\n{}", camgate.stderr());
    let turn = forward_status(gw, "turn");
    assert_eq!(turn["mode"], "userspace");
    // The userspace relay sends from camgate's own address.
    assert!(reflexive_address(wan, "10.78.2.1").starts_with("10.78.1.1:"));
    uclient_relays(wan, "10.78.2.1", "10.78.1.2");
    // camgate's own STUN responder answers with the client's address.
    assert!(reflexive_address_on(wan, "10.78.2.1", 3479).starts_with("10.78.2.2:"));
    let responder = &get_ok(gw, "http://127.0.0.1:8080/api/status").json()["forwarding"]["stun_responder"];
    assert!(responder["answered"].as_u64().unwrap() >= 1, "{responder}");

    let reached_before = recorder.packets();
    let dropped_before = forward_status(gw, "turn")["guard_dropped"]["packets"]
        .as_u64()
        .unwrap();
    send_all(wan, "10.78.2.1:3478".parse().unwrap(), &garbage());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(recorder.packets(), reached_before, "garbage reached coturn");
    assert_eq!(
        forward_status(gw, "turn")["guard_dropped"]["packets"]
            .as_u64()
            .unwrap()
            - dropped_before,
        garbage().len() as u64
    );

    // Flow caps and idle expiry, with a short idle timeout (a TURN client
    // pausing longer than it would lose its allocation: a new flow has a
    // new source port). The reload restarts the relays on the same sockets.
    camgate.write_config(&appliance_config(
        &state,
        &format!(
            "{}forwards = false\n{}",
            AGENT_SITE,
            USERSPACE.replace("[forwarding]\n", "[forwarding]\nidle_timeout = \"2s\"\n")
        ),
    ));
    let ready = camgate.reload();
    assert!(ready.contains("generation 3"), "{ready}\n{}", camgate.stderr());
    let before = forward_status(gw, "turn")["flows"].clone();
    assert_eq!(before["active"], 0, "{before}");
    wan.run(|| {
        let sockets: Vec<UdpSocket> = (0..10).map(|_| UdpSocket::bind("0.0.0.0:0").unwrap()).collect();
        for socket in &sockets {
            socket.send_to(&stun_message(1, &[]), "10.78.2.1:3478").unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
    });
    let flows = forward_status(gw, "turn")["flows"].clone();
    assert_eq!(flows["active"], 8, "{flows}");
    let delta = |key: &str| flows[key].as_u64().unwrap() - before[key].as_u64().unwrap();
    assert_eq!(delta("refused"), 2, "{flows}");
    wait_until("idle flows to expire", Duration::from_secs(10), || {
        (forward_status(gw, "turn")["flows"]["active"] == 0).then_some(())
    });
    let after = forward_status(gw, "turn")["flows"].clone();
    assert_eq!(
        after["expired"].as_u64().unwrap() - before["expired"].as_u64().unwrap(),
        8
    );

    // A clean stop removes camgate's table.
    camgate.peer.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(camgate.peer.wait_exit(Duration::from_secs(30)).success());
    let tables = gw.command("nft").args(["list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("camgate"));
}

/// The home LAN: a bridge in `home` (the home router) with camgate and the
/// DVR on it; `home` port-forwards 3478 and the relay range to camgate.
fn lan_host_topology() -> Topology {
    let net = Topology::builder("fwl")
        .link(("home", "10.78.3.1/24"), ("wan", "10.78.3.2/24"))
        .link(("home", "10.78.5.1/30"), ("gw", "10.78.4.3/24"))
        .link(("home", "10.78.5.5/30"), ("dvr", "10.78.4.2/24"))
        .route("gw", "default", "10.78.4.1")
        .route("dvr", "default", "10.78.4.1")
        .sysctl("home", "net.ipv4.ip_forward", "1")
        .build();
    let home = net.ns("home");
    // Bridge home's two LAN ends; the bridge takes the LAN address.
    home.ip(&["link", "add", "br0", "type", "bridge"]);
    for (port, address) in [("v1-gw", "10.78.5.1/30"), ("v2-dvr", "10.78.5.5/30")] {
        home.ip(&["addr", "del", address, "dev", port]);
        home.ip(&["link", "set", port, "master", "br0"]);
    }
    home.ip(&["addr", "add", "10.78.4.1/24", "dev", "br0"]);
    home.ip(&["link", "set", "br0", "up"]);
    let rules = "table ip home { \
        chain pre { type nat hook prerouting priority dstnat; \
          iifname \"v0-wan\" udp dport { 3478, 50000-50010 } dnat to 10.78.4.3\n}\n \
        chain post { type nat hook postrouting priority srcnat; oifname \"v0-wan\" masquerade\n}\n}\n";
    nft_load(home, rules);
    net
}

const LAN_FORWARDS: &str = "[[forward]]\nname = \"turn\"\nprotocol = \"udp\"\nports = 3478\n\
    target = \"10.78.4.2\"\nstun = true\nMASQ\n\
    [[forward]]\nname = \"relay\"\nprotocol = \"udp\"\nports = \"50000-50010\"\n\
    target = \"10.78.4.2\"\nMASQ\n";

#[test]
fn camgate_as_a_host_on_the_home_lan() {
    let net = lan_host_topology();
    let (gw, wan, dvr) = (net.ns("gw"), net.ns("wan"), net.ns("dvr"));
    let dir = tempfile::tempdir().unwrap();
    let _coturn = coturn(dvr, dir.path(), "10.78.4.2", "10.78.3.1");
    let _dvr_peer = echo_peer(dvr, "10.78.4.2", dir.path());
    let state = dir.path().join("state");
    let mut camgate = Camgate::start(Launch {
        netns: Some(gw),
        config: Some(appliance_config(&state, &LAN_FORWARDS.replace("MASQ\n", ""))),
        env: Vec::new(),
        appliance_setup: false,
    });

    // auto: the DVR is on the LAN of camgate's default route, so it would
    // answer through the home router: camgate masquerades.
    assert_eq!(forward_status(gw, "turn")["masquerade"], true);
    assert!(reflexive_address(wan, "10.78.3.1").starts_with("10.78.4.3:"));
    uclient_relays(wan, "10.78.3.1", "10.78.4.2");
    // A peer that sends first is dropped by coturn: its permission is for
    // the peer's address, and masquerading replaced it with camgate's.
    assert!(!peer_sends_first(wan, "10.78.3.1", wan, "10.78.3.2", "10.78.3.1"));

    // With a policy route on the DVR (answers from its TURN ports go back
    // through camgate) and no masquerade, the client's address survives.
    dvr.ip(&["rule", "add", "ipproto", "udp", "sport", "3478", "table", "100"]);
    dvr.ip(&[
        "rule",
        "add",
        "ipproto",
        "udp",
        "sport",
        "50000-50010",
        "table",
        "100",
    ]);
    dvr.ip(&["route", "add", "default", "via", "10.78.4.3", "table", "100"]);
    camgate.write_config(&appliance_config(
        &state,
        &LAN_FORWARDS.replace("MASQ", "masquerade = \"never\""),
    ));
    let ready = camgate.reload();
    assert!(ready.contains("generation 2"), "{ready}\n{}", camgate.stderr());
    assert_eq!(forward_status(gw, "turn")["masquerade"], false);
    assert!(reflexive_address(wan, "10.78.3.1").starts_with("10.78.3.2:"));
    uclient_relays(wan, "10.78.3.1", "10.78.4.2");
    assert!(peer_sends_first(wan, "10.78.3.1", wan, "10.78.3.2", "10.78.3.1"));
}

/// Bad forwards are refused at load with file, line and key.
#[test]
fn a_forward_that_cannot_work_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("camgate.toml");
    for (body, expected) in [
        (
            "[[forward]]\nname = \"x\"\nprotocol = \"udp\"\nports = \"50100-50000\"\ntarget = \"10.0.0.2\"\n",
            "forward[0].ports",
        ),
        (
            "[[forward]]\nname = \"x\"\nprotocol = \"tcp\"\nports = 3478\ntarget = \"10.0.0.2\"\nstun = true\n",
            "forward[0].stun",
        ),
        (
            "[daemon]\nmode = \"dev\"\n[[forward]]\nname = \"x\"\nprotocol = \"udp\"\nports = 3478\n\
             target = \"10.0.0.2\"\nmode = \"kernel\"\n",
            "forward[0].mode",
        ),
    ] {
        std::fs::write(&path, body).unwrap();
        let output = Command::new(camgate_tests::camgate::binary())
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(65), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(stderr.contains("camgate.toml:"), "{stderr}");
    }
}
