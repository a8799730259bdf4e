//! Header rules for forwarding, kept apart from I/O so they are unit
//! tested: which host a request is for, request framing checks, hop-by-hop
//! stripping, the forwarded-for headers, and rewriting the upstream's own
//! address in redirects (Apache's `ProxyPassReverse`).

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use ipnet::IpNet;

/// The host a request is for, from `Host` or the HTTP/2 `:authority`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHost {
    /// Lower-case, without port; IPv6 without brackets.
    pub name: String,
    /// As the client sent it (port included), for `Host` upstream and
    /// `X-Forwarded-Host`.
    pub original: String,
    pub is_ip: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request names no host")]
    Missing,
    #[error("the request has more than one Host header")]
    Several,
    #[error("the Host header is not a valid host")]
    Invalid,
    #[error("the target's host and the Host header disagree")]
    Disagree,
}

/// Which host the request is for. An absolute-form target (HTTP/1) or
/// `:authority` (HTTP/2) must agree with a `Host` header if both are sent.
pub fn request_host<B>(request: &Request<B>) -> Result<RequestHost, HostError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Several);
    }
    let header = header
        .map(|value| value.to_str().map_err(|_| HostError::Invalid))
        .transpose()?;
    let authority = request.uri().authority().map(http::uri::Authority::as_str);
    let (original, (name, is_ip)) = match (header, authority) {
        (Some(header), Some(authority)) => {
            let host = split_host(header)?;
            if host.0 != split_host(authority)?.0 {
                return Err(HostError::Disagree);
            }
            (header, host)
        }
        (Some(host), None) | (None, Some(host)) => (host, split_host(host)?),
        (None, None) => return Err(HostError::Missing),
    };
    Ok(RequestHost {
        name,
        original: original.to_owned(),
        is_ip,
    })
}

/// `host[:port]` → (lower-case host, is an IP literal).
fn split_host(text: &str) -> Result<(String, bool), HostError> {
    let authority: http::uri::Authority = text.parse().map_err(|_| HostError::Invalid)?;
    if authority.as_str().contains('@') {
        return Err(HostError::Invalid);
    }
    let host = authority.host();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let is_ip = bare.parse::<IpAddr>().is_ok();
    if host.is_empty() || (host.starts_with('[') && !is_ip) {
        return Err(HostError::Invalid);
    }
    Ok((bare.to_ascii_lowercase(), is_ip))
}

/// Framing that hyper's parser accepts but a careful proxy refuses: more
/// than one `Transfer-Encoding`, or any coding besides exactly `chunked`
/// (hyper already refuses a final coding other than chunked, differing
/// `Content-Length`s, and drops `Content-Length` when `Transfer-Encoding`
/// is present, closing the connection after the response).
pub fn check_framing(headers: &HeaderMap) -> Result<(), &'static str> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next()
        && (codings.next().is_some() || !coding.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        return Err("Transfer-Encoding must be exactly \"chunked\"");
    }
    if headers.get_all(header::CONTENT_LENGTH).iter().nth(1).is_some() {
        return Err("more than one Content-Length");
    }
    Ok(())
}

/// Whether this is a websocket opening handshake (HTTP/1.1 `Upgrade`).
pub fn is_websocket_upgrade<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && connection_has(request.headers(), "upgrade")
        && request
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, `Upgrade`, and every header the
/// `Connection` header names. Runs before camgate adds its own headers,
/// so `Connection: X-Forwarded-For` cannot remove them.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    remove_where(headers, |name| {
        HOP_BY_HOP.contains(name) || name == header::UPGRADE || named.contains(name)
    });
}

/// One scan over the names present instead of a lookup per unwanted name:
/// requests carry a handful of headers, the lists here are longer.
fn remove_where(headers: &mut HeaderMap, unwanted: impl Fn(&HeaderName) -> bool) {
    let doomed: Vec<HeaderName> = headers.keys().filter(|name| unwanted(name)).cloned().collect();
    for name in doomed {
        headers.remove(name);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers through which a client could claim another address or scheme.
const CLIENT_CLAIMS: [HeaderName; 12] = [
    header::FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    X_FORWARDED_PORT,
    HeaderName::from_static("x-forwarded-server"),
    X_REAL_IP,
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("fastly-client-ip"),
];

/// The client's address: the socket's, or, when the socket peer is a
/// trusted proxy, the right-most `X-Forwarded-For` entry that is not one.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&ip.to_canonical()));
    if !is_trusted(&peer) {
        return peer.to_canonical();
    }
    let chain: Vec<IpAddr> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map_while(|entry| entry.trim().parse().ok())
        .collect();
    chain
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
        .to_canonical()
}

/// What camgate tells the upstream about the request.
#[derive(Debug)]
pub struct ForwardedFacts<'a> {
    pub client: IpAddr,
    /// The socket peer, when it is a trusted proxy whose chain is kept.
    pub via_trusted_proxy: Option<IpAddr>,
    pub host: &'a RequestHost,
    pub port: u16,
}

/// Replaces whatever the client sent in the forwarding headers with
/// camgate's own view (the chain is kept only from trusted proxies). Only
/// the HTTPS listener forwards, so the protocol is always `https`.
pub fn set_forwarded(headers: &mut HeaderMap, facts: &ForwardedFacts<'_>) {
    let received_chain = facts.via_trusted_proxy.and_then(|_| {
        let entries: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        (!entries.is_empty()).then(|| entries.join(", "))
    });
    remove_where(headers, |name| CLIENT_CLAIMS.contains(name));
    let proto = "https";
    let client = facts.client.to_string();
    let forwarded = match facts.client {
        IpAddr::V4(_) => format!("for={client};proto={proto};host=\"{}\"", facts.host.original),
        IpAddr::V6(_) => format!(
            "for=\"[{client}]\";proto={proto};host=\"{}\"",
            facts.host.original
        ),
    };
    let Ok(client) = HeaderValue::try_from(client) else {
        unreachable!("an IP address is a valid header value")
    };
    let xff = match (received_chain, facts.via_trusted_proxy) {
        (Some(chain), Some(peer)) => HeaderValue::try_from(format!("{chain}, {peer}")).ok(),
        _ => Some(client.clone()),
    };
    // Host and forwarded come from a parsed Host header, so they are valid
    // header values; a failure would only omit the header.
    let host = HeaderValue::try_from(facts.host.original.as_str()).ok();
    let values = [
        (X_FORWARDED_FOR, xff),
        (X_FORWARDED_PROTO, Some(HeaderValue::from_static(proto))),
        (X_FORWARDED_HOST, host),
        (X_FORWARDED_PORT, Some(HeaderValue::from(facts.port))),
        (X_REAL_IP, Some(client)),
        (header::FORWARDED, HeaderValue::try_from(forwarded).ok()),
    ];
    for (name, value) in values {
        if let Some(value) = value {
            headers.insert(name, value);
        }
    }
}

/// Rewrites `Location`, `Content-Location` and `Refresh` values that point
/// at one of the upstream's own origins (`http://192.168.1.20:8090`) to
/// `https://` and the public host (with port) the client used.
pub fn rewrite_upstream_urls(headers: &mut HeaderMap, upstream_origins: &[String], public_host: &str) {
    for name in [header::LOCATION, header::CONTENT_LOCATION, header::REFRESH] {
        let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let rewritten = if name == header::REFRESH {
            // `5; url=http://…`
            value.find("url=").or_else(|| value.find("URL=")).and_then(|at| {
                let (head, url) = value.split_at(at + 4);
                rewrite_url(url, upstream_origins, public_host).map(|url| format!("{head}{url}"))
            })
        } else {
            rewrite_url(value, upstream_origins, public_host)
        };
        if let Some(value) = rewritten.and_then(|v| HeaderValue::try_from(v).ok()) {
            headers.insert(name, value);
        }
    }
}

fn rewrite_url(url: &str, upstream_origins: &[String], public_host: &str) -> Option<String> {
    upstream_origins.iter().find_map(|origin| {
        let rest = url.get(origin.len()..)?;
        let head = &url[..origin.len()];
        (head.eq_ignore_ascii_case(origin) && (rest.is_empty() || rest.starts_with(['/', '?', '#']))).then(
            || {
                format!(
                    "https://{public_host}{}",
                    if rest.is_empty() { "/" } else { rest }
                )
            },
        )
    })
}

/// `scheme://host:port` of an upstream, and the same without the port when
/// it is the scheme's default (both spellings occur in redirects).
pub fn origins_of(uri: &Uri) -> Vec<String> {
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Vec::new();
    };
    let mut origins = vec![format!("{scheme}://{authority}")];
    let default_port = if scheme == "https" { 443 } else { 80 };
    if authority.port_u16() == Some(default_port) {
        origins.push(format!("{scheme}://{}", authority.host()));
    }
    origins
}

/// Query parameters whose values never reach the log: credentials in URLs
/// (`?token=` for MJPEG embeds, `?auth=`, `?session=`, `?password=`…).
const SECRET_KEY_PARTS: [&str; 7] = ["token", "auth", "session", "passw", "pwd", "key", "secret"];

/// The query without the parameters `drop(key, value)` picks (decoded as
/// form data, the way `auth::presented` finds a token), the others byte for
/// byte; `None` if nothing is left.
pub fn without_query_param<'q>(
    query: Option<&'q str>,
    drop: impl Fn(&str, &str) -> bool,
) -> Option<Cow<'q, str>> {
    let query = query?;
    let dropped = |pair: &str| {
        form_urlencoded::parse(pair.as_bytes())
            .next()
            .is_some_and(|(k, v)| drop(&k, &v))
    };
    let kept: Vec<&str> = query.split('&').filter(|pair| !dropped(pair)).collect();
    if kept.len() == query.split('&').count() {
        return Some(Cow::Borrowed(query));
    }
    (!kept.is_empty()).then(|| Cow::Owned(kept.join("&")))
}

/// The query with the values of secret-looking parameters replaced.
pub fn scrub_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .to_ascii_lowercase();
            if !value.is_empty() && SECRET_KEY_PARTS.iter().any(|part| decoded.contains(part)) {
                format!("{key}=REDACTED")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Removes the cookies whose names start with `prefix` (camgate's own),
/// and joins the `Cookie` fields HTTP/2 may split into one, as an HTTP/1.1
/// upstream expects (RFC 9113 §8.2.3).
pub fn strip_cookies(headers: &mut HeaderMap, prefix: &str) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let Some(first) = values.next() else {
        return;
    };
    let split = values.next().is_some();
    let prefix = prefix.as_bytes();
    if !split && !first.as_bytes().windows(prefix.len()).any(|w| w == prefix) {
        return;
    }
    let kept: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty() && !pair.starts_with(prefix))
        .collect();
    let joined = kept.join(&b"; "[..]);
    headers.remove(header::COOKIE);
    if let Ok(value) = HeaderValue::from_bytes(&joined)
        && !joined.is_empty()
    {
        headers.insert(header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camgate_cookies_never_reach_the_dvr_and_split_cookies_are_joined() {
        let strip = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::COOKIE, HeaderValue::from_static(value));
            }
            strip_cookies(&mut headers, "__Host-camgate-");
            let left: Vec<&str> = headers
                .get_all(header::COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            left.join("|")
        };
        assert_eq!(strip(&[]), "");
        assert_eq!(strip(&["sid=1; theme=dark"]), "sid=1; theme=dark");
        assert_eq!(
            strip(&["sid=1; __Host-camgate-session=cgs_x;theme=dark"]),
            "sid=1; theme=dark"
        );
        assert_eq!(
            strip(&["__Host-camgate-session=cgs_x; __Host-camgate-csrf=y"]),
            ""
        );
        assert_eq!(
            strip(&["sid=1", "__Host-camgate-session=cgs_x", "theme=dark"]),
            "sid=1; theme=dark"
        );
        // Another cookie that merely contains the prefix in its value stays.
        assert_eq!(strip(&["a=__Host-camgate-x"]), "a=__Host-camgate-x");
    }

    #[test]
    fn only_the_named_parameter_leaves_the_query() {
        let strip = |q: Option<&str>| without_query_param(q, |k, _| k == "token").map(Cow::into_owned);
        assert_eq!(strip(None), None);
        assert_eq!(strip(Some("oids=1&size=2")).as_deref(), Some("oids=1&size=2"));
        assert_eq!(
            strip(Some("oids=1&token=cgt_x&a=%2F")).as_deref(),
            Some("oids=1&a=%2F")
        );
        assert_eq!(strip(Some("t%6Fken=cgt_x&token&token=y")), None);
        assert_eq!(
            strip(Some("tokens=1&x_token=2")).as_deref(),
            Some("tokens=1&x_token=2")
        );
    }

    fn request(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn host_from_header_or_authority() {
        let host = request_host(&request("/x", &[("host", "DVR.Example.org:8443")])).unwrap();
        assert_eq!((host.name.as_str(), host.is_ip), ("dvr.example.org", false));
        assert_eq!(host.original, "DVR.Example.org:8443");
        let v6 = request_host(&request("/x", &[("host", "[::1]:443")])).unwrap();
        assert_eq!((v6.name.as_str(), v6.is_ip), ("::1", true));
        let h2 = request_host(&request("https://dvr.example.org/x", &[])).unwrap();
        assert_eq!(h2.name, "dvr.example.org");

        for (target, headers, error) in [
            ("/x", vec![], HostError::Missing),
            ("/x", vec![("host", "a"), ("host", "b")], HostError::Several),
            ("/x", vec![("host", "user@dvr")], HostError::Invalid),
            ("/x", vec![("host", "dvr/x")], HostError::Invalid),
            ("/x", vec![("host", "[dvr]")], HostError::Invalid),
            ("/x", vec![("host", "")], HostError::Invalid),
            (
                "http://other.example/x",
                vec![("host", "dvr.example.org")],
                HostError::Disagree,
            ),
        ] {
            assert_eq!(
                request_host(&request(target, &headers)),
                Err(error),
                "{target} {headers:?}"
            );
        }
        assert!(
            request_host(&request(
                "http://DVR.example.org:80/x",
                &[("host", "dvr.example.org")]
            ))
            .is_ok()
        );
    }

    #[test]
    fn framing() {
        let headers = |list: &[(&str, &str)]| request("/", list).headers().clone();
        assert!(check_framing(&headers(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(check_framing(&headers(&[("transfer-encoding", "Chunked")])).is_ok());
        assert!(check_framing(&headers(&[("content-length", "5")])).is_ok());
        for bad in [
            vec![("transfer-encoding", "gzip, chunked")],
            vec![("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")],
            vec![("transfer-encoding", "chunked ,")],
            vec![("content-length", "5"), ("content-length", "5")],
        ] {
            assert!(check_framing(&headers(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go_forwarding_headers_are_camgates() {
        let mut headers = request(
            "/",
            &[
                ("connection", "keep-alive, X-Forwarded-For, x-secret"),
                ("keep-alive", "timeout=5"),
                ("x-secret", "1"),
                ("te", "trailers"),
                ("upgrade", "h2c"),
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
                ("true-client-ip", "6.6.6.6"),
                ("x-kept", "yes"),
            ],
        )
        .headers()
        .clone();
        strip_hop_by_hop(&mut headers);
        let host = RequestHost {
            name: "dvr.example.org".to_owned(),
            original: "dvr.example.org".to_owned(),
            is_ip: false,
        };
        let facts = ForwardedFacts {
            client: "203.0.113.9".parse().unwrap(),
            via_trusted_proxy: None,
            host: &host,
            port: 443,
        };
        set_forwarded(&mut headers, &facts);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "x-kept",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-forwarded-port",
                "x-real-ip",
                "forwarded"
            ]
        );
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9");
        assert_eq!(
            headers["forwarded"],
            "for=203.0.113.9;proto=https;host=\"dvr.example.org\""
        );
    }

    #[test]
    fn client_address_trusts_only_configured_proxies() {
        let headers = request("/", &[("x-forwarded-for", "198.51.100.1, 10.0.0.5")])
            .headers()
            .clone();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            client_address(peer, &headers, &trusted).to_string(),
            "198.51.100.1"
        );
        let stranger: IpAddr = "203.0.113.4".parse().unwrap();
        assert_eq!(client_address(stranger, &headers, &trusted), stranger);
        assert_eq!(client_address(peer, &HeaderMap::new(), &trusted), peer);
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert_eq!(client_address(mapped, &HeaderMap::new(), &[]), peer);
        let garbage = request("/", &[("x-forwarded-for", "nonsense, 10.0.0.9")])
            .headers()
            .clone();
        assert_eq!(client_address(peer, &garbage, &trusted), peer, "unparsable chain");
    }

    #[test]
    fn redirects_to_the_upstream_become_public() {
        let origins = origins_of(&"http://192.168.1.20:80/".parse().unwrap());
        assert_eq!(origins, ["http://192.168.1.20:80", "http://192.168.1.20"]);
        let mut headers = request(
            "/",
            &[
                ("location", "http://192.168.1.20/login?next=%2F"),
                ("content-location", "http://192.168.1.200/x"),
                ("refresh", "0; url=HTTP://192.168.1.20:80"),
            ],
        )
        .headers()
        .clone();
        rewrite_upstream_urls(&mut headers, &origins, "dvr.example.org");
        assert_eq!(headers["location"], "https://dvr.example.org/login?next=%2F");
        assert_eq!(
            headers["content-location"], "http://192.168.1.200/x",
            "another host"
        );
        assert_eq!(headers["refresh"], "0; url=https://dvr.example.org/");
    }

    #[test]
    fn secrets_in_queries_are_scrubbed() {
        assert_eq!(
            scrub_query("oids=1&token=abc&Auth=x&api%5Fkey=k&sessionid=s&pwd=p&size=2&token="),
            "oids=1&token=REDACTED&Auth=REDACTED&api%5Fkey=REDACTED&sessionid=REDACTED&pwd=REDACTED&size=2&token="
        );
    }
}
