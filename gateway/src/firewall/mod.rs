//! The only code that talks to nftables. It owns `table inet camgate` and
//! never touches other tables. The table carries the kernel-mode forwards
//! and their STUN guard, and, with interface roles configured, the camera
//! segment's isolation and the admin listener's reach (`ruleset/`, pure).
//! It also sets up the camera interface (VLAN, address, no IPv6), since the
//! rules are only as good as the interface they name.
//!
//! Reload: [`Firewall::prepare`] resolves routes, builds the batch and has
//! `nft --check` it; [`Firewall::commit`] applies it as one transaction —
//! the one commit in the daemon that can fail, so the daemon runs it before
//! any other subsystem commits, and on failure the kernel keeps the old
//! table and nothing else changes.

pub mod blocked;
mod links;
pub mod nflog;
pub mod ruleset;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::IpAddr;
use std::process::Command;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use ipnet::{IpNet, Ipv4Net};
use nftables::helper::{self, NftablesError};
use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables};
use serde::Serialize;

use crate::auth::{BanSink, NoSink};
use crate::config::Config;
use crate::config::forward::{ForwardMode, Masquerade, PortRange, Protocol};
use crate::config::network::{Cameras, Network};
use crate::daemon::{SubsystemState, SubsystemStatus};
pub use links::{Nic, interfaces};
pub use ruleset::{CounterNames, Isolation, KernelForward};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nft: {0}")]
    Nft(String),
    #[error("cannot find the route to {target}: {reason}")]
    Route { target: IpAddr, reason: String },
    #[error("cannot enable IP forwarding ({path}): {source}")]
    Forwarding {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("cannot set up interface {interface}: {reason}")]
    Interface { interface: String, reason: String },
    #[error(
        "the camera subnet {cameras} overlaps {uplink}'s subnet {subnet}: pick another `cameras.address`"
    )]
    Overlap {
        cameras: Ipv4Net,
        uplink: String,
        subnet: IpNet,
    },
}

impl From<NftablesError> for FirewallError {
    fn from(e: NftablesError) -> Self {
        Self::Nft(match e {
            NftablesError::NftFailed { stderr, .. } => stderr.trim().to_owned(),
            other => other.to_string(),
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// What the firewall needs from the system; [`Nft`] is the real one.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Checks a batch without applying it (`nft --check`).
    fn check(&self, ruleset: &Nftables<'_>) -> Result<(), FirewallError>;
    /// Applies a batch as one transaction.
    fn apply(&self, ruleset: &Nftables<'_>) -> Result<(), FirewallError>;
    /// Named counters of camgate's table.
    fn counters(&self) -> Result<HashMap<String, Count>, FirewallError>;
    /// The interface the route to `target` leaves through.
    fn route_interface(&self, target: IpAddr) -> Result<String, FirewallError>;
    /// Interfaces of the default routes (both families).
    fn default_route_interfaces(&self) -> Result<Vec<String>, FirewallError>;
    fn enable_forwarding(&self, ipv6: bool) -> Result<(), FirewallError>;
    /// The subnets of `interface`'s addresses.
    fn interface_subnets(&self, interface: &str) -> Result<Vec<IpNet>, FirewallError>;
    /// Makes sure the camera interface exists (creating the VLAN
    /// sub-interface if configured, still down): the table hooks it.
    fn create_camera_interface(&self, cameras: &Cameras) -> Result<(), FirewallError>;
    /// Brings the camera interface up with camgate's address as its only
    /// IPv4 one, turns IPv6 off on it (no router advertisements taken or
    /// given) and pins known cameras' addresses to their MACs. Idempotent.
    fn set_up_camera_interface(&self, cameras: &Cameras) -> Result<(), FirewallError>;
}

/// `nft` (JSON through the nftables crate); routes, addresses and the
/// camera NIC over rtnetlink (`links`).
#[derive(Debug, Default)]
pub struct Nft;

impl Backend for Nft {
    fn check(&self, ruleset: &Nftables<'_>) -> Result<(), FirewallError> {
        Ok(helper::apply_ruleset_with_args(
            ruleset,
            helper::DEFAULT_NFT,
            ["--check"],
        )?)
    }

    fn apply(&self, ruleset: &Nftables<'_>) -> Result<(), FirewallError> {
        Ok(helper::apply_ruleset(ruleset)?)
    }

    fn counters(&self) -> Result<HashMap<String, Count>, FirewallError> {
        // Parsed here rather than with the crate's schema: it reads counter
        // values as u32, which a busy forward's byte count overflows.
        let output = helper::get_current_ruleset_raw(
            helper::DEFAULT_NFT,
            ["list", "counters", "table", "inet", ruleset::TABLE],
        )?;
        let value: serde_json::Value = serde_json::from_str(&output)
            .map_err(|e| FirewallError::Nft(format!("unreadable counters: {e}")))?;
        let mut counters = HashMap::new();
        for object in value["nftables"].as_array().into_iter().flatten() {
            let counter = &object["counter"];
            if let Some(name) = counter["name"].as_str() {
                counters.insert(
                    name.to_owned(),
                    Count {
                        packets: counter["packets"].as_u64().unwrap_or(0),
                        bytes: counter["bytes"].as_u64().unwrap_or(0),
                    },
                );
            }
        }
        Ok(counters)
    }

    fn route_interface(&self, target: IpAddr) -> Result<String, FirewallError> {
        links::route_interface(target)
    }

    fn default_route_interfaces(&self) -> Result<Vec<String>, FirewallError> {
        links::default_route_interfaces()
    }

    fn enable_forwarding(&self, ipv6: bool) -> Result<(), FirewallError> {
        let mut paths = vec!["/proc/sys/net/ipv4/ip_forward"];
        if ipv6 {
            paths.push("/proc/sys/net/ipv6/conf/all/forwarding");
        }
        for path in paths {
            std::fs::write(path, "1").map_err(|source| FirewallError::Forwarding { path, source })?;
        }
        Ok(())
    }

    fn interface_subnets(&self, interface: &str) -> Result<Vec<IpNet>, FirewallError> {
        Ok(links::addresses(interface)?.iter().map(IpNet::trunc).collect())
    }

    fn create_camera_interface(&self, cameras: &Cameras) -> Result<(), FirewallError> {
        links::create_camera_interface(cameras)
    }

    fn set_up_camera_interface(&self, cameras: &Cameras) -> Result<(), FirewallError> {
        links::set_up_camera_interface(cameras)
    }
}

#[derive(Debug, Clone, Copy)]
enum BanChange {
    Ban(IpAddr, u64),
    Lift(IpAddr),
}

struct FirewallBans {
    queue: mpsc::Sender<BanChange>,
}

impl BanSink for FirewallBans {
    fn banned(&self, address: IpAddr, until: SystemTime) {
        // Rounded up: the set must not release an address before camgate does.
        let seconds = until
            .duration_since(SystemTime::now())
            .map_or(1, |left| left.as_secs() + u64::from(left.subsec_nanos() > 0));
        let _ = self.queue.send(BanChange::Ban(address, seconds));
    }

    fn lifted(&self, address: IpAddr) {
        let _ = self.queue.send(BanChange::Lift(address));
    }
}

/// The table `config` gives on this machine, whatever the mode, not
/// checked by nft (`camgate firewall show`).
pub fn plan(config: &Config, backend: &dyn Backend) -> Result<Nftables<'static>, FirewallError> {
    plan_parts(config, backend).map(|(_, _, ruleset)| ruleset)
}

/// nft's own rendering of `ruleset`: loaded into a scratch network
/// namespace (`unshare --net`, so root), then listed.
pub fn render(ruleset: &Nftables<'_>) -> Result<String, FirewallError> {
    let json = serde_json::to_vec(ruleset).map_err(|e| FirewallError::Nft(e.to_string()))?;
    // Interfaces the table hooks must exist there: stand-ins (veth pairs;
    // not every kernel has dummy interfaces).
    let hooked = ruleset.objects.iter().filter_map(|object| match object {
        NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(chain))) => chain.dev.as_deref(),
        _ => None,
    });
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            &format!(
                "i=0; for d in \"$@\"; do i=$((i+1)); ip link add \"$d\" type veth peer name \"cg-stand-in$i\" || exit; done; \
                 nft -j -f - && nft list table inet {}",
                ruleset::TABLE
            ),
            "sh",
        ])
        .args(hooked)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| FirewallError::Nft(format!("cannot run unshare: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, &json).map_err(|e| FirewallError::Nft(e.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| FirewallError::Nft(e.to_string()))?;
    if !output.status.success() {
        return Err(FirewallError::Nft(format!(
            "cannot render the table in a scratch namespace (root needed; `--json` does not): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

type Plan = (Vec<KernelForward>, Option<Isolation>, Nftables<'static>);

fn plan_parts(config: &Config, backend: &dyn Backend) -> Result<Plan, FirewallError> {
    let kernel: Vec<_> = config
        .forwarding
        .forwards
        .iter()
        .filter(|f| f.mode == ForwardMode::Kernel)
        .collect();
    let defaults = if kernel.iter().any(|f| f.masquerade == Masquerade::Auto) {
        backend.default_route_interfaces()?
    } else {
        Vec::new()
    };
    let mut forwards = Vec::with_capacity(kernel.len());
    // A profile's forwards share one target: one route lookup each.
    let mut routes: HashMap<IpAddr, String> = HashMap::new();
    for forward in kernel {
        let masquerade = match forward.masquerade {
            Masquerade::Always => true,
            Masquerade::Never => false,
            Masquerade::Auto => {
                let interface = match routes.entry(forward.target) {
                    Entry::Occupied(known) => known.into_mut(),
                    Entry::Vacant(new) => new.insert(backend.route_interface(forward.target)?),
                };
                defaults.contains(interface)
            }
        };
        forwards.push(KernelForward {
            forward: forward.clone(),
            masquerade,
        });
    }
    let isolation = config
        .network
        .as_ref()
        .map(|network| isolation(network, config, backend))
        .transpose()?;
    let ruleset = ruleset::build(
        &forwards,
        config.forwarding.limits.allocate_rate,
        isolation.as_ref(),
    );
    Ok((forwards, isolation, ruleset))
}

/// camgate's own listeners off loopback: the proxy, userspace forwards and
/// the STUN responder.
fn wan_open(config: &Config) -> Vec<(Protocol, PortRange)> {
    let single = |port: u16| PortRange {
        first: port,
        last: port,
    };
    let public = |address: &&std::net::SocketAddr| !address.ip().is_loopback();
    let mut open: Vec<(Protocol, PortRange)> = config
        .proxy
        .https_listen
        .iter()
        .chain(&config.proxy.http_listen)
        .filter(public)
        .map(|address| (Protocol::Tcp, single(address.port())))
        .collect();
    open.extend(
        config
            .forwarding
            .forwards
            .iter()
            .filter(|f| f.mode == ForwardMode::Userspace && !f.listen_address.is_loopback())
            .map(|f| (f.protocol, f.ports)),
    );
    open.extend(
        config
            .forwarding
            .stun_responder
            .iter()
            .filter(public)
            .map(|address| (Protocol::Udp, single(address.port()))),
    );
    open.dedup();
    open
}

/// The isolation rules' inputs: LAN ranges from the uplink unless
/// configured, and a camera subnet that does not overlap them.
fn isolation(network: &Network, config: &Config, backend: &dyn Backend) -> Result<Isolation, FirewallError> {
    let uplink_subnets = backend.interface_subnets(&network.uplink)?;
    if let Some(cameras) = &network.cameras {
        let subnet = IpNet::V4(cameras.subnet());
        if let Some(overlap) = uplink_subnets
            .iter()
            .find(|net| net.contains(&subnet.network()) || subnet.contains(&net.network()))
        {
            return Err(FirewallError::Overlap {
                cameras: cameras.subnet(),
                uplink: network.uplink.clone(),
                subnet: *overlap,
            });
        }
    }
    // The admin listener and the restream: the home LAN's only.
    let mut lan_ports: Vec<u16> = config
        .admin
        .listen
        .iter()
        .chain(&config.streams.listen)
        .filter(|address| !address.ip().is_loopback())
        .map(std::net::SocketAddr::port)
        .collect();
    lan_ports.sort_unstable();
    lan_ports.dedup();
    Ok(Isolation {
        uplink: network.uplink.clone(),
        wan: network.wan.clone(),
        wan_open: wan_open(config),
        lan: network
            .lan
            .clone()
            .unwrap_or_else(|| admin_lan(&network.uplink, uplink_subnets)),
        lan_ports,
        cameras: network.cameras.clone(),
    })
}

/// Who may reach the admin listener when `network.lan` is not set: the
/// uplink's subnets. An uplink without an IPv4 address yet (its DHCP lease
/// still pending at boot) would lock the LAN out until a reload, so then
/// the private IPv4 ranges stand in; only packets entering by the uplink
/// qualify either way, and the internet's reach it with public sources.
fn admin_lan(uplink: &str, mut subnets: Vec<IpNet>) -> Vec<IpNet> {
    if !subnets.iter().any(|net| matches!(net, IpNet::V4(_))) {
        tracing::warn!(%uplink, "the uplink has no IPv4 address yet: the admin listener admits the private ranges on it");
        subnets.extend(
            ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
                .iter()
                .map(|net| net.parse::<IpNet>().expect("a literal CIDR")),
        );
    }
    subnets
}

/// A batch ready to apply.
#[derive(Debug)]
pub struct Prepared {
    forwards: Vec<KernelForward>,
    isolation: Option<Isolation>,
    ruleset: Option<Nftables<'static>>,
    /// Building the batch, route and address lookups included.
    planned_in: Duration,
    /// `nft --check`.
    checked_in: Duration,
}

/// camgate's table, as applied.
#[derive(Debug)]
pub struct Firewall {
    backend: Arc<dyn Backend>,
    managed: bool,
    forwards: Vec<KernelForward>,
}

impl Firewall {
    /// Applies the config's table, or fails (camgate then does not start:
    /// fail closed). In dev mode it does nothing.
    pub fn start(config: &Config, backend: Arc<dyn Backend>) -> Result<Self, FirewallError> {
        let mut firewall = Self {
            backend,
            managed: config.manages_system(),
            forwards: Vec::new(),
        };
        let prepared = firewall.prepare(config)?;
        firewall.commit(prepared)?;
        Ok(firewall)
    }

    pub fn prepare(&self, config: &Config) -> Result<Prepared, FirewallError> {
        if !self.managed {
            return Ok(Prepared {
                forwards: Vec::new(),
                isolation: None,
                ruleset: None,
                planned_in: Duration::ZERO,
                checked_in: Duration::ZERO,
            });
        }
        let started = Instant::now();
        let (forwards, isolation, ruleset) = plan_parts(config, self.backend.as_ref())?;
        let planned_in = started.elapsed();
        if let Some(cameras) = isolation.as_ref().and_then(|i| i.cameras.as_ref()) {
            self.backend.create_camera_interface(cameras)?;
        }
        self.backend.check(&ruleset)?;
        Ok(Prepared {
            forwards,
            isolation,
            planned_in,
            checked_in: started.elapsed() - planned_in,
            ruleset: Some(ruleset),
        })
    }

    /// Applies atomically; on error the kernel still has the old table.
    pub fn commit(&mut self, prepared: Prepared) -> Result<(), FirewallError> {
        let Some(ruleset) = prepared.ruleset else {
            return Ok(());
        };
        let cameras = prepared.isolation.as_ref().and_then(|i| i.cameras.as_ref());
        let dvr_access = cameras.is_some_and(|c| !c.dvr_hosts.is_empty());
        if !prepared.forwards.is_empty() || dvr_access {
            let ipv6 = prepared.forwards.iter().any(|f| f.forward.target.is_ipv6());
            self.backend.enable_forwarding(ipv6)?;
        }
        // The rules first: an interface that comes up must already be isolated.
        let started = Instant::now();
        self.backend.apply(&ruleset)?;
        // `tests/bench/firewall.sh` reads these.
        tracing::info!(
            planned_ms = prepared.planned_in.as_secs_f64() * 1e3,
            checked_ms = prepared.checked_in.as_secs_f64() * 1e3,
            applied_ms = started.elapsed().as_secs_f64() * 1e3,
            objects = ruleset.objects.len(),
            "firewall table applied"
        );
        if let Some(cameras) = cameras {
            self.backend.set_up_camera_interface(cameras)?;
            tracing::info!(interface = %cameras.interface(), address = %cameras.address,
                dvr_hosts = cameras.dvr_hosts.len(), "camera segment isolated");
        }
        for forward in &prepared.forwards {
            tracing::info!(
                forward = %forward.forward.name,
                masquerade = forward.masquerade,
                "kernel forward {} {} → {}",
                forward.forward.protocol.as_str(),
                forward.forward.ports,
                forward.forward.target,
            );
        }
        self.forwards = prepared.forwards;
        Ok(())
    }

    /// Removes camgate's table: forwards end with camgate.
    pub fn stop(&self) {
        if self.managed
            && let Err(e) = self.backend.apply(&ruleset::remove())
        {
            tracing::error!("cannot remove the firewall table: {e}");
        }
    }

    /// Where the proxy's brute-force guard sends bans: into the ban sets,
    /// so a banned address cannot even open a connection. A worker thread
    /// applies them in order, off the request path; without a managed
    /// firewall (dev mode) camgate's own 429 is the whole ban.
    pub fn ban_sink(&self) -> Box<dyn BanSink> {
        if !self.managed {
            return Box::new(NoSink);
        }
        let (queue, changes) = mpsc::channel::<BanChange>();
        let backend = Arc::clone(&self.backend);
        let worker = std::thread::Builder::new()
            .name("firewall-bans".to_owned())
            .spawn(move || {
                for change in changes {
                    match change {
                        BanChange::Ban(address, seconds) => {
                            if let Err(e) = backend.apply(&ruleset::ban(address, seconds)) {
                                tracing::warn!(%address, "cannot ban in the firewall: {e}");
                            }
                        }
                        // It may have expired in the set already.
                        BanChange::Lift(address) => {
                            if let Err(e) = backend.apply(&ruleset::unban(address)) {
                                tracing::debug!(%address, "ban not lifted in the firewall: {e}");
                            }
                        }
                    }
                }
            });
        match worker {
            Ok(_) => Box::new(FirewallBans { queue }),
            Err(e) => {
                tracing::error!("cannot start the firewall's ban worker ({e}); bans stay camgate's own 429");
                Box::new(NoSink)
            }
        }
    }

    /// The backend, when camgate manages the firewall.
    pub fn backend(&self) -> Option<Arc<dyn Backend>> {
        self.managed.then(|| Arc::clone(&self.backend))
    }

    pub fn forwards(&self) -> &[KernelForward] {
        &self.forwards
    }

    pub fn status(&self) -> SubsystemStatus {
        if self.managed {
            SubsystemStatus {
                name: "firewall",
                state: SubsystemState::Running,
                detail: format!(
                    "table inet {}: {} kernel forward(s)",
                    ruleset::TABLE,
                    self.forwards.len()
                ),
            }
        } else {
            SubsystemStatus {
                name: "firewall",
                state: SubsystemState::Disabled,
                detail: "dev mode: camgate makes no system changes".to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uplink_without_ipv4_yet_admits_the_private_ranges() {
        let own: Vec<IpNet> = vec!["192.168.1.0/24".parse().unwrap(), "fe80::/64".parse().unwrap()];
        assert_eq!(admin_lan("eth0", own.clone()), own);
        let link_local_only: Vec<IpNet> = vec!["fe80::/64".parse().unwrap()];
        let lan: Vec<String> = admin_lan("eth0", link_local_only)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lan,
            ["fe80::/64", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
        );
    }
}
