//! Debian's Pebble (a test ACME CA) and pebble-challtestsrv (its DNS) in a
//! namespace. challtestsrv answers only the names the test adds (both
//! default addresses are off, or Pebble's validator would dial `::1`), and
//! its own challenge responders are off, so camgate answers the challenges.
//! Pebble's listener certificate is not shipped: the test makes a CA and a
//! leaf for it with rcgen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::netns::Netns;
use crate::process::{Peer, require_binary, wait_until};

/// Pebble's ACME port and management port.
pub const ACME_PORT: u16 = 14000;
pub const MANAGEMENT_PORT: u16 = 15000;

#[derive(Debug, Clone)]
pub struct PebbleSettings {
    /// Where Pebble's validator connects for HTTP-01 and TLS-ALPN-01.
    pub http_port: u16,
    pub tls_port: u16,
    /// `certificateValidityPeriod`, seconds.
    pub validity: Option<u64>,
    /// `PEBBLE_WFE_NONCEREJECT`; `None` keeps Pebble's default (5 %).
    pub nonce_reject: Option<u32>,
    /// Host → address, answered by challtestsrv.
    pub names: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Pebble {
    address: String,
    settings: PebbleSettings,
    dir: TempDir,
    pebble: Option<Peer>,
    _dns: Peer,
}

impl Pebble {
    /// Starts challtestsrv and Pebble in `netns`, Pebble listening on
    /// `address`.
    pub fn start(netns: &Netns, address: &str, settings: PebbleSettings) -> Self {
        let pebble = require_binary("pebble", "pebble");
        let challtestsrv = require_binary("pebble-challtestsrv", "pebble");
        let dir = tempfile::tempdir().unwrap();
        write_listener_certificate(dir.path(), address);
        let mut dns_command = netns.command(&challtestsrv);
        dns_command.args([
            "-management",
            "127.0.0.1:8055",
            "-dns01",
            "127.0.0.1:8053",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-defaultIPv4",
            "",
            "-defaultIPv6",
            "",
        ]);
        let dns = Peer::spawn("pebble-challtestsrv", dns_command, dir.path());
        for (host, ip) in &settings.names {
            let body = format!("{{\"host\":\"{host}\",\"addresses\":[\"{ip}\"]}}");
            wait_until("challtestsrv to take a name", Duration::from_secs(10), || {
                let status = netns
                    .command("curl")
                    .args([
                        "-sf",
                        "-o",
                        "/dev/null",
                        "-d",
                        &body,
                        "http://127.0.0.1:8055/add-a",
                    ])
                    .status()
                    .unwrap();
                status.success().then_some(())
            });
        }
        let mut this = Self {
            address: address.to_owned(),
            settings,
            dir,
            pebble: None,
            _dns: dns,
        };
        this.start_pebble(netns, &pebble);
        this
    }

    fn start_pebble(&mut self, netns: &Netns, binary: &Path) {
        let dir = self.dir.path();
        let validity = self.settings.validity.map_or_else(String::new, |seconds| {
            format!(",\"certificateValidityPeriod\":{seconds}")
        });
        let config = format!(
            "{{\"pebble\":{{\"listenAddress\":\"{a}:{ACME_PORT}\",\"managementListenAddress\":\"{a}:{MANAGEMENT_PORT}\",\
             \"certificate\":\"{d}/listener.pem\",\"privateKey\":\"{d}/listener.key\",\"httpPort\":{h},\"tlsPort\":{t},\
             \"ocspResponderURL\":\"\",\"externalAccountBindingRequired\":false{validity}}}}}",
            a = self.address,
            d = dir.display(),
            h = self.settings.http_port,
            t = self.settings.tls_port,
        );
        std::fs::write(dir.join("pebble.json"), config).unwrap();
        let mut command = netns.command(binary);
        command
            .args(["-config"])
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", "127.0.0.1:8053", "-strict=false"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0");
        if let Some(percent) = self.settings.nonce_reject {
            command.env("PEBBLE_WFE_NONCEREJECT", percent.to_string());
        }
        let peer = Peer::spawn("pebble", command, dir);
        self.pebble = Some(peer);
        wait_until("pebble to listen", Duration::from_secs(20), || {
            self.curl(netns, &format!("https://{}:{ACME_PORT}/dir", self.address))
                .map(|_| ())
        });
    }

    /// Stops Pebble (the CA goes down; its DNS stays).
    pub fn stop(&mut self) {
        self.pebble = None;
    }

    /// Starts Pebble again: a new root and no memory of accounts or orders.
    pub fn restart(&mut self, netns: &Netns) {
        self.stop();
        let binary = require_binary("pebble", "pebble");
        self.start_pebble(netns, &binary);
    }

    pub fn directory(&self) -> String {
        format!("https://{}:{ACME_PORT}/dir", self.address)
    }

    /// The CA of Pebble's own HTTPS certificate (camgate's `directory_ca`).
    pub fn listener_ca(&self) -> PathBuf {
        self.dir.path().join("listener-ca.pem")
    }

    /// Pebble's issuing root (new on every start), written to a file.
    pub fn root(&self, netns: &Netns) -> PathBuf {
        let pem = self
            .curl(
                netns,
                &format!("https://{}:{MANAGEMENT_PORT}/roots/0", self.address),
            )
            .expect("pebble's root");
        let path = self.dir.path().join("root.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// Pebble's log.
    pub fn log(&self) -> String {
        self.pebble
            .as_ref()
            .map(|peer| format!("{}{}", peer.stdout(), peer.stderr()))
            .unwrap_or_default()
    }

    fn curl(&self, netns: &Netns, url: &str) -> Option<String> {
        let output = netns
            .command("curl")
            .args(["-sf", "--max-time", "5", "--cacert"])
            .arg(self.listener_ca())
            .arg(url)
            .output()
            .unwrap();
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// A CA and a leaf for `address` and localhost: what Pebble serves its API with.
fn write_listener_certificate(dir: &Path, address: &str) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test listener CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_certificate = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![address.to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("listener-ca.pem"), ca_certificate.pem()).unwrap();
    std::fs::write(dir.join("listener.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("listener.key"), key.serialize_pem()).unwrap();
}
