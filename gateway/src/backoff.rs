//! Pure: exponential reconnect delays with jitter, reset after a healthy
//! period, so a fleet of cameras (or relays) that lost their peer at the
//! same moment does not come back in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    /// A connection that lasted this long was healthy: the next failure
    /// starts again from `first`.
    healthy: Duration,
    /// Failures since the last reset.
    failures: u32,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration, healthy: Duration) -> Self {
        Self {
            first,
            cap,
            healthy,
            failures: 0,
        }
    }

    /// The delay before the next attempt: `first` doubled per failure up to
    /// `cap`, then scaled by `jitter` (a sample in 0..1) into 80 %..120 %,
    /// never past `cap`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let doublings = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let base = self.first.saturating_mul(1 << doublings).min(self.cap);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.5
        };
        base.mul_f64(0.4f64.mul_add(jitter, 0.8)).min(self.cap)
    }

    /// Reports how long the last connection lasted; a healthy one resets.
    pub fn connected_for(&mut self, lasted: Duration) {
        if lasted >= self.healthy {
            self.failures = 0;
        }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn doubles_up_to_the_cap_and_resets_after_a_healthy_connection() {
        let mut b = backoff();
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay(0.5).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        b.connected_for(Duration::from_secs(59));
        assert_eq!(
            b.next_delay(0.5),
            Duration::from_secs(30),
            "a short connection does not reset"
        );
        b.connected_for(Duration::from_secs(60));
        assert_eq!(b.next_delay(0.5), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_within_twenty_percent_and_never_past_the_cap() {
        let mut b = backoff();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(800));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(2400));
        for _ in 0..30 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(30));
        }
        assert!(b.next_delay(0.0) >= Duration::from_secs(24));
        assert_eq!(
            b.next_delay(f64::NAN),
            Duration::from_secs(30),
            "NaN means no jitter"
        );
    }
}
