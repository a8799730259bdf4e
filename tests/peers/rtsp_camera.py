#!/usr/bin/python3
"""A simulated IP camera: gst-rtsp-server (through python3-gi) serving a
live H.264 test pattern, optionally with G.711 A-law audio, at
rtsp://ADDRESS:PORT/PATH, optionally behind Basic or Digest auth.

Prints "listening rtsp://ADDRESS:PORT/PATH" (flushed) once the server
accepts connections; runs until killed.

Debian packages: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly (x264enc). Run it with
/usr/bin/python3: Debian's gi is installed for the system Python only.
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

ROLE = "camera-user"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=554)
    parser.add_argument("--path", default="/stream1", help="mount point, e.g. /stream1")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--audio", action="store_true", help="add G.711 A-law audio (8 kHz mono)")
    parser.add_argument("--auth", choices=["none", "basic", "digest"], default="none")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="secret")
    args = parser.parse_args()
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    return args


def launch_line(args):
    video = (
        f"videotestsrc is-live=true pattern=ball "
        f"! video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} bitrate=300 "
        f"! rtph264pay name=pay0 pt=96 config-interval=1"
    )
    audio = (
        " audiotestsrc is-live=true wave=sine ! audio/x-raw,rate=8000,channels=1 "
        "! alawenc ! rtppcmapay name=pay1 pt=8"
    )
    return f"( {video}{audio if args.audio else ''} )"


def main():
    args = parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args))
    # One pipeline per client: a shared one is torn down when its last client
    # leaves, and a DESCRIBE arriving meanwhile gets 503 (gst-rtsp-server 1.22).
    factory.set_shared(False)

    if args.auth != "none":
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, ROLE)
        if args.auth == "basic":
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        else:
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
            auth.add_digest(args.user, args.password, token)
        server.set_auth(auth)
        # Only the role may see and build the stream: without a login, or with
        # a wrong one, the server answers 401.
        factory.add_role_from_structure(
            Gst.Structure.from_string(
                f"{ROLE}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
            )[0]
        )

    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.address}:{args.port}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"listening rtsp://{args.address}:{server.get_bound_port()}{args.path}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
