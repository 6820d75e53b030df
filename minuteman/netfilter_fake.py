"""The netfilter seam in memory, for tests: what ``KernelNetfilter`` would hold, and a record of
every call, so a test asserts what the code under test asked for."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from minuteman.dataplane import Backend, VipKey
from minuteman.netfilter import Flow, FlowState, RouteInfo

# The calls that change kernel state (when they are asked for something not there yet).
WRITES = frozenset({"ensure_base", "remove_base", "update_vips", "set_routes", "update_backend_ids"})


@dataclass(frozen=True)
class Call:
    method: str
    args: tuple[Any, ...]


@dataclass
class FakeNetfilter:
    """In memory, with routes given by ``neighbours`` and conntrack entries by ``states``.

    Every call lands in ``calls`` as it was made, whatever it changes: the fake applies what it
    is asked (as the kernel would) and never decides for itself that a call was not needed.
    Tests set ``base``, ``members``, ``routes``, ``nat_map`` to stage drift."""

    base: tuple[int, int, bool] | None = None     # the rules in place: first queue, how many, CPU fanout
    members: set[VipKey] = field(default_factory=set)
    routes: set[str] = field(default_factory=set)
    nat_map: dict[int, Backend] = field(default_factory=dict)
    states: dict[Flow, FlowState] = field(default_factory=dict)
    neighbours: dict[str, RouteInfo] = field(default_factory=dict)
    closed: list[Flow] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    def _record(self, method: str, *args: Any) -> None:
        self.calls.append(Call(method, args))

    def called(self, *methods: str) -> list[Call]:
        """The calls made to ``methods`` (all writes when none are named), in order."""
        names = set(methods) or WRITES
        return [call for call in self.calls if call.method in names]

    def ensure_base(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> None:
        self._record("ensure_base", queue, queues, cpu_fanout)
        self.base = (queue, queues, cpu_fanout)

    def remove_base(self) -> None:
        self._record("remove_base")
        self.base, self.members, self.routes, self.nat_map = None, set(), set(), {}

    def base_intact(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> bool:
        self._record("base_intact", queue, queues, cpu_fanout)
        return self.base == (queue, queues, cpu_fanout)

    def local_routes(self) -> set[str]:
        self._record("local_routes")
        return set(self.routes)

    def vip_members(self) -> set[VipKey]:
        self._record("vip_members")
        return set(self.members)

    def update_vips(self, add: Iterable[VipKey], remove: Iterable[VipKey]) -> dict[VipKey, str]:
        add, remove = set(add), set(remove)
        self._record("update_vips", add, remove)
        self.members = (self.members - remove) | add
        return {}

    def set_routes(self, prefixes: set[str]) -> dict[str, str]:
        self._record("set_routes", set(prefixes))
        self.routes = set(prefixes)
        return {}

    def backend_ids(self) -> dict[int, Backend]:
        self._record("backend_ids")
        return dict(self.nat_map)

    def update_backend_ids(self, add: dict[int, Backend], remove: Iterable[int]) -> None:
        remove = set(remove)
        self._record("update_backend_ids", dict(add), remove)
        for key in remove:
            self.nat_map.pop(key, None)
        self.nat_map.update(add)

    def flow_states(self, flows: list[Flow]) -> list[FlowState | None]:
        self._record("flow_states", list(flows))
        return [self.states.get(flow) for flow in flows]

    def route_to(self, ip: str) -> RouteInfo | None:
        self._record("route_to", ip)
        if ip in self.neighbours:
            return self.neighbours[ip]
        return RouteInfo(1, "10.0.0.1") if ipaddress.ip_address(ip) else None

    def closed_flows(self) -> list[Flow]:
        self._record("closed_flows")
        done, self.closed = self.closed, []
        return done

    def close(self) -> None:
        self._record("close")
