//! API tokens: random secrets that camgate stores only as SHA-256 digests,
//! each limited to one site and a scope of rules or paths.
//!
//! A token has 256 random bits, so a fast digest is enough (nothing to
//! brute-force), and a request with a token costs one SHA-256, not an
//! argon2 run: MJPEG `<img>` URLs and smart-home pollers stay cheap.

use std::time::SystemTime;

use globset::GlobMatcher;

use crate::proxy::path::CanonicalPath;

/// Every secret starts with this, so scanners and people recognize it.
pub const SECRET_PREFIX: &str = "cgt_";
const SECRET_BYTES: usize = 32;

pub type Digest = [u8; 32];

/// A new secret (shown once) and the digest the config keeps.
pub fn generate() -> Result<(String, Digest), getrandom::Error> {
    generate_prefixed(SECRET_PREFIX)
}

/// `prefix` + 256 random bits in hex, and its digest: token and session
/// secrets.
pub fn generate_prefixed(prefix: &str) -> Result<(String, Digest), getrandom::Error> {
    let secret = format!("{prefix}{}", random_hex()?);
    let digest = digest(&secret);
    Ok((secret, digest))
}

/// 256 random bits as 64 hex digits.
pub fn random_hex() -> Result<String, getrandom::Error> {
    let mut random = [0u8; SECRET_BYTES];
    getrandom::fill(&mut random)?;
    Ok(hex(&random))
}

pub fn digest(secret: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref());
    out
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// 64 hex digits → a SHA-256 digest (token secrets, certificate pins).
pub fn parse_digest(text: &str) -> Option<Digest> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub name: String,
    pub digest: Digest,
    pub site: String,
    pub scope: Vec<ScopeEntry>,
    pub expires: Option<SystemTime>,
}

/// What a token may reach on its site.
#[derive(Debug, Clone)]
pub enum ScopeEntry {
    /// `rule:NAME`: whatever that rule matches.
    Rule(String),
    /// `/glob` or `/glob?key=value&…`: canonical paths the glob matches,
    /// and, for each `key=value`, every occurrence of `key` in the query
    /// has exactly that value (and there is at least one).
    Path {
        text: String,
        glob: GlobMatcher,
        query: Vec<(String, String)>,
    },
}

impl PartialEq for ScopeEntry {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Rule(a), Self::Rule(b)) => a == b,
            (Self::Path { text: a, .. }, Self::Path { text: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl ScopeEntry {
    /// Parses one scope entry; `case_insensitive` follows the site's DVR.
    pub fn parse(text: &str, case_insensitive: bool) -> Result<Self, String> {
        if let Some(rule) = text.strip_prefix("rule:") {
            return if rule.is_empty() {
                Err("`rule:` needs a rule name".to_owned())
            } else {
                Ok(Self::Rule(rule.to_owned()))
            };
        }
        let (path, query) = text.split_once('?').unwrap_or((text, ""));
        if !path.starts_with('/') {
            return Err(format!(
                "{text:?}: a scope is `rule:NAME` or a path glob starting with '/'"
            ));
        }
        let glob = globset::GlobBuilder::new(path)
            .case_insensitive(case_insensitive)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("{text:?}: invalid glob: {e}"))?
            .compile_matcher();
        let mut pairs = Vec::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key.is_empty() {
                return Err(format!("{text:?}: empty query key"));
            }
            pairs.push((key.into_owned(), value.into_owned()));
        }
        Ok(Self::Path {
            text: text.to_owned(),
            glob,
            query: pairs,
        })
    }

    pub fn permits(&self, rule: Option<&str>, path: &CanonicalPath, query: Option<&str>) -> bool {
        match self {
            Self::Rule(name) => rule == Some(name.as_str()),
            Self::Path {
                glob,
                query: required,
                ..
            } => {
                glob.is_match(path.as_str())
                    && required.iter().all(|(key, value)| query_pins(query, key, value))
            }
        }
    }
}

/// `key` occurs in `query`, and every occurrence equals `value`.
fn query_pins(query: Option<&str>, key: &str, value: &str) -> bool {
    let mut seen = false;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == key {
            if v != value {
                return false;
            }
            seen = true;
        }
    }
    seen
}

impl Token {
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }

    pub fn permits(&self, rule: Option<&str>, path: &CanonicalPath, query: Option<&str>) -> bool {
        self.scope.iter().any(|entry| entry.permits(rule, path, query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::path::{PathPolicy, canonicalize};

    fn path(text: &str) -> CanonicalPath {
        canonicalize(text, PathPolicy::default()).unwrap()
    }

    #[test]
    fn secrets_are_random_prefixed_and_digest_round_trips() {
        let (a, da) = generate().unwrap();
        let (b, _) = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == 4 + 64);
        assert_eq!(digest(&a), da);
        assert_eq!(parse_digest(&hex(&da)), Some(da));
        assert_eq!(parse_digest("zz"), None);
        assert_eq!(parse_digest(&"g".repeat(64)), None);
    }

    #[test]
    fn path_scopes_pin_query_values() {
        let scope = ScopeEntry::parse("/video.mjpg?oids=1", true).unwrap();
        assert!(scope.permits(None, &path("/video.mjpg"), Some("oids=1&size=640x480")));
        assert!(scope.permits(None, &path("/VIDEO.mjpg"), Some("oids=1")));
        for query in [
            None,
            Some("oids=2"),
            Some("oids=1&oids=2"),
            Some("oids=1,2"),
            Some("oid=1"),
        ] {
            assert!(!scope.permits(None, &path("/video.mjpg"), query), "{query:?}");
        }
        assert!(!scope.permits(None, &path("/grab.jpg"), Some("oids=1")));
        let sensitive = ScopeEntry::parse("/video.mjpg", false).unwrap();
        assert!(!sensitive.permits(None, &path("/VIDEO.mjpg"), None));
    }

    #[test]
    fn globs_stay_inside_their_segments_and_rules_match_by_name() {
        let scope = ScopeEntry::parse("/cam/*/stream", false).unwrap();
        assert!(scope.permits(None, &path("/cam/1/stream"), None));
        assert!(!scope.permits(None, &path("/cam/1/x/stream"), None));
        let rule = ScopeEntry::parse("rule:streams", false).unwrap();
        assert!(rule.permits(Some("streams"), &path("/x"), None));
        assert!(!rule.permits(Some("api"), &path("/x"), None));
        assert!(!rule.permits(None, &path("/x"), None));
        for bad in ["video.mjpg", "rule:", "/a?=1", "/[z"] {
            assert!(ScopeEntry::parse(bad, false).is_err(), "{bad}");
        }
    }
}
