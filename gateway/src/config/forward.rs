//! Stage two for `[[forward]]` (plus the forwards of sites' profiles) and
//! `[forwarding]`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::Mode;
use super::error::Problem;
use super::proxy::{Proxy, Site, identifier};
use super::raw::{RawForward, RawForwarding, RawPorts};
use super::validate::{Admin, optional_duration, socket_addresses};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// `first..=last`, never port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawPorts")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn count(self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    pub fn ports(self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }

    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn overlaps(self, other: Self) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl TryFrom<RawPorts> for PortRange {
    type Error = String;

    fn try_from(raw: RawPorts) -> Result<Self, String> {
        let (first, last) = match &raw {
            RawPorts::Number(port) => (*port, *port),
            RawPorts::Text(text) => {
                let port = |s: &str| {
                    s.trim()
                        .parse::<u16>()
                        .map_err(|_| format!("{text:?} is not a port or a range such as \"50000-50100\""))
                };
                match text.split_once('-') {
                    Some((a, b)) => (port(a)?, port(b)?),
                    None => (port(text)?, port(text)?),
                }
            }
        };
        if first == 0 {
            return Err("port 0 cannot be forwarded".to_owned());
        }
        if first > last {
            return Err(format!("the range {first}-{last} is backwards"));
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// nftables DNAT (appliance mode only).
    Kernel,
    /// camgate's own relay.
    Userspace,
}

/// Kernel mode: whether forwarded traffic gets camgate's address as its
/// source, so the target's answers come back through camgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Masquerade {
    /// When the route to the target leaves through the interface of
    /// camgate's default route: the target is on the home LAN beside
    /// camgate and answers through the home router, not camgate.
    Auto,
    Always,
    /// The target routes back through camgate (camgate is its router, or
    /// it has a policy route): the client's address is kept, which TURN
    /// peers that send first need.
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Unique; profile forwards are named `<site>-<protocol>-<first port>`.
    pub name: String,
    pub protocol: Protocol,
    pub listen_address: IpAddr,
    pub ports: PortRange,
    pub target: IpAddr,
    /// The target's port for `ports.first`; the rest follow in order.
    pub target_first_port: u16,
    pub mode: ForwardMode,
    pub stun: bool,
    pub masquerade: Masquerade,
}

impl Forward {
    pub fn target_ports(&self) -> PortRange {
        PortRange {
            first: self.target_first_port,
            last: self.target_first_port + (self.ports.last - self.ports.first),
        }
    }

    pub fn target_for(&self, listen_port: u16) -> SocketAddr {
        SocketAddr::new(
            self.target,
            self.target_first_port + (listen_port - self.ports.first),
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forwarding {
    pub forwards: Vec<Forward>,
    pub limits: FlowLimits,
    /// Where camgate answers STUN Binding requests itself.
    pub stun_responder: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    pub idle_timeout: Duration,
    pub max_flows: usize,
    pub max_flows_per_client: usize,
    /// Allocate requests per second per source; the burst is twice this.
    pub allocate_rate: u32,
}

const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

pub(super) fn forwarding(
    raw: Vec<RawForward>,
    settings: RawForwarding,
    sites: &[Site],
    mode: Mode,
) -> Result<Forwarding, Problem> {
    let limits = FlowLimits {
        idle_timeout: optional_duration(
            settings.idle_timeout.as_ref(),
            "forwarding.idle_timeout",
            MAX_IDLE_TIMEOUT,
            Duration::from_secs(120),
        )?,
        max_flows: count(settings.max_flows.as_ref(), "forwarding.max_flows", 4096, 1 << 16)?,
        max_flows_per_client: count(
            settings.max_flows_per_client.as_ref(),
            "forwarding.max_flows_per_client",
            64,
            1 << 16,
        )?,
        allocate_rate: u32::try_from(count(
            settings.allocate_rate.as_ref(),
            "forwarding.allocate_rate",
            5,
            10_000,
        )?)
        .expect("at most 10,000"),
    };
    let stun_responder = match settings.stun_responder {
        None => Vec::new(),
        Some(list) if list.get_ref().is_empty() => Vec::new(),
        Some(list) => socket_addresses(Some(list), "forwarding.stun_responder", "", "")?,
    };

    let default_listen = IpAddr::V4(match mode {
        Mode::Appliance => Ipv4Addr::UNSPECIFIED,
        Mode::Dev => Ipv4Addr::LOCALHOST,
    });
    let default_mode = match mode {
        Mode::Appliance => ForwardMode::Kernel,
        Mode::Dev => ForwardMode::Userspace,
    };
    let mut forwards = Vec::new();
    for site in sites {
        let Some(target) = site.profile_forwards else {
            continue;
        };
        for profile in &site.profile.forwards {
            forwards.push(Forward {
                name: format!(
                    "{}-{}-{}",
                    site.name,
                    profile.protocol.as_str(),
                    profile.ports.first
                ),
                protocol: profile.protocol,
                listen_address: default_listen,
                ports: profile.ports,
                target,
                target_first_port: profile.ports.first,
                mode: default_mode,
                stun: profile.stun,
                masquerade: Masquerade::Auto,
            });
        }
    }
    let from_profiles = forwards.len();
    for (index, raw) in raw.into_iter().enumerate() {
        forwards.push(forward(raw, index, default_listen, default_mode, mode)?);
    }
    check_clashes(&forwards, from_profiles)?;
    Ok(Forwarding {
        forwards,
        limits,
        stun_responder,
    })
}

fn count(value: Option<&Spanned<u32>>, key: &str, default: usize, max: usize) -> Result<usize, Problem> {
    let Some(value) = value else { return Ok(default) };
    let n = *value.get_ref() as usize;
    if n == 0 || n > max {
        return Err(Problem::new(
            value.span(),
            key,
            format!("must be between 1 and {max}, got {n}"),
        ));
    }
    Ok(n)
}

fn forward(
    raw: RawForward,
    index: usize,
    default_listen: IpAddr,
    default_mode: ForwardMode,
    mode: Mode,
) -> Result<Forward, Problem> {
    let key = |field: &str| format!("forward[{index}].{field}");
    let name = raw.name.get_ref().clone();
    identifier(&name, raw.name.span(), &key("name"), "forward")?;
    let protocol = match raw.protocol.get_ref().as_str() {
        "udp" => Protocol::Udp,
        "tcp" => Protocol::Tcp,
        other => {
            return Err(Problem::new(
                raw.protocol.span(),
                key("protocol"),
                format!("expected \"udp\" or \"tcp\", got {other:?}"),
            ));
        }
    };
    let ports_span = raw.ports.span();
    let ports = PortRange::try_from(raw.ports.into_inner())
        .map_err(|message| Problem::new(ports_span.clone(), key("ports"), message))?;
    let address = |value: &Spanned<String>, field: &str| {
        value.get_ref().parse::<IpAddr>().map_err(|_| {
            Problem::new(
                value.span(),
                key(field),
                format!(
                    "{:?} is not an IP address (host names are not resolved)",
                    value.get_ref()
                ),
            )
        })
    };
    let listen_address = raw
        .listen_address
        .as_ref()
        .map_or(Ok(default_listen), |value| address(value, "listen_address"))?;
    let target = address(&raw.target, "target")?;
    if target.is_unspecified() || target.is_multicast() {
        return Err(Problem::new(
            raw.target.span(),
            key("target"),
            format!("{target} cannot receive forwarded traffic; give the DVR's address"),
        ));
    }
    let target_first_port = match &raw.target_port {
        None => ports.first,
        Some(port) => {
            let first = *port.get_ref();
            if first == 0 || u32::from(first) + u32::from(ports.last - ports.first) > 65535 {
                return Err(Problem::new(
                    port.span(),
                    key("target_port"),
                    format!(
                        "the target's ports {first}+{} do not fit in 1-65535",
                        ports.count() - 1
                    ),
                ));
            }
            first
        }
    };
    let forward_mode = match &raw.mode {
        None => default_mode,
        Some(value) => match value.get_ref().as_str() {
            "kernel" if mode == Mode::Dev => {
                return Err(Problem::new(
                    value.span(),
                    key("mode"),
                    "\"kernel\" changes the firewall, which dev mode never does; use \"userspace\"",
                ));
            }
            "kernel" => ForwardMode::Kernel,
            "userspace" => ForwardMode::Userspace,
            other => {
                return Err(Problem::new(
                    value.span(),
                    key("mode"),
                    format!("expected \"kernel\" or \"userspace\", got {other:?}"),
                ));
            }
        },
    };
    if forward_mode == ForwardMode::Kernel && (target.is_loopback() || listen_address.is_loopback()) {
        return Err(Problem::new(
            raw.target.span(),
            key("target"),
            "kernel mode forwards between hosts; loopback addresses need mode = \"userspace\"",
        ));
    }
    if forward_mode == ForwardMode::Kernel
        && !listen_address.is_unspecified()
        && listen_address.is_ipv4() != target.is_ipv4()
    {
        return Err(Problem::new(
            raw.target.span(),
            key("target"),
            "kernel mode cannot translate between IPv4 and IPv6; use mode = \"userspace\"",
        ));
    }
    let stun = raw.stun.as_ref().is_some_and(|s| *s.get_ref());
    if stun && protocol != Protocol::Udp {
        return Err(Problem::new(
            raw.stun.as_ref().expect("stun is set").span(),
            key("stun"),
            "the STUN guard applies to UDP forwards only",
        ));
    }
    let masquerade = match &raw.masquerade {
        None => Masquerade::Auto,
        Some(value) => {
            let parsed = match value.get_ref().as_str() {
                "auto" => Masquerade::Auto,
                "always" => Masquerade::Always,
                "never" => Masquerade::Never,
                other => {
                    return Err(Problem::new(
                        value.span(),
                        key("masquerade"),
                        format!("expected \"auto\", \"always\" or \"never\", got {other:?}"),
                    ));
                }
            };
            if forward_mode == ForwardMode::Userspace {
                return Err(Problem::new(
                    value.span(),
                    key("masquerade"),
                    "applies to kernel mode only: the userspace relay always sends from camgate's address",
                ));
            }
            parsed
        }
    };
    let forward = Forward {
        name,
        protocol,
        listen_address,
        ports,
        target,
        target_first_port,
        mode: forward_mode,
        stun,
        masquerade,
    };
    if forward_mode == ForwardMode::Userspace
        && forward.ports.ports().any(|port| {
            let target = forward.target_for(port);
            // A remote target cannot be camgate's own socket; only the listen
            // address itself, or loopback under a wildcard, can.
            target.port() == port
                && (target.ip() == listen_address
                    || (target.ip().is_loopback()
                        && (listen_address.is_unspecified() || listen_address.is_loopback())))
        })
    {
        return Err(Problem::new(
            ports_span,
            key("ports"),
            "the forward would send to its own listening socket; check `target` and `target_port`",
        ));
    }
    Ok(forward)
}

/// Key of the forward at `i` for errors: profile forwards are named after
/// their site.
fn forward_key(forwards: &[Forward], from_profiles: usize, i: usize) -> String {
    if i < from_profiles {
        format!("site forwards ({})", forwards[i].name)
    } else {
        format!("forward[{}]", i - from_profiles)
    }
}

/// No two forwards may share a name or take the same port.
fn check_clashes(forwards: &[Forward], from_profiles: usize) -> Result<(), Problem> {
    for (i, a) in forwards.iter().enumerate() {
        for b in &forwards[..i] {
            let message = if a.name == b.name {
                format!("the name {:?} is already taken", a.name)
            } else if a.protocol == b.protocol
                && a.ports.overlaps(b.ports)
                && crate::net::overlaps(
                    SocketAddr::new(a.listen_address, 1),
                    SocketAddr::new(b.listen_address, 1),
                )
            {
                format!(
                    "{} ports {} overlap forward {:?} ({} {}); a site's profile forwards can be \
                     switched off with `forwards = false` on the site",
                    a.protocol.as_str(),
                    a.ports,
                    b.name,
                    b.protocol.as_str(),
                    b.ports
                )
            } else {
                continue;
            };
            return Err(Problem::unlocated(
                forward_key(forwards, from_profiles, i),
                message,
            ));
        }
    }
    Ok(())
}

/// TCP forwards must not take a port camgate's own listeners use.
pub(super) fn check_listener_clashes(
    forwarding: &Forwarding,
    admin: &Admin,
    proxy: &Proxy,
    streams: &[SocketAddr],
) -> Result<(), Problem> {
    let listeners = admin
        .listen
        .iter()
        .chain(&proxy.https_listen)
        .chain(&proxy.http_listen)
        .chain(streams);
    for listener in listeners {
        let clash = forwarding.forwards.iter().find(|f| {
            f.protocol == Protocol::Tcp
                && f.ports.contains(listener.port())
                && crate::net::overlaps(*listener, SocketAddr::new(f.listen_address, listener.port()))
        });
        if let Some(forward) = clash {
            return Err(Problem::unlocated(
                "forward",
                format!(
                    "forward {:?} takes tcp port {}, which camgate listens on ({listener})",
                    forward.name,
                    listener.port()
                ),
            ));
        }
    }
    let udp = forwarding.forwards.iter().filter(|f| f.protocol == Protocol::Udp);
    for (i, responder) in forwarding.stun_responder.iter().enumerate() {
        if let Some(forward) = udp.clone().find(|f| {
            f.ports.contains(responder.port())
                && crate::net::overlaps(*responder, SocketAddr::new(f.listen_address, responder.port()))
        }) {
            return Err(Problem::unlocated(
                format!("forwarding.stun_responder[{i}]"),
                format!("{responder} is forwarded by {:?}", forward.name),
            ));
        }
    }
    Ok(())
}
