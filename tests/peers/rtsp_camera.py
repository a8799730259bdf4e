#!/usr/bin/python3
"""A simulated IP camera: gst-rtsp-server (through python3-gi) serving a
live H.264 or H.265 test pattern, optionally with G.711 (A-law or µ-law) or
AAC audio, at rtsp://ADDRESS:PORT/PATH, optionally behind Basic or Digest
auth, optionally refusing clients beyond a limit.

Prints "listening rtsp://ADDRESS:PORT/PATH" (flushed) once the server
accepts connections, then one flushed line per event so a test can count
what the camera saw (PEER = ip:port of the client's TCP connection):

    client-connected PEER clients=N
    client-refused PEER clients=N       (beyond --max-clients; closed at once)
    client-closed PEER clients=N
    session-new ID PEER sessions=N      (SETUP made a session)
    play PEER session=ID                (PLAY answered 200)
    session-removed ID sessions=N       (TEARDOWN, or its client went away)

clients= and sessions= are the counts after the event. Runs until killed;
SIGTERM ends it at once.

Debian packages: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly (x264enc)
gstreamer1.0-plugins-bad (x265enc, voaacenc). Run it with /usr/bin/python3:
Debian's gi is installed for the system Python only.
"""
import argparse
import signal
import sys
import threading

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
    parser.add_argument("--video", choices=["h264", "h265"], default="h264")
    parser.add_argument("--bitrate", type=int, default=300, help="video bitrate, kbit/s")
    parser.add_argument("--gop", type=int, help="frames between keyframes (default: --fps, i.e. 1 s)")
    parser.add_argument(
        "--audio",
        nargs="?",
        const="pcma",
        choices=["pcma", "pcmu", "aac"],
        help="add audio: G.711 A-law (the default with no value) or µ-law, 8 kHz mono; "
        "or AAC-LC (mpeg4-generic) mono at --audio-rate",
    )
    parser.add_argument("--audio-rate", type=int, default=16000, help="AAC sample rate, Hz")
    parser.add_argument("--max-clients", type=int, help="close connections beyond this many at once")
    parser.add_argument("--auth", choices=["none", "basic", "digest"], default="none")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="secret")
    args = parser.parse_args()
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    if args.gop is None:
        args.gop = args.fps
    return args


def launch_line(args):
    raw = (
        f"videotestsrc is-live=true pattern=ball "
        f"! video/x-raw,format=I420,width={args.width},height={args.height},framerate={args.fps}/1 "
    )
    if args.video == "h264":
        video = (
            f"{raw}! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.gop} bitrate={args.bitrate} "
            f"! rtph264pay name=pay0 pt=96 config-interval=1"
        )
    else:
        # Closed GOPs make every keyframe an IDR (x265's default open GOP makes
        # CRAs), and config-interval=-1 puts VPS/SPS/PPS in front of each IDR:
        # a reader joining mid-stream decodes from the next keyframe.
        video = (
            f"{raw}! x265enc tune=zerolatency speed-preset=ultrafast key-int-max={args.gop} bitrate={args.bitrate} "
            'option-string="open-gop=0" ! rtph265pay name=pay0 pt=96 config-interval=-1'
        )
    if args.audio is None:
        return f"( {video} )"
    if args.audio == "aac":
        rate = args.audio_rate
        encode = f"voaacenc bitrate={min(64000, 3 * rate)} ! rtpmp4gpay name=pay1 pt=97"
    else:
        rate = 8000  # RTP's static payload types 0 and 8 are 8 kHz mono
        encode = "alawenc ! rtppcmapay name=pay1 pt=8" if args.audio == "pcma" else "mulawenc ! rtppcmupay name=pay1 pt=0"
    audio = f"audiotestsrc is-live=true wave=sine ! audio/x-raw,format=S16LE,rate={rate},channels=1 ! {encode}"
    return f"( {video} {audio} )"


class Accounting:
    """Counts clients and sessions and prints each event for the test to parse."""

    def __init__(self, server, max_clients):
        self.max_clients = max_clients
        self.clients = 0
        self.sessions = set()
        self.lock = threading.Lock()
        self.pool = server.get_session_pool()
        server.connect("client-connected", self.on_client_connected)
        self.pool.connect("session-removed", self.on_session_removed)

    @staticmethod
    def emit(line):
        print(line, flush=True)

    def on_client_connected(self, _server, client):
        peer = peer_of(client)
        with self.lock:
            if self.max_clients is not None and self.clients >= self.max_clients:
                self.emit(f"client-refused {peer} clients={self.clients}")
                # The signal comes before the client is attached to the main
                # loop: client.close() here trips assertions. Shutting the
                # socket lets the client see EOF and go away by itself.
                client.get_connection().get_read_socket().shutdown(True, True)
                return
            self.clients += 1
            self.emit(f"client-connected {peer} clients={self.clients}")
        own_sessions = []
        client.connect("closed", self.on_client_closed, peer, own_sessions)
        client.connect("new-session", self.on_new_session, peer, own_sessions)
        client.connect("play-request", self.on_play, peer)

    def on_client_closed(self, _client, peer, own_sessions):
        # gst-rtsp-server keeps a session whose connection dropped without a
        # TEARDOWN until it times out (60 s), its pipeline still encoding;
        # cameras drop it with the connection, and so do we.
        for session_id in own_sessions:
            session = self.pool.find(session_id)
            if session is not None:
                self.pool.remove(session)
        with self.lock:
            self.clients -= 1
            self.emit(f"client-closed {peer} clients={self.clients}")

    def on_new_session(self, _client, session, peer, own_sessions):
        own_sessions.append(session.get_sessionid())
        with self.lock:
            self.sessions.add(session.get_sessionid())
            self.emit(f"session-new {session.get_sessionid()} {peer} sessions={len(self.sessions)}")

    def on_play(self, _client, context, peer):
        session = context.session.get_sessionid() if context.session else "-"
        self.emit(f"play {peer} session={session}")

    def on_session_removed(self, _pool, session):
        with self.lock:
            self.sessions.discard(session.get_sessionid())
            self.emit(f"session-removed {session.get_sessionid()} sessions={len(self.sessions)}")


def peer_of(client):
    """ip:port of the client's connection (the port tells apart two readers on one host)."""
    address = client.get_connection().get_read_socket().get_remote_address()
    ip = address.get_address().to_string()
    return f"[{ip}]:{address.get_port()}" if ":" in ip else f"{ip}:{address.get_port()}"


def main():
    args = parse_args()
    # Tests kill and restart the camera to make readers reconnect: die at once
    # (the default action), whatever disposition the parent left us. The
    # server binds with SO_REUSEADDR, so a restart on the same port works
    # immediately despite TIME_WAIT connections.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    # The default listen backlog of 5 makes a burst of readers wait for SYN
    # retries (1 s and more).
    server.set_backlog(64)
    Accounting(server, args.max_clients)

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
