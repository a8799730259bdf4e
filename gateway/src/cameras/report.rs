//! What cameras revealed, per camera and bounded: their leases, the names
//! they tried to resolve (dnsmasq's query log) and what they tried to reach
//! that the firewall blocked (its NFLOG log) — the phone-home report; and
//! what the last ONVIF discovery found, which snapshots are taken from.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwapOption;
use ipnet::Ipv4Net;
use serde::Serialize;

use super::discovery::{self, Device, DiscoveryError};
use super::dnsmasq;
use super::snapshot::{self, Snapshot, SnapshotError};
use crate::config::network::KnownCamera;
use crate::firewall::blocked::{Attempt, AttemptSink, Kind};

/// Per camera: distinct names and distinct blocked destinations kept, and
/// cameras tracked. A camera spraying random names or addresses cannot
/// grow memory without bound; what no longer fits is only counted.
const MAX_NAMES_PER_CAMERA: usize = 256;
const MAX_DESTINATIONS_PER_CAMERA: usize = 256;
const MAX_CAMERAS: usize = 1024;

/// The `[cameras]` segment as configured.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) lease_file: PathBuf,
    /// camgate's address on the segment.
    pub(super) address: Ipv4Net,
    pub(super) known: Vec<KnownCamera>,
}

#[derive(Debug, Default)]
pub struct CameraReport {
    segment: ArcSwapOption<Segment>,
    dns: Mutex<HashMap<Ipv4Addr, HashMap<String, NameCount>>>,
    /// By MAC, or by source address for a packet without one.
    blocked: Mutex<HashMap<String, Blocked>>,
    /// Per program or reader: running, restarting (why), not running.
    states: Mutex<BTreeMap<&'static str, String>>,
    /// The last ONVIF discovery's devices.
    onvif: Mutex<Vec<Device>>,
    /// One discovery at a time.
    discovering: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("no [cameras] segment is configured")]
    NoSegment,
    #[error(transparent)]
    Probe(#[from] DiscoveryError),
}

#[derive(Debug, Clone, Serialize)]
pub struct NameCount {
    pub name: String,
    pub count: u64,
    pub first_seen: u64,
    pub last_seen: u64,
}

/// One destination a camera tried, however often.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Destination {
    pub kind: Kind,
    pub protocol: String,
    pub address: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptCount {
    #[serde(flatten)]
    pub destination: Destination,
    pub count: u64,
    pub first_seen: u64,
    pub last_seen: u64,
}

#[derive(Debug, Default)]
struct Blocked {
    destinations: HashMap<Destination, AttemptCount>,
    /// Attempts to destinations beyond the cap.
    unlisted: u64,
    /// The camera's last IPv4 source address.
    address: Option<Ipv4Addr>,
}

#[derive(Debug, Serialize)]
pub struct CameraView {
    /// From `[[camera]]`, else the name the camera gave in DHCP.
    pub name: Option<String>,
    pub mac: Option<String>,
    /// None for a camera seen only over IPv6.
    pub address: Option<Ipv4Addr>,
    /// `leased` (holds a lease now), `known` (a `[[camera]]` without a
    /// lease), `seen` (asked DNS or sent packets without a lease on record).
    pub state: &'static str,
    /// Unix seconds; 0 for an infinite lease.
    pub lease_expires: Option<u64>,
    /// Names it tried to resolve (all answered NXDOMAIN), most asked first.
    pub dns: Vec<NameCount>,
    /// What it tried to reach and the firewall dropped, most tried first.
    pub blocked: Vec<AttemptCount>,
    /// Blocked attempts to destinations beyond the listed ones.
    pub blocked_unlisted: u64,
    /// What it said about itself in the last ONVIF discovery.
    pub onvif: Option<Device>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CameraReport {
    pub(super) fn set_segment(&self, segment: Option<Segment>) {
        self.segment.store(segment.map(std::sync::Arc::new));
    }

    pub(super) fn set_state(&self, key: &'static str, state: &str) {
        lock(&self.states).insert(key, state.to_owned());
    }

    /// `blocked-attempt log: reading; chronyd: running; dnsmasq: running`.
    pub(super) fn state(&self) -> String {
        lock(&self.states)
            .iter()
            .map(|(key, state)| format!("{key}: {state}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Runs an ONVIF discovery on the segment and keeps what it found.
    pub async fn discover(&self) -> Result<Vec<Device>, DiscoverError> {
        let _one_at_a_time = self.discovering.lock().await;
        let segment = self.segment.load_full().ok_or(DiscoverError::NoSegment)?;
        let devices = discovery::discover(segment.address, &segment.known).await?;
        lock(&self.onvif).clone_from(&devices);
        Ok(devices)
    }

    /// A still image from the `[[camera]]` named `name`, from the snapshot
    /// URI the last discovery found for its address, with its login as the
    /// config has it now.
    pub async fn snapshot(&self, name: &str) -> Result<Snapshot, SnapshotError> {
        let segment = self.segment.load_full();
        let camera = segment
            .as_deref()
            .and_then(|segment| segment.known.iter().find(|k| k.name == name))
            .ok_or_else(|| SnapshotError::UnknownCamera(name.to_owned()))?;
        let uri = {
            let onvif = lock(&self.onvif);
            let device = onvif
                .iter()
                .find(|d| d.address == camera.address)
                .ok_or(SnapshotError::NotDiscovered)?;
            snapshot::choose(&device.profiles)
                .map(str::to_owned)
                .ok_or_else(|| SnapshotError::NoSnapshot(device.error.clone()))?
        };
        let result = snapshot::fetch(&uri, camera.address, camera.login.as_ref()).await;
        if let Err(e) = &result {
            tracing::info!(camera = %camera.name, address = %camera.address, "no snapshot: {e}");
        }
        result
    }

    pub(super) fn record_query(&self, query: &dnsmasq::Query, now: u64) {
        let mut dns = lock(&self.dns);
        if !dns.contains_key(&query.from) && dns.len() >= MAX_CAMERAS {
            return;
        }
        let names = dns.entry(query.from).or_default();
        if let Some(entry) = names.get_mut(&query.name) {
            entry.count += 1;
            entry.last_seen = now;
        } else if names.len() < MAX_NAMES_PER_CAMERA {
            names.insert(
                query.name.clone(),
                NameCount {
                    name: query.name.clone(),
                    count: 1,
                    first_seen: now,
                    last_seen: now,
                },
            );
        }
    }

    /// Known cameras, leases, DNS askers and senders of blocked packets,
    /// one entry per camera. Reads the lease file: call off the async runtime.
    pub fn cameras(&self) -> Vec<CameraView> {
        let Some(segment) = self.segment.load_full() else {
            return Vec::new();
        };
        let leases = std::fs::read_to_string(&segment.lease_file)
            .map(|text| dnsmasq::leases(&text))
            .unwrap_or_default();
        let mut views: Vec<CameraView> = Vec::new();
        let seen = |mac: Option<String>, address: Option<Ipv4Addr>| CameraView {
            name: None,
            mac,
            address,
            state: "seen",
            lease_expires: None,
            dns: Vec::new(),
            blocked: Vec::new(),
            blocked_unlisted: 0,
            onvif: None,
        };
        for lease in &leases {
            let known = segment.known.iter().find(|k| k.mac == lease.mac);
            views.push(CameraView {
                name: known.map(|k| k.name.clone()).or_else(|| lease.hostname.clone()),
                lease_expires: Some(lease.expires),
                state: "leased",
                ..seen(Some(lease.mac.clone()), Some(lease.address))
            });
        }
        for known in &segment.known {
            if !views.iter().any(|v| v.mac.as_deref() == Some(known.mac.as_str())) {
                views.push(CameraView {
                    name: Some(known.name.clone()),
                    state: "known",
                    ..seen(Some(known.mac.clone()), Some(known.address))
                });
            }
        }
        let blocked = lock(&self.blocked);
        for (key, entry) in blocked.iter() {
            let mac = key.contains(':').then(|| key.clone());
            let listed = views
                .iter()
                .any(|v| (mac.is_some() && v.mac == mac) || (mac.is_none() && v.address == entry.address));
            if !listed {
                views.push(seen(mac, entry.address));
            }
        }
        let dns = lock(&self.dns);
        let onvif = lock(&self.onvif);
        for address in dns.keys().chain(onvif.iter().map(|d| &d.address)) {
            if !views.iter().any(|v| v.address == Some(*address)) {
                views.push(seen(None, Some(*address)));
            }
        }
        // Names and discoveries go by address, to the first camera holding
        // it: not to a device posing with a known camera's address.
        let mut joined = std::collections::HashSet::new();
        for view in &mut views {
            let address = view.address.filter(|a| joined.insert(*a));
            view.onvif = onvif.iter().find(|d| Some(d.address) == address).cloned();
            if let Some(names) = address.and_then(|a| dns.get(&a)) {
                view.dns = names.values().cloned().collect();
                view.dns
                    .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
            }
            let by_mac = view.mac.as_ref().and_then(|mac| blocked.get(mac));
            let by_address = address.and_then(|a| blocked.get(&a.to_string()));
            for entry in by_mac.into_iter().chain(by_address) {
                view.blocked.extend(entry.destinations.values().cloned());
                view.blocked_unlisted += entry.unlisted;
            }
            view.blocked.sort_by(|a, b| {
                b.count
                    .cmp(&a.count)
                    .then_with(|| a.destination.cmp(&b.destination))
            });
        }
        views.sort_by_key(|v| (v.address, v.mac.clone()));
        views
    }
}

impl AttemptSink for CameraReport {
    fn attempt(&self, attempt: Attempt, now: u64) {
        let key = attempt.mac.clone().unwrap_or_else(|| attempt.source.to_string());
        let mut blocked = lock(&self.blocked);
        if !blocked.contains_key(&key) && blocked.len() >= MAX_CAMERAS {
            return;
        }
        let camera = blocked.entry(key).or_default();
        if let IpAddr::V4(source) = attempt.source
            && !source.is_unspecified()
        {
            camera.address = Some(source);
        }
        let destination = Destination {
            kind: attempt.kind,
            protocol: attempt.protocol,
            address: attempt.destination,
            port: attempt.port,
            icmp_type: attempt.icmp_type,
        };
        if let Some(entry) = camera.destinations.get_mut(&destination) {
            entry.count += 1;
            entry.last_seen = now;
            return;
        }
        if camera.destinations.len() >= MAX_DESTINATIONS_PER_CAMERA {
            camera.unlisted += 1;
            return;
        }
        // Once per camera and destination: the log stays bounded too.
        let mac = attempt.mac.as_deref().unwrap_or("-");
        let target = match destination.port {
            Some(port) => format!("{} {}:{port}", destination.protocol, destination.address),
            None => format!("{} {}", destination.protocol, destination.address),
        };
        if destination.kind == Kind::Mirai {
            tracing::warn!(camera = %attempt.source, %mac, "camera tried a Mirai port ({target}): it is probably compromised");
        } else {
            tracing::info!(camera = %attempt.source, %mac, kind = ?destination.kind, "camera tried {target}: blocked");
        }
        camera.destinations.insert(
            destination.clone(),
            AttemptCount {
                destination,
                count: 1,
                first_seen: now,
                last_seen: now,
            },
        );
    }

    fn log_state(&self, state: &str) {
        self.set_state("blocked-attempt log", state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, from: &str) -> dnsmasq::Query {
        dnsmasq::Query {
            name: name.to_owned(),
            kind: "A".to_owned(),
            from: from.parse().unwrap(),
        }
    }

    fn attempt(mac: Option<&str>, source: &str, destination: &str, port: u16) -> Attempt {
        Attempt {
            mac: mac.map(str::to_owned),
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
            protocol: "tcp".to_owned(),
            port: Some(port),
            icmp_type: None,
            kind: if port == 23 { Kind::Mirai } else { Kind::Egress },
        }
    }

    fn report() -> CameraReport {
        let dir = tempfile::tempdir().unwrap();
        let lease_file = dir.keep().join("leases");
        std::fs::write(
            &lease_file,
            "1795325745 0e:b1:55:48:a0:87 10.77.0.104 cam1 *\n0 aa:bb:cc:00:11:22 10.77.0.20 * *\n",
        )
        .unwrap();
        let report = CameraReport::default();
        report.set_segment(Some(Segment {
            lease_file,
            address: "10.77.0.1/24".parse().unwrap(),
            known: vec![
                KnownCamera {
                    name: "porch".to_owned(),
                    mac: "aa:bb:cc:00:11:22".to_owned(),
                    address: "10.77.0.20".parse().unwrap(),
                    login: None,
                },
                KnownCamera {
                    name: "garage".to_owned(),
                    mac: "aa:bb:cc:00:11:33".to_owned(),
                    address: "10.77.0.21".parse().unwrap(),
                    login: None,
                },
            ],
        }));
        report
    }

    fn summary(views: &[CameraView]) -> Vec<(Option<String>, &str, Option<String>)> {
        views
            .iter()
            .map(|v| (v.address.map(|a| a.to_string()), v.state, v.name.clone()))
            .collect()
    }

    #[test]
    fn report_joins_leases_known_cameras_and_dns_names_within_bounds() {
        let report = report();
        report.record_query(&query("p2p.cloud.example", "10.77.0.104"), 100);
        report.record_query(&query("p2p.cloud.example", "10.77.0.104"), 160);
        report.record_query(&query("ntp.example", "10.77.0.104"), 120);
        report.record_query(&query("x.example", "10.77.0.99"), 130);
        for i in 0..MAX_NAMES_PER_CAMERA + 10 {
            report.record_query(&query(&format!("n{i}.example"), "10.77.0.20"), 140);
        }
        let views = report.cameras();
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            summary(&views),
            [
                (some("10.77.0.20"), "leased", some("porch")),
                (some("10.77.0.21"), "known", some("garage")),
                (some("10.77.0.99"), "seen", None),
                (some("10.77.0.104"), "leased", some("cam1")),
            ]
        );
        let cam1 = &views[3].dns;
        assert_eq!(
            (
                cam1[0].name.as_str(),
                cam1[0].count,
                cam1[0].first_seen,
                cam1[0].last_seen
            ),
            ("p2p.cloud.example", 2, 100, 160)
        );
        assert_eq!(
            views[0].dns.len(),
            MAX_NAMES_PER_CAMERA,
            "names per camera are capped"
        );
    }

    #[test]
    fn blocked_attempts_join_by_mac_then_address_and_stay_bounded() {
        let report = report();
        let porch = Some("aa:bb:cc:00:11:22");
        report.attempt(attempt(porch, "10.77.0.20", "203.0.113.2", 23), 100);
        report.attempt(attempt(porch, "10.77.0.20", "203.0.113.2", 23), 150);
        // Over IPv6 from its link-local address: still the porch camera.
        report.attempt(attempt(porch, "fe80::1", "2001:db8::2", 443), 120);
        // No MAC (not from Ethernet): joined by address.
        report.attempt(attempt(None, "10.77.0.104", "8.8.8.8", 53), 130);
        // A stranger with a static address, and one seen only over IPv6.
        report.attempt(
            attempt(Some("de:ad:00:00:00:01"), "10.77.0.66", "192.168.1.5", 80),
            140,
        );
        report.attempt(
            attempt(Some("de:ad:00:00:00:02"), "fe80::2", "2001:db8::3", 80),
            140,
        );
        for port in 0..u16::try_from(MAX_DESTINATIONS_PER_CAMERA).unwrap() + 5 {
            report.attempt(attempt(porch, "10.77.0.20", "198.51.100.1", 1000 + port), 200);
        }
        let views = report.cameras();
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            summary(&views),
            [
                (None, "seen", None),
                (some("10.77.0.20"), "leased", some("porch")),
                (some("10.77.0.21"), "known", some("garage")),
                (some("10.77.0.66"), "seen", None),
                (some("10.77.0.104"), "leased", some("cam1")),
            ]
        );
        let porch = &views[1];
        assert_eq!(porch.blocked.len(), MAX_DESTINATIONS_PER_CAMERA);
        assert_eq!(
            porch.blocked_unlisted, 7,
            "the IPv6 entry and 256 more fill the list"
        );
        let telnet = &porch.blocked[0];
        assert_eq!(
            (
                telnet.destination.kind,
                telnet.destination.port,
                telnet.count,
                telnet.first_seen,
                telnet.last_seen
            ),
            (Kind::Mirai, Some(23), 2, 100, 150)
        );
        assert!(
            porch
                .blocked
                .iter()
                .any(|a| a.destination.address.to_string() == "2001:db8::2"),
            "its IPv6 attempt"
        );
        assert_eq!(views[4].blocked[0].destination.port, Some(53));
        assert_eq!(views[3].mac.as_deref(), Some("de:ad:00:00:00:01"));
        assert_eq!(views[0].mac.as_deref(), Some("de:ad:00:00:00:02"));
        let json = serde_json::to_value(&views[4].blocked[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "egress", "protocol": "tcp", "address": "8.8.8.8", "port": 53,
                "count": 1, "first_seen": 130, "last_seen": 130})
        );
    }
}
