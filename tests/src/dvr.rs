//! The `fake-dvr` test upstream (src/bin/fake-dvr.rs) as a peer: started in
//! a namespace, and its request log read back.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::netns::Netns;
use crate::process::{Peer, wait_until};

#[derive(Debug)]
pub struct FakeDvr {
    pub peer: Peer,
    log: PathBuf,
    /// What has been read of the log: each check reads only what is new
    /// (the bypass table checks over a thousand requests one by one).
    read: Mutex<ReadSoFar>,
}

#[derive(Debug, Default)]
struct ReadSoFar {
    offset: u64,
    requests: Vec<Received>,
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
        Self {
            peer,
            log,
            read: Mutex::default(),
        }
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
        self.with_received(|requests| requests.to_vec())
    }

    /// Runs `f` on every request received so far, after reading the lines
    /// the log gained since the last call.
    fn with_received<T>(&self, f: impl FnOnce(&[Received]) -> T) -> T {
        let mut read = self
            .read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut new = String::new();
        if let Ok(mut file) = File::open(&self.log)
            && file.seek(SeekFrom::Start(read.offset)).is_ok()
        {
            #[expect(clippy::verbose_file_reads, reason = "from an offset, not the whole file")]
            let _ = file.read_to_string(&mut new);
        }
        // Only whole lines: fake-dvr may be writing the next one.
        let complete = new.rfind('\n').map_or(0, |end| end + 1);
        read.offset += complete as u64;
        let parsed: Vec<Received> = new[..complete]
            .lines()
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
            .collect();
        read.requests.extend(parsed);
        f(&read.requests)
    }

    /// Requests carrying `X-Test-Id: id`.
    pub fn received_with_id(&self, id: &str) -> Vec<Received> {
        self.with_received(|requests| {
            requests
                .iter()
                .filter(|r| r.header("x-test-id") == Some(id))
                .cloned()
                .collect()
        })
    }
}

/// The fake-dvr binary next to the test binaries.
pub fn binary() -> PathBuf {
    crate::camgate::binary().with_file_name("fake-dvr")
}
