//! Split rules: an ordered list per site (the site's own rules, then its
//! profile's); the first rule whose matcher fits decides; no match denies.
//!
//! [`decide`] is pure: the proxy calls it per request and `camgate explain`
//! calls it with a trace, so the explanation is the enforcement.

use std::fmt;
use std::net::IpAddr;

use globset::GlobMatcher;
use http::{Method, Uri};
use ipnet::IpNet;
use regex::Regex;

use super::path::CanonicalPath;

/// Where a rule came from, for explanations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleSource {
    Site,
    Profile(&'static str),
}

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Site => f.write_str("site"),
            Self::Profile(name) => write!(f, "profile {name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub source: RuleSource,
    pub matcher: Matcher,
    pub action: Action,
    /// Where matching requests go instead of the site's upstream.
    pub upstream: Option<RuleUpstream>,
    /// `auth` rules: forward the client's `Authorization` header.
    pub pass_authorization: bool,
}

/// Another port or URL of the same DVR (motion 4.x serves streams on a
/// second port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleUpstream {
    Port(u16),
    Url(Uri),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    pub path: PathPattern,
    /// Empty: any method.
    pub methods: Vec<Method>,
    /// `Some(true)`: websocket upgrades only; `Some(false)`: never them.
    pub websocket: Option<bool>,
    /// Query parameters that must all be present (names).
    pub query_has: Vec<String>,
}

/// How a rule matches the canonical path. Patterns of case-insensitive
/// sites are compiled lower-case and matched against the lower-cased path.
#[derive(Debug, Clone)]
pub enum PathPattern {
    Exact(String),
    /// A literal prefix: `/api/` matches `/api/` and below, not `/api`.
    Prefix(String),
    Glob {
        pattern: String,
        matcher: GlobMatcher,
    },
    Regex(Regex),
}

/// Patterns compare by their source text: compiled matchers do not compare,
/// and config reloads must see any change to a pattern. (A site's case
/// sensitivity, the other compile input, is compared with its `RuleSet`.)
impl PartialEq for PathPattern {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) | (Self::Prefix(a), Self::Prefix(b)) => a == b,
            (Self::Glob { pattern: a, .. }, Self::Glob { pattern: b, .. }) => a == b,
            (Self::Regex(a), Self::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl PathPattern {
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(exact) => path == exact,
            Self::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Self::Glob { matcher, .. } => matcher.is_match(path),
            Self::Regex(regex) => regex.is_match(path),
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(exact) => write!(f, "path = {exact:?}"),
            Self::Prefix(prefix) => write!(f, "prefix = {prefix:?}"),
            Self::Glob { pattern, .. } => write!(f, "glob = {pattern:?}"),
            Self::Regex(regex) => write!(f, "regex = {:?}", regex.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pass to the upstream (the DVR does its own login).
    Allow,
    /// Refuse with 403, or 404 to hide that the path exists.
    Deny { status: u16 },
    /// Pass if any requirement holds (Apache's RequireAny).
    Auth(Requirement),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    /// Client address in any of these sets.
    pub from: Vec<NetSet>,
    /// Named users; `*` = any user with a valid password (see `auth`).
    pub users: Vec<String>,
    /// Named tokens; `*` = any token whose scope covers the request.
    pub tokens: Vec<String>,
}

/// A named set of networks, e.g. `lan`, or one CIDR written inline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSet {
    pub name: String,
    pub nets: Vec<IpNet>,
}

impl NetSet {
    pub fn contains(&self, address: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&address))
    }
}

/// What the rules see of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub path: &'a CanonicalPath,
    pub query: Option<&'a str>,
    pub websocket: bool,
    /// The client address from the socket (or a trusted proxy's header).
    pub client: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny {
        status: u16,
    },
    /// An `auth` rule matched and the client is not in its `from` sets:
    /// credentials are needed.
    NeedsCredentials,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Index of the deciding rule; `None`: no rule matched.
    pub rule: Option<usize>,
    pub reason: Reason,
}

/// Why the deciding rule decided as it did; put in words only by
/// [`Decision::describe`], so deciding allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoRuleMatched,
    Allows,
    Denies,
    /// The client is in the `from` set with this index.
    InSet(usize),
    /// Not in any `from` set, and the rule takes no credentials.
    NotInSets,
    /// Not in any `from` set; a user or token would do.
    NeedsCredentials,
}

impl Decision {
    /// The decision in words, for `camgate explain`.
    pub fn describe(&self, rules: &RuleSet, client: IpAddr) -> String {
        let client = client.to_canonical();
        let Some(rule) = self.rule.map(|i| &rules.rules[i]) else {
            return "no rule matched: denied by default".to_owned();
        };
        let from: &[NetSet] = match &rule.action {
            Action::Auth(requirement) => &requirement.from,
            _ => &[],
        };
        match self.reason {
            Reason::NoRuleMatched => "no rule matched: denied by default".to_owned(),
            Reason::Allows => format!("rule {:?} allows", rule.name),
            Reason::Denies => format!("rule {:?} denies", rule.name),
            Reason::InSet(set) => format!("rule {:?}: {client} is in {:?}", rule.name, from[set].name),
            Reason::NotInSets => format!("rule {:?}: {client} is not in {}", rule.name, set_names(from)),
            Reason::NeedsCredentials => format!(
                "rule {:?}: {client} is not in {}; needs a user or token the rule accepts",
                rule.name,
                set_names(from)
            ),
        }
    }
}

/// One rule's evaluation, for `camgate explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub rule: usize,
    pub matched: bool,
    pub detail: String,
}

/// The rules of one site, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub case_insensitive: bool,
}

impl RuleSet {
    /// Decides a request; records every rule considered into `trace` when given.
    pub fn decide(&self, request: &RequestFacts<'_>, mut trace: Option<&mut Vec<Step>>) -> Decision {
        let lowered;
        let path = if self.case_insensitive {
            lowered = request.path.as_str().to_lowercase();
            lowered.as_str()
        } else {
            request.path.as_str()
        };
        // Parsed only if some rule asks about the query.
        let query_names = std::cell::OnceCell::new();
        // A v4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let client = request.client.to_canonical();
        for (index, rule) in self.rules.iter().enumerate() {
            let mismatch = mismatch(&rule.matcher, path, &query_names, request, self.case_insensitive);
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(Step {
                    rule: index,
                    matched: mismatch.is_none(),
                    detail: mismatch
                        .map_or_else(|| "matched".to_owned(), |m| m.describe(&rule.matcher, request)),
                });
            }
            if mismatch.is_none() {
                return verdict(rule, index, client);
            }
        }
        Decision {
            verdict: Verdict::Deny { status: 403 },
            rule: None,
            reason: Reason::NoRuleMatched,
        }
    }
}

/// Why a matcher does not fit; described in words only for traces, so the
/// per-request path allocates nothing for rules that do not match.
#[derive(Debug, Clone, Copy)]
enum Mismatch<'a> {
    Path,
    Method,
    NotWebsocket,
    Websocket,
    QueryAbsent(&'a str),
}

impl Mismatch<'_> {
    fn describe(self, matcher: &Matcher, request: &RequestFacts<'_>) -> String {
        match self {
            Self::Path => format!("{} does not match", matcher.path),
            Self::Method => format!("method {} not in {:?}", request.method, matcher.methods),
            Self::NotWebsocket => "not a websocket upgrade".to_owned(),
            Self::Websocket => "is a websocket upgrade".to_owned(),
            Self::QueryAbsent(name) => format!("query parameter {name:?} absent"),
        }
    }
}

fn mismatch<'a>(
    matcher: &'a Matcher,
    path: &str,
    query_names: &std::cell::OnceCell<Vec<String>>,
    request: &RequestFacts<'_>,
    case_insensitive: bool,
) -> Option<Mismatch<'a>> {
    if !matcher.path.matches(path) {
        return Some(Mismatch::Path);
    }
    if !matcher.methods.is_empty() && !matcher.methods.contains(request.method) {
        return Some(Mismatch::Method);
    }
    match matcher.websocket {
        Some(true) if !request.websocket => return Some(Mismatch::NotWebsocket),
        Some(false) if request.websocket => return Some(Mismatch::Websocket),
        _ => {}
    }
    for wanted in &matcher.query_has {
        let names = query_names.get_or_init(|| query_names_of(request.query));
        let present = if case_insensitive {
            names.iter().any(|name| name.eq_ignore_ascii_case(wanted))
        } else {
            names.iter().any(|name| name == wanted)
        };
        if !present {
            return Some(Mismatch::QueryAbsent(wanted));
        }
    }
    None
}

fn verdict(rule: &Rule, index: usize, client: IpAddr) -> Decision {
    let (verdict, reason) = match &rule.action {
        Action::Allow => (Verdict::Allow, Reason::Allows),
        Action::Deny { status } => (Verdict::Deny { status: *status }, Reason::Denies),
        Action::Auth(requirement) => match requirement.from.iter().position(|set| set.contains(client)) {
            Some(set) => (Verdict::Allow, Reason::InSet(set)),
            None if requirement.users.is_empty() && requirement.tokens.is_empty() => {
                (Verdict::Deny { status: 403 }, Reason::NotInSets)
            }
            None => (Verdict::NeedsCredentials, Reason::NeedsCredentials),
        },
    };
    Decision {
        verdict,
        rule: Some(index),
        reason,
    }
}

fn set_names(sets: &[NetSet]) -> String {
    if sets.is_empty() {
        return "any allowed network (none listed)".to_owned();
    }
    sets.iter()
        .map(|set| set.name.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Decoded query parameter names (`+` is a space, as browsers encode it).
fn query_names_of(query: Option<&str>) -> Vec<String> {
    query.map_or_else(Vec::new, |query| {
        form_urlencoded::parse(query.as_bytes())
            .map(|(name, _)| name.into_owned())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::path::{PathPolicy, canonicalize};

    fn lan() -> NetSet {
        NetSet {
            name: "lan".to_owned(),
            nets: vec!["192.168.0.0/16".parse().unwrap()],
        }
    }

    fn rule(name: &str, path: PathPattern, action: Action) -> Rule {
        Rule {
            name: name.to_owned(),
            source: RuleSource::Site,
            matcher: Matcher {
                path,
                methods: Vec::new(),
                websocket: None,
                query_has: Vec::new(),
            },
            action,
            upstream: None,
            pass_authorization: false,
        }
    }

    fn rules(case_insensitive: bool) -> RuleSet {
        let api = Regex::new(r"(^|/)(video\.mjpg|grab\.jpg)$").unwrap();
        let mut ws = rule("ws", PathPattern::Prefix("/ws".to_owned()), Action::Allow);
        ws.matcher.websocket = Some(true);
        let mut ptz = rule(
            "ptz",
            PathPattern::Exact("/ptz.cgi".to_owned()),
            Action::Deny { status: 404 },
        );
        ptz.matcher.methods = vec![Method::POST];
        ptz.matcher.query_has = vec!["oid".to_owned()];
        RuleSet {
            rules: vec![
                rule(
                    "api",
                    PathPattern::Regex(api),
                    Action::Auth(Requirement {
                        from: vec![lan()],
                        users: vec!["*".to_owned()],
                        tokens: vec![],
                    }),
                ),
                rule(
                    "admin",
                    PathPattern::Prefix("/admin/".to_owned()),
                    Action::Auth(Requirement {
                        from: vec![lan()],
                        ..Requirement::default()
                    }),
                ),
                ws,
                ptz,
                rule("gui", PathPattern::Prefix("/gui/".to_owned()), Action::Allow),
            ],
            case_insensitive,
        }
    }

    fn decide(set: &RuleSet, method: &Method, target: &str, client: &str, websocket: bool) -> Decision {
        let (path, query) = target
            .split_once('?')
            .map_or((target, None), |(p, q)| (p, Some(q)));
        let path = canonicalize(path, PathPolicy::default()).unwrap();
        set.decide(
            &RequestFacts {
                method,
                path: &path,
                query,
                websocket,
                client: client.parse().unwrap(),
            },
            None,
        )
    }

    #[test]
    fn first_match_decides_and_default_denies() {
        let set = rules(false);
        let d = decide(&set, &Method::GET, "/video.mjpg?oids=1", "192.168.1.5", false);
        assert_eq!((d.verdict, d.rule), (Verdict::Allow, Some(0)));
        let d = decide(&set, &Method::GET, "/cams/grab.jpg", "203.0.113.9", false);
        assert_eq!((d.verdict, d.rule), (Verdict::NeedsCredentials, Some(0)));
        let d = decide(&set, &Method::GET, "/admin/x", "203.0.113.9", false);
        assert_eq!((d.verdict, d.rule), (Verdict::Deny { status: 403 }, Some(1)));
        let d = decide(&set, &Method::GET, "/gui/index.html", "203.0.113.9", false);
        assert_eq!((d.verdict, d.rule), (Verdict::Allow, Some(4)));
        let d = decide(&set, &Method::GET, "/elsewhere", "192.168.1.5", false);
        assert_eq!((d.verdict, d.rule), (Verdict::Deny { status: 403 }, None));
    }

    #[test]
    fn methods_websocket_and_query_narrow_a_rule() {
        let set = rules(false);
        assert_eq!(
            decide(&set, &Method::GET, "/ws/x", "203.0.113.9", false).rule,
            None
        );
        assert_eq!(
            decide(&set, &Method::GET, "/ws/x", "203.0.113.9", true).verdict,
            Verdict::Allow
        );
        assert_eq!(
            decide(&set, &Method::POST, "/ptz.cgi?oid=1", "1.2.3.4", false).verdict,
            Verdict::Deny { status: 404 }
        );
        assert_eq!(
            decide(&set, &Method::GET, "/ptz.cgi?oid=1", "1.2.3.4", false).rule,
            None
        );
        assert_eq!(
            decide(&set, &Method::POST, "/ptz.cgi?x=1", "1.2.3.4", false).rule,
            None
        );
        assert_eq!(
            decide(&set, &Method::POST, "/ptz.cgi?o%69d=1", "1.2.3.4", false).rule,
            Some(3)
        );
    }

    #[test]
    fn case_insensitive_sites_fold_path_and_query_names() {
        let set = rules(true);
        assert_eq!(
            decide(&set, &Method::GET, "/VIDEO.MJPG", "203.0.113.9", false).rule,
            Some(0)
        );
        assert_eq!(
            decide(&set, &Method::POST, "/PTZ.cgi?OID=1", "1.2.3.4", false).rule,
            Some(3)
        );
        let sensitive = rules(false);
        assert_eq!(
            decide(&sensitive, &Method::GET, "/VIDEO.MJPG", "203.0.113.9", false).rule,
            None
        );
    }

    #[test]
    fn mapped_ipv4_clients_match_ipv4_sets() {
        let set = rules(false);
        let d = decide(&set, &Method::GET, "/admin/x", "::ffff:192.168.1.5", false);
        assert_eq!(d.verdict, Verdict::Allow, "{:?}", d.reason);
    }

    #[test]
    fn trace_lists_every_rule_considered() {
        let set = rules(false);
        let path = canonicalize("/gui/", PathPolicy::default()).unwrap();
        let mut trace = Vec::new();
        let facts = RequestFacts {
            method: &Method::GET,
            path: &path,
            query: None,
            websocket: false,
            client: "10.0.0.1".parse().unwrap(),
        };
        let decision = set.decide(&facts, Some(&mut trace));
        assert_eq!(decision.rule, Some(4));
        assert_eq!(trace.len(), 5);
        assert!(trace[..4].iter().all(|step| !step.matched));
        assert!(trace[4].matched);
        assert!(
            trace[2].detail.contains("prefix = \"/ws\" does not match"),
            "{:?}",
            trace[2]
        );
    }
}
