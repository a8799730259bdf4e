//! Pure: validated forwards (with their masquerade decided) → one nftables
//! batch for `table inet camgate`, applied as one transaction.
//!
//! Batch shape (see ARCHITECTURE.md): `add table` → `flush table` (rules
//! only: named counters and meter entries survive, so status counters and
//! rate-limit state outlive a reload) → counters → chains → rules.
//!
//! Chains:
//! - `guard` (filter, prerouting, mangle priority: before DNAT, on every
//!   packet): a `stun` forward's datagrams go to its own chain, which
//!   returns for ChannelData, rate-limits Allocate requests per source and
//!   returns for other STUN, and counts and drops everything else.
//! - `prerouting-nat` (nat, prerouting): the forward's ports on a local address → the
//!   target, same ports (or mapped one by one to the target's ports).
//! - `forward` (filter, forward, policy drop): only forwarded flows pass,
//!   counted per forward and direction; plus flows the target starts from
//!   its forwarded ports (a TURN relay sending to a peer).
//! - `postrouting-nat` (nat, postrouting): masquerade towards the target when decided
//!   (the target answers through its own router otherwise), and the
//!   target's own flows from its forwarded ports, so a peer sees camgate's
//!   address and the same port (the relay address is camgate's).

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;

use nftables::batch::Batch;
use nftables::expr::{
    self, Expression, Fib, FibFlag, FibResult, Map, NamedExpression, Payload, PayloadBase, PayloadField,
    PayloadRaw, SetItem,
};
use nftables::schema::{
    Chain, Counter, Element, FlushObject, NfCmd, NfListObject, Nftables, Rule, Set, SetFlag, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::{self, Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::config::forward::{Forward, PortRange, Protocol};
use crate::forward::stun;

mod isolation;
pub use isolation::{COUNTERS as ISOLATION_COUNTERS, Isolation};

pub const TABLE: &str = "camgate";
const GUARD: &str = "guard";
/// Not `dnat`/`snat`: nft's own listing would print those keywords as
/// chain names it cannot load back.
const DNAT: &str = "prerouting-nat";
const FORWARD: &str = "forward";
const SNAT: &str = "postrouting-nat";
const INPUT: &str = "input";

/// The ban sets: timed entries added while camgate runs (the proxy's
/// brute-force guard through [`ban`]), declared but never flushed, so they
/// outlive a reload.
pub const BAN_SETS: [(&str, SetType); 2] = [("banned4", SetType::Ipv4Addr), ("banned6", SetType::Ipv6Addr)];
/// Counts what the ban sets dropped.
pub const BANNED_COUNTER: &str = "banned-dropped";
/// Seconds a per-source Allocate rate entry lives without traffic.
const ALLOCATE_METER_TIMEOUT: u32 = 60;

/// A kernel-mode forward with the I/O-dependent decision made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelForward {
    pub forward: Forward,
    pub masquerade: bool,
}

/// The names of a forward's counters in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterNames {
    pub to_target: String,
    pub to_client: String,
    pub guard_dropped: String,
    pub allocate_limited: String,
}

impl CounterNames {
    pub fn of(forward: &str) -> Self {
        Self {
            to_target: format!("{forward}-to-target"),
            to_client: format!("{forward}-to-client"),
            guard_dropped: format!("{forward}-guard-dropped"),
            allocate_limited: format!("{forward}-allocate-limited"),
        }
    }
}

/// The whole batch for `forwards` and, when interface roles are configured,
/// `isolation`; `allocate_rate` is per second and source.
pub fn build(
    forwards: &[KernelForward],
    allocate_rate: u32,
    isolation: Option<&Isolation>,
) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.add_cmd(NfCmd::Flush(FlushObject::Table(table())));
    for KernelForward { forward, .. } in forwards {
        let names = CounterNames::of(&forward.name);
        let mut counters = vec![names.to_target, names.to_client];
        if forward.stun {
            counters.extend([names.guard_dropped, names.allocate_limited]);
        }
        for name in counters {
            batch.add(counter(&name));
        }
    }
    batch.add(NfListObject::Chain(base_chain(
        GUARD,
        NfChainType::Filter,
        NfHook::Prerouting,
        -150,
        NfChainPolicy::Accept,
    )));
    batch.add(NfListObject::Chain(base_chain(
        DNAT,
        NfChainType::NAT,
        NfHook::Prerouting,
        -100,
        NfChainPolicy::Accept,
    )));
    batch.add(NfListObject::Chain(base_chain(
        FORWARD,
        NfChainType::Filter,
        NfHook::Forward,
        0,
        NfChainPolicy::Drop,
    )));
    batch.add(NfListObject::Chain(base_chain(
        SNAT,
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
        NfChainPolicy::Accept,
    )));

    batch.add(rule(FORWARD, vec![ct_state(&["invalid"]), Statement::Drop(None)]));
    add_bans(&mut batch);
    if let Some(isolation) = isolation {
        isolation::add_front(&mut batch, isolation);
    }
    for KernelForward { forward, masquerade } in forwards {
        let names = CounterNames::of(&forward.name);
        let to_listen = listen_match(forward);
        if forward.stun {
            let chain = format!("{GUARD}-{}", forward.name);
            let stun_chain = format!("{chain}-stun");
            batch.add(NfListObject::Chain(regular_chain(&chain)));
            batch.add(NfListObject::Chain(regular_chain(&stun_chain)));
            batch.add(rule(GUARD, [to_listen.clone(), vec![jump(&chain)]].concat()));
            batch.add(rule(
                &chain,
                [channel_data(), vec![Statement::Return(None)]].concat(),
            ));
            batch.add(rule(&chain, [stun_message(), vec![goto(&stun_chain)]].concat()));
            batch.add(rule(
                &chain,
                vec![named_counter(&names.guard_dropped), Statement::Drop(None)],
            ));
            for (family, meter) in [("ip", "4"), ("ip6", "6")] {
                batch.add(rule(
                    &stun_chain,
                    vec![
                        equals(
                            raw_payload(64, 16),
                            Expression::Number(stun::ALLOCATE_REQUEST.into()),
                        ),
                        allocate_meter(
                            &format!("{}-allocate{meter}", forward.name),
                            family,
                            allocate_rate,
                        ),
                        named_counter(&names.allocate_limited),
                        Statement::Drop(None),
                    ],
                ));
            }
        }

        let mut dnat = to_listen.clone();
        dnat.push(Statement::DNAT(Some(NAT {
            addr: Some(Expression::String(forward.target.to_string().into())),
            family: Some(nat_family(forward.target)),
            port: target_port_map(forward),
            flags: None,
        })));
        batch.add(rule(DNAT, dnat));

        for (direction, counter) in [("original", &names.to_target), ("reply", &names.to_client)] {
            batch.add(rule(
                FORWARD,
                [
                    forwarded_flow(forward),
                    vec![
                        equals(ct("direction"), Expression::String(direction.into())),
                        named_counter(counter),
                        Statement::Accept(None),
                    ],
                ]
                .concat(),
            ));
        }
        let from_target = from_target(forward);
        batch.add(rule(
            FORWARD,
            [
                from_target.clone(),
                vec![ct_state(&["new"]), Statement::Accept(None)],
            ]
            .concat(),
        ));
        if *masquerade {
            batch.add(rule(
                SNAT,
                [
                    forwarded_flow(forward),
                    vec![
                        equals(ip_field(forward.target, "daddr"), address(forward.target)),
                        Statement::Masquerade(None),
                    ],
                ]
                .concat(),
            ));
        }
        batch.add(rule(
            SNAT,
            [from_target, vec![Statement::Masquerade(None)]].concat(),
        ));
    }
    batch.add(rule(
        FORWARD,
        vec![ct_state(&["established", "related"]), Statement::Accept(None)],
    ));
    batch.to_nftables()
}

/// The ban sets and the `input` chain that drops their sources first.
fn add_bans(batch: &mut Batch<'static>) {
    batch.add(counter(BANNED_COUNTER));
    for (name, kind) in BAN_SETS {
        batch.add(NfListObject::Set(Box::new(Set {
            flags: Some(HashSet::from([SetFlag::Timeout])),
            ..set(name, kind)
        })));
    }
    batch.add(NfListObject::Chain(base_chain(
        INPUT,
        NfChainType::Filter,
        NfHook::Input,
        0,
        NfChainPolicy::Accept,
    )));
    for ((name, _), family) in BAN_SETS.into_iter().zip(["ip", "ip6"]) {
        batch.add(rule(
            INPUT,
            vec![
                in_named_set(field(family, "saddr"), name),
                named_counter(BANNED_COUNTER),
                Statement::Drop(None),
            ],
        ));
    }
}

/// Adds `address` to its ban set for `seconds` (at least one).
pub fn ban(address: IpAddr, seconds: u64) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(ban_element(
        address,
        Some(u32::try_from(seconds.max(1)).unwrap_or(u32::MAX)),
    ));
    batch.to_nftables()
}

/// Takes `address` out of its ban set.
pub fn unban(address: IpAddr) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.delete(ban_element(address, None));
    batch.to_nftables()
}

fn ban_element(address: IpAddr, timeout: Option<u32>) -> NfListObject<'static> {
    let address = address.to_canonical();
    let (set, _) = BAN_SETS[usize::from(address.is_ipv6())];
    NfListObject::Element(Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: set.into(),
        elem: Cow::Owned(vec![Expression::Named(NamedExpression::Elem(expr::Elem {
            val: Box::new(Expression::String(address.to_string().into())),
            timeout,
            ..expr::Elem::default()
        }))]),
    })
}

/// A batch that removes the table, for a clean stop.
pub fn remove() -> Nftables<'static> {
    let mut batch = Batch::new();
    // `add` first so the delete cannot fail on a missing table.
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.to_nftables()
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn base_chain(
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    priority: i32,
    policy: NfChainPolicy,
) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(priority),
        policy: Some(policy),
        ..Chain::default()
    }
}

fn regular_chain(name: &str) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_owned().into(),
        ..Chain::default()
    }
}

fn rule(chain: &str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: chain.to_owned().into(),
        expr: expr.into(),
        ..Rule::default()
    })
}

fn equals(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: protocol.into(),
        field: name.into(),
    })))
}

/// Bits of the transport header (offsets in bits, as nftables counts them).
fn raw_payload(offset: u32, len: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadRaw(PayloadRaw {
        base: PayloadBase::TH,
        offset,
        len,
    })))
}

fn ip_field(address: IpAddr, name: &'static str) -> Expression<'static> {
    field(if address.is_ipv4() { "ip" } else { "ip6" }, name)
}

fn address(address: IpAddr) -> Expression<'static> {
    Expression::String(address.to_string().into())
}

fn nat_family(address: IpAddr) -> NATFamily {
    if address.is_ipv4() {
        NATFamily::IP
    } else {
        NATFamily::IP6
    }
}

fn ports(range: PortRange) -> Expression<'static> {
    number_or_range(range.first, range.last)
}

fn number_or_range(first: u16, last: u16) -> Expression<'static> {
    if first == last {
        Expression::Number(first.into())
    } else {
        Expression::Range(Box::new(expr::Range {
            range: [Expression::Number(first.into()), Expression::Number(last.into())],
        }))
    }
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(expr::CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn ct_original(key: &'static str, family: Option<expr::CTFamily>) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(expr::CT {
        key: key.into(),
        family,
        dir: Some(expr::CTDir::Original),
    }))
}

fn ct_state(states: &[&'static str]) -> Statement<'static> {
    let right = if let [state] = states {
        Expression::String((*state).into())
    } else {
        Expression::List(states.iter().map(|s| Expression::String((*s).into())).collect())
    };
    Statement::Match(Match {
        left: ct("state"),
        right,
        op: Operator::IN,
    })
}

fn l4proto(protocol: Protocol) -> Statement<'static> {
    equals(
        Expression::Named(NamedExpression::Meta(expr::Meta {
            key: expr::MetaKey::L4proto,
        })),
        Expression::String(protocol.as_str().into()),
    )
}

/// Packets for the forward: its protocol and ports, to one of camgate's own
/// addresses (or the configured one).
fn listen_match(forward: &Forward) -> Vec<Statement<'static>> {
    let mut statements = vec![
        l4proto(forward.protocol),
        equals(field(forward.protocol.as_str(), "dport"), ports(forward.ports)),
    ];
    if forward.listen_address.is_unspecified() {
        // IPv4 targets take IPv4 clients, IPv6 targets IPv6 ones.
        statements.push(equals(
            Expression::Named(NamedExpression::Meta(expr::Meta {
                key: expr::MetaKey::Nfproto,
            })),
            Expression::String(if forward.target.is_ipv4() { "ipv4" } else { "ipv6" }.into()),
        ));
        let mut flags = HashSet::new();
        flags.insert(FibFlag::Daddr);
        statements.push(equals(
            Expression::Named(NamedExpression::Fib(Fib {
                result: FibResult::Type,
                flags,
            })),
            Expression::String("local".into()),
        ));
    } else {
        statements.push(equals(
            ip_field(forward.listen_address, "daddr"),
            address(forward.listen_address),
        ));
    }
    statements
}

/// Packets of flows this forward's DNAT rule created, either direction.
fn forwarded_flow(forward: &Forward) -> Vec<Statement<'static>> {
    let mut statements = vec![
        l4proto(forward.protocol),
        // `in`: a flag test; `==` would compare the whole status word.
        Statement::Match(Match {
            left: ct("status"),
            right: Expression::String("dnat".into()),
            op: Operator::IN,
        }),
        equals(ct_original("proto-dst", None), ports(forward.ports)),
    ];
    if !forward.listen_address.is_unspecified() {
        let family = if forward.listen_address.is_ipv4() {
            expr::CTFamily::IP
        } else {
            expr::CTFamily::IP6
        };
        statements.push(equals(
            ct_original("daddr", Some(family)),
            address(forward.listen_address),
        ));
    }
    statements
}

/// Flows the target itself starts from its forwarded ports.
fn from_target(forward: &Forward) -> Vec<Statement<'static>> {
    vec![
        l4proto(forward.protocol),
        equals(ip_field(forward.target, "saddr"), address(forward.target)),
        equals(
            field(forward.protocol.as_str(), "sport"),
            ports(forward.target_ports()),
        ),
    ]
}

/// `None` for 1:1 (DNAT keeps the port); else a map from each listen port to
/// its target port.
fn target_port_map(forward: &Forward) -> Option<Expression<'static>> {
    if forward.target_first_port == forward.ports.first {
        return None;
    }
    let pairs = forward
        .ports
        .ports()
        .map(|port| {
            SetItem::Mapping(
                Expression::Number(port.into()),
                Expression::Number(forward.target_for(port).port().into()),
            )
        })
        .collect();
    Some(Expression::Named(NamedExpression::Map(Box::new(Map {
        key: field(forward.protocol.as_str(), "dport"),
        data: Expression::Named(NamedExpression::Set(pairs)),
    }))))
}

fn in_set(left: Expression<'static>, items: Vec<SetItem<'static>>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right: Expression::Named(NamedExpression::Set(items)),
        op: Operator::EQ,
    })
}

/// `udp length . <the message's length field>`: nftables cannot compare
/// two fields, so valid pairs are listed (see `stun::stun_lengths`).
fn length_pair() -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(vec![
        field("udp", "length"),
        raw_payload(80, 16),
    ]))
}

/// RFC 8489 framing: top two bits zero, the magic cookie, a length that
/// is the datagram's and a multiple of 4.
fn stun_message() -> Vec<Statement<'static>> {
    let pairs = stun::stun_lengths()
        .map(|(udp, declared)| {
            SetItem::Element(Expression::Named(NamedExpression::Concat(vec![
                Expression::Number(udp.into()),
                Expression::Number(declared.into()),
            ])))
        })
        .collect();
    vec![
        equals(raw_payload(64, 2), Expression::Number(0)),
        equals(raw_payload(96, 32), Expression::Number(stun::MAGIC_COOKIE)),
        in_set(length_pair(), pairs),
    ]
}

/// TURN ChannelData: a channel number in `stun::CHANNELS` (first two bits
/// 01), data that fits the datagram.
fn channel_data() -> Vec<Statement<'static>> {
    let pairs = stun::channel_data_lengths()
        .map(|(udp, declared)| {
            SetItem::Element(Expression::Named(NamedExpression::Concat(vec![
                number_or_range(*udp.start(), *udp.end()),
                Expression::Number(declared.into()),
            ])))
        })
        .collect();
    vec![
        equals(raw_payload(64, 2), Expression::Number(1)),
        in_set(length_pair(), pairs),
    ]
}

/// Matches a source over `rate`/s (burst twice that), per address, in a
/// meter whose entries expire.
fn allocate_meter(name: &str, family: &'static str, rate: u32) -> Statement<'static> {
    Statement::Meter(stmt::Meter {
        name: name.to_owned().into(),
        key: Expression::Named(NamedExpression::Elem(expr::Elem {
            val: Box::new(field(family, "saddr")),
            timeout: Some(ALLOCATE_METER_TIMEOUT),
            ..expr::Elem::default()
        })),
        stmt: Box::new(Statement::Limit(stmt::Limit {
            rate,
            rate_unit: None,
            per: Some("second".into()),
            burst: Some(rate.saturating_mul(2)),
            burst_unit: None,
            inv: Some(true),
        })),
    })
}

fn counter(name: &str) -> NfListObject<'static> {
    NfListObject::Counter(Counter {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.to_owned().into(),
        handle: None,
        packets: None,
        bytes: None,
    })
}

fn limit_per_second(rate: u32) -> Statement<'static> {
    Statement::Limit(stmt::Limit {
        rate,
        rate_unit: None,
        per: Some("second".into()),
        burst: None,
        burst_unit: None,
        inv: None,
    })
}

fn set(name: &'static str, kind: SetType) -> Set<'static> {
    Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        handle: None,
        set_type: SetTypeValue::Single(kind),
        policy: None,
        flags: None,
        elem: None,
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }
}

fn in_named_set(left: Expression<'static>, set: &str) -> Statement<'static> {
    equals(left, Expression::String(format!("@{set}").into()))
}

fn named_counter(name: &str) -> Statement<'static> {
    Statement::Counter(stmt::Counter::Named(Cow::Owned(name.to_owned())))
}

fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(stmt::JumpTarget {
        target: chain.to_owned().into(),
    })
}

fn goto(chain: &str) -> Statement<'static> {
    Statement::Goto(stmt::JumpTarget {
        target: chain.to_owned().into(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::forward::{ForwardMode, Masquerade};

    #[test]
    fn bans_go_to_the_set_of_their_family_with_a_timeout() {
        let json = serde_json::to_value(ban("203.0.113.9".parse().unwrap(), 90)).unwrap();
        let element = &json["nftables"][0]["add"]["element"];
        assert_eq!(element["table"], TABLE);
        assert_eq!(element["name"], "banned4");
        assert_eq!(element["elem"][0]["elem"]["val"], "203.0.113.9");
        assert_eq!(element["elem"][0]["elem"]["timeout"], 90);
        // A v4-mapped address is the IPv4 client it stands for; zero seconds still bans.
        let json = serde_json::to_value(ban("::ffff:203.0.113.9".parse().unwrap(), 0)).unwrap();
        assert_eq!(json["nftables"][0]["add"]["element"]["name"], "banned4");
        assert_eq!(
            json["nftables"][0]["add"]["element"]["elem"][0]["elem"]["timeout"],
            1
        );
        let json = serde_json::to_value(unban("2001:db8::7".parse().unwrap())).unwrap();
        let element = &json["nftables"][0]["delete"]["element"];
        assert_eq!(element["name"], "banned6");
        assert_eq!(element["elem"][0]["elem"]["val"], "2001:db8::7");
    }

    pub(crate) fn agent_forwards() -> Vec<KernelForward> {
        let forward = |name: &str, first, last, stun| Forward {
            name: name.to_owned(),
            protocol: Protocol::Udp,
            listen_address: "0.0.0.0".parse().unwrap(),
            ports: PortRange { first, last },
            target: "10.78.1.2".parse().unwrap(),
            target_first_port: first,
            mode: ForwardMode::Kernel,
            stun,
            masquerade: Masquerade::Auto,
        };
        vec![
            KernelForward {
                forward: forward("turn", 3478, 3478, true),
                masquerade: false,
            },
            KernelForward {
                forward: Forward {
                    target_first_port: 60000,
                    ..forward("relay", 50000, 50010, false)
                },
                masquerade: true,
            },
        ]
    }

    #[test]
    fn batch_flushes_only_camgates_table_and_keeps_counters() {
        let json = serde_json::to_value(build(&agent_forwards(), 5, None)).unwrap();
        if let Ok(path) = std::env::var("CAMGATE_DUMP_RULESET") {
            std::fs::write(path, json.to_string()).unwrap();
        }
        let commands = json["nftables"].as_array().unwrap();
        assert_eq!(commands[0]["add"]["table"]["name"], TABLE);
        assert_eq!(commands[1]["flush"]["table"]["name"], TABLE);
        for command in commands {
            let (verb, object) = command.as_object().unwrap().iter().next().unwrap();
            assert!(verb == "add" || verb == "flush", "{command}");
            let object = object.as_object().unwrap().values().next().unwrap();
            let table = object.get("table").or(object.get("name")).unwrap();
            assert_eq!(table, TABLE, "{command}");
        }
        let text = json.to_string();
        // Counters for each forward; the guard and its meters only for the STUN one.
        for name in [
            "turn-to-target",
            "turn-guard-dropped",
            "turn-allocate-limited",
            "relay-to-client",
        ] {
            assert!(text.contains(&format!("\"name\":\"{name}\"")), "{name}");
        }
        assert!(!text.contains("relay-guard-dropped"));
        assert!(text.contains("\"name\":\"turn-allocate4\""));
        // The forward chain drops what is not forwarded.
        assert!(
            commands
                .iter()
                .any(|c| c["add"]["chain"]["name"] == FORWARD && c["add"]["chain"]["policy"] == "drop")
        );
        // An offset maps each port; 1:1 keeps it.
        assert!(text.contains("[50010,60010]"), "{text}");
        assert_eq!(text.matches("\"masquerade\"").count(), 3);
    }
}
