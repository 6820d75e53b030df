"""The overlay's nftables NAT seam in a fresh namespace: round trip, repair, clean removal, and
the iptables chains of earlier versions removed."""

from __future__ import annotations

from overlay.netfilter import NatRules, PortMapping
from overlay.netfilter_kernel import NftablesNetfilter

RULES = NatRules("198.18.150.11", "9.0.0.0/8", "vtep1024",
                 frozenset({PortMapping(31000, "9.0.0.130", 80), PortMapping(31001, "9.0.0.131", 53, "udp")}))


def test_apply_read_back_repair_and_remove(netns) -> None:
    # What an earlier version left: iptables-nft chains and their jumps.
    for chain, parent in (("NAVSTAR-OVERLAY-PORTS", "PREROUTING"), ("NAVSTAR-OVERLAY-MASQ", "POSTROUTING")):
        netns.run("iptables", "-t", "nat", "-N", chain)
        netns.run("iptables", "-t", "nat", "-A", parent, "-j", chain)
    nat = NftablesNetfilter(netns.name)
    assert nat.current() is None
    nat.apply(RULES)
    assert nat.current() == RULES
    assert "NAVSTAR" not in netns.run("iptables-save", "-t", "nat").stdout
    table = netns.run("nft", "list", "table", "ip", "navstar-overlay").stdout
    assert "udp dport 31001 dnat to 9.0.0.131:53" in table and table.count("jump ports") == 2
    assert 'oifname != "vtep1024" masquerade' in table

    # Someone removes a jump, or adds a rule of their own: read shows drift, apply makes it exact again.
    netns.run("nft", "flush", "chain", "ip", "navstar-overlay", "ports-output")
    assert nat.current() is None
    nat.apply(RULES)
    assert nat.current() == RULES
    netns.run("nft", "add", "rule", "ip", "navstar-overlay", "masq-postrouting", "accept")
    assert nat.current() is None
    nat.apply(RULES)
    assert nat.current() == RULES

    fewer = NatRules(RULES.agent_ip, RULES.overlay_subnet, RULES.vtep, frozenset())
    nat.apply(fewer)
    assert "dnat" not in netns.run("nft", "list", "table", "ip", "navstar-overlay").stdout
    assert nat.current() == NatRules("", RULES.overlay_subnet, RULES.vtep)

    nat.remove()
    nat.remove()
    assert "navstar" not in netns.run("nft", "list", "ruleset").stdout
    nat.close()
