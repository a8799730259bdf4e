//! Canonical paths never panic, are idempotent, and contain no `//`, `/./`,
//! `/../`, backslash, `%`, `?`, `#` or control characters, under every policy.
#![no_main]

use camgate::proxy::path::{PathPolicy, check_properties};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Ok(raw) = std::str::from_utf8(rest) else { return };
    let policy = PathPolicy {
        allow_encoded_slash: flags & 1 != 0,
        allow_semicolon: flags & 2 != 0,
        windows: flags & 4 != 0,
    };
    check_properties(raw, policy);
});
