//! TLS for the HTTPS listener: one server config (TLS 1.2 and 1.3,
//! forward-secret AEAD suites only, ALPN h2 + http/1.1) and a per-SNI
//! certificate resolver whose table is swapped whole on reload: open
//! connections keep the certificate they shook hands with.
//!
//! Certificates come from a site's PEM files or, failing those, from one
//! self-signed certificate (ECDSA P-256) generated on first start and kept
//! under the state dir, so browsers see the same one after a restart; it
//! names `camgate.local`, the sites' hosts and the machine's addresses.
//! Certificates from the ACME CA are installed beside the table and win
//! over it; a ClientHello that offers only `acme-tls/1` gets the pending
//! TLS-ALPN-01 challenge certificate, or no handshake.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::acme::challenge::{self, Challenges};
use crate::config::Site;
use crate::fsutil;

/// The name the appliance answers to on the LAN without DNS of its own.
pub const LOCAL_NAME: &str = "camgate.local";
/// The ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

const SELF_SIGNED_DIR: &str = "tls";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("site {site:?}: cannot read {}: {reason}", path.display())]
    Pem {
        site: String,
        path: PathBuf,
        reason: String,
    },
    #[error("site {site:?}: the key in {} does not fit the certificate in {}: {reason}", key.display(), certificate.display())]
    Key {
        site: String,
        certificate: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot generate the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot {step} the self-signed certificate in {}: {source}", path.display())]
    SelfSignedIo {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// ring's suites, minus anything that is not an (EC)DHE key exchange with
/// an AEAD cipher. ring offers no other kind today; the filter keeps that
/// true if a later version adds one.
fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(is_forward_secret_aead);
    provider
}

fn is_forward_secret_aead(suite: &SupportedCipherSuite) -> bool {
    let name = format!("{:?}", suite.suite());
    let aead = name.contains("_GCM_") || name.contains("CHACHA20_POLY1305");
    aead && (name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"))
}

/// The server side of every HTTPS listener.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // Server preference order: a browser offering h2 gets h2; only a
    // client offering nothing but `acme-tls/1` (a CA validating) gets that.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Certificates by host name, and the one served when no name matches (IP
/// literals send no SNI).
#[derive(Debug)]
pub struct CertTable {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    fallback: Arc<CertifiedKey>,
    status: TableStatus,
}

/// What `/api/status` shows about the certificates camgate did not get
/// from a CA itself.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TableStatus {
    pub self_signed: Option<SelfSignedStatus>,
    /// Sites' own PEM files.
    pub files: Vec<FileCertificateStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SelfSignedStatus {
    /// SHA-256 of the certificate, hex: compare it with what a browser shows.
    pub sha256: String,
    pub names: Vec<String>,
    pub path: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FileCertificateStatus {
    pub site: String,
    pub issuer: Option<String>,
    pub not_after: Option<String>,
    pub sha256: String,
}

impl CertTable {
    /// Loads every site's certificate: its PEM files, or the self-signed one
    /// (generated when missing or when it does not cover the hosts and the
    /// machine's `addresses`).
    pub fn load(sites: &[Site], state_dir: &Path, addresses: &[IpAddr]) -> Result<Self, TlsError> {
        let mut names: BTreeSet<String> = BTreeSet::from([LOCAL_NAME.to_owned()]);
        names.extend(sites.iter().flat_map(|site| site.hosts.iter().cloned()));
        names.extend(addresses.iter().map(ToString::to_string));
        let dir = state_dir.join(SELF_SIGNED_DIR);
        let fallback = self_signed(&dir, &names)?;
        let mut status = TableStatus {
            self_signed: Some(SelfSignedStatus {
                sha256: sha256_hex(&fallback.cert[0]),
                names: names.into_iter().collect(),
                path: SelfSignedPaths::new(&dir).certificate,
            }),
            files: Vec::new(),
        };
        let mut by_host = HashMap::new();
        for site in sites {
            let key = match &site.certificate {
                Some(files) => {
                    let key = Arc::new(load_pem(&site.name, &files.certificate, &files.key)?);
                    let described = crate::acme::certificate::describe(&key.cert[0]).ok();
                    status.files.push(FileCertificateStatus {
                        site: site.name.clone(),
                        issuer: described.as_ref().map(|(_, issuer)| issuer.clone()),
                        not_after: described.map(|(validity, _)| crate::clock::rfc3339(validity.not_after)),
                        sha256: sha256_hex(&key.cert[0]),
                    });
                    key
                }
                None => Arc::clone(&fallback),
            };
            for host in &site.hosts {
                by_host.insert(host.clone(), Arc::clone(&key));
            }
        }
        Ok(Self {
            by_host,
            fallback,
            status,
        })
    }

    pub fn status(&self) -> &TableStatus {
        &self.status
    }
}

/// The machine's addresses a LAN client may type, for the self-signed
/// certificate: IPv4 other than loopback and link-local, and IPv6 unique
/// local addresses. Global IPv6 addresses are left out: privacy addresses
/// change daily, and each change would mean a new certificate.
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut addresses: Vec<IpAddr> = interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            address
                .as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(v6) => v6.is_unique_local(),
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Serves certificates: an issued one for the host if the ACME CA gave one,
/// else from the table that reloads replace whole.
#[derive(Debug)]
pub struct CertResolver {
    table: ArcSwap<CertTable>,
    issued: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    challenges: Arc<Challenges>,
}

impl CertResolver {
    pub fn new(table: CertTable, challenges: Arc<Challenges>) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
            issued: ArcSwap::default(),
            challenges,
        }
    }

    /// New handshakes use `table` from now on.
    pub fn replace(&self, table: CertTable) {
        self.table.store(Arc::new(table));
    }

    pub fn table_status(&self) -> TableStatus {
        self.table.load().status.clone()
    }

    /// New handshakes for `host` get `key` (open connections keep theirs).
    pub fn install(&self, host: &str, key: &Arc<CertifiedKey>) {
        self.issued.rcu(|issued| {
            let mut issued = HashMap::clone(issued);
            issued.insert(host.to_owned(), Arc::clone(key));
            issued
        });
    }

    #[cfg(test)]
    pub(crate) fn issued(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.issued.load().get(host).cloned()
    }

    /// Whether the CA's certificate serves `host` now.
    pub fn has_issued(&self, host: &str) -> bool {
        self.issued.load().contains_key(host)
    }

    /// `host` falls back to the table.
    pub fn uninstall(&self, host: &str) {
        self.issued.rcu(|issued| {
            let mut issued = HashMap::clone(issued);
            issued.remove(host);
            issued
        });
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        if hello.alpn().is_some_and(challenge::is_validation) {
            // A CA validating TLS-ALPN-01; without a pending challenge for
            // the name the handshake fails.
            return self.challenges.tls_alpn01(name.as_deref()?);
        }
        let name = name.as_deref();
        if let Some(key) = name.and_then(|name| self.issued.load().get(name).cloned()) {
            return Some(key);
        }
        let table = self.table.load();
        let by_name = name.and_then(|name| table.by_host.get(name));
        Some(Arc::clone(by_name.unwrap_or(&table.fallback)))
    }
}

fn load_pem(site: &str, certificate: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let pem_error = |path: &Path, reason: String| TlsError::Pem {
        site: site.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let chain = read_certificates(certificate).map_err(|e| pem_error(certificate, e))?;
    if chain.is_empty() {
        return Err(pem_error(certificate, "no CERTIFICATE block".to_owned()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e.to_string()))?;
    certified_key(chain, &private).map_err(|e| TlsError::Key {
        site: site.to_owned(),
        certificate: certificate.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Every CERTIFICATE block of a PEM file.
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| e.to_string())
}

/// A chain and its key, checked to belong together.
pub(crate) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<CertifiedKey, rustls::Error> {
    let signing = rustls::crypto::ring::sign::any_supported_type(key)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match()?;
    Ok(certified)
}

/// Loads the self-signed certificate from `dir`, or makes a new one when it
/// is missing, unreadable or lacks one of `names`. A certificate naming
/// more (an address the machine no longer has) is kept: every new one is a
/// new fingerprint for people to check.
fn self_signed(dir: &Path, names: &BTreeSet<String>) -> Result<Arc<CertifiedKey>, TlsError> {
    let paths = SelfSignedPaths::new(dir);
    let wanted = names.iter().cloned().collect::<Vec<_>>().join("\n");
    let covers = |stored: String| {
        let stored: BTreeSet<&str> = stored.lines().collect();
        names.iter().all(|name| stored.contains(name.as_str()))
    };
    if fs::read_to_string(&paths.names).is_ok_and(covers)
        && let Ok(key) = load_pem("(self-signed)", &paths.certificate, &paths.key)
    {
        return Ok(Arc::new(key));
    }
    let key_pair = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.iter().cloned().collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("camgate {LOCAL_NAME}"));
    let certificate = params.self_signed(&key_pair)?;
    let key_der = PrivateKeyDer::try_from(key_pair.serialize_der())
        .map_err(|e| rustls::Error::General(e.to_owned()))?;
    let certified = certified_key(vec![certificate.der().clone()], &key_der)?;

    let io = |step, path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::SelfSignedIo { step, path, source }
    };
    fs::create_dir_all(dir).map_err(io("create the directory for", dir))?;
    // Key first: a crash between the writes leaves a pair that does not
    // match, which the next start detects and replaces.
    fsutil::replace_private(&paths.key, key_pair.serialize_pem().as_bytes())
        .map_err(io("write the key of", &paths.key))?;
    fsutil::replace_private(&paths.certificate, certificate.pem().as_bytes())
        .map_err(io("write", &paths.certificate))?;
    fsutil::replace_private(&paths.names, wanted.as_bytes()).map_err(io("write", &paths.names))?;
    tracing::info!(
        path = %paths.certificate.display(),
        names = ?names,
        sha256 = %sha256_hex(certificate.der()),
        "generated a self-signed certificate; compare this SHA-256 fingerprint with what your browser shows"
    );
    Ok(Arc::new(certified))
}

struct SelfSignedPaths {
    certificate: PathBuf,
    key: PathBuf,
    /// The names it was made for, one per line.
    names: PathBuf,
}

impl SelfSignedPaths {
    fn new(dir: &Path) -> Self {
        Self {
            certificate: dir.join("self-signed.crt"),
            key: dir.join("self-signed.key"),
            names: dir.join("self-signed.names"),
        }
    }
}

/// SHA-256 of a certificate, as lower-case hex.
pub fn sha256_hex(certificate: &CertificateDer<'_>) -> String {
    crate::auth::token::hex(ring::digest::digest(&ring::digest::SHA256, certificate).as_ref())
}

/// The self-signed certificate's path under `state_dir` (for people who
/// want to trust it, and for tests).
pub fn self_signed_certificate_path(state_dir: &Path) -> PathBuf {
    SelfSignedPaths::new(&state_dir.join(SELF_SIGNED_DIR)).certificate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forward_secret_aead_suites_and_modern_versions() {
        let provider = provider();
        assert!(provider.cipher_suites.len() >= 6, "{:?}", provider.cipher_suites);
        for suite in &provider.cipher_suites {
            assert!(is_forward_secret_aead(suite), "{suite:?}");
        }
        let config = server_config(Arc::new(CertResolver::new(
            CertTable::load(&[], tempfile::tempdir().unwrap().path(), &[]).unwrap(),
            Arc::default(),
        )))
        .unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec(), b"acme-tls/1".to_vec()]
        );
    }

    #[test]
    fn self_signed_is_kept_across_loads_and_replaced_when_names_change() {
        let dir = tempfile::tempdir().unwrap();
        let names = BTreeSet::from(["camgate.local".to_owned(), "dvr.example.org".to_owned()]);
        let first = self_signed(dir.path(), &names).unwrap();
        let again = self_signed(dir.path(), &names).unwrap();
        assert_eq!(first.cert, again.cert, "reused from the state dir");
        let key = dir.path().join("self-signed.key");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&key).unwrap().permissions()) & 0o777,
            0o600
        );

        let fewer = BTreeSet::from(["camgate.local".to_owned()]);
        assert_eq!(
            self_signed(dir.path(), &fewer).unwrap().cert,
            first.cert,
            "still covers them"
        );
        let more = BTreeSet::from(["camgate.local".to_owned(), "192.168.1.5".to_owned()]);
        let other = self_signed(dir.path(), &more).unwrap();
        assert_ne!(first.cert, other.cert, "a new name, a new certificate");

        // A damaged key is replaced, not fatal.
        fs::write(&key, "garbage").unwrap();
        let repaired = self_signed(dir.path(), &more).unwrap();
        assert_ne!(repaired.cert, other.cert);
    }

    #[test]
    fn mismatched_pem_pair_is_an_error_naming_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a.example".to_owned()]).unwrap();
        let b = rcgen::KeyPair::generate().unwrap();
        let certificate = dir.path().join("a.crt");
        let key = dir.path().join("b.key");
        fs::write(&certificate, a.cert.pem()).unwrap();
        fs::write(&key, b.serialize_pem()).unwrap();
        let e = load_pem("dvr", &certificate, &key).unwrap_err().to_string();
        assert!(e.contains("does not fit") && e.contains("b.key"), "{e}");

        let e = load_pem("dvr", &dir.path().join("missing.crt"), &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.crt"), "{e}");
        fs::write(&certificate, "not pem").unwrap();
        let e = load_pem("dvr", &certificate, &key).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
    }
}
