"""The edge scenario's pure helpers: the autoscale app with the scenario's short intervals, and
HAProxy's stats CSV as rows."""

from __future__ import annotations

import json
from pathlib import Path

from navstar.edge import parse_stats, with_options

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_with_options_sets_present_options_and_appends_missing_ones_in_cmd_and_args():
    app = {"id": "/a", "cmd": "exec navstar marathon-lb-autoscale --apps nginx_10000 --interval 60"}
    changed = with_options(app, {"--interval": "1", "--max-instances": "3"})
    assert changed["cmd"] == "exec navstar marathon-lb-autoscale --apps nginx_10000 --interval 1 --max-instances 3"
    assert app["cmd"].endswith("--interval 60")                  # the original is left alone
    args = with_options({"id": "/b", "args": ["x", "--samples", "10"]}, {"--samples": "3"})
    assert args["args"] == ["x", "--samples", "3"] and "cmd" not in args


def test_the_autoscale_example_takes_the_scenario_options():
    app = json.loads((EXAMPLES / "marathon-lb-autoscale.json").read_text())
    changed = with_options(app, {"--target-rps": "20", "--interval": "1"})
    words = changed["cmd"].split()
    assert words[words.index("--target-rps") + 1] == "20" and words[words.index("--interval") + 1] == "1"
    assert words.count("--interval") == 1 and "--apps" in words


def test_parse_stats_reads_haproxys_csv_header():
    text = ("# pxname,svname,qcur,status,addr,\n"
            "nginx_10000,FRONTEND,,OPEN,,\n"
            "nginx_10000,srv1,0,UP,198.18.0.12:31134,\n")
    rows = parse_stats(text)
    assert [(r["pxname"], r["svname"], r["status"], r["addr"]) for r in rows] == [
        ("nginx_10000", "FRONTEND", "OPEN", ""), ("nginx_10000", "srv1", "UP", "198.18.0.12:31134")]
