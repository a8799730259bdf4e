//! Stage two for `[acme]`: which CA, which challenge, which hosts.

use std::collections::HashSet;
use std::path::PathBuf;

use toml::Spanned;

use super::error::Problem;
use super::proxy::{Proxy, Site};
use super::raw::RawAcme;

pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The directory URL (`https://`).
    pub directory: String,
    /// Extra root CA (PEM) for the directory's own HTTPS certificate.
    pub directory_ca: Option<PathBuf>,
    /// `mailto:` URLs; empty when no e-mail is given.
    pub contact: Vec<String>,
    pub challenge: ChallengePreference,
    /// Lower-case DNS names, each a host of a site without certificate files.
    pub hosts: Vec<String>,
    pub key_type: KeyType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengePreference {
    /// HTTP-01 when camgate has an HTTP listener, else TLS-ALPN-01; after a
    /// failed attempt the other one.
    Auto,
    Http01,
    TlsAlpn01,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
        }
    }
}

pub(super) fn acme(raw: Option<RawAcme>, proxy: &Proxy, sites: &[Site]) -> Result<Option<Acme>, Problem> {
    let Some(raw) = raw else { return Ok(None) };
    let terms = "the CA's terms of service must be accepted: read them (Let's Encrypt: \
                 https://letsencrypt.org/repository/) and set `accept_terms = true`";
    match &raw.accept_terms {
        Some(accepted) if *accepted.get_ref() => {}
        Some(refused) => return Err(Problem::new(refused.span(), "acme.accept_terms", terms)),
        None => return Err(Problem::unlocated("acme.accept_terms", terms)),
    }
    let directory = match raw.directory.as_ref().map(|d| d.get_ref().as_str()) {
        None | Some("letsencrypt") => LETSENCRYPT.to_owned(),
        Some("letsencrypt-staging") => LETSENCRYPT_STAGING.to_owned(),
        Some(url) => {
            let span = raw.directory.as_ref().map_or(0..0, Spanned::span);
            let valid = url
                .parse::<http::Uri>()
                .is_ok_and(|uri| uri.scheme_str() == Some("https") && uri.host().is_some());
            if !valid {
                return Err(Problem::new(
                    span,
                    "acme.directory",
                    format!(
                        "expected \"letsencrypt\", \"letsencrypt-staging\" or the CA's https:// \
                         directory URL, got {url:?}"
                    ),
                ));
            }
            url.to_owned()
        }
    };
    let directory_ca = raw.directory_ca.map(|path| PathBuf::from(path.into_inner()));
    let contact = match &raw.email {
        None => Vec::new(),
        Some(email) => vec![format!("mailto:{}", email_address(email)?)],
    };
    let challenge = match raw.challenge.as_ref().map(|c| c.get_ref().as_str()) {
        None | Some("auto") => ChallengePreference::Auto,
        Some("http-01") => ChallengePreference::Http01,
        Some("tls-alpn-01") => ChallengePreference::TlsAlpn01,
        Some(other) => {
            return Err(Problem::new(
                raw.challenge.as_ref().map_or(0..0, Spanned::span),
                "acme.challenge",
                format!("unknown challenge {other:?}; use \"auto\", \"http-01\" or \"tls-alpn-01\""),
            ));
        }
    };
    let needs = match challenge {
        ChallengePreference::Http01 if proxy.http_listen.is_empty() => Some("proxy.http_listen"),
        ChallengePreference::TlsAlpn01 if proxy.https_listen.is_empty() => Some("proxy.https_listen"),
        _ => None,
    };
    if let Some(listener) = needs {
        return Err(Problem::new(
            raw.challenge.as_ref().map_or(0..0, Spanned::span),
            "acme.challenge",
            format!("this challenge is answered on `{listener}`, which is empty"),
        ));
    }
    let key_type = match raw.key_type.as_ref().map(|k| k.get_ref().as_str()) {
        None | Some("ecdsa-p256") => KeyType::EcdsaP256,
        Some("ecdsa-p384") => KeyType::EcdsaP384,
        Some(other) => {
            return Err(Problem::new(
                raw.key_type.as_ref().map_or(0..0, Spanned::span),
                "acme.key_type",
                format!("unknown key type {other:?}; use \"ecdsa-p256\" or \"ecdsa-p384\""),
            ));
        }
    };
    let hosts = match raw.hosts {
        Some(list) => listed_hosts(&list, sites)?,
        None => {
            let hosts: Vec<String> = sites
                .iter()
                .filter(|site| site.certificate.is_none())
                .flat_map(|site| site.hosts.iter())
                .filter(|host| can_have_public_certificate(host))
                .cloned()
                .collect();
            if hosts.is_empty() {
                return Err(Problem::unlocated(
                    "acme.hosts",
                    "no site host can get a certificate from a public CA (IP addresses, single \
                     labels and .local, .lan, .home.arpa, .internal, .test names cannot); add a \
                     public name to a site's `hosts`, or list the hosts here",
                ));
            }
            hosts
        }
    };
    Ok(Some(Acme {
        directory,
        directory_ca,
        contact,
        challenge,
        hosts,
        key_type,
    }))
}

fn email_address(email: &Spanned<String>) -> Result<&str, Problem> {
    let address = email.get_ref().trim();
    let valid = address.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
    }) && address
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, ',' | '<' | '>' | '"' | '\\'));
    if valid {
        Ok(address)
    } else {
        Err(Problem::new(
            email.span(),
            "acme.email",
            format!("{address:?} is not an e-mail address such as \"ops@example.org\""),
        ))
    }
}

fn listed_hosts(list: &Spanned<Vec<Spanned<String>>>, sites: &[Site]) -> Result<Vec<String>, Problem> {
    if list.get_ref().is_empty() {
        return Err(Problem::new(
            list.span(),
            "acme.hosts",
            "an empty list gets no certificate; remove [acme], or list site hosts",
        ));
    }
    let mut seen = HashSet::new();
    list.get_ref()
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let host = entry.get_ref().to_ascii_lowercase();
            let problem = |why: String| Problem::new(entry.span(), format!("acme.hosts[{i}]"), why);
            if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with("*.") {
                return Err(problem(format!(
                    "{host:?}: camgate gets certificates for DNS names only (no IP addresses, no wildcards)"
                )));
            }
            let site = sites
                .iter()
                .find(|site| site.hosts.contains(&host))
                .ok_or_else(|| problem(format!("{host:?} is not a host of any [[site]]")))?;
            if site.certificate.is_some() {
                return Err(problem(format!(
                    "site {:?} has its own `certificate` and `key`; remove them, or remove {host:?} here",
                    site.name
                )));
            }
            if host == crate::tls::LOCAL_NAME || host.ends_with(".local") {
                return Err(problem(format!(
                    "{host:?} is a link-local (mDNS) name that no CA can validate"
                )));
            }
            if !seen.insert(host.clone()) {
                return Err(problem(format!("{host:?} is listed twice")));
            }
            Ok(host)
        })
        .collect()
}

/// Names under suffixes reserved for private use, or without a dot, cannot
/// get a certificate from a public CA; they are not asked for by default.
pub fn can_have_public_certificate(host: &str) -> bool {
    const PRIVATE_SUFFIXES: [&str; 9] = [
        ".local",
        ".localhost",
        ".lan",
        ".home",
        ".home.arpa",
        ".internal",
        ".test",
        ".invalid",
        ".example",
    ];
    host.parse::<std::net::IpAddr>().is_err()
        && host.contains('.')
        && host != "localhost"
        && !PRIVATE_SUFFIXES.iter().any(|suffix| host.ends_with(suffix))
}

#[cfg(test)]
mod tests {
    use super::can_have_public_certificate;

    #[test]
    fn private_names_are_not_asked_for_by_default() {
        for public in ["dvr.example.org", "cam.duckdns.org", "a.b.c.de"] {
            assert!(can_have_public_certificate(public), "{public}");
        }
        for private in [
            "camgate.local",
            "dvr.lan",
            "nvr.home.arpa",
            "x.internal",
            "agentdvr.test",
            "localhost",
            "nvr",
            "192.168.1.5",
            "::1",
        ] {
            assert!(!can_have_public_certificate(private), "{private}");
        }
    }
}
