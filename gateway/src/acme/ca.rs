//! The ACME CA over the network (instant-acme): the account, orders with
//! camgate answering the challenge itself, and renewal information.
//!
//! The account key and URL are kept in `acme/account-<directory digest>.json`
//! (0600, atomic), one per directory, created once and reused; a changed
//! contact updates the account at the CA. instant-acme retries `badNonce`
//! itself; the HTTP client here adds a timeout per request and remembers
//! the CA's `Retry-After`, which instant-acme does not report.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, CertificateIdentifier,
    ChallengeType, HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::challenge::{Challenges, Published};
use super::problem::{AcmeError, ChallengeKind, FailureKind, explain};
use super::schedule::{MAX_RETRY_AFTER, Window};
use super::{CertificateAuthority, OrderRequest};
use crate::config::acme::Acme;
use crate::fsutil;

/// One request to the CA; LE answers in well under a second.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response read from the CA (chains and problems are a few KiB).
const MAX_BODY: usize = 1024 * 1024;
/// Validation by the CA: Let's Encrypt takes a few seconds, Pebble without
/// its sleeps a few milliseconds, hence the short first poll.
const VALIDATION_POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(40))
    .backoff(1.6)
    .timeout(Duration::from_secs(90));

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("[acme] directory_ca {}: {reason}", path.display())]
    RootCa { path: PathBuf, reason: String },
}

/// The CA at one directory URL.
pub struct AcmeCa {
    settings: Acme,
    http: CaHttp,
    challenges: Arc<Challenges>,
    account_path: PathBuf,
    account: tokio::sync::Mutex<Option<Account>>,
}

impl std::fmt::Debug for AcmeCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeCa")
            .field("directory", &self.settings.directory)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    contact: Vec<String>,
    credentials: AccountCredentials,
}

impl AcmeCa {
    /// Reads the extra root CA (fallible work for a reload's prepare).
    pub fn new(settings: &Acme, challenges: Arc<Challenges>, state_dir: &Path) -> Result<Self, CaError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, settings.directory.as_bytes());
        let name = crate::auth::token::hex(&digest.as_ref()[..8]);
        Ok(Self {
            settings: settings.clone(),
            http: CaHttp::new(settings.directory_ca.as_deref())?,
            challenges,
            account_path: state_dir.join("acme").join(format!("account-{name}.json")),
            account: tokio::sync::Mutex::new(None),
        })
    }

    /// The account: in memory, else from its file, else created at the CA.
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let account = match self.stored_account()? {
            Some((stored, bytes)) => {
                let contact_changed = stored.contact != self.settings.contact;
                let account = Account::builder_with_http(self.http.boxed())
                    .from_credentials(stored.credentials)
                    .await
                    .map_err(|e| self.failure(&e, "", None))?;
                if contact_changed {
                    self.update_contact(&account, &contact, &bytes).await?;
                }
                account
            }
            None => {
                let (account, credentials) = Account::builder_with_http(self.http.boxed())
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| self.failure(&e, "", None))?;
                self.save(&StoredAccount {
                    directory: self.settings.directory.clone(),
                    contact: self.settings.contact.clone(),
                    credentials,
                })?;
                tracing::info!(directory = %self.settings.directory, account = %account.id(),
                    "created an ACME account");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    /// The stored account for this directory and its file's bytes; a
    /// damaged file is set aside (`.bad`) so a new account can be made.
    fn stored_account(&self) -> Result<Option<(StoredAccount, Vec<u8>)>, AcmeError> {
        let bytes = match std::fs::read(&self.account_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(AcmeError::other(format!(
                    "cannot read the ACME account {}: {e}",
                    self.account_path.display()
                )));
            }
        };
        match serde_json::from_slice::<StoredAccount>(&bytes) {
            Ok(stored) if stored.directory == self.settings.directory => Ok(Some((stored, bytes))),
            _ => {
                let mut aside = self.account_path.as_os_str().to_owned();
                aside.push(".bad");
                tracing::warn!(path = %self.account_path.display(),
                    "the ACME account file is damaged; set aside as .bad, a new account will be made");
                std::fs::rename(&self.account_path, &aside).map_err(|e| {
                    AcmeError::other(format!("cannot set aside {}: {e}", self.account_path.display()))
                })?;
                Ok(None)
            }
        }
    }

    /// Sends the configured contact to the CA. Only a vanished account is an
    /// error: a refused contact must not stop certificates.
    async fn update_contact(
        &self,
        account: &Account,
        contact: &[&str],
        stored: &[u8],
    ) -> Result<(), AcmeError> {
        if let Err(e) = account.update_contacts(contact).await {
            let e = self.failure(&e, "", None);
            if e.kind == FailureKind::AccountGone {
                return Err(e);
            }
            tracing::warn!("cannot update the ACME account's contact; keeping the old one: {e}");
            return Ok(());
        }
        tracing::info!(contact = ?self.settings.contact, "updated the ACME account's contact");
        // The credentials are unchanged; record the new contact.
        let mut updated: StoredAccount = serde_json::from_slice(stored)
            .map_err(|e| AcmeError::other(format!("{}: {e}", self.account_path.display())))?;
        updated.contact.clone_from(&self.settings.contact);
        self.save(&updated)
    }

    fn save(&self, stored: &StoredAccount) -> Result<(), AcmeError> {
        let io = |e: std::io::Error| {
            AcmeError::other(format!(
                "cannot store the ACME account in {}: {e}",
                self.account_path.display()
            ))
        };
        std::fs::create_dir_all(fsutil::parent_dir(&self.account_path)).map_err(io)?;
        let json = serde_json::to_vec(stored).map_err(|e| io(std::io::Error::other(e)))?;
        fsutil::replace_private(&self.account_path, &json).map_err(io)
    }

    /// Forgets the account (the CA lost it); the next attempt makes a new one.
    async fn forget_account(&self) {
        *self.account.lock().await = None;
        let _ = fsutil::remove_if_present(&self.account_path);
    }

    fn failure(
        &self,
        error: &instant_acme::Error,
        host: &str,
        challenge: Option<ChallengeKind>,
    ) -> AcmeError {
        let retry_after = self.http.take_retry_after();
        match error {
            instant_acme::Error::Api(problem) => explain(
                problem.r#type.as_deref(),
                problem.detail.as_deref(),
                host,
                challenge,
                retry_after,
            ),
            instant_acme::Error::Timeout(_) => AcmeError::other(format!(
                "the CA did not finish {} in time; retrying later",
                if challenge.is_some() {
                    "validating"
                } else {
                    "the order"
                }
            )),
            other => AcmeError {
                message: format!(
                    "cannot talk to the CA at {}: {}",
                    self.settings.directory,
                    crate::net::error_chain(other)
                ),
                kind: FailureKind::Other,
                retry_after,
            },
        }
    }

    async fn order_once(&self, request: &OrderRequest<'_>) -> Result<String, AcmeError> {
        let account = self.account().await?;
        let host = request.host;
        let identifiers = [Identifier::Dns(host.to_owned())];
        let replaces = request
            .replaces
            .and_then(|leaf| CertificateIdentifier::try_from(leaf).ok());
        let mut new_order = NewOrder::new(&identifiers);
        if let Some(replaces) = replaces {
            new_order = new_order.replaces(replaces);
        }
        let fail = |e: &instant_acme::Error| self.failure(e, host, None);
        let mut order = account.new_order(&new_order).await.map_err(|e| fail(&e))?;

        // Answers stay published until validation is over.
        let mut published: Vec<Published> = Vec::new();
        let challenge_type = match request.challenge {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let validating = |e: &instant_acme::Error| self.failure(e, host, Some(request.challenge));
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(|e| fail(&e))?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeError::other(format!(
                        "the CA's authorization for {host} is {other:?}; a new order follows"
                    )));
                }
            }
            let mut challenge = authorization.challenge(challenge_type.clone()).ok_or_else(|| {
                AcmeError::other(format!(
                    "the CA does not offer {} for {host}; choose another `challenge` in [acme]",
                    request.challenge.as_str()
                ))
            })?;
            let key_authorization = challenge.key_authorization();
            published.push(match request.challenge {
                ChallengeKind::Http01 => self
                    .challenges
                    .publish_http01(&challenge.token, key_authorization.as_str()),
                ChallengeKind::TlsAlpn01 => self
                    .challenges
                    .publish_tls_alpn01(host, key_authorization.digest().as_ref())
                    .map_err(|e| AcmeError::other(format!("cannot make the TLS-ALPN-01 certificate: {e}")))?,
            });
            challenge.set_ready().await.map_err(|e| validating(&e))?;
        }
        let status = order.poll_ready(&VALIDATION_POLL).await;
        drop(published);
        match status {
            Ok(OrderStatus::Ready) => {}
            Ok(_) | Err(instant_acme::Error::Api(_)) => {
                // The reason is on the failed challenge.
                let mut authorizations = order.authorizations();
                while let Some(Ok(mut authorization)) = authorizations.next().await {
                    let Ok(state) = authorization.refresh().await else {
                        continue;
                    };
                    if let Some(problem) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                        return Err(explain(
                            problem.r#type.as_deref(),
                            problem.detail.as_deref(),
                            host,
                            Some(request.challenge),
                            None,
                        ));
                    }
                }
                return Err(match status {
                    Err(e) => validating(&e),
                    Ok(state) => AcmeError::other(format!("the order for {host} ended {state:?}")),
                });
            }
            Err(e) => return Err(validating(&e)),
        }
        order.finalize_csr(request.csr_der).await.map_err(|e| fail(&e))?;
        order
            .poll_certificate(&VALIDATION_POLL)
            .await
            .map_err(|e| fail(&e))
    }
}

impl CertificateAuthority for AcmeCa {
    fn directory(&self) -> &str {
        &self.settings.directory
    }

    async fn order(&self, request: OrderRequest<'_>) -> Result<String, AcmeError> {
        match self.order_once(&request).await {
            Err(e) if e.kind == FailureKind::AccountGone => {
                tracing::warn!("{e}");
                self.forget_account().await;
                self.order_once(&request).await
            }
            result => result,
        }
    }

    async fn renewal_window(
        &self,
        leaf: &CertificateDer<'static>,
    ) -> Result<Option<(Window, Duration)>, AcmeError> {
        let account = self.account().await?;
        let id = CertificateIdentifier::try_from(leaf).map_err(AcmeError::other)?;
        match account.renewal_info(&id).await {
            Ok((info, retry_after)) => Ok(Some((
                Window {
                    start: SystemTime::from(info.suggested_window.start),
                    end: SystemTime::from(info.suggested_window.end),
                },
                retry_after,
            ))),
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(self.failure(&e, "", None)),
        }
    }
}

/// hyper-rustls over ring with the public roots plus `[acme] directory_ca`.
#[derive(Clone)]
struct CaHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    retry_after: Arc<Mutex<Option<SystemTime>>>,
}

impl CaHttp {
    fn new(extra_root: Option<&Path>) -> Result<Self, CaError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_root {
            let error = |reason: String| CaError::RootCa {
                path: path.to_owned(),
                reason,
            };
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| error(e.to_string()))?;
            if certificates.is_empty() {
                return Err(error("no CERTIFICATE block".to_owned()));
            }
            for certificate in certificates {
                roots.add(certificate).map_err(|e| error(e.to_string()))?;
            }
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            retry_after: Arc::default(),
        })
    }

    fn boxed(&self) -> Box<dyn HttpClient> {
        Box::new(self.clone())
    }

    /// The `Retry-After` of the last refusal, as a wait from now.
    fn take_retry_after(&self) -> Option<Duration> {
        let at = self
            .retry_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
    }
}

impl HttpClient for CaHttp {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.client.request(request);
        let retry_after = Arc::clone(&self.retry_after);
        Box::pin(async move {
            let response = tokio::time::timeout(REQUEST_TIMEOUT, response)
                .await
                .map_err(|_| instant_acme::Error::Other("the CA did not answer within 30 s".into()))?
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let refused = response.status().is_client_error() || response.status().is_server_error();
            let (mut parts, body) = response.into_parts();
            // instant-acme adds a Retry-After to the clock unchecked (an
            // absurd one would panic): it only ever sees a sane number.
            let wait = parts
                .headers
                .remove(http::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok().and_then(parse_retry_after));
            if let Some(wait) = wait {
                parts
                    .headers
                    .insert(http::header::RETRY_AFTER, wait.as_secs().into());
                if refused {
                    *retry_after.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(SystemTime::now() + wait);
                }
            }
            // Whole bodies within the timeout: instant-acme reads them later
            // without one, and a stalled CA would stall every renewal.
            let body = tokio::time::timeout(REQUEST_TIMEOUT, Limited::new(body, MAX_BODY).collect())
                .await
                .map_err(|_| instant_acme::Error::Other("the CA's response stalled".into()))?
                .map_err(instant_acme::Error::Other)?
                .to_bytes();
            if refused
                && serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|problem| problem["type"] == "urn:ietf:params:acme:error:badNonce")
            {
                tracing::info!("the CA refused a nonce as stale (badNonce); retrying with a fresh one");
            }
            Ok(BytesResponse::from(http::Response::from_parts(
                parts,
                Full::new(body),
            )))
        })
    }
}

/// `Retry-After` (seconds or an HTTP date, RFC 9110 §10.2.3) as a wait
/// from now, at most [`MAX_RETRY_AFTER`].
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::{MAX_RETRY_AFTER, parse_retry_after};
    use std::time::{Duration, SystemTime};

    #[test]
    fn retry_after_takes_seconds_and_dates_and_caps_them() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let in_a_day = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(86_400));
        let wait = parse_retry_after(&in_a_day).unwrap();
        assert!(
            wait > Duration::from_secs(86_300) && wait <= Duration::from_secs(86_400),
            "{wait:?}"
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 2100 23:59:59 GMT"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert!(parse_retry_after("soon").is_none());
    }
}
