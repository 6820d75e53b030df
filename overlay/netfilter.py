"""The overlay's NAT seam: masquerade overlay → elsewhere, and BRIDGE port mappings (DNAT).

``OverlayNetfilter`` is the typed interface; ``FakeNetfilter`` keeps the rules in memory;
``IptablesNetfilter`` is the real one, writing two chains of its own in the ``nat`` table with
``iptables-restore --noflush`` (one atomic transaction; declaring a chain flushes it)::

    PREROUTING  -j NAVSTAR-OVERLAY-PORTS     (from other hosts)
    OUTPUT      -j NAVSTAR-OVERLAY-PORTS     (from the agent itself)
    POSTROUTING -j NAVSTAR-OVERLAY-MASQ
    NAVSTAR-OVERLAY-PORTS -d <agent ip>/32 -p tcp -m tcp --dport <host port> -j DNAT --to-destination <container ip>:<port>
    NAVSTAR-OVERLAY-MASQ  -s 9.0.0.0/8 ! -d 9.0.0.0/8 ! -o vtep1024 -j MASQUERADE

Traffic that leaves through ``vtep1024`` keeps the container's address (peers route it back over
the overlay); everything else leaving the overlay is masqueraded.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from typing import Literal, Protocol

PORTS_CHAIN = "NAVSTAR-OVERLAY-PORTS"
MASQ_CHAIN = "NAVSTAR-OVERLAY-MASQ"
JUMPS = (("PREROUTING", PORTS_CHAIN), ("OUTPUT", PORTS_CHAIN), ("POSTROUTING", MASQ_CHAIN))


class NetfilterError(Exception):
    """iptables refused a change; the message carries its stderr."""


@dataclass(frozen=True, order=True)
class PortMapping:
    host_port: int
    container_ip: str
    container_port: int
    protocol: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True)
class NatRules:
    agent_ip: str
    overlay_subnet: str
    vtep: str
    port_mappings: frozenset[PortMapping] = field(default_factory=frozenset)


class OverlayNetfilter(Protocol):
    def current(self) -> NatRules | None:
        """The rules in place; None when they are missing, partial, or not ones we wrote."""

    def apply(self, rules: NatRules) -> None:
        """Replace our chains with ``rules`` atomically. Raises NetfilterError."""

    def remove(self) -> None:
        """Remove our chains and the jumps to them; nothing there is fine."""


class FakeNetfilter:
    def __init__(self) -> None:
        self.rules: NatRules | None = None
        self.applies = 0
        self.fail = False

    def current(self) -> NatRules | None:
        return self.rules

    def apply(self, rules: NatRules) -> None:
        if self.fail:
            raise NetfilterError("injected failure")
        self.rules = rules
        self.applies += 1

    def remove(self) -> None:
        self.rules = None


# -- iptables --------------------------------------------------------------------------------------
def render(rules: NatRules) -> list[str]:
    """Our chains' rules, exactly as ``iptables-save`` prints them (so reading back compares equal)."""
    lines = [f"-A {MASQ_CHAIN} -s {rules.overlay_subnet} ! -d {rules.overlay_subnet} ! -o {rules.vtep} -j MASQUERADE"]
    for m in sorted(rules.port_mappings):
        lines.append(f"-A {PORTS_CHAIN} -d {rules.agent_ip}/32 -p {m.protocol} -m {m.protocol} --dport {m.host_port} "
                     f"-j DNAT --to-destination {m.container_ip}:{m.container_port}")
    return lines


_MASQ = re.compile(rf"^-A {MASQ_CHAIN} -s (\S+) ! -d (\S+) ! -o (\S+) -j MASQUERADE$")
_PORT = re.compile(rf"^-A {PORTS_CHAIN} -d (\S+)/32 -p (tcp|udp) -m (?:tcp|udp) --dport (\d+) "
                   r"-j DNAT --to-destination ([\d.]+):(\d+)$")


def parse(save_output: str) -> NatRules | None:
    """Our rules from ``iptables-save -t nat`` output, or None if anything is missing or foreign."""
    jumps = {(chain, target): 0 for chain, target in JUMPS}
    masq: list[tuple[str, str, str]] = []
    mappings: set[PortMapping] = set()
    agent_ips: set[str] = set()
    for line in save_output.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "-A" and parts[2] == "-j" and (parts[1], parts[3]) in jumps:
            jumps[(parts[1], parts[3])] += 1
        elif line.startswith(f"-A {MASQ_CHAIN} "):
            match = _MASQ.match(line)
            if match is None:
                return None
            masq.append(match.groups())
        elif line.startswith(f"-A {PORTS_CHAIN} "):
            match = _PORT.match(line)
            if match is None:
                return None
            agent_ip, proto, host_port, container_ip, container_port = match.groups()
            agent_ips.add(agent_ip)
            mappings.add(PortMapping(int(host_port), container_ip, int(container_port), proto))
    if any(count != 1 for count in jumps.values()) or len(masq) != 1 or len(agent_ips) > 1:
        return None
    source, excluded, vtep = masq[0]
    if source != excluded:
        return None
    # With no mappings the agent address is not in the rules; the caller's comparison fills it in.
    return NatRules(agent_ip=agent_ips.pop() if agent_ips else "", overlay_subnet=source, vtep=vtep,
                    port_mappings=frozenset(mappings))


class IptablesNetfilter:
    """Real NAT through iptables(-nft) in network namespace ``netns`` (None: ours)."""

    def __init__(self, netns: str | None = None, timeout: float = 15.0) -> None:
        self.netns = netns
        self.timeout = timeout

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        try:
            done = subprocess.run(prefix + argv, input=stdin, capture_output=True, text=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NetfilterError(f"{argv[0]}: {exc}") from None
        if done.returncode != 0:
            raise NetfilterError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def _save(self) -> str:
        return self._run(["iptables-save", "-t", "nat"])

    def current(self) -> NatRules | None:
        return parse(self._save())

    def apply(self, rules: NatRules) -> None:
        saved = self._save()
        lines = ["*nat", f":{PORTS_CHAIN} - [0:0]", f":{MASQ_CHAIN} - [0:0]", *render(rules)]
        lines += self._fix_jumps(saved)
        lines.append("COMMIT")
        self._run(["iptables-restore", "--noflush"], "\n".join(lines) + "\n")

    @staticmethod
    def _fix_jumps(saved: str) -> list[str]:
        """Exactly one jump per built-in chain, first in the chain."""
        lines = []
        for chain, target in JUMPS:
            count = saved.splitlines().count(f"-A {chain} -j {target}")
            if count != 1:
                lines += [f"-D {chain} -j {target}"] * count
                lines.append(f"-I {chain} 1 -j {target}")
        return lines

    def remove(self) -> None:
        saved = self._save()
        lines = ["*nat"]
        for chain, target in JUMPS:
            lines += [f"-D {chain} -j {target}"] * saved.splitlines().count(f"-A {chain} -j {target}")
        for chain in (PORTS_CHAIN, MASQ_CHAIN):
            if f":{chain} " in saved:
                lines += [f"-F {chain}", f"-X {chain}"]
        if len(lines) > 1:
            self._run(["iptables-restore", "--noflush"], "\n".join(lines + ["COMMIT"]) + "\n")
