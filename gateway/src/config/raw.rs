//! Stage one: the file's shape, exactly as written. Unknown keys are errors;
//! every key is optional here and gets its default in `validate.rs`, because
//! several defaults depend on the mode. Values that need checks beyond their
//! type keep their span so those checks can point at them.

use serde::Deserialize;
use toml::Spanned;

use super::error::Problem;
use super::validate::Mode;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a camgate config")]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) daemon: RawDaemon,
    #[serde(default)]
    pub(super) admin: RawAdmin,
}

/// `[daemon]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [daemon] table")]
pub(super) struct RawDaemon {
    /// `"appliance"` (default) or `"dev"`.
    pub(super) mode: Option<Mode>,
    /// Default `/var/lib/camgate`; `./var/lib` in dev mode.
    pub(super) state_dir: Option<Spanned<String>>,
    /// tracing filter directives, default `"info"`. `RUST_LOG` wins if set.
    pub(super) log: Option<Spanned<String>>,
    /// How long a graceful stop may take, default `"10s"`.
    pub(super) shutdown_grace: Option<Spanned<String>>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [admin] table")]
pub(super) struct RawAdmin {
    /// Default `["0.0.0.0:8080"]`; `["127.0.0.1:8080"]` in dev mode.
    pub(super) listen: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Parses TOML into [`RawConfig`], keeping the dotted key path of whatever
/// failed (toml's own error knows the span but does not expose the key).
pub(super) fn from_str(text: &str) -> Result<RawConfig, Problem> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| Problem::from_toml(&e, String::new()))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        // `Spanned` wraps each value in a private one-field struct; its field
        // name is noise to a reader.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        Problem::from_toml(e.inner(), if key == "." { String::new() } else { key })
    })
}
