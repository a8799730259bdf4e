//! The userspace TCP relay (e.g. go2rtc's ICE-TCP on 8555): each accepted
//! connection is spliced to a new connection to the target.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::Counters;
use super::limits::FlowCaps;
use crate::config::forward::Forward;
use crate::shutdown::Drain;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn serve(
    forward: Forward,
    listeners: Vec<Arc<TcpListener>>,
    caps: &Arc<FlowCaps>,
    counters: &Arc<Counters>,
    drain: &Drain,
) {
    let forward = Arc::new(forward);
    for (port, listener) in forward.ports.ports().zip(listeners) {
        let span = tracing::info_span!("forward", name = %forward.name, port);
        let (forward, caps, counters, tasks) = (
            Arc::clone(&forward),
            Arc::clone(caps),
            Arc::clone(counters),
            drain.clone(),
        );
        let stop = drain.token().clone();
        drain.spawn(
            async move {
                loop {
                    let (stream, client) = tokio::select! {
                        () = stop.cancelled() => break,
                        accepted = listener.accept() => match accepted {
                            Ok(accepted) => accepted,
                            Err(e) => {
                                crate::net::accept_error(&e).await;
                                continue;
                            }
                        },
                    };
                    let Ok(permit) = caps.open(client.ip()) else {
                        counters.flows_refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let target = forward.target_for(port);
                    let (counters, stop) = (Arc::clone(&counters), stop.clone());
                    tasks.spawn(
                        async move {
                            counters.flows_opened.fetch_add(1, Ordering::Relaxed);
                            counters.flows_active.fetch_add(1, Ordering::Relaxed);
                            tokio::select! {
                                () = stop.cancelled() => {}
                                () = splice(stream, client, target, &counters) => {}
                            }
                            counters.flows_active.fetch_sub(1, Ordering::Relaxed);
                            drop(permit);
                        }
                        .in_current_span(),
                    );
                }
            }
            .instrument(span),
        );
    }
}

async fn splice(mut client_stream: TcpStream, client: SocketAddr, target: SocketAddr, counters: &Counters) {
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%client, %target, "connect: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%client, %target, "connect: timed out");
            return;
        }
    };
    let _ = client_stream.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client_stream, &mut upstream).await {
        Ok((to_target, to_client)) => {
            counters.to_target.add_bytes(to_target);
            counters.to_client.add_bytes(to_client);
        }
        Err(e) => tracing::debug!(%client, "connection ended: {e}"),
    }
}
