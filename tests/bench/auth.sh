#!/usr/bin/env bash
# Auth benchmark: what camgate's credentials cost. One camgate (CPU 0, one tokio worker) in front of a static
# nginx (CPU 1, with wrk), TLS 1.3, keep-alive, 1 KiB answers, in a private network namespace on loopback.
# The same site has one rule per case, so only the credential check differs:
#   allow    an `allow` rule (the reference)
#   session  an `auth` rule opened by a session cookie from camgate's login page (a real login via curl)
#   bearer   an `auth` rule opened by `Authorization: Bearer` (a token made with `camgate token create`)
#   basic    an `auth` rule opened by Basic credentials (argon2 once, then camgate's 5-minute cache)
# plus the cost of a password check itself: Basic with 2,000 distinct wrong passwords (each one a real
# argon2id run, none cached; the client address is exempt from bans), reported as verifications per second,
# and the latency of a real login through the form.
#
# Per case and round: req/s (wrk -t1 -c64) and camgate's CPU microseconds per request (utime+stime). Rounds
# interleave the cases; the report gives medians and each case's ratio to `allow` (target: req/s >= 0.9x).
#
# Usage (root):  tests/bench/auth.sh            3 rounds of 10-second runs
#                QUICK=1 tests/bench/auth.sh    1 round of 3-second runs (smoke test)
# Environment:   ROUNDS=N; CAMGATE_BIN (use this binary instead of building one).
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
[ "$(id -u)" = 0 ] || { echo "auth.sh: run as root (namespaces, mounts, taskset)" >&2; exit 1; }

if [ -z "${CGBENCH_INNER:-}" ]; then
  need=()
  for pair in nginx:nginx-light wrk:wrk curl:curl unshare:util-linux taskset:util-linux; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  if ((${#need[@]})); then
    echo "auth.sh: installing ${need[*]}" >&2
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
  fi
  if [ -z "${CAMGATE_BIN:-}" ]; then
    cargo build --release -p camgate >&2
    CAMGATE_BIN=$PWD/target/release/camgate
  fi
  exec unshare --net --mount --propagation private env CGBENCH_INNER=1 CAMGATE_BIN="$CAMGATE_BIN" "$here/auth.sh"
fi

if [ -n "${QUICK:-}" ]; then rounds=${ROUNDS:-1} seconds=3; else rounds=${ROUNDS:-3} seconds=10; fi
upstream_port=8080 https_port=8445 admin_port=8446 http_port=8447
base=https://bench.test:$https_port
password='bench password'
work=$(mktemp -d /tmp/cgbench-auth.XXXXXX)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"

ip link set lo up
printf '127.0.0.1 localhost bench.test\n' >"$work/hosts"
mount --bind "$work/hosts" /etc/hosts

# --- The upstream: any path answers the same 1 KiB ----------------------------------------------------------
head -c 1024 /dev/urandom >"$work/1k.bin"
cat >"$work/nginx.conf" <<EOF
master_process off;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$upstream_port;
    location / { default_type application/octet-stream; root $work; try_files /1k.bin =404; }
  }
}
EOF
spawn 1 "$work/nginx.log" nginx -c "$work/nginx.conf"
wait_port "$upstream_port" "$work/nginx.log"

# --- camgate: one rule per case; the `exempt` rule puts the client's address in the site's own networks,
# so 2,000 wrong passwords never ban it (the guard's LAN exemption) ------------------------------------------
hash=$(printf '%s\n' "$password" | "$CAMGATE_BIN" hash-password)
cat >"$work/camgate.toml" <<EOF
[daemon]
mode = "dev"
state_dir = "$work/state"
log = "warn"

[admin]
listen = ["127.0.0.1:$admin_port"]

[proxy]
https_listen = ["127.0.0.1:$https_port"]
http_listen = ["127.0.0.1:$http_port"]

[[site]]
name = "bench"
hosts = ["bench.test"]
upstream = "http://127.0.0.1:$upstream_port"

[[site.rule]]
name = "exempt"
path = "/never"
action = "auth"
from = ["127.0.0.1/32"]

[[site.rule]]
name = "allow"
prefix = "/allow/"
action = "allow"

[[site.rule]]
name = "session"
prefix = "/session/"
action = "auth"
users = ["bench"]

[[site.rule]]
name = "bearer"
prefix = "/bearer/"
action = "auth"
tokens = ["bench"]

[[site.rule]]
name = "basic"
prefix = "/basic/"
action = "auth"
users = ["bench"]

[[user]]
name = "bench"
password_hash = "$hash"
EOF
token=$("$CAMGATE_BIN" token create bench --site bench --scope rule:bearer --config "$work/camgate.toml")
spawn 0 "$work/camgate.log" "$CAMGATE_BIN" run --config "$work/camgate.toml"
camgate_pid=$server_pid
wait_port "$https_port" "$work/camgate.log"

# A real login: the form's CSRF cookie, then the POST; the session cookie from curl's jar.
login() {
  local jar=$work/jar csrf
  rm -f "$jar"
  curl -sk -c "$jar" -o /dev/null "$base/.camgate/login"
  csrf=$(awk '$6 == "__Host-camgate-csrf" { print $7 }' "$jar")
  curl -sk -b "$jar" -c "$jar" -o /dev/null -w '%{http_code} %{time_total}\n' \
    -H "Origin: $base" --data-urlencode "user=bench" --data-urlencode "password=$password" \
    --data-urlencode "csrf=$csrf" --data-urlencode "next=/" "$base/.camgate/login"
}
login_times=()
for _ in 1 2 3 4 5; do
  read -r code seconds_taken < <(login)
  [ "$code" = 303 ] || { echo "auth.sh: login answered $code" >&2; cat "$work/camgate.log" >&2; exit 1; }
  login_times+=("$seconds_taken")
done
session=$(awk '$6 == "__Host-camgate-session" { print $7 }' "$work/jar")
basic=$(printf 'bench:%s' "$password" | base64 -w0)

declare -A header=(
  [allow]="X-Bench: allow"
  [session]="Cookie: __Host-camgate-session=$session"
  [bearer]="Authorization: Bearer $token"
  [basic]="Authorization: Basic $basic"
)
cases="allow session bearer basic"
for name in $cases; do
  code=$(curl -sk -o /dev/null -w '%{http_code}' -H "${header[$name]}" "$base/$name/x")
  [ "$code" = 200 ] || { echo "auth.sh: $name answered $code" >&2; exit 1; }
done

# 2,000 distinct wrong passwords, cycled: every request is an uncached argon2 run.
{
  echo 'local headers = {'
  for i in $(seq 2000); do printf '"Basic %s",\n' "$(printf 'bench:wrong-%d' "$i" | base64 -w0)"; done
  echo '}'
  echo 'local n = 0'
  echo 'request = function() n = n + 1; return wrk.format(nil, nil, {["Authorization"] = headers[(n % 2000) + 1]}) end'
} >"$work/wrong.lua"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$camgate_pid/stat"; }
ticks_per_second=$(getconf CLK_TCK)

# Runs wrk on CPU 1; prints "req/s requests µs-per-request".
measure() {
  local before after out
  before=$(cpu_ticks)
  out=$(taskset -c 1 wrk -t1 "$@")
  after=$(cpu_ticks)
  awk -v ticks=$((after - before)) -v hz="$ticks_per_second" '
    /requests in/ { requests = $1 }
    /Requests\/sec/ { rate = $2 }
    END { printf "%.0f %d %.1f\n", rate, requests, ticks / hz * 1e6 / requests }' <<<"$out"
}

declare -A rate_of cpu_of
verifications=()
for round in $(seq "$rounds"); do
  for name in $cases; do
    read -r rate _ cpu < <(measure -c64 -d"${seconds}s" -H "${header[$name]}" "$base/$name/x")
    echo "round $round: $name $rate req/s, $cpu us/req" >&2
    rate_of[$name]+="$rate "
    cpu_of[$name]+="$cpu "
  done
  read -r rate _ _ < <(measure -c8 -d"${seconds}s" -s "$work/wrong.lua" "$base/basic/x")
  echo "round $round: argon2 $rate verifications/s" >&2
  verifications+=("$rate")
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo
echo "$("$CAMGATE_BIN" version | head -1), $rounds round(s) of ${seconds} s, wrk -t1 -c64, 1 KiB, TLS 1.3"
printf '%-8s %10s %8s %12s %8s\n' case req/s ratio "us CPU/req" ratio
allow_rate=$(median <<<"${rate_of[allow]}")
allow_cpu=$(median <<<"${cpu_of[allow]}")
for name in $cases; do
  rate=$(median <<<"${rate_of[$name]}")
  cpu=$(median <<<"${cpu_of[$name]}")
  printf '%-8s %10.0f %8.2f %12.1f %8.2f\n' "$name" "$rate" "$(awk -v a="$rate" -v b="$allow_rate" 'BEGIN { print a / b }')" \
    "$cpu" "$(awk -v a="$cpu" -v b="$allow_cpu" 'BEGIN { print a / b }')"
done
echo "password verifications (argon2id, uncached, wrk -c8): $(printf '%s ' "${verifications[@]}" | median)/s"
# The first login runs argon2; the next ones find the password in camgate's 5-minute verified cache.
echo "logins through the form (ms; the 1st runs argon2, later ones hit the cache; all write the sessions file):" \
  "$(printf '%s\n' "${login_times[@]}" | awk '{ printf "%.1f ", $1 * 1000 }')"
for name in session bearer; do
  awk -v a="$(median <<<"${rate_of[$name]}")" -v b="$allow_rate" -v n="$name" \
    'BEGIN { r = a / b; printf "%s req/s vs allow: %.2f (target >= 0.90): %s\n", n, r, (r >= 0.9) ? "PASS" : "MISS" }'
done
