#!/usr/bin/env bash
# Builds the camgate appliance image for one target from Debian 13 (trixie) packages:
#
#   image/build.sh x86_64       UEFI PCs (systemd-boot, linux-image-amd64)
#
# Writes camgate-<version>-<target>.img.xz and its .sha256 into $OUT (default image/out). Runs as root on a
# Debian 12 or later machine and installs its own build dependencies. No loop mounts: the root filesystem is
# a directory from mmdebstrap, the partitions are files (mkfs.ext4 -d, mkfs.vfat + mcopy) and genimage
# puts them in a GPT disk image. The layout (see image/README.md): ESP | system_a | system_b | data.
#
# Environment: OUT (output folder), CAMGATE_BIN (a camgate binary instead of a release build),
# MIRROR (Debian mirror, default http://deb.debian.org/debian), KEEP_WORK=1 (keep the work folder).
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target=${1:-}
case "$target" in
  x86_64) ;;
  *) echo "usage: image/build.sh x86_64" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "image/build.sh: run as root (mmdebstrap, file ownership)" >&2; exit 1; }
out=${OUT:-$repo/image/out}
mirror=${MIRROR:-http://deb.debian.org/debian}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)
name="camgate-$version-$target"
start=$SECONDS
stage() { printf '==> [%4ds] %s\n' "$((SECONDS - start))" "$*" >&2; }

# Partition sizes (MiB). The system partitions leave room for updates to grow; data is small in the image
# and grows to fill the medium on first boot.
esp_mib=256
system_mib=1024
data_mib=128

stage "build dependencies"
# shellcheck source=image/lib.sh
. "$here/lib.sh"
install_missing mmdebstrap genimage mtools dosfstools e2fsprogs xz-utils

work=$(mktemp -d /var/tmp/camgate-image.XXXXXX)
cleanup() { [ -n "${KEEP_WORK:-}" ] && echo "work folder kept: $work" >&2 || rm -rf "$work"; }
trap cleanup EXIT

stage "camgate binary"
if [ -n "${CAMGATE_BIN:-}" ]; then
  bin=$CAMGATE_BIN
else
  (cd "$repo" && cargo build --release --locked -p camgate)
  bin=$repo/target/release/camgate
fi

stage "root filesystem (mmdebstrap, trixie)"
packages=(systemd-sysv systemd-repart udev dbus kmod iproute2 nftables dnsmasq-base chrony avahi-daemon
  libnss-mdns ca-certificates e2fsprogs linux-image-amd64 systemd-boot-efi)
mkdir "$work/root"
mmdebstrap --mode=root --variant=minbase --architectures=amd64 --components=main,non-free-firmware \
  --include="$(IFS=,; echo "${packages[*]}")" \
  --customize-hook="\"$here/customize.sh\" \"\$1\" \"$bin\"" \
  trixie "$work/root" "$mirror"

stage "boot partition (systemd-boot)"
kernel=$(find "$work/root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n 1)
initrd=$(find "$work/root/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n 1)
[ -n "$kernel" ] && [ -n "$initrd" ] || { echo "image/build.sh: no kernel or initrd in the root filesystem" >&2; exit 1; }
esp=$work/esp
mkdir -p "$esp/EFI/BOOT" "$esp/loader/entries" "$esp/a"
cp "$work/root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$esp/EFI/BOOT/BOOTX64.EFI"
cp "$kernel" "$esp/a/vmlinuz"
cp "$initrd" "$esp/a/initrd.img"
printf 'default camgate-a.conf\ntimeout 0\nconsole-mode keep\n' >"$esp/loader/loader.conf"
cat >"$esp/loader/entries/camgate-a.conf" <<EOF
title   camgate $version (system A)
linux   /a/vmlinuz
initrd  /a/initrd.img
options root=PARTLABEL=system_a rw console=tty0 console=ttyS0,115200 systemd.show_status=true
EOF
cp "$here/boot-readme.txt" "$esp/CAMGATE.TXT"
mkdir "$work/images"
mkfs.vfat -n CAMGATE -C "$work/images/esp.vfat" $((esp_mib * 1024)) >/dev/null
mcopy -s -i "$work/images/esp.vfat" "$esp"/* ::/

stage "data partition (ext4, grows on first boot)"
# /var/lib and /var/log move there (mounted back by /etc/fstab); the root keeps empty mount points.
data=$work/data
install -d -m 0700 "$data/etc/camgate"
install -d -m 0755 "$data/var"
for dir in lib log; do
  mv "$work/root/var/$dir" "$data/var/$dir"
  install -d -m 0755 "$work/root/var/$dir"
done
install -d -m 0700 "$data/var/lib/camgate"
mkfs.ext4 -q -b 4096 -L data -d "$data" -E root_owner=0:0 "$work/images/data.ext4" "${data_mib}M"

stage "system partition (ext4, mounted read-only)"
used=$(du -sm "$work/root" | cut -f1)
[ "$used" -lt $((system_mib * 8 / 10)) ] || { echo "image/build.sh: root filesystem ($used MiB) too big for $system_mib MiB" >&2; exit 1; }
mkfs.ext4 -q -b 4096 -L system_a -d "$work/root" -E root_owner=0:0 "$work/images/system.ext4" "${system_mib}M"

stage "disk image (genimage, GPT)"
cat >"$work/genimage.cfg" <<EOF
image $name.img {
  hdimage {
    partition-table-type = "gpt"
    # Erase blocks of SD cards and SSDs.
    align = 1M
  }
  partition esp {
    image = "esp.vfat"
    partition-type-uuid = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
  }
  # Root partitions (x86-64 root type): A runs, B is the update slot.
  partition system_a {
    image = "system.ext4"
    partition-type-uuid = "4f68bce3-e8cd-4c00-8ce5-a0d6dc2a7ee2"
  }
  partition system_b {
    size = ${system_mib}M
    partition-type-uuid = "4f68bce3-e8cd-4c00-8ce5-a0d6dc2a7ee2"
  }
  # Last, so it can grow into the rest of the medium.
  partition data {
    image = "data.ext4"
    partition-type-uuid = "0fc63daf-8483-4772-8e79-3d69d8477de4"
  }
}
EOF
mkdir -p "$work/genimage-root" "$work/genimage-tmp" "$out"
genimage --config "$work/genimage.cfg" --rootpath "$work/genimage-root" --tmppath "$work/genimage-tmp" \
  --inputpath "$work/images" --outputpath "$work/images" >/dev/null

stage "compress"
rm -f "$out/$name.img.xz" "$out/$name.img.xz.sha256"
# -1: a few MiB larger than -6 and several times faster.
xz -T0 -1 -c "$work/images/$name.img" >"$out/$name.img.xz"
(cd "$out" && sha256sum "$name.img.xz" >"$name.img.xz.sha256")
stage "done: $out/$name.img.xz ($(du -h "$out/$name.img.xz" | cut -f1)) in $((SECONDS - start)) s"
