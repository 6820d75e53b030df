"""The overlay's NAT seam for real: one nftables table, ``ip navstar-overlay``, through libnftables
(``kernel.nftables``), in the agent's network namespace or a named one; no process is started::

    chain ports-prerouting  (nat prerouting, dstnat)  jump ports        from other hosts
    chain ports-output      (nat output, -100)        jump ports        from the agent itself
    chain ports             ip daddr <agent ip> tcp dport <host port> dnat to <container ip>:<port>  (one a mapping)
    chain masq-postrouting  (nat postrouting, srcnat)
                            ip saddr 9.0.0.0/8 ip daddr != 9.0.0.0/8 oifname != "vtep1024" masquerade

``apply`` replaces the whole table in one transaction; ``current`` reads it back as JSON and
accepts it only if it is exactly what ``apply`` would write for the values found in it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from kernel.nftables import Command, Nftables, NftablesError, NotFound, without_handles
from overlay.netfilter import NatRules, NetfilterError, PortMapping

TABLE = "navstar-overlay"
PORTS_CHAIN = "ports"
MASQ_CHAIN = "masq-postrouting"
# Left by earlier versions (iptables-nft chains NAVSTAR-OVERLAY-PORTS/-MASQ in table nat).
LEGACY_CHAIN_PREFIX = "NAVSTAR-OVERLAY-"

_IN_TABLE = {"family": "ip", "table": TABLE}
_TABLE = {"family": "ip", "name": TABLE}


def _hook(hook: str, prio: int) -> dict[str, Any]:
    return {"type": "nat", "hook": hook, "prio": prio, "policy": "accept"}


_CHAINS: dict[str, dict[str, Any]] = {     # chain → its hook ({} for a regular chain)
    PORTS_CHAIN: {},
    "ports-prerouting": _hook("prerouting", -100),
    "ports-output": _hook("output", -100),
    MASQ_CHAIN: _hook("postrouting", 100),
}


def _match(op: str, left: Command, right: Any) -> Command:
    return {"match": {"op": op, "left": left, "right": right}}


def _field(protocol: str, name: str) -> Command:
    return {"payload": {"protocol": protocol, "field": name}}


def _prefix(subnet: str) -> Command:
    network = ipaddress.IPv4Network(subnet)
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def masquerade_rule(subnet: str, vtep: str) -> list[Command]:
    """The overlay subnet leaving elsewhere than the overlay and not through the VTEP."""
    return [_match("==", _field("ip", "saddr"), _prefix(subnet)), _match("!=", _field("ip", "daddr"), _prefix(subnet)),
            _match("!=", {"meta": {"key": "oifname"}}, vtep), {"masquerade": None}]


def port_rule(agent_ip: str, mapping: PortMapping) -> list[Command]:
    return [_match("==", _field("ip", "daddr"), agent_ip), _match("==", _field(mapping.protocol, "dport"), mapping.host_port),
            {"dnat": {"addr": mapping.container_ip, "port": mapping.container_port}}]


def rules_by_chain(rules: NatRules) -> dict[str, list[list[Command]]]:
    """Our chains' rules as libnftables writes them and reads them back."""
    return {PORTS_CHAIN: [port_rule(rules.agent_ip, m) for m in sorted(rules.port_mappings)],
            "ports-prerouting": [[{"jump": {"target": PORTS_CHAIN}}]],
            "ports-output": [[{"jump": {"target": PORTS_CHAIN}}]],
            MASQ_CHAIN: [masquerade_rule(rules.overlay_subnet, rules.vtep)]}


def table_commands(rules: NatRules) -> list[Command]:
    """One transaction that leaves exactly ``rules`` in the table, whatever was there."""
    commands: list[Command] = [{"add": {"table": _TABLE}}, {"delete": {"table": _TABLE}}, {"add": {"table": _TABLE}}]
    commands += [{"add": {"chain": {**_IN_TABLE, "name": name, **hook}}} for name, hook in _CHAINS.items()]
    commands += [{"add": {"rule": {**_IN_TABLE, "chain": chain, "expr": expr}}}
                 for chain, exprs in rules_by_chain(rules).items() for expr in exprs]
    return commands


def rules_of(objects: list[Command]) -> NatRules | None:
    """The rules a table read back holds, or None if it is not exactly a table we write."""
    chains: dict[str, dict] = {}
    found: dict[str, list[list[Command]]] = {name: [] for name in _CHAINS}
    for obj in without_handles(objects):
        if "chain" in obj:
            chains[obj["chain"]["name"]] = obj["chain"]
        elif "rule" in obj:
            found.setdefault(obj["rule"]["chain"], []).append(obj["rule"]["expr"])
        elif "table" not in obj:
            return None     # sets, maps ...: not ours
    if chains != {name: {**_IN_TABLE, "name": name, **hook} for name, hook in _CHAINS.items()} or len(found[MASQ_CHAIN]) != 1:
        return None
    try:        # the values, read off the rules where they sit; then the whole must render back
        saddr, _, oifname, _ = found[MASQ_CHAIN][0]
        prefix = saddr["match"]["right"]["prefix"]
        subnet = f"{prefix['addr']}/{prefix['len']}"
        agent_ips = {rule[0]["match"]["right"] for rule in found[PORTS_CHAIN]}
        mappings = frozenset(PortMapping(rule[1]["match"]["right"], rule[2]["dnat"]["addr"], rule[2]["dnat"]["port"],
                                         rule[1]["match"]["left"]["payload"]["protocol"]) for rule in found[PORTS_CHAIN])
        rules = NatRules(agent_ip=next(iter(agent_ips)) if len(agent_ips) == 1 else "", overlay_subnet=subnet,
                         vtep=oifname["match"]["right"], port_mappings=mappings)
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return rules if len(agent_ips) <= 1 and found == rules_by_chain(rules) else None


class NftablesNetfilter:
    """Real NAT in network namespace ``netns`` (None: ours)."""

    def __init__(self, netns: str | None = None) -> None:
        try:
            self._nft = Nftables(netns)
        except (OSError, NftablesError) as exc:
            raise NetfilterError(f"nftables in {netns or 'this namespace'}: {exc}") from None

    def current(self) -> NatRules | None:
        try:
            return rules_of(self._nft.read({"table": _TABLE}))
        except NotFound:
            return None
        except NftablesError as exc:
            raise NetfilterError(f"reading table {TABLE}: {exc}") from None

    def apply(self, rules: NatRules) -> None:
        try:
            self._nft.run(table_commands(rules))
        except NftablesError as exc:
            raise NetfilterError(f"table {TABLE}: {exc}") from None
        self._remove_legacy()

    def remove(self) -> None:
        try:
            self._nft.delete_table("ip", TABLE)
        except NftablesError as exc:
            raise NetfilterError(f"removing table {TABLE}: {exc}") from None
        self._remove_legacy()

    def _remove_legacy(self) -> None:
        try:
            self._nft.remove_xtables_chains(LEGACY_CHAIN_PREFIX, ("nat",))
        except NftablesError as exc:
            raise NetfilterError(f"removing the iptables chains of earlier versions: {exc}") from None

    def close(self) -> None:
        self._nft.close()
