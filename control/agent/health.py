"""Health checks run by the agent, with Marathon's semantics.

Per check: wait ``delay``, then every ``interval`` run it with ``timeout``. Failures inside
``gracePeriodSeconds`` are ignored until the first success; after that a failure makes the task
unhealthy, and ``maxConsecutiveFailures`` failures in a row (when > 0) get the task killed.
HTTP counts 200–399 as healthy; TCP needs a completed connect; COMMAND needs exit status 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from control.protocol import HealthCheckSpec, TaskLaunch

log = logging.getLogger("navstar.health")


@dataclass
class CheckTarget:
    host: str
    port: int | None
    netns: str | None
    env: dict[str, str]
    # COMMAND checks run as the task does (its user, namespace and cgroup): given the shell argv,
    # returns the argv to run and a preexec_fn. None: run as is (tests).
    as_task: Callable[[list[str]], tuple[list[str], Callable[[], None] | None]] | None = None


async def run_check(spec: HealthCheckSpec, target: CheckTarget) -> tuple[bool, str]:
    """One attempt: (healthy, reason)."""
    protocol = spec.protocol.removeprefix("MESOS_")
    try:
        if protocol in ("HTTP", "HTTPS"):
            scheme = protocol.lower()
            async with httpx.AsyncClient(timeout=spec.timeout_seconds, verify=False) as client:
                resp = await client.get(f"{scheme}://{target.host}:{target.port}{spec.path}")
            return 200 <= resp.status_code < 400, f"HTTP {resp.status_code}"
        if protocol == "TCP":
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port), spec.timeout_seconds)
            writer.close()
            return True, "connected"
        if protocol == "COMMAND":
            argv, preexec = ["/bin/sh", "-c", spec.command or "true"], None
            if target.as_task is not None:
                argv, preexec = target.as_task(argv)
            elif target.netns:
                argv = ["ip", "netns", "exec", target.netns, *argv]
            proc = await asyncio.create_subprocess_exec(*argv, env=target.env, preexec_fn=preexec,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
            try:
                code = await asyncio.wait_for(proc.wait(), spec.timeout_seconds)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return False, "command timed out"
            return code == 0, f"exit status {code}"
    except (OSError, TimeoutError, httpx.HTTPError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return False, f"unsupported protocol {spec.protocol}"


class TaskHealth:
    """Runs every health check of one task until cancelled."""

    def __init__(self, launch: TaskLaunch, target_for: Callable[[HealthCheckSpec], CheckTarget],
                 on_health: Callable[[bool], None], on_give_up: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.launch = launch
        self.target_for = target_for
        self.on_health = on_health
        self.on_give_up = on_give_up
        self.clock = clock
        self.started = clock()
        self.results: dict[int, bool] = {}

    async def run(self) -> None:
        await asyncio.gather(*(self._loop(i, spec) for i, spec in enumerate(self.launch.health_checks)))

    async def _loop(self, index: int, spec: HealthCheckSpec) -> None:
        failures = 0
        seen_success = False
        await asyncio.sleep(min(spec.delay_seconds, spec.interval_seconds))
        while True:
            ok, reason = await run_check(spec, self.target_for(spec))
            in_grace = not seen_success and self.clock() - self.started < spec.grace_period_seconds
            if ok:
                seen_success, failures = True, 0
                self._record(index, True)
            elif not in_grace:
                failures += 1
                log.info("task %s check %d failed (%d in a row): %s", self.launch.task_id, index, failures, reason)
                self._record(index, False)
                if 0 < spec.max_consecutive_failures <= failures:
                    self.on_give_up(f"health check {index} failed {failures} times in a row: {reason}")
                    return
            await asyncio.sleep(spec.interval_seconds)

    def _record(self, index: int, healthy: bool) -> None:
        self.results[index] = healthy
        overall = len(self.results) == len(self.launch.health_checks) and all(self.results.values())
        self.on_health(overall if healthy else False)
