#!/usr/bin/env python3
"""The project's import graph and the layering rules it must keep (issue 11).

    python3 scripts/import_graph.py            # package graph, largest files, rule violations
    python3 scripts/import_graph.py --check    # violations only; exit 1 if any
    python3 scripts/import_graph.py --root DIR # another checkout (e.g. a ``git worktree`` of an old commit)

Every import counts, at the top of a module, inside a function or under ``TYPE_CHECKING``: a
type-only or lazy import is still a dependency between two modules. Rules:

* no cycle between the project's modules;
* ``cluster/`` (the shared contract) imports no other project package;
* ``control/`` and the dataplane packages do not import ``adminrouter/`` (the front door);
* ``cosmos/`` and ``universe/`` import neither ``control/`` nor a dataplane (Marathon's API is
  their way in), and ``universe/`` not ``cosmos/``;
* ``control/`` imports no dataplane package (``minuteman``, ``overlay``, ``spartan_dns``, ``bpf``,
  ``kernel``);
* no component imports ``navstar`` (the composition root): arrows only look down;
* ``bcc``, ``pyroute2``, ``netfilterqueue`` and ``nftables`` only in the kernel-layer modules below.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("cluster", "kernel", "bpf", "control", "overlay", "minuteman", "spartan_dns", "adminrouter", "marathon_lb", "cosmos", "universe", "batch", "navstar")
DATAPLANE = ("minuteman", "overlay", "spartan_dns", "bpf", "kernel")
COMPOSITION_ROOT = "navstar"
KERNEL_LIBRARIES = ("bcc", "pyroute2", "netfilterqueue", "nftables")
# Modules allowed to import the kernel libraries: the kernel layer, and the real side of each seam.
KERNEL_LAYER = (
    "kernel",                          # the shared kernel layer (netlink engine, nftables, off-loop)
    "bpf.loader",                      # bcc: compiles and attaches the socket-LB programs
    "bpf.dns_replay",                  # bcc + pyroute2: the DNS replay table's tc program
    "minuteman.netfilter_kernel",      # the NFQUEUE dataplane's real netfilter seam
    "minuteman.nfqueue_worker",        # netfilterqueue: the queue reader process
    "overlay.netlink_kernel",          # the overlay's real netlink seam
    "overlay.netfilter_kernel",        # the overlay's real netfilter seam
    "navstar.lab",                     # the lab builds namespaces, veths and bridges
    "navstar.localnet",                # the node's loopback addresses
    "navstar.agent_main",              # pyroute2's process-wide configuration, set once at start
)


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    imports: frozenset[str]      # dotted names as written (absolute; relative ones resolved)


def modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Module]:
    found: dict[str, Module] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else ():
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            found[name] = Module(name, path, frozenset(_imports(path, name, is_package)))
    return found


def _imports(path: Path, name: str, is_package: bool) -> Iterator[str]:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            yield base
            # ``from pkg import module`` names a module too
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _resolve(target: str, known: dict[str, Module]) -> str | None:
    """The project module an import names (longest known prefix), or None for outside modules."""
    parts = target.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def module_graph(known: dict[str, Module]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in known.values():
        edges = {m for t in module.imports if (m := _resolve(t, known)) and m != module.name}
        # importing ``pkg.sub`` runs ``pkg/__init__`` first, but that is no dependency on pkg's siblings
        graph[module.name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _package(name: str) -> str:
    return name.split(".")[0]


def violations(known: dict[str, Module]) -> list[str]:
    problems: list[str] = []
    for component in cycles(module_graph(known)):
        problems.append(f"import cycle: {' ↔ '.join(component)}")
    for module in sorted(known.values(), key=lambda m: m.name):
        package = _package(module.name)
        targets = sorted({_package(t) for t in module.imports})
        for target in targets:
            if target == package:
                continue
            if package == "cluster" and target in PACKAGES:
                problems.append(f"{module.name} imports {target}: cluster/ is the bottom layer")
            if package in (*DATAPLANE, "control", "cluster") and target == "adminrouter":
                problems.append(f"{module.name} imports {target}: the front door sits above the master and dataplanes")
            if package in ("cosmos", "universe") and target in ("control", *DATAPLANE):
                problems.append(f"{module.name} imports {target}: packages reach the cluster only through Marathon's API")
            if package == "batch" and target in ("control", *DATAPLANE):
                problems.append(f"{module.name} imports {target}: a framework reaches the master only over its HTTP API")
            if package == "universe" and target == "cosmos":
                problems.append(f"{module.name} imports {target}: the Universe is data and its format, below the service")
            if package == "control" and target in DATAPLANE:
                problems.append(f"{module.name} imports {target}: control/ must not depend on a dataplane")
            if target == COMPOSITION_ROOT and package != COMPOSITION_ROOT and package in PACKAGES:
                problems.append(f"{module.name} imports {target}: components must not import the composition root")
            if target in KERNEL_LIBRARIES and not _in_kernel_layer(module.name):
                problems.append(f"{module.name} imports {target}: only the kernel-layer modules may")
    return problems


def _in_kernel_layer(name: str) -> bool:
    return any(name == allowed or name.startswith(allowed + ".") for allowed in KERNEL_LAYER)


def package_edges(known: dict[str, Module]) -> Counter[tuple[str, str]]:
    edges: Counter[tuple[str, str]] = Counter()
    for module in known.values():
        for target in {_package(t) for t in module.imports}:
            if target != _package(module.name) and (target in PACKAGES or target in KERNEL_LIBRARIES):
                edges[(_package(module.name), target)] += 1
    return edges


def report(root: Path) -> str:
    known = modules(root)
    lines = ["package → package (importing modules):"]
    lines += [f"  {a:12} → {b:15} {n}" for (a, b), n in sorted(package_edges(known).items())]
    lines.append("lines per package:")
    sizes = Counter({p: 0 for p in PACKAGES})
    for module in known.values():
        sizes[_package(module.name)] += len(module.path.read_text().splitlines())
    lines += [f"  {p:12} {n:6}" for p, n in sizes.items() if n]
    lines.append("largest files:")
    largest = sorted(known.values(), key=lambda m: -len(m.path.read_text().splitlines()))[:10]
    lines += [f"  {len(m.path.read_text().splitlines()):6}  {m.path.relative_to(root)}" for m in largest]
    problems = violations(known)
    lines.append(f"violations: {len(problems)}")
    lines += [f"  {p}" for p in problems]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    root = Path(argv[argv.index("--root") + 1]) if "--root" in argv else Path(__file__).resolve().parent.parent
    if "--check" in argv:
        problems = violations(modules(root))
        print("\n".join(problems) or "import rules hold")
        return 1 if problems else 0
    print(report(root))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
