"""The figures a benchmark hands to the suite (``python -m bench``), besides printing them.

A script calls :func:`record` for every figure it reports; when the suite runs it, the environment
names a file (``NAVSTAR_BENCH_RECORD``) and each record is appended there as one JSON line. Run
alone, nothing is written. :func:`quick` says whether the suite asked for its quick parameter set
(``NAVSTAR_BENCH_QUICK=1``: fewer rounds, shorter slices, same scenarios)."""

from __future__ import annotations

import json
import os
from typing import Any

RECORD_ENV = "NAVSTAR_BENCH_RECORD"
QUICK_ENV = "NAVSTAR_BENCH_QUICK"


def quick() -> bool:
    return os.environ.get(QUICK_ENV) == "1"


def record(name: str, value: float, unit: str = "", goal: str | None = None, met: bool | None = None,
           **labels: Any) -> None:
    """One figure: ``name`` (a ``ratios`` key such as ``lb.ebpf/direct`` where one applies), its
    value and unit, the script's goal for it (``">= 0.95"``) and whether it was met; ``labels``
    place it in a series (``path="ebpf", vips=1000``) for the tables and plots."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    entry = {"name": name, "value": float(value), "unit": unit, "goal": goal, "met": met, **labels}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")
