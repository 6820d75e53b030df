"""CNI network configurations: the model, the ``dcos`` pair the agent writes, and the loader.

One configuration per named network in the agent's CNI directory (``--cni-config-dir``, default
``/etc/navstar/cni``), as Mesos' ``network/cni`` isolator read ``MESOS_NETWORK_CNI_CONFIG_DIR``:

* ``*.conflist`` — ``{"cniVersion", "name", "plugins": [{"type": …}, …]}`` (a chain);
* ``*.conf`` / ``*.json`` — one plugin, ``{"cniVersion", "name", "type": …}``, read as a chain
  of one.

The agent writes ``dcos.conflist`` (``m-dcos``, Mesos containers) and ``dcos-docker.conflist``
(``d-dcos``, Docker-style containers and BRIDGE networking) from the master's allocation:
``bridge`` with ``host-local`` IPAM over the half, MTU 1420, a default route via the bridge's
address, then ``portmap`` for ``portMappings``. Everything else in the directory is the
operator's. Files are read in name order; a file that does not parse, names an unsupported
version, a plugin that is not installed, or a network another file already named is skipped
with its error (``NetworkDirectory.scan`` returns both).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cluster.view import OverlayAllocation

log = logging.getLogger("navstar.overlay.cni")

DEFAULT_CONFIG_DIR = Path("/etc/navstar/cni")
DEFAULT_PLUGIN_DIRS = (Path("/usr/lib/cni"),)
SPEC_VERSION = "1.0.0"
# Result shapes this runtime parses (0.3.0 introduced "interfaces"/"ips"; CHECK needs 0.4.0).
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
CONFIG_SUFFIXES = (".conflist", ".conf", ".json")
DCOS_NETWORK = "dcos"
DCOS_DOCKER_NETWORK = "dcos-docker"
# The spec's rules for a network name and what a plugin type may be (a file name in CNI_PATH).
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
PLUGIN_TYPE_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


class CniConfigError(ValueError):
    """A configuration that cannot be used; the message names the field."""


def _version(value: str) -> str:
    if value not in SUPPORTED_VERSIONS:
        raise ValueError(f"cniVersion {value!r} is not supported; use one of {', '.join(SUPPORTED_VERSIONS)}")
    return value


class NetworkConfig(BaseModel):
    """A network as a chain of plugins (a ``.conf`` is a chain of one). ``plugins`` keep every key
    the file had: plugins read their own fields, the runtime adds ``name``, ``cniVersion``,
    ``prevResult`` and ``runtimeConfig``."""

    model_config = ConfigDict(populate_by_name=True)

    cni_version: str = Field(alias="cniVersion")
    name: str
    plugins: list[dict[str, Any]] = Field(min_length=1)
    disable_check: bool = Field(default=False, alias="disableCheck")

    @field_validator("cni_version")
    @classmethod
    def _supported(cls, value: str) -> str:
        return _version(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"name {value!r}: use letters, digits, '_', '.' and '-', starting with a letter or digit")
        return value

    @field_validator("plugins")
    @classmethod
    def _plugin_types(cls, plugins: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, plugin in enumerate(plugins):
            kind = plugin.get("type") if isinstance(plugin, dict) else None
            if not isinstance(kind, str) or not PLUGIN_TYPE_PATTERN.match(kind):
                raise ValueError(f"plugins[{index}].type: {kind!r} is not a plugin name")
        return plugins

    @property
    def types(self) -> list[str]:
        return [str(p["type"]) for p in self.plugins]

    def to_conflist(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": self.cni_version, "name": self.name, "plugins": self.plugins}
        if self.disable_check:
            out["disableCheck"] = True
        return out


def parse_config(raw: object, source: str = "<config>") -> NetworkConfig:
    """A conflist or a single-plugin conf (as parsed JSON) → ``NetworkConfig``; raises
    ``CniConfigError`` naming the file and field."""
    if not isinstance(raw, dict):
        raise CniConfigError(f"{source}: expected a JSON object")
    if "plugins" in raw:
        body = raw
    elif "type" in raw:
        plugin = {k: v for k, v in raw.items() if k not in ("cniVersion", "name")}
        body = {"cniVersion": raw.get("cniVersion"), "name": raw.get("name"), "plugins": [plugin]}
    else:
        raise CniConfigError(f"{source}: neither 'plugins' (a conflist) nor 'type' (a conf)")
    try:
        return NetworkConfig.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '/'}: {e['msg']}" for e in exc.errors())
        raise CniConfigError(f"{source}: {problems}") from None


# -- the dcos pair --------------------------------------------------------------------------
def dcos_network(name: str, bridge: str, half: str, mtu: int, data_dir: str | Path) -> NetworkConfig:
    """One half of this agent's overlay ``/24`` as DC/OS configured it: ``bridge`` on the overlay
    bridge (its first address is the gateway, which the overlay already put there), host-local
    addresses from the rest of the half, the default route via the bridge, ``portmap`` after."""
    subnet = ipaddress.IPv4Network(half)
    gateway = str(subnet.network_address + 1)
    return NetworkConfig.model_validate({"cniVersion": SPEC_VERSION, "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False, "mtu": mtu,
         "ipam": {"type": "host-local", "dataDir": str(data_dir),
                  "ranges": [[{"subnet": str(subnet), "gateway": gateway}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
    ]})


def dcos_networks(allocation: OverlayAllocation, mtu: int, data_dir: str | Path) -> list[NetworkConfig]:
    """``dcos`` on m-dcos (first ``/25``) and its Docker twin on d-dcos (second ``/25``)."""
    return [dcos_network(DCOS_NETWORK, "m-dcos", allocation.m_dcos, mtu, data_dir),
            dcos_network(DCOS_DOCKER_NETWORK, "d-dcos", allocation.d_dcos, mtu, data_dir)]


def write_config(directory: Path, config: NetworkConfig) -> bool:
    """``<directory>/<name>.conflist``, atomically; True when the content changed."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{config.name}.conflist"
    text = json.dumps(config.to_conflist(), indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


# -- the directory --------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedNetwork:
    config: NetworkConfig
    path: str

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class Scan:
    networks: dict[str, LoadedNetwork] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)       # file → why

    def describe(self) -> dict[str, Any]:
        """What the agent API answers: each network (file, plugin chain) and each skipped file."""
        return {"networks": [{"name": n.name, "file": n.path, "cniVersion": n.config.cni_version,
                              "plugins": n.config.types} for n in sorted(self.networks.values(), key=lambda n: n.name)],
                "skipped": [{"file": f, "error": e} for f, e in sorted(self.skipped.items())]}


def find_plugin(plugin_type: str, plugin_dirs: Iterable[Path]) -> Path | None:
    for directory in plugin_dirs:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class NetworkDirectory:
    """The networks configured in one directory. ``scan`` re-reads only files whose size or
    modification time changed; every skipped file is logged once per change."""

    def __init__(self, path: str | Path = DEFAULT_CONFIG_DIR, plugin_dirs: Iterable[str | Path] = DEFAULT_PLUGIN_DIRS,
                 plugin_exists: Callable[[str], bool] | None = None) -> None:
        self.path = Path(path)
        self.plugin_dirs = tuple(Path(p) for p in plugin_dirs)
        self._plugin_exists = plugin_exists or (lambda t: find_plugin(t, self.plugin_dirs) is not None)
        self._cache: dict[str, tuple[tuple[int, int], NetworkConfig | str]] = {}
        self.last = Scan()

    def scan(self) -> Scan:
        result = Scan()
        try:
            entries = sorted(p for p in self.path.iterdir()
                             if p.suffix in CONFIG_SUFFIXES and not p.name.startswith("."))
        except FileNotFoundError:
            entries = []
        seen: set[str] = set()
        for path in entries:
            key = str(path)
            seen.add(key)
            outcome = self._read(path)
            if isinstance(outcome, str):
                result.skipped[key] = outcome
                continue
            missing = [t for t in outcome.types if not self._plugin_exists(t)]
            if missing:
                result.skipped[key] = (f"{path}: plugin {missing[0]!r} is not installed in "
                                       f"{', '.join(map(str, self.plugin_dirs))}")
            elif outcome.name in result.networks:
                result.skipped[key] = (f"{path}: network {outcome.name!r} is already defined by "
                                       f"{result.networks[outcome.name].path}")
            else:
                result.networks[outcome.name] = LoadedNetwork(outcome, key)
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        for key, why in result.skipped.items():
            if self.last.skipped.get(key) != why:
                log.error("CNI: skipping %s", why)
        self.last = result
        return result

    def _read(self, path: Path) -> NetworkConfig | str:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return f"{path}: removed while reading"
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(str(path))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        outcome: NetworkConfig | str
        try:
            outcome = parse_config(json.loads(path.read_text()), str(path))
        except (OSError, UnicodeDecodeError) as exc:
            outcome = f"{path}: unreadable: {exc}"
        except json.JSONDecodeError as exc:
            outcome = f"{path}: not JSON: {exc}"
        except CniConfigError as exc:
            outcome = str(exc)
        self._cache[str(path)] = (stamp, outcome)
        return outcome
