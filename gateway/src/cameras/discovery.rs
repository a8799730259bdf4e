//! ONVIF discovery on the camera NIC: a WS-Discovery probe to
//! 239.255.255.250:3702 from camgate's camera address (discovery is
//! link-local: it cannot cross from the LAN), the answers gathered for a
//! few seconds, then each device with a login in `[[camera]]` asked for its
//! media profiles, their RTSP URLs and their snapshot URLs.
//!
//! Cameras are untrusted: only answers from the camera subnet count, and a
//! device's service URL is followed only when it names the address the
//! answer came from (a camera cannot send camgate to the LAN); so are its
//! media service and its snapshot URLs, which camgate fetches later.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ipnet::Ipv4Net;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use super::onvif::{self, OnvifError, Profile};
use crate::config::network::{CameraLogin, KnownCamera};

const MULTICAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 3702);
/// How long answers are gathered (WS-Discovery's MATCH_TIMEOUT is 4 s;
/// cameras answer within a few hundred milliseconds).
pub const WINDOW: Duration = Duration::from_secs(3);
/// The probe goes out twice: multicast over UDP is lossy.
const REPEAT_AFTER: Duration = Duration::from_millis(500);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// ONVIF answers camgate reads are a few KiB.
const MAX_ANSWER: usize = 1 << 20;
const MAX_DEVICES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot probe from {address}: {source}")]
    Socket {
        address: Ipv4Addr,
        source: std::io::Error,
    },
}

/// A device that answered the probe.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub address: Ipv4Addr,
    /// `urn:uuid:…`, stable across address changes.
    pub endpoint: String,
    /// Its device service URL.
    pub xaddr: String,
    /// From its ONVIF scopes.
    pub name: Option<String>,
    pub hardware: Option<String>,
    /// With a login: its media profiles and RTSP URLs.
    pub profiles: Vec<Profile>,
    /// Why there are no profiles.
    pub error: Option<String>,
}

/// Probes the segment of `camgate` (camgate's address on it) and asks each
/// answering device with a login among `known` for its stream URLs.
pub async fn discover(camgate: Ipv4Net, known: &[KnownCamera]) -> Result<Vec<Device>, DiscoveryError> {
    let mut devices = probe(camgate).await?;
    let client = client();
    let mut asking = tokio::task::JoinSet::new();
    for (index, device) in devices.iter().enumerate() {
        let login = known
            .iter()
            .find(|k| k.address == device.address)
            .and_then(|k| k.login.clone());
        let (client, xaddr) = (client.clone(), device.xaddr.clone());
        asking.spawn(async move {
            let result = match login {
                Some(login) => stream_profiles(&client, &xaddr, &login).await,
                None => Err("no login for this camera in [[camera]] (username, password)".to_owned()),
            };
            (index, result)
        });
    }
    while let Some(Ok((index, result))) = asking.join_next().await {
        match result {
            Ok(profiles) => devices[index].profiles = profiles,
            Err(why) => devices[index].error = Some(why),
        }
    }
    Ok(devices)
}

/// Plain HTTP to cameras, a connection per request (cameras are slow to
/// close idle ones, and few keep them).
pub(super) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(super) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

async fn probe(camgate: Ipv4Net) -> Result<Vec<Device>, DiscoveryError> {
    let own = camgate.addr();
    let failed = |source| DiscoveryError::Socket { address: own, source };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(failed)?;
    socket.bind(&SocketAddr::from((own, 0)).into()).map_err(failed)?;
    // Out of the camera NIC only, never routed on.
    socket.set_multicast_if_v4(&own).map_err(failed)?;
    socket.set_multicast_ttl_v4(1).map_err(failed)?;
    socket.set_multicast_loop_v4(false).map_err(failed)?;
    socket.set_nonblocking(true).map_err(failed)?;
    let socket = tokio::net::UdpSocket::from_std(socket.into()).map_err(failed)?;

    let message_id = format!("urn:uuid:{}", random_uuid());
    let probe = onvif::probe(&message_id);
    socket
        .send_to(probe.as_bytes(), MULTICAST)
        .await
        .map_err(failed)?;
    let deadline = tokio::time::Instant::now() + WINDOW;
    let mut repeat = Some(tokio::time::Instant::now() + REPEAT_AFTER);
    let mut devices: Vec<Device> = Vec::new();
    let mut buffer = vec![0u8; 65_536];
    loop {
        let wake = repeat.map_or(deadline, |at| at.min(deadline));
        let received = tokio::select! {
            () = tokio::time::sleep_until(wake) => None,
            received = socket.recv_from(&mut buffer) => Some(received),
        };
        match received {
            None if repeat.is_some() && wake < deadline => {
                repeat = None;
                let _ = socket.send_to(probe.as_bytes(), MULTICAST).await;
            }
            None => break,
            Some(Ok((length, SocketAddr::V4(from)))) if camgate.contains(from.ip()) => {
                let text = String::from_utf8_lossy(&buffer[..length]);
                match device(&text, &message_id, *from.ip()) {
                    Ok(device) => {
                        if devices.len() < MAX_DEVICES && !devices.iter().any(|d| d.address == device.address)
                        {
                            tracing::info!(camera = %device.address, endpoint = %device.endpoint,
                                name = device.name.as_deref().unwrap_or("-"), "ONVIF device found");
                            devices.push(device);
                        }
                    }
                    Err(why) => tracing::debug!(from = %from, "ignored a discovery answer: {why}"),
                }
            }
            Some(Ok((_, from))) => {
                tracing::debug!(%from, "ignored a discovery answer from outside the camera subnet");
            }
            Some(Err(e)) => tracing::debug!("discovery receive: {e}"),
        }
    }
    devices.sort_by_key(|d| d.address);
    Ok(devices)
}

/// The device in a ProbeMatches from `from`, with a service URL on `from`.
fn device(text: &str, message_id: &str, from: Ipv4Addr) -> Result<Device, String> {
    let matches = onvif::probe_matches(text, message_id).map_err(|e| e.to_string())?;
    for found in matches {
        let own_xaddr = found.xaddrs.iter().find(|xaddr| {
            xaddr.parse::<http::Uri>().is_ok_and(|uri| {
                uri.scheme_str() == Some("http") && uri.host() == Some(from.to_string().as_str())
            })
        });
        if let Some(xaddr) = own_xaddr {
            return Ok(Device {
                address: from,
                endpoint: found.endpoint,
                xaddr: xaddr.clone(),
                name: onvif::scope(&found.scopes, "name"),
                hardware: onvif::scope(&found.scopes, "hardware"),
                profiles: Vec::new(),
                error: None,
            });
        }
    }
    Err(format!("no http service URL on {from} in the answer"))
}

/// GetSystemDateAndTime (the camera's clock, for the token's timestamp),
/// GetCapabilities (the media service), GetProfiles, GetStreamUri and
/// GetSnapshotUri each.
async fn stream_profiles(
    client: &HttpClient,
    xaddr: &str,
    login: &CameraLogin,
) -> Result<Vec<Profile>, String> {
    let device_service: http::Uri = xaddr.parse().map_err(|e| format!("{xaddr}: {e}"))?;
    let camera_now =
        onvif::system_time(&call(client, &device_service, None, onvif::GET_SYSTEM_DATE_AND_TIME).await?)
            .map_err(explain)?;
    // The camera's clock may be off: keep its offset from ours.
    let offset = camera_now - unix_now();
    let token = || {
        let mut nonce = [0u8; 16];
        let _ = getrandom::fill(&mut nonce);
        onvif::username_token(
            &login.username,
            &login.password,
            &nonce,
            &onvif::created(unix_now() + offset),
        )
    };
    let media = onvif::media_xaddr(
        &call(
            client,
            &device_service,
            Some(&token()),
            onvif::GET_MEDIA_CAPABILITIES,
        )
        .await?,
    )
    .map_err(explain)?;
    // Only on the same camera; anything else stays with the device service.
    let media_service = media
        .parse::<http::Uri>()
        .ok()
        .filter(|uri| uri.host() == device_service.host() && uri.scheme_str() == Some("http"))
        .unwrap_or_else(|| device_service.clone());
    let mut profiles =
        onvif::profiles(&call(client, &media_service, Some(&token()), onvif::GET_PROFILES).await?)
            .map_err(explain)?;
    let mut ask_snapshots = true;
    for profile in &mut profiles {
        let answer = call(
            client,
            &media_service,
            Some(&token()),
            &onvif::get_stream_uri(&profile.token),
        )
        .await?;
        profile.stream_uri = Some(onvif::stream_uri(&answer).map_err(explain)?);
        if ask_snapshots {
            let snapshot = call(
                client,
                &media_service,
                Some(&token()),
                &onvif::get_snapshot_uri(&profile.token),
            )
            .await;
            (profile.snapshot_uri, ask_snapshots) = snapshot_uri(snapshot, &device_service, &profile.token);
        }
    }
    Ok(profiles)
}

/// GetSnapshotUri's `answer` for a profile, kept only when on the camera,
/// and whether to ask for the next profile's. Snapshots are optional in
/// ONVIF: a fault is no snapshot, not a failed discovery; a camera that has
/// none (ActionNotSupported) or does not answer is not asked again.
fn snapshot_uri(
    answer: Result<String, String>,
    device_service: &http::Uri,
    profile: &str,
) -> (Option<String>, bool) {
    let camera = device_service.host().unwrap_or_default();
    let answer = match answer {
        Ok(answer) => answer,
        Err(why) => {
            tracing::debug!(%camera, %profile, "GetSnapshotUri: {why}");
            return (None, false);
        }
    };
    match onvif::snapshot_uri(&answer) {
        Ok(uri) => {
            let own = on_camera(&uri, device_service);
            if own.is_none() {
                // Not the URI itself: some cameras put their login in it.
                tracing::info!(%camera, %profile,
                    "ignored a snapshot URI that is not plain HTTP on the camera's own address");
            }
            (own, true)
        }
        Err(OnvifError::Fault(fault)) => {
            tracing::debug!(%camera, %profile, "no snapshot: {fault}");
            (None, !fault.contains("ActionNotSupported"))
        }
        Err(e) => {
            tracing::debug!(%camera, %profile, "GetSnapshotUri: {e}");
            (None, true)
        }
    }
}

/// `uri` if it is plain HTTP on the camera whose device service is
/// `device_service` (any port): a camera cannot send camgate elsewhere. A
/// login in it is dropped (camgate logs in with `[[camera]]`'s own, and the
/// report shows no password).
fn on_camera(uri: &str, device_service: &http::Uri) -> Option<String> {
    let parsed = uri.parse::<http::Uri>().ok()?;
    let authority = parsed.authority()?;
    let own = parsed.scheme_str() == Some("http")
        && device_service.host().is_some_and(|host| authority.host() == host);
    let host_port = authority.as_str().rsplit('@').next()?;
    let target = parsed
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    own.then(|| format!("http://{host_port}{target}"))
}

fn explain(error: OnvifError) -> String {
    match error {
        OnvifError::Fault(fault) if fault.contains("NotAuthorized") => {
            format!("the camera refused the login in [[camera]] ({fault})")
        }
        other => other.to_string(),
    }
}

/// One SOAP call; the answer's text whatever the HTTP status (ONVIF faults
/// come with 400 or 500).
async fn call(
    client: &HttpClient,
    service: &http::Uri,
    security: Option<&str>,
    body: &str,
) -> Result<String, String> {
    let request = http::Request::post(service.clone())
        .header(http::header::CONTENT_TYPE, "application/soap+xml; charset=utf-8")
        .body(Full::new(Bytes::from(onvif::envelope(
            security.unwrap_or_default(),
            body,
        ))))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{service}: {e}"))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("{service}: {e}"))?
            .to_bytes();
        if bytes.is_empty() && !status.is_success() {
            return Err(format!("{service}: HTTP {status}"));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{service}: no answer in {}s", CALL_TIMEOUT.as_secs()))?
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A random (version 4) UUID for the probe's MessageID.
fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(xaddrs: &str) -> String {
        format!(
            r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Header><RelatesTo>urn:uuid:p</RelatesTo></e:Header><e:Body><ProbeMatches><ProbeMatch><EndpointReference><Address>urn:uuid:cam</Address></EndpointReference><Scopes>onvif://www.onvif.org/name/porch</Scopes><XAddrs>{xaddrs}</XAddrs></ProbeMatch></ProbeMatches></e:Body></e:Envelope>"#
        )
    }

    #[test]
    fn a_device_is_followed_only_on_its_own_address() {
        let from: Ipv4Addr = "10.77.0.11".parse().unwrap();
        let own = device(
            &matches("http://[fe80::1]/onvif http://10.77.0.11:8000/onvif/device_service"),
            "urn:uuid:p",
            from,
        )
        .unwrap();
        assert_eq!(own.xaddr, "http://10.77.0.11:8000/onvif/device_service");
        assert_eq!(own.name.as_deref(), Some("porch"));
        for elsewhere in [
            "http://192.168.77.50:8000/onvif/device_service",
            "https://10.77.0.11/onvif/device_service",
            "http://10.77.0.110/onvif",
            "",
        ] {
            assert!(
                device(&matches(elsewhere), "urn:uuid:p", from).is_err(),
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn snapshot_uris_are_kept_only_on_the_camera() {
        let service: http::Uri = "http://10.77.0.11:8000/onvif/device_service".parse().unwrap();
        for own in [
            "http://10.77.0.11:8000/snapshot.jpg",
            "http://10.77.0.11/onvif-http/snapshot?Profile_1",
            "http://10.77.0.11:80/cgi-bin/snapshot.cgi?channel=1",
        ] {
            assert_eq!(on_camera(own, &service).as_deref(), Some(own));
        }
        assert_eq!(
            on_camera("http://admin:secret@10.77.0.11/snapshot.jpg", &service).as_deref(),
            Some("http://10.77.0.11/snapshot.jpg"),
            "a login in the URI is dropped"
        );
        assert_eq!(
            on_camera("http://10.77.0.11:8000", &service).as_deref(),
            Some("http://10.77.0.11:8000/")
        );
        for elsewhere in [
            "http://192.168.77.50:8000/snapshot.jpg",
            "http://10.77.0.110/snapshot.jpg",
            "https://10.77.0.11/snapshot.jpg",
            "http://10.77.0.11@192.168.77.50/snapshot.jpg",
            "http://10.77.0.11:8000@192.168.77.50/snapshot.jpg",
            "/snapshot.jpg",
            "rtsp://10.77.0.11/snapshot",
            "not a uri",
        ] {
            assert_eq!(on_camera(elsewhere, &service), None, "{elsewhere}");
        }
        let answer = |uri: &str| {
            Ok(format!(
                "<e:Envelope xmlns:e=\"x\"><e:Body><GetSnapshotUriResponse><MediaUri><Uri>{uri}</Uri></MediaUri></GetSnapshotUriResponse></e:Body></e:Envelope>"
            ))
        };
        assert_eq!(
            snapshot_uri(answer("http://10.77.0.11:8000/s.jpg"), &service, "main"),
            (Some("http://10.77.0.11:8000/s.jpg".to_owned()), true)
        );
        assert_eq!(
            snapshot_uri(answer("http://192.168.77.50/s.jpg"), &service, "main"),
            (None, true)
        );
        let fault = |subcode: &str| {
            Ok(format!(
                "<e:Envelope xmlns:e=\"x\"><e:Body><e:Fault><e:Code><e:Value>e:Receiver</e:Value><e:Subcode><e:Value>ter:{subcode}</e:Value></e:Subcode></e:Code></e:Fault></e:Body></e:Envelope>"
            ))
        };
        assert_eq!(
            snapshot_uri(fault("ActionNotSupported"), &service, "main"),
            (None, false),
            "no snapshots on this camera: not asked again"
        );
        assert_eq!(
            snapshot_uri(fault("NoProfile"), &service, "main"),
            (None, true),
            "another profile may have one"
        );
        assert_eq!(
            snapshot_uri(Err("no answer in 5s".to_owned()), &service, "main"),
            (None, false)
        );
    }

    #[test]
    fn uuids_are_version_4() {
        let uuid = random_uuid();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert_ne!(uuid, random_uuid());
    }
}
