"""The NFQUEUE dataplane's decisions, above the netfilter seam (FakeNetfilter); packets from scapy."""

import errno
import random
from collections import Counter

from scapy.layers.inet import IP, TCP, UDP

from minuteman.dataplane import Backend, VipEntry, VipKey
from minuteman.maglev import maglev_table
from minuteman.netfilter import FakeNetfilter, Flow, FlowState, RouteInfo
from minuteman.nfqueue import CHECKS_PER_BACKEND, NfqueueDataplane

WEB = VipKey("11.0.0.1", 80, "tcp")
DNS = VipKey("11.0.0.1", 53, "udp")
BACKENDS = (Backend("10.0.1.2", 8080), Backend("10.0.2.2", 8080), Backend("10.0.3.2", 8080))


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def dataplane(tmp_path, **kw):
    return NfqueueDataplane(netfilter=FakeNetfilter(), state_path=tmp_path / "state.json", **kw)


def table(lookup=True):
    return {WEB: VipEntry(WEB, BACKENDS, maglev_table(BACKENDS) if lookup else ()),
            DNS: VipEntry(DNS, BACKENDS[:1], maglev_table(BACKENDS[:1]))}


def syn(src="10.0.9.2", sport=40000, dst="11.0.0.1", dport=80):
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))


def test_apply_is_idempotent_and_programs_sets_and_routes(tmp_path):
    dp = dataplane(tmp_path)
    result = dp.apply(table())
    assert result.programmed == {WEB, DNS} and not result.errors
    nf = dp.netfilter
    assert nf.base and nf.members == {WEB, DNS} and nf.routes == {"11.0.0.0/8"}
    writes = nf.writes
    dp.apply(table())
    assert nf.writes == writes
    assert dp.current() == table()
    removed = dp.apply({WEB: table()[WEB]})
    assert removed.removed == {DNS} and nf.members == {WEB}


def test_first_packet_gets_a_maglev_backend_and_a_dnat_flow(tmp_path):
    dp = dataplane(tmp_path)
    dp.apply(table())
    picked = Counter(dp.handle(syn(sport=p)) for p in range(30000, 33000))
    assert set(picked) == set(BACKENDS) and min(picked.values()) > 850
    flow = Flow("tcp", "10.0.9.2", 30000, "11.0.0.1", 80)
    backend, snat = dp.netfilter.flows[flow]
    assert snat is None and dp.handle(syn(sport=30000)) == backend, "a retransmitted SYN keeps its backend"
    assert sum(dp.connection_counts().values()) == 3000


def test_a_new_syn_replaces_a_lingering_entry_of_the_same_5_tuple(tmp_path):
    dp = dataplane(tmp_path)
    dp.apply(table())
    dp.handle(syn(sport=5555))
    flow = Flow("tcp", "10.0.9.2", 5555, "11.0.0.1", 80)
    dp.netfilter.states[flow] = FlowState(True, True, 7)        # TIME_WAIT of the previous connection
    dp.handle(syn(sport=5555))
    assert flow in dp.netfilter.flows and flow not in dp.netfilter.states
    assert sum(dp.connection_counts().values()) == 2
    dp.handle(syn(sport=5555))                                   # a retransmission: same entry, no count
    assert sum(dp.connection_counts().values()) == 2


def test_unknown_vip_short_or_odd_packets_get_no_backend(tmp_path):
    dp = dataplane(tmp_path)
    dp.apply(table())
    assert dp.handle(syn(dport=81)) is None
    assert dp.handle(b"\x45\x00") is None
    assert dp.handle(bytes(IP(src="1.1.1.1", dst="11.0.0.1", proto=47) / b"gre!")) is None
    dp.apply({WEB: VipEntry(WEB, ())})
    assert dp.handle(syn()) is None and dp.netfilter.flows == {}


def test_hairpin_and_vip_sourced_flows_are_source_natted(tmp_path):
    dp = dataplane(tmp_path)
    dp.apply({WEB: VipEntry(WEB, BACKENDS[:1], maglev_table(BACKENDS[:1]))})
    dp.netfilter.neighbours["10.0.1.2"] = RouteInfo(oif=7, src="10.0.1.1")
    dp.handle(syn(src="10.0.1.2", sport=1111), indev=7)      # a backend calling its own VIP
    dp.handle(syn(src="10.0.9.2", sport=2222), indev=9)      # another link: replies come back anyway
    dp.handle(syn(src="11.0.0.1", sport=3333), indev=0)      # local socket with the VIP as source
    dp.handle(syn(src="10.0.0.1", sport=4444), indev=0)      # local socket, node address
    snat = {f.sport: s for f, (_, s) in dp.netfilter.flows.items()}
    assert snat == {1111: "10.0.1.1", 2222: None, 3333: "10.0.1.1", 4444: None}


def test_udp_flows_are_remembered_so_later_datagrams_skip_the_queue(tmp_path):
    dp = dataplane(tmp_path)
    dp.apply(table())
    datagram = bytes(IP(src="10.0.9.2", dst="11.0.0.1") / UDP(sport=5000, dport=53) / b"q")
    assert dp.handle(datagram) == BACKENDS[0]
    assert dp.netfilter.udp_flows == {Flow("udp", "10.0.9.2", 5000, "11.0.0.1", 53)}


def test_health_outcomes_after_the_reply_window(tmp_path):
    clock = Clock()
    dp = dataplane(tmp_path, clock=clock)
    dp.apply({WEB: VipEntry(WEB, BACKENDS[:1], maglev_table(BACKENDS[:1]))})
    for sport, state in ((1, FlowState(True, True, 3)), (2, FlowState(False, False, 1)),
                         (3, FlowState(True, False, 8)), (4, None)):
        dp.handle(syn(sport=sport))
        flow = Flow("tcp", "10.0.9.2", sport, "11.0.0.1", 80)
        if state:
            dp.netfilter.states[flow] = state
        else:
            dp.netfilter.flows.pop(flow)      # conntrack dropped it (only reply was a reset)
    assert dp.drain_outcomes() == []
    clock.now = 0.5
    assert dp.drain_outcomes() == [(BACKENDS[0], True), (BACKENDS[0], False), (BACKENDS[0], False),
                                   (BACKENDS[0], False)]


def test_p2c_without_a_lookup_table_counts_open_flows(tmp_path):
    dp = dataplane(tmp_path, rng=random.Random(1))
    dp.apply(table(lookup=False))
    first = [dp.handle(syn(sport=p)) for p in range(300)]
    counts = Counter(first)
    assert max(counts.values()) - min(counts.values()) <= 2
    # every flow to one backend ends: it is now the least loaded and takes the next ones
    done = [f for f, (b, _) in dp.netfilter.flows.items() if b == BACKENDS[0]]
    dp.netfilter.closed.extend(done)
    nxt = Counter(dp.handle(syn(sport=p)) for p in range(1000, 1060))
    assert nxt[BACKENDS[0]] >= 30, nxt     # chosen whenever sampled (2 in 3): well above a third


def test_state_file_lets_a_restarted_agent_adopt_the_table(tmp_path):
    first = dataplane(tmp_path)
    first.apply(table())
    second = NfqueueDataplane(netfilter=first.netfilter, state_path=tmp_path / "state.json")
    assert second.current() == table()
    assert second.handle(syn()) is not None, "serves before the first view arrives"
    (tmp_path / "state.json").write_text("{not json")
    third = NfqueueDataplane(netfilter=FakeNetfilter(members={WEB}), state_path=tmp_path / "state.json")
    assert third.current() == {WEB: VipEntry(WEB, ())}
    first.close(keep_kernel_state=False)
    assert not first.netfilter.base and not (tmp_path / "state.json").exists()


def test_a_batch_of_first_packets_costs_one_conntrack_round_trip(tmp_path):
    dp = dataplane(tmp_path)
    dp.apply(table())
    packets = [(syn(sport=p), 0) for p in range(7000, 7040)]
    packets.insert(5, (syn(dport=81), 0))                               # not a VIP: no entry, no backend
    packets.insert(9, (bytes(IP(src="10.0.9.2", dst="11.0.0.1") / UDP(sport=9, dport=53)), 0))
    before = dp.netfilter.round_trips
    chosen = dp.handle_batch(packets)
    assert dp.netfilter.round_trips == before + 1
    assert chosen[5] is None and chosen[9] == BACKENDS[0] and all(chosen[i] for i in range(len(chosen)) if i != 5)
    assert len(dp.netfilter.flows) == 41 and sum(dp.connection_counts().values()) == 41
    # the same flow as picked one at a time: the batch changes the cost, not the choice
    one = dataplane(tmp_path / "one")
    one.apply(table())
    assert [one.handle(payload) for payload, _ in packets] == chosen


def test_health_checks_are_bounded_per_backend(tmp_path):
    clock = Clock()
    dp = dataplane(tmp_path, clock=clock)
    dp.apply({WEB: VipEntry(WEB, BACKENDS[:1], maglev_table(BACKENDS[:1]))})
    dp.handle_batch([(syn(sport=p), 0) for p in range(1000, 1500)])
    clock.now = 1.0
    outcomes = dp.drain_outcomes()
    assert len(outcomes) == CHECKS_PER_BACKEND, "500 SYNs in one reply window: a bounded sample is checked"
    assert dp.netfilter.round_trips == 2, "one round trip to create, one to check"
    dp.handle(syn(sport=2000))
    clock.now = 2.0
    assert len(dp.drain_outcomes()) == 1, "checked again once the window has passed"


def test_a_refused_entry_gives_no_backend_and_others_are_kept(tmp_path):
    class Refusing(FakeNetfilter):
        def create_flows(self, requests):
            codes = super().create_flows(requests)
            return [errno.ENOMEM if r.flow.sport == 2 else code for r, code in zip(requests, codes, strict=True)]

    dp = NfqueueDataplane(netfilter=Refusing(), state_path=tmp_path / "state.json")
    dp.apply(table())
    chosen = dp.handle_batch([(syn(sport=p), 0) for p in (1, 2, 3)])
    assert chosen[1] is None and chosen[0] and chosen[2]
    assert sum(dp.connection_counts().values()) == 2


def test_rendered_conntrack_message_is_what_pyroute2_encodes():
    """The template path (encode once, then join pieces) must give pyroute2's own bytes."""
    import socket

    from pyroute2.netlink import NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
    from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
    from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_NEW, nfct_msg

    from minuteman.netfilter import FLOW_TIMEOUT, _flow_values, _ip, _nat, _port, _Templates, _tuple

    flow, backend = Flow("tcp", "10.0.9.2", 40001, "11.0.0.7", 80), Backend("10.0.3.2", 8080)
    rendered = _Templates().create("tcp", True).render(77, {**_flow_values(flow), "backend": _ip(backend.ip),
                                                            "bport": _port(backend.port), "snat": _ip("10.0.3.1")})
    msg = nfct_msg.create_from(tuple_orig=_tuple(flow), tuple_reply=_tuple(flow, reverse=True), timeout=FLOW_TIMEOUT,
                               nat_dst=_nat(backend.ip, backend.port), nat_src=_nat("10.0.3.1"))
    msg["nfgen_family"] = socket.AF_INET
    msg["header"]["type"] = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
    msg["header"]["sequence_number"] = 77
    msg.encode()
    assert rendered == bytes(msg.data)


def test_lingering_entries_of_a_batch_are_replaced_together(tmp_path):
    dp = dataplane(tmp_path)
    dp.apply(table())
    ports = (41, 42, 43, 44)
    dp.handle_batch([(syn(sport=p), 0) for p in ports])
    for p in ports[:3]:      # TIME_WAIT of earlier connections; port 44's entry is still opening
        dp.netfilter.states[Flow("tcp", "10.0.9.2", p, "11.0.0.1", 80)] = FlowState(True, True, 7)
    before = dp.netfilter.round_trips
    dp.handle_batch([(syn(sport=p), 0) for p in ports])
    assert dp.netfilter.round_trips - before == 3, "create, read the states, replace: once for the batch"
    assert sum(dp.connection_counts().values()) == 4 + 3, "the retransmitted SYN is not a new connection"
