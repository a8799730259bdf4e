//! From request target to decision: the one function both the running
//! proxy and `camgate explain` call, so an explanation is the enforcement.

use std::net::IpAddr;

use http::{Method, Uri};
use serde::Serialize;

use super::path::{CanonicalPath, PathError, canonicalize};
use super::rules::{Decision, RequestFacts, Step, Verdict};
use crate::config::Site;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("only origin-form (/path) or absolute-form (http://host/path) targets are proxied")]
    Form,
    #[error("the target names host {0:?}, which this site does not serve")]
    Authority(String),
    #[error("paths under /.camgate/ are camgate's own (its login and logout pages) and never reach the DVR")]
    Reserved,
}

impl TargetError {
    /// What camgate answers: camgate's own paths do not exist for the DVR
    /// (404); anything else is a bad request.
    pub fn status(&self) -> u16 {
        match self {
            Self::Reserved => 404,
            _ => 400,
        }
    }
}

/// The outcome for one request.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub path: Result<CanonicalPath, TargetError>,
    /// `None` when the target was rejected before any rule ran.
    pub decision: Option<Decision>,
}

impl Evaluation {
    /// `allow`, `deny`, `auth` (credentials needed) or `reject` (400).
    pub fn label(&self) -> &'static str {
        match self.decision.as_ref().map(|d| d.verdict) {
            None => "reject",
            Some(Verdict::Allow) => "allow",
            Some(Verdict::Deny { .. }) => "deny",
            Some(Verdict::NeedsCredentials) => "auth",
        }
    }

    /// The status camgate answers with itself; `None` when it forwards.
    /// `auth` without credentials is 401 (valid ones would forward).
    pub fn status(&self) -> Option<u16> {
        match self.decision.as_ref().map(|d| d.verdict) {
            None => Some(self.path.as_ref().err().map_or(400, TargetError::status)),
            Some(Verdict::Allow) => None,
            Some(Verdict::Deny { status }) => Some(status),
            Some(Verdict::NeedsCredentials) => Some(401),
        }
    }
}

/// Evaluates a request to `site`. `trace` collects every rule considered.
pub fn evaluate(
    site: &Site,
    method: &Method,
    uri: &Uri,
    client: IpAddr,
    websocket: bool,
    trace: Option<&mut Vec<Step>>,
) -> Evaluation {
    let path = canonical_target(site, uri);
    let decision = path.as_ref().ok().map(|path| {
        let facts = RequestFacts {
            method,
            path,
            query: uri.query(),
            websocket,
            client,
        };
        site.rules.decide(&facts, trace)
    });
    Evaluation { path, decision }
}

fn canonical_target(site: &Site, uri: &Uri) -> Result<CanonicalPath, TargetError> {
    if let Some(authority) = uri.authority() {
        // Absolute-form: the host it names must be this site's (the proxy
        // also checks it against the Host header).
        // Site hosts are names or bare IP literals; IPv6 authorities have brackets.
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if !site.hosts.iter().any(|known| known.eq_ignore_ascii_case(host)) {
            return Err(TargetError::Authority(host.to_ascii_lowercase()));
        }
    }
    if uri.scheme().is_some() != uri.authority().is_some() || !uri.path().starts_with('/') {
        return Err(TargetError::Form);
    }
    let path = canonicalize(uri.path(), site.path_policy)?;
    // However it is spelled: the proxy serves the exact page paths itself
    // before rules run, and anything else there is nobody's.
    let prefix = super::login::PREFIX;
    if path
        .as_str()
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    {
        return Err(TargetError::Reserved);
    }
    Ok(path)
}

/// `camgate explain`'s answer.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub site: String,
    pub method: String,
    pub target: String,
    pub from: IpAddr,
    pub websocket: bool,
    pub decision: &'static str,
    /// The deciding rule's name; `None` if none matched or the target was rejected.
    pub rule: Option<String>,
    pub canonical_path: Option<String>,
    /// What the upstream would receive (path and query), if forwarded.
    pub forwarded_target: Option<String>,
    /// What camgate answers itself; `None` when it forwards.
    pub status: Option<u16>,
    pub reason: String,
    pub rules: Vec<ExplainedRule>,
}

#[derive(Debug, Serialize)]
pub struct ExplainedRule {
    pub index: usize,
    pub name: String,
    pub source: String,
    pub matched: bool,
    pub detail: String,
}

/// Explains `METHOD TARGET` from `from` on `site`.
pub fn explain(
    site: &Site,
    method: &str,
    target: &str,
    from: IpAddr,
    websocket: bool,
) -> Result<Explanation, String> {
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| format!("{method:?} is not an HTTP method"))?;
    let mut trace = Vec::new();
    // The same parser hyper uses for request targets.
    let (evaluation, uri, reason) = match target.parse::<Uri>() {
        Ok(uri) => {
            let evaluation = evaluate(site, &method, &uri, from, websocket, Some(&mut trace));
            let reason = match (&evaluation.path, &evaluation.decision) {
                (Err(e), _) => format!("rejected: {e}"),
                (Ok(_), Some(decision)) => decision.describe(&site.rules, from),
                (Ok(_), None) => String::new(),
            };
            (evaluation, Some(uri), reason)
        }
        Err(e) => (
            Evaluation {
                path: Err(TargetError::Form),
                decision: None,
            },
            None,
            format!("rejected: {e}"),
        ),
    };
    let rule = evaluation
        .decision
        .as_ref()
        .and_then(|d| d.rule)
        .map(|i| site.rules.rules[i].name.clone());
    let forwarded_target = match (&evaluation.path, evaluation.status()) {
        (Ok(path), None) => Some(match uri.as_ref().and_then(Uri::query) {
            Some(query) => format!("{}?{query}", path.to_request_path()),
            None => path.to_request_path(),
        }),
        _ => None,
    };
    Ok(Explanation {
        site: site.name.clone(),
        method: method.to_string(),
        target: target.to_owned(),
        from,
        websocket,
        decision: evaluation.label(),
        rule,
        canonical_path: evaluation.path.as_ref().ok().map(|p| p.as_str().to_owned()),
        forwarded_target,
        status: evaluation.status(),
        reason,
        rules: trace
            .into_iter()
            .map(|step| {
                let rule = &site.rules.rules[step.rule];
                ExplainedRule {
                    index: step.rule,
                    name: rule.name.clone(),
                    source: rule.source.to_string(),
                    matched: step.matched,
                    detail: step.detail,
                }
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Overrides, parse};

    fn site() -> Site {
        let text = "[[site]]\nname = \"dvr\"\nhosts = [\"dvr.example.org\"]\nupstream = \"http://192.168.1.20\"\n\
                    profile = \"agentdvr\"\n[[site.rule]]\nprefix = \"/admin/\"\naction = \"deny\"\nstatus = 404\n";
        parse(text, Path::new("x"), Overrides::default())
            .unwrap()
            .sites
            .remove(0)
    }

    fn explain_from(from: &str, request: &str) -> Explanation {
        let (method, target) = request.split_once(' ').unwrap();
        explain(&site(), method, target, from.parse().unwrap(), false).unwrap()
    }

    #[test]
    fn profile_defaults_apply_to_the_site() {
        let site = site();
        assert_eq!(site.upstream.uri.to_string(), "http://192.168.1.20:8090/");
        assert!(site.path_policy.windows);
        assert!(site.lenient_headers);
        assert_eq!(
            site.rules.rules.len(),
            4,
            "one site rule, then the profile's three"
        );
    }

    #[test]
    fn decisions_and_forwarded_targets() {
        let wan = explain_from("203.0.113.7", "GET /x/../VIDEO.MJPG?oids=1");
        assert_eq!(
            (wan.decision, wan.status, wan.rule.as_deref()),
            ("auth", Some(401), Some("api"))
        );
        assert_eq!(wan.canonical_path.as_deref(), Some("/VIDEO.MJPG"));
        assert_eq!(wan.forwarded_target, None);

        let lan = explain_from("192.168.1.9", "GET /video.mjpg?oids=1");
        assert_eq!((lan.decision, lan.status), ("allow", None));
        assert_eq!(lan.forwarded_target.as_deref(), Some("/video.mjpg?oids=1"));

        let hidden = explain_from("192.168.1.9", "GET /admin/users");
        assert_eq!((hidden.decision, hidden.status), ("deny", Some(404)));

        let gui = explain_from("203.0.113.7", "GET //index.html");
        assert_eq!(
            (gui.decision, gui.forwarded_target.as_deref()),
            ("allow", Some("/index.html"))
        );
        assert_eq!(gui.rules.len(), 4);
    }

    #[test]
    fn bad_targets_are_rejected_before_any_rule() {
        for target in [
            "/grab.jpg%00",
            "/a%2fgrab.jpg",
            "/grab.jpg.",
            "http://other.example/grab.jpg",
            "*",
            "/%C0%AFgrab.jpg",
        ] {
            let e = explain_from("203.0.113.7", &format!("GET {target}"));
            assert_eq!(
                (e.decision, e.status),
                ("reject", Some(400)),
                "{target}: {}",
                e.reason
            );
            assert!(e.rules.is_empty());
        }
        // camgate's own paths, in any spelling, from anywhere: never the DVR's.
        for target in [
            "/.camgate/login",
            "/%2Ecamgate/x",
            "/a/../.camgate/logout",
            "//.CAMGATE/login",
        ] {
            let e = explain_from("192.168.1.9", &format!("GET {target}"));
            assert_eq!(
                (e.decision, e.status),
                ("reject", Some(404)),
                "{target}: {}",
                e.reason
            );
            assert!(e.reason.contains("camgate's own"), "{}", e.reason);
        }
        let absolute = explain_from("192.168.1.9", "GET http://DVR.example.org/grab.jpg");
        assert_eq!(absolute.decision, "allow");
    }
}
