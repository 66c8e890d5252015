#!/usr/bin/env bash
# Install what coreos-lab and its test suite need on a fresh Debian 12 machine: Debian packages and the venv.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  vagrant vagrant-libvirt ruby
  libvirt-daemon-system qemu-system-x86 qemu-utils dnsmasq-base iptables ebtables
  etcd-server etcd-client openssh-server openssh-client sudo
  systemd-container debootstrap iproute2 e2fsprogs curl
  python3-venv docker-registry ignition
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server and ssh start system services on install where systemd runs; the tests start their own.

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: ok ($(.venv/bin/coreos-lab --version))"
