//! An upstream that answers like iSpy Agent DVR's URL space and records every request head it parses. The
//! integration tests run it behind camgate's proxy inside a namespace; the benchmark uses its endless
//! `video.mjpg`.
//!
//! Usage: `fake-dvr --listen ADDR [--listen ADDR ...] --log FILE [--tls-cert PEM --tls-key PEM
//! --tls-listen ADDR ...]`. Prints `listening ADDR` per bound listener, then serves until killed.
//!
//! `--log` gets one JSON object per line for every parsed request head, written before the body is read
//! and before answering: `{"listener","peer","method","target","version","headers":[[name,value],...]}`,
//! or `{"listener","peer","unparsable"}` when the head does not parse (then: 400 and close).
//!
//! Routes (paths compare case-insensitively, as Agent DVR runs on .NET; `LAST` is the last path segment
//! at any depth):
//!
//! | request | answer |
//! |---|---|
//! | `Upgrade: websocket` + `Sec-WebSocket-Key`, any path | 101, then echo text/binary messages |
//! | LAST `live.html` | 200 html with `<img id="live" src="video.mjpg?size=4096&fps=5">` |
//! | path `/`, ending in `/` or `.html` | 200 html `fake-dvr gui PATH` |
//! | LAST `grab.jpg` | 200 image/jpeg, 1 KiB |
//! | LAST `video.mjpg?size=BYTES&fps=N` | endless multipart/x-mixed-replace JPEG frames (16384, 10) |
//! | LAST `video.mp4` `video.webm` `audio.mp3` `audio.ogg` `audio.wav` | 200, small fixed body |
//! | LAST `ptz.cgi`, `command.cgi` | 200 `ok LAST QUERY` |
//! | LAST `eventcounts.json` | 200 `{"events":3}` |
//! | POST/PUT `/upload` | 200 `received N bytes sha256 HEX` |
//! | `/malformed`, `/malformed-nul` | raw responses with broken header lines |
//! | `/redirect` | 302 with Location, Content-Location, Refresh naming this server's own address |
//! | `/slow?ms=N` | 200 `slow` after N ms |
//! | `/headers` | 200 the request headers as JSON `[[name,value],...]` |
//! | `/close-early` | Content-Length 100 but 5 body bytes, then close |
//! | anything else | 404 `fake-dvr: no such path` |

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use httparse::Status;
use ring::digest;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

const USAGE: &str = "usage: fake-dvr --listen ADDR [--listen ADDR ...] --log FILE \
                     [--tls-cert PEM --tls-key PEM --tls-listen ADDR ...]";
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
const HTML: &str = "text/html; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const BOUNDARY: &str = "fakedvrboundary";

const MALFORMED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Good: yes\r\n\
    This line has no colon\r\nX-Space-Before-Colon : v\r\nX-Folded: first\r\n  continued\r\n\
    Content-Length: 9\r\n\r\nmalformed";
/// Like [`MALFORMED`] plus a NUL in a header value, which no proxy may pass on.
const MALFORMED_NUL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Good: yes\r\nX-Nul: a\0b\r\n\
    This line has no colon\r\nX-Space-Before-Colon : v\r\nX-Folded: first\r\n  continued\r\n\
    Content-Length: 9\r\n\r\nmalformed";
const CLOSE_EARLY: &[u8] = b"HTTP/1.1 200 OK\r\nServer: fake-dvr\r\nContent-Length: 100\r\n\r\nshort";

// Just enough of each format for a client or a content sniffer to recognise it.
const MP4: &[u8] = b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2";
const WEBM: &[u8] = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08\
    \x42\x82\x84webm\x42\x87\x81\x04\x42\x85\x81\x02";
const MP3: &[u8] = b"ID3\x04\0\0\0\0\0\0\xff\xfb\x90\x64";
const OGG: &[u8] = b"OggS\0\x02\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
const WAV: &[u8] =
    b"RIFF\x24\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0\x80\x3e\0\0\x02\0\x10\0data\0\0\0\0";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-dvr: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let args = Args::parse().map_err(|e| format!("{e}\n{USAGE}"))?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .map_err(|e| format!("{}: {e}", args.log))?;
    let log = Arc::new(Log(Mutex::new(file)));
    let tls = args
        .tls
        .as_ref()
        .map(|(cert, key)| tls_config(cert, key))
        .transpose()?;
    let mut listeners = Vec::new();
    for addr in &args.listen {
        listeners.push((bind(addr)?, None));
    }
    for addr in &args.tls_listen {
        listeners.push((bind(addr)?, tls.clone()));
    }
    let mut stdout = io::stdout().lock();
    for (listener, _) in &listeners {
        writeln!(stdout, "listening {}", listener.0).map_err(|e| e.to_string())?;
    }
    stdout.flush().map_err(|e| e.to_string())?;
    drop(stdout);
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|(listener, tls)| {
            let log = Arc::clone(&log);
            thread::spawn(move || accept_loop(&listener, tls.as_ref(), &log))
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

struct Args {
    listen: Vec<String>,
    tls_listen: Vec<String>,
    log: String,
    /// Certificate and key PEM files.
    tls: Option<(String, String)>,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let (mut listen, mut tls_listen) = (Vec::new(), Vec::new());
        let (mut log, mut tls_cert, mut tls_key) = (None, None, None);
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--listen" => listen.push(value),
                "--tls-listen" => tls_listen.push(value),
                "--log" => log = Some(value),
                "--tls-cert" => tls_cert = Some(value),
                "--tls-key" => tls_key = Some(value),
                _ => return Err(format!("unknown argument {flag}")),
            }
        }
        if listen.is_empty() && tls_listen.is_empty() {
            return Err("no --listen or --tls-listen".to_owned());
        }
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) if !tls_listen.is_empty() => Some((cert, key)),
            (None, None) if tls_listen.is_empty() => None,
            _ => return Err("--tls-listen, --tls-cert and --tls-key go together".to_owned()),
        };
        let log = log.ok_or("no --log")?;
        Ok(Self {
            listen,
            tls_listen,
            log,
            tls,
        })
    }
}

/// A bound listener and its address (port 0 resolved), as `listening` and the log report it.
struct Bound(SocketAddr, TcpListener);

fn bind(addr: &str) -> Result<Bound, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| format!("bind {addr}: {e}"))?;
    Ok(Bound(local, listener))
}

fn tls_config(cert: &str, key: &str) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{cert}: {e}"))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("{cert}, {key}: {e}"))?;
    Ok(Arc::new(config))
}

fn accept_loop(Bound(listener_addr, listener): &Bound, tls: Option<&Arc<ServerConfig>>, log: &Arc<Log>) {
    loop {
        let Ok((tcp, peer)) = listener.accept() else {
            // Mostly EMFILE; the test or benchmark that caused it will close connections.
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        let ctx = Ctx {
            listener: *listener_addr,
            local: tcp.local_addr().unwrap_or(*listener_addr),
            peer,
            log: Arc::clone(log),
        };
        let tls = tls.map(Arc::clone);
        thread::spawn(move || {
            let _ = tcp.set_nodelay(true);
            match tls {
                None => serve(tcp, &ctx),
                Some(config) => {
                    if let Ok(conn) = ServerConnection::new(config) {
                        serve(StreamOwned::new(conn, tcp), &ctx);
                    }
                }
            }
        });
    }
}

/// What a connection knows about where it came from.
struct Ctx {
    listener: SocketAddr,
    /// The address the client connected to: `/redirect` leaks it the way a DVR would.
    local: SocketAddr,
    peer: SocketAddr,
    log: Arc<Log>,
}

struct Log(Mutex<File>);

impl Log {
    fn request(&self, ctx: &Ctx, req: &Request) {
        self.write(&format!(
            r#"{{"listener":{},"peer":{},"method":{},"target":{},"version":{},"headers":{}}}"#,
            json_str(&ctx.listener.to_string()),
            json_str(&ctx.peer.to_string()),
            json_str(&req.method),
            json_str(&req.target),
            json_str(if req.version == 0 { "HTTP/1.0" } else { "HTTP/1.1" }),
            req.headers_json(),
        ));
    }

    fn unparsable(&self, ctx: &Ctx, head: &[u8]) {
        self.write(&format!(
            r#"{{"listener":{},"peer":{},"unparsable":{}}}"#,
            json_str(&ctx.listener.to_string()),
            json_str(&ctx.peer.to_string()),
            json_str(&String::from_utf8_lossy(&head[..head.len().min(200)])),
        ));
    }

    /// One write per line, so lines from concurrent connections never interleave.
    fn write(&self, entry: &str) {
        let line = format!("{entry}\n");
        let mut file = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = file.write_all(line.as_bytes()) {
            eprintln!("fake-dvr: writing the log: {e}");
        }
    }
}

fn json_str(s: &str) -> String {
    Value::from(s).to_string()
}

/// A connection's byte stream, plain or TLS.
trait Transport: Read + Write {
    /// Ends the connection so the last response survives: closing with unread input would send a RST,
    /// which can make the client's kernel drop the response before the client reads it.
    fn finish(&mut self);
}

impl Transport for TcpStream {
    fn finish(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
        let _ = self.set_read_timeout(Some(Duration::from_secs(1)));
        let mut sink = [0; 4096];
        let mut drained = 0;
        while drained < MAX_HEAD {
            match self.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }
}

impl Transport for StreamOwned<ServerConnection, TcpStream> {
    fn finish(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        self.sock.finish();
    }
}

/// A parsed request head, owned.
struct Request {
    method: String,
    target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    fn from_parsed(req: &httparse::Request<'_, '_>) -> Self {
        Self {
            method: req.method.unwrap_or_default().to_owned(),
            target: req.path.unwrap_or_default().to_owned(),
            version: req.version.unwrap_or_default(),
            headers: req
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect(),
        }
    }

    fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether a comma-separated header such as `Connection` lists `token`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }

    fn keep_alive(&self) -> bool {
        self.version == 1 && !self.has_token("connection", "close")
    }

    fn is_websocket(&self) -> bool {
        self.has_token("upgrade", "websocket") && self.headers_named("sec-websocket-key").next().is_some()
    }

    fn body(&self) -> io::Result<Body> {
        if self.headers_named("transfer-encoding").next().is_some() {
            return if self.has_token("transfer-encoding", "chunked") {
                Ok(Body::Chunked)
            } else {
                Err(invalid("unsupported Transfer-Encoding"))
            };
        }
        let mut lengths = self.headers_named("content-length").map(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(())
        });
        match lengths.next() {
            None => Ok(Body::Length(0)),
            Some(Ok(n)) if lengths.all(|other| other == Ok(n)) => Ok(Body::Length(n)),
            Some(_) => Err(invalid("bad Content-Length")),
        }
    }

    /// The raw path and query.
    fn path_query(&self) -> (&str, &str) {
        self.target.split_once('?').unwrap_or((&self.target, ""))
    }

    fn headers_json(&self) -> String {
        let pairs: Vec<Vec<String>> = self
            .headers
            .iter()
            .map(|(n, v)| vec![n.clone(), String::from_utf8_lossy(v).into_owned()])
            .collect();
        Value::from(pairs).to_string()
    }
}

#[derive(Clone, Copy)]
enum Body {
    Length(u64),
    Chunked,
}

/// What a request body contained.
struct Received {
    len: u64,
    sha256: digest::Digest,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

enum Head {
    Request(Request),
    Unparsable,
    Closed,
}

/// A response with a complete body; `encode` adds `Server`, `Content-Length` and, when closing,
/// `Connection: close`.
struct Reply {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn new(status: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("200 OK", body).header("Content-Type", content_type)
    }

    fn text(status: &'static str, body: &str) -> Self {
        Self::new(status, body).header("Content-Type", TEXT)
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn encode(&self, head_only: bool, close: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {}\r\nServer: fake-dvr\r\n", self.status);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        if close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn serve<T: Transport>(io: T, ctx: &Ctx) {
    let mut conn = Conn { io, buf: Vec::new() };
    loop {
        let req = match conn.read_head() {
            Head::Request(req) => req,
            Head::Closed => return,
            Head::Unparsable => {
                ctx.log.unparsable(ctx, &conn.buf);
                let _ = conn.send(
                    &Reply::text("400 Bad Request", "fake-dvr: bad request"),
                    false,
                    true,
                );
                return conn.io.finish();
            }
        };
        ctx.log.request(ctx, &req);
        if req.is_websocket() {
            return websocket(conn, &req);
        }
        match conn.exchange(&req, ctx) {
            Ok(true) => {}
            Ok(false) => return conn.io.finish(),
            Err(_) => return,
        }
    }
}

struct Conn<T> {
    io: T,
    /// Bytes read but not consumed yet: the rest of a head, a body, pipelined requests.
    buf: Vec<u8>,
}

impl<T: Transport> Conn<T> {
    /// Reads more input into `buf`; `Ok(false)` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0; 16 * 1024];
        let n = self.io.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    fn fill_or_eof(&mut self) -> io::Result<()> {
        if self.fill()? {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }

    fn read_head(&mut self) -> Head {
        loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut parsed = httparse::Request::new(&mut headers);
                match parsed.parse(&self.buf) {
                    Ok(Status::Complete(len)) => {
                        let req = Request::from_parsed(&parsed);
                        self.buf.drain(..len);
                        return Head::Request(req);
                    }
                    Ok(Status::Partial) if self.buf.len() < MAX_HEAD => {}
                    _ => return Head::Unparsable,
                }
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) if !self.buf.is_empty() => return Head::Unparsable,
                Ok(false) | Err(_) => return Head::Closed,
            }
        }
    }

    /// Reads the request's body and answers it; `Ok(false)` when the connection must close.
    fn exchange(&mut self, req: &Request, ctx: &Ctx) -> io::Result<bool> {
        let body = req.body();
        if matches!(body, Ok(Body::Chunked | Body::Length(1..))) && req.has_token("expect", "100-continue") {
            self.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        match body.and_then(|body| self.read_body(body)) {
            Ok(received) => self.dispatch(req, &received, ctx),
            Err(_) => {
                self.send(
                    &Reply::text("400 Bad Request", "fake-dvr: bad request body"),
                    false,
                    true,
                )?;
                Ok(false)
            }
        }
    }

    fn read_body(&mut self, body: Body) -> io::Result<Received> {
        let mut len = 0;
        let mut sha256 = digest::Context::new(&digest::SHA256);
        let mut sink = |data: &[u8]| {
            len += data.len() as u64;
            sha256.update(data);
        };
        match body {
            Body::Length(n) => self.copy(n, &mut sink)?,
            Body::Chunked => self.dechunk(&mut sink)?,
        }
        Ok(Received {
            len,
            sha256: sha256.finish(),
        })
    }

    fn copy(&mut self, mut n: u64, sink: &mut impl FnMut(&[u8])) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() {
                self.fill_or_eof()?;
            }
            let take = usize::try_from(n).map_or(self.buf.len(), |n| n.min(self.buf.len()));
            sink(&self.buf[..take]);
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }

    fn dechunk(&mut self, sink: &mut impl FnMut(&[u8])) -> io::Result<()> {
        loop {
            let size = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(Status::Complete((used, size))) => {
                        self.buf.drain(..used);
                        break size;
                    }
                    Ok(Status::Partial) if self.buf.len() < MAX_HEAD => self.fill_or_eof()?,
                    _ => return Err(invalid("bad chunk size")),
                }
            };
            if size == 0 {
                // Trailers, up to the empty line.
                while !matches!(self.read_line()?.as_slice(), b"\r\n" | b"\n") {}
                return Ok(());
            }
            self.copy(size, sink)?;
            if !matches!(self.read_line()?.as_slice(), b"\r\n" | b"\n") {
                return Err(invalid("chunk data longer than its size"));
            }
        }
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                return Ok(self.buf.drain(..=end).collect());
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(invalid("line too long"));
            }
            self.fill_or_eof()?;
        }
    }

    fn send(&mut self, reply: &Reply, head_only: bool, close: bool) -> io::Result<()> {
        self.io.write_all(&reply.encode(head_only, close))?;
        self.io.flush()
    }

    fn dispatch(&mut self, req: &Request, received: &Received, ctx: &Ctx) -> io::Result<bool> {
        let keep = req.keep_alive();
        let (raw_path, query) = req.path_query();
        let path = raw_path.to_ascii_lowercase();
        let last = path.rsplit('/').next().unwrap_or_default();
        let reply = match (path.as_str(), last) {
            (_, "live.html") => Reply::ok(HTML, LIVE_PAGE),
            (p, _) if p.ends_with('/') || p.ends_with(".html") => {
                Reply::ok(HTML, format!("<html><body>fake-dvr gui {raw_path}</body></html>"))
            }
            (_, "grab.jpg") => Reply::ok("image/jpeg", jpeg(1024)),
            (_, "video.mjpg") => {
                mjpeg(&mut self.io, req.version == 1, query)?;
                return Ok(false);
            }
            (_, "video.mp4") => Reply::ok("video/mp4", MP4),
            (_, "video.webm") => Reply::ok("video/webm", WEBM),
            (_, "audio.mp3") => Reply::ok("audio/mpeg", MP3),
            (_, "audio.ogg") => Reply::ok("audio/ogg", OGG),
            (_, "audio.wav") => Reply::ok("audio/wav", WAV),
            (_, "ptz.cgi" | "command.cgi") => Reply::ok(TEXT, format!("ok {last} {query}")),
            (_, "eventcounts.json") => Reply::ok("application/json", r#"{"events":3}"#),
            ("/upload", _) if matches!(req.method.as_str(), "POST" | "PUT") => {
                let hex: String = received
                    .sha256
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                Reply::ok(TEXT, format!("received {} bytes sha256 {hex}", received.len))
            }
            ("/upload", _) => {
                Reply::text("405 Method Not Allowed", "fake-dvr: POST or PUT").header("Allow", "POST, PUT")
            }
            ("/malformed", _) => return self.raw(MALFORMED, keep),
            ("/malformed-nul", _) => return self.raw(MALFORMED_NUL, keep),
            ("/redirect", _) => {
                let base = format!("http://{}", ctx.local);
                Reply::new("302 Found", "")
                    .header("Location", format!("{base}/login?next=%2F"))
                    .header("Content-Location", format!("{base}/redirect"))
                    .header("Refresh", format!("0; url={base}/gui.html"))
            }
            ("/slow", _) => {
                thread::sleep(Duration::from_millis(num(query, "ms", 0)));
                Reply::ok(TEXT, "slow")
            }
            ("/headers", _) => Reply::ok("application/json", req.headers_json()),
            ("/close-early", _) => return self.raw(CLOSE_EARLY, false),
            _ => Reply::text("404 Not Found", "fake-dvr: no such path"),
        };
        self.send(&reply, req.method == "HEAD", !keep)?;
        Ok(keep)
    }

    /// Writes a response exactly as given.
    fn raw(&mut self, response: &[u8], keep: bool) -> io::Result<bool> {
        self.io.write_all(response)?;
        self.io.flush()?;
        Ok(keep)
    }
}

/// A DVR's live view: one MJPEG tile, as a browser test opens it.
const LIVE_PAGE: &str = "<!doctype html><html><head><title>fake-dvr live</title></head><body>\
    <h1>fake-dvr live</h1><img id=\"live\" alt=\"camera\" src=\"video.mjpg?size=4096&amp;fps=5\"></body></html>";

/// Parses query parameter `key` (a simple split on `&` and `=`, no decoding), or `default`.
fn num<N: FromStr>(query: &str, key: &str, default: N) -> N {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(default)
}

/// A 16×16 baseline JPEG (made once with ffmpeg, its comment segment removed), so browsers can decode
/// the frames: the browser test checks that the `<img>` shows them.
const TINY_JPEG: &[u8] = b"\
    \xff\xd8\xff\xe0\x00\x10\x4a\x46\x49\x46\x00\x01\x02\x00\x00\x01\x00\x01\x00\x00\xff\xdb\x00\x43\
    \x00\x08\x14\x14\x17\x14\x17\x1b\x1b\x1b\x1b\x1b\x1b\x20\x1e\x20\x21\x21\x21\x20\x20\x20\x20\x21\
    \x21\x21\x24\x24\x24\x2a\x2a\x2a\x24\x24\x24\x21\x21\x24\x24\x28\x28\x2a\x2a\x2e\x2f\x2e\x2b\x2b\
    \x2a\x2b\x2f\x2f\x32\x32\x32\x3c\x3c\x39\x39\x46\x46\x48\x56\x56\x67\xff\xc4\x00\x4c\x00\x01\x01\
    \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x01\x01\x01\x00\x00\x00\x00\x00\
    \x00\x00\x00\x00\x00\x00\x00\x00\x00\x06\x07\x10\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
    \x00\x00\x00\x00\x00\x11\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\
    \xc0\x00\x11\x08\x00\x10\x00\x10\x03\x01\x22\x00\x02\x11\x00\x03\x11\x00\xff\xda\x00\x0c\x03\x01\
    \x00\x02\x11\x03\x11\x00\x3f\x00\x8a\x02\x88\x2c\xff\xd9\
";

/// A decodable JPEG of exactly `len` bytes (at least the 206 of [`TINY_JPEG`]): padded with comment
/// segments after the JFIF header, and the last 1–3 bytes as fill bytes (0xFF) before the next marker.
fn jpeg(len: usize) -> Vec<u8> {
    const HEADER: usize = 20; // SOI + APP0
    let mut image = TINY_JPEG[..HEADER].to_vec();
    let mut pad = len.saturating_sub(TINY_JPEG.len());
    while pad >= 4 {
        let payload = (pad - 4).min(65_533);
        let length = u16::try_from(payload + 2).expect("at most 65535");
        image.extend_from_slice(&[0xff, 0xfe]);
        image.extend_from_slice(&length.to_be_bytes());
        image.resize(image.len() + payload, 0);
        pad -= payload + 4;
    }
    image.resize(image.len() + pad, 0xff);
    image.extend_from_slice(&TINY_JPEG[HEADER..]);
    image
}

/// Agent DVR's `video.mjpg`: JPEG parts at `fps` until the client goes away (the write error ends it).
/// HTTP/1.0 clients get the parts unchunked, delimited by the close.
fn mjpeg(io: &mut impl Write, chunked: bool, query: &str) -> io::Result<()> {
    let size = num(query, "size", 16384_usize).min(16 << 20);
    let fps = num(query, "fps", 10_u32).clamp(1, 100);
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\n"
    } else {
        "Connection: close\r\n"
    };
    io.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nServer: fake-dvr\r\n\
             Content-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\n\
             Cache-Control: no-cache\r\n{framing}\r\n"
        )
        .as_bytes(),
    )?;
    let image = jpeg(size);
    let mut part = format!(
        "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        image.len()
    )
    .into_bytes();
    part.extend_from_slice(&image);
    part.extend_from_slice(b"\r\n");
    if chunked {
        let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
        chunk.extend_from_slice(&part);
        chunk.extend_from_slice(b"\r\n");
        part = chunk;
    }
    let interval = Duration::from_secs(1) / fps;
    let mut next = Instant::now();
    loop {
        io.write_all(&part)?;
        io.flush()?;
        next += interval;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// Answers the upgrade and echoes text and binary messages until the client closes.
fn websocket<T: Transport>(mut conn: Conn<T>, req: &Request) {
    let key = req.headers_named("sec-websocket-key").next().unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nServer: fake-dvr\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        tungstenite::handshake::derive_accept_key(key.trim_ascii())
    );
    // Clients that ask for subprotocols fail the handshake unless one is chosen.
    let protocols = req
        .headers_named("sec-websocket-protocol")
        .next()
        .map(String::from_utf8_lossy);
    if let Some(first) = protocols.as_deref().and_then(|p| p.split(',').next()) {
        head.push_str(&format!("Sec-WebSocket-Protocol: {}\r\n", first.trim()));
    }
    head.push_str("\r\n");
    if conn
        .io
        .write_all(head.as_bytes())
        .and_then(|()| conn.io.flush())
        .is_err()
    {
        return;
    }
    let mut ws = WebSocket::from_partially_read(conn.io, conn.buf, Role::Server, None);
    while let Ok(message) = ws.read() {
        if matches!(message, Message::Text(_) | Message::Binary(_)) && ws.send(message).is_err() {
            return;
        }
    }
}
