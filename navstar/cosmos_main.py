"""Composition root of ``navstar cosmos``: the package service and the local Universe server.

```
 nginx /package/, /capabilities ──► cosmos_app (--listen 127.0.0.1:7070)
        │ repositories (in order; <state dir>/repositories.json)     │ Marathon /v2/apps (cluster secret)
        ▼                                                            ▼
 GET <uri> ◄── universe_app (--universe-listen :8082 /repo, built from universe/packages at start)
```
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx

from control.auth import auth_header, read_secret
from cosmos.api import cosmos_app
from cosmos.marathon import MarathonApps
from cosmos.repositories import Repositories, RepositoryList
from cosmos.service import Cosmos
from navstar import logs
from navstar.servers import Listen, serve
from universe.repository import SOURCE, build
from universe.server import universe_app

log = logging.getLogger("navstar.cosmos")

DEFAULT_LISTEN = "127.0.0.1:7070"
DEFAULT_UNIVERSE_LISTEN = "127.0.0.1:8082"


def default_repository(universe_listen: Listen) -> dict[str, str]:
    host = "127.0.0.1" if universe_listen.host in ("0.0.0.0", "") else universe_listen.host
    return {"name": "Universe", "uri": f"http://{host}:{universe_listen.port}/repo"}


def run_cosmos(listen: str = DEFAULT_LISTEN, universe_listen: str = DEFAULT_UNIVERSE_LISTEN,
               marathon: str = "http://127.0.0.1:8080", token_file: str | None = None,
               state_dir: str | None = None, universe: str | None = None) -> None:
    logs.configure()
    api, served = Listen.parse(listen, default_host="127.0.0.1"), Listen.parse(universe_listen)
    repository = build(Path(universe) if universe else SOURCE)     # UniverseError: refused before serving
    log.info("local Universe: %d packages (%s)", len(repository["packages"]),
             ", ".join(sorted({p["name"] for p in repository["packages"]})))
    repo_list = RepositoryList([default_repository(served)],
                               Path(state_dir) / "repositories.json" if state_dir else None)
    marathon_client = httpx.AsyncClient(base_url=marathon.rstrip("/"), headers=auth_header(read_secret(token_file)),
                                        timeout=httpx.Timeout(15.0, connect=3.0))
    fetch_client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0))
    cosmos = Cosmos(Repositories(repo_list, fetch_client), MarathonApps(marathon_client))
    log.info("cosmos on %s:%d (Marathon %s), local Universe on %s:%d/repo", api.host, api.port, marathon,
             served.host, served.port)
    asyncio.run(serve([(cosmos_app(cosmos), api), (universe_app(repository), served)]))
