import asyncio
import json
import socket
import threading

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from typer.testing import CliRunner

from cluster.view import AgentInfo, ClusterView, TaskInfo, TaskPort
from minuteman.api import legacy_app, vip_routes
from minuteman.dataplane import Backend, VipKey
from minuteman.dataplane_fake import FakeDataplane
from minuteman.health import HealthConfig
from minuteman.maglev import maglev_table
from minuteman.metrics import MinutemanMetrics
from minuteman.reconciler import LoadBalancer
from tests.waiting import wait_until, wait_until_async

WEB = VipKey("11.0.0.1", 80, "tcp")
ADDR = VipKey("1.2.3.4", 5000, "tcp")


def task(n, *, state="TASK_RUNNING", healthy=None, vip="/web:80", app="/web"):
    return TaskInfo(task_id=f"t{n}", app_id=app, name="web", agent_id="a1", agent_ip="198.18.0.11",
                    state=state, healthy=healthy,
                    ports=[TaskPort(host_port=31000 + n, labels={"VIP_0": vip})])


def view(*tasks, version=1):
    return ClusterView(version=version, agents=[AgentInfo(agent_id="a1", hostname="h", ip="198.18.0.11")],
                       tasks=list(tasks), vip_addresses={"marathon:/web": "11.0.0.1"})


def b(n):
    return Backend("198.18.0.11", 31000 + n)


@pytest.fixture
def lb():
    balancer = LoadBalancer(FakeDataplane())
    yield balancer
    balancer.close()


def test_view_to_table_and_idempotent(lb):
    dp = lb.dataplane
    lb.on_view(view(task(1), task(2), task(3, vip="1.2.3.4:5000")))
    entry = dp.table[WEB]
    assert entry.backends == (b(1), b(2)) and entry.lookup == maglev_table([b(1), b(2)])
    assert dp.table[ADDR].backends == (b(3),)
    assert len(dp.applied()) == 1
    lb.on_view(view(task(1), task(2), task(3, vip="1.2.3.4:5000"), version=2))
    assert len(dp.applied()) == 1, "the same view again must not reach the dataplane"
    assert lb.programmed_names() == {"web.marathon.l4lb.thisdcos.directory": "11.0.0.1"}


def test_a_view_that_changes_no_vip_does_not_reach_the_dataplane(lb):
    """Even a no-op apply reads the kernel, on the agent's loop: unrelated views skip it."""
    lb.on_view(view(task(1)))
    calls = len(lb.dataplane.calls)
    other = TaskInfo(task_id="o1", app_id="/other", name="other", agent_id="a1", agent_ip="198.18.0.11",
                     state="TASK_RUNNING", ports=[TaskPort(host_port=31999)])
    lb.on_view(view(task(1), other, version=2))
    assert lb.dataplane.calls[calls:] == [], "not even a read of the kernel"
    lb.on_view(view(task(1), task(2), version=3))
    assert [method for method, _ in lb.dataplane.calls[calls:]] == ["apply"]
    assert lb.dataplane.applied()[-1][WEB].backends == (b(1), b(2))


def test_draining_and_unhealthy(lb):
    lb.on_view(view(task(1), task(2, state="TASK_KILLING"), task(3, healthy=False)))
    entry = lb.dataplane.table[WEB]
    assert entry.backends == (b(1),) and entry.draining == (b(2),)
    states = {x["port"]: x["state"] for x in lb.vips_detail()[0]["backend"]}
    assert states == {31001: "up", 31002: "draining", 31003: "unhealthy"}


def test_adopts_kernel_state_and_serves_it_until_the_first_view():
    dp = FakeDataplane()
    first = LoadBalancer(dp)
    first.on_view(view(task(1), task(2)))
    first.close()                     # keep_kernel_state: the table stays
    assert dp.calls[-1] == ("close", (True,))
    held = dict(dp.table)
    before = len(dp.calls)
    second = LoadBalancer(dp)
    assert second.status.adopted == 1
    assert not second.repair() and not second.poll_health()   # nothing torn down before a view
    assert [method for method, _ in dp.calls[before:]] == ["current", "current"], "only reads before a view"
    second.on_view(view(task(1), task(2)))
    assert dp.applied()[-1] == held, "adoption asks for exactly what the kernel holds: nothing to rebuild"
    second.close(keep_kernel_state=False)
    assert dp.calls[-1] == ("close", (False,))


def test_errors_are_status_per_vip_and_others_keep_working(lb):
    lb.dataplane.fail.add(ADDR)
    lb.on_view(view(task(1), task(3, vip="1.2.3.4:5000")))
    assert lb.status.errors == {ADDR: "injected failure"}
    assert [v["vip"] for v in lb.vips_json()] == ["web.marathon.l4lb.thisdcos.directory:80"]
    detail = {v["vip"]: v for v in lb.vips_detail()}
    assert detail["1.2.3.4:5000"]["error"] == "injected failure" and not detail["1.2.3.4:5000"]["programmed"]


def test_apply_raising_is_recorded_not_raised(lb):
    def boom(table):
        raise RuntimeError("netlink went away")
    lb.dataplane.apply = boom
    lb.on_view(view(task(1)))
    assert "netlink went away" in lb.status.errors[WEB]
    assert lb.programmed_names() == {}


def test_drift_is_repaired(lb):
    lb.on_view(view(task(1), task(2)))
    wanted = lb.dataplane.applied()[-1]
    del lb.dataplane.table[WEB]           # someone flushed it behind our back
    assert lb.repair() and lb.dataplane.applied()[-1] == wanted, "the whole desired table again"
    applies = len(lb.dataplane.applied())
    assert not lb.repair()
    assert len(lb.dataplane.applied()) == applies, "no drift: no apply"
    assert lb.status.drift_repairs == 1


class OutcomeDataplane(FakeDataplane):
    def __init__(self):
        super().__init__()
        self.outcomes = []

    def drain_outcomes(self):
        out, self.outcomes = self.outcomes, []
        return out


def test_passively_failing_backend_is_taken_out_then_all_out_fails_open():
    dp = OutcomeDataplane()
    lb = LoadBalancer(dp, health=HealthConfig(failures=3))
    lb.on_view(view(task(1), task(2)))
    assert not lb.poll_health() and len(dp.applied()) == 1, "no news: no apply"
    dp.outcomes = [(b(1), False)] * 3
    assert lb.poll_health()
    assert dp.applied()[-1][WEB].backends == (b(2),)
    assert lb.vips_detail()[0]["backend"][0]["state"] == "quarantined"
    dp.outcomes = [(b(2), False)] * 3
    lb.poll_health()
    assert dp.applied()[-1][WEB].backends == (b(1), b(2)), "with every backend out, serve them all"


def test_p2c_leaves_the_lookup_empty():
    lb = LoadBalancer(FakeDataplane(), balancing="p2c")
    lb.on_view(view(task(1), task(2)))
    [table] = lb.dataplane.applied()
    assert table[WEB].lookup == () and len(table[WEB].backends) == 2
    with pytest.raises(ValueError, match="balancing"):
        LoadBalancer(FakeDataplane(), balancing="round-robin")


def test_label_problems_are_status(lb, caplog):
    lb.on_view(view(task(1), task(2, vip="/web:http", app="/broken")))
    assert [p.app_id for p in lb.status.problems] == ["/broken"]
    assert "not a number" in caplog.text


def client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent")


async def test_http_api_shapes_and_bad_input(lb):
    lb.on_view(view(task(1), task(3, vip="1.2.3.4:5000")))
    lb.dataplane.counts[(WEB, b(1))] = 7
    api = client(Starlette(routes=vip_routes(lb)))
    assert (await api.get("/v1/vips")).json() == [
        {"vip": "1.2.3.4:5000", "protocol": "tcp", "backend": [{"ip": "198.18.0.11", "port": 31003}]},
        {"vip": "web.marathon.l4lb.thisdcos.directory:80", "protocol": "tcp",
         "backend": [{"ip": "198.18.0.11", "port": 31001}]},
    ]
    detail = (await api.get("/v1/vips?detail=true")).json()
    assert detail[1]["backend"][0]["connections"] == 7 and detail[1]["name"].startswith("web.marathon")
    bad = await api.get("/v1/vips?detail=maybe")
    assert bad.status_code == 400 and "detail" in bad.json()["error"]
    assert (await api.get("/v1/vips?vip=x")).status_code == 400
    legacy = (await client(legacy_app(lb)).get("/vips")).json()
    assert legacy["vips"]["11.0.0.1:80"]["198.18.0.11:31001"]["total_successes"] == 7


def test_metrics():
    registry = CollectorRegistry()
    lb = LoadBalancer(FakeDataplane())
    metrics = MinutemanMetrics(lb, registry)
    lb.on_view(view(task(1), task(2, state="TASK_KILLING")))
    lb.dataplane.counts[(WEB, b(1))] = 3
    text = generate_latest(registry).decode()
    vip = 'vip="web.marathon.l4lb.thisdcos.directory:80"'
    assert f'navstar_minuteman_connections_total{{backend="198.18.0.11:31001",protocol="tcp",{vip}}} 3.0' in text
    assert f'navstar_minuteman_backends{{protocol="tcp",state="draining",{vip}}} 1.0' in text
    assert 'navstar_minuteman_vips{status="programmed"} 1.0' in text
    assert "navstar_minuteman_reconcile_duration_seconds_count 1.0" in text
    metrics.unregister()
    assert "navstar_minuteman" not in generate_latest(registry).decode()


async def test_run_repairs_drift_and_polls_health(lb):
    lb.on_view(view(task(1)))
    lb.dataplane.table.clear()                      # the kernel lost the VIP
    lb.dataplane.calls.clear()
    polls = []
    lb.dataplane.drain_outcomes = lambda: polls.append(1) or []
    runner = asyncio.create_task(lb.run(repair_interval=0.05))
    try:
        await wait_until_async(lambda: WEB in lb.dataplane.table and len(polls) >= 2, timeout=10,
                               message="the lost VIP put back and health polled twice")
    finally:
        runner.cancel()
    methods = [method for method, _ in lb.dataplane.calls]
    assert methods[:2] == ["current", "apply"], "read back, found the drift, re-applied"
    assert WEB in lb.dataplane.applied()[0]


async def test_run_survives_a_failing_health_feed_and_a_failing_repair(lb, caplog):
    lb.on_view(view(task(1)))
    calls = []

    def broken(method):
        def fail():
            calls.append(method)
            raise OSError("netlink went away")
        return fail

    lb.dataplane.drain_outcomes = broken("drain_outcomes")
    lb.dataplane.current = broken("current")
    runner = asyncio.create_task(lb.run(repair_interval=0.05))
    try:
        # two rounds of both: each failure was survived and the loop came round again
        await wait_until_async(lambda: min(calls.count("current"), calls.count("drain_outcomes")) >= 2
                               or runner.done(), timeout=10, message="two failing repairs and health polls")
        assert not runner.done(), "the load balancer keeps serving"
    finally:
        runner.cancel()
    assert "polling the fake dataplane for backend health failed" in caplog.text
    assert "reading the fake dataplane failed" in caplog.text


def test_cli_lists_vips_from_a_real_agent_api(lb):
    lb.on_view(view(task(1)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=vip_routes(lb)), host="127.0.0.1", port=port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, message="uvicorn started")
        from navstar.cli import app
        runner = CliRunner()
        out = runner.invoke(app, ["vip", "list", "--json", "--agent", f"http://127.0.0.1:{port}"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.output)[0]["backend"][0]["state"] == "up"
        table = runner.invoke(app, ["vip", "list", "--agent", f"http://127.0.0.1:{port}"])
        assert table.exit_code == 0 and "11.0.0.1:80" in table.output
    finally:
        server.should_exit = True
        thread.join(5)
    down = CliRunner().invoke(app, ["vip", "list", "--agent", f"http://127.0.0.1:{port}"])
    assert down.exit_code == 1
