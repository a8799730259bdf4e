//! Prometheus metrics (OpenMetrics text, via the official `prometheus-client`
//! crate). Each subsystem registers its own metrics here as it lands.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    /// "ok" or "error"
    result: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    config_generation: Gauge,
    config_reloads: Family<ReloadLabels, Counter>,
    setup_mode: Gauge,
}

impl Metrics {
    pub fn new(start_time_unix: f64, streams: std::sync::Arc<crate::streams::StreamStatusSource>) -> Self {
        let mut registry = Registry::with_prefix("camgate");
        registry.register_collector(Box::new(streams));
        registry.register(
            "build",
            "camgate version",
            Info::new(vec![("version", crate::VERSION)]),
        );
        let start_time = Gauge::<f64, AtomicU64>::default();
        start_time.set(start_time_unix);
        registry.register(
            "start_time_seconds",
            "When camgate started, in seconds since the epoch",
            start_time,
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Configuration generation in force (1 at start, +1 per successful reload)",
            config_generation.clone(),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            config_reloads.clone(),
        );
        let setup_mode = Gauge::default();
        registry.register(
            "setup_mode",
            "1 while camgate waits to be set up",
            setup_mode.clone(),
        );
        Self {
            registry,
            config_generation,
            config_reloads,
            setup_mode,
        }
    }

    pub fn config_applied(&self, generation: u64, setup: bool) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.setup_mode.set(i64::from(setup));
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
