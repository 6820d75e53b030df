"""Task launch on the ``dcos`` network through CNI (Debian's bridge + host-local + portmap, run by
navstar's runner) against today's netlink path (``OverlayAgent.attach_container``: pyroute2
veths, navstar's own IPAM and NAT table), in the same run, alternated round by round.

Each round is one ``Executor`` launching N Mesos-container tasks (``sleep``) on ``dcos`` with two
threads, as the agent's launcher does: network namespace, attachment, cgroup, process, status.
The rate is tasks started per second; the teardown (kill, DEL/detach, namespace and cgroup gone)
is timed too. Then TCP from the agent to a task attached each way (the same veth on the same
bridge: throughput must not change).

Everything runs inside one agent namespace of an ``overlay.testbed.Testbed`` (the bench re-enters
itself there with ``nsenter``, as the lab runs its agents), whose overlay ``OverlayAgent`` built
vtep1024, m-dcos and d-dcos and wrote the dcos CNI configurations.

Run: .venv/bin/python -m bench.cni_launch [--tasks 40] [--rounds 3]   (root)
Goal (issue 23): CNI launches/s ÷ netlink launches/s ≥ 0.7. Exits 1 when missed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench._results import quick, record

GOAL = 0.7


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20 if quick() else 40, help="tasks per round (≤ 120)")
    parser.add_argument("--rounds", type=int, default=2 if quick() else 3, help="rounds per path")
    parser.add_argument("--inner", nargs=3, metavar=("PREFIX", "IP", "STATE"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse()
    if args.inner:
        return inner(args, *args.inner)
    if not 1 <= args.tasks <= 120:
        sys.exit("--tasks: 1-120 (one /25 of the agent's overlay subnet)")
    from overlay.testbed import Testbed

    with Testbed(agents=1, underlay=f"198.18.{random.randint(100, 199)}.0/24") as bed, \
            tempfile.TemporaryDirectory(prefix="navstar-bench-", dir="/var/tmp") as state:
        os.chmod(state, 0o755)       # tasks run as nobody below it
        done = subprocess.run(["nsenter", f"--net=/run/netns/{bed.agent_ns(1)}", "--", sys.executable, "-m",
                               "bench.cni_launch", "--tasks", str(args.tasks), "--rounds", str(args.rounds),
                               "--inner", bed.prefix, bed.agent_ip(1), state], env=os.environ)
        return done.returncode


def inner(args: argparse.Namespace, prefix: str, ip: str, state_root: str) -> int:
    from prometheus_client import CollectorRegistry

    from bench.overlay import throughput
    from cluster.ipam import OverlayIpam
    from cluster.view import AgentInfo, ClusterView
    from control.agent.cgroups import Cgroup
    from control.agent.executor import Executor
    from control.protocol import TaskLaunch
    from navstar.agent_main import CniContainerNetworks, OverlayNetworks
    from overlay.agent import OverlayAgent
    from overlay.cni import NetworkDirectory
    from overlay.cni_exec_kernel import SubprocessExec
    from overlay.cni_networks import CniNetworks
    from overlay.cni_runner import CniRunner
    from overlay.netfilter_kernel import NftablesNetfilter
    from overlay.netlink_kernel import PyRoute2Netlink
    from overlay.testbed import Testbed

    state = Path(state_root)
    cni = CniNetworks(NetworkDirectory(state / "cni-config"), CniRunner(SubprocessExec()),
                      state / "cni" / "attachments", state / "cni" / "networks")
    overlay = OverlayAgent(PyRoute2Netlink(), "self", ip, netfilter=NftablesNetfilter(),
                           state_dir=state / "overlay", registry=CollectorRegistry(), on_allocation=cni.write_dcos)
    view = ClusterView(version=1, agents=[AgentInfo(agent_id="self", hostname="self", ip=ip,
                                                    overlay=OverlayIpam().allocate("self"))])
    result = overlay.on_view(view)
    if result.errors or "dcos" not in cni.scan().networks:
        sys.exit(f"overlay not ready: {result.errors}")
    scope = Cgroup(f"navstar-bench/cni-{uuid.uuid4().hex[:6]}")
    scope.create()
    paths = {"netlink": OverlayNetworks(overlay), "cni": CniContainerNetworks(cni)}
    rates: dict[str, list[float]] = {"netlink": [], "cni": []}
    teardowns: dict[str, list[float]] = {"netlink": [], "cni": []}
    try:
        for round_ in range(args.rounds):
            for path in (("netlink", "cni") if round_ % 2 == 0 else ("cni", "netlink")):
                statuses: list = []
                executor = Executor(state / f"{path}-{round_}", ip, statuses.append, cgroup_scope=scope.relpath,
                                    netns_prefix=f"{prefix}-t{path[0]}{round_}-", networks=paths[path])
                launches = [TaskLaunch(task_id=f"{path}-{round_}-{i}", app_id="/bench", name="bench",
                                       cmd="exec sleep 600", network="container", network_name="dcos",
                                       container_type="MESOS", cpus=0.01, mem=16) for i in range(args.tasks)]
                started = time.perf_counter()
                try:
                    with ThreadPoolExecutor(2) as pool:       # the agent's launcher: two start threads
                        list(pool.map(executor.launch, launches))
                except BaseException:
                    executor.shutdown_all()     # the tasks' namespaces and processes, even on a failed start
                    raise
                seconds = time.perf_counter() - started
                running = sum(1 for s in statuses if s.state == "TASK_RUNNING")
                if running != args.tasks:
                    failed = [s.message for s in statuses if s.state == "TASK_FAILED"][:3]
                    executor.shutdown_all()
                    sys.exit(f"{path}: {running}/{args.tasks} tasks started: {failed}")
                started = time.perf_counter()
                executor.shutdown_all()
                teardowns[path].append(time.perf_counter() - started)
                rates[path].append(args.tasks / seconds)
                print(f"round {round_ + 1} {path:<8} {args.tasks / seconds:7.1f} tasks/s "
                      f"({seconds:.2f} s; teardown {teardowns[path][-1]:.2f} s)", flush=True)
        bed = Testbed(prefix=prefix)        # only for its helpers; it owns nothing here
        tput = {}
        for path in ("netlink", "cni"):
            task_ns = f"{prefix}-tp{path}"
            subprocess.run(["ip", "netns", "add", task_ns], check=True)
            try:
                if path == "cni":
                    address = cni.attach("tput-cni", task_ns, "dcos").ips[0]
                else:
                    address = overlay.attach_container("tput-netlink", task_ns, "m-dcos").ip
                subprocess.run(["ip", "netns", "exec", task_ns, "ip", "link", "set", "lo", "up"], check=True)
                tput[path] = throughput(bed, task_ns, bed.agent_ns(1), address)
            finally:
                cni.detach("tput-cni") if path == "cni" else overlay.detach_container("tput-netlink")
                subprocess.run(["ip", "netns", "del", task_ns], check=False)
    finally:
        # Its tasks are gone (shutdown_all): the group and the ones below it, then the shared
        # parent unless another run still has a group there.
        scope.remove()
        for parent in Cgroup("navstar-bench").paths():
            with contextlib.suppress(OSError):
                parent.rmdir()
        overlay.netlink.close()

    netlink, via_cni = statistics.median(rates["netlink"]), statistics.median(rates["cni"])
    ratio = via_cni / netlink
    tput_ratio = tput["cni"] / tput["netlink"]
    print(f"bench.cni_launch — {args.tasks} tasks × {args.rounds} rounds per path, 2 start threads")
    print(f"{'what':<48}{'CNI':>12}{'netlink':>12}{'CNI ÷ netlink':>16}")
    print(f"{'launches per second (median)':<48}{via_cni:>12.1f}{netlink:>12.1f}{ratio:>15.2f}×")
    print(f"{'teardown of a round (s, median)':<48}{statistics.median(teardowns['cni']):>12.2f}"
          f"{statistics.median(teardowns['netlink']):>12.2f}")
    print(f"{'TCP agent → task (Gbit/s)':<48}{tput['cni'] / 1e9:>12.2f}{tput['netlink'] / 1e9:>12.2f}"
          f"{tput_ratio:>15.2f}×")
    print(f"goal: CNI launches ≥ {GOAL} × netlink: {'met' if ratio >= GOAL else 'MISSED'}")
    record("cni.launches_per_s", via_cni, "tasks/s", path="cni")
    record("cni.launches_per_s", netlink, "tasks/s", path="netlink")
    record("cni.launch/netlink", ratio, "x", f">= {GOAL}", ratio >= GOAL)
    record("cni.tcp/netlink", tput_ratio, "x")
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    if shutil.which("nsenter") is None:
        sys.exit("nsenter is needed")
    sys.exit(main())
