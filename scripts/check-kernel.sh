#!/usr/bin/env bash
# Stops with one clear line when the kernel lacks a feature navstar needs.
set -uo pipefail
fail() { printf 'setup: this kernel lacks %s, which navstar needs\n' "$1" >&2; exit 1; }

probe="navstar-probe-$$"
ip netns add "$probe" 2>/dev/null || fail "network namespaces (ip netns add failed)"
trap 'ip netns del "$probe" 2>/dev/null' EXIT
in_ns() { ip netns exec "$probe" "$@" >/dev/null 2>&1; }

in_ns ip link add vx-probe type vxlan id 42 dstport 4789 nolearning || fail "VXLAN (ip link add type vxlan)"
in_ns ip link add br-probe type bridge || fail "bridges (ip link add type bridge)"
in_ns ip link add ve-a type veth peer name ve-b || fail "veth pairs"
in_ns iptables -t raw -A PREROUTING -p tcp --syn -j NFQUEUE --queue-num 1 --queue-bypass \
  || fail "NFQUEUE (iptables -j NFQUEUE)"
in_ns ipset create probe hash:ip,port || fail "ipset (hash:ip,port)"
in_ns ipset destroy probe
[ -d /sys/fs/cgroup/unified ] || [ -f /sys/fs/cgroup/cgroup.controllers ] || fail "cgroup v2 (for BPF cgroup programs)"
bpftool feature probe kernel 2>/dev/null | grep -c 'program_type cgroup_sock_addr is available' >/dev/null \
  || fail "BPF cgroup/sock_addr programs (connect4, sendmsg4)"
exit 0
