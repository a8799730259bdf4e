#!/usr/bin/python3
"""gst-rtsp-server for tests/bench/streams.sh, in two roles (python3-gi, as
tests/peers/rtsp_camera.py; run it with /usr/bin/python3).

    rtsp_relay_gst.py relay --source URL --address A --port P --path /PATH
        The gst-rtsp-server relay under test: ONE shared pipeline
        `( rtspsrc location=URL protocols=tcp latency=0 buffer-mode=none
           ! rtph264depay ! rtph264pay name=pay0 config-interval=-1 )`
        pulled once and served to every reader (RTP over TCP interleaved, as
        the readers ask). buffer-mode=none: rtspsrc's default (slave) held
        each frame ~20 ms.
    rtsp_relay_gst.py camera --pattern "smpte horizontal-speed=8" RTSP_CAMERA_OPTIONS...
        The benchmark's camera: tests/peers/rtsp_camera.py's own launch line
        and client/session accounting (imported, so the encoder settings are
        the same), with three differences:
        - its pipeline is SHARED (one encoder for every session), where
          rtsp_camera.py makes one per session: a 1080p encoder per ffmpeg
          relay (50) cannot run on two cores, and a reader on the camera can
          match the relays' frames byte for byte only if they all carry the
          same encoder's output. A real camera also encodes once for all its
          sessions. The bench keeps one session open all along (its probe),
          so the shared pipeline is never torn down (rtsp_camera.py's reason
          for not sharing).
        - its test pattern: rtsp_camera.py's `pattern=ball` is so easy to
          encode that x264 makes ~0.15 Mbit/s of it whatever --bitrate says;
          scrolling SMPTE bars make it spend the 4 Mbit/s asked.
        - an 8 MiB send buffer per client socket: a session that falls behind
          (50 ffmpegs starting at once on one core) then waits in the kernel,
          not in gst-rtsp-server's TCP backlog, which in 1.22 can abort the
          whole server ("gst_rtsp_stream_transport_backlog_push: assertion
          failed: (queue_duration >= 0)").
Prints "listening rtsp://..." once it accepts connections; runs until killed.
"""
import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


SOL_SOCKET, SO_SNDBUFFORCE = 1, 32  # Linux; FORCE (root) goes past net.core.wmem_max


def big_send_buffer(_server, client):
    client.get_connection().get_write_socket().set_option(SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)


def serve(address, port, path, launch, accounting=None, send_buffer=False):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(address)
    server.set_service(str(port))
    server.set_backlog(128)  # 50 readers connect at once
    if accounting:
        accounting(server)
    if send_buffer:
        server.connect("client-connected", big_send_buffer)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    # Readers only ask for TCP; no UDP ports are set up.
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {address}:{port}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"listening rtsp://{address}:{server.get_bound_port()}{path}", flush=True)
    print(f"launch {launch}", flush=True)
    GLib.MainLoop().run()


def relay(argv):
    parser = argparse.ArgumentParser(prog="rtsp_relay_gst.py relay")
    parser.add_argument("--source", required=True, help="the camera's rtsp:// URL")
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8555)
    parser.add_argument("--path", default="/cam/main")
    parser.add_argument("--rtspsrc", default="protocols=tcp latency=0 buffer-mode=none",
                        help="rtspsrc properties")
    args = parser.parse_args(argv)
    # latency=0: rtspsrc's jitter buffer holds nothing back (TCP cannot reorder).
    # config-interval=-1: SPS/PPS in front of every IDR, as camgate does.
    launch = (
        f"( rtspsrc location={args.source} {args.rtspsrc} "
        "! rtph264depay ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
    serve(args.address, args.port, args.path, launch)


def camera(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "peers"))
    import rtsp_camera  # noqa: E402

    pattern = "smpte horizontal-speed=8"
    if "--pattern" in argv:
        i = argv.index("--pattern")
        pattern = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    sys.argv = ["rtsp_camera.py", *argv]
    args = rtsp_camera.parse_args()
    if args.auth != "none" or args.max_clients is not None:
        sys.exit("camera: --auth and --max-clients are not supported here")
    launch = rtsp_camera.launch_line(args)
    if "pattern=ball" not in launch:
        sys.exit(f"camera: rtsp_camera.py's launch line changed: {launch}")
    launch = launch.replace("pattern=ball", f"pattern={pattern}")
    serve(args.address, args.port, args.path, launch, lambda server: rtsp_camera.Accounting(server, None), True)


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("relay", "camera"):
        sys.exit(__doc__)
    (relay if sys.argv[1] == "relay" else camera)(sys.argv[2:])


if __name__ == "__main__":
    main()
