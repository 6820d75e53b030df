"""Mesos-DNS's response codes for lookups without an answer (``rcodes.json`` over fake.json): an
absent name asked for SRV, SOA or NS is NOERROR with the SOA, other types NXDOMAIN (issue 19)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dnslib import QTYPE

from spartan_dns.message import NOERROR, NXDOMAIN
from spartan_dns.records import generate
from spartan_dns.service import DnsService
from tests.reference import CONFORMANCE, conformance, conformance_state

RCODES = json.loads((CONFORMANCE / "rcodes.json").read_text())     # missing file: an error, never a skip
CODES = {"NOERROR": NOERROR, "NXDOMAIN": NXDOMAIN}


@pytest.fixture(scope="module")
def service() -> DnsService:
    params = conformance()["params"]
    svc = DnsService(listen=["127.0.0.1"], port=0, upstreams=["10.0.0.53"], mesos_domain=params["domain"])
    svc.set_mesos_records(generate(conformance_state(), params["domain"], ["netinfo", "docker", "mesos", "host"],
                                   params["label_spec"], masters=params["masters"], ns=params["ns"],
                                   listener=params["listener"]))
    return svc


def test_there_are_rcode_vectors_for_srv_and_other_types() -> None:
    assert {v["rtype"] for v in RCODES["vectors"]} >= {"SRV", "A"}


@pytest.mark.parametrize("vector", RCODES["vectors"], ids=lambda v: f"{v['rtype']}-{v['name']}")
def test_rcode_vector_holds(service: DnsService, vector: dict[str, Any]) -> None:
    reply = service.lookup(vector["name"], getattr(QTYPE, vector["rtype"]))
    assert reply is not None
    assert reply.rcode == CODES[vector["rcode"]]
    assert len(reply.answers) == vector["answers"]
    assert [QTYPE[rr.rtype] for rr in reply.authority] == vector["authority"]
    assert reply.authoritative


def test_existing_srv_still_answers_and_other_zones_keep_nxdomain(service: DnsService) -> None:
    assert service.lookup("_big-dog._tcp.marathon.mesos.", QTYPE.SRV).answers
    # Only the Mesos-DNS zone answers NOERROR for absent SRV names; dcos-net's zones do not.
    reply = service.lookup("_nosuch._tcp.marathon.l4lb.thisdcos.directory.", QTYPE.SRV)
    assert reply is not None and reply.rcode == NXDOMAIN
