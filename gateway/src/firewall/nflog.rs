//! Reads the packets the isolation rules log (NFLOG over netfilter
//! netlink) and hands what cameras tried to an [`AttemptSink`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, Nla};
use netlink_packet_netfilter::nflog::{ConfigCmd, ConfigMode, PacketNla, ULogMessage, config_request};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket, protocols::NETLINK_NETFILTER};
use tracing::Instrument;

use super::blocked::{self, AttemptSink, LOG_GROUP, LOG_SNAPLEN};
use crate::shutdown::Drain;

/// Room for a burst of logged packets while camgate is busy; beyond it the
/// kernel drops log messages (ENOBUFS), never packets.
const RECEIVE_BUFFER: usize = 1 << 20;

/// Starts the reader; its state (listening, or why not) goes to `sink`.
pub fn spawn(sink: Arc<dyn AttemptSink>, drain: &Drain) {
    let stop = drain.clone();
    drain.spawn(
        async move {
            let socket = match bind().await {
                Ok(socket) => socket,
                Err(why) => {
                    tracing::error!("{why}; the cameras' report lacks blocked attempts");
                    sink.log_state(&format!("not reading: {why}"));
                    return;
                }
            };
            sink.log_state("reading");
            tokio::select! {
                () = stop.started() => {}
                () = read(&socket, sink.as_ref()) => {}
            }
        }
        .instrument(tracing::info_span!("nflog", group = LOG_GROUP)),
    );
}

async fn bind() -> Result<TokioSocket, String> {
    let mut socket = TokioSocket::new(NETLINK_NETFILTER)
        .map_err(|e| format!("cannot open a netfilter netlink socket: {e}"))?;
    let raw = socket.socket_mut();
    raw.bind_auto()
        .map_err(|e| format!("cannot bind a netfilter netlink socket: {e}"))?;
    // Best effort: the default buffer still works, with more ENOBUFS.
    let _ = raw.set_rx_buf_sz(RECEIVE_BUFFER);
    let mut request = config_request(
        NetfilterProtoFamily::Unspec,
        LOG_GROUP,
        vec![ConfigCmd::Bind.into(), ConfigMode::new_packet(LOG_SNAPLEN).into()],
    );
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    let failed = |e: std::io::Error| format!("cannot bind NFLOG group {LOG_GROUP}: {e}");
    socket.send(&buffer).await.map_err(failed)?;
    let mut answer = Vec::with_capacity(4096);
    socket.recv(&mut answer).await.map_err(failed)?;
    match NetlinkMessage::<NetfilterMessage>::deserialize(&answer) {
        Ok(NetlinkMessage {
            payload: NetlinkPayload::Error(error),
            ..
        }) if error.code.is_some() => Err(failed(error.to_io())),
        Ok(_) => Ok(socket),
        Err(e) => Err(format!("unreadable answer binding NFLOG group {LOG_GROUP}: {e}")),
    }
}

async fn read(socket: &TokioSocket, sink: &dyn AttemptSink) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut overruns: u64 = 0;
    loop {
        buffer.clear();
        if let Err(e) = socket.recv(&mut buffer).await {
            // ENOBUFS: the kernel dropped log messages (not packets).
            overruns += 1;
            if overruns.is_power_of_two() {
                tracing::warn!(overruns, "blocked-attempt log overrun: {e}");
            }
            continue;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut rest = &buffer[..];
        // One datagram may carry several messages.
        while !rest.is_empty() {
            let Ok(message) = NetlinkMessage::<NetfilterMessage>::deserialize(rest) else {
                break;
            };
            let length = (message.header.length as usize).max(1).min(rest.len());
            rest = &rest[length.next_multiple_of(4).min(rest.len())..];
            if let Some(attempt) = attempt(&message) {
                tracing::debug!(?attempt, "camera attempt blocked");
                sink.attempt(attempt, now);
            }
        }
    }
}

fn attempt(message: &NetlinkMessage<NetfilterMessage>) -> Option<blocked::Attempt> {
    let NetlinkPayload::InnerMessage(NetfilterMessage {
        inner: NetfilterMessageInner::ULog(ULogMessage::Packet(attributes)),
        ..
    }) = &message.payload
    else {
        return None;
    };
    let mut prefix = None;
    let mut mac = None;
    let mut payload = None;
    for attribute in attributes {
        match attribute {
            PacketNla::Prefix(text) => prefix = text.to_str().ok(),
            PacketNla::Payload(bytes) => payload = Some(bytes.as_slice()),
            PacketNla::HwAddr(address) => mac = ethernet_address(address),
            _ => {}
        }
    }
    blocked::parse(prefix?, mac, payload?)
}

/// The crate keeps the address's fields private; its wire form is
/// `length (u16 BE), 2 padding bytes, 8 address bytes`.
fn ethernet_address(address: &impl Nla) -> Option<[u8; 6]> {
    let mut wire = vec![0; address.value_len()];
    address.emit_value(&mut wire);
    let length = u16::from_be_bytes([*wire.first()?, *wire.get(1)?]);
    (length == 6).then(|| wire.get(4..10)?.try_into().ok()).flatten()
}
