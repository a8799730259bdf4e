//! The userspace UDP relay: one socket per listen port; per client address
//! a flow with its own upstream socket connected to the target, so the
//! target's answers map back without any table lookup; flows end after the
//! idle timeout. Datagrams move in batches (`batch.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Counters;
use super::batch::BatchPool;
use super::limits::{FlowCaps, FlowPermit, RateLimiter, Refused};
use super::stun::{self, Datagram};
use crate::config::forward::Forward;
use crate::shutdown::Drain;

/// Receive buffer asked for each relay socket. The default (about 200 KiB,
/// ~90 full-size datagrams) overflows on a video key frame's burst when the
/// relay is busy for a moment.
const RECEIVE_BUFFER: usize = 2 << 20;

/// Binds a UDP socket (IPv6 ones v6-only, as the TCP listeners).
pub(super) fn bind(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::DGRAM, None)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Forcing past net.core.rmem_max needs CAP_NET_ADMIN (the appliance has
    // it); otherwise the kernel caps the size, which is still the default.
    if nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err()
    {
        socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
    }
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// A client's flow through one listen port.
#[derive(Debug)]
struct Flow {
    /// Connected to `target`.
    upstream: Arc<UdpSocket>,
    target: SocketAddr,
    /// Milliseconds since the relay started, at the last datagram either way.
    last_seen: AtomicU64,
    stop: CancellationToken,
    _permit: FlowPermit,
}

type FlowKey = (u16, SocketAddr);

/// The flows of one forward.
#[derive(Debug)]
struct Flows {
    table: Mutex<HashMap<FlowKey, Arc<Flow>>>,
    epoch: Instant,
}

impl Flows {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlowKey, Arc<Flow>>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Serves `sockets` (one per listen port, in port order) until `drain` stops.
pub(super) fn serve(
    forward: Forward,
    sockets: Vec<Arc<UdpSocket>>,
    caps: &Arc<FlowCaps>,
    batches: &Arc<BatchPool>,
    counters: &Arc<Counters>,
    drain: &Drain,
) {
    let flows = Arc::new(Flows {
        table: Mutex::new(HashMap::new()),
        epoch: Instant::now(),
    });
    let limiter = Arc::new(Mutex::new(RateLimiter::new(caps.limits().allocate_rate)));
    let forward = Arc::new(forward);
    for (port, socket) in forward.ports.ports().zip(sockets) {
        let span = tracing::info_span!("forward", name = %forward.name, port);
        let relay = Relay {
            forward: Arc::clone(&forward),
            port,
            listen: socket,
            flows: Arc::clone(&flows),
            caps: Arc::clone(caps),
            batches: Arc::clone(batches),
            limiter: Arc::clone(&limiter),
            counters: Arc::clone(counters),
            drain: drain.clone(),
        };
        let stop = drain.token().clone();
        drain.spawn(
            async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = relay.run() => {}
                }
            }
            .instrument(span),
        );
    }
}

struct Relay {
    forward: Arc<Forward>,
    port: u16,
    listen: Arc<UdpSocket>,
    flows: Arc<Flows>,
    caps: Arc<FlowCaps>,
    batches: Arc<BatchPool>,
    limiter: Arc<Mutex<RateLimiter>>,
    counters: Arc<Counters>,
    drain: Drain,
}

impl Relay {
    async fn run(self) {
        loop {
            if let Err(e) = self.listen.readable().await {
                tracing::warn!("listen socket: {e}");
                return;
            }
            let mut batch = self.batches.take();
            let batch = &mut *batch;
            match batch.inbox.receive(&self.listen) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                // ICMP errors from earlier sends surface here; the socket
                // itself is fine.
                Err(e) => {
                    tracing::debug!("receive: {e}");
                    continue;
                }
            }
            for (client, datagram) in batch.inbox.datagrams() {
                if self.forward.stun && !self.passes_guard(datagram, client) {
                    continue;
                }
                let Some(flow) = self.flow(client) else {
                    continue;
                };
                flow.last_seen.store(self.flows.now_ms(), Ordering::Relaxed);
                batch
                    .outbox
                    .push(&flow.upstream, flow.target, datagram, &self.counters.to_target)
                    .await;
            }
            batch.outbox.flush(&self.counters.to_target).await;
        }
    }

    fn passes_guard(&self, datagram: &[u8], client: SocketAddr) -> bool {
        let kind = stun::classify(datagram);
        if kind == Datagram::Invalid {
            self.counters.guard_dropped.add(datagram.len());
            return false;
        }
        if kind.is_allocate() {
            let allowed = self
                .limiter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .allow(client.ip(), Instant::now());
            if !allowed {
                self.counters.allocate_limited.add(datagram.len());
                return false;
            }
        }
        true
    }

    /// The client's flow, opened if new and within the caps.
    fn flow(&self, client: SocketAddr) -> Option<Arc<Flow>> {
        let key = (self.port, client);
        if let Some(flow) = self.flows.lock().get(&key) {
            return Some(Arc::clone(flow));
        }
        let permit = match self.caps.open(client.ip()) {
            Ok(permit) => permit,
            Err(refused) => {
                self.counters.flows_refused.fetch_add(1, Ordering::Relaxed);
                let which = match refused {
                    Refused::Client => "flows per client",
                    Refused::Total => "flows",
                };
                tracing::debug!(%client, "flow refused: max {which} reached");
                return None;
            }
        };
        let target = self.forward.target_for(self.port);
        let upstream = match upstream_socket(target) {
            Ok(socket) => Arc::new(socket),
            Err(e) => {
                tracing::warn!(%client, %target, "cannot open a socket to the target: {e}");
                return None;
            }
        };
        let flow = Arc::new(Flow {
            upstream,
            target,
            last_seen: AtomicU64::new(self.flows.now_ms()),
            stop: self.drain.token().child_token(),
            _permit: permit,
        });
        self.flows.lock().insert(key, Arc::clone(&flow));
        self.counters.flows_opened.fetch_add(1, Ordering::Relaxed);
        self.counters.flows_active.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%client, %target, "flow opened");
        let replies = Replies {
            flow: Arc::clone(&flow),
            key,
            listen: Arc::clone(&self.listen),
            flows: Arc::clone(&self.flows),
            batches: Arc::clone(&self.batches),
            idle: self.caps.limits().idle_timeout,
            counters: Arc::clone(&self.counters),
        };
        self.drain.spawn(replies.run().in_current_span());
        Some(flow)
    }
}

fn upstream_socket(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = bind(local)?;
    socket.connect(target)?;
    UdpSocket::from_std(socket)
}

/// Carries the target's answers back to the client, and ends the flow when
/// it has been idle both ways for the idle timeout.
struct Replies {
    flow: Arc<Flow>,
    key: FlowKey,
    listen: Arc<UdpSocket>,
    flows: Arc<Flows>,
    batches: Arc<BatchPool>,
    idle: Duration,
    counters: Arc<Counters>,
}

impl Replies {
    async fn run(self) {
        let client = self.key.1;
        loop {
            let idle_for = Duration::from_millis(
                self.flows
                    .now_ms()
                    .saturating_sub(self.flow.last_seen.load(Ordering::Relaxed)),
            );
            let Some(left) = self.idle.checked_sub(idle_for).filter(|d| !d.is_zero()) else {
                self.counters.flows_expired.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client, "flow idle; closed");
                break;
            };
            tokio::select! {
                () = self.flow.stop.cancelled() => break,
                () = tokio::time::sleep(left) => {}
                readable = self.flow.upstream.readable() => {
                    if let Err(e) = readable {
                        tracing::warn!(%client, "upstream socket: {e}");
                        break;
                    }
                    self.relay_answers().await;
                }
            }
        }
        let mut table = self.flows.lock();
        if table.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &self.flow)) {
            table.remove(&self.key);
        }
        self.counters.flows_active.fetch_sub(1, Ordering::Relaxed);
    }

    async fn relay_answers(&self) {
        let client = self.key.1;
        let mut batch = self.batches.take();
        let batch = &mut *batch;
        match batch.inbox.receive(&self.flow.upstream) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            // E.g. ICMP port unreachable from the target: the flow stays
            // until idle, as a NAT mapping would.
            Err(e) => {
                tracing::debug!(%client, "receive from target: {e}");
                return;
            }
        }
        self.flow.last_seen.store(self.flows.now_ms(), Ordering::Relaxed);
        for (_, datagram) in batch.inbox.datagrams() {
            batch
                .outbox
                .push(&self.listen, client, datagram, &self.counters.to_client)
                .await;
        }
        batch.outbox.flush(&self.counters.to_client).await;
    }
}
