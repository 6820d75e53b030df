"""The Mesos-DNS-style HTTP API, answered from the node's zones (all of them, not just ``mesos``).

Shapes follow Mesos-DNS: a name without records gives 200 with one empty entry
(``[{"host": "", "ip": ""}]``), as Mesos-DNS clients expect; a name that cannot be a DNS name is a
400 naming the problem.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from dnslib import QTYPE
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from navstar import __version__

if TYPE_CHECKING:
    from spartan_dns.service import DnsService

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
    def bad_name(param: str, problem: str) -> JSONResponse:
        return JSONResponse({"error": f"{param}: {problem}", "field": param}, status_code=400)

    async def version(_request: Request) -> JSONResponse:
        return JSONResponse({"Service": "Mesos-DNS", "Version": f"navstar-{__version__}",
                             "URL": "https://github.com/mesosphere/mesos-dns"})

    async def hosts(request: Request) -> JSONResponse:
        host = request.path_params["host"]
        problem = check_name(host)
        if problem:
            return bad_name("host", problem)
        name = host.strip().rstrip(".").lower() + "."
        found = []
        for qtype in (QTYPE.A, QTYPE.AAAA):
            reply = service.lookup(name, qtype)
            if reply is not None:
                found += [{"host": name, "ip": str(rr.rdata)} for rr in reply.answers if rr.rtype == qtype]
        return JSONResponse(found or [{"host": "", "ip": ""}])

    async def services(request: Request) -> JSONResponse:
        srv_name = request.path_params["service"]
        problem = check_name(srv_name)
        if problem:
            return bad_name("service", problem)
        name = srv_name.strip().rstrip(".").lower() + "."
        reply = service.lookup(name, QTYPE.SRV)
        found = []
        for rr in reply.answers if reply is not None else []:
            if rr.rtype != QTYPE.SRV:
                continue
            target = str(rr.rdata.target)
            addresses = service.lookup(target, QTYPE.A)
            ip = str(addresses.answers[0].rdata) if addresses and addresses.answers else ""
            found.append({"service": name, "host": target, "ip": ip, "port": str(rr.rdata.port)})
        return JSONResponse(found or [{"service": "", "host": "", "ip": "", "port": ""}])

    async def records(_request: Request) -> JSONResponse:
        out = []
        for zone in sorted(service.zones.zones(), key=lambda z: z.origin):
            for name, rtype, rdata in zone.names():
                if rtype == QTYPE.SRV:
                    value = f"{rdata.target}:{rdata.port}"
                else:
                    value = str(rdata)
                out.append({"name": name + ".", "rtype": QTYPE[rtype], "value": value})
        return JSONResponse(out)

    return [
        Route("/v1/version", version),
        Route("/v1/hosts/{host}", hosts),
        Route("/v1/services/{service}", services),
        Route("/v1/records", records),
    ]
