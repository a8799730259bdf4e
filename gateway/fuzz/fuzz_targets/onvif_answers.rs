//! Cameras are untrusted: no answer makes an ONVIF reader panic.
#![no_main]

use camgate::cameras::onvif;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = onvif::probe_matches(&text, "urn:uuid:probe");
    let _ = onvif::system_time(&text);
    let _ = onvif::media_xaddr(&text);
    let _ = onvif::profiles(&text);
    let _ = onvif::stream_uri(&text);
});
