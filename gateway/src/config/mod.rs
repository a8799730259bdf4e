//! Configuration: one TOML file, two stages.
//!
//! ```text
//! camgate.toml ──read (size cap, UTF-8)──▶ text
//!              ──toml + serde (raw.rs, deny_unknown_fields, spans)──▶ RawConfig
//!              ──validate (validate.rs: defaults by mode, addresses, filters)──▶ Config
//! ```
//!
//! Every error names the file, line, column and key (see [`error`]). The only
//! code that writes the file is [`store::ConfigStore`].

pub mod error;
mod raw;
pub mod store;
mod validate;

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

pub use error::ConfigError;
pub use validate::{Admin, Config, Daemon, Mode};

/// Where the appliance keeps its configuration.
pub const DEFAULT_PATH: &str = "/etc/camgate/camgate.toml";
/// Where `--dev` keeps it, relative to the working directory, so a developer
/// never writes to `/etc`.
pub const DEV_DEFAULT_PATH: &str = "var/camgate.toml";
/// A config larger than this is certainly not a hand-written camgate config.
pub const MAX_SIZE: u64 = 1024 * 1024;

/// Settings that come from the command line rather than the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--dev`: force dev mode whatever the file says.
    pub dev: bool,
}

/// Where the daemon reads its configuration from, on start and on every reload.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// A missing file means "not set up yet" only at the default path; a
    /// path given with `--config` must exist.
    pub setup_if_missing: bool,
    pub overrides: Overrides,
}

/// A loaded configuration and whether it came from defaults (setup mode).
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    /// No config file yet: run the admin listener only, for the wizard.
    pub setup: bool,
}

impl ConfigSource {
    /// `--config PATH` if given, else the default path for the mode.
    pub fn new(explicit: Option<PathBuf>, overrides: Overrides) -> Self {
        match explicit {
            Some(path) => Self {
                path,
                setup_if_missing: false,
                overrides,
            },
            None => {
                let default = if overrides.dev {
                    DEV_DEFAULT_PATH
                } else {
                    DEFAULT_PATH
                };
                Self {
                    path: PathBuf::from(default),
                    setup_if_missing: true,
                    overrides,
                }
            }
        }
    }

    pub fn load(&self) -> Result<Loaded, ConfigError> {
        match read_text(&self.path) {
            Ok(text) => Ok(Loaded {
                config: parse(&text, &self.path, self.overrides)?,
                setup: false,
            }),
            Err(ConfigError::Read { source, .. })
                if self.setup_if_missing && source.kind() == ErrorKind::NotFound =>
            {
                Ok(Loaded {
                    config: Config::defaults(self.overrides),
                    setup: true,
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path, overrides: Overrides) -> Result<Config, ConfigError> {
    parse(&read_text(path)?, path, overrides)
}

/// Validates config text; `path` is only used to name the file in errors.
pub fn parse(text: &str, path: &Path, overrides: Overrides) -> Result<Config, ConfigError> {
    if text
        .lines()
        .all(|line| matches!(line.trim_start().chars().next(), None | Some('#')))
    {
        return Err(ConfigError::Empty {
            path: path.to_owned(),
        });
    }
    let raw = raw::from_str(text).map_err(|e| ConfigError::located(path, text, e))?;
    validate::validate(raw, overrides).map_err(|e| ConfigError::located(path, text, e))
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    // Read one byte past the cap so an oversized file is detected without
    // reading all of it.
    file.take(MAX_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_SIZE {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
            limit: MAX_SIZE,
        });
    }
    String::from_utf8(bytes).map_err(|e| ConfigError::not_utf8(path, e.as_bytes(), e.utf8_error()))
}
