//! The reverse proxy in front of the DVR. Pure decision logic (canonical
//! paths, rules, profiles, header rules) is kept apart from I/O so it can be
//! unit- and fuzz-tested and explained (`camgate explain`) by the very code
//! that enforces it. [`server`] is the I/O: listeners, forwarding, tunnels.

pub mod evaluate;
pub mod headers;
pub mod login;
pub mod pages;
pub mod path;
pub mod profiles;
pub mod rules;
pub mod server;
pub mod upstream;

pub(crate) use tower::BoxError;

/// Every response the proxy sends: the upstream's streamed body or one of
/// camgate's own.
pub type ResponseBody = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;
