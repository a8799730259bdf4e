//! Listening sockets and the HTTP accept loop every listener uses: a span
//! per connection, a header-read timeout (slowloris; it also ends idle
//! keep-alive connections), a cap on open connections, accept errors that
//! never end the loop, and a graceful drain through [`Drain`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Socket, Type};
use tokio::sync::{Semaphore, oneshot};
use tracing::Instrument;

use crate::shutdown::Drain;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Binds a listening TCP socket: `SO_REUSEADDR` (restart while old
/// connections linger in TIME_WAIT) and, for IPv6, `IPV6_V6ONLY`, so
/// `0.0.0.0:P` and `[::]:P` are two independent listeners on every host.
pub fn bind_tcp(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
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
    /// keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Open connections on one listener; more are closed at once.
    pub max_connections: usize,
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

/// Serves HTTP/1.1 on `listener` until `drain` (or the returned
/// [`Serving`]) stops it. `make_service` builds a service per connection
/// from the client address.
pub fn serve_http<M, S, B>(
    listener: tokio::net::TcpListener,
    make_service: M,
    limits: HttpLimits,
    drain: &Drain,
) -> std::io::Result<Serving>
where
    M: Fn(SocketAddr) -> S + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let local = listener.local_addr()?;
    let part = drain.child();
    let (closed_tx, closed) = oneshot::channel();
    let accept = accept_loop(listener, make_service, limits, part.clone(), closed_tx);
    part.spawn(accept.instrument(tracing::info_span!("listener", server.addr = %local)));
    Ok(Serving { local, part, closed })
}

async fn accept_loop<M, S, B>(
    listener: tokio::net::TcpListener,
    make_service: M,
    limits: HttpLimits,
    part: Drain,
    closed: oneshot::Sender<()>,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
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
            tracing::warn!(client.addr = %client, limit = limits.max_connections, "connection limit reached; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), make_service(client));
        let connection = graceful.watch(connection.into_owned());
        part.spawn(
            async move {
                if let Err(e) = connection.await {
                    tracing::debug!(err = %e, "connection ended with an error");
                }
                drop(slot);
            }
            .instrument(tracing::info_span!("conn", client.addr = %client)),
        );
    }
    drop(listener);
    let _ = closed.send(());
    graceful.shutdown().await;
}

/// Per-connection failures (the client gave up) are routine; running out
/// of file descriptors is not, and retrying at once would spin.
fn accept_error(e: &std::io::Error) -> impl Future<Output = ()> {
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
