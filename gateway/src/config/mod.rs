//! Configuration: one TOML file, two stages.
//!
//! ```text
//! camgate.toml ──read (size cap, UTF-8, not empty, no control characters)──▶ text
//!              ──toml + serde (raw.rs, deny_unknown_fields, spans)──▶ RawConfig
//!              ──validate (validate.rs; proxy.rs for sites and rules;
//!                          auth.rs for users and tokens; acme.rs)──▶ Config
//! ```
//!
//! Every error names the file, line, column and key (see [`error`]). The only
//! code that writes the file is [`store::ConfigStore`].

pub mod acme;
pub mod auth;
pub mod edit;
pub mod error;
pub mod forward;
pub mod network;
pub mod proxy;
pub(crate) mod raw;
pub mod store;
pub mod streams;
mod validate;

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

pub use error::ConfigError;
pub use proxy::{Proxy, Site};
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
    // Also checked here, not only when reading, so the store never writes a
    // file that loading would refuse.
    if text.len() as u64 > MAX_SIZE {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
            limit: MAX_SIZE,
        });
    }
    if text
        .lines()
        .all(|line| matches!(line.trim_start().chars().next(), None | Some('#')))
    {
        return Err(ConfigError::Empty {
            path: path.to_owned(),
        });
    }
    if let Some((offset, c)) = text
        .char_indices()
        .find(|&(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        let problem = error::Problem::new(
            offset..offset + c.len_utf8(),
            "",
            format!(
                "control character U+{:04X} is not allowed in a config file",
                u32::from(c)
            ),
        );
        return Err(ConfigError::located(path, text, problem));
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    fn testdata(relative: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/config")
            .join(relative)
    }

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rootfs/etc/camgate/camgate.toml")
    }

    #[test]
    fn every_broken_fixture_gives_its_expected_error() {
        let mut checked = 0;
        for entry in std::fs::read_dir(testdata("bad")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|ext| ext != "toml") {
                continue;
            }
            let expected = std::fs::read_to_string(path.with_extension("expected"))
                .unwrap_or_else(|_| panic!("{} has no .expected file", path.display()));
            let err = load(&path, Overrides::default())
                .expect_err(&path.display().to_string())
                .to_string();
            let want = format!("{}:{}", path.display(), expected.trim_end());
            assert!(
                err.starts_with(&want),
                "{}:\n got: {err}\nwant: {want}",
                path.display()
            );
            checked += 1;
        }
        let expected_files = std::fs::read_dir(testdata("bad"))
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|ext| ext == "expected")
            })
            .count();
        assert_eq!(checked, expected_files, "every .expected file has its fixture");
        assert!(checked >= 12, "only {checked} fixtures");
    }

    #[test]
    fn huge_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.toml");
        let line = "# padding padding padding padding padding padding padding padding\n";
        let text = format!(
            "[daemon]\n{}",
            line.repeat(usize::try_from(MAX_SIZE).unwrap() / line.len() + 1)
        );
        std::fs::write(&path, text).unwrap();
        let err = load(&path, Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("config is larger than 1048576 bytes"), "{err}");
    }

    #[test]
    fn example_config_is_valid_and_shows_the_defaults() {
        let example = std::fs::read_to_string(example_path()).unwrap();
        let config = parse(&example, &example_path(), Overrides::default()).unwrap();
        assert_eq!(config, Config::defaults(Overrides::default()));

        // Uncommenting the mode-dependent keys as shown changes nothing.
        let uncommented: String = example
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        assert_ne!(uncommented, example, "the example shows no mode-dependent keys");
        assert_eq!(
            parse(&uncommented, &example_path(), Overrides::default()).unwrap(),
            config
        );
    }

    #[test]
    fn example_site_in_the_comments_is_valid() {
        let example = std::fs::read_to_string(example_path()).unwrap();
        let start = example
            .find("# [[site]]")
            .expect("the example documents [[site]]");
        let site: String = example[start..]
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .map(|line| format!("{line}\n"))
            .collect();
        let text = format!("[proxy.sets]\noffice = [\"203.0.113.0/24\"]\n{site}");
        let config =
            parse(&text, &example_path(), Overrides::default()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.sites[0].name, "dvr");
        assert_eq!(config.sites[0].rules.rules[0].name, "hide-settings");
    }

    #[test]
    fn dev_defaults_differ_where_documented() {
        let dev = Config::defaults(Overrides { dev: true });
        assert_eq!(dev.daemon.mode, Mode::Dev);
        assert_eq!(dev.daemon.state_dir, Path::new("var/lib"));
        assert_eq!(dev.admin.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(dev.daemon.shutdown_grace, Duration::from_secs(10));
        assert!(!dev.manages_system());
        let forced = parse(
            "[daemon]\nmode = \"appliance\"\n",
            Path::new("x"),
            Overrides { dev: true },
        )
        .unwrap();
        assert_eq!(forced.daemon.mode, Mode::Dev);
    }

    #[test]
    fn a_full_config_parses() {
        let text = "[daemon]\nmode = \"dev\"\nstate_dir = \"/tmp/cg\"\nlog = \"warn,camgate=trace\"\n\
                    shutdown_grace = \"1m\"\n[admin]\nlisten = [\"127.0.0.1:9000\", \"[::1]:9000\"]\n";
        let config = parse(text, Path::new("x"), Overrides::default()).unwrap();
        assert_eq!(config.daemon.state_dir, Path::new("/tmp/cg"));
        assert_eq!(config.daemon.shutdown_grace, Duration::from_secs(60));
        assert_eq!(config.admin.listen.len(), 2);
    }

    #[test]
    fn missing_file_means_setup_only_at_the_default_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("camgate.toml");
        let default = ConfigSource {
            path: missing.clone(),
            setup_if_missing: true,
            overrides: Overrides::default(),
        };
        let loaded = default.load().unwrap();
        assert!(loaded.setup);
        assert_eq!(loaded.config, Config::defaults(Overrides::default()));

        let explicit = ConfigSource::new(Some(missing), Overrides::default());
        let err = explicit.load().unwrap_err().to_string();
        assert!(err.contains("cannot read config"), "{err}");
    }
}
