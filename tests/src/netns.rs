//! Network namespaces and veth links for tests, created with iproute2 and
//! removed on drop (also when the test panics). Names are unique per process
//! and test so tests run in parallel; leaked ones (after SIGKILL of the test
//! runner) all start with `cgt-`: see tests/README.md for the cleanup line.

use std::ffi::OsStr;
use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`; panics with its stderr on failure.
pub fn ip(args: &[&str]) -> Output {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (Debian package iproute2): {e}"));
    assert!(
        output.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    output
}

/// A named network namespace with loopback up.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `cgt-<tag>-<pid>-<n>`. Needs root (CAP_SYS_ADMIN).
    pub fn new(tag: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "network namespace tests must run as root: use tests/run.sh (sudo) or `cargo test` as root"
        );
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("cgt-{tag}-{}-{id}", std::process::id());
        ip(&["netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args…`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it
    /// creates live there, also after `f` returns them.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let handle = File::open(format!("/run/netns/{}", self.name))
                        .unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
                    setns(handle, CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns {}: {e}", self.name));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Sets a sysctl of this namespace, e.g. `net.ipv4.ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("sysctl {key}={value}: {e}"));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs inside, so nothing outlives the test.
        if let Ok(output) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse() {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Namespaces joined by veth pairs, addressed and routed as declared.
///
/// ```no_run
/// # use camgate_tests::netns::Topology;
/// let net = Topology::builder("demo")
///     .link(("gw", "10.77.0.1/24"), ("lan", "10.77.0.2/24"))
///     .route("lan", "default", "10.77.0.1")
///     .build();
/// let lan = net.ns("lan");
/// ```
#[derive(Debug)]
pub struct Topology {
    hosts: Vec<(String, Netns)>,
}

#[derive(Debug)]
pub struct TopologyBuilder {
    tag: String,
    hosts: Vec<String>,
    links: Vec<((String, String), (String, String))>,
    routes: Vec<(String, String, String)>,
    sysctls: Vec<(String, String, String)>,
    switches: Vec<(String, Vec<(String, String)>)>,
}

impl Topology {
    /// `tag` names the test in namespace names (keep it short).
    pub fn builder(tag: &str) -> TopologyBuilder {
        TopologyBuilder {
            tag: tag.to_owned(),
            hosts: Vec::new(),
            links: Vec::new(),
            routes: Vec::new(),
            sysctls: Vec::new(),
            switches: Vec::new(),
        }
    }

    pub fn ns(&self, host: &str) -> &Netns {
        self.hosts
            .iter()
            .find(|(name, _)| name == host)
            .map(|(_, netns)| netns)
            .unwrap_or_else(|| panic!("no host {host:?} in this topology"))
    }
}

impl TopologyBuilder {
    /// A namespace with no links (links add their hosts themselves).
    pub fn host(mut self, host: &str) -> Self {
        if !self.hosts.iter().any(|h| h == host) {
            self.hosts.push(host.to_owned());
        }
        self
    }

    /// A veth pair between two hosts, with an address (CIDR) on each end.
    /// The interface in `a` is named after `b` and vice versa.
    pub fn link(mut self, a: (&str, &str), b: (&str, &str)) -> Self {
        self = self.host(a.0).host(b.0);
        self.links
            .push(((a.0.to_owned(), a.1.to_owned()), (b.0.to_owned(), b.1.to_owned())));
        self
    }

    /// A namespace `switch` holding a bridge, with a veth to each member
    /// (host, CIDR); the member's end is named [`switch_port`]`(switch)`.
    pub fn switch(mut self, switch: &str, members: &[(&str, &str)]) -> Self {
        self = self.host(switch);
        for (member, _) in members {
            self = self.host(member);
        }
        self.switches.push((
            switch.to_owned(),
            members
                .iter()
                .map(|(m, cidr)| ((*m).to_owned(), (*cidr).to_owned()))
                .collect(),
        ));
        self
    }

    /// `ip route add <destination> via <gateway>` in `host`.
    pub fn route(mut self, host: &str, destination: &str, gateway: &str) -> Self {
        self.routes
            .push((host.to_owned(), destination.to_owned(), gateway.to_owned()));
        self
    }

    pub fn sysctl(mut self, host: &str, key: &str, value: &str) -> Self {
        self.sysctls
            .push((host.to_owned(), key.to_owned(), value.to_owned()));
        self
    }

    pub fn build(self) -> Topology {
        let topology = Topology {
            hosts: self
                .hosts
                .iter()
                .map(|host| (host.clone(), Netns::new(&format!("{}-{host}", self.tag))))
                .collect(),
        };
        for (i, ((a, a_cidr), (b, b_cidr))) in self.links.iter().enumerate() {
            let a_if = interface_name(i, b);
            let b_if = interface_name(i, a);
            let (a_ns, b_ns) = (topology.ns(a), topology.ns(b));
            a_ns.ip(&[
                "link",
                "add",
                &a_if,
                "type",
                "veth",
                "peer",
                "name",
                &b_if,
                "netns",
                b_ns.name(),
            ]);
            for (netns, interface, cidr) in [(a_ns, &a_if, a_cidr), (b_ns, &b_if, b_cidr)] {
                netns.ip(&["addr", "add", cidr, "dev", interface]);
                netns.ip(&["link", "set", interface, "up"]);
            }
        }
        for (switch, members) in &self.switches {
            let bridge = topology.ns(switch);
            bridge.ip(&["link", "add", "br0", "type", "bridge"]);
            bridge.ip(&["link", "set", "br0", "up"]);
            for (member, cidr) in members {
                let port = interface_name(0, member);
                let netns = topology.ns(member);
                let name = switch_port(switch);
                bridge.ip(&[
                    "link",
                    "add",
                    &port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &name,
                    "netns",
                    netns.name(),
                ]);
                bridge.ip(&["link", "set", &port, "master", "br0", "up"]);
                netns.ip(&["addr", "add", cidr, "dev", &name]);
                netns.ip(&["link", "set", &name, "up"]);
            }
        }
        for (host, destination, gateway) in &self.routes {
            topology
                .ns(host)
                .ip(&["route", "add", destination, "via", gateway]);
        }
        for (host, key, value) in &self.sysctls {
            topology.ns(host).sysctl(key, value);
        }
        topology
    }
}

/// A switch member's interface towards `switch`: `to-<switch>`.
pub fn switch_port(switch: &str) -> String {
    let mut name = format!("to-{switch}");
    name.truncate(15);
    name
}

/// `v<link>-<peer>`, within Linux's 15-byte interface name limit.
fn interface_name(link: usize, peer: &str) -> String {
    let mut name = format!("v{link}-{peer}");
    name.truncate(15);
    name
}
