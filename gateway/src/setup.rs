//! Setup mode's one-time code. It proves that whoever claims the appliance
//! can read its console or log: a neighbour on the LAN cannot. It is kept
//! under the state dir (0600) so it stays the same across restarts until
//! the appliance is claimed.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::fsutil::{remove_if_present, replace_private};

/// No 0/O, 1/I: the code is read off a screen and typed on a phone.
const ALPHABET: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
const GROUP: usize = 5;
const GROUPS: usize = 2;
/// A code older than this is replaced, and the new one shown on the
/// console and the boot partition: a code read (or photographed) long ago
/// stops working.
pub const CODE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum SetupCodeError {
    #[error("cannot {step} setup code {}: {source}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness for the setup code: {0}")]
    Random(getrandom::Error),
}

/// The code, e.g. `K7QXM-3RD9P` (50 bits).
#[derive(Clone, PartialEq, Eq)]
pub struct SetupCode(String);

impl std::fmt::Debug for SetupCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SetupCode(…)")
    }
}

impl SetupCode {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn generate() -> Result<Self, SetupCodeError> {
        let mut bytes = [0u8; GROUP * GROUPS];
        getrandom::fill(&mut bytes).map_err(SetupCodeError::Random)?;
        let mut code = String::with_capacity(GROUP * GROUPS + GROUPS - 1);
        for (i, byte) in bytes.iter().enumerate() {
            if i > 0 && i % GROUP == 0 {
                code.push('-');
            }
            code.push(char::from(ALPHABET[usize::from(byte & 31)]));
        }
        Ok(Self(code))
    }

    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let well_formed = text.len() == GROUP * GROUPS + GROUPS - 1
            && text
                .split('-')
                .all(|group| group.len() == GROUP && group.bytes().all(|b| ALPHABET.contains(&b)));
        well_formed.then(|| Self(text.to_owned()))
    }
}

/// What a typed setup code turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    Valid,
    Wrong,
    /// The stored code had expired: a new one is stored and logged.
    Expired,
}

/// Checks `typed` against the stored code (case, spaces and dashes do not
/// matter: people type it off a screen). The code has expired when both
/// the file is older than [`CODE_LIFETIME`] by the wall clock and camgate
/// has been showing it that long (`shown_for`, a monotonic clock): a Pi
/// has no clock until NTP answers, and its first jump must not void the
/// code the user just read off the boot partition. An expired code is
/// replaced.
pub fn check_code(
    state_dir: &Path,
    typed: &str,
    now: SystemTime,
    shown_for: Duration,
) -> Result<CodeCheck, SetupCodeError> {
    let path = code_path(state_dir);
    let file_age = fs::metadata(&path)
        .and_then(|meta| meta.modified())
        .map_or(Duration::ZERO, |made| {
            now.duration_since(made).unwrap_or_default()
        });
    if file_age.min(shown_for) > CODE_LIFETIME {
        remove_code(state_dir);
        let code = ensure_code(state_dir)?;
        tracing::warn!("the setup code expired; the new setup code is: {}", code.as_str());
        return Ok(CodeCheck::Expired);
    }
    let code = ensure_code(state_dir)?;
    let normalize = |text: &str| -> String {
        text.chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect()
    };
    // Digests compared, so the time taken says nothing about the code.
    let matches = crate::auth::token::digest(&normalize(typed))
        == crate::auth::token::digest(&normalize(code.as_str()));
    Ok(if matches {
        CodeCheck::Valid
    } else {
        CodeCheck::Wrong
    })
}

pub fn code_path(state_dir: &Path) -> PathBuf {
    state_dir.join("setup-code")
}

/// Returns the stored code, or creates and stores a new one.
pub fn ensure_code(state_dir: &Path) -> Result<SetupCode, SetupCodeError> {
    let path = code_path(state_dir);
    match fs::read_to_string(&path) {
        Ok(text) => {
            if let Some(code) = SetupCode::parse(&text) {
                return Ok(code);
            }
            tracing::warn!(path = %path.display(), "stored setup code is malformed; making a new one");
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SetupCodeError::Io {
                step: "read",
                path,
                source,
            });
        }
    }
    let code = SetupCode::generate()?;
    // Written whole under a temporary name, then renamed: never a partial
    // code, never through a symlink planted at the final name, always 0600.
    replace_private(&path, format!("{}\n", code.as_str()).as_bytes()).map_err(|source| {
        SetupCodeError::Io {
            step: "store",
            path: path.clone(),
            source,
        }
    })?;
    Ok(code)
}

/// Forgets the code once setup is over, so a later return to setup mode
/// (factory reset) gets a fresh one.
pub fn remove_code(state_dir: &Path) {
    let path = code_path(state_dir);
    if let Err(e) = remove_if_present(&path) {
        tracing::warn!(path = %path.display(), err = %e, "cannot remove the setup code");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_stable_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_code(dir.path()).unwrap();
        assert!(SetupCode::parse(first.as_str()).is_some(), "{}", first.as_str());
        assert_eq!(ensure_code(dir.path()).unwrap(), first);
        fs::write(code_path(dir.path()), "garbage").unwrap();
        let replaced = ensure_code(dir.path()).unwrap();
        assert!(SetupCode::parse(replaced.as_str()).is_some());
        assert_eq!(
            fs::read_to_string(code_path(dir.path())).unwrap().trim(),
            replaced.as_str()
        );
        remove_code(dir.path());
        assert!(!code_path(dir.path()).exists());
    }

    #[test]
    fn typed_codes_match_loosely_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let code = ensure_code(dir.path()).unwrap();
        let now = SystemTime::now();
        let shown = Duration::from_secs(60);
        let check = |typed: &str, now, shown| check_code(dir.path(), typed, now, shown).unwrap();
        let loose = format!(" {} ", code.as_str().replace('-', " ").to_ascii_lowercase());
        for typed in [code.as_str(), &code.as_str().replace('-', ""), &loose] {
            assert_eq!(check(typed, now, shown), CodeCheck::Valid, "{typed}");
        }
        assert_eq!(check("ABCDE-FGHJK", now, shown), CodeCheck::Wrong);
        assert_eq!(check("", now, shown), CodeCheck::Wrong);

        // The wall clock jumped (NTP after boot) but camgate has shown the
        // code for a minute only: still valid. So is one shown for a day
        // whose file is new (the clock went back).
        let later = now + CODE_LIFETIME + Duration::from_secs(60);
        let day = CODE_LIFETIME + Duration::from_secs(60);
        assert_eq!(check(code.as_str(), later, shown), CodeCheck::Valid);
        assert_eq!(check(code.as_str(), now, day), CodeCheck::Valid);
        assert_eq!(check(code.as_str(), later, day), CodeCheck::Expired);
        let fresh = ensure_code(dir.path()).unwrap();
        assert_ne!(fresh, code, "an expired code was kept");
        assert_eq!(check(code.as_str(), now, shown), CodeCheck::Wrong);
        assert_eq!(check(fresh.as_str(), now, shown), CodeCheck::Valid);
    }

    #[test]
    fn parse_rejects_ambiguous_characters() {
        assert!(SetupCode::parse("ABCDE-23456").is_some());
        assert!(SetupCode::parse("ABCDE-2345O").is_none());
        assert!(SetupCode::parse("ABCDE23456").is_none());
    }
}
