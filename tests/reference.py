"""Reference data the tests read, all inside the repository: a fresh clone has every file, and a
missing one fails the test that needs it instead of skipping it.

- ``tests/data/conformance/mesos-dns``: Mesos-DNS's state document and its 41 expected lookups
  (provenance in its README).
- ``examples``: the app definitions from the design article.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO / "tests" / "data" / "conformance" / "mesos-dns"
EXAMPLES = REPO / "examples"
CONFORMANCE_VECTORS = 41
CONFORMANCE_LEADER = "master@144.76.157.37:5050"   # as the conformance README says


def conformance() -> dict[str, Any]:
    """vectors.json: ``params`` and the 41 ``vectors``."""
    return json.loads((CONFORMANCE / "vectors.json").read_text())


def conformance_state() -> dict[str, Any]:
    """fake.json with the leader overridden, as the conformance README says."""
    state = json.loads((CONFORMANCE / "fake.json").read_text())
    state["leader"] = CONFORMANCE_LEADER
    return state
