"""Task namespaces on CNI networks: one attachment per task, kept on disk beside the plugins' own
state so DEL always runs with the configuration ADD ran with.

```
executor ──attach(task, netns, network, port mappings)──► record (intent) ──► CniRunner.add
         ◄── Attachment (addresses from the plugin's result) ──── record (+ result)
executor ──detach(task)──► CniRunner.delete (cached config and result) ──► record removed
agent start ──adopt({task: netns} alive)──► CHECK the live ones, DEL the rest (tasks that died
         while the agent was down give their host-local addresses back)
overlay ──write_dcos(allocation, mtu)──► dcos.conflist + dcos-docker.conflist in the directory
```

Records: ``<state_dir>/<task id>.json``, written before ADD runs, so an agent that dies during
an ADD finds the attachment and releases it. No step costs more with many tasks than with one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cluster.view import OverlayAllocation
from overlay.cni import NetworkConfig, NetworkDirectory, Scan, dcos_networks, write_config
from overlay.cni_runner import Attachment, CniError, CniRunner

log = logging.getLogger("navstar.overlay.cni")


class NetworkUnavailable(ValueError):
    """The task names a network this agent has no (valid) configuration for."""


class CniNetworks:
    """Thread-safe: calls for different tasks run their plugins in parallel."""

    def __init__(self, directory: NetworkDirectory, runner: CniRunner, state_dir: str | Path,
                 data_dir: str | Path) -> None:
        """``state_dir``: the attachment records; ``data_dir``: host-local's store for the dcos
        networks (``<data_dir>/<network>/<address>`` names the container holding it)."""
        self.directory = directory
        self.runner = runner
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir)
        self._lock = threading.Lock()

    # -- networks
    def scan(self) -> Scan:
        with self._lock:
            return self.directory.scan()

    def network(self, name: str) -> NetworkConfig:
        scan = self.directory.last
        if name not in scan.networks:
            scan = self.scan()      # a file dropped in since the last look
        if name not in scan.networks:
            known = ", ".join(sorted(scan.networks)) or "none"
            raise NetworkUnavailable(f"CNI network {name!r} is not configured on this agent "
                                     f"({self.directory.path}; configured: {known})")
        return scan.networks[name].config

    def write_dcos(self, allocation: OverlayAllocation, mtu: int) -> bool:
        """The dcos pair for this agent's allocation; True when a file changed. Idempotent."""
        changed = False
        for config in dcos_networks(allocation, mtu, self.data_dir):
            if write_config(self.directory.path, config):
                log.info("CNI: wrote %s/%s.conflist (%s)", self.directory.path, config.name,
                         config.plugins[0]["ipam"]["ranges"][0][0]["subnet"])
                changed = True
        if changed:
            self.scan()
        return changed

    # -- attachments
    def attach(self, task_id: str, netns: str, network_name: str,
               port_mappings: Iterable[tuple[int, int, str]] = ()) -> Attachment:
        """Runs ADD for the task's namespace (``/run/netns/<netns>``). Idempotent per task id.
        Raises ``NetworkUnavailable`` or ``CniError`` (the chain was deleted again: nothing kept)."""
        known = self.attachment(task_id)
        if known is not None and known.network == network_name and known.result:
            return known
        if known is not None:
            self.detach(task_id)
        network = self.network(network_name)
        runtime: dict[str, Any] = {}
        mappings = [{"hostPort": h, "containerPort": c, "protocol": p} for h, c, p in port_mappings]
        if mappings:
            runtime["portMappings"] = mappings
        intent = Attachment(network.name, task_id, netns_path(netns), "eth0", {}, network.to_conflist(), runtime)
        self._save(task_id, intent)
        try:
            attachment = self.runner.add(network, task_id, intent.netns, intent.ifname, runtime)
        except CniError:
            self._forget(task_id)
            raise
        self._save(task_id, attachment)
        log.info("CNI: task %s on %s at %s", task_id, network.name, ", ".join(attachment.addresses) or "-")
        return attachment

    def detach(self, task_id: str) -> None:
        """DEL with what ADD ran with. Unknown ids are ignored. Raises ``CniError`` when a plugin
        failed (the record stays, so a later ``adopt``/``detach`` runs DEL again)."""
        known = self.attachment(task_id)
        if known is None:
            return
        self.runner.delete(known)
        self._forget(task_id)

    def adopt(self, live: Mapping[str, str]) -> list[str]:
        """After an agent restart: ``live`` maps the tasks still running to their namespace.
        Their attachments are CHECKed (a failure is logged, the task keeps running); every other
        attachment is deleted. Returns what it did, a line each."""
        done: list[str] = []
        for task_id in self.task_ids():
            attachment = self.attachment(task_id)
            if attachment is None:
                continue
            if task_id in live:
                try:
                    if self.runner.check(attachment):
                        done.append(f"task {task_id}: CHECK passed on {attachment.network}")
                except CniError as exc:
                    log.warning("CNI: task %s: %s", task_id, exc)
                    done.append(f"task {task_id}: {exc}")
                continue
            try:
                self.detach(task_id)
                done.append(f"task {task_id}: gone; released {', '.join(attachment.addresses) or 'its attachment'}"
                            f" on {attachment.network}")
            except CniError as exc:
                done.append(f"task {task_id}: DEL failed: {exc}")
        for line in done:
            log.info("CNI: %s", line)
        return done

    def attachment(self, task_id: str) -> Attachment | None:
        try:
            return Attachment.from_dict(json.loads(self._record(task_id).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("CNI: unreadable attachment record of %s: %s", task_id, exc)
            return None

    def task_ids(self) -> list[str]:
        return sorted(p.stem for p in self.state_dir.glob("*.json"))

    # -- records
    def _record(self, task_id: str) -> Path:
        return self.state_dir / f"{task_id}.json"

    def _save(self, task_id: str, attachment: Attachment) -> None:
        path = self._record(task_id)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(attachment.to_dict()))
        os.replace(tmp, path)

    def _forget(self, task_id: str) -> None:
        self._record(task_id).unlink(missing_ok=True)


def netns_path(netns: str) -> str:
    """A named namespace as CNI_NETNS wants it (a path); paths are kept as they are."""
    return netns if netns.startswith("/") else f"/run/netns/{netns}"
