"""The benchmark suite's bookkeeping (issue 17): records a script hands over, the ratios judged
against the issue's goals, and RESULTS.md with its plots rendered from a summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import _report, _results, _suite


def test_record_appends_json_lines_only_when_the_suite_names_a_file(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_results.RECORD_ENV, raising=False)
    _results.record("lb.ebpf/direct", 0.99)              # run alone: nothing written, no error
    target = tmp_path / "records.jsonl"
    monkeypatch.setenv(_results.RECORD_ENV, str(target))
    _results.record("lb.ebpf/direct", 0.99, "x", ">= 0.95", True)
    _results.record("lb.ebpf.conn_s", 12000, "conn/s", path="ebpf", vips=1000)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert lines[0] == {"name": "lb.ebpf/direct", "value": 0.99, "unit": "x", "goal": ">= 0.95", "met": True}
    assert lines[1]["path"] == "ebpf" and lines[1]["vips"] == 1000


def test_quick_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_results.QUICK_ENV, "1")
    assert _results.quick()
    monkeypatch.setenv(_results.QUICK_ENV, "0")
    assert not _results.quick()


def test_ratios_are_judged_against_the_issue_goals() -> None:
    assert _suite.judge("lb.ebpf/direct", 0.98) is True
    assert _suite.judge("lb.ebpf/direct", 0.97) is False
    assert _suite.judge("drf.cycle_10k_s", 0.14) is True
    assert _suite.judge("drf.cycle_10k_s", 0.15) is False
    assert _suite.judge("lb.ebpf/iptables", 3.0) is None     # no goal yet


def test_render_writes_tables_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_report, "BENCH", tmp_path)
    monkeypatch.setattr(_report, "PLOTS", tmp_path / "plots")
    records = [{"name": f"lb.{p}.conn_s", "value": 1000.0 * v, "unit": "conn/s", "goal": None, "met": None,
                "path": p, "vips": v, "source": "ebpf"} for p in ("direct", "ebpf") for v in (1, 1000)]
    records += [{"name": "lb.ebpf/direct", "value": 0.9, "unit": "x", "goal": ">= 0.95", "met": False},
                {"name": "dns.navstar.qps", "value": 5e4, "unit": "qps", "goal": None, "met": None,
                 "workload": "own zone", "server": "navstar"}]
    summary = {"mode": "quick", "started": "20260101T000000Z", "seconds": 12.0, "commit": "abc", "dirty": False,
               "machine": {"kernel": "6.1", "cpus": 2, "cpu": "x", "python": "3.11", "versions": {"nft": "1.0"}},
               "scenarios": {"vip_ebpf": {"exit_code": 1, "goals_met": False, "seconds": 10.0}},
               "ratios": {"lb.ebpf/direct": 0.9}, "goals": {"lb.ebpf/direct": {"goal": ">= 0.98", "value": 0.9,
                                                                                "met": False}},
               "records": {"vip_ebpf": records}}
    _report.render(summary)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| `lb.ebpf/direct` | 0.9 |  | >= 0.98 | **MISSED** |" in text
    assert "quick run" in text and "2-core" in text
    assert {p.name for p in (tmp_path / "plots").iterdir()} >= {"lb_connections.png", "dns_qps.png"}
