"""What the tests made, and a check at the end of the run that all of it is gone.

Fixtures and helpers register what they create (a kernel test's namespace and cgroup, an e2e lab
by name); ``leftovers`` then looks each one up in the kernel: namespaces, ``/etc/netns`` files,
cgroups in every hierarchy, BPF pins, the lab's operator link in the root namespace, and processes
still in those namespaces or cgroups. Only what this run registered is judged, so a run beside
other work on the machine never blames it for that work's objects.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from control.agent.cgroups import Cgroup
from navstar.lab import BPFFS_ROOT, cgroup_for, operator_link, owns_namespace

NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")

_namespaces: set[str] = set()
_cgroups: set[str] = set()
_labs: set[str] = set()


def made_namespace(name: str, cgroup: str) -> None:
    _namespaces.add(name)
    _cgroups.add(cgroup)


def made_lab(name: str) -> None:
    _labs.add(name)


def _namespaces_now() -> list[str]:
    return sorted(p.name for p in NETNS_RUN.iterdir()) if NETNS_RUN.is_dir() else []


def _pids_in(namespace: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout
    return out.split()


def _cgroup_left(cgroup: Cgroup) -> list[str]:
    found = []
    for path in cgroup.paths():
        if path.is_dir():
            procs = (path / "cgroup.procs").read_text().split() if (path / "cgroup.procs").exists() else []
            found.append(f"cgroup {path}" + (f" with processes {' '.join(procs)}" if procs else ""))
    return found


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def leftovers() -> list[str]:
    """Everything registered in this run that is still in the kernel, each named."""
    found: list[str] = []
    present = set(_namespaces_now())
    for name in sorted(_namespaces):
        if name in present:
            pids = _pids_in(name)
            found.append(f"namespace {name}" + (f" with processes {' '.join(pids)}" if pids else ""))
        if (NETNS_ETC / name).exists():
            found.append(f"{NETNS_ETC / name}")
    for relpath in sorted(_cgroups):
        found += _cgroup_left(Cgroup(relpath))
    for lab in sorted(_labs):
        for namespace in sorted(present):
            if owns_namespace(lab, namespace):
                pids = _pids_in(namespace)
                found.append(f"lab {lab}: namespace {namespace}" + (f" with processes {' '.join(pids)}" if pids else ""))
        found += [f"lab {lab}: {path}" for path in sorted(NETNS_ETC.glob(f"navstar-{lab}-*"))]
        found += [f"lab {lab}: {item}" for item in _cgroup_left(cgroup_for(lab))]
        if (BPFFS_ROOT / lab).exists():
            found.append(f"lab {lab}: BPF pins under {BPFFS_ROOT / lab}")
        if _link_exists(operator_link(lab)):
            found.append(f"lab {lab}: link {operator_link(lab)} in the root namespace")
    return found
