//! The SDP (RFC 8866) the restream's DESCRIBE answers, and its per-track
//! control URLs.

use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::media::{Codec, Track};

/// Appends one SDP line; SDP lines end in CRLF.
macro_rules! put {
    ($sdp:expr, $($arg:tt)*) => {{
        // Writing to a String cannot fail.
        let _ = $sdp.write_fmt(format_args!($($arg)*));
        $sdp.push_str("\r\n");
    }};
}

/// The SDP a DESCRIBE answers: one media section per track, each with `a=control:trackID=<index>`, session-level `a=control:*`.
pub fn describe(tracks: &[Track], session_name: &str, origin: IpAddr, session_id: u64) -> String {
    // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6.
    let origin = origin.to_canonical();
    let address_type = if origin.is_ipv4() { "IP4" } else { "IP6" };
    // A CR or LF would end the line early and let the name inject lines.
    let name: String = session_name.chars().filter(|c| !c.is_control()).collect();
    let name = match name.trim() {
        "" => "camgate",
        name => name,
    };
    let mut sdp = String::new();
    put!(sdp, "v=0");
    put!(sdp, "o=- {session_id} {session_id} IN {address_type} {origin}");
    put!(sdp, "s={name}");
    put!(sdp, "c=IN IP4 0.0.0.0");
    put!(sdp, "t=0 0");
    put!(sdp, "a=tool:camgate");
    put!(sdp, "a=type:broadcast");
    put!(sdp, "a=control:*");
    put!(sdp, "a=range:npt=now-");
    for (index, track) in tracks.iter().enumerate() {
        media(&mut sdp, track);
        put!(sdp, "a=control:{}", track_control(index));
    }
    sdp
}

/// One track's `m=` line and its codec attributes.
fn media(sdp: &mut String, track: &Track) {
    let pt = track.payload_type;
    let kind = if track.codec.is_video() { "video" } else { "audio" };
    put!(sdp, "m={kind} 0 RTP/AVP {pt}");
    match &track.codec {
        Codec::H264 { sps, pps } => {
            put!(sdp, "a=rtpmap:{pt} H264/90000");
            let mut fmtp = String::from("packetization-mode=1");
            // profile_idc, constraint flags and level_idc follow the NAL header.
            if let Some(profile) = sps.get(1..4) {
                let _ = write!(fmtp, ";profile-level-id={}", hex(profile));
            }
            let _ = write!(
                fmtp,
                ";sprop-parameter-sets={},{}",
                BASE64.encode(sps),
                BASE64.encode(pps)
            );
            put!(sdp, "a=fmtp:{pt} {fmtp}");
        }
        Codec::H265 { vps, sps, pps } => {
            put!(sdp, "a=rtpmap:{pt} H265/90000");
            put!(
                sdp,
                "a=fmtp:{pt} sprop-vps={};sprop-sps={};sprop-pps={}",
                BASE64.encode(vps),
                BASE64.encode(sps),
                BASE64.encode(pps)
            );
        }
        Codec::Aac { config } => {
            let channels = track.channels.unwrap_or(1);
            put!(sdp, "a=rtpmap:{pt} MPEG4-GENERIC/{}/{channels}", track.clock_rate);
            // What rtp.rs sends: AAC-hbr with one 13-bit size, 3-bit index AU-header.
            put!(
                sdp,
                "a=fmtp:{pt} streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;\
                 indexlength=3;indexdeltalength=3;config={}",
                hex(config)
            );
        }
        Codec::Audio { encoding } => match track.channels {
            Some(channels) if channels > 1 => {
                put!(sdp, "a=rtpmap:{pt} {encoding}/{}/{channels}", track.clock_rate);
            }
            _ => put!(sdp, "a=rtpmap:{pt} {encoding}/{}", track.clock_rate),
        },
    }
    if let Some(fps) = track.frame_rate.and_then(frames_per_second) {
        put!(sdp, "a=framerate:{fps}");
    }
}

/// `a=framerate` from retina's seconds-per-frame fraction, to two decimals
/// without trailing zeros: `(1, 25)` is "25", `(1001, 30000)` "29.97".
fn frames_per_second((num, den): (u32, u32)) -> Option<String> {
    if num == 0 || den == 0 {
        return None;
    }
    let (num, den) = (u64::from(num), u64::from(den));
    let hundredths = (den * 100 + num / 2) / num;
    if hundredths == 0 {
        return None;
    }
    let (whole, fraction) = (hundredths / 100, hundredths % 100);
    Some(match fraction {
        0 => whole.to_string(),
        f if f % 10 == 0 => format!("{whole}.{}", f / 10),
        f => format!("{whole}.{f:02}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02X}");
        hex
    })
}

/// The control attribute of track `index`: `trackID=<index>`.
pub fn track_control(index: usize) -> String {
    format!("trackID={index}")
}

/// Which track a SETUP URL's last path segment (`trackID=<index>`) names.
pub fn track_from_control(segment: &str) -> Option<usize> {
    let index = segment.strip_prefix("trackID=")?;
    // `usize::from_str` would also take a sign.
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    index.parse().ok()
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use bytes::Bytes;
    use retina::codec::{Depacketizer, ParametersRef};

    use super::*;

    /// A real H.264 SPS and PPS (constrained baseline, level 3.0).
    const H264_SPS: &str = "Z0LAHtkAoC/5cBagwMDUoAAAAwAgAAAGUeLFyQ==";
    const H264_PPS: &str = "aMuMsg==";
    /// From retina's own H.265 tests.
    const H265_VPS: &str = "QAEMAf//AWAAAAMAsAAAAwAAAwBarAwAAAMABAAAAwAyqA==";
    const H265_SPS: &str = "QgEBAWAAAAMAsAAAAwAAAwBaoAWCAeFja5JFL83BQYFBAAADAAEAAAMADKE=";
    const H265_PPS: &str = "RAHA8saNA7NA";

    fn nal(base64: &str) -> Bytes {
        Bytes::from(BASE64.decode(base64).unwrap())
    }

    pub(in super::super) fn h264_track() -> Track {
        let codec = Codec::H264 {
            sps: nal(H264_SPS),
            pps: nal(H264_PPS),
        };
        Track {
            frame_rate: Some((1, 25)),
            ..Track::new(codec, 96, 90_000, None)
        }
    }

    pub(in super::super) fn h265_track() -> Track {
        let codec = Codec::H265 {
            vps: nal(H265_VPS),
            sps: nal(H265_SPS),
            pps: nal(H265_PPS),
        };
        Track::new(codec, 98, 90_000, None)
    }

    /// AAC-LC, 48 kHz stereo: `AudioSpecificConfig` 0x1190 is object type 2,
    /// frequency index 3, channel configuration 2.
    pub(in super::super) fn aac_track() -> Track {
        let codec = Codec::Aac {
            config: Bytes::from_static(&[0x11, 0x90]),
        };
        Track::new(codec, 97, 48_000, Some(2))
    }

    pub(in super::super) fn pcma_track() -> Track {
        Track::audio("PCMA", 8, 8000, Some(1))
    }

    /// retina's depacketizer for `track`, set up as retina's client would
    /// from our DESCRIBE answer: the parsed SDP's `m=`, rtpmap and fmtp.
    pub(in super::super) fn retina_depacketizer(track: &Track) -> Depacketizer {
        let sdp = describe(
            std::slice::from_ref(track),
            "test",
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            1,
        );
        let session = sdp_types::Session::parse(sdp.as_bytes()).expect("SDP parses");
        let [media] = &session.medias[..] else {
            panic!("one media section in {sdp}");
        };
        let rtpmap = media.get_first_attribute_value("rtpmap").unwrap().unwrap();
        let (pt, encoding) = rtpmap.split_once(' ').unwrap();
        assert_eq!(pt, track.payload_type.to_string());
        assert_eq!(media.fmt, pt);
        let mut encoding = encoding.split('/');
        let name = encoding.next().unwrap().to_ascii_lowercase();
        let clock_rate = encoding.next().unwrap().parse().unwrap();
        let channels = encoding.next().map(|c| c.parse().unwrap());
        let fmtp = media.get_first_attribute_value("fmtp").ok().map(|fmtp| {
            let (pt, params) = fmtp.unwrap().split_once(' ').unwrap();
            assert_eq!(pt, track.payload_type.to_string());
            params
        });
        Depacketizer::new(&media.media, &name, clock_rate, channels, fmtp)
            .unwrap_or_else(|e| panic!("retina rejects {sdp}: {e}"))
    }

    #[test]
    fn h264_and_pcma() {
        let sdp = describe(
            &[h264_track(), pcma_track()],
            "Front door",
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)),
            42,
        );
        assert_eq!(
            sdp,
            "v=0\r\n\
             o=- 42 42 IN IP4 192.168.1.10\r\n\
             s=Front door\r\n\
             c=IN IP4 0.0.0.0\r\n\
             t=0 0\r\n\
             a=tool:camgate\r\n\
             a=type:broadcast\r\n\
             a=control:*\r\n\
             a=range:npt=now-\r\n\
             m=video 0 RTP/AVP 96\r\n\
             a=rtpmap:96 H264/90000\r\n\
             a=fmtp:96 packetization-mode=1;profile-level-id=42C01E;\
             sprop-parameter-sets=Z0LAHtkAoC/5cBagwMDUoAAAAwAgAAAGUeLFyQ==,aMuMsg==\r\n\
             a=framerate:25\r\n\
             a=control:trackID=0\r\n\
             m=audio 0 RTP/AVP 8\r\n\
             a=rtpmap:8 PCMA/8000\r\n\
             a=control:trackID=1\r\n"
        );
    }

    #[test]
    fn h265_and_aac_lines() {
        let sdp = describe(
            &[h265_track(), aac_track()],
            "x",
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            1,
        );
        let lines: Vec<&str> = sdp.split("\r\n").collect();
        let expected = [
            "m=video 0 RTP/AVP 98",
            "a=rtpmap:98 H265/90000",
            &format!("a=fmtp:98 sprop-vps={H265_VPS};sprop-sps={H265_SPS};sprop-pps={H265_PPS}"),
            "a=control:trackID=0",
            "m=audio 0 RTP/AVP 97",
            "a=rtpmap:97 MPEG4-GENERIC/48000/2",
            "a=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;\
             indexlength=3;indexdeltalength=3;config=1190",
            "a=control:trackID=1",
            "",
        ];
        assert_eq!(lines[9..], expected);
    }

    #[test]
    fn parses_with_sdp_types() {
        let tracks = [h264_track(), h265_track(), aac_track(), pcma_track()];
        let sdp = describe(&tracks, "Garage", IpAddr::V6(Ipv6Addr::LOCALHOST), 7);
        let session = sdp_types::Session::parse(sdp.as_bytes()).unwrap();
        assert_eq!(session.origin.sess_id, "7");
        assert_eq!(session.origin.addrtype, "IP6");
        assert_eq!(session.origin.unicast_address, "::1");
        assert_eq!(session.session_name, "Garage");
        assert_eq!(session.connection.as_ref().unwrap().connection_address, "0.0.0.0");
        let control = session.attributes.iter().find(|a| a.attribute == "control");
        assert_eq!(control.unwrap().value.as_deref(), Some("*"));
        assert_eq!(session.medias.len(), tracks.len());
        for (i, (media, track)) in session.medias.iter().zip(&tracks).enumerate() {
            let kind = if track.codec.is_video() { "video" } else { "audio" };
            assert_eq!(media.media, kind);
            assert_eq!(media.proto, "RTP/AVP");
            assert_eq!(media.fmt, track.payload_type.to_string());
            let control = media.get_first_attribute_value("control").unwrap().unwrap();
            assert_eq!(track_from_control(control), Some(i));
        }
    }

    #[test]
    fn retina_accepts_the_fmtp() {
        let h264 = h264_track();
        let Codec::H264 { sps, pps } = &h264.codec else {
            unreachable!()
        };
        let expected = retina::codec::h264::parameters_from_sps_and_pps(
            sps,
            pps,
            retina::codec::h26x::Framing::FourByteLength,
        )
        .unwrap();
        let d = retina_depacketizer(&h264);
        assert_eq!(d.parameters(), Some(ParametersRef::Video(&expected)));
        assert_eq!(expected.rfc6381_codec(), "avc1.42C01E");

        let h265 = h265_track();
        let d = retina_depacketizer(&h265);
        let Some(ParametersRef::Video(params)) = d.parameters() else {
            panic!("no H.265 parameters from the fmtp");
        };
        let Codec::H265 { vps, sps, pps } = &h265.codec else {
            unreachable!()
        };
        // The HEVCDecoderConfigurationRecord carries the NAL units verbatim.
        let extra = params.extra_data();
        for nal in [vps, sps, pps] {
            assert!(extra.windows(nal.len()).any(|w| w == &nal[..]));
        }

        let d = retina_depacketizer(&aac_track());
        let Some(ParametersRef::Audio(params)) = d.parameters() else {
            panic!("no AAC parameters from the fmtp");
        };
        assert_eq!(params.extra_data(), [0x11, 0x90]);
        assert_eq!(params.clock_rate(), 48_000);
        assert_eq!(params.channels().get(), 2);
        assert_eq!(params.rfc6381_codec(), Some("mp4a.40.2"));

        let d = retina_depacketizer(&pcma_track());
        let Some(ParametersRef::Audio(params)) = d.parameters() else {
            panic!("no PCMA parameters");
        };
        assert_eq!((params.clock_rate(), params.channels().get()), (8000, 1));
    }

    #[test]
    fn audio_channels_only_when_several() {
        let stereo = Track {
            channels: Some(2),
            ..pcma_track()
        };
        let none = Track {
            channels: None,
            ..pcma_track()
        };
        let origin = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(describe(&[stereo], "", origin, 1).contains("\r\na=rtpmap:8 PCMA/8000/2\r\n"));
        assert!(describe(&[none], "", origin, 1).contains("\r\na=rtpmap:8 PCMA/8000\r\n"));
        let aac = Track {
            channels: None,
            ..aac_track()
        };
        assert!(describe(&[aac], "", origin, 1).contains("\r\na=rtpmap:97 MPEG4-GENERIC/48000/1\r\n"));
    }

    #[test]
    fn frame_rates() {
        assert_eq!(frames_per_second((1, 25)).as_deref(), Some("25"));
        assert_eq!(frames_per_second((1001, 30000)).as_deref(), Some("29.97"));
        assert_eq!(frames_per_second((2, 25)).as_deref(), Some("12.5"));
        assert_eq!(frames_per_second((1000, 15000)).as_deref(), Some("15"));
        assert_eq!(frames_per_second((3, 1)).as_deref(), Some("0.33"));
        assert_eq!(frames_per_second((0, 25)), None);
        assert_eq!(frames_per_second((1, 0)), None);
        assert_eq!(frames_per_second((1000, 1)), None);
    }

    #[test]
    fn session_names_are_sanitised() {
        let origin = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let sdp = describe(&[], "Front\r\na=evil:1\u{7f}\t", origin, 1);
        assert!(sdp.contains("\r\ns=Fronta=evil:1\r\n"), "{sdp}");
        assert!(!sdp.contains("\r\na=evil"));
        for empty in ["", " \r\n", "\u{0}\u{1b}"] {
            assert!(describe(&[], empty, origin, 1).contains("\r\ns=camgate\r\n"));
        }
    }

    #[test]
    fn origin_addresses() {
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped());
        assert!(describe(&[], "", mapped, 5).starts_with("v=0\r\no=- 5 5 IN IP4 10.0.0.2\r\n"));
        let v6 = IpAddr::V6("fd00::1".parse().unwrap());
        assert!(
            describe(&[], "", v6, u64::MAX).contains(&format!("o=- {0} {0} IN IP6 fd00::1\r\n", u64::MAX))
        );
    }

    #[test]
    fn track_controls() {
        for index in [0, 1, 9, 10, 123_456, usize::MAX] {
            assert_eq!(track_from_control(&track_control(index)), Some(index));
        }
        assert_eq!(track_control(3), "trackID=3");
        for bad in [
            "",
            "trackID=",
            "trackID=+1",
            "trackID=-1",
            "trackID=1x",
            "trackID= 1",
            "trackid=1",
            "track1",
            "streamid=0",
            "trackID=99999999999999999999999",
        ] {
            assert_eq!(track_from_control(bad), None, "{bad:?}");
        }
    }
}
