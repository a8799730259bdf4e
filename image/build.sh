#!/usr/bin/env bash
# Builds the camgate appliance image for one target from Debian 13 (trixie) packages:
#
#   image/build.sh x86_64       UEFI PCs (systemd-boot, linux-image-amd64)
#   image/build.sh rpi-arm64    Raspberry Pi 4 / 400 / CM4 (raspi-firmware, linux-image-arm64)
#
# Writes camgate-<version>-<target>.img.xz and its .sha256 into $OUT (default image/out). Runs as root on a
# Debian 12 or later machine and installs its own build dependencies. No loop mounts: the root filesystem is
# a directory from mmdebstrap, the partitions are files (mkfs.ext4 -d, mkfs.vfat + mcopy) and genimage
# puts them in a GPT disk image. The layout, the same on both targets (see image/README.md):
# boot | system_a | system_b | data.
#
# Environment: OUT (output folder), CAMGATE_BIN (a camgate binary for the target instead of building one),
# MIRROR (Debian mirror, default http://deb.debian.org/debian), KEEP_WORK=1 (keep the work folder).
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target=${1:-}
# Per target: Debian architecture, ELF machine of its binaries (bytes 18-19), kernel and boot packages,
# GPT types of the boot partition and of the system slots.
case "$target" in
  x86_64)
    arch=amd64 elf_machine="3e 00"
    target_packages=(linux-image-amd64 systemd-boot-efi)
    boot_type=c12a7328-f81f-11d2-ba4b-00a0c93ec93b # EFI system
    root_type=4f68bce3-e8cd-4c00-8ce5-a0d6dc2a7ee2 # x86-64 root
    ;;
  rpi-arm64)
    arch=arm64 elf_machine="b7 00"
    target_packages=(linux-image-arm64 raspi-firmware)
    # Basic data: the Pi's boot ROM and EEPROM read FAT from it, and Windows shows it (unlike an ESP), so
    # SETUP.TXT is readable from a PC.
    boot_type=ebd0a0a2-b9e5-4433-87c0-68b6b72699c7
    root_type=b921b045-1df0-41c3-af44-4c6f280d3fae # arm64 root
    ;;
  *) echo "usage: image/build.sh x86_64|rpi-arm64" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "image/build.sh: run as root (mmdebstrap, file ownership)" >&2; exit 1; }
out=${OUT:-$repo/image/out}
mirror=${MIRROR:-http://deb.debian.org/debian}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)
name="camgate-$version-$target"
start=$SECONDS
stage() { printf '==> [%4ds] %s\n' "$((SECONDS - start))" "$*" >&2; }
fail() { echo "image/build.sh: $*" >&2; exit 1; }

# Partition sizes (MiB). The system partitions leave room for updates to grow; data is small in the image
# and grows to fill the medium on first boot.
boot_mib=256
system_mib=1024
data_mib=128

stage "build dependencies"
# shellcheck source=image/lib.sh
. "$here/lib.sh"
install_missing mmdebstrap genimage mtools dosfstools e2fsprogs xz-utils binutils
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
  # The target's maintainer scripts run under qemu-user (mmdebstrap's foreign mode).
  install_missing qemu-user-static binfmt-support arch-test
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable >/dev/null 2>&1 || true
  arch-test "$arch" >/dev/null || fail "this machine cannot run $arch programs (binfmt_misc + qemu-user-static)"
fi

work=$(mktemp -d /var/tmp/camgate-image.XXXXXX)
cleanup() { [ -n "${KEEP_WORK:-}" ] && echo "work folder kept: $work" >&2 || rm -rf "$work"; }
trap cleanup EXIT

# camgate for arm64: the build machine's Rust has only its own std, so the cross build runs in a throwaway
# trixie chroot with Debian's rustc-web (it ships an arm64 std) and the aarch64 cross gcc (linker, and the
# C in ring). Crates come from crates.io through the host's cargo cache; the target folder stays in the
# workspace's target/ so a second build is incremental. The image's binaries have no debug info (mostly
# the std's, 70 MB on arm64): panic messages carry their source locations anyway.
cross_build_arm64() {
  local chroot=$work/cross cargo_home=${CARGO_HOME:-$HOME/.cargo}
  mmdebstrap --mode=root --variant=apt --architectures=amd64,arm64 \
    --include=rustc-web,cargo-web,libstd-rust-web-dev:arm64,gcc-aarch64-linux-gnu,libc6-dev-arm64-cross \
    trixie "$chroot" "$mirror"
  mkdir -p "$cargo_home" "$repo/target" "$chroot/src" "$chroot/cargo"
  # Its own mount namespace: the bind mounts vanish with it, whatever happens.
  unshare --mount --propagation private sh -euc '
    mount -t proc proc "$1/proc"
    mount --bind /dev "$1/dev"
    mount --bind "$2" "$1/src"
    mount --bind "$3" "$1/cargo"
    chroot "$1" env -i PATH=/usr/bin:/bin HOME=/root CARGO_HOME=/cargo CARGO_TARGET_DIR=/src/target/cross \
      CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
      CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
      sh -c "cd /src && cargo build --release --locked --target aarch64-unknown-linux-gnu -p camgate"
    chroot "$1" aarch64-linux-gnu-strip --strip-debug -o /src/target/cross/camgate \
      /src/target/cross/aarch64-unknown-linux-gnu/release/camgate
  ' sh "$chroot" "$repo" "$cargo_home"
  rm -rf "$chroot"
}

stage "camgate binary ($arch)"
if [ -n "${CAMGATE_BIN:-}" ]; then
  bin=$CAMGATE_BIN
elif [ "$target" = x86_64 ]; then
  (cd "$repo" && cargo build --release --locked -p camgate)
  bin=$work/camgate
  strip --strip-debug -o "$bin" "$repo/target/release/camgate"
else
  cross_build_arm64
  bin=$repo/target/cross/camgate
fi
[ "$(od -An -tx1 -j18 -N2 "$bin" | xargs)" = "$elf_machine" ] || fail "$bin is not a $arch program"

stage "root filesystem (mmdebstrap, trixie, $arch)"
packages=(systemd-sysv systemd-repart udev dbus kmod iproute2 nftables dnsmasq-base chrony avahi-daemon
  libnss-mdns ca-certificates e2fsprogs "${target_packages[@]}")
root=$work/root
mkdir "$root"
# No manuals, translations or docs but the licences. update-initramfs does nothing while packages are
# installed (the kernel and several packages' triggers would each build the initramfs, minutes apiece
# under qemu-user); customize.sh builds it once.
mmdebstrap --mode=root --variant=minbase --architectures="$arch" --components=main,non-free-firmware \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs' \
  --essential-hook='ln -s /bin/true "$1/usr/sbin/update-initramfs"' \
  --include="$(IFS=,; echo "${packages[*]}")" \
  --customize-hook="\"$here/customize.sh\" \"\$1\" \"$bin\"" \
  trixie "$root" "$mirror"

kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n 1)
[ -n "$kernel" ] && [ -n "$initrd" ] || fail "no kernel or initrd in the root filesystem"
kernel_version=${kernel##*/vmlinuz-}
# Both targets boot slot A from a/ on the boot partition (slot B, later, from b/) with this command line.
cmdline="root=PARTLABEL=system_a rw systemd.show_status=true"
boot=$work/boot
mkdir -p "$boot/a"
cp "$kernel" "$boot/a/vmlinuz"
cp "$initrd" "$boot/a/initrd.img"
cp "$here/boot-readme.txt" "$boot/CAMGATE.TXT"

# UEFI: systemd-boot as the removable-media loader, one entry per slot.
boot_files_x86_64() {
  stage "boot partition (systemd-boot)"
  mkdir -p "$boot/EFI/BOOT" "$boot/loader/entries"
  cp "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$boot/EFI/BOOT/BOOTX64.EFI"
  printf 'default camgate-a.conf\ntimeout 0\nconsole-mode keep\n' >"$boot/loader/loader.conf"
  cat >"$boot/loader/entries/camgate-a.conf" <<ENTRY
title   camgate $version (system A)
linux   /a/vmlinuz
initrd  /a/initrd.img
options $cmdline console=tty0 console=ttyS0,115200
ENTRY
}

# Raspberry Pi: the EEPROM boot loader starts the GPU firmware (start4.elf) from the first FAT partition,
# which reads config.txt and loads Debian's generic arm64 kernel directly (no U-Boot). os_prefix=a/ takes
# the kernel, initramfs, cmdline.txt and device trees from slot A's folder; an update adds b/ and boots it
# once with tryboot.txt (see image/README.md).
boot_files_rpi_arm64() {
  stage "boot partition (Raspberry Pi firmware)"
  local firmware=$root/usr/lib/raspi-firmware dtbs=$root/usr/lib/linux-image-$kernel_version/broadcom dtb
  cp "$firmware/start4.elf" "$firmware/fixup4.dat" "$boot/"
  # Pi 4, 400, CM4. Not the Pi 5: trixie's kernel (6.12) has no driver for its RP1 chip, so no Ethernet.
  cp "$dtbs"/bcm2711-rpi-*.dtb "$boot/a/"
  [ -e "$boot/a/bcm2711-rpi-4-b.dtb" ] || fail "no Raspberry Pi 4 device tree in $dtbs"
  # The Pi reads them from the boot partition only: the root's copies (every arm64 board's device trees,
  # the firmware blobs) would be 80 MB of dead weight.
  rm -rf "$root/usr/lib/linux-image-$kernel_version" "$firmware"
  cat >"$boot/config.txt" <<CONFIG
# camgate: Raspberry Pi 4, 400 and CM4, 64-bit, with Debian's generic arm64 kernel and upstream device
# trees (Debian's raspi-firmware does the same). Slot A's kernel, initramfs, cmdline.txt and device tree
# are under a/.
[all]
arm_64bit=1
upstream_kernel=1
os_prefix=a/
kernel=vmlinuz
initramfs initrd.img followkernel
# Serial console on GPIO 14/15 (ttyS1 in Linux), 115200 baud.
enable_uart=1
CONFIG
  # The kernel's console is the last one: the screen, where the setup code appears on the login banner.
  echo "$cmdline console=ttyS1,115200 console=tty0" >"$boot/a/cmdline.txt"
}
"boot_files_${target//-/_}"
mkdir "$work/images"
# FAT32 (mkfs.vfat would pick FAT16 at this size): what the Pi's firmware and every PC read best.
mkfs.vfat -F 32 -n CAMGATE -C "$work/images/boot.vfat" $((boot_mib * 1024)) >/dev/null
mcopy -s -i "$work/images/boot.vfat" "$boot"/* ::/
# /boot is the boot partition's mount point: the kernel files there are in the partition already.
find "$root/boot" -mindepth 1 -delete

stage "data partition (ext4, grows on first boot)"
# /var/lib and /var/log move there (mounted back by /etc/fstab); the root keeps empty mount points.
data=$work/data
install -d -m 0700 "$data/etc/camgate"
install -d -m 0755 "$data/var"
for dir in lib log; do
  mv "$root/var/$dir" "$data/var/$dir"
  install -d -m 0755 "$root/var/$dir"
done
install -d -m 0700 "$data/var/lib/camgate"
mkfs.ext4 -q -b 4096 -L data -d "$data" -E root_owner=0:0 "$work/images/data.ext4" "${data_mib}M"

stage "system partition (ext4, mounted read-only)"
used=$(du -sm "$root" | cut -f1)
[ "$used" -lt $((system_mib * 8 / 10)) ] || fail "root filesystem ($used MiB) too big for $system_mib MiB"
mkfs.ext4 -q -b 4096 -L system_a -d "$root" -E root_owner=0:0 "$work/images/system.ext4" "${system_mib}M"

stage "disk image (genimage, GPT)"
cat >"$work/genimage.cfg" <<GENIMAGE
image $name.img {
  hdimage {
    partition-table-type = "gpt"
    # Erase blocks of SD cards and SSDs.
    align = 1M
  }
  partition boot {
    image = "boot.vfat"
    partition-type-uuid = "$boot_type"
  }
  # A runs, B is the update slot.
  partition system_a {
    image = "system.ext4"
    partition-type-uuid = "$root_type"
  }
  partition system_b {
    size = ${system_mib}M
    partition-type-uuid = "$root_type"
  }
  # Last, so it can grow into the rest of the medium.
  partition data {
    image = "data.ext4"
    partition-type-uuid = "0fc63daf-8483-4772-8e79-3d69d8477de4"
  }
}
GENIMAGE
mkdir -p "$work/genimage-root" "$work/genimage-tmp" "$out"
genimage --config "$work/genimage.cfg" --rootpath "$work/genimage-root" --tmppath "$work/genimage-tmp" \
  --inputpath "$work/images" --outputpath "$work/images" >/dev/null

stage "compress"
rm -f "$out/$name.img.xz" "$out/$name.img.xz.sha256"
# -1: a few MiB larger than -6 and several times faster.
xz -T0 -1 -c "$work/images/$name.img" >"$out/$name.img.xz"
(cd "$out" && sha256sum "$name.img.xz" >"$name.img.xz.sha256")
stage "done: $out/$name.img.xz ($(du -h "$out/$name.img.xz" | cut -f1), root $used MiB) in $((SECONDS - start)) s"
