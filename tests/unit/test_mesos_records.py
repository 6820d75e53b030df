"""The Mesos-DNS record generator: the shared conformance vectors, naming rules, label rules,
IP sources, state validation, RecordSet lookups and the Mesos-DNS HTTP API shapes."""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spartan_dns.http_shapes import hosts, records_json, services
from spartan_dns.labels import (
    domain_fragment,
    label_function,
    rfc952_label,
    rfc1123_label,
)
from spartan_dns.records import (
    MesosStateError,
    Record,
    RecordSet,
    generate,
    slave_id_tail,
    task_hash,
)
from tests.reference import CONFORMANCE_VECTORS, conformance, conformance_state

CONFORMANCE = conformance()     # read at collection: a missing file is an error, never a skip


@cache
def conformance_records(ip_sources: str) -> RecordSet:
    params = CONFORMANCE["params"]
    return generate(conformance_state(), params["domain"], ip_sources.split(","), params["label_spec"],
                    masters=params["masters"], ns=params["ns"], listener=params["listener"])


def vector_id(vector: dict[str, Any]) -> str:
    return f"{vector.get('rtype')}-{vector.get('name')}-[{vector.get('ip_sources')}]"


# -- conformance ----------------------------------------------------------------------------------
def test_there_are_41_vectors() -> None:
    assert len(CONFORMANCE["vectors"]) == CONFORMANCE_VECTORS


@pytest.mark.parametrize("vector", CONFORMANCE["vectors"], ids=vector_id)
def test_conformance_vector_holds(vector: dict[str, Any]) -> None:
    recordset = conformance_records(vector["ip_sources"])
    got = [record.value for record in recordset.by_name(vector["name"], vector["rtype"])]
    assert sorted(got) == sorted(vector["want"])
    assert len(got) == len(set(got)), "a name never carries the same value twice"


# -- a small state of our own ---------------------------------------------------------------------
AGENT_1 = "20140803-125133-3041283216-5050-2410-S1"
AGENT_2 = "20140803-125133-3041283216-5050-2410-S2"


def running(timestamp: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"state": "TASK_RUNNING", "timestamp": timestamp, **extra}


def make_task(name: str, task_id: str | None = None, agent: str = AGENT_1, state: str = "TASK_RUNNING",
              statuses: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": task_id or f"{name}.1234", "name": name, "slave_id": agent, "state": state,
            "statuses": statuses if statuses is not None else [running()], **extra}


def make_state(*tasks: dict[str, Any], framework: str = "marathon", leader: str = "master@10.0.0.1:5050",
               pid: str | None = "scheduler@10.0.0.2:8080") -> dict[str, Any]:
    return {
        "leader": leader,
        "frameworks": [{"name": framework, "pid": pid, "hostname": "sched.example", "tasks": list(tasks)}],
        "slaves": [
            {"id": AGENT_1, "hostname": "a1", "pid": "slave(1)@10.0.1.1:5051"},
            {"id": AGENT_2, "hostname": "a2", "pid": "slave(1)@[fd00::2]:5051"},
        ],
    }


def values(recordset: RecordSet, name: str, rtype: str) -> list[str]:
    return [record.value for record in recordset.by_name(name, rtype)]


def test_task_hash_and_agent_tail_follow_mesos_dns() -> None:
    assert task_hash("test") == "iffe9"  # Mesos-DNS's own test value
    assert re.fullmatch(r"[ybndrfg8ejkmcpqxot1uwisza345h769]{5}", task_hash("web.0f2c"))
    assert slave_id_tail("20140803-125133-3041283216-5050-2410-S10") == "s10"


def test_task_names_agent_names_and_resource_port_srvs() -> None:
    rs = generate(make_state(make_task("web", resources={"ports": "[31000-31001]"})))
    canonical = f"web-{task_hash('web.1234')}-s1.marathon.mesos."
    assert values(rs, "web.marathon.mesos.", "A") == ["10.0.1.1"]  # host is the last source
    assert values(rs, canonical, "A") == ["10.0.1.1"]
    assert values(rs, "web.marathon.slave.mesos.", "A") == ["10.0.1.1"]
    slave_target = canonical.replace(".marathon.mesos.", ".marathon.slave.mesos.")
    for name in ("_web._tcp.marathon.mesos.", "_web._udp.marathon.mesos.",
                 "_web._tcp.marathon.slave.mesos.", "_web._udp.marathon.slave.mesos."):
        assert values(rs, name, "SRV") == [f"{slave_target}:31000", f"{slave_target}:31001"]


def test_only_running_tasks_on_known_agents_get_records() -> None:
    rs = generate(make_state(
        make_task("up"),
        make_task("staging", state="TASK_STAGING"),
        make_task("killed", state="TASK_KILLED"),
        make_task("orphan", agent="20140803-unknown-S9"),
    ))
    assert "up.marathon.mesos." in rs
    for gone in ("staging", "killed", "orphan"):
        assert rs.rtypes(f"{gone}.marathon.mesos.") == frozenset()
        assert rs.rtypes(f"{gone}.marathon.slave.mesos.") == frozenset()


def test_ipv6_agent_gives_aaaa_records() -> None:
    rs = generate(make_state(make_task("db", agent=AGENT_2)))
    assert values(rs, "db.marathon.mesos.", "AAAA") == ["fd00::2"]
    assert values(rs, "db.marathon.mesos.", "A") == []
    assert values(rs, "slave.mesos.", "AAAA") == ["fd00::2"]
    assert values(rs, "_slave._tcp.mesos.", "SRV") == ["slave.mesos.:5051"]


def test_container_ips_come_from_the_newest_running_status() -> None:
    statuses = [
        running(5.0, labels=[{"key": "Docker.NetworkSettings.IPAddress", "value": "172.17.0.5"}]),
        running(9.0, labels=[{"key": "Docker.NetworkSettings.IPAddress", "value": "172.17.0.9"}]),
        {"state": "TASK_KILLING", "timestamp": 10.0,
         "labels": [{"key": "Docker.NetworkSettings.IPAddress", "value": "172.17.0.10"}]},
    ]
    rs = generate(make_state(make_task("app", statuses=statuses)), ip_sources=["docker", "host"])
    assert values(rs, "app.marathon.mesos.", "A") == ["172.17.0.9"]


def test_first_ip_source_with_a_valid_ip_wins() -> None:
    status = running(container_status={"network_infos": [
        {"ip_addresses": [{"ip_address": "not-an-ip"}, {"ip_address": "9.0.1.7"}]},
        {"ip_address": "9.0.1.8"},  # Mesos 0.25's single-address form
    ]}, labels=[{"key": "MesosContainerizer.NetworkSettings.IPAddress", "value": "9.0.2.2"}])
    state = make_state(make_task("svc", statuses=[status]))
    assert values(generate(state), "svc.marathon.mesos.", "A") == ["9.0.1.7", "9.0.1.8"]
    assert values(generate(state, ip_sources="mesos,netinfo"), "svc.marathon.mesos.", "A") == ["9.0.2.2"]
    assert values(generate(state, ip_sources=["host"]), "svc.marathon.mesos.", "A") == ["10.0.1.1"]
    # a source with only invalid IPs yields nothing, so the next one is used
    bad = running(labels=[{"key": "MesosContainerizer.NetworkSettings.IPAddress", "value": "999.1.1.1"}])
    rs = generate(make_state(make_task("svc", statuses=[bad])), ip_sources="mesos,host")
    assert values(rs, "svc.marathon.mesos.", "A") == ["10.0.1.1"]


def test_ipv4_mapped_container_ip_is_an_a_record() -> None:
    status = running(container_status={"network_infos": [{"ip_addresses": [{"ip_address": "::ffff:9.0.0.3"}]}]})
    rs = generate(make_state(make_task("m", statuses=[status])))
    assert values(rs, "m.marathon.mesos.", "A") == ["9.0.0.3"]
    assert values(rs, "m.marathon.mesos.", "AAAA") == []


def test_discovery_info_names_protocols_and_named_ports() -> None:
    discovery = {"name": "Shop.Front", "ports": {"ports": [
        {"number": 80, "protocol": "tcp", "name": "http"},
        {"number": 53, "name": "dns"},  # no protocol: both tcp and udp
    ]}}
    rs = generate(make_state(make_task("ignored-name", resources={"ports": "[31005-31005]"},
                                       discovery=discovery)))
    canonical = f"shop-front-{task_hash('ignored-name.1234')}-s1.marathon.mesos."
    assert rs.rtypes("ignored-name.marathon.mesos.") == frozenset()
    assert values(rs, "shop-front.marathon.mesos.", "A") == ["10.0.1.1"]
    assert values(rs, "_shop-front._tcp.marathon.mesos.", "SRV") == [f"{canonical}:80", f"{canonical}:53"]
    assert values(rs, "_shop-front._udp.marathon.mesos.", "SRV") == [f"{canonical}:53"]
    assert values(rs, "_http._shop-front._tcp.marathon.mesos.", "SRV") == [f"{canonical}:80"]
    assert values(rs, "_dns._shop-front._udp.marathon.mesos.", "SRV") == [f"{canonical}:53"]
    # resource ports of a task with DiscoveryInfo only go under .slave
    slave_target = canonical.replace(".marathon.mesos.", ".marathon.slave.mesos.")
    assert values(rs, "_shop-front._tcp.marathon.slave.mesos.", "SRV") == [f"{slave_target}:31005"]
    # Mesos-DNS's legacy: the raw discovery name too
    assert values(rs, "Shop.Front.marathon.mesos.", "A") == ["10.0.1.1"]


def test_label_spec_shapes_task_and_framework_names() -> None:
    state = make_state(make_task("9lives_Cat.v2"), framework="chronos with a space AND MIXED CASE-2.0.1")
    rfc1123 = generate(state, label_spec="rfc1123")
    rfc952 = generate(state, label_spec="RFC952")
    assert "9lives-cat-v2.chronoswithaspaceandmixedcase-2.0.1.mesos." in rfc1123
    assert "lives-cat-v2.chronoswithaspaceandmixe.mesos." in rfc952
    assert values(rfc952, "chronoswithaspaceandmixe.mesos.", "A") == ["10.0.0.2"]


def test_framework_records_and_hostname_resolution() -> None:
    rs = generate(make_state(pid="scheduler(1)@10.0.0.2:25501"))
    assert values(rs, "marathon.mesos.", "A") == ["10.0.0.2"]
    assert values(rs, "_framework._tcp.marathon.mesos.", "SRV") == ["marathon.mesos.:25501"]

    no_pid = make_state(pid=None)
    rs = generate(no_pid)
    assert "marathon.mesos." not in rs
    assert any("sched.example" in warning for warning in rs.warnings)
    asked: list[str] = []

    def resolver(host: str) -> list[str]:
        asked.append(host)
        return ["192.0.2.7", "2001:db8::7"]

    rs = generate(no_pid, resolve_hostname=resolver)
    assert asked == ["sched.example"]
    assert values(rs, "marathon.mesos.", "A") == ["192.0.2.7"]
    assert values(rs, "marathon.mesos.", "AAAA") == ["2001:db8::7"]
    assert values(rs, "_framework._tcp.marathon.mesos.", "SRV") == []  # no pid, no port


# (masters, leader) → the expected master records, as Mesos-DNS's own master-record cases have them
MASTER_CASES = [
    ([], "", None),
    ([], "@", None),
    ([], "3@4", None),
    ([], "5@0.0.0.6:7", {"leader": ["0.0.0.6"], "master": ["0.0.0.6"], "master0": ["0.0.0.6"]}),
    ([], "5@[2001:db8::1]:7", {"leader": ["2001:db8::1"], "master": ["2001:db8::1"], "master0": ["2001:db8::1"]}),
    (["0.0.0.6:7"], "5@0.0.0.6:7", {"leader": ["0.0.0.6"], "master": ["0.0.0.6"], "master0": ["0.0.0.6"]}),
    (["0.0.0.8:9"], "5@0.0.0.6:7",
     {"leader": ["0.0.0.6"], "master": ["0.0.0.6", "0.0.0.8"], "master0": ["0.0.0.8"], "master1": ["0.0.0.6"]}),
    (["0.0.0.8:9", "0.0.0.8:9"], "5@0.0.0.6:7",
     {"leader": ["0.0.0.6"], "master": ["0.0.0.6", "0.0.0.8"], "master0": ["0.0.0.8"], "master1": ["0.0.0.6"]}),
    (["0.0.0.8:9", "0.0.0.6:7", "0.0.0.6:7"], "5@0.0.0.6:7",
     {"leader": ["0.0.0.6"], "master": ["0.0.0.6", "0.0.0.8"], "master0": ["0.0.0.8"], "master1": ["0.0.0.6"]}),
    (["0.0.0.8:9", "0.0.0.6:7", "[2001:db8::1]:0"], "5@0.0.0.6:7",
     {"leader": ["0.0.0.6"], "master": ["0.0.0.6", "0.0.0.8", "2001:db8::1"], "master0": ["0.0.0.8"],
      "master1": ["0.0.0.6"], "master2": ["2001:db8::1"]}),
]


@pytest.mark.parametrize(("masters", "leader", "expected"), MASTER_CASES)
def test_master_and_leader_records(masters: list[str], leader: str, expected: dict[str, list[str]] | None) -> None:
    rs = generate({"leader": leader}, domain="foo.com", masters=masters)
    if expected is None:
        assert len(rs) == 0
        return
    addresses = {name.removesuffix(".foo.com."): sorted(values(rs, name, "A") + values(rs, name, "AAAA"))
                 for name in {record.name for record in rs if record.rtype != "SRV"}}
    assert addresses == {name: sorted(ips) for name, ips in expected.items()}
    port = leader.rsplit(":", 1)[1]
    assert values(rs, "_leader._tcp.foo.com.", "SRV") == [f"leader.foo.com.:{port}"]
    assert values(rs, "_leader._udp.foo.com.", "SRV") == [f"leader.foo.com.:{port}"]


def test_listener_gives_the_soa_mname_an_address() -> None:
    assert values(generate({}, listener="198.51.100.1"), "ns1.mesos.", "A") == ["198.51.100.1"]
    assert values(generate({}, ns="mesos-dns.mesos", listener="fd00::53"), "mesos-dns.mesos.", "AAAA") == ["fd00::53"]
    assert "ns1.mesos." not in generate({})


def test_unservable_names_and_addresses_are_skipped_with_a_warning() -> None:
    long_name = "x" * 70  # fine once cleaned (cut to 63), not as Mesos-DNS's raw legacy name
    rs = generate(make_state(make_task("t", discovery={"name": long_name}), leader="master@leader.example:5050"))
    assert f"{'x' * 63}.marathon.mesos." in rs
    assert f"{long_name}.marathon.mesos." not in rs
    assert any("not encodable" in warning for warning in rs.warnings)
    assert "leader.mesos." not in rs
    assert any("leader.example" in warning for warning in rs.warnings)


# -- state validation and parameters --------------------------------------------------------------
@pytest.mark.parametrize(("state", "field"), [
    ([], "state: expected a JSON object"),
    ({"frameworks": {"name": "x"}}, "state.frameworks:"),
    ({"frameworks": [{"tasks": [{"statuses": [{"timestamp": "soon"}]}]}]},
     "state.frameworks[0].tasks[0].statuses[0].timestamp"),
    ({"frameworks": [{"pid": "no-at-sign"}]}, "state.frameworks[0].pid: expected one '@'"),
    ({"slaves": [{"pid": "slave(1)@10.0.0.1"}]}, "state.slaves[0].pid"),
    ({"frameworks": [{}, {"tasks": [{"resources": {"ports": "31000-31001"}}]}]},
     "state.frameworks[1].tasks[0].resources.ports"),
    ({"frameworks": [{"tasks": [{"resources": {"ports": "[31000]"}}]}]}, "expected ranges 'low-high'"),
    ({"leader": 5}, "state.leader"),
])
def test_malformed_state_is_an_error_naming_the_field(state: Any, field: str) -> None:
    with pytest.raises(MesosStateError, match=re.escape(field)):
        generate(state)


def test_nulls_and_unknown_fields_are_tolerated_like_mesos_dns() -> None:
    state = make_state(make_task("web", resources=None, discovery=None, extra_field=[1, 2]))
    state["frameworks"][0]["tasks"][0]["statuses"] = None
    state["completed_frameworks"] = []
    rs = generate(state)
    assert values(rs, "web.marathon.mesos.", "A") == ["10.0.1.1"]


def test_unparseable_port_numbers_are_skipped_like_mesos_dns() -> None:
    rs = generate(make_state(make_task("p", resources={"ports": "[x-31001, 31002-31002]"})))
    target = f"p-{task_hash('p.1234')}-s1.marathon.slave.mesos."
    assert values(rs, "_p._tcp.marathon.mesos.", "SRV") == [f"{target}:31002"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ip_sources": ["netinfo", "dns"]}, "ip_sources: expected some of netinfo, mesos, host, docker"),
    ({"ip_sources": []}, "ip_sources:"),
    ({"label_spec": "rfc3986"}, "label_spec: expected 'rfc1123' or 'rfc952'"),
    ({"domain": ""}, "domain:"),
    ({"domain": "a..b"}, "domain:"),
    ({"listener": "0.0.0.0"}, "listener:"),
    ({"listener": "eth0"}, "listener:"),
])
def test_bad_parameters_name_the_parameter(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        generate({}, **kwargs)


# -- RecordSet ------------------------------------------------------------------------------------
def test_recordset_lookup_is_case_insensitive_and_dot_tolerant() -> None:
    rs = generate(make_state(make_task("web")))
    assert rs.by_name("WEB.Marathon.MESOS", "a") == rs.by_name("web.marathon.mesos.", "A") != []
    assert rs.rtypes("web.marathon.mesos") == frozenset({"A"})
    assert rs.by_name("web.marathon.mesos.", "SRV") == []
    assert "nope.marathon.mesos." not in rs
    assert "web.marathon.mesos." in rs.names()


def test_recordset_is_immutable_and_lookups_return_copies() -> None:
    rs = generate(make_state(make_task("web")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        rs.records = ()  # type: ignore[misc]
    rs.by_name("web.marathon.mesos.", "A").clear()
    assert rs.by_name("web.marathon.mesos.", "A") != []


def test_to_json_shape_and_srv_split() -> None:
    rs = generate(make_state(make_task("web", resources={"ports": "[31000-31000]"})))
    rows = rs.to_json()
    assert rows and all(set(row) == {"name", "rtype", "value"} for row in rows)
    assert {row["rtype"] for row in rows} <= {"A", "AAAA", "SRV"}
    srv = rs.by_name("_web._tcp.marathon.mesos.", "SRV")[0]
    assert srv.srv() == (srv.value.rsplit(":", 1)[0], 31000)
    with pytest.raises(ValueError, match="not SRV"):
        Record("x.mesos.", "A", "10.0.0.1").srv()


# -- HTTP API shapes ------------------------------------------------------------------------------
def test_http_shapes() -> None:
    rs = generate(make_state(make_task("web", resources={"ports": "[31000-31000]"})))
    assert hosts(rs, "Web.Marathon.Mesos") == [{"host": "web.marathon.mesos.", "ip": "10.0.1.1"}]
    assert hosts(rs, "missing.mesos") == [{"host": "", "ip": ""}]
    rows = services(rs, "_web._tcp.marathon.mesos.*")
    assert rows == [{"service": "_web._tcp.marathon.mesos.*",
                     "host": f"web-{task_hash('web.1234')}-s1.marathon.slave.mesos.",
                     "ip": "10.0.1.1", "port": "31000"}]
    assert services(rs, "_nope._tcp.mesos") == [{"service": "", "host": "", "ip": "", "port": ""}]
    every = records_json(rs)
    assert len(every) == len(rs)
    assert {"name": "web.marathon.mesos.", "host": "10.0.1.1", "rtype": "A"} in every


# -- label rules ----------------------------------------------------------------------------------
COMMON_LABEL_CASES = {
    "": "", "a": "a", "-": "", "a---": "a", "---a---": "a", "---a---b": "a---b",
    "a.b.c.d.e": "a-b-c-d-e", "a.c.d_de.": "a-c-d-de", "abc123": "abc123", "-abc123": "abc123",
    "abc123-": "abc123", "abc-123": "abc-123", "abc--123": "abc--123",
    "r29f.dev.angrypigs": "r29f-dev-angrypigs", "ÄÖü naïve": "nave",
}


@pytest.mark.parametrize(("name", "want"), list({
    **COMMON_LABEL_CASES,
    "4abc123": "abc123", "-4abc123": "abc123",
    "fd%gsf---gs7-f$gs--d7fddg-123": "fdgsf---gs7-fgs--d7fddg1",
    "89fdgsf---gs7-fgs--d7fddg-123": "fdgsf---gs7-fgs--d7fddg1",
    "89fdgsf---gs7-fgs--d7fddg---123": "fdgsf---gs7-fgs--d7fddg1",
    "89fdgsf---gs7-fgs--d7fddg-": "fdgsf---gs7-fgs--d7fddg",
    "chronos with a space AND MIXED CASE-2.0.1": "chronoswithaspaceandmixe",
    "chronos with a space AND----------MIXED--": "chronoswithaspaceandmixe",
    "hello" + "-" * 56 + "f": "hellof",
}.items()))
def test_rfc952_label(name: str, want: str) -> None:
    assert rfc952_label(name) == want


@pytest.mark.parametrize(("name", "want"), list({
    **COMMON_LABEL_CASES,
    "4abc123": "4abc123", "-4abc123": "4abc123",
    "89fdgsf---gs7-fgs--d7fddg---123": "89fdgsf---gs7-fgs--d7fddg---123",
    "fd%gsf---gs7-f$gs--d7fddg-123": "fdgsf---gs7-fgs--d7fddg-123",
    "fd%gsf---gs7-f$gs--d7fddg123456789012345678901234567890123456789-123":
        "fdgsf---gs7-fgs--d7fddg1234567890123456789012345678901234567891",
    "%%fdgsf---gs7-fgs--d7fddg123456789012345678901234567890123456789---123":
        "fdgsf---gs7-fgs--d7fddg1234567890123456789012345678901234567891",
    "##fdgsf---gs7-fgs--d7fddg123456789012345678901234567890123456789-":
        "fdgsf---gs7-fgs--d7fddg123456789012345678901234567890123456789",
    "hello" + "-" * 56 + "f": "hello" + "-" * 56 + "f",   # 62 chars: fits
    "hello" + "-" * 58 + "f": "hellof",                    # 64 chars: cut, refilled past the dashes
    "a" + "-" * 62 + "b-": "ab-",                          # Mesos-DNS's refill keeps this dash
}.items()))
def test_rfc1123_label(name: str, want: str) -> None:
    assert rfc1123_label(name) == want


@pytest.mark.parametrize(("name", "rfc952", "rfc1123"), [
    ("pod_123$abc.marathon-0.6.0-dev.mesos", "pod-123abc.marathon-0.dev.mesos",
     "pod-123abc.marathon-0.6.0-dev.mesos"),
    ("", "", ""), ("...", "", ""), (".a..c.", "a.c", "a.c"), ("(@ host . com", "host.com", "host.com"),
    ("MiXeDcase.CoM", "mixedcase.com", "mixedcase.com"), ("space space.com", "spacespace.com", "spacespace.com"),
])
def test_domain_fragment(name: str, rfc952: str, rfc1123: str) -> None:
    assert domain_fragment(name, rfc952_label) == rfc952
    assert domain_fragment(name, rfc1123_label) == rfc1123


def test_label_function_names_the_accepted_specs() -> None:
    assert label_function(" RFC952 ") is rfc952_label
    with pytest.raises(ValueError, match="label_spec: expected 'rfc1123' or 'rfc952', got 'dns'"):
        label_function("dns")


@given(st.text())
def test_labels_use_the_dns_charset_and_length(name: str) -> None:
    for label, maxlen in ((rfc1123_label(name), 63), (rfc952_label(name), 24)):
        assert re.fullmatch(r"[a-z0-9-]*", label)
        assert len(label) <= maxlen
        assert not label.startswith("-")
    assert not rfc952_label(name)[:1].isdigit()


VALID_LABEL = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")


@given(st.from_regex(VALID_LABEL, fullmatch=True))
def test_valid_labels_pass_unchanged(label: str) -> None:
    if len(label) <= 63:
        assert rfc1123_label(label) == label
    if len(label) <= 24:
        assert rfc952_label(label) == label
