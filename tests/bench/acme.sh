#!/usr/bin/env bash
# ACME benchmark: time from start to a valid, installed certificate against Debian's Pebble (validation
# sleeps off, no authorization reuse, no nonce rejection), for camgate and for Debian's ACME clients in the
# same run, in a private network namespace on loopback (Pebble's DNS answers `dvr.test` with 127.0.0.1).
#
#   camgate-http01   `camgate run` with a fresh state dir (new account) until it logs the installed
#                    certificate; includes process start, config, the self-signed bootstrap certificate
#   camgate-alpn01   the same with `challenge = "tls-alpn-01"`
#   acme-tiny        HTTP-01 with a static web server on port 80 (its RSA account key and the CSR are made
#                    beforehand: acme-tiny cannot make them)
#   certbot          `certonly --standalone` (its own port-80 server), new account per round
#   lego             `run --http` (its own port-80 server), new account per round
#
# Rounds interleave the clients; the report gives each one's median and camgate's target (<= 0.5 s).
#
# Usage (root):  tests/bench/acme.sh           5 rounds
# Environment:   ROUNDS=N; CAMGATE_BIN (use this binary instead of building one).
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
[ "$(id -u)" = 0 ] || { echo "acme.sh: run as root (namespaces, port 80)" >&2; exit 1; }

if [ -z "${CGBENCH_INNER:-}" ]; then
  need=()
  for pair in pebble:pebble acme-tiny:acme-tiny certbot:certbot lego:lego curl:curl openssl:openssl \
    python3:python3 unshare:util-linux; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  if ((${#need[@]})); then
    echo "acme.sh: installing ${need[*]}" >&2
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
  fi
  if [ -z "${CAMGATE_BIN:-}" ]; then
    cargo build --release -p camgate >&2
    CAMGATE_BIN=$PWD/target/release/camgate
  fi
  exec unshare --net --mount --propagation private env CGBENCH_INNER=1 CAMGATE_BIN="$CAMGATE_BIN" "$here/acme.sh"
fi

rounds=${ROUNDS:-5}
work=$(mktemp -d /tmp/cgbench-acme.XXXXXX)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"
ip link set lo up

# Waits until nothing listens on port $1 (the previous client is gone).
wait_port_free() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0
    sleep 0.05
  done
  echo "acme.sh: port $1 stays busy" >&2
  exit 1
}

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f\n", b - a }'; }

# --- Pebble's listener certificate (not shipped), Pebble and its DNS --------------------------------------
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=bench listener CA" \
  -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=pebble -keyout listener.key \
  -out listener.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >ext.cnf
openssl x509 -req -in listener.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -out listener.pem \
  -extfile ext.cnf 2>/dev/null
cat >pebble.json <<EOF
{ "pebble": { "listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
  "certificate": "$work/listener.pem", "privateKey": "$work/listener.key",
  "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": false } }
EOF
spawn 1 "$work/challtestsrv.log" pebble-challtestsrv -management 127.0.0.1:8055 -dns01 127.0.0.1:8053 \
  -http01 "" -https01 "" -tlsalpn01 "" -defaultIPv4 "" -defaultIPv6 ""
wait_port 8055 "$work/challtestsrv.log"
curl -sf -o /dev/null -d '{"host":"dvr.test","addresses":["127.0.0.1"]}' http://127.0.0.1:8055/add-a
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
  spawn 1 "$work/pebble.log" pebble -config "$work/pebble.json" -dnsserver 127.0.0.1:8053 -strict=false
wait_port 14000 "$work/pebble.log"
directory=https://127.0.0.1:14000/dir
curl -sf --cacert ca.pem https://127.0.0.1:15000/roots/0 -o root.pem
curl -sf --cacert ca.pem https://127.0.0.1:15000/intermediates/0 -o intermediate.pem

# Each client writes its chain here; the round fails unless it verifies against Pebble's root.
verify() {
  openssl verify -CAfile root.pem -untrusted intermediate.pem "$1" >/dev/null ||
    { echo "acme.sh: $2 produced no valid certificate" >&2; exit 1; }
}

# --- The clients; each prints its seconds -------------------------------------------------------------------
run_camgate() {
  local challenge=$1 dir="$work/camgate-$1-$2"
  mkdir -p "$dir"
  cat >"$dir/camgate.toml" <<EOF
[daemon]
mode = "dev"
state_dir = "$dir/state"
log = "info,camgate::access=warn"
[admin]
listen = ["127.0.0.1:8446"]
[proxy]
https_listen = ["127.0.0.1:443"]
http_listen = ["127.0.0.1:80"]
[[site]]
name = "dvr"
hosts = ["dvr.test"]
upstream = "http://127.0.0.1:9"
[acme]
directory = "$directory"
directory_ca = "$work/ca.pem"
accept_terms = true
challenge = "$challenge"
hosts = ["dvr.test"]
EOF
  local start end
  start=$(now)
  spawn 0 "$dir/camgate.log" "$CAMGATE_BIN" run --config "$dir/camgate.toml"
  local pid=$server_pid
  until grep -q "installed a new certificate" "$dir/camgate.log"; do
    kill -0 "$pid" 2>/dev/null || { cat "$dir/camgate.log" >&2; exit 1; }
    sleep 0.002
  done
  end=$(now)
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  # openssl checks the first certificate of the bundle: the leaf.
  verify "$dir/state/acme/certs/dvr.test.pem" camgate
  wait_port_free 80
  wait_port_free 443
  seconds "$start" "$end"
}

run_acme_tiny() {
  local dir="$work/tiny-$1"
  mkdir -p "$dir/www/.well-known/acme-challenge"
  openssl genrsa -out "$dir/account.key" 2048 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=dvr.test -addext subjectAltName=DNS:dvr.test -keyout "$dir/dvr.key" \
    -out "$dir/dvr.csr" 2>/dev/null
  spawn 0 "$dir/www.log" python3 -m http.server 80 --bind 127.0.0.1 --directory "$dir/www"
  local web=$server_pid
  wait_port 80 "$dir/www.log"
  local start end
  start=$(now)
  SSL_CERT_FILE=$work/ca.pem taskset -c 0 acme-tiny --account-key "$dir/account.key" --csr "$dir/dvr.csr" \
    --acme-dir "$dir/www/.well-known/acme-challenge" --directory-url "$directory" --disable-check \
    >"$dir/chain.pem" 2>"$dir/acme-tiny.log" || { cat "$dir/acme-tiny.log" >&2; exit 1; }
  end=$(now)
  kill -TERM -- "-$web" 2>/dev/null || true
  wait "$web" 2>/dev/null || true
  verify "$dir/chain.pem" acme-tiny
  wait_port_free 80
  seconds "$start" "$end"
}

run_certbot() {
  local dir="$work/certbot-$1" start end
  start=$(now)
  REQUESTS_CA_BUNDLE=$work/ca.pem taskset -c 0 certbot certonly --standalone --non-interactive --agree-tos \
    --register-unsafely-without-email --server "$directory" --preferred-challenges http --http-01-port 80 \
    -d dvr.test --config-dir "$dir/config" --work-dir "$dir/work" --logs-dir "$dir/logs" >"$dir.log" 2>&1
  end=$(now)
  verify "$dir/config/live/dvr.test/cert.pem" certbot
  wait_port_free 80
  seconds "$start" "$end"
}

run_lego() {
  local dir="$work/lego-$1" start end
  start=$(now)
  LEGO_CA_CERTIFICATES=$work/ca.pem taskset -c 0 lego --server "$directory" --accept-tos \
    --email ops@example.org --domains dvr.test --http --http.port 127.0.0.1:80 --path "$dir" run >"$dir.log" 2>&1
  end=$(now)
  verify "$dir/certificates/dvr.test.crt" lego
  wait_port_free 80
  seconds "$start" "$end"
}

clients=(camgate-http01 camgate-alpn01 acme-tiny certbot lego)
declare -A times
for round in $(seq "$rounds"); do
  for client in "${clients[@]}"; do
    case $client in
      camgate-http01) t=$(run_camgate http-01 "$round") ;;
      camgate-alpn01) t=$(run_camgate tls-alpn-01 "$round") ;;
      acme-tiny) t=$(run_acme_tiny "$round") ;;
      certbot) t=$(run_certbot "$round") ;;
      lego) t=$(run_lego "$round") ;;
    esac
    times[$client]+="$t "
    printf 'round %d  %-15s %6.3f s\n' "$round" "$client" "$t"
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "medians over $rounds rounds (seconds from start to a valid certificate):"
camgate=$(echo "${times[camgate-http01]}" | median)
for client in "${clients[@]}"; do
  m=$(echo "${times[$client]}" | median)
  printf '  %-15s %6.3f s   camgate-http01 / this = %5.2f\n' "$client" "$m" "$(awk -v a="$camgate" -v b="$m" 'BEGIN { print a / b }')"
done
verdict=MISS
awk -v a="$camgate" 'BEGIN { exit !(a <= 0.5) }' && verdict=PASS
echo "target: camgate <= 0.5 s: $verdict ($camgate s)"
