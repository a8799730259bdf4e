#!/usr/bin/env bash
# Restream benchmark: one H.264 camera (4 Mbit/s, 1080p25 by default) re-served to 50 RTSP readers by three
# relays in the same run: camgate, one ffmpeg per reader, and a shared gst-rtsp-server relay.
#
# Topology (namespaces of our own, deleted at exit):
#
#   cgst-cam 10.77.0.11  --veth--  10.77.0.1 cam0  cgst-gw  lan0 192.168.77.2  --veth--  192.168.77.50 cgst-lan
#   the camera (:554/stream1)       the relay under test                       the readers
#   and the probe
#
# The camera: tests/peers/rtsp_camera.py's launch line (x264enc ultrafast zerolatency, --bitrate, --gop) run by
# tests/bench/rtsp_relay_gst.py with one SHARED pipeline, i.e. one encoder for all sessions as a real camera
# has (rtsp_camera.py encodes per session: 50 1080p encoders cannot run on 2 cores, and only one encoder's
# output lets frames be matched byte for byte), and scrolling SMPTE bars instead of rtsp_camera.py's
# bouncing ball, which x264 squeezes to ~0.15 Mbit/s whatever the bitrate asked; and 8 MiB socket send buffers,
# as gst-rtsp-server 1.22 aborts when a lagging session's backlog goes its buggy way. No camera login. On this
# 2-core VM it encodes 1080p25 at 4 Mbit/s with ~22 % of CPU 1 (26 % serving ffmpeg's 51 sessions), at 25.0
# fps in every window: the figure is checked at the start and reported per window.
# The probe: one reader on the camera itself (in the camera's namespace: camgate's firewall in the gateway
# would drop a connection it did not see open), for the whole run: the reference for latency, the camera's
# frame rate and bitrate in each window, and the session that keeps the camera's shared pipeline up.
#
# The relays, each in the gateway namespace pinned to CPU 0 (camera, probe and readers on CPU 1):
#   camgate  `camgate run` in appliance mode as tests/tests/streams.rs runs it: [network] uplink lan0,
#            [cameras] on cam0, a [[camera]] (MAC-pinned) with streams = { main = "/stream1" }; readers use a
#            `streams` token (Basic, token as the password) on rtsp://192.168.77.2:8554/cam/main. taskset -c 0
#            also sizes its tokio runtime to one worker. dnsmasq/chronyd, which it supervises, are not counted.
#   ffmpeg   one `ffmpeg -rtsp_transport tcp -i rtsp://camera/stream1 -map 0:v -c copy -f rtsp
#            -rtsp_transport tcp rtsp://READER/...` per reader (latency flags -fflags nobuffer -flags low_delay).
#            ffmpeg has no RTSP server (its RTSP muxer only publishes; `-rtsp_flags listen` is the demuxer's, for
#            receiving), so each ffmpeg PUSHES its copy to its reader (ANNOUNCE, SETUP mode=record, RECORD),
#            and the readers accept it: the same RTP over the same TCP interleaving, the same work in the relay
#            (depacketize, re-packetize, write) as a server would do, and the same reader code after the
#            handshake. This is the per-reader "ffmpeg -c copy relay": 50 camera sessions (the camera
#            serves them all from its one encoder), 50 processes.
#   gst      rtsp_relay_gst.py relay: gst-rtsp-server with ONE shared media `( rtspsrc location=camera
#            protocols=tcp latency=0 buffer-mode=none ! rtph264depay ! rtph264pay name=pay0 )` for all readers
#            (buffer-mode=none: rtspsrc's default slave mode added ~20 ms).
# The readers: tests/bench/rtsp_reader.py, 50 readers in one process (epoll): DESCRIBE/SETUP/PLAY over TCP
# interleaved (or, for ffmpeg, accepting the push), counting RTP packets and bytes and timing each frame with
# the kernel's receive timestamps (SO_TIMESTAMPNS); 8 MiB receive buffers, so a reader late to read (it shares
# CPU 1) never pushes back on the relay and shows up as the relay's latency.
#
# Per relay and round: idle (camgate, gst: started, camera not pulled), 1 reader (4 s warm-up, 8 s window), 50
# readers (6 s warm-up after all play, 20 s window). Measured in each window:
# - CPU: time on CPU of the relay's processes (camgate: its process; ffmpeg: all 50; gst: its process) over the
#   window, in % of one core (schedstat of their threads, in ns, sampled every second so threads that exit
#   still count); CPU 0 / CPU 1 busy % (all processes + softirq; tick-sampled) beside it. On veth a send runs
#   the receiving socket's TCP input in the sender's system call, so each relay's CPU includes its readers'
#   receive work (and the camera's CPU its pulls': 50 of them for ffmpeg), as it would not with real NICs;
# - memory: VmRSS summed over those processes, the peak of samples every second in the window (PSS too: 50
#   ffmpegs share their libraries); per reader = (RSS with 50 - RSS with 1) / 49, per stream (camgate) = RSS
#   with 1 reader - idle RSS (it holds the GOP cache: a 2 s GOP at 4 Mbit/s is ~1 MB);
# - delivery: per reader Mbit/s (RTP, headers included) and frames/s; every reader must get ~the camera's
#   bitrate (>= 90 % of what the probe got in the same window), else that relay failed;
# - added latency: per frame, the reader's arrival minus the probe's, matched by the first 256 bytes of the
#   frame's first slice NAL (each relay re-packetizes; NALs pass unchanged). "complete" = the frame's marker
#   packet (when a decoder has the frame), "first" = its first packet. Both sides use kernel receive
#   timestamps on one clock; the camera sends each frame to all its sessions at once, so the figure is the relay
#   plus two veth hops. ffmpeg's H.264 parser emits a frame when the next one starts: one or two frame
#   intervals (40-80 ms at 25 fps) are built into its figure; and with ffmpeg the camera serves 51 sessions. "key frames" and
#   "others" split it: a key frame (several times a P frame) is written to 50 readers in turn.
# Rounds interleave the relays (camgate ffmpeg gst, camgate ...), each started fresh; ratios are computed
# within a round, then the median over rounds (/work/shared/notes/bench-method.md).
#
# Reading the figures (2-core VM, quiet host, 3 rounds): camgate ~2.3 % of a core for 50 readers (ffmpeg x50
# ~71 %, gst ~4.9 %), added latency p50 ~0.45 ms / p99 ~1 ms (reader 49 gets a frame ~0.5 ms after reader 0:
# one write per reader in turn). Other load on the host shows at once: a relay woken on a busy CPU 0 waits up
# to a 4 ms tick (HZ=250) for 1-2 % of frames, i.e. p99 ~4-5 ms; the notes under the tables say when.
#
# Usage (root):  tests/bench/streams.sh            3 rounds, about 8 minutes
#                QUICK=1 tests/bench/streams.sh    1 round with short windows (smoke test)
# Environment:   ROUNDS=N; READERS=N (50); RELAYS="camgate ffmpeg gst" (a subset; ratios need camgate);
#                WIDTH HEIGHT FPS BITRATE (kbit/s) GOP: the camera (1920 1080 25 4000 50);
#                RESULTS=FILE (raw JSON lines, default /tmp/camgate-streams-bench.jsonl; re-print the tables with
#                  /usr/bin/python3 tests/bench/rtsp_reader.py report FILE);
#                FRAMES=DIR: keep every phase's per-reader, per-frame records (readers-RELAY-ROUND-N.json)
#                  and the probe's (probe.txt) there;
#                PERF=FILE: perf record (DWARF call graphs) of camgate in its first 50-reader window, for
#                  perf report -i FILE --children;
#                CAMGATE_BIN (use this binary instead of building it).
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
[ "$(id -u)" = 0 ] || { echo "streams.sh: run as root (namespaces, nftables, taskset)" >&2; exit 1; }
py=/usr/bin/python3   # Debian's gi is the system Python's

# --- Packages and the build (outside the namespaces) --------------------------------------------------------

install_missing() {
  local need=() pair
  for pair in ffmpeg:ffmpeg ip:iproute2 ss:iproute2 nft:nftables dnsmasq:dnsmasq-base chronyd:chrony \
              curl:curl taskset:util-linux setsid:util-linux ps:procps gst-inspect-1.0:gstreamer1.0-tools; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  [ -x $py ] || need+=(python3)
  if ! $py -c 'import gi; gi.require_version("GstRtspServer", "1.0")' 2>/dev/null; then
    need+=(python3-gi gir1.2-gst-rtsp-server-1.0)
  fi
  if command -v gst-inspect-1.0 >/dev/null; then
    gst-inspect-1.0 x264enc >/dev/null 2>&1 || need+=(gstreamer1.0-plugins-ugly)
    gst-inspect-1.0 rtspsrc >/dev/null 2>&1 || need+=(gstreamer1.0-plugins-good)
    gst-inspect-1.0 videotestsrc >/dev/null 2>&1 || need+=(gstreamer1.0-plugins-base)
  else
    need+=(gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly)
  fi
  ((${#need[@]})) || return 0
  echo "streams.sh: installing ${need[*]}" >&2
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
}
install_missing
if [ -z "${CAMGATE_BIN:-}" ]; then
  cargo build --release -p camgate >&2
  CAMGATE_BIN=$PWD/target/release/camgate
fi
taskset -pc 1 $$ >/dev/null   # this script's own sampling stays off the relay's CPU (spawn pins each process)

if [ -n "${QUICK:-}" ]; then
  rounds=${ROUNDS:-1} warm1=3 win1=4 warm=4 win=8
else
  rounds=${ROUNDS:-3} warm1=4 win1=8 warm=6 win=20
fi
readers=${READERS:-50}
relays=${RELAYS:-camgate ffmpeg gst}
width=${WIDTH:-1920} height=${HEIGHT:-1080} fps=${FPS:-25} bitrate=${BITRATE:-4000} gop=${GOP:-50}
results=${RESULTS:-/tmp/camgate-streams-bench.jsonl}
for r in $relays; do
  case " camgate ffmpeg gst " in *" $r "*) ;; *) echo "streams.sh: unknown relay $r" >&2; exit 1 ;; esac
done

ns_cam=cgst-cam ns_gw=cgst-gw ns_lan=cgst-lan
camera=10.77.0.11 gw_cam=10.77.0.1 gw_lan=192.168.77.2 lan=192.168.77.50
camera_url=rtsp://$camera:554/stream1
admin=127.0.0.1:8080 admin_password='bench admin pass'
hz=$(getconf CLK_TCK)

for ns in $ns_cam $ns_gw $ns_lan; do
  if ip netns list | grep -q "^$ns\( \|$\)"; then
    echo "streams.sh: namespace $ns exists: another run, or a killed one (ip netns del $ns)" >&2
    exit 1
  fi
done

work=$(mktemp -d /tmp/cgbench-streams.XXXXXX)
chmod 755 "$work"     # dnsmasq drops privileges and reads its config from camgate's state dir
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"
made_ns=()
teardown() {
  local rc=$? keep=${results%.jsonl}-logs
  if [ "$rc" != 0 ] && [ -d "$work" ]; then   # a failed run keeps its logs
    rm -rf "$keep"
    mkdir -p "$keep"
    cp -r "$work"/*.log "$work"/camgate-* "$work"/ffmpeg-* "$keep"/ 2>/dev/null || true
    echo "streams.sh: logs kept in $keep" >&2
  fi
  cleanup                          # lib.sh: our process groups, then $work
  local ns
  for ns in "${made_ns[@]}"; do
    ip netns del "$ns" 2>/dev/null || true   # takes the veths and camgate's nft table with it
  done
}
trap teardown EXIT
: >"$results"

# --- Topology ----------------------------------------------------------------------------------------------

for ns in $ns_cam $ns_gw $ns_lan; do
  ip netns add "$ns"
  made_ns+=("$ns")
  ip -n "$ns" link set lo up
done
ip -n $ns_gw link add cam0 type veth peer name eth0 netns $ns_cam
ip -n $ns_gw link add lan0 type veth peer name eth0 netns $ns_lan
ip -n $ns_gw addr add $gw_cam/24 dev cam0
ip -n $ns_gw addr add $gw_lan/24 dev lan0
ip -n $ns_cam addr add $camera/24 dev eth0
ip -n $ns_lan addr add $lan/24 dev eth0
for link in "$ns_gw cam0" "$ns_gw lan0" "$ns_cam eth0" "$ns_lan eth0"; do
  # shellcheck disable=SC2086  # namespace and link
  ip -n ${link% *} link set ${link#* } up
done
ip -n $ns_cam route add default via $gw_cam
ip -n $ns_lan route add default via $gw_lan
camera_mac=$(ip -n $ns_cam -br link show dev eth0 | awk '{ print $3 }')

# --- Helpers -------------------------------------------------------------------------------------------------

# Waits up to $3 s (10) until something listens on TCP port $2 in namespace $1; else shows $4... and fails.
wait_tcp() {
  local ns=$1 port=$2 secs=${3:-10}
  shift 3
  for _ in $(seq $((secs * 20))); do
    ip netns exec "$ns" ss -Hltn "sport = :$port" | grep -q . && return 0
    sleep 0.05
  done
  echo "streams.sh: nothing listens on TCP port $port in $ns:" >&2
  tail -n 30 "$@" >&2
  exit 1
}

# Forgets a process group we waited for (lib.sh's trap would kill a reused pid).
forget() {
  local pid kept=()
  for pid in "${started[@]}"; do
    [ "$pid" = "$1" ] || kept+=("$pid")
  done
  started=("${kept[@]}")
}

# The relay's processes: pids in process group $1 whose command name is $2.
relay_pids() {
  awk -v pg="$1" -v comm="($2)" '
    { pid = $1; name = $2; sub(/^[0-9]+ \(.*\) /, "") }   # $1 is now stat field 3 (state)
    $3 == pg && name == comm { print pid }' /proc/[0-9]*/stat 2>/dev/null
}

# "ticks" (utime+stime) of pids $@.
relay_ticks() {
  local pid t=0
  for pid in "$@"; do
    t=$((t + $(awk '{ sub(/^[0-9]+ \(.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}

# Relay CPU, precisely: every thread's run time (schedstat, ns) sampled at the window's start ("first"), every
# second and at its end. /proc/PID/stat's ticks are sampled at the tick, too coarse for a relay using 0.5 % of a
# core and, on this kernel, far off for 50 ffmpegs (they are kept as relay_cpu_ticks_s, informational). A
# thread that exits (gst's do) counts up to its last sample; one born in the window counts from zero.
declare -A cpu_first=() cpu_last=()
sample_cpu() {
  local mode=$1 pid f tid v _rest
  shift
  for pid in "$@"; do
    for f in "/proc/$pid/task/"*/schedstat; do
      { read -r v _rest <"$f"; } 2>/dev/null || continue
      tid=${f#/proc/"$pid"/task/}
      tid=${tid%/schedstat}
      cpu_last[$tid]=$v
      [ "$mode" != first ] || cpu_first[$tid]=$v
    done
  done
}
# The camera's run time (ns) now: its threads live as long as it does.
camera_ns() { cat "/proc/$camera_pid/task/"*/schedstat 2>/dev/null | awk '{ t += $1 } END { printf "%.0f", t }'; }
cpu_sampled_ns() {
  local tid t=0
  for tid in "${!cpu_last[@]}"; do
    t=$((t + cpu_last[$tid] - ${cpu_first[$tid]:-0}))
  done
  echo $t
}

# "rss_kib pss_kib" summed over pids $@.
relay_memory() {
  local pid rss=0 pss=0
  for pid in "$@"; do
    rss=$((rss + $(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)))
    pss=$((pss + $(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)))
  done
  echo "$rss $pss"
}

# /proc/stat fields user..steal of cpu0, then of cpu1 (ticks).
cpu_stat() { awk '/^cpu[01] / { for (i = 2; i <= 9; i++) printf "%s ", $i }' /proc/stat; }
# "cpu0_busy cpu1_busy" in % between two cpu_stat samples.
cpu_busy() {
  awk -v b="$1" -v a="$2" 'BEGIN {
    split(b, x); split(a, y)
    for (c = 0; c < 2; c++) {
      total = idle = 0
      for (i = 1; i <= 8; i++) {
        d = y[c * 8 + i] - x[c * 8 + i]; total += d
        if (i == 4 || i == 5) idle += d
      }
      printf "%.0f ", 100 * (total - idle) / (total > 0 ? total : 1)
    }
  }'
}

# Sleeps until the epoch time $1.
sleep_until() {
  local left
  left=$(awk -v t="$1" -v now="$(date +%s.%N)" 'BEGIN { d = t - now; print (d > 0 ? d : 0) }')
  sleep "$left"
}

before=$(cpu_stat)
sleep 1
# shellcheck disable=SC2046  # "cpu0 cpu1"
set -- $(cpu_busy "$before" "$(cpu_stat)")
if [ "$1" -gt 10 ] || [ "$2" -gt 10 ]; then
  echo "streams.sh: the host is busy before we start (CPU 0 $1%, CPU 1 $2%): expect noisy figures" >&2
fi

# --- The camera and the probe ----------------------------------------------------------------------------------

spawn 1 "$work/camera.log" ip netns exec $ns_cam $py -X faulthandler "$here/rtsp_relay_gst.py" camera --address $camera \
  --port 554 --path /stream1 --width "$width" --height "$height" --fps "$fps" --bitrate "$bitrate" --gop "$gop"
camera_pid=$server_pid
wait_tcp $ns_cam 554 20 "$work/camera.log"
probe_records=$work/probe.txt
spawn 1 "$work/probe.log" ip netns exec $ns_cam $py "$here/rtsp_reader.py" client $camera_url --count 1 \
  --warmup 0 --forever --records "$probe_records"
probe_pid=$server_pid

# The camera must keep up: 3 s of the probe alone (the last second's lines may not be written yet).
sleep 5
camera_check=$(awk -v since="$(($(date +%s) - 4))" '$3 >= since && $3 < since + 3 { n++; b += $4 }
  END { printf "%.1f %.2f", n / 3, b * 8 / 3 / 1e6 }' "$probe_records")
echo "streams.sh: camera ${width}x${height} ${fps} fps ${bitrate} kbit/s (GOP $gop): the probe gets" \
  "${camera_check% *} fps, ${camera_check#* } Mbit/s" >&2
if ! awk -v c="$camera_check" -v fps="$fps" 'BEGIN { split(c, v, " "); exit !(v[1] >= 0.95 * fps) }'; then
  echo "streams.sh: the camera does not keep up; try WIDTH=1280 HEIGHT=720" >&2
  tail -n 20 "$work/camera.log" "$work/probe.log" >&2
  exit 1
fi

# --- The relays: start_X starts it in the gateway namespace on CPU 0; url_X is what the readers read ---------

camgate_config() {
  local d=$1 hash token_lines
  hash=$(printf '%s' "$admin_password" | "$CAMGATE_BIN" hash-password)
  printf '[daemon]\nmode = "dev"\n' >"$d/token.toml"
  token=$("$CAMGATE_BIN" token create bench --site streams --scope /cam/main --config "$d/token.toml" 2>/dev/null)
  token_lines=$(tail -n +3 "$d/token.toml")
  cat >"$d/camgate.toml" <<EOF
[daemon]
mode = "appliance"
state_dir = "$d/state"
log = "warn"

[admin]
listen = ["$admin"]

[[user]]
name = "root"
password_hash = "$hash"
role = "admin"

[network]
uplink = "lan0"

[cameras]
interface = "cam0"
address = "$gw_cam/24"

[[camera]]
name = "cam"
mac = "$camera_mac"
address = "$camera"
streams = { main = "/stream1" }

[streams]
max_readers = $((readers + 14))
close_after = "30s"

$token_lines
EOF
}

start_camgate() {
  local d=$work/camgate-$round
  mkdir -p "$d/state"
  camgate_config "$d"
  spawn 0 "$d/camgate.log" ip netns exec $ns_gw "$CAMGATE_BIN" run --config "$d/camgate.toml"
  relay_log=$d/camgate.log relay_comm=camgate relay_pid=$server_pid
  wait_tcp $ns_gw 8554 20 "$relay_log"
  reader_args=(client "rtsp://$gw_lan:8554/cam/main" --user bench --password "$token")
}
camgate_status() {
  ip netns exec $ns_gw curl -sf -u "root:$admin_password" "http://$admin/api/streams" || echo '[]'
}

start_gst() {
  spawn 0 "$work/gst-$round.log" ip netns exec $ns_gw $py -X faulthandler "$here/rtsp_relay_gst.py" relay --source $camera_url \
    --address $gw_lan --port 8555 --path /cam/main
  relay_log=$work/gst-$round.log relay_comm=python3 relay_pid=$server_pid
  wait_tcp $ns_gw 8555 20 "$relay_log"
  reader_args=(client "rtsp://$gw_lan:8555/cam/main")
}

# ffmpeg: nothing runs until readers listen; start_ffmpeg_pushers N starts N ffmpegs in one process group.
start_ffmpeg() { relay_comm=ffmpeg relay_pid= server_pid=; }
ffmpeg_port=9000
start_ffmpeg_pushers() {
  local n=$1 d=$work/ffmpeg-$round-$1
  mkdir -p "$d"
  # shellcheck disable=SC2016  # expanded by the inner shell
  spawn 0 "$d/group.log" ip netns exec $ns_gw bash -c '
    for i in $(seq "$1"); do
      ffmpeg -nostdin -hide_banner -loglevel error -fflags nobuffer -flags low_delay -rtsp_transport tcp \
        -i "$2" -map 0:v:0 -c copy -f rtsp -rtsp_transport tcp "rtsp://$3/r$i" >"$4/ffmpeg-$i.log" 2>&1 &
    done
    wait' sh "$n" $camera_url "$lan:$ffmpeg_port" "$d"
  relay_log=$d/ffmpeg-1.log relay_pid=$server_pid
}

stop_relay() {
  [ "$relay" = ffmpeg ] || stop_server   # ffmpeg's pushers were stopped with their phase
}

# --- One phase: N readers through the relay; appends a JSON line to $results -----------------------------------

phase() {
  local n=$1 warmup=$2 duration=$3 out=$work/readers-$relay-$round-$1.json log=$work/readers-$relay-$round-$1.log
  local reader_pid perf_pid= window start end stat0 stat1 t0 t1 pids ticks0 ticks1 cam0 cam1 mem busy extra=
  local args=("${reader_args[@]}")
  if [ "$relay" = ffmpeg ]; then
    ffmpeg_port=$((ffmpeg_port + 1))
    args=(listen --address $lan --port $ffmpeg_port)
  fi
  spawn 1 "$log" ip netns exec $ns_lan $py "$here/rtsp_reader.py" "${args[@]}" --count "$n" --warmup "$warmup" \
    --duration "$duration" --setup-timeout 20 --out "$out"
  reader_pid=$server_pid server_pid=$relay_pid       # stop_server stops the relay, not the readers
  if [ "$relay" = ffmpeg ]; then
    wait_tcp $ns_lan $ffmpeg_port 10 "$log"
    start_ffmpeg_pushers "$n"
  fi
  for _ in $(seq 600); do
    window=$(grep -m1 '^window ' "$log" || true)
    [ -z "$window" ] || break
    kill -0 "$reader_pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$window" ] || { echo "streams.sh: the readers never started their window:" >&2; tail "$log" >&2; exit 1; }
  read -r _ start end _ <<<"$window"
  sleep_until "$start"
  mapfile -t pids < <(relay_pids "$relay_pid" "$relay_comm")
  if ((${#pids[@]} == 0)); then
    echo "streams.sh: no $relay_comm process in group $relay_pid" >&2
    tail "$relay_log" >&2
    kill -0 "$camera_pid" 2>/dev/null || { echo "streams.sh: the camera died:" >&2; tail "$work/camera.log" >&2; }
    exit 1
  fi
  cpu_first=() cpu_last=()
  sample_cpu first "${pids[@]}"
  stat0=$(cpu_stat) t0=$(date +%s.%N) ticks0=$(relay_ticks "${pids[@]}")
  cam0=$(camera_ns)
  if [ -n "${PERF:-}" ] && [ "$relay" = camgate ] && [ "$n" = "$readers" ] && [ "$round" = 1 ]; then
    taskset -c 1 perf record -F 999 --call-graph dwarf,16384 -o "$PERF" -p "${pids[0]}" -- sleep "$((duration - 2))" \
      >"$work/perf.log" 2>&1 &
    perf_pid=$!
  fi
  # Memory: the peak of samples every second, the last one 0.7 s before the readers leave.
  local last peak=0 stop_at
  stop_at=$(awk -v e="$end" 'BEGIN { printf "%.6f", e - 0.7 }')
  while :; do
    sample_cpu last "${pids[@]}"
    mem=$(relay_memory "${pids[@]}")
    [ "${mem% *}" -le "$peak" ] || peak=${mem% *}
    last=$(awk -v s="$stop_at" -v now="$(date +%s.%N)" 'BEGIN { print (now + 1 >= s) }')
    [ "$last" = 1 ] && break
    sleep 1
  done
  sleep_until "$stop_at"
  mem=$(relay_memory "${pids[@]}")
  [ "${mem% *}" -le "$peak" ] || peak=${mem% *}
  sleep_until "$end"
  sample_cpu last "${pids[@]}"
  ticks1=$(relay_ticks "${pids[@]}") t1=$(date +%s.%N) stat1=$(cpu_stat)
  cam1=$(camera_ns)
  busy=$(cpu_busy "$stat0" "$stat1")
  wait "$reader_pid" || { echo "streams.sh: the readers failed:" >&2; tail "$log" >&2; exit 1; }
  forget "$reader_pid"
  [ -z "$perf_pid" ] || wait "$perf_pid" || echo "streams.sh: perf failed: $(tail -n 3 "$work/perf.log")" >&2
  if [ "$relay" = camgate ] && [ "$n" = "$readers" ]; then
    extra=$(camgate_status | $py -c 'import json, sys
s = next((x for x in json.load(sys.stdin) if x["path"] == "/cam/main"), {})
print(json.dumps({"camgate_dropped": s.get("dropped"), "camgate_camera_sessions": s.get("camera_sessions"),
                  "camgate_readers": s.get("readers")}))')
  fi
  sleep 1.5                                      # the probe writes its lines every 0.5 s
  # shellcheck disable=SC2086  # "rss pss", "cpu0 cpu1"
  set -- $mem $busy
  $py "$here/rtsp_reader.py" summarize --readers "$out" --probe "$probe_records" --results "$results" \
    --round "$round" --relay "$relay" --cpu-ns "$(cpu_sampled_ns)" --cpu-ticks $((ticks1 - ticks0)) \
    --cpu-window "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" --hz "$hz" --processes ${#pids[@]} \
    --camera-cpu-ns $((cam1 - cam0)) --rss-kib "$peak" --rss-last-kib "$1" --pss-kib "$2" ${idle_rss:+--idle-rss-kib "$idle_rss"} --cpu0-busy "$3" --cpu1-busy "$4" \
    ${extra:+--extra "$extra"}
  if [ -n "${FRAMES:-}" ]; then
    mkdir -p "$FRAMES"
    cp "$out" "$probe_records" "$FRAMES/"
  fi
  if [ "$relay" = ffmpeg ]; then
    stop_server                                    # the pushers of this phase
  fi
  kill -0 "$probe_pid" 2>/dev/null || { echo "streams.sh: the probe died:" >&2; tail "$work/probe.log" >&2; exit 1; }
  kill -0 "$camera_pid" 2>/dev/null || { echo "streams.sh: the camera died:" >&2; tail "$work/camera.log" >&2; exit 1; }
}

echo "streams.sh: $rounds round(s) of: $relays; $readers readers; windows ${win1} s (1 reader) and ${win} s" \
  "($readers readers); raw results in $results" >&2
for round in $(seq "$rounds"); do
  for relay in $relays; do
    echo "== round $round/$rounds: $relay" >&2
    "start_$relay"
    idle_rss=
    if [ -n "$relay_pid" ]; then
      sleep 1
      mapfile -t pids < <(relay_pids "$relay_pid" "$relay_comm")
      idle_rss=$(relay_memory "${pids[@]}")
      idle_rss=${idle_rss% *}
    fi
    phase 1 "$warm1" "$win1"
    sleep 1
    phase "$readers" "$warm" "$win"
    if [ "$relay" = camgate ] && grep -E ' (ERROR|WARN) ' "$relay_log" | grep -qv 'dnsmasq\['; then
      echo "  camgate's log has warnings:" >&2
      grep -E ' (ERROR|WARN) ' "$relay_log" | grep -v 'dnsmasq\[' | tail -n 5 | sed 's/^/    /' >&2
    fi
    stop_relay
    sleep 1
  done
done

echo "camera sessions the camera saw in all: $(grep -c '^session-new' "$work/camera.log")" >&2
$py "$here/rtsp_reader.py" report "$results"
