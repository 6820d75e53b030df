"""``python -m spartan_dns``: the resolver on its own, without an agent (tests, benchmarks, debugging).

Zones come from files instead of the cluster view: ``--vips`` (JSON object name → address) and
``--mesos-state`` (a Mesos ``/state`` document, through ``spartan_dns.records.generate``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, help="Run the navstar node resolver standalone.")


def parse_forward_zone(text: str) -> tuple[str, list[str]]:
    """``corp.example=10.0.0.53,10.0.0.54`` → ("corp.example", [...]). Raises typer.BadParameter."""
    zone, sep, servers = text.partition("=")
    if not sep or not zone.strip() or not servers.strip():
        raise typer.BadParameter(f"{text!r}: expected zone=ip[,ip]", param_hint="--forward-zone")
    return zone.strip(), [s.strip() for s in servers.split(",") if s.strip()]


@app.command()
def serve(
    listen: Annotated[list[str], typer.Option(help="address to listen on (repeat)")] = ["198.51.100.1"],  # noqa: B006
    port: Annotated[int, typer.Option(help="UDP and TCP port")] = 53,
    upstream: Annotated[list[str] | None, typer.Option(help="upstream resolver ip[:port] (repeat); default: resolv.conf")] = None,
    forward_zone: Annotated[list[str] | None, typer.Option(help="zone=ip[,ip] (repeat)")] = None,
    node_ip: Annotated[str, typer.Option(help="this node's IP (thisnode.thisdcos.directory)")] = "127.0.0.1",
    vips: Annotated[Path | None, typer.Option(help="JSON file: VIP name → address")] = None,
    mesos_state: Annotated[Path | None, typer.Option(help="Mesos state JSON for the mesos zone")] = None,
    domain: Annotated[str, typer.Option(help="the Mesos-DNS domain")] = "mesos",
    ip_sources: Annotated[str, typer.Option(help="task IP sources, first that yields wins")] = "netinfo,mesos,host",
    label_spec: Annotated[str, typer.Option(help="rfc1123 or rfc952")] = "rfc1123",
    mesos_master: Annotated[list[str] | None, typer.Option(help="a master's ip:port (repeat; masterN)")] = None,
    allow: Annotated[list[str] | None, typer.Option(help="client network allowed to query (repeat)")] = None,
    upstream_timeout: Annotated[float, typer.Option(help="seconds per upstream")] = 1.0,
    overall_timeout: Annotated[float, typer.Option(help="seconds before SERVFAIL")] = 2.5,
    max_inflight: Annotated[int, typer.Option(help="forwarded queries in flight at most")] = 1000,
    tcp_idle_timeout: Annotated[float, typer.Option(help="seconds an idle TCP connection stays open")] = 10.0,
    metrics_listen: Annotated[str | None, typer.Option(help="host:port for /metrics and the /v1 API")] = None,
    kernel_replay: Annotated[list[str] | None, typer.Option(
        help="interface (repeat, e.g. lo) where the kernel answers own-zone queries it has seen answered (tc BPF)")] = None,
) -> None:
    """Serve DNS until SIGTERM/SIGINT."""
    from spartan_dns.service import DnsService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        service = DnsService(listen, port, upstream or None,
                             dict(parse_forward_zone(z) for z in forward_zone or []), node_ip, domain,
                             allowed_clients=allow or None, upstream_timeout=upstream_timeout,
                             overall_timeout=overall_timeout, max_inflight=max_inflight,
                             tcp_idle_timeout=tcp_idle_timeout, **_offload(kernel_replay))
        if vips is not None:
            service.set_vips(json.loads(vips.read_text()))
        if mesos_state is not None:
            from spartan_dns.records import generate

            service.set_mesos_records(generate(json.loads(mesos_state.read_text()), domain, ip_sources, label_spec,
                                               masters=mesos_master or [], listener=listen[0]))
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    asyncio.run(_run(service, metrics_listen))


def _offload(interfaces: list[str] | None) -> dict:
    """The kernel replay table for ``--kernel-replay`` (compiled here: a failure names the cause)."""
    if not interfaces:
        return {}
    from bpf.dns_replay import KernelDnsReplay
    from bpf.loader import LoaderError

    try:
        return {"replay_offload": KernelDnsReplay(), "offload_interfaces": interfaces}
    except (LoaderError, ImportError) as exc:
        raise ValueError(f"--kernel-replay: {exc}") from None


async def _run(service, metrics_listen: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    http = None
    if metrics_listen:
        http = asyncio.create_task(_serve_http(service, metrics_listen))
    print("ready", flush=True)
    await stop.wait()
    if http:
        http.cancel()
    await service.stop()


async def _serve_http(service, listen: str) -> None:
    import uvicorn
    from prometheus_client import REGISTRY, make_asgi_app
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from spartan_dns.api import routes
    from spartan_dns.metrics import DnsMetrics

    REGISTRY.register(DnsMetrics(service))
    host, _, port = listen.rpartition(":")
    api = Starlette(routes=[*routes(service), Mount("/metrics", make_asgi_app(REGISTRY))])
    await uvicorn.Server(uvicorn.Config(api, host=host or "127.0.0.1", port=int(port), log_level="warning",
                                        lifespan="off")).serve()


if __name__ == "__main__":
    app()
