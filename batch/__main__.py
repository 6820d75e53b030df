"""``python -m batch``: the batch framework's process — its scheduler and its HTTP API in one loop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from batch.api import batch_app
from batch.framework import BatchFramework


def main(
    master: Annotated[str, typer.Option(envvar="MESOS_MASTER_URL", help="the master's Mesos API, http://ip:5050")],
    listen: Annotated[str, typer.Option(help="host:port of the jobs API")] = "0.0.0.0:8000",
    name: Annotated[str, typer.Option(help="the framework's name (and its DNS name)")] = "batch",
    role: Annotated[str, typer.Option(help="the framework's role (DRF weights are per role)")] = "*",
    principal: Annotated[str | None, typer.Option(envvar="MESOS_PRINCIPAL", help="HTTP Basic principal")] = None,
    secret_file: Annotated[str | None, typer.Option(envvar="MESOS_SECRET_FILE", help="file with the secret")] = None,
    secret: Annotated[str | None, typer.Option(envvar="MESOS_SECRET", help="HTTP Basic secret")] = None,
    failover_timeout: Annotated[float, typer.Option(help="seconds the master keeps our tasks while we are away")]
    = 300.0,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if secret_file:
        secret = Path(secret_file).read_text().strip()
    host, _, port = listen.rpartition(":")
    framework = BatchFramework(master, name, role, principal, secret, failover_timeout)

    async def serve() -> None:
        server = uvicorn.Server(uvicorn.Config(batch_app(framework), host=host or "0.0.0.0", port=int(port),
                                               log_level="warning", access_log=False))
        scheduler = asyncio.ensure_future(framework.run())
        try:
            await server.serve()
        finally:
            scheduler.cancel()
            await framework.close()

    asyncio.run(serve())


if __name__ == "__main__":
    typer.run(main)
