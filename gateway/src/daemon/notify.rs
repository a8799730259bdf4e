//! systemd `Type=notify` messages. Each call is a no-op without
//! `NOTIFY_SOCKET`; a failed send is logged, never fatal: the daemon is
//! equally useful without a service manager.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use sd_notify::NotifyState;

/// Messages not yet taken by the service manager that may wait here.
const QUEUE: usize = 32;

enum Item {
    Message(String),
    /// Answered once everything before it went out.
    Flushed(SyncSender<()>),
}

/// The messages go out from a thread of their own: a datagram send blocks
/// while the service manager's socket queue is full (10 by default), and a
/// slow reader must never stall a reload or a stop. `None` without
/// `NOTIFY_SOCKET`.
static OUTBOX: LazyLock<Option<SyncSender<Item>>> = LazyLock::new(|| {
    std::env::var_os("NOTIFY_SOCKET")?;
    let (outbox, items) = std::sync::mpsc::sync_channel::<Item>(QUEUE);
    let spawned = std::thread::Builder::new()
        .name("sd-notify".to_owned())
        .spawn(move || {
            for item in items {
                match item {
                    Item::Message(message) => {
                        if let Err(e) = sd_notify::notify(&[NotifyState::Custom(&message)]) {
                            tracing::warn!(err = %e, "cannot notify the service manager");
                        }
                    }
                    Item::Flushed(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
    match spawned {
        Ok(_) => Some(outbox),
        Err(e) => {
            tracing::warn!(err = %e, "cannot start the notification thread: the service manager hears nothing");
            None
        }
    }
});

fn send(states: &[NotifyState<'_>]) {
    let Some(outbox) = OUTBOX.as_ref() else {
        return;
    };
    let mut message = String::new();
    for state in states {
        let _ = writeln!(message, "{state}");
    }
    // sd_notify adds the last newline.
    message.pop();
    match outbox.try_send(Item::Message(message)) {
        Ok(()) | Err(TrySendError::Disconnected(_)) => {}
        Err(TrySendError::Full(_)) => {
            tracing::warn!("the service manager is not reading its notifications: one dropped");
        }
    }
}

/// Waits (at most `within`) until the messages sent so far went out: the
/// last ones before the process exits.
pub(crate) fn flush(within: Duration) {
    let Some(outbox) = OUTBOX.as_ref() else {
        return;
    };
    let (done, flushed) = std::sync::mpsc::sync_channel(1);
    if outbox.try_send(Item::Flushed(done)).is_ok() {
        let _ = flushed.recv_timeout(within);
    }
}

pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading configuration"),
        ]),
        Err(_) => send(&[
            NotifyState::Reloading,
            NotifyState::Status("reloading configuration"),
        ]),
    }
}

pub(crate) fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Pings the watchdog at half its interval for as long as the runtime
/// schedules tasks (also while draining), so a wedged runtime gets restarted.
pub(crate) fn spawn_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(10));
    tracing::info!(interval = ?interval, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        loop {
            ticks.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}
