//! The answers to pending ACME challenges, shared with the listeners: the
//! HTTP listener serves HTTP-01 key authorizations, the TLS resolver serves
//! TLS-ALPN-01 certificates (RFC 8737) to ClientHellos that offer only
//! `acme-tls/1`, which no browser does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;

use crate::tls::ACME_TLS_ALPN;

/// Where HTTP-01 answers live on port 80.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Debug, Default)]
pub struct Challenges {
    /// Token → key authorization.
    http01: Mutex<HashMap<String, String>>,
    /// Host → its challenge certificate.
    tls_alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization for an HTTP-01 request path, if pending.
    pub fn http01(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        lock(&self.http01).get(token).cloned()
    }

    /// The challenge certificate for `host`, if a TLS-ALPN-01 validation is
    /// pending for it.
    pub fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls_alpn01).get(host).cloned()
    }

    /// Serves `key_authorization` at the token's path until the returned
    /// guard drops.
    pub(super) fn publish_http01(self: &Arc<Self>, token: &str, key_authorization: &str) -> Published {
        lock(&self.http01).insert(token.to_owned(), key_authorization.to_owned());
        Published {
            challenges: Arc::clone(self),
            key: Key::Http01(token.to_owned()),
        }
    }

    /// Serves a TLS-ALPN-01 certificate for `host` carrying `digest` (the
    /// SHA-256 of the key authorization) until the returned guard drops.
    pub(super) fn publish_tls_alpn01(
        self: &Arc<Self>,
        host: &str,
        digest: &[u8],
    ) -> Result<Published, rcgen::Error> {
        let certificate = tls_alpn01_certificate(host, digest)?;
        lock(&self.tls_alpn01).insert(host.to_owned(), Arc::new(certificate));
        Ok(Published {
            challenges: Arc::clone(self),
            key: Key::TlsAlpn01(host.to_owned()),
        })
    }
}

/// Whether a ClientHello's ALPN list is a TLS-ALPN-01 validation: exactly
/// `acme-tls/1` (RFC 8737 §3: the CA offers nothing else).
pub fn is_validation<'a>(mut alpn: impl Iterator<Item = &'a [u8]>) -> bool {
    alpn.next() == Some(ACME_TLS_ALPN) && alpn.next().is_none()
}

/// A self-signed certificate for exactly `host` with the critical
/// `acmeIdentifier` extension (RFC 8737 §3).
fn tls_alpn01_certificate(host: &str, digest: &[u8]) -> Result<CertifiedKey, rcgen::Error> {
    let key_pair = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let certificate = params.self_signed(&key_pair)?;
    let key =
        PrivateKeyDer::try_from(key_pair.serialize_der()).map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
    Ok(CertifiedKey::new(vec![certificate.der().clone()], signing))
}

enum Key {
    Http01(String),
    TlsAlpn01(String),
}

/// A published answer; dropping it withdraws the answer.
pub(super) struct Published {
    challenges: Arc<Challenges>,
    key: Key,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Published")
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        match &self.key {
            Key::Http01(token) => {
                lock(&self.challenges.http01).remove(token);
            }
            Key::TlsAlpn01(host) => {
                lock(&self.challenges.tls_alpn01).remove(host);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_exist_only_while_published() {
        let challenges = Arc::new(Challenges::default());
        let token = "tok-123_ABC";
        let path = format!("{HTTP01_PREFIX}{token}");
        assert_eq!(challenges.http01(&path), None);
        let published = challenges.publish_http01(token, "tok-123_ABC.thumbprint");
        assert_eq!(
            challenges.http01(&path).as_deref(),
            Some("tok-123_ABC.thumbprint")
        );
        assert_eq!(challenges.http01("/.well-known/acme-challenge/other"), None);
        assert_eq!(challenges.http01(&format!("/x{HTTP01_PREFIX}{token}")), None);
        drop(published);
        assert_eq!(challenges.http01(&path), None);

        let published = challenges
            .publish_tls_alpn01("dvr.example.org", &[7; 32])
            .unwrap();
        let certificate = challenges.tls_alpn01("dvr.example.org").unwrap();
        assert!(challenges.tls_alpn01("other.example.org").is_none());
        // The extension holds the digest as a DER OCTET STRING, marked critical.
        let (_, parsed) = x509_parser::parse_x509_certificate(&certificate.cert[0]).unwrap();
        let extension = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(extension.critical);
        assert_eq!(extension.value, [[0x04, 32].as_slice(), &[7; 32]].concat());
        drop(published);
        assert!(challenges.tls_alpn01("dvr.example.org").is_none());
    }

    #[test]
    fn only_a_lone_acme_alpn_is_a_validation() {
        let offers = |protocols: &[&str]| is_validation(protocols.iter().map(|p| p.as_bytes()));
        assert!(offers(&["acme-tls/1"]));
        assert!(!offers(&["h2", "acme-tls/1"]));
        assert!(!offers(&["acme-tls/1", "http/1.1"]));
        assert!(!offers(&[]));
        assert!(!offers(&["h2"]));
    }
}
