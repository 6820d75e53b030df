"""Prometheus for a navstar cluster: the configuration and rules in ``deploy/prometheus``, rendered
for a set of targets, checked with ``promtool`` before use, and the command line that runs it.

    render(out_dir, masters=[...], agents=[...], secret_file=...)   # out_dir/prometheus.yml, rules/*.yml
    check(out_dir / "prometheus.yml")                               # promtool check config + check rules
    server_argv(out_dir / "prometheus.yml", data_dir, ":9090")      # Debian's /usr/bin/prometheus

The lab (``navstar lab up --prometheus``) renders with short intervals and ``for:`` durations so
alerts fire within seconds; a real cluster keeps the repository's values.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from string import Template

DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
TEMPLATE = DEPLOY_DIR / "prometheus.yml.tmpl"
RULES_DIR = DEPLOY_DIR / "rules"
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
AGENT_METRICS_PORT = 61091
MASTER_METRICS_PORT = 5050
PORT = 9090
EXTERNAL_PATH = "/prometheus/"    # where Admin Router serves it: the UI's links carry this prefix
_FOR = re.compile(r"^(\s+for:\s*)\S+\s*$", re.MULTILINE)


class PrometheusError(Exception):
    """The configuration or rules do not pass promtool, or a tool is missing; the message says why."""


def render(out_dir: Path, *, masters: Sequence[str], agents: Sequence[str], secret_file: str | Path,
           marathon_lb: Sequence[str] = (), cluster: str = "navstar", scrape_interval: str = "15s",
           evaluation_interval: str = "15s", alert_for: str | None = None,
           listen: str = f"127.0.0.1:{PORT}") -> Path:
    """Writes ``out_dir/prometheus.yml`` (scraping ``agents`` on :61091, ``masters`` on :5050 with
    the cluster secret as bearer token, ``marathon_lb`` targets as given) and ``out_dir/rules/``
    (the repository's rules; with ``alert_for`` every alert's ``for:`` becomes that). Addresses
    without a port get the component's default. Returns the configuration's path; idempotent."""
    rules = out_dir / "rules"
    if rules.exists():
        shutil.rmtree(rules)
    rules.mkdir(parents=True)
    for source in sorted(RULES_DIR.glob("*.yml")):
        text = source.read_text()
        if alert_for is not None:
            text = _FOR.sub(lambda m: m.group(1) + alert_for, text)
        (rules / source.name).write_text(text)
    values = {
        "scrape_interval": scrape_interval,
        "scrape_timeout": scrape_interval if _seconds(scrape_interval) < 10 else "10s",
        "evaluation_interval": evaluation_interval,
        "cluster": json.dumps(cluster),
        "secret_file": json.dumps(str(secret_file)),
        "prometheus_targets": json.dumps([listen]),
        "agent_targets": json.dumps([_target(a, AGENT_METRICS_PORT) for a in agents]),
        "master_targets": json.dumps([_target(m, MASTER_METRICS_PORT) for m in masters]),
        "marathon_lb_targets": json.dumps(list(marathon_lb)),
    }
    config = out_dir / "prometheus.yml"
    config.write_text(Template(TEMPLATE.read_text()).substitute(values))
    return config


def check(config: Path) -> None:
    """``promtool check config`` (which also reads the rule files it names) and ``promtool check
    rules`` on every rule file; raises PrometheusError with promtool's own words."""
    if not Path(PROMTOOL).exists():
        raise PrometheusError(f"{PROMTOOL} is missing: install Debian's prometheus (make setup)")
    rule_files = sorted(str(p) for p in (config.parent / "rules").glob("*.yml"))
    for argv in ([PROMTOOL, "check", "config", str(config)], [PROMTOOL, "check", "rules", *rule_files]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise PrometheusError(f"`{' '.join(argv[:3])}` refused {config.parent}:\n"
                                  + (done.stdout + done.stderr).strip())


def server_argv(config: Path, data_dir: Path, listen: str = f":{PORT}", retention: str = "1d") -> list[str]:
    """Debian's prometheus with this configuration; ``/-/reload`` re-reads it (lifecycle API)."""
    return [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
            f"--storage.tsdb.retention.time={retention}", f"--web.listen-address={listen}",
            "--web.enable-lifecycle", "--web.route-prefix=/", f"--web.external-url={EXTERNAL_PATH}",
            "--log.level=warn"]


def _target(address: str, port: int) -> str:
    return address if ":" in address else f"{address}:{port}"


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    if match is None:
        raise ValueError(f"duration {duration!r}: expected e.g. 15s, 1m, 500ms")
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]
