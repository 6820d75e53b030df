"""The resolver serving real clients (dig) in a test namespace: UDP, TCP, EDNS0 sizes, TC,
forwarding to a dnsmasq upstream and what happens when it stops, the Mesos-DNS vectors over DNS."""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dnslib import DNSRecord
from pyroute2 import netns as pyroute2_netns

from tests.reference import CONFORMANCE, CONFORMANCE_VECTORS, REPO, conformance, conformance_state
from tests.waiting import wait_until

DNS_IP = "198.51.100.1"
UPSTREAM_IP = "127.0.0.2"
VIPS = {f"app{i}.marathon.l4lb.thisdcos.directory": f"11.0.0.{i}" for i in range(1, 6)}


@dataclass
class Process:
    popen: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def dns_ns(netns):
    netns.run("ip", "addr", "add", f"{DNS_IP}/32", "dev", "lo")
    netns.run("ip", "addr", "add", f"{UPSTREAM_IP}/8", "dev", "lo", check=False)   # inside 127/8 already
    return netns


@pytest.fixture
def start_dns(dns_ns, tmp_path) -> Iterator[Callable[..., Process]]:
    """Starts ``python -m spartan_dns`` in the test namespace; waits until it listens."""
    started: list[Process] = []

    def start(*args: str, vips: dict[str, str] = VIPS) -> Process:
        vips_file = tmp_path / f"vips-{len(started)}.json"
        vips_file.write_text(json.dumps(vips))
        log = tmp_path / f"dns-{len(started)}.log"
        command = [sys.executable, "-m", "spartan_dns", "--listen", DNS_IP, "--port", "53",
                   "--vips", str(vips_file), "--node-ip", "198.18.0.11", *args]
        popen = dns_ns.popen(*command, cwd=REPO, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
        process = Process(popen, log)
        started.append(process)
        if popen.stdout.readline().strip() != "ready":
            popen.wait(5)
            pytest.fail(f"resolver did not start: {log.read_text()}")
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def upstream(dns_ns, tmp_path) -> Iterator[Process]:
    """dnsmasq on 127.0.0.2:53 serving upstream1..upstream50.example.test and a 60-address name."""
    hosts = tmp_path / "upstream.hosts"
    lines = [f"10.20.0.{i} upstream{i}.example.test" for i in range(1, 51)]
    lines += [f"10.30.0.{i} big.example.test" for i in range(1, 61)]
    hosts.write_text("\n".join(lines) + "\n")
    log = tmp_path / "dnsmasq.log"
    popen = dns_ns.popen("dnsmasq", "-k", "--conf-file=/dev/null", "--no-hosts", f"--addn-hosts={hosts}",
                         "--local-ttl=2", "--no-resolv", "--bind-interfaces", f"--listen-address={UPSTREAM_IP}",
                         "--port=53", "--user=root", f"--log-facility={log}",
                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    process = Process(popen, log)
    wait_until(lambda: f"{UPSTREAM_IP}:53" in dns_ns.run("ss", "-Hlun", check=False).stdout,
               message=f"dnsmasq listening on {UPSTREAM_IP}:53")
    yield process
    process.stop()


def dig(ns, *args: str) -> str:
    return ns.run("dig", f"@{DNS_IP}", "+time=3", "+tries=1", *args, check=False).stdout


def short(ns, *args: str) -> list[str]:
    return sorted(line for line in dig(ns, "+short", *args).splitlines() if line and not line.startswith(";"))


def status(output: str) -> str:
    found = re.search(r"status: (\w+)", output)
    return found.group(1) if found else "no answer"


def test_own_zones_over_udp_and_tcp_with_dig(dns_ns, start_dns):
    start_dns("--upstream", UPSTREAM_IP)
    assert short(dns_ns, "app1.marathon.l4lb.thisdcos.directory") == ["11.0.0.1"]
    assert short(dns_ns, "+tcp", "APP2.Marathon.L4LB.thisdcos.directory") == ["11.0.0.2"]
    assert short(dns_ns, "ready.spartan") == ["127.0.0.1"]
    assert short(dns_ns, "thisnode.thisdcos.directory") == ["198.18.0.11"]
    missing = dig(dns_ns, "nope.marathon.l4lb.thisdcos.directory")
    assert status(missing) == "NXDOMAIN" and "SOA" in missing
    nodata = dig(dns_ns, "app1.marathon.l4lb.thisdcos.directory", "AAAA")
    assert status(nodata) == "NOERROR" and "ANSWER: 0" in nodata and "SOA" in nodata
    with_edns = dig(dns_ns, "+bufsize=4096", "ready.spartan")
    assert "udp: 1232" in with_edns                      # our advertised payload size
    assert "OPT PSEUDOSECTION" not in dig(dns_ns, "+noedns", "ready.spartan")
    assert status(dig(dns_ns, "+opcode=2", "ready.spartan")) == "NOTIMP"


def test_forwarding_tc_and_upstream_failure(dns_ns, start_dns, upstream):
    start_dns("--upstream", UPSTREAM_IP, "--upstream-timeout", "0.3", "--overall-timeout", "0.8")
    assert short(dns_ns, "upstream1.example.test") == ["10.20.0.1"]
    truncated = dig(dns_ns, "+noedns", "+ignore", "big.example.test")
    assert " tc " in truncated.split("flags:")[1].split(";")[0] + " " and "ANSWER: 0" in truncated
    assert len(short(dns_ns, "+bufsize=1232", "+ignore", "big.example.test")) == 60
    assert len(short(dns_ns, "+tcp", "big.example.test")) == 60
    assert len(short(dns_ns, "+noedns", "big.example.test")) == 60          # dig retried over TCP

    upstream.stop()
    # Never asked before: nothing to serve stale. The resolver answers SERVFAIL (dig's +time=3 is
    # longer than the resolver's overall timeout of 0.8 s; no answer at all would be "no answer").
    assert status(dig(dns_ns, "upstream7.example.test")) == "SERVFAIL"
    # Once upstream1's TTL (2 s) runs out it is served stale, with the stale TTL of 30 s.
    stale_answer = re.compile(r"upstream1\.example\.test\.\s+30\s+IN\s+A\s+10\.20\.0\.1")
    wait_until(lambda: stale_answer.search(dig(dns_ns, "+noall", "+answer", "upstream1.example.test")),
               message="upstream1 served stale after its TTL")


def test_tcp_serves_several_queries_per_connection_then_closes_when_idle(dns_ns, start_dns):
    start_dns("--upstream", UPSTREAM_IP, "--tcp-idle-timeout", "1")
    pyroute2_netns.pushns(dns_ns.name)
    try:
        conn = socket.create_connection((DNS_IP, 53), timeout=5)
    finally:
        pyroute2_netns.popns()
    with conn:
        names = list(VIPS)[:3]
        for i, name in enumerate(names):           # pipelined: all three before reading any answer
            query = DNSRecord.question(name)
            query.header.id = 100 + i
            wire = query.pack()
            conn.sendall(struct.pack("!H", len(wire)) + wire)
        answers = {}
        for _ in names:
            length = struct.unpack("!H", _read(conn, 2))[0]
            reply = DNSRecord.parse(_read(conn, length))
            answers[reply.header.id] = str(reply.rr[0].rdata)
        assert answers == {100: "11.0.0.1", 101: "11.0.0.2", 102: "11.0.0.3"}
        query = DNSRecord.question(names[0])        # still open after answering: another query
        query.header.id = 103
        wire = query.pack()
        conn.sendall(struct.pack("!H", len(wire)) + wire)
        reply = DNSRecord.parse(_read(conn, struct.unpack("!H", _read(conn, 2))[0]))
        assert reply.header.id == 103 and str(reply.rr[0].rdata) == "11.0.0.1"
        conn.settimeout(30)                         # a generous bound on the 1 s idle timeout
        assert conn.recv(1) == b""                  # the server closed the idle connection


def _read(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def test_clients_outside_the_node_get_no_answer(dns_ns, start_dns):
    start_dns("--upstream", UPSTREAM_IP, "--allow", "127.0.0.0/8", "--allow", f"{DNS_IP}/32")
    dns_ns.run("ip", "addr", "add", "203.0.113.9/32", "dev", "lo")
    assert short(dns_ns, "-b", "127.0.0.1", "ready.spartan") == ["127.0.0.1"]
    assert status(dig(dns_ns, "-b", "203.0.113.9", "+time=1", "ready.spartan")) == "no answer"


def test_mesos_dns_conformance_vectors_hold_over_real_queries(dns_ns, start_dns, tmp_path):
    vectors = conformance()
    params = vectors["params"]
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(conformance_state()))
    groups: dict[str, list[dict]] = {}
    for vector in vectors["vectors"]:
        groups.setdefault(vector["ip_sources"], []).append(vector)
    checked = 0
    rcodes_checked = False
    for ip_sources, vectors in groups.items():
        server = start_dns("--upstream", UPSTREAM_IP, "--mesos-state", str(state_file), "--domain", params["domain"],
                           "--ip-sources", ip_sources, "--label-spec", params["label_spec"].lower(),
                           *[arg for master in params["masters"] for arg in ("--mesos-master", master)])
        for vector in vectors:
            got = short(dns_ns, vector["name"], vector["rtype"])
            if vector["rtype"] == "SRV":
                got = sorted(f"{target}:{port}" for _prio, _weight, port, target in (g.split() for g in got))
            assert got == sorted(vector["want"]), (vector, server.log.read_text()[-2000:])
            checked += 1
        if not rcodes_checked:
            # rcodes.json: what a lookup without an answer gets, over real queries (issue 19).
            for rcode in json.loads((CONFORMANCE / "rcodes.json").read_text())["vectors"]:
                out = dig(dns_ns, rcode["name"], rcode["rtype"])
                assert status(out) == rcode["rcode"] and "ANSWER: 0," in out, (rcode, out)
                assert re.search(r"AUTHORITY SECTION:\n\S+\s+\d+\s+IN\s+SOA\s", out), (rcode, out)
            rcodes_checked = True
        server.stop()
    assert checked == CONFORMANCE_VECTORS
