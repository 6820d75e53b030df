"""The suite behind ``python -m bench`` (``make bench``, ``make bench-quick``): runs each scenario in
its own process, collects the figures it records (:mod:`bench._results`), and writes

- ``bench/results/<scenario>-<timestamp>.json``: that run's figures, goals, exit code, command,
  output, git commit and machine;
- ``bench/results/latest.json`` (``latest-quick.json`` for ``--quick``): every scenario's latest
  outcome (a run of some scenarios keeps the others' last results) and the ``ratios`` object of
  issue 17, each judged against that issue's goals;
- ``bench/RESULTS.md`` and the plots in ``bench/plots/``, regenerated from that summary.

Scenarios that build a lab run under ``flock /tmp/navstar-lab.lock`` (one lab per machine)."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._results import QUICK_ENV, RECORD_ENV

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PLOTS = BENCH / "plots"
LAB_LOCK = "/tmp/navstar-lab.lock"
SERIES_LABELS = {"path", "vips", "source", "workload", "server", "page"}   # a point in a series, not a ratio
LAB_SCENARIOS = {"control_burst", "control_reach", "adminrouter", "master_failover", "ui_pages"}   # build a lab: under the lock, left out of --quick
# Issue 17's ratio keys and goals (navstar ÷ peer, or seconds where the key says _s). None: no goal yet.
RATIO_GOALS: dict[str, tuple[str, float] | None] = {
    "lb.ebpf/direct": (">=", 0.98), "lb.nfqueue/direct": (">=", 0.8), "lb.ebpf/iptables": None,
    "lb.ebpf.10k/1": (">=", 0.95), "lb.nfqueue.10k/1": (">=", 0.95), "lb.program_10k_s": None,
    "lb.program/iptables_restore": (">=", 1.0), "dns.local/dnsmasq": (">=", 1.5),
    "dns.cached/dnsmasq": (">=", 1.0), "dns.cached/unbound": None, "overlay/underlay": (">=", 0.85),
    "overlay.program_1k_s": None, "overlay.program/ip_batch": (">=", 1.0),
    "control.deploy_to_reachable_s": ("<", 1.0), "control.fanout_1k_p99_s": ("<", 1.0),
    "drf.cycle_10k_s": ("<", 0.15), "cni.launch/netlink": (">=", 0.7), "cni.tcp/netlink": None, "edge/direct": (">=", 0.8),
    "edge.new_connections/direct": (">=", 0.7), "edge.scaling_failed_requests": ("<", 1), "edge.apply_1k_s": ("<", 1.0), "adminrouter/direct": None, "ha.failover_s": ("<", 5.0),
    "dns.records_10k_s": ("<", 1.0), "dns.records_100k_s": None,
    "dns.local.userspace/dnsmasq": None, "dns.cached.userspace/dnsmasq": None,
    "ui.page_load_ms": ("<", 1000.0),       # issue 18: every page under 1 s with 100 apps
}


def _out(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else ""


def git_commit() -> dict[str, Any]:
    return {"commit": _out("git", "rev-parse", "HEAD"),
            "dirty": bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                         capture_output=True, text=True, cwd=REPO).stdout.strip())}


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    tools = {"iptables": ("iptables", "--version"), "nft": ("nft", "--version"), "dnsmasq": ("dnsmasq", "--version"),
             "unbound": ("unbound", "-V"), "dnsperf": ("dnsperf", "-h"), "iperf3": ("iperf3", "--version"),
             "ip": ("ip", "-V")}
    versions = {name: _out(*command) for name, command in tools.items()}
    versions["dnsperf"] = next(iter(re.findall(r"DNS Performance Testing Tool.*|Version \S+", versions["dnsperf"])),
                               versions["dnsperf"])
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "hostname": platform.node(), "versions": versions}


def judge(key: str, value: float) -> bool | None:
    goal = RATIO_GOALS.get(key)
    if goal is None:
        return None
    op, bound = goal
    return value >= bound if op == ">=" else value < bound


def run_scenario(name: str, quick: bool, stamp: str, commit: dict[str, Any], host: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, "-m", f"bench.{name}"]
    if name in LAB_SCENARIOS:
        command = ["flock", LAB_LOCK, *command]
    with tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".jsonl", delete=False) as handle:
        record_path = Path(handle.name)
    env = {**os.environ, RECORD_ENV: str(record_path), QUICK_ENV: "1" if quick else "0"}
    started = time.monotonic()
    output: list[str] = []
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            output.append(line.rstrip("\n"))
    seconds = time.monotonic() - started
    records = [json.loads(line) for line in record_path.read_text().splitlines() if line.strip()]
    record_path.unlink()
    result = {"scenario": name, "mode": "quick" if quick else "full", "started": stamp, "seconds": round(seconds, 1),
              "exit_code": process.returncode, "goals_met": process.returncode == 0,
              "command": " ".join(command), "env": {QUICK_ENV: env[QUICK_ENV]}, **commit, "machine": host,
              "records": records, "output": output[-200:]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run(names: list[str], quick: bool) -> int:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    commit, host = git_commit(), machine()
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    for name in names:
        print(f"== bench.{name}" + (" (quick)" if quick else ""), flush=True)
        runs.append(run_scenario(name, quick, stamp, commit, host))
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest = RESULTS / ("latest-quick.json" if quick else "latest.json")
    # A run of some scenarios updates theirs in the summary and keeps the others' last results.
    previous: dict[str, Any] = {"scenarios": {}, "records": {}}
    if latest.exists():
        try:
            previous = json.loads(latest.read_text())
        except ValueError:
            pass
    scenarios = {**previous.get("scenarios", {}),
                 **{r["scenario"]: {"exit_code": r["exit_code"], "goals_met": r["goals_met"], "seconds": r["seconds"],
                                    "started": stamp, "commit": commit["commit"],
                                    "result": f"{r['scenario']}-{stamp}.json"} for r in runs}}
    records = {**previous.get("records", {}), **{r["scenario"]: r["records"] for r in runs}}
    scenarios = {name: scenarios[name] for name in sorted(scenarios)}
    records = {name: records[name] for name in sorted(records)}
    ratios: dict[str, float] = {}
    spreads: dict[str, list[float]] = {}
    for scenario_records in records.values():
        for entry in scenario_records:
            if entry["name"] in RATIO_GOALS and not SERIES_LABELS & set(entry):
                ratios[entry["name"]] = entry["value"]
                if "spread" in entry:
                    spreads[entry["name"]] = entry["spread"]
    summary = {"mode": "quick" if quick else "full", "started": stamp, "seconds": round(time.monotonic() - started, 1),
               **commit, "machine": host,
               "ran": [r["scenario"] for r in runs], "scenarios": scenarios,
               "ratios": {key: ratios[key] for key in RATIO_GOALS if key in ratios},
               "spreads": spreads,
               "goals": {key: {"goal": f"{RATIO_GOALS[key][0]} {RATIO_GOALS[key][1]:g}",  # type: ignore[index]
                               "value": ratios[key], "met": judge(key, ratios[key])}
                         for key in RATIO_GOALS if key in ratios and RATIO_GOALS[key] is not None},
               "records": records}
    latest.write_text(json.dumps(summary, indent=2) + "\n")
    from bench._report import render  # matplotlib is imported only here
    render(summary)
    failed = [r["scenario"] for r in runs if r["exit_code"] != 0]
    print(f"== {len(runs) - len(failed)} met their goals; missed or failed: {', '.join(failed) or 'none'}; "
          f"{summary['seconds']:.0f} s; wrote {latest.relative_to(REPO)}, bench/RESULTS.md, bench/plots/")
    return 1 if failed else 0
