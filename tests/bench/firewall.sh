#!/usr/bin/env bash
# Firewall benchmark: how long camgate takes to generate and apply its nftables table, as one transaction,
# for 250 cameras ([[camera]] fixed leases), 20 DVR hosts and 10 kernel forwards (3 behind the STUN guard).
# Target: generation + apply <= 100 ms. Reference in the same run: nft alone loading the same JSON batch
# (`nft -j -f`, from `camgate firewall show --json`), so the ratio shows what camgate adds.
#
# Method: a namespace of our own (deleted at exit) with uplink and camera interfaces (veth pairs); camgate in
# appliance mode starts there, then is reloaded ROUNDS times (SIGHUP), alternating two DVR lists so every
# reload changes the table. Each apply logs planned_ms (building the batch, route and address lookups),
# checked_ms (`nft --check`, part of a reload's prepare) and applied_ms (the transaction). The reference
# loads the batch ROUNDS times into a second scratch namespace. Medians and the worst are printed.
#
# Usage (root):  tests/bench/firewall.sh          20 reloads
# Environment:   ROUNDS=N; CAMGATE_BIN (use this binary instead of building it).
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
[ "$(id -u)" = 0 ] || { echo "firewall.sh: run as root (namespaces, nftables)" >&2; exit 1; }
for tool in nft ip python3 setsid taskset; do
  command -v "$tool" >/dev/null || { echo "firewall.sh: $tool is missing" >&2; exit 1; }
done
rounds=${ROUNDS:-20}
if [ -z "${CAMGATE_BIN:-}" ]; then
  cargo build --release -p camgate >&2
  CAMGATE_BIN=$PWD/target/release/camgate
fi

ns=cgfw-g ref=cgfw-r
for n in $ns $ref; do
  if ip netns list | grep -q "^$n\( \|$\)"; then
    echo "firewall.sh: namespace $n exists: another run, or a killed one (ip netns del $n)" >&2
    exit 1
  fi
done
work=$(mktemp -d /tmp/cgbench-fw.XXXXXX)
# shellcheck source=tests/bench/lib.sh
. "$here/lib.sh"
teardown() {
  cleanup
  ip netns del $ns 2>/dev/null || true
  ip netns del $ref 2>/dev/null || true
}
trap teardown EXIT
ip netns add $ns
ip netns add $ref
ip -n $ns link set lo up
# veth pairs with both ends inside (this kernel has no dummy interfaces)
ip -n $ns link add up0 type veth peer name up0-peer
ip -n $ns link add cam0 type veth peer name cam0-peer
ip -n $ns addr add 192.168.77.2/24 dev up0
ip -n $ns link set up0 up
ip -n $ns link set up0-peer up
ip -n $ns link set cam0-peer up

# The config: $1 = first octet offset of the DVR list, so two lists alternate.
config() {
  python3 - "$1" "$work/state" <<'EOF'
import sys
offset, state = int(sys.argv[1]), sys.argv[2]
out = [f'[daemon]\nmode = "appliance"\nstate_dir = "{state}"\nlog = "info"\n[admin]\nlisten = ["127.0.0.1:18080"]\n'
       '[network]\nuplink = "up0"\n[cameras]\ninterface = "cam0"\naddress = "10.77.0.1/23"\n']
dvrs = ", ".join(f'"192.168.77.{100 + offset + i}"' for i in range(20))
out.append(f"dvr_hosts = [{dvrs}]\n")
for i in range(250):
    out.append(f'[[camera]]\nname = "cam{i}"\nmac = "02:00:00:00:{i // 256:02x}:{i % 256:02x}"\n'
               f'address = "10.77.{(i + 10) // 256}.{(i + 10) % 256}"\n')
for i in range(10):
    first = 3478 if i == 0 else 50000 + i * 10
    ports = first if i < 3 else f'"{first}-{first + 9}"'
    stun = "true" if i < 3 else "false"
    out.append(f'[[forward]]\nname = "f{i}"\nprotocol = "udp"\nports = {ports}\ntarget = "192.168.77.50"\n'
               f'mode = "kernel"\nstun = {stun}\n')
print("".join(out))
EOF
}

config 0 >"$work/camgate.toml"
"$CAMGATE_BIN" check-config "$work/camgate.toml" >/dev/null
spawn 0 "$work/camgate.log" ip netns exec $ns "$CAMGATE_BIN" run --config "$work/camgate.toml"
camgate_pid=$server_pid
applies() { grep -c "firewall table applied" "$work/camgate.log" || true; }
wait_applies() {
  for _ in $(seq 400); do
    [ "$(applies)" -ge "$1" ] && return 0
    kill -0 "$camgate_pid" 2>/dev/null || break
    sleep 0.025
  done
  echo "firewall.sh: camgate did not apply its table (#$1):" >&2
  cat "$work/camgate.log" >&2
  exit 1
}
wait_applies 1
for i in $(seq "$rounds"); do
  config $((i % 2 * 20)) >"$work/camgate.toml"
  # The camgate process itself (ip netns exec execs it), not the setsid wrapper.
  kill -HUP "$(pgrep -f "run --config $work/camgate.toml" | tail -1)"
  wait_applies $((i + 1))
done
ip netns exec $ns "$CAMGATE_BIN" firewall show --json --config "$work/camgate.toml" >"$work/batch.json"
stop_server

reference=()
for _ in $(seq "$rounds"); do
  start=$(date +%s%N)
  ip netns exec $ref nft -j -f "$work/batch.json"
  reference+=($(( ($(date +%s%N) - start) / 1000 )))
done

LOG="$work/camgate.log" REF="${reference[*]}" python3 - <<'EOF'
import os, re, statistics
rows = [dict(re.findall(r"(\w+_ms|objects)=([\d.]+)", line))
        for line in open(os.environ["LOG"]) if "firewall table applied" in line]
reloads = rows[1:]   # the first apply is the start, with cold caches
ref_ms = [int(us) / 1000 for us in os.environ["REF"].split()]
def med(key): return statistics.median(float(r[key]) for r in reloads)
def worst(key): return max(float(r[key]) for r in reloads)
total = [float(r["planned_ms"]) + float(r["applied_ms"]) for r in reloads]
print(f"firewall: 250 cameras, 20 DVR hosts, 10 kernel forwards (3 STUN-guarded); {rows[-1]['objects']} "
      f"objects in one transaction; {len(reloads)} reloads")
print(f"  generate (planned_ms)     median {med('planned_ms'):7.1f} ms   worst {worst('planned_ms'):7.1f} ms")
print(f"  nft --check (checked_ms)  median {med('checked_ms'):7.1f} ms   worst {worst('checked_ms'):7.1f} ms")
print(f"  apply (applied_ms)        median {med('applied_ms'):7.1f} ms   worst {worst('applied_ms'):7.1f} ms")
print(f"  generate + apply          median {statistics.median(total):7.1f} ms   worst {max(total):7.1f} ms")
print(f"  reference: nft -j -f of the same batch, median {statistics.median(ref_ms):.1f} ms "
      f"(camgate's apply / nft alone: {med('applied_ms') / statistics.median(ref_ms):.2f}x)")
verdict = "PASS" if statistics.median(total) <= 100 else "MISS"
print(f"{verdict}: generate + apply {statistics.median(total):.1f} ms (target <= 100 ms)")
EOF
