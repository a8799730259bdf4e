#!/usr/bin/env bash
# Startup benchmark: time from exec to READY=1 (sd_notify) and idle RSS of a
# release camgate running the shipped example config (dev mode, so it needs
# no system changes). Runs inside a scratch network namespace, so the
# example's fixed admin port is free and all traffic stays there.
# Targets: READY <= 50 ms, idle RSS <= 10 MB.
#
# Usage (root): tests/bench/startup.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-20}
[ "$(id -u)" = 0 ] || { echo "startup.sh: run as root (network namespace)" >&2; exit 1; }

cargo build --release --locked -p camgate >&2
binary=$PWD/target/release/camgate
config=$PWD/rootfs/etc/camgate/camgate.toml
ns=cgbench-$$
work=$(mktemp -d)
trap 'ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"' EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up

ip netns exec "$ns" python3 - "$binary" "$config" "$work" "$runs" <<'PY'
import os, signal, socket, statistics, subprocess, sys, time

binary, config, work, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sock_path = os.path.join(work, "notify.sock")
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(sock_path)
sock.settimeout(10)

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

ready_ms, rss = [], []
for i in range(runs):
    cwd = os.path.join(work, f"run{i}")
    os.mkdir(cwd)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path)
    env.pop("RUST_LOG", None)
    start = time.perf_counter()
    proc = subprocess.Popen([binary, "run", "--dev", "--config", config], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        msg = sock.recv(4096).decode()
        if "READY=1" in msg.splitlines():
            break
    ready_ms.append((time.perf_counter() - start) * 1000)
    time.sleep(1.0)  # idle
    rss.append(rss_kib(proc.pid))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)

def row(name, values, unit, target):
    med = statistics.median(values)
    print(f"{name:<14} median {med:8.2f} {unit}  min {min(values):8.2f}  max {max(values):8.2f}"
          f"  target <= {target} {unit}  {'OK' if med <= target else 'MISSED'}  (ratio {med / target:.2f})")

print(f"camgate startup, {runs} runs, example config (dev mode), release build")
row("exec->READY", ready_ms, "ms", 50)
row("idle RSS", [k / 1024 for k in rss], "MiB", 10)
PY
