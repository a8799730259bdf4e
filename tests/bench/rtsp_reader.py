#!/usr/bin/python3
"""RTSP readers for tests/bench/streams.sh: many RTSP-over-TCP readers in one
process (one epoll loop, no decoding) that count what they receive and time
every frame, plus the benchmark's per-phase summary and its report.

    rtsp_reader.py client URL --count N --warmup S --duration S --out FILE
        N readers of URL: DESCRIBE, SETUP (RTP/AVP/TCP interleaved), PLAY,
        optionally with Basic credentials (--user, --password).
    rtsp_reader.py listen --address A --port P --count N --warmup S --duration S --out FILE
        N readers that are pushed to instead (what `ffmpeg -f rtsp` does): they
        accept ANNOUNCE, SETUP mode=record, RECORD and then read the same
        interleaved RTP as a client. Only the handshake differs.
    rtsp_reader.py client URL --count 1 --records FILE --forever
        The probe: one reader, a line per frame appended to FILE as it arrives.
    rtsp_reader.py summarize ...     one phase's figures as a JSON line
    rtsp_reader.py report FILE       the tables from those lines

Counting: only the RTP channel the SETUP answer names (RTCP is counted apart),
and only packets received inside the window, which opens --warmup seconds
after every reader plays (or --setup-timeout after the start) and lasts
--duration; its times go to stdout ("window START END playing=N"). Bytes are
whole RTP packets (header included, interleaving header not). A frame is an
access unit: it ends at a packet with the marker bit.

Timing: each socket has SO_TIMESTAMPNS, so a read carries the kernel's
receive time of the newest segment in it (the clock is CLOCK_REALTIME, the
same in every namespace); the reader's own scheduling delays do not count.
A frame is keyed by the first 256 bytes of its first slice NAL (header byte
included; an FU-A start is put back together), which every relay passes on
unchanged however it packetizes (each sends at least that much of a NAL in its
first packet; the slice header plus a few macroblocks repeat in a scrolling
test pattern, so 32 bytes were not enough); its times are the read that
brought that NAL's first packet (t_first) and the read that brought its
marker packet (t_end, "frame complete": when a decoder could have it). A
reader's frame is matched to the probe's frame with the same key received up
to 5 s before it; a key seen twice in that span is left out ("ambiguous").
"""
import argparse
import base64
import hashlib
import json
import math
import os
import select
import socket
import statistics
import struct
import sys
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS has the same value
READ_SIZE = 64 * 1024  # small enough that a read's timestamp is close to its frames' arrival
KEEPALIVE_EVERY = 20.0  # GET_PARAMETER (client) so no server times the session out (60 s)
# A receive buffer that holds seconds of video: a reader (a Python process sharing a CPU with the camera)
# that is late to read must not push back on the relay, or its own delay shows up as the relay's latency
# (the default 128 KiB start is ~0.1 s at 4 Mbit/s). SO_RCVBUFFORCE (root) goes past net.core.rmem_max.
RCVBUF = 8 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
KEY_BYTES = 256  # of a frame's first slice NAL: every relay's first packet of a NAL carries at least this much


def frame_key(head, rest):
    """The key of a frame: NAL header byte + the next KEY_BYTES - 1 bytes (fewer in a short NAL), hashed."""
    return hashlib.blake2b(bytes([head]) + bytes(rest[: KEY_BYTES - 1]), digest_size=8).hexdigest()


class Conn:
    """One reader: an RTSP connection, client (DESCRIBE/SETUP/PLAY) or pushed to (ANNOUNCE/SETUP/RECORD)."""

    def __init__(self, reader, sock, index, url=None):
        self.reader = reader
        self.sock = sock
        self.index = index
        self.url = url
        self.buf = bytearray()
        self.cseq = 0
        self.state = "connecting"
        self.error = None
        self.session = None
        self.base = url
        self.rtp_channel = 0
        self.connected_at = time.time()
        self.playing_at = None
        self.first_rtp = None
        self.last_keepalive = time.time()
        # in the window
        self.packets = self.bytes = self.frames = self.rtcp = 0
        self.records = []
        # all along
        self.all_packets = self.all_bytes = 0
        self.au_key = None
        self.au_idr = False
        self.au_t = 0.0
        self.au_bytes = 0

    # --- RTSP messages -------------------------------------------------------------------------------------

    def send(self, text):
        data = text.encode("latin-1")
        try:
            sent = self.sock.send(data)
        except OSError as e:
            return self.fail(f"send: {e}")
        if sent != len(data):  # small messages on an idle socket; never seen, but do not go silently wrong
            self.fail("short send of an RTSP message")

    def request(self, method, url, *headers):
        self.cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self.cseq}", "User-Agent: cgbench-reader"]
        if self.reader.authorization:
            lines.append(self.reader.authorization)
        if self.session:
            lines.append(f"Session: {self.session}")
        lines.extend(headers)
        self.send("\r\n".join(lines) + "\r\n\r\n")

    def fail(self, why):
        if self.error is None:
            self.error = why
            self.state = "failed"
            print(f"reader {self.index}: {why}", file=sys.stderr, flush=True)
        self.reader.close(self)

    def start_client(self):
        self.state = "describe"
        self.request("DESCRIBE", self.url, "Accept: application/sdp")

    def on_message(self, head, body):
        lines = head.split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if lines[0].startswith("RTSP/"):
            self.on_response(lines[0], headers, body)
        else:
            self.on_request(lines[0], headers, body)

    def on_response(self, status_line, headers, body):
        parts = status_line.split(" ", 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if self.state == "playing":
            return  # keepalive answers
        if code != 200:
            return self.fail(f"{self.state}: {status_line}")
        if self.state == "describe":
            base = headers.get("content-base") or headers.get("content-location") or self.url
            self.base = base
            control = sdp_video_control(body.decode("utf-8", "replace"))
            if control is None:
                return self.fail("no video stream in the SDP")
            if control.startswith("rtsp://"):
                setup_url = control
            elif control == "*":
                setup_url = base
            else:
                setup_url = base + ("" if base.endswith("/") else "/") + control
            self.state = "setup"
            self.request("SETUP", setup_url, "Transport: RTP/AVP/TCP;unicast;interleaved=0-1")
        elif self.state == "setup":
            self.session = headers.get("session", "").split(";")[0] or None
            self.rtp_channel = interleaved(headers.get("transport", ""), 0)
            self.state = "play"
            self.request("PLAY", self.base, "Range: npt=0.000-")
        elif self.state == "play":
            self.state = "playing"
            self.playing_at = time.time()

    def on_request(self, request_line, headers, body):
        method = request_line.split(" ", 1)[0]
        cseq = headers.get("cseq", "0")
        extra = []
        if method == "OPTIONS":
            extra.append("Public: OPTIONS, ANNOUNCE, SETUP, RECORD, TEARDOWN, GET_PARAMETER")
        elif method == "ANNOUNCE":
            if sdp_video_control(body.decode("utf-8", "replace")) is None:
                return self.fail("the ANNOUNCEd SDP has no video")
            self.state = "announced"
        elif method == "SETUP":
            transport = headers.get("transport", "")
            if "TCP" not in transport.upper():
                self.send(f"RTSP/1.0 461 Unsupported Transport\r\nCSeq: {cseq}\r\n\r\n")
                return self.fail(f"publisher wants {transport}")
            channel = interleaved(transport, 2 * self.reader.setups_seen(self))
            self.rtp_channel = channel
            self.session = self.session or f"{os.getpid():x}{self.index:04x}"
            extra.append(f"Transport: RTP/AVP/TCP;unicast;interleaved={channel}-{channel + 1};mode=record")
        elif method == "RECORD":
            self.state = "playing"
            self.playing_at = time.time()
        elif method == "TEARDOWN":
            self.state = "closed"
        if self.session and method != "OPTIONS":
            extra.append(f"Session: {self.session}")
        self.send("\r\n".join([f"RTSP/1.0 200 OK", f"CSeq: {cseq}", *extra]) + "\r\n\r\n")

    # --- data ----------------------------------------------------------------------------------------------

    def feed(self, data, ts):
        buf = self.buf
        buf += data
        n = len(buf)
        i = 0
        while i < n:
            if buf[i] == 0x24:  # '$': interleaved binary data
                if n - i < 4:
                    break
                length = (buf[i + 2] << 8) | buf[i + 3]
                if n - i < 4 + length:
                    break
                if buf[i + 1] == self.rtp_channel:
                    self.on_rtp(buf, i + 4, length, ts)
                elif self.reader.in_window(ts):
                    self.rtcp += 1
                i += 4 + length
            else:
                end = buf.find(b"\r\n\r\n", i)
                if end < 0:
                    if n - i > 16384:
                        return self.fail("garbage instead of an RTSP message")
                    break
                head = bytes(buf[i:end]).decode("latin-1")
                length = 0
                for line in head.split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                if n < end + 4 + length:
                    break
                body = bytes(buf[end + 4 : end + 4 + length])
                i = end + 4 + length
                self.on_message(head, body)
                if self.state in ("failed", "closed"):
                    return
        del buf[:i]

    def on_rtp(self, buf, off, length, ts):
        if length < 12:
            return
        reader = self.reader
        self.all_packets += 1
        self.all_bytes += length
        if self.first_rtp is None:
            self.first_rtp = ts
        window = reader.window_start <= ts < reader.window_end
        if window:
            self.packets += 1
            self.bytes += length
        b0 = buf[off]
        p = off + 12 + 4 * (b0 & 0x0F)
        end = off + length
        if b0 & 0x10 and p + 4 <= end:
            p += 4 + 4 * ((buf[p + 2] << 8) | buf[p + 3])
        if b0 & 0x20:
            end -= buf[end - 1]
        if p < end:
            self.au_bytes += end - p
            if self.au_key is None:
                kind = buf[p] & 0x1F
                if kind == 1 or kind == 5:
                    self.au_key = frame_key(buf[p], buf[p + 1 : min(end, p + KEY_BYTES)])
                    self.au_idr = kind == 5
                    self.au_t = ts
                elif kind == 28 and p + 2 < end:  # FU-A
                    fu = buf[p + 1]
                    if fu & 0x80 and (fu & 0x1F) in (1, 5):
                        self.au_key = frame_key((buf[p] & 0xE0) | (fu & 0x1F), buf[p + 2 : min(end, p + 1 + KEY_BYTES)])
                        self.au_idr = fu & 0x1F == 5
                        self.au_t = ts
                elif kind == 24:  # STAP-A
                    q = p + 1
                    while q + 3 <= end:
                        size = (buf[q] << 8) | buf[q + 1]
                        if buf[q + 2] & 0x1F in (1, 5):
                            self.au_key = frame_key(buf[q + 2], buf[q + 3 : min(q + 2 + size, q + 2 + KEY_BYTES)])
                            self.au_idr = buf[q + 2] & 0x1F == 5
                            self.au_t = ts
                            break
                        q += 2 + size
        if buf[off + 1] & 0x80:  # marker: the access unit is complete
            if self.au_key is not None:
                if window:
                    self.frames += 1
                    self.records.append((self.au_key, round(self.au_t, 6), round(ts, 6), self.au_bytes, self.au_idr))
                if reader.records_file:
                    reader.records_file.write(f"{self.au_key} {self.au_t:.6f} {ts:.6f} {self.au_bytes}\n")
            self.au_key = None
            self.au_bytes = 0

    def result(self):
        startup = self.first_rtp - self.connected_at if self.first_rtp else None
        return {
            "i": self.index,
            "state": self.state,
            "error": self.error,
            "packets": self.packets,
            "bytes": self.bytes,
            "frames": self.frames,
            "rtcp": self.rtcp,
            "all_packets": self.all_packets,
            "all_bytes": self.all_bytes,
            "startup_s": round(startup, 4) if startup is not None else None,
            "records": self.records,
        }


def big_receive_buffer(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:  # not root: as far as rmem_max allows
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)


def interleaved(transport, default):
    for part in transport.split(";"):
        if part.strip().startswith("interleaved="):
            return int(part.split("=", 1)[1].split("-")[0])
    return default


def sdp_video_control(sdp):
    """The video medium's a=control (or the session's, or "*"); None without video."""
    section, session_control, video = "session", None, False
    for line in sdp.splitlines():
        line = line.strip()
        if line.startswith("m="):
            if video:
                break  # the first video medium is done, without a control of its own
            section = "video" if line.startswith("m=video") else "other"
            video = section == "video"
        elif line.startswith("a=control:"):
            value = line[len("a=control:") :]
            if section == "video":
                return value
            if section == "session":
                session_control = value
    if not video:
        return None
    return session_control or "*"


class Reader:
    def __init__(self, args):
        self.args = args
        self.ep = select.epoll()
        self.conns = {}
        self.all = []
        self.start = time.time()
        # The window opens `warmup` seconds after every reader plays (or after the set-up timeout,
        # with those that do): a relay slow to start all of them is not measured while starting.
        self.window_start = self.window_end = math.inf
        self.setup_deadline = self.start + args.setup_timeout
        self.all_playing_s = None
        self.records_file = open(args.records, "a", buffering=1 << 16) if args.records else None
        self.authorization = None
        if getattr(args, "user", None) is not None:
            token = base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
            self.authorization = f"Authorization: Basic {token}"
        self.listener = None
        self.setups = {}

    def in_window(self, ts):
        return self.window_start <= ts < self.window_end

    def setups_seen(self, conn):
        n = self.setups.get(conn, 0)
        self.setups[conn] = n + 1
        return n

    def register(self, conn):
        conn.sock.setblocking(False)
        conn.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.conns[conn.sock.fileno()] = conn
        self.all.append(conn)
        self.ep.register(conn.sock.fileno(), select.EPOLLIN)

    def close(self, conn):
        fd = conn.sock.fileno()
        if fd in self.conns:
            del self.conns[fd]
            self.ep.unregister(fd)
            conn.sock.close()

    def connect_all(self):
        host, port = host_port(self.args.url)
        for i in range(self.args.count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            big_receive_buffer(sock)  # before connecting: the window scale is agreed in the handshake
            sock.settimeout(10)
            sock.connect((socket.gethostbyname(host), port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(self, sock, i, self.args.url)
            self.register(conn)
            conn.start_client()

    def listen(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        big_receive_buffer(sock)  # accepted sockets inherit it
        sock.bind((self.args.address, self.args.port))
        sock.listen(256)
        sock.setblocking(False)
        self.listener = sock
        self.ep.register(sock.fileno(), select.EPOLLIN)
        print(f"listening {self.args.address}:{self.args.port}", flush=True)

    def accept(self):
        while len(self.all) < self.args.count:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.register(Conn(self, sock, len(self.all)))

    def run(self):
        if self.args.mode == "client":
            self.connect_all()
        else:
            self.listen()
        cmsg_space = socket.CMSG_SPACE(16)
        flushed = time.time()
        while True:
            now = time.time()
            if now >= self.window_end:
                break
            if self.window_start == math.inf and not self.args.forever:
                playing = sum(1 for c in self.all if c.state == "playing")
                if playing == self.args.count or now > self.setup_deadline:
                    self.all_playing_s = round(now - self.start, 3)
                    self.window_start = now + self.args.warmup
                    self.window_end = self.window_start + self.args.duration
                    # streams.sh samples the relay's CPU and memory at these times.
                    print(f"window {self.window_start:.6f} {self.window_end:.6f} playing={playing}", flush=True)
            events = self.ep.poll(max(0.0, min(0.5, self.window_end - now)))
            for fd, _ in events:
                if self.listener is not None and fd == self.listener.fileno():
                    self.accept()
                    continue
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                try:
                    data, anc, _, _ = conn.sock.recvmsg(READ_SIZE, cmsg_space)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    conn.fail(f"recv: {e}")
                    continue
                if not data:
                    conn.fail(f"closed by the other side in state {conn.state}")
                    continue
                ts = None
                for level, kind, value in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                        sec, nsec = struct.unpack("qq", value[:16])
                        ts = sec + nsec * 1e-9
                conn.feed(data, ts if ts is not None else time.time())
            now = time.time()
            if now - flushed > 0.5 and self.records_file:
                self.records_file.flush()
                flushed = now
            for conn in list(self.conns.values()):
                if conn.state == "playing" and conn.url and now - conn.last_keepalive > KEEPALIVE_EVERY:
                    conn.last_keepalive = now
                    conn.request("GET_PARAMETER", conn.base)
                elif conn.state not in ("playing", "failed", "closed") and now > self.setup_deadline:
                    conn.fail(f"not playing {self.args.setup_timeout:g} s after the start (state {conn.state})")
            if self.args.forever and not self.conns and self.all:
                sys.exit("the probe lost its camera")
        out = {
            "mode": self.args.mode,
            "count": self.args.count,
            "window": [self.window_start, self.window_end],
            "duration": self.args.duration,
            "all_playing_s": self.all_playing_s,
            "readers": [c.result() for c in self.all],
        }
        missing = self.args.count - len(self.all)
        out["readers"] += [{"i": len(self.all) + k, "state": "absent", "error": "never connected", "packets": 0,
                            "bytes": 0, "frames": 0, "rtcp": 0, "all_packets": 0, "all_bytes": 0,
                            "startup_s": None, "records": []} for k in range(missing)]
        with open(self.args.out, "w") as f:
            json.dump(out, f)


def host_port(url):
    rest = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = rest.rpartition(":")
    return (host, int(port)) if host else (rest, 554)


# --- summary of one phase ------------------------------------------------------------------------------------


def percentile(values, q):
    if not values:
        return math.nan
    values = sorted(values)
    k = (len(values) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def load_probe(path):
    probe = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue  # a line being written
            probe.setdefault(parts[0], []).append((float(parts[1]), float(parts[2]), int(parts[3])))
    return probe


def summarize(args):
    with open(args.readers) as f:
        readers = json.load(f)
    start, end = readers["window"]
    duration = end - start
    probe = load_probe(args.probe)
    # The camera as the probe saw it in the same window.
    probe_frames = [r for recs in probe.values() for r in recs if start <= r[1] < end]
    camera_fps = len(probe_frames) / duration
    camera_mbps = sum(r[2] for r in probe_frames) * 8 / duration / 1e6
    rows = readers["readers"]
    mbps = [r["bytes"] * 8 / duration / 1e6 for r in rows]
    fps = [r["frames"] / duration for r in rows]
    added_end, added_first, unmatched, ambiguous, matched = [], [], 0, 0, 0
    added_idr, added_other = [], []  # key frames (IDR) and the rest
    worst_reader_p99 = []
    for r in rows:
        own = []
        for key, t_first, t_end, _, idr in r["records"]:
            # The probe's frame with this key that arrived up to 5 s earlier (a reader cannot be ahead of
            # the camera by more than clock noise); two such frames = a repeated key, not counted.
            candidates = [c for c in probe.get(key, ()) if -0.05 <= t_end - c[1] <= 5]
            if len(candidates) != 1:
                if candidates:
                    ambiguous += 1
                else:
                    unmatched += 1
                continue
            best = candidates[0]
            matched += 1
            own.append((t_end - best[1]) * 1000)
            (added_idr if idr else added_other).append(own[-1])
            added_first.append((t_first - best[0]) * 1000)
        added_end += own
        if own:
            worst_reader_p99.append(percentile(own, 0.99))
    ticks_s = args.cpu_ticks / args.hz
    cpu_s = args.cpu_ns / 1e9
    healthy = sum(1 for m, r in zip(mbps, rows) if r["error"] is None and camera_mbps and m >= 0.9 * camera_mbps)
    out = {
        "round": args.round,
        "relay": args.relay,
        "readers": len(rows),
        "window_s": round(duration, 2),
        "relay_processes": args.processes,
        "relay_cpu_s": round(cpu_s, 4),
        "relay_cpu_pct": round(100 * cpu_s / args.cpu_window, 3),
        "relay_cpu_ticks_s": round(ticks_s, 3),
        "rss_kib": args.rss_kib,
        "rss_last_kib": args.rss_last_kib,
        "pss_kib": args.pss_kib,
        "idle_rss_kib": args.idle_rss_kib,
        "camera_cpu_pct": round(100 * args.camera_cpu_ns / 1e9 / args.cpu_window, 1),
        "cpu0_busy": args.cpu0_busy,
        "cpu1_busy": args.cpu1_busy,
        "camera_fps": round(camera_fps, 2),
        "camera_mbps": round(camera_mbps, 3),
        "healthy_readers": healthy,
        "failed": [f"{r['i']}: {r['error']}" for r in rows if r["error"]][:5],
        "failed_count": sum(1 for r in rows if r["error"]),
        "mbps_min": round(min(mbps), 3) if mbps else 0,
        "mbps_median": round(statistics.median(mbps), 3) if mbps else 0,
        "fps_min": round(min(fps), 2) if fps else 0,
        "fps_median": round(statistics.median(fps), 2) if fps else 0,
        "packets_min": min(r["packets"] for r in rows) if rows else 0,
        "packets_median": statistics.median(r["packets"] for r in rows) if rows else 0,
        "all_playing_s": readers.get("all_playing_s"),
        "startup_median_s": statistics.median(s) if (s := [r["startup_s"] for r in rows if r["startup_s"] is not None]) else None,
        "matched_frames": matched,
        "unmatched_frames": unmatched,
        "ambiguous_frames": ambiguous,
        "added_p50_ms": round(percentile(added_end, 0.5), 3),
        "added_p99_ms": round(percentile(added_end, 0.99), 3),
        "added_max_ms": round(max(added_end), 3) if added_end else math.nan,
        "added_first_p50_ms": round(percentile(added_first, 0.5), 3),
        "added_first_p99_ms": round(percentile(added_first, 0.99), 3),
        "added_idr_p50_ms": round(percentile(added_idr, 0.5), 3),
        "added_idr_max_ms": round(max(added_idr), 3) if added_idr else math.nan,
        "added_other_p99_ms": round(percentile(added_other, 0.99), 3),
        "idr_share": round(len(added_idr) / len(added_end), 4) if added_end else math.nan,
        "worst_reader_p99_ms": round(max(worst_reader_p99), 3) if worst_reader_p99 else math.nan,
    }
    if args.extra:
        out.update(json.loads(args.extra))
    line = json.dumps(out)
    with open(args.results, "a") as f:
        f.write(line + "\n")
    brief = {k: out[k] for k in ("relay", "readers", "relay_cpu_pct", "rss_kib", "camera_fps", "camera_mbps",
                                 "healthy_readers", "mbps_min", "mbps_median", "fps_min", "added_p50_ms",
                                 "added_p99_ms", "unmatched_frames", "cpu1_busy")}
    print("  " + json.dumps(brief), file=sys.stderr)


# --- report ----------------------------------------------------------------------------------------------------


def report(args):
    rows = [json.loads(line) for line in open(args.results) if line.strip()]
    relays = [r for r in ("camgate", "ffmpeg", "gst") if any(x["relay"] == r for x in rows)]
    rounds = sorted({r["round"] for r in rows})
    many = max((r["readers"] for r in rows), default=0)
    by = {(r["round"], r["relay"], r["readers"]): r for r in rows}

    def med(values):
        values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return statistics.median(values) if values else math.nan

    def get(relay, readers, key):
        return med([by[(n, relay, readers)].get(key) for n in rounds if (n, relay, readers) in by])

    def per_round(f):
        out = []
        for n in rounds:
            try:
                out.append(f(lambda relay, key, readers=many: by[(n, relay, readers)][key]))
            except (KeyError, ZeroDivisionError, TypeError):
                pass
        return med(out)

    names = {"camgate": "camgate", "ffmpeg": f"ffmpeg x{many}", "gst": "gst-rtsp"}
    cam = [r for r in rows if r["readers"] == many]
    print(f"\nRTSP restream, one camera ({med([r['camera_mbps'] for r in cam]):.2f} Mbit/s, "
          f"{med([r['camera_fps'] for r in cam]):.1f} fps as the probe saw it) to {many} readers over TCP; "
          f"medians of {len(rounds)} round(s). Relay on CPU 0; camera, readers and probe on CPU 1.")
    print(f"\nDelivery ({many} readers, measured window): each reader's RTP bytes and frames; 'ok' = readers with "
          ">= 90% of the camera's bitrate and no error;\nstart = connect to first RTP packet (median); camera % = the "
          f"camera's CPU (it serves {many + 1} sessions for ffmpeg), CPU1 % = all of CPU 1")
    print(f"{'relay':<11} {'ok':>6} {'Mbit/s min':>11} {'median':>8} {'fps min':>8} {'median':>7}"
          f" {'pkts/s med':>11} {'start s':>8} {'camera %':>9} {'CPU1 %':>7}")
    for relay in relays:
        g = lambda key: get(relay, many, key)
        w = g("window_s")
        print(f"{names[relay]:<11} {g('healthy_readers'):>3.0f}/{many:<2} {g('mbps_min'):>11.2f} {g('mbps_median'):>8.2f}"
              f" {g('fps_min'):>8.1f} {g('fps_median'):>7.1f} {g('packets_median') / w:>11.0f}"
              f" {g('startup_median_s'):>8.2f} {g('camera_cpu_pct'):>9.0f} {g('cpu1_busy'):>7.0f}")
    print("\nCost: relay CPU (its processes' time on CPU over the window, % of one core) and memory (RSS summed\n"
          "over them, the peak of samples every second in the window; PSS: the last sample, shared pages split)")
    per = f"({many}-1)/{many - 1}"
    print(f"{'relay':<11} {'CPU %':>9} {'CPU %':>8} {'% / reader':>11} {'RSS idle':>9} {'RSS 1':>8}"
          f" {f'RSS {many}':>8} {'KiB/reader':>11} {f'PSS {many}':>8}")
    print(f"{'':<11} {f'{many} readers':>9} {'1 reader':>8} {per:>11} {'MiB':>9} {'MiB':>8} {'MiB':>8}"
          f" {per:>11} {'MiB':>8}")
    for relay in relays:
        c50, c1 = get(relay, many, "relay_cpu_pct"), get(relay, 1, "relay_cpu_pct")
        r50, r1 = get(relay, many, "rss_kib"), get(relay, 1, "rss_kib")
        idle = get(relay, 1, "idle_rss_kib")
        per_reader_cpu = per_round(lambda g, r=relay: (g(r, "relay_cpu_pct") - by_1(g, r, "relay_cpu_pct")) / (many - 1))
        per_reader_rss = per_round(lambda g, r=relay: (g(r, "rss_kib") - by_1(g, r, "rss_kib")) / (many - 1))
        idle_txt = "-" if math.isnan(idle) else f"{idle / 1024:.1f}"
        print(f"{names[relay]:<11} {c50:>9.1f} {c1:>8.2f} {per_reader_cpu:>11.3f} {idle_txt:>9} {r1 / 1024:>8.1f}"
              f" {r50 / 1024:>8.1f} {per_reader_rss:>11.0f} {get(relay, many, 'pss_kib') / 1024:>8.1f}")
    print("\nAdded latency (ms): a reader's arrival of each frame minus the probe's (a reader on the camera "
          "itself), same kernel clock;\n'complete' = the frame's marker packet, 'first' = its first slice's "
          "first packet; pooled over all readers and frames")
    print(f"{'relay':<11} {'complete p50':>13} {'p99':>8} {'max':>8} {'worst reader':>13} {'key frames':>11}"
          f" {'':>7} {'others':>7} {'first p50':>10} {'p99':>7} {'frames':>8} {'unmatched':>10}")
    print(f"{'':<11} {'':>13} {'':>8} {'':>8} {'p99':>13} {'p50':>11} {'max':>7} {'p99':>7} {'':>10} {'':>7}"
          f" {'matched':>8} {'/ambiguous':>10}")
    for relay in relays:
        g = lambda key: get(relay, many, key)
        print(f"{names[relay]:<11} {g('added_p50_ms'):>13.2f} {g('added_p99_ms'):>8.2f} {g('added_max_ms'):>8.1f}"
              f" {g('worst_reader_p99_ms'):>13.2f} {g('added_idr_p50_ms'):>11.2f} {g('added_idr_max_ms'):>7.1f}"
              f" {g('added_other_p99_ms'):>7.2f} {g('added_first_p50_ms'):>10.2f} {g('added_first_p99_ms'):>7.2f}"
              f" {g('matched_frames'):>8.0f} {g('unmatched_frames'):>5.0f}/{g('ambiguous_frames'):<4.0f}")
    ratios = []
    print("\nRatios (per round, then the median): camgate / other")
    print(f"{'other':<11} {f'CPU {many}':>8} {'CPU 1':>8} {f'RSS {many}':>8} {f'PSS {many}':>8} {'p99 added':>10}")
    for other in [r for r in relays if r != "camgate"]:
        if "camgate" not in relays:
            break
        cpu = per_round(lambda g, o=other: g("camgate", "relay_cpu_pct") / g(o, "relay_cpu_pct"))
        cpu1 = per_round(lambda g, o=other: by_1(g, "camgate", "relay_cpu_pct") / by_1(g, o, "relay_cpu_pct"))
        rss = per_round(lambda g, o=other: g("camgate", "rss_kib") / g(o, "rss_kib"))
        pss = per_round(lambda g, o=other: g("camgate", "pss_kib") / g(o, "pss_kib"))
        lat = per_round(lambda g, o=other: g("camgate", "added_p99_ms") / g(o, "added_p99_ms"))
        print(f"{names[other]:<11} {cpu:>7.3f}x {cpu1:>7.3f}x {rss:>7.3f}x {pss:>7.3f}x {lat:>9.2f}x")
        ratios.append((other, cpu))
    if "camgate" in relays:
        print()
        for other, cpu in ratios:
            if other == "ffmpeg":
                print(f"{'PASS' if cpu <= 0.2 else 'MISS'} camgate CPU with {many} readers is {cpu:.3f}x the "
                      f"ffmpeg relays' (target <= 0.2x)")
        p99 = get("camgate", many, "added_p99_ms")
        print(f"{'PASS' if p99 <= 5 else 'MISS'} camgate added p99 latency {p99:.2f} ms (target <= 5 ms)")
        idle, r1, r50 = (get("camgate", 1, "idle_rss_kib"), get("camgate", 1, "rss_kib"), get("camgate", many, "rss_kib"))
        stream = (r1 - idle) / 1024
        reader = (r50 - r1) / (many - 1)
        print(f"{'PASS' if stream <= 2 else 'MISS'} camgate RSS per stream {stream:.2f} MiB (1 reader minus idle; "
              f"target <= 2 MB), per reader {reader:.0f} KiB ((RSS {many} - RSS 1) / {many - 1}; bounded by the "
              f"reader queue: 512 frames / 2 MiB)")
    notes = []
    for r in rows:
        if r["failed_count"]:
            notes.append(f"round {r['round']} {r['relay']} x{r['readers']}: {r['failed_count']} reader(s) failed: "
                         + "; ".join(r["failed"]))
        if r["healthy_readers"] < r["readers"]:
            notes.append(f"round {r['round']} {r['relay']} x{r['readers']}: only {r['healthy_readers']} of "
                         f"{r['readers']} readers got >= 90% of the camera's bitrate (min {r['mbps_min']} Mbit/s)")
        if r["camera_fps"] < 24:
            notes.append(f"round {r['round']} {r['relay']} x{r['readers']}: the camera ran at {r['camera_fps']} fps "
                         "(it did not keep up)")
        if r["cpu0_busy"] - r["relay_cpu_pct"] > 20:
            notes.append(f"round {r['round']} {r['relay']} x{r['readers']}: CPU 0 was {r['cpu0_busy']}% busy, the "
                         f"relay {r['relay_cpu_pct']}%: other load (or softirq work) on the relay's CPU")
        if r["cpu1_busy"] > 90:
            notes.append(f"round {r['round']} {r['relay']} x{r['readers']}: CPU 1 (camera, readers) was "
                         f"{r['cpu1_busy']}% busy: latency figures include its queueing")
        if r.get("camgate_dropped"):
            notes.append(f"round {r['round']} camgate x{r['readers']}: camgate dropped {r['camgate_dropped']} "
                         "frames for slow readers")
    if notes:
        print()
        print("\n".join(f"note: {n}" for n in notes))


def by_1(g, relay, key):
    """The same round's one-reader figure, via the per_round getter."""
    return g(relay, key, readers=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    client = sub.add_parser("client")
    client.add_argument("url")
    client.add_argument("--user")
    client.add_argument("--password", default="")
    listen = sub.add_parser("listen")
    listen.add_argument("--address", default="0.0.0.0")
    listen.add_argument("--port", type=int, required=True)
    for p in (client, listen):
        p.add_argument("--count", type=int, default=1)
        p.add_argument("--warmup", type=float, default=5, help="seconds from all playing to the window")
        p.add_argument("--duration", type=float, default=20)
        p.add_argument("--setup-timeout", type=float, default=10, help="fail a reader not playing by then")
        p.add_argument("--out", default="/dev/null")
        p.add_argument("--records", help="append a line per frame: key t_first t_end bytes")
        p.add_argument("--forever", action="store_true", help="run until killed (the probe)")
    summ = sub.add_parser("summarize")
    summ.add_argument("--readers", required=True)
    summ.add_argument("--probe", required=True)
    summ.add_argument("--results", required=True)
    summ.add_argument("--round", type=int, required=True)
    summ.add_argument("--relay", required=True)
    summ.add_argument("--cpu-ns", type=float, required=True, help="the relay's threads' run time (schedstat)")
    summ.add_argument("--cpu-ticks", type=float, required=True, help="utime+stime, informational")
    summ.add_argument("--cpu-window", type=float, required=True, help="seconds between the CPU samples")
    summ.add_argument("--hz", type=float, default=os.sysconf("SC_CLK_TCK"))
    summ.add_argument("--processes", type=int, default=1)
    summ.add_argument("--camera-cpu-ns", type=float, default=math.nan, help="the camera's run time")
    summ.add_argument("--rss-kib", type=int, required=True, help="peak over the window")
    summ.add_argument("--rss-last-kib", type=int, help="the last sample")
    summ.add_argument("--pss-kib", type=int, required=True)
    summ.add_argument("--idle-rss-kib", type=int)
    summ.add_argument("--cpu0-busy", type=float, default=math.nan)
    summ.add_argument("--cpu1-busy", type=float, default=math.nan)
    summ.add_argument("--extra", help="more JSON fields")
    rep = sub.add_parser("report")
    rep.add_argument("results")
    args = parser.parse_args()
    if args.mode == "summarize":
        return summarize(args)
    if args.mode == "report":
        return report(args)
    Reader(args).run()


if __name__ == "__main__":
    main()
