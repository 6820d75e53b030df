"""HTTP views of the load balancer (Starlette): the agent's ``/v1/vips`` and the legacy ``/vips``.

``GET /v1/vips`` → ``[{"vip": "web.marathon.l4lb.thisdcos.directory:80", "protocol": "tcp",
"backend": [{"ip": ..., "port": ...}]}]`` (address VIPs as ``ip:port``);
``GET /v1/vips?detail=true`` adds every VIP (programmed or not) with name, address, status and each
backend's state, connection and failure counts (what ``navstar vip list`` shows).
``GET /vips`` (legacy minuteman, port 61421) → ``{"vips": {"ip:port[/udp]": {"ip:port": {...}}}}``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from minuteman.reconciler import LoadBalancer

_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "false", "no", ""}


def vip_routes(lb: LoadBalancer) -> list[Route]:
    async def vips(request: Request) -> JSONResponse:
        unknown = sorted(set(request.query_params) - {"detail"})
        if unknown:
            return JSONResponse({"error": f"unknown query parameter(s): {', '.join(unknown)}",
                                 "allowed": ["detail"]}, status_code=400)
        detail = request.query_params.get("detail", "").lower()
        if detail not in _TRUE | _FALSE:
            return JSONResponse({"error": f"detail: expected true or false, got {detail!r}"}, status_code=400)
        # The detail reads the dataplane's counters (kernel calls): off the loop.
        return JSONResponse(await asyncio.to_thread(lb.vips_detail) if detail in _TRUE else lb.vips_json())

    return [Route("/v1/vips", vips, methods=["GET"])]


def legacy_vips(lb: LoadBalancer) -> dict:
    """DC/OS minuteman's ``/vips``: VIP → backend → health and counters."""
    out: dict[str, dict] = {}
    for vip in lb.vips_detail():
        suffix = "" if vip["protocol"] == "tcp" else f"/{vip['protocol']}"
        out[f"{vip['address']}:{vip['port']}{suffix}"] = {
            f"{b['ip']}:{b['port']}": {"is_healthy": b["state"] == "up", "state": b["state"],
                                       "total_successes": b["connections"], "total_failures": b["failures"]}
            for b in vip["backend"]
        }
    return {"vips": out}


def legacy_app(lb: LoadBalancer) -> Starlette:
    async def vips(request: Request) -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(legacy_vips, lb))

    return Starlette(routes=[Route("/vips", vips, methods=["GET"])])
