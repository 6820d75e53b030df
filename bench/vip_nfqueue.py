"""NFQUEUE VIP vs a direct connection vs an iptables-DNAT VIP (kube-proxy style), same run.

New TCP connections per second and connect latency from a client namespace, through a node
namespace that routes to 10 backend addresses, at 1, 1,000 and 10,000 VIPs; then the time to
program 10,000 VIPs × 10 backends. Everything runs in namespaces made here and removed after.

    .venv/bin/python -m bench.vip_nfqueue [--workers 4] [--phases 12] [--slice 0.1] [--queues N] [--no-pin] [--worker-nice N]

Goals: NFQUEUE ≥ 0.6× direct; ≤ 10 % slower at 10,000 VIPs than at 1 (each scale's rate taken
against direct in the same interleaved slices); programming < 2 s. Exits 1 when a goal is missed.
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

from rich.console import Console
from rich.table import Table

from bench._results import quick, record
from navstar.namespaces import remove_namespace

BACKEND_IPS = [f"10.78.1.{i}" for i in range(2, 12)]
NODE_IP, CLIENT_IP = "10.78.0.1", "10.78.9.2"
PORT = 8080
SCALES = (1, 1000, 10000)


def nfq_vip(i: int) -> str:
    return f"11.1.{i // 250}.{i % 250 + 1}"


def dnat_vip(i: int) -> str:
    return f"11.2.{i // 250}.{i % 250 + 1}"


# -- children (run inside the namespaces) ------------------------------------------------
SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)     # one server process per core
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4096)
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""

CLIENT = r"""
import json, multiprocessing as mp, socket, struct, sys, time
RESET = struct.pack("ii", 1, 0)             # close with a reset: no TIME_WAIT piling up in the client
workers, phases, slice_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in sys.argv[4:]]

def worker(barrier, results, timed):
    # Time slices, all workers on the same target at once, the targets taking turns: drift on
    # a shared machine (other jobs, frequency) hits every path alike.
    counts, lat = [0] * len(targets), [[] for _ in targets]
    for phase in range(phases * len(targets)):
        i = phase % len(targets)
        ip, port = targets[i]
        barrier.wait()
        deadline = time.perf_counter() + slice_s
        while True:
            t = time.perf_counter()
            if t >= deadline:
                break
            s = socket.socket()             # the same lean loop for every path: connect, close
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            s.connect((ip, port))
            if timed:
                lat[i].append(time.perf_counter() - t)
            s.close()
            counts[i] += 1
    results.put((counts, lat))

for ip, port in targets:                    # warm up ARP, caches, the agent
    for _ in range(50):
        socket.create_connection((ip, port)).close()
barrier, results = mp.Barrier(workers), mp.Queue()
procs = [mp.Process(target=worker, args=(barrier, results, workers == 1)) for _ in range(workers)]
for p in procs:
    p.start()
got = [results.get() for _ in procs]
for p in procs:
    p.join()
out = {}
for i, (ip, port) in enumerate(targets):
    lat = sorted(x for _, lats in got for x in lats[i])
    out[f"{ip}:{port}"] = {"rate": sum(c[i] for c, _ in got) / (phases * slice_s),
                           "p50": lat[len(lat) // 2] * 1e6 if lat else None,
                           "p99": lat[int(len(lat) * 0.99)] * 1e6 if lat else None}
print(json.dumps(out))
"""


def child_agent(count: int, state: str, queues: int | None, pin: bool, nice: int | None) -> None:
    """Start the NFQUEUE dataplane, program ``count`` VIPs × 10 backends into it, then serve."""
    import asyncio

    from minuteman.dataplane import Backend, VipEntry, VipKey
    from minuteman.maglev import maglev_table
    from minuteman.nfqueue import NfqueueDataplane
    from minuteman.reconciler import LoadBalancer

    async def serve() -> None:
        dataplane = NfqueueDataplane(node_ip=NODE_IP, state_path=Path(state), queues=queues, pin=pin,
                                     **({} if nice is None else {"worker_nice": nice}))
        await dataplane.start()
        backends = tuple(Backend(ip, PORT) for ip in BACKEND_IPS)
        started = time.perf_counter()
        lookup = maglev_table(backends)
        table = {VipKey(nfq_vip(i), 80, "tcp"): VipEntry(VipKey(nfq_vip(i), 80, "tcp"), backends, lookup)
                 for i in range(count)}
        built = time.perf_counter()
        # Programming ends when the workers hold the table too (apply hands it over).
        result = await asyncio.to_thread(dataplane.apply, table)
        applied = time.perf_counter()
        await asyncio.to_thread(dataplane.apply, table)
        again = time.perf_counter()
        assert not result.errors, list(result.errors.items())[:3]
        # Served as the agent serves it: the reconciler's loop (health polled every 0.1 s,
        # drift repair) runs alongside the packets.
        lb = LoadBalancer(dataplane)
        runner = asyncio.create_task(lb.run())
        await asyncio.sleep(0.2)     # the workers have the table (sent before apply returned)
        print(json.dumps({"build": built - started, "apply": applied - built, "reapply": again - applied}),
              flush=True)
        await runner

    asyncio.run(serve())


# -- the run -----------------------------------------------------------------------------
class Bench:
    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:6]
        self.node, self.backend, self.client = (f"nvb-{self.id}-{r}" for r in ("node", "back", "cli"))
        self.tmp = Path(tempfile.mkdtemp(prefix="navstar-bench-"))
        self.servers: list[subprocess.Popen] = []
        self.agent_proc: subprocess.Popen | None = None
        (self.tmp / "server.py").write_text(SERVER)
        (self.tmp / "client.py").write_text(CLIENT)

    def sh(self, *argv: str, stdin: str | None = None) -> str:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv[:6])}… failed: {done.stderr.strip()[-800:]}")
        return done.stdout

    def in_ns(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def build(self) -> None:
        for ns in (self.node, self.backend, self.client):
            self.sh("ip", "netns", "add", ns)
            self.sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.sh("ip", "-n", self.node, "addr", "add", f"{NODE_IP}/32", "dev", "lo")
        self.sh(*self.in_ns(self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
        for peer, subnet, ips in ((self.backend, "10.78.1", BACKEND_IPS), (self.client, "10.78.9", [CLIENT_IP])):
            veth = f"vb{self.id}{'b' if peer == self.backend else 'c'}"
            self.sh("ip", "link", "add", veth, "netns", self.node, "type", "veth", "peer", "name", "eth0",
                    "netns", peer)
            self.sh("ip", "-n", self.node, "addr", "add", f"{subnet}.1/24", "dev", veth)
            self.sh("ip", "-n", self.node, "link", "set", veth, "up")
            for ip in ips:
                self.sh("ip", "-n", peer, "addr", "add", f"{ip}/24", "dev", "eth0")
            self.sh("ip", "-n", peer, "link", "set", "eth0", "up")
            for net in ("10.78.0.0/16", "11.0.0.0/8"):      # sealed: no default route
                self.sh("ip", "-n", peer, "route", "add", net, "via", f"{subnet}.1")
        # Tens of thousands of connections to one target within a minute: a load generator's port range.
        self.sh(*self.in_ns(self.client, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"))
        for _ in range(os.cpu_count() or 1):
            server = subprocess.Popen(self.in_ns(self.backend, sys.executable, str(self.tmp / "server.py"), str(PORT)),
                                      stdout=subprocess.PIPE, text=True)
            self.servers.append(server)
            assert server.stdout.readline().strip() == "listening"

    def dnat(self, count: int) -> float:
        """kube-proxy's shape: one rule per VIP in a services chain, one chain picking a backend."""
        lines = ["*nat", ":BENCH-SERVICES - [0:0]", ":BENCH-SVC - [0:0]"]
        for i, ip in enumerate(BACKEND_IPS):
            probability = 1 / (len(BACKEND_IPS) - i)
            stat = f"-m statistic --mode random --probability {probability:.5f} " if i < len(BACKEND_IPS) - 1 else ""
            lines.append(f"-A BENCH-SVC {stat}-p tcp -j DNAT --to-destination {ip}:{PORT}")
        lines += [f"-A BENCH-SERVICES -d {dnat_vip(i)}/32 -p tcp --dport 80 -j BENCH-SVC" for i in range(count)]
        lines += ["COMMIT", ""]
        started = time.perf_counter()
        self.sh(*self.in_ns(self.node, "iptables-restore", "-w", "--noflush"), stdin="\n".join(lines))
        if subprocess.run(self.in_ns(self.node, "iptables", "-w", "-t", "nat", "-C", "PREROUTING", "-d", "11.2.0.0/16", "-j",
                                     "BENCH-SERVICES"), capture_output=True).returncode:
            self.sh(*self.in_ns(self.node, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-d", "11.2.0.0/16",
                                "-j", "BENCH-SERVICES"))
        return time.perf_counter() - started

    def agent(self, count: int, options: tuple[str, ...] = ()) -> dict:
        if self.agent_proc is not None:
            self.agent_proc.kill()
            self.agent_proc.wait()
        argv = [sys.executable, "-m", "bench.vip_nfqueue", *options, "--child-agent", str(count),
                str(self.tmp / "state.json")]
        self.agent_proc = agent = subprocess.Popen(self.in_ns(self.node, *argv), stdout=subprocess.PIPE, text=True,
                                                   cwd=Path(__file__).resolve().parents[1])
        line = agent.stdout.readline()
        if not line:
            raise RuntimeError("the NFQUEUE agent did not start")
        return json.loads(line)

    def measure(self, count: int, phases: int, slice_s: float, workers: int) -> dict[str, dict]:
        """Per path: conn/s and latency of one client, and conn/s of ``workers`` clients at once."""
        targets = {"direct": f"{BACKEND_IPS[-1]}:{PORT}", "nfqueue": f"{nfq_vip(count - 1)}:80",
                   "iptables-dnat": f"{dnat_vip(count - 1)}:80"}
        runs = {}
        for n in (1, workers):
            runs[n] = json.loads(self.sh(*self.in_ns(self.client, sys.executable, str(self.tmp / "client.py"), str(n),
                                                     str(phases), str(slice_s), *targets.values())))
        return {name: {**runs[1][target], "parallel": runs[workers][target]["rate"]} for name, target in targets.items()}

    def cleanup(self) -> None:
        for proc in [*self.servers, self.agent_proc]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in (self.node, self.backend, self.client):
            remove_namespace(ns)
        subprocess.run(["rm", "-rf", str(self.tmp)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=8 if quick() else 12, help="time slices per path (the paths take turns)")
    parser.add_argument("--slice", type=float, default=0.1, help="seconds per time slice")
    parser.add_argument("--workers", type=int, default=4, help="client processes connecting at once (throughput)")
    parser.add_argument("--queues", type=int, help="NFQUEUE queues (worker processes); default one per CPU")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="spread flows over the queues by hash, workers unpinned (default: by CPU, pinned)")
    parser.add_argument("--worker-nice", type=int, help="queue workers' niceness (default: the dataplane's)")
    parser.add_argument("--child-agent", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_agent:
        child_agent(int(args.child_agent[0]), args.child_agent[1], args.queues, args.pin, args.worker_nice)
        return 0
    if os.geteuid() != 0:
        print("root is needed (network namespaces, netfilter)", file=sys.stderr)
        return 1
    console = Console()
    agent_options = ((f"--queues={args.queues}",) if args.queues else ()) + (() if args.pin else ("--no-pin",)) \
        + ((f"--worker-nice={args.worker_nice}",) if args.worker_nice is not None else ())
    bench = Bench()
    started = time.monotonic()
    results: dict[int, dict[str, dict]] = {}
    programming: dict[int, dict] = {}
    try:
        bench.build()
        for count in SCALES:
            programming[count] = bench.agent(count, agent_options)
            programming[count]["dnat"] = bench.dnat(count)
            results[count] = bench.measure(count, args.phases, args.slice, args.workers)
    finally:
        bench.cleanup()

    table = Table(title=f"new TCP connections through a VIP: one client, then {args.workers} at once "
                        f"({args.phases} slices of {args.slice} s per path, the paths taking turns)")
    for column in ("VIPs", "path", "conn/s 1 client", "× direct", "p50 µs", "p99 µs",
                   f"conn/s {args.workers} clients", "× direct"):
        table.add_column(column, justify="right")
    for count, paths in results.items():
        direct = paths["direct"]
        for name, r in paths.items():
            table.add_row(f"{count:,}", name, f"{r['rate']:,.0f}", f"{r['rate'] / direct['rate']:.2f}",
                          f"{r['p50']:.0f}", f"{r['p99']:.0f}", f"{r['parallel']:,.0f}",
                          f"{r['parallel'] / direct['parallel']:.2f}")
    console.print(table)
    program = programming[SCALES[-1]]
    first, last = results[SCALES[0]], results[SCALES[-1]]
    console.print(f"programming {SCALES[-1]:,} VIPs × {len(BACKEND_IPS)} backends: Maglev {program['build']:.2f} s, "
                  f"dataplane apply {program['apply']:.2f} s (goal < 2 s), idempotent re-apply "
                  f"{program['reapply']:.2f} s; iptables-DNAT rules {program['dnat']:.2f} s")
    # Scales are measured minutes apart, so a path is never compared with itself across scales by
    # raw rate: each rate is first divided by the direct path's, measured in the same interleaved
    # slices, and those ratios are compared (the machine's load cancels out).
    def vs_direct(paths: dict[str, dict], path: str, k: str) -> float:
        return paths[path][k] / paths["direct"][k]

    missed = []
    for label, k in ((f"{args.workers} clients (throughput)", "parallel"), ("1 client (latency-bound)", "rate")):
        ratio = vs_direct(first, "nfqueue", k)
        scale = vs_direct(last, "nfqueue", k) / ratio
        dnat_scale = vs_direct(last, "iptables-dnat", k) / vs_direct(first, "iptables-dnat", k)
        console.print(f"{label}: NFQUEUE / direct at 1 VIP {ratio:.2f} (goal ≥ 0.6); NFQUEUE at {SCALES[-1]:,} / "
                      f"at 1 VIP, each against direct in its own slices, {scale:.2f} (goal ≥ 0.90; raw rates "
                      f"{last['nfqueue'][k] / first['nfqueue'][k]:.2f}); iptables-DNAT the same way {dnat_scale:.2f}")
        missed += [f"{label}: NFQUEUE / direct {ratio:.2f} < 0.6"] if ratio < 0.6 else []
        missed += [f"{label}: NFQUEUE at {SCALES[-1]:,} VIPs {scale:.2f} of 1 VIP < 0.90"] if scale < 0.90 else []
    if program["apply"] >= 2:
        missed.append(f"programming {SCALES[-1]:,} VIPs took {program['apply']:.2f} s ≥ 2 s")
    for count, paths in results.items():
        for name, r in paths.items():
            record(f"lb.{name}.conn_s", r["rate"], "conn/s", path=name, vips=count, source="nfqueue")
            record(f"lb.{name}.parallel_conn_s", r["parallel"], "conn/s", path=name, vips=count, source="nfqueue")
            record(f"lb.{name}.p50_us", r["p50"], "us", path=name, vips=count, source="nfqueue")
            record(f"lb.{name}.p99_us", r["p99"], "us", path=name, vips=count, source="nfqueue")
    ratio = vs_direct(first, "nfqueue", "parallel")
    record("lb.nfqueue/direct", ratio, "x", ">= 0.6", ratio >= 0.6)
    scale = vs_direct(last, "nfqueue", "parallel") / ratio
    record("lb.nfqueue.10k/1", scale, "x", ">= 0.90", scale >= 0.90)
    record("lb.nfqueue.program_10k_s", program["apply"], "s", "< 2", program["apply"] < 2)
    console.print(f"took {time.monotonic() - started:.0f} s")
    for line in missed:
        print(f"goal missed: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
