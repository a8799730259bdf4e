//! Stage two for `[auth]`, `[[user]]` and `[[token]]`.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use toml::Spanned;

use super::error::Problem;
use super::proxy::{Principals, Site, identifier};
use super::raw::{RawAuth, RawToken, RawUser};
use super::streams::STREAMS_SITE;
use super::validate::optional_duration;
use crate::auth::{GuardSettings, PasswordDigest, Role, ScopeEntry, SessionSettings, Token, User, token};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Auth {
    pub users: Vec<User>,
    pub tokens: Vec<Token>,
    pub guard: GuardSettings,
    pub sessions: SessionSettings,
}

/// Names first: site rules are checked against them before tokens, which
/// need the sites, are validated.
pub(super) fn principals(users: &[RawUser], tokens: &[RawToken]) -> Principals {
    Principals {
        users: users.iter().map(|u| u.name.get_ref().clone()).collect(),
        tokens: tokens.iter().map(|t| t.name.get_ref().clone()).collect(),
    }
}

pub(super) fn users(raw: Vec<RawUser>) -> Result<Vec<User>, Problem> {
    let mut seen = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let key = |field: &str| format!("user[{i}].{field}");
            let name = unique_name(&raw.name, &mut seen, "user", &key("name"))?;
            let digest = PasswordDigest::parse(raw.password_hash.get_ref())
                .map_err(|why| Problem::new(raw.password_hash.span(), key("password_hash"), why))?;
            let role = match raw.role.as_ref().map(|r| r.get_ref().as_str()) {
                None | Some("viewer") => Role::Viewer,
                Some("admin") => Role::Admin,
                Some(other) => {
                    return Err(Problem::new(
                        raw.role.as_ref().map_or(0..0, Spanned::span),
                        key("role"),
                        format!("unknown role {other:?}; roles are \"viewer\" and \"admin\""),
                    ));
                }
            };
            Ok(User { name, digest, role })
        })
        .collect()
}

pub(super) fn tokens(raw: Vec<RawToken>, sites: &[Site]) -> Result<Vec<Token>, Problem> {
    let mut seen = HashSet::new();
    let mut digests = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let key = |field: &str| format!("token[{i}].{field}");
            let name = unique_name(&raw.name, &mut seen, "token", &key("name"))?;
            let digest = token::parse_digest(raw.secret_sha256.get_ref()).ok_or_else(|| {
                Problem::new(
                    raw.secret_sha256.span(),
                    key("secret_sha256"),
                    "expected 64 hex digits (`camgate token create` prints the line to paste)",
                )
            })?;
            if !digests.insert(digest) {
                return Err(Problem::new(
                    raw.secret_sha256.span(),
                    key("secret_sha256"),
                    "another token has the same secret",
                ));
            }
            // The restream's tokens name no [[site]]: their scopes are
            // stream paths (`/<camera>/<stream>` globs), case-sensitive.
            let streams = raw.site.get_ref() == STREAMS_SITE;
            let site = sites.iter().find(|s| s.name == *raw.site.get_ref());
            if site.is_none() && !streams {
                return Err(Problem::new(
                    raw.site.span(),
                    key("site"),
                    format!(
                        "no [[site]] is named {:?} (\"{STREAMS_SITE}\" is the cameras' restream)",
                        raw.site.get_ref()
                    ),
                ));
            }
            let rule_names: BTreeSet<&str> = site
                .map(|site| site.rules.rules.iter().map(|r| r.name.as_str()).collect())
                .unwrap_or_default();
            let case_insensitive = site.is_some_and(|site| site.rules.case_insensitive);
            if raw.scope.get_ref().is_empty() {
                return Err(Problem::new(
                    raw.scope.span(),
                    key("scope"),
                    "an empty scope permits nothing; list `rule:NAME` entries or path globs",
                ));
            }
            let scope = raw
                .scope
                .get_ref()
                .iter()
                .enumerate()
                .map(|(j, entry)| {
                    let problem = |why: String| Problem::new(entry.span(), key(&format!("scope[{j}]")), why);
                    let parsed = ScopeEntry::parse(entry.get_ref(), case_insensitive).map_err(problem)?;
                    if let ScopeEntry::Rule(rule) = &parsed
                        && !rule_names.contains(rule.as_str())
                    {
                        return Err(problem(format!(
                            "site {:?} has no rule named {rule:?}",
                            raw.site.get_ref()
                        )));
                    }
                    Ok(parsed)
                })
                .collect::<Result<_, _>>()?;
            let expires = raw
                .expires
                .as_ref()
                .map(|text| {
                    humantime::parse_rfc3339_weak(text.get_ref()).map_err(|e| {
                        Problem::new(
                            text.span(),
                            key("expires"),
                            format!("expected a time like \"2027-01-31T00:00:00Z\" ({e})"),
                        )
                    })
                })
                .transpose()?;
            Ok(Token {
                name,
                digest,
                site: raw.site.get_ref().clone(),
                scope,
                expires,
            })
        })
        .collect()
}

pub(super) fn guard(raw: RawAuth) -> Result<GuardSettings, Problem> {
    let defaults = GuardSettings::default();
    let day = Duration::from_secs(24 * 3600);
    let settings = GuardSettings {
        failures: match raw.ban_after_failures {
            None => defaults.failures,
            Some(n) if (1..=1000).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                return Err(Problem::new(
                    n.span(),
                    "auth.ban_after_failures",
                    "between 1 and 1000",
                ));
            }
        },
        window: optional_duration(
            raw.failure_window.as_ref(),
            "auth.failure_window",
            day,
            defaults.window,
        )?,
        ban: optional_duration(raw.ban_time.as_ref(), "auth.ban_time", day, defaults.ban)?,
        max_ban: optional_duration(
            raw.max_ban_time.as_ref(),
            "auth.max_ban_time",
            30 * day,
            defaults.max_ban,
        )?,
    };
    if settings.ban.is_zero() || settings.window.is_zero() {
        return Err(Problem::unlocated(
            "auth.ban_time",
            "`ban_time` and `failure_window` must be longer than zero",
        ));
    }
    if settings.max_ban < settings.ban {
        let span = raw.max_ban_time.as_ref().map_or(0..0, Spanned::span);
        return Err(Problem::new(span, "auth.max_ban_time", "shorter than `ban_time`"));
    }
    Ok(settings)
}

pub(super) fn sessions(raw: &RawAuth) -> Result<SessionSettings, Problem> {
    let defaults = SessionSettings::default();
    let year = Duration::from_secs(365 * 24 * 3600);
    let minute = Duration::from_secs(60);
    let settings = SessionSettings {
        idle: optional_duration(
            raw.session_idle_timeout.as_ref(),
            "auth.session_idle_timeout",
            year,
            defaults.idle,
        )?,
        lifetime: optional_duration(
            raw.session_lifetime.as_ref(),
            "auth.session_lifetime",
            year,
            defaults.lifetime,
        )?,
    };
    // Use is recorded once a minute: shorter limits could not be kept.
    for (value, key, length) in [
        (
            &raw.session_idle_timeout,
            "auth.session_idle_timeout",
            settings.idle,
        ),
        (&raw.session_lifetime, "auth.session_lifetime", settings.lifetime),
    ] {
        if length < 5 * minute {
            let span = value.as_ref().map_or(0..0, Spanned::span);
            return Err(Problem::new(span, key, "at least 5 minutes"));
        }
    }
    Ok(settings)
}

fn unique_name(
    name: &Spanned<String>,
    seen: &mut HashSet<String>,
    kind: &str,
    key: &str,
) -> Result<String, Problem> {
    let text = name.get_ref();
    identifier(text, name.span(), key, kind)?;
    if !seen.insert(text.clone()) {
        return Err(Problem::new(
            name.span(),
            key,
            format!("{kind} {text:?} is listed twice"),
        ));
    }
    Ok(text.clone())
}
