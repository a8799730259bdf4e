//! The one drain mechanism: a cancellation token tree plus a task tracker.
//!
//! Cancelling the root starts the drain: every listener stops accepting and
//! every connection finishes what it is doing. [`Drain::finish`] then waits,
//! at most for the grace period, for all tracked tasks. A subsystem that is
//! replaced on reload stops its old part with a child token; the tasks stay
//! tracked, so a shutdown during a reload still waits for them.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, Default)]
pub struct Drain {
    token: CancellationToken,
    tracker: TaskTracker,
}

/// The grace period ran out with tasks still running.
#[derive(Debug, thiserror::Error)]
#[error("grace period of {grace:?} expired with {pending} task(s) still draining")]
pub struct GraceExpired {
    pub grace: Duration,
    pub pending: usize,
}

impl Drain {
    /// A drain that starts when `token` is cancelled.
    pub fn new(token: CancellationToken) -> Self {
        Self {
            token,
            tracker: TaskTracker::new(),
        }
    }

    /// A part that can be stopped on its own (cancel its token) and that
    /// also stops when the whole daemon drains.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
        }
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Starts draining this part (or everything, for the root).
    pub fn stop(&self) {
        self.token.cancel();
    }

    /// Runs `task` as part of the drain: [`Drain::finish`] waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Waits for the drain to start.
    pub async fn started(&self) {
        self.token.cancelled().await;
    }

    /// Stops everything and waits at most `grace` for tracked tasks.
    pub async fn finish(&self, grace: Duration) -> Result<(), GraceExpired> {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .map_err(|_| GraceExpired {
                grace,
                pending: self.tracker.len(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn finish_waits_for_tasks_then_gives_up() {
        let drain = Drain::default();
        let part = drain.child();
        let quick = part.clone();
        part.spawn(async move {
            quick.started().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        drain.spawn(async { std::future::pending::<()>().await });
        let err = drain.finish(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(
            err.pending, 1,
            "the stoppable task finished, the stuck one did not"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn child_stops_alone() {
        let drain = Drain::default();
        let part = drain.child();
        part.stop();
        assert!(part.token().is_cancelled());
        assert!(!drain.token().is_cancelled());
        drain.finish(Duration::from_secs(1)).await.unwrap();
    }
}
