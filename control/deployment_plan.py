"""Ordering a change of several apps into deployment steps, by their dependencies. Pure.

An app depends on what its ``dependencies`` name (an app, or a group: every app under it) and on
what its enclosing groups' ``dependencies`` name. Apps start (or change) in dependency order, one
step per depth — an app's depth is the longest chain of dependencies below it — so an app starts
only after everything it depends on has converged; apps stop in the reverse order, stops first.

```
apps + group dependencies ─► dependency_graph (missing → 422 naming it, cycle → 422 naming it)
actions ─► order_steps(graph before, graph after) ─► [[stops, deepest first]…, [starts, depth 0]…]
```
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from control.deployments import PlanAction
from control.marathon_models import AppDefinition, AppInvalid, normalize_app_id


def parent_of(path: str) -> str:
    """``/a/b/c`` → ``/a/b``; ``/a`` → ``/``."""
    return path.rsplit("/", 1)[0] or "/"


def ancestors(path: str) -> list[str]:
    """The groups enclosing ``path``, nearest first, the root last."""
    found = []
    while path != "/":
        path = parent_of(path)
        found.append(path)
    return found


def resolve(reference: str, base: str, field: str) -> str:
    """A dependency as written (absolute, or relative to ``base``) → an absolute path. Raises
    ``AppInvalid`` naming ``field`` for a malformed one."""
    try:
        return normalize_app_id(reference, base=base)
    except AppInvalid:
        raise AppInvalid([{"path": field, "errors": [f"dependency {reference!r} is not a valid path"]}]) from None


def dependency_graph(apps: Mapping[str, AppDefinition], group_dependencies: Mapping[str, Iterable[str]],
                     known_groups: Iterable[str] = ()) -> dict[str, set[str]]:
    """App id → the app ids it depends on (its own dependencies and its groups'). Dependencies are
    absolute paths. Raises ``AppInvalid`` (422) naming the dependency that names nothing, or the
    cycle."""
    groups = set(known_groups) | {g for app_id in apps for g in ancestors(app_id)}
    under: dict[str, list[str]] = {}
    for app_id in apps:
        for group in ancestors(app_id):
            under.setdefault(group, []).append(app_id)

    def targets(dependency: str, owner: str) -> set[str]:
        if dependency in apps:
            return {dependency}
        if dependency in groups or dependency in group_dependencies:
            return set(under.get(dependency, []))
        raise AppInvalid([{"path": "/dependencies", "errors": [
            f"{owner} depends on {dependency}, which is no app or group"]}])

    graph: dict[str, set[str]] = {}
    for app_id, app in apps.items():
        needs: set[str] = set()
        for dependency in app.dependencies:
            needs |= targets(dependency, app_id)
        for group in ancestors(app_id):
            for dependency in group_dependencies.get(group, ()):
                # A group depending on an enclosing group would make its apps depend on themselves.
                needs |= targets(dependency, group) - {app_id}
        graph[app_id] = needs
    cycle = find_cycle(graph)
    if cycle:
        raise AppInvalid([{"path": "/dependencies", "errors": [
            "dependency cycle: " + " → ".join(cycle)]}])
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle as its path (first node repeated at the end), or None."""
    state: dict[str, int] = {}          # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def depths(graph: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """App id → the longest chain of dependencies below it (0: depends on nothing). The graph
    must be acyclic (``dependency_graph`` checked it)."""
    memo: dict[str, int] = {}

    def depth(node: str) -> int:
        if node not in memo:
            memo[node] = 1 + max((depth(n) for n in graph.get(node, ()) if n in graph), default=-1)
        return memo[node]

    for node in graph:
        depth(node)
    return memo


def order_steps(actions: Iterable[PlanAction], before: Mapping[str, Iterable[str]],
                after: Mapping[str, Iterable[str]]) -> list[list[PlanAction]]:
    """Steps for ``actions``: stops first, dependents before what they depend on (``before``'s
    graph), then the rest, dependencies first (``after``'s graph); actions at the same depth share a step."""
    stop_depth, start_depth = depths(before), depths(after)
    stops: dict[int, list[PlanAction]] = {}
    starts: dict[int, list[PlanAction]] = {}
    for action in actions:
        if action.action == "StopApplication":
            stops.setdefault(stop_depth.get(action.app_id, 0), []).append(action)
        else:
            starts.setdefault(start_depth.get(action.app_id, 0), []).append(action)
    ordered = [sorted(stops[d], key=lambda a: a.app_id) for d in sorted(stops, reverse=True)]
    ordered += [sorted(starts[d], key=lambda a: a.app_id) for d in sorted(starts)]
    return ordered


def with_dependencies_checked(app: AppDefinition, apps: Mapping[str, AppDefinition],
                              group_dependencies: Mapping[str, Iterable[str]],
                              known_groups: Iterable[str] = ()) -> AppDefinition:
    """A single app's change: its dependencies made absolute (relative to its group) and, when
    it has any, the graph with it checked (``AppInvalid`` naming a missing one or a cycle)."""
    if not app.dependencies:
        return app
    resolved = [resolve(d, parent_of(app.id), f"/dependencies({i})") for i, d in enumerate(app.dependencies)]
    app = app.model_copy(update={"dependencies": resolved})
    dependency_graph({**apps, app.id: app}, group_dependencies, known_groups)
    return app
