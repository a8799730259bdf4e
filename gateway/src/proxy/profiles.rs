//! Built-in DVR profiles: data files under `gateway/profiles/`, embedded in
//! the binary. Each gives the DVR's default port, whether it is a Windows
//! server (case-insensitive, Windows path rules), lenient header parsing,
//! the ports it needs forwarded, its split rules in the same syntax as a
//! site's `[[site.rule]]`, and the fingerprints [`crate::detect`] knows it by
//! (`[[detect]]`: kept with the profile, so a profile is one file with its
//! facts and their sources side by side).
//!
//! [`Profile::rules_in_words`] words the split rules from the rule data
//! itself, for the setup wizard's preview.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::config::error::Problem;
use crate::config::forward::{PortRange, Protocol};
use crate::config::proxy::{RuleContext, compile_rules};
use crate::config::raw::{RawAction, RawRule};
use crate::detect::Fingerprint;
use crate::proxy::rules::{Rule, RuleSource};

/// `(name, file contents)` of every built-in profile.
const SOURCES: &[(&str, &str)] = &[
    ("agentdvr", include_str!("../../profiles/agentdvr.toml")),
    ("blueiris", include_str!("../../profiles/blueiris.toml")),
    ("frigate", include_str!("../../profiles/frigate.toml")),
    ("generic", include_str!("../../profiles/generic.toml")),
    ("go2rtc", include_str!("../../profiles/go2rtc.toml")),
    ("moonfire", include_str!("../../profiles/moonfire.toml")),
    ("motion", include_str!("../../profiles/motion.toml")),
    ("motioneye", include_str!("../../profiles/motioneye.toml")),
    ("shinobi", include_str!("../../profiles/shinobi.toml")),
    ("zoneminder", include_str!("../../profiles/zoneminder.toml")),
];

#[derive(Debug)]
pub struct Profile {
    pub name: &'static str,
    /// The TOML file, for `camgate profiles show`.
    pub source: &'static str,
    pub description: String,
    /// Used when a site's upstream URL has no port.
    pub upstream_port: u16,
    /// Windows server: strict Windows path rules (see `path.rs`).
    pub windows: bool,
    pub case_insensitive: bool,
    /// Drop malformed upstream header lines instead of answering 502.
    pub lenient_headers: bool,
    /// Ports the DVR needs forwarded 1:1 (e.g. its STUN/TURN server).
    pub forwards: Vec<ProfileForward>,
    /// How [`crate::detect`] recognises the DVR on the network.
    pub detect: Vec<Fingerprint>,
    /// A first camera's MJPEG stream (path and query), for a token's ready URL.
    pub stream_example: Option<String>,
    /// How to give the DVR camgate's restream of a camera: one sentence
    /// with `{url}` where the `rtsp://` URL goes.
    pub restream: String,
    rules: Vec<RawRule>,
}

/// A `[[forward]]` of a profile: to the site's upstream address, same ports.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileForward {
    pub protocol: Protocol,
    pub ports: PortRange,
    #[serde(default)]
    pub stun: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    description: String,
    upstream_port: u16,
    #[serde(default)]
    windows: bool,
    case_insensitive: Option<bool>,
    #[serde(default)]
    lenient_headers: bool,
    #[serde(default, rename = "forward")]
    forwards: Vec<ProfileForward>,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
    #[serde(default)]
    detect: Vec<Fingerprint>,
    stream_example: Option<String>,
    restream: String,
}

static PROFILES: LazyLock<Vec<Profile>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .map(|&(name, source)| {
            let raw: RawProfile = toml::from_str(source)
                .unwrap_or_else(|e| panic!("built-in profile {name} is invalid (a test catches this): {e}"));
            Profile {
                name,
                source,
                description: raw.description,
                upstream_port: raw.upstream_port,
                windows: raw.windows,
                case_insensitive: raw.case_insensitive.unwrap_or(raw.windows),
                lenient_headers: raw.lenient_headers,
                forwards: raw.forwards,
                stream_example: raw.stream_example,
                restream: raw.restream,
                detect: raw.detect,
                rules: raw.rules,
            }
        })
        .collect()
});

pub fn all() -> &'static [Profile] {
    &PROFILES
}

pub fn get(name: &str) -> Option<&'static Profile> {
    all().iter().find(|profile| profile.name == name)
}

/// Built-in profiles are unique by name.
impl PartialEq for Profile {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Profile {
    /// E.g. `"udp 3478 (STUN only), udp 50000-50100"`.
    pub fn forwards_summary(&self) -> String {
        let entries: Vec<String> = self
            .forwards
            .iter()
            .map(|f| {
                let stun = if f.stun { " (STUN only)" } else { "" };
                format!("{} {}{stun}", f.protocol.as_str(), f.ports)
            })
            .collect();
        entries.join(", ")
    }

    pub(crate) fn compile_rules(&'static self, context: &RuleContext<'_>) -> Result<Vec<Rule>, Problem> {
        compile_rules(
            &self.rules,
            RuleSource::Profile(self.name),
            context,
            &|i, field| format!("rule[{i}].{field}"),
        )
    }

    /// The DVR's name as people know it: the description up to its colon,
    /// e.g. "iSpy Agent DVR".
    pub fn display_name(&self) -> &str {
        self.description
            .split_once(':')
            .map_or(self.name, |(name, _)| name.trim())
    }

    /// The split rules in plain words, in order, for the wizard's preview;
    /// the last row is the implicit "anything else: denied".
    pub fn rules_in_words(&self) -> Vec<RuleInWords> {
        let mut rows: Vec<RuleInWords> = self
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| RuleInWords {
                name: rule.name.clone().unwrap_or_else(|| format!("rule {}", index + 1)),
                paths: requests_in_words(rule, index),
                who: who_in_words(rule, self.display_name()),
                goes_to: match (&rule.upstream_port, &rule.upstream) {
                    (Some(port), _) => Some(format!("port {} of the DVR", port.get_ref())),
                    (None, Some(url)) => Some(url.get_ref().clone()),
                    (None, None) => None,
                },
            })
            .collect();
        rows.push(RuleInWords {
            name: "anything else".to_owned(),
            paths: "any request no rule above matches".to_owned(),
            who: "nobody (denied, 403)".to_owned(),
            goes_to: None,
        });
        rows
    }
}

/// One split rule in plain words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleInWords {
    /// The rule's name, e.g. `api`.
    pub name: String,
    /// Which requests, e.g. `…/grab.jpg, …/video.mjpg, …/video.mp4 and 7
    /// more` (`…`: anything, `*`: one path segment, `<n>`: a number), with
    /// any method, websocket or query condition.
    pub paths: String,
    /// Who gets through, e.g. `the LAN, signed-in users or a token`.
    pub who: String,
    /// Where those requests go when not to the site's upstream, e.g. `port
    /// 8081 of the DVR`.
    pub goes_to: Option<String>,
}

fn requests_in_words(rule: &RawRule, index: usize) -> String {
    let mut words = if let Some(path) = &rule.path {
        path.get_ref().clone()
    } else if let Some(prefix) = &rule.prefix {
        match prefix.get_ref().as_str() {
            "/" if index == 0 => "every path".to_owned(),
            "/" => "every other path".to_owned(),
            prefix => format!("{prefix}…"),
        }
    } else if let Some(glob) = &rule.glob {
        glob.get_ref().clone()
    } else if let Some(regex) = &rule.regex {
        regex_in_words(regex.get_ref())
    } else {
        "no path (invalid rule)".to_owned()
    };
    if let Some(methods) = rule.methods.as_ref().filter(|m| !m.is_empty()) {
        let methods: Vec<&str> = methods.iter().map(|m| m.get_ref().as_str()).collect();
        words.push_str(&format!(" ({} only)", list(&methods, "and")));
    }
    match rule.websocket {
        Some(true) => words.push_str(" (websocket upgrades only)"),
        Some(false) => words.push_str(" (not websocket upgrades)"),
        None => {}
    }
    if let Some(names) = rule.query_has.as_ref().filter(|n| !n.is_empty()) {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let noun = if names.len() == 1 {
            "parameter"
        } else {
            "parameters"
        };
        words.push_str(&format!(" (with query {noun} {})", list(&names, "and")));
    }
    words
}

fn who_in_words(rule: &RawRule, display_name: &str) -> String {
    match rule.action.get_ref() {
        RawAction::Allow => format!("anyone — goes to {display_name}'s own login"),
        RawAction::Deny => {
            let status = rule.status.as_ref().map_or(403, |s| *s.get_ref());
            format!("nobody (denied, {status})")
        }
        RawAction::Auth => {
            let names = |list: &Option<Vec<toml::Spanned<String>>>| -> Vec<String> {
                list.iter().flatten().map(|n| n.get_ref().clone()).collect()
            };
            let (from, users, tokens) = (names(&rule.from), names(&rule.users), names(&rule.tokens));
            let mut who: Vec<String> = from
                .iter()
                .map(|set| {
                    if set == "lan" {
                        "the LAN".to_owned()
                    } else if set.parse::<ipnet::IpNet>().is_ok() || set.parse::<std::net::IpAddr>().is_ok() {
                        set.clone()
                    } else {
                        format!("the \"{set}\" networks")
                    }
                })
                .collect();
            if users.iter().any(|u| u == "*") {
                who.push("signed-in users".to_owned());
            } else if !users.is_empty() {
                let noun = if users.len() == 1 { "user" } else { "users" };
                who.push(format!("{noun} {}", list(&users, "and")));
            }
            if tokens.iter().any(|t| t == "*") {
                who.push("a token".to_owned());
            } else if !tokens.is_empty() {
                let noun = if tokens.len() == 1 { "token" } else { "tokens" };
                who.push(format!("{noun} {}", list(&tokens, "and")));
            }
            match who.len() {
                0 => "nobody (no network, user or token given)".to_owned(),
                1 if users.is_empty() && tokens.is_empty() => format!("{} only", who[0]),
                _ => list(&who, "or"),
            }
        }
    }
}

/// `a`, `a and b`, `a, b and c`.
fn list<S: AsRef<str>>(items: &[S], conjunction: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        [rest @ .., last] => {
            let rest: Vec<&str> = rest.iter().map(AsRef::as_ref).collect();
            format!("{} {conjunction} {}", rest.join(", "), last.as_ref())
        }
    }
}

/// A path regex as example paths: `^/api/(config|restart)/?$` →
/// `/api/config and /api/restart`; three shown, then "and N more". Falls
/// back to the regex itself for syntax the expander does not know.
fn regex_in_words(regex: &str) -> String {
    const SHOWN: usize = 3;
    let (pattern, any_case) = match regex.strip_prefix("(?i)") {
        Some(rest) => (rest, true),
        None => (regex, false),
    };
    let Some(examples) = regex_words::examples(pattern) else {
        return format!("paths matching {regex}");
    };
    let mut words = if examples.len() <= SHOWN + 1 {
        list(&examples, "and")
    } else {
        format!(
            "{} and {} more",
            examples[..SHOWN].join(", "),
            examples.len() - SHOWN
        )
    };
    if any_case {
        words.push_str(" (any letter case)");
    }
    words
}

/// A small expander for the regex subset path rules use: literals and
/// escapes, groups with alternatives, `?`, `+`, `*`, `[...]` classes, `.`,
/// `^` and `$`.
mod regex_words {
    /// Stand-ins for the anchors while expanding.
    const START: char = '\u{1}';
    const END: char = '\u{2}';
    /// More alternatives than this: not worth listing.
    const MAX: usize = 256;

    #[derive(Debug)]
    enum Node {
        Literal(char),
        Start,
        End,
        Any,
        Class { digits: bool },
        Group(Vec<Vec<Node>>),
        Repeat { node: Box<Node>, optional: bool },
    }

    /// Example paths, `…` for "anything", `*` for one path segment and
    /// `<n>` for a number; `None` for unknown syntax or too many.
    pub(super) fn examples(pattern: &str) -> Option<Vec<String>> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut at = 0;
        let branches = alternatives(&chars, &mut at)?;
        if at != chars.len() {
            return None;
        }
        let mut examples: Vec<String> = Vec::new();
        for branch in &branches {
            for raw in expand(branch)? {
                let shown = finish(&raw);
                if !examples.contains(&shown) {
                    examples.push(shown);
                }
            }
        }
        (examples.len() <= MAX).then_some(examples)
    }

    fn alternatives(chars: &[char], at: &mut usize) -> Option<Vec<Vec<Node>>> {
        let mut branches = vec![sequence(chars, at)?];
        while chars.get(*at) == Some(&'|') {
            *at += 1;
            branches.push(sequence(chars, at)?);
        }
        Some(branches)
    }

    fn sequence(chars: &[char], at: &mut usize) -> Option<Vec<Node>> {
        let mut nodes = Vec::new();
        while let Some(&c) = chars.get(*at) {
            if c == '|' || c == ')' {
                break;
            }
            *at += 1;
            let node = match c {
                '^' => Node::Start,
                '$' => Node::End,
                '.' => Node::Any,
                '(' => {
                    if chars.get(*at) == Some(&'?') {
                        // Only non-capturing groups.
                        if chars.get(*at + 1) != Some(&':') {
                            return None;
                        }
                        *at += 2;
                    }
                    let branches = alternatives(chars, at)?;
                    if chars.get(*at) != Some(&')') {
                        return None;
                    }
                    *at += 1;
                    Node::Group(branches)
                }
                '[' => {
                    let mut class = String::new();
                    loop {
                        let c = *chars.get(*at)?;
                        *at += 1;
                        if c == ']' && !class.is_empty() {
                            break;
                        }
                        class.push(c);
                    }
                    Node::Class {
                        digits: class == "0-9",
                    }
                }
                '\\' => {
                    let c = *chars.get(*at)?;
                    *at += 1;
                    match c {
                        'd' => Node::Class { digits: true },
                        c if c.is_ascii_punctuation() => Node::Literal(c),
                        _ => return None,
                    }
                }
                '*' | '+' | '?' | '{' | '}' | ']' => return None,
                c => Node::Literal(c),
            };
            let node = match chars.get(*at) {
                Some(&q @ ('?' | '+' | '*')) => {
                    *at += 1;
                    // A lazy quantifier matches the same paths.
                    if chars.get(*at) == Some(&'?') {
                        *at += 1;
                    }
                    Node::Repeat {
                        node: Box::new(node),
                        optional: q != '+',
                    }
                }
                Some('{') => return None,
                _ => node,
            };
            nodes.push(node);
        }
        Some(nodes)
    }

    fn expand(nodes: &[Node]) -> Option<Vec<String>> {
        let mut results = vec![String::new()];
        for node in nodes {
            let options = options(node)?;
            let mut next = Vec::new();
            for result in &results {
                for option in &options {
                    next.push(format!("{result}{option}"));
                }
            }
            if next.len() > MAX {
                return None;
            }
            results = next;
        }
        Some(results)
    }

    fn options(node: &Node) -> Option<Vec<String>> {
        Some(match node {
            Node::Literal(c) => vec![c.to_string()],
            Node::Start => vec![START.to_string()],
            Node::End => vec![END.to_string()],
            Node::Any | Node::Class { digits: false } => vec!["?".to_owned()],
            Node::Class { digits: true } => vec!["<n>".to_owned()],
            Node::Group(branches) => {
                let is =
                    |branch: &[Node], wanted: &dyn Fn(&Node) -> bool| matches!(branch, [one] if wanted(one));
                let slash = |n: &Node| matches!(n, Node::Literal('/'));
                let start = |n: &Node| matches!(n, Node::Start);
                let end = |n: &Node| matches!(n, Node::End);
                match &branches[..] {
                    // `(^|/)x`: x as any path segment.
                    [a, b] if (is(a, &start) && is(b, &slash)) || (is(a, &slash) && is(b, &start)) => {
                        vec!["…/".to_owned()]
                    }
                    // `x(/|$)`: x, or below it.
                    [a, b] if (is(a, &slash) && is(b, &end)) || (is(a, &end) && is(b, &slash)) => {
                        vec![END.to_string()]
                    }
                    _ => {
                        let mut all = Vec::new();
                        for branch in branches {
                            all.extend(expand(branch)?);
                        }
                        all
                    }
                }
            }
            Node::Repeat { node, optional } => match (&**node, optional) {
                (Node::Any, _) => vec!["…".to_owned()],
                (Node::Class { digits: true }, _) => vec!["<n>".to_owned()],
                (Node::Class { digits: false }, _) => vec!["*".to_owned()],
                // An optional trailing slash changes nothing worth showing.
                (Node::Literal('/'), true) => vec![String::new()],
                (node, true) => {
                    let mut all = vec![String::new()];
                    all.extend(options(node)?);
                    all
                }
                (node, false) => options(node)?,
            },
        })
    }

    /// Anchors into words: unanchored ends may have anything there (`…`).
    fn finish(raw: &str) -> String {
        let anchored_start = raw.starts_with(START);
        let (body, anchored_end) = match raw.find(END) {
            Some(end) => (&raw[..end], true),
            None => (raw, false),
        };
        let mut shown: String = body.chars().filter(|&c| c != START).collect();
        if !anchored_start && !shown.starts_with('…') {
            shown.insert(0, '…');
        }
        if !anchored_end && !shown.ends_with('…') {
            shown.push('…');
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy::Principals;
    use crate::config::{Config, Overrides};

    #[test]
    fn every_profile_parses_and_compiles() {
        let config = Config::defaults(Overrides::default());
        let upstream: http::Uri = "http://192.0.2.1:80/".parse().unwrap();
        for profile in all() {
            let context = RuleContext {
                sets: &config.proxy.sets,
                principals: &Principals::default(),
                case_insensitive: profile.case_insensitive,
                upstream: &upstream,
            };
            let rules = profile
                .compile_rules(&context)
                .unwrap_or_else(|p| panic!("{}: {p:?}", profile.name));
            assert!(
                !rules.is_empty(),
                "{} has no rules: everything would be denied",
                profile.name
            );
            assert!(!profile.description.is_empty());
            for forward in &profile.forwards {
                assert!(
                    !forward.stun || forward.protocol == Protocol::Udp,
                    "{}",
                    profile.name
                );
            }
        }
        assert_eq!(all().len(), SOURCES.len());
    }

    fn rows(profile: &str) -> Vec<(String, String, String, Option<String>)> {
        get(profile)
            .unwrap()
            .rules_in_words()
            .into_iter()
            .map(|r| (r.name, r.paths, r.who, r.goes_to))
            .collect()
    }

    fn row(
        name: &str,
        paths: &str,
        who: &str,
        goes_to: Option<&str>,
    ) -> (String, String, String, Option<String>) {
        (
            name.to_owned(),
            paths.to_owned(),
            who.to_owned(),
            goes_to.map(str::to_owned),
        )
    }

    #[test]
    fn agentdvr_rules_in_words() {
        assert_eq!(
            rows("agentdvr"),
            [
                row(
                    "api",
                    "…/grab.jpg, …/video.mjpg, …/video.mp4 and 7 more",
                    "the LAN, signed-in users or a token",
                    None
                ),
                row(
                    "recordings",
                    "/media/…",
                    "the LAN, signed-in users or a token",
                    None
                ),
                row(
                    "gui",
                    "every other path",
                    "anyone — goes to iSpy Agent DVR's own login",
                    None
                ),
                row(
                    "anything else",
                    "any request no rule above matches",
                    "nobody (denied, 403)",
                    None
                ),
            ]
        );
    }

    #[test]
    fn motion_rules_in_words() {
        assert_eq!(
            rows("motion"),
            [
                row(
                    "control",
                    "/<n>/detection, /<n>/config, /<n>/action and /<n>/track",
                    "the LAN or signed-in users",
                    None
                ),
                row(
                    "streams",
                    "/stream, /substream, /motion and 11 more",
                    "the LAN, signed-in users or a token",
                    Some("port 8081 of the DVR")
                ),
                row("gui", "every other path", "the LAN or signed-in users", None),
                row(
                    "anything else",
                    "any request no rule above matches",
                    "nobody (denied, 403)",
                    None
                ),
            ]
        );
    }

    #[test]
    fn every_profile_words_every_rule() {
        for profile in all() {
            let rows = profile.rules_in_words();
            assert_eq!(rows.len(), profile.rules.len() + 1, "{}", profile.name);
            for row in &rows {
                // Every regex of the built-in profiles is put in words.
                assert!(
                    !row.paths.starts_with("paths matching"),
                    "{}: {row:?}",
                    profile.name
                );
                assert!(!row.who.is_empty());
            }
        }
        let words = |profile: &str, rule: &str| {
            get(profile)
                .unwrap()
                .rules_in_words()
                .into_iter()
                .find(|r| r.name == rule)
                .unwrap()
        };
        assert_eq!(words("shinobi", "stream-in").who, "nobody (denied, 404)");
        assert_eq!(words("shinobi", "super").who, "the LAN only");
        assert_eq!(words("shinobi", "gui").paths, "/* and /libs/…");
        assert_eq!(
            words("zoneminder", "state-change").paths,
            "/api/states/change/… and /zm/api/states/change/… (any letter case)"
        );
        assert_eq!(
            words("go2rtc", "stream-write").paths,
            "/api/streams (POST, PUT, PATCH and DELETE only)"
        );
        assert_eq!(words("blueiris", "gui").paths, "/, /ui3.htm, /ui3/… and 8 more");
        assert_eq!(
            words("frigate", "admin").paths,
            "/api/restart, /api/config/save and /api/config/set"
        );
        assert_eq!(words("moonfire", "live").paths, "/api/cameras/*/*/live.m4s");
        assert_eq!(regex_in_words("^/x{2}"), "paths matching ^/x{2}");
    }
}
