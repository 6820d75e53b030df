"""The Mesos-DNS-style HTTP API over every zone the node serves (not just ``mesos``).

Shapes come from :mod:`spartan_dns.http_shapes` (Mesos-DNS's, quirks included: a name without
records gives 200 with one all-empty entry); a name that cannot be a DNS name is a 400 naming the
problem.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from spartan_dns.http_shapes import hosts, records_json, services

if TYPE_CHECKING:
    from spartan_dns.service import DnsService



def _build_version() -> str:
    """The installed navstar's version (what ``/v1/version`` reports)."""
    try:
        return metadata.version("navstar")
    except metadata.PackageNotFoundError:
        return "unknown"


_LABEL = re.compile(r"^[a-z0-9_*]([a-z0-9_*-]{0,61}[a-z0-9_*])?$")


def check_name(name: str) -> str | None:
    """None if ``name`` can be a DNS name, else what is wrong with it."""
    bare = name.strip().rstrip(".").lower()
    if not bare:
        return "the name is empty"
    if len(bare) > 253:
        return f"the name is {len(bare)} characters long; DNS names have at most 253"
    for label in bare.split("."):
        if not _LABEL.match(label):
            return f"label {label!r} is not a DNS label (letters, digits, '-', '_', at most 63 characters)"
    return None


def routes(service: DnsService) -> list[Route]:
    def named(request: Request, param: str, shape) -> JSONResponse:
        value = request.path_params[param]
        problem = check_name(value)
        if problem:
            return JSONResponse({"error": f"{param}: {problem}", "field": param}, status_code=400)
        return JSONResponse(shape(service.recordset(), value))

    async def version(_request: Request) -> JSONResponse:
        return JSONResponse({"Service": "Mesos-DNS", "Version": f"navstar-{_build_version()}",
                             "URL": "https://github.com/mesosphere/mesos-dns"})

    async def host(request: Request) -> JSONResponse:
        return named(request, "host", hosts)

    async def service_(request: Request) -> JSONResponse:
        return named(request, "service", services)

    async def records(_request: Request) -> JSONResponse:
        return JSONResponse(records_json(service.recordset()))

    return [
        Route("/v1/version", version),
        Route("/v1/hosts/{host}", host),
        Route("/v1/services/{service}", service_),
        Route("/v1/records", records),
    ]
