"""The handler chain end to end on raw packets, through DnsService with a fake upstream transport."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSRecord
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette

from spartan_dns.api import routes
from spartan_dns.metrics import DnsMetrics
from spartan_dns.records import Record, RecordSet
from spartan_dns.service import DnsService
from spartan_dns.upstream import Upstream

LOCAL = ("127.0.0.1", 40000)
VIP = "web.marathon.l4lb.thisdcos.directory"
RECORDS = RecordSet((
    Record("web.marathon.mesos.", "A", "9.0.1.5"),
    Record("web.marathon.slave.mesos.", "A", "198.18.0.11"),
    Record("web-abcde-s1.marathon.mesos.", "A", "9.0.1.5"),
    Record("_web._tcp.marathon.mesos.", "SRV", "web-abcde-s1.marathon.mesos.:80"),
    Record("leader.mesos.", "A", "198.18.0.2"),
))


class FakeUpstream:
    """Answers every A question with 10.9.9.9 (TTL 60) unless told to be silent or to fail."""

    def __init__(self) -> None:
        self.mode = "answer"
        self.asked: list[str] = []
        self.servers: list[Upstream] = []

    async def exchange(self, upstream: Upstream, query: bytes) -> bytes:
        request = DNSRecord.parse(query)
        self.asked.append(str(request.q.qname))
        self.servers.append(upstream)
        if self.mode == "silent":
            await asyncio.Event().wait()
        if self.mode == "down":
            raise ConnectionRefusedError("port unreachable")
        reply = request.reply()
        if str(request.q.qname).startswith("missing."):
            reply.header.rcode = RCODE.NXDOMAIN
        else:
            reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=60, rdata=A("10.9.9.9")))
        return bytes(reply.pack())


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def service(upstream) -> DnsService:
    svc = DnsService(listen=["127.0.0.1"], port=0, upstreams=["10.0.0.53"],
                     forward_zones={"corp.example": ["10.0.0.54"]}, node_ip="198.18.0.11",
                     upstream_timeout=0.1, overall_timeout=0.3, max_inflight=3, transport=upstream)
    svc.set_vips({VIP: "11.0.0.1"})
    return svc


def packet(name: str, qtype: str = "A", qid: int = 4242, edns: int | None = None, qclass: str = "IN") -> bytes:
    q = DNSRecord.question(name, qtype, qclass)
    q.header.id = qid
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    return bytes(q.pack())


async def ask(service: DnsService, data: bytes, client=LOCAL, tcp: bool = False) -> DNSRecord | None:
    result = service.server.process(data, client, tcp, time.monotonic())
    if result is not None and not isinstance(result, bytes):
        result = await result
    return None if result is None else DNSRecord.parse(result)


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr]


async def test_own_zones_answer_locally(service):
    assert addresses(await ask(service, packet(VIP))) == ["11.0.0.1"]
    assert addresses(await ask(service, packet("ready.spartan"))) == ["127.0.0.1"]
    assert addresses(await ask(service, packet("thisnode.thisdcos.directory"))) == ["198.18.0.11"]
    missing = await ask(service, packet("nope.marathon.l4lb.thisdcos.directory"))
    assert missing.header.rcode == RCODE.NXDOMAIN and QTYPE[missing.auth[0].rtype] == "SOA"


async def test_vip_changes_are_seen_by_the_next_query(service):
    assert addresses(await ask(service, packet(VIP))) == ["11.0.0.1"]
    assert service.server.replay                          # the answer is stored for replay
    service.set_vips({VIP: "11.0.0.2"})
    assert not service.server.replay                      # …and forgotten on change
    assert addresses(await ask(service, packet(VIP))) == ["11.0.0.2"]
    service.set_vips({})
    assert (await ask(service, packet(VIP))).header.rcode == RCODE.NXDOMAIN


async def test_bad_vip_input_raises_and_changes_nothing(service):
    with pytest.raises(ValueError, match="not an IP"):
        service.set_vips({VIP: "11.0.0.3", "x.marathon.l4lb.thisdcos.directory": "nope"})
    assert addresses(await ask(service, packet(VIP))) == ["11.0.0.1"]


async def test_mesos_records_mirror_and_dcos_zone(service):
    service.set_mesos_records(RECORDS)
    service.set_masters("198.18.0.2", ["198.18.0.2"])
    assert addresses(await ask(service, packet("web.marathon.mesos"))) == ["9.0.1.5"]
    assert addresses(await ask(service, packet("web.marathon.mesos.thisdcos.directory"))) == ["9.0.1.5"]
    assert addresses(await ask(service, packet("web.marathon.agentip.dcos.thisdcos.directory"))) == ["198.18.0.11"]
    assert addresses(await ask(service, packet("web.marathon.autoip.dcos.thisdcos.directory"))) == ["9.0.1.5"]
    assert addresses(await ask(service, packet("leader.dcos.thisdcos.directory"))) == ["198.18.0.2"]
    srv = await ask(service, packet("_web._tcp.marathon.mesos", "SRV"))
    assert [rr.rdata.port for rr in srv.rr] == [80] and addresses(srv)[0].startswith("0 0 80")
    assert [str(rr.rdata) for rr in srv.ar if rr.rtype == QTYPE.A] == ["9.0.1.5"]


async def test_multi_record_answers_rotate_on_replay(service):
    names = {f"a{i}.marathon.l4lb.thisdcos.directory": f"11.0.0.{i}" for i in range(1, 4)}
    service.set_mesos_records(RecordSet(tuple(Record("multi.marathon.mesos.", "A", f"9.0.0.{i}") for i in range(1, 4))))
    service.set_vips(names)
    first = addresses(await ask(service, packet("multi.marathon.mesos")))
    entry = service.server.replay[packet("multi.marathon.mesos")[2:]]
    orders = [addresses(DNSRecord.parse(b"\x10\x92" + tail)) for tail in entry.tails]
    assert orders[0] == first and len({tuple(o) for o in orders}) == 3


async def test_non_local_clients_get_no_answer(service):
    assert await ask(service, packet(VIP), client=("203.0.113.5", 53)) is None
    assert service.stats.dropped == {"client": 1}
    assert addresses(await ask(service, packet(VIP), client=("9.0.1.5", 53))) == ["11.0.0.1"]   # task network


async def test_forwarded_answers_are_cached(service, upstream):
    first = await ask(service, packet("www.example.com"))
    second = await ask(service, packet("www.example.com", qid=7))
    assert addresses(first) == addresses(second) == ["10.9.9.9"]
    assert second.header.id == 7 and second.header.aa == 0
    assert upstream.asked == ["www.example.com."]
    sources = {key[3] for key in service.stats.requests}
    assert {"upstream", "cache"} <= sources


async def test_upstream_nxdomain_passes_through(service):
    assert (await ask(service, packet("missing.example.com"))).header.rcode == RCODE.NXDOMAIN


async def test_upstream_failure_is_servfail_never_nxdomain(service, upstream):
    upstream.mode = "down"
    reply = await ask(service, packet("www.example.org"))
    assert reply.header.rcode == RCODE.SERVFAIL


async def test_stale_answer_is_served_when_upstreams_fail(service, upstream):
    clock = Clock()
    service.forward.clock = clock
    await ask(service, packet("www.example.net"))
    clock.now += 120                                       # TTL 60 has run out
    upstream.mode = "silent"
    stale = await ask(service, packet("www.example.net"))
    assert addresses(stale) == ["10.9.9.9"] and stale.rr[0].ttl == 30
    asked = len(upstream.asked)
    again = service.server.process(packet("www.example.net"), LOCAL, False, time.monotonic())
    assert isinstance(again, bytes)                        # within the recheck window: stale at once
    assert len(upstream.asked) == asked


async def test_after_the_no_retry_window_upstreams_are_asked_again(service, upstream):
    clock = Clock()
    service.forward.clock = clock
    await ask(service, packet("www.example.net"))
    clock.now += 120                                       # TTL 60 has run out
    upstream.mode = "down"
    assert (await ask(service, packet("www.example.net"))).rr[0].ttl == 30     # stale; window opens
    asked = len(upstream.asked)
    clock.now += service.cache.failure_recheck - 1         # still inside the window: not asked
    assert (await ask(service, packet("www.example.net"))).rr[0].ttl == 30
    assert len(upstream.asked) == asked
    clock.now += 2                                         # the window has expired
    upstream.mode = "answer"
    fresh = await ask(service, packet("www.example.net"))
    assert len(upstream.asked) == asked + 1 and upstream.asked[-1] == "www.example.net."
    assert addresses(fresh) == ["10.9.9.9"] and fresh.rr[0].ttl == 60           # a fresh answer, not stale
    assert (await ask(service, packet("www.example.net"))).rr[0].ttl == 60     # and cached again
    assert len(upstream.asked) == asked + 1


async def test_identical_questions_in_flight_share_one_upstream_query(service, upstream):
    replies = await asyncio.gather(*(ask(service, packet("same.example.com", qid=i)) for i in range(5)))
    assert [r.header.id for r in replies] == list(range(5))
    assert upstream.asked == ["same.example.com."]


async def test_inflight_cap_answers_servfail_at_once(service, upstream):
    upstream.mode = "silent"
    waiting = [service.server.process(packet(f"n{i}.example.com"), LOCAL, False, time.monotonic()) for i in range(3)]
    over = service.server.process(packet("n4.example.com"), LOCAL, False, time.monotonic())
    assert isinstance(over, bytes) and DNSRecord.parse(over).header.rcode == RCODE.SERVFAIL
    assert service.stats.dropped["inflight"] == 1
    for reply in await asyncio.gather(*waiting):
        assert DNSRecord.parse(reply).header.rcode == RCODE.SERVFAIL


async def test_forward_zone_uses_its_own_upstreams(service, upstream):
    assert addresses(await ask(service, packet("Host.Corp.Example"))) == ["10.9.9.9"]
    assert addresses(await ask(service, packet("www.example.com"))) == ["10.9.9.9"]
    assert upstream.servers == [Upstream("10.0.0.54"), Upstream("10.0.0.53")]
    zones = {key[0] for key in service.stats.requests}
    assert {"corp.example", "."} <= zones


async def test_a_forward_zone_inside_an_own_zone_takes_that_subtree(upstream):
    svc = DnsService(listen=["127.0.0.1"], port=0, upstreams=["10.0.0.53"], transport=upstream,
                     forward_zones={"legacy.mesos": ["10.0.0.55"]})
    svc.set_mesos_records(RECORDS)
    assert addresses(await ask(svc, packet("web.marathon.mesos"))) == ["9.0.1.5"]
    assert addresses(await ask(svc, packet("app.legacy.mesos"))) == ["10.9.9.9"]
    assert upstream.servers == [Upstream("10.0.0.55")]


async def test_guard_rejects_classes_transfers_and_edns_versions(service):
    assert (await ask(service, packet("ready.spartan", qclass="CH"))).header.rcode == RCODE.NOTIMP
    assert (await ask(service, packet("mesos", "AXFR"))).header.rcode == RCODE.REFUSED
    q = DNSRecord.question("ready.spartan")
    q.add_ar(EDNS0(udp_len=1232, version=1))
    reply = await ask(service, bytes(q.pack()))
    assert reply.ar[0].rtype == QTYPE.OPT and (reply.ar[0].ttl >> 24) == 1      # BADVERS = 16


async def test_malformed_packets_get_formerr_and_the_server_goes_on(service):
    reply = await ask(service, packet(VIP)[:15])
    assert reply.header.rcode == RCODE.FORMERR
    assert addresses(await ask(service, packet(VIP))) == ["11.0.0.1"]


async def test_udp_listener_replays_stored_answers_with_the_id_patched(service):
    await service.start()
    try:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(service.addresses[0])
            for qid in (1, 2, 3):
                await loop.sock_sendall(sock, packet(VIP.upper(), qid=qid))
                reply = DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(sock, 4096), 2))
                assert reply.header.id == qid and str(reply.q.qname) == VIP.upper() + "."
                assert addresses(reply) == ["11.0.0.1"]
        finally:
            sock.close()
        counted = sum(n for key, n in service.stats.requests.items() if key[0] == "l4lb.thisdcos.directory")
        assert counted == 3
    finally:
        await service.stop()


def test_metrics_are_exported_with_navstar_dns_names(service):
    registry = CollectorRegistry()
    registry.register(DnsMetrics(service))
    text = generate_latest(registry).decode()
    for name in ("navstar_dns_requests_total", "navstar_dns_request_duration_seconds_bucket",
                 "navstar_dns_cache_hits_total", "navstar_dns_cache_misses_total",
                 "navstar_dns_upstream_failures_total", 'navstar_dns_zone_records{zone="l4lb.thisdcos.directory"} 1.0'):
        assert name in text


async def test_http_api_in_mesos_dns_shapes(service):
    service.set_mesos_records(RECORDS)
    app = Starlette(routes=routes(service))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as client:
        assert (await client.get("/v1/version")).json()["Service"] == "Mesos-DNS"
        assert (await client.get(f"/v1/hosts/{VIP}")).json() == [{"host": VIP + ".", "ip": "11.0.0.1"}]
        assert (await client.get("/v1/hosts/nope.mesos")).json() == [{"host": "", "ip": ""}]
        assert (await client.get("/v1/services/_web._tcp.marathon.mesos.")).json() == [
            {"service": "_web._tcp.marathon.mesos.", "host": "web-abcde-s1.marathon.mesos.", "ip": "9.0.1.5",
             "port": "80"}]
        bad = await client.get("/v1/hosts/" + "x" * 70 + ".mesos")
        assert bad.status_code == 400 and "label" in bad.json()["error"]
        records = (await client.get("/v1/records")).json()
    assert {"name": "leader.mesos.", "host": "198.18.0.2", "rtype": "A"} in records
    assert {"name": VIP + ".", "host": "11.0.0.1", "rtype": "A"} in records
    assert {"name": "_web._tcp.marathon.mesos.", "host": "web-abcde-s1.marathon.mesos.:80", "rtype": "SRV"} in records


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"listen": ["not-an-ip"]}, "listen"),
    ({"node_ip": "x"}, "node_ip"),
    ({"upstreams": ["dns.example"]}, "upstream"),
    ({"forward_zones": {"corp": []}}, "forward_zones"),
    ({"allowed_clients": ["10.0.0.0/33"]}, "allowed_clients"),
])
def test_bad_configuration_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DnsService(**{"upstreams": [], **kwargs})


async def test_zones_built_off_the_loop_follow_masters_that_changed_meanwhile(service):
    service.set_masters("198.18.0.2", ["198.18.0.2"])
    built = await asyncio.to_thread(service.build_mesos_zones, RECORDS)
    assert addresses(await ask(service, packet("web.marathon.mesos"))) == []     # nothing served yet
    service.set_masters("198.18.0.3", ["198.18.0.3"])       # a new leader before the zones go in
    service.install_mesos_zones(built)
    assert addresses(await ask(service, packet("web.marathon.mesos"))) == ["9.0.1.5"]
    assert addresses(await ask(service, packet("leader.dcos.thisdcos.directory"))) == ["198.18.0.3"]
    assert addresses(await ask(service, packet("web.marathon.agentip.dcos.thisdcos.directory"))) == ["198.18.0.11"]


async def test_a_replayed_cached_answer_counts_its_ttl_down_without_being_made_again(service, upstream):
    clock = Clock()
    service.forward.clock = clock
    query = packet("www.example.net", edns=1232)
    await ask(service, query)                   # fetched upstream (TTL 60): not replayed
    clock.now += 3.2
    cached = await ask(service, query)          # from the cache, TTL 57: stored for replay
    assert cached.rr[0].ttl == 57
    entry = service.server.replay[query[2:]]
    origin = clock.now - 3.2
    assert entry.until == origin + 60 and entry.next_tick == origin + 4
    entry.tick(origin + 10.5)                   # what the listener does on a hit past next_tick
    replayed = DNSRecord.parse(query[:2] + entry.tails[0])
    assert replayed.rr[0].ttl == 50 and str(replayed.rr[0].rdata) == "10.9.9.9"
    assert replayed.ar[0].rtype == QTYPE.OPT and replayed.ar[0].edns_len == 1232     # EDNS flags untouched
    assert entry.next_tick == origin + 11
    clock.now = origin + 10.5                   # the same answer made again agrees byte for byte
    service.server.forget()
    assert (await ask(service, query)).pack() == replayed.pack()
    assert upstream.asked == ["www.example.net."]


async def test_own_zone_answers_go_to_the_offload_and_its_answers_are_counted(upstream):
    from spartan_dns.offload import FakeReplayOffload

    offload = FakeReplayOffload()
    svc = DnsService(listen=["127.0.0.1"], port=0, upstreams=["10.0.0.53"], node_ip="198.18.0.11",
                     transport=upstream, replay_offload=offload, offload_interfaces=["lo"])
    svc.set_vips({VIP: "11.0.0.1"})
    await svc.start()
    try:
        assert offload.interfaces == ["lo"] and offload.addresses == svc.addresses and offload.heartbeats >= 1
        assert "127.0.0.0/8" in offload.networks
        query = packet(VIP)
        assert addresses(await ask(svc, query)) == ["11.0.0.1"]
        answered = offload.answer(packet(VIP, qid=77))
        assert answered is not None and addresses(DNSRecord.parse(answered)) == ["11.0.0.1"]
        assert DNSRecord.parse(answered).header.id == 77
        clock = Clock()
        svc.forward.clock = clock
        forwarded = packet("www.example.net")
        await ask(svc, forwarded)                          # fetched upstream (TTL 60): not stored
        assert offload.answer(forwarded, clock.now) is None
        clock.now += 2.5
        assert (await ask(svc, forwarded)).rr[0].ttl == 58  # from the cache: offloaded, counting down
        later = offload.answer(forwarded, clock.now - 2.5 + 10.2)
        assert later is not None and DNSRecord.parse(later).rr[0].ttl == 50
        assert offload.answer(forwarded, clock.now - 2.5 + 60) is None     # expired: the resolver's again
        svc.server.count_offloaded()
        assert svc.stats.kernel_answers == 2
        assert svc.stats.requests[("l4lb.thisdcos.directory", "A", "NOERROR", "kernel")] == 1
        assert svc.stats.requests[(".", "A", "NOERROR", "kernel")] == 1
        svc.set_vips({VIP: "11.0.0.2"})                      # zones change: the offload forgets
        assert offload.answer(query) is None
    finally:
        await svc.stop()
    assert offload.closed and svc.server.offload is None


async def test_an_offload_that_fails_is_dropped_and_every_query_is_still_answered(service):
    from spartan_dns.offload import FakeReplayOffload

    class Refusing(FakeReplayOffload):
        def put(self, query_tail, reply_tail, stat, countdown=None) -> bool:
            raise OSError("dns replay map update: Cannot allocate memory")

    offload = Refusing()
    service.server.offload = offload
    assert addresses(await ask(service, packet(VIP))) == ["11.0.0.1"]      # answered all the same
    assert service.server.offload is None and offload.closed
    assert addresses(await ask(service, packet(VIP))) == ["11.0.0.1"]
