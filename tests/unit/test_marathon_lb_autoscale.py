"""marathon-lb-autoscale: the pure decision, the rate meter over HAProxy's CSV, and the loop
against a fake stats source and a fake Marathon (over ASGI)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from marathon_lb.autoscale import (
    Autoscaler,
    Policy,
    RateMeter,
    backend_counters,
    decide,
    parse_backend,
    target_instances,
)
from marathon_lb.fake_marathon import FakeMarathon
from marathon_lb.marathon import MarathonClient

HEADER = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,rate,req_tot,addr\n"


def csv(**req_tot: int) -> str:
    rows = [f"{name},FRONTEND,,,0,0,0,{total},0,0,0,{total},\n{name},srv1,0,0,0,0,,{total},0,0,0,,10.0.0.1:31000\n"
            f"{name},BACKEND,0,0,0,0,0,{total},0,0,0,{total},\n" for name, total in req_tot.items()]
    return HEADER + "".join(rows)


def test_backend_names_map_to_app_ids() -> None:
    assert parse_backend("nginx_10000") == "/nginx"
    assert parse_backend("prod_web_10001") == "/prod/web"
    assert parse_backend("nginx") is None and parse_backend("nginx_99999") is None


def test_policy_rejects_bad_values_naming_the_option() -> None:
    for kwargs, option in (({"target_rps": 0}, "--target-rps"), ({"samples": 0}, "--samples"),
                           ({"tolerance": 1.5}, "--tolerance"), ({"min_instances": 3, "max_instances": 2},
                                                                 "--max-instances"), ({"cooldown": -1}, "--cooldown")):
        with pytest.raises(ValueError, match=option):
            Policy(**kwargs)


def test_target_is_ceil_of_rate_over_target_within_min_and_max() -> None:
    policy = Policy(target_rps=100, min_instances=1, max_instances=8)
    assert [target_instances(r, policy) for r in (0, 50, 100, 101, 450, 5000)] == [1, 1, 1, 2, 5, 8]


def test_decide_waits_for_samples_holds_within_tolerance_and_cools_down() -> None:
    policy = Policy(target_rps=100, samples=3, cooldown=2, tolerance=0.1, min_instances=1, max_instances=10)
    assert decide(policy, [400, 400], 1, 0).target is None                      # 2 of 3 samples
    assert decide(policy, [400, 400, 400], 1, 0).target == 4
    assert decide(policy, [400, 400, 400], 1, 1).reason.startswith("cooling down")
    assert decide(policy, [400, 400, 400], 4, 0).reason == "on target"
    # 5 instances at 420 rps: 84 per instance, outside 100 ± 10 → scale down to 5? ceil(4.2) = 5: on target.
    assert decide(policy, [420] * 3, 5, 0).reason == "on target"
    # 4 instances at 430 rps: 107.5 per instance, within tolerance → hold although the target is 5.
    assert decide(policy, [430] * 3, 4, 0).reason == "within tolerance"
    assert decide(policy, [0] * 3, 6, 0).target == 1                            # load gone: back to the minimum
    assert decide(Policy(target_rps=100, samples=1, min_instances=2), [0], 1, 0).target == 2    # below min


def test_counters_come_from_backend_rows_and_rates_from_their_deltas() -> None:
    assert backend_counters(csv(nginx_10000=500, other_10001=7)) == {"nginx_10000": 500.0, "other_10001": 7.0}
    meter = RateMeter()
    assert meter.rates("lb", {"nginx_10000": 100}, 10.0) == {}
    assert meter.rates("lb", {"nginx_10000": 600}, 12.0) == {"nginx_10000": 250.0}
    assert meter.rates("lb", {"nginx_10000": 40}, 14.0) == {"nginx_10000": 20.0}    # a reload reset the counter


class Load:
    """A stats source whose request counter grows at ``rps`` per second of a fake clock."""

    def __init__(self, rps: float) -> None:
        self.rps = rps
        self.now = 0.0
        self.total = 0.0

    def clock(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.total += self.rps * seconds

    async def __call__(self) -> dict[str, str]:
        return {"http://lb:9090": csv(nginx_10000=int(self.total))}


def scaler(load: Load, fake: FakeMarathon, policy: Policy) -> Autoscaler:
    client = MarathonClient("http://marathon", transport=httpx.ASGITransport(fake.app()))
    return Autoscaler(client, load, ["nginx_10000"], policy, clock=load.clock, report=lambda _line: None)


def nginx(instances: int) -> dict[str, Any]:
    return {"id": "/nginx", "instances": instances, "labels": {"HAPROXY_GROUP": "external"}}


async def test_loop_scales_up_under_load_then_back_to_the_minimum() -> None:
    fake = FakeMarathon([nginx(1)])
    load = Load(rps=450)
    auto = scaler(load, fake, Policy(target_rps=100, samples=3, cooldown=2, tolerance=0.1, max_instances=8))
    for _ in range(5):
        await auto.step()
        load.advance(1.0)
    assert fake.puts == [("/nginx", 5)]
    load.rps = 0
    for _ in range(8):
        await auto.step()
        load.advance(1.0)
    assert fake.puts[-1] == ("/nginx", 1)
    assert fake.apps["/nginx"]["instances"] == 1


async def test_cooldown_counts_intervals_after_a_scale() -> None:
    fake = FakeMarathon([nginx(1)])
    load = Load(rps=300)
    auto = scaler(load, fake, Policy(target_rps=100, samples=1, cooldown=3, tolerance=0.0))
    await auto.step()
    load.advance(1.0)
    await auto.step()
    assert fake.puts == [("/nginx", 3)]
    load.rps = 900
    reasons = []
    for _ in range(4):
        load.advance(1.0)
        reasons.append((await auto.step())["/nginx"].reason)
    assert [r.split(" (")[0] for r in reasons[:3]] == ["cooling down"] * 3
    assert fake.puts == [("/nginx", 3), ("/nginx", 9)]


async def test_an_unknown_app_or_unreadable_stats_change_nothing() -> None:
    fake = FakeMarathon([])
    load = Load(rps=1000)
    auto = scaler(load, fake, Policy(target_rps=100, samples=1))
    assert (await auto.step())["/nginx"].reason == "no fresh sample"       # the first read has no delta
    for _ in range(3):
        load.advance(1.0)
        assert (await auto.step())["/nginx"].reason == "no such app"

    async def broken() -> dict[str, str]:
        raise httpx.ConnectError("lb away")

    auto.stats = broken
    fake.apps["/nginx"] = nginx(2)
    assert (await auto.step())["/nginx"].reason == "no fresh sample"
    assert fake.puts == []
