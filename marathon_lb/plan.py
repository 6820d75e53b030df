"""Marathon apps and tasks → what HAProxy should serve (pure; no I/O).

An app takes part when its ``HAPROXY_GROUP`` (or a port's ``HAPROXY_{n}_GROUP``) names the
balancer's group (``*`` takes every app, with or without a group). Each of its service ports ``n``
becomes one backend named ``<app id without the leading slash, slashes as underscores>_<port>``,
as marathon-lb names it, with a frontend of the same name on that port. Labels read per port:

``HAPROXY_{n}_PORT``      the port to bind instead of the service port (and in the name)
``HAPROXY_{n}_MODE``      ``http`` or ``tcp``; default ``http`` when the port has a vhost or an
                          HTTP health check, else ``tcp``
``HAPROXY_{n}_BALANCE``   HAProxy's ``balance`` algorithm (default ``roundrobin``)
``HAPROXY_{n}_VHOST``     comma-separated host names routed by ``Host:`` on the HTTP frontend

Servers are the app's ``TASK_RUNNING`` tasks that pass every Marathon health check (when the app
has any): the agent's address and the task's host port, or — for a task on a container network —
its container address and the mapping's container port.

A bad label, or a port another app of the group already holds (the app that held it in the running
configuration keeps it; otherwise the lower app id), skips the whole app with a reason; every
other app is planned as usual. Label values are checked against strict patterns before they can
reach the configuration text.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
HOSTNAME = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
BALANCE = re.compile(r"^(roundrobin|static-rr|leastconn|first|source|random|uri|url_param [A-Za-z0-9_-]+"
                     r"|hdr\([A-Za-z0-9_-]+\)|rdp-cookie(\([A-Za-z0-9_-]+\))?)$")
MODES = ("http", "tcp")
HTTP_HEALTH = ("HTTP", "HTTPS", "MESOS_HTTP", "MESOS_HTTPS")

Resolver = Callable[[str], str | None]


@dataclass(frozen=True, order=True)
class Server:
    ip: str
    port: int
    task_id: str = field(compare=False, default="")


@dataclass(frozen=True)
class Backend:
    name: str                      # "<app>_<port>": the frontend's and the backend's name
    app_id: str
    port: int                      # the bound port (service port, or HAPROXY_{n}_PORT)
    mode: str
    balance: str
    vhosts: tuple[str, ...]
    servers: tuple[Server, ...]    # sorted


@dataclass(frozen=True)
class Skipped:
    app_id: str
    reason: str


@dataclass(frozen=True)
class Plan:
    backends: tuple[Backend, ...] = ()        # sorted by name
    skipped: tuple[Skipped, ...] = ()
    unplaced_tasks: int = 0                   # running tasks left out: no address could be found

    @property
    def owners(self) -> dict[int, str]:
        """Bound port → the app holding it (input for the next plan's conflict rule)."""
        return {b.port: b.app_id for b in self.backends}


class AppRejected(ValueError):
    """An app whose labels cannot be served; the message says which label and why."""


def backend_name(app_id: str, port: int) -> str:
    return f"{app_id.lstrip('/').replace('/', '_')}_{port}"


def in_group(labels: Mapping[str, str], index: int, group: str) -> bool:
    wanted = labels.get(f"HAPROXY_{index}_GROUP", labels.get("HAPROXY_GROUP"))
    if group == "*":
        return True
    return wanted is not None and group in [g.strip() for g in wanted.split(",")]


def network_mode(app: Mapping[str, Any]) -> str:
    """``host``, ``bridge`` or ``container`` — from either generation of Marathon's networking JSON."""
    networks = app.get("networks") or []
    if networks:
        mode = str(networks[0].get("mode", "host"))
        return {"container/bridge": "bridge", "container": "container"}.get(mode, "host")
    docker = (app.get("container") or {}).get("docker") or {}
    network = docker.get("network")
    if network == "BRIDGE":
        return "bridge"
    if network == "USER" or app.get("ipAddress"):
        return "container"
    return "host"


def port_mappings(app: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    container = app.get("container") or {}
    return list(container.get("portMappings") or (container.get("docker") or {}).get("portMappings") or [])


def service_ports(app: Mapping[str, Any]) -> list[int]:
    if network_mode(app) != "host":
        mappings = port_mappings(app)
        if mappings:
            return [int(m.get("servicePort") or 0) for m in mappings]
    definitions = app.get("portDefinitions")
    if definitions:
        return [int(d.get("port") or 0) for d in definitions]
    return [int(p or 0) for p in app.get("ports") or []]


def healthy(app: Mapping[str, Any], task: Mapping[str, Any]) -> bool:
    if task.get("state", "TASK_RUNNING") != "TASK_RUNNING":
        return False
    if not app.get("healthChecks"):
        return True
    results = task.get("healthCheckResults") or []
    return bool(results) and all(r.get("alive") for r in results)


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def task_server(app: Mapping[str, Any], task: Mapping[str, Any], index: int, resolve: Resolver) -> Server | None:
    """Where port ``index`` of ``task`` answers, or None when the task does not say."""
    task_id = str(task.get("id", ""))
    if network_mode(app) == "container":
        mappings = port_mappings(app)
        addresses = [a.get("ipAddress") for a in task.get("ipAddresses") or []]
        ip = next((i for i in (_ip(str(a)) for a in addresses if a) if i), None)
        if ip and index < len(mappings) and mappings[index].get("containerPort"):
            return Server(ip, int(mappings[index]["containerPort"]), task_id)
    ports = task.get("ports") or []
    if index >= len(ports) or not ports[index]:
        return None
    host = str(task.get("host") or "")
    ip = _ip(host) or (resolve(host) if host else None)
    if ip is None and network_mode(app) == "host":
        addresses = [str(a.get("ipAddress")) for a in task.get("ipAddresses") or []]
        ip = next((i for i in map(_ip, addresses) if i), None)
    return Server(ip, int(ports[index]), task_id) if ip else None


def _port_label(labels: Mapping[str, str], index: int, key: str) -> str | None:
    value = labels.get(f"HAPROXY_{index}_{key}")
    return value.strip() if value is not None else None


def _port_backend(app: Mapping[str, Any], index: int, service_port: int, resolve: Resolver,
                  tasks: list[Mapping[str, Any]]) -> tuple[Backend | None, int]:
    """The backend of port ``index`` (None: the port has no service port) and the count of
    running, healthy tasks that had no address. Raises AppRejected on a bad label."""
    labels: Mapping[str, str] = app.get("labels") or {}
    app_id = str(app["id"])
    port = service_port
    override = _port_label(labels, index, "PORT")
    if override is not None:
        if not override.isdigit() or not 0 < int(override) < 65536:
            raise AppRejected(f"HAPROXY_{index}_PORT: {override!r} is not a port (1-65535)")
        port = int(override)
    if not port:
        return None, 0
    vhost_text = _port_label(labels, index, "VHOST")
    vhosts = tuple(h.strip().lower() for h in vhost_text.split(",") if h.strip()) if vhost_text else ()
    for host in vhosts:
        if not HOSTNAME.match(host):
            raise AppRejected(f"HAPROXY_{index}_VHOST: {host!r} is not a host name")
    checks = [h for h in app.get("healthChecks") or [] if int(h.get("portIndex") or 0) == index]
    http_check = any(str(h.get("protocol", "")).upper() in HTTP_HEALTH for h in checks)
    mode = _port_label(labels, index, "MODE")
    if mode is None:
        mode = "http" if vhosts or http_check else "tcp"
    elif mode not in MODES:
        raise AppRejected(f"HAPROXY_{index}_MODE: {mode!r} is not one of http, tcp")
    if vhosts and mode != "http":
        raise AppRejected(f"HAPROXY_{index}_VHOST needs HAPROXY_{index}_MODE http, not {mode}")
    balance = _port_label(labels, index, "BALANCE") or "roundrobin"
    if not BALANCE.match(balance):
        raise AppRejected(f"HAPROXY_{index}_BALANCE: {balance!r} is not an HAProxy balance algorithm")
    name = backend_name(app_id, port)
    if not NAME.match(name):
        raise AppRejected(f"id: {app_id!r} gives the backend name {name!r}, which HAProxy does not accept")
    servers: set[Server] = set()
    unplaced = 0
    for task in tasks:
        if not healthy(app, task):
            continue
        server = task_server(app, task, index, resolve)
        if server is None:
            unplaced += 1
        else:
            servers.add(server)
    return Backend(name, app_id, port, mode, balance, vhosts, tuple(sorted(servers))), unplaced


def plan(apps: Iterable[Mapping[str, Any]], group: str, resolve: Resolver = lambda _host: None,
         reserved_ports: Iterable[int] = (), previous_owners: Mapping[int, str] | None = None) -> Plan:
    """The backends for the apps of ``group``. ``reserved_ports`` (the stats and HTTP ports) and
    ports held by another app skip an app; ``previous_owners`` (``Plan.owners`` of the running
    configuration) decides who keeps a contested port."""
    previous_owners = previous_owners or {}
    reserved = set(reserved_ports)
    candidates: list[tuple[str, list[Backend]]] = []
    skipped: list[Skipped] = []
    unplaced = 0
    for app in sorted(apps, key=lambda a: str(a.get("id", ""))):
        app_id = str(app.get("id", ""))
        labels = app.get("labels") or {}
        tasks = list(app.get("tasks") or [])
        backends: list[Backend] = []
        try:
            if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
                raise AppRejected("labels: expected an object of strings")
            for index, service_port in enumerate(service_ports(app)):
                if not in_group(labels, index, group):
                    continue
                backend, missing = _port_backend(app, index, service_port, resolve, tasks)
                unplaced += missing
                if backend is not None:
                    if backend.port in reserved:
                        raise AppRejected(f"port {backend.port} is reserved for marathon-lb itself")
                    if any(b.port == backend.port for b in backends):
                        raise AppRejected(f"port {backend.port} is claimed twice by this app")
                    backends.append(backend)
        except (AppRejected, ValueError, TypeError, KeyError) as exc:
            skipped.append(Skipped(app_id, str(exc)))
            continue
        if backends:
            candidates.append((app_id, backends))
    # Contested ports and vhosts: the previous holder first, then app id order.
    candidates.sort(key=lambda c: (not any(previous_owners.get(b.port) == c[0] for b in c[1]), c[0]))
    taken_ports: dict[int, str] = {}
    taken_vhosts: dict[str, str] = {}
    chosen: list[Backend] = []
    for app_id, backends in candidates:
        clash = next((f"port {b.port} is already served for {taken_ports[b.port]}"
                      for b in backends if b.port in taken_ports), None)
        clash = clash or next((f"vhost {h} is already served for {taken_vhosts[h]}"
                               for b in backends for h in b.vhosts if h in taken_vhosts), None)
        if clash:
            skipped.append(Skipped(app_id, clash))
            continue
        for backend in backends:
            taken_ports[backend.port] = app_id
            taken_vhosts.update((h, app_id) for h in backend.vhosts)
            chosen.append(backend)
    return Plan(tuple(sorted(chosen, key=lambda b: b.name)),
                tuple(sorted(skipped, key=lambda s: s.app_id)), unplaced)


def slot_count(servers: int, minimum: int = 8) -> int:
    """Server slots a backend gets: room to grow without a reload (a power of two ≥ ``minimum``)."""
    return max(minimum, 1 << math.ceil(math.log2(servers)) if servers > 1 else 1)
