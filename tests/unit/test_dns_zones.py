"""The node's own zones: positive answers, NXDOMAIN vs NODATA with SOA, SRV glue, derived zones."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, DNSLabel

from spartan_dns.message import NOERROR, NXDOMAIN
from spartan_dns.records import Record, RecordSet
from spartan_dns.zones import (
    DCOS,
    SoaNames,
    Zone,
    ZoneTable,
    dcos_records,
    mesos_records,
    rebase,
    vip_records,
)

GENERATED = [
    Record("web.marathon.mesos.", "A", "9.0.1.5"),
    Record("web.marathon.mesos.", "A", "9.0.2.5"),
    Record("web.marathon.slave.mesos.", "A", "198.18.0.11"),
    Record("web.marathon.slave.mesos.", "A", "198.18.0.12"),
    Record("hostnet.marathon.mesos.", "A", "198.18.0.11"),
    Record("hostnet.marathon.slave.mesos.", "A", "198.18.0.11"),
    Record("web-abcde-s1.marathon.mesos.", "A", "9.0.1.5"),
    Record("_web._tcp.marathon.mesos.", "SRV", "web-abcde-s1.marathon.mesos.:80"),
    Record("slave.mesos.", "A", "198.18.0.11"),
    Record("leader.mesos.", "A", "198.18.0.2"),
    Record("bogus.mesos.", "A", "not-an-ip"),
]


def mesos_zone(records=GENERATED) -> Zone:
    return Zone("mesos", mesos_records(RecordSet(tuple(records))), ttl=60, soa=SoaNames("ns1.mesos", "root.ns1.mesos"),
                serial=7, ns_in_authority=True)


def ask(zone: Zone, name: str, qtype: str = "A"):
    return zone.lookup(DNSLabel(name), name.rstrip(".").lower(), getattr(QTYPE, qtype))


def test_a_records_answer_with_zone_ttl_and_ns_in_authority():
    reply = ask(mesos_zone(), "web.marathon.mesos.")
    assert reply.rcode == NOERROR and reply.authoritative and reply.rotate
    assert sorted(str(rr.rdata) for rr in reply.answers) == ["9.0.1.5", "9.0.2.5"]
    assert {rr.ttl for rr in reply.answers} == {60}
    assert [QTYPE[rr.rtype] for rr in reply.authority] == ["NS"]


def test_owner_name_keeps_the_clients_case():
    reply = mesos_zone().lookup(DNSLabel("WEB.Marathon.mesos."), "web.marathon.mesos", QTYPE.A)
    assert str(reply.answers[0].rname) == "WEB.Marathon.mesos."


def test_missing_name_is_nxdomain_with_soa():
    reply = ask(mesos_zone(), "nope.marathon.mesos.")
    assert reply.rcode == NXDOMAIN and reply.answers == []
    [soa] = reply.authority
    assert QTYPE[soa.rtype] == "SOA" and str(soa.rname) == "mesos." and soa.rdata.times[0] == 7


def test_other_type_and_empty_non_terminal_are_nodata():
    zone = mesos_zone()
    for name, qtype in (("web.marathon.mesos.", "AAAA"), ("marathon.slave.mesos.", "A"), ("_tcp.marathon.mesos.", "SRV")):
        reply = ask(zone, name, qtype)
        assert (reply.rcode, reply.answers) == (NOERROR, []), name
        assert QTYPE[reply.authority[0].rtype] == "SOA"


def test_srv_answers_carry_the_targets_addresses():
    reply = ask(mesos_zone(), "_web._tcp.marathon.mesos.", "SRV")
    assert [(str(rr.rdata.target), rr.rdata.port) for rr in reply.answers] == [("web-abcde-s1.marathon.mesos.", 80)]
    assert [(str(rr.rname), str(rr.rdata)) for rr in reply.additional] == [("web-abcde-s1.marathon.mesos.", "9.0.1.5")]


def test_apex_soa_and_ns_queries_answer_and_ns_has_glue():
    zone = mesos_zone(GENERATED + [Record("ns1.mesos.", "A", "198.51.100.1")])
    assert QTYPE[ask(zone, "mesos.", "SOA").answers[0].rtype] == "SOA"
    ns = ask(zone, "mesos.", "NS")
    assert str(ns.answers[0].rdata) == "ns1.mesos."
    assert [str(rr.rdata) for rr in ns.additional] == ["198.51.100.1"]


def test_any_returns_every_type_of_the_name():
    reply = ask(mesos_zone(), "web.marathon.mesos.", "ANY")
    assert {QTYPE[rr.rtype] for rr in reply.answers} == {"A"} and len(reply.answers) == 2


def test_bad_generated_records_are_skipped():
    assert all(name != "bogus.mesos." for name, _, _ in mesos_records(GENERATED))


def test_zone_table_picks_the_most_specific_zone():
    table = ZoneTable()
    soa = SoaNames("ns.spartan", "support.mesosphere.com")
    for origin in ("thisdcos.directory", "l4lb.thisdcos.directory", "mesos"):
        table.put(Zone(origin, [], ttl=5, soa=soa, serial=1))
    assert table.find("a.b.l4lb.thisdcos.directory").origin == "l4lb.thisdcos.directory"
    assert table.find("other.thisdcos.directory").origin == "thisdcos.directory"
    assert table.find("mesos").origin == "mesos"
    assert table.find("example.com") is None


def test_dcos_zone_names_tasks_by_agent_container_and_auto_ip():
    records = dict()
    for name, _rtype, rdata in dcos_records(mesos_records(GENERATED), "mesos", "198.18.0.2", ["198.18.0.2", "198.18.0.3"]):
        records.setdefault(name, []).append(str(rdata))
    assert sorted(records[f"web.marathon.agentip.{DCOS}"]) == ["198.18.0.11", "198.18.0.12"]
    assert sorted(records[f"web.marathon.containerip.{DCOS}"]) == ["9.0.1.5", "9.0.2.5"]
    assert sorted(records[f"web.marathon.autoip.{DCOS}"]) == ["9.0.1.5", "9.0.2.5"]
    assert records[f"hostnet.marathon.autoip.{DCOS}"] == ["198.18.0.11"]
    assert f"hostnet.marathon.containerip.{DCOS}" not in records     # host networking: no container IP
    assert records[f"leader.{DCOS}"] == ["198.18.0.2"]
    assert records[f"master.{DCOS}"] == ["198.18.0.2", "198.18.0.3"]
    assert not any(name.startswith("slave.") for name in records)


def test_rebase_moves_names_and_srv_targets():
    moved = rebase(mesos_records(GENERATED), "mesos", "mesos.thisdcos.directory")
    srv = [rdata for name, rtype, rdata in moved if rtype == QTYPE.SRV]
    assert str(srv[0].target) == "web-abcde-s1.marathon.mesos.thisdcos.directory."
    assert all(name.endswith("mesos.thisdcos.directory") for name, _, _ in moved)


def test_vip_records_validate_name_and_address():
    [(name, rtype, rdata)] = vip_records({"Web.Marathon.l4lb.thisdcos.directory.": "11.0.0.1"})
    assert (name, QTYPE[rtype], str(rdata)) == ("web.marathon.l4lb.thisdcos.directory", "A", "11.0.0.1")
    with pytest.raises(ValueError, match="not under l4lb"):
        vip_records({"web.marathon.mesos": "11.0.0.1"})
    with pytest.raises(ValueError, match="not an IP"):
        vip_records({"web.marathon.l4lb.thisdcos.directory": "eleven"})


def test_a_mirror_answers_as_a_zone_built_from_rebased_records():
    soa = SoaNames("ns1.mesos.thisdcos.directory", "root.ns1.mesos.thisdcos.directory")
    origin = "mesos.thisdcos.directory"
    built = Zone(origin, rebase(mesos_records(GENERATED), "mesos", origin), ttl=60, soa=soa, serial=7,
                 ns_in_authority=True)
    mirrored = Zone.mirror(mesos_zone(), origin, soa=soa, serial=7, ns_in_authority=True)
    assert sorted(mirrored.names()) == sorted(built.names()) and mirrored.record_count == built.record_count
    for name, qtype in [("web.marathon", "A"), ("_web._tcp.marathon", "SRV"), ("marathon", "A"),
                        ("nope", "A"), ("", "SOA"), ("", "NS"), ("web.marathon", "ANY")]:
        full = f"{name}.{origin}." if name else f"{origin}."
        one, other = ask(mirrored, full, qtype), ask(built, full, qtype)
        assert (one.rcode, [str(rr) for rr in one.answers + one.authority + one.additional]) == \
            (other.rcode, [str(rr) for rr in other.answers + other.authority + other.additional]), (name, qtype)
    srv = ask(mirrored, f"_web._tcp.marathon.{origin}.", "SRV")
    assert str(srv.answers[0].rdata.target) == f"web-abcde-s1.marathon.{origin}."
    assert [str(rr.rdata) for rr in srv.additional] == ["9.0.1.5"]      # glue found in the mirror


def test_repeated_records_count_once_and_asking_absent_types_keeps_nothing():
    zone = mesos_zone(GENERATED + GENERATED[:4])
    assert zone.record_count == len(mesos_records(GENERATED)) and len(ask(zone, "web.marathon.mesos.").answers) == 2
    for qtype in range(1, 300):
        zone.lookup(DNSLabel("web.marathon.mesos."), "web.marathon.mesos", qtype)
    assert set(zone._rdatas) == {("mesos", QTYPE.SOA), ("mesos", QTYPE.NS), ("web.marathon.mesos", QTYPE.A)}
