"""Desired overlay state vs the kernel: read, diff, apply only the difference.

Idempotent (a second pass with the same desired state changes nothing) and adopting (whatever a
previous run left that matches is kept, not rebuilt). Errors are recorded in the result and the
metrics, never raised: one bad entry does not stop the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from overlay.desired import DesiredState
from overlay.metrics import OverlayMetrics
from overlay.netlink import (
    Change,
    Entry,
    FdbEntry,
    KernelState,
    Link,
    Neighbour,
    OverlayKernelError,
    OverlayNetlink,
    Route,
    Rule,
)

log = logging.getLogger("navstar.overlay")

_OBJECT = {Neighbour: "neighbour", FdbEntry: "fdb", Route: "route", Rule: "rule"}


@dataclass
class ReconcileResult:
    peers: int = 0
    changes: int = 0
    repairs: int = 0
    errors: list[str] = field(default_factory=list)      # kernel operations that failed
    warnings: list[str] = field(default_factory=list)    # view problems (peers skipped), MTU
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


def link_needs_recreate(have: Link, want: Link) -> bool:
    return have.identity() != want.identity()


def link_needs_update(have: Link, want: Link) -> bool:
    mac_differs = want.mac is not None and (have.mac or "").lower() != want.mac.lower()
    return have.mtu != want.mtu or have.up != want.up or have.addresses != want.addresses or mac_differs


def diff_entries(desired: DesiredState, actual: KernelState) -> list[Change]:
    """Adds (which replace an entry with the same kernel key) first, then deletes of leftovers."""
    adds: list[Entry] = []
    deletes: list[Entry] = []

    want_neigh = {n.ip: n for n in desired.neighbours}
    have_neigh = {n.ip: n for n in actual.neighbours}
    adds += [n for ip, n in want_neigh.items() if have_neigh.get(ip) != n]
    # The kernel keys neighbours by IP: a changed MAC is replaced by the add, not deleted.
    deletes += [n for ip, n in have_neigh.items() if ip not in want_neigh]

    adds += sorted(desired.fdb - actual.fdb)
    deletes += sorted(actual.fdb - desired.fdb)

    want_routes = {(r.dst, r.table): r for r in desired.routes}
    have_routes = {(r.dst, r.table): r for r in actual.routes}
    adds += [r for key, r in want_routes.items() if have_routes.get(key) != r]
    deletes += [r for key, r in have_routes.items() if key not in want_routes]

    adds += sorted(desired.rules - actual.rules)
    deletes += sorted(actual.rules - desired.rules)
    return [Change("add", e) for e in adds] + [Change("delete", e) for e in deletes]


class OverlayReconciler:
    """Owns no state but the last desired state it fully programmed (to tell repairs apart)."""

    def __init__(self, netlink: OverlayNetlink, metrics: OverlayMetrics | None = None) -> None:
        self.netlink = netlink
        self.metrics = metrics or OverlayMetrics.for_registry()
        self._programmed: DesiredState | None = None

    def reconcile(self, desired: DesiredState) -> ReconcileResult:
        started = time.perf_counter()
        result = ReconcileResult()
        try:
            self._reconcile(desired, result)
        except OverlayKernelError as exc:     # reading the kernel failed: nothing to diff against
            self._error(result, "read", str(exc))
        result.duration_seconds = time.perf_counter() - started
        self.metrics.reconcile_duration.observe(result.duration_seconds)
        self.metrics.reconcile_runs.labels("ok" if result.ok else "error").inc()
        if result.ok:
            self._programmed = desired
        if result.changes:
            log.info("overlay: %d peers, %d changes (%d repairs) in %.3fs", result.peers, result.changes,
                     result.repairs, result.duration_seconds)
        return result

    def _reconcile(self, desired: DesiredState, result: ReconcileResult) -> None:
        if desired.mtu.warning:
            result.warnings.append(desired.mtu.warning)
            if self._programmed is None or self._programmed.mtu != desired.mtu:
                log.warning("overlay: %s", desired.mtu.warning)
        for agent_id, reason in desired.skipped.items():
            result.warnings.append(f"peer {agent_id} not programmed: {reason}")
            self.metrics.errors.labels("view").inc()
            log.warning("overlay: peer %s not programmed: %s", agent_id, reason)
        actual = self.netlink.read(desired.vtep.name, [b.name for b in desired.bridges])
        vtep_ok = self._reconcile_links(desired, actual, result)
        if not actual.ip_forwarding:
            try:
                self.netlink.set_ip_forwarding(True)
                self._count(result, "sysctl", "set", self._programmed is not None)
            except OverlayKernelError as exc:
                self._error(result, "sysctl", str(exc))
        if not vtep_ok:
            self.metrics.peers.set(0)
            return
        changes = diff_entries(desired, actual)
        failed = self.netlink.apply(desired.vtep.name, changes) if changes else []
        for failure in failed:
            kind = _OBJECT[type(failure.change.entry)]
            self._error(result, kind, f"{failure.change.action} {failure.change.entry}: {failure.reason}")
        failed_changes = {f.change for f in failed}
        before = self._known_entries()
        for change in changes:
            if change not in failed_changes:
                self._count(result, _OBJECT[type(change.entry)], change.action,
                            change.action == "add" and change.entry in before)
        broken = {f.change.entry for f in failed if f.change.action == "add"}
        result.peers = sum(1 for n in desired.neighbours if n not in broken)
        self.metrics.peers.set(result.peers)

    def _reconcile_links(self, desired: DesiredState, actual: KernelState, result: ReconcileResult) -> bool:
        """Links first: entries hang off them. False when the VXLAN device could not be made right."""
        vtep_ok = True
        known = {link.name: link for link in self._programmed.links} if self._programmed else {}
        for want in desired.links:
            have = actual.links.get(want.name)
            repair = known.get(want.name) == want
            try:
                if have is not None and link_needs_recreate(have, want):
                    log.warning("overlay: re-creating %s (%s, want %s)", want.name, have.identity(), want.identity())
                    self.netlink.delete_link(want.name)
                    if want is desired.vtep:   # its entries went with it
                        actual.neighbours.clear()
                        actual.fdb.clear()
                        actual.routes.clear()
                    have = None
                if have is None:
                    self.netlink.create_link(want)
                    self._count(result, "link", "create", repair)
                elif link_needs_update(have, want):
                    self.netlink.update_link(want)
                    self._count(result, "link", "update", repair)
            except OverlayKernelError as exc:
                self._error(result, "link", str(exc))
                if want is desired.vtep:
                    vtep_ok = False
        return vtep_ok

    def _known_entries(self) -> set[Entry]:
        p = self._programmed
        return set(p.neighbours | p.fdb | p.routes | p.rules) if p else set()

    def _count(self, result: ReconcileResult, kind: str, action: str, repair: bool) -> None:
        result.changes += 1
        self.metrics.changes.labels(kind, action).inc()
        if repair:
            result.repairs += 1
            self.metrics.repairs.labels(kind).inc()

    def _error(self, result: ReconcileResult, stage: str, message: str) -> None:
        result.errors.append(message)
        self.metrics.errors.labels(stage).inc()
        log.warning("overlay: %s", message)
