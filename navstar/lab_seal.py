"""The lab's sealed inside: what the root namespace (the lab's outside, ``198.18.0.1``) may reach.

One nftables table per node namespace, ``inet navstar_seal``, written once by ``lab up`` through
the kernel layer (``kernel.nftables``), gone with the namespace at ``lab down``:

```
root ns 198.18.0.1 ──► master        tcp :80 (Admin Router)                        accept
                   ──► master        anything else (:8080, :5050, …)                 drop
                   ──► public agent  tcp :80 :443 :9090 :10000-10100 (marathon-lb)   accept
                   ──► public agent  anything else (:5051, :62080, task ports, …)    drop
                   ──► agent         tcp :5051 :62080 :61091 :61421                  drop (agent API, local REST, metrics, minuteman)
                   ──► any agent     the resolvers 198.51.100.0/24                   drop
```

Only packets from the operator address are judged; traffic inside the cluster is untouched.
A public agent is judged on the input hook and on the forward hook (a bridge-mode task's host
port is forwarded into the task's namespace), by the port the client asked for (conntrack's
original destination port, which DNAT does not change). Private agents' task host ports stay
reachable from the root namespace, as they were before public agents existed.
"""

from __future__ import annotations

from typing import Literal

from kernel.nftables import Nftables

TABLE = "navstar_seal"
AGENT_PORTS = (5051, 62080, 61091, 61421)
# marathon-lb's HAProxy on DC/OS public agents: vhosts, TLS, stats, service ports.
PUBLIC_SERVICE_PORTS = ("80", "443", "9090", "10000-10100")
RESOLVERS = "198.51.100.0/24"
NodeKind = Literal["master", "public", "agent"]


def seal_script(operator_ip: str, kind: NodeKind) -> str:
    forward: list[str] = []
    if kind == "master":
        rules = [f"ip saddr {operator_ip} tcp dport 80 accept",
                 f"ip saddr {operator_ip} ct state established,related accept",
                 f"ip saddr {operator_ip} counter drop"]
    elif kind == "public":
        ports = ", ".join(PUBLIC_SERVICE_PORTS)
        rules = [f"ip saddr {operator_ip} ct state established,related accept",
                 f"ip saddr {operator_ip} ip daddr != {RESOLVERS} meta l4proto tcp "
                 f"ct original proto-dst {{ {ports} }} accept",
                 f"ip saddr {operator_ip} counter drop"]
        forward = rules
    else:
        ports = ", ".join(str(p) for p in AGENT_PORTS)
        rules = [f"ip saddr {operator_ip} tcp dport {{ {ports} }} counter drop",
                 f"ip saddr {operator_ip} ip daddr {RESOLVERS} counter drop"]

    def chain(hook: str, body: list[str]) -> str:
        lines = "\n".join(f"    {rule}" for rule in body)
        return f"  chain {hook} {{\n    type filter hook {hook} priority -10; policy accept;\n{lines}\n  }}\n"

    return f"table inet {TABLE} {{\n{chain('input', rules)}{chain('forward', forward) if forward else ''}}}\n"


def seal(namespace: str, operator_ip: str, kind: NodeKind) -> None:
    """Writes (or rewrites) the node's seal table; idempotent. Raises ``NftablesError``."""
    nft = Nftables(netns=namespace)
    try:
        nft.run_script(f"table inet {TABLE}\ndelete table inet {TABLE}\n" + seal_script(operator_ip, kind))
    finally:
        nft.close()
