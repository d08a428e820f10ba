#!/usr/bin/env bash
# Runs cricket's whole test suite: installs the Debian packages the tests use
# (when missing), then unit and integration tests. Needs root (tests mount,
# create namespaces and run a local registry).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(protobuf-compiler docker-registry busybox-static containernetworking-plugins iptables iputils-ping dbus-daemon libseccomp-dev pkg-config runc crun iproute2 openssl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo test --locked "$@"
