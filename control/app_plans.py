"""Changes to many apps at once, as one deployment: groups (create, update, scaleBy, delete),
deployment rollback and cancel, app version rollback, and bulk task kills.

Each operation works out the target (app id → definition, or None to remove it), checks it (the
dependency graph: 422 naming a missing dependency or a cycle; service ports: 422), takes the
apps' lock (409 naming the running deployments unless forced), records the versions and starts
one deployment whose steps follow the dependencies (``control.deployment_plan``).

```
group body / scaleBy / DELETE / rollback ─► targets ─► stamp (version, service ports, scale or
    restart) ─► dependency graph after the change ─► lock ─► versions, group records ─►
    Deployments.start(order_steps(actions)) ─► steps applied as the previous converge
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from control.app_changes import stamp_app, with_ports_of
from control.deployment_plan import dependency_graph, order_steps, parent_of
from control.deployments import Action, Deployment, PlanAction
from control.events import iso_now, parse_iso
from control.groups import (
    GroupBody,
    GroupRecord,
    group_body,
    group_exists,
    group_tree,
    in_group,
    parse_group_body,
)
from control.marathon_models import AppDefinition, AppInvalid
from control.scheduler import app_record
from control.task_record import TaskRecord

if TYPE_CHECKING:
    from control.master import Master


class GroupExists(Exception):
    """Marathon's 409 for POSTing a group that exists."""

    def __init__(self, group_id: str) -> None:
        super().__init__(f"Group {group_id} is already created. Use PUT to change this group.")


class UnknownObject(Exception):
    """Marathon's 404 (an unknown group, deployment or version)."""


def deploy(master: Master, targets: Mapping[str, AppDefinition | None], *, force: bool,
           records: Mapping[str, GroupRecord | None] | None = None, stamp: bool = True,
           version: str | None = None) -> Deployment:
    """Starts one deployment taking every app in ``targets`` to its definition (None: removed)
    and the group records to ``records`` (None: deleted). With ``stamp`` definitions get a new
    version and service ports; without, they are restored as they were (a rollback).

    Raises ``AppInvalid`` (422) and ``AppLocked`` (409); nothing changes then."""
    scheduler = master.scheduler
    current = dict(scheduler.apps)
    records = dict(records or {})
    after_records = {k: v for k, v in master.groups.records.items() if records.get(k, v) is not None}
    after_records.update({k: v for k, v in records.items() if v is not None})
    now = master.clock()
    after = dict(current)
    for app_id, target in targets.items():
        if target is None:
            after.pop(app_id, None)
        else:
            after[app_id] = target
    after_graph = dependency_graph(after, {k: r.dependencies for k, r in after_records.items()}, after_records)
    try:
        before_graph = dependency_graph(current, master.groups.dependencies(), master.groups.records)
    except AppInvalid:
        before_graph = {app_id: set() for app_id in current}
    actions: list[PlanAction] = []
    stamped: list[AppDefinition] = []
    for app_id in sorted(targets):
        target, previous = targets[app_id], current.get(app_id)
        if target is None:
            if previous is not None:
                actions.append(PlanAction(action="StopApplication", app_id=app_id))
            continue
        if previous is not None and _same(target, previous):
            continue
        if stamp:
            others = [a for a in after.values() if a.id != app_id]
            target, scaling = stamp_app(target, previous, others, now)
            after[app_id] = target
        else:
            scaling = previous is not None and target.config_without_scaling() == previous.config_without_scaling()
        kind: Action = "StartApplication" if previous is None else \
            "ScaleApplication" if scaling else "RestartApplication"
        actions.append(PlanAction(action=kind, app_id=app_id, app=app_record(target)))
        stamped.append(target)
    scheduler.deployments.check_lock([a.app_id for a in actions], force)
    for app in stamped:
        master.versions.record(app)
    original_groups = {group_id: (master.groups.records[group_id].model_dump()
                                  if group_id in master.groups.records else None) for group_id in records}
    for group_id, record in records.items():
        if record is None:
            master.groups.delete(group_id)
        else:
            master.groups.put(record)
    affected = [a.app_id for a in actions]
    scheduler.deployments.supersede(affected)
    original = {app_id: app_record(current[app_id]) if app_id in current else None for app_id in affected}
    deployment = scheduler.deployments.start(order_steps(actions, before_graph, after_graph), original,
                                             version or iso_now(now), original_groups)
    for action in actions:
        if action.action == "StopApplication":
            master.versions.forget(action.app_id)
    for app in stamped:
        master.report_vip_labels(app)
    scheduler.poke()
    return deployment


def _same(target: AppDefinition, previous: AppDefinition) -> bool:
    """Nothing to do: the same config and instances (version fields aside; service ports given
    as 0 match the ones assigned)."""
    echoed = with_ports_of(target, previous)
    return echoed.config_without_scaling() == previous.config_without_scaling() and \
        target.instances == previous.instances


# ---- groups ---------------------------------------------------------------------------------
def create_group(master: Master, body: GroupBody, force: bool = False) -> Deployment:
    """``POST /v2/groups``. Raises ``GroupExists`` (409) when the group exists."""
    if body.id == "/" or group_exists(body.id, master.scheduler.apps, master.groups.records):
        raise GroupExists(body.id)
    return update_group(master, body, force)


def _group_changed(master: Master, group_id: str, deployment: Deployment) -> Deployment:
    """Keeps the group as the change leaves it (its version) and says so on the event bus."""
    after = dict(master.scheduler.apps)
    for step in deployment.steps:
        for action in step:
            if action.app is None:
                after.pop(action.app_id, None)
            else:
                after[action.app_id] = AppDefinition.model_validate(action.app)
    if group_exists(group_id, after, master.groups.records):
        master.groups.versions.put(group_id, deployment.version,
                                   group_body(group_tree(group_id, after, master.groups.records)))
    master.events.publish("group_change_success", groupId=group_id, version=deployment.version)
    return deployment


def _next_group_version(master: Master, group_id: str) -> str:
    """Now, but strictly after the group's last version (versions tell a group's states apart)."""
    now = master.clock()
    last = master.groups.versions.versions(group_id)[:1]
    return iso_now(max(now, parse_iso(last[0]) + 0.001) if last else now)


def rollback_group(master: Master, group_id: str, version: str, force: bool = False) -> Deployment:
    """``PUT /v2/groups/{id}`` with ``{"version": …}``: the group made what it was at that
    version again (apps added since stop, removed ones start), as a new version. Raises
    ``UnknownObject`` (404)."""
    raw = master.groups.versions.raw(group_id, version)
    if raw is None:
        raise UnknownObject(f"Group '{group_id}' does not exist in version {version}")
    return update_group(master, parse_group_body({k: v for k, v in raw.items() if k != "id"}, group_id), force)


def update_group(master: Master, body: GroupBody, force: bool = False) -> Deployment:
    """``PUT /v2/groups/{id}``: the group becomes what the body says (apps and subgroups listed
    replace the ones there; fields left out stay); ``scaleBy`` scales every app below it; a
    group that does not exist is created."""
    apps = master.scheduler.apps
    if body.scale_by is not None:
        if not group_exists(body.id, apps, master.groups.records):
            raise UnknownObject(f"Group '{body.id}' does not exist")
        targets: dict[str, AppDefinition | None] = {
            app_id: app.model_copy(update={"instances": math.ceil(app.instances * body.scale_by - 1e-9)})
            for app_id, app in apps.items() if in_group(app_id, body.id)}
        return _group_changed(master, body.id, deploy(master, targets, force=force,
                                                      version=_next_group_version(master, body.id)))
    for group_id in body.records:
        if group_id in apps:
            raise AppInvalid([{"path": "/id", "errors": [f"{group_id} is an app; a group cannot take its id"]}])
    for app_id in body.apps:
        if app_id in master.groups.records or any(a.startswith(app_id + "/") for a in apps):
            raise AppInvalid([{"path": "/apps", "errors": [f"{app_id} is a group; an app cannot take its id"]}])
    targets = dict(body.apps)
    for group_id in body.apps_given:
        for app_id in apps:
            if parent_of(app_id) == group_id and app_id not in body.apps:
                targets[app_id] = None
    records: dict[str, GroupRecord | None] = {}
    for group_id, record in body.records.items():
        existing = master.groups.records.get(group_id)
        records[group_id] = record.model_copy(update={"version": iso_now(master.clock())}) \
            if existing is None or existing.dependencies != record.dependencies else existing
    for group_id in body.groups_given:
        if group_exists(group_id, apps, master.groups.records):
            for sub in group_tree(group_id, apps, master.groups.records).groups:
                if sub.id not in body.records:
                    _remove_subtree(master, sub.id, targets, records)
    return _group_changed(master, body.id, deploy(master, targets, force=force, records=records,
                                                  version=_next_group_version(master, body.id)))


def delete_group(master: Master, group_id: str, force: bool = False) -> Deployment:
    """``DELETE /v2/groups/{id}``: every app below it stops (dependents first), the group and
    its subgroups are forgotten. Raises ``UnknownObject`` (404)."""
    if not group_exists(group_id, master.scheduler.apps, master.groups.records):
        raise UnknownObject(f"Group '{group_id}' does not exist")
    targets: dict[str, AppDefinition | None] = {}
    records: dict[str, GroupRecord | None] = {}
    _remove_subtree(master, group_id, targets, records)
    deployment = deploy(master, targets, force=force, records=records)
    for owner in master.groups.versions.owners():
        if in_group(owner, group_id):
            master.groups.versions.forget(owner)
    master.events.publish("group_change_success", groupId=group_id, version=deployment.version)
    return deployment


def _remove_subtree(master: Master, group_id: str, targets: dict[str, AppDefinition | None],
                    records: dict[str, GroupRecord | None]) -> None:
    for app_id in master.scheduler.apps:
        if in_group(app_id, group_id) and app_id != group_id:
            targets[app_id] = None
    for record_id in master.groups.records:
        if in_group(record_id, group_id) and record_id != "/":
            records[record_id] = None


# ---- deployments and versions ---------------------------------------------------------------
def rollback_deployment(master: Master, deployment_id: str) -> Deployment:
    """``DELETE /v2/deployments/{id}``: a new deployment back to the definitions the apps had
    before it (apps it created are removed), in dependency order; the old one ends. Raises
    ``UnknownObject`` (404)."""
    old = master.scheduler.deployments.get(deployment_id)
    if old is None:
        raise UnknownObject(f"DeploymentPlan {deployment_id} does not exist")
    targets = {app_id: AppDefinition.model_validate(raw) if raw is not None else None
               for app_id, raw in old.original.items()}
    # Apps of plan steps not reached yet are not stored: their original is what is there now.
    records = {group_id: GroupRecord.model_validate(raw) if raw is not None else None
               for group_id, raw in old.original_groups.items()}
    master.scheduler.deployments.supersede(old.affected_apps)
    return deploy(master, targets, force=True, records=records, stamp=False)


def cancel_deployment(master: Master, deployment_id: str) -> Deployment:
    """``DELETE /v2/deployments/{id}?force=true``: the deployment stops, nothing is rolled back.
    Raises ``UnknownObject`` (404)."""
    if master.scheduler.deployments.get(deployment_id) is None:
        raise UnknownObject(f"DeploymentPlan {deployment_id} does not exist")
    return master.scheduler.deployments.cancel(deployment_id)


def rollback_app(master: Master, app_id: str, version: str, force: bool = False) -> tuple[AppDefinition, Deployment]:
    """``PUT /v2/apps/{id}`` with ``{"version": …}``: that version's definition stored again as
    a new version (its tasks replaced when the config differs). Raises ``UnknownObject`` (404)."""
    old = master.versions.get(app_id, version)
    if old is None:
        raise UnknownObject(f"App '{app_id}' does not exist in version {version}")
    return master.put_app(old.model_copy(update={"version": None, "version_info": None}), force=force)


# ---- tasks ----------------------------------------------------------------------------------
def kill_tasks(master: Master, tasks: list[TaskRecord], scale: bool, force: bool = False) -> Deployment | None:
    """Kills the tasks (``POST /v2/tasks/delete``, ``DELETE /v2/apps/{id}/tasks``). With
    ``scale`` their apps shrink by as many, as one deployment (409 while the apps have one,
    unless ``force``); without, they are replaced. Returns the deployment (None without ``scale``)."""
    scheduler = master.scheduler
    if not scale:
        for task in tasks:
            scheduler.kill_task(task.task_id, scale=False)
        return None
    fewer: dict[str, int] = {}
    for task in tasks:
        if task.app_id in scheduler.apps:
            fewer[task.app_id] = fewer.get(task.app_id, 0) + 1
    scheduler.deployments.check_lock(list(fewer), force)
    for task in tasks:
        scheduler.kill_task(task.task_id, scale=False)
    targets: dict[str, AppDefinition | None] = {
        app_id: scheduler.apps[app_id].model_copy(update={"instances": max(0, scheduler.apps[app_id].instances - n)})
        for app_id, n in fewer.items()}
    return deploy(master, targets, force=True)

