"""What Admin Router serves from the master's own knowledge, beside Marathon's and Mesos' APIs:

| route (as nginx forwards it) | answer |
|---|---|
| ``/metadata`` | ``{"PUBLIC_IPV4", "CLUSTER_ID"}`` (``dcos cluster setup`` names the cluster by it) |
| ``/dcos-metadata/dcos-version.json`` | ``{"version", "dcos-variant", "dcos-image-commit", "bootstrap-id"}`` |
| ``/mesos_dns/v1/version\\|hosts/{h}\\|services/{s}\\|records`` | Mesos-DNS's HTTP API over the records of the cluster view (``spartan_dns``' generator, as every agent builds them) |
| ``/net/v1/vips`` | the cluster's VIPs and their backends (``minuteman``'s model of the view) |
| ``/mesos/master/state-summary``, ``/mesos/state-summary`` | Mesos' state summary |

Records and VIPs are computed once per view version.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cluster.view import ClusterView
from minuteman.model import vip_model
from spartan_dns.api import check_name
from spartan_dns.http_shapes import hosts, records_json, services
from spartan_dns.records import RecordSet, generate
from spartan_dns.view_state import state_of_view

DCOS_VERSION = "1.11.0"


def _version() -> str:
    try:
        return metadata.version("navstar")
    except metadata.PackageNotFoundError:
        return "unknown"


class ViewFaces:
    def __init__(self, view: Callable[[], ClusterView], cluster_id: Callable[[], str],
                 mesos_state: Callable[[], dict[str, Any]],
                 state_summary: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.view = view
        self.cluster_id = cluster_id
        self.mesos_state = mesos_state
        self.state_summary = state_summary
        self._records: tuple[int, RecordSet] | None = None
        self._vips: tuple[int, list[dict[str, Any]]] | None = None

    def recordset(self) -> RecordSet:
        view = self.view()
        if self._records is None or self._records[0] != view.version:
            rs = generate(state_of_view(view), masters=[f"{view.master_ip}:{view.master_port}"])
            self._records = (view.version, rs)
        return self._records[1]

    def vips(self) -> list[dict[str, Any]]:
        view = self.view()
        if self._vips is None or self._vips[0] != view.version:
            model = vip_model(view)
            table = [{"vip": vip.label, "name": vip.dns_name, "address": vip.key.address, "port": vip.key.port,
                      "protocol": vip.key.protocol, "apps": sorted(vip.apps),
                      "backend": [{"ip": b.backend.ip, "port": b.backend.port, "state": str(b.state),
                                   "agent_id": b.agent_id, "task_id": b.task_id} for b in vip.backends]}
                     for vip in sorted(model.vips.values(), key=lambda v: v.label)]
            self._vips = (view.version, table)
        return self._vips[1]

    async def metadata(self, request: Request) -> JSONResponse:
        return JSONResponse({"PUBLIC_IPV4": request.headers.get("x-public-ip") or self.view().master_ip,
                             "CLUSTER_ID": self.cluster_id()})

    async def dcos_version(self, _request: Request) -> JSONResponse:
        return JSONResponse({"version": DCOS_VERSION, "dcos-variant": "open",
                             "dcos-image-commit": f"navstar-{_version()}", "bootstrap-id": "navstar"})

    def _named(self, request: Request, param: str, shape: Callable[[RecordSet, str], Any]) -> JSONResponse:
        value = request.path_params[param]
        problem = check_name(value)
        if problem:
            return JSONResponse({"error": f"{param}: {problem}", "field": param}, status_code=400)
        return JSONResponse(shape(self.recordset(), value))

    async def dns_version(self, _request: Request) -> JSONResponse:
        return JSONResponse({"Service": "Mesos-DNS", "Version": f"navstar-{_version()}",
                             "URL": "https://github.com/mesosphere/mesos-dns"})

    async def dns_host(self, request: Request) -> JSONResponse:
        return self._named(request, "host", hosts)

    async def dns_service(self, request: Request) -> JSONResponse:
        return self._named(request, "service", services)

    async def dns_records(self, _request: Request) -> JSONResponse:
        return JSONResponse(records_json(self.recordset()))

    async def net_vips(self, _request: Request) -> JSONResponse:
        return JSONResponse(self.vips())

    async def summary(self, _request: Request) -> JSONResponse:
        return JSONResponse(self.state_summary(self.mesos_state()))

    def routes(self) -> list[Route]:
        return [
            Route("/metadata", self.metadata),
            Route("/dcos-metadata/dcos-version.json", self.dcos_version),
            Route("/mesos_dns/v1/version", self.dns_version),
            Route("/mesos_dns/v1/hosts/{host}", self.dns_host),
            Route("/mesos_dns/v1/services/{service}", self.dns_service),
            Route("/mesos_dns/v1/records", self.dns_records),
            Route("/net/v1/vips", self.net_vips),
            Route("/mesos/master/state-summary", self.summary),
            Route("/mesos/state-summary", self.summary),
        ]
