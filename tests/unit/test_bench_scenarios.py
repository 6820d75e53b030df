"""The pure parts of the control-plane and DNS benchmarks (issue 17): what the simulated agents
send and look for, the apps the deploy bench posts, the view the records bench builds."""

from __future__ import annotations

from bench import _suite, control_fanout, control_reach, dns_records
from cluster.view import ClusterView
from control.marathon_models import AppDefinition
from control.registry import AgentRegistration


def test_simulated_agents_register_with_what_a_real_agent_sends() -> None:
    first, last = (AgentRegistration.model_validate(control_fanout.registration(i)) for i in (0, 999))
    assert first.agent_id != last.agent_id and first.ip != last.ip


def test_a_view_holds_changes_in_order_and_one_missing_stops_the_count() -> None:
    view = ClusterView(vip_addresses={"marathon:/fanout-00": "11.0.0.1", "marathon:/fanout-01": "11.0.0.2",
                                      "marathon:/fanout-03": "11.0.0.4"}).model_dump_json().encode()
    assert control_fanout.seen_changes(view, 0, 5) == 2          # 02 is not there: 03 does not count yet
    assert control_fanout.seen_changes(view, 3, 5) == 4
    assert control_fanout.seen_changes(view, 0, 1) == 1          # never past the number of changes
    assert control_fanout.seen_changes(b"{}", 0, 5) == 0
    assert control_fanout.VERSION.search(ClusterView(version=42).model_dump_json().encode()[:64]).group(1) == b"42"


def test_the_deploy_bench_posts_a_valid_app_with_a_named_vip_and_curls_its_name() -> None:
    definition = AppDefinition.model_validate(control_reach.app("reach-07"))
    assert definition.id == "/reach-07"
    assert definition.port_labels()[0] == {"VIP_0": "/reach-07:80"}
    loop = control_reach.curl_loop("http://reach-07.marathon.l4lb.thisdcos.directory:80/", 30)
    assert "curl -sf" in loop and "date +%s.%N" in loop and "+ 30" in loop
    assert "-ne 6" in loop          # curl's "could not resolve host": the name is not published yet


def test_the_records_bench_view_has_the_tasks_apps_and_agents_asked_for() -> None:
    view = dns_records.view_of(1000)
    assert len(view.tasks) == 1000 and len(view.agents) == 10
    assert len({t.app_id for t in view.tasks}) == 100
    assert all(t.state == "TASK_RUNNING" for t in view.tasks)
    assert dns_records.key(10_000) == "dns.records_10k_s" and dns_records.key(100_000) == "dns.records_100k_s"
    assert dns_records.key(2500) == "dns.records_2500_s"


def test_the_new_keys_are_judged_and_lab_scenarios_run_under_the_lock() -> None:
    assert _suite.judge("control.fanout_1k_p99_s", 0.9) is True
    assert _suite.judge("control.deploy_to_reachable_s", 1.2) is False
    assert _suite.judge("dns.records_10k_s", 0.5) is True
    assert _suite.judge("dns.records_100k_s", 60.0) is None
    assert _suite.judge("ha.failover_s", 3.3) is True
    assert {"control_reach", "master_failover", "control_burst", "adminrouter"} <= _suite.LAB_SCENARIOS


def test_the_agents_apply_time_is_read_from_their_prometheus_histogram() -> None:
    text = ("# HELP navstar_minuteman_reconcile_duration_seconds Time to apply\n"
            "navstar_minuteman_reconcile_duration_seconds_bucket{le=\"0.1\"} 3.0\n"
            "navstar_minuteman_reconcile_duration_seconds_count 4.0\n"
            "navstar_minuteman_reconcile_duration_seconds_sum 1.25\n")
    assert control_reach.lb_apply_seconds(text) == (1.25, 4)
    assert control_reach.lb_apply_seconds("") == (0.0, 0)
