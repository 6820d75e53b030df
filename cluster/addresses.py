"""Pools and well-known addresses, as DC/OS had them (DESIGN.md §4). One definition each."""

from __future__ import annotations

import ipaddress

# Named VIPs get one address each from here, allocated by the master.
NAMED_VIP_POOL = ipaddress.IPv4Network("11.0.0.0/8")

# Every node's resolver listens on these (DC/OS's spartan addresses), port 53, UDP and TCP.
RESOLVER_ADDRESSES: tuple[str, ...] = ("198.51.100.1", "198.51.100.2", "198.51.100.3")
DNS_PORT = 53

# The dcos overlay network.
OVERLAY_NAME = "dcos"
OVERLAY_SUBNET = "9.0.0.0/8"
OVERLAY_AGENT_PREFIXLEN = 24
VTEP_SUBNET = "44.128.0.0/20"
VTEP_DEVICE = "vtep1024"
VTEP_VNI = 1024
VTEP_PORT = 64000
VTEP_MAC_PREFIX = "70:b3:d5"
CONTAINER_MTU = 1420

# Host ports an agent offers to tasks.
AGENT_PORT_RANGE = (31000, 32000)

# Well-known ports.
MARATHON_PORT = 8080
MESOS_MASTER_PORT = 5050
AGENT_API_PORT = 5051
AGENT_LOCAL_API = "127.0.0.1:62080"
LEGACY_VIPS_PORT = 61421
AGENT_METRICS_PORT = 61091


def resolv_conf(resolvers: tuple[str, ...] | list[str] = RESOLVER_ADDRESSES) -> str:
    """The resolv.conf that points a task or a node at the node's resolvers: short timeouts,
    so a resolver that is down costs a second, not the libc default of five."""
    return "".join(f"nameserver {address}\n" for address in resolvers) + "options timeout:1 attempts:2\n"
