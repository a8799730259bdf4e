//! The proxy subsystem: HTTPS listeners that find the site by Host (which
//! must agree with SNI), decide with [`evaluate`] and forward exactly the
//! authorized path; HTTP listeners that redirect to HTTPS. Sites, rules,
//! clients and certificates are swapped whole on reload; open connections,
//! streams and websocket tunnels carry on.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::ResponseBody;
use super::evaluate::evaluate;
use super::headers::{self, ForwardedFacts, RequestHost};
use super::path::CanonicalPath;
use super::rules::{Action, NetSet, Requirement, RuleUpstream, Verdict};
use super::upstream::{self, ClientSettings, UpstreamBody, UpstreamClient, UpstreamError};
use super::{login, pages};
use crate::acme::challenge::{Challenges, HTTP01_PREFIX};
use crate::auth::{self, Attempt, AuthShared, Outcome, session};
use crate::config::Config;
use crate::daemon::{SubsystemState, SubsystemStatus};
use crate::net::{
    self, ConnectionInfo, HttpLimits, ListenError, ListenerKind, ListenerSet, Serving, StagedListeners,
    Transport,
};
use crate::shutdown::Drain;
use crate::tls::{self, CertResolver, CertTable, TlsError};

pub const HTTPS_LISTENER: ListenerKind = ListenerKind {
    name: "HTTPS",
    key: "[proxy] https_listen",
};
pub const HTTP_LISTENER: ListenerKind = ListenerKind {
    name: "HTTP",
    key: "[proxy] http_listen",
};

const LIMITS: HttpLimits = HttpLimits {
    header_read_timeout: Duration::from_secs(20),
    max_connections: 4096,
    // A browser opens 6 per host name over HTTP/1.1; a wall of MJPEG
    // tiles or several people behind one NAT need more.
    max_per_client: 256,
    write_timeout: Duration::from_secs(60),
    http2: true,
};
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Waiting for the DVR's response head; longer gets 504.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// A response body (stream) that sends nothing for this long is cut.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests and streams in flight to one site's DVR; more get 503. DVRs
/// have few stream slots, and this bounds what one site can hold.
const MAX_IN_FLIGHT_PER_SITE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Everything a request needs, replaced whole on reload.
#[derive(Debug)]
struct ProxyState {
    by_host: HashMap<String, Arc<SiteProxy>>,
    site_count: usize,
    trusted_proxies: Vec<IpNet>,
    /// Where the HTTP listener redirects to.
    https_port: Option<u16>,
    /// Users, tokens, bans and sessions; the same across reloads.
    auth: Arc<AuthShared>,
    /// Pending ACME challenges, answered on the HTTP listener.
    challenges: Arc<Challenges>,
}

#[derive(Debug)]
struct SiteProxy {
    site: crate::config::Site,
    settings: ClientSettings,
    client: UpstreamClient,
    /// Where each rule sends requests (`None`: the site's upstream), by
    /// rule index.
    rule_origins: Vec<Option<Uri>>,
    /// The DVR's own origins (site and rule upstreams), for redirects.
    origins: Vec<String>,
    in_flight: Arc<Semaphore>,
    hsts: Hsts,
    /// The networks of the site's `auth` rules (its LAN): never banned.
    exempt: Vec<NetSet>,
    /// Every user the site's `auth` rules accept: who may log in here.
    /// `None` when no rule takes a password.
    login: Option<Requirement>,
}

impl ProxyState {
    /// Builds the state for `config`, reusing `old`'s clients (and their
    /// connection pools) for sites whose client settings did not change.
    fn build(
        config: &Config,
        old: Option<&Self>,
        auth: &Arc<AuthShared>,
        challenges: &Arc<Challenges>,
        certificates: &Arc<CertResolver>,
    ) -> Result<Self, ProxyError> {
        let max_age = config.proxy.hsts_max_age.as_secs();
        let hsts = (max_age > 0).then(|| {
            HeaderValue::try_from(format!("max-age={max_age}")).expect("digits are a valid header value")
        });
        let mut by_host = HashMap::new();
        for site in &config.sites {
            let settings = ClientSettings::of(site);
            let reused = old
                .and_then(|old| old.by_host.get(site.hosts.first()?))
                .filter(|old| old.site.name == site.name && old.settings == settings);
            // A kept client keeps its pool, and the in-flight limit keeps
            // counting the streams that outlive the reload.
            let (client, in_flight) = match reused {
                Some(old) => (old.client.clone(), Arc::clone(&old.in_flight)),
                None => (
                    upstream::client(&site.name, &settings)?,
                    Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_SITE)),
                ),
            };
            let rule_origins: Vec<Option<Uri>> = site
                .rules
                .rules
                .iter()
                .map(|rule| {
                    rule.upstream
                        .as_ref()
                        .map(|to| rule_origin(&site.upstream.uri, to))
                })
                .collect();
            let mut origins = headers::origins_of(&site.upstream.uri);
            origins.extend(rule_origins.iter().flatten().flat_map(headers::origins_of));
            let proxy = Arc::new(SiteProxy {
                site: site.clone(),
                settings,
                client,
                rule_origins,
                origins,
                in_flight,
                hsts: Hsts::of(site, config, hsts.as_ref(), certificates),
                exempt: exempt_networks(site),
                login: login_requirement(site),
            });
            for host in &site.hosts {
                by_host.insert(host.clone(), Arc::clone(&proxy));
            }
        }
        Ok(Self {
            by_host,
            site_count: config.sites.len(),
            trusted_proxies: config.proxy.trusted_proxies.clone(),
            https_port: config.proxy.https_listen.first().map(SocketAddr::port),
            auth: Arc::clone(auth),
            challenges: Arc::clone(challenges),
        })
    }
}

/// When a site's responses carry `Strict-Transport-Security`: only while
/// the certificate is one browsers trust. Sent with the self-signed one, it
/// could lock a browser out of the site for the max-age.
#[derive(Debug)]
enum Hsts {
    Never,
    /// The site's own certificate files.
    Always(HeaderValue),
    /// ACME hosts: while the CA's certificate serves the host.
    WhenIssued(HeaderValue, Arc<CertResolver>),
}

impl Hsts {
    fn of(
        site: &crate::config::Site,
        config: &Config,
        header: Option<&HeaderValue>,
        certificates: &Arc<CertResolver>,
    ) -> Self {
        let Some(header) = header else { return Self::Never };
        let acme = config
            .acme
            .as_ref()
            .is_some_and(|acme| site.hosts.iter().any(|host| acme.hosts.contains(host)));
        if site.certificate.is_some() {
            Self::Always(header.clone())
        } else if acme {
            Self::WhenIssued(header.clone(), Arc::clone(certificates))
        } else {
            Self::Never
        }
    }

    fn for_host(&self, host: &str) -> Option<&HeaderValue> {
        match self {
            Self::Always(header) => Some(header),
            Self::WhenIssued(header, certificates) if certificates.has_issued(host) => Some(header),
            _ => None,
        }
    }
}

/// Every `from` set of the site's `auth` rules: clients there already pass
/// those rules without credentials, so their typos never ban anyone.
fn exempt_networks(site: &crate::config::Site) -> Vec<NetSet> {
    distinct(auth_requirements(site).flat_map(|r| &r.from))
}

/// The users of all the site's `auth` rules, for its login page; `None`
/// when no rule takes a password.
fn login_requirement(site: &crate::config::Site) -> Option<Requirement> {
    let users = distinct(auth_requirements(site).flat_map(|r| &r.users));
    (!users.is_empty()).then_some(Requirement {
        from: Vec::new(),
        users,
        tokens: Vec::new(),
    })
}

fn auth_requirements(site: &crate::config::Site) -> impl Iterator<Item = &Requirement> {
    site.rules.rules.iter().filter_map(|rule| match &rule.action {
        Action::Auth(requirement) => Some(requirement),
        _ => None,
    })
}

fn distinct<'a, T: PartialEq + Clone + 'a>(items: impl Iterator<Item = &'a T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out
}

/// Where a rule sends requests: its URL, or the site's upstream host on
/// another port (motion serves streams on a second port).
fn rule_origin(site: &Uri, upstream: &RuleUpstream) -> Uri {
    match upstream {
        RuleUpstream::Url(uri) => uri.clone(),
        RuleUpstream::Port(port) => {
            let host = site.authority().map_or("", http::uri::Authority::host);
            Uri::builder()
                .scheme(site.scheme_str().unwrap_or("http"))
                .authority(format!("{host}:{port}"))
                .path_and_query("/")
                .build()
                .unwrap_or_else(|_| site.clone())
        }
    }
}

/// The running proxy.
#[derive(Debug)]
pub struct ProxyServer {
    https: ListenerSet,
    http: ListenerSet,
    state: Arc<ArcSwap<ProxyState>>,
    resolver: Arc<CertResolver>,
    tls: Arc<rustls::ServerConfig>,
}

/// A new config, prepared: listeners bound, certificates loaded, clients
/// built. Committing cannot fail.
#[derive(Debug)]
pub struct StagedProxy {
    https: StagedListeners,
    http: StagedListeners,
    state: ProxyState,
    certificates: CertTable,
}

impl ProxyServer {
    pub fn start(
        config: &Config,
        https: Vec<(SocketAddr, std::net::TcpListener)>,
        http: Vec<(SocketAddr, std::net::TcpListener)>,
        auth: &Arc<AuthShared>,
        resolver: Arc<CertResolver>,
        challenges: &Arc<Challenges>,
        drain: &Drain,
    ) -> Result<Self, ProxyError> {
        let tls = tls::server_config(Arc::clone(&resolver))?;
        let state = Arc::new(ArcSwap::from_pointee(ProxyState::build(
            config, None, auth, challenges, &resolver,
        )?));
        let https = ListenerSet::start(HTTPS_LISTENER, https, &|listener| {
            serve(&state, &tls, true, listener, drain)
        })?;
        let http = ListenerSet::start(HTTP_LISTENER, http, &|listener| {
            serve(&state, &tls, false, listener, drain)
        })?;
        Ok(Self {
            https,
            http,
            state,
            resolver,
            tls,
        })
    }

    pub fn prepare(&self, config: &Config) -> Result<StagedProxy, ProxyError> {
        let old = self.state.load();
        Ok(StagedProxy {
            https: self.https.stage(&config.proxy.https_listen)?,
            http: self.http.stage(&config.proxy.http_listen)?,
            state: ProxyState::build(config, Some(&old), &old.auth, &old.challenges, &self.resolver)?,
            certificates: CertTable::load(&config.sites, &config.daemon.state_dir, &tls::local_addresses())?,
        })
    }

    pub async fn commit(&mut self, staged: StagedProxy, drain: &Drain) {
        self.resolver.replace(staged.certificates);
        self.state.store(Arc::new(staged.state));
        let (state, tls) = (&self.state, &self.tls);
        self.https
            .commit(staged.https, &|listener| serve(state, tls, true, listener, drain))
            .await;
        self.http
            .commit(staged.http, &|listener| serve(state, tls, false, listener, drain))
            .await;
    }

    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.https.local_addrs()
    }

    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http.local_addrs()
    }

    pub fn status(&self) -> SubsystemStatus {
        let list = |addrs: Vec<SocketAddr>| {
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            if addrs.is_empty() {
                "nowhere".to_owned()
            } else {
                addrs.join(", ")
            }
        };
        SubsystemStatus {
            name: "proxy",
            state: SubsystemState::Running,
            detail: format!(
                "{} site(s); HTTPS on {}; HTTP on {}",
                self.state.load().site_count,
                list(self.https_addrs()),
                list(self.http_addrs()),
            ),
        }
    }
}

fn serve(
    state: &Arc<ArcSwap<ProxyState>>,
    tls: &Arc<rustls::ServerConfig>,
    https: bool,
    listener: tokio::net::TcpListener,
    drain: &Drain,
) -> std::io::Result<Serving> {
    let transport = if https {
        Transport::Tls {
            config: Arc::clone(tls),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    } else {
        Transport::Plain
    };
    let state = Arc::clone(state);
    let tunnels = drain.clone();
    let make_service = move |connection: &ConnectionInfo| {
        let handler = Arc::new(Handler {
            state: Arc::clone(&state),
            connection: connection.clone(),
            tunnels: tunnels.clone(),
        });
        hyper::service::service_fn(move |request| {
            let handler = Arc::clone(&handler);
            async move { Ok::<_, Infallible>(handler.handle(request).await) }
        })
    };
    net::serve_http(listener, transport, make_service, LIMITS, drain)
}

/// One per connection, shared by its requests.
#[derive(Debug)]
struct Handler {
    state: Arc<ArcSwap<ProxyState>>,
    connection: ConnectionInfo,
    /// Websocket tunnels belong to the daemon's drain, not to a listener:
    /// they survive reloads and end at shutdown.
    tunnels: Drain,
}

/// One access-log line, filled in as the request is handled.
#[derive(Debug, Default)]
struct AccessLog<'a> {
    site: Option<&'a str>,
    rule: Option<&'a str>,
    decision: &'static str,
    why: Option<String>,
}

/// What the access log says about the request itself; copied before the
/// request is consumed, and only when the access log is on.
#[derive(Debug)]
struct RequestLine {
    method: Method,
    host: String,
    path: String,
    query: Option<String>,
}

impl RequestLine {
    fn of<B>(request: &Request<B>) -> Self {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(http::uri::Authority::as_str))
            .unwrap_or("");
        Self {
            method: request.method().clone(),
            host: host.to_owned(),
            path: request.uri().path().to_owned(),
            query: request.uri().query().map(headers::scrub_query),
        }
    }
}

impl Handler {
    async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let state = self.state.load_full();
        let line = tracing::enabled!(target: "camgate::access", tracing::Level::INFO)
            .then(|| RequestLine::of(&request));
        let mut log = AccessLog::default();
        let response = if self.connection.tls.is_some() {
            self.proxy(&state, request, &mut log).await
        } else {
            redirect(&state, &request, &mut log)
        };
        if let Some(line) = line {
            tracing::info!(
                target: "camgate::access",
                client = %self.connection.client,
                method = %line.method,
                host = %line.host,
                path = %line.path,
                query = line.query.as_deref().unwrap_or(""),
                site = log.site.unwrap_or("-"),
                rule = log.rule.unwrap_or("-"),
                decision = log.decision,
                status = response.status().as_u16(),
                why = log.why.as_deref(),
                ms = started.elapsed().as_millis() as u64,
            );
        }
        response
    }

    async fn proxy<'s>(
        &self,
        state: &'s ProxyState,
        request: Request<Incoming>,
        log: &mut AccessLog<'s>,
    ) -> Response<ResponseBody> {
        let html = pages::wants_html(request.headers());
        if let Err(why) = headers::check_framing(request.headers()) {
            log.reject(why);
            return closing(pages::respond(pages::BAD_REQUEST, html));
        }
        let host = match headers::request_host(&request) {
            Ok(host) => host,
            Err(e) => {
                log.reject(e);
                return pages::respond(pages::BAD_REQUEST, html);
            }
        };
        // No SNI is normal for an IP literal, and nothing else.
        let sni = self
            .connection
            .tls
            .as_ref()
            .and_then(|tls| tls.server_name.as_deref());
        if !sni.map_or(host.is_ip, |sni| sni == host.name) {
            log.reject(format!("SNI {sni:?} but Host {:?}", host.name));
            return pages::respond(pages::MISDIRECTED, html);
        }
        let Some(site) = state.by_host.get(&host.name) else {
            log.reject("unknown host");
            return pages::respond(pages::UNKNOWN_SITE, html);
        };
        log.site = Some(&site.site.name);

        let peer = self.connection.client.ip().to_canonical();
        let client = headers::client_address(peer, request.headers(), &state.trusted_proxies);
        // Only credential checks need it: not computed per request.
        let exempt = || site.exempt.iter().any(|set| set.contains(client));
        if request.uri().path().starts_with(login::PREFIX) {
            log.decision = "camgate";
            let context = login::PageContext {
                site: &site.site.name,
                host: &host,
                client,
                exempt: exempt(),
                login: site.login.as_ref(),
                auth: &state.auth,
            };
            return login::serve(&context, request).await;
        }
        let websocket = headers::is_websocket_upgrade(&request);
        let evaluation = evaluate(
            &site.site,
            request.method(),
            request.uri(),
            client,
            websocket,
            None,
        );
        log.decision = evaluation.label();
        let (path, decision) = match (&evaluation.path, &evaluation.decision) {
            (Ok(path), Some(decision)) => (path, decision),
            (Err(e), _) => {
                log.why = Some(e.to_string());
                let problem = match e.status() {
                    404 => pages::NOT_FOUND,
                    _ => pages::BAD_REQUEST,
                };
                return pages::respond(problem, html);
            }
            (Ok(_), None) => return pages::respond(pages::BAD_REQUEST, html),
        };
        let rule = decision.rule.map(|i| &site.site.rules.rules[i]);
        log.rule = rule.map(|rule| rule.name.as_str());
        match decision.verdict {
            Verdict::Allow => {}
            Verdict::Deny { status: 404 } => return pages::respond(pages::NOT_FOUND, html),
            Verdict::Deny { .. } => return pages::respond(pages::FORBIDDEN, html),
            Verdict::NeedsCredentials => {
                let Some((rule, Action::Auth(requirement))) = rule.map(|r| (r, &r.action)) else {
                    return pages::respond(pages::FORBIDDEN, html);
                };
                let attempt = Attempt {
                    site: &site.site.name,
                    rule: Some(&rule.name),
                    requirement,
                    client,
                    exempt: exempt(),
                    path,
                    query: request.uri().query(),
                };
                let presented = auth::presented(request.headers(), request.uri().query());
                match auth::authenticate(&state.auth, &attempt, presented).await {
                    Outcome::Granted(_) => {}
                    // With a session cookie, the session has ended.
                    Outcome::Missing => return challenge(requirement, &site.site.name, &request, html, true),
                    Outcome::Invalid(why) => {
                        log.why = Some(why.to_owned());
                        return challenge(requirement, &site.site.name, &request, html, false);
                    }
                    Outcome::Forbidden(why) => {
                        log.why = Some(why.to_owned());
                        return pages::respond(pages::NOT_PERMITTED, html);
                    }
                    Outcome::Banned(left) => {
                        log.why = Some("banned".to_owned());
                        return pages::retry_after(pages::BANNED, html, left);
                    }
                }
            }
        }
        // Decided only for requests that go on. An `auth` rule's credentials are camgate's, whether or not this
        // client needed them: the DVR never sees them. Elsewhere only what is
        // recognisably camgate's is held back (the DVR may have its own login).
        let strip = match rule {
            Some(rule) if rule.pass_authorization => Strip::Nothing,
            Some(rule) if matches!(rule.action, Action::Auth(_)) => Strip::AllCredentials,
            _ if state.auth.is_camgate_authorization(request.headers()) => {
                Strip::CamgateTokensAndAuthorization
            }
            _ => Strip::CamgateTokens,
        };
        let plan = Forward {
            site,
            path,
            origin: decision
                .rule
                .and_then(|i| site.rule_origins[i].as_ref())
                .unwrap_or(&site.site.upstream.uri),
            host: &host,
            client,
            via_trusted_proxy: (client != peer).then_some(peer),
            websocket,
            html,
            strip,
        };
        self.forward(plan, request, log).await
    }

    async fn forward(
        &self,
        plan: Forward<'_>,
        mut request: Request<Incoming>,
        log: &mut AccessLog<'_>,
    ) -> Response<ResponseBody> {
        let Ok(permit) = Arc::clone(&plan.site.in_flight).try_acquire_owned() else {
            log.why = Some("site at its in-flight limit".to_owned());
            return pages::respond(pages::BUSY, plan.html);
        };
        let client_upgrade = plan.websocket.then(|| hyper::upgrade::on(&mut request));
        let query = request.uri().query();
        let query = match plan.strip {
            Strip::AllCredentials => auth::without_token(query),
            Strip::CamgateTokens | Strip::CamgateTokensAndAuthorization => {
                auth::without_camgate_tokens(query)
            }
            Strip::Nothing => query.map(std::borrow::Cow::Borrowed),
        };
        let target = upstream_target(plan.origin, plan.path, query.as_deref());
        let (parts, body) = request.into_parts();
        let mut outgoing = Request::new(body);
        *outgoing.method_mut() = parts.method;
        *outgoing.uri_mut() = target;
        *outgoing.version_mut() = Version::HTTP_11;
        let headers = outgoing.headers_mut();
        *headers = parts.headers;
        headers::strip_hop_by_hop(headers);
        // The session and CSRF cookies mean nothing to the DVR, on any rule;
        // nor the admin interface's, which browsers send to every port.
        headers::strip_cookies(headers, session::COOKIE_PREFIX);
        headers::strip_cookies(headers, session::ADMIN_COOKIE);
        if matches!(
            plan.strip,
            Strip::AllCredentials | Strip::CamgateTokensAndAuthorization
        ) {
            headers.remove(header::AUTHORIZATION);
        }
        headers::set_forwarded(
            headers,
            &ForwardedFacts {
                client: plan.client,
                via_trusted_proxy: plan.via_trusted_proxy,
                host: plan.host,
                port: self.connection.local.port(),
            },
        );
        if let Ok(host) = HeaderValue::try_from(plan.host.original.as_str()) {
            // DVRs build their links from Host: they see the public name.
            headers.insert(header::HOST, host);
        }
        if plan.websocket {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }

        let response = match tokio::time::timeout(RESPONSE_TIMEOUT, plan.site.client.request(outgoing)).await
        {
            Err(_) => {
                log.why = Some("no response head in time".to_owned());
                return pages::respond(pages::GATEWAY_TIMEOUT, plan.html);
            }
            Ok(Err(e)) => {
                let connect = e.is_connect();
                let why = net::error_chain(&e);
                tracing::warn!(site = %plan.site.site.name, err = %why, "upstream request failed");
                log.why = Some(why);
                let problem = if connect {
                    pages::BAD_GATEWAY
                } else {
                    pages::BAD_UPSTREAM_RESPONSE
                };
                return pages::respond(problem, plan.html);
            }
            Ok(Ok(response)) => response,
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return match client_upgrade {
                Some(client_upgrade) if upstream_accepted_websocket(&response) => {
                    self.tunnel(response, client_upgrade, permit)
                }
                _ => {
                    log.why = Some("unexpected 101 from upstream".to_owned());
                    pages::respond(pages::BAD_UPSTREAM_RESPONSE, plan.html)
                }
            };
        }
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::rewrite_upstream_urls(&mut parts.headers, &plan.site.origins, &plan.host.original);
        if let Some(hsts) = plan.site.hsts.for_host(&plan.host.name) {
            parts
                .headers
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        let body = UpstreamBody::new(body, BODY_IDLE_TIMEOUT, permit);
        Response::from_parts(parts, body.boxed())
    }

    /// Answers the client's upgrade with the upstream's 101, then copies
    /// bytes both ways until either side closes or camgate shuts down.
    fn tunnel(
        &self,
        mut response: Response<Incoming>,
        client_upgrade: hyper::upgrade::OnUpgrade,
        permit: OwnedSemaphorePermit,
    ) -> Response<ResponseBody> {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let drain = self.tunnels.clone();
        self.tunnels.spawn(
            async move {
                let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok(pair) => pair,
                    Err(e) => return tracing::debug!(err = %e, "websocket upgrade failed"),
                };
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                tokio::select! {
                    result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                        if let Err(e) = result {
                            tracing::debug!(err = %e, "websocket tunnel ended with an error");
                        }
                    }
                    () = drain.started() => {}
                }
                drop(permit);
            }
            .instrument(tracing::info_span!("websocket")),
        );
        let (mut parts, _) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        Response::from_parts(parts, empty())
    }
}

/// What [`Handler::forward`] needs to know about an authorized request.
#[derive(Debug)]
struct Forward<'a> {
    site: &'a SiteProxy,
    path: &'a CanonicalPath,
    /// The rule's upstream, or the site's.
    origin: &'a Uri,
    host: &'a RequestHost,
    client: IpAddr,
    via_trusted_proxy: Option<IpAddr>,
    websocket: bool,
    html: bool,
    strip: Strip,
}

/// Which credentials the DVR must not see.
#[derive(Debug, Clone, Copy)]
enum Strip {
    /// An `auth` rule consumed them: `Authorization` and every `token`.
    AllCredentials,
    /// `token` parameters holding a camgate token.
    CamgateTokens,
    /// Those, and an `Authorization` that is camgate's (a token, or Basic
    /// credentials camgate verified).
    CamgateTokensAndAuthorization,
    /// `pass_authorization = true`: the DVR checks them itself.
    Nothing,
}

/// A browser opening a page goes to the login form (when the rule takes
/// users); everything else gets 401 with the schemes the rule accepts.
fn challenge(
    requirement: &Requirement,
    site: &str,
    request: &Request<Incoming>,
    html: bool,
    session_ended: bool,
) -> Response<ResponseBody> {
    let navigating = html && matches!(*request.method(), Method::GET | Method::HEAD);
    if navigating && !requirement.users.is_empty() {
        let path = request.uri().path();
        let query = auth::without_token(request.uri().query()).filter(|q| !q.is_empty());
        let target = match query {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        let mut response = login::login_redirect(&target);
        if session_ended && auth::cookie(request.headers(), session::COOKIE).is_some() {
            // The browser's session ended: forget it.
            response
                .headers_mut()
                .append(header::SET_COOKIE, login::expired_session_cookie());
        }
        return response;
    }
    let mut response = pages::respond(pages::UNAUTHORIZED, html);
    // Site names are identifiers, so the realm needs no escaping.
    let schemes = [
        (!requirement.users.is_empty()).then(|| format!("Basic realm=\"camgate {site}\", charset=\"UTF-8\"")),
        (!requirement.tokens.is_empty()).then(|| format!("Bearer realm=\"camgate {site}\"")),
    ];
    for scheme in schemes.into_iter().flatten() {
        if let Ok(value) = HeaderValue::try_from(scheme) {
            response.headers_mut().append(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

impl AccessLog<'_> {
    fn reject(&mut self, why: impl std::fmt::Display) {
        self.decision = "reject";
        self.why = Some(why.to_string());
    }
}

/// The upstream URI: the rule's or the site's origin, the canonical path
/// (re-encoded), and the query as the client sent it.
fn upstream_target(origin: &Uri, path: &CanonicalPath, query: Option<&str>) -> Uri {
    let mut path_and_query = path.to_request_path();
    if let Some(query) = query {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let mut parts = origin.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    Uri::from_parts(parts).expect("an origin plus a canonical path is a valid URI")
}

fn upstream_accepted_websocket(response: &Response<Incoming>) -> bool {
    response
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// The HTTP listener: every request for a known name is sent to HTTPS.
fn redirect(
    state: &ProxyState,
    request: &Request<Incoming>,
    log: &mut AccessLog<'_>,
) -> Response<ResponseBody> {
    // ACME HTTP-01 validation, before any redirect: the CA follows
    // redirects, but only to ports 80 and 443, and needs no detour.
    if request.uri().path().starts_with(HTTP01_PREFIX)
        && matches!(*request.method(), Method::GET | Method::HEAD)
    {
        log.decision = "acme-challenge";
        return match state.challenges.http01(request.uri().path()) {
            Some(key_authorization) => {
                let mut response = Response::new(pages::full(key_authorization));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                response
            }
            None => {
                log.reject("no such ACME challenge");
                pages::respond(pages::NOT_FOUND, false)
            }
        };
    }
    let html = pages::wants_html(request.headers());
    let host = match headers::request_host(request) {
        Ok(host) => host,
        Err(e) => {
            log.reject(e);
            return pages::respond(pages::BAD_REQUEST, html);
        }
    };
    let known = state.by_host.contains_key(&host.name) || host.is_ip || host.name == tls::LOCAL_NAME;
    let Some(port) = state.https_port.filter(|_| known) else {
        log.reject("unknown host");
        return pages::respond(pages::UNKNOWN_SITE, html);
    };
    log.decision = "redirect";
    let name = if host.name.contains(':') {
        format!("[{}]", host.name)
    } else {
        host.name
    };
    let authority = if port == 443 {
        name
    } else {
        format!("{name}:{port}")
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let status = if matches!(*request.method(), Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    if let Ok(location) = HeaderValue::try_from(format!("https://{authority}{path}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Asks hyper to close the connection after this response (framing
/// problems leave the rest of the stream untrustworthy).
fn closing(mut response: Response<ResponseBody>) -> Response<ResponseBody> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::path::{PathPolicy, canonicalize};

    #[test]
    fn upstream_targets_carry_the_canonical_path_and_the_query() {
        let site: Uri = "http://192.168.1.20:8080/".parse().unwrap();
        let path = canonicalize("/a/../0/stream%20x", PathPolicy::default()).unwrap();
        assert_eq!(
            upstream_target(&site, &path, Some("a=1&b")).to_string(),
            "http://192.168.1.20:8080/0/stream%20x?a=1&b"
        );
        assert_eq!(
            upstream_target(&rule_origin(&site, &RuleUpstream::Port(8081)), &path, None).to_string(),
            "http://192.168.1.20:8081/0/stream%20x"
        );
        let other: Uri = "http://10.0.0.9:9000/".parse().unwrap();
        assert_eq!(
            upstream_target(&rule_origin(&site, &RuleUpstream::Url(other)), &path, None).to_string(),
            "http://10.0.0.9:9000/0/stream%20x"
        );
    }
}
