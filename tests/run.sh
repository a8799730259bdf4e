#!/usr/bin/env bash
# Runs camgate's whole test suite: unit tests, and integration tests with the
# real binary in network namespaces and real peer programs. Needs root and
# Debian 12 (or later); installs the Debian packages the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "tests/run.sh: run as root: the integration tests create network namespaces" >&2
  exit 1
fi
if ! command -v cargo >/dev/null; then
  echo "tests/run.sh: needs Rust $(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml) (rustup)" >&2
  exit 1
fi

# Peer programs and tools the tests run. Missing ones fail the tests, never skip them.
packages=(iproute2 iputils-ping iputils-arping procps systemd curl openssl motion ffmpeg pebble coturn nftables python3 python3-venv dnsmasq-base udhcpc chrony
  chromium chromium-driver python3-selenium fonts-dejavu-core nodejs
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# npm comes with nodejs from some repositories (NodeSource), as Debian's `npm` package elsewhere.
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]}"
  apt-get update -qq
  # Install services (chrony, coturn) without starting them on this machine: the tests run their own.
  policy_rc_d=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_rc_d=1
  fi
  installed=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    installed=$?
  [ -z "$policy_rc_d" ] || rm -f /usr/sbin/policy-rc.d
  [ "$installed" = 0 ] || exit "$installed"
fi

# playwright-core drives Chromium through the setup wizard (tests/tests/wizard.rs), at
# the version the lockfile pins.
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

# schemathesis fuzzes the admin API from its OpenAPI document (tests/tests/openapi.rs), at the
# versions tests/openapi/requirements.txt pins, in a venv of its own under target/.
[ -x target/openapi-venv/bin/pip ] || python3 -m venv target/openapi-venv
target/openapi-venv/bin/pip install --quiet --disable-pip-version-check -r tests/openapi/requirements.txt

# The integration tests run target/debug/camgate: build it first so they
# never test a stale binary.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"

# The appliance images, built from Debian trixie packages and boot-tested in qemu (image/README.md): x86_64
# with two boots and a camera VM on an 802.1Q VLAN, rpi-arm64 (cross-built) with a smoke boot. Only for
# the whole suite: arguments select tests above.
if [ $# -eq 0 ]; then
  image/build.sh x86_64
  image/test-boot.sh x86_64
  image/build.sh rpi-arm64
  image/test-boot.sh rpi-arm64
fi
