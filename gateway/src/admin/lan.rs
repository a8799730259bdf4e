//! Who may use the admin listener at all: people on camgate's own network.
//! The firewall admits only them in appliance mode; this check holds the
//! same line everywhere (dev mode, setup mode, a firewall that failed).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::network::Network;

/// Whether `client` may reach the admin interface: the machine itself; with
/// `[network] lan`, an address in it; otherwise an address on one of
/// camgate's own networks except the camera subnet.
pub(super) fn admits(client: IpAddr, network: Option<&Network>) -> bool {
    if client.is_loopback() {
        return true;
    }
    if let Some(lan) = network.and_then(|network| network.lan.as_ref()) {
        return lan.iter().any(|net| net.contains(&client));
    }
    let cameras = network
        .and_then(|network| network.cameras.as_ref())
        .map(|cameras| IpNet::V4(cameras.address.trunc()));
    on_link(client, &local_networks()) && !cameras.is_some_and(|subnet| subnet.contains(&client))
}

/// True for the machine itself, and for addresses on a network one of its
/// interfaces is on: someone in the building, not someone whose packets a
/// router forwarded. Never link-local addresses: during setup every NIC
/// may have one, the camera NIC too, and no browser uses them.
pub(super) fn on_link(client: IpAddr, networks: &[IpNet]) -> bool {
    if client.is_loopback() {
        return true;
    }
    let link_local = match client {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    !link_local && networks.iter().any(|net| net.contains(&client))
}

/// The networks of this machine's non-loopback interfaces.
pub(super) fn local_networks() -> Vec<IpNet> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter(|interface| {
            !interface
                .flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|interface| {
            let (address, netmask) = (interface.address?, interface.netmask?);
            if let (Some(ip), Some(mask)) = (address.as_sockaddr_in(), netmask.as_sockaddr_in()) {
                return IpNet::with_netmask(IpAddr::V4(ip.ip()), IpAddr::V4(mask.ip())).ok();
            }
            let (ip, mask) = (address.as_sockaddr_in6()?, netmask.as_sockaddr_in6()?);
            IpNet::with_netmask(IpAddr::V6(ip.ip()), IpAddr::V6(mask.ip())).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use ipnet::IpNet;

    use super::on_link;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn only_on_link_clients_and_never_link_local() {
        let networks = [
            net("192.168.1.20/24"),
            net("169.254.3.4/16"),
            net("fd00::5/64"),
            net("fe80::1/64"),
        ];
        for (client, expected) in [
            ("127.0.0.1", true),
            ("::1", true),
            ("192.168.1.77", true),
            ("fd00::99", true),
            ("169.254.9.9", false),
            ("fe80::99", false),
            ("192.168.2.1", false),
            ("203.0.113.9", false),
        ] {
            assert_eq!(on_link(client.parse().unwrap(), &networks), expected, "{client}");
        }
        assert!(!on_link(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)), &[]));
    }
}
