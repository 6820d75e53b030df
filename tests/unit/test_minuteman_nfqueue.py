"""The NFQUEUE dataplane's decisions, above the netfilter seam (FakeNetfilter) with the flow
balancer in this process (InlineWorkers); packets from scapy."""

import json
import random
from collections import Counter

import pytest
from scapy.layers.inet import IP, TCP, UDP

from minuteman.dataplane import Backend, VipEntry, VipKey
from minuteman.flow_balancer import (
    SAMPLES_PER_BACKEND,
    FlowBalancer,
    FrameReader,
    WorkerVip,
    frame,
    lookup_bytes,
)
from minuteman.maglev import maglev_table
from minuteman.netfilter import MARK_SNAT, MARK_TAG, Flow, FlowState, RouteInfo
from minuteman.netfilter_fake import Call, FakeNetfilter
from minuteman.nfqueue import CHECKS_PER_BACKEND, InlineWorkers, NfqueueDataplane

WEB = VipKey("11.0.0.1", 80, "tcp")
DNS = VipKey("11.0.0.1", 53, "udp")
BACKENDS = (Backend("10.0.1.2", 8080), Backend("10.0.2.2", 8080), Backend("10.0.3.2", 8080))


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def dataplane(tmp_path, netfilter=None, **kw):
    dp = NfqueueDataplane(netfilter=netfilter or FakeNetfilter(), workers=InlineWorkers(rng=random.Random(1)),
                          state_path=tmp_path / "state.json", **kw)
    return dp


async def started(tmp_path, entries=None, **kw):
    dp = dataplane(tmp_path, **kw)
    dp.apply(table() if entries is None else entries)
    await dp.start()
    return dp


def table(lookup=True):
    return {WEB: VipEntry(WEB, BACKENDS, maglev_table(BACKENDS) if lookup else ()),
            DNS: VipEntry(DNS, BACKENDS[:1], maglev_table(BACKENDS[:1]))}


def syn(src="10.0.9.2", sport=40000, dst="11.0.0.1", dport=80):
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))


def changes_asked(netfilter, since=0):
    """What the calls after the first ``since`` asked to change: the VIP set and NAT map edits
    (empty ones left out), and any removal. ``ensure_base`` and ``set_routes`` state the whole
    wanted state each time and are checked by what they ask for."""
    return [call for call in netfilter.calls[since:]
            if call.method == "remove_base" or (call.method in ("update_vips", "update_backend_ids") and any(call.args))]


def pick(dp, payload, indev=0):
    """The backend the verdict's mark names (None: no mark, the packet will be rejected)."""
    return dp.backend_of(dp.workers.mark_for(payload, indev))


def test_apply_is_idempotent_and_programs_sets_routes_and_the_nat_map(tmp_path):
    clock = Clock()
    dp = dataplane(tmp_path, clock=clock)
    result = dp.apply(table())
    assert result.programmed == {WEB, DNS} and not result.errors
    nf = dp.netfilter
    assert nf.base is not None and nf.members == {WEB, DNS} and nf.routes == {"11.0.0.0/8"}
    assert sorted(nf.nat_map.values()) == sorted(BACKENDS) and all(0 < i < MARK_SNAT for i in nf.nat_map)
    since = len(nf.calls)
    dp.apply(table())
    assert changes_asked(nf, since) == [], "the same table again asks for no change"
    assert nf.called("set_routes")[-1] == Call("set_routes", ({"11.0.0.0/8"},))
    assert dp.current() == table()
    removed = dp.apply({DNS: table()[DNS]})
    assert removed.removed == {WEB} and nf.members == {DNS}
    assert len(nf.nat_map) == 3, "a worker may still mark flows for them: they stay a while"
    clock.now = 2.9
    dp.maintain()
    assert len(nf.nat_map) == 3
    clock.now = 3.0
    dp.maintain()
    assert list(nf.nat_map.values()) == [BACKENDS[0]], "backends no VIP uses leave the map"


async def test_first_packet_gets_a_maglev_backend_by_mark(tmp_path):
    dp = await started(tmp_path)
    picked = Counter(pick(dp, syn(sport=p)) for p in range(30000, 33000))
    assert set(picked) == set(BACKENDS) and min(picked.values()) > 850
    assert pick(dp, syn(sport=30000)) == pick(dp, syn(sport=30000)), "the same flow, the same backend"
    mark = dp.workers.mark_for(syn(sport=30000))
    assert mark & 0xFF000000 == MARK_TAG and not mark & MARK_SNAT
    assert dp.netfilter.nat_map[mark & 0x7FFFFF] == pick(dp, syn(sport=30000))
    dp.workers.flush()
    assert sum(dp.connection_counts().values()) == 3000, "every flow balanced counts, once"


async def test_unknown_vip_short_or_odd_packets_get_no_mark(tmp_path):
    dp = await started(tmp_path)
    assert dp.workers.mark_for(syn(dport=81)) == 0
    assert dp.workers.mark_for(b"\x45\x00") == 0
    assert dp.workers.mark_for(bytes(IP(src="1.1.1.1", dst="11.0.0.1", proto=47) / b"gre!")) == 0
    dp.apply({WEB: VipEntry(WEB, ())})
    assert dp.workers.mark_for(syn()) == 0


async def test_hairpin_and_vip_sourced_flows_are_source_natted(tmp_path):
    nf = FakeNetfilter(neighbours={"10.0.1.2": RouteInfo(oif=7, src="10.0.1.1")})
    dp = await started(tmp_path, {WEB: VipEntry(WEB, BACKENDS[:1], maglev_table(BACKENDS[:1]))}, netfilter=nf)
    snat = {sport: bool(dp.workers.mark_for(syn(src=src, sport=sport), indev) & MARK_SNAT)
            for src, sport, indev in (("10.0.1.2", 1111, 7),     # a backend calling its own VIP
                                      ("10.0.9.2", 2222, 9),     # another link: replies come back anyway
                                      ("11.0.0.1", 3333, 0),     # local socket with the VIP as source
                                      ("10.0.0.1", 4444, 0))}    # local socket, node address
    assert snat == {1111: True, 2222: False, 3333: True, 4444: False}


async def test_udp_first_datagrams_are_balanced_and_counted(tmp_path):
    dp = await started(tmp_path)
    datagram = bytes(IP(src="10.0.9.2", dst="11.0.0.1") / UDP(sport=5000, dport=53) / b"q")
    assert pick(dp, datagram) == BACKENDS[0]
    dp.workers.flush()
    assert dp.connection_counts() == {(DNS, BACKENDS[0]): 1}


async def test_health_outcomes_after_the_reply_window(tmp_path):
    clock = Clock()
    dp = await started(tmp_path, {WEB: VipEntry(WEB, BACKENDS[:1], maglev_table(BACKENDS[:1]))}, clock=clock)
    outcomes = {1: FlowState(True, True, 3), 2: FlowState(False, False, 1), 3: FlowState(True, False, 8), 4: None}
    for sport, state in outcomes.items():
        dp.workers.mark_for(syn(sport=sport))
        if state:
            dp.netfilter.states[Flow("tcp", "10.0.9.2", sport, "11.0.0.1", 80)] = state
    dp.workers.flush()
    assert dp.drain_outcomes() == []
    clock.now = 0.5
    # established; unanswered; refused (reset before any ACK); gone (conntrack dropped a refused one)
    assert dp.drain_outcomes() == [(BACKENDS[0], True), (BACKENDS[0], False), (BACKENDS[0], False),
                                   (BACKENDS[0], False)]


async def test_health_samples_are_bounded_per_backend(tmp_path):
    clock = Clock()
    dp = await started(tmp_path, {WEB: VipEntry(WEB, BACKENDS[:1], maglev_table(BACKENDS[:1]))}, clock=clock)
    for p in range(1000, 1500):
        dp.workers.mark_for(syn(sport=p))
    dp.workers.flush()
    clock.now = 1.0
    assert len(dp.drain_outcomes()) == SAMPLES_PER_BACKEND, "500 SYNs in one report: a bounded sample is checked"
    assert len(dp.netfilter.called("flow_states")) == 1, "all of them in one conntrack round trip"
    for report in range(6):       # reports come faster than the reply window: the agent bounds the checks
        for p in range(100):
            dp.workers.mark_for(syn(sport=2000 + 100 * report + p))
        dp.workers.flush()
    clock.now = 2.0
    assert len(dp.drain_outcomes()) == CHECKS_PER_BACKEND
    dp.workers.mark_for(syn(sport=9000))
    dp.workers.flush()
    clock.now = 3.0
    assert len(dp.drain_outcomes()) == 1, "sampled again in the next report"


async def test_p2c_without_a_lookup_table_counts_open_flows(tmp_path):
    dp = await started(tmp_path, table(lookup=False))
    first = Counter(pick(dp, syn(sport=p)) for p in range(300))
    assert max(first.values()) - min(first.values()) <= 2
    # every flow to one backend ends: it is now the least loaded and takes the next ones
    done = [Flow("tcp", "10.0.9.2", p, "11.0.0.1", 80) for p in range(300) if pick(dp, syn(sport=p)) == BACKENDS[0]]
    dp.workers.balancer.flows_closed(done)
    nxt = Counter(pick(dp, syn(sport=p)) for p in range(1000, 1060))
    assert nxt[BACKENDS[0]] >= 30, nxt     # chosen whenever sampled (2 in 3): well above a third


async def test_a_restarted_agent_adopts_the_table_and_the_backend_ids(tmp_path):
    first = await started(tmp_path)
    marks = [first.workers.mark_for(syn(sport=p)) for p in range(50)]
    second = dataplane(tmp_path, netfilter=first.netfilter)
    assert second.current() == table()
    await second.start()
    assert [second.workers.mark_for(syn(sport=p)) for p in range(50)] == marks, "serves before the first view"
    since = len(first.netfilter.calls)
    second.apply(table())
    assert changes_asked(first.netfilter, since) == [], "adopted: nothing to write"
    (tmp_path / "state.json").write_text("{not json")
    third = dataplane(tmp_path, netfilter=FakeNetfilter(members={WEB}))
    assert third.current() == {WEB: VipEntry(WEB, ())}
    first.close(keep_kernel_state=False)
    assert first.netfilter.base is None and not first.netfilter.nat_map and not (tmp_path / "state.json").exists()
    first.close(keep_kernel_state=False)     # again: nothing to do


async def test_a_lost_nat_map_entry_is_drift_and_a_reapply_restores_it(tmp_path):
    dp = await started(tmp_path)
    lost = next(i for i, b in dp.netfilter.nat_map.items() if b == BACKENDS[1])
    del dp.netfilter.nat_map[lost]
    assert dp.current()[WEB] == VipEntry(WEB, ()), "the VIP shows as drifted"
    dp.apply(table())
    assert BACKENDS[1] in dp.netfilter.nat_map.values() and dp.current() == table()
    assert BACKENDS[1] in {pick(dp, syn(sport=p)) for p in range(100)}, "workers have the new id"


async def test_workers_get_only_what_changed(tmp_path):
    dp = await started(tmp_path)
    updates = dp.workers.updates
    dp.apply(table())
    assert dp.workers.updates == updates
    dp.apply({**table(), WEB: VipEntry(WEB, BACKENDS[:2], maglev_table(BACKENDS[:2]))})
    assert dp.workers.updates == updates + 1
    assert {pick(dp, syn(sport=p)) for p in range(200)} == set(BACKENDS[:2])


def test_counts_of_a_replaced_vip_are_not_lost():
    balancer = FlowBalancer()
    vip = WorkerVip(WEB, BACKENDS[:1], (1,), (0,), lookup_bytes(maglev_table(BACKENDS[:1])))
    balancer.update({WEB: vip})
    balancer.mark_for(syn(sport=1))
    balancer.update({WEB: vip._replace(ids=(2,))})
    balancer.mark_for(syn(sport=2))
    report = balancer.take_report()
    assert report.connections == {(WEB, BACKENDS[0]): 2} and len(report.samples) == 2
    assert not balancer.take_report()


def test_packets_of_a_flow_queued_before_its_first_verdict_count_once():
    clock = Clock()
    balancer = FlowBalancer(rng=random.Random(3), clock=clock)
    vip = WorkerVip(WEB, BACKENDS, (1, 2, 3), (0, 0, 0))     # p2c: a second choice could differ
    balancer.update({WEB: vip})
    marks = {balancer.mark_for(syn(sport=7)) for _ in range(20)}
    assert len(marks) == 1
    udp = bytes(IP(src="10.0.9.2", dst="11.0.0.1") / UDP(sport=7, dport=80))
    assert balancer.mark_for(udp) == 0, "the same ports over UDP are another flow (and no VIP)"
    (mark,) = marks
    assert balancer.take_report().connections == {(WEB, BACKENDS[(mark & 0x7FFFFF) - 1]): 1}
    clock.now = 1.5
    balancer.take_report()
    assert balancer.mark_for(syn(sport=7)) in marks, "still remembered a generation later"
    clock.now = 3.0
    balancer.take_report()
    balancer.mark_for(syn(sport=7))
    assert sum(balancer.take_report().connections.values()) == 1, "forgotten after two: a new flow"


def test_frames_survive_being_split_anywhere():
    data = frame({"a": 1}) + frame({"b": list(range(1000))}) + frame({"c": b"x" * 70000})
    for cut in (1, 3, 7, 4096):
        reader, got = FrameReader(), []
        for at in range(0, len(data), cut):
            got += reader.feed(data[at:at + cut])
        assert got == [{"a": 1}, {"b": list(range(1000))}, {"c": b"x" * 70000}]


@pytest.mark.parametrize("bad", [b"", b"\x45" * 19, bytes(IP(dst="11.0.0.1", ihl=15) / b"xx")])
def test_truncated_headers_get_no_mark(bad):
    balancer = FlowBalancer()
    assert balancer.mark_for(bad) == 0


async def test_an_unwritable_state_file_does_not_keep_the_table_from_the_workers(tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    dp = NfqueueDataplane(netfilter=FakeNetfilter(), workers=InlineWorkers(rng=random.Random(1)),
                          state_path=tmp_path / "not-a-dir" / "state.json")
    await dp.start()
    assert dp.apply(table()).programmed == {WEB, DNS}
    assert pick(dp, syn()) in BACKENDS, "the workers have the table"


@pytest.mark.parametrize("text", ["[]", '{"version": 1, "vips": null}', '{"version": 2, "vips": []}', '"x"'])
def test_a_state_file_of_another_shape_is_ignored(tmp_path, text):
    (tmp_path / "state.json").write_text(text)
    assert dataplane(tmp_path).current() == {}


def test_bad_entries_of_the_state_file_are_skipped_the_rest_adopted(tmp_path):
    good = {"address": "11.0.0.1", "port": 80, "protocol": "tcp", "backends": [["10.0.1.2", 8080]],
            "draining": [], "table_size": 1021}
    bad = [{**good, "protocol": "sctp"}, {**good, "port": "eighty"}, {**good, "backends": [["10.0.1.2"]]},
           {**good, "table_size": 10 ** 9}, {"address": "11.0.0.2"}]
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "vips": [*bad, good]}))
    dp = dataplane(tmp_path, netfilter=FakeNetfilter(members={WEB}))
    assert dp.current() == {WEB: VipEntry(WEB, ())}, "adopted; its backend has no id in this (fake) kernel yet"
    assert dp._table[WEB].backends == (Backend("10.0.1.2", 8080),)


async def test_a_backend_back_within_the_grace_keeps_its_id(tmp_path):
    clock = Clock()
    dp = await started(tmp_path, clock=clock)
    before = dict(dp.netfilter.nat_map)
    dp.apply({WEB: VipEntry(WEB, BACKENDS[:2], maglev_table(BACKENDS[:2]))})
    clock.now = 1.0
    dp.apply(table())
    clock.now = 10.0
    dp.maintain()
    assert dp.netfilter.nat_map == before


@pytest.mark.parametrize("lose", ["rules", "routes"])
async def test_lost_rules_or_routes_are_drift_and_a_reapply_restores_them(tmp_path, lose):
    dp = await started(tmp_path)
    if lose == "rules":
        dp.netfilter.base = None            # e.g. a firewall reload flushed our chains
    else:
        dp.netfilter.routes = set()
    assert dp.current() == {WEB: VipEntry(WEB, ()), DNS: VipEntry(DNS, ())}
    dp.apply(table())
    assert dp.current() == table() and dp.netfilter.base is not None and dp.netfilter.routes == {"11.0.0.0/8"}


def test_p2c_follows_a_bounded_number_of_flows(monkeypatch):
    import minuteman.flow_balancer as fb

    monkeypatch.setattr(fb, "MAX_OPEN_FLOWS", 100)
    balancer = FlowBalancer(rng=random.Random(2))
    balancer.update({WEB: WorkerVip(WEB, BACKENDS, (1, 2, 3), (0, 0, 0))})
    for port in range(1000, 1500):
        balancer.mark_for(syn(sport=port))
    assert len(balancer._flows_to) == 100
    assert sum(balancer._open(b) for b in BACKENDS) == 100, "flows taken as ended no longer count as open"
