"""The iptables NAT seam in a fresh namespace: round trip, repair of our jumps, clean removal."""

from __future__ import annotations

from overlay.netfilter import IptablesNetfilter, NatRules, PortMapping

RULES = NatRules("198.18.150.11", "9.0.0.0/8", "vtep1024",
                 frozenset({PortMapping(31000, "9.0.0.130", 80), PortMapping(31001, "9.0.0.131", 53, "udp")}))


def test_apply_read_back_repair_and_remove(netns) -> None:
    nat = IptablesNetfilter(netns.name)
    assert nat.current() is None
    nat.apply(RULES)
    assert nat.current() == RULES
    saved = netns.run("iptables-save", "-t", "nat").stdout
    assert "-A PREROUTING -j NAVSTAR-OVERLAY-PORTS" in saved and "-A OUTPUT -j NAVSTAR-OVERLAY-PORTS" in saved
    assert "--dport 31001 -j DNAT --to-destination 9.0.0.131:53" in saved

    # Someone removes a jump and duplicates another: read shows drift, apply makes it exact again.
    netns.run("iptables", "-t", "nat", "-D", "OUTPUT", "-j", "NAVSTAR-OVERLAY-PORTS")
    netns.run("iptables", "-t", "nat", "-A", "POSTROUTING", "-j", "NAVSTAR-OVERLAY-MASQ")
    assert nat.current() is None
    nat.apply(RULES)
    assert nat.current() == RULES
    saved = netns.run("iptables-save", "-t", "nat").stdout
    assert saved.count("-j NAVSTAR-OVERLAY-MASQ") == 1

    fewer = NatRules(RULES.agent_ip, RULES.overlay_subnet, RULES.vtep, frozenset())
    nat.apply(fewer)
    assert "DNAT" not in netns.run("iptables-save", "-t", "nat").stdout

    nat.remove()
    nat.remove()
    assert "NAVSTAR" not in netns.run("iptables-save", "-t", "nat").stdout
