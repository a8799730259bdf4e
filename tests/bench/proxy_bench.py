#!/usr/bin/python3
"""Measuring side of tests/bench/proxy.sh (Python 3.11 standard library only).

proxy.sh starts and stops the servers; every subcommand here measures one thing about the server whose
root process is --pid and appends one JSON line to --out. `report` turns those lines into the tables.

What is measured, and how (see /work/shared/notes/bench-method.md):
- proxy CPU = utime+stime summed over the server's whole process tree (/proc/PID/stat), delta over a run;
- memory = VmRSS summed over the tree (sampled every 0.1 s for the peak), PSS from smaps_rollup beside it;
- new upstream connections = distinct ephemeral ports of TCP sockets to/from the upstream port seen during
  a run (/proc/net/tcp, every 0.1 s and at the end) that were not there before. Closed connections stay in
  TIME_WAIT for 60 s, so even short-lived ones are seen; the script runs in its own network namespace, so
  the proxy under test is the only client of the upstream.
"""

import argparse
import asyncio
import concurrent.futures
import json
import math
import os
import re
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SITE = "bench.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------------
# /proc readers


def tree_pids(root):
    """The root process and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def cpu_seconds(pids):
    """utime + stime of the given processes (all their threads, including exited ones), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / CLK_TCK


def _status_kib(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pids):
    return sum(_status_kib(f"/proc/{pid}/status", "VmRSS:") for pid in pids)


def pss_kib(pids):
    return sum(_status_kib(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in pids)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def upstream_sockets(up):
    """(ephemeral ports of every TCP socket to or from the upstream port, count of ESTABLISHED ones)."""
    ports, established = set(), 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            f = open(name)
        except OSError:
            continue
        with f:
            next(f)
            for line in f:
                fields = line.split()
                lport = int(fields[1].rsplit(":", 1)[1], 16)
                rport = int(fields[2].rsplit(":", 1)[1], 16)
                if rport == up:  # the proxy's end
                    ports.add(lport)
                    established += fields[3] == "01"
                elif lport == up and fields[3] != "0A":  # the upstream's end (not the listener)
                    ports.add(rport)
    return ports, established


def cpu_busy():
    """Per-CPU (busy, total) jiffies from /proc/stat, to show which side is the bottleneck."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                fields = line.split()
                values = [int(v) for v in fields[1:9]]
                out[fields[0]] = (sum(values) - values[3] - values[4], sum(values))
    return out


def busy_pct(before, after, cpu):
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return 100.0 * busy / total if total else 0.0


def own_cpu():
    """CPU seconds of this process and of its waited-for children (wrk, h2load)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


class Run:
    """Brackets one measured run: proxy CPU, CPU 0/1 busy, RSS peak (0.1 s samples), new upstream ports."""

    def __init__(self, args):
        self.root, self.up = args.pid, args.upstream_port
        self.pids = tree_pids(self.root)
        self.ports_before, _ = upstream_sockets(self.up)
        self.ports = set()
        self.rss = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.upstream_pid = args.upstream_pid
        self.busy0 = cpu_busy()
        self.own0 = own_cpu()
        self.upstream_cpu0 = cpu_seconds([self.upstream_pid])
        self.cpu0 = cpu_seconds(self.pids)
        self.t0 = time.monotonic()
        self.thread.start()

    def _sample(self):
        pids, refreshed = self.pids, time.monotonic()
        while not self.stop.is_set():
            if time.monotonic() - refreshed > 1.0:  # Apache may replace a child; cheap enough once a second
                pids, refreshed = tree_pids(self.root), time.monotonic()
            self.rss.append(rss_kib(pids))
            self.ports |= upstream_sockets(self.up)[0]
            self.stop.wait(0.1)

    def finish(self):
        pids = sorted(set(self.pids) | set(tree_pids(self.root)))
        cpu = cpu_seconds(pids) - self.cpu0
        wall = time.monotonic() - self.t0
        busy = cpu_busy()
        upstream_cpu = cpu_seconds([self.upstream_pid]) - self.upstream_cpu0
        own = [b - a for a, b in zip(self.own0, own_cpu())]
        self.stop.set()
        self.thread.join()
        ports, established = upstream_sockets(self.up)
        rss = self.rss or [rss_kib(pids)]
        return {
            "proxy_cpu_s": cpu,
            "wall_s": wall,
            "cpu0_busy_pct": busy_pct(self.busy0, busy, "cpu0"),
            "cpu1_busy_pct": busy_pct(self.busy0, busy, "cpu1"),
            "proxy_cpu_pct": 100 * cpu / wall,
            # CPU 0 time not spent in the proxy: other work on this host (noise) plus loopback softirq time
            "cpu0_other_pct": busy_pct(self.busy0, busy, "cpu0") - 100 * cpu / wall,
            # How CPU 1 was shared: the upstream, this process (clients, sampler), wrk/h2load (children)
            "upstream_cpu_pct": 100 * upstream_cpu / wall,
            "sampler_cpu_pct": 100 * own[0] / wall,
            "loadgen_cpu_pct": 100 * own[1] / wall,
            "peak_rss_mib": max(rss) / 1024,
            "mean_rss_mib": statistics.mean(rss) / 1024,
            "upstream_new": len((self.ports | ports) - self.ports_before),
            "upstream_established_after": established,
            "server_alive": alive(self.root),
        }


# ---------------------------------------------------------------------------------------------------------
# HTTP/1.1 over TLS, just enough for the clients below


def tls_context(cafile):
    # The cert is a self-signed leaf for bench.test: trusting it directly also checks SNI picked it.
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def request(path):
    return f"GET {path} HTTP/1.1\r\nHost: {SITE}\r\nUser-Agent: camgate-bench\r\n\r\n".encode()


def read_response(sock):
    """Reads one Content-Length response; returns (status, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"connection closed in the response head ({len(buf)} bytes)")
        buf += data
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed in the response body")
        body += data
    return status, body


def open_conn(ctx, port, source="127.0.0.1", path="/bytes"):
    """A TLS keep-alive connection that has done one request, left idle."""
    raw = socket.create_connection((SITE, port), timeout=20, source_address=(source, 0))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = ctx.wrap_socket(raw, server_hostname=SITE)
    conn.sendall(request(path))
    status, body = read_response(conn)
    if status != 200 or len(body) != 1024:
        conn.close()
        raise ConnectionError(f"status {status}, {len(body)} body bytes")
    return conn


def still_open(conn):
    conn.setblocking(False)
    try:
        return conn.recv(1) != b""  # data on an idle connection would be odd, but it is still open
    except (ssl.SSLWantReadError, BlockingIOError):
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------
# Subcommands


def record(args, test, **fields):
    line = {"round": args.round, "server": args.server, "test": test, **fields}
    with open(args.out, "a") as f:
        f.write(json.dumps(line) + "\n")
    return line


def say(args, text):
    print(f"  [{args.server} r{args.round}] {text}", file=sys.stderr, flush=True)


def cmd_wait_port(args):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not alive(args.pid):
            sys.exit(f"{args.server}: process exited before listening")
        try:
            socket.create_connection(("127.0.0.1", args.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{args.server}: nothing listening on 127.0.0.1:{args.port} after 20 s")


def cmd_idle(args):
    pids = tree_pids(args.pid)
    rec = record(args, "idle", ok=True, processes=len(pids), rss_mib=rss_kib(pids) / 1024,
                 pss_mib=pss_kib(pids) / 1024)
    say(args, f"idle: {rec['rss_mib']:.1f} MiB RSS, {rec['pss_mib']:.1f} MiB PSS, {len(pids)} processes")


def cmd_check(args):
    """One request through the proxy, body checked: a proxy that cannot do this is not measured."""
    error = None
    for _ in range(20):  # some servers listen a moment before their TLS/proxy setup is done
        try:
            conn = open_conn(tls_context(args.cafile), args.port)
            conn.close()
            error = None
            break
        except (OSError, ValueError) as e:
            error = f"{type(e).__name__}: {e}"
            time.sleep(0.25)
    record(args, "check", ok=error is None, error=error)
    if error:
        say(args, f"check FAILED: {error}")
        sys.exit(1)


def cmd_conns(args):
    """RSS growth while holding N idle TLS keep-alive connections (one request done on each)."""
    ctx = tls_context(args.cafile)
    pids = tree_pids(args.pid)

    def settled_rss(samples):
        values = []
        for _ in range(samples):
            values.append(rss_kib(pids))
            time.sleep(0.1)
        return statistics.mean(values)

    base_rss, base_pss = settled_rss(3), pss_kib(pids)
    conns, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        # From 8 loopback addresses: camgate caps connections per client address at 256, and a real
        # thousand idle connections come from many clients anyway. Same for every server.
        futures = [pool.submit(open_conn, ctx, args.port, f"127.0.0.{10 + i % 8}") for i in range(args.n)]
        for fut in futures:
            try:
                conns.append(fut.result())
            except (OSError, ValueError) as e:
                errors.append(f"{type(e).__name__}: {e}")
    time.sleep(1.0)  # let the server settle (Go GC, allocator trimming) before reading memory
    pids = tree_pids(args.pid)
    held_rss, held_pss = settled_rss(5), pss_kib(pids)
    held = sum(still_open(c) for c in conns)
    for c in conns:
        c.close()
    ok = held == args.n and not errors
    rec = record(args, "conns", ok=ok, n=args.n, opened=len(conns), held=held,
                 errors=len(errors), first_error=errors[0] if errors else None,
                 base_rss_mib=base_rss / 1024, base_pss_mib=base_pss / 1024,
                 rss_mib=held_rss / 1024, pss_mib=held_pss / 1024,
                 kib_per_conn=(held_rss - base_rss) / max(held, 1),
                 pss_kib_per_conn=(held_pss - base_pss) / max(held, 1))
    say(args, f"{held}/{args.n} idle conns held: {rec['rss_mib']:.1f} MiB RSS, "
              f"{rec['kib_per_conn']:.1f} KiB/conn" + (f", errors: {errors[0]}" if errors else ""))


def parse_time_ms(text):
    """wrk's latency format: 850.00us, 1.15ms, 2.01s, 1.00m."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}[m.group(2)]
    return float(m.group(1)) * scale


def cmd_h1(args):
    url = f"https://{SITE}:{args.port}/bytes"
    cmd = ["wrk", "-t1", "-c64", f"-d{args.duration}s", "--latency", url]
    run = Run(args)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    res = run.finish()
    out = proc.stdout
    rec = {"cmd": " ".join(cmd), **res}
    try:
        rec["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
        rec["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M))
        rec["p50_ms"], rec["p99_ms"] = parse_time_ms(pct["50"]), parse_time_ms(pct["99"])
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        rec["non2xx"] = int(m.group(1)) if m else 0
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        rec["socket_errors"] = sum(map(int, m.groups())) if m else 0
        rec["socket_errors_text"] = m.group(0) if m else ""
        rec["us_per_req"] = res["proxy_cpu_s"] * 1e6 / rec["requests"]
        rec["ok"] = (proc.returncode == 0 and rec["non2xx"] == 0 and rec["socket_errors"] == 0
                     and res["server_alive"])
    except (AttributeError, KeyError) as e:
        rec.update(ok=False, error=f"unparsable wrk output ({e}): {out[-500:]} {proc.stderr[-500:]}")
    record(args, "h1", **rec)
    say(args, "HTTP/1.1: " + summary(rec, "non2xx", "socket_errors"))


def cmd_h2(args):
    url = f"https://{SITE}:{args.port}/bytes"
    with tempfile.NamedTemporaryFile(prefix="h2load-", dir=args.tmp) as log:
        cmd = ["h2load", "-t1", "-c32", "-m10", "-D", str(args.duration), "--log-file", log.name, url]
        run = Run(args)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        res = run.finish()
        durations, bad_status = [], 0
        with open(log.name) as f:
            for line in f:
                fields = line.split("\t")
                if len(fields) < 3:
                    continue
                if fields[1] == "200":
                    durations.append(int(fields[2]))
                else:
                    bad_status += 1
    out = proc.stdout
    rec = {"cmd": " ".join(cmd[:7] + [url]), **res}
    try:
        rec["rps"] = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored, (\d+) timeout", out)
        total, started, done, succeeded, failed, errored, timeout = map(int, m.groups())
        rec.update(requests=done, succeeded=succeeded, failed=failed, errored=errored, timeout=timeout)
        m = re.search(r"Application protocol: (\S+)", out)
        rec["protocol"] = m.group(1) if m else "none"
        rec["non2xx"] = bad_status
        durations.sort()
        rec["p50_ms"] = percentile(durations, 50) / 1000
        rec["p99_ms"] = percentile(durations, 99) / 1000
        rec["us_per_req"] = res["proxy_cpu_s"] * 1e6 / done
        rec["ok"] = (proc.returncode == 0 and failed == 0 and errored == 0 and timeout == 0
                     and bad_status == 0 and rec["protocol"] == "h2" and done > 0 and res["server_alive"])
    except (AttributeError, ZeroDivisionError, IndexError) as e:
        rec.update(ok=False, error=f"unparsable h2load output ({e}): {out[-500:]} {proc.stderr[-300:]}")
    record(args, "h2", **rec)
    say(args, "HTTP/2: " + summary(rec, "failed", "errored", "timeout"))


def percentile(sorted_values, p):
    """Nearest-rank percentile."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def summary(rec, *error_keys):
    if "rps" not in rec:
        return "INVALID " + rec.get("error", "")
    errors = ", ".join(f"{k} {rec.get(k)}" for k in error_keys)
    return (f"{rec['rps']:.0f} req/s, {rec['us_per_req']:.1f} us/req, p50 {rec['p50_ms']:.2f} ms, "
            f"p99 {rec['p99_ms']:.2f} ms, peak {rec['peak_rss_mib']:.1f} MiB, "
            f"{rec['upstream_new']} new upstream conns, {errors}; " + cpu_split(rec)
            + ("" if rec["ok"] else "  INVALID"))


def cpu_split(rec):
    return (f"CPU0 {rec['cpu0_busy_pct']:.0f} % (other {rec['cpu0_other_pct']:.0f}), CPU1 {rec['cpu1_busy_pct']:.0f} % (upstream "
            f"{rec['upstream_cpu_pct']:.0f}, load generator {rec['loadgen_cpu_pct']:.0f}, "
            f"python {rec['sampler_cpu_pct']:.0f})")


def cmd_mjpeg(args):
    rec = asyncio.run(mjpeg(args))
    record(args, "mjpeg", **rec)
    say(args, f"MJPEG: {rec.get('readers_ok', 0)}/{args.readers} readers, "
              f"{rec.get('received_mb', 0):.0f}/{rec.get('expected_mb', 0):.0f} MB, "
              f"proxy CPU {rec.get('cpu_pct', 0):.1f} %, peak {rec.get('peak_rss_mib', 0):.1f} MiB, "
              f"{rec.get('upstream_established_after', '?')} upstream conns open; " + (cpu_split(rec) if "wall_s" in rec else "")
              + ("" if rec["ok"] else "  INVALID"))


async def mjpeg(args):
    """N readers of an endless MJPEG stream; proxy CPU and memory over a window once all are streaming."""
    ctx = tls_context(args.cafile)
    path = f"/video.mjpg?size={args.size}&fps={args.fps}"
    n = args.readers
    received = [0] * n
    status = [None] * n
    counting = False
    streaming = 0
    all_streaming = asyncio.Event()
    connect_slots = asyncio.Semaphore(32)  # no handshake storm: the accept backlog is not what we measure

    async def reader(i):
        nonlocal streaming
        async with connect_slots:
            r, w = await asyncio.open_connection(SITE, args.port, ssl=ctx, server_hostname=SITE)
        try:
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            w.write(request(path))
            head = await r.readuntil(b"\r\n\r\n")
            status[i] = int(head.split(None, 2)[1])
            streaming += 1
            if streaming == n:
                all_streaming.set()
            while True:
                data = await r.read(1 << 18)
                if not data:
                    status[i] = f"closed after {status[i]}"
                    return
                if counting:
                    received[i] += len(data)
        finally:
            w.close()

    tasks = [asyncio.create_task(reader(i)) for i in range(n)]
    rec = {"readers": n, "size": args.size, "fps": args.fps}
    try:
        try:
            await asyncio.wait_for(all_streaming.wait(), 5)
        except asyncio.TimeoutError:
            # Measure anyway (e.g. a thread-per-stream server that is out of threads): the readers that
            # never got a response show in readers_ok and received MB, and the run is marked INVALID.
            rec["error"] = f"only {streaming}/{n} readers got a response head within 5 s"
        await asyncio.sleep(1.0)  # past the ramp-up
        run = Run(args)
        counting = True
        await asyncio.sleep(args.duration)
        counting = False
        res = run.finish()
        rec.update(res)
        rec["cpu_pct"] = 100 * res["proxy_cpu_s"] / res["wall_s"]
        expected_each = args.size * args.fps * res["wall_s"]  # JPEG bytes only; framing adds ~0.5 %
        rec["expected_mb"] = expected_each * n / 1e6
        rec["received_mb"] = sum(received) / 1e6
        rec["readers_ok"] = sum(1 for i in range(n) if status[i] == 200 and received[i] >= 0.8 * expected_each)
        rec["ok"] = rec["readers_ok"] == n and rec["received_mb"] >= 0.9 * rec["expected_mb"]
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        rec.update(ok=False, error=f"{type(e).__name__}: {e}; {streaming}/{n} readers got a response head")
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if isinstance(r, Exception) and not isinstance(r, asyncio.CancelledError)]
    if failures:
        rec.setdefault("error", f"{len(failures)} readers failed, first: {failures[0]!r}")
        rec["ok"] = False
    rec["statuses"] = sorted({str(s) for s in status})
    return rec


# ---------------------------------------------------------------------------------------------------------
# Report


def cmd_report(args):
    recs = [json.loads(line) for line in open(args.file)]
    order = args.servers.split()
    rounds = sorted({r["round"] for r in recs})
    data = {}  # data[test][server][round] = record
    for r in recs:
        data.setdefault(r["test"], {}).setdefault(r["server"], {})[r["round"]] = r
    notes = []

    def values(test, server, key):
        rows = data.get(test, {}).get(server, {})
        return {rnd: rec[key] for rnd, rec in rows.items() if rec.get(key) is not None}

    def med(test, server, key):
        v = values(test, server, key)
        return statistics.median(v.values()) if v else None

    def ratio(test, server, key, ref="nginx", ref_test=None):
        """Median over rounds of the within-round ratio to the reference server."""
        mine, theirs = values(test, server, key), values(ref_test or test, ref, key)
        per_round = [mine[r] / theirs[r] for r in mine if r in theirs and theirs[r]]
        return statistics.median(per_round) if per_round else None

    def status(test, server):
        rows = data.get(test, {}).get(server, {})
        checks = data.get("check", {}).get(server, {})
        failed_checks = [c for c in checks.values() if not c["ok"]]
        if not rows:
            if failed_checks:
                return "NOT RUN (check failed)"
            return "NOT RUN"
        bad = [rnd for rnd, rec in rows.items() if not rec.get("ok")]
        if bad:
            return f"INVALID (rounds {','.join(map(str, sorted(bad)))})"
        if len(rows) < len(rounds):
            return f"partial ({len(rows)}/{len(rounds)} rounds)"
        return "ok"

    def fmt(v, digits=1):
        if v is None:
            return "-"
        return f"{v:,.{digits}f}"

    def fr(v):
        return "-" if v is None else f"x{v:.2f}"

    def table(title, header, rows):
        print(f"\n{title}")
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        line = lambda cells: "  ".join(  # noqa: E731
            str(c).ljust(w) if i == 0 or i == len(cells) - 1 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths)))
        print(line(header))
        print(line(["-" * w for w in widths]))
        for row in rows:
            print(line(row))

    n = len(rounds)
    print(f"\nMedians over {n} interleaved round(s); xnginx (and xHAProxy) = median of the per-round ratios.")
    print("Proxy pinned to CPU 0; wrk/h2load/Python clients and the upstream (static nginx; fake-dvr behind it for MJPEG) on CPU 1. "
          "'load CPU1' = how busy the client side was.")

    # 1. HTTP/1.1
    rows = []
    for s in order:
        rows.append([s, fmt(med("h1", s, "rps"), 0), fr(ratio("h1", s, "rps")),
                     fmt(med("h1", s, "us_per_req")), fr(ratio("h1", s, "us_per_req")),
                     fmt(med("h1", s, "p50_ms"), 2), fr(ratio("h1", s, "p50_ms")),
                     fmt(med("h1", s, "p99_ms"), 2), fr(ratio("h1", s, "p99_ms")),
                     fmt(med("h1", s, "peak_rss_mib")), fr(ratio("h1", s, "peak_rss_mib")),
                     fmt(med("h1", s, "upstream_new"), 0), fmt(med("h1", s, "cpu1_busy_pct"), 0),
                     sum(values("h1", s, "non2xx").values()), sum(values("h1", s, "socket_errors").values()),
                     status("h1", s)])
    table("1. HTTP/1.1 keep-alive, TLS 1.3, 1 KiB: wrk -t1 -c64 -d%ss --latency" % args.h1_duration,
          ["proxy", "req/s", "xngx", "us CPU/req", "xngx", "p50 ms", "xngx", "p99 ms", "xngx", "peak RSS MiB",
           "xngx", "new upstream conns", "load CPU1 %", "non-2xx", "sock err", "status"], rows)

    # 2. HTTP/2
    rows = []
    for s in order:
        rows.append([s, fmt(med("h2", s, "rps"), 0), fr(ratio("h2", s, "rps")),
                     fmt(med("h2", s, "us_per_req")), fr(ratio("h2", s, "us_per_req")),
                     fr(ratio("h2", s, "us_per_req", ref="haproxy")),
                     fmt(med("h2", s, "p50_ms"), 2), fr(ratio("h2", s, "p50_ms")),
                     fmt(med("h2", s, "p99_ms"), 2), fr(ratio("h2", s, "p99_ms")),
                     fmt(med("h2", s, "peak_rss_mib")), fr(ratio("h2", s, "peak_rss_mib")),
                     fmt(med("h2", s, "upstream_new"), 0), fmt(med("h2", s, "cpu1_busy_pct"), 0),
                     sum(values("h2", s, "failed").values()), sum(values("h2", s, "errored").values()),
                     sum(values("h2", s, "timeout").values()) + sum(values("h2", s, "non2xx").values()),
                     status("h2", s)])
    table("2. HTTP/2, TLS 1.3, 1 KiB: h2load -t1 -c32 -m10 -D %s (p50/p99 from --log-file)" % args.h2_duration,
          ["proxy", "req/s", "xngx", "us CPU/req", "xngx", "xHAProxy", "p50 ms", "xngx", "p99 ms", "xngx",
           "peak RSS MiB", "xngx", "new upstream conns", "load CPU1 %", "failed", "errored",
           "timeout+non-2xx", "status"], rows)

    # 3. Memory
    rows = []
    for s in order:
        rows.append([s, fmt(med("idle", s, "rss_mib")), fr(ratio("idle", s, "rss_mib")),
                     fmt(med("idle", s, "pss_mib")), fmt(med("conns", s, "rss_mib")),
                     fr(ratio("conns", s, "rss_mib")), fmt(med("conns", s, "pss_mib")),
                     fmt(med("conns", s, "kib_per_conn")), fr(ratio("conns", s, "kib_per_conn")),
                     fmt(med("conns", s, "pss_kib_per_conn")), fmt(med("conns", s, "held"), 0),
                     fmt(med("idle", s, "processes"), 0), status("conns", s)])
    table(f"3. Memory: idle after start, and holding {args.conns} idle TLS keep-alive connections "
          "(KiB/conn = growth over the RSS just before opening them / connections held)",
          ["proxy", "idle RSS MiB", "xngx", "idle PSS MiB", f"RSS {args.conns} conns MiB", "xngx",
           "PSS MiB", "KiB/conn", "xngx", "PSS KiB/conn", "held", "procs", "status"], rows)

    # 4. MJPEG
    rows = []
    for s in order:
        rows.append([s, fmt(med("mjpeg", s, "cpu_pct")), fr(ratio("mjpeg", s, "cpu_pct")),
                     fmt(med("mjpeg", s, "peak_rss_mib")), fr(ratio("mjpeg", s, "peak_rss_mib")),
                     fmt(med("mjpeg", s, "received_mb"), 0), fmt(med("mjpeg", s, "expected_mb"), 0),
                     fmt(med("mjpeg", s, "readers_ok"), 0),
                     fmt(med("mjpeg", s, "upstream_established_after"), 0),
                     status("mjpeg", s)])
    table(f"4. {args.readers} MJPEG readers (/video.mjpg?size={args.size}&fps={args.fps}, "
          f"{args.size * args.fps * 8 / 1e6:.1f} Mbit/s each) for {args.mjpeg_duration} s",
          ["proxy", "proxy CPU %", "xngx", "peak RSS MiB", "xngx", "received MB", "expected MB", "readers ok",
           "upstream conns open", "status"], rows)

    # Is the load side's CPU going to the client, as intended, or to the upstream?
    shares = [(rec["upstream_cpu_pct"], rec["loadgen_cpu_pct"], rec["cpu1_busy_pct"]) for rec in recs
              if rec["test"] in ("h1", "h2") and "upstream_cpu_pct" in rec]
    upstream_bound = False
    if shares:
        up, gen, busy = (statistics.median(x) for x in zip(*shares))
        print(f"\nLoad side (CPU 1) in the HTTP/1.1 and HTTP/2 runs, median: {busy:.0f} % busy, of which the upstream nginx "
              f"{up:.0f} %, wrk/h2load {gen:.0f} %.")
        if up > gen:
            upstream_bound = True
            notes.append(f"the upstream took more of CPU 1 than wrk/h2load ({up:.0f} % vs {gen:.0f} %): "
                         "the upstream, not the client, caps req/s, and its scheduling on CPU 1 shows "
                         "in p99; compare proxies by CPU us/request")

    # Targets for camgate
    print("\ncamgate targets:")
    c = "camgate"

    def target(ok_value, label, detail, test):
        st = status(test, c)
        if ok_value is None or st != "ok":
            print(f"MISS  {label}: not measured or invalid ({st})")
        else:
            caveat = ""
            if "p99" in label and upstream_bound:
                caveat = "  [p99 mostly the upstream's scheduling on CPU 1 here: see the note below]"
            print(f"{'PASS' if ok_value else 'MISS'}  {label}: {detail}{caveat}")

    r = ratio("h1", c, "us_per_req")
    target(r is not None and r <= 1.0, "HTTP/1.1 CPU/request <= nginx's",
           f"{fmt(med('h1', c, 'us_per_req'))} vs {fmt(med('h1', 'nginx', 'us_per_req'))} us ({fr(r)})", "h1")
    r = ratio("h2", c, "us_per_req", ref="haproxy")
    target(r is not None and r <= 1.0, "HTTP/2 CPU/request <= HAProxy's",
           f"{fmt(med('h2', c, 'us_per_req'))} vs {fmt(med('h2', 'haproxy', 'us_per_req'))} us ({fr(r)})", "h2")
    for test, name in (("h1", "HTTP/1.1"), ("h2", "HTTP/2")):
        r = ratio(test, c, "p99_ms")
        target(r is not None and r <= 1.0, f"{name} p99 <= nginx's",
               f"{fmt(med(test, c, 'p99_ms'), 2)} vs {fmt(med(test, 'nginx', 'p99_ms'), 2)} ms ({fr(r)})", test)
    v = med("idle", c, "rss_mib")
    target(v is not None and v <= 10, "idle RSS <= 10 MiB", f"{fmt(v)} MiB", "idle")
    v = med("conns", c, "kib_per_conn")
    target(v is not None and v <= 16, "<= 16 KiB per idle TLS connection", f"{fmt(v)} KiB", "conns")

    # Anomalies: anything that makes a number suspect
    for rec in recs:
        where = f"{rec['server']} round {rec['round']} {rec['test']}"
        if not rec.get("ok", True):
            notes.append(f"{where}: INVALID: " + (rec.get("error") or rec.get("first_error") or
                         ", ".join(f"{k}={rec.get(k)}" for k in ("non2xx", "socket_errors_text", "failed",
                                   "errored", "timeout", "protocol", "held", "readers_ok", "received_mb",
                                   "server_alive") if k in rec)))
        if rec.get("cpu0_other_pct", 0) > 10:
            notes.append(f"{where}: CPU 0 was {rec['cpu0_other_pct']:.0f} % busy with something other than the "
                         "proxy (other load on this host?)")
        limit = {"h1": 64, "h2": 320, "mjpeg": args.readers}.get(rec["test"])
        if limit and rec["test"] != "mjpeg" and rec.get("upstream_new", 0) > 2 * limit:
            notes.append(f"{where}: {rec['upstream_new']} new upstream connections for {limit} concurrent "
                         "requests: upstream keep-alive pool NOT reused")
        elif limit and rec["test"] != "mjpeg" and rec.get("upstream_new", 0) > 1.2 * limit:
            notes.append(f"{where}: {rec['upstream_new']} new upstream connections for {limit} concurrent "
                         "requests (pool reused, but more connections opened than requests in flight)")
    print("\nAnomalies:" if notes else "\nAnomalies: none")
    for note in notes:
        print(f"- {note}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    for name, kind in (("--out", str), ("--round", int), ("--server", str), ("--pid", int), ("--port", int),
                       ("--upstream-port", int), ("--upstream-pid", int), ("--cafile", str), ("--tmp", str)):
        common.add_argument(name, type=kind)
    for name in ("wait-port", "idle", "check"):
        sub.add_parser(name, parents=[common])
    s = sub.add_parser("conns", parents=[common])
    s.add_argument("--n", type=int, default=1000)
    for name in ("h1", "h2"):
        sub.add_parser(name, parents=[common]).add_argument("--duration", type=int, default=10)
    s = sub.add_parser("mjpeg", parents=[common])
    for name, default in (("--readers", 200), ("--duration", 15), ("--size", 25000), ("--fps", 10)):
        s.add_argument(name, type=int, default=default)
    s = sub.add_parser("report")
    s.add_argument("file")
    s.add_argument("--servers", required=True)
    for name, default in (("--h1-duration", 10), ("--h2-duration", 10), ("--mjpeg-duration", 15),
                          ("--conns", 1000), ("--readers", 200), ("--size", 25000), ("--fps", 10)):
        s.add_argument(name, type=int, default=default)
    args = p.parse_args()
    {"wait-port": cmd_wait_port, "idle": cmd_idle, "check": cmd_check, "conns": cmd_conns, "h1": cmd_h1,
     "h2": cmd_h2, "mjpeg": cmd_mjpeg, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
