"""The netlink message encoders: the template fast path must produce pyroute2's exact bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.netlink import Change, FdbEntry, Neighbour, Route, Rule
from overlay.netlink_kernel import ChangeEncoder, _encode

ipv4 = st.ip_addresses(v=4).map(str)
mac = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))


@st.composite
def entries(draw):
    kind = draw(st.sampled_from(["neigh", "fdb", "route", "rule"]))
    if kind == "neigh":
        return Neighbour(draw(ipv4), draw(mac))
    if kind == "fdb":
        return FdbEntry(draw(mac), draw(ipv4))
    if kind == "route":
        import ipaddress
        prefix = draw(st.integers(0, 32))
        network = ipaddress.IPv4Network(f"{draw(ipv4)}/{prefix}", strict=False)
        return Route(str(network), draw(ipv4), draw(st.sampled_from([254, 42, 1000])))
    return Rule("9.0.0.0/8", 42, draw(st.integers(1, 32765)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(entries(), st.sampled_from(["add", "delete"]), st.integers(1, 5000),
                          st.integers(1, 2**31 - 1)), min_size=1, max_size=20))
def test_template_bytes_equal_pyroute2_bytes(items) -> None:
    encoder = ChangeEncoder()        # shared across items: prototypes are reused
    for entry, action, index, seq in items:
        change = Change(action, entry)
        assert encoder.encode(change, index, seq) == _encode(change, index, seq)
