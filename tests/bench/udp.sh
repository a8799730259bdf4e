#!/usr/bin/env bash
# UDP forwarding benchmark: camgate's userspace relay (a `[[forward]]` with mode = "userspace") against a
# socat relay and kernel DNAT (nftables, the ceiling), in the same run, with 200- and 1200-byte datagrams.
#
# Topology, the same for all three (namespaces of our own, deleted at exit; no other addresses touched):
#
#   cgudp-c 10.79.2.2  --veth--  10.79.2.1 cgudp-g 10.79.1.1  --veth--  10.79.1.2 cgudp-d
#   udp-load send                the relay under test                  udp-load echo
#
# The client sends to 10.79.2.1:40000; the relay in the gateway namespace passes it on to the echo server at
# 10.79.1.2:40000 (cgudp-d routes back via the gateway, so kernel DNAT needs no masquerade) and back:
#   userspace  camgate run (dev mode: it changes nothing on the system), one tokio worker;
#   socat      socat -T 60 UDP4-LISTEN:40000,bind=10.79.2.1,fork,reuseaddr UDP4:10.79.1.2:40000 (fork = a
#              child per client address; each measurement is one flow, so one child relays all of it);
#   kernel     an nft table of ours in the gateway namespace: prerouting DNAT to 10.79.1.2 (conntrack),
#              no process at all. Its forwarding runs in softirq on the sending CPU, i.e. mostly CPU 1.
#
# Method (/work/shared/notes/bench-method.md): the relay on CPU 0, load generator and echo server on CPU 1;
# rounds interleave the relays (userspace socat kernel direct, userspace ...), each relay freshly
# started per round; ratios are computed within a round, then the median over rounds is reported.
# Per relay, round and size, `tests/src/bin/udp-load.rs` runs two measurements from one client socket:
#   throughput  a window of 128 datagrams in flight (each batch of echoes sends as many new ones) for 5 s:
#               echoes/s, RTT p50/p99 (with a full window RTT ~ window / rate: queueing, not the relay's own
#               delay). udp-load and camgate both move up to 32 datagrams per system call, so a window of 32
#               tends to travel as one convoy, each hop waiting for the last; 128 keeps every stage busy;
#   latency     a window of 1 (ping-pong) for 2 s: the unloaded RTT; "added" = minus kernel DNAT's, same round.
#               Most of it is not the relay: on this VM each wake-up of a task on the other CPU costs ~20 us,
#               and a relay on CPU 0 needs four per round trip (kernel DNAT, all on CPU 1, none). So each round
#               also measures "direct": no relay, the client straight to a second echo server on CPU 0 (routed
#               by the gateway; 10.79.1.2:40001), i.e. one cross-CPU round trip; the report subtracts twice that
#               ("p50 over floor") to estimate the relay's own share.
# Each starts with 0.5 s of unmeasured warm-up (camgate opens its flow, socat forks its child). An echo
# missing for 200 ms counts as lost and its slot is refilled. Relay CPU: utime+stime of the relay's process
# group (/proc) per echoed datagram, i.e. per two datagrams relayed; softirq work done on its behalf in other
# contexts is not in it, and kernel DNAT has none to show.
# Checks: camgate's /api/status counters must cover every echo the client counted; before the kernel runs,
# nothing may listen on 10.79.2.1:40000 in the gateway (so every echo went through DNAT). CPU0/CPU1 busy %
# per run show which side limits; "other load" notes flag runs where other processes used CPU 0.
#
# Reading the figures (2-core VM): the client side (client, echo server and, since a veth delivers in the
# sender's context, the stack work of their sends) saturates CPU 1 at about 220k echoes/s, which is all
# kernel DNAT reaches, about 2.3x socat. So an echoes/s ratio against socat cannot show more than that,
# whatever the relay does; camgate's relay, batched, runs CPU 0 at ~80 % there. "relay CPU us/echo"
# (bench-method.md: efficiency) is the fairer figure.
#
# Usage (root):  tests/bench/udp.sh            3 rounds, about 3 minutes
#                QUICK=1 tests/bench/udp.sh    1 round of 2 s + 1 s runs (smoke test)
# Environment:   ROUNDS=N DURATION=S LAT_DURATION=S WINDOW=N; RESULTS=FILE (raw JSON lines, default
#                /tmp/camgate-udp-bench.jsonl); CAMGATE_BIN / UDP_LOAD_BIN (use these binaries instead of
#                building them).
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
[ "$(id -u)" = 0 ] || { echo "udp.sh: run as root (namespaces, nftables, taskset)" >&2; exit 1; }
for tool in socat nft ip ss taskset setsid curl python3; do
  command -v "$tool" >/dev/null || { echo "udp.sh: $tool is missing" >&2; exit 1; }
done

if [ -n "${QUICK:-}" ]; then
  rounds=${ROUNDS:-1} run_s=${DURATION:-2} lat_s=${LAT_DURATION:-1}
else
  rounds=${ROUNDS:-3} run_s=${DURATION:-5} lat_s=${LAT_DURATION:-2}
fi
window=${WINDOW:-128}
sizes="200 1200"
relays="userspace socat kernel direct"   # round order; direct: the window-1 baseline, see start_direct
results=${RESULTS:-/tmp/camgate-udp-bench.jsonl}

if [ -z "${CAMGATE_BIN:-}" ]; then
  cargo build --release -p camgate >&2
  CAMGATE_BIN=$PWD/target/release/camgate
fi
if [ -z "${UDP_LOAD_BIN:-}" ]; then
  cargo build --release -p camgate-tests --bin udp-load >&2
  UDP_LOAD_BIN=$PWD/target/release/udp-load
fi

ns_c=cgudp-c ns_g=cgudp-g ns_d=cgudp-d
client=10.79.2.2 listen=10.79.2.1 inner=10.79.1.1 target=10.79.1.2 port=40000 direct_port=40001
admin=127.0.0.1:18080            # camgate's, inside the gateway namespace
hz=$(getconf CLK_TCK)

for ns in $ns_c $ns_g $ns_d; do
  if ip netns list | grep -q "^$ns\( \|$\)"; then
    echo "udp.sh: namespace $ns exists: another run, or a killed one (ip netns del $ns)" >&2
    exit 1
  fi
done

work=$(mktemp -d /tmp/cgbench-udp.XXXXXX)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"
made_ns=()
teardown() {
  cleanup                          # lib.sh: our process groups, then $work
  local ns
  for ns in "${made_ns[@]}"; do
    ip netns del "$ns" 2>/dev/null || true   # takes its veths and nft tables with it
  done
}
trap teardown EXIT
: >"$results"

# --- Topology --------------------------------------------------------------------------------------------

for ns in $ns_c $ns_g $ns_d; do
  ip netns add "$ns"
  made_ns+=("$ns")
  ip -n "$ns" link set lo up
done
ip -n $ns_g link add to-c type veth peer name eth0 netns $ns_c
ip -n $ns_g link add to-d type veth peer name eth0 netns $ns_d
ip -n $ns_g addr add $listen/24 dev to-c
ip -n $ns_g addr add $inner/24 dev to-d
ip -n $ns_c addr add $client/24 dev eth0
ip -n $ns_d addr add $target/24 dev eth0
ip -n $ns_g link set to-c up
ip -n $ns_g link set to-d up
ip -n $ns_c link set eth0 up
ip -n $ns_d link set eth0 up
ip -n $ns_d route add default via $inner
ip -n $ns_c route add default via $listen   # only the direct baseline needs it
ip netns exec $ns_g sysctl -qw net.ipv4.ip_forward=1

# --- Helpers ---------------------------------------------------------------------------------------------

# Whether a UDP socket is bound to port $2 (default $port) in namespace $1.
udp_bound() { ip netns exec "$1" ss -Hlun "sport = :${2:-$port}" | grep -q .; }

# Waits up to 10 s until a UDP socket is bound to port $2 in namespace $1; else shows logs $3... and fails.
wait_udp() {
  local ns=$1 p=$2
  shift 2
  for _ in $(seq 200); do
    udp_bound "$ns" "$p" && return 0
    sleep 0.05
  done
  echo "udp.sh: nothing bound to UDP port $p in $ns:" >&2
  cat "$@" >&2
  exit 1
}

# CPU ticks of process group $1: utime+stime of its live processes plus cutime+cstime, where the time of
# reaped children ends up (socat's child exits as soon as the client is gone: see stop_socat).
group_ticks() {
  awk -v pg="$1" '
    { sub(/^[0-9]+ \(.*\) /, "") }          # drop "pid (comm) ": $1 is stat field 3 (state)
    $3 == pg { t += $12 + $13 + $14 + $15 }
    END { print t + 0 }' /proc/[0-9]*/stat 2>/dev/null
}

# /proc/stat fields user..steal of cpu0, then of cpu1 (ticks).
cpu_stat() { awk '/^cpu[01] / { for (i = 2; i <= 9; i++) printf "%s ", $i }' /proc/stat; }

# JSON fields from two cpu_stat samples and the relay's ticks in between: each CPU's busy %, and CPU 0's
# time in processes other than the relay (+ steal) in %: other load on the shared host.
cpu_usage() {
  awk -v b="$1" -v a="$2" -v relay="$3" 'BEGIN {
    split(b, x); split(a, y)
    for (c = 0; c < 2; c++) {
      total = idle = procs = 0
      for (i = 1; i <= 8; i++) {
        d = y[c * 8 + i] - x[c * 8 + i]
        total += d
        if (i == 4 || i == 5) idle += d          # idle, iowait
        if (i <= 3 || i == 8) procs += d         # user, nice, system; steal
      }
      total = total > 0 ? total : 1
      busy[c] = 100 * (total - idle) / total
      if (c == 0) other = 100 * (procs - relay) / total
    }
    printf "\"cpu0_busy\":%.0f,\"cpu1_busy\":%.0f,\"cpu0_other\":%.0f", busy[0], busy[1], other < 0 ? 0 : other
  }'
}

status_json() { ip netns exec $ns_g curl -sf "http://$admin/api/status"; }

# --- The relays: start_X starts it on CPU 0 and waits until it listens; stop_X ends it ----------------------

start_userspace() {
  local d=$work/camgate-$round
  mkdir -p "$d/state"
  cat >"$d/camgate.toml" <<EOF
[daemon]
mode = "dev"
state_dir = "$d/state"
log = "warn"
[admin]
listen = ["$admin"]
[proxy]
https_listen = ["127.0.0.1:18443"]
http_listen = ["127.0.0.1:18000"]
[[site]]
name = "dvr"
hosts = ["dvr.test"]
upstream = "http://$target:8090"
[[forward]]
name = "bench"
protocol = "udp"
ports = $port
listen_address = "$listen"
target = "$target"
mode = "userspace"
EOF
  # taskset -c 0 also sizes camgate's tokio runtime to one worker.
  spawn 0 "$d/camgate.log" ip netns exec $ns_g "$CAMGATE_BIN" run --config "$d/camgate.toml"
  wait_udp $ns_g $port "$d/camgate.log"
  for _ in $(seq 200); do
    status_json >/dev/null && return 0
    sleep 0.05
  done
  echo "udp.sh: camgate's admin API does not answer" >&2
  cat "$d/camgate.log" >&2
  exit 1
}
stop_userspace() {
  # Every echo the client counted passed camgate twice; its counters must say so.
  local status echoes
  status=$(status_json) || { echo "udp.sh: camgate's admin API stopped answering" >&2; exit 1; }
  echoes=$(awk -v r="$round" -F'"received":' 'index($0, "\"round\":" r ",\"relay\":\"userspace\"") {
             split($2, a, ","); n += a[1] } END { print n + 0 }' "$results")
  STATUS=$status ECHOES=$echoes python3 - <<'EOF'
import json, os
forwards = json.loads(os.environ["STATUS"])["forwarding"]["forwards"]
f = next(f for f in forwards if f["name"] == "bench")
up, down, echoes = f["to_target"]["packets"], f["to_client"]["packets"], int(os.environ["ECHOES"])
ok = min(up, down) >= echoes
print(f"  camgate /api/status: {up} datagrams to the target, {down} back; the client counted {echoes} echoes "
      f"in its measured periods: {'ok' if ok else 'MISMATCH: these echoes did not all pass camgate'}")
EOF
  stop_server
}

start_socat() {
  spawn 0 "$work/socat-$round.log" ip netns exec $ns_g \
    socat -T 60 "UDP4-LISTEN:$port,bind=$listen,fork,reuseaddr" "UDP4:$target:$port"
  wait_udp $ns_g $port "$work/socat-$round.log"
}
stop_socat() {
  # A child does not wait for -T 60 once its client is gone: the echoes still in flight draw ICMP port
  # unreachable, and it exits at the resulting ECONNREFUSED (so after window-128 runs, mostly not after
  # window-1 runs).
  echo "  socat processes left: $(($(ps -o pid= -g "$server_pid" | wc -l))) (the listener + live children)"
  stop_server
}

start_kernel() {
  if udp_bound $ns_g; then
    echo "udp.sh: something still listens on UDP port $port in $ns_g; kernel DNAT would not be measured" >&2
    ip netns exec $ns_g ss -lunp >&2
    exit 1
  fi
  ip netns exec $ns_g nft -f - <<EOF
table ip benchnat {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr $listen udp dport $port dnat to $target
  }
}
EOF
  server_pid=
}
stop_kernel() { ip netns exec $ns_g nft delete table ip benchnat; }

# Not a relay: the client straight to a second echo server, on CPU 0, routed by the gateway. A relay on
# CPU 0 costs two such cross-CPU round trips (four wake-ups) at window 1 before doing any work; on this VM
# that is most of its "added" latency.
start_direct() { dest=$target:$direct_port server_pid=$direct_echo_pid; }   # its CPU, not "other" load
stop_direct() { :; }

# --- Measurements -------------------------------------------------------------------------------------------

# One udp-load run through the relay: size $1, window $2, seconds $3; appends a JSON line to $results.
measure() {
  local size=$1 win=$2 secs=$3 before=0 after=0 stat_before stat_after out usage
  [ -z "$server_pid" ] || before=$(group_ticks "$server_pid")
  stat_before=$(cpu_stat)
  out=$(ip netns exec $ns_c taskset -c 1 "$UDP_LOAD_BIN" send --target "$dest" --size "$size" \
    --window "$win" --duration "$secs" --warmup 0.5) || { echo "udp.sh: udp-load failed" >&2; exit 1; }
  stat_after=$(cpu_stat)
  [ -z "$server_pid" ] || after=$(group_ticks "$server_pid")
  usage=$(cpu_usage "$stat_before" "$stat_after" $((after - before)))
  printf '{"round":%s,"relay":"%s","size":%s,"window":%s,"relay_cpu_s":%s,%s,%s\n' "$round" "$relay" "$size" \
    "$win" "$(awk -v t=$((after - before)) -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }')" "$usage" "${out#\{}" \
    >>"$results"
  printf '  %-9s %5s B  window %-3s %s,%s}\n' "$relay" "$size" "$win" "${out%\}}" "$usage" >&2
}

before=$(cpu_stat)
sleep 1
idle_check=$(cpu_usage "$before" "$(cpu_stat)" 0)
if awk -v u="$idle_check" 'BEGIN { split(u, f, /[:,]/); exit !(f[2] > 10 || f[4] > 10) }'; then
  echo "udp.sh: the host is busy before we start ($idle_check): expect noisy figures" >&2
fi

spawn 1 "$work/echo.log" ip netns exec $ns_d "$UDP_LOAD_BIN" echo --listen "$target:$port"
wait_udp $ns_d $port "$work/echo.log"
spawn 0 "$work/echo-direct.log" ip netns exec $ns_d "$UDP_LOAD_BIN" echo --listen "$target:$direct_port"
wait_udp $ns_d $direct_port "$work/echo-direct.log"
direct_echo_pid=$server_pid
echo "udp.sh: $rounds round(s) of: $relays; sizes $sizes B; ${run_s} s at window $window + ${lat_s} s at" \
  "window 1 each; raw results in $results" >&2

for round in $(seq "$rounds"); do
  for relay in $relays; do
    echo "== round $round/$rounds: $relay" >&2
    dest=$listen:$port
    "start_$relay"
    for size in $sizes; do
      [ $relay = direct ] || measure "$size" "$window" "$run_s"
      measure "$size" 1 "$lat_s"
    done
    "stop_$relay" >&2
  done
done

# --- Report -------------------------------------------------------------------------------------------------

WINDOW=$window python3 - "$results" <<'EOF'
import json, math, os, statistics, sys

rows = [json.loads(line) for line in open(sys.argv[1])]
window = int(os.environ["WINDOW"])
relays, sizes = ["userspace", "socat", "kernel"], sorted({r["size"] for r in rows})
rounds = sorted({r["round"] for r in rows})
by = {(r["round"], r["relay"], r["size"], r["window"]): r for r in rows}
for r in rows:  # relay CPU per echo (= per 2 datagrams relayed), over the whole run, warm-up included
    r["cpu_us"] = r["relay_cpu_s"] * 1e6 / r["all_received"] if r["all_received"] else math.nan


def med(values):
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def over_rounds(relay, size, win, key):
    return med([by[k][key] for k in ((n, relay, size, win) for n in rounds) if k in by])


def per_round(size, f):
    """Median over rounds of f(get), where get(relay, window, key) reads that round's figure."""
    out = []
    for n in rounds:
        try:
            out.append(f(lambda relay, win=window, key="pps": by[(n, relay, size, win)][key]))
        except (KeyError, ZeroDivisionError):
            pass
    return med(out)


print(f"\nUDP relays: medians of {len(rounds)} interleaved round(s); one flow; relay on CPU 0, client + echo "
      "server on CPU 1")
print(f"\nThroughput, window {window} (RTT here is mostly queueing: ~ window / rate)")
print(f"{'size':>5} {'relay':<10} {'echoes/s':>10} {'p50 us':>8} {'p99 us':>8} {'relay CPU':>10}"
      f" {'CPU0 busy':>10} {'CPU1 busy':>10}")
print(f"{'':>5} {'':<10} {'':>10} {'':>8} {'':>8} {'us/echo':>10} {'%':>10} {'%':>10}")
for size in sizes:
    for relay in relays:
        g = lambda key: over_rounds(relay, size, window, key)
        cpu = "-" if relay == "kernel" else f"{g('cpu_us'):.2f}"
        print(f"{size:>5} {relay:<10} {g('pps'):>10,.0f} {g('p50_us'):>8.1f} {g('p99_us'):>8.1f} {cpu:>10}"
              f" {g('cpu0_busy'):>10.0f} {g('cpu1_busy'):>10.0f}")

print("\nLatency, window 1 (ping-pong). added = minus kernel DNAT's, same round. Wake-up floor = kernel + 2 x\n"
      "(direct - kernel): what any relay on CPU 0 costs before doing work (4 cross-CPU wake-ups); direct = no\n"
      "relay, client to an echo server on CPU 0 (one cross-CPU round trip)")
print(f"{'size':>5} {'relay':<10} {'p50 us':>8} {'p99 us':>8} {'added p50':>10} {'added p99':>10}"
      f" {'p50 over floor':>15}")
for size in sizes:
    for relay in relays + ["direct"]:
        g = lambda key: over_rounds(relay, size, 1, key)
        added = ["-", "-", "-"]
        if relay in ("userspace", "socat"):
            added = [f"{per_round(size, lambda get, k=k: get(relay, 1, k) - get('kernel', 1, k)):.1f}"
                     for k in ("p50_us", "p99_us")]
            floor = per_round(size, lambda get: get(relay, 1, "p50_us") - 2 * get("direct", 1, "p50_us")
                              + get("kernel", 1, "p50_us"))
            added.append(f"{floor:.1f}")
        print(f"{size:>5} {relay:<10} {g('p50_us'):>8.1f} {g('p99_us'):>8.1f} {added[0]:>10} {added[1]:>10}"
              f" {added[2]:>15}")

print("\nRatios (per round, then the median)")
print(f"{'size':>5} {'userspace/socat':>16} {'userspace/kernel':>17} {'socat/userspace':>16}")
print(f"{'':>5} {'echoes/s':>16} {'echoes/s':>17} {'CPU per echo':>16}")
verdicts = []
for size in sizes:
    vs_socat = per_round(size, lambda get: get("userspace") / get("socat"))
    vs_kernel = per_round(size, lambda get: get("userspace") / get("kernel"))
    cpu = per_round(size, lambda get: get("socat", key="cpu_us") / get("userspace", key="cpu_us"))
    print(f"{size:>5} {vs_socat:>15.2f}x {vs_kernel:>16.2f}x {cpu:>15.2f}x")
    ceiling = per_round(size, lambda get: get("kernel") / get("socat"))
    verdicts.append(f"{'PASS' if vs_socat >= 3 else 'MISS'} {size} B: userspace relays {vs_socat:.2f}x socat's "
                    f"echoes/s (target >= 3x; kernel DNAT, the ceiling of this setup, does {ceiling:.2f}x)")
print()
print("\n".join(verdicts))
for r in rows:
    problems = [f"{r[k]} {k}" for k in ("lost", "late", "errors") if r[k]]
    if not r["received"]:
        problems.append("no echoes")
    if problems:
        print(f"note: round {r['round']} {r['relay']} {r['size']} B window {r['window']}: {', '.join(problems)}")
busy = [r for r in rows if r["cpu0_other"] > 10]
if busy:
    print(f"note: the host was busy: other processes used >10% of CPU 0 in {len(busy)} of {len(rows)} runs "
          f"(up to {max(r['cpu0_other'] for r in busy)}%: " + ", ".join(
              f"{r['round']}/{r['relay']}/{r['size']}/{r['window']}" for r in busy[:8])
          + (", ..." if len(busy) > 8 else "") + "); figures from those runs are unreliable")
EOF
