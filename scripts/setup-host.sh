#!/usr/bin/env bash
# Install the Debian packages a node and the test bed need; skip what is already installed.
set -euo pipefail
packages=(
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
  python3-libvirt python3-lxml python3-netaddr python3-venv python3-dev gcc
  cpio busybox-static e2fsprogs procps iproute2 shellcheck
  chromium  # the core map's browser test (tests/integration/test_report_browser.py)
  # tools/prodnode/prodnode.sh: the production-like node's root tree, its SSH key and client
  debootstrap openssh-client
  gnutls-bin  # certtool: the multinode test bed's TLS PKI (tools/multinode/nodes.sh)
  polkitd dbus-daemon  # the polkit access driver test (nodes.sh start-acl, test_allowed_users.py)
  # the static noise probe (tools/noise, make noise and tools/guest/build-image.sh): libc.a
  libc6-dev
)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup-host: installing ${missing[*]}"
  [[ $(id -u) == 0 ]] || { echo "setup-host: run as root (apt-get install ${missing[*]})" >&2; exit 1; }
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confnew "${missing[@]}"
else
  echo "setup-host: packages present"
fi
