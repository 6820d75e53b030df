"""``navstar agent`` options: the load balancer's health settings reach the agent, bad ones are
refused with the option named (exit 2) before anything starts."""

import pytest
from typer.testing import CliRunner

import navstar.agent_main
from minuteman.health import HealthConfig
from navstar.cli import app


@pytest.fixture
def started(monkeypatch):
    runs = []
    monkeypatch.setattr(navstar.agent_main, "run_agent", runs.append)
    return runs


def test_health_and_balancing_options_reach_the_agent(started):
    result = CliRunner().invoke(app, ["agent", "--lb", "nfqueue", "--lb-balancing", "p2c", "--lb-reply-timeout", "0.25",
                                      "--lb-failures", "3", "--lb-quarantine", "10", "--lb-probe-interval", "2"])
    assert result.exit_code == 0, result.output
    (opts,) = started
    assert opts.lb == "nfqueue" and opts.balancing == "p2c"
    assert opts.health == HealthConfig(reply_timeout=0.25, failures=3, quarantine=10, probe_interval=2)


def test_defaults_are_dcos_minuteman_s(started):
    assert CliRunner().invoke(app, ["agent"]).exit_code == 0
    assert started[0].health == HealthConfig(reply_timeout=0.4, failures=5, quarantine=30, probe_interval=None)
    assert started[0].dns_kernel_replay == "auto"


def test_the_dns_kernel_replay_can_be_required_or_turned_off(started):
    for choice in ("on", "off"):
        assert CliRunner().invoke(app, ["agent", "--dns-kernel-replay", choice]).exit_code == 0
    assert [opts.dns_kernel_replay for opts in started] == ["on", "off"]


@pytest.mark.parametrize(("argv", "named"), [
    (["--lb-failures", "0"], "--lb-failures"),
    (["--lb-reply-timeout", "0"], "--lb-reply-timeout"),
    (["--lb-quarantine", "-1"], "--lb-quarantine"),
    (["--lb-probe-interval", "0"], "--lb-probe-interval"),
    (["--lb-balancing", "round-robin"], "--lb-balancing"),
    (["--lb", "ipvs"], "--lb"),
    (["--dns-kernel-replay", "yes"], "--dns-kernel-replay"),
])
def test_bad_options_are_refused_naming_the_option(started, argv, named):
    result = CliRunner().invoke(app, ["agent", *argv])
    assert result.exit_code == 2 and result.output.startswith(f"{named}:"), result.output
    assert started == []


def test_public_agent_options_reach_the_registration(started):
    result = CliRunner().invoke(app, ["agent", "--default-role", "slave_public", "--attributes",
                                      "public_ip:true;rack:r1", "--ports", "1-21,23-5050,5052-32000"])
    assert result.exit_code == 0, result.output
    (opts,) = started
    assert opts.role == "slave_public" and opts.attributes == {"public_ip": "true", "rack": "r1"}
    assert navstar.agent_main.parse_port_ranges(opts.ports) == [(1, 21), (23, 5050), (5052, 32000)]


@pytest.mark.parametrize(("argv", "named"), [
    (["--ports", "32000-31000"], "--ports"),
    (["--ports", "80,70-90"], "--ports"),
    (["--ports", "0-10"], "--ports"),
    (["--ports", "a-b"], "--ports"),
    (["--attributes", "public_ip"], "--attributes"),
    (["--attributes", "a b:c"], "--attributes"),
    (["--default-role", "-x"], "--default-role"),
])
def test_bad_public_agent_options_are_refused_by_name(started, argv, named):
    result = CliRunner().invoke(app, ["agent", *argv])
    assert result.exit_code == 2 and named in result.output and not started


def test_host_options_reach_the_agent_and_the_socket_lb_can_serve_the_whole_host(started):
    from control.agent.cgroups import CgroupLayout
    from navstar.agent_main import socket_lb_cgroup

    result = CliRunner().invoke(app, ["agent", "--lb-cgroup", "/", "--manage-resolv-conf"])
    assert result.exit_code == 0, result.output
    (opts,) = started
    assert opts.manage_resolv_conf and opts.lb_cgroup == "/"
    unified = CgroupLayout.detect().unified
    assert socket_lb_cgroup(opts) == unified                       # the v2 root: every process
    opts.lb_cgroup = None
    assert socket_lb_cgroup(opts) == unified / "navstar"           # a lab node: its own cgroup
    assert CliRunner().invoke(app, ["agent"]).exit_code == 0
    assert not started[1].manage_resolv_conf and started[1].lb_cgroup is None
