"""Offer matching: which app's next tasks an offer takes, on which host ports, and why not.

``fill_offer`` places tasks on one DRF offer, one per app per pass so apps share an agent
fairly, by the rules of ``control.placement`` (resources, host ports, constraints); apps it
cannot place collect Marathon's reject reasons. ``explain`` says in words why an app's next task
fits no agent (``/v2/queue``). No state of its own: the scheduler turns placements into tasks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from control.drf import Offer
from control.marathon_models import AppDefinition
from control.placement import (
    AgentSlot,
    choose_host_ports,
    constraint_violation,
    insufficient,
    network_shortfall,
    role_refusal,
    shortfall,
    task_resources,
)
from control.registry import AgentRecord
from control.task_record import TaskRecord

EXPLAIN_AGENTS = 10                     # agents named in a queued app's explanation
# Marathon has no reason for it (Mesos failed such tasks); a queue entry names it instead.
NETWORK_UNAVAILABLE = "UnavailableNetwork"


def framework_for(role: str) -> str:
    """Marathon registers once per role it serves (DRF shares are per role); ids hold no '/'."""
    return "marathon" if role == "*" else "marathon-" + role.replace("/", "|")


@dataclass
class Placement:
    """One task to create: ``app`` on ``slot`` with these host ports, from ``framework_id``'s offer."""

    app: AppDefinition
    slot: AgentSlot
    host_ports: list[int | None]
    framework_id: str


def agent_slots(agents: Iterable[AgentRecord], tasks: Iterable[TaskRecord]) -> dict[str, AgentSlot]:
    """Reachable agents with the host ports their live tasks hold."""
    slots: dict[str, AgentSlot] = {}
    for record in agents:
        if not record.reachable:
            continue
        reg = record.registration
        slots[reg.agent_id] = AgentSlot(
            agent_id=reg.agent_id, hostname=reg.hostname,
            attributes={k: str(v) for k, v in reg.attributes.items()},
            port_ranges=[(r.begin, r.end) for r in reg.resources.ports], role=reg.role,
            networks=frozenset(reg.networks) if reg.networks is not None else None)
    for task in tasks:
        if not task.terminal and task.agent_id in slots:
            slots[task.agent_id].used_ports.update(task.host_ports)
    return slots


def fill_offer(offer: Offer, ready: dict[str, int], apps: dict[str, AppDefinition], slots: dict[str, AgentSlot],
               placed_on: dict[str, list[AgentSlot]], rejects: dict[str, dict[str, int]],
               rng: random.Random, remaining: dict[str, float] | None = None,
               limit: int | None = None) -> tuple[dict[str, float], list[Placement]]:
    """Places what fits on ``offer`` (at most ``limit`` tasks); returns the resources used and
    the placements.

    Updates in place: ``ready`` (instances still wanted per app), the slot's used ports,
    ``placed_on`` (where each app's tasks are), ``rejects`` (per app: reason → offers; one
    count per call) and ``remaining`` (what is left of the offer; default: all of it, a copy),
    so a caller can come back to the same offer in several slices."""
    slot = slots.get(offer.agent_id)
    remaining = dict(offer.resources) if remaining is None else remaining
    used: dict[str, float] = {}
    placed: list[Placement] = []
    if slot is None:
        return used, placed
    counted: set[str] = set()      # apps whose rejection this offer already counted

    def reject(app_id: str, reason: str) -> None:
        if app_id not in counted:
            counted.add(app_id)
            rejects[app_id][reason] = rejects[app_id].get(reason, 0) + 1

    progress = True
    while progress and (limit is None or len(placed) < limit):
        progress = False
        for app_id in list(ready):
            if limit is not None and len(placed) >= limit:
                break
            if ready[app_id] <= 0:
                continue
            app = apps[app_id]
            if framework_for(app.effective_role) != offer.framework_id:
                continue
            reason = reject_reason(app, slot, remaining, placed_on[app_id], slots)
            if reason is not None:
                reject(app_id, reason)
                continue
            host_ports = choose_host_ports(app, slot, rng)
            if host_ports is None:
                reject(app_id, "InsufficientPorts")
                continue
            for name, value in task_resources(app).items():
                remaining[name] = remaining.get(name, 0.0) - value
                used[name] = used.get(name, 0.0) + value
            slot.used_ports.update(p for p in host_ports if p)
            placed_on[app_id].append(slot)
            placed.append(Placement(app, slot, host_ports, offer.framework_id))
            ready[app_id] -= 1
            progress = True
    return used, placed


def reject_reason(app: AppDefinition, slot: AgentSlot, available: dict[str, float],
                  placed: list[AgentSlot], slots: dict[str, AgentSlot]) -> str | None:
    """Marathon's reason the app's next task does not fit ``available`` on ``slot``; None: it fits."""
    if role_refusal(app, slot) is not None:
        return "UnfulfilledRole"
    if network_shortfall(app, slot) is not None:
        return NETWORK_UNAVAILABLE
    short = insufficient(task_resources(app), available)
    if short is not None:
        return short
    if constraint_violation(app.constraints, slot, placed, usable_slots(app, slots)) is not None:
        return "UnfulfilledConstraint"
    return None


def usable_slots(app: AppDefinition, slots: dict[str, AgentSlot]) -> list[AgentSlot]:
    """The agents whose resources the app may use by role (GROUP_BY balances over these only)."""
    return [slot for slot in slots.values() if role_refusal(app, slot) is None]


def explain(app: AppDefinition, slots: dict[str, AgentSlot], placed: list[AgentSlot],
            free_of: Callable[[str], dict[str, float]]) -> str:
    """Why the app's next task fits no agent, in words (the first agents checked, then a count).
    ``free_of(agent_id)``: the agent's unallocated resources ({} when unknown)."""
    if not slots:
        return "no reachable agents"
    needed = task_resources(app)
    usable = usable_slots(app, slots)
    why: list[str] = []
    for slot in slots.values():
        reason = role_refusal(app, slot) \
            or network_shortfall(app, slot) \
            or shortfall(needed, free_of(slot.agent_id)) \
            or constraint_violation(app.constraints, slot, placed, usable) \
            or ("requested host ports are not free" if choose_host_ports(app, slot, random.Random(0)) is None
                else "fits, waiting for an offer")
        why.append(f"{slot.agent_id}: {reason}")
    shown = why[:EXPLAIN_AGENTS]
    more = f"; … and {len(why) - len(shown)} more agents" if len(why) > len(shown) else ""
    return "; ".join(shown) + more
