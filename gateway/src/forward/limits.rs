//! Caps on userspace flows (per client address and overall), and the
//! per-source rate limit on TURN Allocate requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::config::forward::FlowLimits;
use crate::net::{ClientCounts, ClientSlot};

/// Counts open flows (UDP flows and TCP connections of every userspace
/// forward) against the limits; per client with the proxy's
/// [`ClientCounts`], overall with a counter.
#[derive(Debug)]
pub struct FlowCaps {
    limits: Mutex<FlowLimits>,
    total: AtomicUsize,
    per_client: Arc<ClientCounts>,
}

/// Why a flow was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Client,
    Total,
}

/// One open flow; dropping it frees its place.
#[derive(Debug)]
pub struct FlowPermit {
    caps: Arc<FlowCaps>,
    _client: ClientSlot,
}

impl FlowCaps {
    pub fn new(limits: FlowLimits) -> Arc<Self> {
        Arc::new(Self {
            limits: Mutex::new(limits),
            total: AtomicUsize::new(0),
            per_client: Arc::default(),
        })
    }

    /// New limits apply to new flows; open ones stay.
    pub fn set_limits(&self, limits: FlowLimits) {
        *self.lock() = limits;
    }

    pub fn limits(&self) -> FlowLimits {
        *self.lock()
    }

    pub fn open(self: &Arc<Self>, client: IpAddr) -> Result<FlowPermit, Refused> {
        let limits = self.limits();
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limits.max_flows).then_some(n + 1)
            })
            .map_err(|_| Refused::Total)?;
        match ClientCounts::acquire(&self.per_client, client, limits.max_flows_per_client) {
            Some(slot) => Ok(FlowPermit {
                caps: Arc::clone(self),
                _client: slot,
            }),
            None => {
                self.total.fetch_sub(1, Ordering::AcqRel);
                Err(Refused::Client)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, FlowLimits> {
        // Plain values: a poisoned lock still holds consistent ones.
        self.limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FlowPermit {
    fn drop(&mut self) {
        self.caps.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Token buckets per source address: `rate` per second, burst `2 × rate`
/// (the same figures the kernel path's nftables meter uses).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

/// Sources remembered at most; beyond this, full buckets are forgotten.
const MAX_SOURCES: usize = 65_536;

impl RateLimiter {
    pub fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            buckets: HashMap::new(),
        }
    }

    /// Whether one more request from `source` at `now` is within the rate.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let burst = 2.0 * self.rate;
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&source) {
            let rate = self.rate;
            self.buckets.retain(|_, (tokens, at)| {
                now.duration_since(*at).as_secs_f64().mul_add(rate, *tokens) < burst
            });
        }
        let (tokens, at) = self.buckets.entry(source).or_insert((burst, now));
        *tokens = now
            .duration_since(*at)
            .as_secs_f64()
            .mul_add(self.rate, *tokens)
            .min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(total: usize, per_client: usize) -> FlowLimits {
        FlowLimits {
            idle_timeout: Duration::from_secs(60),
            max_flows: total,
            max_flows_per_client: per_client,
            allocate_rate: 1,
        }
    }

    #[test]
    fn caps_per_client_and_overall() {
        let caps = FlowCaps::new(limits(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = caps.open(a).unwrap();
        let _second = caps.open(a).unwrap();
        assert_eq!(caps.open(a).unwrap_err(), Refused::Client);
        let _third = caps.open(b).unwrap();
        assert_eq!(caps.open(b).unwrap_err(), Refused::Total);
        drop(first);
        assert!(caps.open(a).is_ok());
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let mut limiter = RateLimiter::new(2);
        let source: IpAddr = "192.0.2.1".parse().unwrap();
        let start = Instant::now();
        assert_eq!((0..6).filter(|_| limiter.allow(source, start)).count(), 4);
        assert!(limiter.allow(source, start + Duration::from_millis(500)));
        assert!(!limiter.allow(source, start + Duration::from_millis(500)));
        assert!(limiter.allow("192.0.2.2".parse().unwrap(), start));
    }
}
