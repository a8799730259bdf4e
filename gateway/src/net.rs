//! Listening sockets and the HTTP accept loop every listener uses: a span
//! per connection, an optional TLS handshake with a timeout, a header-read
//! timeout (slowloris; it also ends idle keep-alive connections), a write
//! timeout, caps on open connections overall and per client address, accept
//! errors that never end the loop, and a graceful drain through [`Drain`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Socket, Type};
use tokio::sync::{Semaphore, oneshot};
use tokio_io_timeout::TimeoutStream;
use tracing::Instrument;

use crate::shutdown::Drain;

use tower::BoxError;

/// A per-connection HTTP service as hyper serves it (the bounds every
/// function of the accept loop repeats, named once).
pub trait ConnectionService:
    Service<Request<Incoming>, Response = Response<Self::Body>, Error = Infallible, Future: Send + 'static>
    + Send
    + 'static
{
    type Body: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> ConnectionService for S
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Body = B;
}

/// Binds a listening TCP socket: `SO_REUSEADDR` (restart while old
/// connections linger in TIME_WAIT) and, for IPv6, `IPV6_V6ONLY`, so
/// `0.0.0.0:P` and `[::]:P` are two independent listeners on every host.
pub(crate) fn bind_tcp(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Whether two listen addresses compete for one port: equal, or one is the
/// wildcard of the same family (IPv6 sockets are v6-only, see [`bind_tcp`]).
pub fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time to receive a whole request head, and the longest an idle
    /// HTTP/1 keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Open connections on one listener; more are closed at once.
    pub max_connections: usize,
    /// Open connections from one client address on one listener.
    pub max_per_client: usize,
    /// A write the client does not take within this long ends the
    /// connection: a reader that stopped reading cannot pin buffers and an
    /// upstream connection forever.
    pub write_timeout: Duration,
    /// Whether HTTP/2 is offered (TLS listeners negotiate it by ALPN).
    pub http2: bool,
}

/// How a listener turns an accepted socket into a byte stream.
#[derive(Debug, Clone)]
pub enum Transport {
    Plain,
    Tls {
        config: Arc<rustls::ServerConfig>,
        handshake_timeout: Duration,
    },
}

/// What a service knows about its connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub client: SocketAddr,
    pub local: SocketAddr,
    /// `None` on plain HTTP; the SNI (lower-case) if the client sent one.
    pub tls: Option<TlsInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub server_name: Option<String>,
}

/// An accept loop that is running.
#[derive(Debug)]
pub struct Serving {
    local: SocketAddr,
    part: Drain,
    closed: oneshot::Receiver<()>,
}

impl Serving {
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Closes the listening socket (new connections are refused from the
    /// moment this returns); open connections drain in the background
    /// under the daemon's drain.
    pub async fn stop(self) {
        self.part.stop();
        let _ = self.closed.await;
    }
}

/// Serves HTTP on `listener` until `drain` (or the returned [`Serving`])
/// stops it. `make_service` builds a service per connection.
pub fn serve_http<M, S>(
    listener: tokio::net::TcpListener,
    transport: Transport,
    make_service: M,
    limits: HttpLimits,
    drain: &Drain,
) -> std::io::Result<Serving>
where
    M: Fn(&ConnectionInfo) -> S + Send + Sync + 'static,
    S: ConnectionService,
{
    let local = listener.local_addr()?;
    let part = drain.child();
    let (closed_tx, closed) = oneshot::channel();
    let accept = accept_loop(listener, transport, make_service, limits, part.clone(), closed_tx);
    part.spawn(accept.instrument(tracing::info_span!("listener", server.addr = %local)));
    Ok(Serving { local, part, closed })
}

fn server_builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    if limits.http2 {
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(128)
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        builder
    } else {
        builder.http1_only()
    }
}

/// Request heads larger than this get 431; an honest browser sends a few KiB.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

async fn accept_loop<M, S>(
    listener: tokio::net::TcpListener,
    transport: Transport,
    make_service: M,
    limits: HttpLimits,
    part: Drain,
    closed: oneshot::Sender<()>,
) where
    M: Fn(&ConnectionInfo) -> S + Send + Sync + 'static,
    S: ConnectionService,
{
    let builder = Arc::new(server_builder(&limits));
    let make_service = Arc::new(make_service);
    let caps = ConnectionCaps {
        max_connections: limits.max_connections,
        max_per_client: limits.max_per_client,
    };
    accept_each(listener, caps, &part.clone(), closed, |stream, client, local| {
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_timeout));
        let connection = Connection {
            stream: Box::pin(stream),
            transport: transport.clone(),
            builder: Arc::clone(&builder),
            make_service: Arc::clone(&make_service),
            client,
            local,
            part: part.clone(),
        };
        connection.run()
    })
    .await;
}

/// Caps on one listener's open connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionCaps {
    pub max_connections: usize,
    pub max_per_client: usize,
}

/// The accept loop under every listener: caps overall and per client
/// address (over them a connection is closed at once), accept errors that
/// never end the loop, a span per connection, and the drain: stops
/// accepting when `part` stops, then reports the socket closed.
async fn accept_each<C, F>(
    listener: tokio::net::TcpListener,
    caps: ConnectionCaps,
    part: &Drain,
    closed: oneshot::Sender<()>,
    connection: C,
) where
    C: Fn(tokio::net::TcpStream, SocketAddr, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(caps.max_connections));
    let per_client = Arc::new(ClientCounts::default());
    loop {
        let (stream, client) = tokio::select! {
            () = part.started() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(&e).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(client.addr = %client, limit = caps.max_connections, "connection limit reached; closing");
            continue;
        };
        let Some(client_slot) = ClientCounts::acquire(&per_client, client.ip(), caps.max_per_client) else {
            tracing::warn!(client.addr = %client, limit = caps.max_per_client, "per-client connection limit reached; closing");
            continue;
        };
        let Ok(local) = stream.local_addr() else { continue };
        let _ = stream.set_nodelay(true);
        let serve = connection(stream, client, local);
        part.spawn(
            async move {
                serve.await;
                drop((slot, client_slot));
            }
            .instrument(tracing::info_span!("conn", client.addr = %client)),
        );
    }
    drop(listener);
    let _ = closed.send(());
}

/// Serves a protocol other than HTTP on `listener` with the same accept
/// loop: `connection(stream, client, local, part)` per connection, where
/// `part` starts draining when the listener or the daemon stops.
pub fn serve_tcp<C, F>(
    listener: tokio::net::TcpListener,
    caps: ConnectionCaps,
    connection: C,
    drain: &Drain,
) -> std::io::Result<Serving>
where
    C: Fn(tokio::net::TcpStream, SocketAddr, SocketAddr, Drain) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr()?;
    let part = drain.child();
    let (closed_tx, closed) = oneshot::channel();
    let accept_part = part.clone();
    let accept = async move {
        let connection_part = accept_part.clone();
        accept_each(
            listener,
            caps,
            &accept_part,
            closed_tx,
            |stream, client, local| connection(stream, client, local, connection_part.clone()),
        )
        .await;
    };
    part.spawn(accept.instrument(tracing::info_span!("listener", server.addr = %local)));
    Ok(Serving { local, part, closed })
}

type ClientStream = Pin<Box<TimeoutStream<tokio::net::TcpStream>>>;

/// One accepted connection, before its handshake.
struct Connection<M> {
    stream: ClientStream,
    transport: Transport,
    builder: Arc<auto::Builder<TokioExecutor>>,
    make_service: Arc<M>,
    client: SocketAddr,
    local: SocketAddr,
    part: Drain,
}

impl<M> Connection<M> {
    async fn run<S>(self)
    where
        M: Fn(&ConnectionInfo) -> S,
        S: ConnectionService,
    {
        let mut info = ConnectionInfo {
            client: self.client,
            local: self.local,
            tls: None,
        };
        match &self.transport {
            Transport::Plain => {
                let service = (self.make_service)(&info);
                serve_connection(&self.builder, self.stream, service, &self.part).await;
            }
            Transport::Tls {
                config,
                handshake_timeout,
            } => {
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
                let mut stream =
                    match tokio::time::timeout(*handshake_timeout, acceptor.accept(self.stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(err = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    };
                if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                    // A CA validating TLS-ALPN-01: the handshake was the answer.
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                    return tracing::debug!("answered a TLS-ALPN-01 validation");
                }
                info.tls = Some(TlsInfo {
                    server_name: stream.get_ref().1.server_name().map(str::to_ascii_lowercase),
                });
                let service = (self.make_service)(&info);
                serve_connection(&self.builder, stream, service, &self.part).await;
            }
        }
    }
}

/// Serves one connection; when the drain starts, finishes the request in
/// flight (HTTP/1) or sends GOAWAY (HTTP/2) and lets open streams end.
async fn serve_connection<I, S>(builder: &auto::Builder<TokioExecutor>, io: I, service: S, part: &Drain)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: ConnectionService,
{
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = part.started() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(err = %e, "connection ended with an error");
    }
}

/// Open connections (or flows) per client address.
#[derive(Debug, Default)]
pub(crate) struct ClientCounts(Mutex<HashMap<IpAddr, usize>>);

impl ClientCounts {
    /// A slot for `client` if it has fewer than `limit`; dropping it frees it.
    pub(crate) fn acquire(counts: &Arc<Self>, client: IpAddr, limit: usize) -> Option<ClientSlot> {
        let mut map = counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(client).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: Arc::clone(counts),
            client,
        })
    }
}

#[derive(Debug)]
pub(crate) struct ClientSlot {
    counts: Arc<ClientCounts>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.client);
            }
        }
    }
}

/// Per-connection failures (the client gave up) are routine; running out
/// of file descriptors is not, and retrying at once would spin.
pub(crate) fn accept_error(e: &std::io::Error) -> impl Future<Output = ()> {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    let transient = matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset);
    if !transient {
        tracing::error!(err = %e, "accept failed; pausing 100 ms");
    }
    tokio::time::sleep(if transient {
        Duration::ZERO
    } else {
        Duration::from_millis(100)
    })
}

/// Which listener a socket is for, in errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerKind {
    /// "admin", "HTTPS", "HTTP".
    pub name: &'static str,
    /// The config key, e.g. "[admin] listen".
    pub key: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {address} ({}): {source}", kind.key)]
    Bind {
        kind: ListenerKind,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("moving the {} listener from {old} to {new} needs a restart: both use port {}", kind.name, new.port())]
    Overlap {
        kind: ListenerKind,
        old: SocketAddr,
        new: SocketAddr,
    },
}

/// Binds a listener (blocking; before or outside the runtime).
pub fn bind(kind: ListenerKind, address: SocketAddr) -> Result<std::net::TcpListener, ListenError> {
    bind_tcp(address).map_err(|source| ListenError::Bind {
        kind,
        address,
        source,
    })
}

/// The running listeners of one kind, keyed by their configured address (a
/// test may hand in a listener bound elsewhere, e.g. `127.0.0.1:0`).
#[derive(Debug)]
pub struct ListenerSet {
    kind: ListenerKind,
    running: HashMap<SocketAddr, Serving>,
}

/// Listeners bound for a new config, not yet serving. Everything that can
/// fail happened while staging; committing cannot fail.
#[derive(Debug)]
pub struct StagedListeners {
    wanted: Vec<SocketAddr>,
    new: Vec<(SocketAddr, tokio::net::TcpListener)>,
}

impl ListenerSet {
    /// Serves `listeners` (bound earlier, e.g. by `main`) with `serve`.
    pub fn start(
        kind: ListenerKind,
        listeners: Vec<(SocketAddr, std::net::TcpListener)>,
        serve: &dyn Fn(tokio::net::TcpListener) -> std::io::Result<Serving>,
    ) -> Result<Self, ListenError> {
        let mut set = Self {
            kind,
            running: HashMap::new(),
        };
        for (configured, listener) in listeners {
            let serving = tokio::net::TcpListener::from_std(listener)
                .and_then(serve)
                .map_err(|source| ListenError::Bind {
                    kind,
                    address: configured,
                    source,
                })?;
            tracing::info!(address = %serving.local_addr(), "{} listener ready", kind.name);
            set.running.insert(configured, serving);
        }
        Ok(set)
    }

    /// Binds whatever addresses `wanted` adds; nothing changes yet.
    pub fn stage(&self, wanted: &[SocketAddr]) -> Result<StagedListeners, ListenError> {
        let kind = self.kind;
        let mut new = Vec::new();
        for &address in wanted
            .iter()
            .filter(|address| !self.running.contains_key(address))
        {
            // A listener being replaced still holds the port: binding would
            // fail, and stopping it first could leave no access at all.
            if let Some(&old) = self.running.keys().find(|&&old| overlaps(old, address)) {
                return Err(ListenError::Overlap {
                    kind,
                    old,
                    new: address,
                });
            }
            let listener = tokio::net::TcpListener::from_std(bind(kind, address)?).map_err(|source| {
                ListenError::Bind {
                    kind,
                    address,
                    source,
                }
            })?;
            new.push((address, listener));
        }
        Ok(StagedListeners {
            wanted: wanted.to_vec(),
            new,
        })
    }

    /// Serves the new listeners with `serve`, then closes the ones the
    /// config dropped (their open connections drain in the background).
    /// Kept listeners go on serving: services read reloadable state
    /// themselves.
    pub async fn commit(
        &mut self,
        staged: StagedListeners,
        serve: &dyn Fn(tokio::net::TcpListener) -> std::io::Result<Serving>,
    ) {
        for (configured, listener) in staged.new {
            match serve(listener) {
                Ok(serving) => {
                    tracing::info!(address = %serving.local_addr(), "{} listener ready", self.kind.name);
                    self.running.insert(configured, serving);
                }
                Err(e) => {
                    tracing::error!(address = %configured, err = %e, "{} listener lost while starting it", self.kind.name);
                }
            }
        }
        let removed: Vec<SocketAddr> = self
            .running
            .keys()
            .filter(|address| !staged.wanted.contains(address))
            .copied()
            .collect();
        for address in removed {
            if let Some(serving) = self.running.remove(&address) {
                tracing::info!(address = %serving.local_addr(), "{} listener removed; draining it", self.kind.name);
                serving.stop().await;
            }
        }
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<_> = self.running.values().map(Serving::local_addr).collect();
        addrs.sort_unstable();
        addrs
    }
}

/// `e: cause: cause…` — hyper's own message alone says little.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
