//! Stage one: the file's shape, exactly as written. Unknown keys are errors.
//! Keys with defaults are optional here and get them in stage two
//! (`validate.rs`, `proxy.rs`, `auth.rs`), because several depend on the mode. Values that need checks beyond their
//! type keep their span so those checks can point at them.

use std::collections::BTreeMap;

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
    #[serde(default)]
    pub(super) proxy: RawProxy,
    #[serde(default, rename = "site")]
    pub(super) sites: Vec<RawSite>,
    #[serde(default)]
    pub(super) auth: RawAuth,
    #[serde(default, rename = "user")]
    pub(super) users: Vec<RawUser>,
    #[serde(default, rename = "token")]
    pub(super) tokens: Vec<RawToken>,
    pub(super) acme: Option<RawAcme>,
    #[serde(default, rename = "forward")]
    pub(super) forwards: Vec<RawForward>,
    #[serde(default)]
    pub(super) forwarding: RawForwarding,
    pub(super) network: Option<RawNetwork>,
    pub(super) cameras: Option<RawCameras>,
    #[serde(default, rename = "camera")]
    pub(super) camera_list: Vec<RawCamera>,
    #[serde(default)]
    pub(super) streams: RawStreams,
}

/// `[[forward]]`: ports forwarded 1:1 to a host (the DVR's STUN/TURN).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[forward]] table")]
pub(super) struct RawForward {
    pub(super) name: Spanned<String>,
    /// `"udp"` or `"tcp"`.
    pub(super) protocol: Spanned<String>,
    /// A port or a range: `3478`, `"3478"` or `"50000-50100"`.
    pub(super) ports: Spanned<RawPorts>,
    /// Default: every address (`0.0.0.0`; `127.0.0.1` in dev mode).
    pub(super) listen_address: Option<Spanned<String>>,
    /// The target's IP address.
    pub(super) target: Spanned<String>,
    /// The target's first port. Default: the same ports (1:1).
    pub(super) target_port: Option<Spanned<u16>>,
    /// `"kernel"` (default in appliance mode) or `"userspace"`.
    pub(super) mode: Option<Spanned<String>>,
    /// Pass only STUN and TURN ChannelData (UDP only). Default false.
    pub(super) stun: Option<Spanned<bool>>,
    /// Kernel mode: `"auto"` (default), `"always"` or `"never"`.
    pub(super) masquerade: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a port number or a range such as \"50000-50100\"")]
pub(crate) enum RawPorts {
    Number(u16),
    Text(String),
}

/// `[forwarding]`: limits of the userspace relay, and the STUN responder.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [forwarding] table")]
pub(super) struct RawForwarding {
    /// A flow without traffic this long ends. Default `"2m"`.
    pub(super) idle_timeout: Option<Spanned<String>>,
    /// Default 4096.
    pub(super) max_flows: Option<Spanned<u32>>,
    /// Per client address. Default 64.
    pub(super) max_flows_per_client: Option<Spanned<u32>>,
    /// TURN Allocate requests per second per source address on `stun`
    /// forwards (burst: twice as many). Default 5.
    pub(super) allocate_rate: Option<Spanned<u32>>,
    /// Where camgate answers STUN Binding requests itself. Default: nowhere.
    pub(super) stun_responder: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[acme]`: certificates from an ACME CA. Present means on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [acme] table")]
pub(super) struct RawAcme {
    /// Contact address for the CA's account. Optional.
    pub(super) email: Option<Spanned<String>>,
    /// `"letsencrypt"` (default), `"letsencrypt-staging"` or an `https://` URL.
    pub(super) directory: Option<Spanned<String>>,
    /// A PEM file with a root CA the directory's own HTTPS certificate
    /// chains to, trusted besides the public ones (Pebble, step-ca).
    pub(super) directory_ca: Option<Spanned<String>>,
    /// Must be `true`: the CA's terms of service are accepted.
    pub(super) accept_terms: Option<Spanned<bool>>,
    /// `"auto"` (default), `"http-01"` or `"tls-alpn-01"`.
    pub(super) challenge: Option<Spanned<String>>,
    /// Site hosts that get certificates. Default: every site host that can
    /// have a public certificate, on sites without certificate files.
    pub(super) hosts: Option<Spanned<Vec<Spanned<String>>>>,
    /// `"ecdsa-p256"` (default) or `"ecdsa-p384"`.
    pub(super) key_type: Option<Spanned<String>>,
}

/// `[auth]`: the brute-force guard and browser sessions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [auth] table")]
pub(super) struct RawAuth {
    /// Failures within `failure_window` that ban an address. Default 10.
    pub(super) ban_after_failures: Option<Spanned<u32>>,
    /// Default `"10m"`.
    pub(super) failure_window: Option<Spanned<String>>,
    /// The first ban; each repeat doubles it. Default `"1m"`.
    pub(super) ban_time: Option<Spanned<String>>,
    /// Default `"24h"`.
    pub(super) max_ban_time: Option<Spanned<String>>,
    /// A session unused this long ends. Default `"24h"`.
    pub(super) session_idle_timeout: Option<Spanned<String>>,
    /// A session ends this long after login. Default `"7d"`.
    pub(super) session_lifetime: Option<Spanned<String>>,
}

/// `[[user]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[user]] table")]
pub(super) struct RawUser {
    pub(super) name: Spanned<String>,
    /// argon2id PHC string from `camgate hash-password`.
    pub(super) password_hash: Spanned<String>,
    /// `"viewer"` (default) or `"admin"`.
    pub(super) role: Option<Spanned<String>>,
}

/// `[[token]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[token]] table")]
pub(super) struct RawToken {
    pub(super) name: Spanned<String>,
    /// SHA-256 of the secret, hex; `camgate token create` prints it.
    pub(super) secret_sha256: Spanned<String>,
    pub(super) site: Spanned<String>,
    /// `rule:NAME` or path globs with optional pinned query values.
    pub(super) scope: Spanned<Vec<Spanned<String>>>,
    /// RFC 3339, e.g. `"2027-01-31T00:00:00Z"`.
    pub(super) expires: Option<Spanned<String>>,
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
    /// Default `"60s"`.
    pub(super) confirm_within: Option<Spanned<String>>,
}

/// `[proxy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [proxy] table")]
pub(super) struct RawProxy {
    /// Default `["0.0.0.0:443"]`; `["127.0.0.1:8443"]` in dev mode.
    pub(super) https_listen: Option<Spanned<Vec<Spanned<String>>>>,
    /// Default `["0.0.0.0:80"]`; `["127.0.0.1:8000"]` in dev mode.
    pub(super) http_listen: Option<Spanned<Vec<Spanned<String>>>>,
    /// Default `"365d"`; `"0s"` turns HSTS off.
    pub(super) hsts_max_age: Option<Spanned<String>>,
    /// Peers whose `X-Forwarded-For` is believed. Default: none.
    pub(super) trusted_proxies: Option<Vec<Spanned<String>>>,
    /// Named address sets for rules' `from`, e.g. `office = ["203.0.113.0/24"]`.
    pub(super) sets: Option<BTreeMap<String, Spanned<Vec<Spanned<String>>>>>,
}

/// `[[site]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[site]] table")]
pub(super) struct RawSite {
    pub(super) name: Spanned<String>,
    pub(super) hosts: Spanned<Vec<Spanned<String>>>,
    pub(super) upstream: Spanned<String>,
    /// Default `"generic"`.
    pub(super) profile: Option<Spanned<String>>,
    pub(super) upstream_ca: Option<Spanned<String>>,
    pub(super) upstream_sha256: Option<Spanned<String>>,
    pub(super) certificate: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    /// Default: the profile's.
    pub(super) lenient_headers: Option<bool>,
    #[serde(default)]
    pub(super) allow_encoded_slash: bool,
    #[serde(default)]
    pub(super) allow_semicolon: bool,
    /// Append the profile's rules after the site's own. Default true.
    pub(super) profile_rules: Option<bool>,
    /// Forward the ports the profile needs (e.g. Agent DVR's STUN/TURN) to
    /// the upstream's address. Default true in appliance mode, false in dev.
    pub(super) forwards: Option<Spanned<bool>>,
    #[serde(default, rename = "rule")]
    pub(super) rules: Vec<RawRule>,
}

/// `[[site.rule]]`, and `[[rule]]` in a built-in profile.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a rule table")]
pub(crate) struct RawRule {
    pub(crate) name: Option<String>,
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) prefix: Option<Spanned<String>>,
    pub(crate) glob: Option<Spanned<String>>,
    pub(crate) regex: Option<Spanned<String>>,
    pub(crate) methods: Option<Vec<Spanned<String>>>,
    pub(crate) websocket: Option<bool>,
    pub(crate) query_has: Option<Vec<String>>,
    pub(crate) action: Spanned<RawAction>,
    /// For `deny`: 403 (default) or 404.
    pub(crate) status: Option<Spanned<u16>>,
    pub(crate) from: Option<Vec<Spanned<String>>>,
    pub(crate) users: Option<Vec<Spanned<String>>>,
    pub(crate) tokens: Option<Vec<Spanned<String>>>,
    /// For `auth`: forward the client's `Authorization` header (DVRs that
    /// do their own basic auth). Default false: camgate strips it.
    pub(crate) pass_authorization: Option<bool>,
    /// Send matching requests to this port of the site's upstream host.
    pub(crate) upstream_port: Option<Spanned<u16>>,
    /// Send matching requests to this URL instead of the site's upstream.
    pub(crate) upstream: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawAction {
    Allow,
    Deny,
    Auth,
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

/// `[network]`: interface roles.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [network] table")]
pub(super) struct RawNetwork {
    /// The NIC on the home LAN.
    pub(super) uplink: Option<Spanned<String>>,
    /// A separate internet-facing NIC, when camgate is the edge router.
    pub(super) wan: Option<Spanned<String>>,
    /// Home LAN ranges allowed to reach the admin listener. Default: the
    /// uplink's own subnets.
    pub(super) lan: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[cameras]`: the camera segment on its own NIC (or a VLAN on it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [cameras] table")]
pub(super) struct RawCameras {
    pub(super) interface: Spanned<String>,
    /// 802.1Q VLAN id: the cameras are on `<interface>.<vlan>`.
    pub(super) vlan: Option<Spanned<u16>>,
    /// camgate's address on the segment with its prefix: `"10.77.0.1/24"`.
    pub(super) address: Spanned<String>,
    /// Hosts (or CIDRs) allowed to open `ports` on cameras: the DVRs.
    pub(super) dvr_hosts: Option<Spanned<Vec<Spanned<String>>>>,
    /// TCP ports of the cameras the DVR hosts may open.
    pub(super) ports: Option<Spanned<Vec<Spanned<u16>>>>,
}

/// `[[camera]]`: a camera known by its MAC, with a fixed address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[camera]] table")]
pub(super) struct RawCamera {
    pub(super) name: Spanned<String>,
    /// `"aa:bb:cc:dd:ee:ff"`.
    pub(super) mac: Spanned<String>,
    /// Its address in the camera subnet, leased to that MAC only.
    pub(super) address: Spanned<String>,
    /// The camera's own login (ONVIF and RTSP).
    pub(super) username: Option<Spanned<String>>,
    pub(super) password: Option<Spanned<String>>,
    /// By name: `main = "/stream1"` (a path on the camera's address, port
    /// 554) or a whole `rtsp://` URL on the camera's address.
    pub(super) streams: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    /// Pull the streams all the time, not only while someone reads them.
    /// Default false.
    pub(super) always_on: Option<Spanned<bool>>,
    /// `"tcp"` (default, interleaved) or `"udp"` (LAN only: no reordering).
    pub(super) rtsp_transport: Option<Spanned<String>>,
    /// Workarounds for the camera's RTSP bugs (see `config::streams::Quirk`).
    pub(super) rtsp_quirks: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[streams]`: the cameras' streams re-served to the LAN over RTSP.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [streams] table")]
pub(super) struct RawStreams {
    /// Default `["0.0.0.0:8554"]` (dev `["127.0.0.1:8554"]`); bound only
    /// when some camera has streams.
    pub(super) listen: Option<Spanned<Vec<Spanned<String>>>>,
    /// An on-demand stream stops this long after its last reader. Default `"10s"`.
    pub(super) close_after: Option<Spanned<String>>,
    /// Opening a camera, up to its first key frame, may take this long. Default `"20s"`.
    pub(super) open_timeout: Option<Spanned<String>>,
    /// camgate users who may read the streams: names, or `"*"` (default).
    pub(super) users: Option<Spanned<Vec<Spanned<String>>>>,
    /// Tokens (`site = "streams"`) that may read them: names, or `"*"` (default).
    pub(super) tokens: Option<Spanned<Vec<Spanned<String>>>>,
    /// Readers of one stream at most. Default 32.
    pub(super) max_readers: Option<Spanned<u32>>,
}
