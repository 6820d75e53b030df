"""Marathon's REST API (``:8080``) over the scheduler, with Marathon's shapes and status codes.

Errors: malformed JSON → 400, invalid app → 422 ``{"message": "Object is not valid", "details":
[...]}``, an existing id → 409, an app with a deployment running → 409 (``?force=true`` overrides),
unknown → 404. App ids are paths (``/shop/web``), so ``/v2/apps/{id}/tasks`` and friends are
matched before the plain ``/v2/apps/{id}``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from control import app_plans
from control.app_changes import SERVICE_PORT_RANGE
from control.events import iso_now
from control.http.common import guard, metrics_endpoint, pong
from control.http.marathon_groups import routes as group_routes
from control.marathon_models import (
    AppDefinition,
    AppExists,
    AppInvalid,
    AppLocked,
    merge_update,
    normalize_app_id,
    parse_app,
)
from control.master import Master
from control.master_metrics import MasterMetrics
from control.task_record import TaskRecord

log = logging.getLogger("navstar.marathon")

MARATHON_VERSION = "1.11.0"


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"message": message, **extra}


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() in ("1", "true", "yes")


def _embeds(request: Request) -> set[str]:
    found: set[str] = set()
    for value in request.query_params.getlist("embed"):
        for part in value.split(","):
            # "apps.tasks" and "app.tasks" mean the same to us.
            found.add(part.strip().split(".", 1)[-1])
    return found


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "Invalid JSON", details=[{"path": "/", "errors": [f"malformed JSON: {exc}"]}]) from None


class MarathonApi:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.scheduler = master.scheduler

    # ---- rendering -----------------------------------------------------------------------
    def task_json(self, task: TaskRecord) -> dict[str, Any]:
        ips = task.ip_addresses or [task.agent_ip]
        results = []
        if task.has_health_checks and task.healthy is not None:
            def when(at: float | None) -> str | None:
                return iso_now(at) if at is not None else None
            results.append({"alive": task.healthy, "consecutiveFailures": task.health_consecutive_failures,
                            "firstSuccess": when(task.health_first_success),
                            "lastSuccess": when(task.health_last_success),
                            "lastFailure": when(task.health_last_failure),
                            "lastFailureCause": None if task.healthy else task.message,
                            "taskId": task.task_id, "instanceId": task.task_id})
        return {
            "id": task.task_id, "appId": task.app_id, "slaveId": task.agent_id, "host": task.hostname,
            "state": task.state, "stagedAt": iso_now(task.staged_at),
            "startedAt": iso_now(task.started_at) if task.started_at else None,
            "ports": task.host_ports, "servicePorts": task.service_ports, "version": task.version,
            "ipAddresses": [{"ipAddress": ip, "protocol": "IPv4"} for ip in ips],
            "healthCheckResults": results, "localVolumes": [], "role": task.role,
        }

    def app_json(self, app: AppDefinition, embeds: set[str]) -> dict[str, Any]:
        out = app.to_marathon()
        tasks = [t for t in self.scheduler.app_tasks(app.id) if not t.terminal]
        out["tasksStaged"] = sum(1 for t in tasks if t.state in ("TASK_STAGING", "TASK_STARTING"))
        out["tasksRunning"] = sum(1 for t in tasks if t.state == "TASK_RUNNING")
        out["tasksHealthy"] = sum(1 for t in tasks if t.state == "TASK_RUNNING" and t.healthy is True)
        out["tasksUnhealthy"] = sum(1 for t in tasks if t.state == "TASK_RUNNING" and t.healthy is False)
        out["deployments"] = [{"id": d.id} for d in self.scheduler.deployments.for_app(app.id)]
        if "tasks" in embeds:
            out["tasks"] = [self.task_json(t) for t in tasks]
        if embeds & {"lastTaskFailure", "failures"} and app.id in self.scheduler.queue.last_failure:
            out["lastTaskFailure"] = self.scheduler.queue.last_failure[app.id]
        return out

    # ---- helpers -------------------------------------------------------------------------
    def _app(self, raw_id: str) -> AppDefinition:
        try:
            app_id = normalize_app_id(raw_id)
        except AppInvalid:
            raise ApiError(404, f"App '/{raw_id}' does not exist") from None
        app = self.scheduler.apps.get(app_id)
        if app is None:
            raise ApiError(404, f"App '{app_id}' does not exist")
        return app

    def _post_event(self, request: Request, app: AppDefinition) -> None:
        self.master.events.publish("api_post_event", clientIp=request.client.host if request.client else None,
                                   uri=str(request.url.path), appDefinition=app.to_marathon())

    # ---- handlers ------------------------------------------------------------------------
    async def list_apps(self, request: Request) -> JSONResponse:
        embeds = _embeds(request)
        wanted_id = request.query_params.get("id")
        wanted_cmd = request.query_params.get("cmd")
        label = request.query_params.get("label")
        apps = []
        for app in sorted(self.scheduler.apps.values(), key=lambda a: a.id):
            if wanted_id and wanted_id not in app.id:
                continue
            if wanted_cmd and wanted_cmd not in (app.cmd or ""):
                continue
            if label and not _label_matches(app.labels, label):
                continue
            apps.append(self.app_json(app, embeds))
        return JSONResponse({"apps": apps})

    async def create_app(self, request: Request) -> JSONResponse:
        body = await _json_body(request)
        app = parse_app(body, images=self.master.image_map)
        app, deployment = self.master.put_app(app, create=True)
        self._post_event(request, app)
        log.info("app %s created (%d instances)", app.id, app.instances)
        out = self.app_json(app, {"tasks"})
        return JSONResponse(out, status_code=201, headers={"Location": f"/v2/apps{app.id}",
                                                           "Marathon-Deployment-Id": deployment.id})

    async def get_app(self, request: Request) -> JSONResponse:
        app = self._app(request.path_params["app_id"])
        return JSONResponse({"app": self.app_json(app, _embeds(request) | {"tasks", "lastTaskFailure"})})

    async def put_app(self, request: Request) -> JSONResponse:
        raw_id = request.path_params["app_id"]
        body = await _json_body(request)
        try:
            app_id = normalize_app_id(raw_id)
        except AppInvalid as exc:
            raise ApiError(422, "Object is not valid", details=exc.details) from None
        if isinstance(body, dict) and body.get("id") not in (None, app_id, app_id.lstrip("/")):
            raise AppInvalid([{"path": "/id", "errors": [f"the id in the body ({body.get('id')}) differs from "
                                                         f"the URL ({app_id}); apps cannot be renamed"]}])
        previous = self.scheduler.apps.get(app_id)
        if isinstance(body, dict) and "version" in body and set(body) <= {"id", "version"}:
            if previous is None:
                raise ApiError(404, f"App '{app_id}' does not exist")
            app, deployment = app_plans.rollback_app(self.master, app_id, str(body["version"]),
                                                     force=_flag(request, "force"))
            log.info("app %s rolled back to %s", app_id, body["version"])
            return JSONResponse({"version": app.version, "deploymentId": deployment.id})
        if previous is None:
            app = parse_app(body, app_id, images=self.master.image_map)
            app, deployment = self.master.put_app(app)
            self._post_event(request, app)
            return JSONResponse({"version": app.version, "deploymentId": deployment.id}, status_code=201,
                                headers={"Location": f"/v2/apps{app_id}"})
        merged = merge_update(previous.to_marathon(), body)
        app = parse_app(merged, app_id, images=self.master.image_map)
        app, deployment = self.master.put_app(app, force=_flag(request, "force"))
        self._post_event(request, app)
        log.info("app %s updated (%s)", app_id, deployment.action)
        return JSONResponse({"version": app.version, "deploymentId": deployment.id})

    async def delete_app(self, request: Request) -> JSONResponse:
        app = self._app(request.path_params["app_id"])
        deployment = self.master.remove_app(app.id, force=_flag(request, "force"))
        log.info("app %s removed", app.id)
        return JSONResponse({"version": deployment.version, "deploymentId": deployment.id})

    async def restart_app(self, request: Request) -> JSONResponse:
        app = self._app(request.path_params["app_id"])
        app, deployment = self.master.restart_app(app.id, force=_flag(request, "force"))
        return JSONResponse({"version": app.version, "deploymentId": deployment.id})

    async def app_tasks(self, request: Request) -> JSONResponse:
        app = self._app(request.path_params["app_id"])
        tasks = [t for t in self.scheduler.app_tasks(app.id) if not t.terminal]
        return JSONResponse({"tasks": [self.task_json(t) for t in tasks]})

    async def kill_app_task(self, request: Request) -> JSONResponse:
        app = self._app(request.path_params["app_id"])
        task = self.scheduler.tasks.get(request.path_params["task_id"])
        if task is None or task.app_id != app.id:
            raise ApiError(404, f"Task '{request.path_params['task_id']}' does not exist")
        self.scheduler.kill_task(task.task_id, scale=_flag(request, "scale"))
        return JSONResponse({"task": self.task_json(task)})

    async def list_tasks(self, request: Request) -> JSONResponse:
        wanted = {s.lower() for s in request.query_params.getlist("status")}
        tasks = [t for t in sorted(self.scheduler.tasks.values(), key=lambda t: t.staged_at) if not t.terminal]
        if wanted:
            tasks = [t for t in tasks if t.state.removeprefix("TASK_").lower() in wanted]
        return JSONResponse({"tasks": [self.task_json(t) for t in tasks]})

    async def deployments(self, _request: Request) -> JSONResponse:
        return JSONResponse([d.to_marathon() for d in self.scheduler.deployments.all()])

    async def queue(self, _request: Request) -> JSONResponse:
        items = []
        for entry in self.scheduler.queue.entries.values():
            app = self.scheduler.apps.get(entry.app_id)
            if app is None:
                continue
            left = self.scheduler.queue.delay_left(entry.app_id)
            items.append({
                "app": self.app_json(app, set()), "count": entry.count, "since": iso_now(entry.since),
                "delay": {"timeLeftSeconds": round(left), "overdue": left <= 0},
                "processedOffersSummary": {
                    "processedOffersCount": sum(entry.reasons.values()),
                    "unusedOffersCount": sum(entry.reasons.values()),
                    "rejectSummaryLastOffers": [{"reason": r, "declined": n, "processed": n}
                                                for r, n in sorted(entry.reasons.items())],
                    "reason": entry.detail,
                },
                "lastUnusedOffers": [],
            })
        return JSONResponse({"queue": items})

    async def events(self, request: Request) -> StreamingResponse:
        types = set(request.query_params.getlist("event_type")) or None
        remote = request.client.host if request.client else ""
        return StreamingResponse(self.master.events.stream(types, remote=remote), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def info(self, _request: Request) -> JSONResponse:
        master = self.master
        return JSONResponse({
            "name": "marathon", "version": MARATHON_VERSION, "buildref": "navstar",
            "elected": True, "leader": f"{master.advertise_ip}:{master.marathon_port}",
            "frameworkId": f"{master.master_id}-0000",
            "marathon_config": {"master": f"http://{master.advertise_ip}:{master.mesos_port}",
                                "mesos_role": "*", "framework_name": "marathon", "hostname": master.advertise_ip,
                                "local_port_min": SERVICE_PORT_RANGE[0], "local_port_max": SERVICE_PORT_RANGE[1],
                                "default_network_name": "dcos", "task_launch_timeout": 300000,
                                "decline_offer_duration": 5000, "features": []},
            "http_config": {"http_port": master.marathon_port, "https_port": None},
            "event_subscriber": None, "zookeeper_config": {},
        })

    async def leader(self, _request: Request) -> JSONResponse:
        return JSONResponse({"leader": f"{self.master.advertise_ip}:{self.master.marathon_port}"})


def _label_matches(labels: dict[str, str], selector: str) -> bool:
    for clause in selector.split(","):
        key, sep, value = clause.partition("==")
        if sep:
            if labels.get(key.strip()) != value.strip():
                return False
        elif clause.strip() not in labels:
            return False
    return True


def marathon_app(master: Master, metrics: MasterMetrics) -> Starlette:
    """The Marathon port's app, behind the token check (``/ping`` open)."""
    api = MarathonApi(master)

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return JSONResponse(exc.body, status_code=exc.status)
            except AppInvalid as exc:
                return JSONResponse(exc.body(), status_code=422)
            except AppExists as exc:
                return JSONResponse({"message": str(exc)}, status_code=409)
            except AppLocked as exc:
                return JSONResponse({"message": str(exc), "deployments": [{"id": d} for d in exc.deployment_ids]},
                                    status_code=409)
            except app_plans.UnknownObject as exc:
                return JSONResponse({"message": str(exc)}, status_code=404)
            except app_plans.GroupExists as exc:
                return JSONResponse({"message": str(exc)}, status_code=409)
        return endpoint

    app_path = "/v2/apps/{app_id:path}"
    return guard(Starlette(routes=[
        Route("/ping", pong),
        Route("/v2/apps", guarded(api.list_apps), methods=["GET"]),
        Route("/v2/apps", guarded(api.create_app), methods=["POST"]),
        *group_routes(api, guarded, _json_body),
        Route(app_path + "/tasks/{task_id}", guarded(api.kill_app_task), methods=["DELETE"]),
        Route(app_path + "/tasks", guarded(api.app_tasks), methods=["GET"]),
        Route(app_path + "/restart", guarded(api.restart_app), methods=["POST"]),
        Route(app_path, guarded(api.get_app), methods=["GET"]),
        Route(app_path, guarded(api.put_app), methods=["PUT"]),
        Route(app_path, guarded(api.delete_app), methods=["DELETE"]),
        Route("/v2/tasks", guarded(api.list_tasks), methods=["GET"]),
        Route("/v2/deployments", guarded(api.deployments), methods=["GET"]),
        Route("/v2/queue", guarded(api.queue), methods=["GET"]),
        Route("/v2/events", guarded(api.events), methods=["GET"]),
        Route("/v2/info", guarded(api.info), methods=["GET"]),
        Route("/v2/leader", guarded(api.leader), methods=["GET"]),
        Route("/metrics", metrics_endpoint(metrics), methods=["GET"]),
    ]), master)
