//! Stage two for `[proxy]`, `[[site]]` and rules (site rules and the
//! built-in profiles' rules go through the same [`compile_rules`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::{Method, Uri};
use ipnet::IpNet;
use toml::Spanned;

use super::Mode;
use super::error::Problem;
use super::raw::{RawAction, RawProxy, RawRule, RawSite};
use super::validate::{optional_duration, socket_addresses};
use crate::proxy::path::{PathPolicy, canonicalize};
use crate::proxy::profiles::{self, Profile};
use crate::proxy::rules::{
    Action, Matcher, NetSet, PathPattern, Requirement, Rule, RuleSet, RuleSource, RuleUpstream,
};

/// Regexes in rules are small; this bounds a hostile or mistaken one.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Proxy {
    pub https_listen: Vec<SocketAddr>,
    pub http_listen: Vec<SocketAddr>,
    /// Zero: no HSTS header.
    pub hsts_max_age: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// Built-in sets (`lan`, `loopback`, `any`) plus `[proxy.sets]`.
    pub sets: BTreeMap<String, NetSet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub name: String,
    /// Lower-case host names or IP literals, unique across sites.
    pub hosts: Vec<String>,
    pub upstream: Upstream,
    pub profile: &'static Profile,
    pub path_policy: PathPolicy,
    pub rules: RuleSet,
    pub lenient_headers: bool,
    /// PEM files; `None`: camgate's own certificate.
    pub certificate: Option<CertificateFiles>,
    /// Where the profile's forwards go (the upstream's address), when they
    /// are on.
    pub profile_forwards: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http://host:port` or `https://host:port`, always with a port.
    pub uri: Uri,
    pub tls: UpstreamTls,
}

/// How camgate checks an `https://` upstream (DVRs often use self-signed
/// certificates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plain HTTP upstream.
    None,
    /// Public web PKI.
    WebPki,
    /// Trust this CA (PEM file).
    Ca(PathBuf),
    /// Accept exactly the certificate with this SHA-256 fingerprint.
    Pinned([u8; 32]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

pub(super) fn proxy(raw: RawProxy, mode: Mode) -> Result<Proxy, Problem> {
    let (https_default, http_default) = match mode {
        Mode::Appliance => ("0.0.0.0:443", "0.0.0.0:80"),
        Mode::Dev => ("127.0.0.1:8443", "127.0.0.1:8000"),
    };
    let https_listen = socket_addresses(
        raw.https_listen,
        "proxy.https_listen",
        https_default,
        "the HTTPS listener",
    )?;
    let http_listen = socket_addresses(
        raw.http_listen,
        "proxy.http_listen",
        http_default,
        "the HTTP listener",
    )?;
    let hsts_max_age = optional_duration(
        raw.hsts_max_age.as_ref(),
        "proxy.hsts_max_age",
        Duration::from_secs(2 * 365 * 24 * 3600),
        Duration::from_secs(365 * 24 * 3600),
    )?;
    let trusted_proxies = raw
        .trusted_proxies
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, net)| network(net, &format!("proxy.trusted_proxies[{i}]")))
        .collect::<Result<_, _>>()?;

    let mut sets = builtin_sets();
    for (name, nets) in raw.sets.unwrap_or_default() {
        let key = format!("proxy.sets.{name}");
        identifier(&name, nets.span(), &key, "set")?;
        let list_span = nets.span();
        let nets: Vec<IpNet> = nets
            .into_inner()
            .iter()
            .enumerate()
            .map(|(i, net)| network(net, &format!("{key}[{i}]")))
            .collect::<Result<_, _>>()?;
        if nets.is_empty() {
            return Err(Problem::new(
                list_span,
                key,
                "an empty set matches nobody; remove it instead",
            ));
        }
        sets.insert(name.clone(), NetSet { name, nets });
    }
    Ok(Proxy {
        https_listen,
        http_listen,
        hsts_max_age,
        trusted_proxies,
        sets,
    })
}

/// `lan`: private and link-local ranges; `loopback`; `any`. A `[proxy.sets]`
/// entry of the same name replaces one (e.g. to narrow `lan` to one subnet).
fn builtin_sets() -> BTreeMap<String, NetSet> {
    let set = |name: &str, nets: &[&str]| {
        let nets = nets
            .iter()
            .map(|net| net.parse().expect("valid built-in network"))
            .collect();
        (
            name.to_owned(),
            NetSet {
                name: name.to_owned(),
                nets,
            },
        )
    };
    BTreeMap::from([
        set(
            "lan",
            &[
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "169.254.0.0/16",
                "fc00::/7",
                "fe80::/10",
            ],
        ),
        set("loopback", &["127.0.0.0/8", "::1/128"]),
        set("any", &["0.0.0.0/0", "::/0"]),
    ])
}

/// The user and token names rules may refer to.
#[derive(Debug, Default)]
pub(crate) struct Principals {
    pub(crate) users: BTreeSet<String>,
    pub(crate) tokens: BTreeSet<String>,
}

pub(super) fn sites(
    raw: Vec<RawSite>,
    proxy: &Proxy,
    principals: &Principals,
    mode: Mode,
) -> Result<Vec<Site>, Problem> {
    let mut sites = Vec::with_capacity(raw.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut hosts: HashMap<String, String> = HashMap::new();
    for (index, raw) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("site[{index}].{field}");
        let name = raw.name.get_ref().clone();
        identifier(&name, raw.name.span(), &key("name"), "site")?;
        for (reserved, what) in [
            (crate::auth::session::ADMIN_SITE, "camgate's own admin interface"),
            (super::streams::STREAMS_SITE, "camgate's restream of the cameras"),
        ] {
            if name == reserved {
                return Err(Problem::new(
                    raw.name.span(),
                    key("name"),
                    format!("{reserved:?} is {what}: name the site after the DVR"),
                ));
            }
        }
        if let Some(first) = names.insert(name.clone(), index) {
            return Err(Problem::new(
                raw.name.span(),
                key("name"),
                format!("site {name:?} is already site[{first}]"),
            ));
        }
        let host_spans: Vec<_> = raw.hosts.get_ref().iter().map(Spanned::span).collect();
        let site = site(raw, index, proxy, principals, mode)?;
        for (i, (host, span)) in site.hosts.iter().zip(host_spans).enumerate() {
            if let Some(other) = hosts.insert(host.clone(), site.name.clone()) {
                return Err(Problem::new(
                    span,
                    key(&format!("hosts[{i}]")),
                    format!("host {host:?} is already served by site {other:?}"),
                ));
            }
        }
        sites.push(site);
    }
    Ok(sites)
}

fn site(
    raw: RawSite,
    index: usize,
    proxy: &Proxy,
    principals: &Principals,
    mode: Mode,
) -> Result<Site, Problem> {
    let key = |field: &str| format!("site[{index}].{field}");
    let profile_name = raw.profile.as_ref().map_or("generic", |p| p.get_ref().as_str());
    let profile = profiles::get(profile_name).ok_or_else(|| {
        let known: Vec<&str> = profiles::all().iter().map(|p| p.name).collect();
        Problem::new(
            raw.profile.as_ref().map_or(0..0, Spanned::span),
            key("profile"),
            format!("unknown profile {profile_name:?}; known: {}", known.join(", ")),
        )
    })?;

    let host_list_span = raw.hosts.span();
    let mut hosts = Vec::new();
    for (i, host) in raw.hosts.get_ref().iter().enumerate() {
        let name = host.get_ref().to_ascii_lowercase();
        if !is_host(&name) {
            return Err(Problem::new(
                host.span(),
                key(&format!("hosts[{i}]")),
                format!(
                    "{:?} is not a host name or IP address (no scheme, port or path)",
                    host.get_ref()
                ),
            ));
        }
        if hosts.contains(&name) {
            return Err(Problem::new(
                host.span(),
                key(&format!("hosts[{i}]")),
                format!("{name:?} is listed twice"),
            ));
        }
        hosts.push(name);
    }
    if hosts.is_empty() {
        return Err(Problem::new(
            host_list_span,
            key("hosts"),
            "a site needs at least one host name",
        ));
    }

    let uri = upstream_uri(&raw.upstream, &key("upstream"), profile.upstream_port, true)?;
    let tls = upstream_tls(&raw, &uri, index)?;
    let profile_forwards = profile_forwards(&raw, &uri, profile, mode, &key)?;
    let certificate = match (raw.certificate, raw.key) {
        (None, None) => None,
        (Some(certificate), Some(key_file)) => Some(CertificateFiles {
            certificate: PathBuf::from(certificate.into_inner()),
            key: PathBuf::from(key_file.into_inner()),
        }),
        (Some(only), None) | (None, Some(only)) => {
            return Err(Problem::new(
                only.span(),
                key("certificate"),
                "give both `certificate` and `key`, or neither",
            ));
        }
    };

    let context = RuleContext {
        sets: &proxy.sets,
        principals,
        case_insensitive: profile.case_insensitive,
        upstream: &uri,
    };
    let mut rules = compile_rules(&raw.rules, RuleSource::Site, &context, &|i, field| {
        key(&format!("rule[{i}].{field}"))
    })?;
    if raw.profile_rules.unwrap_or(true) {
        rules.extend(profile.compile_rules(&context).map_err(|problem| {
            Problem::new(
                raw.profile.as_ref().map_or(0..0, Spanned::span),
                key("profile"),
                format!("built-in profile {}: {}", profile.name, problem.message),
            )
        })?);
    }

    Ok(Site {
        name: raw.name.into_inner(),
        hosts,
        upstream: Upstream { uri, tls },
        profile,
        path_policy: PathPolicy {
            allow_encoded_slash: raw.allow_encoded_slash,
            allow_semicolon: raw.allow_semicolon,
            windows: profile.windows,
        },
        rules: RuleSet {
            rules,
            case_insensitive: profile.case_insensitive,
        },
        lenient_headers: raw.lenient_headers.unwrap_or(profile.lenient_headers),
        certificate,
        profile_forwards,
    })
}

/// The upstream's address when the site's profile forwards ports to it:
/// on by default in appliance mode, off in dev mode (where the upstream is
/// usually on the same machine as camgate).
fn profile_forwards(
    raw: &RawSite,
    uri: &Uri,
    profile: &Profile,
    mode: Mode,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<IpAddr>, Problem> {
    let on = raw
        .forwards
        .as_ref()
        .map_or(mode == Mode::Appliance, |f| *f.get_ref());
    if !on || profile.forwards.is_empty() {
        return Ok(None);
    }
    let host = uri.host().unwrap_or_default();
    let address = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map_err(|_| {
            Problem::new(
                raw.upstream.span(),
                key("upstream"),
                format!(
                    "profile {} forwards ports to the DVR ({}), which needs the DVR's IP address \
                     in `upstream`, not {host:?}; or set `forwards = false` and add [[forward]] entries",
                    profile.name,
                    profile.forwards_summary(),
                ),
            )
        })?;
    Ok(Some(address))
}

/// `http(s)://host[:port][/]`; the port defaults to `default_port`.
fn upstream_uri(
    value: &Spanned<String>,
    key: &str,
    default_port: u16,
    allow_https: bool,
) -> Result<Uri, Problem> {
    let bad = |why: &str| {
        Problem::new(
            value.span(),
            key,
            format!("invalid upstream {:?}: {why}", value.get_ref()),
        )
    };
    let uri: Uri = value
        .get_ref()
        .parse()
        .map_err(|_| bad("expected a URL like \"http://192.168.1.20:8090\""))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| bad("missing http:// or https://"))?;
    if scheme != "http" && !(allow_https && scheme == "https") {
        return Err(bad("the scheme must be http:// or https://"));
    }
    let authority = uri.authority().ok_or_else(|| bad("missing the host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("credentials do not belong in the URL"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "camgate forwards whole sites: no path or query (give the DVR its own host name)",
        ));
    }
    let port = authority.port_u16().unwrap_or(default_port);
    Uri::builder()
        .scheme(scheme)
        .authority(format!("{}:{port}", authority.host()))
        .path_and_query("/")
        .build()
        .map_err(|_| bad("cannot rebuild the URL"))
}

fn upstream_tls(raw: &RawSite, uri: &Uri, index: usize) -> Result<UpstreamTls, Problem> {
    let key = |field: &str| format!("site[{index}].{field}");
    let https = uri.scheme_str() == Some("https");
    match (&raw.upstream_ca, &raw.upstream_sha256) {
        (Some(ca), Some(_)) => {
            Err(Problem::new(ca.span(), key("upstream_ca"), "give `upstream_ca` or `upstream_sha256`, not both"))
        }
        (Some(value), None) | (None, Some(value)) if !https => {
            Err(Problem::new(value.span(), key("upstream"), "only an https:// upstream uses a CA or fingerprint"))
        }
        (Some(ca), None) => Ok(UpstreamTls::Ca(PathBuf::from(ca.get_ref()))),
        (None, Some(pin)) => fingerprint(pin.get_ref()).map(UpstreamTls::Pinned).ok_or_else(|| {
            Problem::new(
                pin.span(),
                key("upstream_sha256"),
                "expected 64 hex digits (colons allowed), e.g. from `openssl x509 -noout -fingerprint -sha256`",
            )
        }),
        (None, None) if https => Ok(UpstreamTls::WebPki),
        (None, None) => Ok(UpstreamTls::None),
    }
}

fn fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: String = text
        .trim_start_matches("sha256:")
        .chars()
        .filter(|&c| c != ':')
        .collect();
    crate::auth::token::parse_digest(&hex)
}

/// What rules are compiled against.
#[derive(Debug)]
pub(crate) struct RuleContext<'a> {
    pub(crate) sets: &'a BTreeMap<String, NetSet>,
    /// `[[user]]` and `[[token]]` names a rule may list (besides `*`).
    pub(crate) principals: &'a Principals,
    pub(crate) case_insensitive: bool,
    pub(crate) upstream: &'a Uri,
}

/// Compiles raw rules. `key(i, field)` names a field of rule `i` in errors.
pub(crate) fn compile_rules(
    raw: &[RawRule],
    source: RuleSource,
    context: &RuleContext<'_>,
    key: &dyn Fn(usize, &str) -> String,
) -> Result<Vec<Rule>, Problem> {
    raw.iter()
        .enumerate()
        .map(|(i, rule)| compile_rule(rule, i, source, context, &|f| key(i, f)))
        .collect()
}

fn compile_rule(
    raw: &RawRule,
    index: usize,
    source: RuleSource,
    context: &RuleContext<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<Rule, Problem> {
    let name = raw.name.clone().unwrap_or_else(|| format!("rule {}", index + 1));
    let path = path_pattern(raw, context.case_insensitive, key)?;
    let methods = raw
        .methods
        .iter()
        .flatten()
        .map(|method| {
            let text = method.get_ref();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(Problem::new(
                    method.span(),
                    key("methods"),
                    format!("{text:?} is not an upper-case HTTP method"),
                ));
            }
            Method::from_bytes(text.as_bytes()).map_err(|_| {
                Problem::new(
                    method.span(),
                    key("methods"),
                    format!("{text:?} is not an HTTP method"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let matcher = Matcher {
        path,
        methods,
        websocket: raw.websocket,
        query_has: raw.query_has.clone().unwrap_or_default(),
    };

    let action_span = raw.action.span();
    let has_requirements = raw.from.is_some() || raw.users.is_some() || raw.tokens.is_some();
    let action = match *raw.action.get_ref() {
        RawAction::Allow | RawAction::Deny if has_requirements => {
            return Err(Problem::new(
                action_span,
                key("action"),
                "`from`, `users` and `tokens` belong to `action = \"auth\"`",
            ));
        }
        RawAction::Allow => Action::Allow,
        RawAction::Deny => Action::Deny {
            status: deny_status(raw.status.as_ref(), key)?,
        },
        RawAction::Auth => {
            let from = raw
                .from
                .iter()
                .flatten()
                .map(|entry| net_set(entry, context.sets, &key("from")))
                .collect::<Result<Vec<_>, _>>()?;
            let users = names(
                raw.users.as_ref(),
                &context.principals.users,
                "user",
                &key("users"),
            )?;
            let tokens = names(
                raw.tokens.as_ref(),
                &context.principals.tokens,
                "token",
                &key("tokens"),
            )?;
            if from.is_empty() && users.is_empty() && tokens.is_empty() {
                return Err(Problem::new(
                    action_span,
                    key("action"),
                    "an `auth` rule needs `from`, `users` or `tokens`",
                ));
            }
            Action::Auth(Requirement { from, users, tokens })
        }
    };
    if raw.status.is_some() && !matches!(action, Action::Deny { .. }) {
        let span = raw.status.as_ref().map_or(0..0, Spanned::span);
        return Err(Problem::new(
            span,
            key("status"),
            "`status` belongs to `action = \"deny\"`",
        ));
    }

    let upstream = match (&raw.upstream_port, &raw.upstream) {
        (Some(port), Some(_)) => {
            return Err(Problem::new(
                port.span(),
                key("upstream_port"),
                "give `upstream_port` or `upstream`, not both",
            ));
        }
        (Some(port), None) => Some(RuleUpstream::Port(*port.get_ref())),
        (None, Some(url)) => {
            let default_port = context.upstream.port_u16().unwrap_or(80);
            Some(RuleUpstream::Url(upstream_uri(
                url,
                &key("upstream"),
                default_port,
                false,
            )?))
        }
        (None, None) => None,
    };
    if upstream.is_some() && !matches!(action, Action::Allow | Action::Auth(_)) {
        return Err(Problem::new(
            action_span,
            key("upstream"),
            "only rules that pass requests can route them",
        ));
    }
    if raw.pass_authorization.is_some() && !matches!(action, Action::Auth(_)) {
        return Err(Problem::new(
            action_span,
            key("pass_authorization"),
            "`pass_authorization` belongs to `action = \"auth\"`",
        ));
    }
    Ok(Rule {
        name,
        source,
        matcher,
        action,
        upstream,
        pass_authorization: raw.pass_authorization.unwrap_or(false),
    })
}

fn path_pattern(
    raw: &RawRule,
    case_insensitive: bool,
    key: &dyn Fn(&str) -> String,
) -> Result<PathPattern, Problem> {
    let given: Vec<(&str, &Spanned<String>)> = [
        ("path", &raw.path),
        ("prefix", &raw.prefix),
        ("glob", &raw.glob),
        ("regex", &raw.regex),
    ]
    .into_iter()
    .filter_map(|(field, value)| value.as_ref().map(|v| (field, v)))
    .collect();
    let [(field, value)] = given[..] else {
        let (field, span) = given
            .get(1)
            .map_or(("path", raw.action.span()), |(f, v)| (*f, v.span()));
        return Err(Problem::new(
            span,
            key(field),
            "give exactly one of `path`, `prefix`, `glob` or `regex`",
        ));
    };
    let text = value.get_ref();
    let fold = |s: &str| {
        if case_insensitive {
            s.to_lowercase()
        } else {
            s.to_owned()
        }
    };
    let problem = |message: String| Problem::new(value.span(), key(field), message);
    match field {
        "path" | "prefix" => {
            // A pattern that is not canonical could never match a canonical path.
            let canonical = canonicalize(text, PathPolicy::default()).map_err(|e| problem(format!("{e}")))?;
            if canonical.as_str() != text {
                return Err(problem(format!(
                    "never matches: requests are matched in canonical form, here {:?}",
                    canonical.as_str()
                )));
            }
            Ok(if field == "path" {
                PathPattern::Exact(fold(text))
            } else {
                PathPattern::Prefix(fold(text))
            })
        }
        "glob" => {
            if !text.starts_with('/') {
                return Err(problem(
                    "a glob matches the whole path, so it starts with '/'".to_owned(),
                ));
            }
            let glob = globset::GlobBuilder::new(text)
                .case_insensitive(case_insensitive)
                .literal_separator(true)
                .build()
                .map_err(|e| problem(format!("invalid glob: {e}")))?;
            Ok(PathPattern::Glob {
                pattern: text.clone(),
                matcher: glob.compile_matcher(),
            })
        }
        _ => regex::RegexBuilder::new(text)
            .case_insensitive(case_insensitive)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(PathPattern::Regex)
            .map_err(|e| {
                // regex's message is a multi-line drawing; its last line says what is wrong.
                let text = e.to_string();
                let what = text
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .trim_start_matches("error: ");
                problem(format!("invalid regex: {what}"))
            }),
    }
}

fn deny_status(status: Option<&Spanned<u16>>, key: &dyn Fn(&str) -> String) -> Result<u16, Problem> {
    match status {
        None => Ok(403),
        Some(status) if matches!(status.get_ref(), 403 | 404) => Ok(*status.get_ref()),
        Some(status) => Err(Problem::new(
            status.span(),
            key("status"),
            "a deny answers 403, or 404 to hide the path",
        )),
    }
}

fn net_set(entry: &Spanned<String>, sets: &BTreeMap<String, NetSet>, key: &str) -> Result<NetSet, Problem> {
    let text = entry.get_ref();
    if let Some(set) = sets.get(text) {
        return Ok(set.clone());
    }
    let net = network(entry, key).map_err(|_| {
        let known: Vec<&str> = sets.keys().map(String::as_str).collect();
        Problem::new(
            entry.span(),
            key,
            format!(
                "{text:?} is neither a set ({}) nor an address or CIDR",
                known.join(", ")
            ),
        )
    })?;
    Ok(NetSet {
        name: text.clone(),
        nets: vec![net],
    })
}

fn names(
    list: Option<&Vec<Spanned<String>>>,
    known: &BTreeSet<String>,
    kind: &str,
    key: &str,
) -> Result<Vec<String>, Problem> {
    list.into_iter()
        .flatten()
        .map(|name| {
            let text = name.get_ref();
            if text == "*" || known.contains(text) {
                Ok(text.clone())
            } else {
                // A typo here would silently lock everyone out of the rule.
                Err(Problem::new(
                    name.span(),
                    key,
                    format!("no [[{kind}]] is named {text:?} (\"*\" means any {kind})"),
                ))
            }
        })
        .collect()
}

/// An IP address or CIDR.
pub(super) fn network(value: &Spanned<String>, key: &str) -> Result<IpNet, Problem> {
    let text = value.get_ref();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| {
            Problem::new(
                value.span(),
                key,
                format!("{text:?} is not an IP address or CIDR like \"192.168.1.0/24\""),
            )
        })
}

/// Names of sites, sets, users and tokens: what logs and URLs can carry as is.
/// A name of a site, user, camera, stream…: 1 to 64 of `a-z`, `0-9`, `-`
/// and `_` (safe in paths, URLs and file names as it is).
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub(super) fn identifier(
    name: &str,
    span: std::ops::Range<usize>,
    key: &str,
    kind: &str,
) -> Result<(), Problem> {
    if is_identifier(name) {
        Ok(())
    } else {
        Err(Problem::new(
            span,
            key,
            format!("{kind} names use a-z, 0-9, '-' and '_'"),
        ))
    }
}

/// A DNS name (lower-case) or an IP literal.
fn is_host(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}
