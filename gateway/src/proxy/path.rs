//! Canonical request paths: the one form that rules match on **and** that
//! the upstream receives, so what was authorized is exactly what is
//! forwarded (plus the query, unchanged).
//!
//! Every path-confusion bypass in the notes (Traefik `..`/`%2e%2e`, Caddy
//! `//` and case, nginx spaces, Apache `.%2e`, Shiro `;`, overlong UTF-8)
//! comes from the matcher and the upstream seeing different paths. Here:
//!
//! 1. percent-escapes are decoded exactly once; a malformed escape is an error;
//! 2. decoded `\`, `%`, `?`, `#`, control characters (also C1), and by default
//!    `/` (`%2F`) and `;` are errors rather than guesses about what the
//!    upstream would do with them; raw `\`, `#`, `;` likewise;
//! 3. the decoded bytes must be valid UTF-8 (overlong forms such as
//!    `%C0%AF` are invalid UTF-8);
//! 4. dot segments are removed (RFC 3986 §5.2.4), also those that only
//!    appear after decoding, and repeated slashes are merged;
//! 5. for Windows upstreams (Agent DVR, Blue Iris), where the file system
//!    ignores case, trailing dots and spaces and knows `:` streams, paths
//!    must be ASCII and segments may not end in `.`/space or contain `:`.
//!
//! The result is re-encoded for forwarding with a fixed set of escapes.

use std::fmt;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// Longer paths are refused outright (no DVR URL comes close).
pub const MAX_PATH_LEN: usize = 8192;

/// What a site tolerates beyond the strict default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathPolicy {
    /// Decode `%2F` to `/` (and so treat it as a separator) instead of refusing it.
    pub allow_encoded_slash: bool,
    /// Keep `;` as an ordinary character instead of refusing it. Rules then
    /// see `/a;x` as it is, and so does the upstream.
    pub allow_semicolon: bool,
    /// The upstream runs on Windows: ASCII only, no segment ending in `.`
    /// or space, no `:` (alternate data streams).
    pub windows: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("invalid percent-escape at byte {0}")]
    InvalidEscape(usize),
    #[error("character {0:?} is not allowed in a path")]
    ForbiddenCharacter(char),
    #[error("encoded {0:?} is not allowed in a path")]
    ForbiddenEncoded(char),
    #[error("encoded '/' (%2F) is not allowed in a path")]
    EncodedSlash,
    #[error("';' (path parameters) is not allowed in a path")]
    Semicolon,
    #[error("the path is not valid UTF-8 after decoding (overlong or truncated sequence)")]
    InvalidUtf8,
    #[error("this upstream runs on Windows: only ASCII paths are accepted")]
    NonAscii,
    #[error("this upstream runs on Windows: a path segment may not end in '.' or ' '")]
    WindowsTrailingDot,
    #[error("this upstream runs on Windows: ':' is not allowed in a path")]
    WindowsColon,
}

/// A decoded, normalized path: starts with `/`, has no empty, `.` or `..`
/// segments, no control characters and is valid UTF-8.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CanonicalPath(String);

impl CanonicalPath {
    /// The decoded path, for matching.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path as sent upstream: the canonical path with a fixed set of
    /// characters percent-encoded.
    pub fn to_request_path(&self) -> String {
        utf8_percent_encode(&self.0, FORWARD_ENCODE).to_string()
    }
}

impl fmt::Debug for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Re-encoded when forwarding: everything that is not a `pchar` or `/` in
/// RFC 3986 (controls, space, `"#%<>?[\]^``{|}`), and non-ASCII.
const FORWARD_ENCODE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Canonicalizes the path part of a request target (no query).
pub fn canonicalize(raw: &str, policy: PathPolicy) -> Result<CanonicalPath, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode(raw.as_bytes(), policy)?;
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::InvalidUtf8)?;
    if let Some(c) = decoded.chars().find(|c| c.is_control()) {
        return Err(PathError::ForbiddenCharacter(c));
    }
    if policy.windows && !decoded.is_ascii() {
        return Err(PathError::NonAscii);
    }
    normalize_segments(&decoded, policy).map(CanonicalPath)
}

fn decode(raw: &[u8], policy: PathPolicy) -> Result<Vec<u8>, PathError> {
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let byte = raw[i];
        if byte == b'%' {
            let value = raw
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or(PathError::InvalidEscape(i))?;
            match value {
                b'/' if !policy.allow_encoded_slash => return Err(PathError::EncodedSlash),
                b';' if !policy.allow_semicolon => return Err(PathError::Semicolon),
                b'\\' | b'%' | b'?' | b'#' => return Err(PathError::ForbiddenEncoded(char::from(value))),
                _ => decoded.push(value),
            }
            i += 3;
        } else {
            match byte {
                // `?` only reaches here if the caller did not split off the query.
                b'\\' | b'#' | b'?' | b' ' => return Err(PathError::ForbiddenCharacter(char::from(byte))),
                b';' if !policy.allow_semicolon => return Err(PathError::Semicolon),
                _ => decoded.push(byte),
            }
            i += 1;
        }
    }
    Ok(decoded)
}

/// Removes `.` and `..` segments and empty segments (`//`); keeps a
/// trailing slash where the input had one or ended in a dot segment.
fn normalize_segments(decoded: &str, policy: PathPolicy) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/').skip(1) {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => {
                if policy.windows {
                    if segment.ends_with(['.', ' ']) {
                        return Err(PathError::WindowsTrailingDot);
                    }
                    if segment.contains(':') {
                        return Err(PathError::WindowsColon);
                    }
                }
                segments.push(segment);
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

/// The properties every canonical path has; shared by the unit tests and
/// the fuzz target. Panics if one does not hold.
#[doc(hidden)]
pub fn check_properties(raw: &str, policy: PathPolicy) {
    let Ok(path) = canonicalize(raw, policy) else {
        return;
    };
    let text = path.as_str();
    assert!(text.starts_with('/'), "{raw:?} -> {text:?}");
    for bad in ["//", "/./", "/../"] {
        assert!(!text.contains(bad), "{raw:?} -> {text:?} contains {bad}");
    }
    assert!(
        !text.ends_with("/.") && !text.ends_with("/.."),
        "{raw:?} -> {text:?}"
    );
    assert!(
        !text.contains(['\\', '#', '?', '%']) && !text.chars().any(char::is_control),
        "{raw:?} -> {text:?}"
    );
    let again = canonicalize(&path.to_request_path(), policy).unwrap_or_else(|e| {
        panic!(
            "{raw:?} -> {text:?} -> {:?} is rejected: {e}",
            path.to_request_path()
        )
    });
    assert_eq!(again, path, "not idempotent for {raw:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(raw: &str) -> Result<String, PathError> {
        canonicalize(raw, PathPolicy::default()).map(|p| p.0)
    }

    fn windows(raw: &str) -> Result<String, PathError> {
        canonicalize(
            raw,
            PathPolicy {
                windows: true,
                ..PathPolicy::default()
            },
        )
        .map(|p| p.0)
    }

    #[test]
    fn normalizes_dots_and_slashes() {
        for (raw, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../a", "/a"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/.", "/"),
            ("/..", "/"),
            ("/%2e%2E/a", "/a"),
            ("/a/.%2e/b", "/b"),
            ("/a/%2e/b", "/a/b"),
            ("/%61%62c", "/abc"),
            ("/a/.../b", "/a/.../b"),
            ("/caf%C3%A9", "/café"),
            ("/a~b-c_d.e!$&'()*+,=:@", "/a~b-c_d.e!$&'()*+,=:@"),
        ] {
            assert_eq!(strict(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn rejects_what_upstreams_might_read_differently() {
        use PathError::*;
        for (raw, want) in [
            ("a/b", NotAbsolute),
            ("", NotAbsolute),
            ("/a%2fb", EncodedSlash),
            ("/a%2Fb", EncodedSlash),
            ("/a%5cb", ForbiddenEncoded('\\')),
            ("/a\\b", ForbiddenCharacter('\\')),
            ("/a%00b", ForbiddenCharacter('\0')),
            ("/a%0ab", ForbiddenCharacter('\n')),
            ("/a%7fb", ForbiddenCharacter('\u{7f}')),
            ("/a%C2%85b", ForbiddenCharacter('\u{85}')),
            ("/a%25b", ForbiddenEncoded('%')),
            ("/a%252e%252e/b", ForbiddenEncoded('%')),
            ("/a%3fb", ForbiddenEncoded('?')),
            ("/a%23b", ForbiddenEncoded('#')),
            ("/a#b", ForbiddenCharacter('#')),
            ("/?", ForbiddenCharacter('?')),
            ("/a b", ForbiddenCharacter(' ')),
            ("/a;jsessionid=1", Semicolon),
            ("/a%3bb", Semicolon),
            ("/a%", InvalidEscape(2)),
            ("/a%4", InvalidEscape(2)),
            ("/a%zz", InvalidEscape(2)),
            ("/a%+1", InvalidEscape(2)),
            ("/%C0%AF", InvalidUtf8),
            ("/%C0%AE%C0%AE/", InvalidUtf8),
            ("/%E0%80%AF", InvalidUtf8),
            ("/%ED%A0%80", InvalidUtf8),
            ("/%C3", InvalidUtf8),
            ("/%FF", InvalidUtf8),
        ] {
            assert_eq!(strict(raw), Err(want), "{raw}");
        }
        assert_eq!(
            strict(&format!("/{}", "a".repeat(MAX_PATH_LEN))),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn policy_relaxations() {
        let lax = PathPolicy {
            allow_encoded_slash: true,
            allow_semicolon: true,
            windows: false,
        };
        assert_eq!(canonicalize("/a%2Fb", lax).unwrap().as_str(), "/a/b");
        assert_eq!(canonicalize("/a%2F..%2Fb", lax).unwrap().as_str(), "/b");
        assert_eq!(canonicalize("/a;x=1/b", lax).unwrap().as_str(), "/a;x=1/b");
        assert_eq!(canonicalize("/a%3Bx", lax).unwrap().as_str(), "/a;x");
    }

    #[test]
    fn windows_upstreams_get_stricter_paths() {
        use PathError::*;
        assert_eq!(windows("/video.mjpg").as_deref(), Ok("/video.mjpg"));
        assert_eq!(windows("/VIDEO.MJPG/x/..").as_deref(), Ok("/VIDEO.MJPG/"));
        assert_eq!(windows("/video.mjpg."), Err(WindowsTrailingDot));
        assert_eq!(windows("/video.mjpg%20"), Err(WindowsTrailingDot));
        assert_eq!(windows("/video.mjpg::$DATA"), Err(WindowsColon));
        assert_eq!(windows("/vid%C3%A9o"), Err(NonAscii));
        // Fullwidth solidus and Kelvin sign: Windows "best fit" and .NET
        // case folding could map them to '/' and 'k'.
        assert_eq!(windows("/a%EF%BC%8Fb"), Err(NonAscii));
        assert_eq!(windows("/%E2%84%AA"), Err(NonAscii));
    }

    #[test]
    fn forwarding_reencodes_only_what_must_be() {
        let path = canonicalize("/caf%C3%A9/a%22b/%7Bx%7D/%5E", PathPolicy::default()).unwrap();
        assert_eq!(path.to_request_path(), "/caf%C3%A9/a%22b/%7Bx%7D/%5E");
        let plain = canonicalize("/grab.jpg", PathPolicy::default()).unwrap();
        assert_eq!(plain.to_request_path(), "/grab.jpg");
    }

    proptest::proptest! {
        /// The properties the fuzz target also checks, on random
        /// paths built from the characters that matter.
        #[test]
        fn canonical_paths_are_stable_and_clean(
            raw in "/([a-zA-Z.;:/\\ ~]|%[0-9a-fA-F]{2}|%|%2[eE]|%2[fF]|%[cC]0%[aA][fF]){0,40}",
            windows in proptest::bool::ANY,
            allow_encoded_slash in proptest::bool::ANY,
        ) {
            check_properties(&raw, PathPolicy { windows, allow_encoded_slash, allow_semicolon: false });
        }
    }

    #[test]
    fn forwarded_path_canonicalizes_to_itself() {
        for raw in [
            "/a/../b//c/./",
            "/caf%C3%A9",
            "/%7B%7D%22",
            "/a%2e%2e",
            "/x/%2E%2E/y",
        ] {
            let once = canonicalize(raw, PathPolicy::default()).unwrap();
            let again = canonicalize(&once.to_request_path(), PathPolicy::default()).unwrap();
            assert_eq!(once, again, "{raw}");
        }
    }
}
