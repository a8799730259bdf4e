//! The config store: the one place that writes the config file.
//!
//! A save validates first (an invalid config is never written), then
//! replaces the file atomically so that a crash at any instant leaves
//! either the old or the new file, never a mix or nothing (tested with
//! SIGKILL; against power loss the fsyncs below are what the standard
//! protocol relies on, which only a VM test could prove):
//!
//! 1. write `.camgate.toml.tmp` (0600) and fsync it;
//! 2. hard-link the current file to `.camgate.toml.prev.tmp`, rename that
//!    over `camgate.toml.prev` (the current file is never moved away, so
//!    there is no instant without one);
//! 3. rename the temp file over `camgate.toml`;
//! 4. fsync the directory so both renames are durable.
//!
//! Saves are serialized within the process by a mutex and across processes
//! by an advisory lock on `.camgate.toml.lock`.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::{Config, ConfigError, Overrides};
use crate::fsutil::{remove_if_present, write_new_private};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not saved: {0}")]
    Invalid(#[from] ConfigError),
    #[error("not saved: {} exists already", .0.display())]
    Exists(PathBuf),
    #[error("not saved: cannot {step} {}: {source}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct ConfigStore {
    path: PathBuf,
    overrides: Overrides,
    in_process: Mutex<()>,
}

impl ConfigStore {
    pub fn new(path: impl Into<PathBuf>, overrides: Overrides) -> Self {
        Self {
            path: path.into(),
            overrides,
            in_process: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the version before the last save is kept.
    pub fn previous_path(&self) -> PathBuf {
        self.sibling("", ".prev")
    }

    /// Validates `text` and, only if it is valid, makes it the config file.
    /// Blocking (fsync): call from `spawn_blocking` in async code.
    pub fn save(&self, text: &str) -> Result<Config, StoreError> {
        let config = super::parse(text, &self.path, self.overrides)?;
        let _lock = self.lock()?;
        self.replace(text)?;
        Ok(config)
    }

    /// Reads the config file, applies `change` to its text and saves the
    /// result if it is valid, all under the lock: a save by someone else
    /// cannot land between the read and the write and be lost.
    pub fn edit(&self, change: impl FnOnce(&str) -> String) -> Result<Config, StoreError> {
        let _lock = self.lock()?;
        let text = change(&super::read_text(&self.path)?);
        let config = super::parse(&text, &self.path, self.overrides)?;
        self.replace(&text)?;
        Ok(config)
    }

    /// The first config: validates `text` and makes it the config file only
    /// if there is none yet (a claim must not overwrite a config someone put
    /// there meanwhile). Blocking.
    pub fn create(&self, text: &str) -> Result<Config, StoreError> {
        let config = super::parse(text, &self.path, self.overrides)?;
        let _lock = self.lock()?;
        let temp = self.sibling(".", ".tmp");
        write_new_private(&temp, text.as_bytes()).map_err(io("write", &temp))?;
        // link(2) fails if the name exists: created whole, or not at all.
        let linked = fs::hard_link(&temp, &self.path);
        if let Err(e) = remove_if_present(&temp) {
            // The config is in place (or not) all the same; the next save
            // replaces a stale temp file.
            tracing::warn!(path = %temp.display(), "cannot remove: {e}");
        }
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(StoreError::Exists(self.path.clone()));
            }
            Err(e) => return Err(io("create", &self.path)(e)),
        }
        let dir = self.dir();
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync directory", dir))?;
        Ok(config)
    }

    /// Takes back a config made by [`Self::create`] that the daemon could
    /// not apply, so the file says what is running (setup mode). Blocking.
    pub fn withdraw(&self, text: &str) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        match fs::read_to_string(&self.path) {
            // Changed since: someone else's config, not ours to remove.
            Ok(current) if current != text => Ok(()),
            Ok(_) => remove_if_present(&self.path).map_err(io("remove", &self.path)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("read", &self.path)(e)),
        }
    }

    /// Validates `text` as the config file would be, writing nothing.
    pub fn check(&self, text: &str) -> Result<Config, StoreError> {
        Ok(super::parse(text, &self.path, self.overrides)?)
    }

    /// The config file's text.
    pub fn read(&self) -> Result<String, StoreError> {
        Ok(super::read_text(&self.path)?)
    }

    /// Like [`Self::save`], and keeps the text it replaces to go back to
    /// (`.camgate.toml.unconfirmed`) until [`Self::confirm`] or
    /// [`Self::revert`]; a camgate started meanwhile reverts first (a
    /// power cycle by someone the change locked out). While a change waits,
    /// the text kept is still the last confirmed one. Blocking.
    pub fn save_unconfirmed(&self, text: &str) -> Result<Config, StoreError> {
        let config = super::parse(text, &self.path, self.overrides)?;
        let _lock = self.lock()?;
        let pending = self.pending_path();
        if !pending.exists() {
            let current = super::read_text(&self.path)?;
            let temp = self.sibling(".", ".unconfirmed.tmp");
            write_new_private(&temp, current.as_bytes()).map_err(io("write", &temp))?;
            fs::rename(&temp, &pending).map_err(io("keep the confirmed version as", &pending))?;
        }
        self.replace(text)?;
        Ok(config)
    }

    /// The change is good: forget the text kept to go back to. False if no
    /// change was waiting. Blocking.
    pub fn confirm(&self) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let pending = self.pending_path();
        match fs::remove_file(&pending) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", &pending)(e)),
        }
    }

    /// Puts back the text [`Self::save_unconfirmed`] kept, if a change is
    /// waiting; returns what is now the config. Blocking.
    pub fn revert(&self) -> Result<Option<Config>, StoreError> {
        let pending = self.pending_path();
        // Nothing waits (the usual case at start): no lock file either,
        // which would litter a directory that only holds a config to read.
        if !pending.try_exists().map_err(io("read", &pending))? {
            return Ok(None);
        }
        let _lock = self.lock()?;
        let previous = match fs::read_to_string(&pending) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &pending)(e)),
        };
        let config = super::parse(&previous, &self.path, self.overrides)?;
        self.replace(&previous)?;
        fs::remove_file(&pending).map_err(io("remove", &pending))?;
        Ok(Some(config))
    }

    fn pending_path(&self) -> PathBuf {
        self.sibling(".", ".unconfirmed")
    }

    /// Serializes saves within the process (mutex) and across processes
    /// (advisory lock on `.camgate.toml.lock`) until dropped.
    fn lock(&self) -> Result<(MutexGuard<'_, ()>, File), StoreError> {
        // A poisoned mutex only means another save panicked; the file
        // protocol never leaves a half state, so carry on.
        let guard = self
            .in_process
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let lock = self.sibling(".", ".lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock)
            .map_err(io("open lock file", &lock))?;
        lock_file.lock().map_err(io("lock", &lock))?;
        Ok((guard, lock_file))
    }

    /// Steps 1–4 of the module's protocol; the caller holds the lock.
    fn replace(&self, text: &str) -> Result<(), StoreError> {
        let temp = self.sibling(".", ".tmp");
        write_new_private(&temp, text.as_bytes()).map_err(io("write", &temp))?;

        let prev_temp = self.sibling(".", ".prev.tmp");
        remove_if_present(&prev_temp).map_err(io("remove stale", &prev_temp))?;
        match fs::hard_link(&self.path, &prev_temp) {
            Ok(()) => {
                let prev = self.previous_path();
                fs::rename(&prev_temp, &prev).map_err(io("keep previous version as", &prev))?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {} // first save: nothing to keep
            Err(e) => return Err(io("link previous version", &prev_temp)(e)),
        }

        fs::rename(&temp, &self.path).map_err(io("replace", &self.path))?;
        let dir = self.dir();
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync directory", dir))
    }

    fn dir(&self) -> &Path {
        crate::fsutil::parent_dir(&self.path)
    }

    /// `dir/<prefix><file name><suffix>`
    fn sibling(&self, prefix: &str, suffix: &str) -> PathBuf {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        self.dir().join(format!("{prefix}{name}{suffix}"))
    }
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { step, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[daemon]\nmode = \"dev\"\n";
    const BETTER: &str = "[daemon]\nmode = \"dev\"\nlog = \"debug\"\n";

    #[test]
    fn save_keeps_previous_and_rejects_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path().join("camgate.toml"), Overrides::default());

        store.save(GOOD).unwrap();
        assert_eq!(fs::read_to_string(store.path()).unwrap(), GOOD);
        assert!(!store.previous_path().exists());

        let config = store.save(BETTER).unwrap();
        assert_eq!(config.daemon.log, "debug");
        assert_eq!(fs::read_to_string(store.path()).unwrap(), BETTER);
        assert_eq!(fs::read_to_string(store.previous_path()).unwrap(), GOOD);

        let err = store.save("[daemon]\nmode = \"turbo\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown variant `turbo`"), "{err}");
        assert_eq!(
            fs::read_to_string(store.path()).unwrap(),
            BETTER,
            "invalid config was written"
        );
        assert_eq!(fs::read_to_string(store.previous_path()).unwrap(), GOOD);
    }

    #[test]
    fn create_never_overwrites_and_withdraw_removes_only_its_own_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path().join("camgate.toml"), Overrides::default());
        store.create(GOOD).unwrap();
        assert_eq!(fs::read_to_string(store.path()).unwrap(), GOOD);
        let err = store.create(BETTER).unwrap_err();
        assert!(matches!(err, StoreError::Exists(_)), "{err}");
        assert_eq!(fs::read_to_string(store.path()).unwrap(), GOOD);
        assert!(store.create("[daemon]\nmode = \"turbo\"\n").is_err());

        store.withdraw(BETTER).unwrap();
        assert!(store.path().exists(), "withdrew a config it did not write");
        store.withdraw(GOOD).unwrap();
        assert!(!store.path().exists());
        store.withdraw(GOOD).unwrap();
        assert_eq!(
            fs::read_dir(dir.path())
                .unwrap()
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .count(),
            0
        );
    }

    #[test]
    fn unconfirmed_saves_go_back_to_the_last_confirmed_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path().join("camgate.toml"), Overrides::default());
        store.save(GOOD).unwrap();
        assert!(store.revert().unwrap().is_none(), "nothing waited");

        store.save_unconfirmed(BETTER).unwrap();
        let third = format!("{BETTER}# third\n");
        store.save_unconfirmed(&third).unwrap();
        assert_eq!(store.read().unwrap(), third);
        let back = store.revert().unwrap().expect("a change waited");
        assert_eq!(back.daemon.log, "info");
        assert_eq!(
            fs::read_to_string(store.path()).unwrap(),
            GOOD,
            "not the last confirmed text"
        );
        assert!(store.revert().unwrap().is_none());

        store.save_unconfirmed(BETTER).unwrap();
        assert!(store.confirm().unwrap());
        assert!(!store.confirm().unwrap());
        assert!(store.revert().unwrap().is_none());
        assert_eq!(fs::read_to_string(store.path()).unwrap(), BETTER);
        assert!(store.save_unconfirmed("[daemon]\nmode = \"turbo\"\n").is_err());
        assert!(
            store.revert().unwrap().is_none(),
            "an invalid text left a change waiting"
        );
    }

    #[test]
    fn oversized_config_is_never_saved() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path().join("camgate.toml"), Overrides::default());
        let huge = format!("{GOOD}{}", "# padding\n".repeat(120_000));
        let err = store.save(&huge).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        assert!(!store.path().exists());
    }

    #[test]
    fn saved_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path().join("camgate.toml"), Overrides::default());
        store.save(GOOD).unwrap();
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn concurrent_saves_serialize() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path().join("camgate.toml"), Overrides::default());
        let texts: Vec<String> = (0..8).map(|i| format!("{GOOD}# writer {i}\n")).collect();
        std::thread::scope(|scope| {
            for text in &texts {
                let store = &store;
                scope.spawn(move || {
                    for _ in 0..20 {
                        store.save(text).unwrap();
                    }
                });
            }
        });
        let last = fs::read_to_string(store.path()).unwrap();
        assert!(texts.contains(&last));
        let prev = fs::read_to_string(store.previous_path()).unwrap();
        assert!(texts.contains(&prev));
    }
}
