//! Shared infrastructure for camgate's integration tests.
//!
//! - [`netns`]: network namespaces and veth topologies (root needed).
//! - [`process`]: peer programs in kill-on-drop guards; polling with deadlines.
//! - [`camgate`]: the real camgate binary with a test-owned `NOTIFY_SOCKET`.
//! - [`http`]: a small HTTP client that runs inside a namespace.
//! - [`tls`]: a raw TLS client for crafted requests.
//! - [`dvr`]: the `fake-dvr` upstream and its request log.
//! - [`lab`]: camgate between WAN and LAN namespaces with fake-dvr behind it.
//! - [`motion`]: Debian's `motion` as a real DVR.
//! - [`rtsp_camera`]: a gst-rtsp-server camera (`peers/rtsp_camera.py`).
//! - [`camera_lab`]: camgate with a camera network, for the camera streams' tests.
//! - [`pebble`]: Debian's Pebble ACME CA and its DNS server in a namespace.

pub mod camera_lab;
pub mod camgate;
pub mod dvr;
pub mod http;
pub mod lab;
pub mod motion;
pub mod netns;
pub mod nft;
pub mod pebble;
pub mod process;
pub mod rtsp_camera;
pub mod tls;

/// The config text the `config-saver` helper writes for save number `n`:
/// valid, and different for every `n`.
pub fn saver_config(n: u64) -> String {
    let padding = "# padding so a torn write would be visible\n".repeat(usize::try_from(n % 64).unwrap_or(0));
    format!(
        "# save {n}\n[daemon]\nmode = \"dev\"\nlog = \"info\"\n{padding}[admin]\nlisten = [\"127.0.0.1:{}\"]\n",
        1024 + n % 60000
    )
}
