"""Marathon groups: a tree of groups holding apps, read from app ids and the groups' own records.

A group exists when it is the root, has a record (kind ``groups``: its ``dependencies`` and
``version``; an empty group created by a POST has only that), or holds an app. Apps stay in the
``apps`` kind; their ids are their place in the tree (``/prod/db`` is in ``/prod``).

```
POST/PUT body ─► parse_group_body (ids resolved against the enclosing group, apps validated,
                 duplicates and bad ids → 422) ─► GroupBody: apps by id, groups' records
apps + records ─► group_tree(id) ─► GroupNode (apps, groups, dependencies, version) ─► the face
```
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from control.agent.images import ImageMap
from control.app_versions import VersionLog
from control.deployment_plan import ancestors, parent_of, resolve
from control.marathon_models import AppDefinition, AppInvalid, normalize_app_id, parse_app
from control.state import StateStore

GROUP_FIELDS = {"id", "apps", "groups", "dependencies", "version", "scaleBy", "pods", "enforceRole"}


class GroupRecord(BaseModel):
    id: str
    dependencies: list[str] = Field(default_factory=list)
    version: str | None = None


@dataclass
class GroupNode:
    id: str
    dependencies: list[str]
    version: str | None
    apps: list[AppDefinition] = field(default_factory=list)
    groups: list[GroupNode] = field(default_factory=list)

    def all_apps(self) -> list[AppDefinition]:
        return self.apps + [app for group in self.groups for app in group.all_apps()]


@dataclass
class GroupBody:
    """A group as posted: the apps it defines (absolute ids) and the records of it and its subgroups."""
    id: str
    apps: dict[str, AppDefinition]
    records: dict[str, GroupRecord]
    apps_given: set[str]        # groups whose body listed ``apps`` (their other apps are removed)
    groups_given: set[str]      # groups whose body listed ``groups`` (their other subgroups are removed)
    version: str | None = None
    scale_by: float | None = None


class GroupRecords:
    """The groups' own records in the state store (kind ``groups``) and their versions (kind
    ``group_versions``: the group as each change left it, a group body)."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.records: dict[str, GroupRecord] = {}
        self.versions = VersionLog(store, "group_versions")

    def load(self) -> None:
        for group_id, raw in self._store.items("groups"):
            self.records[group_id] = GroupRecord.model_validate(raw)
        self.versions.load()

    def put(self, record: GroupRecord) -> None:
        self.records[record.id] = record
        self._store.put("groups", record.id, record.model_dump())

    def delete(self, group_id: str) -> None:
        if self.records.pop(group_id, None) is not None:
            self._store.delete("groups", group_id)

    def dependencies(self) -> dict[str, list[str]]:
        return {group_id: record.dependencies for group_id, record in self.records.items() if record.dependencies}


def in_group(path: str, group_id: str) -> bool:
    """``path`` is ``group_id`` or below it."""
    return group_id == "/" or path == group_id or path.startswith(group_id + "/")


def group_exists(group_id: str, apps: dict[str, AppDefinition], records: dict[str, GroupRecord]) -> bool:
    return group_id == "/" or group_id in records or any(
        in_group(parent_of(app_id), group_id) for app_id in apps) or any(
        in_group(record_id, group_id) for record_id in records)


def group_tree(group_id: str, apps: dict[str, AppDefinition], records: dict[str, GroupRecord]) -> GroupNode:
    """The group and everything below it (call ``group_exists`` first)."""
    children: dict[str, set[str]] = {}
    for path in list(records) + [parent_of(a) for a in apps]:
        for node, parent in zip([path, *ancestors(path)], ancestors(path), strict=False):
            children.setdefault(parent, set()).add(node)
    direct_apps: dict[str, list[AppDefinition]] = {}
    for app_id in sorted(apps):
        direct_apps.setdefault(parent_of(app_id), []).append(apps[app_id])

    def build(node_id: str) -> GroupNode:
        record = records.get(node_id)
        return GroupNode(id=node_id, dependencies=list(record.dependencies) if record else [],
                         version=record.version if record else None, apps=direct_apps.get(node_id, []),
                         groups=[build(child) for child in sorted(children.get(node_id, set())) if child != node_id])

    return build(group_id)


def group_body(node: GroupNode) -> dict[str, Any]:
    """A group as a body ``parse_group_body`` reads back (apps with every field, subgroups nested)."""
    return {"id": node.id, "dependencies": node.dependencies,
            "apps": [app.model_dump(by_alias=True, exclude_none=True) for app in node.apps],
            "groups": [group_body(group) for group in node.groups]}


def parse_group_body(raw: Any, group_id: str | None = None, images: ImageMap | None = None) -> GroupBody:
    """Validates a posted group. ``group_id`` (from the URL) wins over the body's id; ids in the
    body are relative to their enclosing group unless absolute. Raises ``AppInvalid`` (422)
    naming the field."""
    if not isinstance(raw, dict):
        raise AppInvalid([{"path": "/", "errors": ["expected a JSON object"]}])
    if group_id is None:
        group_id = _group_id(raw.get("id"), "/", "/id")
    body = GroupBody(id=group_id, apps={}, records={}, apps_given=set(), groups_given=set())
    if "scaleBy" in raw:
        factor = raw["scaleBy"]
        if isinstance(factor, bool) or not isinstance(factor, int | float) or factor < 0:
            raise AppInvalid([{"path": "/scaleBy", "errors": ["scaleBy must be a number ≥ 0"]}])
        body.scale_by = float(factor)
    if raw.get("version") is not None:
        body.version = str(raw["version"])
    _parse_node(raw, group_id, "", body, images)
    return body


def _group_id(raw_id: Any, base: str, path: str) -> str:
    if raw_id in ("/", None) and base == "/" and path == "/id":
        return "/"
    try:
        return normalize_app_id(raw_id, base=base)
    except AppInvalid:
        raise AppInvalid([{"path": path, "errors": [f"group id {raw_id!r} must be a path like /prod/web"]}]) from None


def _parse_node(raw: dict[str, Any], group_id: str, path: str, body: GroupBody, images: ImageMap | None) -> None:
    unknown = sorted(set(raw) - GROUP_FIELDS)
    if unknown:
        raise AppInvalid([{"path": f"{path}/{unknown[0]}", "errors": ["unknown group field"]}])
    if raw.get("pods"):
        raise AppInvalid([{"path": f"{path}/pods", "errors": ["pods are not supported; use apps"]}])
    dependencies = raw.get("dependencies") or []
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise AppInvalid([{"path": f"{path}/dependencies", "errors": ["expected a list of ids"]}])
    body.records[group_id] = GroupRecord(id=group_id, dependencies=[
        resolve(d, parent_of(group_id), f"{path}/dependencies({i})") for i, d in enumerate(dependencies)])
    if raw.get("apps") is not None:
        body.apps_given.add(group_id)
        for where, app_raw, app_id in _children(raw, "apps", group_id, path, body):
            try:
                app = parse_app(app_raw, app_id, images=images)
            except AppInvalid as exc:
                raise AppInvalid([{**d, "path": where + d["path"]} for d in exc.details]) from None
            deps = [resolve(d, group_id, f"{where}/dependencies({i})") for i, d in enumerate(app.dependencies)]
            body.apps[app_id] = app.model_copy(update={"dependencies": deps})
    if raw.get("groups") is not None:
        body.groups_given.add(group_id)
        for where, child, child_id in _children(raw, "groups", group_id, path, body):
            _parse_node(child, child_id, where, body, images)


def _children(raw: dict[str, Any], key: str, group_id: str, path: str,
              body: GroupBody) -> Iterator[tuple[str, dict[str, Any], str]]:
    """``raw[key]``'s entries (apps or groups) as (their path in the body, their JSON, their
    absolute id); each must be an object, a direct child of the group and not defined twice."""
    if not isinstance(raw[key], list):
        raise AppInvalid([{"path": f"{path}/{key}", "errors": [f"expected a list of {key}"]}])
    for index, item in enumerate(raw[key]):
        where = f"{path}/{key}({index})"
        if not isinstance(item, dict):
            raise AppInvalid([{"path": where, "errors": ["expected a JSON object"]}])
        child_id = _group_id(item.get("id"), group_id, f"{where}/id")
        if parent_of(child_id) != group_id:
            raise AppInvalid([{"path": f"{where}/id", "errors": [
                f"{child_id} is not a direct child of group {group_id}"]}])
        if child_id in body.apps or (key == "groups" and child_id in body.records):
            raise AppInvalid([{"path": f"{where}/id", "errors": [f"{child_id} is defined twice"]}])
        yield where, item, child_id
