"""Cosmos' HTTP face: the routes and media types the ``dcos`` CLI 0.6.1 speaks (Starlette).

| route | request (``Content-Type``) | response (``Accept``, in preference order) |
|---|---|---|
| ``GET /capabilities`` | — | ``vnd.dcos.capabilities+json`` v1 |
| ``POST /package/search`` | ``search-request`` v1 | ``search-response`` v1 |
| ``POST /package/describe`` | ``describe-request`` v1 | ``describe-response`` v3 (``{"package"}``), v2 (flat) |
| ``POST /package/list-versions`` | ``list-versions-request`` v1 | ``list-versions-response`` v1 |
| ``POST /package/render`` | ``render-request`` v1 | ``render-response`` v1 |
| ``POST /package/install`` | ``install-request`` v1 | ``install-response`` v2, v1 |
| ``POST /package/list`` | ``list-request`` v1 | ``list-response`` v1 |
| ``POST /package/uninstall`` | ``uninstall-request`` v1 | ``uninstall-response`` v1 |
| ``POST /package/repository/{list,add,delete}`` | ``repository.<op>-request`` v1 | ``repository.<op>-response`` v1 |

Every type is ``application/vnd.dcos.<…>+json;charset=utf-8;version=vN``. As Cosmos does, a
missing or unsupported ``Accept`` or ``Content-Type`` and a body that does not decode are a 400
with the error media type, ``type`` ``not_present``/``not_valid``/``not_parsed`` (or
``multiple_errors`` with each in ``data.errors``), naming the header or field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft4Validator
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cosmos.errors import CosmosError, RequestInvalid
from cosmos.service import CAPABILITIES, Cosmos, package_details

log = logging.getLogger("navstar.cosmos")

ERROR_MEDIA_TYPE = "application/vnd.dcos.package.error+json;charset=utf-8;version=v1"


def media_type(name: str, version: int) -> str:
    return f"application/vnd.dcos.{name}+json;charset=utf-8;version=v{version}"


@dataclass(frozen=True)
class MediaType:
    essence: str                      # type/subtype, lower case
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> MediaType:
        parts = [p.strip() for p in text.split(";")]
        params = {}
        for part in parts[1:]:
            key, sep, value = part.partition("=")
            if sep:
                params[key.strip().lower()] = value.strip().strip('"')
        return cls(parts[0].lower(), params)

    def accepts(self, offered: MediaType) -> bool:
        """This Accept range covers ``offered`` (wildcards, and every parameter it names)."""
        kind, _, sub = self.essence.partition("/")
        okind, _, osub = offered.essence.partition("/")
        if kind != "*" and (kind != okind or (sub != "*" and sub != osub)):
            return False
        return all(offered.params.get(k, "").lower() == v.lower() for k, v in self.params.items()
                   if k not in ("q", "charset")) and \
            self.params.get("charset", "utf-8").lower() in ("utf-8", offered.params.get("charset", "utf-8"))


def negotiate(accept: str | None, offered: list[str]) -> tuple[str | None, tuple[str, str] | None]:
    """The offered type the client prefers (by q, then our order), or a Cosmos request problem."""
    if not accept:
        return None, ("not_present", "Item header 'Accept' not present but required")
    ranges = []
    for item in accept.split(","):
        if item.strip():
            parsed = MediaType.parse(item)
            try:
                quality = float(parsed.params.get("q", "1"))
            except ValueError:
                quality = 0.0
            ranges.append((parsed, quality))
    best: tuple[float, int, str] | None = None
    for order, text in enumerate(offered):
        candidate = MediaType.parse(text)
        qualities = [q for r, q in ranges if r.accepts(candidate) and q > 0]
        if qualities and (best is None or (max(qualities), -order) > (best[0], best[1])):
            best = (max(qualities), -order, text)
    if best is None:
        return None, ("not_valid", f"Item header 'Accept' deemed invalid by rule: Media type was [{accept}] "
                                   f"but should be one of [{', '.join(offered)}]")
    return best[2], None


def content_type_problem(content_type: str | None, expected: str) -> tuple[str, str] | None:
    if not content_type:
        return "not_present", "Item header 'Content-Type' not present but required"
    got, want = MediaType.parse(content_type), MediaType.parse(expected)
    if got.essence != want.essence or got.params.get("version") != want.params.get("version") or \
            got.params.get("charset", "utf-8").lower() != "utf-8":
        return "not_valid", f"Item header 'Content-Type' deemed invalid by rule: should match one of {expected}"
    return None


def _string(*, nullable: bool = False) -> dict[str, Any]:
    return {"type": ["string", "null"] if nullable else "string"}


OPTIONAL_VERSION = _string(nullable=True)
REQUEST_SCHEMAS: dict[str, dict[str, Any]] = {
    "search": {"properties": {"query": _string(nullable=True)}},
    "describe": {"properties": {"packageName": _string(), "packageVersion": OPTIONAL_VERSION},
                 "required": ["packageName"]},
    "list-versions": {"properties": {"packageName": _string(), "includePackageVersions": {"type": "boolean"}},
                      "required": ["packageName"]},
    "render": {"properties": {"packageName": _string(), "packageVersion": OPTIONAL_VERSION,
                              "options": {"type": ["object", "null"]}, "appId": _string(nullable=True)},
               "required": ["packageName"]},
    "install": {"properties": {"packageName": _string(), "packageVersion": OPTIONAL_VERSION,
                               "options": {"type": ["object", "null"]}, "appId": _string(nullable=True)},
                "required": ["packageName"]},
    "list": {"properties": {"packageName": _string(nullable=True), "appId": _string(nullable=True)}},
    "uninstall": {"properties": {"packageName": _string(), "appId": _string(nullable=True),
                                 "all": {"type": ["boolean", "null"]}},
                  "required": ["packageName"]},
    "repository.list": {},
    # The dcos CLI sends --index as a string ("0"); Cosmos' decoder takes either.
    "repository.add": {"properties": {"name": _string(), "uri": _string(),
                                      "index": {"type": ["integer", "string", "null"], "minimum": 0,
                                                "pattern": "^[0-9]+$"}},
                       "required": ["name", "uri"]},
    "repository.delete": {"properties": {"name": _string(nullable=True), "uri": _string(nullable=True)}},
}


def _body_problem(operation: str, raw: bytes) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    if not raw.strip():
        return None, ("not_present", "Item body not present but required")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return None, ("not_parsed", f"Item 'body' unable to be parsed: not JSON: {exc}")
    schema = {"type": "object", **REQUEST_SCHEMAS[operation]}
    errors = sorted(Draft4Validator(schema).iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path)
        if first.validator == "required":
            missing = [n for n in first.validator_value if n not in (first.instance or {})]
            where, what = missing[0], "required"
        else:
            what = first.message
        return None, ("not_parsed", f"Item 'body' unable to be parsed: {where or '(body)'}: {what}")
    return body, None


def _json(payload: Any, media: str, status: int = 200) -> Response:
    return Response(json.dumps(payload).encode(), status_code=status, media_type=media)


def error_response(error: CosmosError) -> Response:
    return _json(error.body(), ERROR_MEDIA_TYPE, error.status)


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def cosmos_app(cosmos: Cosmos, registry: CollectorRegistry | None = None) -> Starlette:
    """The API; ``GET /metrics`` (Prometheus) counts requests by operation and answer type."""
    registry = registry or CollectorRegistry()
    requests = Counter("navstar_cosmos_requests_total", "Cosmos requests by operation and result "
                       "(ok, or the error type: JsonSchemaMismatch, PackageNotFound, not_valid, ...)",
                       ["operation", "result"], registry=registry)

    def rpc(operation: str, responses: list[tuple[int, Callable[[Any], Any]]], handler: Handler) -> Route:
        """``POST /package/<operation>``: headers and body checked, ``handler`` run, its result
        shaped for the version negotiated (``responses``: version → shape, preferred first)."""
        name = "package." + operation
        request_type = media_type(name + "-request", 1)
        offered = {media_type(name + "-response", v): shape for v, shape in responses}

        async def endpoint(request: Request) -> Response:
            chosen, accept_problem = negotiate(request.headers.get("accept"), list(offered))
            problems = [p for p in (accept_problem,
                                    content_type_problem(request.headers.get("content-type"), request_type)) if p]
            body, body_problem = _body_problem(operation, await request.body())
            if body_problem:
                problems.append(body_problem)
            if problems or chosen is None or body is None:
                error = RequestInvalid(problems)
                requests.labels(operation, error.kind).inc()
                return error_response(error)
            try:
                result = await handler(body)
            except CosmosError as exc:
                if exc.status >= 500:
                    log.warning("%s: %s", operation, exc.message)
                requests.labels(operation, exc.kind).inc()
                return error_response(exc)
            requests.labels(operation, "ok").inc()
            return _json(offered[chosen](result), chosen)

        return Route("/package/" + operation.replace(".", "/"), endpoint, methods=["POST"])

    def same(value: Any) -> Any:
        return value

    def describe_v2(package: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {k: package[k] for k in
                                 ("minDcosReleaseVersion", "marathon", "resource", "config", "command") if k in package}
        return {**package_details(package), **extra}

    def install_v1(answer: dict[str, Any]) -> dict[str, Any]:
        return {k: answer[k] for k in ("packageName", "packageVersion", "appId")}

    async def capabilities(request: Request) -> Response:
        offered = media_type("capabilities", 1)
        chosen, problem = negotiate(request.headers.get("accept"), [offered])
        if problem or chosen is None:
            return error_response(RequestInvalid([problem] if problem else []))
        return _json({"capabilities": CAPABILITIES}, chosen)

    routes = [
        Route("/capabilities", capabilities, methods=["GET"]),
        rpc("search", [(1, same)], lambda b: cosmos.search(b.get("query"))),
        rpc("describe", [(3, lambda p: {"package": p}), (2, describe_v2)],
            lambda b: cosmos.describe(b["packageName"], b.get("packageVersion"))),
        rpc("list-versions", [(1, same)], lambda b: cosmos.list_versions(b["packageName"])),
        rpc("render", [(1, lambda app: {"marathonJson": app})],
            lambda b: cosmos.render(b["packageName"], b.get("packageVersion"), b.get("options"), b.get("appId"))),
        rpc("install", [(2, same), (1, install_v1)],
            lambda b: cosmos.install(b["packageName"], b.get("packageVersion"), b.get("options"), b.get("appId"))),
        rpc("list", [(1, same)], lambda b: cosmos.list(b.get("packageName"), b.get("appId"))),
        rpc("uninstall", [(1, same)],
            lambda b: cosmos.uninstall(b["packageName"], b.get("appId"), bool(b.get("all")))),
        rpc("repository.list", [(1, same)], _async(lambda _b: cosmos.repository_list())),
        rpc("repository.add", [(1, same)], lambda b: cosmos.repository_add(
            b["name"], b["uri"], None if b.get("index") is None else int(b["index"]))),
        rpc("repository.delete", [(1, same)],
            _async(lambda b: cosmos.repository_delete(b.get("name"), b.get("uri")))),
    ]

    async def ping(_request: Request) -> Response:
        return Response("pong", media_type="text/plain")

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[*routes, Route("/ping", ping), Route("/metrics", metrics)])


def _async(function: Callable[[dict[str, Any]], Any]) -> Handler:
    async def run(body: dict[str, Any]) -> Any:
        return function(body)
    return run
