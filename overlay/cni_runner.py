"""Runs a network's plugin chain the way the CNI specification (1.0) asks a runtime to.

```
ADD   plugins in order; each gets the network's name and cniVersion, the runtimeConfig for the
      capabilities it declares (portMappings), and the previous plugin's result as prevResult;
      the last result is the attachment's. A failure runs DEL over the chain, so nothing stays.
DEL   plugins in reverse, prevResult = the cached ADD result; every plugin runs even when one
      fails (the errors are joined); a missing namespace is not an error for the plugins.
CHECK plugins in order with the cached result (versions ≥ 0.4.0, unless disableCheck).
```

Environment: ``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS`` (a path), ``CNI_IFNAME``,
``CNI_PATH``, ``CNI_ARGS`` when given; configuration on stdin; the result or the error
(``{"code", "msg", "details"}``) on stdout.

The seam is ``PluginExec``: how a plugin binary runs (``overlay.cni_exec_kernel.SubprocessExec``,
a process per call, killed on timeout; ``overlay.cni_exec_fake.FakeExec`` in memory). This module
is pure: it never touches the kernel itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from overlay.cni import NetworkConfig

log = logging.getLogger("navstar.overlay.cni")

DEFAULT_TIMEOUT = 10.0
CHECK_MIN_VERSION = (0, 4, 0)


@dataclass(frozen=True)
class PluginOutput:
    returncode: int
    stdout: bytes
    stderr: bytes = b""


class PluginTimeout(Exception):
    """The plugin did not finish within its time; it (and its process group) was killed."""


class PluginExec(Protocol):
    """How a plugin runs. ``run`` returns what it printed and its exit status; raises
    ``PluginTimeout`` (the plugin is gone by then) or ``FileNotFoundError`` (no such plugin)."""

    plugin_dirs: tuple[str, ...]

    def run(self, plugin_type: str, env: Mapping[str, str], stdin: bytes, timeout: float) -> PluginOutput: ...


class CniError(Exception):
    """A plugin failed (its ``code``, ``msg`` and ``details``), hung, or answered garbage. ``str()``
    is the sentence a task's status carries."""

    def __init__(self, network: str, plugin: str, command: str, msg: str, code: int | None = None,
                 details: str = "") -> None:
        self.network, self.plugin, self.command = network, plugin, command
        self.msg, self.code, self.details = msg, code, details
        text = f"CNI network {network!r}: plugin {plugin} {command} failed: {msg}"
        if details:
            text += f" ({details})"
        if code is not None:
            text += f" [code {code}]"
        super().__init__(text)


@dataclass(frozen=True)
class Attachment:
    """What a task got from a network: its addresses (``ip/prefix``) and the plugin's result."""

    network: str
    container_id: str
    netns: str
    ifname: str
    result: dict[str, Any]
    config: dict[str, Any]                        # the conflist as it was run (DEL needs the same)
    runtime_config: dict[str, Any] = field(default_factory=dict)

    @property
    def addresses(self) -> list[str]:
        return container_addresses(self.result)

    @property
    def ips(self) -> list[str]:
        return [a.split("/", 1)[0] for a in self.addresses]

    def to_dict(self) -> dict[str, Any]:
        return {"network": self.network, "container_id": self.container_id, "netns": self.netns,
                "ifname": self.ifname, "result": self.result, "config": self.config,
                "runtime_config": self.runtime_config}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Attachment:
        return cls(str(raw["network"]), str(raw["container_id"]), str(raw["netns"]), str(raw["ifname"]),
                   dict(raw.get("result") or {}), dict(raw["config"]), dict(raw.get("runtime_config") or {}))


def container_addresses(result: Mapping[str, Any]) -> list[str]:
    """Addresses on the container's side: ``ips`` whose interface is in a sandbox (or that name
    no interface)."""
    interfaces = result.get("interfaces") or []
    out = []
    for ip in result.get("ips") or []:
        index = ip.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces) and not interfaces[index].get("sandbox"):
            continue
        if isinstance(ip.get("address"), str):
            out.append(ip["address"])
    return out


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


class CniRunner:
    """Runs chains through ``exec``; stateless (the caller keeps each ``Attachment``)."""

    def __init__(self, exec_: PluginExec, timeout: float = DEFAULT_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout: {timeout} must be positive")
        self.exec = exec_
        self.timeout = timeout

    # -- the three commands
    def add(self, network: NetworkConfig, container_id: str, netns: str, ifname: str = "eth0",
            runtime_config: Mapping[str, Any] | None = None, args: str = "") -> Attachment:
        """Raises ``CniError``; then DEL has run over the whole chain (nothing is left)."""
        config = network.to_conflist()
        runtime = dict(runtime_config or {})
        previous: dict[str, Any] | None = None
        try:
            for plugin in network.plugins:
                previous = self._call("ADD", network, plugin, container_id, netns, ifname, runtime, previous, args)
        except CniError:
            try:
                self._delete(network, container_id, netns, ifname, runtime, None, args)
            except CniError as cleanup:
                log.warning("CNI: cleaning up after a failed ADD of %s: %s", container_id, cleanup)
            raise
        result = previous or {}
        return Attachment(network.name, container_id, netns, ifname, result, config, runtime)

    def delete(self, attachment: Attachment, args: str = "") -> None:
        """Every plugin in reverse order; raises ``CniError`` (the first failure; all ran)."""
        network = NetworkConfig.model_validate(attachment.config)
        self._delete(network, attachment.container_id, attachment.netns, attachment.ifname,
                     attachment.runtime_config, attachment.result or None, args)

    def check(self, attachment: Attachment, args: str = "") -> bool:
        """True when CHECK ran and passed, False when the network does not support it; raises
        ``CniError`` when a plugin finds the attachment broken."""
        network = NetworkConfig.model_validate(attachment.config)
        if network.disable_check or _version_tuple(network.cni_version) < CHECK_MIN_VERSION:
            return False
        for plugin in network.plugins:
            self._call("CHECK", network, plugin, attachment.container_id, attachment.netns, attachment.ifname,
                       attachment.runtime_config, attachment.result, args)
        return True

    # -- internals
    def _delete(self, network: NetworkConfig, container_id: str, netns: str, ifname: str,
                runtime: Mapping[str, Any], cached: dict[str, Any] | None, args: str) -> None:
        first: CniError | None = None
        for plugin in reversed(network.plugins):
            try:
                self._call("DEL", network, plugin, container_id, netns, ifname, runtime, cached, args)
            except CniError as exc:
                log.warning("CNI: %s", exc)
                first = first or exc
        if first is not None:
            raise first

    def plugin_config(self, network: NetworkConfig, plugin: Mapping[str, Any], runtime: Mapping[str, Any],
                      previous: Mapping[str, Any] | None) -> dict[str, Any]:
        """What one plugin reads on stdin: its own object with the network's name and version,
        the runtimeConfig of the capabilities it declares, and prevResult."""
        config = {**plugin, "cniVersion": network.cni_version, "name": network.name}
        capabilities = plugin.get("capabilities") or {}
        wanted = {k: v for k, v in runtime.items() if isinstance(capabilities, dict) and capabilities.get(k)}
        if wanted:
            config["runtimeConfig"] = {**(plugin.get("runtimeConfig") or {}), **wanted}
        if previous is not None:
            config["prevResult"] = previous
        return config

    def _call(self, command: str, network: NetworkConfig, plugin: Mapping[str, Any], container_id: str,
              netns: str, ifname: str, runtime: Mapping[str, Any], previous: Mapping[str, Any] | None,
              args: str) -> dict[str, Any] | None:
        kind = str(plugin["type"])
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
               "CNI_IFNAME": ifname, "CNI_PATH": ":".join(self.exec.plugin_dirs)}
        if args:
            env["CNI_ARGS"] = args
        stdin = json.dumps(self.plugin_config(network, plugin, runtime, previous)).encode()
        try:
            out = self.exec.run(kind, env, stdin, self.timeout)
        except PluginTimeout:
            raise CniError(network.name, kind, command, f"no answer within {self.timeout:g}s; killed") from None
        except FileNotFoundError:
            raise CniError(network.name, kind, command,
                           f"not installed in {':'.join(self.exec.plugin_dirs)}") from None
        if out.returncode != 0:
            raise _plugin_error(network.name, kind, command, out)
        if command != "ADD":
            return None
        try:
            result = json.loads(out.stdout or b"{}")
        except ValueError:
            raise CniError(network.name, kind, command, f"printed no JSON result: {_tail(out.stdout)!r}") from None
        if not isinstance(result, dict):
            raise CniError(network.name, kind, command, "its result is not a JSON object")
        return result


def _tail(data: bytes, limit: int = 300) -> str:
    return data.decode(errors="replace").strip()[-limit:]


def _plugin_error(network: str, plugin: str, command: str, out: PluginOutput) -> CniError:
    """The spec's error object from stdout; else what stderr said; else the exit status."""
    try:
        error = json.loads(out.stdout)
    except ValueError:
        error = None
    if isinstance(error, dict) and error.get("msg"):
        code = error.get("code")
        return CniError(network, plugin, command, str(error["msg"]), code if isinstance(code, int) else None,
                        str(error.get("details") or ""))
    said = _tail(out.stderr) or _tail(out.stdout)
    return CniError(network, plugin, command, said or f"exited with status {out.returncode}")

