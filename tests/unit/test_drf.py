"""DRF: Mesos' own sorter scenarios (src/tests/sorter_tests.cpp), the DRF paper's progressive
filling, and the allocation cycle the master's scheduler drives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.drf import Allocator, DRFSorter, Offer, progressive_filling

AGENT = "agentId"


def res(cpus: float, mem: float, **more: float) -> dict[str, float]:
    return {"cpus": cpus, "mem": mem, **more}


def sorter_with(total: dict[str, float], *clients: str) -> DRFSorter:
    sorter = DRFSorter()
    sorter.add_agent(AGENT, total)
    for client in clients:
        sorter.add(client)
        sorter.activate(client)
    return sorter


def sorter_holding(total: dict[str, float], allocations: dict[str, dict[str, float]]) -> DRFSorter:
    """A sorter whose active clients already hold ``allocations`` (one allocation each)."""
    sorter = sorter_with(total, *allocations)
    for client, allocation in allocations.items():
        sorter.allocated(client, AGENT, allocation)
    return sorter


def join(sorter: DRFSorter, client: str, allocation: dict[str, float], weight: float | None = None) -> None:
    """Adds, activates (and weighs) a client and allocates to it, as most Mesos scenarios do."""
    sorter.add(client)
    sorter.activate(client)
    if weight is not None:
        sorter.update_weight(client, weight)
    sorter.allocated(client, AGENT, allocation)


# ---------------------------------------------------------------------------------------- sorter

def test_mesos_drf_sorter_scenario():
    sorter = sorter_with(res(100, 100))
    assert sorter.sort() == []
    for name, cpus, mem in (("a", 5, 5), ("b", 6, 6)):
        join(sorter, name, res(cpus, mem))
    assert sorter.sort() == ["a", "b"]                      # a .05, b .06
    for name, cpus, mem in (("c", 1, 1), ("d", 3, 1)):
        join(sorter, name, res(cpus, mem))
    assert sorter.sort() == ["c", "d", "a", "b"]            # c .01, d .03
    sorter.remove("a")
    sorter.unallocated("b", AGENT, res(4, 4))
    assert sorter.sort() == ["c", "b", "d"]
    join(sorter, "e", res(1, 5))
    sorter.remove_agent(AGENT, res(50, 0))                  # total now cpus 50, mem 100
    assert sorter.sort() == ["c", "b", "e", "d"]
    sorter.add_agent(AGENT, res(0, 100))                    # total now cpus 50, mem 200
    join(sorter, "f", res(5, 1))
    sorter.allocated("c", AGENT, res(0, 15))
    assert sorter.sort() == ["e", "b", "d", "c", "f"]       # e .025 b .04 d .06 c .08 f .1
    assert sorter.contains("b") and not sorter.contains("a")
    assert sorter.count() == 5
    sorter.deactivate("d")
    assert sorter.contains("d")
    assert sorter.sort() == ["e", "b", "c", "f"]
    assert sorter.count() == 5
    sorter.activate("d")
    assert sorter.sort() == ["e", "b", "d", "c", "f"]


def test_mesos_weighted_drf_sorter():
    sorter = sorter_holding(res(100, 100), {"a": res(5, 5)})
    join(sorter, "b", res(6, 6), weight=2)
    assert sorter.sort() == ["b", "a"]                      # a .05, b .03
    join(sorter, "c", res(4, 4))
    assert sorter.sort() == ["b", "c", "a"]
    join(sorter, "d", res(10, 20), weight=10)
    assert sorter.sort() == ["d", "b", "c", "a"]            # d .02
    sorter.remove("b")
    assert sorter.sort() == ["d", "c", "a"]
    sorter.allocated("d", AGENT, res(10, 25))
    assert sorter.sort() == ["c", "d", "a"]                 # d .045
    join(sorter, "e", res(1, 1), weight=0.1)
    assert sorter.sort() == ["c", "d", "a", "e"]            # e .1
    sorter.remove("a")
    assert sorter.sort() == ["c", "d", "e"]


def test_update_weight_flips_order():
    sorter = sorter_holding(res(100, 100), {"a": res(5, 5), "b": res(6, 6)})
    assert sorter.sort() == ["a", "b"]
    sorter.update_weight("b", 2)
    assert sorter.sort() == ["b", "a"]


def test_ties_break_on_allocation_count_then_name():
    sorter = sorter_with(res(100, 100), "a", "b", "c", "d", "e")
    for name, cpus in (("a", 3), ("b", 3), ("c", 1), ("c", 1), ("c", 1), ("d", 2), ("d", 1), ("e", 3)):
        sorter.allocated(name, AGENT, res(cpus, cpus))
    assert sorter.sort() == ["a", "b", "e", "d", "c"]       # counts a,b,e 1; d 2; c 3
    sorter.unallocated("c", AGENT, res(3, 3))               # the count is not reset
    assert sorter.sort() == ["c", "a", "b", "e", "d"]
    sorter.allocated("c", AGENT, res(3, 3))
    assert sorter.sort() == ["a", "b", "e", "d", "c"]
    sorter.deactivate("c")
    sorter.activate("c")
    assert sorter.sort() == ["a", "b", "e", "d", "c"]
    sorter.deactivate("a")                                  # allocations while inactive still count
    sorter.unallocated("a", AGENT, res(1, 3))
    sorter.allocated("a", AGENT, res(1, 3))
    assert sorter.sort() == ["b", "e", "d", "c"]
    sorter.activate("a")
    assert sorter.sort() == ["b", "e", "a", "d", "c"]


@pytest.mark.parametrize("prefix", ["", "x/", "x/y/z/"])
def test_hierarchy_of_disjoint_branches_changes_nothing(prefix):
    def p(name):
        return f"{prefix}{name}/{name}" if prefix else name
    sorter = sorter_with(res(100, 100))
    for name, cpus, mem in (("a", 5, 5), ("b", 6, 6), ("c", 1, 1), ("d", 3, 1)):
        join(sorter, p(name), res(cpus, mem))
    assert sorter.sort() == [p("c"), p("d"), p("a"), p("b")]
    sorter.remove(p("a"))
    sorter.unallocated(p("b"), AGENT, res(4, 4))
    assert sorter.sort() == [p("c"), p("b"), p("d")]


def test_mesos_hierarchical_allocation():
    sorter = sorter_with(res(100, 100), "a", "b/c", "b/d")
    assert sorter.count() == 3
    assert sorter.contains("a") and not sorter.contains("b") and sorter.contains("b/c")
    assert sorter.sort() == ["a", "b/c", "b/d"]
    sorter.allocated("a", AGENT, res(6, 6))
    assert sorter.sort() == ["b/c", "b/d", "a"]
    sorter.allocated("b/c", AGENT, res(4, 4))
    sorter.allocated("b/d", AGENT, res(3, 3))
    assert sorter.sort() == ["a", "b/d", "b/c"]             # subtree b = .07 > a = .06
    assert sorter.allocation_totals("b") == res(7, 7)
    assert sorter.allocation("b/c") == {AGENT: res(4, 4)}
    sorter.allocated("a", AGENT, res(2, 2))
    assert sorter.sort() == ["b/d", "b/c", "a"]
    sorter.add("b/e/f")
    sorter.activate("b/e/f")
    assert not sorter.contains("b/e")
    assert sorter.sort() == ["b/e/f", "b/d", "b/c", "a"]
    sorter.allocated("b/e/f", AGENT, res(3.5, 3.5))
    assert sorter.sort() == ["a", "b/d", "b/e/f", "b/c"]    # b = .105 > a = .08
    sorter.remove("b/e/f")                                  # the subtree's share drops with it
    assert sorter.count() == 3
    assert sorter.sort() == ["b/d", "b/c", "a"]


def test_mesos_hierarchical_iteration_order():
    sorter = sorter_with(res(100, 100), "a/b", "c", "d", "d/e")
    assert sorter.sort() == ["a/b", "c", "d", "d/e"]
    sorter.allocated("c", AGENT, res(8, 8))
    assert sorter.sort() == ["a/b", "d", "d/e", "c"]
    sorter.allocated("d", AGENT, res(3, 3))
    sorter.allocated("d/e", AGENT, res(2, 2))
    assert sorter.sort() == ["a/b", "d/e", "d", "c"]
    sorter.allocated("a/b", AGENT, res(6, 6))
    assert sorter.sort() == ["d/e", "d", "a/b", "c"]


def test_mesos_add_child_to_leaf_and_weights_per_level():
    sorter = sorter_holding(res(100, 100), {"a": res(10, 10), "b": res(6, 6)})
    assert sorter.sort() == ["b", "a"]
    join(sorter, "a/c", res(5, 5))
    assert sorter.sort() == ["b", "a/c", "a"]
    sorter.remove("a")
    assert not sorter.contains("a")
    assert sorter.sort() == ["a/c", "b"]
    join(sorter, "a", res(10, 10))
    assert sorter.sort() == ["b", "a/c", "a"]
    sorter.update_weight("a/c", 0.2)        # "a" itself competes with weight 1 inside "a"
    assert sorter.sort() == ["b", "a", "a/c"]
    sorter.update_weight("a", 3)            # weighs subtree "a" against "b", not "a" against "a/c"
    assert sorter.sort() == ["a", "a/c", "b"]
    sorter.update_weight("a/c", 1)
    assert sorter.sort() == ["a/c", "a", "b"]


def test_mesos_add_child_to_internal_and_inactive_leaf():
    sorter = sorter_holding(res(100, 100), {"x/a": res(10, 10), "x/b": res(6, 6)})
    assert sorter.sort() == ["x/b", "x/a"]
    join(sorter, "x", res(7, 7))
    assert sorter.sort() == ["x/b", "x", "x/a"]
    join(sorter, "z", res(20, 20))
    assert sorter.sort() == ["z", "x/b", "x", "x/a"]
    sorter.remove("x")
    assert sorter.sort() == ["x/b", "x/a", "z"]

    sorter = sorter_holding(res(100, 100), {"a": res(10, 10), "b": res(6, 6)})
    sorter.deactivate("a")
    assert sorter.sort() == ["b"]
    join(sorter, "a/c", res(5, 5))
    assert sorter.sort() == ["b", "a/c"]


@pytest.mark.parametrize("deactivate_a, expected", [(False, ["b", "a"]), (True, ["b"])])
def test_mesos_remove_leaf_collapses_parent(deactivate_a, expected):
    sorter = sorter_holding(res(100, 100), {"a": res(10, 10), "b": res(6, 6), "a/c": res(5, 5)})
    if deactivate_a:
        sorter.deactivate("a")
        assert sorter.sort() == ["b", "a/c"]
    else:
        assert sorter.sort() == ["b", "a/c", "a"]
    sorter.remove("a/c")
    assert sorter.sort() == expected
    assert sorter.allocation("a") == {AGENT: res(10, 10)}


def test_mesos_change_weight_on_subtree():
    sorter = sorter_with(res(100, 100))
    sorter.update_weight("b", 3)
    sorter.update_weight("a", 2)
    for client in ("a/x", "b/y"):
        sorter.add(client)
        sorter.activate(client)
    assert sorter.sort() == ["a/x", "b/y"]
    sorter.allocated("a/x", AGENT, res(10, 10))
    sorter.allocated("b/y", AGENT, res(10, 10))
    assert sorter.sort() == ["b/y", "a/x"]
    join(sorter, "b/z", res(5, 5))
    assert sorter.sort() == ["b/z", "b/y", "a/x"]
    join(sorter, "b", res(4, 4))
    assert sorter.sort() == ["a/x", "b", "b/z", "b/y"]
    join(sorter, "a/zz", res(2, 2))
    assert sorter.sort() == ["a/zz", "a/x", "b", "b/z", "b/y"]


def test_agents_changing_the_total_change_the_order():
    sorter = sorter_holding(res(10, 100), {"a": res(2, 1), "b": res(1, 2)})
    assert sorter.sort() == ["b", "a"]
    sorter.remove_agent(AGENT)
    sorter.add_agent(AGENT, res(100, 10))                   # now a .1, b .2 (mem)
    assert sorter.sort() == ["a", "b"]

    sorter = DRFSorter()
    for client in ("a", "b"):
        sorter.add(client)
        sorter.activate(client)
    sorter.add_agent("A", res(5, 50))
    sorter.add_agent("B", res(5, 50))
    sorter.allocated("a", "A", res(2, 1))
    sorter.allocated("b", "B", res(1, 3))
    assert sorter.sort() == ["b", "a"]
    sorter.remove_agent("A")
    sorter.add_agent("A", res(95, 50))                      # a .02 (cpus), b .03 (mem)
    assert sorter.sort() == ["a", "b"]
    assert sorter.total() == res(100, 100)


def test_clients_start_inactive_and_keep_their_allocation():
    sorter = sorter_with(res(10, 10))
    sorter.add("a")
    sorter.add("b")
    sorter.activate("b")
    sorter.allocated("a", AGENT, res(2, 2))
    sorter.allocated("b", AGENT, res(3, 3))
    assert sorter.sort() == ["b"]
    assert sorter.allocation("a") == {AGENT: res(2, 2)}
    assert sorter.allocation("b") == {AGENT: res(3, 3)}


def test_sorter_rejects_bad_input_without_changing_state():
    sorter = sorter_with(res(10, 10), "a")
    with pytest.raises(ValueError, match="already exists"):
        sorter.add("a")
    with pytest.raises(ValueError, match="path elements"):
        sorter.add("a//b")
    with pytest.raises(KeyError, match="unknown client 'nope'"):
        sorter.activate("nope")
    with pytest.raises(ValueError, match=r"resources\.cpus must be a finite number"):
        sorter.allocated("a", AGENT, {"cpus": -1})
    with pytest.raises(ValueError, match="resources.mem must be a number"):
        sorter.allocated("a", AGENT, {"mem": "lots"})
    sorter.allocated("a", AGENT, res(1, 1))
    with pytest.raises(ValueError, match="does not hold cpus 2 > 1"):
        sorter.unallocated("a", AGENT, res(2, 1))
    with pytest.raises(ValueError, match="weight of 'a' must be a finite number > 0"):
        sorter.update_weight("a", 0)
    with pytest.raises(KeyError, match="agent 'ghost'"):
        sorter.remove_agent("ghost")
    assert sorter.allocation("a") == {AGENT: res(1, 1)}
    assert sorter.sort() == ["a"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 20), st.integers(0, 20),
                          st.sampled_from(["alloc", "unalloc", "toggle", "weight"])),
                min_size=1, max_size=60))
def test_incremental_order_matches_a_from_scratch_sort(steps):
    """After any mix of operations the incremental order equals sorting by recomputed keys."""
    names = [f"c{i}" for i in range(8)]
    sorter = sorter_with(res(200, 300), *names)
    held = {name: [0, 0] for name in names}
    counts = dict.fromkeys(names, 0)
    weights = dict.fromkeys(names, 1.0)
    active = set(names)
    for index, cpus, mem, op in steps:
        name = names[index]
        if op == "alloc" and cpus + mem:
            sorter.allocated(name, AGENT, res(cpus, mem))
            held[name][0] += cpus
            held[name][1] += mem
            counts[name] += 1
        elif op == "unalloc":
            take = (min(cpus, held[name][0]), min(mem, held[name][1]))
            if any(take):
                sorter.unallocated(name, AGENT, res(*take))
                held[name][0] -= take[0]
                held[name][1] -= take[1]
        elif op == "toggle":
            (sorter.deactivate if name in active else sorter.activate)(name)
            active ^= {name}
        elif op == "weight":
            weights[name] = 1.0 + cpus / 4
            sorter.update_weight(name, weights[name])
        if op == "toggle":
            sorter.sort()                # later allocations then update a clean tree in place
    expected = sorted(active, key=lambda n: (max(held[n][0] / 200, held[n][1] / 300) / weights[n],
                                             counts[n], n))
    assert sorter.sort() == expected


# --------------------------------------------------------------------------- progressive filling

def test_progressive_filling_paper_example():
    capacity = {"cpus": 9, "mem": 18}
    demands = {"A": {"cpus": 1, "mem": 4}, "B": {"cpus": 3, "mem": 1}}
    assert progressive_filling(capacity, demands) == {"A": 3, "B": 2}


def test_progressive_filling_weights():
    capacity = {"cpus": 9, "mem": 18}
    demands = {"A": {"cpus": 1, "mem": 4}, "B": {"cpus": 3, "mem": 1}}
    # Ten times the paper's cluster: equal dominant shares of 2/3 without weights; with B
    # weighing 2, B's share is twice A's (0.8 vs 0.4) and cpus are exactly used up.
    big = {"cpus": 90, "mem": 180}
    assert progressive_filling(big, demands) == {"A": 30, "B": 20}
    assert progressive_filling(big, demands, {"B": 2}) == {"A": 18, "B": 24}
    # In the paper's own cluster cpus bind first, so B's weight changes nothing.
    assert progressive_filling(capacity, demands, {"B": 2}) == {"A": 3, "B": 2}
    # Equal demands split evenly; a weight of 3 gets three times the tasks.
    same = {"x": {"cpus": 1}, "y": {"cpus": 1}}
    assert progressive_filling({"cpus": 8}, same) == {"x": 4, "y": 4}
    assert progressive_filling({"cpus": 8}, same, {"x": 3}) == {"x": 6, "y": 2}


def test_progressive_filling_freezes_users_that_no_longer_fit():
    # "big" stops fitting after one task; "small" keeps filling the rest.
    out = progressive_filling({"cpus": 10, "mem": 10},
                              {"big": {"cpus": 6, "mem": 1}, "small": {"cpus": 1, "mem": 1}})
    assert out == {"big": 1, "small": 4}
    assert progressive_filling({"cpus": 4}, {"gpu": {"gpus": 1}, "cpu": {"cpus": 1}}) == {"gpu": 0, "cpu": 4}


def test_progressive_filling_rejects_bad_input():
    with pytest.raises(ValueError, match=r"demands\['A'\] must ask for a positive amount"):
        progressive_filling({"cpus": 1}, {"A": {"cpus": 0}})
    with pytest.raises(ValueError, match=r"weights\['A'\] must be a finite number > 0"):
        progressive_filling({"cpus": 1}, {"A": {"cpus": 1}}, {"A": -1})
    with pytest.raises(ValueError, match=r"capacity.cpus must be a finite number >= 0"):
        progressive_filling({"cpus": float("nan")}, {"A": {"cpus": 1}})


@settings(max_examples=100, deadline=None)
@given(capacity=st.fixed_dictionaries({"cpus": st.integers(1, 64), "mem": st.integers(1, 256)}),
       demands=st.dictionaries(st.sampled_from("ABCDE"),
                               st.fixed_dictionaries({"cpus": st.integers(0, 8), "mem": st.integers(1, 32)}),
                               min_size=1, max_size=5))
def test_progressive_filling_fits_and_leaves_no_task_that_fits(capacity, demands):
    tasks = progressive_filling(capacity, demands)
    for name in capacity:
        used = sum(tasks[user] * demand[name] for user, demand in demands.items())
        assert used <= capacity[name]
    for demand in demands.values():      # nobody could run one more task
        assert any(sum(tasks[u] * d[n] for u, d in demands.items()) + demand[n] > capacity[n]
                   for n in capacity)


# ---------------------------------------------------------------------------------------- allocator

def test_allocator_two_frameworks_share_fairly_over_cycles():
    """A cpu-bound and a memory-bound framework, each launching one task per offer (declining
    the rest without a filter): over cycles their dominant shares meet, 2 light tasks per heavy
    one, as progressive filling would give on the pooled cluster."""
    allocator = Allocator()
    for index in range(6):
        allocator.add_agent(f"agent-{index}", res(4, 8192))
    task = {"light": res(1, 256), "heavy": res(1, 4096)}   # dominant: cpus 1/24, mem 1/12
    for framework_id in task:
        allocator.add_framework(framework_id)
    launched = dict.fromkeys(task, 0)
    for cycle in range(60):
        for offer in allocator.allocate(now=cycle):
            need = task[offer.framework_id]
            if all(offer.resources.get(name, 0) >= value for name, value in need.items()):
                allocator.accept(offer, need, now=cycle, refuse_seconds=0)
                launched[offer.framework_id] += 1
            else:
                allocator.decline(offer, now=cycle, refuse_seconds=0)
    assert launched == {"light": 14, "heavy": 7}   # heavy tasks strand cpus on full agents
    shares = allocator.shares()
    assert shares["light"] == shares["heavy"] == pytest.approx(14 / 24)
    assert progressive_filling({"cpus": 24, "mem": 49152}, task) == {"light": 16, "heavy": 8}


def test_allocator_offers_whole_agent_to_lowest_share_and_counts_offers_as_allocated():
    allocator = Allocator()
    allocator.add_agent("a1", res(4, 4096))
    allocator.add_framework("f1")
    allocator.add_framework("f2")
    allocator.restore("f1", "a1", res(1, 1024))            # f1 already runs a task
    allocator.add_agent("a2", res(4, 4096))
    offers = allocator.allocate(now=0)
    assert [(o.framework_id, o.agent_id, o.resources) for o in offers] == [
        ("f2", "a1", res(3, 3072)),                          # f2 has the lower share (0 < 1/8)
        ("f1", "a2", res(4, 4096)),                          # now f1's 1/8 < f2's 3/8
    ]
    assert allocator.allocation("f1") == res(5, 5120)       # in use plus offered
    assert allocator.allocation("f2") == res(3, 3072)
    assert allocator.allocate(now=0) == []                  # everything is offered or in use
    allocator.decline(offers[1], now=0, refuse_seconds=0)   # no filter: f1 (1/8 < 3/8) again
    assert [(o.framework_id, o.agent_id) for o in allocator.allocate(now=0)] == [("f1", "a2")]


def cluster(agents: int, each: dict[str, float], frameworks: dict[str, str]) -> Allocator:
    """An allocator with agents a0…a<n-1> of ``each`` and frameworks by id → role."""
    allocator = Allocator()
    for index in range(agents):
        allocator.add_agent(f"a{index}", each)
    for framework_id, role in frameworks.items():
        allocator.add_framework(framework_id, role)
    return allocator


def test_allocator_weights_and_hierarchical_roles():
    allocator = cluster(8, res(1, 1024), {"analytics": "eng/analytics", "web": "eng/web", "ops": "ops"})
    allocator.set_weight("eng", 3)
    offers = allocator.allocate(now=0)
    per_framework = {fw: sum(1 for o in offers if o.framework_id == fw) for fw in ("analytics", "web", "ops")}
    # "eng" weighs 3 against "ops": 6 agents to eng's subtree, split evenly inside it, 2 to ops.
    assert per_framework == {"analytics": 3, "web": 3, "ops": 2}
    assert allocator.role_shares()["eng/web"] == pytest.approx(3 / 8)
    assert allocator.shares()["ops"] == pytest.approx(2 / 8)


def test_allocator_serves_quota_first_and_holds_back_headroom():
    allocator = cluster(4, res(4, 4096), {"big": "*", "guaranteed": "prod"})
    allocator.restore("guaranteed", "a0", res(4, 4096))      # prod's share is the higher one
    allocator.set_quota("prod", res(10, 10240))
    offers = allocator.allocate(now=0)
    prod = [o for o in offers if o.framework_id == "guaranteed"]
    assert sum(o.resources["cpus"] for o in prod) == 6       # capped at the missing guarantee
    assert allocator.allocation("guaranteed") == res(10, 10240)
    assert allocator.allocation("big") == res(6, 6144)       # the rest goes to the fair stage
    # Declined quota resources are held back from others while the guarantee is unmet.
    for offer in prod:
        allocator.decline(offer, now=0, refuse_seconds=30)
    assert allocator.allocate(now=1) == []
    allocator.remove_framework("guaranteed")
    allocator.set_quota("prod", {})
    assert {o.framework_id for o in allocator.allocate(now=2)} == {"big"}
    assert allocator.allocation("big") == res(16, 16384)


def test_allocator_filters_expire_and_revive_clears_them():
    allocator = Allocator(default_refuse_seconds=5)
    allocator.add_agent("a1", res(2, 2048))
    allocator.add_framework("only")
    (offer,) = allocator.allocate(now=100)
    allocator.decline(offer, now=100)                        # default: filtered for 5 s
    assert allocator.allocate(now=104.9) == []
    (offer,) = allocator.allocate(now=105)
    allocator.accept(offer, res(1, 1024), now=105, refuse_seconds=60)
    assert allocator.allocate(now=120) == []                 # the unused rest is filtered
    allocator.release("only", "a1", res(1, 1024))           # more is free than was refused
    (offer,) = allocator.allocate(now=121)
    assert offer.resources == res(2, 2048)
    allocator.decline(offer, now=121, refuse_seconds=3600)
    allocator.revive("only")
    assert len(allocator.allocate(now=122)) == 1


def test_allocator_suppress_and_agent_deactivation():
    allocator = Allocator()
    allocator.add_agent("a1", res(2, 2048))
    allocator.add_framework("f1")
    allocator.suppress("f1")
    assert allocator.allocate(now=0) == []
    allocator.revive("f1")
    allocator.deactivate_agent("a1")
    assert allocator.allocate(now=0) == []
    allocator.activate_agent("a1")
    assert [o.agent_id for o in allocator.allocate(now=0)] == ["a1"]


def test_allocator_min_allocatable():
    allocator = Allocator()
    allocator.add_agent("cpu-only", {"cpus": 0.005, "mem": 16})   # below cpus 0.01 and mem 32
    allocator.add_agent("mem-only", {"cpus": 0.005, "mem": 64})   # mem reaches 32: offered
    allocator.add_framework("f")
    assert [o.agent_id for o in allocator.allocate(now=0)] == ["mem-only"]
    strict = Allocator(min_allocatable={"cpus": 1})
    strict.add_agent("small", res(0.5, 4096))
    strict.add_framework("f")
    assert strict.allocate(now=0) == []


def test_allocator_remove_agent_and_framework_return_resources():
    allocator = Allocator()
    allocator.add_agent("a1", res(4, 4096))
    allocator.add_agent("a2", res(4, 4096))
    allocator.add_framework("f1")
    allocator.add_framework("f2")
    offers = {o.agent_id: o for o in allocator.allocate(now=0)}
    allocator.accept(offers["a1"], res(1, 512), now=0)
    allocator.remove_agent("a2")                             # its outstanding offer vanishes
    with pytest.raises(KeyError, match="not outstanding"):
        allocator.decline(offers["a2"], now=0)
    holder = offers["a1"].framework_id
    assert allocator.allocation(holder) == res(1, 512)
    allocator.remove_framework(holder)
    assert allocator.free("a1") == res(4, 4096)
    allocator.add_agent("a1", res(4, 4096))                  # idempotent
    allocator.add_agent("a1", res(8, 4096))                  # an update
    assert allocator.free("a1") == res(8, 4096)


def test_allocator_rejects_bad_input_and_keeps_serving():
    allocator = Allocator()
    allocator.add_agent("a1", res(2, 2048))
    allocator.add_framework("f1", "web")
    allocator.add_framework("f1", "web")                     # idempotent
    with pytest.raises(ValueError, match="registered under role 'web'"):
        allocator.add_framework("f1", "db")
    with pytest.raises(ValueError, match="total of agent 'bad'.cpus must be a finite number"):
        allocator.add_agent("bad", {"cpus": -2})
    with pytest.raises(ValueError, match="role 'a//b'"):
        allocator.add_framework("f2", "a//b")
    with pytest.raises(KeyError, match="unknown framework 'ghost'"):
        allocator.suppress("ghost")
    (offer,) = allocator.allocate(now=0)
    with pytest.raises(ValueError, match="used exceeds offer .*cpus 3 > 2"):
        allocator.accept(offer, res(3, 10), now=0)
    with pytest.raises(ValueError, match="refuse_seconds must be a number >= 0"):
        allocator.decline(offer, now=0, refuse_seconds=-1)
    with pytest.raises(KeyError, match="not outstanding"):
        allocator.accept(Offer("forged", "f1", "a1", res(1, 1)), res(1, 1), now=0)
    offer.resources["cpus"] = 100                            # the caller's copy, not the books
    allocator.accept(offer, res(1, 1024), now=0)             # the offer survived the bad calls
    assert allocator.free("a1") == res(1, 1024)
    with pytest.raises(KeyError, match="not outstanding"):
        allocator.accept(offer, res(1, 1024), now=0)
    with pytest.raises(ValueError, match="framework 'f1' does not hold cpus 2 > 1"):
        allocator.release("f1", "a1", res(2, 0))
    assert allocator.allocation("f1") == res(1, 1024)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["allocate", "accept", "decline", "release", "suppress",
                                           "revive", "remove_agent", "add_agent"]),
                          st.integers(0, 3), st.integers(0, 4)), max_size=40))
def test_allocator_never_loses_or_double_counts_resources(steps):
    allocator = Allocator()
    agents = {f"a{i}": res(4, 4096) for i in range(3)}
    for agent_id, total in agents.items():
        allocator.add_agent(agent_id, total)
    frameworks = ["f0", "f1", "f2", "f3"]
    for index, framework_id in enumerate(frameworks):
        allocator.add_framework(framework_id, ["*", "x", "x/y", "z"][index])
    in_use: dict[tuple[str, str], list[float]] = {}
    for now, (op, pick, amount) in enumerate(steps):
        offers = allocator.offers()
        if op == "allocate":
            allocator.allocate(now=now)
        elif op in ("accept", "decline") and offers:
            offer = offers[pick % len(offers)]
            if op == "decline":
                allocator.decline(offer, now=now, refuse_seconds=pick)
            else:
                used = {n: min(v, amount) for n, v in offer.resources.items()}
                allocator.accept(offer, used, now=now, refuse_seconds=pick)
                slot = in_use.setdefault((offer.framework_id, offer.agent_id), [0.0, 0.0])
                slot[0] += used.get("cpus", 0)
                slot[1] += used.get("mem", 0)
        elif op == "release" and in_use:
            key = sorted(in_use)[pick % len(in_use)]
            cpus, mem = in_use.pop(key)
            if key[1] in agents:
                allocator.release(key[0], key[1], {"cpus": cpus, "mem": mem})
        elif op in ("suppress", "revive"):
            getattr(allocator, op)(frameworks[pick])
        elif op == "remove_agent" and f"a{pick}" in agents:
            allocator.remove_agent(f"a{pick}")
            del agents[f"a{pick}"]
            in_use = {k: v for k, v in in_use.items() if k[1] != f"a{pick}"}
        elif op == "add_agent" and f"a{pick}" not in agents:
            agents[f"a{pick}"] = res(4, 4096)
            allocator.add_agent(f"a{pick}", agents[f"a{pick}"])
        # Invariant: per agent, free + offered + in use == total; per framework, the sum.
        for agent_id, total in agents.items():
            held = dict(allocator.free(agent_id))
            for offer in allocator.offers():
                if offer.agent_id == agent_id:
                    for n, v in offer.resources.items():
                        held[n] = held.get(n, 0) + v
            for (_, a), (cpus, mem) in in_use.items():
                if a == agent_id:
                    held["cpus"] = held.get("cpus", 0) + cpus
                    held["mem"] = held.get("mem", 0) + mem
            assert {n: round(v, 6) for n, v in held.items() if v} == total
        for framework_id in frameworks:
            expected = {"cpus": 0.0, "mem": 0.0}
            for offer in allocator.offers():
                if offer.framework_id == framework_id:
                    for n, v in offer.resources.items():
                        expected[n] += v
            for (f, _), (cpus, mem) in in_use.items():
                if f == framework_id:
                    expected["cpus"] += cpus
                    expected["mem"] += mem
            assert allocator.allocation(framework_id) == {n: v for n, v in expected.items() if v}
