//! Pure: the few ONVIF messages camgate sends (WS-Discovery Probe, device
//! and media calls with a WS-Security UsernameToken) and reading the
//! answers.
//!
//! Hand-written over roxmltree rather than a generated ONVIF client: camgate
//! needs five calls, and cameras vary their prefixes and schema versions,
//! so answers are read by element local name, never by prefix.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use roxmltree::{Document, Node, ParsingOptions};
use serde::Serialize;

/// Bigger answers are not ONVIF answers we want.
const MAX_NODES: u32 = 20_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnvifError {
    #[error("not XML: {0}")]
    Xml(String),
    #[error("no {0} in the answer")]
    Missing(&'static str),
    /// A SOAP fault: its subcode and reason.
    #[error("the camera refused: {0}")]
    Fault(String),
}

/// One ProbeMatch: a device answering camgate's probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeMatch {
    /// `urn:uuid:…`: the device's identity across address changes.
    pub endpoint: String,
    /// Device service URLs.
    pub xaddrs: Vec<String>,
    pub scopes: Vec<String>,
}

/// A media profile and, once asked, its RTSP URL and its snapshot URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub token: String,
    pub name: Option<String>,
    pub encoding: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub stream_uri: Option<String>,
    /// A JPEG (or PNG) of the profile over plain HTTP on the camera itself;
    /// none when the camera has no snapshots (a SOAP fault, as many answer)
    /// or names another host.
    pub snapshot_uri: Option<String>,
}

fn parse(text: &str) -> Result<Document<'_>, OnvifError> {
    Document::parse_with_options(
        text,
        ParsingOptions {
            nodes_limit: MAX_NODES,
            ..ParsingOptions::default()
        },
    )
    .map_err(|e| OnvifError::Xml(e.to_string()))
}

fn named<'a, 'input>(node: Node<'a, 'input>, name: &str) -> impl Iterator<Item = Node<'a, 'input>> {
    node.descendants()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

fn first<'a, 'input>(node: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    named(node, name).next()
}

fn text_of(node: Node<'_, '_>, name: &str) -> Option<String> {
    first(node, name)
        .and_then(|n| n.text())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// A SOAP fault in `document`, as `subcode: reason`.
fn fault(document: &Document<'_>) -> Option<OnvifError> {
    let fault = first(document.root(), "Fault")?;
    let subcode = named(fault, "Value")
        .filter_map(|n| n.text())
        .last()
        .map(|v| v.rsplit(':').next().unwrap_or(v).trim().to_owned());
    let reason = text_of(fault, "Text").or_else(|| text_of(fault, "faultstring"));
    Some(OnvifError::Fault(
        [subcode, reason]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": "),
    ))
}

/// Parses an answer to a call: its body, or its fault.
fn answer(text: &str) -> Result<Document<'_>, OnvifError> {
    let document = parse(text)?;
    match fault(&document) {
        Some(fault) => Err(fault),
        None => Ok(document),
    }
}

/// A WS-Discovery Probe for ONVIF video devices (SOAP 1.2 over UDP to
/// 239.255.255.250:3702).
pub fn probe(message_id: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" xmlns:dn="http://www.onvif.org/ver10/network/wsdl"><s:Header><a:MessageID>{message_id}</a:MessageID><a:To>urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To><a:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe</a:Action></s:Header><s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body></s:Envelope>"#
    )
}

/// The ProbeMatches in an answer to the probe `message_id`; answers to
/// other probes are an error.
pub fn probe_matches(text: &str, message_id: &str) -> Result<Vec<ProbeMatch>, OnvifError> {
    let document = parse(text)?;
    let relates_to = text_of(document.root(), "RelatesTo").ok_or(OnvifError::Missing("RelatesTo"))?;
    if relates_to != message_id {
        return Err(OnvifError::Missing("answer to camgate's probe"));
    }
    let words = |node: Node<'_, '_>, name: &str| -> Vec<String> {
        text_of(node, name)
            .map(|t| t.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let matches: Vec<ProbeMatch> = named(document.root(), "ProbeMatch")
        .map(|node| ProbeMatch {
            endpoint: first(node, "EndpointReference")
                .and_then(|n| text_of(n, "Address"))
                .unwrap_or_default(),
            xaddrs: words(node, "XAddrs"),
            scopes: words(node, "Scopes"),
        })
        .collect();
    if matches.is_empty() {
        return Err(OnvifError::Missing("ProbeMatch"));
    }
    Ok(matches)
}

/// The value of an `onvif://www.onvif.org/<key>/<value>` scope, decoded.
pub fn scope(scopes: &[String], key: &str) -> Option<String> {
    let prefix = format!("onvif://www.onvif.org/{key}/");
    let value = scopes.iter().find_map(|s| s.strip_prefix(&prefix))?;
    Some(
        percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// WS-Security UsernameToken with a password digest:
/// Base64(SHA-1(nonce ‖ created ‖ password)). `created` is the camera's
/// time (`YYYY-MM-DDTHH:MM:SSZ`): cameras reject tokens off their clock.
pub fn username_token(username: &str, password: &str, nonce: &[u8; 16], created: &str) -> String {
    let mut input = Vec::with_capacity(16 + created.len() + password.len());
    input.extend_from_slice(nonce);
    input.extend_from_slice(created.as_bytes());
    input.extend_from_slice(password.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    format!(
        r#"<wsse:Security s:mustUnderstand="1" xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd" xmlns:wsu="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"><wsse:UsernameToken><wsse:Username>{username}</wsse:Username><wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest">{digest}</wsse:Password><wsse:Nonce EncodingType="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary">{nonce}</wsse:Nonce><wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security>"#,
        username = escape(username),
        digest = BASE64.encode(digest.as_ref()),
        nonce = BASE64.encode(nonce),
    )
}

/// A SOAP 1.2 request: `header` (a security token) and `body`.
pub fn envelope(header: &str, body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:trt="http://www.onvif.org/ver10/media/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema"><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"#
    )
}

pub const GET_SYSTEM_DATE_AND_TIME: &str = "<tds:GetSystemDateAndTime/>";
pub const GET_MEDIA_CAPABILITIES: &str =
    "<tds:GetCapabilities><tds:Category>Media</tds:Category></tds:GetCapabilities>";
pub const GET_PROFILES: &str = "<trt:GetProfiles/>";

pub fn get_stream_uri(profile_token: &str) -> String {
    format!(
        "<trt:GetStreamUri><trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream><tt:Transport><tt:Protocol>RTSP</tt:Protocol></tt:Transport></trt:StreamSetup><trt:ProfileToken>{}</trt:ProfileToken></trt:GetStreamUri>",
        escape(profile_token)
    )
}

pub fn get_snapshot_uri(profile_token: &str) -> String {
    format!(
        "<trt:GetSnapshotUri><trt:ProfileToken>{}</trt:ProfileToken></trt:GetSnapshotUri>",
        escape(profile_token)
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The camera's UTC clock from GetSystemDateAndTime, as Unix seconds.
pub fn system_time(text: &str) -> Result<i64, OnvifError> {
    let document = answer(text)?;
    let utc = first(document.root(), "UTCDateTime").ok_or(OnvifError::Missing("UTCDateTime"))?;
    let number = |parent: &str, name: &'static str| -> Result<i64, OnvifError> {
        first(utc, parent)
            .and_then(|n| text_of(n, name))
            .and_then(|t| t.parse().ok())
            .ok_or(OnvifError::Missing(name))
    };
    let month = time::Month::try_from(u8::try_from(number("Date", "Month")?).unwrap_or(0))
        .map_err(|_| OnvifError::Missing("Month"))?;
    let date = time::Date::from_calendar_date(
        i32::try_from(number("Date", "Year")?).map_err(|_| OnvifError::Missing("Year"))?,
        month,
        u8::try_from(number("Date", "Day")?).map_err(|_| OnvifError::Missing("Day"))?,
    )
    .map_err(|_| OnvifError::Missing("Date"))?;
    let clock = time::Time::from_hms(
        u8::try_from(number("Time", "Hour")?).map_err(|_| OnvifError::Missing("Hour"))?,
        u8::try_from(number("Time", "Minute")?).map_err(|_| OnvifError::Missing("Minute"))?,
        u8::try_from(number("Time", "Second")?).map_err(|_| OnvifError::Missing("Second"))?,
    )
    .map_err(|_| OnvifError::Missing("Time"))?;
    Ok(time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a UsernameToken.
pub fn created(unix: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// The media service URL from GetCapabilities.
pub fn media_xaddr(text: &str) -> Result<String, OnvifError> {
    let document = answer(text)?;
    first(document.root(), "Media")
        .and_then(|media| text_of(media, "XAddr"))
        .ok_or(OnvifError::Missing("Media XAddr"))
}

pub fn profiles(text: &str) -> Result<Vec<Profile>, OnvifError> {
    let document = answer(text)?;
    let profiles: Vec<Profile> = named(document.root(), "Profiles")
        .filter_map(|node| {
            let video = first(node, "VideoEncoderConfiguration");
            let resolution = video.and_then(|v| first(v, "Resolution"));
            let dimension = |name| {
                resolution
                    .and_then(|r| text_of(r, name))
                    .and_then(|t| t.parse().ok())
            };
            Some(Profile {
                token: node.attribute("token")?.to_owned(),
                // The profile's own name, not a configuration's.
                name: node
                    .children()
                    .find(|c| c.is_element() && c.tag_name().name() == "Name")
                    .and_then(|n| n.text())
                    .map(|t| t.trim().to_owned()),
                encoding: video.and_then(|v| text_of(v, "Encoding")),
                width: dimension("Width"),
                height: dimension("Height"),
                stream_uri: None,
                snapshot_uri: None,
            })
        })
        .collect();
    if profiles.is_empty() {
        return Err(OnvifError::Missing("Profiles"));
    }
    Ok(profiles)
}

pub fn stream_uri(text: &str) -> Result<String, OnvifError> {
    media_uri(text)
}

/// GetSnapshotUri's answer: a `MediaUri` like GetStreamUri's.
pub fn snapshot_uri(text: &str) -> Result<String, OnvifError> {
    media_uri(text)
}

fn media_uri(text: &str) -> Result<String, OnvifError> {
    let document = answer(text)?;
    first(document.root(), "MediaUri")
        .and_then(|uri| text_of(uri, "Uri"))
        .ok_or(OnvifError::Missing("MediaUri"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MATCHES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:wsdd="http://schemas.xmlsoap.org/ws/2005/04/discovery" xmlns:tdn="http://www.onvif.org/ver10/network/wsdl">
<SOAP-ENV:Header><wsa:MessageID>urn:uuid:0a6dc791-2e18-4ba5-a6b7-2b0d3dbd4fa9</wsa:MessageID><wsa:RelatesTo>urn:uuid:probe-1</wsa:RelatesTo></SOAP-ENV:Header>
<SOAP-ENV:Body><wsdd:ProbeMatches><wsdd:ProbeMatch>
<wsa:EndpointReference><wsa:Address>urn:uuid:2419d68a-2dd2-21b2-a205-ec3dbd4fa9aa</wsa:Address></wsa:EndpointReference>
<wsdd:Types>tdn:NetworkVideoTransmitter</wsdd:Types>
<wsdd:Scopes>onvif://www.onvif.org/type/video_encoder onvif://www.onvif.org/name/Porch%20Cam onvif://www.onvif.org/hardware/IPC-1</wsdd:Scopes>
<wsdd:XAddrs>http://10.77.0.11:8000/onvif/device_service http://[fe80::1]/onvif/device_service</wsdd:XAddrs>
<wsdd:MetadataVersion>1</wsdd:MetadataVersion></wsdd:ProbeMatch></wsdd:ProbeMatches></SOAP-ENV:Body></SOAP-ENV:Envelope>"#;

    #[test]
    fn probe_matches_are_read_by_local_name_and_tied_to_the_probe() {
        let matches = probe_matches(MATCHES, "urn:uuid:probe-1").unwrap();
        assert_eq!(matches.len(), 1);
        assert_eq!(
            matches[0].endpoint,
            "urn:uuid:2419d68a-2dd2-21b2-a205-ec3dbd4fa9aa"
        );
        assert_eq!(
            matches[0].xaddrs,
            [
                "http://10.77.0.11:8000/onvif/device_service",
                "http://[fe80::1]/onvif/device_service"
            ]
        );
        assert_eq!(scope(&matches[0].scopes, "name").as_deref(), Some("Porch Cam"));
        assert_eq!(scope(&matches[0].scopes, "hardware").as_deref(), Some("IPC-1"));
        assert_eq!(scope(&matches[0].scopes, "location"), None);
        assert_eq!(
            probe_matches(MATCHES, "urn:uuid:probe-2"),
            Err(OnvifError::Missing("answer to camgate's probe"))
        );
        assert!(probe_matches(&MATCHES[..600], "urn:uuid:probe-1").is_err());
        assert!(probe_matches("\u{0}\u{1}garbage", "urn:uuid:probe-1").is_err());
        let deep = format!(
            "<a><RelatesTo>urn:uuid:probe-1</RelatesTo>{}{}</a>",
            "<x>".repeat(5000),
            "</x>".repeat(5000)
        );
        assert_eq!(
            probe_matches(&deep, "urn:uuid:probe-1"),
            Err(OnvifError::Missing("ProbeMatch"))
        );
        let dtd = r#"<!DOCTYPE a [<!ENTITY e "x">]><a><RelatesTo>&e;</RelatesTo></a>"#;
        assert!(matches!(probe_matches(dtd, "x"), Err(OnvifError::Xml(_))));
    }

    #[test]
    fn username_token_digest_matches_the_onvif_spec_example() {
        // ONVIF Application Programmer's Guide, 6.1.1.3: nonce
        // "LKqI6G/AikKCQrN0zqZFlg==", created 2010-09-16T07:50:45Z, password
        // "userpassword" → digest "tuOSpGlFlIXsozq4HFNeeGeFLEI=".
        let nonce: [u8; 16] = BASE64
            .decode("LKqI6G/AikKCQrN0zqZFlg==")
            .unwrap()
            .try_into()
            .unwrap();
        let token = username_token("user<1>", "userpassword", &nonce, "2010-09-16T07:50:45Z");
        assert!(token.contains(">tuOSpGlFlIXsozq4HFNeeGeFLEI=<"), "{token}");
        assert!(token.contains("<wsse:Username>user&lt;1&gt;</wsse:Username>"));
        assert!(token.contains("<wsu:Created>2010-09-16T07:50:45Z</wsu:Created>"));
    }

    #[test]
    fn device_and_media_answers() {
        let time = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="d" xmlns:tt="t"><env:Body><tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>NTP</tt:DateTimeType><tt:UTCDateTime><tt:Time><tt:Hour>7</tt:Hour><tt:Minute>50</tt:Minute><tt:Second>45</tt:Second></tt:Time><tt:Date><tt:Year>2010</tt:Year><tt:Month>9</tt:Month><tt:Day>16</tt:Day></tt:Date></tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse></env:Body></env:Envelope>"#;
        let unix = system_time(time).unwrap();
        assert_eq!(created(unix), "2010-09-16T07:50:45Z");
        let capabilities = r#"<e:Envelope xmlns:e="x"><e:Body><r><c><tt:Device xmlns:tt="t"><tt:XAddr>http://10.77.0.11/onvif/device_service</tt:XAddr></tt:Device><tt:Media xmlns:tt="t"><tt:XAddr>http://10.77.0.11/onvif/Media</tt:XAddr></tt:Media></c></r></e:Body></e:Envelope>"#;
        assert_eq!(
            media_xaddr(capabilities).unwrap(),
            "http://10.77.0.11/onvif/Media"
        );
        let profiles_answer = r#"<e:Envelope xmlns:e="x" xmlns:trt="m" xmlns:tt="t"><e:Body><trt:GetProfilesResponse>
<trt:Profiles token="main_token" fixed="true"><tt:Name>main</tt:Name><tt:VideoSourceConfiguration token="vs"><tt:Name>VideoSource</tt:Name></tt:VideoSourceConfiguration>
<tt:VideoEncoderConfiguration token="ve"><tt:Name>enc</tt:Name><tt:Encoding>H264</tt:Encoding><tt:Resolution><tt:Width>1920</tt:Width><tt:Height>1080</tt:Height></tt:Resolution></tt:VideoEncoderConfiguration></trt:Profiles>
<trt:Profiles token="audio_only"><tt:Name>audio</tt:Name></trt:Profiles>
<trt:Profiles><tt:Name>no token: skipped</tt:Name></trt:Profiles>
</trt:GetProfilesResponse></e:Body></e:Envelope>"#;
        let profiles = profiles(profiles_answer).unwrap();
        assert_eq!(profiles.len(), 2);
        assert_eq!(
            (
                profiles[0].token.as_str(),
                profiles[0].name.as_deref(),
                profiles[0].encoding.as_deref(),
                profiles[0].width,
                profiles[0].height
            ),
            ("main_token", Some("main"), Some("H264"), Some(1920), Some(1080))
        );
        assert_eq!((profiles[1].encoding.as_deref(), profiles[1].width), (None, None));
        let uri = r#"<e:Envelope xmlns:e="x"><e:Body><trt:GetStreamUriResponse xmlns:trt="m" xmlns:tt="t"><trt:MediaUri><tt:Uri>rtsp://10.77.0.11:554/main</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect></trt:MediaUri></trt:GetStreamUriResponse></e:Body></e:Envelope>"#;
        assert_eq!(stream_uri(uri).unwrap(), "rtsp://10.77.0.11:554/main");
        assert!(get_stream_uri("a<b").contains("<trt:ProfileToken>a&lt;b</trt:ProfileToken>"));
        // Hikvision-style: a query, escaped in the XML.
        let snapshot = r#"<e:Envelope xmlns:e="x"><e:Body><trt:GetSnapshotUriResponse xmlns:trt="m" xmlns:tt="t"><trt:MediaUri><tt:Uri>http://10.77.0.11/onvif-http/snapshot?Profile_1&amp;size=1</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:GetSnapshotUriResponse></e:Body></e:Envelope>"#;
        assert_eq!(
            snapshot_uri(snapshot).unwrap(),
            "http://10.77.0.11/onvif-http/snapshot?Profile_1&size=1"
        );
        assert_eq!(
            get_snapshot_uri("main&1"),
            "<trt:GetSnapshotUri><trt:ProfileToken>main&amp;1</trt:ProfileToken></trt:GetSnapshotUri>"
        );
    }

    #[test]
    fn faults_name_their_subcode_and_reason() {
        let fault = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:ter="http://www.onvif.org/ver10/error"><env:Body><env:Fault><env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>ter:NotAuthorized</env:Value></env:Subcode></env:Code><env:Reason><env:Text xml:lang="en">Sender not Authorized</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#;
        assert_eq!(
            profiles(fault),
            Err(OnvifError::Fault(
                "NotAuthorized: Sender not Authorized".to_owned()
            ))
        );
        assert_eq!(stream_uri("<a/>"), Err(OnvifError::Missing("MediaUri")));
        // Many cameras have no snapshots: a fault, read as one.
        let unsupported = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault><env:Code><env:Value>env:Receiver</env:Value><env:Subcode><env:Value>ter:ActionNotSupported</env:Value></env:Subcode></env:Code><env:Reason><env:Text xml:lang="en">Action not implemented</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#;
        assert_eq!(
            snapshot_uri(unsupported),
            Err(OnvifError::Fault(
                "ActionNotSupported: Action not implemented".to_owned()
            ))
        );
    }

    proptest::proptest! {
        #[test]
        fn answers_never_panic(text in "\\PC{0,400}") {
            let _ = probe_matches(&text, "urn:uuid:x");
            let _ = system_time(&text);
            let _ = profiles(&text);
            let _ = stream_uri(&text);
            let _ = snapshot_uri(&text);
        }
    }
}
