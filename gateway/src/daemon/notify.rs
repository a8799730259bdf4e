//! systemd `Type=notify` messages. Each call is a no-op without
//! `NOTIFY_SOCKET`; a failed send is logged, never fatal: the daemon is
//! equally useful without a service manager.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(err = %e, "cannot notify the service manager");
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

/// Pings the watchdog at half its interval while the runtime schedules
/// tasks, so a wedged runtime gets restarted. Stops with `stop`.
pub(crate) fn spawn_watchdog(stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(10));
    tracing::info!(interval = ?interval, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticks.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    });
}
