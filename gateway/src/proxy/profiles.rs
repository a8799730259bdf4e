//! Built-in DVR profiles: data files under `gateway/profiles/`, embedded in
//! the binary. Each gives the DVR's default port, whether it is a Windows
//! server (case-insensitive, Windows path rules), lenient header parsing,
//! the ports it needs forwarded, and its split rules in the same syntax as a
//! site's `[[site.rule]]`.

use std::sync::LazyLock;

use serde::Deserialize;

use crate::config::error::Problem;
use crate::config::forward::{PortRange, Protocol};
use crate::config::proxy::{RuleContext, compile_rules};
use crate::config::raw::RawRule;
use crate::proxy::rules::{Rule, RuleSource};

/// `(name, file contents)` of every built-in profile.
const SOURCES: &[(&str, &str)] = &[
    ("agentdvr", include_str!("../../profiles/agentdvr.toml")),
    ("blueiris", include_str!("../../profiles/blueiris.toml")),
    ("frigate", include_str!("../../profiles/frigate.toml")),
    ("generic", include_str!("../../profiles/generic.toml")),
    ("go2rtc", include_str!("../../profiles/go2rtc.toml")),
    ("moonfire", include_str!("../../profiles/moonfire.toml")),
    ("motion", include_str!("../../profiles/motion.toml")),
    ("motioneye", include_str!("../../profiles/motioneye.toml")),
    ("shinobi", include_str!("../../profiles/shinobi.toml")),
    ("zoneminder", include_str!("../../profiles/zoneminder.toml")),
];

#[derive(Debug)]
pub struct Profile {
    pub name: &'static str,
    /// The TOML file, for `camgate profiles show`.
    pub source: &'static str,
    pub description: String,
    /// Used when a site's upstream URL has no port.
    pub upstream_port: u16,
    /// Windows server: strict Windows path rules (see `path.rs`).
    pub windows: bool,
    pub case_insensitive: bool,
    /// Drop malformed upstream header lines instead of answering 502.
    pub lenient_headers: bool,
    /// Ports the DVR needs forwarded 1:1 (e.g. its STUN/TURN server).
    pub forwards: Vec<ProfileForward>,
    rules: Vec<RawRule>,
}

/// A `[[forward]]` of a profile: to the site's upstream address, same ports.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileForward {
    pub protocol: Protocol,
    pub ports: PortRange,
    #[serde(default)]
    pub stun: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    description: String,
    upstream_port: u16,
    #[serde(default)]
    windows: bool,
    case_insensitive: Option<bool>,
    #[serde(default)]
    lenient_headers: bool,
    #[serde(default, rename = "forward")]
    forwards: Vec<ProfileForward>,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
}

static PROFILES: LazyLock<Vec<Profile>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .map(|&(name, source)| {
            let raw: RawProfile = toml::from_str(source)
                .unwrap_or_else(|e| panic!("built-in profile {name} is invalid (a test catches this): {e}"));
            Profile {
                name,
                source,
                description: raw.description,
                upstream_port: raw.upstream_port,
                windows: raw.windows,
                case_insensitive: raw.case_insensitive.unwrap_or(raw.windows),
                lenient_headers: raw.lenient_headers,
                forwards: raw.forwards,
                rules: raw.rules,
            }
        })
        .collect()
});

pub fn all() -> &'static [Profile] {
    &PROFILES
}

pub fn get(name: &str) -> Option<&'static Profile> {
    all().iter().find(|profile| profile.name == name)
}

/// Built-in profiles are unique by name.
impl PartialEq for Profile {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Profile {
    /// E.g. `"udp 3478 (STUN only), udp 50000-50100"`.
    pub fn forwards_summary(&self) -> String {
        let entries: Vec<String> = self
            .forwards
            .iter()
            .map(|f| {
                let stun = if f.stun { " (STUN only)" } else { "" };
                format!("{} {}{stun}", f.protocol.as_str(), f.ports)
            })
            .collect();
        entries.join(", ")
    }

    pub(crate) fn compile_rules(&'static self, context: &RuleContext<'_>) -> Result<Vec<Rule>, Problem> {
        compile_rules(
            &self.rules,
            RuleSource::Profile(self.name),
            context,
            &|i, field| format!("rule[{i}].{field}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy::Principals;
    use crate::config::{Config, Overrides};

    #[test]
    fn every_profile_parses_and_compiles() {
        let config = Config::defaults(Overrides::default());
        let upstream: http::Uri = "http://192.0.2.1:80/".parse().unwrap();
        for profile in all() {
            let context = RuleContext {
                sets: &config.proxy.sets,
                principals: &Principals::default(),
                case_insensitive: profile.case_insensitive,
                upstream: &upstream,
            };
            let rules = profile
                .compile_rules(&context)
                .unwrap_or_else(|p| panic!("{}: {p:?}", profile.name));
            assert!(
                !rules.is_empty(),
                "{} has no rules: everything would be denied",
                profile.name
            );
            assert!(!profile.description.is_empty());
            for forward in &profile.forwards {
                assert!(
                    !forward.stun || forward.protocol == Protocol::Udp,
                    "{}",
                    profile.name
                );
            }
        }
        assert_eq!(all().len(), SOURCES.len());
    }
}
