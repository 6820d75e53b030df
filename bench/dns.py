"""DNS queries per second: navstar's resolver against dnsmasq and unbound, same names, same run,
same namespace.

Two workloads, each measured with dnsperf against the three servers in alternation:

- own zone: 1,000 VIP names (``appN.marathon.l4lb.thisdcos.directory``, TTL 5) that navstar
  serves from its l4lb zone, dnsmasq from a hosts file and unbound as ``local-data``;
- cached forwarded: 1,000 names an upstream dnsmasq serves; navstar, a caching dnsmasq and unbound
  (one thread, like the others) all forward to it, and every cache is warmed before timing, so
  this measures cache hits.

navstar runs as the agent runs it: with its kernel replay table on ``lo`` (``--kernel-replay``,
``bpf/dns_replay.c``: own-zone answers the resolver has given once are given again at tc ingress)
when eBPF is available; a second instance without it is measured beside it and reported as
``dns.<workload>.userspace/dnsmasq``.

Goals (issue 5): own zone ≥ 0.5× dnsmasq, cached forwarded ≥ 0.3×; exits 1 when one is missed.
The ratios to unbound are reported (issue 17's ``dns.cached/unbound``) without a goal.
Throughput counts correct answers only (NOERROR: every name asked exists), so a server answering
SERVFAIL fast gains nothing; loss and wrong answers are reported for every server. Everything runs
inside a namespace this benchmark creates and deletes, with every process it starts stopped by pid.

Run: .venv/bin/python -m bench.dns [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench._results import quick, record

NAMES = 1000
NAVSTAR_IP = "198.51.100.1"     # as the agent runs it: own-zone answers also from the kernel (tc on lo)
USERSPACE_IP = "198.51.100.2"   # the same resolver without the kernel replay table
PEER_IP = "127.0.0.2"          # dnsmasq answering the own-zone names / forwarding with its cache
UPSTREAM_IP = "127.0.0.3"      # dnsmasq every server forwards to
UNBOUND_IP = "127.0.0.4"       # Debian's unbound: the same names as local-data, and a forward zone
PEERS = {"dnsmasq": PEER_IP, "unbound": UNBOUND_IP}
GOALS = {"own zone": 0.5, "cached forwarded": 0.3}
REPO = Path(__file__).resolve().parents[1]


class Namespace:
    def __init__(self) -> None:
        self.name = f"nvbench-dns-{uuid.uuid4().hex[:8]}"
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> Namespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")
        for address in (NAVSTAR_IP, USERSPACE_IP, PEER_IP, UPSTREAM_IP, UNBOUND_IP):
            self.run("ip", "addr", "add", f"{address}/32", "dev", "lo")
        return self

    def __exit__(self, *_exc) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def run(self, *command: str, timeout: float = 120) -> str:
        return subprocess.run(["ip", "netns", "exec", self.name, *command], check=True, capture_output=True,
                              text=True, timeout=timeout).stdout

    def start(self, *command: str, ready: str | None = None) -> subprocess.Popen:
        process = subprocess.Popen(["ip", "netns", "exec", self.name, *command], cwd=REPO,
                                   stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, text=True)
        self.processes.append(process)
        if ready and process.stdout.readline().strip() != ready:
            raise RuntimeError(f"{command[0]} did not start")
        return process

    def dnsmasq(self, address: str, *options: str) -> None:
        self.start("dnsmasq", "-k", "--conf-file=/dev/null", "--no-hosts", "--no-resolv", "--bind-interfaces",
                   f"--listen-address={address}", "--port=53", "--user=root", "--log-facility=/dev/null",
                   *options)
        for _ in range(50):
            if f"{address}:53" in self.run("ss", "-lun"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"dnsmasq on {address} did not start")

    def unbound(self, config: Path) -> None:
        self.start("unbound", "-d", "-c", str(config))
        for _ in range(100):
            if f"{UNBOUND_IP}:53" in self.run("ss", "-lun"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"unbound on {UNBOUND_IP} did not start")

    def dnsperf(self, server: str, queries: Path, seconds: float | None = None) -> Run:
        limit = ["-l", str(seconds)] if seconds else ["-n", "1"]
        out = self.run("dnsperf", "-s", server, "-d", str(queries), "-c", "4", "-q", "500", "-t", "2", *limit)
        qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
        sent = float(re.search(r"Queries sent:\s+(\d+)", out).group(1))
        lost = float(re.search(r"Queries lost:\s+(\d+)", out).group(1))
        completed = float(re.search(r"Queries completed:\s+(\d+)", out).group(1))
        codes = re.search(r"Response codes:\s+(.*)", out)
        noerror = re.search(r"NOERROR (\d+)", codes.group(1)) if codes else None
        correct = float(noerror.group(1)) if noerror else 0.0
        return Run(qps * correct / completed if completed else 0.0,
                   lost / sent if sent else 1.0,
                   (completed - correct) / sent if sent else 0.0)


def unbound_config(directory: Path, own: dict[str, str]) -> Path:
    """One thread (dnsmasq uses one core, navstar's resolver one loop), no DNSSEC validation (no
    trust anchor in a lab), the own-zone names as local-data with navstar's TTL, and example.test
    forwarded to the upstream on loopback."""
    lines = [
        "server:", f"  interface: {UNBOUND_IP}", "  port: 53", "  do-daemonize: no", '  username: ""',
        '  chroot: ""', f'  directory: "{directory}"', '  pidfile: ""', "  use-syslog: no", '  logfile: ""',
        "  verbosity: 0", "  num-threads: 1", "  do-ip6: no", "  access-control: 0.0.0.0/0 allow",
        '  module-config: "iterator"', "  do-not-query-localhost: no", "  msg-cache-size: 32m",
        "  rrset-cache-size: 64m", "  ratelimit: 0", "  ip-ratelimit: 0",
        '  local-zone: "test." nodefault',            # RFC 6761's test. is refused by default
        '  local-zone: "l4lb.thisdcos.directory." static',
        *(f'  local-data: "{name}. 5 IN A {ip}"' for name, ip in own.items()),
        "forward-zone:", '  name: "example.test."', f"  forward-addr: {UPSTREAM_IP}",
    ]
    path = directory / "unbound.conf"
    path.write_text("\n".join(lines) + "\n")
    done = subprocess.run(["unbound-checkconf", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"unbound-checkconf refused {path}: {done.stdout}{done.stderr}")
    return path


@dataclass
class Run:
    """One dnsperf run: correct answers (NOERROR) per second, and the fractions of queries sent
    that got no answer (lost) or a wrong one (any other response code)."""

    correct_qps: float
    lost: float
    wrong: float


def _kernel_replay_available() -> bool:
    """Whether ``--kernel-replay`` can load here (the agent turns it on under the same test)."""
    try:
        from bpf.dns_replay import KernelDnsReplay
        KernelDnsReplay().close()
    except Exception:  # noqa: BLE001 - no bcc, no headers, no BPF: the resolver alone is measured
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0 if quick() else 8.0, help="length of each dnsperf run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per server and workload")
    args = parser.parse_args()
    console = Console(width=150)
    kernel_replay = _kernel_replay_available()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-dns-")))
        own = {f"app{i}.marathon.l4lb.thisdcos.directory": f"11.0.{i // 250}.{i % 250 + 1}" for i in range(NAMES)}
        forwarded = {f"fwd{i}.example.test": f"10.40.{i // 250}.{i % 250 + 1}" for i in range(NAMES)}
        (tmp / "vips.json").write_text(json.dumps(own))
        (tmp / "own.hosts").write_text("".join(f"{ip} {name}\n" for name, ip in own.items()))
        (tmp / "upstream.hosts").write_text("".join(f"{ip} {name}\n" for name, ip in forwarded.items()))
        (tmp / "own.queries").write_text("".join(f"{name} A\n" for name in own))
        (tmp / "forwarded.queries").write_text("".join(f"{name} A\n" for name in forwarded))

        ns = stack.enter_context(Namespace())
        ns.dnsmasq(UPSTREAM_IP, f"--addn-hosts={tmp / 'upstream.hosts'}", "--local-ttl=3600")
        for address, extra in ((NAVSTAR_IP, ["--kernel-replay", "lo"] if kernel_replay else []), (USERSPACE_IP, [])):
            ns.start(sys.executable, "-m", "spartan_dns", "--listen", address, "--port", "53",
                     "--vips", str(tmp / "vips.json"), "--upstream", UPSTREAM_IP, *extra, ready="ready")
        ns.unbound(unbound_config(tmp, own))
        results: dict[tuple[str, str], list[Run]] = {}

        def measure(workload: str, queries: Path) -> None:
            for _ in range(args.rounds):
                for server, address in (*PEERS.items(), ("navstar", NAVSTAR_IP), ("navstar-userspace", USERSPACE_IP)):
                    results.setdefault((workload, server), []).append(ns.dnsperf(address, queries, args.seconds))

        # Own zone: the peer serves the same names from a hosts file, with the same TTL.
        ns.dnsmasq(PEER_IP, f"--addn-hosts={tmp / 'own.hosts'}", "--local-ttl=5")
        measure("own zone", tmp / "own.queries")
        own_zone_dnsmasq = ns.processes.pop()
        own_zone_dnsmasq.terminate()
        own_zone_dnsmasq.wait(5)

        # Cached forwarded: the peer is a caching forwarder to the same upstream; warm both caches.
        ns.dnsmasq(PEER_IP, f"--server={UPSTREAM_IP}", "--cache-size=10000")
        for address in (*PEERS.values(), NAVSTAR_IP, USERSPACE_IP):
            ns.dnsperf(address, tmp / "forwarded.queries")
        measure("cached forwarded", tmp / "forwarded.queries")

    table = Table(title=f"dnsperf, {NAMES} names, {args.rounds}×{args.seconds:g}s per server and workload; "
                        "correct (NOERROR) answers per second")
    for column in ("workload", "peer", "peer QPS", "navstar QPS", "ratio", "goal", "lost peer", "lost navstar",
                   "wrong peer", "wrong navstar"):
        table.add_column(column, justify="right" if column not in ("workload", "peer") else "left", no_wrap=True)
    verdict = 0
    short = {"own zone": "local", "cached forwarded": "cached"}
    for workload in GOALS:
        for server in (*PEERS, "navstar", "navstar-userspace"):
            record(f"dns.{server}.qps", statistics.median(r.correct_qps for r in results[(workload, server)]), "qps",
                   workload=workload, server=server)
        ours_runs = results[(workload, "navstar")]
        ours = statistics.median(r.correct_qps for r in ours_runs)
        for peer_name in PEERS:
            goal = GOALS[workload] if peer_name == "dnsmasq" else None
            peer_runs = results[(workload, peer_name)]
            peer = statistics.median(r.correct_qps for r in peer_runs)
            ratio = ours / peer if peer else 0.0
            met = goal is None or ratio >= goal
            verdict |= not met
            record(f"dns.{short[workload]}/{peer_name}", ratio, "x", f">= {goal}" if goal else None,
                   met if goal else None,
                   spread=[f(o.correct_qps / p.correct_qps if p.correct_qps else 0.0
                             for o, p in zip(ours_runs, peer_runs, strict=True)) for f in (min, max)])
            table.add_row(workload, peer_name, f"{peer:,.0f}", f"{ours:,.0f}",
                          f"[{'green' if met else 'red'}]{ratio:.2f}×", f"≥ {goal}×" if goal else "—",
                          f"{max(r.lost for r in peer_runs):.2%}", f"{max(r.lost for r in ours_runs):.2%}",
                          f"{max(r.wrong for r in peer_runs):.2%}", f"{max(r.wrong for r in ours_runs):.2%}")
        # The resolver alone, without the kernel's help: reported, no goal.
        alone = statistics.median(r.correct_qps for r in results[(workload, "navstar-userspace")])
        peer = statistics.median(r.correct_qps for r in results[(workload, "dnsmasq")])
        record(f"dns.{short[workload]}.userspace/dnsmasq", alone / peer if peer else 0.0, "x")
        table.add_row(workload, "dnsmasq", f"{peer:,.0f}", f"{alone:,.0f} (process only)",
                      f"{alone / peer if peer else 0.0:.2f}×", "—", "", "", "", "")
    console.print(table)
    if not kernel_replay:
        console.print("eBPF (bcc) is not available here: navstar ran without its kernel replay table")
    return int(verdict)


if __name__ == "__main__":
    raise SystemExit(main())
