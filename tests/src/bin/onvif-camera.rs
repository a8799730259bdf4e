//! A WS-Discovery + ONVIF camera for the integration tests: no Debian package simulates one, so the tests
//! run this inside a camera namespace. It answers multicast Probes with a ProbeMatches by unicast (from
//! `ADDRESS:3702`, the port camgate's camera-side rules accept replies from), and serves just enough of the
//! ONVIF device and media services over HTTP/SOAP for a client to find its RTSP streams and its snapshot:
//! GetSnapshotUri names `http://ADDRESS:PORT/snapshot.jpg`, a 64×48 JPEG served with a GET behind HTTP
//! Digest (MD5, `qop=auth`, the camera's nonces only) or Basic with the same user and password.
//!
//! Usage: `onvif-camera --address IPV4 --http-port PORT --name NAME --hardware MODEL --user USER
//! --password PASSWORD [--profiles NAME:WxH:ENCODING,...] [--clock-offset-secs N] [--malformed]
//! [--snapshot-auth digest|basic] [--no-snapshot]` (`--no-snapshot`: GetSnapshotUri answers
//! ActionNotSupported, as many cameras do, and there is no `/snapshot.jpg`).
//!
//! Stdout, one line per event: `ready` once all sockets are bound; `probe from ADDR`, `sent ProbeMatches
//! to ADDR`, `sent malformed N/6 KIND (BYTES bytes) to ADDR` (`--malformed`), `ignored datagram from ADDR
//! (WHY)`; `http GetSystemDateAndTime`, `http OP authorized`, `http OP unauthorized (WHY)`, `http
//! GetStreamUri authorized (no profile "TOKEN")`, `http OP not supported[ on PATH]`, `http STATUS (WHY)`;
//! `http snapshot unauthorized (WHY)`, `http snapshot sent (SCHEME, BYTES bytes, sha256 HEX)`.
//!
//! Requests are read by scanning for element local names, so a client's namespace prefixes do not
//! matter; replies use gSOAP-style prefixes (`SOAP-ENV:`, `wsdd:`) as many real cameras do, so a client
//! that matches on `s:`/`d:` prefixes fails here.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::{Digest as _, Md5};
use ring::digest;

const USAGE: &str = "usage: onvif-camera --address IPV4 --http-port PORT --name NAME --hardware MODEL \
                     --user USER --password PASSWORD [--profiles NAME:WxH:ENCODING,...] \
                     [--clock-offset-secs N] [--malformed] [--snapshot-auth digest|basic] [--no-snapshot]";
const VALUE_FLAGS: &str = "--address --http-port --name --hardware --user --password --profiles \
                           --clock-offset-secs --snapshot-auth";
const DEFAULT_PROFILES: &str = "main:1920x1080:H264,sub:640x360:H264";
const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
const DISCOVERY_PORT: u16 = 3702;
const PROBE_ACTION: &str = "http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe";
const DEVICE_PATH: &str = "/onvif/device_service";
const MEDIA_PATH: &str = "/onvif/media_service";
const SNAPSHOT_PATH: &str = "/snapshot.jpg";
/// The Digest and Basic realm of `/snapshot.jpg`.
const REALM: &str = "onvif-camera";
/// Digest nonces the camera remembers (the newest): a client answers the one it was just given.
const MAX_NONCES: usize = 64;
/// A 64×48 red JPEG, made once with `ffmpeg -f lavfi -i color=c=red:s=64x48 -frames:v 1 -flags +bitexact
/// -fflags +bitexact`: small, decodable, and the same bytes every run.
const SNAPSHOT_JPEG: &[u8] = b"\
    \xff\xd8\xff\xe0\x00\x10\x4a\x46\x49\x46\x00\x01\x02\x00\x00\x01\x00\x01\x00\x00\xff\xdb\x00\x43\
    \x00\x08\x04\x04\x04\x04\x04\x05\x05\x05\x05\x05\x05\x06\x06\x06\x06\x06\x06\x06\x06\x06\x06\x06\
    \x06\x06\x07\x07\x07\x08\x08\x08\x07\x07\x07\x06\x06\x07\x07\x08\x08\x08\x08\x09\x09\x09\x08\x08\
    \x08\x08\x09\x09\x0a\x0a\x0a\x0c\x0c\x0b\x0b\x0e\x0e\x0e\x11\x11\x14\xff\xc4\x00\x4d\x00\x01\x01\
    \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x06\x01\x01\x01\x01\x00\x00\x00\x00\
    \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x06\x07\x10\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
    \x00\x00\x00\x00\x00\x00\x11\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
    \xff\xc0\x00\x11\x08\x00\x30\x00\x40\x03\x01\x22\x00\x02\x11\x00\x03\x11\x00\xff\xda\x00\x0c\x03\
    \x01\x00\x02\x11\x03\x11\x00\x3f\x00\x8b\x01\x28\xdf\xc0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
    \x00\x00\x00\x00\x00\x01\xff\xd9\
";
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1 << 20;
/// How far a UsernameToken's Created may be from the camera's clock (what real cameras allow, roughly).
const MAX_SKEW_SECS: i64 = 300;
const SOAP: &str = "application/soap+xml; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
/// Namespace declarations of every envelope this camera sends (gSOAP's prefixes, as many cameras use).
const NS: &str = concat!(
    r#"xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope" "#,
    r#"xmlns:tds="http://www.onvif.org/ver10/device/wsdl" "#,
    r#"xmlns:trt="http://www.onvif.org/ver10/media/wsdl" "#,
    r#"xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:ter="http://www.onvif.org/ver10/error" "#,
    r#"xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" "#,
    r#"xmlns:wsdd="http://schemas.xmlsoap.org/ws/2005/04/discovery" "#,
    r#"xmlns:dn="http://www.onvif.org/ver10/network/wsdl""#,
);

/// WS-Discovery `MessageNumber`s, which count up over the process's life.
static MESSAGE_NUMBER: AtomicU64 = AtomicU64::new(0);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let camera = match Camera::from_args(&args) {
        Ok(camera) => Arc::new(camera),
        Err(e) => {
            eprintln!("onvif-camera: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&camera) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onvif-camera: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(camera: &Arc<Camera>) -> Result<(), String> {
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DISCOVERY_PORT);
    let multicast = bind_reusable(any)?;
    multicast
        .join_multicast_v4(&GROUP, &camera.address)
        .map_err(|e| format!("join {GROUP} on {}: {e}", camera.address))?;
    // Replies leave from this one: with several cameras in one namespace, the wildcard socket would
    // reply from whichever address the route picks. It also takes unicast probes to the camera.
    let unicast = bind_reusable(SocketAddrV4::new(camera.address, DISCOVERY_PORT))?;
    let http_addr = SocketAddrV4::new(camera.address, camera.http_port);
    let http = TcpListener::bind(http_addr).map_err(|e| format!("bind {http_addr}: {e}"))?;
    let reply = unicast.try_clone().map_err(|e| e.to_string())?;
    for (listen, reply) in [
        (multicast, reply.try_clone().map_err(|e| e.to_string())?),
        (unicast, reply),
    ] {
        let camera = Arc::clone(camera);
        thread::spawn(move || serve_discovery(&listen, &reply, &camera));
    }
    event("ready");
    for stream in http.incoming() {
        match stream {
            Ok(stream) => {
                let camera = Arc::clone(camera);
                thread::spawn(move || connection(stream, &camera));
            }
            // EMFILE and friends: back off rather than spin.
            Err(e) => {
                event(&format!("http accept error: {e}"));
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

fn event(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// SO_REUSEADDR before bind (std cannot), so several simulated cameras share port 3702 in one namespace.
fn bind_reusable(addr: SocketAddrV4) -> Result<UdpSocket, String> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).map_err(|e| format!("bind {addr}: {e}"))?;
    Ok(UdpSocket::from(fd))
}

#[derive(Debug)]
struct Profile {
    name: String,
    width: u32,
    height: u32,
    encoding: String,
}

#[derive(Debug)]
struct Camera {
    address: Ipv4Addr,
    http_port: u16,
    name: String,
    hardware: String,
    user: String,
    password: String,
    profiles: Vec<Profile>,
    clock_offset: i64,
    malformed: bool,
    /// `--no-snapshot` makes it false.
    snapshot: bool,
    /// `/snapshot.jpg`'s login: Digest (most cameras) or Basic.
    snapshot_basic: bool,
    /// The Digest nonces given out, newest last.
    nonces: Mutex<Vec<String>>,
    /// WS-Discovery `InstanceId`: the start time, as real devices use a boot counter or time.
    instance: u64,
}

impl Camera {
    fn from_args(args: &[String]) -> Result<Self, String> {
        let mut values = HashMap::new();
        let mut malformed = false;
        let mut snapshot = true;
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            match flag.as_str() {
                "--malformed" => malformed = true,
                "--no-snapshot" => snapshot = false,
                flag if VALUE_FLAGS.split(' ').any(|f| f == flag) => {
                    let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
                    if values.insert(flag, value.as_str()).is_some() {
                        return Err(format!("{flag} given twice"));
                    }
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let get = |flag: &str| values.get(flag).copied().ok_or_else(|| format!("{flag} missing"));
        let bad = |flag: &str| format!("{flag} {:?} is not valid", values.get(flag).unwrap_or(&""));
        Ok(Self {
            address: get("--address")?.parse().map_err(|_| bad("--address"))?,
            http_port: get("--http-port")?.parse().map_err(|_| bad("--http-port"))?,
            name: get("--name")?.to_owned(),
            hardware: get("--hardware")?.to_owned(),
            user: get("--user")?.to_owned(),
            password: get("--password")?.to_owned(),
            profiles: parse_profiles(values.get("--profiles").unwrap_or(&DEFAULT_PROFILES))?,
            clock_offset: match values.get("--clock-offset-secs") {
                Some(text) => text.parse().map_err(|_| bad("--clock-offset-secs"))?,
                None => 0,
            },
            malformed,
            snapshot,
            snapshot_basic: match values.get("--snapshot-auth").copied() {
                None | Some("digest") => false,
                Some("basic") => true,
                Some(_) => return Err(bad("--snapshot-auth")),
            },
            nonces: Mutex::new(Vec::new()),
            instance: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_secs()),
        })
    }

    /// The camera's clock, in seconds since the epoch: off by `--clock-offset-secs`, like a real
    /// camera nobody set.
    fn now(&self) -> i64 {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        i64::try_from(secs).unwrap_or(0) + self.clock_offset
    }

    fn xaddr(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.address, self.http_port)
    }

    /// Checks the WS-Security UsernameToken (PasswordDigest) of a request; the error says why not.
    fn authorize(&self, xml: &str) -> Result<(), String> {
        let token = start_tags(xml)
            .find(|tag| tag.local == "UsernameToken")
            .and_then(|tag| xml.get(tag.content..))
            .ok_or("no UsernameToken")?;
        if text(token, "Username").as_deref() != Some(self.user.as_str()) {
            return Err("unknown user".to_owned());
        }
        let password = start_tags(token)
            .find(|tag| tag.local == "Password")
            .ok_or("no Password")?;
        if !password.attrs.contains("#PasswordDigest") {
            return Err("not a PasswordDigest".to_owned());
        }
        let nonce = text(token, "Nonce")
            .and_then(|nonce| BASE64.decode(nonce).ok())
            .ok_or("bad Nonce")?;
        let created = text(token, "Created").ok_or("no Created")?;
        let skew = parse_utc(&created).ok_or("bad Created")? - self.now();
        if skew.abs() > MAX_SKEW_SECS {
            return Err(format!("Created {skew} s off the camera clock"));
        }
        let input = [&nonce, created.as_bytes(), self.password.as_bytes()].concat();
        let expected = BASE64.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &input));
        if text(token, "Password").as_deref() != Some(expected.as_str()) {
            return Err("bad digest".to_owned());
        }
        Ok(())
    }
}

fn parse_profiles(text: &str) -> Result<Vec<Profile>, String> {
    let mut profiles: Vec<Profile> = Vec::new();
    for entry in text.split(',') {
        let bad = || format!("--profiles entry {entry:?} is not NAME:WIDTHxHEIGHT:H264|H265|JPEG|MPEG4");
        let parts: Vec<&str> = entry.split(':').collect();
        let [name, size, encoding] = parts[..] else {
            return Err(bad());
        };
        let (width, height) = size.split_once('x').ok_or_else(bad)?;
        // The name becomes a token, an RTSP path and XML text: keep it plain.
        let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        if name.is_empty()
            || !name.bytes().all(plain)
            || !["H264", "H265", "JPEG", "MPEG4"].contains(&encoding)
            || profiles.iter().any(|p| p.name == name)
        {
            return Err(bad());
        }
        profiles.push(Profile {
            name: name.to_owned(),
            width: width.parse().map_err(|_| bad())?,
            height: height.parse().map_err(|_| bad())?,
            encoding: encoding.to_owned(),
        });
    }
    Ok(profiles)
}

// ---- WS-Discovery ----

fn serve_discovery(listen: &UdpSocket, reply: &UdpSocket, camera: &Camera) {
    let mut buf = vec![0; 65_536];
    loop {
        let (len, from) = match listen.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) => {
                event(&format!("discovery receive error: {e}"));
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match probe_message_id(&buf[..len]) {
            Ok(id) => {
                event(&format!("probe from {from}"));
                if camera.malformed {
                    send_malformed(reply, from, camera, &id);
                } else {
                    let answer = probe_matches(camera, &id, Some(&camera.xaddr(DEVICE_PATH)));
                    match reply.send_to(answer.as_bytes(), from) {
                        Ok(_) => event(&format!("sent ProbeMatches to {from}")),
                        Err(e) => event(&format!("send ProbeMatches to {from}: {e}")),
                    }
                }
            }
            Err(why) => event(&format!("ignored datagram from {from} ({why})")),
        }
    }
}

/// The MessageID of a Probe for NetworkVideoTransmitters (or for any type); else why it is not one.
fn probe_message_id(datagram: &[u8]) -> Result<String, String> {
    let xml = std::str::from_utf8(datagram).map_err(|_| "not UTF-8")?;
    if text(xml, "Action").as_deref() != Some(PROBE_ACTION) || body_operation(xml) != Some("Probe") {
        return Err("not a Probe".to_owned());
    }
    if let Some(types) = text(xml, "Types") {
        let local = |qname: &str| qname.rsplit(':').next() == Some("NetworkVideoTransmitter");
        if !types.is_empty() && !types.split_whitespace().any(local) {
            return Err(format!("probe for types {types:?}"));
        }
    }
    text(xml, "MessageID")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| "probe without MessageID".to_owned())
}

/// A ProbeMatches in the gSOAP style many cameras send; `xaddrs: None` leaves the element out.
fn probe_matches(camera: &Camera, relates_to: &str, xaddrs: Option<&str>) -> String {
    let scopes = format!(
        "onvif://www.onvif.org/type/video_encoder onvif://www.onvif.org/Profile/Streaming \
         onvif://www.onvif.org/name/{} onvif://www.onvif.org/hardware/{}",
        percent_encode(&camera.name),
        percent_encode(&camera.hardware)
    );
    let xaddrs = xaddrs.map_or(String::new(), |x| {
        format!("<wsdd:XAddrs>{}</wsdd:XAddrs>", escape(x))
    });
    let message = uuid(&fastrand::u128(..).to_be_bytes());
    let number = MESSAGE_NUMBER.fetch_add(1, Ordering::Relaxed) + 1;
    let endpoint = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, camera.name.as_bytes());
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<SOAP-ENV:Envelope {NS}><SOAP-ENV:Header>\
         <wsa:MessageID>urn:uuid:{message}</wsa:MessageID><wsa:RelatesTo>{}</wsa:RelatesTo>\
         <wsa:To SOAP-ENV:mustUnderstand=\"true\">\
         http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:To>\
         <wsa:Action SOAP-ENV:mustUnderstand=\"true\">\
         http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</wsa:Action>\
         <wsdd:AppSequence InstanceId=\"{}\" MessageNumber=\"{number}\"/></SOAP-ENV:Header>\
         <SOAP-ENV:Body><wsdd:ProbeMatches><wsdd:ProbeMatch><wsa:EndpointReference>\
         <wsa:Address>urn:uuid:{}</wsa:Address></wsa:EndpointReference>\
         <wsdd:Types>dn:NetworkVideoTransmitter tds:Device</wsdd:Types><wsdd:Scopes>{scopes}</wsdd:Scopes>\
         {xaddrs}<wsdd:MetadataVersion>1</wsdd:MetadataVersion></wsdd:ProbeMatch></wsdd:ProbeMatches>\
         </SOAP-ENV:Body></SOAP-ENV:Envelope>",
        escape(relates_to),
        camera.instance,
        uuid(endpoint.as_ref()),
    )
}

/// `--malformed`: everything a broken or hostile camera might answer, and nothing a client may use.
fn send_malformed(socket: &UdpSocket, to: SocketAddr, camera: &Camera, relates_to: &str) {
    let good = probe_matches(camera, relates_to, Some(&camera.xaddr(DEVICE_PATH)));
    let cut = good.find("<wsdd:Scopes>").unwrap_or(good.len() / 2);
    let other_id = format!("urn:uuid:{}", uuid(&fastrand::u128(..).to_be_bytes()));
    let nested = format!("{}{}", r#"<a b="">"#.repeat(5000), "</a>".repeat(5000));
    // A header of its own (a client may drop a repeated MessageID unparsed), then nothing in the Body
    // but 60 KB of nesting.
    let header = probe_matches(camera, relates_to, None);
    let body_at = header
        .find("<SOAP-ENV:Body>")
        .map_or(0, |at| at + "<SOAP-ENV:Body>".len());
    let deep = format!(
        "{}{nested}</SOAP-ENV:Body></SOAP-ENV:Envelope>",
        &header[..body_at]
    );
    let datagrams: [(&str, Vec<u8>); 6] = [
        ("garbage", (0..200).map(|_| fastrand::u8(..)).collect()),
        ("truncated", good.as_bytes()[..cut].to_vec()),
        (
            "wrong-relates-to",
            probe_matches(camera, &other_id, Some(&camera.xaddr(DEVICE_PATH))).into(),
        ),
        (
            "foreign-xaddrs",
            probe_matches(
                camera,
                relates_to,
                Some("http://192.168.77.50:8000/onvif/device_service"),
            )
            .into(),
        ),
        ("no-xaddrs", probe_matches(camera, relates_to, None).into()),
        ("deep-nesting", deep.into()),
    ];
    for (i, (kind, datagram)) in datagrams.iter().enumerate() {
        let n = i + 1;
        match socket.send_to(datagram, to) {
            Ok(len) => event(&format!("sent malformed {n}/6 {kind} ({len} bytes) to {to}")),
            Err(e) => event(&format!("send malformed {n}/6 {kind} to {to}: {e}")),
        }
    }
}

/// A name-based UUID (version 5 layout) from the first 16 bytes of `bytes`, so a camera keeps its
/// endpoint address across restarts, as real ones do.
fn uuid(bytes: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    for at in [20, 16, 12, 8] {
        hex.insert(at, '-');
    }
    hex
}

/// Scope values are URIs: anything but unreserved characters percent-encoded (a space as `%20`).
fn percent_encode(text: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}

// ---- ONVIF over HTTP ----

struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// A 401's `WWW-Authenticate`.
    challenge: Option<String>,
}

impl Reply {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            challenge: None,
        }
    }
}

fn soap(status: u16, body: &str) -> Reply {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <SOAP-ENV:Envelope {NS}><SOAP-ENV:Body>{body}</SOAP-ENV:Body></SOAP-ENV:Envelope>"
    );
    Reply::new(status, SOAP, body)
}

/// A SOAP 1.2 Fault (HTTP 400) with ONVIF's nested subcodes.
fn fault(code: &str, subcodes: &[&str], reason: &str) -> Reply {
    let subcodes: String = subcodes.iter().rev().fold(String::new(), |inner, value| {
        format!("<SOAP-ENV:Subcode><SOAP-ENV:Value>{value}</SOAP-ENV:Value>{inner}</SOAP-ENV:Subcode>")
    });
    soap(
        400,
        &format!(
            "<SOAP-ENV:Fault><SOAP-ENV:Code><SOAP-ENV:Value>SOAP-ENV:{code}</SOAP-ENV:Value>{subcodes}\
             </SOAP-ENV:Code><SOAP-ENV:Reason><SOAP-ENV:Text xml:lang=\"en\">{reason}</SOAP-ENV:Text>\
             </SOAP-ENV:Reason></SOAP-ENV:Fault>"
        ),
    )
}

fn plain(status: u16, why: &str) -> Reply {
    event(&format!("http {status} ({why})"));
    Reply::new(status, TEXT, format!("{why}\n"))
}

fn connection(mut stream: TcpStream, camera: &Camera) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let reply = match read_request(&mut stream) {
        Ok(request) if request.method == "GET" => snapshot(camera, &request),
        Ok(request) => handle(camera, &request.path, &request.body),
        Err(reply) => reply,
    };
    let Reply {
        status,
        content_type,
        body,
        challenge,
    } = reply;
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Content Too Large",
        _ => "Request Header Fields Too Large",
    };
    let challenge = challenge.map_or(String::new(), |c| format!("WWW-Authenticate: {c}\r\n"));
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nServer: onvif-camera\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         {challenge}Connection: close\r\n\r\n",
        status,
        content_type,
        body.len()
    );
    if stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&body))
        .is_ok()
    {
        // Drain what the client still sends (a body we refused) so closing does not reset the
        // connection before it has read the answer.
        let _ = stream.shutdown(Shutdown::Write);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = std::io::copy(&mut (&mut stream).take(2 * MAX_BODY as u64), &mut std::io::sink());
    }
}

/// One request the camera serves: a POST to a service, or `GET /snapshot.jpg`.
struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
}

/// One request, or the answer to give instead.
fn read_request(stream: &mut TcpStream) -> Result<Request, Reply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_len = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(plain(431, "head too large"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(plain(400, "closed before the end of the head")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(plain(400, &format!("read: {e}"))),
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    if let Err(e) = request.parse(&buf[..head_len]) {
        return Err(plain(400, &format!("bad head: {e}")));
    }
    let header = |name: &str| {
        let found = request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name));
        found.map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let method = request.method.unwrap_or_default();
    let path = request
        .path
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default();
    let served = match method {
        "POST" => path == DEVICE_PATH || path == MEDIA_PATH,
        "GET" => path == SNAPSHOT_PATH,
        _ => false,
    };
    if !served {
        return Err(plain(404, &format!("{method} {path}")));
    }
    if header("transfer-encoding").is_some() {
        return Err(plain(411, "chunked bodies not supported"));
    }
    let length: usize = match header("content-length").map(|v| v.parse()) {
        Some(Ok(length)) if length > MAX_BODY => return Err(plain(413, &format!("body of {length} bytes"))),
        Some(Ok(length)) => length,
        Some(Err(_)) => return Err(plain(400, "bad Content-Length")),
        None => 0,
    };
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let (method, path) = (method.to_owned(), path.to_owned());
    let authorization = header("authorization");
    let mut body = buf.split_off(head_len);
    body.truncate(length);
    let mut rest = vec![0; length - body.len()];
    stream
        .read_exact(&mut rest)
        .map_err(|e| plain(400, &format!("body: {e}")))?;
    body.extend_from_slice(&rest);
    let body = String::from_utf8(body).map_err(|_| plain(400, "body is not UTF-8"))?;
    Ok(Request {
        method,
        path,
        authorization,
        body,
    })
}

fn handle(camera: &Camera, path: &str, body: &str) -> Reply {
    let not_supported = || fault("Receiver", &["ter:ActionNotSupported"], "Action not implemented");
    let Some(operation) = body_operation(body) else {
        event("http 400 (no operation in a SOAP Body)");
        return fault("Sender", &["ter:WellFormed"], "Well-formed Error");
    };
    // Media operations only on the media service, so a client must take its XAddr from GetCapabilities.
    let service = match operation {
        "GetSystemDateAndTime" | "GetCapabilities" => DEVICE_PATH,
        "GetProfiles" | "GetStreamUri" => MEDIA_PATH,
        "GetSnapshotUri" if camera.snapshot => MEDIA_PATH,
        _ => {
            event(&format!("http {operation} not supported"));
            return not_supported();
        }
    };
    if path != service {
        event(&format!("http {operation} not supported on {path}"));
        return not_supported();
    }
    if operation == "GetSystemDateAndTime" {
        event("http GetSystemDateAndTime");
        return soap(200, &system_date_and_time(camera.now()));
    }
    if let Err(why) = camera.authorize(body) {
        event(&format!("http {operation} unauthorized ({why})"));
        return fault("Sender", &["ter:NotAuthorized"], "Sender not Authorized");
    }
    let reply = match operation {
        "GetCapabilities" => format!(
            "<tds:GetCapabilitiesResponse><tds:Capabilities><tt:Device><tt:XAddr>{}</tt:XAddr></tt:Device>\
             <tt:Media><tt:XAddr>{}</tt:XAddr><tt:StreamingCapabilities><tt:RTPMulticast>false\
             </tt:RTPMulticast><tt:RTP_TCP>true</tt:RTP_TCP><tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP>\
             </tt:StreamingCapabilities></tt:Media></tds:Capabilities></tds:GetCapabilitiesResponse>",
            camera.xaddr(DEVICE_PATH),
            camera.xaddr(MEDIA_PATH)
        ),
        "GetProfiles" => {
            let profiles: String = camera.profiles.iter().map(profile_xml).collect();
            format!("<trt:GetProfilesResponse>{profiles}</trt:GetProfilesResponse>")
        }
        _ => {
            let token = text(body, "ProfileToken").unwrap_or_default();
            let Some(profile) = camera
                .profiles
                .iter()
                .find(|p| format!("{}_token", p.name) == token)
            else {
                event(&format!("http {operation} authorized (no profile {token:?})"));
                return fault(
                    "Sender",
                    &["ter:InvalidArgVal", "ter:NoProfile"],
                    "Profile token does not exist",
                );
            };
            if operation == "GetSnapshotUri" {
                // One picture for every profile, as most cameras do.
                event(&format!("http {operation} authorized"));
                return soap(
                    200,
                    &format!(
                        "<trt:GetSnapshotUriResponse><trt:MediaUri><tt:Uri>{}</tt:Uri>\
                         <tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>false\
                         </tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri>\
                         </trt:GetSnapshotUriResponse>",
                        camera.xaddr(SNAPSHOT_PATH)
                    ),
                );
            }
            format!(
                "<trt:GetStreamUriResponse><trt:MediaUri><tt:Uri>rtsp://{}:554/{}</tt:Uri>\
                 <tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>false\
                 </tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri>\
                 </trt:GetStreamUriResponse>",
                camera.address, profile.name
            )
        }
    };
    event(&format!("http {operation} authorized"));
    soap(200, &reply)
}

// ---- The snapshot, behind HTTP Digest or Basic ----

/// `GET /snapshot.jpg`: the JPEG for the camera's user and password, else a 401 with a challenge.
fn snapshot(camera: &Camera, request: &Request) -> Reply {
    if !camera.snapshot {
        return plain(404, &format!("GET {} (no snapshots)", request.path));
    }
    let checked = match &request.authorization {
        None => Err("no credentials".to_owned()),
        Some(authorization) if camera.snapshot_basic => camera.check_basic(authorization),
        Some(authorization) => camera.check_digest(authorization, &request.method, &request.path),
    };
    if let Err(why) = checked {
        event(&format!("http snapshot unauthorized ({why})"));
        let challenge = if camera.snapshot_basic {
            format!("Basic realm=\"{REALM}\"")
        } else {
            format!(
                "Digest realm=\"{REALM}\", qop=\"auth\", nonce=\"{}\", algorithm=MD5",
                camera.new_nonce()
            )
        };
        return Reply {
            challenge: Some(challenge),
            ..Reply::new(401, TEXT, "401 Unauthorized\n")
        };
    }
    let sha256 = digest::digest(&digest::SHA256, SNAPSHOT_JPEG);
    let hex: String = sha256.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let scheme = if camera.snapshot_basic { "basic" } else { "digest" };
    event(&format!(
        "http snapshot sent ({scheme}, {} bytes, sha256 {hex})",
        SNAPSHOT_JPEG.len()
    ));
    Reply::new(200, "image/jpeg", SNAPSHOT_JPEG)
}

impl Camera {
    fn new_nonce(&self) -> String {
        let nonce = format!("{:032x}", fastrand::u128(..));
        let mut nonces = self.nonces.lock().unwrap_or_else(PoisonError::into_inner);
        if nonces.len() >= MAX_NONCES {
            nonces.remove(0);
        }
        nonces.push(nonce.clone());
        nonce
    }

    fn check_basic(&self, authorization: &str) -> Result<(), String> {
        let encoded = authorization.strip_prefix("Basic ").ok_or("not Basic")?;
        let decoded = BASE64.decode(encoded.trim()).map_err(|_| "bad Base64")?;
        let expected = format!("{}:{}", self.user, self.password);
        if decoded != expected.as_bytes() {
            return Err("wrong user or password".to_owned());
        }
        Ok(())
    }

    /// RFC 7616 with MD5 and `qop=auth`, on a nonce this camera gave out.
    fn check_digest(&self, authorization: &str, method: &str, path: &str) -> Result<(), String> {
        let fields = authorization
            .strip_prefix("Digest ")
            .map(digest_fields)
            .ok_or("not Digest")?;
        let field = |name: &str| {
            fields
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        };
        if field("username") != Some(self.user.as_str()) {
            return Err("unknown user".to_owned());
        }
        if field("realm") != Some(REALM) || field("uri") != Some(path) || field("qop") != Some("auth") {
            return Err("realm, uri or qop not this request's".to_owned());
        }
        if !field("algorithm").is_none_or(|a| a.eq_ignore_ascii_case("MD5")) {
            return Err("not MD5".to_owned());
        }
        let nonce = field("nonce").ok_or("no nonce")?;
        let known = self.nonces.lock().unwrap_or_else(PoisonError::into_inner);
        if !known.iter().any(|n| n == nonce) {
            return Err("unknown nonce".to_owned());
        }
        drop(known);
        let (nc, cnonce) = (field("nc").ok_or("no nc")?, field("cnonce").ok_or("no cnonce")?);
        let md5 = |text: String| -> String {
            Md5::digest(text.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let ha1 = md5(format!("{}:{REALM}:{}", self.user, self.password));
        let ha2 = md5(format!("{method}:{path}"));
        let expected = md5(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        if field("response") != Some(expected.as_str()) {
            return Err("bad digest".to_owned());
        }
        Ok(())
    }
}

/// A Digest `Authorization`'s `name=value` and `name="quoted value"` pairs.
fn digest_fields(text: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut rest = text.trim_start();
    while let Some(equals) = rest.find('=') {
        let name = rest[..equals].trim().trim_start_matches(',').trim().to_owned();
        rest = rest[equals + 1..].trim_start();
        let mut value = String::new();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((at, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = at + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = &quoted[end..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        fields.push((name, value));
        rest = rest.trim_start().trim_start_matches(',').trim_start();
    }
    fields
}

fn system_date_and_time(now: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(now).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>Manual</tt:DateTimeType>\
         <tt:DaylightSavings>false</tt:DaylightSavings><tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>\
         <tt:UTCDateTime><tt:Time><tt:Hour>{}</tt:Hour><tt:Minute>{}</tt:Minute><tt:Second>{}</tt:Second>\
         </tt:Time><tt:Date><tt:Year>{}</tt:Year><tt:Month>{}</tt:Month><tt:Day>{}</tt:Day>\
         </tt:Date></tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>",
        at.hour(),
        at.minute(),
        at.second(),
        at.year(),
        u8::from(at.month()),
        at.day()
    )
}

fn profile_xml(p: &Profile) -> String {
    let Profile {
        name,
        width,
        height,
        encoding,
    } = p;
    format!(
        "<trt:Profiles token=\"{name}_token\" fixed=\"true\"><tt:Name>{name}</tt:Name>\
         <tt:VideoEncoderConfiguration token=\"{name}_encoder\"><tt:Name>{name}</tt:Name>\
         <tt:UseCount>1</tt:UseCount><tt:Encoding>{encoding}</tt:Encoding><tt:Resolution>\
         <tt:Width>{width}</tt:Width><tt:Height>{height}</tt:Height></tt:Resolution>\
         <tt:Quality>5</tt:Quality></tt:VideoEncoderConfiguration></trt:Profiles>"
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` to seconds since the epoch.
fn parse_utc(text: &str) -> Option<i64> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    (at.offset().is_utc() && text.ends_with('Z')).then(|| at.unix_timestamp())
}

// ---- XML scanning (local names only; enough for SOAP requests, robust against junk) ----

/// A start tag: its local name, its attribute text and where its content begins.
struct Tag<'a> {
    local: &'a str,
    attrs: &'a str,
    content: usize,
}

fn start_tags(xml: &str) -> impl Iterator<Item = Tag<'_>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        loop {
            let open = pos + xml.get(pos..)?.find('<')?;
            let close = open + xml[open..].find('>')?;
            pos = close + 1;
            let inner = &xml[open + 1..close];
            if inner.starts_with(['/', '?', '!']) {
                continue;
            }
            let inner = inner.strip_suffix('/').unwrap_or(inner);
            let (name, attrs) = inner.split_at(inner.find(char::is_whitespace).unwrap_or(inner.len()));
            let local = name.rsplit(':').next().unwrap_or(name);
            return Some(Tag {
                local,
                attrs,
                content: pos,
            });
        }
    })
}

/// The trimmed, unescaped text of the first element named `local`.
fn text(xml: &str, local: &str) -> Option<String> {
    let tag = start_tags(xml).find(|tag| tag.local == local)?;
    let content = xml.get(tag.content..)?;
    let raw = &content[..content.find('<').unwrap_or(content.len())];
    let unescaped = raw
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    Some(unescaped.trim().to_owned())
}

/// The local name of the first element inside the SOAP Body: the operation.
fn body_operation(xml: &str) -> Option<&str> {
    let mut tags = start_tags(xml).skip_while(|tag| tag.local != "Body");
    tags.next()?;
    tags.next().map(|tag| tag.local).filter(|local| !local.is_empty())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
