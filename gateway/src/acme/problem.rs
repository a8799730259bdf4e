//! ACME failures in words a person can act on (pure).

use std::time::Duration;

use crate::config::acme::ChallengePreference;

/// Which challenge an order used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ChallengeKind {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeKind {
    /// The challenge for the next attempt: the preferred one, or in
    /// automatic mode HTTP-01 (when there is an HTTP listener) and, after a
    /// failed validation, the other one.
    pub fn choose(preference: ChallengePreference, has_http: bool, failed: Option<Self>) -> Self {
        match preference {
            ChallengePreference::Http01 => Self::Http01,
            ChallengePreference::TlsAlpn01 => Self::TlsAlpn01,
            ChallengePreference::Auto => match failed {
                Some(Self::Http01) => Self::TlsAlpn01,
                Some(Self::TlsAlpn01) if has_http => Self::Http01,
                _ if has_http => Self::Http01,
                _ => Self::TlsAlpn01,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }

    fn port(self) -> u16 {
        match self {
            Self::Http01 => 80,
            Self::TlsAlpn01 => 443,
        }
    }
}

/// What went wrong, and what it means for the next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The CA could not validate the challenge: another challenge type may work.
    Validation(ChallengeKind),
    /// The account is gone at the CA: make a new one.
    AccountGone,
    /// Rate limits, network trouble, CA errors: wait and retry.
    Other,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AcmeError {
    /// Human-readable, for the log and `/api/status`.
    pub message: String,
    pub kind: FailureKind,
    /// The CA's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

impl AcmeError {
    pub fn other(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: FailureKind::Other,
            retry_after: None,
        }
    }
}

/// An RFC 8555 problem document's type (without the URN prefix) and detail,
/// explained for `host`, during or after a `challenge`.
pub fn explain(
    problem_type: Option<&str>,
    detail: Option<&str>,
    host: &str,
    challenge: Option<ChallengeKind>,
    retry_after: Option<Duration>,
) -> AcmeError {
    // Account-level calls have no host.
    let host = if host.is_empty() { "this name" } else { host };
    let short = problem_type
        .map(|t| t.trim_start_matches("urn:ietf:params:acme:error:"))
        .unwrap_or("");
    let said = match detail {
        Some(detail) if !detail.is_empty() => format!(" (the CA said: {detail})"),
        _ => String::new(),
    };
    let validation = |message: String| AcmeError {
        message,
        kind: challenge.map_or(FailureKind::Other, FailureKind::Validation),
        retry_after,
    };
    let port = challenge.map_or(443, ChallengeKind::port);
    match short {
        "connection" => validation(format!(
            "port {port} not reachable from the internet: check the router forwards TCP {port} to camgate{said}"
        )),
        "dns" => validation(format!(
            "the CA cannot look up {host}: check its DNS record points at your public address{said}"
        )),
        "unauthorized" | "incorrectResponse" => validation(format!(
            "the CA reached {host} on port {port} but not this camgate, or got a wrong answer: check \
             {host} points at your public address and the router forwards TCP {port} to camgate{said}"
        )),
        "tls" => validation(format!(
            "the CA's TLS connection to {host} on port {port} failed: check the router forwards \
             TCP {port} to camgate and nothing else answers there{said}"
        )),
        "caa" => AcmeError::other(format!(
            "a CAA record in {host}'s DNS forbids this CA from issuing for it{said}"
        )),
        "rejectedIdentifier" => AcmeError::other(format!("the CA will not issue for {host}{said}")),
        "rateLimited" => AcmeError {
            message: format!(
                "rate limited by the CA{}{said}",
                retry_after.map_or_else(String::new, |wait| format!(
                    "; camgate waits {} before trying again",
                    humantime::format_duration(Duration::from_secs(wait.as_secs()))
                ))
            ),
            kind: FailureKind::Other,
            retry_after,
        },
        "alreadyReplaced" => AcmeError::other(format!(
            "the CA says the certificate being renewed was already replaced; the next order is a plain one{said}"
        )),
        "badNonce" => AcmeError::other(format!(
            "the CA rejected camgate's requests repeatedly as replays (badNonce); retrying later{said}"
        )),
        "accountDoesNotExist" => AcmeError {
            message: format!("the CA no longer knows camgate's account; a new one will be made{said}"),
            kind: FailureKind::AccountGone,
            retry_after,
        },
        "userActionRequired" => AcmeError::other(format!(
            "the CA needs the account holder to act, usually to accept new terms of service{said}"
        )),
        "invalidContact" | "unsupportedContact" => {
            AcmeError::other(format!("the CA refuses the contact e-mail in [acme] email{said}"))
        }
        "externalAccountRequired" => AcmeError::other(format!(
            "this CA needs external account binding, which camgate does not support yet{said}"
        )),
        _ => AcmeError {
            message: format!(
                "the CA refused: {}{}",
                detail.unwrap_or("no detail"),
                problem_type.map_or_else(String::new, |t| format!(" ({t})"))
            ),
            kind: FailureKind::Other,
            retry_after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_failures_say_what_to_check() {
        let e = explain(
            Some("urn:ietf:params:acme:error:connection"),
            Some("dial tcp 203.0.113.1:80: connect: connection refused"),
            "dvr.example.org",
            Some(ChallengeKind::Http01),
            None,
        );
        assert!(
            e.message.starts_with(
                "port 80 not reachable from the internet: check the router forwards TCP 80 to camgate"
            ),
            "{}",
            e.message
        );
        assert!(e.message.contains("connection refused"));
        assert_eq!(e.kind, FailureKind::Validation(ChallengeKind::Http01));

        let e = explain(
            Some("urn:ietf:params:acme:error:connection"),
            None,
            "dvr.example.org",
            Some(ChallengeKind::TlsAlpn01),
            None,
        );
        assert!(e.message.contains("TCP 443"), "{}", e.message);
        let e = explain(
            Some("urn:ietf:params:acme:error:dns"),
            None,
            "dvr.example.org",
            None,
            None,
        );
        assert!(e.message.contains("DNS record"), "{}", e.message);
        assert_eq!(e.kind, FailureKind::Other);
    }

    #[test]
    fn rate_limits_carry_the_wait_and_unknown_types_keep_the_detail() {
        let e = explain(
            Some("urn:ietf:params:acme:error:rateLimited"),
            Some("too many certificates (5) already issued for this exact set of identifiers"),
            "dvr.example.org",
            None,
            Some(Duration::from_secs(7200)),
        );
        assert!(
            e.message.contains("rate limited by the CA; camgate waits 2h"),
            "{}",
            e.message
        );
        assert_eq!(e.retry_after, Some(Duration::from_secs(7200)));
        let e = explain(Some("urn:example:weird"), Some("boom"), "h", None, None);
        assert_eq!(e.message, "the CA refused: boom (urn:example:weird)");
        let e = explain(
            Some("urn:ietf:params:acme:error:accountDoesNotExist"),
            None,
            "h",
            None,
            None,
        );
        assert_eq!(e.kind, FailureKind::AccountGone);
    }

    #[test]
    fn automatic_mode_alternates_after_a_failed_validation() {
        use ChallengeKind::{Http01, TlsAlpn01};
        let auto = ChallengePreference::Auto;
        assert_eq!(ChallengeKind::choose(auto, true, None), Http01);
        assert_eq!(ChallengeKind::choose(auto, true, Some(Http01)), TlsAlpn01);
        assert_eq!(ChallengeKind::choose(auto, true, Some(TlsAlpn01)), Http01);
        assert_eq!(ChallengeKind::choose(auto, false, None), TlsAlpn01);
        assert_eq!(ChallengeKind::choose(auto, false, Some(TlsAlpn01)), TlsAlpn01);
        assert_eq!(
            ChallengeKind::choose(ChallengePreference::Http01, true, Some(Http01)),
            Http01
        );
    }
}
