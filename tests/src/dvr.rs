//! The `fake-dvr` test upstream (src/bin/fake-dvr.rs) as a peer: started in
//! a namespace, and its request log read back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::netns::Netns;
use crate::process::{Peer, wait_until};

#[derive(Debug)]
pub struct FakeDvr {
    pub peer: Peer,
    log: PathBuf,
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub peer: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

impl FakeDvr {
    /// Starts fake-dvr in `netns` with `args` (listeners) and waits until
    /// every listener is bound.
    pub fn start(netns: &Netns, args: &[&str], dir: &Path) -> Self {
        let log = dir.join("fake-dvr.jsonl");
        let mut command: Command = netns.command(binary());
        command.args(args).arg("--log").arg(&log);
        let listeners = args.iter().filter(|a| a.ends_with("listen")).count();
        let peer = Peer::spawn("fake-dvr", command, dir);
        wait_until("fake-dvr to listen", Duration::from_secs(10), || {
            (peer.stdout().matches("listening ").count() >= listeners).then_some(())
        });
        Self { peer, log }
    }

    /// The `X-Test-Id` of every request received so far, in order.
    pub fn received_ids(&self) -> Vec<Option<String>> {
        self.received()
            .into_iter()
            .map(|r| r.header("x-test-id").map(str::to_owned))
            .collect()
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|entry| entry.get("target").is_some())
            .map(|entry| Received {
                method: entry["method"].as_str().unwrap_or_default().to_owned(),
                target: entry["target"].as_str().unwrap_or_default().to_owned(),
                peer: entry["peer"].as_str().unwrap_or_default().to_owned(),
                headers: entry["headers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|pair| {
                        (
                            pair[0].as_str().unwrap_or_default().to_owned(),
                            pair[1].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect(),
            })
            .collect()
    }

    /// Requests carrying `X-Test-Id: id`.
    pub fn received_with_id(&self, id: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.header("x-test-id") == Some(id))
            .collect()
    }
}

/// The fake-dvr binary next to the test binaries.
pub fn binary() -> PathBuf {
    crate::camgate::binary().with_file_name("fake-dvr")
}
