"""Dominant Resource Fairness, with Mesos' semantics (pure Python, no I/O).

Three layers, each usable on its own:

* :class:`DRFSorter` — the hierarchical DRF sorter of Mesos' allocator
  (``src/master/allocator/sorter/drf``): clients are paths (``"a/b"``); a node's allocation is
  the sum of its subtree; siblings are ordered by dominant share (max over scalar resources of
  allocated ÷ cluster total, divided by the node's weight), then by fewer allocations so far,
  then by path. Clients start inactive; ``sort()`` lists active clients only.
* :func:`progressive_filling` — the DRF paper's task-level algorithm.
* :class:`Allocator` — one allocation cycle over agents and frameworks, in Mesos' two stages:
  quota guarantees first, then everyone by DRF (role sorter, then the role's framework sorter),
  with offer filters (``refuse_seconds``) and minimum allocatable resources.

Resources are ``dict[str, float]`` of scalars. Like Mesos, quantities are kept in fixed point
with three decimals, so sums and differences are exact and shares compare exactly.

Errors: bad input raises ``ValueError`` naming the field; unknown clients, agents, frameworks and
offers raise ``KeyError``. A call that raises changes nothing.
"""

from __future__ import annotations

import heapq
import math
import uuid
from bisect import bisect_left, insort
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_MIN_ALLOCATABLE", "Allocator", "DRFSorter", "Offer", "Resources", "may_use", "progressive_filling",
]

Resources = dict[str, float]

# Mesos' MIN_CPUS / MIN_MEM: an agent whose free resources reach neither is not offered.
DEFAULT_MIN_ALLOCATABLE: Resources = {"cpus": 0.01, "mem": 32.0}


# --------------------------------------------------------------------------- resource arithmetic

def _fixed(value: float) -> float:
    """Mesos keeps scalars at 0.001 precision; doing the same keeps sums exact and comparable."""
    return round(value * 1000.0) / 1000.0


def _checked(resources: object, what: str) -> Resources:
    """Validates a resource mapping and returns it in fixed point, without zero entries."""
    if not isinstance(resources, Mapping):
        raise ValueError(f"{what} must be a mapping of resource name to quantity, got {type(resources).__name__}")
    out: Resources = {}
    for name, value in resources.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what}: resource names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{what}.{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{what}.{name} must be a finite number >= 0, got {value!r}")
        quantity = _fixed(float(value))
        if quantity > 0:
            out[name] = quantity
    return out


def _add_into(target: Resources, delta: Mapping[str, float]) -> None:
    for name, value in delta.items():
        target[name] = _fixed(target.get(name, 0.0) + value)


def _subtract_into(target: Resources, delta: Mapping[str, float]) -> None:
    """Subtracts ``delta`` (which the caller checked is contained) and drops emptied entries."""
    for name, value in delta.items():
        left = _fixed(target.get(name, 0.0) - value)
        if left > 0:
            target[name] = left
        else:
            target.pop(name, None)


def _contains(whole: Mapping[str, float], part: Mapping[str, float]) -> bool:
    return all(whole.get(name, 0.0) >= value for name, value in part.items())


def _missing(whole: Mapping[str, float], part: Mapping[str, float]) -> str | None:
    """Names the first resource of ``part`` that ``whole`` does not cover, for error messages."""
    for name, value in part.items():
        if whole.get(name, 0.0) < value:
            return f"{name} {value:g} > {whole.get(name, 0.0):g}"
    return None


def _take(holdings: dict[str, Resources], agent_id: str, quantities: Resources, holder: str) -> None:
    """Subtracts ``quantities`` from ``holdings[agent_id]``; ValueError if they are not all there."""
    held = holdings.get(agent_id, {})
    if not _contains(held, quantities):
        raise ValueError(f"{holder} does not hold {_missing(held, quantities)} on agent {agent_id!r}")
    _subtract_into(held, quantities)
    if not held:
        holdings.pop(agent_id, None)


def _check_path(path: object, what: str) -> list[str]:
    if not isinstance(path, str) or not path:
        raise ValueError(f"{what} must be a non-empty string, got {path!r}")
    elements = path.split("/")
    if any(element in ("", ".", "..") for element in elements):
        raise ValueError(f"{what} {path!r}: path elements must be non-empty and not '.' or '..'")
    return elements


def _check_weight(weight: object, what: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) \
            or weight <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {weight!r}")
    return float(weight)


def _check_seconds(seconds: object, what: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds) \
            or seconds < 0:
        raise ValueError(f"{what} must be a number >= 0, got {seconds!r}")
    return float(seconds)


# --------------------------------------------------------------------------- the sorter

_ACTIVE, _INACTIVE, _INTERNAL = "active", "inactive", "internal"


class _Node:
    """A node of the sorter tree. Clients are always leaves; a client that gains children
    ("a" when "a/b" is added) moves into a virtual leaf named "." under an internal node "a"."""

    __slots__ = ("name", "path", "kind", "parent", "children", "ranked", "key", "share", "count",
                 "totals", "by_agent", "client")

    def __init__(self, name: str, kind: str, parent: _Node | None) -> None:
        self.name = name
        self.kind = kind
        self.parent = parent
        if parent is None:
            self.path = ""
        elif parent.parent is None:
            self.path = name
        else:
            self.path = f"{parent.path}/{name}"
        self.children: dict[str, _Node] = {}
        # Active leaves and internal children as (share, count, path, node), kept sorted while the
        # tree is clean; the path is unique among siblings, so a node is never compared.
        self.ranked: list[tuple[float, int, str, _Node]] = []
        self.key: tuple[float, int, str] = (0.0, 0, self.path)
        self.share = 0.0
        self.count = 0                        # allocations so far (tie-break), never decremented
        self.totals: Resources = {}           # subtree allocation, summed over agents
        self.by_agent: dict[str, Resources] = {}   # leaves only: allocation per agent
        self.client = ""                      # leaves only: the client path (without "/.")

    def is_leaf(self) -> bool:
        return self.kind != _INTERNAL


class DRFSorter:
    """Mesos' hierarchical DRF sorter.

    ``allocated``/``unallocated`` update the changed client and its ancestors in place, so a
    sort after an allocation costs a walk, not a re-sort; changes to the totals, weights or the
    set of active clients re-sort the whole tree at the next ``sort()``.
    """

    def __init__(self) -> None:
        self._root = _Node("", _INTERNAL, None)
        self._clients: dict[str, _Node] = {}
        self._weights: dict[str, float] = {}
        self._total_by_agent: dict[str, Resources] = {}
        self._total: Resources = {}
        self._dirty = False

    # ---- clients

    def add(self, client: str) -> None:
        """Adds an inactive client (``activate`` it to see it in ``sort()``). Raises ValueError if
        the client exists or the path is malformed."""
        elements = _check_path(client, "client")
        if client in self._clients:
            raise ValueError(f"client {client!r} already exists")
        current = self._root
        last_created: _Node | None = None
        for element in elements:
            child = current.children.get(element)
            if child is not None:
                current = child
                continue
            if current.is_leaf():
                current = self._make_internal(current)
            child = _Node(element, _INTERNAL, current)
            current.children[element] = child
            current = child
            last_created = child
        if current is last_created:
            leaf = current
            leaf.kind = _INACTIVE
        else:
            # The path exists as an internal node ("a" after "a/b"): the client is its "." leaf.
            leaf = _Node(".", _INACTIVE, current)
            current.children["."] = leaf
        leaf.client = client
        self._clients[client] = leaf
        self._dirty = True

    def _make_internal(self, leaf: _Node) -> _Node:
        """Turns client leaf ``a`` into internal node ``a`` holding the client as leaf ``a/.``."""
        parent = leaf.parent
        assert parent is not None
        internal = _Node(leaf.name, _INTERNAL, parent)
        internal.totals = dict(leaf.totals)
        internal.count = leaf.count
        parent.children[leaf.name] = internal
        leaf.name = "."
        leaf.parent = internal
        leaf.path = f"{internal.path}/."
        internal.children["."] = leaf
        return internal

    def remove(self, client: str) -> None:
        """Removes a client and its allocation from its ancestors. Raises KeyError if unknown."""
        leaf = self._find(client)
        del self._clients[client]
        removed = leaf.totals
        current = leaf
        while current is not self._root:
            parent = current.parent
            assert parent is not None
            if parent is not self._root:
                _subtract_into(parent.totals, removed)
            if not current.children:
                del parent.children[current.name]
            elif len(current.children) == 1 and "." in current.children:
                # Only the virtual leaf is left: fold it back into its parent (inverse of add).
                only = current.children.pop(".")
                current.kind = only.kind
                current.ranked = []
                current.by_agent = only.by_agent
                current.client = only.client
                self._clients[current.client] = current
            current = parent
        self._dirty = True

    def activate(self, client: str) -> None:
        leaf = self._find(client)
        if leaf.kind == _INACTIVE:
            leaf.kind = _ACTIVE
            self._dirty = True

    def deactivate(self, client: str) -> None:
        leaf = self._find(client)
        if leaf.kind == _ACTIVE:
            leaf.kind = _INACTIVE
            self._dirty = True

    def update_weight(self, path: str, weight: float) -> None:
        """Sets the weight of the node at ``path`` (a client or an internal node, present or
        not yet): it divides that node's share when it competes with its siblings."""
        _check_path(path, "path")
        self._weights[path] = _check_weight(weight, f"weight of {path!r}")
        self._dirty = True

    def contains(self, client: str) -> bool:
        return client in self._clients

    def count(self) -> int:
        return len(self._clients)

    def is_active(self, client: str) -> bool:
        return self._find(client).kind == _ACTIVE

    # ---- agents (the cluster total)

    def add_agent(self, agent_id: str, resources: Mapping[str, float]) -> None:
        """Adds ``resources`` to the cluster total (adds to what the agent already has)."""
        quantities = _checked(resources, f"resources of agent {agent_id!r}")
        if quantities:
            _add_into(self._total_by_agent.setdefault(agent_id, {}), quantities)
            _add_into(self._total, quantities)
            self._dirty = True

    def remove_agent(self, agent_id: str, resources: Mapping[str, float] | None = None) -> None:
        """Removes the agent's resources from the total (only ``resources`` of them if given).
        Allocations on the agent stay until ``unallocated``. Raises KeyError if unknown."""
        if agent_id not in self._total_by_agent:
            raise KeyError(f"agent {agent_id!r} is not in the sorter")
        agent_total = self._total_by_agent[agent_id]
        quantities = dict(agent_total) if resources is None else \
            _checked(resources, f"resources of agent {agent_id!r}")
        if not _contains(agent_total, quantities):
            raise ValueError(f"agent {agent_id!r} does not have {_missing(agent_total, quantities)}")
        _subtract_into(agent_total, quantities)
        _subtract_into(self._total, quantities)
        if not agent_total:
            del self._total_by_agent[agent_id]
        self._dirty = True

    def total(self) -> Resources:
        return dict(self._total)

    # ---- allocations

    def allocated(self, client: str, agent_id: str, resources: Mapping[str, float]) -> None:
        """Records an allocation: counts once more for the client and each ancestor."""
        self._allocated(client, agent_id, _checked(resources, "resources"))

    def unallocated(self, client: str, agent_id: str, resources: Mapping[str, float]) -> None:
        """Takes back part of an allocation. Raises ValueError if the client does not hold it."""
        self._unallocated(client, agent_id, _checked(resources, "resources"))

    # The Allocator calls these two with quantities it has already checked.
    def _allocated(self, client: str, agent_id: str, quantities: Resources) -> None:
        leaf = self._find(client)
        _add_into(leaf.by_agent.setdefault(agent_id, {}), quantities)
        self._walk_up(leaf, quantities, _add_into, 1)

    def _unallocated(self, client: str, agent_id: str, quantities: Resources) -> None:
        leaf = self._find(client)
        _take(leaf.by_agent, agent_id, quantities, f"client {client!r}")
        self._walk_up(leaf, quantities, _subtract_into, 0)

    def _walk_up(self, leaf: _Node, quantities: Resources, apply, counted: int) -> None:
        node = leaf
        root = self._root
        clean = not self._dirty
        while node is not root:
            parent = node.parent
            ranked = clean and node.kind != _INACTIVE
            if ranked:
                siblings = parent.ranked
                del siblings[bisect_left(siblings, node.key)]
            apply(node.totals, quantities)
            node.count += counted
            if ranked:
                node.share = self._share(node)
                node.key = (node.share, node.count, node.path)
                insort(siblings, (node.share, node.count, node.path, node))
            node = parent

    def allocation(self, client: str) -> dict[str, Resources]:
        """The client's allocation per agent."""
        return {agent: dict(res) for agent, res in self._find(client).by_agent.items()}

    def allocation_totals(self, path: str) -> Resources:
        """Allocation summed over agents for a client or an internal node (a subtree); empty if
        nothing is at ``path``."""
        node = self._node_at(path)
        return dict(node.totals) if node is not None else {}

    def share(self, path: str) -> float:
        """The weighted dominant share of the node at ``path`` as the sorter compares it."""
        node = self._node_at(path)
        return self._share(node) if node is not None else 0.0

    # ---- ordering

    def sort(self) -> list[str]:
        """Active clients in DRF order (pre-order over the sorted tree)."""
        return list(self.iter_sorted())

    def iter_sorted(self, under: str | None = None) -> Iterator[str]:
        """Lazily yields active clients in DRF order, optionally only those at or below the node
        ``under``. Do not change the sorter while iterating."""
        if self._dirty:
            self._resort(self._root)
            self._dirty = False
        start = self._root if under is None else self._node_at(under)
        if start is None:
            return
        if start.is_leaf():
            if start.kind == _ACTIVE:
                yield start.client
            return
        stack = [iter(start.ranked)]
        while stack:
            for entry in stack[-1]:
                node = entry[3]
                if node.kind == _INTERNAL:
                    stack.append(iter(node.ranked))
                    break
                yield node.client
            else:
                stack.pop()

    def _resort(self, node: _Node) -> None:
        ranked = []
        for child in node.children.values():
            if child.kind == _INACTIVE:
                continue
            child.share = self._share(child)
            child.key = (child.share, child.count, child.path)
            ranked.append((child.share, child.count, child.path, child))
            if child.kind == _INTERNAL:
                self._resort(child)
        ranked.sort()
        node.ranked = ranked

    def _share(self, node: _Node) -> float:
        share = 0.0
        allocated = node.totals
        for name, total in self._total.items():
            if total > 0.0 and name in allocated:
                fraction = allocated[name] / total
                if fraction > share:
                    share = fraction
        return share / self._weights.get(node.path, 1.0)

    def _find(self, client: str) -> _Node:
        node = self._clients.get(client)
        if node is None:
            raise KeyError(f"unknown client {client!r}")
        return node

    def _node_at(self, path: str) -> _Node | None:
        node = self._root
        for element in path.split("/"):
            node = node.children.get(element)
            if node is None:
                return None
        return node


# --------------------------------------------------------------------------- progressive filling

def progressive_filling(capacity: Mapping[str, float], demands: Mapping[str, Mapping[str, float]],
                        weights: Mapping[str, float] | None = None) -> dict[str, int]:
    """Tasks per user by DRF progressive filling (Ghodsi et al., NSDI 2011, Algorithm 1).

    Repeatedly launches one task of the user with the lowest weighted dominant share (ties: fewer
    tasks, then name) whose task still fits; a user whose task no longer fits is frozen.
    ``capacity={"cpus": 9, "mem": 18}`` with A=``{cpus 1, mem 4}`` and B=``{cpus 3, mem 1}``
    gives A=3, B=2. Raises ValueError for a demand that asks for nothing or a bad weight.
    """
    cap = _checked(capacity, "capacity")
    weights = weights or {}
    for user in weights:
        if user not in demands:
            raise ValueError(f"weights[{user!r}] names no user in demands")
    per_task: dict[str, Resources] = {}
    task_share: dict[str, float] = {}   # weighted dominant share of one task
    tasks: dict[str, int] = {}
    heap: list[tuple[float, int, str]] = []
    for user, demand in demands.items():
        need = _checked(demand, f"demands[{user!r}]")
        if not need:
            raise ValueError(f"demands[{user!r}] must ask for a positive amount of some resource")
        weight = _check_weight(weights.get(user, 1.0), f"weights[{user!r}]")
        per_task[user] = need
        tasks[user] = 0
        # A demand for a resource the cluster does not have never fits: such users stay at 0.
        if all(name in cap for name in need):
            task_share[user] = max(need[name] / cap[name] for name in need) / weight
            heap.append((0.0, 0, user))
    heapq.heapify(heap)
    used: Resources = {}
    while heap:
        _, count, user = heapq.heappop(heap)
        need = per_task[user]
        if any(_fixed(used.get(name, 0.0) + value) > cap[name] for name, value in need.items()):
            continue  # frozen: its next task does not fit, and usage only grows
        _add_into(used, need)
        tasks[user] = count + 1
        heapq.heappush(heap, ((count + 1) * task_share[user], count + 1, user))
    return tasks


# --------------------------------------------------------------------------- the allocator

@dataclass(frozen=True)
class Offer:
    """Resources on one agent offered to one framework. They count as allocated to the framework
    until it accepts (the used part stays allocated) or declines."""

    offer_id: str
    framework_id: str
    agent_id: str
    resources: dict[str, float] = field(hash=False)


def may_use(role: str, reserved_for: str) -> bool:
    """May a framework of ``role`` be offered resources reserved for ``reserved_for``? Unreserved
    (``"*"``) ones go to everyone; reserved ones to that role and the roles below it (Mesos'
    hierarchical reservations)."""
    return reserved_for == "*" or role == reserved_for or role.startswith(reserved_for + "/")


def _copy(offer: Offer) -> Offer:
    return Offer(offer.offer_id, offer.framework_id, offer.agent_id, dict(offer.resources))


@dataclass
class _Agent:
    total: Resources
    free: Resources                     # total minus in-use minus outstanding offers
    active: bool = True
    role: str = "*"                     # "*": unreserved; else reserved for that role (Mesos --default_role)
    offers: set[str] = field(default_factory=set)


@dataclass
class _Filter:
    expires: float
    refused: Resources


@dataclass
class _Framework:
    role: str
    suppressed: bool = False
    in_use: dict[str, Resources] = field(default_factory=dict)         # agent -> accepted resources
    filters: dict[str, list[_Filter]] = field(default_factory=dict)    # agent -> refusals
    offers: set[str] = field(default_factory=set)


class Allocator:
    """One Mesos-style allocation cycle over agents and frameworks.

    Stage 1 serves roles below their quota guarantee (in DRF order), capping guaranteed resources
    at what is still missing. Stage 2 goes agent by agent and gives everything left on the agent
    to the first eligible framework in DRF order (role sorter, then the role's framework
    sorter), holding back enough cluster-wide to still meet unsatisfied guarantees. A framework
    is not eligible when suppressed or when a live filter covers the resources. Agents whose free
    resources reach none of ``min_allocatable`` (default cpus 0.01 OR mem 32) are not offered.
    """

    def __init__(self, min_allocatable: dict[str, float] | None = None,
                 default_refuse_seconds: float = 5.0) -> None:
        self._min_allocatable = dict(DEFAULT_MIN_ALLOCATABLE) if min_allocatable is None else \
            _checked(min_allocatable, "min_allocatable")
        self._default_refuse = _check_seconds(default_refuse_seconds, "default_refuse_seconds")
        self._agents: dict[str, _Agent] = {}
        self._frameworks: dict[str, _Framework] = {}
        self._roles = DRFSorter()                       # clients: roles that have frameworks
        self._framework_sorters: dict[str, DRFSorter] = {}
        self._quotas: dict[str, Resources] = {}
        self._offers: dict[str, Offer] = {}
        self._offer_prefix = uuid.uuid4().hex[:12]
        self._offer_seq = 0

    # ---- agents

    def add_agent(self, agent_id: str, total: dict[str, float], role: str = "*") -> None:
        """Adds an agent; again with another total or role updates it (idempotent for the same).

        ``role`` other than ``"*"`` reserves all the agent's resources for that role, as a Mesos
        agent started with ``--default_role``: only frameworks of that role (or a role below it,
        ``role/…``) are offered them."""
        if not isinstance(agent_id, str) or not agent_id:
            raise ValueError(f"agent_id must be a non-empty string, got {agent_id!r}")
        quantities = _checked(total, f"total of agent {agent_id!r}")
        if role != "*":
            _check_path(role, "role")
        agent = self._agents.get(agent_id)
        if agent is None:
            self._agents[agent_id] = _Agent(total=quantities, free=dict(quantities), role=role)
            self._sorters_add_agent(agent_id, quantities)
            return
        agent.role = role
        if agent.total == quantities:
            return
        taken = dict(agent.total)
        _subtract_into(taken, agent.free)                 # what is in use or offered
        self._sorters_remove_agent(agent_id)
        agent.total = quantities
        agent.free = {name: _fixed(value - taken.get(name, 0.0)) for name, value in quantities.items()
                      if value > taken.get(name, 0.0)}
        self._sorters_add_agent(agent_id, quantities)

    def remove_agent(self, agent_id: str) -> None:
        """Forgets an agent: its offers vanish and its allocations return to nobody (the master
        marks its tasks lost). Raises KeyError if unknown."""
        agent = self._agent(agent_id)
        for offer_id in list(agent.offers):
            offer = self._offers.pop(offer_id)
            framework = self._frameworks[offer.framework_id]
            framework.offers.discard(offer_id)
            self._unallocate(offer.framework_id, agent_id, offer.resources)
        for framework_id, framework in self._frameworks.items():
            used = framework.in_use.pop(agent_id, None)
            if used:
                self._unallocate(framework_id, agent_id, used)
            framework.filters.pop(agent_id, None)
        self._sorters_remove_agent(agent_id)
        del self._agents[agent_id]

    def deactivate_agent(self, agent_id: str) -> None:
        """No offers from this agent until ``activate_agent``; its resources still count."""
        self._agent(agent_id).active = False

    def activate_agent(self, agent_id: str) -> None:
        self._agent(agent_id).active = True

    # ---- frameworks and roles

    def add_framework(self, framework_id: str, role: str = "*") -> None:
        """Registers a framework under ``role`` (idempotent). Raises ValueError if it is already
        registered under another role."""
        if not isinstance(framework_id, str) or not framework_id or "/" in framework_id:
            raise ValueError(f"framework_id must be a non-empty string without '/', got {framework_id!r}")
        _check_path(role, "role")
        known = self._frameworks.get(framework_id)
        if known is not None:
            if known.role != role:
                raise ValueError(f"framework {framework_id!r} is registered under role {known.role!r}, "
                                 f"not {role!r}; remove it first")
            return
        sorter = self._framework_sorters.get(role)
        if sorter is None:
            sorter = self._framework_sorters[role] = DRFSorter()
            for agent_id, agent in self._agents.items():
                sorter.add_agent(agent_id, agent.total)
            self._roles.add(role)
            self._roles.activate(role)
        sorter.add(framework_id)
        sorter.activate(framework_id)
        self._frameworks[framework_id] = _Framework(role=role)

    def remove_framework(self, framework_id: str) -> None:
        """Forgets a framework: its offers and in-use resources return to the agents."""
        framework = self._framework(framework_id)
        for offer_id in list(framework.offers):
            self._return_offer(self._offers.pop(offer_id), {})
        for agent_id, used in list(framework.in_use.items()):
            self._unallocate(framework_id, agent_id, used)
            _add_into(self._agents[agent_id].free, used)
        sorter = self._framework_sorters[framework.role]
        sorter.remove(framework_id)
        if sorter.count() == 0:
            del self._framework_sorters[framework.role]
            self._roles.remove(framework.role)
        del self._frameworks[framework_id]

    def suppress(self, framework_id: str) -> None:
        """No more offers to this framework until ``revive``."""
        framework = self._framework(framework_id)
        framework.suppressed = True
        self._framework_sorters[framework.role].deactivate(framework_id)

    def revive(self, framework_id: str) -> None:
        """Offers to this framework again, and drops all its filters."""
        framework = self._framework(framework_id)
        framework.suppressed = False
        framework.filters.clear()
        self._framework_sorters[framework.role].activate(framework_id)

    def set_weight(self, role: str, weight: float) -> None:
        """The role's share is divided by ``weight`` (default 1) when it competes with its
        sibling roles; weights of roles not registered yet are kept."""
        self._roles.update_weight(role, weight)

    def set_quota(self, role: str, guarantee: dict[str, float]) -> None:
        """Guarantees ``role`` (and its subtree) these resources, served before any fair share.
        An empty guarantee removes the quota."""
        _check_path(role, "role")
        quantities = _checked(guarantee, f"quota guarantee of {role!r}")
        if quantities:
            self._quotas[role] = quantities
        else:
            self._quotas.pop(role, None)

    # ---- the cycle

    def allocate(self, now: float) -> list[Offer]:
        """Runs one allocation cycle and returns the new offers (one per framework and agent).

        Offered resources count as allocated until accepted or declined; filters are compared
        with ``now`` (seconds, any monotonic clock)."""
        grants: dict[tuple[str, str], Resources] = {}
        candidates = [(agent_id, agent) for agent_id, agent in self._agents.items()
                      if agent.active and self._allocatable(agent.free)]
        if self._quotas:
            self._allocate_quota(candidates, now, grants)
        self._allocate_fair(candidates, now, grants)
        offers = []
        for (framework_id, agent_id), resources in grants.items():
            self._offer_seq += 1
            offer = Offer(f"{self._offer_prefix}-O{self._offer_seq}", framework_id, agent_id, resources)
            self._offers[offer.offer_id] = offer
            self._frameworks[framework_id].offers.add(offer.offer_id)
            self._agents[agent_id].offers.add(offer.offer_id)
            offers.append(_copy(offer))       # the caller's copy: editing it cannot skew the books
        return offers

    def _unsatisfied(self) -> dict[str, Resources]:
        """Per quota role, what its guarantee still misses (offers count as allocated)."""
        missing = {}
        for role, guarantee in self._quotas.items():
            have = self._roles.allocation_totals(role)
            gap = {name: _fixed(value - have.get(name, 0.0)) for name, value in guarantee.items()
                   if value > have.get(name, 0.0)}
            if gap:
                missing[role] = gap
        return missing

    def _allocate_quota(self, candidates, now: float, grants) -> None:
        for agent_id, agent in candidates:
            unsatisfied = self._unsatisfied()
            if not unsatisfied:
                return
            # Quota roles compete by their unweighted dominant share, as Mesos' quota sorter.
            order = sorted(unsatisfied, key=lambda role: (self._quota_share(role), role))
            for quota_role in order:
                gap = unsatisfied[quota_role]
                frameworks = [(role, framework_id)
                              for role in list(self._roles.iter_sorted(under=quota_role))
                              for framework_id in list(self._framework_sorters[role].iter_sorted())]
                for role, framework_id in frameworks:
                    if not self._allocatable(agent.free):
                        break
                    if not may_use(role, agent.role):
                        continue
                    wanted = {name: min(value, gap.get(name, 0.0)) if name in self._quotas[quota_role] else value
                              for name, value in agent.free.items()}
                    wanted = {name: value for name, value in wanted.items() if value > 0}
                    if not any(name in gap for name in wanted) or not self._allocatable(wanted):
                        break
                    if self._filtered(self._frameworks[framework_id], agent_id, wanted, now):
                        continue
                    self._grant(framework_id, role, agent_id, agent, wanted, grants)
                    _subtract_into(gap, wanted)
                    if not any(name in gap for name in agent.free):
                        break

    def _quota_share(self, role: str) -> float:
        have = self._roles.allocation_totals(role)
        total = self._roles.total()
        return max((have.get(name, 0.0) / value for name, value in total.items() if value > 0), default=0.0)

    def _allocate_fair(self, candidates, now: float, grants) -> None:
        headroom = {}
        for gap in self._unsatisfied().values():
            _add_into(headroom, gap)
        available: Resources = {}
        if headroom:
            for agent in self._agents.values():
                if agent.active:
                    _add_into(available, agent.free)
        for agent_id, agent in candidates:
            offerable = dict(agent.free)
            if headroom:
                # Hold back what unsatisfied guarantees still need, cluster-wide.
                offerable = {name: min(value, _fixed(available.get(name, 0.0) - headroom[name]))
                             if name in headroom else value for name, value in offerable.items()}
                offerable = {name: value for name, value in offerable.items() if value > 0}
            if not offerable or not self._allocatable(offerable):
                continue
            chosen = self._first_eligible(agent_id, agent.role, offerable, now)
            if chosen is not None:
                self._grant(chosen[1], chosen[0], agent_id, agent, offerable, grants)
                if headroom:
                    _subtract_into(available, offerable)

    def _first_eligible(self, agent_id: str, reserved_for: str, resources: Resources,
                        now: float) -> tuple[str, str] | None:
        """(role, framework) first in DRF order that would take ``resources`` on the agent."""
        for role in self._roles.iter_sorted():
            if not may_use(role, reserved_for):
                continue
            for framework_id in self._framework_sorters[role].iter_sorted():
                framework = self._frameworks[framework_id]
                if not framework.filters or not self._filtered(framework, agent_id, resources, now):
                    return role, framework_id
        return None

    def _grant(self, framework_id: str, role: str, agent_id: str, agent: _Agent,
               resources: Resources, grants) -> None:
        self._roles._allocated(role, agent_id, resources)
        self._framework_sorters[role]._allocated(framework_id, agent_id, resources)
        _subtract_into(agent.free, resources)
        key = (framework_id, agent_id)
        if key in grants:
            _add_into(grants[key], resources)
        else:
            grants[key] = dict(resources)

    def _allocatable(self, resources: Resources) -> bool:
        if not self._min_allocatable:
            return bool(resources)
        return any(resources.get(name, 0.0) >= value for name, value in self._min_allocatable.items())

    @staticmethod
    def _filtered(framework: _Framework, agent_id: str, resources: Resources, now: float) -> bool:
        refusals = framework.filters.get(agent_id)
        if not refusals:
            return False
        live = [refusal for refusal in refusals if refusal.expires > now]
        if len(live) != len(refusals):
            if live:
                framework.filters[agent_id] = live
            else:
                del framework.filters[agent_id]
        # As Mesos: an offer is filtered when the refused resources cover all of it.
        return any(_contains(refusal.refused, resources) for refusal in live)

    # ---- answers to offers, task ends

    def accept(self, offer: Offer, used: dict[str, float], now: float,
               refuse_seconds: float | None = None) -> None:
        """``used`` stays allocated to the framework; the rest of the offer returns to the agent
        and is filtered for this framework for ``refuse_seconds`` (None: the default; 0: none).
        Raises KeyError if the offer is not outstanding, ValueError if ``used`` exceeds it."""
        stored = self._outstanding(offer)
        quantities = _checked(used, "used")
        if not _contains(stored.resources, quantities):
            raise ValueError(f"used exceeds offer {stored.offer_id}: {_missing(stored.resources, quantities)}")
        refuse = self._refuse_seconds(refuse_seconds)
        del self._offers[stored.offer_id]
        if quantities:
            _add_into(self._frameworks[stored.framework_id].in_use.setdefault(stored.agent_id, {}),
                      quantities)
        self._return_offer(stored, quantities, now, refuse)

    def decline(self, offer: Offer, now: float, refuse_seconds: float | None = None) -> None:
        """Returns the whole offer; filtered for this framework for ``refuse_seconds``."""
        stored = self._outstanding(offer)
        refuse = self._refuse_seconds(refuse_seconds)
        del self._offers[stored.offer_id]
        self._return_offer(stored, {}, now, refuse)

    def release(self, framework_id: str, agent_id: str, resources: dict[str, float]) -> None:
        """A task ended: its resources return to the agent. Raises ValueError if the framework
        does not use that much on the agent; a removed agent is ignored (already recovered)."""
        framework = self._framework(framework_id)
        quantities = _checked(resources, "resources")
        if agent_id not in self._agents:
            return
        _take(framework.in_use, agent_id, quantities, f"framework {framework_id!r}")
        self._unallocate(framework_id, agent_id, quantities)
        _add_into(self._agents[agent_id].free, quantities)

    def restore(self, framework_id: str, agent_id: str, resources: dict[str, float]) -> None:
        """Re-adds resources already in use by a running task (master fail-over), without an
        offer. Raises ValueError if the agent does not have them free."""
        framework = self._framework(framework_id)
        agent = self._agent(agent_id)
        quantities = _checked(resources, "resources")
        if not _contains(agent.free, quantities):
            raise ValueError(f"agent {agent_id!r} has not {_missing(agent.free, quantities)} free")
        if quantities:
            self._roles._allocated(framework.role, agent_id, quantities)
            self._framework_sorters[framework.role]._allocated(framework_id, agent_id, quantities)
            _subtract_into(agent.free, quantities)
            _add_into(framework.in_use.setdefault(agent_id, {}), quantities)

    # ---- reading

    def allocation(self, framework_id: str) -> dict[str, float]:
        """What the framework holds (in use plus outstanding offers), summed over agents."""
        framework = self._framework(framework_id)
        return self._framework_sorters[framework.role].allocation_totals(framework_id)

    def shares(self) -> dict[str, float]:
        """Each framework's dominant share of the cluster (unweighted), for metrics."""
        total = self._roles.total()
        out = {}
        for framework_id in self._frameworks:
            held = self.allocation(framework_id)
            out[framework_id] = max((held.get(name, 0.0) / value for name, value in total.items()
                                     if value > 0), default=0.0)
        return out

    def role_shares(self) -> dict[str, float]:
        """Each registered role's weighted dominant share, as the role sorter orders them."""
        return {role: self._roles.share(role) for role in self._framework_sorters}

    def offers(self) -> list[Offer]:
        """The outstanding offers (copies)."""
        return [_copy(offer) for offer in self._offers.values()]

    def free(self, agent_id: str) -> dict[str, float]:
        """What the agent has neither in use nor offered."""
        return dict(self._agent(agent_id).free)

    def reserved_for(self, agent_id: str) -> str:
        """The role the agent's resources are reserved for (``"*"``: unreserved)."""
        return self._agent(agent_id).role

    # ---- helpers

    def _return_offer(self, offer: Offer, used: Resources, now: float = 0.0, refuse: float = 0.0) -> None:
        self._frameworks[offer.framework_id].offers.discard(offer.offer_id)
        agent = self._agents[offer.agent_id]
        agent.offers.discard(offer.offer_id)
        rest = dict(offer.resources)
        _subtract_into(rest, used)
        if not rest:
            return
        self._unallocate(offer.framework_id, offer.agent_id, rest)
        _add_into(agent.free, rest)
        if refuse > 0:
            framework = self._frameworks[offer.framework_id]
            framework.filters.setdefault(offer.agent_id, []).append(_Filter(now + refuse, rest))

    def _unallocate(self, framework_id: str, agent_id: str, resources: Resources) -> None:
        role = self._frameworks[framework_id].role
        self._roles._unallocated(role, agent_id, resources)
        self._framework_sorters[role]._unallocated(framework_id, agent_id, resources)

    def _sorters_add_agent(self, agent_id: str, total: Resources) -> None:
        for sorter in (self._roles, *self._framework_sorters.values()):
            sorter.add_agent(agent_id, total)

    def _sorters_remove_agent(self, agent_id: str) -> None:
        if not self._agents[agent_id].total:
            return
        for sorter in (self._roles, *self._framework_sorters.values()):
            sorter.remove_agent(agent_id)

    def _refuse_seconds(self, refuse_seconds: float | None) -> float:
        if refuse_seconds is None:
            return self._default_refuse
        return _check_seconds(refuse_seconds, "refuse_seconds")

    def _outstanding(self, offer: Offer) -> Offer:
        offer_id = getattr(offer, "offer_id", offer)
        stored = self._offers.get(offer_id)
        if stored is None:
            raise KeyError(f"offer {offer_id!r} is not outstanding (unknown, answered or rescinded)")
        return stored

    def _agent(self, agent_id: str) -> _Agent:
        agent = self._agents.get(agent_id)
        if agent is None:
            raise KeyError(f"unknown agent {agent_id!r}")
        return agent

    def _framework(self, framework_id: str) -> _Framework:
        framework = self._frameworks.get(framework_id)
        if framework is None:
            raise KeyError(f"unknown framework {framework_id!r}")
        return framework
