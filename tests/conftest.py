"""Test layers (DESIGN.md §6): markers follow the folder; kernel and e2e tests need root.

The ``netns`` fixture gives a kernel test its own uniquely named network namespace and cgroup
and always removes both, with every process left in them.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from control.agent.cgroups import Cgroup
from tests import hygiene

LAYERS = ("unit", "kernel", "e2e")
IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        layer = next((p for p in LAYERS if p in parts), "unit")
        item.add_marker(getattr(pytest.mark, layer))
        if layer != "unit" and not IS_ROOT:
            item.add_marker(pytest.mark.skip(reason=f"{layer} tests need root"))


@dataclass
class TestNamespace:
    """A network namespace and cgroup that belong to one test."""

    name: str
    cgroup: Cgroup

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def run(self, *command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*command), capture_output=True, text=True, check=check,
                              timeout=timeout, preexec_fn=self._join)

    def popen(self, *command: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*command), preexec_fn=self._join, **kwargs)

    def _join(self) -> None:
        self.cgroup.add_pid(os.getpid())

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        return sorted(set(map(int, out.split())) | set(self.cgroup.pids()))


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        if pid != os.getpid():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


@pytest.fixture
def netns() -> Iterator[TestNamespace]:
    name = f"nvt-{uuid.uuid4().hex[:8]}"
    ns = TestNamespace(name, Cgroup(f"navstar-test/{name}"))
    hygiene.made_namespace(name, f"navstar-test/{name}")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ns.cgroup.create()
        subprocess.run(ns.argv("ip", "link", "set", "lo", "up"), check=True)
        yield ns
    finally:
        for _ in range(3):
            pids = ns.pids()
            if not pids:
                break
            _kill_all(pids)
        leftover = None
        try:
            ns.cgroup.remove()
        except OSError as exc:   # the namespace and /etc/netns still go; then report it
            leftover = exc
        for parent in Cgroup("navstar-test").paths():
            try:
                parent.rmdir()
            except OSError:
                pass
        subprocess.run(["ip", "netns", "del", name], check=False)
        etc = Path("/etc/netns") / name
        if etc.exists():
            subprocess.run(["rm", "-rf", str(etc)], check=False)
        if leftover is not None:
            raise leftover


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Hygiene: a run that leaves a namespace, cgroup, BPF pin, link or process it made fails,
    naming each (the tests' own clean-up runs before this, also after failed tests)."""
    if not IS_ROOT:
        return
    left = hygiene.leftovers()
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["hygiene: the tests left behind:", *(f"  {item}" for item in left)]
        if reporter is not None:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
