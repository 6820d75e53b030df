"""Both dataplanes at once: the eBPF socket LB for sockets opened in the node's cgroup (the
agent's tasks), NFQUEUE for every other packet to a VIP (forwarded packets, processes outside the
cgroup such as an operator's ``ip netns exec … curl``). Connections the socket LB has already
translated never carry a VIP address, so the two never handle the same flow.

```
LoadBalancer ──apply(table)──► LayeredDataplane ──► EbpfDataplane   (connect4/sendmsg4 … maps)
                                               └──► NfqueueDataplane (nft set → queue → conntrack)
```
A VIP counts as programmed only when both layers hold it, so DNS publishes it only then.
"""

from __future__ import annotations

import logging

from minuteman.dataplane import (
    ApplyResult,
    Backend,
    CountsOutcomes,
    Dataplane,
    Maintained,
    ReportsOutcomes,
    Startable,
    VipEntry,
    VipKey,
)

log = logging.getLogger("navstar.minuteman.layered")


class LayeredDataplane:
    def __init__(self, socket_lb: Dataplane, packet_lb: Dataplane) -> None:
        self.socket_lb = socket_lb
        self.packet_lb = packet_lb
        self.name = f"{socket_lb.name}+{packet_lb.name}"
        self._layers = (socket_lb, packet_lb)

    # Every optional ability of the seam, passed on to the layers that have it (with the real
    # layers: NFQUEUE starts, is maintained and reports outcomes; eBPF counts them).

    async def start(self) -> None:
        for layer in self._layers:
            if isinstance(layer, Startable):
                await layer.start()

    def apply(self, table: dict[VipKey, VipEntry]) -> ApplyResult:
        # Each layer on its own: one that fails outright (a map error, say) must not keep the
        # other from being programmed, and its VIPs fail with the reason.
        first, second = (_apply_layer(layer, table) for layer in (self.socket_lb, self.packet_lb))
        errors = {**second.errors, **first.errors}
        return ApplyResult(programmed=(first.programmed & second.programmed) - set(errors),
                           removed=first.removed | second.removed, errors=errors)

    def current(self) -> dict[VipKey, VipEntry]:
        """What both layers hold alike (a VIP that differs between them is drift to repair)."""
        packet = self.packet_lb.current()
        return {key: entry for key, entry in self.socket_lb.current().items() if packet.get(key) == entry}

    def connection_counts(self) -> dict[tuple[VipKey, Backend], int]:
        counts = dict(self.socket_lb.connection_counts())
        for key, count in self.packet_lb.connection_counts().items():
            counts[key] = counts.get(key, 0) + count
        return counts

    def drain_outcomes(self) -> list[tuple[Backend, bool]]:
        return [outcome for layer in self._layers if isinstance(layer, ReportsOutcomes)
                for outcome in layer.drain_outcomes()]

    def outcome_totals(self) -> dict[Backend, tuple[int, int]]:
        totals: dict[Backend, tuple[int, int]] = {}
        for layer in self._layers:
            if isinstance(layer, CountsOutcomes):
                for backend, (ok, failed) in layer.outcome_totals().items():
                    old_ok, old_failed = totals.get(backend, (0, 0))
                    totals[backend] = (old_ok + ok, old_failed + failed)
        return totals

    def maintain(self) -> None:
        for layer in self._layers:
            if isinstance(layer, Maintained):
                layer.maintain()

    def close(self, keep_kernel_state: bool = True) -> None:
        try:
            self.socket_lb.close(keep_kernel_state=keep_kernel_state)
        finally:
            self.packet_lb.close(keep_kernel_state=keep_kernel_state)


def _apply_layer(layer: Dataplane, table: dict[VipKey, VipEntry]) -> ApplyResult:
    try:
        return layer.apply(table)
    except Exception as exc:
        log.exception("the %s layer failed to apply %d VIPs", layer.name, len(table))
        return ApplyResult(errors={key: f"{layer.name}: {exc}" for key in table})
