"""A throwaway multi-agent underlay in network namespaces, for kernel tests and ``bench.overlay``.

    <prefix>-ul:  br0 ──┬── u1 ═══ eth0  <prefix>-a1  198.18.X.11/24
                        ├── u2 ═══ eth0  <prefix>-a2  198.18.X.12/24
                        └── u3 ═══ eth0  <prefix>-a3  198.18.X.13/24
    task namespaces <prefix>-t<name>: empty, for ``OverlayAgent.attach_container``

Nothing is created in the root namespace and there is no default route anywhere. ``close()``
(also on ``with`` exit) ends the processes started through ``spawn`` (by pid), then every
namespace this testbed created; safe to call twice.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import uuid
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Testbed:
    __test__ = False           # not a pytest test class, despite the name

    agents: int = 3
    underlay: str = "198.18.150.0/24"
    mtu: int = 1500
    prefix: str = field(default_factory=lambda: "nvo" + uuid.uuid4().hex[:6])
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def underlay_ns(self) -> str:
        return f"{self.prefix}-ul"

    def agent_ns(self, k: int) -> str:
        return f"{self.prefix}-a{k}"

    def agent_ip(self, k: int) -> str:
        return str(ipaddress.IPv4Network(self.underlay).network_address + 10 + k)

    def task_ns(self, name: str) -> str:
        return f"{self.prefix}-t{name}"

    def __enter__(self) -> Testbed:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        self.namespaces.append(name)      # recorded first: close() removes even a half-made one
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")

    def build(self) -> None:
        prefixlen = ipaddress.IPv4Network(self.underlay).prefixlen
        self._add_ns(self.underlay_ns)
        _ip("-n", self.underlay_ns, "link", "add", "br0", "mtu", str(self.mtu), "type", "bridge")
        _ip("-n", self.underlay_ns, "link", "set", "br0", "up")
        for k in range(1, self.agents + 1):
            ns = self.agent_ns(k)
            self._add_ns(ns)
            _ip("-n", self.underlay_ns, "link", "add", f"u{k}", "mtu", str(self.mtu), "type", "veth",
                "peer", "name", "eth0", "mtu", str(self.mtu), "netns", ns)
            _ip("-n", self.underlay_ns, "link", "set", f"u{k}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.agent_ip(k)}/{prefixlen}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def add_task(self, name: str) -> str:
        ns = self.task_ns(name)
        self._add_ns(ns)
        return ns

    def run(self, ns: str, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                              timeout=timeout, check=check)

    def spawn(self, ns: str, *argv: str, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.processes.clear()
        for ns in reversed(self.namespaces):
            # Only namespaces this testbed created: whatever runs in them is ours.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()
