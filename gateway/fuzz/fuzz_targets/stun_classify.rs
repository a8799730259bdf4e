//! The STUN guard's classifier never panics, agrees with the length tables
//! nftables gets, and answers only well-formed Binding requests.
#![no_main]

use camgate::forward::stun::check_properties;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_properties(data));
