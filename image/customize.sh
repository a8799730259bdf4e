#!/usr/bin/env bash
# mmdebstrap customize hook: turns the bootstrapped tree ($1) into the appliance's root filesystem.
# Usage (from build.sh): customize.sh ROOT CAMGATE_BINARY
set -euo pipefail
root=$1
bin=$2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

install -m 0755 "$bin" "$root/usr/bin/camgate"
# rootfs/ verbatim (its README aside), owned by root, leaving existing folders' modes alone. /etc/camgate
# is the data partition's at run time, so the reference config copied there stays hidden under it (setup
# mode starts without a config); it is kept readable beside the docs.
tar -C "$repo/rootfs" --exclude=./README.md --owner=0 --group=0 -cf - . | tar -C "$root" --no-overwrite-dir -xf -
install -D -m 0644 "$repo/rootfs/etc/camgate/camgate.toml" "$root/usr/share/doc/camgate/camgate.toml"

# Mount points of the read-only root: the data partition and what is bound from it.
install -d -m 0755 "$root/data"
install -d -m 0700 "$root/etc/camgate"
install -d -m 2755 "$root/var/log/journal"

# First boot: an empty machine-id (systemd writes a new one while the root is still read-write, before
# systemd-remount-fs makes it read-only), no host keys, no SSH server, root locked, no other login.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
chroot "$root" passwd --lock root >/dev/null
echo camgate >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tcamgate\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"

# build.sh kept update-initramfs from running during the installation: now, once.
rm "$root/usr/sbin/update-initramfs"
chroot "$root" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
chroot "$root" update-initramfs -c -k all >/dev/null

chroot "$root" systemctl enable camgate.service camgate-boot-files.path camgate-import-config.service \
  systemd-networkd.service avahi-daemon.service >/dev/null 2>&1
# The appliance keeps time with chrony (its camera NTP server runs under camgate).
chroot "$root" systemctl enable chrony.service >/dev/null 2>&1 || true
# No apt caches in the image.
rm -rf "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
