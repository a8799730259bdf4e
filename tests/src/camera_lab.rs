//! The camera streams' test bench: camgate in appliance mode between the
//! home LAN and its camera network, with the camera `porch` (its own login
//! `admin`/`s3cret`) and the users `alice` (`correct horse`) and `root`
//! (the admin).
//!
//! ```text
//!  lan switch ── camgate uplink 192.168.77.2 (RTSP :8554, admin :8080)
//!             ├── dvr   192.168.77.50
//!             └── home  192.168.77.254 ── wan 203.0.113.2
//!  camgate cameras NIC 10.77.0.1 ── cam 10.77.0.11
//! ```

use std::path::Path;

use crate::camgate::{Camgate, Launch};
use crate::lab::{basic, hash_password};
use crate::netns::{Netns, Topology, switch_port};

pub const CAMERA: &str = "10.77.0.11";
pub const RESTREAM: &str = "192.168.77.2:8554";
pub const ADMIN_PASSWORD: &str = "admin pass";

pub fn topology(tag: &str) -> Topology {
    Topology::builder(tag)
        .switch(
            "lansw",
            &[
                ("gw", "192.168.77.2/24"),
                ("dvr", "192.168.77.50/24"),
                ("home", "192.168.77.254/24"),
            ],
        )
        // camgate replaces this placeholder with `cameras.address`.
        .switch(
            "camsw",
            &[("gw", "10.77.0.254/24"), ("cam", &format!("{CAMERA}/24"))],
        )
        .link(("home", "203.0.113.1/24"), ("wan", "203.0.113.2/24"))
        .route("wan", "default", "203.0.113.1")
        .route("gw", "default", "192.168.77.254")
        .route("dvr", "default", "192.168.77.254")
        .route("cam", "default", "10.77.0.1")
        .sysctl("home", "net.ipv4.ip_forward", "1")
        .build()
}

/// The MAC of the camera's port, for its `[[camera]]` entry.
fn camera_mac(cam: &Netns) -> String {
    let link: serde_json::Value = serde_json::from_slice(
        &cam.ip(&["-j", "link", "show", "dev", &switch_port("camsw")])
            .stdout,
    )
    .unwrap();
    link[0]["address"].as_str().unwrap().to_owned()
}

/// The config: `porch` with `streams` (an inline table's inside, e.g.
/// `main = "/stream1"`), `[streams]` closing unread streams after 3 s, and
/// `extra` after it (more `[streams]` keys first, then other tables).
pub fn config(state: &Path, cam: &Netns, streams: &str, extra: &str) -> String {
    let alice = hash_password("correct horse");
    let root = hash_password(ADMIN_PASSWORD);
    format!(
        "[daemon]\nmode = \"appliance\"\nstate_dir = \"{state}\"\nlog = \"info,camgate=debug\"\n\
         [admin]\nlisten = [\"0.0.0.0:8080\"]\n\
         [[user]]\nname = \"alice\"\npassword_hash = \"{alice}\"\n\
         [[user]]\nname = \"root\"\npassword_hash = \"{root}\"\nrole = \"admin\"\n\
         [network]\nuplink = \"{uplink}\"\n\
         [cameras]\ninterface = \"{cameras}\"\naddress = \"10.77.0.1/24\"\n\
         [[camera]]\nname = \"porch\"\nmac = \"{mac}\"\naddress = \"{CAMERA}\"\nusername = \"admin\"\npassword = \"s3cret\"\n\
         streams = {{ {streams} }}\n\
         [streams]\nclose_after = \"3s\"\n{extra}",
        state = state.display(),
        uplink = switch_port("lansw"),
        cameras = switch_port("camsw"),
        mac = camera_mac(cam),
    )
}

pub fn start(gw: &Netns, config: String) -> Camgate {
    Camgate::start(Launch {
        netns: Some(gw),
        config: Some(config),
        env: Vec::new(),
        appliance_setup: false,
    })
}

/// `GET /api/streams` as the admin, on camgate's own loopback.
pub fn streams(gw: &Netns) -> serde_json::Value {
    let admin = basic("root", ADMIN_PASSWORD);
    let authorization = admin.trim_start_matches("Authorization: ").trim_end();
    let reply = crate::http::request(
        gw,
        "GET",
        "http://127.0.0.1:8080/api/streams",
        &[("Authorization", authorization)],
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// `camgate token create` for the restream, as a user would: the config
/// lines and the secret.
pub fn stream_token(dir: &Path, name: &str, scope: &str) -> (String, String) {
    let base = "[daemon]\nmode = \"dev\"\n";
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, base).unwrap();
    let secret = crate::lab::token_create(&path, name, "streams", scope);
    let written = std::fs::read_to_string(&path).unwrap();
    (written.strip_prefix(base).unwrap().to_owned(), secret)
}
