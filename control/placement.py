"""Where a task may go: resources, host ports and Marathon constraints, decided per agent.

Pure functions over plain data, so the scheduler's matching and the queue's "why is this app
waiting" explanation use the very same rules.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from control.marathon_models import AppDefinition
from control.roles import UNRESERVED

SCALARS = ("cpus", "mem", "disk", "gpus")
# Marathon's offer-rejection reasons (as in /v2/queue processedOffersSummary).
REASON_BY_SCALAR = {"cpus": "InsufficientCpus", "mem": "InsufficientMemory",
                    "disk": "InsufficientDisk", "gpus": "InsufficientGpus"}


@dataclass
class AgentSlot:
    """What the matcher knows of one agent in this cycle."""

    agent_id: str
    hostname: str
    attributes: dict[str, str]
    port_ranges: list[tuple[int, int]]
    used_ports: set[int] = field(default_factory=set)
    role: str = UNRESERVED          # the role its resources are reserved for ("*": none)
    networks: frozenset[str] | None = None      # None: the agent did not report its networks

    def lacks_network(self, name: str | None) -> bool:
        return name is not None and self.networks is not None and name not in self.networks

    def value_of(self, field_name: str) -> str | None:
        if field_name == "hostname":
            return self.hostname
        return self.attributes.get(field_name)

    def free_ports(self) -> Iterable[int]:
        for begin, end in self.port_ranges:
            for port in range(begin, end + 1):
                if port not in self.used_ports:
                    yield port

    def has_port(self, port: int) -> bool:
        return port not in self.used_ports and any(b <= port <= e for b, e in self.port_ranges)


def role_refusal(app: AppDefinition, slot: AgentSlot) -> str | None:
    """Why the app may not use ``slot``'s resources by their role, or None: an agent reserved for
    a role serves only apps whose ``acceptedResourceRoles`` name it; an unreserved one only apps
    accepting ``*`` (Marathon's default)."""
    if slot.role in app.accepted_roles:
        return None
    kind = "unreserved ('*')" if slot.role == UNRESERVED else f"reserved for role {slot.role!r}"
    return f"its resources are {kind}; acceptedResourceRoles is {app.accepted_roles}"


def network_shortfall(app: AppDefinition, slot: AgentSlot) -> str | None:
    """Why ``slot`` cannot attach the app's tasks to its network (Mesos' CNI isolator would fail
    them there); None when it can."""
    name = app.network_name
    if not slot.lacks_network(name):
        return None
    have = ", ".join(sorted(slot.networks or ())) or "none"
    return f"no container network {name!r} (has: {have})"


def task_resources(app: AppDefinition) -> dict[str, float]:
    wanted = {"cpus": app.cpus, "mem": app.mem, "disk": app.disk, "gpus": float(app.gpus)}
    return {k: v for k, v in wanted.items() if v > 0}


def insufficient(needed: dict[str, float], available: dict[str, float]) -> str | None:
    """The first scalar that does not fit, as Marathon names it; None when all fit."""
    for name in SCALARS:
        if needed.get(name, 0.0) > available.get(name, 0.0) + 1e-9:
            return REASON_BY_SCALAR[name]
    return None


def shortfall(needed: dict[str, float], available: dict[str, float]) -> str | None:
    """``insufficient`` in words: ``needs cpus 4, 2 free``."""
    for name in SCALARS:
        if needed.get(name, 0.0) > available.get(name, 0.0) + 1e-9:
            return f"needs {name} {needed[name]:g}, {available.get(name, 0.0):g} free"
    return None


def requested_host_ports(app: AppDefinition) -> list[int | None]:
    """Per port of the app: a fixed host port, 0 for "any", None for "no host port"."""
    if app.uses_port_mappings:
        return [m.host_port for m in app.port_mappings]
    definitions = app.port_definitions or []
    return [d.port if app.require_ports else 0 for d in definitions]


def choose_host_ports(app: AppDefinition, slot: AgentSlot, rng: random.Random) -> list[int | None] | None:
    """Host ports for one task on ``slot`` (random free ones for 0), or None when they do not fit."""
    wanted = requested_host_ports(app)
    fixed = [p for p in wanted if p]
    if len(set(fixed)) != len(fixed) or not all(slot.has_port(p) for p in fixed):
        return None
    dynamic = sum(1 for p in wanted if p == 0)
    chosen: list[int] = []
    if dynamic:
        chosen = _random_free_ports(slot, dynamic, set(fixed), rng)
        if chosen is None:
            return None
    picks = iter(chosen)
    return [next(picks) if p == 0 else p for p in wanted]


def _random_free_ports(slot: AgentSlot, count: int, exclude: set[int], rng: random.Random) -> list[int] | None:
    # Random probes first: cheap while the range is mostly free; the full list when it is not.
    size = sum(e - b + 1 for b, e in slot.port_ranges)
    chosen: list[int] = []
    for _ in range(8 * count):
        if size == 0:
            break
        offset = rng.randrange(size)
        for begin, end in slot.port_ranges:
            if offset <= end - begin:
                port = begin + offset
                break
            offset -= end - begin + 1
        if port not in slot.used_ports and port not in exclude and port not in chosen:
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    free = [p for p in slot.free_ports() if p not in exclude]
    return rng.sample(free, count) if len(free) >= count else None


def constraint_violation(constraints: Sequence[Sequence[str]], slot: AgentSlot,
                         placed: Sequence[AgentSlot], all_slots: Sequence[AgentSlot]) -> str | None:
    """The first constraint ``slot`` breaks given where the app's tasks already are; None when none.

    ``placed`` holds one entry per running task of the app (the agent it runs on).
    """
    for constraint in constraints:
        field_name, operator = constraint[0], constraint[1].upper()
        value = constraint[2] if len(constraint) > 2 else None
        mine = slot.value_of(field_name)
        taken = Counter(s.value_of(field_name) for s in placed)
        text = ":".join(constraint)
        if operator == "UNIQUE":
            if mine is None or taken[mine] > 0:
                return f"constraint {text}: {field_name}={mine} already runs a task"
        elif operator in ("CLUSTER", "IS"):
            target = value if value is not None else next(iter(taken), None)
            if target is not None and mine != target:
                return f"constraint {text}: {field_name}={mine} is not {target}"
            if mine is None:
                return f"constraint {text}: agent has no {field_name}"
        elif operator == "LIKE":
            if mine is None or not re.fullmatch(value or "", mine):
                return f"constraint {text}: {field_name}={mine} does not match"
        elif operator == "UNLIKE":
            if mine is not None and re.fullmatch(value or "", mine):
                return f"constraint {text}: {field_name}={mine} matches"
        elif operator == "MAX_PER":
            if mine is None or taken[mine] >= int(value or 1):
                return f"constraint {text}: {field_name}={mine} already has {taken[mine]}"
        elif operator == "GROUP_BY":
            if mine is None:
                return f"constraint {text}: agent has no {field_name}"
            groups = {s.value_of(field_name) for s in all_slots} - {None}
            least = min((taken[g] for g in groups), default=0)
            if taken[mine] > least:
                return f"constraint {text}: {field_name}={mine} has {taken[mine]} tasks, another group has {least}"
    return None
