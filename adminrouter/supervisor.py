"""Runs Admin Router's nginx and keeps its routes current (``navstar adminrouter``).

```
master :5050 /v1/view (long-poll) ──► routes.service_routes ──► config.render ──► conf.new
        nginx -t -c conf.new ── ok ──► rename over nginx.conf ──► SIGHUP (= nginx -s reload:
        new workers take new connections, old ones finish what is in flight) ── fails ──► keep the old one
nginx (child, daemon off) exits ──► started again after 1 s
SIGTERM ──► SIGQUIT to nginx (graceful: in-flight requests finish) ──► exit
```

The first configuration is written before the master answers (no services yet), so the open
routes and the 502/503 answers work while the master starts.

Several masters (``--master zk://…/mesos``): the leader comes from ZooKeeper's election
(``control.leadership.ZkLeaderFollower``); ``leader_changed`` points the Marathon, Mesos and
backend upstreams and the view long-poll at the leader, and the next render reloads nginx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import signal
from dataclasses import replace
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from adminrouter.config import Settings, render
from adminrouter.routes import ServiceRoute, service_routes
from cluster.view import ClusterView
from control.leadership import Leadership

log = logging.getLogger("navstar.adminrouter")


class Supervisor:
    def __init__(self, settings: Settings, master: str, nginx: str = "nginx", poll_wait: float = 30.0) -> None:
        self.settings = settings
        self.master = master.rstrip("/")
        self.nginx = nginx
        self.poll_wait = poll_wait
        self.run_dir = Path(settings.run_dir)
        self.conf = self.run_dir / "nginx.conf"
        self.proc: asyncio.subprocess.Process | None = None
        self.services: list[ServiceRoute] | None = None
        self._applied: Settings | None = None
        self._moved = asyncio.Event()
        self.stopping = False
        self.registry = CollectorRegistry()
        self.reloads = Counter("navstar_adminrouter_reloads_total", "configuration changes applied to nginx, by result",
                               ["result"], registry=self.registry)
        self.restarts = Counter("navstar_adminrouter_nginx_starts_total", "nginx (re)starts", registry=self.registry)
        self.service_count = Gauge("navstar_adminrouter_services", "/service/<name>/ routes", registry=self.registry)
        self.view_version = Gauge("navstar_adminrouter_view_version", "the cluster view the routes come from",
                                  registry=self.registry)

    # -- files
    def prepare(self) -> None:
        for sub in ("tmp", "cache"):
            path = self.run_dir / sub
            path.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam(self.settings.user)
                os.chown(path, user.pw_uid, user.pw_gid)

    def _write(self, path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)

    async def check(self, path: Path) -> str | None:
        """None when ``nginx -t`` accepts ``path``, else nginx's complaint."""
        proc = await asyncio.create_subprocess_exec(
            self.nginx, "-t", "-q", "-c", str(path), "-e", str(self.run_dir / "error.log"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return None if proc.returncode == 0 else out.decode(errors="replace").strip()

    async def apply(self, services: list[ServiceRoute]) -> bool:
        """Renders, checks and (nginx running) reloads; True when the new routes are in force."""
        if services == self.services and self.settings == self._applied:
            return True
        candidate = self.run_dir / "nginx.conf.new"
        self._write(candidate, render(self.settings, services))
        problem = await self.check(candidate)
        if problem:
            self.reloads.labels("rejected").inc()
            log.error("nginx -t refused the new configuration; keeping the old one: %s", problem)
            return False
        candidate.replace(self.conf)
        self.services, self._applied = services, self.settings
        self.service_count.set(len(services))
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGHUP)
            self.reloads.labels("ok").inc()
            log.info("nginx reloaded: %d service route(s): %s", len(services),
                     ", ".join(f"{s.name}→{','.join(s.servers) or '-'}" for s in services) or "none")
        return True

    # -- nginx
    async def start_nginx(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.nginx, "-c", str(self.conf), "-e", str(self.run_dir / "error.log"),
            stdin=asyncio.subprocess.DEVNULL)
        self.restarts.inc()
        log.info("nginx started, pid %d, listening on %s", self.proc.pid, self.settings.listen)

    async def keep_nginx(self) -> None:
        while not self.stopping:
            assert self.proc is not None
            code = await self.proc.wait()
            if self.stopping:
                return
            log.error("nginx exited with %s; starting it again in 1 s", code)
            await asyncio.sleep(1.0)
            await self.start_nginx()

    async def stop(self) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    # -- the leader (several masters)
    def leader_changed(self, leadership: Leadership) -> None:
        """Upstreams and the view long-poll go to the leader (same ports as configured)."""
        if leadership.leader is None:
            return
        ip = leadership.leader.ip

        def at_leader(address: str) -> str:
            return f"{ip}:{address.rpartition(':')[2]}"

        self.settings = replace(self.settings, marathon=at_leader(self.settings.marathon),
                                mesos=at_leader(self.settings.mesos), backend=at_leader(self.settings.backend))
        self.master = f"http://{ip}:{leadership.leader.port}"
        log.info("leader %s: upstreams %s, %s, backend %s", ip, self.settings.marathon, self.settings.mesos,
                 self.settings.backend)
        self._moved.set()

    async def _view_request(self, client: httpx.AsyncClient, since: int) -> httpx.Response | None:
        """The long-poll's answer, or None when the leader moved first (the request is dropped)."""
        request = asyncio.ensure_future(client.get(f"{self.master}/v1/view",
                                                   params={"since": since, "wait": self.poll_wait}))
        moved = asyncio.ensure_future(self._moved.wait())
        await asyncio.wait([request, moved], return_when=asyncio.FIRST_COMPLETED)
        if not request.done():
            request.cancel()
        moved.cancel()
        if self._moved.is_set():
            self._moved.clear()
            if self.services is not None:
                await self.apply(self.services)
            return None
        return request.result()

    # -- the view
    async def follow(self, headers: dict[str, str]) -> None:
        since = 0
        async with httpx.AsyncClient(timeout=self.poll_wait + 10, headers=headers) as client:
            while not self.stopping:
                try:
                    resp = await self._view_request(client, since)
                    if resp is None:
                        since = 0       # a new leader counts its own versions
                        continue
                    resp.raise_for_status()
                    view = ClusterView.model_validate(resp.json())
                except (httpx.HTTPError, ValueError) as exc:
                    log.warning("cannot read the cluster view from %s: %s", self.master, exc)
                    await asyncio.sleep(1.0)
                    continue
                since = view.version
                self.view_version.set(view.version)
                services, problems = service_routes(view)
                for problem in problems:
                    log.warning("service route: %s", problem)
                if not await self.apply(services):
                    await asyncio.sleep(1.0)

    async def run(self, headers: dict[str, str]) -> None:
        self.prepare()
        if not await self.apply([]):
            raise SystemExit("nginx -t refused Admin Router's configuration; see the log")
        await self.start_nginx()
        try:
            await asyncio.gather(self.keep_nginx(), self.follow(headers))
        finally:
            await self.stop()
