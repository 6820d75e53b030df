"""Removing an agent for good: its tasks are replaced, its overlay allocation is returned."""

from tests.unit.master_harness import running_cluster


async def test_removed_agent_frees_its_overlay_subnet_and_tasks_move():
    async with running_cluster(agents=2) as cluster:
        await cluster.post_app({"id": "/web", "cmd": "sleep 100", "cpus": 0.1, "mem": 16, "instances": 1})
        [task] = cluster.running("/web")
        gone, stays = task.agent_id, ({"agent-1", "agent-2"} - {task.agent_id}).pop()
        subnet = cluster.master.view().agent(gone).overlay.subnet
        assert (await cluster.mesos.delete(f"/v1/agents/{gone}")).status_code == 409   # still reachable
        assert (await cluster.mesos.delete("/v1/agents/agent-9")).status_code == 404
        assert (await cluster.mesos.delete(f"/v1/agents/{gone}", params={"force": "true"})).status_code == 200
        await cluster.settle()
        assert cluster.master.view().agent(gone) is None
        assert [t.agent_id for t in cluster.running("/web")] == [stays]
        # Its /24 goes to the next agent that registers, never to two agents at once.
        await cluster.register(3)
        assert cluster.master.view().agent("agent-3").overlay.subnet == subnet
        assert cluster.master.view().agent(stays).overlay.subnet != subnet


def test_overlay_settings_reach_the_view(tmp_path):
    from cluster.view import OverlayConfig
    from control.master import Master

    master = Master(state_dir=str(tmp_path), overlay=OverlayConfig(subnet="10.200.0.0/16", vni=77, mtu=1400))
    view = master.view()
    assert (view.overlay.vni, view.overlay.mtu, view.overlay.subnet) == (77, 1400, "10.200.0.0/16")
    master.close()
