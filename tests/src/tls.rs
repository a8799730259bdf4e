//! A TLS client for talking to camgate byte for byte: requests are written
//! raw (crafted targets, smuggling attempts), the server's certificate is
//! verified against PEM files the test names, and the SNI is whatever the
//! test says (none for an IP address).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::netns::Netns;

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

impl TlsClient {
    /// Trusts exactly the certificates in `pem_files`; offers `alpn`.
    pub fn trusting(pem_files: &[&Path], alpn: &[&[u8]]) -> Self {
        let mut roots = RootCertStore::empty();
        for file in pem_files {
            for certificate in CertificateDer::pem_file_iter(file).expect("read PEM") {
                roots.add(certificate.expect("parse PEM")).expect("add root");
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every connection does a full handshake, so it shows the
        // certificate the server serves now.
        config.resumption = rustls::client::Resumption::disabled();
        Self {
            config: Arc::new(config),
        }
    }

    /// Connects and completes the handshake. `server_name` is sent as SNI
    /// unless it is an IP address. Call inside the client's namespace.
    pub fn connect(&self, address: SocketAddr, server_name: &str) -> std::io::Result<TlsStream> {
        let name = ServerName::try_from(server_name.to_owned()).expect("server name");
        let connection =
            ClientConnection::new(Arc::clone(&self.config), name).map_err(std::io::Error::other)?;
        let socket = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut stream = StreamOwned::new(connection, socket);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(stream)
    }

    /// Sends `request` on a new connection from `netns` and reads until
    /// the server closes (or 10 s pass).
    pub fn exchange(
        &self,
        netns: &Netns,
        address: SocketAddr,
        server_name: &str,
        request: &[u8],
    ) -> RawResponse {
        netns.run(|| {
            let mut stream = self
                .connect(address, server_name)
                .unwrap_or_else(|e| panic!("TLS to {address} as {server_name}: {e}"));
            stream.write_all(request).expect("write request");
            stream.flush().expect("flush");
            RawResponse {
                bytes: read_to_close(&mut stream),
            }
        })
    }
}

/// Reads until EOF, a reset or the read timeout; what arrived is returned.
pub fn read_to_close(stream: &mut impl Read) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16384];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    bytes
}

/// Everything the server sent on one connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub bytes: Vec<u8>,
}

impl RawResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status of the first response; 0 if none arrived.
    pub fn status(&self) -> u16 {
        self.statuses().first().copied().unwrap_or(0)
    }

    /// Statuses of every response head on the connection, in order, found
    /// by parsing heads and skipping bodies by Content-Length.
    pub fn statuses(&self) -> Vec<u16> {
        let mut statuses = Vec::new();
        let mut rest = &self.bytes[..];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(head)) = response.parse(rest) else {
                return statuses;
            };
            statuses.push(response.code.unwrap_or(0));
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                .unwrap_or(0);
            rest = rest.get(head + length..).unwrap_or_default();
        }
    }

    /// A header of the first response.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers_named(name).into_iter().next()
    }

    /// Every value of a header of the first response (e.g. `Set-Cookie`).
    pub fn headers_named(&self, name: &str) -> Vec<String> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        if response.parse(&self.bytes).is_err() {
            return Vec::new();
        }
        response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .collect()
    }

    /// The body of the first response (after the blank line).
    pub fn body(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }
}

/// A `GET` with `Connection: close` and a test id header.
pub fn get_request(target: &str, host: &str, id: &str) -> Vec<u8> {
    get_request_with(target, host, id, "")
}

/// [`get_request`] with `extra` header lines (each ending in `\r\n`).
pub fn get_request_with(target: &str, host: &str, id: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nX-Test-Id: {id}\r\n{extra}Connection: close\r\n\r\n")
        .into_bytes()
}
