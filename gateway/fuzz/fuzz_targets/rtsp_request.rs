//! The restream's RTSP framing and request reading never panic, whatever a
//! client sends.
#![no_main]

use camgate::streams::server::{Incoming, interleaved_channels, next_message, stream_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((message, used))) = next_message(rest) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
        if let Incoming::Request(request) = message {
            if let Some(url) = request.request_uri() {
                let _ = stream_of(url.path());
            }
            if let Ok(Some(transports)) = request.typed_header::<rtsp_types::headers::Transports>() {
                let _ = interleaved_channels(&transports, 0);
            }
        }
    }
});
