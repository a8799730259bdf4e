//! `[network]` and `[cameras]`: which NIC is the home LAN (uplink), which is
//! the camera segment, and who may reach the cameras.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use toml::Spanned;

use super::error::Problem;
use super::forward::Forwarding;
use super::raw::{RawCamera, RawCameras, RawNetwork};

/// TCP ports a DVR host may open on a camera unless `cameras.ports` says
/// otherwise: HTTP(S), RTSP, and the usual ONVIF/vendor web ports.
pub const DEFAULT_CAMERA_PORTS: [u16; 8] = [80, 443, 554, 2000, 8000, 8080, 8554, 8899];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub uplink: String,
    pub wan: Option<String>,
    /// `None`: the uplink's own subnets, read when the firewall applies.
    pub lan: Option<Vec<IpNet>>,
    pub cameras: Option<Cameras>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cameras {
    /// The physical NIC.
    pub parent: String,
    pub vlan: Option<u16>,
    /// camgate's address; its network is the camera subnet.
    pub address: Ipv4Net,
    pub dvr_hosts: Vec<Ipv4Net>,
    /// Sorted, without duplicates.
    pub ports: Vec<u16>,
    /// `[[camera]]`: fixed leases.
    pub known: Vec<KnownCamera>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownCamera {
    pub name: String,
    /// Lower case, colon-separated.
    pub mac: String,
    pub address: Ipv4Addr,
    pub login: Option<CameraLogin>,
}

/// A camera's own user and password (ONVIF); the password stays out of
/// debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct CameraLogin {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for CameraLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CameraLogin")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Cameras {
    /// The interface the cameras are on: the NIC, or its VLAN sub-interface.
    pub fn interface(&self) -> String {
        match self.vlan {
            Some(id) => format!("{}.{id}", self.parent),
            None => self.parent.clone(),
        }
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.address.trunc()
    }
}

pub(super) fn network(
    raw: Option<RawNetwork>,
    cameras: Option<RawCameras>,
    known: &[RawCamera],
    forwarding: &Forwarding,
) -> Result<Option<Network>, Problem> {
    if cameras.is_none()
        && let Some(first) = known.first()
    {
        return Err(Problem::new(
            first.name.span(),
            "camera[0].name",
            "[[camera]] needs a [cameras] segment",
        ));
    }
    if raw.is_none() && cameras.is_none() {
        return Ok(None);
    }
    let raw = raw.unwrap_or_default();
    let Some(uplink) = raw.uplink else {
        return Err(Problem::unlocated(
            "network.uplink",
            "the camera segment needs `network.uplink`, the NIC on the home LAN (e.g. \"eth0\")",
        ));
    };
    interface_name(&uplink, "network.uplink")?;
    let wan = raw
        .wan
        .map(|wan| interface_name(&wan, "network.wan").map(|()| wan))
        .transpose()?;
    if let Some(wan) = &wan
        && wan.get_ref() == uplink.get_ref()
    {
        return Err(Problem::new(
            wan.span(),
            "network.wan",
            "must differ from `network.uplink`",
        ));
    }
    let lan = raw
        .lan
        .map(|list| {
            list.into_inner()
                .iter()
                .enumerate()
                .map(|(i, entry)| super::proxy::network(entry, &format!("network.lan[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let cameras = cameras
        .map(|raw| self::cameras(raw, known, &uplink, wan.as_ref()))
        .transpose()?;
    if let Some(cameras) = &cameras {
        let subnet = IpNet::V4(cameras.subnet());
        for (i, net) in lan.iter().flatten().enumerate() {
            if net.contains(&subnet.network()) || subnet.contains(&net.network()) {
                return Err(Problem::unlocated(
                    format!("network.lan[{i}]"),
                    format!("{net} overlaps the camera subnet {subnet}"),
                ));
            }
        }
        if let Some(forward) = forwarding.forwards.iter().find(
            |f| matches!(f.target, std::net::IpAddr::V4(ip) if subnet.contains(&std::net::IpAddr::V4(ip))),
        ) {
            return Err(Problem::unlocated(
                "forward",
                format!(
                    "forward {:?} targets {}, a camera: cameras are never reachable from outside",
                    forward.name, forward.target
                ),
            ));
        }
    }
    Ok(Some(Network {
        uplink: uplink.into_inner(),
        wan: wan.map(Spanned::into_inner),
        lan,
        cameras,
    }))
}

fn cameras(
    raw: RawCameras,
    known: &[RawCamera],
    uplink: &Spanned<String>,
    wan: Option<&Spanned<String>>,
) -> Result<Cameras, Problem> {
    interface_name(&raw.interface, "cameras.interface")?;
    let parent = raw.interface.get_ref();
    if parent == uplink.get_ref() || wan.is_some_and(|wan| parent == wan.get_ref()) {
        return Err(Problem::new(
            raw.interface.span(),
            "cameras.interface",
            "the cameras need a NIC of their own, not the uplink's or the WAN's",
        ));
    }
    let vlan = match raw.vlan {
        None => None,
        Some(id) => {
            let vid = *id.get_ref();
            if !(1..=4094).contains(&vid) {
                return Err(Problem::new(
                    id.span(),
                    "cameras.vlan",
                    format!("must be 1 to 4094, got {vid}"),
                ));
            }
            if parent.len() + 1 + vid.to_string().len() > MAX_INTERFACE_NAME {
                return Err(Problem::new(
                    id.span(),
                    "cameras.vlan",
                    format!("\"{parent}.{vid}\" is longer than Linux's {MAX_INTERFACE_NAME}-character limit"),
                ));
            }
            Some(vid)
        }
    };
    let address = camera_address(&raw.address)?;
    let subnet = address.trunc();
    let mut dvr_hosts = Vec::new();
    for (i, entry) in raw
        .dvr_hosts
        .map(Spanned::into_inner)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let key = format!("cameras.dvr_hosts[{i}]");
        let IpNet::V4(host) = super::proxy::network(entry, &key)? else {
            return Err(Problem::new(
                entry.span(),
                key,
                "cameras are IPv4-only: DVR hosts are IPv4 addresses",
            ));
        };
        if subnet.contains(&host.network()) || host.contains(&subnet.network()) {
            return Err(Problem::new(
                entry.span(),
                key,
                format!("{host} overlaps the camera subnet {subnet}: a DVR is a host on the home LAN"),
            ));
        }
        dvr_hosts.push(host);
    }
    let ports = match raw.ports {
        None => DEFAULT_CAMERA_PORTS.to_vec(),
        Some(list) => {
            let span = list.span();
            let mut ports = Vec::new();
            for (i, port) in list.into_inner().into_iter().enumerate() {
                if *port.get_ref() == 0 {
                    return Err(Problem::new(
                        port.span(),
                        format!("cameras.ports[{i}]"),
                        "port 0 is not a port",
                    ));
                }
                ports.push(port.into_inner());
            }
            if ports.is_empty() {
                return Err(Problem::new(
                    span,
                    "cameras.ports",
                    "list at least one port (554 for RTSP), or leave `dvr_hosts` empty",
                ));
            }
            ports.sort_unstable();
            ports.dedup();
            ports
        }
    };
    let known = known_cameras(known, address)?;
    Ok(Cameras {
        parent: parent.clone(),
        vlan,
        address,
        dvr_hosts,
        ports,
        known,
    })
}

fn known_cameras(raw: &[RawCamera], camgate: Ipv4Net) -> Result<Vec<KnownCamera>, Problem> {
    let subnet = camgate.trunc();
    let mut known: Vec<KnownCamera> = Vec::new();
    for (i, camera) in raw.iter().enumerate() {
        let key = |field: &str| format!("camera[{i}].{field}");
        super::proxy::identifier(camera.name.get_ref(), camera.name.span(), &key("name"), "camera")?;
        let mac = camera.mac.get_ref().to_ascii_lowercase();
        let is_mac = mac.len() == 17
            && mac.split(':').count() == 6
            && mac
                .split(':')
                .all(|pair| pair.len() == 2 && pair.bytes().all(|b| b.is_ascii_hexdigit()));
        if !is_mac {
            return Err(Problem::new(
                camera.mac.span(),
                key("mac"),
                format!("{mac:?} is not a MAC address like \"aa:bb:cc:dd:ee:ff\""),
            ));
        }
        let text = camera.address.get_ref();
        let address: Ipv4Addr = text.parse().map_err(|_| {
            Problem::new(
                camera.address.span(),
                key("address"),
                format!("{text:?} is not an IPv4 address"),
            )
        })?;
        if !subnet.contains(&address)
            || address == subnet.network()
            || address == subnet.broadcast()
            || address == camgate.addr()
        {
            return Err(Problem::new(
                camera.address.span(),
                key("address"),
                format!("{address} is not a free host address of the camera subnet {subnet}"),
            ));
        }
        let name = camera.name.get_ref().clone();
        if let Some(other) = known
            .iter()
            .find(|k| k.name == name || k.mac == mac || k.address == address)
        {
            return Err(Problem::new(
                camera.address.span(),
                key("address"),
                format!(
                    "camera {name:?} shares its name, MAC or address with camera {:?}",
                    other.name
                ),
            ));
        }
        let login = match (&camera.username, &camera.password) {
            (None, None) => None,
            (Some(username), Some(password)) => Some(CameraLogin {
                username: username.get_ref().clone(),
                password: password.get_ref().clone(),
            }),
            (Some(given), None) | (None, Some(given)) => {
                return Err(Problem::new(
                    given.span(),
                    key("password"),
                    "set the camera's username and password together".to_owned(),
                ));
            }
        };
        known.push(KnownCamera {
            name,
            mac,
            address,
            login,
        });
    }
    Ok(known)
}

/// camgate's address on the camera segment: a host address with a prefix
/// that leaves room for cameras.
fn camera_address(value: &Spanned<String>) -> Result<Ipv4Net, Problem> {
    let text = value.get_ref();
    let problem = |message: String| Problem::new(value.span(), "cameras.address", message);
    let address: Ipv4Net = text.parse().map_err(|_| {
        problem(format!(
            "{text:?} is not an IPv4 address with a prefix like \"10.77.0.1/24\""
        ))
    })?;
    if !(8..=30).contains(&address.prefix_len()) {
        return Err(problem(format!(
            "the prefix must be /8 to /30, got /{}",
            address.prefix_len()
        )));
    }
    if address.addr() == address.network() || address.addr() == address.broadcast() {
        return Err(problem(format!(
            "{} is the subnet's network or broadcast address; use a host address such as {}",
            address.addr(),
            Ipv4Addr::from(u32::from(address.network()) + 1)
        )));
    }
    if !address.addr().is_private() {
        return Err(problem(format!(
            "{} is not a private address (10/8, 172.16/12, 192.168/16): cameras never get public ones",
            address.addr()
        )));
    }
    Ok(address)
}

/// Linux's IFNAMSIZ minus the terminating NUL.
const MAX_INTERFACE_NAME: usize = 15;

fn interface_name(value: &Spanned<String>, key: &str) -> Result<(), Problem> {
    let name = value.get_ref();
    let valid = !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if valid {
        Ok(())
    } else {
        Err(Problem::new(
            value.span(),
            key,
            format!(
                "{name:?} is not an interface name (1 to {MAX_INTERFACE_NAME} characters, no '/', ':' or spaces)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, parse};

    fn network_of(text: &str) -> Option<Network> {
        parse(text, std::path::Path::new("test.toml"), Overrides::default())
            .expect("valid")
            .network
    }

    #[test]
    fn roles_and_camera_segment_with_defaults() {
        let network = network_of(
            "[network]\nuplink = \"eth0\"\n[cameras]\ninterface = \"eth1\"\nvlan = 30\naddress = \"10.77.0.1/24\"\n\
             dvr_hosts = [\"192.168.1.50\", \"192.168.1.64/28\"]\n",
        )
        .expect("configured");
        assert_eq!(network.uplink, "eth0");
        assert_eq!(network.wan, None);
        assert_eq!(network.lan, None, "the uplink's subnets, read at apply");
        let cameras = network.cameras.expect("cameras");
        assert_eq!(cameras.interface(), "eth1.30");
        assert_eq!(cameras.subnet().to_string(), "10.77.0.0/24");
        assert_eq!(cameras.address.addr().to_string(), "10.77.0.1");
        assert_eq!(
            cameras
                .dvr_hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["192.168.1.50/32", "192.168.1.64/28"]
        );
        assert_eq!(cameras.ports, DEFAULT_CAMERA_PORTS);
    }

    #[test]
    fn no_roles_no_isolation_and_ports_are_sorted_once() {
        assert_eq!(network_of("[daemon]\n"), None);
        let network = network_of(
            "[network]\nuplink = \"eth0\"\nwan = \"eth2\"\nlan = [\"192.168.1.0/24\"]\n[cameras]\n\
             interface = \"eth1\"\naddress = \"172.16.5.1/24\"\nports = [8554, 554, 554]\n",
        )
        .expect("configured");
        assert_eq!(network.wan.as_deref(), Some("eth2"));
        assert_eq!(network.lan.expect("given")[0].to_string(), "192.168.1.0/24");
        assert_eq!(network.cameras.expect("cameras").ports, [554, 8554]);
    }
}
