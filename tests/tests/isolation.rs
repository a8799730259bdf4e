//! Camera isolation on camgate's second NIC, with real traffic between
//! namespaces:
//!
//! ```text
//!  wan 203.0.113.2 ── home router (.1 | 192.168.77.254) ── lan switch ── camgate uplink 192.168.77.2
//!                                                            ├── dvr   192.168.77.50
//!                                                            └── other 192.168.77.60
//!  camgate cameras NIC (10.77.0.1, set by camgate) ── camera switch ── cam 10.77.0.11
//!                                                                   └── bad 10.77.0.66
//! ```
//!
//! Every LAN host, the home router and the WAN host route the camera subnet
//! to camgate, so only camgate's policy keeps them apart. Recorders (nft
//! counters in the targets' namespaces) prove what arrives.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use camgate_tests::camgate::{Camgate, Launch};
use camgate_tests::lab::{basic, hash_password};
use camgate_tests::netns::{Netns, Topology, switch_port};
use camgate_tests::nft::{Recorder, output as nft_output};
use camgate_tests::process::{Peer, require_binary, wait_until};
use camgate_tests::tls::{TlsClient, get_request_with};

const PROBE_TCP: [u16; 5] = [80, 443, 23, 2323, 7547];
const PROBE_UDP: [u16; 4] = [53, 123, 32100, 32108];

fn topology() -> Topology {
    Topology::builder("iso")
        .switch(
            "lansw",
            &[
                ("gw", "192.168.77.2/24"),
                ("dvr", "192.168.77.50/24"),
                ("other", "192.168.77.60/24"),
                ("home", "192.168.77.254/24"),
            ],
        )
        // camgate replaces this placeholder with `cameras.address`.
        .switch(
            "camsw",
            &[
                ("gw", "10.77.0.254/24"),
                ("cam", "10.77.0.11/24"),
                ("bad", "10.77.0.66/24"),
            ],
        )
        .link(("home", "203.0.113.1/24"), ("wan", "203.0.113.2/24"))
        .route("wan", "default", "203.0.113.1")
        .route("gw", "default", "192.168.77.254")
        .route("home", "10.77.0.0/24", "192.168.77.2")
        .route("dvr", "default", "192.168.77.254")
        .route("dvr", "10.77.0.0/24", "192.168.77.2")
        .route("other", "default", "192.168.77.254")
        .route("other", "10.77.0.0/24", "192.168.77.2")
        .route("cam", "default", "10.77.0.1")
        .route("bad", "default", "10.77.0.1")
        .sysctl("home", "net.ipv4.ip_forward", "1")
        .build()
}

/// A DVR site whose API needs a user (alice), with bans after 3 failures;
/// and an admin (root) for the admin API.
fn site() -> String {
    let hash = hash_password("correct horse");
    let root = hash_password(ADMIN_PASSWORD);
    format!(
        "[[site]]\nname = \"agentdvr\"\nhosts = [\"{HOST}\"]\nupstream = \"http://192.168.77.50:8090\"\n\
         profile = \"agentdvr\"\nforwards = false\n[[user]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n\
         [[user]]\nname = \"root\"\npassword_hash = \"{root}\"\nrole = \"admin\"\n\
         [auth]\nban_after_failures = 3\n"
    )
}

const ADMIN_PASSWORD: &str = "admin pass";

/// The MAC of `ns`'s port on the camera switch.
fn camera_nic_mac(ns: &Netns) -> String {
    let link: serde_json::Value = serde_json::from_slice(
        &ns.ip(&["-j", "link", "show", "dev", &switch_port("camsw")])
            .stdout,
    )
    .unwrap();
    link[0]["address"].as_str().unwrap().to_owned()
}

/// `GET /api/cameras` as the admin, on camgate's own loopback.
fn cameras_report(gw: &Netns) -> serde_json::Value {
    let admin = basic("root", ADMIN_PASSWORD);
    let authorization = admin.trim_start_matches("Authorization: ").trim_end();
    let reply = camgate_tests::http::request(
        gw,
        "GET",
        "http://127.0.0.1:8080/api/cameras",
        &[("Authorization", authorization)],
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

const HOST: &str = "agentdvr.test";

fn config(state: &Path, dvr_hosts: &str, site: &str) -> String {
    format!(
        "[daemon]\nmode = \"appliance\"\nstate_dir = \"{}\"\nlog = \"info,camgate=debug\"\n\
         [admin]\nlisten = [\"0.0.0.0:8080\"]\n{site}\
         [network]\nuplink = \"{uplink}\"\n\
         [cameras]\ninterface = \"{cameras}\"\naddress = \"10.77.0.1/24\"\ndvr_hosts = [{dvr_hosts}]\nports = [554, 80]\n",
        state.display(),
        uplink = switch_port("lansw"),
        cameras = switch_port("camsw"),
    )
}

/// A camera's RTSP port: tells each client the address it sees, then echoes
/// lines.
fn camera_service(cam: &Netns, address: &str) {
    let listener = cam.run(|| TcpListener::bind(address).unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let peer = stream.peer_addr().unwrap().ip();
                let mut writer = stream.try_clone().unwrap();
                writeln!(writer, "peer {peer}").unwrap();
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if writeln!(writer, "{line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn connect(ns: &Netns, target: &str) -> std::io::Result<TcpStream> {
    let target: SocketAddr = target.parse().unwrap();
    ns.run(|| TcpStream::connect_timeout(&target, Duration::from_millis(700)))
}

fn read_line(stream: &TcpStream) -> std::io::Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

fn ping(ns: &Netns, target: &str) -> bool {
    ns.command(require_binary("ping", "iputils-ping"))
        .args(["-c", "1", "-W", "1", target])
        .output()
        .unwrap()
        .status
        .success()
}

fn counter(gw: &Netns, name: &str) -> u64 {
    let json: serde_json::Value = serde_json::from_str(&nft_output(
        gw,
        &["-j", "list", "counter", "inet", "camgate", name],
    ))
    .unwrap();
    json["nftables"][1]["counter"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name}: {json}"))
}

fn assert_no_table(ns: &Netns) {
    let tables = nft_output(ns, &["list", "tables"]);
    assert!(!tables.contains("camgate"), "camgate's table is there: {tables}");
}

/// Everything a hostile camera tries: TCP to telnet/web/TR-069 ports, UDP
/// to DNS/NTP/P2P-cloud ports, ping, and IPv6, to each target.
fn attack_from(bad: &Netns, targets: &[&str]) {
    for target in targets {
        for port in PROBE_TCP {
            assert!(
                connect(bad, &format!("{target}:{port}")).is_err(),
                "bad camera reached {target}:{port}"
            );
        }
        let socket = bad.run(|| UdpSocket::bind("10.77.0.66:0").unwrap());
        for port in PROBE_UDP {
            // An error (no route) is fine too: the point is what arrives.
            let _ = socket.send_to(b"\xf1\x00\x00\x00phone home", format!("{target}:{port}"));
        }
        assert!(!ping(bad, target), "bad camera pinged {target}");
    }
}

#[test]
fn cameras_reach_nothing_and_only_dvr_hosts_reach_cameras() {
    let net = topology();
    let (gw, cam, bad) = (net.ns("gw"), net.ns("cam"), net.ns("bad"));
    let (dvr, other, home, wan) = (net.ns("dvr"), net.ns("other"), net.ns("home"), net.ns("wan"));
    // A camera trying IPv6 as well: an address and a route towards camgate.
    bad.ip(&[
        "-6",
        "addr",
        "add",
        "fd77:1::66/64",
        "dev",
        &switch_port("camsw"),
        "nodad",
    ]);
    bad.ip(&["-6", "route", "add", "default", "via", "fd77:1::1"]);
    // As if a rogue router had answered: IPv6 leaves for camgate's MAC.
    let gw_mac = camera_nic_mac(gw);
    bad.ip(&[
        "-6",
        "neigh",
        "add",
        "fd77:1::1",
        "lladdr",
        &gw_mac,
        "dev",
        &switch_port("camsw"),
        "nud",
        "permanent",
    ]);
    let bad_mac = camera_nic_mac(bad);
    gw.ip(&["-4", "addr", "flush", "dev", &switch_port("camsw")]);

    let recorders: Vec<(&str, Recorder<'_>)> = [("dvr", dvr), ("other", other), ("home", home), ("wan", wan)]
        .into_iter()
        .map(|(name, ns)| {
            (
                name,
                Recorder::install(
                    ns,
                    &[
                        "ip saddr 10.77.0.0/24",
                        "ip6 saddr fd77:1::/64",
                        "ip saddr 192.168.77.2 udp dport { 53, 123, 32100, 32108 }",
                    ],
                ),
            )
        })
        .collect();
    camera_service(cam, "10.77.0.11:554");
    camera_service(cam, "10.77.0.11:23");

    let dir = tempfile::tempdir().unwrap();
    let site = site();
    let mut camgate = Camgate::start(Launch {
        netns: Some(gw),
        config: Some(config(&dir.path().join("state"), "\"192.168.77.50\"", &site)),
        env: Vec::new(),
        appliance_setup: false,
    });

    // camgate set up its camera NIC: its address, and no IPv6 on it.
    let addresses = String::from_utf8(
        gw.ip(&["-j", "addr", "show", "dev", &switch_port("camsw")])
            .stdout,
    )
    .unwrap();
    assert!(addresses.contains("\"10.77.0.1\""), "{addresses}");
    assert!(
        !addresses.contains("inet6"),
        "IPv6 stays off on the camera NIC: {addresses}"
    );

    // Cameras may ping camgate (and so the probes below can fail only by policy).
    assert!(ping(cam, "10.77.0.1"), "a camera cannot ping camgate");

    // The DVR opens RTSP on a camera; the camera sees camgate, not the DVR.
    let rtsp = connect(dvr, "10.77.0.11:554").expect("the DVR reaches the camera's RTSP port");
    assert_eq!(read_line(&rtsp).unwrap(), "peer 10.77.0.1");
    writeln!(&rtsp, "OPTIONS").unwrap();
    assert_eq!(read_line(&rtsp).unwrap(), "OPTIONS");
    // Not a camera port, even for the DVR; nothing for anyone else.
    assert!(
        connect(dvr, "10.77.0.11:23").is_err(),
        "DVR reached a port not in cameras.ports"
    );
    assert!(
        connect(other, "10.77.0.11:554").is_err(),
        "a non-DVR LAN host reached a camera"
    );
    assert!(
        connect(wan, "10.77.0.11:554").is_err(),
        "the WAN reached a camera"
    );
    assert!(!ping(other, "10.77.0.11"), "a non-DVR LAN host pinged a camera");
    assert!(counter(gw, "to-cameras-dropped") >= 3);

    // The hostile camera: nothing it sends arrives anywhere (the DVR's
    // recorder has the RTSP answers so far), and camgate counts it by kind.
    let before: Vec<u64> = recorders.iter().map(|(_, recorder)| recorder.packets()).collect();
    attack_from(
        bad,
        &["192.168.77.50", "192.168.77.60", "192.168.77.254", "203.0.113.2"],
    );
    assert!(!ping(bad, "2001:db8:9::2"), "a camera pinged over IPv6");
    assert!(
        connect(bad, "[2001:db8:9::2]:23").is_err(),
        "a camera reached telnet over IPv6"
    );
    // camgate itself: not its admin listener, not its other ports.
    assert!(
        connect(bad, "10.77.0.1:8080").is_err(),
        "a camera reached the admin listener"
    );
    assert!(
        connect(bad, "192.168.77.2:8080").is_err(),
        "a camera reached the admin listener on the uplink address"
    );
    std::thread::sleep(Duration::from_millis(300));
    for ((name, recorder), before) in recorders.iter().zip(before) {
        assert_eq!(recorder.packets(), before, "camera traffic arrived at {name}");
    }
    assert!(
        counter(gw, "camera-mirai") >= 4 * 3,
        "telnet, 2323 and 7547 to 4 hosts"
    );
    assert!(counter(gw, "camera-p2p-cloud") >= 4 * 2);
    assert!(
        counter(gw, "camera-egress") >= 4 * 4,
        "80, 443, DNS, NTP and ping to 4 hosts"
    );
    assert!(counter(gw, "camera-in-dropped") >= 1);
    assert!(counter(gw, "camera-ipv6") >= 2, "IPv6 ping and telnet");

    // The phone-home report: every attempt, by camera (MAC) and destination.
    let report = wait_until(
        "the attempts in the camera report",
        Duration::from_secs(5),
        || {
            let list = cameras_report(gw);
            let entry = list
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["mac"] == bad_mac.as_str())
                .cloned()?;
            (entry["blocked"].as_array()?.len() >= 4 * (PROBE_TCP.len() + PROBE_UDP.len() + 1) + 4)
                .then_some(entry)
        },
    );
    assert_eq!(report["address"], "10.77.0.66", "{report}");
    assert_eq!(report["state"], "seen", "{report}");
    let blocked = report["blocked"].as_array().unwrap();
    let tried = |kind: &str, protocol: &str, address: &str, port: Option<u16>, icmp_type: Option<u8>| {
        blocked.iter().any(|a| {
            a["kind"] == kind
                && a["protocol"] == protocol
                && a["address"] == address
                && a["port"].as_u64() == port.map(u64::from)
                && a["icmp_type"].as_u64() == icmp_type.map(u64::from)
                && a["count"].as_u64() >= Some(1)
                && a["first_seen"].as_u64() <= a["last_seen"].as_u64()
        })
    };
    for target in ["192.168.77.50", "192.168.77.60", "192.168.77.254", "203.0.113.2"] {
        for port in PROBE_TCP {
            let kind = if [23, 2323, 7547].contains(&port) {
                "mirai"
            } else {
                "egress"
            };
            assert!(
                tried(kind, "tcp", target, Some(port), None),
                "tcp {target}:{port} not in {report}"
            );
        }
        for port in PROBE_UDP {
            let kind = if port > 32000 { "p2p-cloud" } else { "egress" };
            assert!(
                tried(kind, "udp", target, Some(port), None),
                "udp {target}:{port} not in {report}"
            );
        }
        assert!(
            tried("egress", "icmp", target, None, Some(8)),
            "ping {target} not in {report}"
        );
    }
    assert!(
        tried("ipv6", "ipv6-icmp", "2001:db8:9::2", None, Some(128)),
        "{report}"
    );
    assert!(tried("mirai", "tcp", "2001:db8:9::2", Some(23), None), "{report}");
    assert!(tried("camgate", "tcp", "10.77.0.1", Some(8080), None), "{report}");
    assert!(
        tried("camgate", "tcp", "192.168.77.2", Some(8080), None),
        "{report}"
    );
    assert!(
        camgate.stderr().contains("it is probably compromised"),
        "the Mirai attempt is logged"
    );

    // The admin listener: the LAN yes, the internet no.
    assert!(
        connect(other, "192.168.77.2:8080").is_ok(),
        "the LAN reaches the admin listener"
    );
    let admin_dropped = counter(gw, "admin-dropped");
    assert!(
        connect(wan, "192.168.77.2:8080").is_err(),
        "the WAN reached the admin listener"
    );
    assert!(counter(gw, "admin-dropped") > admin_dropped);

    // The proxy's brute-force guard bans an internet host that guesses
    // passwords (the LAN needs none for the API): the firewall then drops
    // it before any listener sees it, and the ban holds across a reload. A
    // reload that removes the DVR host cuts its open connection at once.
    let tls = TlsClient::trusting(
        &[&camgate::tls::self_signed_certificate_path(
            &dir.path().join("state"),
        )],
        &[b"http/1.1"],
    );
    let https: SocketAddr = "192.168.77.2:443".parse().unwrap();
    let statuses: Vec<u16> = (0..3)
        .map(|i| {
            let request = get_request_with("/grab.jpg", HOST, &format!("guess{i}"), &basic("alice", "guess"));
            tls.exchange(wan, https, HOST, &request).status()
        })
        .collect();
    assert_eq!(statuses, [401, 401, 429]);
    wait_until("the ban in the firewall", Duration::from_secs(5), || {
        connect(wan, "192.168.77.2:443").is_err().then_some(())
    });
    assert!(
        connect(wan, "192.168.77.2:80").is_err(),
        "a banned host reached the HTTP listener"
    );
    assert!(
        connect(other, "192.168.77.2:443").is_ok(),
        "the ban hit another host"
    );
    assert!(counter(gw, "banned-dropped") >= 2);
    camgate.write_config(&config(&dir.path().join("state"), "", &site));
    let ready = camgate.reload();
    assert!(ready.contains("generation 2"), "{ready}\n{}", camgate.stderr());
    let bans = nft_output(gw, &["list", "set", "inet", "camgate", "banned4"]);
    assert!(
        bans.contains("203.0.113.2"),
        "the ban was lost in the reload: {bans}"
    );
    assert!(
        connect(wan, "192.168.77.2:443").is_err(),
        "a banned host reached camgate after the reload"
    );
    writeln!(&rtsp, "still there?").unwrap();
    assert!(
        read_line(&rtsp).is_err(),
        "a removed DVR host kept its connection to the camera"
    );
    assert!(
        connect(dvr, "10.77.0.11:554").is_err(),
        "a removed DVR host reached a camera"
    );
}

#[test]
fn a_camera_subnet_overlapping_the_uplink_exposes_nothing() {
    let net = Topology::builder("isx")
        .switch("lansw", &[("gw", "10.77.0.2/24"), ("dvr", "10.77.0.50/24")])
        .switch("camsw", &[("gw", "192.0.2.254/24"), ("cam", "192.0.2.11/24")])
        .build();
    let gw = net.ns("gw");
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("camgate.toml");
    std::fs::write(&config_path, config(&dir.path().join("state"), "", "")).unwrap();
    let output = gw
        .command(camgate_tests::camgate::binary())
        .args(["run", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "camgate started: {stderr}");
    assert!(
        stderr.contains("the camera subnet 10.77.0.0/24 overlaps") && stderr.contains("10.77.0.0/24"),
        "{stderr}"
    );
    // Fail closed: no table and no listener were left behind.
    assert_no_table(gw);
    assert!(connect(net.ns("dvr"), "10.77.0.2:8080").is_err());
}

#[test]
fn firewall_show_prints_the_table_nft_would_load() {
    let net = Topology::builder("iss")
        .switch("lansw", &[("gw", "192.168.77.2/24"), ("dvr", "192.168.77.50/24")])
        .switch("camsw", &[("gw", "10.77.0.1/24"), ("cam", "10.77.0.11/24")])
        .host("scratch")
        .build();
    let gw = net.ns("gw");
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("camgate.toml");
    std::fs::write(
        &config_path,
        config(&dir.path().join("state"), "\"192.168.77.50\"", ""),
    )
    .unwrap();
    let show = |args: &[&str]| {
        let output = gw
            .command(camgate_tests::camgate::binary())
            .args(["firewall", "show", "--config"])
            .arg(&config_path)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let text = show(&[]);
    for needle in [
        "table inet camgate",
        "chain camera-in",
        "chain to-cameras",
        "hook ingress device",
        "192.168.77.0/24",
        "banned4",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    // Shown, not applied; and what it shows loads as it is.
    assert_no_table(gw);
    let scratch = net.ns("scratch");
    // The table hooks the camera NIC, which must exist where it loads.
    scratch.ip(&[
        "link",
        "add",
        &switch_port("camsw"),
        "type",
        "veth",
        "peer",
        "name",
        "stand-in",
    ]);
    camgate_tests::nft::load(scratch, &text);
    let loaded = nft_output(scratch, &["list", "chain", "inet", "camgate", "to-cameras"]);
    assert!(loaded.contains("@dvr-hosts"), "{loaded}");
    let json: serde_json::Value = serde_json::from_str(&show(&["--json"])).unwrap();
    assert!(json["nftables"].as_array().unwrap().len() > 20, "{json}");
}

/// A DNS question for `name` (type A), as a camera's resolver sends it.
fn dns_query(name: &str) -> Vec<u8> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(u8::try_from(label.len()).unwrap());
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// Runs udhcpc once on `ns`'s camera NIC; its hook sets the leased address.
fn dhcp(ns: &Netns, dir: &Path, hostname: &str) -> String {
    let hook = dir.join("udhcpc.hook");
    std::fs::write(
        &hook,
        "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/$mask\" dev \"$interface\"\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = switch_port("camsw");
    let output = ns
        .command(require_binary("udhcpc", "udhcpc"))
        .args(["-i", &port, "-f", "-q", "-n", "-t", "5", "-T", "1", "-s"])
        .arg(&hook)
        .args(["-x", &format!("hostname:{hostname}")])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "udhcpc: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let addresses = String::from_utf8(ns.ip(&["-4", "-j", "addr", "show", "dev", &port]).stdout).unwrap();
    let json: serde_json::Value = serde_json::from_str(&addresses).unwrap();
    json[0]["addr_info"][0]["local"]
        .as_str()
        .expect("a leased address")
        .to_owned()
}

#[test]
fn cameras_get_leases_and_time_resolve_nothing_and_show_what_they_asked() {
    let net = Topology::builder("isd")
        .switch("lansw", &[("gw", "192.168.77.2/24")])
        .switch(
            "camsw",
            &[
                ("gw", "10.77.0.254/24"),
                ("cam", "10.77.0.11/24"),
                ("porch", "10.77.0.12/24"),
                // Poses as the porch camera: its fixed address, another MAC.
                ("spoof", "10.77.0.20/24"),
            ],
        )
        .build();
    let (gw, cam, porch, spoof) = (net.ns("gw"), net.ns("cam"), net.ns("porch"), net.ns("spoof"));
    for ns in [gw, cam, porch] {
        ns.ip(&["-4", "addr", "flush", "dev", &switch_port("camsw")]);
    }
    porch.ip(&[
        "link",
        "set",
        "dev",
        &switch_port("camsw"),
        "address",
        "aa:bb:cc:00:11:22",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let root = hash_password("admin pass");
    let extra = format!(
        "[[user]]\nname = \"root\"\npassword_hash = \"{root}\"\nrole = \"admin\"\n\
         [[camera]]\nname = \"porch\"\nmac = \"AA:BB:CC:00:11:22\"\naddress = \"10.77.0.20\"\n"
    );
    let base = config(&dir.path().join("state"), "", "");
    let mut camgate = Camgate::start(Launch {
        netns: Some(gw),
        config: Some(format!("{base}{extra}")),
        env: Vec::new(),
        appliance_setup: false,
    });

    // DHCP: the known camera gets its fixed address, another one from the range.
    assert_eq!(dhcp(porch, dir.path(), "porch-cam"), "10.77.0.20");
    let address = dhcp(cam, dir.path(), "cam1");
    let leased: std::net::Ipv4Addr = address.parse().unwrap();
    assert!(
        leased.octets()[..3] == [10, 77, 0] && leased != "10.77.0.1".parse::<std::net::Ipv4Addr>().unwrap(),
        "{address}"
    );

    // DNS answers every name with NXDOMAIN, from camgate, and asks nobody.
    let socket = cam.run(|| UdpSocket::bind(format!("{address}:0")).unwrap());
    socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    for _ in 0..2 {
        socket
            .send_to(&dns_query("p2p.cloud.example"), "10.77.0.1:53")
            .unwrap();
        let mut answer = [0u8; 512];
        let len = socket.recv(&mut answer).expect("an answer from camgate's DNS");
        assert!(len >= 12 && answer[..2] == [0x12, 0x34]);
        assert_eq!(answer[3] & 0x0f, 3, "NXDOMAIN");
    }

    // The porch camera's address is pinned to its MAC: camgate's neighbour
    // entry is permanent, so the impostor's ARP claims move nothing, and its
    // packets are dropped as they enter, counted and reported under its MAC.
    let port = switch_port("camsw");
    let status = spoof
        .command(require_binary("arping", "iputils-arping"))
        .args([
            "-U",
            "-c",
            "2",
            "-w",
            "2",
            "-I",
            &port,
            "-s",
            "10.77.0.20",
            "10.77.0.20",
        ])
        .output()
        .unwrap()
        .status;
    assert!(status.success() || status.code() == Some(1), "arping: {status}");
    let neighbours: serde_json::Value =
        serde_json::from_slice(&gw.ip(&["-j", "neigh", "show", "10.77.0.20", "dev", &port]).stdout).unwrap();
    assert!(
        neighbours
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["lladdr"] == "aa:bb:cc:00:11:22" && n["state"] == serde_json::json!(["PERMANENT"])),
        "an ARP claim diverted the porch camera's address: {neighbours}"
    );
    let impostor = spoof.run(|| UdpSocket::bind("10.77.0.20:0").unwrap());
    impostor
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    impostor
        .send_to(&dns_query("impostor.example"), "10.77.0.1:53")
        .unwrap();
    assert!(
        impostor.recv(&mut [0u8; 512]).is_err(),
        "camgate answered an impostor"
    );
    assert!(counter(gw, "camera-spoofed") >= 1);
    let porch_dns = porch.run(|| UdpSocket::bind("10.77.0.20:0").unwrap());
    porch_dns.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    porch_dns
        .send_to(&dns_query("porch.example"), "10.77.0.1:53")
        .unwrap();
    assert!(
        porch_dns.recv(&mut [0u8; 512]).is_ok(),
        "the real porch camera got no answer"
    );
    let spoof_mac = camera_nic_mac(spoof);
    let spoofer = wait_until("the impostor in the report", Duration::from_secs(5), || {
        cameras_report(gw)
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["mac"] == spoof_mac.as_str())
            .cloned()
    });
    assert_eq!(spoofer["blocked"][0]["kind"], "spoofed", "{spoofer}");
    assert_eq!(spoofer["blocked"][0]["port"], 53, "{spoofer}");
    assert_eq!(
        spoofer["dns"],
        serde_json::json!([]),
        "the porch camera's names stay with it"
    );

    // NTP from camgate: a server answer (mode 4) with the appliance's time.
    let ntp = cam.run(|| UdpSocket::bind(format!("{address}:0")).unwrap());
    ntp.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let answer = wait_until("chronyd to answer NTP", Duration::from_secs(10), || {
        let mut request = [0u8; 48];
        request[0] = 0x23; // version 4, client
        ntp.send_to(&request, "10.77.0.1:123").ok()?;
        let mut answer = [0u8; 128];
        let len = ntp.recv(&mut answer).ok()?;
        (len >= 48).then_some(answer)
    });
    assert_eq!(answer[0] & 0x07, 4, "server mode");
    assert!((1..16).contains(&answer[1]), "stratum {}", answer[1]);
    let transmit = u64::from(u32::from_be_bytes(answer[40..44].try_into().unwrap())) - 2_208_988_800;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(transmit.abs_diff(now) <= 5, "NTP time {transmit} vs {now}");

    // /api/cameras (admin only): leases, names, and what each camera asked.
    let url = "http://127.0.0.1:8080/api/cameras";
    assert_eq!(camgate_tests::http::get(gw, url).unwrap().status, 401);
    let list = wait_until(
        "the DNS questions in the camera report",
        Duration::from_secs(5),
        || {
            let list = cameras_report(gw);
            let asked = list
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["address"] == address.as_str() && c["dns"][0]["count"] == 2);
            asked.then_some(list)
        },
    );
    let entries = list.as_array().unwrap();
    // Two at the porch camera's address: the camera, and the impostor.
    let porch_entry = entries
        .iter()
        .find(|c| c["mac"] == "aa:bb:cc:00:11:22")
        .expect("porch listed");
    assert_eq!(porch_entry["address"], "10.77.0.20");
    assert_eq!(porch_entry["name"], "porch");
    assert_eq!(porch_entry["state"], "leased");
    assert_eq!(porch_entry["dns"][0]["name"], "porch.example", "{list}");
    let cam_entry = entries.iter().find(|c| c["address"] == address.as_str()).unwrap();
    assert_eq!(cam_entry["name"], "cam1", "{list}");
    assert_eq!(cam_entry["dns"][0]["name"], "p2p.cloud.example");

    // A reload that changes the segment restarts dnsmasq with the new
    // config (after the old one let go of its ports); DNS keeps answering.
    camgate.write_config(&format!(
        "{base}{extra}[[camera]]\nname = \"garage\"\nmac = \"aa:bb:cc:00:11:33\"\naddress = \"10.77.0.21\"\n"
    ));
    let ready = camgate.reload();
    assert!(ready.contains("generation 2"), "{ready}\n{}", camgate.stderr());
    // A deadline, not a target: the old dnsmasq exits first, and a loaded
    // machine (CI) may take seconds for that.
    wait_until("dnsmasq to answer again", Duration::from_secs(30), || {
        socket.send_to(&dns_query("again.example"), "10.77.0.1:53").ok()?;
        let mut answer = [0u8; 512];
        socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        socket.recv(&mut answer).ok().map(|_| ())
    });
    let garage = cameras_report(gw);
    assert!(
        garage
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "garage" && c["state"] == "known"),
        "{garage}"
    );
    let status = camgate_tests::http::get_ok(gw, "http://127.0.0.1:8080/api/status").json();
    let subsystem = status["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "cameras")
        .cloned();
    assert_eq!(
        subsystem.map(|s| s["detail"].clone()),
        Some(serde_json::json!(
            "blocked-attempt log: reading; chronyd: running; dnsmasq: running"
        )),
        "{status}"
    );
}

#[test]
fn without_cap_net_admin_camgate_exposes_nothing() {
    let net = topology();
    let (gw, wan) = (net.ns("gw"), net.ns("wan"));
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("camgate.toml");
    std::fs::write(
        &config_path,
        config(&dir.path().join("state"), "\"192.168.77.50\"", ""),
    )
    .unwrap();
    // Root, but without the capability nftables needs.
    let output = gw
        .command(require_binary("setpriv", "util-linux"))
        .args(["--bounding-set", "-net_admin", "--inh-caps", "-net_admin"])
        .arg(camgate_tests::camgate::binary())
        .args(["run", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(71), "{stderr}");
    assert!(
        stderr.contains("nft") && stderr.contains("Operation not permitted"),
        "{stderr}"
    );
    assert!(!stderr.contains("listener ready"), "something listened: {stderr}");
    assert!(connect(wan, "192.168.77.2:443").is_err());
    assert_no_table(gw);
}

#[test]
fn a_wan_nic_admits_only_camgates_listeners() {
    // camgate as the edge router: its own WAN NIC towards the internet host.
    let net = Topology::builder("isw")
        .link(("gw", "203.0.113.1/24"), ("wan", "203.0.113.2/24"))
        .switch(
            "lansw",
            &[("gw", "192.168.77.2/24"), ("other", "192.168.77.60/24")],
        )
        .route("wan", "default", "203.0.113.1")
        .build();
    let (gw, wan, other) = (net.ns("gw"), net.ns("wan"), net.ns("other"));
    let wan_nic = String::from_utf8(gw.ip(&["-o", "addr", "show", "to", "203.0.113.1"]).stdout).unwrap();
    let wan_nic = wan_nic.split_whitespace().nth(1).unwrap().to_owned();
    // Something else listening on camgate, as sshd would.
    let _ssh = gw.run(|| TcpListener::bind("0.0.0.0:2222").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let _camgate = Camgate::start(Launch {
        netns: Some(gw),
        config: Some(format!(
            "[daemon]\nmode = \"appliance\"\nstate_dir = \"{}\"\n[admin]\nlisten = [\"0.0.0.0:8080\"]\n\
             [network]\nuplink = \"{}\"\nwan = \"{wan_nic}\"\n",
            dir.path().join("state").display(),
            switch_port("lansw"),
        )),
        env: Vec::new(),
        appliance_setup: false,
    });
    assert!(
        connect(wan, "203.0.113.1:443").is_ok(),
        "the proxy is open on the WAN"
    );
    assert!(
        connect(wan, "203.0.113.1:80").is_ok(),
        "so is HTTP (ACME HTTP-01)"
    );
    assert!(ping(wan, "203.0.113.1"), "ping is answered");
    assert!(
        connect(wan, "203.0.113.1:2222").is_err(),
        "another service was reachable from the WAN"
    );
    assert!(
        connect(wan, "203.0.113.1:8080").is_err(),
        "the admin listener was reachable from the WAN"
    );
    assert!(counter(gw, "wan-dropped") >= 2);
    // The LAN still reaches both.
    assert!(connect(other, "192.168.77.2:2222").is_ok());
    assert!(connect(other, "192.168.77.2:8080").is_ok());
}

/// An ONVIF camera simulator (src/bin/onvif-camera.rs) in `ns`.
fn onvif_camera(ns: &Netns, dir: &Path, address: &str, name: &str, extra: &[&str]) -> Peer {
    let mut command = ns.command(env!("CARGO_BIN_EXE_onvif-camera"));
    command
        .args(["--address", address, "--http-port", "8000", "--name", name])
        .args(["--hardware", "SIM-1", "--user", "admin", "--password", "secret"])
        .args(extra);
    let peer = Peer::spawn(&format!("onvif-{name}"), command, dir);
    wait_until("the ONVIF camera to listen", Duration::from_secs(10), || {
        peer.stdout().contains("ready").then_some(())
    });
    peer
}

#[test]
fn onvif_discovery_finds_cameras_and_reads_their_stream_urls() {
    let net = Topology::builder("iso")
        .switch("lansw", &[("gw", "192.168.77.2/24"), ("dvr", "192.168.77.50/24")])
        .switch(
            "camsw",
            &[
                ("gw", "10.77.0.254/24"),
                ("porch", "10.77.0.11/24"),
                ("garage", "10.77.0.12/24"),
                ("bad", "10.77.0.66/24"),
            ],
        )
        .route("dvr", "10.77.0.0/24", "192.168.77.2")
        .build();
    let (gw, dvr) = (net.ns("gw"), net.ns("dvr"));
    gw.ip(&["-4", "addr", "flush", "dev", &switch_port("camsw")]);
    // The MACs their [[camera]] entries pin their addresses to.
    for (camera, mac) in [("porch", "aa:bb:cc:00:11:22"), ("garage", "aa:bb:cc:00:11:33")] {
        net.ns(camera)
            .ip(&["link", "set", "dev", &switch_port("camsw"), "address", mac]);
    }
    let dir = tempfile::tempdir().unwrap();
    // The porch camera's clock is an hour ahead: tokens must follow it.
    let _porch = onvif_camera(
        net.ns("porch"),
        dir.path(),
        "10.77.0.11",
        "Porch Cam",
        &[
            "--clock-offset-secs",
            "3600",
            "--profiles",
            "main:1920x1080:H264,sub:640x360:H265",
        ],
    );
    let garage = onvif_camera(net.ns("garage"), dir.path(), "10.77.0.12", "garage", &[]);
    let bad = onvif_camera(net.ns("bad"), dir.path(), "10.77.0.66", "bad", &["--malformed"]);
    // The malformed camera points at this LAN host: camgate must not go there.
    let lured = dvr.run(|| TcpListener::bind("192.168.77.50:8000").unwrap());
    lured.set_nonblocking(true).unwrap();

    let logins = "[[camera]]\nname = \"porch\"\nmac = \"aa:bb:cc:00:11:22\"\naddress = \"10.77.0.11\"\n\
                  username = \"admin\"\npassword = \"secret\"\n\
                  [[camera]]\nname = \"garage\"\nmac = \"aa:bb:cc:00:11:33\"\naddress = \"10.77.0.12\"\n\
                  username = \"admin\"\npassword = \"wrong\"\n";
    let base = config(&dir.path().join("state"), "", &site());
    let camgate = Camgate::start(Launch {
        netns: Some(gw),
        config: Some(format!("{base}{logins}")),
        env: Vec::new(),
        appliance_setup: false,
    });
    let admin = basic("root", ADMIN_PASSWORD);
    let authorization = admin.trim_start_matches("Authorization: ").trim_end();
    let url = "http://127.0.0.1:8080/api/cameras/discover";
    assert_eq!(
        camgate_tests::http::request(gw, "POST", url, &[]).unwrap().status,
        401,
        "discovery is for admins"
    );
    let reply = camgate_tests::http::request(gw, "POST", url, &[("Authorization", authorization)]).unwrap();
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, camgate.stderr());
    let devices = reply.json();
    let devices = devices.as_array().unwrap();
    let addresses: Vec<&str> = devices.iter().map(|d| d["address"].as_str().unwrap()).collect();
    assert_eq!(addresses, ["10.77.0.11", "10.77.0.12"], "{devices:?}");

    let porch = &devices[0];
    assert_eq!(porch["name"], "Porch Cam");
    assert_eq!(porch["hardware"], "SIM-1");
    assert_eq!(porch["xaddr"], "http://10.77.0.11:8000/onvif/device_service");
    assert!(porch["endpoint"].as_str().unwrap().starts_with("urn:uuid:"));
    assert_eq!(porch["error"], serde_json::Value::Null, "{porch}");
    let profiles: Vec<(String, String, u64, u64, String)> = porch["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["encoding"].as_str().unwrap().to_owned(),
                p["width"].as_u64().unwrap(),
                p["height"].as_u64().unwrap(),
                p["stream_uri"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        profiles,
        [
            (
                "main".into(),
                "H264".into(),
                1920,
                1080,
                "rtsp://10.77.0.11:554/main".into()
            ),
            (
                "sub".into(),
                "H265".into(),
                640,
                360,
                "rtsp://10.77.0.11:554/sub".into()
            ),
        ]
    );
    let garage_entry = &devices[1];
    assert!(garage_entry["profiles"].as_array().unwrap().is_empty());
    let why = garage_entry["error"].as_str().unwrap();
    assert!(why.contains("refused the login"), "{why}");
    assert!(
        garage.stdout().contains("unauthorized (bad digest)"),
        "{}",
        garage.stdout()
    );

    // The malformed answers were all sent, and none was followed.
    wait_until("the malformed answers", Duration::from_secs(2), || {
        bad.stdout().contains("sent malformed 6/6").then_some(())
    });
    assert!(lured.accept().is_err(), "camgate followed an XAddr to the LAN");

    // /api/cameras lists what was found with each camera.
    let list = cameras_report(gw);
    let porch_view = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "porch")
        .expect("porch listed");
    assert_eq!(
        porch_view["onvif"]["profiles"][1]["stream_uri"],
        "rtsp://10.77.0.11:554/sub"
    );
}

/// What `GET /api/cameras/{camera}/snapshot` answered: the image's bytes, or the JSON error's.
struct Snapshot {
    status: u16,
    content_type: String,
    cache_control: String,
    body: Vec<u8>,
}

impl Snapshot {
    fn error(&self) -> String {
        let json: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)));
        json["error"].as_str().expect("an error in words").to_owned()
    }
}

/// A camera's snapshot through camgate's admin API on its own loopback (the body as bytes: the
/// harness's `http::request` reads text).
fn snapshot(gw: &Netns, camera: &str, authorization: Option<&str>) -> Snapshot {
    let url = format!("http://127.0.0.1:8080/api/cameras/{camera}/snapshot");
    gw.run(|| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build()
            .into();
        let mut request = agent.get(&url);
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        let mut response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let header = |name| {
            response.headers().get(name).map_or(String::new(), |v| {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            })
        };
        let (content_type, cache_control) = (header("content-type"), header("cache-control"));
        Snapshot {
            status: response.status().as_u16(),
            content_type,
            cache_control,
            body: response.body_mut().read_to_vec().unwrap(),
        }
    })
}

#[test]
fn onvif_snapshots_come_from_the_discovered_uri_with_the_cameras_login() {
    let net = Topology::builder("iso")
        .switch("lansw", &[("gw", "192.168.77.2/24"), ("dvr", "192.168.77.50/24")])
        .switch(
            "camsw",
            &[
                ("gw", "10.77.0.254/24"),
                ("porch", "10.77.0.11/24"),
                ("garage", "10.77.0.12/24"),
                ("shed", "10.77.0.13/24"),
            ],
        )
        .build();
    let gw = net.ns("gw");
    gw.ip(&["-4", "addr", "flush", "dev", &switch_port("camsw")]);
    let cameras = [
        ("porch", "aa:bb:cc:00:11:22", "10.77.0.11"),
        ("garage", "aa:bb:cc:00:11:33", "10.77.0.12"),
        ("shed", "aa:bb:cc:00:11:44", "10.77.0.13"),
    ];
    for (camera, mac, _) in cameras {
        net.ns(camera)
            .ip(&["link", "set", "dev", &switch_port("camsw"), "address", mac]);
    }
    let dir = tempfile::tempdir().unwrap();
    // The porch camera's snapshot is behind Digest, the shed's behind Basic; the garage camera has
    // none (GetSnapshotUri answers ActionNotSupported, as many cameras do).
    let porch = onvif_camera(net.ns("porch"), dir.path(), "10.77.0.11", "porch", &[]);
    let garage = onvif_camera(
        net.ns("garage"),
        dir.path(),
        "10.77.0.12",
        "garage",
        &["--no-snapshot"],
    );
    let shed = onvif_camera(
        net.ns("shed"),
        dir.path(),
        "10.77.0.13",
        "shed",
        &["--snapshot-auth", "basic"],
    );
    let logins = |porch_password: &str| {
        cameras
            .iter()
            .map(|(name, mac, address)| {
                let password = if *name == "porch" {
                    porch_password
                } else {
                    "secret"
                };
                format!(
                    "[[camera]]\nname = \"{name}\"\nmac = \"{mac}\"\naddress = \"{address}\"\n\
                     username = \"admin\"\npassword = \"{password}\"\n"
                )
            })
            .collect::<String>()
    };
    let base = config(&dir.path().join("state"), "", &site());
    let mut camgate = Camgate::start(Launch {
        netns: Some(gw),
        config: Some(format!("{base}{}", logins("secret"))),
        env: Vec::new(),
        appliance_setup: false,
    });
    let admin = basic("root", ADMIN_PASSWORD);
    let authorization = admin.trim_start_matches("Authorization: ").trim_end();
    let admin = Some(authorization);

    assert_eq!(
        snapshot(gw, "porch", None).status,
        401,
        "snapshots are for admins"
    );
    let before = snapshot(gw, "porch", admin);
    assert_eq!(before.status, 404);
    assert!(
        before.error().contains("run a discovery first"),
        "{}",
        before.error()
    );

    let url = "http://127.0.0.1:8080/api/cameras/discover";
    let reply = camgate_tests::http::request(gw, "POST", url, &[("Authorization", authorization)]).unwrap();
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, camgate.stderr());
    let devices = reply.json();
    let device = |address: &str| {
        devices
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["address"] == address)
            .unwrap_or_else(|| panic!("{address} not found: {devices}"))
            .clone()
    };
    let porch_device = device("10.77.0.11");
    let uris: Vec<&str> = porch_device["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["snapshot_uri"].as_str().unwrap())
        .collect();
    assert_eq!(uris, ["http://10.77.0.11:8000/snapshot.jpg"; 2], "{porch_device}");
    // No snapshots is normal: the profiles and stream URLs are there, and no error.
    let garage_device = device("10.77.0.12");
    assert_eq!(garage_device["error"], serde_json::Value::Null, "{garage_device}");
    let garage_profiles = garage_device["profiles"].as_array().unwrap();
    assert_eq!(garage_profiles.len(), 2, "{garage_device}");
    assert!(
        garage_profiles
            .iter()
            .all(|p| p["snapshot_uri"].is_null() && p["stream_uri"].is_string())
    );
    assert_eq!(
        garage
            .stdout()
            .matches("http GetSnapshotUri not supported")
            .count(),
        1,
        "a camera without snapshots is asked once, not per profile:\n{}",
        garage.stdout()
    );
    // /api/cameras shows the URIs with the profiles.
    let listed = cameras_report(gw);
    let porch_view = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "porch")
        .expect("porch listed");
    assert_eq!(
        porch_view["onvif"]["profiles"][0]["snapshot_uri"],
        "http://10.77.0.11:8000/snapshot.jpg"
    );

    // Digest: asked without a password first, then answered; the simulator's very bytes.
    let image = snapshot(gw, "porch", admin);
    assert_eq!(
        image.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&image.body),
        camgate.stderr()
    );
    assert_eq!(image.content_type, "image/jpeg");
    assert_eq!(image.cache_control, "no-store");
    assert!(image.body.starts_with(&[0xff, 0xd8]) && image.body.ends_with(&[0xff, 0xd9]));
    let sha256 = ring::digest::digest(&ring::digest::SHA256, &image.body);
    let hex: String = sha256.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let sent = format!(
        "http snapshot sent (digest, {} bytes, sha256 {hex})",
        image.body.len()
    );
    let porch_log = porch.stdout();
    assert!(porch_log.contains(&sent), "{sent} not in:\n{porch_log}");
    assert!(
        porch_log.contains("http snapshot unauthorized (no credentials)"),
        "camgate sent a login before the camera asked:\n{porch_log}"
    );
    // Basic, as the shed camera asks.
    let image = snapshot(gw, "shed", admin);
    assert_eq!(image.status, 200, "{}", String::from_utf8_lossy(&image.body));
    assert!(image.body.starts_with(&[0xff, 0xd8]));
    assert!(
        shed.stdout().contains("http snapshot sent (basic, "),
        "{}",
        shed.stdout()
    );

    let none = snapshot(gw, "garage", admin);
    assert_eq!(none.status, 404);
    assert!(none.error().contains("offers no snapshot"), "{}", none.error());
    let unknown = snapshot(gw, "attic", admin);
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.error().contains("no [[camera]] named \"attic\""),
        "{}",
        unknown.error()
    );

    // The porch camera's password in the config goes wrong: the camera refuses it, in words.
    const WRONG: &str = "not-the-porch-password";
    camgate.write_config(&format!("{base}{}", logins(WRONG)));
    camgate.reload();
    let refused = snapshot(gw, "porch", admin);
    assert_eq!(refused.status, 502);
    assert!(refused.content_type.starts_with("application/json"));
    assert!(
        refused.error().contains("the camera refused its login"),
        "{}",
        refused.error()
    );
    assert!(
        porch.stdout().contains("http snapshot unauthorized (bad digest)"),
        "{}",
        porch.stdout()
    );
    let log = camgate.stderr();
    assert!(log.contains("no snapshot: the camera refused its login"), "{log}");
    assert!(
        !log.contains(WRONG) && !log.contains("secret"),
        "a camera password in the log:\n{log}"
    );
}
