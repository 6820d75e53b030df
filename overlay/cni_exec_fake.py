"""``PluginExec`` in memory, for tests: plugins are Python callables, every call is recorded
(command, plugin, environment, the configuration it read), failures and hangs on demand."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from overlay.cni_runner import PluginOutput, PluginTimeout

# A fake plugin: (environment, configuration) → (exit status, what it prints as JSON).
FakePlugin = Callable[[Mapping[str, str], dict[str, Any]], tuple[int, Any]]


@dataclass(frozen=True)
class ExecCall:
    plugin: str
    command: str
    env: dict[str, str]
    config: dict[str, Any]


def passthrough(env: Mapping[str, str], config: dict[str, Any]) -> tuple[int, Any]:
    """A chained plugin that changes nothing (portmap without mappings)."""
    return 0, config.get("prevResult") or {"cniVersion": config.get("cniVersion")}


class FakeExec:
    def __init__(self, plugins: Mapping[str, FakePlugin] | None = None,
                 plugin_dirs: tuple[str, ...] = ("/fake/cni",)) -> None:
        self.plugins: dict[str, FakePlugin] = dict(plugins or {})
        self.plugin_dirs = plugin_dirs
        self.calls: list[ExecCall] = []
        self.hang: set[str] = set()          # plugin types that time out

    def run(self, plugin_type: str, env: Mapping[str, str], stdin: bytes, timeout: float) -> PluginOutput:
        config = json.loads(stdin)
        self.calls.append(ExecCall(plugin_type, env["CNI_COMMAND"], dict(env), config))
        if plugin_type in self.hang:
            raise PluginTimeout(plugin_type)
        plugin = self.plugins.get(plugin_type)
        if plugin is None:
            raise FileNotFoundError(plugin_type)
        code, printed = plugin(env, config)
        return PluginOutput(code, json.dumps(printed).encode() if printed is not None else b"")

    def commands(self) -> list[tuple[str, str]]:
        return [(c.command, c.plugin) for c in self.calls]


class FakeIpam:
    """A bridge-like fake: ADD hands out the next address of ``subnet`` per container id, DEL
    releases it; ``leases`` is the store a test inspects."""

    def __init__(self, prefix: str = "10.9.0.", start: int = 2, prefixlen: int = 24) -> None:
        self.prefix, self.next, self.prefixlen = prefix, start, prefixlen
        self.leases: dict[str, str] = {}

    def __call__(self, env: Mapping[str, str], config: dict[str, Any]) -> tuple[int, Any]:
        key = env["CNI_CONTAINERID"]
        if env["CNI_COMMAND"] == "ADD":
            if key in self.leases:
                return 1, {"code": 11, "msg": f"duplicate allocation for {key}"}
            self.leases[key] = f"{self.prefix}{self.next}"
            self.next += 1
            return 0, {"cniVersion": config["cniVersion"],
                       "interfaces": [{"name": "br"}, {"name": env["CNI_IFNAME"], "sandbox": env["CNI_NETNS"]}],
                       "ips": [{"address": f"{self.leases[key]}/{self.prefixlen}", "interface": 1}]}
        if env["CNI_COMMAND"] == "DEL":
            self.leases.pop(key, None)
        return 0, None
