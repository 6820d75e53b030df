"""``/service/<name>/`` routes from the cluster view: the Marathon apps labelled
``DCOS_SERVICE_NAME`` (pure; the supervisor renders them into nginx's configuration).

DC/OS's labels: ``DCOS_SERVICE_NAME`` (the path segment), ``DCOS_SERVICE_PORT_INDEX`` (which of
the task's ports, default 0), ``DCOS_SERVICE_SCHEME`` (``http`` or ``https``, default ``http``).
A service's upstream is each running task of the app (healthy ones first, unhealthy only when
none is healthy): ``agent_ip:host_port``, or ``container_ip:container_port`` for a task with no
host port. When the task moves, the view changes, and so does the route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cluster.view import ClusterView, TaskInfo

NAME_LABEL, PORT_INDEX_LABEL, SCHEME_LABEL = "DCOS_SERVICE_NAME", "DCOS_SERVICE_PORT_INDEX", "DCOS_SERVICE_SCHEME"
SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62})$")
RESERVED = frozenset({"marathon"})      # /service/marathon/ is Admin Router's own route


@dataclass(frozen=True)
class ServiceRoute:
    name: str
    scheme: str                          # "http" | "https"
    servers: tuple[str, ...]             # "ip:port", empty: the app has no running task
    app_id: str


def _endpoint(task: TaskInfo, index: int) -> str | None:
    if index >= len(task.ports):
        return None
    port = task.ports[index]
    if port.host_port:
        return f"{task.agent_ip}:{port.host_port}"
    if port.container_port and task.ip_addresses:
        return f"{task.ip_addresses[0]}:{port.container_port}"
    return None


def service_routes(view: ClusterView) -> tuple[list[ServiceRoute], list[str]]:
    """The routes, sorted by name, and a problem per label that cannot be served."""
    by_name: dict[str, dict] = {}
    problems: list[str] = []
    for task in view.tasks:
        name = task.labels.get(NAME_LABEL)
        if name is None:
            continue
        if not SERVICE_NAME.match(name) or name in RESERVED:
            problems.append(f"{task.app_id}: {NAME_LABEL}={name!r} cannot be a path segment")
            continue
        scheme = task.labels.get(SCHEME_LABEL, "http").lower()
        try:
            index = int(task.labels.get(PORT_INDEX_LABEL, "0"))
        except ValueError:
            index = -1
        if scheme not in ("http", "https") or index < 0:
            problems.append(f"{task.app_id}: {SCHEME_LABEL}/{PORT_INDEX_LABEL} must be http|https and a port index")
            continue
        entry = by_name.setdefault(name, {"app_id": task.app_id, "scheme": scheme, "healthy": [], "other": []})
        if entry["app_id"] != task.app_id:
            problems.append(f"{task.app_id}: service name {name!r} is taken by {entry['app_id']}")
            continue
        endpoint = _endpoint(task, index) if task.state == "TASK_RUNNING" else None
        if endpoint is not None:
            entry["healthy" if task.healthy is not False else "other"].append(endpoint)
    routes = [ServiceRoute(name, e["scheme"], tuple(sorted(e["healthy"] or e["other"])), e["app_id"])
              for name, e in sorted(by_name.items())]
    return routes, sorted(set(problems))
