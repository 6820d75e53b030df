"""NFQUEUE drift check and repair at 10,000 VIPs, against the same work done with the ``nft`` command.

In a network namespace made here (and removed after), the NFQUEUE dataplane programs 10,000 VIPs
× 10 backends; then the reconciler's repair step (read the kernel back, compare with the table,
re-apply if it differs) is timed when (a) nothing drifted, (b) the table was deleted, (c) 100 set
members were removed. Processes started during each repair are counted with a Python audit hook
(``os.fork``, ``os.posix_spawn``, ``os.exec``, ``subprocess.Popen``, ``os.system``: every way
Python starts one). The peer, in the same run: the ``nft`` command reading the table back
(``nft -j list table``) and loading the same ruleset with its 10,000 set members (``nft -j -f``).

    .venv/bin/python -m bench.nfqueue_repair [--vips 10000] [--rounds 3]

Goals: no process started; (a) ≤ 0.25 s; (b) and (c) ≤ 1.0 s. Exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench._results import quick
from navstar.namespaces import remove_namespace

NODE_IP = "10.79.0.1"
BACKENDS = [(f"10.79.1.{i}", 8080) for i in range(2, 12)]
GOALS = {"nothing drifted": 0.25, "table deleted": 1.0, "100 members removed": 1.0}
PROCESS_EVENTS = {"os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "subprocess.Popen", "os.system", "os.spawn"}


def vip(i: int) -> str:
    return f"11.3.{i // 250}.{i % 250 + 1}"


def child(vips: int, rounds: int, workdir: Path) -> dict:
    """Runs inside the namespace: program, drift, repair, time."""
    from kernel.nftables import Nftables
    from minuteman.dataplane import Backend, VipEntry, VipKey
    from minuteman.maglev import maglev_table
    from minuteman.netfilter_kernel import TABLE, KernelNetfilter
    from minuteman.nfqueue import InlineWorkers, NfqueueDataplane

    started: list[str] = []
    counting = [False]

    def audit(event: str, _args) -> None:
        if counting[0] and event in PROCESS_EVENTS:
            started.append(event)
    sys.addaudithook(audit)

    backends = tuple(Backend(ip, port) for ip, port in BACKENDS)
    lookup = maglev_table(backends)
    keys = [VipKey(vip(i), 80, "tcp") for i in range(vips)]
    table = {key: VipEntry(key, backends, lookup) for key in keys}
    netfilter = KernelNetfilter(NODE_IP)
    dataplane = NfqueueDataplane(node_ip=NODE_IP, netfilter=netfilter, workers=InlineWorkers(),
                                 state_path=workdir / "state.json")
    first = time.perf_counter()
    result = dataplane.apply(table)
    program = time.perf_counter() - first
    assert not result.errors, list(result.errors.items())[:3]
    nft = Nftables()

    def repair() -> tuple[float, float, bool]:
        """The reconciler's repair step: read back and compare; re-apply if it differs."""
        del started[:]
        counting[0] = True
        t0 = time.perf_counter()
        drifted = dataplane.current() != table
        t1 = time.perf_counter()
        if drifted:
            dataplane.apply(table)
        t2 = time.perf_counter()
        counting[0] = False
        return t1 - t0, t2 - t0, drifted

    cases = {
        "nothing drifted": lambda: None,
        "table deleted": lambda: nft.delete_table("ip", TABLE),
        "100 members removed": lambda: netfilter.update_vips((), keys[:: max(1, vips // 100)][:100]),
    }
    out: dict = {"program": program, "cases": {}}
    for name, drift in cases.items():
        runs = []
        for _ in range(rounds):
            drift()
            check, total, drifted = repair()
            runs.append({"check": check, "total": total, "drifted": drifted, "processes": len(started),
                         "restored": dataplane.current() == table})
        out["cases"][name] = runs
    # The peer: the nft command reading the table back, and loading the ruleset with its members.
    ruleset = nft.read({"table": {"family": "ip", "name": TABLE}})
    path = workdir / "ruleset.json"
    native = [obj for obj in ruleset if not any("xt" in expr for expr in obj.get("rule", {}).get("expr", []))]
    commands = [{"add": {"table": {"family": "ip", "name": "bench-peer"}}}]
    for obj in native:          # the same objects in a table of their own ...
        (kind, body), = obj.items()
        if kind == "table" or kind == "map":     # ... (nft -j cannot declare this map: see kernel.nftables)
            continue
        body = {k: v for k, v in body.items() if k != "handle"}
        body["table"] = "bench-peer"
        if kind == "rule" and "@backends" in json.dumps(body):
            continue
        commands.append({"add": {kind: body}})
    path.write_text(json.dumps({"nftables": commands}))
    peer_list, peer_load = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(["nft", "-j", "list", "table", "ip", TABLE], check=True, capture_output=True)
        peer_list.append(time.perf_counter() - t0)
        subprocess.run(["nft", "delete", "table", "ip", "bench-peer"], capture_output=True)
        t0 = time.perf_counter()
        subprocess.run(["nft", "-j", "-f", str(path)], check=True, capture_output=True)
        peer_load.append(time.perf_counter() - t0)
    out["peer"] = {"list": min(peer_list), "load": min(peer_load)}
    dataplane.close(keep_kernel_state=False)
    nft.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vips", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1 if quick() else 3, help="repairs timed per case (the best is reported)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.vips, args.rounds, Path(args.child))))
        return 0
    if os.geteuid() != 0:
        print("root is needed (network namespaces, netfilter)", file=sys.stderr)
        return 1
    namespace = f"nvr-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="navstar-bench-"))
    try:
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", namespace, "addr", "add", f"{NODE_IP}/32", "dev", "lo"], check=True)
        done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-m", "bench.nfqueue_repair",
                               "--vips", str(args.vips), "--rounds", str(args.rounds), "--child", str(workdir)],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if done.returncode:
            print(done.stderr, file=sys.stderr)
            return 1
        result = json.loads(done.stdout)
    finally:
        remove_namespace(namespace)
        subprocess.run(["rm", "-rf", str(workdir)])

    peer = result["peer"]
    print(f"programming {args.vips:,} VIPs × {len(BACKENDS)} backends: {result['program']:.2f} s")
    print(f"{'case':<22}{'check s':>9}{'check+repair s':>16}{'goal s':>8}{'processes':>11}  restored")
    missed = []
    for name, runs in result["cases"].items():
        best = min(runs, key=lambda run: run["total"])
        processes = sum(run["processes"] for run in runs)
        restored = all(run["restored"] for run in runs) and all(run["drifted"] == (name != "nothing drifted")
                                                               for run in runs)
        print(f"{name:<22}{best['check']:>9.3f}{best['total']:>16.3f}{GOALS[name]:>8.2f}{processes:>11}  {restored}")
        if best["total"] > GOALS[name]:
            missed.append(f"{name}: {best['total']:.3f} s > {GOALS[name]} s")
        if processes:
            missed.append(f"{name}: {processes} processes started")
        if not restored:
            missed.append(f"{name}: drift not seen or not repaired")
    nothing, deleted = (min(r["total"] for r in result["cases"][name]) for name in ("nothing drifted", "table deleted"))
    print(f"peer, the nft command: read the table back {peer['list']:.3f} s (drift check: "
          f"{nothing / peer['list']:.2f}× of it); load the ruleset with its members {peer['load']:.3f} s "
          f"(rebuild: {deleted / peer['load']:.2f}× of it)")
    for line in missed:
        print(f"goal missed: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
