//! nftables in test namespaces: loading rules, and recorders that count
//! what arrives (a peer-side capture without tcpdump).

use crate::netns::Netns;

/// `nft -f -` in `ns`; panics with nft's error and the rules.
pub fn load(ns: &Netns, rules: &str) {
    let mut command = ns.command("nft");
    command
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("nft (Debian package nftables)");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), rules.as_bytes())
        .expect("write rules");
    let output = child.wait_with_output().expect("nft");
    assert!(
        output.status.success(),
        "nft: {}\n{rules}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `nft ARGS` in `ns`: what it prints.
pub fn output(ns: &Netns, args: &[&str]) -> String {
    let output = ns
        .command("nft")
        .args(args)
        .output()
        .expect("nft (Debian package nftables)");
    String::from_utf8(output.stdout).expect("nft prints UTF-8")
}

/// Counts packets entering a namespace that match any of its expressions,
/// before any other table sees them.
#[derive(Debug)]
pub struct Recorder<'a>(&'a Netns);

impl<'a> Recorder<'a> {
    /// `matches`: nft expressions, e.g. `"udp dport 3478"`.
    pub fn install(ns: &'a Netns, matches: &[&str]) -> Self {
        let rules: String = matches.iter().map(|m| format!("{m} counter\n")).collect();
        load(
            ns,
            &format!(
                "table inet recorder {{ chain pre {{ type filter hook prerouting priority -400;\n{rules}}}\n}}\n"
            ),
        );
        Self(ns)
    }

    /// Packets counted so far, all expressions together.
    pub fn packets(&self) -> u64 {
        let json: serde_json::Value =
            serde_json::from_str(&output(self.0, &["-j", "list", "table", "inet", "recorder"]))
                .expect("nft -j output");
        json["nftables"]
            .as_array()
            .expect("nftables array")
            .iter()
            .filter_map(|o| o["rule"]["expr"].as_array())
            .flatten()
            .filter_map(|e| e["counter"]["packets"].as_u64())
            .sum()
    }
}
