//! Reading a logged packet never panics, whatever the kernel hands over.
#![no_main]

use camgate::firewall::blocked::{DroppedAt, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, packet)) = data.split_first() else {
        return;
    };
    let at = DroppedAt::ALL[usize::from(selector) % DroppedAt::ALL.len()];
    let mac = (selector & 0x80 != 0).then_some([2, 0, 0, 0, 0, selector]);
    if let Some(attempt) = parse(at.prefix(), mac, packet) {
        assert_eq!(attempt.source.is_ipv4(), attempt.destination.is_ipv4());
    }
});
