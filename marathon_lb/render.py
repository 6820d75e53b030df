"""A plan (``marathon_lb.plan``) → ``haproxy.cfg`` text, and the runtime-API commands that turn one
set of backend servers into another (pure; no I/O).

Every backend has a fixed number of server slots (``srv1``…``srvN``, N from ``plan.slot_count``); a
slot is a task's address, or a placeholder in maintenance. A change that keeps every section and
slot count — the *structure* — is applied with ``set server … addr``/``state`` on the admin socket,
without a reload; anything else is a new configuration, checked and reloaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from marathon_lb.plan import Backend, Plan, Server, slot_count

Slots = dict[str, tuple[Server | None, ...]]      # backend name → its slots, in order
PLACEHOLDER = "127.0.0.1:1"                        # a free slot's address; the slot is in maintenance
HTTP_FRONTEND = "marathon_http_in"
# At a reload the old worker closes a keep-alive connection only after answering its next request
# (with "Connection: close"), never while idle: a client's request cannot cross the close.
IDLE_CLOSE = "  option idle-close-on-response"


@dataclass(frozen=True)
class Settings:
    run_dir: Path                  # sockets and files: admin.sock, status.sock
    stats_port: int = 9090
    http_port: int = 80            # the vhost frontend; 0: none
    bind_address: str = "*"
    min_slots: int = 8
    maxconn: int = 50000
    socket_dir: Path | None = None     # the unix sockets, when run_dir's path is too long for them

    @property
    def admin_socket(self) -> Path:
        return (self.socket_dir or self.run_dir) / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return (self.socket_dir or self.run_dir) / "master.sock"

    @property
    def status_socket(self) -> Path:
        return (self.socket_dir or self.run_dir) / "status.sock"

    @property
    def reserved_ports(self) -> tuple[int, ...]:
        return tuple(p for p in (self.stats_port, self.http_port) if p)


def assign_slots(plan: Plan, previous: Mapping[str, tuple[Server | None, ...]], minimum: int = 8) -> Slots:
    """Slots for ``plan``: a server that stays keeps its slot, new servers take the free ones."""
    slots: Slots = {}
    for backend in plan.backends:
        size = slot_count(len(backend.servers), minimum)
        old = list(previous.get(backend.name, ()))
        wanted = set(backend.servers)
        row: list[Server | None] = [None] * size
        if len(old) == size:
            for index, server in enumerate(old):
                if server is not None and server in wanted:
                    row[index] = server
                    wanted.discard(server)
        free = (i for i, s in enumerate(row) if s is None)
        for server in sorted(wanted):
            row[next(free)] = server
        slots[backend.name] = tuple(row)
    return slots


def _host_acl(host: str) -> str:
    return "host_" + re.sub(r"[^a-z0-9]", "_", host)


def _head(settings: Settings) -> list[str]:
    return [
        "global",
        f"  maxconn {settings.maxconn}",
        # expose-fd listeners: a reloaded worker takes the listening sockets over (no refused connection).
        f"  stats socket {settings.admin_socket} mode 600 level admin expose-fd listeners",
        "  stats timeout 30s",
        "  hard-stop-after 60s",
        "",
        "defaults",
        "  mode http",
        "  retries 6",
        "  option redispatch 1",        # every retry goes to another server (a killed task refuses fast)
        "  option dontlognull",
        "  timeout connect 3s",
        "  timeout client 30s",
        "  timeout server 30s",
        "  timeout tunnel 3600s",
        "  timeout http-keep-alive 5s",
        "  timeout http-request 15s",
        "  timeout queue 30s",
        "",
        "listen stats",
        f"  bind {settings.bind_address}:{settings.stats_port}",
        "  mode http",
        "  stats enable",
        "  stats uri /haproxy?stats",
        "  stats show-legends",            # the CSV's addr column: each server's task address
        "  monitor-uri /_haproxy_health_check",
        "  http-request use-service prometheus-exporter if { path /metrics }",
        "  use_backend marathon_lb_status if { path /_haproxy_getconfig } || { path_beg /_marathon_lb/ }",
        "",
        "backend marathon_lb_status",
        "  mode http",
        f"  server status unix@{settings.status_socket}",
    ]


def _http_frontend(plan: Plan, settings: Settings) -> list[str]:
    if not settings.http_port:
        return []
    lines = ["", f"frontend {HTTP_FRONTEND}", f"  bind {settings.bind_address}:{settings.http_port}", "  mode http",
             IDLE_CLOSE]
    routes: list[tuple[str, str]] = sorted((h, b.name) for b in plan.backends for h in b.vhosts)
    for host, _name in routes:
        lines.append(f"  acl {_host_acl(host)} req.hdr(host),field(1,:) -i {host}")
    for host, name in routes:
        lines.append(f"  use_backend {name} if {_host_acl(host)}")
    return lines


def _backend(backend: Backend, slots: tuple[Server | None, ...], settings: Settings, with_servers: bool) -> list[str]:
    lines = ["", f"frontend {backend.name}", f"  bind {settings.bind_address}:{backend.port}",
             f"  mode {backend.mode}", *([IDLE_CLOSE] if backend.mode == "http" else []), f"  use_backend {backend.name}",
             "", f"backend {backend.name}", f"  balance {backend.balance}", f"  mode {backend.mode}"]
    # Passive health: three failed connections in a row mark a server down (a killed task, before
    # Marathon says so; one lost SYN must not empty a backend); a check every 0.5 s while down brings
    # it back. Which tasks are servers at all is Marathon's health, not these checks.
    lines.append("  default-server check inter 5s downinter 500ms rise 1 fall 2"
                 " observe layer4 error-limit 3 on-error mark-down")
    if backend.mode == "http":
        lines += ["  option forwardfor",
                  # A task that just went away answers with a reset: the request goes to another.
                  "  retry-on conn-failure empty-response response-timeout"]
    for index, server in enumerate(slots, start=1):
        if not with_servers:
            lines.append(f"  server srv{index} -")
        elif server is None:
            lines.append(f"  server srv{index} {PLACEHOLDER} disabled")
        else:
            lines.append(f"  server srv{index} {server.ip}:{server.port}")
    return lines


def render(plan: Plan, slots: Mapping[str, tuple[Server | None, ...]], settings: Settings,
           with_servers: bool = True) -> str:
    """The configuration text; ``with_servers=False`` gives its structure (slots without addresses)."""
    lines: list[str] = []
    if with_servers:     # comments are no part of the structure: a new skip reason needs no reload
        lines.append(f"# marathon-lb (navstar): {len(plan.backends)} backends, {len(plan.skipped)} apps skipped")
        lines += [f"# skipped {s.app_id}: {_comment(s.reason)}" for s in plan.skipped]
    lines += _head(settings) + _http_frontend(plan, settings)
    for backend in plan.backends:
        lines += _backend(backend, slots[backend.name], settings, with_servers)
    return "\n".join(lines) + "\n"


def _comment(text: str) -> str:
    return re.sub(r"[\r\n]+", " ", text)


def runtime_commands(old: Mapping[str, tuple[Server | None, ...]], new: Mapping[str, tuple[Server | None, ...]]) -> list[str]:
    """Admin-socket commands that turn ``old`` slots into ``new`` (same backends and slot counts)."""
    commands: list[str] = []
    for name, row in sorted(new.items()):
        for index, (before, after) in enumerate(zip(old[name], row, strict=True), start=1):
            if before == after:
                continue
            server = f"{name}/srv{index}"
            if after is None:
                commands.append(f"set server {server} state maint")
                continue
            if before is not None:
                # A slot moving to another task is drained first, so no request races the address change.
                commands.append(f"set server {server} state maint")
            commands.append(f"set server {server} addr {after.ip} port {after.port}")
            # A slot that was disabled has never passed a check: without this it would wait DOWN for
            # one (a backend whose only task it is would answer 503). Marathon already says it is healthy.
            commands.append(f"set server {server} health up")
            commands.append(f"set server {server} state ready")
    return commands
