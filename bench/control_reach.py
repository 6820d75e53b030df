"""Deploy → reachable: ``POST /v2/apps`` of a one-task app with a named VIP, until ``curl`` by that
VIP's name answers from every agent; one app after another, p50 and p99 over ``--apps``.

Before each POST, every agent's namespace starts a ``curl`` loop on
``http://<app>.marathon.l4lb.thisdcos.directory/`` (the node resolver, then the agent's VIP
dataplane, then the task's own HTTP server); each loop prints the wall clock of its first 200.
An app's time is the latest of those, less the clock read just before its POST. The path
measured is the whole control plane: Marathon API and store, scheduling, launch on an agent,
``TASK_RUNNING``, the cluster view's long-poll, and on every agent the VIP programmed and its
name published in DNS.

The ``split`` printed for each app says where the time went: POST answered, task running (the
Marathon API polled every 50 ms), first agent reachable, last agent reachable.

Goal (issue 17): p50 < 1 s. Peer: none in the same run (the goal is absolute).
Builds its own lab (``--lab reach``, 3 agents) and always takes it down; only one lab may exist
on the machine: run it under ``flock /tmp/navstar-lab.lock``.

Run: flock /tmp/navstar-lab.lock .venv/bin/python -m bench.control_reach [--apps 20]
Exits 1 when the goal is missed or an app is not reachable within --timeout.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import httpx

from bench._results import quick, record
from cluster.vip_labels import vip_dns_name
from control.auth import auth_header
from navstar.lab import Lab

GOAL_P50_S = 1.0
# A task that answers HTTP on $PORT0 with its task id (the seed ``web`` app's server, no health check).
SERVER = ("exec python3 -c 'import http.server as h, os\nT = os.environ[\"MESOS_TASK_ID\"].encode()\n"
          "class H(h.BaseHTTPRequestHandler):\n    def do_GET(s):\n        s.send_response(200); "
          "s.send_header(\"Content-Length\", str(len(T))); s.end_headers(); s.wfile.write(T)\n"
          "    def log_message(s, *a): pass\nh.ThreadingHTTPServer((\"\", int(os.environ[\"PORT0\"])), H).serve_forever()'")


def app(name: str) -> dict:
    return {"id": f"/{name}", "cmd": SERVER, "cpus": 0.05, "mem": 32, "instances": 1,
            "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "http", "labels": {"VIP_0": f"/{name}:80"}}]}


def curl_loop(url: str, timeout: float) -> str:
    """A shell loop that curls ``url`` until it answers 200 and prints the wall clock then
    (``date +%s.%N``), or prints ``timeout``."""
    return (f"end=$(( $(date +%s) + {int(timeout)} )); "
            f"until curl -sf -o /dev/null --connect-timeout 0.5 -m 2 {url}; do "
            f"[ $(date +%s) -ge $end ] && {{ echo timeout; exit 1; }}; sleep 0.01; done; date +%s.%N")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="reach", help="its own lab, built here (3 agents) unless up")
    parser.add_argument("--underlay", default="198.18.0.0/24")
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    parser.add_argument("--apps", type=int, default=5 if quick() else 20)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0, help="per app, until every agent reaches it")
    args = parser.parse_args()

    lab = Lab(args.lab, progress=lambda msg: print(f"  lab: {msg}", flush=True))
    lab.is_up() or lab.up(agents=args.agents, underlay=args.underlay)
    times: list[float] = []
    failed: list[str] = []
    try:
        state = lab.state()
        assert state is not None
        agents = [n for n in state.nodes if n is not state.master and n.namespace]
        print(f"bench.control_reach — {args.apps} apps, one after another, each curled by its VIP name "
              f"from {len(agents)} agents", flush=True)
        print(f"{'app':<10}{'POST':>8}{'running':>9}{'first':>8}{'every':>8}  (s after the POST was sent)")
        with httpx.Client(base_url=state.master_url, headers=auth_header(state.secret()), timeout=30) as marathon:
            for index in range(args.apps):
                name = f"reach-{index:02d}"
                url = f"http://{vip_dns_name('/' + name, 'marathon')}:80/"
                loops = [subprocess.Popen(["ip", "netns", "exec", node.namespace, "sh", "-c",
                                           curl_loop(url, args.timeout)], stdout=subprocess.PIPE, text=True)
                         for node in agents]
                started = time.time()
                answer = marathon.post("/v2/apps", json=app(name))
                posted = time.time() - started
                if answer.status_code not in (200, 201):
                    raise SystemExit(f"POST /v2/apps {name}: HTTP {answer.status_code} {answer.text[:300]}")
                running = None
                while running is None and time.time() - started < args.timeout:
                    tasks = marathon.get(f"/v2/apps/{name}/tasks").json().get("tasks", [])
                    if any(t.get("state") == "TASK_RUNNING" for t in tasks):
                        running = time.time() - started
                    else:
                        time.sleep(0.05)
                reached: list[float] = []
                for loop in loops:
                    out, _ = loop.communicate(timeout=args.timeout + 10)
                    last = out.strip().splitlines()[-1] if out.strip() else "timeout"
                    if loop.returncode != 0 or last == "timeout":
                        failed.append(name)
                        continue
                    reached.append(float(last) - started)
                if len(reached) < len(agents):
                    print(f"{name:<10}{posted:>8.3f}  not reachable from every agent within {args.timeout:g} s")
                    continue
                times.append(max(reached))
                print(f"{name:<10}{posted:>8.3f}{running if running is not None else float('nan'):>9.3f}"
                      f"{min(reached):>8.3f}{max(reached):>8.3f}", flush=True)
    finally:
        if not args.keep:
            lab.down()

    if not times:
        print("control.deploy_to_reachable_s: no app was reachable")
        return 1
    p50 = statistics.median(times)
    p99 = statistics.quantiles(times, n=100, method="inclusive")[98] if len(times) > 1 else times[0]
    met = p50 < GOAL_P50_S
    print(f"control.deploy_to_reachable_s p50 {p50:.3f} p99 {p99:.3f} over {len(times)} apps "
          f"(goal p50 < {GOAL_P50_S:g} s) {'met' if met else 'MISSED'}"
          + (f"; not reachable: {', '.join(sorted(set(failed)))}" if failed else ""))
    record("control.deploy_to_reachable_s", p50, "s", f"< {GOAL_P50_S:g}", met, apps=len(times))
    record("control.deploy_to_reachable_p99_s", p99, "s", apps=len(times))
    return 0 if met and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
