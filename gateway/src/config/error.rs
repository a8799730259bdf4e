//! Config errors that a person can act on: file, line, column, key, what was
//! expected, and the offending line with a caret under the value.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::Utf8Error;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: config is larger than {limit} bytes; this is not a camgate config", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error(
        "{}:{line}:{column}: config is not UTF-8 text (invalid byte at offset {offset}); is this a binary file?",
        path.display()
    )]
    NotUtf8 {
        path: PathBuf,
        line: usize,
        column: usize,
        offset: usize,
    },
    #[error(
        "{}: config has no settings (empty, or only comments); write at least a [daemon] section, \
         or remove the file to start in setup mode",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error("{0}")]
    Invalid(Box<Located>),
}

/// A problem found in stage one or two, before it is tied to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) span: Option<Range<usize>>,
    /// Dotted key path, e.g. `admin.listen[1]`; empty when the parser failed
    /// before it knew the key.
    pub(crate) key: String,
    pub(crate) message: String,
}

impl Problem {
    pub(crate) fn new(span: Range<usize>, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            span: Some(span),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A problem between sections, with no single place in the file.
    pub(crate) fn unlocated(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            span: None,
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn from_toml(error: &toml::de::Error, key: String) -> Self {
        Self {
            span: error.span(),
            key,
            message: error.message().trim_end().to_owned(),
        }
    }
}

/// A problem at a place in a file.
#[derive(Debug)]
pub struct Located {
    pub path: PathBuf,
    /// 1-based; 0 when the problem has no single place (e.g. two sections clash).
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub key: String,
    pub message: String,
    source_line: String,
    caret_len: usize,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: `{}`: {}", self.path.display(), self.key, self.message);
        }
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        writeln!(f, "{}", self.message)?;
        let gutter = " ".repeat(self.line.to_string().len());
        writeln!(f, "{gutter} |")?;
        writeln!(f, "{} | {}", self.line, self.source_line)?;
        write!(
            f,
            "{gutter} | {}{}",
            " ".repeat(self.column - 1),
            "^".repeat(self.caret_len.max(1))
        )
    }
}

impl ConfigError {
    /// The key and what is wrong with it, without file or position: for an
    /// API answering about a value it was sent, not a file the user wrote.
    pub fn key_and_message(&self) -> (Option<&str>, String) {
        match self {
            Self::Invalid(located) if !located.key.is_empty() => {
                (Some(&located.key), located.message.clone())
            }
            other => (None, other.summary()),
        }
    }

    /// The first line: file, line, column, key and message, without the
    /// snippet. For logs (one entry) and the status API (no config text).
    pub fn summary(&self) -> String {
        self.to_string().lines().next().unwrap_or_default().to_owned()
    }

    pub(crate) fn located(path: &Path, text: &str, problem: Problem) -> Self {
        let Some(span) = problem.span else {
            return Self::Invalid(Box::new(Located {
                path: path.to_owned(),
                line: 0,
                column: 0,
                key: problem.key,
                message: problem.message,
                source_line: String::new(),
                caret_len: 0,
            }));
        };
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let (line, column, line_text) = position(text, start);
        let key = if problem.key.is_empty() {
            key_at(text, start)
        } else {
            problem.key
        };
        let rest_of_line = line_text.chars().count().saturating_sub(column - 1);
        let caret_len = text[start..floor_char_boundary(text, span.end.min(text.len()))]
            .chars()
            .count();
        Self::Invalid(Box::new(Located {
            path: path.to_owned(),
            line,
            column,
            key,
            message: problem.message,
            // Never echo control characters (escape sequences) to a terminal or log.
            source_line: line_text
                .chars()
                .map(|c| {
                    if c.is_control() && c != '\t' {
                        '\u{FFFD}'
                    } else {
                        c
                    }
                })
                .collect(),
            caret_len: caret_len.min(rest_of_line),
        }))
    }

    pub(crate) fn not_utf8(path: &Path, bytes: &[u8], error: Utf8Error) -> Self {
        let offset = error.valid_up_to();
        let valid = std::str::from_utf8(&bytes[..offset]).unwrap_or_default();
        let (line, column, _) = position(valid, offset);
        Self::NotUtf8 {
            path: path.to_owned(),
            line,
            column,
            offset,
        }
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// 1-based line and column (in characters) of a byte offset, and that line.
fn position(text: &str, offset: usize) -> (usize, usize, &str) {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[..line_start].matches('\n').count() + 1;
    let column = text[line_start..offset].chars().count() + 1;
    (line, column, text[line_start..line_end].trim_end_matches('\r'))
}

/// Best-effort dotted key for a syntax error, which toml reports without one:
/// the last `[table]` header above the offset plus the key on its line.
/// Only used to make messages friendlier, never for decisions.
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset];
    let current_line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[current_line_start..].lines().next().unwrap_or_default();
    if line.trim_start().starts_with('[') {
        return table_name(line);
    }
    let table = before[..current_line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('['))
        .map(table_name);
    let key = line
        .split_once('=')
        .map(|(key, _)| key.trim())
        .filter(|key| !key.starts_with('#'));
    match (table, key) {
        (Some(table), Some(key)) => format!("{table}.{key}"),
        (Some(table), None) => table,
        (None, Some(key)) => key.to_owned(),
        (None, None) => String::new(),
    }
}

fn table_name(header: &str) -> String {
    header
        .split('#')
        .next()
        .unwrap_or_default()
        .trim()
        .trim_matches(|c| c == '[' || c == ']')
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_counts_lines_and_characters() {
        let text = "a = 1\nmode = \"é x\"\n";
        let offset = text.find('x').unwrap();
        assert_eq!(position(text, offset), (2, 11, "mode = \"é x\""));
        assert_eq!(position(text, 0), (1, 1, "a = 1"));
    }

    #[test]
    fn key_at_uses_header_and_line_key() {
        let text = "[daemon]\nmode = \"x\n[admin]\n";
        assert_eq!(key_at(text, text.find('x').unwrap()), "daemon.mode");
        assert_eq!(key_at("junk here", 0), "");
        assert_eq!(key_at("x = = 1", 4), "x");
        let twice = "[daemon]\n[admin]\n[daemon] # again\n";
        assert_eq!(key_at(twice, twice.rfind("daemon").unwrap()), "daemon");
    }

    proptest::proptest! {
        /// Any span in any text (CR, multibyte, past the end) gives a message.
        #[test]
        fn located_never_panics(text in "[a\\r\\n=é\\x1b\\[]{0,16}", start in 0usize..20, len in 0usize..20) {
            let problem = Problem::new(start..start + len, "", "bad");
            let _ = ConfigError::located(Path::new("x"), &text, problem).to_string();
        }
    }

    #[test]
    fn snippet_escapes_control_characters() {
        let text = "a = \"\x1b[31mred\"\n";
        let err = ConfigError::located(Path::new("x"), text, Problem::new(4..5, "a", "bad"));
        assert!(!err.to_string().contains('\x1b'), "{err}");
        let cr = ConfigError::located(Path::new("x"), "a\r", Problem::new(1..2, "", "bad"));
        assert_eq!(cr.summary(), "x:1:2: bad");
    }

    #[test]
    fn located_error_shows_caret_under_span() {
        let text = "[admin]\nlisten = [\"nope\"]\n";
        let start = text.find("\"nope\"").unwrap();
        let err = ConfigError::located(
            Path::new("/x/camgate.toml"),
            text,
            Problem::new(start..start + 6, "admin.listen[0]", "bad"),
        );
        assert_eq!(
            err.to_string(),
            "/x/camgate.toml:2:11: `admin.listen[0]`: bad\n  |\n2 | listen = [\"nope\"]\n  |           ^^^^^^"
        );
    }
}
