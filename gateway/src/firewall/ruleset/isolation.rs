//! Pure: the camera segment's isolation and the admin listener's reach, as
//! sets, chains and rules in the same batch as the forwards.
//!
//! - `input` (the table's, after its ban rules): packets from the camera NIC
//!   go to `camera-in` (camgate's DHCP, DNS and NTP, discovery replies and
//!   ping; nothing else); the admin listener's and the restream's ports go
//!   to `admin-in` (the uplink's LAN ranges only).
//! - `forward` (the forwards' chain, policy drop): anything leaving by the
//!   camera NIC goes to `to-cameras` (DVR hosts, from the uplink, to the
//!   camera ports, checked on every packet so a removed DVR loses an open
//!   connection at once); anything entering from it to `from-cameras`
//!   (answers on DVR connections; the rest is counted by kind and dropped).
//! - `postrouting-nat`: DVR connections are masqueraded, so cameras see camgate only.
//!
//! Static sets are re-filled on every apply (`flush table` keeps set
//! elements, so they are flushed first).

use std::borrow::Cow;
use std::collections::HashSet;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Prefix, SetItem};
use nftables::schema::{Element, FlushObject, NfCmd, NfListObject, Set, SetFlag, SetType, SetTypeValue};
use nftables::stmt::{Limit, Log, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::{
    FORWARD, INPUT, SNAT, TABLE, base_chain, ct, ct_state, equals, field, in_named_set, jump, named_counter,
    regular_chain, rule, set,
};
use crate::config::forward::{PortRange, Protocol};
use crate::config::network::Cameras;
use crate::firewall::blocked::{DroppedAt, LOG_GROUP, LOG_SNAPLEN, MIRAI_PORTS, P2P_CLOUD_PORTS};

const CAMERA_IN: &str = "camera-in";
const ADMIN_IN: &str = "admin-in";
const TO_CAMERAS: &str = "to-cameras";
const FROM_CAMERAS: &str = "from-cameras";
const WAN_IN: &str = "wan-in";

const CAMERA_INGRESS: &str = "camera-ingress";
const CAMERA_SPOOFED: &str = "camera-spoofed";
const CAMERA_PREROUTING: &str = "camera-prerouting";
const CAMERA_EGRESS: &str = "camera-egress";
/// Logged packets per second and rule (the counters count them all): a
/// flooding camera cannot flood camgate's report reader.
const LOG_RATE: u32 = 200;
const LOG_BURST: u32 = 400;

/// Named counters of the isolation rules, shown in status.
pub const COUNTERS: [&str; 9] = [
    "camera-in-dropped",
    "camera-mirai",
    "camera-p2p-cloud",
    "camera-egress",
    "camera-ipv6",
    "camera-spoofed",
    "to-cameras-dropped",
    "admin-dropped",
    "wan-dropped",
];

/// What the isolation rules need, resolved: LAN ranges read from the uplink
/// when the config names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    pub uplink: String,
    /// A NIC facing the internet directly (camgate as the edge router).
    pub wan: Option<String>,
    /// What the WAN NIC admits besides answers: camgate's own listeners
    /// (the proxy, userspace forwards, the STUN responder).
    pub wan_open: Vec<(Protocol, PortRange)>,
    pub lan: Vec<IpNet>,
    /// The admin listener's and the restream's (RTSP) ports on
    /// non-loopback addresses: loopback and the home LAN only.
    pub lan_ports: Vec<u16>,
    pub cameras: Option<Cameras>,
}

/// Sets, counters and the `input` chain with its sub-chains; call before
/// the forward rules so the camera jumps come first in `forward`.
pub(super) fn add_front(batch: &mut Batch<'static>, isolation: &Isolation) {
    for name in COUNTERS {
        batch.add(super::counter(name));
    }
    let (lan4, lan6): (Vec<IpNet>, Vec<IpNet>) =
        isolation.lan.iter().partition(|net| matches!(net, IpNet::V4(_)));
    static_set(
        batch,
        "lan4",
        SetTypeValue::Single(SetType::Ipv4Addr),
        true,
        lan4.into_iter().map(prefix).collect(),
    );
    static_set(
        batch,
        "lan6",
        SetTypeValue::Single(SetType::Ipv6Addr),
        true,
        lan6.into_iter().map(prefix).collect(),
    );
    for chain in [
        CAMERA_IN,
        ADMIN_IN,
        TO_CAMERAS,
        FROM_CAMERAS,
        WAN_IN,
        CAMERA_SPOOFED,
        CAMERA_EGRESS,
    ] {
        batch.add(NfListObject::Chain(regular_chain(chain)));
    }
    if let Some(cameras) = &isolation.cameras {
        camera_sets(batch, cameras);
        camera_ingress(batch, cameras);
        camera_in(batch, cameras);
        let interface = cameras.interface();
        batch.add(rule(
            FORWARD,
            vec![interface_is(MetaKey::Oifname, &interface), jump(TO_CAMERAS)],
        ));
        batch.add(rule(
            FORWARD,
            vec![interface_is(MetaKey::Iifname, &interface), jump(FROM_CAMERAS)],
        ));
        to_cameras(batch, &isolation.uplink);
        from_cameras(batch);
        camera_egress(batch, &interface);
        batch.add(rule(
            SNAT,
            vec![
                interface_is(MetaKey::Oifname, &interface),
                in_named_set(field("ip", "saddr"), "dvr-hosts"),
                Statement::Masquerade(None),
            ],
        ));
    }
    if let Some(wan) = &isolation.wan {
        wan_in(batch, wan, &isolation.wan_open);
    }
    if !isolation.lan_ports.is_empty() {
        batch.add(rule(
            INPUT,
            vec![
                equals(field("tcp", "dport"), ports(&isolation.lan_ports)),
                jump(ADMIN_IN),
            ],
        ));
        batch.add(rule(
            ADMIN_IN,
            vec![interface_is(MetaKey::Iifname, "lo"), Statement::Accept(None)],
        ));
        for (family, set) in [("ip", "lan4"), ("ip6", "lan6")] {
            batch.add(rule(
                ADMIN_IN,
                vec![
                    interface_is(MetaKey::Iifname, &isolation.uplink),
                    in_named_set(field(family, "saddr"), set),
                    Statement::Accept(None),
                ],
            ));
        }
        batch.add(rule(
            ADMIN_IN,
            vec![named_counter("admin-dropped"), Statement::Drop(None)],
        ));
    }
}

/// The WAN NIC admits answers, camgate's own listeners, ping and IPv6
/// neighbour discovery; nothing else (no SSH, no admin listener).
fn wan_in(batch: &mut Batch<'static>, wan: &str, open: &[(Protocol, PortRange)]) {
    batch.add(rule(
        INPUT,
        vec![interface_is(MetaKey::Iifname, wan), jump(WAN_IN)],
    ));
    batch.add(rule(
        WAN_IN,
        vec![ct_state(&["established", "related"]), Statement::Accept(None)],
    ));
    for (protocol, range) in open {
        batch.add(rule(
            WAN_IN,
            vec![
                equals(field(protocol.as_str(), "dport"), super::ports(*range)),
                Statement::Accept(None),
            ],
        ));
    }
    batch.add(rule(
        WAN_IN,
        vec![
            equals(field("icmp", "type"), Expression::String("echo-request".into())),
            super::limit_per_second(5),
            Statement::Accept(None),
        ],
    ));
    batch.add(rule(
        WAN_IN,
        vec![
            equals(
                field("icmpv6", "type"),
                Expression::Named(NamedExpression::Set(
                    ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-advert"]
                        .into_iter()
                        .map(|t| SetItem::Element(Expression::String(t.into())))
                        .collect(),
                )),
            ),
            Statement::Accept(None),
        ],
    ));
    batch.add(rule(
        WAN_IN,
        vec![named_counter("wan-dropped"), Statement::Drop(None)],
    ));
}

fn camera_sets(batch: &mut Batch<'static>, cameras: &Cameras) {
    static_set(
        batch,
        "cameras",
        SetTypeValue::Single(SetType::Ipv4Addr),
        true,
        vec![prefix(IpNet::V4(cameras.subnet()))],
    );
    static_set(
        batch,
        "dvr-hosts",
        SetTypeValue::Single(SetType::Ipv4Addr),
        true,
        cameras
            .dvr_hosts
            .iter()
            .map(|&host| prefix(IpNet::V4(host)))
            .collect(),
    );
    static_set(
        batch,
        "camera-ports",
        SetTypeValue::Single(SetType::InetService),
        false,
        numbers(&cameras.ports),
    );
    // Known cameras' addresses and the MAC each is pinned to.
    static_set(
        batch,
        "known-cameras",
        SetTypeValue::Single(SetType::Ipv4Addr),
        false,
        cameras
            .known
            .iter()
            .map(|camera| Expression::String(camera.address.to_string().into()))
            .collect(),
    );
    static_set(
        batch,
        "camera-macs",
        SetTypeValue::Concatenated(vec![SetType::Ipv4Addr, SetType::EtherAddr].into()),
        false,
        cameras
            .known
            .iter()
            .map(|camera| {
                Expression::Named(NamedExpression::Concat(vec![
                    Expression::String(camera.address.to_string().into()),
                    Expression::String(camera.mac.clone().into()),
                ]))
            })
            .collect(),
    );
    static_set(
        batch,
        "mirai-ports",
        SetTypeValue::Single(SetType::InetService),
        false,
        numbers(&MIRAI_PORTS),
    );
    static_set(
        batch,
        "p2p-cloud-ports",
        SetTypeValue::Single(SetType::InetService),
        false,
        numbers(&P2P_CLOUD_PORTS),
    );
}

/// What the camera NIC drops as it enters: a known camera's address from
/// another MAC (counted and logged), and IPv6 (camgate turns IPv6 off on
/// the camera NIC, so later hooks never see it): neighbour discovery and
/// multicast listener chatter counted, the rest counted and logged.
fn camera_ingress(batch: &mut Batch<'static>, cameras: &Cameras) {
    let interface = &cameras.interface();
    batch.add(NfListObject::Chain(nftables::schema::Chain {
        dev: Some(interface.to_owned().into()),
        ..base_chain(
            CAMERA_INGRESS,
            NfChainType::Filter,
            NfHook::Ingress,
            0,
            NfChainPolicy::Accept,
        )
    }));
    // The kernel adds a hook device to an existing chain rather than moving
    // it: after the camera NIC changes, the old one keeps a hook that these
    // rules no longer match.
    // A known camera's address from another MAC: a device posing as it.
    // (Its ARP claims never reach this hook — inet ingress sees only IP —
    // and cannot move the camera's permanent neighbour entry either.)
    batch.add(rule(
        CAMERA_INGRESS,
        vec![
            interface_is(MetaKey::Iifname, interface),
            meta_protocol("ip"),
            in_named_set(field("ip", "saddr"), "known-cameras"),
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Concat(vec![
                    field("ip", "saddr"),
                    field("ether", "saddr"),
                ])),
                right: Expression::String("@camera-macs".into()),
                op: Operator::NEQ,
            }),
            jump(CAMERA_SPOOFED),
        ],
    ));
    let mut counted = vec![named_counter("camera-spoofed")];
    counted.extend(report(DroppedAt::Spoofed));
    batch.add(rule(CAMERA_SPOOFED, counted));
    batch.add(rule(CAMERA_SPOOFED, vec![Statement::Drop(None)]));
    let ipv6_from_cameras = || vec![interface_is(MetaKey::Iifname, interface), meta_protocol("ip6")];
    let mut link_local = ipv6_from_cameras();
    link_local.extend([
        equals(
            field("icmpv6", "type"),
            Expression::Named(NamedExpression::Set(
                [
                    "nd-router-solicit",
                    "nd-neighbor-solicit",
                    "nd-neighbor-advert",
                    "mld-listener-report",
                    "mld-listener-done",
                    "mld2-listener-report",
                ]
                .into_iter()
                .map(|t| SetItem::Element(Expression::String(t.into())))
                .collect(),
            )),
        ),
        named_counter("camera-ipv6"),
        Statement::Drop(None),
    ]);
    batch.add(rule(CAMERA_INGRESS, link_local));
    let mut logged = ipv6_from_cameras();
    logged.extend(report(DroppedAt::Ingress));
    batch.add(rule(CAMERA_INGRESS, logged));
    let mut dropped = ipv6_from_cameras();
    dropped.extend([named_counter("camera-ipv6"), Statement::Drop(None)]);
    batch.add(rule(CAMERA_INGRESS, dropped));
}

/// The packet's network protocol (`ip`, `ip6`), as the ingress hook sees it.
fn meta_protocol(protocol: &'static str) -> Statement<'static> {
    equals(
        Expression::Named(NamedExpression::Meta(Meta {
            key: MetaKey::Protocol,
        })),
        Expression::String(protocol.into()),
    )
}

/// Logs the packet to camgate's report reader, within the rate; no
/// verdict, so the rules after it still count and drop.
fn report(dropped_at: DroppedAt) -> Vec<Statement<'static>> {
    vec![
        Statement::Limit(Limit {
            rate: LOG_RATE,
            rate_unit: None,
            per: Some("second".into()),
            burst: Some(LOG_BURST),
            burst_unit: None,
            inv: None,
        }),
        Statement::Log(Some(Log {
            prefix: Some(dropped_at.prefix().into()),
            group: Some(u32::from(LOG_GROUP)),
            snaplen: Some(LOG_SNAPLEN),
            ..Log::new(None)
        })),
    ]
}

/// What cameras may send to camgate itself.
fn camera_in(batch: &mut Batch<'static>, cameras: &Cameras) {
    batch.add(rule(
        INPUT,
        vec![
            interface_is(MetaKey::Iifname, &cameras.interface()),
            jump(CAMERA_IN),
        ],
    ));
    batch.add(rule(
        CAMERA_IN,
        vec![ct_state(&["established", "related"]), Statement::Accept(None)],
    ));
    // camgate's own broadcasts and multicasts on the camera NIC, looped back
    // (the kernel drops a local source arriving from the wire as martian).
    batch.add(rule(
        CAMERA_IN,
        vec![
            equals(
                Expression::Named(NamedExpression::Fib(Fib {
                    result: FibResult::Type,
                    flags: HashSet::from([FibFlag::Saddr]),
                })),
                Expression::String("local".into()),
            ),
            Statement::Accept(None),
        ],
    ));
    // DHCP discovery comes from 0.0.0.0, before the camera has an address.
    batch.add(rule(
        CAMERA_IN,
        vec![
            equals(field("udp", "dport"), Expression::Number(67)),
            Statement::Accept(None),
        ],
    ));
    let from_camera = in_named_set(field("ip", "saddr"), "cameras");
    for (protocol, port_field, services) in [
        ("udp", "dport", &[53, 123][..]),
        ("tcp", "dport", &[53][..]),
        ("udp", "sport", &[3702][..]),
    ] {
        // 3702 as source: WS-Discovery ProbeMatches answer camgate's probe by unicast,
        // which conntrack does not tie to the multicast probe.
        batch.add(rule(
            CAMERA_IN,
            vec![
                from_camera.clone(),
                equals(field(protocol, port_field), ports(services)),
                Statement::Accept(None),
            ],
        ));
    }
    batch.add(rule(
        CAMERA_IN,
        vec![
            from_camera,
            equals(field("icmp", "type"), Expression::String("echo-request".into())),
            super::limit_per_second(5),
            Statement::Accept(None),
        ],
    ));
    batch.add(rule(CAMERA_IN, report(DroppedAt::Input)));
    batch.add(rule(
        CAMERA_IN,
        vec![named_counter("camera-in-dropped"), Statement::Drop(None)],
    ));
}

/// DVR hosts on the uplink to the camera ports; every packet is checked, not
/// only new connections.
fn to_cameras(batch: &mut Batch<'static>, uplink: &str) {
    batch.add(rule(
        TO_CAMERAS,
        vec![
            interface_is(MetaKey::Iifname, uplink),
            in_named_set(field("ip", "saddr"), "dvr-hosts"),
            in_named_set(field("ip", "daddr"), "cameras"),
            in_named_set(field("tcp", "dport"), "camera-ports"),
            Statement::Accept(None),
        ],
    ));
    batch.add(rule(
        TO_CAMERAS,
        vec![named_counter("to-cameras-dropped"), Statement::Drop(None)],
    ));
}

/// Cameras start nothing: only their answers on DVR connections pass.
fn from_cameras(batch: &mut Batch<'static>) {
    batch.add(rule(
        FROM_CAMERAS,
        vec![
            equals(ct("direction"), Expression::String("reply".into())),
            ct_state(&["established"]),
            in_named_set(field("ip", "daddr"), "dvr-hosts"),
            Statement::Accept(None),
        ],
    ));
    batch.add(rule(
        FROM_CAMERAS,
        vec![named_counter("camera-egress"), Statement::Drop(None)],
    ));
}

/// What a camera starts towards anything but camgate itself, dropped before
/// routing: counted by kind and logged whether or not camgate forwards IP
/// at all (without forwarding the kernel would drop it unseen).
fn camera_egress(batch: &mut Batch<'static>, interface: &str) {
    batch.add(NfListObject::Chain(base_chain(
        CAMERA_PREROUTING,
        NfChainType::Filter,
        NfHook::Prerouting,
        -140,
        NfChainPolicy::Accept,
    )));
    let not_for_camgate = Expression::Named(NamedExpression::Set(
        ["local", "broadcast", "multicast"]
            .into_iter()
            .map(|t| SetItem::Element(Expression::String(t.into())))
            .collect(),
    ));
    batch.add(rule(
        CAMERA_PREROUTING,
        vec![
            interface_is(MetaKey::Iifname, interface),
            equals(ct("direction"), Expression::String("original".into())),
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Fib(Fib {
                    result: FibResult::Type,
                    flags: HashSet::from([FibFlag::Daddr]),
                })),
                right: not_for_camgate,
                op: Operator::NEQ,
            }),
            jump(CAMERA_EGRESS),
        ],
    ));
    batch.add(rule(CAMERA_EGRESS, report(DroppedAt::Forward)));
    for (protocol, set, counter) in [
        ("tcp", "mirai-ports", "camera-mirai"),
        ("udp", "p2p-cloud-ports", "camera-p2p-cloud"),
    ] {
        batch.add(rule(
            CAMERA_EGRESS,
            vec![
                in_named_set(field(protocol, "dport"), set),
                named_counter(counter),
                Statement::Drop(None),
            ],
        ));
    }
    batch.add(rule(
        CAMERA_EGRESS,
        vec![named_counter("camera-egress"), Statement::Drop(None)],
    ));
}

/// Declares the set, empties it and fills it with `elements`.
fn static_set(
    batch: &mut Batch<'static>,
    name: &'static str,
    kind: SetTypeValue<'static>,
    interval: bool,
    elements: Vec<Expression<'static>>,
) {
    let declared = Set {
        flags: interval.then(|| HashSet::from([SetFlag::Interval])),
        set_type: kind,
        ..set(name, SetType::Ipv4Addr)
    };
    batch.add(NfListObject::Set(Box::new(declared.clone())));
    batch.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(declared))));
    if !elements.is_empty() {
        batch.add(NfListObject::Element(Element {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            elem: Cow::Owned(elements),
        }));
    }
}

fn prefix(net: IpNet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.network().to_string().into())),
        len: u32::from(net.prefix_len()),
    }))
}

fn numbers(ports: &[u16]) -> Vec<Expression<'static>> {
    ports
        .iter()
        .map(|&port| Expression::Number(port.into()))
        .collect()
}

/// One port, or an anonymous set of them.
fn ports(ports: &[u16]) -> Expression<'static> {
    match ports {
        [port] => Expression::Number((*port).into()),
        _ => Expression::Named(NamedExpression::Set(
            ports
                .iter()
                .map(|&port| SetItem::Element(Expression::Number(port.into())))
                .collect(),
        )),
    }
}

fn interface_is(key: MetaKey, name: &str) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Meta(Meta { key })),
        right: Expression::String(name.to_owned().into()),
        op: Operator::EQ,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{BAN_SETS, build};
    use super::*;
    use crate::firewall::ruleset::tests::agent_forwards;

    pub(crate) fn isolation() -> Isolation {
        Isolation {
            uplink: "lan0".to_owned(),
            wan: None,
            wan_open: Vec::new(),
            lan: vec!["192.168.1.0/24".parse().unwrap(), "fd00:1::/64".parse().unwrap()],
            lan_ports: vec![8080],
            cameras: Some(Cameras {
                parent: "cam0".to_owned(),
                vlan: None,
                address: "10.77.0.1/24".parse().unwrap(),
                dvr_hosts: vec!["192.168.1.50/32".parse().unwrap()],
                ports: vec![554, 8554],
                known: Vec::new(),
            }),
        }
    }

    /// The commands of the batch as JSON values.
    fn commands(isolation: &Isolation) -> Vec<serde_json::Value> {
        let json = serde_json::to_value(build(&agent_forwards(), 5, Some(isolation))).unwrap();
        json["nftables"].as_array().unwrap().clone()
    }

    fn rules_of<'a>(commands: &'a [serde_json::Value], chain: &str) -> Vec<&'a serde_json::Value> {
        commands
            .iter()
            .filter_map(|c| c["add"]["rule"].as_object().map(|_| &c["add"]["rule"]))
            .filter(|r| r["chain"] == chain)
            .collect()
    }

    #[test]
    fn static_sets_are_refilled_and_ban_sets_only_declared() {
        let commands = commands(&isolation());
        let position = |pred: &dyn Fn(&serde_json::Value) -> bool| commands.iter().position(pred);
        for set in ["lan4", "lan6", "cameras", "dvr-hosts", "camera-ports"] {
            let declared =
                position(&|c| c["add"]["set"]["name"] == set).unwrap_or_else(|| panic!("{set} declared"));
            let flushed =
                position(&|c| c["flush"]["set"]["name"] == set).unwrap_or_else(|| panic!("{set} flushed"));
            let filled =
                position(&|c| c["add"]["element"]["name"] == set).unwrap_or_else(|| panic!("{set} filled"));
            assert!(
                declared < flushed && flushed < filled,
                "{set}: declare, flush, fill"
            );
        }
        for (set, _) in BAN_SETS {
            assert!(
                position(&|c| c["add"]["set"]["name"] == set).is_some(),
                "{set} declared"
            );
            assert!(
                position(&|c| c["flush"]["set"]["name"] == set).is_none(),
                "{set} keeps its bans"
            );
        }
        let dvr = &commands[position(&|c| c["add"]["element"]["name"] == "dvr-hosts").unwrap()];
        assert_eq!(dvr["add"]["element"]["elem"][0]["prefix"]["addr"], "192.168.1.50");
    }

    #[test]
    fn camera_jumps_come_before_the_forwards_and_masquerade_dvr_flows() {
        let commands = commands(&isolation());
        let forward = rules_of(&commands, "forward");
        let text: Vec<String> = forward.iter().map(|r| r["expr"].to_string()).collect();
        assert!(text[0].contains("invalid"), "invalid first: {}", text[0]);
        assert!(
            text[1].contains("oifname") && text[1].contains("to-cameras"),
            "{}",
            text[1]
        );
        assert!(
            text[2].contains("iifname") && text[2].contains("from-cameras"),
            "{}",
            text[2]
        );
        let to_cameras = rules_of(&commands, "to-cameras");
        assert_eq!(to_cameras.len(), 2);
        for needle in ["lan0", "@dvr-hosts", "@cameras", "@camera-ports"] {
            assert!(to_cameras[0]["expr"].to_string().contains(needle), "{needle}");
        }
        let snat = rules_of(&commands, "postrouting-nat");
        assert!(snat.iter().any(|r| {
            let text = r["expr"].to_string();
            text.contains("cam0") && text.contains("@dvr-hosts") && text.contains("masquerade")
        }));
        let last = rules_of(&commands, "from-cameras").last().unwrap()["expr"].to_string();
        assert!(last.contains("camera-egress") && last.contains("drop"), "{last}");
    }

    #[test]
    fn ipv6_and_impostors_are_dropped_at_the_camera_nic_and_drops_are_logged_for_the_report() {
        let mut with_known = isolation();
        if let Some(cameras) = &mut with_known.cameras {
            cameras.known.push(crate::config::network::KnownCamera {
                name: "porch".to_owned(),
                mac: "aa:bb:cc:00:11:22".to_owned(),
                address: "10.77.0.20".parse().unwrap(),
                login: None,
            });
        }
        let commands = commands(&with_known);
        let ingress = commands
            .iter()
            .find(|c| c["add"]["chain"]["name"] == "camera-ingress")
            .expect("the ingress chain");
        assert_eq!(ingress["add"]["chain"]["hook"], "ingress");
        assert_eq!(ingress["add"]["chain"]["dev"], "cam0");
        let all: Vec<String> = rules_of(&commands, "camera-ingress")
            .iter()
            .map(|r| r["expr"].to_string())
            .collect();
        for rule in &all {
            assert!(rule.contains("\"iifname\"") && rule.contains("cam0"), "{rule}");
        }
        // Impostors first.
        assert!(
            all[0].contains("@camera-macs") && all[0].contains("!=") && all[0].contains("camera-spoofed")
        );
        let element = commands
            .iter()
            .find(|c| c["add"]["element"]["name"] == "camera-macs")
            .expect("camera-macs filled");
        assert_eq!(
            element["add"]["element"]["elem"][0],
            serde_json::json!({"concat": ["10.77.0.20", "aa:bb:cc:00:11:22"]})
        );
        let spoofed: Vec<String> = rules_of(&commands, "camera-spoofed")
            .iter()
            .map(|r| r["expr"].to_string())
            .collect();
        assert!(
            spoofed[0].contains("camera-spoofed")
                && spoofed[0].contains("limit")
                && spoofed[0].contains("log")
        );
        assert!(spoofed[1].contains("drop"));
        let rules: Vec<&String> = all.iter().filter(|r| r.contains("ip6")).collect();
        assert_eq!((all.len(), rules.len()), (4, 3));
        assert!(rules[0].contains("nd-neighbor-solicit") && rules[0].contains("drop"));
        assert!(
            rules[1].contains("camera-ipv6") && rules[1].contains("\"group\":3077"),
            "{}",
            rules[1]
        );
        assert!(rules[2].contains("camera-ipv6") && rules[2].contains("drop"));
        let prerouting = rules_of(&commands, "camera-prerouting");
        let egress = prerouting[0]["expr"].to_string();
        for needle in ["cam0", "original", "fib", "local", "!=", "camera-egress"] {
            assert!(egress.contains(needle), "{needle}: {egress}");
        }
        let last = rules_of(&commands, "camera-egress").last().unwrap()["expr"].to_string();
        assert!(last.contains("camera-egress") && last.contains("drop"), "{last}");
        for (chain, prefix) in [("camera-egress", "camera-forward"), ("camera-in", "camera-input")] {
            let logged: Vec<String> = rules_of(&commands, chain)
                .iter()
                .map(|r| r["expr"].to_string())
                .filter(|r| r.contains("\"log\""))
                .collect();
            assert_eq!(logged.len(), 1, "{chain}");
            assert!(
                logged[0].contains(prefix) && logged[0].contains("limit") && !logged[0].contains("drop"),
                "{}",
                logged[0]
            );
        }
    }

    #[test]
    fn without_cameras_only_the_admin_rules_and_ban_sets() {
        let commands = commands(&Isolation {
            cameras: None,
            lan_ports: vec![],
            ..isolation()
        });
        assert!(rules_of(&commands, "camera-in").is_empty());
        assert!(rules_of(&commands, "to-cameras").is_empty());
        assert!(
            rules_of(&commands, "admin-in").is_empty(),
            "no admin port off loopback"
        );
        assert_eq!(rules_of(&commands, "input").len(), 2, "the two ban rules");
    }

    #[test]
    fn a_wan_nic_admits_camgates_listeners_and_drops_the_rest() {
        let commands = commands(&Isolation {
            wan: Some("wan0".to_owned()),
            wan_open: vec![
                (
                    Protocol::Tcp,
                    PortRange {
                        first: 443,
                        last: 443,
                    },
                ),
                (
                    Protocol::Udp,
                    PortRange {
                        first: 50000,
                        last: 50010,
                    },
                ),
            ],
            ..isolation()
        });
        assert!(
            rules_of(&commands, "input")
                .iter()
                .any(|r| r["expr"].to_string().contains("wan0") && r["expr"].to_string().contains("wan-in"))
        );
        let wan_in: Vec<String> = rules_of(&commands, "wan-in")
            .iter()
            .map(|r| r["expr"].to_string())
            .collect();
        assert!(wan_in[0].contains("established"), "{}", wan_in[0]);
        assert!(wan_in[1].contains("tcp") && wan_in[1].contains("443") && wan_in[1].contains("accept"));
        assert!(wan_in[2].contains("udp") && wan_in[2].contains("50000") && wan_in[2].contains("50010"));
        let last = wan_in.last().unwrap();
        assert!(last.contains("wan-dropped") && last.contains("drop"), "{last}");
        let without_wan = self::commands(&isolation());
        assert!(
            rules_of(&without_wan, "wan-in").is_empty(),
            "no WAN NIC, no WAN rules"
        );
    }
}
