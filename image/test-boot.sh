#!/usr/bin/env bash
# Boot test of the appliance image in qemu:
#
#   image/test-boot.sh x86_64 [IMAGE.img[.xz]]       default: the newest image/out/camgate-*-x86_64.img.xz
#   image/test-boot.sh rpi-arm64 [IMAGE.img[.xz]]    default: the newest image/out/camgate-*-rpi-arm64.img.xz
#
# x86_64: two boots of one disk (grown to 4 GiB, as if flashed onto a bigger medium) with OVMF (KVM when it
# runs guests, TCG otherwise), in a network namespace of its own (deleted at exit) so nothing the guests
# send leaves this machine:
#   1. first boot, unconfigured: camgate reaches READY (serial console), /api/status answers from the uplink
#      side (user-mode network, isolated, port forward), the setup code is on the console's login banner and
#      in SETUP.TXT on the boot partition, the data partition grew to fill the disk, a machine-id was written.
#   2. with a camgate.toml dropped on the boot partition (as a user would from a PC): it is imported, camgate
#      configures its camera VLAN (id 30) on the second NIC, and a camera VM — the image's own kernel with a
#      busybox initramfs, linked to that NIC by a qemu socket — gets a DHCP lease on VLAN 30 from camgate;
#      what the camera then tries (telnet to the internet) is blocked and shows in camgate's report, which
#      proves the inet camgate table is loaded and logging.
# The VLAN path cannot run on the build machine (its kernel has no 802.1Q): this is where it is proven.
#
# rpi-arm64 (smoke test): the Pi's firmware cannot be emulated, so qemu's generic arm64 machine (virt,
# Cortex-A72 like the Pi 4, TCG) boots the image's own kernel, initramfs and command line from the boot
# partition directly, on the same disk; boot 1 as above (slow: emulated).
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
here=$(cd "$(dirname "$0")" && pwd)
target=${1:-}
case "$target" in
  x86_64) qemu_packages=(qemu-system-x86 ovmf) ;;
  rpi-arm64) qemu_packages=(qemu-system-arm) ;;
  *) echo "usage: image/test-boot.sh x86_64|rpi-arm64 [IMAGE.img[.xz]]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "test-boot.sh: run as root (network namespace, KVM)" >&2; exit 1; }
image=${2:-$(ls -t "$here"/out/camgate-*-"$target".img.xz 2>/dev/null | head -n 1 || true)}
[ -f "$image" ] || { echo "test-boot.sh: no image (build one with image/build.sh $target)" >&2; exit 1; }
start=$SECONDS
stage() { printf '==> [%4ds] %s\n' "$((SECONDS - start))" "$*" >&2; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# shellcheck source=image/lib.sh
. "$here/lib.sh"
install_missing "${qemu_packages[@]}" mtools fdisk e2fsprogs busybox-static python3 curl xz-utils cpio

work=$(mktemp -d /var/tmp/camgate-boot.XXXXXX)
ns=cgboot-$$
pids=()
cleanup() {
  # Every VM runs in the namespace: its processes, not just the shells that started them.
  ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "work folder kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
in_ns() { ip netns exec "$ns" "$@"; }

stage "disk: $(basename "$image"), grown to 4 GiB"
disk=$work/disk.img
case "$image" in
  *.xz) xz -dc "$image" >"$disk" ;;
  *) cp --sparse=always "$image" "$disk" ;;
esac
truncate -s 4G "$disk"
# Offsets and sizes (bytes) of a partition by its GPT name.
part() { sfdisk -J "$disk" | python3 -c '
import json, sys
table = json.load(sys.stdin)["partitiontable"]
for p in table["partitions"]:
    if p.get("name") == sys.argv[1]:
        print(p["start"] * table.get("sectorsize", 512), p["size"] * table.get("sectorsize", 512))
' "$1"; }
read -r boot_offset _ < <(part boot)
boot="$disk@@$boot_offset"
uplink_port=18080
# Both NICs as in boot_camgate below: the uplink on qemu's user network (restrict=on: the guest reaches
# nothing but the port forward), the camera NIC on a socket a camera VM can join.
nics=(-netdev user,id=up,restrict=on,hostfwd=tcp:127.0.0.1:$uplink_port-:8080
  -device virtio-net-pci,netdev=up,addr=0x3,mac=52:54:00:00:00:01
  -netdev socket,id=cam,listen=127.0.0.1:18555
  -device virtio-net-pci,netdev=cam,addr=0x4,mac=52:54:00:00:00:02)

if [ "$target" = x86_64 ]; then
  # For the test, the journal goes to the serial console too: camgate's own log says when it is READY
  # (systemd stops printing unit status once the console's getty runs).
  mtype -i "$boot" ::loader/entries/camgate-a.conf | sed '/^options/s/$/ systemd.journald.forward_to_console=1/' >"$work/entry.conf"
  mcopy -o -i "$boot" "$work/entry.conf" ::loader/entries/camgate-a.conf

  # KVM when it really runs guests (a nested VM may offer /dev/kvm and then fail on the first instruction):
  # the image's own kernel must print its banner within 20 s. Otherwise TCG, slower.
  mcopy -o -i "$boot" ::a/vmlinuz "$work/vmlinuz"
  accel=(-accel tcg)
  if [ -e /dev/kvm ]; then
    timeout 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nographic -no-reboot -kernel "$work/vmlinuz" \
      -append "console=ttyS0 panic=-1" -serial file:"$work/kvm-probe.log" -monitor none -display none \
      </dev/null >/dev/null 2>&1 || true
    if grep -q "Linux version" "$work/kvm-probe.log"; then accel=(-accel kvm -cpu host); fi
  fi
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
  machine=(qemu-system-x86_64 -M q35 "${accel[@]}"
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
    -drive if=pflash,format=raw,file="$work/vars.fd")
else
  # Slot A's kernel, initramfs and command line as the Pi's firmware would load them; the consoles are
  # the virt machine's (the Pi's are its mini UART and the screen).
  mcopy -o -i "$boot" ::a/vmlinuz ::a/initrd.img ::a/cmdline.txt "$work/"
  append="$(sed 's/console=[^ ]*//g' "$work/cmdline.txt" | xargs) console=ttyAMA0 systemd.journald.forward_to_console=1"
  accel=(-accel tcg)
  machine=(qemu-system-aarch64 -M virt -cpu cortex-a72 "${accel[@]}"
    -kernel "$work/vmlinuz" -initrd "$work/initrd.img" -append "$append")
fi
stage "accelerator: ${accel[1]}"
# Emulated arm64 boots several times slower than x86 (TCG) or KVM.
ready_seconds=300
[ "$target" = x86_64 ] || ready_seconds=900
boot_camgate() { # $1: serial log file
  in_ns "${machine[@]}" -m 1024 -smp 2 -nographic -no-reboot \
    -drive file="$disk",format=raw,if=virtio "${nics[@]}" \
    -qmp unix:"$work/qmp",server=on,wait=off \
    -serial file:"$1" -monitor none -display none </dev/null >"$1.qemu" 2>&1 &
  pids+=($!)
  camgate_pid=$!
}
wait_for() { # $1: what, $2: seconds, then a command that succeeds when done
  local what=$1 seconds=$2 deadline=$((SECONDS + $2)); shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "$what (nothing in $seconds s)"
    kill -0 "$camgate_pid" 2>/dev/null || fail "$what: qemu exited"
    sleep 1
  done
}
power_off() {
  in_ns python3 - "$work/qmp" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for command in ("qmp_capabilities", "system_powerdown"):
    f.write(json.dumps({"execute": command}) + "\n"); f.flush(); f.readline()
EOF
  local deadline=$((SECONDS + 90))
  while kill -0 "$camgate_pid" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || fail "the guest did not power off"
    sleep 1
  done
}
# camgate logs this as it sends READY=1 (the test's boot entry forwards the journal to the console).
ready() { grep -qs "camgate ready generation=" "$1"; }
status() { local path=$1; shift; in_ns curl -fsS --max-time 3 "$@" "http://127.0.0.1:$uplink_port$path"; }

stage "first boot (unconfigured)"
log1=$work/boot1.log
boot_camgate "$log1"
wait_for "camgate READY on the serial console" "$ready_seconds" ready "$log1"
# The console's journal lines carry the time since the kernel started.
ready_at=$(grep -m 1 "camgate ready generation=" "$log1" | grep -oE '\[ *[0-9]+\.[0-9]+\]' | head -n 1 | tr -d '[] ')
stage "camgate READY ${ready_at:-?} s after the kernel started (${accel[1]})"
wait_for "/api/status from the uplink side" 60 status /api/status -o "$work/status1.json"
python3 - "$work/status1.json" <<'EOF' || fail "first boot status: $(cat "$work/status1.json")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["mode"] == "appliance" and s["setup"] is True, s
firewall = [x for x in s["subsystems"] if x["name"] == "firewall"]
assert firewall and firewall[0]["state"] == "running", s["subsystems"]
EOF
# The banner's own words (camgate's log line, forwarded too, also names the code, and comes first).
banner_code="enter the setup code: +[2-9A-Z]{5}-[2-9A-Z]{5}"
wait_for "the setup code on the console's login banner" 120 grep -qsE "$banner_code" "$log1"
code=$(grep -oE "$banner_code" "$log1" | tail -n 1 | grep -oE "[2-9A-Z]{5}-[2-9A-Z]{5}")
grep -q "setup code: $code" "$log1" || fail "the banner's code $code is not the one camgate logged"
stage "setup code $code shown; powering off"
power_off
mtype -i "$boot" ::SETUP.TXT | grep -q "$code" || fail "SETUP.TXT on the boot partition lacks the code"
read -r data_offset data_size < <(part data)
disk_size=$(stat -c %s "$disk")
# To the end of the disk, but for the backup GPT (at most 1 MiB of alignment and table).
[ $((data_offset + data_size)) -gt $((disk_size - 1048576)) ] ||
  fail "the data partition did not grow to the end: it ends at $((data_offset + data_size)) of $disk_size bytes"
dd if="$disk" of="$work/data-head" bs=1M iflag=skip_bytes skip="$data_offset" count=8 status=none
blocks=$(dumpe2fs -h "$work/data-head" 2>/dev/null | sed -n 's/^Block count: *//p')
block_size=$(dumpe2fs -h "$work/data-head" 2>/dev/null | sed -n 's/^Block size: *//p')
[ $((blocks * block_size)) -gt $((data_size - 4 * 1048576)) ] || fail "the data file system did not grow: $blocks blocks"
read -r system_offset system_size < <(part system_a)
dd if="$disk" of="$work/system.ext4" bs=1M iflag=skip_bytes,count_bytes skip="$system_offset" count="$system_size" status=none
machine_id=$(debugfs -R "cat /etc/machine-id" "$work/system.ext4" 2>/dev/null)
[[ "$machine_id" =~ ^[0-9a-f]{32}$ ]] || fail "no machine-id written: '$machine_id'"
stage "data partition $((data_size >> 20)) MiB, file system grown; machine-id $machine_id"
if [ "$target" = rpi-arm64 ]; then
  stage "PASS (arm64 smoke): READY, /api/status, setup code on console and boot partition, data grown, machine-id"
  exit 0
fi

stage "camera VM (the image's kernel, a busybox initramfs, DHCP on VLAN 30)"
kernel_version=$(debugfs -R "ls -p /usr/lib/modules" "$work/system.ext4" 2>/dev/null | awk -F/ '$6 ~ /^[0-9]/ {print $6}' | head -n 1)
[ -n "$kernel_version" ] || fail "no kernel modules in the system partition"
initramfs=$work/camera-root
mkdir -p "$initramfs"/{bin,proc,sys,dev,lib/modules}
cp /bin/busybox "$initramfs/bin/busybox"
for module in kernel/net/core/failover kernel/drivers/net/net_failover kernel/drivers/net/virtio_net \
  kernel/net/802/stp kernel/net/llc/llc kernel/net/802/garp kernel/net/802/mrp kernel/net/8021q/8021q; do
  debugfs -R "dump /usr/lib/modules/$kernel_version/$module.ko.xz $initramfs/lib/modules/$(basename $module).ko.xz" \
    "$work/system.ext4" >/dev/null 2>&1
  [ -s "$initramfs/lib/modules/$(basename $module).ko.xz" ] || fail "module $module missing"
  xz -d "$initramfs/lib/modules/$(basename $module).ko.xz"
done
cat >"$initramfs/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in failover net_failover virtio_net llc stp garp mrp 8021q; do insmod /lib/modules/$m.ko; done
ip link set eth0 up
vconfig add eth0 30 >/dev/null
ip link set eth0.30 up
cat >/bin/lease <<'S'
#!/bin/sh
[ "$1" = bound ] && ip addr add "$ip/$mask" dev "$interface" && echo "CAMERA LEASE $ip router $router"
exit 0
S
chmod +x /bin/lease
until udhcpc -i eth0.30 -q -n -t 5 -T 2 -s /bin/lease -x hostname:vlancam; do sleep 1; done
# A phone-home attempt: telnet to an internet address, which camgate must drop and report.
ip route add default via 10.77.0.1
for i in 1 2 3; do nc -w 2 198.51.100.7 23 </dev/null; done
echo "CAMERA DONE"
while true; do sleep 60; done
EOF
chmod +x "$initramfs/init"
(cd "$initramfs" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/camera-initrd.gz")

stage "second boot, configured from the boot partition"
cat >"$work/camgate.toml" <<'EOF'
[daemon]
mode = "appliance"
[admin]
listen = ["0.0.0.0:8080"]
[network]
uplink = "enp0s3"
[cameras]
interface = "enp0s4"
vlan = 30
address = "10.77.0.1/24"
[[user]]
name = "admin"
# hash of "boot test"
password_hash = "PASSWORD_HASH"
role = "admin"
EOF
password_hash=$(printf 'boot test' | "${CAMGATE_BIN:-$here/../target/release/camgate}" hash-password) ||
  fail "cannot hash the test password: build camgate or set CAMGATE_BIN"
sed -i "s|PASSWORD_HASH|$password_hash|" "$work/camgate.toml"
mcopy -i "$boot" "$work/camgate.toml" ::camgate.toml
log2=$work/boot2.log
boot_camgate "$log2"
wait_for "camgate READY again" 300 ready "$log2"
in_ns qemu-system-x86_64 -M q35 "${accel[@]}" -m 256 -nographic -no-reboot \
  -kernel "$work/vmlinuz" -initrd "$work/camera-initrd.gz" -append "console=ttyS0 quiet" \
  -netdev socket,id=cam,connect=127.0.0.1:18555 -device virtio-net-pci,netdev=cam,mac=52:54:00:00:00:30 \
  -serial file:"$work/camera.log" -monitor none -display none </dev/null >"$work/camera.qemu" 2>&1 &
pids+=($!)
wait_for "the camera's DHCP lease on VLAN 30" 120 grep -qs "CAMERA LEASE 10.77.0." "$work/camera.log"
lease=$(grep -oE "CAMERA LEASE 10\.77\.0\.[0-9]+" "$work/camera.log" | awk '{print $3}')
stage "camera leased $lease on VLAN 30"
wait_for "the camera's attempts" 60 grep -qs "CAMERA DONE" "$work/camera.log"
cameras() { in_ns curl -fsS --max-time 3 -u "admin:boot test" "http://127.0.0.1:$uplink_port/api/cameras"; }
check_report() {
  cameras >"$work/cameras.json" 2>/dev/null && python3 - "$work/cameras.json" "$lease" <<'EOF'
import json, sys
cams = json.load(open(sys.argv[1]))
cam = [c for c in cams if c.get("address") == sys.argv[2]]
assert cam and cam[0]["state"] == "leased" and cam[0]["name"] == "vlancam", cams
assert any(a["kind"] == "mirai" and a["address"] == "198.51.100.7" and a.get("port") == 23 for a in cam[0]["blocked"]), cam
EOF
}
wait_for "the camera's lease and blocked telnet in /api/cameras" 30 check_report
power_off
stage "PASS: READY, /api/status, setup code on console and boot partition, data grown, machine-id, VLAN 30 lease, isolation report"
