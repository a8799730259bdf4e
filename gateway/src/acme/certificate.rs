//! Issued certificates: checking a chain before it is served, reading what
//! the status shows from it, and keeping it under the state dir.
//!
//! Each host's chain and key live together in one PEM file
//! (`acme/certs/<host>.pem`, 0600) that is replaced atomically, so a crash
//! never pairs a new certificate with an old key. A JSON file beside it
//! records which CA and key type it came from.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

use super::schedule::Validity;
use crate::fsutil;

/// A chain that passed [`verify`], with what the status shows about it.
#[derive(Debug)]
pub struct Installed {
    pub key: Arc<CertifiedKey>,
    pub validity: Validity,
    /// The issuer's common name (or whole name when it has none).
    pub issuer: String,
    /// SHA-256 of the leaf, hex.
    pub sha256: String,
}

impl Installed {
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.key.cert[0]
    }
}

/// Checks that `chain_pem` is a chain for `host` that `key_pem` belongs to,
/// each certificate signed by the next (the last one is taken as the
/// anchor: the CA's root is not ours to know), for server authentication;
/// and returns it ready to serve.
///
/// Time is left to the caller ([`Validity::expired`]): a board without a
/// real-time clock may boot hours behind, and a fresh certificate that is
/// "not valid yet" by that clock must not be thrown away and ordered again.
pub fn verify(chain_pem: &str, key_pem: &str, host: &str) -> Result<Installed, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the chain is not PEM: {e}"))?;
    let Some((leaf, rest)) = chain.split_first() else {
        return Err("the CA sent no certificate".to_owned());
    };
    let Some(anchor) = rest.last() else {
        return Err("the CA sent the certificate without its issuer (no intermediate)".to_owned());
    };
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("the key is not PEM: {e}"))?;
    let certified = crate::tls::certified_key(chain.clone(), &key)
        .map_err(|e| format!("the certificate does not belong to our key: {e}"))?;

    let mut roots = RootCertStore::empty();
    roots
        .add(anchor.clone())
        .map_err(|e| format!("the chain's last certificate is unusable: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))?;
    let (validity, issuer) = describe(leaf)?;
    // Any instant inside the leaf's validity: see above.
    let inside = validity
        .not_after
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    verifier
        .verify_server_cert(leaf, rest, &name, &[], UnixTime::since_unix_epoch(inside))
        .map_err(|e| format!("the chain does not verify for {host}: {e}"))?;

    Ok(Installed {
        key: Arc::new(certified),
        validity,
        issuer,
        sha256: crate::tls::sha256_hex(leaf),
    })
}

/// The validity period and issuer name of a certificate.
pub fn describe(certificate: &CertificateDer<'_>) -> Result<(Validity, String), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let time = |t: x509_parser::time::ASN1Time| {
        let seconds = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    };
    let validity = Validity {
        not_before: time(parsed.validity().not_before),
        not_after: time(parsed.validity().not_after),
    };
    let issuer = parsed
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map_or_else(|| parsed.issuer().to_string(), str::to_owned);
    Ok((validity, issuer))
}

/// Where a certificate came from; a change forces a new order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub directory: String,
    pub key_type: String,
}

/// `acme/certs` under the state dir.
#[derive(Debug)]
pub struct CertStore {
    dir: PathBuf,
}

impl CertStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("acme").join("certs"),
        }
    }

    fn bundle(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.pem"))
    }

    fn origin(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.json"))
    }

    /// The stored chain and key PEM, and the origin if recorded.
    pub fn load(&self, host: &str) -> Option<(String, String, Option<Origin>)> {
        let text = std::fs::read_to_string(self.bundle(host)).ok()?;
        // The key block comes last; everything before it is the chain.
        let key_start = text.find("-----BEGIN PRIVATE KEY-----")?;
        let origin = std::fs::read(self.origin(host))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        Some((text[..key_start].to_owned(), text[key_start..].to_owned(), origin))
    }

    pub fn save(&self, host: &str, chain_pem: &str, key_pem: &str, origin: &Origin) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut bundle = chain_pem.trim_end().to_owned();
        bundle.push('\n');
        bundle.push_str(key_pem);
        fsutil::replace_private(&self.bundle(host), bundle.as_bytes())?;
        let origin = serde_json::to_vec(origin).map_err(std::io::Error::other)?;
        fsutil::replace_private(&self.origin(host), &origin)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A throwaway CA for unit tests.

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

    pub(crate) struct TestCa {
        pub(crate) issuer: Issuer<'static, KeyPair>,
        pub(crate) pem: String,
    }

    impl TestCa {
        pub(crate) fn new(name: &str) -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            let certificate = params.self_signed(&key).unwrap();
            Self {
                pem: certificate.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A leaf for `names` valid from `not_before` for `lifetime`, signed
        /// for the CSR's key; the chain PEM (leaf + this CA).
        pub(crate) fn sign_csr(
            &self,
            csr_der: &[u8],
            not_before: std::time::SystemTime,
            lifetime: std::time::Duration,
        ) -> String {
            let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).unwrap();
            let mut params = csr.params;
            params.not_before = not_before.into();
            params.not_after = (not_before + lifetime).into();
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            params.use_authority_key_identifier_extension = true;
            let leaf = params.signed_by(&csr.public_key, &self.issuer).unwrap();
            format!("{}{}", leaf.pem(), self.pem)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestCa;
    use super::*;

    fn csr(host: &str) -> (Vec<u8>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        (
            params.serialize_request(&key).unwrap().der().to_vec(),
            key.serialize_pem(),
        )
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_good_chain_verifies_and_describes_itself() {
        let ca = TestCa::new("Test Issuing CA");
        let now = SystemTime::now();
        let (csr, key) = csr("dvr.example.org");
        let chain = ca.sign_csr(&csr, now - HOUR, 90 * 24 * HOUR);
        let installed = verify(&chain, &key, "dvr.example.org").unwrap();
        assert_eq!(installed.issuer, "Test Issuing CA");
        assert_eq!(installed.validity.lifetime(), 90 * 24 * HOUR);
        assert_eq!(installed.key.cert.len(), 2);
        assert_eq!(installed.sha256.len(), 64);
    }

    #[test]
    fn bad_chains_are_refused_with_the_reason() {
        let ca = TestCa::new("CA");
        let now = SystemTime::now();
        let (csr_a, key_a) = csr("dvr.example.org");
        let (_, key_b) = csr("dvr.example.org");
        let chain = ca.sign_csr(&csr_a, now - HOUR, 24 * HOUR);

        let e = verify(&chain, &key_b, "dvr.example.org").unwrap_err();
        assert!(e.contains("does not belong to our key"), "{e}");
        let e = verify(&chain, &key_a, "other.example.org").unwrap_err();
        assert!(e.contains("does not verify for other.example.org"), "{e}");
        let leaf_only = &chain[..chain.find("-----END CERTIFICATE-----").unwrap() + 26];
        let e = verify(leaf_only, &key_a, "dvr.example.org").unwrap_err();
        assert!(e.contains("without its issuer"), "{e}");
        // Signed by another CA than the one the chain names.
        let other = TestCa::new("CA");
        let forged = format!("{}{}", &chain[..chain.find(&ca.pem).unwrap()], other.pem);
        let e = verify(&forged, &key_a, "dvr.example.org").unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        assert!(verify("", &key_a, "dvr.example.org").is_err());
        // Time is the caller's: a chain not valid yet by a clock that is
        // behind, or expired, still verifies, and says when it is valid.
        let later = ca.sign_csr(&csr_a, now + 2 * HOUR, 24 * HOUR);
        let installed = verify(&later, &key_a, "dvr.example.org").unwrap();
        assert!(!installed.validity.expired(now));
        assert!(installed.validity.expired(now + 3 * 24 * HOUR));
    }

    #[test]
    fn the_store_keeps_chain_key_and_origin_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new(dir.path());
        assert!(store.load("dvr.example.org").is_none());
        let ca = TestCa::new("CA");
        let (csr, key) = csr("dvr.example.org");
        let chain = ca.sign_csr(&csr, SystemTime::now() - HOUR, 24 * HOUR);
        let origin = Origin {
            directory: "https://ca.example/dir".to_owned(),
            key_type: "ecdsa-p256".to_owned(),
        };
        store.save("dvr.example.org", &chain, &key, &origin).unwrap();
        let (chain_back, key_back, origin_back) = store.load("dvr.example.org").unwrap();
        assert_eq!(origin_back, Some(origin));
        verify(&chain_back, &key_back, "dvr.example.org").unwrap();
        let path = dir.path().join("acme/certs/dvr.example.org.pem");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }
}
