"""The layered dataplane publishes a VIP only when both layers hold it."""

from minuteman.dataplane import (
    Backend,
    CountsOutcomes,
    Maintained,
    ReportsOutcomes,
    Startable,
    VipEntry,
    VipKey,
)
from minuteman.dataplane_fake import FakeDataplane
from minuteman.layered import LayeredDataplane

KEY = VipKey("11.0.0.1", 80, "tcp")
OTHER = VipKey("11.0.0.2", 80, "tcp")
ENTRY = VipEntry(KEY, (Backend("9.0.0.2", 80),), (0,))
ENTRY2 = VipEntry(OTHER, (Backend("9.0.0.3", 80),), (0,))


def test_programmed_only_where_both_layers_succeed():
    socket_lb, packet_lb = FakeDataplane(), FakeDataplane()
    packet_lb.fail.add(OTHER)
    layered = LayeredDataplane(socket_lb, packet_lb)
    result = layered.apply({KEY: ENTRY, OTHER: ENTRY2})
    assert result.programmed == {KEY}
    assert OTHER in result.errors
    assert layered.current() == {KEY: ENTRY}
    assert layered.name == "fake+fake"


def test_counts_add_up_and_close_reaches_both():
    socket_lb, packet_lb = FakeDataplane(), FakeDataplane()
    backend = Backend("9.0.0.2", 80)
    socket_lb.counts[(KEY, backend)] = 3
    packet_lb.counts[(KEY, backend)] = 2
    layered = LayeredDataplane(socket_lb, packet_lb)
    layered.apply({KEY: ENTRY})
    assert layered.connection_counts() == {(KEY, backend): 5}
    layered.close(keep_kernel_state=False)
    assert socket_lb.table == {} and packet_lb.table == {}


def test_a_layer_that_fails_outright_does_not_keep_the_other_from_its_table():
    socket_lb, packet_lb = FakeDataplane(), FakeDataplane()

    def broken(table):
        raise OSError("map update failed")

    socket_lb.apply = broken
    result = LayeredDataplane(socket_lb, packet_lb).apply({KEY: ENTRY})
    assert result.programmed == set() and result.errors == {KEY: "fake: map update failed"}
    assert packet_lb.table == {KEY: ENTRY}, "NFQUEUE still serves it"


class PacketLayer(FakeDataplane):
    """Has NFQUEUE's abilities: started, maintained, reports outcomes one by one."""

    def __init__(self):
        super().__init__()
        self.outcomes = [(Backend("9.0.0.2", 80), False)]

    async def start(self):
        self.calls.append(("start", ()))

    def maintain(self):
        self.calls.append(("maintain", ()))

    def drain_outcomes(self):
        out, self.outcomes = self.outcomes, []
        return out


class SocketLayer(FakeDataplane):
    """Has the eBPF dataplane's ability: counts outcomes per backend."""

    def outcome_totals(self):
        return {Backend("9.0.0.2", 80): (4, 1)}


async def test_each_ability_reaches_the_layers_that_have_it():
    socket_lb, packet_lb = SocketLayer(), PacketLayer()
    layered = LayeredDataplane(socket_lb, packet_lb)
    assert isinstance(layered, Startable) and isinstance(layered, Maintained)
    await layered.start()
    layered.maintain()
    assert packet_lb.calls == [("start", ()), ("maintain", ())] and socket_lb.calls == []
    assert layered.drain_outcomes() == [(Backend("9.0.0.2", 80), False)]
    assert layered.outcome_totals() == {Backend("9.0.0.2", 80): (4, 1)}
    assert not isinstance(FakeDataplane(), Startable | Maintained | ReportsOutcomes | CountsOutcomes)
