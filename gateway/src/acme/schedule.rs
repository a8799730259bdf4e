//! When to renew and when to retry (pure: the caller passes the time and the
//! randomness).

use std::time::{Duration, SystemTime};

/// A certificate's validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO)
    }

    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or(Duration::ZERO)
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// A renewal window suggested by the CA (ACME Renewal Information, RFC 9773).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: SystemTime,
    pub end: SystemTime,
}

/// When to renew. With a window from the CA: a random point inside it
/// (RFC 9773 §4.2). Without: at ⅔ of the lifetime (certmagic and
/// rustls-acme do the same), moved earlier by up to 1/20 of the lifetime
/// so that many gateways do not renew in the same second. `jitter` is in
/// `[0, 1)`.
pub fn renew_at(validity: Validity, window: Option<Window>, jitter: f64) -> SystemTime {
    let jitter = jitter.clamp(0.0, 1.0);
    // A window that is already over for a new certificate (a CA bug, or a
    // stale answer) must not make an order storm.
    let earliest = validity.not_before + (validity.lifetime() / 10).min(MIN_CERTIFICATE_AGE);
    match window {
        Some(window) => {
            let span = window.end.duration_since(window.start).unwrap_or(Duration::ZERO);
            (window.start + span.mul_f64(jitter)).max(earliest)
        }
        None => {
            let lifetime = validity.lifetime();
            validity.not_before + lifetime.mul_f64(2.0 / 3.0) - lifetime.mul_f64(jitter / 20.0)
        }
    }
}

/// A certificate is never renewed younger than this (or a tenth of its
/// lifetime, if shorter).
const MIN_CERTIFICATE_AGE: Duration = Duration::from_secs(3600);

/// The longest `Retry-After` honoured (Let's Encrypt's longest limits are a
/// week); anything longer is a CA bug and must not park a host for good.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest wait between two failed attempts.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);
/// Without a certificate, the first retry comes after this.
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MIN_RETRY: Duration = Duration::from_secs(5);

/// The wait after the `failures`-th failure in a row (1 = the first):
/// exponential from a first delay that fits the time the current
/// certificate has left, capped so that several retries still fit before it
/// expires, and never below what the CA asked for with `Retry-After`.
pub fn retry_delay(failures: u32, remaining: Option<Duration>, retry_after: Option<Duration>) -> Duration {
    // An expired certificate buys no time: back off as if there were none.
    let remaining = remaining.filter(|left| !left.is_zero());
    let first = remaining.map_or(FIRST_RETRY, |left| (left / 8).clamp(MIN_RETRY, FIRST_RETRY));
    let cap = remaining.map_or(MAX_RETRY_DELAY, |left| (left / 2).clamp(first, MAX_RETRY_DELAY));
    let doublings = failures.saturating_sub(1).min(20);
    let backoff = first.saturating_mul(1 << doublings).min(cap);
    retry_after.map_or(backoff, |asked| backoff.max(asked.min(MAX_RETRY_AFTER)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn validity(days: u32) -> Validity {
        let not_before = SystemTime::UNIX_EPOCH + 1000 * DAY;
        Validity {
            not_before,
            not_after: not_before + days * DAY,
        }
    }

    #[test]
    fn renews_at_two_thirds_moved_earlier_by_at_most_a_twentieth() {
        let v = validity(90);
        assert_eq!(renew_at(v, None, 0.0), v.not_before + 60 * DAY);
        let earliest = renew_at(v, None, 0.999_999);
        assert!(earliest < v.not_before + 60 * DAY);
        assert!(earliest > v.not_before + 60 * DAY - 90 * DAY / 20 - Duration::from_secs(1));
        // Short lifetimes scale: 45-day certificates renew at day 30.
        assert_eq!(
            renew_at(validity(45), None, 0.0),
            validity(45).not_before + 30 * DAY
        );
    }

    #[test]
    fn a_window_from_the_ca_wins() {
        let v = validity(90);
        let start = v.not_before + 10 * DAY;
        let window = Window {
            start,
            end: start + 2 * DAY,
        };
        assert_eq!(renew_at(v, Some(window), 0.0), start);
        assert_eq!(renew_at(v, Some(window), 0.5), start + DAY);
        let empty = Window { start, end: start };
        assert_eq!(renew_at(v, Some(empty), 0.7), start);
    }

    #[test]
    fn retries_double_up_to_a_cap_and_honour_retry_after() {
        let delays: Vec<u64> = (1..=6).map(|n| retry_delay(n, None, None).as_secs()).collect();
        assert_eq!(delays, [60, 120, 240, 480, 960, 1920]);
        assert_eq!(retry_delay(40, None, None), MAX_RETRY_DELAY);
        // Rate limited for 3 hours: wait 3 hours, not 2 minutes.
        let asked = Duration::from_secs(3 * 3600);
        assert_eq!(retry_delay(2, None, Some(asked)), asked);
        // An absurd one is capped at a week.
        assert_eq!(
            retry_delay(1, None, Some(Duration::from_secs(u64::MAX))),
            MAX_RETRY_AFTER
        );
        // A short Retry-After does not cut the backoff.
        assert_eq!(retry_delay(3, None, Some(Duration::from_secs(1))).as_secs(), 240);
    }

    #[test]
    fn retries_fit_before_the_current_certificate_expires() {
        // 40 s left (a 2-minute test certificate at its renewal point).
        let left = Some(Duration::from_secs(40));
        let delays: Vec<u64> = (1..=4).map(|n| retry_delay(n, left, None).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 20]);
        // 30 days left: the first retry after a minute, never more than a day.
        let month = Some(30 * DAY);
        assert_eq!(retry_delay(1, month, None).as_secs(), 60);
        assert_eq!(retry_delay(30, month, None), MAX_RETRY_DELAY);
        // Expired: as without a certificate, not every 5 s.
        assert_eq!(retry_delay(1, Some(Duration::ZERO), None).as_secs(), 60);
    }
}
