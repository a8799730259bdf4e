//! Stage two for `[streams]` and the `[[camera]]` stream keys: which camera
//! streams camgate pulls (once each) and re-serves over RTSP, and who may
//! read them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use toml::Spanned;

use super::error::Problem;
use super::network::{CameraLogin, Network};
use super::proxy::{Principals, identifier};
use super::raw::{RawCamera, RawStreams};
use super::validate::{Mode, optional_duration, socket_addresses};

/// The reserved site name of tokens for the restream (`site = "streams"`).
pub const STREAMS_SITE: &str = "streams";

#[derive(Debug, Clone, PartialEq)]
pub struct Streams {
    /// Empty when no camera has streams: nothing listens then.
    pub listen: Vec<SocketAddr>,
    pub close_after: Duration,
    pub open_timeout: Duration,
    /// camgate users who may read: names or `*`.
    pub users: Vec<String>,
    /// Tokens of the `streams` site who may read: names or `*`.
    pub tokens: Vec<String>,
    pub max_readers: usize,
    pub sources: Vec<StreamSource>,
}

/// One camera stream: pulled from `url` once, read at `/<camera>/<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSource {
    pub camera: String,
    pub name: String,
    /// `rtsp://` on the camera's own address, without credentials.
    pub url: url::Url,
    pub login: Option<CameraLogin>,
    pub always_on: bool,
    pub transport: RtspTransport,
    /// retina's policy name → value, each checked to parse (see [`QUIRKS`]).
    pub quirks: BTreeMap<String, String>,
}

impl StreamSource {
    /// The restream's path: `/<camera>/<stream>`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.camera, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtspTransport {
    Tcp,
    Udp,
}

/// The camera workarounds a `[[camera]]` may set in `rtsp_quirks`, each
/// one of retina's session or play policies under its own value names.
pub const QUIRKS: [&str; 6] = [
    "initial_timestamp",
    "initial_seq",
    "unknown_rtcp_ssrc",
    "unassigned_channel_data",
    "session_id",
    "teardown",
];

const MAX_READERS: u32 = 1024;

pub(super) fn streams(
    raw: RawStreams,
    cameras: &[RawCamera],
    network: Option<&Network>,
    principals: &Principals,
    mode: Mode,
) -> Result<Streams, Problem> {
    let addresses: BTreeMap<&str, (Ipv4Addr, Option<CameraLogin>)> = network
        .and_then(|n| n.cameras.as_ref())
        .map(|segment| {
            segment
                .known
                .iter()
                .map(|k| (k.name.as_str(), (k.address, k.login.clone())))
                .collect()
        })
        .unwrap_or_default();
    let mut sources = Vec::new();
    for (i, camera) in cameras.iter().enumerate() {
        let key = |field: &str| format!("camera[{i}].{field}");
        let Some((address, login)) = addresses.get(camera.name.get_ref().as_str()) else {
            continue;
        };
        let always_on = camera.always_on.as_ref().is_some_and(|v| *v.get_ref());
        let transport = match camera
            .rtsp_transport
            .as_ref()
            .map(|t| (t.get_ref().as_str(), t.span()))
        {
            None | Some(("tcp", _)) => RtspTransport::Tcp,
            Some(("udp", _)) => RtspTransport::Udp,
            Some((other, span)) => {
                return Err(Problem::new(
                    span,
                    key("rtsp_transport"),
                    format!("unknown transport {other:?}; use \"tcp\" or \"udp\""),
                ));
            }
        };
        let quirks = quirks(camera.rtsp_quirks.as_ref(), &key("rtsp_quirks"))?;
        let Some(streams) = &camera.streams else {
            continue;
        };
        if streams.get_ref().is_empty() {
            return Err(Problem::new(
                streams.span(),
                key("streams"),
                "list at least one stream, e.g. main = \"/stream1\"",
            ));
        }
        for (name, location) in streams.get_ref() {
            let stream_key = key(&format!("streams.{name}"));
            identifier(name, location.span(), &stream_key, "stream")?;
            let url = camera_url(location, *address, &stream_key)?;
            sources.push(StreamSource {
                camera: camera.name.get_ref().clone(),
                name: name.clone(),
                url,
                login: login.clone(),
                always_on,
                transport,
                quirks: quirks.clone(),
            });
        }
    }
    let default_listen = match mode {
        Mode::Appliance => "0.0.0.0:8554",
        Mode::Dev => "127.0.0.1:8554",
    };
    let listen = socket_addresses(raw.listen, "streams.listen", default_listen, "the restream")?;
    let users = names(raw.users, "streams.users", &principals.users, "user")?;
    let tokens = names(raw.tokens, "streams.tokens", &principals.tokens, "token")?;
    let max_readers = match raw.max_readers {
        None => 32,
        Some(n) if (1..=MAX_READERS).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            return Err(Problem::new(
                n.span(),
                "streams.max_readers",
                format!("between 1 and {MAX_READERS}"),
            ));
        }
    };
    Ok(Streams {
        listen: if sources.is_empty() { Vec::new() } else { listen },
        close_after: optional_duration(
            raw.close_after.as_ref(),
            "streams.close_after",
            Duration::from_secs(3600),
            Duration::from_secs(10),
        )?,
        open_timeout: optional_duration(
            raw.open_timeout.as_ref(),
            "streams.open_timeout",
            Duration::from_secs(120),
            Duration::from_secs(20),
        )?,
        users,
        tokens,
        max_readers: max_readers as usize,
        sources,
    })
}

/// A stream's location: a path on the camera (port 554), or an `rtsp://`
/// URL on the camera's own address, so camgate pulls from its cameras only
/// and their login goes nowhere else.
fn camera_url(location: &Spanned<String>, camera: Ipv4Addr, key: &str) -> Result<url::Url, Problem> {
    let text = location.get_ref();
    let problem = |why: String| Problem::new(location.span(), key, why);
    let url = if text.starts_with('/') {
        url::Url::parse(&format!("rtsp://{camera}:554{text}"))
    } else {
        url::Url::parse(text)
    }
    .map_err(|e| {
        problem(format!(
            "{text:?} is not a path like \"/stream1\" or an rtsp:// URL ({e})"
        ))
    })?;
    if url.scheme() != "rtsp" {
        return Err(problem(format!(
            "{text:?}: camgate pulls rtsp:// only; give a path like \"/stream1\" or an rtsp:// URL"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(problem(
            "put the camera's login in `username` and `password`, not in the URL".to_owned(),
        ));
    }
    if url.host_str() != Some(camera.to_string().as_str()) {
        return Err(problem(format!(
            "the URL's host must be the camera's address {camera} (or give just the path)"
        )));
    }
    if url.fragment().is_some() {
        return Err(problem("a URL with a #fragment is not an RTSP URL".to_owned()));
    }
    Ok(url)
}

fn quirks(
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
    key: &str,
) -> Result<BTreeMap<String, String>, Problem> {
    let mut quirks = BTreeMap::new();
    for (i, entry) in raw
        .map(|list| list.get_ref().as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let problem = |why: String| Problem::new(entry.span(), format!("{key}[{i}]"), why);
        let (name, value) = entry.get_ref().split_once('=').ok_or_else(|| {
            problem(format!(
                "{:?}: expected NAME=VALUE, e.g. \"initial_timestamp=ignore\"",
                entry.get_ref()
            ))
        })?;
        // retina's own parsers, so the names are exactly its policies'.
        let parsed = match name {
            "initial_timestamp" => value.parse::<retina::client::InitialTimestampPolicy>().map(drop),
            "initial_seq" => value
                .parse::<retina::client::InitialSequenceNumberPolicy>()
                .map(drop),
            "unknown_rtcp_ssrc" => value.parse::<retina::client::UnknownRtcpSsrcPolicy>().map(drop),
            "unassigned_channel_data" => value
                .parse::<retina::client::UnassignedChannelDataPolicy>()
                .map(drop),
            "session_id" => value.parse::<retina::client::SessionIdPolicy>().map(drop),
            "teardown" => value.parse::<retina::client::TeardownPolicy>().map(drop),
            _ => {
                return Err(problem(format!(
                    "unknown quirk {name:?}; known: {}",
                    QUIRKS.join(", ")
                )));
            }
        };
        if let Err(e) = parsed {
            return Err(problem(format!("{value:?} is not a value of {name}: {e}")));
        }
        if quirks.insert(name.to_owned(), value.to_owned()).is_some() {
            return Err(problem(format!("{name} is set twice")));
        }
    }
    Ok(quirks)
}

/// `users`/`tokens`: names that exist, or `*`; default `["*"]`.
fn names(
    raw: Option<Spanned<Vec<Spanned<String>>>>,
    key: &str,
    known: &std::collections::BTreeSet<String>,
    kind: &str,
) -> Result<Vec<String>, Problem> {
    let Some(list) = raw else {
        return Ok(vec!["*".to_owned()]);
    };
    list.into_inner()
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            if name.get_ref() == "*" || known.contains(name.get_ref()) {
                Ok(name.into_inner())
            } else {
                Err(Problem::new(
                    name.span(),
                    format!("{key}[{i}]"),
                    format!("no [[{kind}]] is named {:?}", name.get_ref()),
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Overrides, parse};

    const SEGMENT: &str = "[network]\nuplink = \"eth0\"\n[cameras]\ninterface = \"eth1\"\naddress = \"10.77.0.1/24\"\n\
        [[camera]]\nname = \"porch\"\nmac = \"aa:bb:cc:00:11:22\"\naddress = \"10.77.0.20\"\n\
        username = \"admin\"\npassword = \"pw\"\n";

    fn streams(extra: &str) -> Streams {
        parse(
            &format!("{SEGMENT}{extra}"),
            Path::new("t.toml"),
            Overrides::default(),
        )
        .unwrap()
        .streams
    }

    #[test]
    fn paths_are_on_the_cameras_port_554_and_urls_are_kept() {
        let streams = streams(
            "streams = { main = \"/Streaming/Channels/101?transportmode=unicast\", sub = \"rtsp://10.77.0.20:8554/sub\" }\n\
             always_on = true\nrtsp_quirks = [\"initial_timestamp=ignore\", \"teardown=always\"]\n",
        );
        assert_eq!(streams.listen, ["0.0.0.0:8554".parse().unwrap()]);
        let [main, sub] = &streams.sources[..] else {
            panic!("{:?}", streams.sources)
        };
        assert_eq!(
            main.url.as_str(),
            "rtsp://10.77.0.20:554/Streaming/Channels/101?transportmode=unicast"
        );
        assert_eq!(main.path(), "/porch/main");
        assert_eq!(sub.url.as_str(), "rtsp://10.77.0.20:8554/sub");
        assert!(main.always_on && sub.always_on);
        assert_eq!(main.login.as_ref().unwrap().username, "admin");
        assert_eq!(
            main.quirks.get("initial_timestamp").map(String::as_str),
            Some("ignore")
        );
        assert_eq!(
            (streams.users.as_slice(), streams.tokens.as_slice()),
            (&["*".to_owned()][..], &["*".to_owned()][..])
        );
        assert_eq!(
            (
                streams.close_after.as_secs(),
                streams.open_timeout.as_secs(),
                streams.max_readers
            ),
            (10, 20, 32)
        );
    }

    #[test]
    fn without_streams_nothing_listens() {
        let streams = streams("[streams]\nlisten = [\"0.0.0.0:9554\"]\n");
        assert!(streams.sources.is_empty());
        assert!(streams.listen.is_empty());
    }

    #[test]
    fn restream_tokens_name_the_streams_site() {
        let config = parse(
            &format!(
                "{SEGMENT}streams = {{ main = \"/s\" }}\n[[token]]\nname = \"nvr\"\nsite = \"streams\"\n\
                 secret_sha256 = \"{}\"\nscope = [\"/porch/*\"]\n",
                "ab".repeat(32)
            ),
            Path::new("t.toml"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.auth.tokens[0].site, STREAMS_SITE);
        let rule_scope = parse(
            &format!(
                "[[token]]\nname = \"nvr\"\nsite = \"streams\"\nsecret_sha256 = \"{}\"\nscope = [\"rule:api\"]\n",
                "ab".repeat(32)
            ),
            Path::new("t.toml"),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(rule_scope.contains("has no rule named \"api\""), "{rule_scope}");
    }
}
