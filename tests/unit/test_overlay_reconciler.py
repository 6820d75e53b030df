"""The overlay reconciler against the fake netlink: idempotent, adopts, repairs, removes leavers."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from overlay.desired import desired_state
from overlay.metrics import OverlayMetrics
from overlay.netlink import FdbEntry, Neighbour, Route, Rule
from overlay.netlink_fake import FakeNetlink
from overlay.reconciler import OverlayReconciler
from tests.unit.test_overlay_desired import make_view

UNDERLAY = "198.18.7.11"


@pytest.fixture
def metrics() -> OverlayMetrics:
    return OverlayMetrics.for_registry(CollectorRegistry())


def desired(n: int = 3, view=None):
    return desired_state(view or make_view(n), "agent-1", UNDERLAY, 1500)


def sample(metrics: OverlayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def test_first_pass_programs_everything(metrics: OverlayMetrics) -> None:
    kernel = FakeNetlink()
    result = OverlayReconciler(kernel, metrics).reconcile(desired())
    assert result.ok and result.peers == 2 and result.repairs == 0
    assert set(kernel.links) == {"vtep1024", "m-dcos", "d-dcos"}
    assert kernel.neighbours == {"44.128.0.2": "70:b3:d5:80:00:02", "44.128.0.3": "70:b3:d5:80:00:03"}
    assert kernel.routes[("9.0.1.0/24", 254)] == "44.128.0.2"
    assert kernel.routes[("198.18.7.13/32", 42)] == "44.128.0.3"
    assert kernel.rules == {Rule("9.0.0.0/8", 42, 32000)}
    assert kernel.ip_forwarding
    assert sample(metrics, "navstar_overlay_peers_programmed") == 2
    assert sample(metrics, "navstar_overlay_reconcile_runs_total", result="ok") == 1


def test_second_pass_changes_nothing(metrics: OverlayMetrics) -> None:
    kernel = FakeNetlink()
    reconciler = OverlayReconciler(kernel, metrics)
    reconciler.reconcile(desired())
    mark = len(kernel.calls)
    result = reconciler.reconcile(desired())
    assert result.ok and result.changes == 0
    assert kernel.called(mark) == ["read"]        # asked for nothing, not "asked for what was there"


def test_adopts_what_a_previous_run_left(metrics: OverlayMetrics) -> None:
    kernel = FakeNetlink()
    OverlayReconciler(kernel, metrics).reconcile(desired())
    mark = len(kernel.calls)
    # a new process, a new reconciler: nothing rebuilt
    result = OverlayReconciler(kernel, metrics).reconcile(desired())
    assert result.changes == 0 and kernel.called(mark) == ["read"]


def test_repairs_drift_and_counts_it(metrics: OverlayMetrics) -> None:
    kernel = FakeNetlink()
    reconciler = OverlayReconciler(kernel, metrics)
    reconciler.reconcile(desired())
    del kernel.routes[("9.0.2.0/24", 254)]
    del kernel.neighbours["44.128.0.2"]
    kernel.fdb.discard(FdbEntry("70:b3:d5:80:00:03", "198.18.7.13"))
    kernel.routes[("198.18.7.12/32", 42)] = "44.128.0.9"        # altered by hand
    kernel.links["m-dcos"] = replace(kernel.links["m-dcos"], mtu=9000)
    mark = len(kernel.calls)
    result = reconciler.reconcile(desired())
    assert result.ok and result.repairs == 5
    asked = kernel.calls[mark:]
    assert [c.method for c in asked] == ["read", "update_link", "apply"]
    assert asked[1].args[0].name == "m-dcos"
    assert sorted((c.action, type(c.entry).__name__) for c in asked[2].args[1]) == [
        ("add", "FdbEntry"), ("add", "Neighbour"), ("add", "Route"), ("add", "Route")]
    assert kernel.routes[("9.0.2.0/24", 254)] == "44.128.0.3"
    assert kernel.routes[("198.18.7.12/32", 42)] == "44.128.0.2"
    assert kernel.neighbours["44.128.0.2"] == "70:b3:d5:80:00:02"
    assert FdbEntry("70:b3:d5:80:00:03", "198.18.7.13") in kernel.fdb
    assert kernel.links["m-dcos"].mtu == 1420
    assert sample(metrics, "navstar_overlay_repairs_total", object="route") == 2


def test_leavers_are_removed_and_strangers_on_our_device_too(metrics: OverlayMetrics) -> None:
    kernel = FakeNetlink()
    reconciler = OverlayReconciler(kernel, metrics)
    view = make_view(3)
    reconciler.reconcile(desired(view=view))
    kernel.neighbours["44.128.9.9"] = "70:b3:d5:80:09:09"        # left by some earlier run
    view.agents = view.agents[:2]
    result = reconciler.reconcile(desired(view=view))
    assert result.ok and result.peers == 1
    assert set(kernel.neighbours) == {"44.128.0.2"}
    assert kernel.fdb == {FdbEntry("70:b3:d5:80:00:02", "198.18.7.12")}
    assert set(kernel.routes) == {("9.0.1.0/24", 254), ("198.18.7.12/32", 42)}


def test_peer_moving_underlay_ip_is_updated_in_place(metrics: OverlayMetrics) -> None:
    kernel = FakeNetlink()
    reconciler = OverlayReconciler(kernel, metrics)
    view = make_view(2)
    reconciler.reconcile(desired(view=view))
    view.agents[1].ip = "198.18.7.99"
    assert reconciler.reconcile(desired(view=view)).ok
    assert kernel.fdb == {FdbEntry("70:b3:d5:80:00:02", "198.18.7.99")}
    assert set(kernel.routes) == {("9.0.1.0/24", 254), ("198.18.7.99/32", 42)}


def test_vxlan_with_wrong_identity_is_recreated(metrics: OverlayMetrics) -> None:
    kernel = FakeNetlink()
    reconciler = OverlayReconciler(kernel, metrics)
    reconciler.reconcile(desired())
    kernel.links["vtep1024"] = replace(kernel.links["vtep1024"], vni=7)
    result = reconciler.reconcile(desired())
    assert result.ok and kernel.links["vtep1024"].vni == 1024
    assert len(kernel.neighbours) == 2         # entries went with the old device and came back


def test_failures_are_recorded_not_raised_and_the_rest_goes_in(metrics: OverlayMetrics) -> None:
    kernel = FakeNetlink()
    kernel.fail.add(Neighbour("44.128.0.2", "70:b3:d5:80:00:02"))
    result = OverlayReconciler(kernel, metrics).reconcile(desired())
    assert not result.ok and "injected failure" in result.errors[0]
    assert result.peers == 1
    assert "44.128.0.3" in kernel.neighbours and ("9.0.1.0/24", 254) in kernel.routes
    assert sample(metrics, "navstar_overlay_errors_total", stage="neighbour") == 1
    assert sample(metrics, "navstar_overlay_reconcile_runs_total", result="error") == 1
    kernel.fail.clear()
    assert OverlayReconciler(kernel, metrics).reconcile(desired()).ok


def test_vtep_that_cannot_be_made_stops_peer_programming(metrics: OverlayMetrics) -> None:
    kernel = FakeNetlink()
    kernel.fail_links.add("vtep1024")
    result = OverlayReconciler(kernel, metrics).reconcile(desired())
    assert not result.ok and any("vtep1024" in e for e in result.errors)
    assert not kernel.neighbours and set(kernel.links) == {"m-dcos", "d-dcos"}


def test_route_key_replace_keeps_the_new_entry(metrics: OverlayMetrics) -> None:
    """A changed gateway is an add (replace) only: a delete of the old one would hit the new one."""
    kernel = FakeNetlink()
    reconciler = OverlayReconciler(kernel, metrics)
    reconciler.reconcile(desired())
    kernel.routes[("9.0.1.0/24", 254)] = "44.128.0.77"
    reconciler.reconcile(desired())
    assert kernel.routes[("9.0.1.0/24", 254)] == "44.128.0.2"
    assert Route("9.0.1.0/24", "44.128.0.2", 254) in kernel.read("vtep1024", ()).routes
