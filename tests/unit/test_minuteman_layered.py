"""The layered dataplane publishes a VIP only when both layers hold it."""

from minuteman.dataplane import Backend, FakeDataplane, VipEntry, VipKey
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
