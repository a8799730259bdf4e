#!/usr/bin/env bash
# Reverse-proxy benchmark: camgate against nginx, Apache, Caddy and HAProxy, each terminating TLS 1.3 for
# bench.test (one self-signed P-256 leaf) and proxying to the same upstream (a static nginx; MJPEG from
# fake-dvr behind it) over keep-alive pools. Method and anchor numbers: /work/shared/notes/bench-method.md.
# In short:
# - the proxy under test is pinned to CPU 0; wrk/h2load, the Python clients and the upstream to CPU 1;
# - rounds interleave all five servers (each test on a freshly started server), and each figure is
#   compared with nginx's *within* a round, then the median of those ratios is reported (host speed drifts);
# - efficiency is proxy CPU microseconds per request (utime+stime of the proxy's process tree), because the
#   client side, not the proxy, caps req/s;
# - everything runs in a private network namespace (loopback only, fixed ports, and the proxy under test is
#   the upstream's only client, so counting upstream sockets proves pool reuse) and a private mount
#   namespace whose /etc/hosts maps bench.test to 127.0.0.1, so wrk/h2load send the real SNI and Host.
#
# Measured per server and round, each test on a freshly started server: idle RSS after start; RSS growth
# while holding 1,000 idle TLS keep-alive connections (from 8 loopback addresses: camgate caps connections
# per client address at 256); HTTP/1.1 (wrk -t1 -c64 -d10s --latency) and HTTP/2 (h2load -t1 -c32 -m10
# -D 10) on /bytes (1 KiB) with req/s, CPU us/request, p50/p99, peak RSS and new upstream connections;
# 200 MJPEG readers at 2 Mbit/s for 12 s with proxy CPU %, peak RSS and the bytes the readers really got
# (so a broken proxy cannot look cheap). Results: one table per figure, ratios to nginx, PASS/MISS lines
# for camgate's targets, and anomalies (failed requests, unused upstream pools, other load on the host).
#
# Usage (root):  tests/bench/proxy.sh            3 rounds, about 10 minutes
#                QUICK=1 tests/bench/proxy.sh    1 round of 3-second runs (smoke test)
# Environment:   ROUNDS=N; SERVERS="nginx camgate" (a subset; nginx, the reference, is always added);
#                RESULTS=FILE (raw JSON lines, default /tmp/camgate-proxy-bench.jsonl; re-print the tables with
#                  tests/bench/proxy_bench.py report FILE --servers "...");
#                CAMGATE_BIN / FAKE_DVR_BIN (use these binaries instead of building them).
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
[ "$(id -u)" = 0 ] || { echo "proxy.sh: run as root (namespaces, mounts, taskset)" >&2; exit 1; }

all_servers="nginx haproxy apache caddy camgate"   # round order; nginx first as the reference

# --- Outside the namespaces: packages and builds (they may need the network) ------------------------------

install_missing() {
  local need=() pair
  for pair in nginx:nginx-light apache2:apache2 caddy:caddy haproxy:haproxy wrk:wrk h2load:nghttp2-client \
              /usr/bin/python3:python3 openssl:openssl unshare:util-linux taskset:util-linux ps:procps \
              ip:iproute2; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  ((${#need[@]})) || return 0
  echo "proxy.sh: installing ${need[*]}" >&2
  # nginx and apache2 both start on port 80 as soon as they are installed, so the second one's postinst
  # would fail; we run our own instances anyway. policy-rc.d exit 101 = "do not start services".
  # An existing policy-rc.d (Docker images ship one) is left exactly as it is.
  local policy=/usr/sbin/policy-rc.d ours=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    ours=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
  if [ -n "$ours" ]; then
    rm -f "$policy"
    trap - EXIT
  fi
}

if [ -z "${CGBENCH_INNER:-}" ]; then
  install_missing
  if [ -z "${CAMGATE_BIN:-}" ]; then
    cargo build --release -p camgate >&2
    CAMGATE_BIN=$PWD/target/release/camgate
  fi
  if [ -z "${FAKE_DVR_BIN:-}" ]; then
    cargo build --release -p camgate-tests --bin fake-dvr >&2
    FAKE_DVR_BIN=$PWD/target/release/fake-dvr
  fi
  # Re-run this script in a fresh network + mount namespace; it ends when the script's processes end.
  exec unshare --net --mount --propagation private \
    env CGBENCH_INNER=1 CAMGATE_BIN="$CAMGATE_BIN" FAKE_DVR_BIN="$FAKE_DVR_BIN" "$here/proxy.sh" "$@"
fi

# --- Inside the namespaces ---------------------------------------------------------------------------------

if [ -n "${QUICK:-}" ]; then
  rounds=${ROUNDS:-1} run_s=3 mjpeg_s=3
else
  rounds=${ROUNDS:-3} run_s=10 mjpeg_s=12   # 12 s, not 15, keeps 3 rounds under ~10 minutes
fi
servers="nginx"
for s in ${SERVERS:-$all_servers}; do
  case " $all_servers " in *" $s "*) ;; *) echo "proxy.sh: unknown server $s" >&2; exit 1 ;; esac
  [ "$s" = nginx ] || servers+=" $s"
done
conns=1000 readers=200 frame=25000 fps=10    # 25,000 B x 10 fps = 2 Mbit/s per reader
results=${RESULTS:-/tmp/camgate-proxy-bench.jsonl}
: >"$results"

# Fixed ports: the network namespace is ours alone.
upstream_port=8080 mjpeg_port=8081
declare -A port=([nginx]=8441 [haproxy]=8442 [apache]=8443 [caddy]=8444 [camgate]=8445)
camgate_admin_port=8446 camgate_http_port=8447

work=$(mktemp -d /tmp/cgbench-proxy.XXXXXX)
chmod 755 "$work"          # Apache's children run as www-data
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

ip link set lo up
# 1,000 idle connections + upstream pools need fds; the servers inherit this limit.
nofile=$(ulimit -Hn)
if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then
  nofile=65536
fi
ulimit -n "$nofile"
printf '127.0.0.1 localhost bench.test\n::1 localhost\n' >"$work/hosts"
mount --bind "$work/hosts" /etc/hosts

# --- Certificate: a proper leaf (CA:FALSE, serverAuth), self-signed, P-256 ---------------------------------

make_cert() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/key.pem" 2>/dev/null
  openssl req -new -key "$work/key.pem" -subj /CN=bench.test -out "$work/csr.pem"
  cat >"$work/leaf.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:bench.test
subjectKeyIdentifier = hash
EOF
  openssl x509 -req -in "$work/csr.pem" -signkey "$work/key.pem" -days 30 -sha256 \
    -extfile "$work/leaf.ext" -out "$work/cert.pem" 2>/dev/null
  cat "$work/cert.pem" "$work/key.pem" >"$work/combined.pem"   # HAProxy wants both in one file
  chmod 600 "$work/key.pem" "$work/combined.pem"
}

# --- Upstream --------------------------------------------------------------------------------------------

start_upstream() {
  # The upstream must be faster than every proxy, or it, not the proxy, is measured: a static nginx
  # (one process, no master) answers /bytes from a 1 KiB file on CPU 1 with the load generator, as in
  # bench-method.md. Only /video.mjpg goes on to fake-dvr (endless paced MJPEG), unbuffered.
  head -c 1024 /dev/urandom >"$work/1k.bin"
  mkdir -p "$work/upstream"
  cat >"$work/upstream/nginx.conf" <<EOF
master_process off;
daemon off;
worker_rlimit_nofile 20000;
pid $work/upstream/nginx.pid;
error_log $work/upstream/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$upstream_port;
    location = /bytes { default_type application/octet-stream; alias $work/1k.bin; }
    location = /video.mjpg {
      proxy_pass http://127.0.0.1:$mjpeg_port;
      proxy_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
EOF
  spawn 1 "$work/fake-dvr.log" "$FAKE_DVR_BIN" --listen "127.0.0.1:$mjpeg_port" --log /dev/null
  wait_port "$mjpeg_port" "$work/fake-dvr.log"
  spawn 1 "$work/upstream/stderr.log" nginx -c "$work/upstream/nginx.conf"
  upstream_pid=$server_pid
  wait_port "$upstream_port" "$work/upstream/stderr.log" "$work/upstream/error.log"
}

# --- The servers. Each start_X writes its config and starts it on CPU 0 with one worker -------------------
# Common choices: TLS 1.3 only; HTTP/2 and HTTP/1.1 via ALPN; no access logs; client keep-alive without a
# per-connection request cap (nginx and Apache cap at 1,000 / 100 by default, which would turn a 10 s run
# into a handshake benchmark); large idle upstream pools (bench-method.md: small pools reconnect per request).

start_nginx() {
  local d=$work/nginx
  mkdir -p "$d"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $d/body;
  proxy_temp_path $d/proxy;
  upstream dvr {
    server 127.0.0.1:$upstream_port;
    keepalive 1024;                 # idle upstream connections kept per worker
    keepalive_requests 1000000;     # default 1,000 would reconnect every ~20 ms at full load
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:${port[nginx]} ssl http2;
    server_name bench.test;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.3;
    keepalive_requests 1000000;
    http2_max_requests 1000000;
    location / {
      proxy_pass http://dvr;
      proxy_http_version 1.1;        # needed for upstream keep-alive
      proxy_set_header Connection "";
    }
  }
}
EOF
  spawn 0 "$d/stderr.log" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log"
}

start_haproxy() {
  local d=$work/haproxy
  mkdir -p "$d"
  cat >"$d/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $((nofile / 2 - 100))     # HAProxy refuses to start if maxconn needs more fds than allowed
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
frontend bench
  bind 127.0.0.1:${port[haproxy]} ssl crt $work/combined.pem alpn h2,http/1.1
  default_backend dvr
backend dvr
  http-reuse always                 # share idle upstream connections between client connections
  server upstream 127.0.0.1:$upstream_port
EOF
  spawn 0 "$d/stderr.log" haproxy -db -f "$d/haproxy.cfg"
}

start_apache() {
  # The classic home setup: mod_proxy ProxyPass with ProxyBadHeader Ignore (for DVR firmware that sends
  # broken header lines), event MPM as 1 process x 128 threads. 128 threads > wrk's 64 connections: with
  # only 64, Apache closed keep-alive connections under load (bench-method.md). AsyncRequestWorkerFactor 16
  # lets that one process hold 128 + 16 x 128 connections; the default 2 (384) could not hold 1,000 idle ones.
  local d=$work/apache m=/usr/lib/apache2/modules
  mkdir -p "$d/run"
  cat >"$d/apache2.conf" <<EOF
ServerRoot $d
ServerName bench.test
DefaultRuntimeDir $d/run
PidFile $d/run/apache2.pid
Mutex file:$d/run default
ErrorLog $d/error.log
LogLevel warn
User www-data
Group www-data
LoadModule mpm_event_module $m/mod_mpm_event.so
LoadModule authn_core_module $m/mod_authn_core.so
LoadModule authz_core_module $m/mod_authz_core.so
LoadModule socache_shmcb_module $m/mod_socache_shmcb.so
LoadModule ssl_module $m/mod_ssl.so
LoadModule http2_module $m/mod_http2.so
LoadModule proxy_module $m/mod_proxy.so
LoadModule proxy_http_module $m/mod_proxy_http.so
StartServers 1
ServerLimit 1
ThreadLimit 128
ThreadsPerChild 128
MaxRequestWorkers 128
MinSpareThreads 1
MaxSpareThreads 128
MaxConnectionsPerChild 0
AsyncRequestWorkerFactor 16
KeepAlive On
KeepAliveTimeout 120
MaxKeepAliveRequests 0
Protocols h2 http/1.1
SSLSessionCache shmcb:$d/run/ssl_scache(512000)
Listen 127.0.0.1:${port[apache]} https
<VirtualHost 127.0.0.1:${port[apache]}>
  ServerName bench.test
  SSLEngine on
  SSLProtocol -all +TLSv1.3
  SSLCertificateFile $work/cert.pem
  SSLCertificateKeyFile $work/key.pem
  ProxyPass / http://127.0.0.1:$upstream_port/
  ProxyPassReverse / http://127.0.0.1:$upstream_port/
  ProxyBadHeader Ignore
</VirtualHost>
EOF
  spawn 0 "$d/stderr.log" apache2 -d "$d" -f "$d/apache2.conf" -DFOREGROUND
}

start_caddy() {
  # Caddy 2.6.2 rejects persist_config; HOME/XDG_* keep its autosave and storage inside $work instead.
  local d=$work/caddy
  mkdir -p "$d"
  cat >"$d/Caddyfile" <<EOF
{
	admin off
	auto_https off
	servers {
		protocols h1 h2
	}
}
https://bench.test:${port[caddy]} {
	bind 127.0.0.1
	tls $work/cert.pem $work/key.pem {
		protocols tls1.3
	}
	reverse_proxy 127.0.0.1:$upstream_port {
		transport http {
			keepalive 120s
			keepalive_idle_conns 1024
			keepalive_idle_conns_per_host 1024
		}
	}
}
EOF
  spawn 0 "$d/stderr.log" env HOME="$d" XDG_CONFIG_HOME="$d/config" XDG_DATA_HOME="$d/data" GOMAXPROCS=1 \
    caddy run --config "$d/Caddyfile" --adapter caddyfile
}

start_camgate() {
  # camgate's multi-thread tokio runtime is sized from its CPU affinity: taskset -c 0 = one worker.
  local d=$work/camgate
  mkdir -p "$d/state"
  cat >"$d/camgate.toml" <<EOF
[daemon]
mode = "dev"
state_dir = "$d/state"
log = "warn"

[admin]
listen = ["127.0.0.1:$camgate_admin_port"]

[proxy]
https_listen = ["127.0.0.1:${port[camgate]}"]
http_listen = ["127.0.0.1:$camgate_http_port"]
hsts_max_age = "0s"

[[site]]
name = "bench"
hosts = ["bench.test"]
upstream = "http://127.0.0.1:$upstream_port"
profile = "generic"
certificate = "$work/cert.pem"
key = "$work/key.pem"

[[site.rule]]
prefix = "/"
action = "allow"
EOF
  spawn 0 "$d/stderr.log" "$CAMGATE_BIN" run --config "$d/camgate.toml"
}

# --- One server, one round ---------------------------------------------------------------------------------

bench() {
  local cmd=$1
  shift
  taskset -c 1 /usr/bin/python3 "$here/proxy_bench.py" "$cmd" --out "$results" --round "$round" \
    --server "$name" --pid "$server_pid" --port "${port[$name]}" --upstream-port "$upstream_port" \
    --upstream-pid "$upstream_pid" --cafile "$work/cert.pem" --tmp "$work" "$@"
}

server_log_tail() {
  echo "  --- $name output (tail):" >&2
  tail -n 15 "$work/$name/stderr.log" "$work/$name/error.log" 2>/dev/null | sed 's/^/  /' >&2 || true
}

# Each test gets a freshly started server, so one test's memory high-water mark (1,000 connections, a burst
# of HTTP/2 streams) does not show up as the next test's peak RSS.
measure() {
  name=$1
  echo "== round $round/$rounds: $name on 127.0.0.1:${port[$name]}" >&2
  local test first=1 failed
  for test in "conns --n $conns" "h1 --duration $run_s" "h2 --duration $run_s" \
              "mjpeg --readers $readers --duration $mjpeg_s --size $frame --fps $fps"; do
    "start_$name"
    failed=1
    if bench wait-port; then
      if ((first)); then
        sleep 1                         # idle RSS: only a TCP probe has connected so far
        bench idle || true
        first=0
      fi
      if bench check; then              # one real request through the proxy, or nothing is measured
        failed=0
        # shellcheck disable=SC2086  # $test is a subcommand plus its options
        bench $test || echo "  $name: ${test%% *} measurement crashed" >&2
        kill -0 "$server_pid" 2>/dev/null || { echo "  $name died during ${test%% *}" >&2; failed=1; }
      fi
    fi
    if ((failed)); then
      server_log_tail
      stop_server
      return 0
    fi
    stop_server
  done
}

make_cert
start_upstream
echo "proxy.sh: $rounds round(s) of: $servers; upstream nginx pid $upstream_pid; results in $results" >&2
for round in $(seq "$rounds"); do
  for s in $servers; do
    measure "$s"
  done
done

/usr/bin/python3 "$here/proxy_bench.py" report "$results" --servers "camgate ${servers/ camgate/}" \
  --h1-duration "$run_s" --h2-duration "$run_s" --mjpeg-duration "$mjpeg_s" --conns "$conns" \
  --readers "$readers" --size "$frame" --fps "$fps"
