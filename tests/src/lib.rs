//! Shared infrastructure for camgate's integration tests.
//!
//! - [`netns`]: network namespaces and veth topologies (root needed).
//! - [`process`]: peer programs in kill-on-drop guards; polling with deadlines.
//! - [`camgate`]: the real camgate binary with a test-owned `NOTIFY_SOCKET`.
//! - [`http`]: a small HTTP client that runs inside a namespace.
#![allow(unreachable_pub)]

pub mod camgate;
pub mod http;
pub mod netns;
pub mod process;
