//! The proxy lab: camgate in `gw` between a WAN namespace and a LAN
//! namespace, with `fake-dvr` (an Agent-DVR-like upstream that records every
//! request it receives) on the LAN, and the credentials a user would make
//! with camgate's own commands.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use crate::camgate::{Camgate, Launch, explain_json};
use crate::dvr::FakeDvr;
use crate::netns::Topology;
use crate::tls::{RawResponse, TlsClient, get_request};

pub const GW_WAN: &str = "203.0.113.1";
pub const WAN: &str = "203.0.113.2";
pub const LAN: &str = "192.168.50.2";
pub const DVR: &str = "http://192.168.50.2:8090";

pub const PROFILES: [&str; 10] = [
    "agentdvr",
    "blueiris",
    "frigate",
    "generic",
    "go2rtc",
    "moonfire",
    "motion",
    "motioneye",
    "shinobi",
    "zoneminder",
];

/// camgate between WAN and LAN, fake-dvr on the LAN (ports 8090 and 8081:
/// motion's profile sends streams to a second port), one site per profile
/// named `<profile>.test`, plus `extra` config. Fields drop in order:
/// camgate, then the DVR, then the namespaces.
#[derive(Debug)]
pub struct Lab {
    pub camgate: Camgate,
    pub dvr: FakeDvr,
    pub net: Topology,
    pub client: TlsClient,
    _dir: TempDir,
}

impl Lab {
    pub fn start(tag: &str, extra: &str) -> Self {
        Self::start_with_dvr_args(tag, extra, &[])
    }

    pub fn start_with_dvr_args(tag: &str, extra: &str, dvr_args: &[&str]) -> Self {
        Self::start_after(tag, dvr_args, |_| ((), extra.to_owned())).0
    }

    /// Like [`Lab::start_with_dvr_args`], with peers that must run before
    /// camgate starts (a CA): `prepare` gets the namespaces and returns
    /// them with the extra config.
    pub fn start_after<T>(
        tag: &str,
        dvr_args: &[&str],
        prepare: impl FnOnce(&Topology) -> (T, String),
    ) -> (Self, T) {
        let net = Topology::builder(tag)
            .link(("gw", "203.0.113.1/24"), ("wan", "203.0.113.2/24"))
            .link(("gw", "192.168.50.1/24"), ("lan", "192.168.50.2/24"))
            .build();
        let (peers, extra) = prepare(&net);
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--listen", "192.168.50.2:8090", "--listen", "192.168.50.2:8081"];
        args.extend_from_slice(dvr_args);
        let dvr = FakeDvr::start(net.ns("lan"), &args, dir.path());
        let sites: String = PROFILES
            .iter()
            .map(|p| format!("[[site]]\nname = \"{p}\"\nhosts = [\"{p}.test\"]\nupstream = \"{DVR}\"\nprofile = \"{p}\"\n"))
            .collect();
        let config = format!(
            "[daemon]\nmode = \"dev\"\nstate_dir = \"state\"\nlog = \"info\"\n[admin]\nlisten = [\"127.0.0.1:8080\"]\n\
             [proxy]\nhttps_listen = [\"0.0.0.0:443\"]\nhttp_listen = [\"0.0.0.0:80\"]\n{sites}{extra}"
        );
        let camgate = Camgate::start(Launch {
            netns: Some(net.ns("gw")),
            config: Some(config),
            env: Vec::new(),
            appliance_setup: false,
        });
        let client = TlsClient::trusting(&[&camgate.self_signed_certificate()], &[b"http/1.1"]);
        let lab = Self {
            camgate,
            dvr,
            net,
            client,
            _dir: dir,
        };
        (lab, peers)
    }

    /// `/api/status` from the admin listener.
    pub fn status(&self) -> serde_json::Value {
        crate::http::get_ok(self.net.ns("gw"), "http://127.0.0.1:8080/api/status").json()
    }

    /// One raw request on a new TLS connection from `from` ("wan"/"lan"),
    /// with SNI `sni`.
    pub fn raw(&self, from: &str, sni: &str, request: &[u8]) -> RawResponse {
        // The LAN reaches camgate on its LAN address.
        let address = if from == "lan" {
            SocketAddr::new("192.168.50.1".parse().unwrap(), 443)
        } else {
            wan_https()
        };
        self.client.exchange(self.net.ns(from), address, sni, request)
    }

    pub fn get(&self, from: &str, host: &str, target: &str, id: &str) -> RawResponse {
        self.raw(from, host, &get_request(target, host, id))
    }

    pub fn explain(&self, site: &str, from: &str, request: &str) -> serde_json::Value {
        explain_json(&self.camgate.config_path, site, from, request)
    }
}

/// camgate's HTTPS listener as the WAN sees it.
pub fn wan_https() -> SocketAddr {
    SocketAddr::new(GW_WAN.parse().unwrap(), 443)
}

/// `camgate hash-password`, run as a user would.
pub fn hash_password(password: &str) -> String {
    let mut hash = Command::new(crate::camgate::binary())
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    hash.stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let output = hash.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// User `alice` (password `correct horse`) and token `ha` for the
/// agentdvr site, made with `camgate hash-password` and `camgate token
/// create`: the config lines and the token's secret.
pub fn credentials_config(dir: &Path) -> (String, String) {
    let phc = hash_password("correct horse");
    let users = format!("[[user]]\nname = \"alice\"\npassword_hash = \"{phc}\"\n");
    let path = dir.join("token.toml");
    let site = format!(
        "[daemon]\nmode = \"dev\"\n[[site]]\nname = \"agentdvr\"\nhosts = [\"agentdvr.test\"]\nupstream = \"{DVR}\"\nprofile = \"agentdvr\"\n"
    );
    std::fs::write(&path, &site).unwrap();
    let secret = token_create(&path, "ha", "agentdvr", "/grab.jpg?oids=1");
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(!written.contains(&secret), "the config keeps only the digest");
    let token_block = written.strip_prefix(&site).unwrap().to_owned();
    (format!("{users}{token_block}"), secret)
}

/// `camgate token create NAME --site SITE --scope SCOPE --config PATH`: the
/// secret it prints (the config gets only the digest).
pub fn token_create(config: &Path, name: &str, site: &str, scope: &str) -> String {
    let created = Command::new(crate::camgate::binary())
        .args([
            "token", "create", name, "--site", site, "--scope", scope, "--config",
        ])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    String::from_utf8(created.stdout).unwrap().trim().to_owned()
}

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {encoded}\r\n")
}
