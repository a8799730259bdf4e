//! Routes, addresses and the camera NIC over rtnetlink: the kernel's own
//! route decision for a target (`RTM_GETROUTE` with a destination), the
//! default routes of the main table, an interface's addresses, and the
//! camera NIC's set-up (VLAN sub-interface, address, link state, permanent
//! neighbour entries), each step only where the kernel's state differs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use nix::errno::Errno;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkInfo, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType};
use rtnetlink::{Handle, LinkUnspec, LinkVlan};

use super::FirewallError;
use crate::config::network::Cameras;

/// The interface the kernel would send a packet to `target` through
/// (`ip route get`).
pub(super) fn route_interface(target: IpAddr) -> Result<String, FirewallError> {
    let failed = |reason: String| FirewallError::Route { target, reason };
    session(failed, async |handle| {
        let mut query = RouteMessage::default();
        query.header.address_family = family(target);
        query.header.destination_prefix_length = if target.is_ipv4() { 32 } else { 128 };
        query
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(target)));
        // A destination makes it a lookup, not a dump: one answer.
        let route = handle
            .route()
            .get(query)
            .execute()
            .try_next()
            .await
            .map_err(|e| failed(describe(&e)))?
            .ok_or_else(|| failed("no route".to_owned()))?;
        let index = route
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            })
            .ok_or_else(|| failed("no route".to_owned()))?;
        link_name(&handle, index).await.map_err(failed)
    })
}

/// Interfaces of the main table's default routes (prefix length 0), both
/// families, multipath next hops included.
pub(super) fn default_route_interfaces() -> Result<Vec<String>, FirewallError> {
    let failed = |reason: String| FirewallError::Nft(format!("cannot read the default routes: {reason}"));
    session(failed, async |handle| {
        let mut indexes: Vec<u32> = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            // Without a destination, a dump of every table: filtered here.
            let routes: Vec<RouteMessage> = handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| failed(describe(&e)))?;
            for route in routes.iter().filter(|r| is_main_default(r, family)) {
                for attribute in &route.attributes {
                    match attribute {
                        RouteAttribute::Oif(index) => indexes.push(*index),
                        RouteAttribute::MultiPath(hops) => {
                            indexes.extend(hops.iter().map(|hop| hop.interface_index));
                        }
                        _ => {}
                    }
                }
            }
        }
        let names = link_names(&handle).await.map_err(failed)?;
        let mut interfaces: Vec<String> = Vec::new();
        for index in indexes {
            if let Some(name) = names.get(&index)
                && !interfaces.contains(name)
            {
                interfaces.push(name.clone());
            }
        }
        Ok(interfaces)
    })
}

/// A network interface as the setup wizard shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Nic {
    pub name: String,
    /// "ethernet", or the kernel's link kind ("vlan", "veth", "bridge", …).
    pub kind: String,
    pub mac: Option<String>,
    /// The kernel's operational state, lower case ("up", "down", "lowerlayerdown", …).
    pub state: String,
    /// A cable (or peer) is connected.
    pub carrier: bool,
    pub addresses: Vec<IpNet>,
    /// The default route leaves through it: the uplink, most likely.
    pub default_route: bool,
}

/// Every interface but loopback, by name.
pub fn interfaces() -> Result<Vec<Nic>, FirewallError> {
    let defaults = default_route_interfaces()?;
    let failed = |reason: String| FirewallError::Nft(format!("cannot list the interfaces: {reason}"));
    session(failed, async |handle| {
        let links: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| failed(describe(&e)))?;
        let addresses: Vec<AddressMessage> = handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| failed(describe(&e)))?;
        let mut nics: Vec<Nic> = links
            .iter()
            .filter(|link| link.header.link_layer_type != LinkLayerType::Loopback)
            .filter_map(|link| {
                let name = name_of(link)?;
                Some(Nic {
                    kind: link_kind(link),
                    mac: link
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                            _ => None,
                        })
                        .map(|mac| format_mac(&mac)),
                    state: link
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            LinkAttribute::OperState(state) => Some(state.to_string().to_ascii_lowercase()),
                            _ => None,
                        })
                        .unwrap_or_else(|| "unknown".to_owned()),
                    carrier: link.attributes.contains(&LinkAttribute::Carrier(1)),
                    addresses: addresses
                        .iter()
                        .filter(|address| address.header.index == link.header.index)
                        .filter_map(address_net)
                        .collect(),
                    default_route: defaults.contains(&name),
                    name,
                })
            })
            .collect();
        nics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nics)
    })
}

fn link_kind(link: &LinkMessage) -> String {
    let kind = link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind.to_string()),
            _ => None,
        }),
        _ => None,
    });
    match kind {
        Some(kind) => kind,
        None if link.header.link_layer_type == LinkLayerType::Ether => "ethernet".to_owned(),
        None => format!("{:?}", link.header.link_layer_type).to_ascii_lowercase(),
    }
}

/// `interface`'s addresses with their prefix lengths.
pub(super) fn addresses(interface: &str) -> Result<Vec<IpNet>, FirewallError> {
    let failed = |reason: String| FirewallError::Interface {
        interface: interface.to_owned(),
        reason,
    };
    session(failed, async |handle| {
        let index = link_index(&handle, interface).await.map_err(failed)?;
        let addresses = link_addresses(&handle, index).await.map_err(failed)?;
        Ok(addresses.iter().filter_map(address_net).collect())
    })
}

/// The parent NIC must exist; the VLAN sub-interface is created (down) if
/// configured and missing.
pub(super) fn create_camera_interface(cameras: &Cameras) -> Result<(), FirewallError> {
    let interface = cameras.interface();
    let failed = |reason: String| FirewallError::Interface {
        interface: interface.clone(),
        reason,
    };
    let parent_failed = |reason: String| FirewallError::Interface {
        interface: cameras.parent.clone(),
        reason,
    };
    session(failed, async |handle| {
        let parent = link_index(&handle, &cameras.parent)
            .await
            .map_err(parent_failed)?;
        let Some(vlan) = cameras.vlan else {
            return Ok(());
        };
        match find_link(&handle, &interface).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) => return Err(failed(describe(&e))),
        }
        let added = handle
            .link()
            .add(LinkVlan::new(&interface, parent, vlan).build())
            .execute()
            .await;
        match added {
            // Created meanwhile by someone else: there all the same.
            Err(e) if errno(&e) == Some(Errno::EEXIST) => Ok(()),
            result => result.map_err(|e| {
                let why = if errno(&e) == Some(Errno::EOPNOTSUPP) {
                    "this kernel has no VLAN support (8021q)".to_owned()
                } else {
                    describe(&e)
                };
                failed(format!("cannot create VLAN {vlan} on {}: {why}", cameras.parent))
            }),
        }
    })
}

/// The parent and the camera interface up, IPv6 off on it, camgate's
/// address its only IPv4 one (replaced only when it is not already so: no
/// flap), and a permanent neighbour entry per known camera, stale
/// permanent ones removed.
pub(super) fn set_up_camera_interface(cameras: &Cameras) -> Result<(), FirewallError> {
    let interface = cameras.interface();
    let failed = |reason: String| FirewallError::Interface {
        interface: interface.clone(),
        reason,
    };
    // Parsed before anything changes.
    let pins: Vec<(Ipv4Addr, [u8; 6])> = cameras
        .known
        .iter()
        .map(|camera| {
            parse_mac(&camera.mac)
                .map(|mac| (camera.address, mac))
                .ok_or_else(|| {
                    failed(format!(
                        "camera {:?}: unreadable MAC {:?}",
                        camera.name, camera.mac
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    let wanted = cameras.address;
    session(failed, async |handle| {
        let parent =
            link_index(&handle, &cameras.parent)
                .await
                .map_err(|reason| FirewallError::Interface {
                    interface: cameras.parent.clone(),
                    reason,
                })?;
        set_up(&handle, parent)
            .await
            .map_err(|e| failed(format!("cannot bring {} up: {}", cameras.parent, describe(&e))))?;
        let index = link_index(&handle, &interface).await.map_err(failed)?;

        // A kernel without IPv6 (ipv6.disable=1) has no such file: nothing to turn off.
        if Path::new("/proc/sys/net/ipv6").exists() {
            let ipv6_off = format!("/proc/sys/net/ipv6/conf/{interface}/disable_ipv6");
            std::fs::write(&ipv6_off, "1").map_err(|e| failed(format!("{ipv6_off}: {e}")))?;
        }

        let current: Vec<(IpNet, AddressMessage)> = link_addresses(&handle, index)
            .await
            .map_err(failed)?
            .into_iter()
            .filter(|message| message.header.family == AddressFamily::Inet)
            .filter_map(|message| Some((address_net(&message)?, message)))
            .collect();
        if current.iter().map(|(net, _)| *net).ne([IpNet::V4(wanted)]) {
            for (net, message) in current {
                match handle.address().del(message).execute().await {
                    // Gone with the primary address it was secondary to.
                    Err(e) if errno(&e) == Some(Errno::EADDRNOTAVAIL) => {}
                    result => result
                        .map_err(|e| failed(format!("cannot remove address {net}: {}", describe(&e))))?,
                }
            }
            handle
                .address()
                .add(index, IpAddr::V4(wanted.addr()), wanted.prefix_len())
                .execute()
                .await
                .map_err(|e| failed(format!("cannot add address {wanted}: {}", describe(&e))))?;
        }

        set_up(&handle, index)
            .await
            .map_err(|e| failed(format!("cannot bring it up: {}", describe(&e))))?;

        // Known cameras' addresses resolve only to their own MACs: no ARP
        // claim moves a permanent entry (dnsmasq, which could, broadcasts
        // its DHCP answers instead of writing the ARP cache).
        let mut neighbours = handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        let mut stale: Vec<Ipv4Addr> = Vec::new();
        while let Some(neighbour) = neighbours
            .try_next()
            .await
            .map_err(|e| failed(format!("cannot read the neighbour table: {}", describe(&e))))?
        {
            if neighbour.header.ifindex == index
                && neighbour.header.family == AddressFamily::Inet
                && neighbour.header.state == NeighbourState::Permanent
                && let Some(address) = neighbour_address(&neighbour)
                && !pins.iter().any(|(known, _)| *known == address)
            {
                stale.push(address);
            }
        }
        for address in stale {
            let mut entry = NeighbourMessage::default();
            entry.header.family = AddressFamily::Inet;
            entry.header.ifindex = index;
            entry
                .attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(address)));
            match handle.neighbours().del(entry).execute().await {
                Err(e) if errno(&e) == Some(Errno::ENOENT) => {}
                result => result.map_err(|e| {
                    failed(format!(
                        "cannot remove the neighbour entry for {address}: {}",
                        describe(&e)
                    ))
                })?,
            }
        }
        for (address, mac) in &pins {
            // NLM_F_CREATE | NLM_F_REPLACE: an existing entry becomes this one.
            handle
                .neighbours()
                .add(index, IpAddr::V4(*address))
                .link_layer_address(mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| {
                    failed(format!(
                        "cannot pin {address} to {}: {}",
                        format_mac(mac),
                        describe(&e)
                    ))
                })?;
        }
        Ok(())
    })
}

/// Runs `work` with a fresh rtnetlink connection and waits for it.
///
/// The [`Backend`](super::Backend) is synchronous, and its callers (daemon
/// start, reload) may run on a tokio runtime's thread, where blocking on
/// another runtime panics. So the exchange runs on a helper thread of its
/// own with a private current-thread runtime, scoped so `work` can borrow;
/// the caller blocks for those few kernel round trips, as it did for `ip`.
fn session<T: Send>(
    failed: impl Fn(String) -> FirewallError + Sync,
    work: impl AsyncFnOnce(Handle) -> Result<T, FirewallError> + Send,
) -> Result<T, FirewallError> {
    let failed = &failed;
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("rtnetlink".to_owned())
            .spawn_scoped(scope, move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
                    Ok(runtime) => runtime,
                    Err(e) => return Err(failed(format!("cannot start a runtime for netlink: {e}"))),
                };
                runtime.block_on(async move {
                    // The socket registers with the runtime: created inside it.
                    let (connection, handle, _) = match rtnetlink::new_connection() {
                        Ok(parts) => parts,
                        Err(e) => return Err(failed(format!("cannot open a netlink socket: {e}"))),
                    };
                    tokio::select! {
                        result = work(handle) => result,
                        () = connection => Err(failed("the netlink connection ended".to_owned())),
                    }
                })
            });
        match helper {
            Ok(helper) => helper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => Err(failed(format!("cannot start a netlink thread: {e}"))),
        }
    })
}

fn family(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A unicast default route of the main table (`ip route show default`).
fn is_main_default(route: &RouteMessage, family: AddressFamily) -> bool {
    // Tables above 255 are only in the attribute; the header then says 252.
    let table = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or_else(|| u32::from(route.header.table));
    route.header.address_family == family
        && route.header.destination_prefix_length == 0
        && route.header.kind == RouteType::Unicast
        && table == u32::from(RouteHeader::RT_TABLE_MAIN)
}

/// The link named `name`, if there is one.
async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match handle.link().get().match_name(name).execute().try_next().await {
        Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(None),
        result => result,
    }
}

/// The index of the link named `name`; its absence is an error.
async fn link_index(handle: &Handle, name: &str) -> Result<u32, String> {
    match find_link(handle, name).await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err("no such interface".to_owned()),
        Err(e) => Err(describe(&e)),
    }
}

async fn link_name(handle: &Handle, index: u32) -> Result<String, String> {
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(|e| format!("interface {index}: {}", describe(&e)))?
        .ok_or_else(|| format!("interface {index}: no such interface"))?;
    name_of(&link).ok_or_else(|| format!("interface {index} has no name"))
}

/// Every link's name, by index.
async fn link_names(handle: &Handle) -> Result<HashMap<u32, String>, String> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| format!("cannot list the interfaces: {}", describe(&e)))?;
    Ok(links
        .iter()
        .filter_map(|link| Some((link.header.index, name_of(link)?)))
        .collect())
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// The addresses on link `index`, both families (the dump has them all;
/// the kernel does not filter it by link).
async fn link_addresses(handle: &Handle, index: u32) -> Result<Vec<AddressMessage>, String> {
    handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| format!("cannot read the addresses: {}", describe(&e)))
}

/// The local address with its prefix length; IFA_LOCAL before IFA_ADDRESS,
/// which is the peer's on point-to-point links (as `ip`'s "local").
fn address_net(message: &AddressMessage) -> Option<IpNet> {
    let find = |local: bool| {
        message.attributes.iter().find_map(|attribute| match attribute {
            AddressAttribute::Local(address) if local => Some(*address),
            AddressAttribute::Address(address) if !local => Some(*address),
            _ => None,
        })
    };
    let address = find(true).or_else(|| find(false))?;
    IpNet::new(address, message.header.prefix_len).ok()
}

fn neighbour_address(neighbour: &NeighbourMessage) -> Option<Ipv4Addr> {
    neighbour.attributes.iter().find_map(|attribute| match attribute {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(address)) => Some(*address),
        _ => None,
    })
}

/// Sets the link up; a no-op when it is.
async fn set_up(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

/// The errno of a kernel refusal.
fn errno(error: &rtnetlink::Error) -> Option<Errno> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(Errno::from_raw(message.raw_code().abs())),
        _ => None,
    }
}

/// The kernel's refusal in words (`ip` said "RTNETLINK answers: …").
fn describe(error: &rtnetlink::Error) -> String {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io().to_string(),
        other => other.to_string(),
    }
}

/// "aa:bb:cc:dd:ee:ff" (validated config) → bytes.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_read_as_the_config_writes_them() {
        assert_eq!(
            parse_mac("aa:bb:cc:00:11:22"),
            Some([0xaa, 0xbb, 0xcc, 0x00, 0x11, 0x22])
        );
        assert_eq!(
            format_mac(&[0xaa, 0xbb, 0xcc, 0x00, 0x11, 0x22]),
            "aa:bb:cc:00:11:22"
        );
        for bad in [
            "",
            "aa:bb:cc:00:11",
            "aa:bb:cc:00:11:22:33",
            "aa:bb:cc:00:11:2",
            "aa:bb:cc:00:11:zz",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_the_main_tables_unicast_default_routes_count() {
        let route = |family: AddressFamily, prefix: u8, table: u8, kind: RouteType| {
            let mut route = RouteMessage::default();
            route.header.address_family = family;
            route.header.destination_prefix_length = prefix;
            route.header.table = table;
            route.header.kind = kind;
            route
        };
        let main = RouteHeader::RT_TABLE_MAIN;
        let inet = AddressFamily::Inet;
        assert!(is_main_default(&route(inet, 0, main, RouteType::Unicast), inet));
        assert!(!is_main_default(
            &route(inet, 0, main, RouteType::Unicast),
            AddressFamily::Inet6
        ));
        assert!(!is_main_default(&route(inet, 24, main, RouteType::Unicast), inet));
        assert!(!is_main_default(&route(inet, 0, 255, RouteType::Unicast), inet));
        assert!(!is_main_default(
            &route(inet, 0, main, RouteType::Unreachable),
            inet
        ));
        let mut high = route(inet, 0, 252, RouteType::Unicast);
        high.attributes.push(RouteAttribute::Table(1000));
        assert!(!is_main_default(&high, inet));
        let mut explicit = route(inet, 0, main, RouteType::Unicast);
        explicit.attributes.push(RouteAttribute::Table(254));
        assert!(is_main_default(&explicit, inet));
    }

    /// Inside a caller's runtime, as `Daemon::start` runs: no nested
    /// `block_on` panic, whatever the outcome of the lookup.
    #[tokio::test]
    async fn lookups_run_inside_a_runtime() {
        let result = addresses("lo");
        assert!(
            matches!(&result, Ok(nets) if nets.iter().any(|n| n.addr().is_loopback()))
                || matches!(&result, Err(FirewallError::Interface { .. })),
            "{result:?}"
        );
        match addresses("camgate-none0") {
            Err(FirewallError::Interface { interface, reason }) => {
                assert_eq!(interface, "camgate-none0");
                // Sandboxes without netlink refuse the socket instead.
                assert!(
                    reason == "no such interface" || reason.contains("netlink"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
