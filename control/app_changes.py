"""What storing an app decides before the scheduler sees it: its version, whether the change is
a scale only, and its service ports. Pure: no state but the arguments.

- The version is now, but strictly after the app's last one (tasks tell configs apart by it).
- A change that differs from the previous app only in ``instances`` is a scale: it keeps
  ``lastConfigChangeAt`` (tasks keep running); anything else, or a restart, is a config change.
- Port 0 service ports get a unique port from ``SERVICE_PORT_RANGE``, kept across updates; a
  port given that another app holds is Marathon's 422 ("conflicts with a service port in app …").
"""

from __future__ import annotations

from collections.abc import Iterable

from control.events import iso_now, parse_iso
from control.marathon_models import AppDefinition, AppInvalid, VersionInfo

SERVICE_PORT_RANGE = (10000, 20000)


def stamp_app(app: AppDefinition, previous: AppDefinition | None, others: Iterable[AppDefinition],
              now: float, restart: bool = False) -> tuple[AppDefinition, bool]:
    """``app`` with its version, version info and service ports, and whether it only scales
    ``previous``. ``others``: every other stored app (their service ports are taken). Raises
    ``AppInvalid`` (422, naming the port's path) when no service port is left or a given one is
    another app's."""
    version = _next_version(previous, now)
    if previous is not None and not restart:
        echoed = with_ports_of(app, previous)
        if previous.config_without_scaling() == echoed.config_without_scaling():
            info = VersionInfo(last_scaling_at=version,
                               last_config_change_at=previous.version_info.last_config_change_at
                               if previous.version_info else version)
            return echoed.model_copy(update={"version": version, "version_info": info}), True
    assign_service_ports(app, previous, others)
    info = VersionInfo(last_scaling_at=version, last_config_change_at=version)
    return app.model_copy(update={"version": version, "version_info": info}), False


def _next_version(previous: AppDefinition | None, now: float) -> str:
    stamp = now
    if previous is not None and previous.version:
        stamp = max(stamp, parse_iso(previous.version) + 0.001)
    return iso_now(stamp)


def service_ports(app: AppDefinition) -> list[int]:
    if app.uses_port_mappings:
        return [m.service_port for m in app.port_mappings]
    return [d.port for d in app.port_definitions or []]


def assign_service_ports(app: AppDefinition, previous: AppDefinition | None, others: Iterable[AppDefinition]) -> None:
    """Fills ``app``'s port 0 service ports in place: ``previous``'s where still free, else the
    lowest free one. Raises ``AppInvalid`` when the range is used up."""
    owners: dict[int, str] = {}
    for other in others:
        if other.id != app.id:
            owners.update((port, other.id) for port in service_ports(other) if port)
    used = set(owners)
    old = service_ports(previous) if previous else []
    targets = app.port_mappings if app.uses_port_mappings else (app.port_definitions or [])
    for index, item in enumerate(targets):
        current = item.service_port if app.uses_port_mappings else item.port
        if current:
            if current in owners:
                raise AppInvalid([{"path": _port_field(app, index), "errors": [
                    f"Requested service port {current} conflicts with a service port in app {owners[current]}"]}])
            used.add(current)
            continue
        keep = old[index] if index < len(old) and old[index] and old[index] not in used else None
        chosen = keep or next((p for p in range(*SERVICE_PORT_RANGE) if p not in used), None)
        if chosen is None:
            begin, end = SERVICE_PORT_RANGE
            raise AppInvalid([{"path": _port_field(app, index), "errors": [
                f"no free service port left in {begin}-{end - 1}: set a port or free one"]}])
        used.add(chosen)
        if app.uses_port_mappings:
            item.service_port = chosen
        else:
            item.port = chosen


def _port_field(app: AppDefinition, index: int) -> str:
    return f"/container/portMappings({index})/servicePort" if app.uses_port_mappings \
        else f"/portDefinitions({index})/port"


def with_ports_of(app: AppDefinition, previous: AppDefinition) -> AppDefinition:
    """``app`` with ``previous``'s assigned service ports where it says 0 (so a scale-only PUT
    that echoes ports back as 0 still compares equal)."""
    candidate = app.model_copy(deep=True)
    old = service_ports(previous)
    targets = candidate.port_mappings if candidate.uses_port_mappings else (candidate.port_definitions or [])
    for index, item in enumerate(targets):
        if index < len(old):
            if candidate.uses_port_mappings and not item.service_port:
                item.service_port = old[index]
            elif not candidate.uses_port_mappings and not item.port:
                item.port = old[index]
    return candidate
