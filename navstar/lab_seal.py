"""The lab's sealed inside: what the root namespace (the lab's outside, ``198.18.0.1``) may reach.

One nftables table per node namespace, ``inet navstar_seal``, written once by ``lab up`` through
the kernel layer (``kernel.nftables``), gone with the namespace at ``lab down``:

```
root ns 198.18.0.1 ──► master  tcp :80 (Admin Router)          accept
                   ──► master  anything else (:8080, :5050, …)   drop
                   ──► agent   tcp :5051 :62080 :61091 :61421    drop (agent API, local REST, metrics, minuteman)
                   ──► any     the resolvers 198.51.100.0/24      drop
```

Only packets from the operator address are judged; traffic inside the cluster is untouched.
Tasks' host ports on agents stay reachable (the edge issue decides what public agents open).
"""

from __future__ import annotations

from kernel.nftables import Nftables

TABLE = "navstar_seal"
AGENT_PORTS = (5051, 62080, 61091, 61421)
RESOLVERS = "198.51.100.0/24"


def seal_script(operator_ip: str, master: bool) -> str:
    if master:
        rules = [f"ip saddr {operator_ip} tcp dport 80 accept",
                 f"ip saddr {operator_ip} ct state established,related accept",
                 f"ip saddr {operator_ip} counter drop"]
    else:
        ports = ", ".join(str(p) for p in AGENT_PORTS)
        rules = [f"ip saddr {operator_ip} tcp dport {{ {ports} }} counter drop",
                 f"ip saddr {operator_ip} ip daddr {RESOLVERS} counter drop"]
    body = "\n".join(f"    {rule}" for rule in rules)
    return (f"table inet {TABLE} {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n"
            f"{body}\n  }}\n}}\n")


def seal(namespace: str, operator_ip: str, master: bool) -> None:
    """Writes (or rewrites) the node's seal table; idempotent. Raises ``NftablesError``."""
    nft = Nftables(netns=namespace)
    try:
        nft.run_script(f"table inet {TABLE}\ndelete table inet {TABLE}\n" + seal_script(operator_ip, master))
    finally:
        nft.close()
