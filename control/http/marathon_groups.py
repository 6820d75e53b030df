"""Marathon REST, the many-app part: ``/v2/groups``, app versions, deployment rollback and cancel,
bulk task kills and the queue's delay reset. The rules are ``control.app_plans``'; this face
parses, renders and answers as Marathon does.

| route | answer |
|---|---|
| ``GET /v2/groups[/{id}]`` (``embed=group.groups,group.apps[.tasks\\|.lastTaskFailure]``) | the group tree |
| ``POST /v2/groups`` | 201 ``{"version", "deploymentId"}``; 409 when it exists |
| ``PUT /v2/groups/{id}`` (a body, or ``{"scaleBy": f}``) | ``{"version", "deploymentId"}`` |
| ``DELETE /v2/groups/{id}`` | ``{"version", "deploymentId"}`` |
| ``GET /v2/groups/{id}/versions[/{version}]`` | ``[newest first]`` / the group at that version |
| ``PUT /v2/groups/{id}`` ``{"version": v}`` (or ``PUT …/versions/{v}``) | the group rolled back, as a new version |
| ``GET /v2/apps/{id}/versions[/{version}]`` | ``{"versions": [newest first]}`` / the definition |
| ``DELETE /v2/deployments/{id}[?force=true]`` | 200 the rollback deployment / 202 cancelled |
| ``POST /v2/tasks/delete?scale=&wipe=`` ``{"ids": […]}`` | ``{"tasks": […]}`` / ``{"version", "deploymentId"}`` |
| ``DELETE /v2/apps/{id}/tasks?host=&scale=`` | the same |
| ``DELETE /v2/queue/{id}/delay`` | 204 |
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control import app_plans
from control.deployments import Deployment
from control.events import iso_now
from control.groups import GroupNode, group_exists, group_tree, parse_group_body
from control.marathon_models import AppDefinition, AppInvalid, normalize_app_id
from control.master import Master
from control.task_record import TaskRecord

Handler = Callable[[Request], Awaitable[Response]]


class MarathonApi(Protocol):
    """What this face takes from the apps face (``control.http.marathon.MarathonApi``)."""
    master: Master

    def app_json(self, app: AppDefinition, embeds: set[str]) -> dict[str, Any]: ...

    def task_json(self, task: TaskRecord) -> dict[str, Any]: ...

    def _app(self, raw_id: str) -> AppDefinition: ...


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() in ("1", "true", "yes")


def _deployment_answer(deployment: Deployment, status: int = 200, **headers: str) -> JSONResponse:
    return JSONResponse({"version": deployment.version, "deploymentId": deployment.id}, status_code=status,
                        headers={"Marathon-Deployment-Id": deployment.id, **headers})


def _group_id(raw: str) -> str:
    if not raw.strip("/"):
        return "/"
    try:
        return normalize_app_id(raw)
    except AppInvalid:
        raise app_plans.UnknownObject(f"Group '/{raw.strip('/')}' does not exist") from None


def _group_embeds(request: Request) -> tuple[bool, bool, set[str]]:
    """(embed groups, embed apps, the apps' own embeds) from ``embed=group.…`` parameters."""
    values = [part.strip() for value in request.query_params.getlist("embed") for part in value.split(",")]
    values = [v for v in values if v]
    if not values:
        return True, True, set()
    app_embeds = {v.split(".", 2)[2] for v in values if v.startswith("group.apps.")}
    apps = "group.apps" in values or bool(app_embeds)
    return "group.groups" in values, apps, app_embeds


class GroupsApi:
    def __init__(self, api: MarathonApi, read_json: Callable[[Request], Awaitable[Any]]) -> None:
        self.api = api
        self.read_json = read_json
        self.master = api.master
        self.scheduler = api.master.scheduler

    # ---- rendering -----------------------------------------------------------------------
    def group_json(self, node: GroupNode, groups: bool, apps: bool, app_embeds: set[str]) -> dict[str, Any]:
        own = self.master.groups.versions.versions(node.id)[:1]
        versions = [a.version for a in node.all_apps() if a.version]
        version = own[0] if own else node.version or (max(versions) if versions else iso_now(self.master.started_at))
        return {"id": node.id, "dependencies": node.dependencies, "version": version,
                "apps": [self.api.app_json(a, app_embeds) for a in node.apps] if apps else [],
                "groups": [self.group_json(g, groups, apps, app_embeds) for g in node.groups] if groups else [],
                "pods": []}

    def _node(self, group_id: str) -> GroupNode:
        apps, records = self.scheduler.apps, self.master.groups.records
        if not group_exists(group_id, apps, records):
            raise app_plans.UnknownObject(f"Group '{group_id}' does not exist")
        return group_tree(group_id, apps, records)

    # ---- groups --------------------------------------------------------------------------
    async def get_group(self, request: Request) -> JSONResponse:
        node = self._node(_group_id(request.path_params.get("group_id", "")))
        return JSONResponse(self.group_json(node, *_group_embeds(request)))

    async def create_group(self, request: Request) -> JSONResponse:
        body = parse_group_body(await self.read_json(request), images=self.master.image_map)
        deployment = app_plans.create_group(self.master, body, force=_flag(request, "force"))
        return _deployment_answer(deployment, 201, Location=f"/v2/groups{body.id}")

    async def put_group(self, request: Request) -> JSONResponse:
        group_id = _group_id(request.path_params.get("group_id", ""))
        raw = await self.read_json(request)
        if isinstance(raw, dict) and raw.get("id") is not None:
            if _group_id(str(raw["id"])) != group_id:
                raise AppInvalid([{"path": "/id", "errors": [
                    f"the id in the body ({raw['id']}) differs from the URL ({group_id}); groups cannot be renamed"]}])
            raw = {k: v for k, v in raw.items() if k != "id"}
        body = parse_group_body(raw, group_id, images=self.master.image_map)
        if body.version is not None:
            deployment = app_plans.rollback_group(self.master, group_id, body.version, force=_flag(request, "force"))
        else:
            deployment = app_plans.update_group(self.master, body, force=_flag(request, "force"))
        return _deployment_answer(deployment)

    async def delete_group(self, request: Request) -> JSONResponse:
        group_id = _group_id(request.path_params.get("group_id", ""))
        deployment = app_plans.delete_group(self.master, group_id, force=_flag(request, "force"))
        return _deployment_answer(deployment)

    async def group_versions(self, request: Request) -> JSONResponse:
        node = self._node(_group_id(request.path_params["group_id"]))
        return JSONResponse(self.master.groups.versions.versions(node.id))

    async def group_version(self, request: Request) -> JSONResponse:
        group_id, version = _group_id(request.path_params["group_id"]), request.path_params["version"]
        raw = self.master.groups.versions.raw(group_id, version)
        if raw is None:
            raise app_plans.UnknownObject(f"Group '{group_id}' does not exist in version {version}")
        return JSONResponse({**raw, "version": version, "pods": []})

    async def put_group_version(self, request: Request) -> JSONResponse:
        """marathon-python's ``rollback_group`` path."""
        group_id = _group_id(request.path_params["group_id"])
        return _deployment_answer(app_plans.rollback_group(self.master, group_id, request.path_params["version"],
                                                           force=_flag(request, "force")))

    # ---- versions ------------------------------------------------------------------------
    async def app_versions(self, request: Request) -> JSONResponse:
        app = self.api._app(request.path_params["app_id"])
        return JSONResponse({"versions": self.master.versions.versions(app.id)})

    async def app_version(self, request: Request) -> JSONResponse:
        app = self.api._app(request.path_params["app_id"])
        version = request.path_params["version"]
        found = self.master.versions.get(app.id, version)
        if found is None:
            raise app_plans.UnknownObject(f"App '{app.id}' does not exist in version {version}")
        return JSONResponse(found.to_marathon())

    # ---- deployments ---------------------------------------------------------------------
    async def delete_deployment(self, request: Request) -> Response:
        deployment_id = request.path_params["deployment_id"]
        if _flag(request, "force"):
            app_plans.cancel_deployment(self.master, deployment_id)
            return Response(status_code=202)
        return _deployment_answer(app_plans.rollback_deployment(self.master, deployment_id))

    # ---- tasks and the queue -------------------------------------------------------------
    async def delete_tasks(self, request: Request) -> JSONResponse:
        raw = await self.read_json(request)
        ids = raw.get("ids") if isinstance(raw, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise AppInvalid([{"path": "/ids", "errors": ["expected {\"ids\": [task ids]}"]}])
        tasks = [t for i in dict.fromkeys(ids) if (t := self.scheduler.tasks.get(i)) is not None and not t.terminal]
        return self._killed(tasks, request)

    async def delete_app_tasks(self, request: Request) -> JSONResponse:
        app = self.api._app(request.path_params["app_id"])
        host = request.query_params.get("host")
        tasks = [t for t in self.scheduler.app_tasks(app.id) if not t.terminal and not t.kill_requested
                 and (not host or host in (t.hostname, t.agent_ip))]
        return self._killed(tasks, request)

    def _killed(self, tasks: list[TaskRecord], request: Request) -> JSONResponse:
        deployment = app_plans.kill_tasks(self.master, tasks, scale=_flag(request, "scale"),
                                          force=_flag(request, "force"))
        if deployment is not None:
            return _deployment_answer(deployment)
        return JSONResponse({"tasks": [self.api.task_json(t) for t in tasks]})

    async def reset_delay(self, request: Request) -> Response:
        app = self.api._app(request.path_params["app_id"])
        self.scheduler.queue.reset_backoff(app.id)
        self.scheduler.poke()
        return Response(status_code=204)


def routes(api: MarathonApi, guarded: Callable[[Handler], Handler],
           read_json: Callable[[Request], Awaitable[Any]]) -> list[Route]:
    """The routes to mount before ``/v2/apps/{app_id:path}`` (whose path would swallow them);
    ``read_json``: the face's body reader (400 on malformed JSON)."""
    groups = GroupsApi(api, read_json)
    app_path = "/v2/apps/{app_id:path}"
    return [
        Route("/v2/groups", guarded(groups.get_group), methods=["GET"]),
        Route("/v2/groups", guarded(groups.create_group), methods=["POST"]),
        Route("/v2/groups/", guarded(groups.get_group), methods=["GET"]),
        Route("/v2/groups/{group_id:path}/versions/{version}", guarded(groups.group_version), methods=["GET"]),
        Route("/v2/groups/{group_id:path}/versions/{version}", guarded(groups.put_group_version), methods=["PUT"]),
        Route("/v2/groups/{group_id:path}/versions", guarded(groups.group_versions), methods=["GET"]),
        Route("/v2/groups/{group_id:path}", guarded(groups.get_group), methods=["GET"]),
        Route("/v2/groups/{group_id:path}", guarded(groups.put_group), methods=["PUT"]),
        Route("/v2/groups/{group_id:path}", guarded(groups.delete_group), methods=["DELETE"]),
        Route(app_path + "/versions/{version}", guarded(groups.app_version), methods=["GET"]),
        Route(app_path + "/versions", guarded(groups.app_versions), methods=["GET"]),
        Route(app_path + "/tasks", guarded(groups.delete_app_tasks), methods=["DELETE"]),
        Route("/v2/deployments/{deployment_id}", guarded(groups.delete_deployment), methods=["DELETE"]),
        Route("/v2/tasks/delete", guarded(groups.delete_tasks), methods=["POST"]),
        Route("/v2/queue/{app_id:path}/delay", guarded(groups.reset_delay), methods=["DELETE"]),
    ]
