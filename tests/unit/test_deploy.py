"""deploy/ and vagrant/ are checked by the real tools, as an operator would before use:
``promtool check config`` / ``check rules`` on the rendered Prometheus configuration and the
repository's rules, ``systemd-analyze verify`` on every unit, ``vagrant validate`` on the
Vagrantfile. The tools are Debian packages installed by ``make setup``; a missing tool
fails the test (it names the package), it does not skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from navstar import prometheus

REPO = Path(__file__).resolve().parents[2]


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or (tool if Path(tool).exists() else None)
    assert path, f"{tool} is missing: `make setup` installs Debian's {package}"
    return path


def rendered(tmp_path: Path, **extra) -> Path:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    return prometheus.render(tmp_path / "prom", masters=["198.18.0.2", "198.18.0.3:5050"],
                             agents=["198.18.0.11", "198.18.0.12"], secret_file=secret, **extra)


# -- Prometheus -------------------------------------------------------------------------------
def test_the_repository_rules_pass_promtool():
    promtool = need(prometheus.PROMTOOL, "prometheus")
    rules = sorted(str(p) for p in prometheus.RULES_DIR.glob("*.yml"))
    assert len(rules) >= 4
    done = subprocess.run([promtool, "check", "rules", *rules], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("extra", [{}, {"scrape_interval": "1s", "evaluation_interval": "1s", "alert_for": "3s",
                                        "marathon_lb": ["198.18.0.31:9090"]}])
def test_the_rendered_configuration_passes_promtool_and_names_every_target(tmp_path: Path, extra: dict):
    need(prometheus.PROMTOOL, "prometheus")
    config = rendered(tmp_path, **extra)
    prometheus.check(config)
    jobs = {job["job_name"]: job for job in yaml.safe_load(config.read_text())["scrape_configs"]}
    targets = {name: job["static_configs"][0]["targets"] for name, job in jobs.items()}
    assert targets["navstar-agent"] == ["198.18.0.11:61091", "198.18.0.12:61091"]
    assert targets["navstar-master"] == ["198.18.0.2:5050", "198.18.0.3:5050"]
    assert targets["marathon-lb"] == extra.get("marathon_lb", [])
    assert jobs["navstar-master"]["authorization"]["credentials_file"] == str(tmp_path / "secret")


def test_the_lab_shortens_every_alert_for(tmp_path: Path):
    config = rendered(tmp_path, alert_for="3s")
    fors = [rule["for"] for path in (config.parent / "rules").glob("*.yml")
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "for" in rule]
    assert fors and set(fors) == {"3s"}


def test_the_alerts_the_issue_names_exist_on_real_metric_names():
    rules = {rule.get("alert") or rule.get("record"): rule["expr"]
             for path in prometheus.RULES_DIR.glob("*.yml")
             for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]}
    for alert, metric in (("NavstarVipNoHealthyBackend", "instance_vip:navstar_minuteman_backends_up:sum"),
                          ("NavstarBackendTakenOutByHealth", "navstar_minuteman_backends"),
                          ("NavstarDnsServfailRate", "instance:navstar_dns_servfail:ratio_rate5m"),
                          ("NavstarAgentUnreachable", "navstar_master_agents"),
                          ("NavstarOverlayDriftRepaired", "instance_object:navstar_overlay_repairs:increase10m")):
        assert metric in rules[alert], (alert, rules[alert])


def test_a_broken_rule_is_refused_with_promtools_words(tmp_path: Path):
    need(prometheus.PROMTOOL, "prometheus")
    config = rendered(tmp_path)
    (config.parent / "rules" / "broken.yml").write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(\n")
    with pytest.raises(prometheus.PrometheusError, match="broken.yml"):
        prometheus.check(config)


def test_every_metric_the_rules_read_is_exported_by_a_component():
    """Raw names in the rules (not recorded ones, which carry colons) are the collectors' own."""
    sources = "".join((REPO / p).read_text() for p in (
        "minuteman/metrics.py", "spartan_dns/metrics.py", "overlay/metrics.py", "control/master_metrics.py"))
    text = "".join(p.read_text() for p in prometheus.RULES_DIR.glob("*.yml"))
    names = set(re.findall(r"(?<![:\w])(navstar_[a-z_]+)(?![:\w])", text))
    assert {"navstar_minuteman_backends", "navstar_dns_requests_total", "navstar_master_agents"} <= names
    for name in names:
        assert f'"{name}"' in sources or f'"{name.removesuffix("_total")}"' in sources, name


# -- systemd ----------------------------------------------------------------------------------
UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))
INSTALL_PREFIX = "/opt/navstar"      # where deploy/README.md (and the Vagrantfile) put the checkout
NOT_INSTALLED_HERE = {"navstar-zookeeper.service": "/usr/share/zookeeper/bin/zkServer.sh"}


def test_the_units_the_issue_names_exist():
    assert {"navstar-master.service", "navstar-agent.service", "navstar-adminrouter.service",
            "navstar-zookeeper.service"} <= {u.name for u in UNITS}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_accepts_the_unit(unit: Path, tmp_path: Path):
    """The unit as installed, with this checkout (and this interpreter's venv) as the install
    prefix; any complaint fails —
    but for ZooKeeper's own binary on a machine without Debian's zookeeper (only masters of a
    several-master cluster install it)."""
    analyze = need("systemd-analyze", "systemd")
    installed = tmp_path / unit.name
    installed.write_text(unit.read_text().replace(f"{INSTALL_PREFIX}/.venv", sys.prefix)
                         .replace(INSTALL_PREFIX, str(REPO)))
    done = subprocess.run([analyze, "verify", str(installed)], capture_output=True, text=True)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    absent = NOT_INSTALLED_HERE.get(unit.name)
    if absent and not Path(absent).exists():
        complaints = [c for c in complaints if f"Command {absent} is not executable" not in c]
    else:
        assert done.returncode == 0, complaints
    assert not complaints, complaints


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_check_what_they_need_before_starting(unit: Path):
    text = unit.read_text()
    assert "ExecStartPre=" in text or "ConditionPathExists=" in text
    if unit.name in ("navstar-agent.service", "navstar-adminrouter.service"):
        assert "ExecStartPre=/usr/bin/ping -c1 -W2 leader.mesos" in text
    if unit.name == "navstar-agent.service":
        assert "ready.spartan" in text
        # A host's agent serves every process's VIP connects and is the host's resolver.
        assert "--lb-cgroup / --manage-resolv-conf" in text


# -- Vagrant ----------------------------------------------------------------------------------
def vagrant_validate(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """``vagrant validate`` needs no provider with --ignore-provider; its state goes to tmp_path."""
    vagrant = need("vagrant", "vagrant")
    return subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=REPO / "vagrant", capture_output=True,
                          text=True, timeout=120,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path),
                               "VAGRANT_HOME": str(tmp_path / "home"), "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
                               **env})


@pytest.mark.parametrize("env", [{}, {"MASTERS": "3", "AGENTS": "3", "PUBLIC_AGENTS": "2"}],
                         ids=["1-master", "3-masters"])
def test_vagrant_validate_accepts_the_vagrantfile(env: dict, tmp_path: Path):
    done = vagrant_validate(tmp_path, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated successfully" in done.stdout


def test_vagrant_validate_refuses_two_masters(tmp_path: Path):
    done = vagrant_validate(tmp_path, MASTERS="2")
    assert done.returncode != 0 and "MASTERS must be 1 or 3" in done.stdout + done.stderr
