#!/usr/bin/env bash
# One-time, idempotent set-up for a fresh Debian 12 machine: Debian packages, kernel headers
# for bcc, bpffs, a kernel feature check, and the project's virtual environment.
# A second run finds everything in place and returns within seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "root is needed (network namespaces, cgroups, BPF); run: sudo make setup"

DEBIAN_PACKAGES=(
  iptables nftables python3-nftables ipset conntrack libnetfilter-queue-dev
  bpfcc-tools python3-bpfcc clang llvm bpftool
  iproute2 iputils-ping procps psmisc curl dnsutils
  nginx-light dnsmasq-base dnsperf iperf3
  prometheus vagrant
  haproxy siege wrk unbound
  zookeeper default-jre-headless
  containernetworking-plugins
  chromium chromium-driver
  python3-venv python3-dev build-essential
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# nginx-light enables its own service on install; the project starts nginx itself, per task.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled nginx >/dev/null 2>&1; then
  systemctl disable --now nginx >/dev/null 2>&1 || true
fi
# Debian's prometheus, haproxy, zookeeper and unbound do the same; the project runs its own
# copies inside the lab's namespaces (navstar lab up --prometheus, marathon-lb, --masters 3, bench).
for unit in prometheus haproxy zookeeper unbound; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled "$unit" >/dev/null 2>&1; then
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  fi
done

# bcc compiles BPF C against kernel headers. This kernel ships none, so borrow Debian's
# cloud 6.1 headers (the BPF UAPI that socket-LB programs use is the same).
KBUILD="/lib/modules/$(uname -r)/build"
if [ ! -e "$KBUILD/include" ]; then
  hdr=$(dpkg-query -W -f='${Package}\n' 'linux-headers-6.1.*-cloud-amd64' 2>/dev/null | head -n1 || true)
  if [ -z "$hdr" ]; then
    apt-get update -qq
    hdr=$(apt-cache search --names-only '^linux-headers-6\.1\..*-cloud-amd64$' | awk '{print $1}' | sort -V | tail -n1)
    [ -n "$hdr" ] || die "no linux-headers-6.1.*-cloud-amd64 package found for bcc"
    say "installing $hdr for bcc"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$hdr" >/dev/null
  fi
  common="/usr/src/${hdr%-cloud-amd64}-common"
  mkdir -p "/lib/modules/$(uname -r)"
  ln -sfn "/usr/src/$hdr" "$KBUILD"
  ln -sfn "$common" "/lib/modules/$(uname -r)/source"
  say "linked $KBUILD -> /usr/src/$hdr"
fi

# Pinned BPF maps live on bpffs.
if ! mountpoint -q /sys/fs/bpf; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi

scripts/check-kernel.sh

# Virtual environment from Debian's python3 (bcc's bindings are built for it), with system
# site packages; reinstalled only when pyproject.toml changes.
STAMP=.venv/.navstar-installed
if [ ! -x .venv/bin/python ] || [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  say "creating .venv and installing navstar (editable, with test extras)"
  [ -x .venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$STAMP"
fi
say "ready"
