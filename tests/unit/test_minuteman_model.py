from cluster.view import AgentInfo, ClusterView, TaskInfo, TaskPort
from minuteman.dataplane import Backend, VipKey
from minuteman.model import vip_model

AGENTS = [AgentInfo(agent_id=f"a{i}", hostname=f"agent-{i}", ip=f"198.18.0.1{i}") for i in (1, 2, 3)]


def task(n, *, agent=1, state="TASK_RUNNING", healthy=None, labels=None, port_labels=None, network="host",
         host_port=None, container_port=None, ips=(), protocol="tcp", app="/web", framework="marathon"):
    return TaskInfo(
        task_id=f"{app.strip('/')}.{n}", app_id=app, name=app.strip("/"), framework=framework,
        agent_id=f"a{agent}", agent_ip=f"198.18.0.1{agent}", state=state, healthy=healthy,
        network=network, ip_addresses=list(ips), labels=labels or {},
        ports=[TaskPort(host_port=host_port if host_port is not None else 31000 + n,
                        container_port=container_port, protocol=protocol,
                        labels={"VIP_0": "/web:80"} if port_labels is None else port_labels)],
    )


def view(*tasks, agents=AGENTS, addresses=None):
    return ClusterView(version=1, agents=agents, tasks=list(tasks),
                       vip_addresses={"marathon:/web": "11.0.0.1"} if addresses is None else addresses)


WEB = VipKey("11.0.0.1", 80, "tcp")


def test_named_vip_from_port_label_with_host_port_backends():
    model = vip_model(view(task(1, agent=1), task(2, agent=2)))
    assert model.problems == []
    vip = model.vips[WEB]
    assert vip.dns_name == "web.marathon.l4lb.thisdcos.directory"
    assert vip.label == "web.marathon.l4lb.thisdcos.directory:80"
    assert vip.in_state("up") == [Backend("198.18.0.11", 31001), Backend("198.18.0.12", 31002)]


def test_named_vip_without_allocated_address_is_skipped_until_it_has_one():
    assert vip_model(view(task(1), addresses={})).vips == {}


def test_address_vip_udp_and_task_label_vip_port():
    udp = task(1, port_labels={"vip_0": "1.2.3.4:53"}, protocol="udp")
    by_task_label = task(2, port_labels={}, labels={"vip_port0": "/web:80"})
    model = vip_model(view(udp, by_task_label))
    assert set(model.vips) == {VipKey("1.2.3.4", 53, "udp"), WEB}
    assert model.vips[VipKey("1.2.3.4", 53, "udp")].dns_name is None
    assert model.vips[VipKey("1.2.3.4", 53, "udp")].label == "1.2.3.4:53"
    assert model.vips[WEB].in_state("up") == [Backend("198.18.0.11", 31002)]


def test_container_network_backend_is_container_ip_and_port():
    t = task(1, network="container", container_port=8080, ips=["9.0.1.5"])
    assert vip_model(view(t)).vips[WEB].in_state("up") == [Backend("9.0.1.5", 8080)]


def test_bridge_backend_is_agent_ip_and_host_port():
    t = task(1, network="bridge", host_port=31555, container_port=80, ips=["172.17.0.2"])
    assert vip_model(view(t)).vips[WEB].in_state("up") == [Backend("198.18.0.11", 31555)]


def test_unhealthy_draining_and_not_running_tasks():
    model = vip_model(view(task(1), task(2, healthy=False), task(3, state="TASK_KILLING"),
                           task(4, state="TASK_STAGING"), task(5, state="TASK_FAILED")))
    vip = model.vips[WEB]
    assert vip.in_state("up") == [Backend("198.18.0.11", 31001)]
    assert vip.in_state("unhealthy") == [Backend("198.18.0.11", 31002)]
    assert vip.in_state("draining") == [Backend("198.18.0.11", 31003)]
    assert len(vip.backends) == 3


def test_unreachable_agents_dropped_unless_that_leaves_none():
    agents = [AGENTS[0].model_copy(update={"reachable": False}), *AGENTS[1:]]
    model = vip_model(view(task(1, agent=1), task(2, agent=2), agents=agents))
    assert model.vips[WEB].in_state("up") == [Backend("198.18.0.12", 31002)]
    assert model.vips[WEB].in_state("unreachable") == [Backend("198.18.0.11", 31001)]
    only_unreachable = vip_model(view(task(1, agent=1), agents=agents))
    assert only_unreachable.vips[WEB].in_state("up") == [Backend("198.18.0.11", 31001)]


def test_malformed_labels_are_reported_and_skipped_others_still_served():
    bad_port = task(1, app="/bad", port_labels={"VIP_0": "/bad:99999"})
    bad_addr = task(2, app="/worse", port_labels={"VIP_0": "300.0.0.1:80"})
    missing_port = task(3, app="/odd", port_labels={}, labels={"VIP_PORT3": "/web:80"})
    model = vip_model(view(bad_port, bad_addr, missing_port, task(4)))
    assert set(model.vips) == {WEB}
    messages = [str(p) for p in model.problems]
    assert any("app /bad task bad.1" in m and "outside 1-65535" in m for m in messages)
    assert any("app /worse" in m and "not a valid IPv4 address" in m for m in messages)
    assert any("app /odd" in m and "no port 3" in m for m in messages)


def test_two_apps_claiming_one_address_vip_get_the_union_and_a_clash_report():
    a = task(1, app="/a", port_labels={"VIP_0": "10.10.10.10:80"})
    b = task(2, app="/b", port_labels={"VIP_0": "10.10.10.10:80"})
    model = vip_model(view(a, b))
    vip = model.vips[VipKey("10.10.10.10", 80, "tcp")]
    assert vip.in_state("up") == [Backend("198.18.0.11", 31001), Backend("198.18.0.11", 31002)]
    assert vip.apps == {"/a", "/b"}
    clashes = [p for p in model.problems if "also claimed" in p.message]
    assert {p.app_id for p in clashes} == {"/a", "/b"}


def test_same_label_value_tcp_and_udp_are_two_vips():
    model = vip_model(view(task(1, protocol="tcp"), task(2, protocol="udp")))
    assert set(model.vips) == {WEB, VipKey("11.0.0.1", 80, "udp")}


def test_framework_is_part_of_the_name_and_address_key():
    t = task(1, framework="kafka", port_labels={"VIP_0": "/broker:9092"})
    model = vip_model(view(t, addresses={"kafka:/broker": "11.0.0.9"}))
    assert model.vips[VipKey("11.0.0.9", 9092, "tcp")].dns_name == "broker.kafka.l4lb.thisdcos.directory"


def test_bridge_task_on_this_node_is_reached_at_its_container_address():
    from cluster.view import AgentInfo, ClusterView, TaskInfo, TaskPort
    from minuteman.model import vip_model

    task = TaskInfo(task_id="nginx.1", app_id="/nginx", name="nginx", agent_id="agent-1",
                    agent_ip="198.18.0.11", state="TASK_RUNNING", network="bridge",
                    ip_addresses=["9.0.1.130"],
                    ports=[TaskPort(host_port=31001, container_port=80, labels={"VIP_0": "/nginx:80"})])
    view = ClusterView(version=1, agents=[AgentInfo(agent_id="agent-1", hostname="agent-1", ip="198.18.0.11")],
                       tasks=[task], vip_addresses={"marathon:/nginx": "11.0.0.1"})
    elsewhere = [b.backend for vip in vip_model(view, "198.18.0.12").vips.values() for b in vip.backends]
    here = [b.backend for vip in vip_model(view, "198.18.0.11").vips.values() for b in vip.backends]
    assert [(b.ip, b.port) for b in elsewhere] == [("198.18.0.11", 31001)]
    assert [(b.ip, b.port) for b in here] == [("9.0.1.130", 80)]


def test_a_udp_tcp_port_is_a_vip_for_each_protocol():
    both = task(1, protocol="udp,tcp", port_labels={"VIP_0": "/web:53", "VIP_1": "10.1.1.1:53"})
    model = vip_model(view(both))
    assert set(model.vips) == {VipKey("11.0.0.1", 53, "tcp"), VipKey("11.0.0.1", 53, "udp"),
                               VipKey("10.1.1.1", 53, "tcp"), VipKey("10.1.1.1", 53, "udp")}
    assert all(v.in_state("up") == [Backend("198.18.0.11", 31001)] for v in model.vips.values())
    assert model.problems == []
    no_port = task(2, protocol="udp,tcp", network="container", container_port=None, host_port=None)
    assert len(vip_model(view(no_port)).problems) == 1, "one problem for the port, not one per protocol"
