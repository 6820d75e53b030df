"""The forwarding race against a fake transport: first answer wins, failures steer, failures decay."""

from __future__ import annotations

import asyncio

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from spartan_dns.upstream import Forwarder, Upstream, UpstreamFailure, UpstreamHealth, resolv_conf_upstreams

U1, U2, U3 = Upstream("10.0.0.1"), Upstream("10.0.0.2"), Upstream("10.0.0.3")


class FakeTransport:
    """Per upstream a behaviour: "answer", "slow" (answers once ``release`` is set), "servfail",
    "wrong-question", "silent" (never answers), "refused-net". Every question asked is recorded."""

    def __init__(self, plan: dict[Upstream, str]):
        self.plan = plan
        self.asked: list[Upstream] = []
        self.release = asyncio.Event()
        self.cancelled: list[Upstream] = []

    async def exchange(self, upstream: Upstream, query: bytes) -> bytes:
        self.asked.append(upstream)
        behaviour = self.plan[upstream]
        try:
            if behaviour == "slow":
                await self.release.wait()
            if behaviour == "silent":
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(upstream)
            raise
        if behaviour == "refused-net":
            raise ConnectionRefusedError("port unreachable")
        request = DNSRecord.parse(query)
        reply = request.reply()
        if behaviour == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif behaviour == "wrong-question":
            reply.q.qname = "other.example."
        else:
            reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=60, rdata=A(upstream.host)))
        return bytes(reply.pack())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def forwarder(plan, health=None, **kwargs) -> tuple[Forwarder, FakeTransport, list]:
    transport = FakeTransport(plan)
    failures: list = []
    fwd = Forwarder(transport, health or UpstreamHealth(), upstream_timeout=kwargs.pop("upstream_timeout", 0.2),
                    overall_timeout=kwargs.pop("overall_timeout", 1.0),
                    on_failure=lambda u, reason: failures.append((u, reason)), **kwargs)
    return fwd, transport, failures


async def test_first_answer_wins_the_race():
    fwd, transport, _ = forwarder({U1: "slow", U2: "answer"})
    answer = await fwd.resolve([U1, U2], "example.com", QTYPE.A, 1)
    assert str(answer.rr[0].rdata) == U2.host
    assert sorted(transport.asked) == [U1, U2]          # both were asked at once
    assert transport.cancelled == [U1]                  # the loser is not left running


async def test_at_most_two_upstreams_race_and_the_third_is_a_fallback():
    plan = {U1: "servfail", U2: "servfail", U3: "answer"}
    health = UpstreamHealth()
    health.failed(U3)                                   # so U3 ranks last and is not in the race
    fwd, transport, failures = forwarder(plan, health)
    answer = await fwd.resolve([U1, U2, U3], "example.com", QTYPE.A, 1)
    assert str(answer.rr[0].rdata) == U3.host
    assert {u for u, reason in failures} == {U1, U2} and {r for _, r in failures} == {"rcode"}
    assert sorted(transport.asked[:2]) == [U1, U2] and transport.asked[2] == U3


async def test_servfail_and_wrong_question_count_as_failures_not_answers():
    fwd, _, failures = forwarder({U1: "servfail", U2: "wrong-question"})
    with pytest.raises(UpstreamFailure):
        await fwd.resolve([U1, U2], "example.com", QTYPE.A, 1)
    assert sorted(reason for _, reason in failures) == ["mismatch", "rcode"]


async def test_a_silent_upstream_times_out_and_counts_as_a_failure():
    fwd, _, failures = forwarder({U1: "silent", U2: "refused-net"}, upstream_timeout=0.1, overall_timeout=30)
    with pytest.raises(UpstreamFailure, match="every upstream failed"):
        await fwd.resolve([U1, U2], "example.com", QTYPE.A, 1)
    assert sorted(reason for _, reason in failures) == ["network", "timeout"]


async def test_the_overall_timeout_ends_a_resolution_whose_upstreams_never_answer():
    fwd, transport, _ = forwarder({U1: "silent", U2: "silent"}, upstream_timeout=60, overall_timeout=0.2)
    with pytest.raises(UpstreamFailure, match=r"no answer within 0\.2s"):
        await fwd.resolve([U1, U2], "example.com", QTYPE.A, 1)
    assert sorted(transport.cancelled) == [U1, U2]      # the overall timeout, not the per-upstream one


async def test_no_upstreams_is_a_failure_not_an_answer():
    fwd, _, _ = forwarder({})
    with pytest.raises(UpstreamFailure):
        await fwd.resolve([], "example.com", QTYPE.A, 1)


def test_failing_upstreams_rank_last_and_recover_as_failures_decay():
    clock = Clock()
    health = UpstreamHealth(halflife=10.0, clock=clock)
    for _ in range(4):
        health.failed(U1)
    for _ in range(20):
        assert health.ranked([U1, U2, U3])[-1] == U1
    assert health.score(U1) == pytest.approx(4.0)
    clock.now = 100.0                                   # ten half-lives later
    assert health.score(U1) < 0.01
    firsts = {health.ranked([U1, U2, U3])[0] for _ in range(200)}
    assert U1 in firsts                                 # used again once it recovered


async def test_race_prefers_upstreams_with_fewer_recent_failures():
    health = UpstreamHealth()
    health.failed(U1)
    fwd, transport, _ = forwarder({U1: "answer", U2: "answer", U3: "answer"}, health)
    for _ in range(10):
        await fwd.resolve([U1, U2, U3], "example.com", QTYPE.A, 1)
    assert U1 not in transport.asked


def test_upstream_parse_and_errors():
    assert Upstream.parse("10.0.0.1") == Upstream("10.0.0.1", 53)
    assert Upstream.parse("10.0.0.1:5353") == Upstream("10.0.0.1", 5353)
    assert Upstream.parse("[fd00::1]:54") == Upstream("fd00::1", 54)
    assert Upstream.parse("fd00::1") == Upstream("fd00::1", 53)
    with pytest.raises(ValueError, match="expected an IP"):
        Upstream.parse("dns.example.com")
    with pytest.raises(ValueError, match="port"):
        Upstream.parse("10.0.0.1:0")


def test_resolv_conf_skips_our_own_addresses(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example\nnameserver 198.51.100.1\nnameserver 10.0.0.53\n"
                    "nameserver fe80::1%eth0\nnameserver junk\n")
    assert resolv_conf_upstreams(conf, skip=["198.51.100.1"]) == [Upstream("10.0.0.53"), Upstream("fe80::1")]
    assert resolv_conf_upstreams(tmp_path / "missing") == []
