//! The connection to a site's DVR: a pooled HTTP/1.1 client (plain, or TLS
//! checked against the web PKI, a given CA or a pinned fingerprint), with
//! hyper's lenient response parsing when the site asks for it, and a
//! response body that ends when the upstream goes quiet for too long.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::OwnedSemaphorePermit;

use super::BoxError;
use crate::config::Site;
use crate::config::proxy::UpstreamTls;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections to a DVR are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("site {site:?}: cannot read the upstream CA {path}: {reason}")]
    Ca {
        site: String,
        path: String,
        reason: String,
    },
}

/// What decides how a site's client is built; equal settings share a
/// client (and its pool) across reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub tls: UpstreamTls,
    pub lenient_headers: bool,
}

impl ClientSettings {
    pub fn of(site: &Site) -> Self {
        Self {
            tls: site.upstream.tls.clone(),
            lenient_headers: site.lenient_headers,
        }
    }
}

pub fn client(site: &str, settings: &ClientSettings) -> Result<UpstreamClient, UpstreamError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let tls = tls_config(site, &settings.tls)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        // A request whose pooled connection was closed under it is retried
        // on a new one only when nothing was sent yet (hyper's rule).
        .retry_canceled_requests(true)
        .set_host(false);
    if settings.lenient_headers {
        // Apache's `ProxyBadHeader Ignore`: drop broken header lines instead
        // of failing the response. NUL bytes and bare CRs still fail.
        builder
            .http1_ignore_invalid_headers_in_responses(true)
            .http1_allow_spaces_after_header_name_in_responses(true)
            .http1_allow_obsolete_multiline_headers_in_responses(true);
    }
    Ok(builder.build(connector))
}

fn tls_config(site: &str, tls: &UpstreamTls) -> Result<rustls::ClientConfig, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions");
    let config = match tls {
        UpstreamTls::None | UpstreamTls::WebPki => {
            let mut store = rustls::RootCertStore::empty();
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(store).with_no_client_auth()
        }
        UpstreamTls::Ca(path) => {
            let ca_error = |reason: String| UpstreamError::Ca {
                site: site.to_owned(),
                path: path.display().to_string(),
                reason,
            };
            let certificates = crate::tls::read_certificates(path).map_err(ca_error)?;
            let mut store = rustls::RootCertStore::empty();
            store.add_parsable_certificates(certificates);
            if store.is_empty() {
                return Err(ca_error("no usable CA certificate".to_owned()));
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        UpstreamTls::Pinned(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                fingerprint: *fingerprint,
                provider,
            }))
            .with_no_client_auth(),
    };
    // hyper-rustls sets ALPN itself (`enable_http1`: http/1.1 only).
    Ok(config)
}

/// Accepts exactly one certificate, by SHA-256 of its DER: what people do
/// with a DVR's self-signed certificate. Names and dates are not checked
/// (the pin is stronger than both); handshake signatures are.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        // Not secret: a timing difference reveals nothing an attacker needs.
        if digest.as_ref() == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A response body from the upstream that fails when no data arrived for
/// `timeout` while the client was waiting for it. There is no total limit:
/// MJPEG and other live streams never end. The timer only exists once the
/// upstream has made the client wait, so short responses never arm it;
/// a stream reuses the one timer for every wait. It holds the site's in-flight permit until the body ends.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer counts the current wait (it is reset when a wait starts).
    armed: bool,
    _permit: OwnedSemaphorePermit,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, timeout: Duration, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
            armed: false,
            _permit: permit,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?}")]
pub struct UpstreamIdle(Duration);

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if !this.armed {
                    sleep.as_mut().reset(tokio::time::Instant::now() + timeout);
                    this.armed = true;
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(UpstreamIdle(timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
