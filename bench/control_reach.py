"""Deploy → reachable: ``POST /v2/apps`` of a one-task app with a named VIP, until ``curl`` by that
VIP's name answers from every agent; one app after another, p50 and p99 over ``--apps``.

Before each POST, every agent's namespace starts a ``curl`` loop on
``http://<app>.marathon.l4lb.thisdcos.directory/`` (the node resolver, then the agent's VIP
dataplane, then the task's own HTTP server); each loop prints the wall clock of its first 200.
An app's time is the latest of those, less the clock read just before its POST. Apps are posted
``--gap`` seconds after the previous one is reachable, so each deploy starts on a quiet cluster. The path
measured is the whole control plane: Marathon API and store, scheduling, launch on an agent,
``TASK_RUNNING``, the cluster view's long-poll, and on every agent the VIP programmed and its
name published in DNS.

The split printed for each app says where the time went: POST answered, task running (the
Marathon API polled every 50 ms), a cluster view with the task running handed out (this script
long-polls ``/v1/view`` as the agents do), first agent reachable, last agent reachable.

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
import threading
import time

import httpx

from bench._results import quick, record
from cluster.vip_labels import vip_dns_name
from control.auth import auth_header
from navstar.lab import Lab

GOAL_P50_S = 1.0
# The task: a minimal HTTP server on $PORT0 (``python3 -S``, the socket module only: about 20 ms of
# CPU to listen), so the figure is the platform's and not an interpreter's start under the task's
# CPU quota — with the seed ``web`` app's ``http.server`` at 0.05 cpus, the task's own start took
# about a second of the deploy.
SERVER = ("exec python3 -S -c 'import os, socket\n"
          "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind((\"\", int(os.environ[\"PORT0\"]))); s.listen(128)\n"
          "B = b\"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok\"\n"
          "while True:\n    c, _ = s.accept(); c.recv(4096); c.sendall(B); c.close()'")
CPUS = 0.25         # 20 apps on the 3 agents' 6 cpus


def app(name: str) -> dict:
    return {"id": f"/{name}", "cmd": SERVER, "cpus": CPUS, "mem": 32, "instances": 1,
            "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "http", "labels": {"VIP_0": f"/{name}:80"}}]}


def curl_loop(url: str, timeout: float) -> str:
    """A shell loop that curls ``url`` until it answers 200, then prints two wall clocks
    (``date +%s.%N``): when curl first got past resolving the name (exit code other than 6: the
    agent had programmed the VIP and published its name) and when it got the 200; or ``timeout``."""
    return (f"end=$(( $(date +%s) + {int(timeout)} )); named=''; "
            f"while :; do curl -sf -o /dev/null --connect-timeout 0.5 -m 2 {url}; rc=$?; "
            "[ $rc -eq 0 ] && break; "
            "[ -z \"$named\" ] && [ $rc -ne 6 ] && named=$(date +%s.%N); "
            "[ $(date +%s) -ge $end ] && { echo timeout; exit 1; }; sleep 0.01; done; "
            "now=$(date +%s.%N); echo \"${named:-$now} $now\"")


def lb_apply_seconds(metrics: str) -> tuple[float, int]:
    """Seconds an agent spent applying VIP tables and how many applies, from its Prometheus text
    (``navstar_minuteman_reconcile_duration_seconds`` histogram)."""
    total, count = 0.0, 0
    for line in metrics.splitlines():
        if line.startswith("navstar_minuteman_reconcile_duration_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("navstar_minuteman_reconcile_duration_seconds_count"):
            count = int(float(line.split()[-1]))
    return total, count


class ViewWatch:
    """Long-polls the master's cluster view (as every agent does, through Admin Router here) on a
    thread and keeps when each version arrived, for the split: when did a view first show a task
    of the app running."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.client = httpx.Client(base_url=url, headers=headers, timeout=40)
        self.views: list[tuple[float, dict]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        version = 0
        while not self.stopped.is_set():
            try:
                answer = self.client.get("/v1/view", params={"since": version, "wait": 5})
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            if answer.status_code == 200:
                view = answer.json()
                self.views.append((time.time(), view))
                version = view.get("version", version)
            else:
                time.sleep(0.1)

    def running_at(self, app_id: str, since: float) -> float | None:
        """When the first view after ``since`` arrived with a task of ``app_id`` running."""
        return next((at for at, view in list(self.views) if at >= since and any(
            t.get("app_id") == app_id and t.get("state") == "TASK_RUNNING" for t in view.get("tasks", []))), None)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        self.client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="reach", help="its own lab, built here (3 agents) unless up")
    parser.add_argument("--underlay", default="198.18.0.0/24")
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    parser.add_argument("--apps", type=int, default=5 if quick() else 20)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0, help="per app, until every agent reaches it")
    parser.add_argument("--gap", type=float, default=2.0,
                        help="seconds of quiet before each POST, so one app's deploy does not start inside "
                             "the previous one's view wake-ups (the master hands out views at most every 1 s)")
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
        print(f"{'app':<10}{'POST':>8}{'running':>9}{'in view':>9}{'named':>8}{'first':>8}{'every':>8}  "
              "(s after the POST was sent; named: the last agent resolving the name)")
        watch = ViewWatch(state.mesos_url, auth_header(state.secret()))
        with httpx.Client(base_url=state.master_url, headers=auth_header(state.secret()), timeout=30) as marathon:
            for index in range(args.apps):
                name = f"reach-{index:02d}"
                time.sleep(args.gap)
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
                named: list[float] = []
                for loop in loops:
                    out, _ = loop.communicate(timeout=args.timeout + 10)
                    last = out.strip().splitlines()[-1] if out.strip() else "timeout"
                    if loop.returncode != 0 or last == "timeout":
                        failed.append(name)
                        continue
                    resolved, answered = (float(field) - started for field in last.split())
                    named.append(resolved)
                    reached.append(answered)
                if len(reached) < len(agents):
                    print(f"{name:<10}{posted:>8.3f}  not reachable from every agent within {args.timeout:g} s")
                    continue
                times.append(max(reached))
                in_view = watch.running_at(f"/{name}", started)
                nan = float("nan")
                print(f"{name:<10}{posted:>8.3f}{running if running is not None else nan:>9.3f}"
                      f"{in_view - started if in_view is not None else nan:>9.3f}{max(named):>8.3f}"
                      f"{min(reached):>8.3f}{max(reached):>8.3f}", flush=True)
        watch.close()
        applies = [lb_apply_seconds(subprocess.run(
            ["ip", "netns", "exec", node.namespace, "curl", "-s", "-m", "5", f"http://{node.ip}:61091/metrics"],
            capture_output=True, text=True).stdout) for node in agents]
        total, count = sum(a[0] for a in applies), sum(a[1] for a in applies)
        if count:
            print(f"  the agents' VIP table applies: {count}, {total / count * 1000:.0f} ms each on average "
                  "(navstar_minuteman_reconcile_duration_seconds)")
            record("control.reach.lb_apply_mean_s", total / count, "s", applies=count)
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
