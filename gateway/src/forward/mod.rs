//! Port forwards to the DVR (its STUN/TURN server and relay range) and
//! camgate's own STUN responder.
//!
//! Kernel-mode forwards are rules in the firewall's table (`firewall`);
//! userspace ones are relays here (`udp.rs`, `tcp.rs`). Both report through
//! [`ForwardStatusSource`]: kernel counters are read from nftables when the
//! status is asked for, userspace ones are atomics.

mod batch;
pub mod limits;
pub mod stun;
mod tcp;
mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::net::{TcpListener, UdpSocket};
use tracing::Instrument;

use crate::config::Config;
use crate::config::forward::{Forward, ForwardMode, Protocol};
use crate::daemon::{SubsystemState, SubsystemStatus};
use crate::firewall::{Backend, Count, CounterNames, Firewall, FirewallError, KernelForward};
use crate::shutdown::Drain;
use limits::FlowCaps;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot listen on {protocol} {address} for forward {name:?}: {source}")]
    Bind {
        name: String,
        protocol: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {address} (forwarding.stun_responder): {source}")]
    Responder {
        address: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
pub struct Traffic {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl Traffic {
    fn add(&self, len: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    fn add_run(&self, packets: usize, bytes: usize) {
        self.packets.fetch_add(packets as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn add_bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn get(&self) -> Count {
        Count {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// A userspace forward's counters. TCP counts bytes, not packets.
#[derive(Debug, Default)]
pub struct Counters {
    to_target: Traffic,
    to_client: Traffic,
    guard_dropped: Traffic,
    allocate_limited: Traffic,
    flows_opened: AtomicU64,
    flows_active: AtomicU64,
    flows_refused: AtomicU64,
    flows_expired: AtomicU64,
}

/// One forward in `/api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardStatus {
    pub name: String,
    pub protocol: Protocol,
    pub listen: String,
    pub target: String,
    pub mode: ForwardMode,
    pub stun: bool,
    /// Kernel mode: whether flows to the target get camgate's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<bool>,
    pub to_target: Count,
    pub to_client: Count,
    /// Dropped by the STUN guard: neither STUN nor ChannelData.
    pub guard_dropped: Count,
    /// Allocate requests over the per-source rate.
    pub allocate_limited: Count,
    /// Userspace mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flows: Option<FlowCounts>,
    /// Kernel mode: why the counters are missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct FlowCounts {
    pub active: u64,
    pub opened: u64,
    pub refused: u64,
    pub expired: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResponderStatus {
    pub listen: Vec<SocketAddr>,
    pub answered: u64,
    pub ignored: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForwardingStatus {
    pub forwards: Vec<ForwardStatus>,
    pub stun_responder: ResponderStatus,
}

/// What `/api/status` reads: swapped whole on reload.
#[derive(Debug, Default)]
struct Snapshot {
    kernel: Vec<KernelForward>,
    userspace: Vec<(Forward, Arc<Counters>)>,
    responder: Vec<SocketAddr>,
}

#[derive(Debug)]
pub struct ForwardStatusSource {
    snapshot: ArcSwap<Snapshot>,
    responder: Arc<ResponderCounters>,
    /// Reads the kernel forwards' counters; `None` in dev mode.
    backend: Option<Arc<dyn Backend>>,
}

#[derive(Debug, Default)]
struct ResponderCounters {
    answered: AtomicU64,
    ignored: AtomicU64,
}

impl ForwardStatusSource {
    /// Blocking: kernel counters come from `nft`.
    pub fn status(&self) -> ForwardingStatus {
        let snapshot = self.snapshot.load();
        let mut forwards = Vec::new();
        let kernel_counters = match (&self.backend, snapshot.kernel.is_empty()) {
            (Some(backend), false) => backend.counters(),
            _ => Ok(HashMap::new()),
        };
        let (counters, error) = match kernel_counters {
            Ok(counters) => (counters, None),
            Err(e) => (HashMap::new(), Some(e.to_string())),
        };
        for kernel in &snapshot.kernel {
            let names = CounterNames::of(&kernel.forward.name);
            let get = |name: &str| counters.get(name).copied().unwrap_or_default();
            forwards.push(ForwardStatus {
                masquerade: Some(kernel.masquerade),
                to_target: get(&names.to_target),
                to_client: get(&names.to_client),
                guard_dropped: get(&names.guard_dropped),
                allocate_limited: get(&names.allocate_limited),
                flows: None,
                error: error.clone(),
                ..describe(&kernel.forward)
            });
        }
        for (forward, counters) in &snapshot.userspace {
            forwards.push(ForwardStatus {
                to_target: counters.to_target.get(),
                to_client: counters.to_client.get(),
                guard_dropped: counters.guard_dropped.get(),
                allocate_limited: counters.allocate_limited.get(),
                flows: Some(FlowCounts {
                    active: counters.flows_active.load(Ordering::Relaxed),
                    opened: counters.flows_opened.load(Ordering::Relaxed),
                    refused: counters.flows_refused.load(Ordering::Relaxed),
                    expired: counters.flows_expired.load(Ordering::Relaxed),
                }),
                ..describe(forward)
            });
        }
        forwards.sort_by(|a, b| a.name.cmp(&b.name));
        ForwardingStatus {
            forwards,
            stun_responder: ResponderStatus {
                listen: snapshot.responder.clone(),
                answered: self.responder.answered.load(Ordering::Relaxed),
                ignored: self.responder.ignored.load(Ordering::Relaxed),
            },
        }
    }
}

fn describe(forward: &Forward) -> ForwardStatus {
    ForwardStatus {
        name: forward.name.clone(),
        protocol: forward.protocol,
        listen: format!("{}:{}", bracketed(forward.listen_address), forward.ports),
        target: format!("{}:{}", bracketed(forward.target), forward.target_ports()),
        mode: forward.mode,
        stun: forward.stun,
        masquerade: None,
        to_target: Count::default(),
        to_client: Count::default(),
        guard_dropped: Count::default(),
        allocate_limited: Count::default(),
        flows: None,
        error: None,
    }
}

fn bracketed(address: std::net::IpAddr) -> String {
    if address.is_ipv6() {
        format!("[{address}]")
    } else {
        address.to_string()
    }
}

/// Sockets of one userspace forward.
#[derive(Debug, Clone)]
enum Sockets {
    Udp(Vec<Arc<UdpSocket>>),
    Tcp(Vec<Arc<TcpListener>>),
}

#[derive(Debug)]
struct Running {
    forward: Forward,
    sockets: Sockets,
    counters: Arc<Counters>,
    drain: Drain,
}

/// A userspace forward ready to run: sockets bound (or kept from the
/// running forward that had the same ones).
#[derive(Debug)]
enum Staged {
    /// Unchanged: keeps running with its flows.
    Keep(String),
    Start {
        forward: Forward,
        sockets: Sockets,
    },
}

#[derive(Debug)]
pub struct Prepared {
    staged: Vec<Staged>,
    responder: Option<Vec<(SocketAddr, Arc<UdpSocket>)>>,
    firewall: Option<crate::firewall::Prepared>,
    limits: crate::config::forward::FlowLimits,
}

/// The userspace relays, the responder, and the firewall that carries the
/// kernel-mode forwards.
#[derive(Debug)]
pub struct ForwardService {
    firewall: Firewall,
    running: Vec<Running>,
    responder: Vec<(SocketAddr, Arc<UdpSocket>)>,
    responder_drain: Option<Drain>,
    caps: Arc<FlowCaps>,
    batches: Arc<batch::BatchPool>,
    source: Arc<ForwardStatusSource>,
}

impl ForwardService {
    pub fn start(config: &Config, firewall: Firewall, drain: &Drain) -> Result<Self, ForwardError> {
        let mut service = Self {
            running: Vec::new(),
            responder: Vec::new(),
            responder_drain: None,
            caps: FlowCaps::new(config.forwarding.limits),
            batches: Arc::default(),
            source: Arc::new(ForwardStatusSource {
                snapshot: ArcSwap::default(),
                responder: Arc::default(),
                backend: firewall.backend(),
            }),
            firewall,
        };
        let staged = service.stage(config)?;
        let responder = service.stage_responder(config)?;
        service.start_staged(staged, Some(responder), drain);
        Ok(service)
    }

    pub fn status_source(&self) -> Arc<ForwardStatusSource> {
        Arc::clone(&self.source)
    }

    pub fn firewall(&self) -> &Firewall {
        &self.firewall
    }

    /// Binds what the new config needs and has the firewall check its
    /// ruleset; changes nothing that runs.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, ReloadFailure> {
        let firewall = self.firewall.prepare(config)?;
        Ok(Prepared {
            staged: self.stage(config)?,
            responder: Some(self.stage_responder(config)?),
            firewall: Some(firewall),
            limits: config.forwarding.limits,
        })
    }

    /// Applies the firewall: the one fallible step of a commit, so the
    /// daemon runs it before anything else commits. On error the kernel
    /// keeps the old table and nothing has changed.
    pub fn apply_firewall(&mut self, prepared: &mut Prepared) -> Result<(), FirewallError> {
        match prepared.firewall.take() {
            Some(firewall) => self.firewall.commit(firewall),
            None => Ok(()),
        }
    }

    /// Cannot fail.
    pub fn commit(&mut self, prepared: Prepared, drain: &Drain) {
        self.caps.set_limits(prepared.limits);
        self.start_staged(prepared.staged, prepared.responder, drain);
    }

    pub fn stop(&self) {
        self.firewall.stop();
    }

    fn stage(&self, config: &Config) -> Result<Vec<Staged>, ForwardError> {
        let mut staged = Vec::new();
        for forward in config
            .forwarding
            .forwards
            .iter()
            .filter(|f| f.mode == ForwardMode::Userspace)
        {
            let same_sockets = self.running.iter().find(|r| {
                r.forward.protocol == forward.protocol
                    && r.forward.listen_address == forward.listen_address
                    && r.forward.ports == forward.ports
            });
            staged.push(match same_sockets {
                Some(running)
                    if running.forward == *forward && self.caps.limits() == config.forwarding.limits =>
                {
                    Staged::Keep(forward.name.clone())
                }
                Some(running) => Staged::Start {
                    forward: forward.clone(),
                    sockets: running.sockets.clone(),
                },
                None => Staged::Start {
                    forward: forward.clone(),
                    sockets: bind_all(forward)?,
                },
            });
        }
        Ok(staged)
    }

    fn stage_responder(&self, config: &Config) -> Result<Vec<(SocketAddr, Arc<UdpSocket>)>, ForwardError> {
        config
            .forwarding
            .stun_responder
            .iter()
            .map(|&address| {
                if let Some((_, socket)) = self.responder.iter().find(|(a, _)| *a == address) {
                    return Ok((address, Arc::clone(socket)));
                }
                udp::bind(address)
                    .and_then(UdpSocket::from_std)
                    .map(|socket| (address, Arc::new(socket)))
                    .map_err(|source| ForwardError::Responder { address, source })
            })
            .collect()
    }

    fn start_staged(
        &mut self,
        staged: Vec<Staged>,
        responder: Option<Vec<(SocketAddr, Arc<UdpSocket>)>>,
        drain: &Drain,
    ) {
        let mut old: HashMap<String, Running> = self
            .running
            .drain(..)
            .map(|r| (r.forward.name.clone(), r))
            .collect();
        let mut running = Vec::new();
        for staged in staged {
            match staged {
                Staged::Keep(name) => running.push(old.remove(&name).expect("staged from the running set")),
                Staged::Start { forward, sockets } => {
                    let child = drain.child();
                    let counters = Arc::new(Counters::default());
                    match &sockets {
                        Sockets::Udp(sockets) => {
                            udp::serve(
                                forward.clone(),
                                sockets.clone(),
                                &self.caps,
                                &self.batches,
                                &counters,
                                &child,
                            );
                        }
                        Sockets::Tcp(listeners) => {
                            tcp::serve(forward.clone(), listeners.clone(), &self.caps, &counters, &child);
                        }
                    }
                    tracing::info!(forward = %forward.name, "userspace forward {} {} → {}",
                        forward.protocol.as_str(), forward.ports, forward.target);
                    running.push(Running {
                        forward,
                        sockets,
                        counters,
                        drain: child,
                    });
                }
            }
        }
        // Replaced and removed forwards stop; their sockets close once the
        // last task holding them ends (a replacement holds them on).
        for stale in old.into_values() {
            stale.drain.stop();
        }
        self.running = running;

        if let Some(responder) = responder {
            if let Some(old) = self.responder_drain.take() {
                old.stop();
            }
            let child = drain.child();
            for (address, socket) in &responder {
                let span = tracing::info_span!("stun_responder", %address);
                child.spawn(
                    respond(
                        Arc::clone(socket),
                        Arc::clone(&self.source.responder),
                        child.clone(),
                    )
                    .instrument(span),
                );
            }
            self.responder = responder;
            self.responder_drain = Some(child);
        }

        self.source.snapshot.store(Arc::new(Snapshot {
            kernel: self.firewall.forwards().to_vec(),
            userspace: self
                .running
                .iter()
                .map(|r| (r.forward.clone(), Arc::clone(&r.counters)))
                .collect(),
            responder: self.responder.iter().map(|(a, _)| *a).collect(),
        }));
    }

    pub fn status(&self) -> SubsystemStatus {
        let kernel = self.firewall.forwards().len();
        let userspace = self.running.len();
        SubsystemStatus {
            name: "forwards",
            state: SubsystemState::Running,
            detail: format!(
                "{kernel} kernel, {userspace} userspace; STUN responder on {} address(es)",
                self.responder.len()
            ),
        }
    }
}

/// A reload of the forwards failed before anything changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadFailure {
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
}

fn bind_all(forward: &Forward) -> Result<Sockets, ForwardError> {
    let error = |port, source| ForwardError::Bind {
        name: forward.name.clone(),
        protocol: forward.protocol.as_str(),
        address: SocketAddr::new(forward.listen_address, port),
        source,
    };
    Ok(match forward.protocol {
        Protocol::Udp => Sockets::Udp(
            forward
                .ports
                .ports()
                .map(|port| {
                    udp::bind(SocketAddr::new(forward.listen_address, port))
                        .and_then(UdpSocket::from_std)
                        .map(Arc::new)
                        .map_err(|e| error(port, e))
                })
                .collect::<Result<_, _>>()?,
        ),
        Protocol::Tcp => Sockets::Tcp(
            forward
                .ports
                .ports()
                .map(|port| {
                    crate::net::bind_tcp(SocketAddr::new(forward.listen_address, port))
                        .and_then(TcpListener::from_std)
                        .map(Arc::new)
                        .map_err(|e| error(port, e))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Answers STUN Binding requests; anything else is ignored and counted.
async fn respond(socket: Arc<UdpSocket>, counters: Arc<ResponderCounters>, drain: Drain) {
    let mut buffer = vec![0u8; 2048];
    loop {
        let (len, client) = tokio::select! {
            () = drain.token().cancelled() => return,
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(e) => {
                    tracing::debug!("receive: {e}");
                    continue;
                }
            },
        };
        match stun::binding_response(&buffer[..len], client) {
            Some(response) => {
                if let Err(e) = socket.send_to(&response, client).await {
                    tracing::debug!(%client, "send: {e}");
                }
                counters.answered.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                counters.ignored.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
