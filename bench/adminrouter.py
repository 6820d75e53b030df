"""Admin Router's cost: ``GET /v2/apps`` (10 apps) through nginx with a login token, against the
same request straight to the Marathon API (peer), in one run.

Both paths are driven from inside the master's namespace by the same client (keep-alive
HTTP/1.1 connections, each sending its next request when the answer is in), in interleaved
slices so drift hits both alike: through ``http://<master>:80/marathon/v2/apps`` with
``Authorization: token=<jwt>`` (nginx, auth_request answered from its cache, upstream keep-alive)
and straight to ``http://<master>:8080/v2/apps`` with the cluster secret.

Goals (issue 12): requests/s through Admin Router ≥ 0.8 × direct, and the added p99 < 1 ms.

Builds its own lab (``navstar lab up --name arbench --agents 1``) and always takes it down; only
one lab may exist on the machine: run it under ``flock /tmp/navstar-lab.lock``.

Run: flock /tmp/navstar-lab.lock .venv/bin/python -m bench.adminrouter [--seconds 2] [--rounds 5]
     [--connections 4]
Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import httpx

from bench._results import quick, record

RATIO_GOAL = 0.8
ADDED_P99_GOAL_MS = 1.0
LAB = "arbench"


# -- the client (runs inside the master's namespace) -----------------------------------------
async def _connection(host: str, port: int, request: bytes, until: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            if status != b"200":
                raise SystemExit(f"HTTP {status.decode()} from {host}:{port}")
            latencies.append(time.perf_counter() - start)
    finally:
        writer.close()


async def _slice(host: str, port: int, path: str, auth: str, seconds: float, connections: int) -> list[float]:
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
               "Accept: application/json\r\n\r\n").encode()
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    await asyncio.gather(*(_connection(host, port, request, until, latencies) for _ in range(connections)))
    return latencies


def client_main(spec: dict) -> None:
    results: dict[str, list[dict]] = {"direct": [], "adminrouter": []}
    for _ in range(spec["rounds"]):
        for name in ("direct", "adminrouter"):
            target = spec[name]
            start = time.perf_counter()
            latencies = asyncio.run(_slice(target["host"], target["port"], target["path"], target["auth"],
                                           spec["seconds"], spec["connections"]))
            results[name].append({"elapsed": time.perf_counter() - start, "latencies": latencies})
    json.dump(results, sys.stdout)


# -- the orchestration (root namespace) ----------------------------------------------------
def navstar(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "navstar", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise SystemExit(f"navstar {' '.join(args)} failed: {done.stdout}\n{done.stderr}")
    return done


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0 if quick() else 2.0, help="length of one slice")
    parser.add_argument("--rounds", type=int, default=3 if quick() else 5, help="interleaved slices per path")
    parser.add_argument("--connections", type=int, default=4, help="concurrent keep-alive connections")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(json.loads(args.client))
        return 0

    from navstar.frontdoor import lab_token
    from navstar.lab import LabState

    navstar("lab", "down", "--name", LAB, check=False)
    try:
        navstar("lab", "up", "--name", LAB, "--agents", "1")
        state = LabState.load(LAB)
        assert state is not None
        token = lab_token(state)
        with httpx.Client(base_url=state.master_url, headers={"Authorization": f"token={token}"}, timeout=30) as api:
            for index in range(10):
                resp = api.post("/v2/apps", json={"id": f"/bench/app-{index}", "cmd": "sleep 100000", "cpus": 0.01,
                                                  "mem": 16, "instances": 1, "labels": {"bench": "adminrouter"},
                                                  "portDefinitions": [{"port": 0, "name": "http"}]})
                if resp.status_code not in (200, 201):
                    raise SystemExit(f"POST /v2/apps: HTTP {resp.status_code} {resp.text[:200]}")
            apps = api.get("/v2/apps").json()["apps"]
        ip = state.master.ip
        spec = {"seconds": args.seconds, "rounds": args.rounds, "connections": args.connections,
                "direct": {"host": ip, "port": 8080, "path": "/v2/apps", "auth": f"token={state.secret()}"},
                "adminrouter": {"host": ip, "port": 80, "path": "/marathon/v2/apps", "auth": f"token={token}"}}
        run = subprocess.run(["nsenter", f"--net=/run/netns/{state.master.namespace}", "--", sys.executable, "-m",
                              "bench.adminrouter", "--client", json.dumps(spec)],
                             capture_output=True, text=True, timeout=args.seconds * args.rounds * 4 + 120)
        if run.returncode != 0:
            raise SystemExit(f"the client failed: {run.stderr[-2000:]}")
        results = json.loads(run.stdout)
    finally:
        navstar("lab", "down", "--name", LAB, check=False)

    rows = {}
    for name, slices in results.items():
        count = sum(len(s["latencies"]) for s in slices)
        elapsed = sum(s["elapsed"] for s in slices)
        latencies = [x for s in slices for x in s["latencies"]]
        rows[name] = {"rps": count / elapsed, "p50": statistics.median(latencies) * 1000, "p99": p99(latencies) * 1000,
                      "requests": count}
    ratio = rows["adminrouter"]["rps"] / rows["direct"]["rps"]
    added = rows["adminrouter"]["p99"] - rows["direct"]["p99"]
    print(f"GET /v2/apps ({len(apps)} apps), {args.connections} keep-alive connections, "
          f"{args.rounds} × {args.seconds:g} s interleaved slices per path, client in the master's namespace")
    print(f"{'path':<14}{'requests':>10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for name in ("direct", "adminrouter"):
        r = rows[name]
        print(f"{name:<14}{r['requests']:>10}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}")
    ok_ratio, ok_p99 = ratio >= RATIO_GOAL, added < ADDED_P99_GOAL_MS
    print(f"through Admin Router ÷ direct: {ratio:.2f}× requests/s (goal ≥ {RATIO_GOAL}) "
          f"{'met' if ok_ratio else 'MISSED'}; added p99 {added:+.2f} ms (goal < {ADDED_P99_GOAL_MS} ms) "
          f"{'met' if ok_p99 else 'MISSED'}")
    for name in ("direct", "adminrouter"):
        record("adminrouter.rps", rows[name]["rps"], "req/s", path=name)
        record("adminrouter.p99_ms", rows[name]["p99"], "ms", path=name)
    record("adminrouter/direct", ratio, "x", f">= {RATIO_GOAL}", ok_ratio)
    record("adminrouter.added_p99_ms", added, "ms", f"< {ADDED_P99_GOAL_MS}", ok_p99)
    return 0 if ok_ratio and ok_p99 else 1


if __name__ == "__main__":
    raise SystemExit(main())
