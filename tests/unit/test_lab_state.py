"""The lab's state file: what ``lab up`` wrote is read back, and a file written by an older navstar
(fields this one no longer has) still loads, so ``lab down`` can always clean up."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from navstar import lab


def test_a_state_round_trips_and_older_fields_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "LAB_ROOT", tmp_path)
    state = lab.LabState("t", "198.18.0.0/24", 1, nodes=[lab.Node("master", "navstar-t-master", "198.18.0.2",
                                                                   cosmos_pid=42)])
    state.save()
    assert lab.LabState.load("t") == state
    raw = json.loads((tmp_path / "t" / "state.json").read_text())
    raw["cosmos_pid"] = 7                         # where an earlier version kept it
    raw["nodes"][0]["retired_field"] = True
    (tmp_path / "t" / "state.json").write_text(json.dumps(raw))
    loaded = lab.LabState.load("t")
    assert loaded is not None and asdict(loaded) == asdict(state)
    assert lab.LabState.load("absent") is None
