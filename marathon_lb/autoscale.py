"""marathon-lb-autoscale: scale apps to a target of requests per second per instance.

::

    every `interval` s:  GET <lb>/haproxy?stats;csv (each lb) ──► rps of backend <app>_<port>
                         (Δreq_tot / Δt for http, Δstot / Δt for tcp; summed over the lbs)
                         ──► last `samples` values ──► average ──► decide() ──► PUT /v2/apps/<app>
                                                                   {"instances": n}

``decide`` (pure), with marathon-lb-autoscale's meaning: no decision before `samples` samples; the
target is ``ceil(average rps / target_rps)`` held within ``[min_instances, max_instances]``; no
change while the rps per current instance is within ``target_rps × (1 ± tolerance)`` (unless the
count is outside min/max), nor for `cooldown` intervals after a scale. An app watched on several
service ports takes the largest target.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from marathon_lb.marathon import Auth, MarathonClient

log = logging.getLogger("navstar.marathon_lb.autoscale")

BACKEND = re.compile(r"^([a-z0-9][a-z0-9._-]*?(?:_[a-z0-9][a-z0-9.-]*)*)_(\d{1,5})$")


def parse_backend(name: str) -> str | None:
    """``<app>_<servicePort>`` → the Marathon app id (``_`` were ``/``: marathon-lb's naming)."""
    match = BACKEND.match(name)
    if not match or not 0 < int(match.group(2)) < 65536:
        return None
    return "/" + match.group(1).replace("_", "/")


@dataclass(frozen=True)
class Policy:
    target_rps: float = 1000
    samples: int = 10
    cooldown: int = 5
    tolerance: float = 0.1
    min_instances: int = 1
    max_instances: int = 100

    def __post_init__(self) -> None:
        if self.target_rps <= 0:
            raise ValueError(f"--target-rps: must be positive, got {self.target_rps:g}")
        if self.samples < 1:
            raise ValueError(f"--samples: must be at least 1, got {self.samples}")
        if self.cooldown < 0:
            raise ValueError(f"--cooldown: must not be negative, got {self.cooldown}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"--tolerance: must be in [0, 1), got {self.tolerance:g}")
        if self.min_instances < 0:
            raise ValueError(f"--min-instances: must not be negative, got {self.min_instances}")
        if self.max_instances < max(self.min_instances, 1):
            raise ValueError(f"--max-instances: must be at least --min-instances and 1, got {self.max_instances}")


@dataclass(frozen=True)
class Decision:
    target: int | None       # None: leave the app as it is
    reason: str
    average_rps: float = 0.0


def target_instances(average_rps: float, policy: Policy) -> int:
    wanted = math.ceil(average_rps / policy.target_rps - 1e-9)
    return min(max(wanted, policy.min_instances), policy.max_instances)


def decide(policy: Policy, rates: list[float], current: int, cooldown_left: int) -> Decision:
    if len(rates) < policy.samples:
        return Decision(None, f"collecting samples ({len(rates)}/{policy.samples})")
    average = sum(rates[-policy.samples:]) / policy.samples
    target = target_instances(average, policy)
    if target == current:
        return Decision(None, "on target", average)
    if cooldown_left > 0:
        return Decision(None, f"cooling down ({cooldown_left} intervals left)", average)
    inside = policy.min_instances <= current <= policy.max_instances
    if inside and current > 0 and abs(average / current - policy.target_rps) <= policy.tolerance * policy.target_rps:
        return Decision(None, "within tolerance", average)
    return Decision(target, f"{average:.1f} rps over {current} instances", average)


def backend_counters(text: str) -> dict[str, float]:
    """HAProxy's stats CSV → backend name → its request counter (``req_tot``; ``stot`` for tcp)."""
    lines = text.lstrip("# ").splitlines()
    counters: dict[str, float] = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        if row.get("svname") != "BACKEND" or not row.get("pxname"):
            continue
        value = row.get("req_tot") or row.get("stot") or ""
        if value.strip().isdigit():
            counters[row["pxname"]] = float(value)
    return counters


class RateMeter:
    """Per (source, backend) counters → requests per second since the previous sample."""

    def __init__(self) -> None:
        self.previous: dict[tuple[str, str], tuple[float, float]] = {}

    def rates(self, source: str, counters: dict[str, float], now: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, value in counters.items():
            before = self.previous.get((source, name))
            self.previous[(source, name)] = (value, now)
            if before is None or now <= before[1]:
                continue
            # A reload starts the counters again: what the new worker counted is all we know.
            delta = value - before[0] if value >= before[0] else value
            out[name] = delta / (now - before[1])
        return out


@dataclass
class Watched:
    backend: str
    app_id: str
    rates: deque[float] = field(default_factory=deque)


StatsSource = Callable[[], Awaitable[dict[str, str]]]     # source (lb URL) → stats CSV text


class Autoscaler:
    def __init__(self, marathon: MarathonClient, stats: StatsSource, backends: list[str], policy: Policy,
                 clock: Callable[[], float] = time.monotonic, report: Callable[[str], None] | None = None) -> None:
        self.marathon = marathon
        self.stats = stats
        self.policy = policy
        self.clock = clock
        self.report = report or log.info
        self.watched = []
        for name in backends:
            app_id = parse_backend(name)
            if app_id is None:
                raise ValueError(f"--apps: {name!r} is not <app>_<servicePort>")
            self.watched.append(Watched(name, app_id, deque(maxlen=policy.samples)))
        self.meter = RateMeter()
        self.cooldown: dict[str, int] = {}
        self.scaled: list[tuple[str, int]] = []

    async def step(self) -> dict[str, Decision]:
        """One interval: sample, decide, scale. Returns each app's decision."""
        now = self.clock()
        try:
            texts = await self.stats()
        except (httpx.HTTPError, OSError) as exc:
            log.warning("stats: %s", exc)
            texts = {}
        totals: dict[str, float] = {}
        seen: set[str] = set()
        for source, text in texts.items():
            for name, rps in self.meter.rates(source, backend_counters(text), now).items():
                totals[name] = totals.get(name, 0.0) + rps
                seen.add(name)
        for watched in self.watched:
            if watched.backend in seen:
                watched.rates.append(totals[watched.backend])
        decisions: dict[str, Decision] = {}
        for app_id in sorted({w.app_id for w in self.watched}):
            if not any(w.backend in seen for w in self.watched if w.app_id == app_id):
                # No fresh sample (stats unreadable, backend gone): never act on old numbers alone.
                decisions[app_id] = Decision(None, "no fresh sample")
                continue
            decisions[app_id] = await self._decide_app(app_id)
        for app_id in decisions:
            if self.cooldown.get(app_id, 0) > 0 and decisions[app_id].target is None:
                self.cooldown[app_id] -= 1
        return decisions

    async def _decide_app(self, app_id: str) -> Decision:
        try:
            resp = await self.marathon.request("GET", f"/v2/apps{app_id}")
            if resp.status_code == 404:
                return Decision(None, "no such app")
            resp.raise_for_status()
            current = int(resp.json()["app"]["instances"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            return Decision(None, f"reading the app: {exc}")
        best: Decision | None = None
        for watched in (w for w in self.watched if w.app_id == app_id):
            decision = decide(self.policy, list(watched.rates), current, self.cooldown.get(app_id, 0))
            if best is None or (decision.target or 0) > (best.target or 0):
                best = decision
        assert best is not None
        if best.target is not None:
            try:
                resp = await self.marathon.request("PUT", f"/v2/apps{app_id}", json={"instances": best.target})
                resp.raise_for_status()
            except httpx.HTTPError as exc:
                return Decision(None, f"scaling failed: {exc}", best.average_rps)
            self.scaled.append((app_id, best.target))
            self.cooldown[app_id] = self.policy.cooldown
            self.report(f"scaling {app_id} from {current} to {best.target} instances "
                        f"({best.average_rps:.1f} rps, target {self.policy.target_rps:g} per instance)")
        else:
            self.report(f"{app_id}: {current} instances, {best.average_rps:.1f} rps: {best.reason}")
        return best


def http_stats(urls: list[str], auth: Auth | None = None) -> StatsSource:
    client = httpx.AsyncClient(timeout=5.0)

    async def fetch() -> dict[str, str]:
        out: dict[str, str] = {}
        for url in urls:
            try:
                resp = await client.get(f"{url}/haproxy?stats;csv")
                resp.raise_for_status()
                out[url] = resp.text
            except httpx.HTTPError as exc:
                log.warning("stats from %s: %s", url, exc)
        return out

    return fetch


async def run_autoscale(marathon_url: str, haproxy_urls: list[str], backends: list[str], policy: Policy,
                        interval: float, auth: Auth) -> None:
    marathon = MarathonClient(marathon_url, auth)
    scaler = Autoscaler(marathon, http_stats(haproxy_urls), backends, policy,
                        report=lambda line: print(line, flush=True))
    started = time.monotonic()
    try:
        while True:
            await scaler.step()
            started += interval
            await asyncio.sleep(max(0.0, started - time.monotonic()))
    finally:
        await marathon.close()
