"""Cgroups seam: one named group across the hierarchies a host has.

On a pure cgroup-v2 host everything lives in one tree. On a hybrid host (this project's CI) the
v2 tree at ``/sys/fs/cgroup/unified`` is where socket-LB BPF programs attach, while CPU and memory
limits live in the v1 ``cpu`` and ``memory`` trees. A :class:`Cgroup` hides that split: the same
relative path is created, joined and removed in every tree.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupLayout:
    """Where each controller's tree is mounted on this host."""

    unified: Path
    cpu: Path | None
    memory: Path | None
    pure_v2: bool

    @classmethod
    def detect(cls, root: Path = CGROUP_ROOT) -> CgroupLayout:
        if (root / "cgroup.controllers").exists():
            return cls(unified=root, cpu=root, memory=root, pure_v2=True)
        unified = root / "unified"
        cpu = root / "cpu" if (root / "cpu" / "cpu.cfs_period_us").exists() else None
        memory = root / "memory" if (root / "memory" / "memory.limit_in_bytes").exists() else None
        return cls(unified=unified, cpu=cpu, memory=memory, pure_v2=False)


class CgroupSeam(Protocol):
    relpath: str

    def create(self) -> None: ...
    def remove(self) -> None: ...
    def add_pid(self, pid: int) -> None: ...
    def pids(self) -> list[int]: ...
    def set_limits(self, cpus: float | None, mem_mb: float | None) -> None: ...
    def exists(self) -> bool: ...


@dataclass
class Cgroup:
    """A cgroup at ``relpath`` (e.g. ``navstar/lab/agent-1``) in every tree of ``layout``."""

    relpath: str
    layout: CgroupLayout = field(default_factory=CgroupLayout.detect)

    @property
    def unified_path(self) -> Path:
        return self.layout.unified / self.relpath

    def _trees(self) -> list[Path]:
        trees = [self.layout.unified]
        for extra in (self.layout.cpu, self.layout.memory):
            if extra is not None and extra not in trees:
                trees.append(extra)
        return trees

    def paths(self) -> list[Path]:
        return [tree / self.relpath for tree in self._trees()]

    def exists(self) -> bool:
        return self.unified_path.is_dir()

    def create(self) -> None:
        """Idempotent: creates the group (and its parents) in every tree."""
        for path in self.paths():
            path.mkdir(parents=True, exist_ok=True)
        if self.layout.pure_v2:
            self._enable_v2_controllers()

    def _enable_v2_controllers(self) -> None:
        # Limits need the cpu and memory controllers enabled on every ancestor.
        parts = Path(self.relpath).parts
        node = self.layout.unified
        for part in parts:
            control = node / "cgroup.subtree_control"
            try:
                control.write_text("+cpu +memory")
            except OSError:
                pass
            node = node / part

    def add_pid(self, pid: int) -> None:
        for path in self.paths():
            (path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        """Every process in the group or any group below it (unified tree)."""
        found: list[int] = []
        if not self.unified_path.exists():
            return found
        for dirpath, _dirs, files in os.walk(self.unified_path):
            if "cgroup.procs" in files:
                try:
                    text = (Path(dirpath) / "cgroup.procs").read_text()
                except OSError:
                    continue
                found.extend(int(line) for line in text.split())
        return found

    def set_limits(self, cpus: float | None, mem_mb: float | None) -> None:
        if self.layout.pure_v2:
            base = self.unified_path
            if cpus:
                (base / "cpu.max").write_text(f"{int(cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
            if mem_mb:
                (base / "memory.max").write_text(str(int(mem_mb * 1024 * 1024)))
            return
        if cpus and self.layout.cpu is not None:
            base = self.layout.cpu / self.relpath
            (base / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (base / "cpu.cfs_quota_us").write_text(str(max(1000, int(cpus * CPU_PERIOD_US))))
        if mem_mb and self.layout.memory is not None:
            base = self.layout.memory / self.relpath
            (base / "memory.limit_in_bytes").write_text(str(int(mem_mb * 1024 * 1024)))

    def remove(self, timeout: float = 5.0) -> None:
        """Idempotent: removes the group and every group below it, deepest first.

        Processes must have been ended by their owner first; a group that stays busy past
        ``timeout`` raises ``OSError(EBUSY)``.
        """
        for path in self.paths():
            if not path.exists():
                continue
            subdirs = sorted((Path(d) for d, _, _ in os.walk(path)), key=lambda p: len(p.parts), reverse=True)
            for sub in subdirs:
                _rmdir_retrying(sub, timeout)


def _rmdir_retrying(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # A group whose last process has just exited stays busy for a moment.
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def join_in_child(cgroup: Cgroup) -> None:
    """For ``preexec_fn``: moves the calling (child) process into ``cgroup``."""
    cgroup.add_pid(os.getpid())
