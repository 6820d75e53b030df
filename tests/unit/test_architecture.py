"""The layering rules of issue 11 hold on the tree, and the checker catches each kind of breach."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _checker():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module       # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


graph = _checker()


def test_the_tree_keeps_its_layering():
    assert graph.violations(graph.modules(ROOT)) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in graph.PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return tmp_path


CLEAN = {
    "cluster/view.py": "import pydantic\n",
    "control/master.py": "from cluster.view import x\n",
    "control/marathon_api.py": "from control.master import Master\n",
    "minuteman/model.py": "from cluster import view\n",
    "minuteman/netfilter_kernel.py": "import nftables\nfrom pyroute2 import IPRoute\n",
    "navstar/agent_main.py": "from control.master import Master\nfrom minuteman.model import m\n",
}


def test_a_clean_synthetic_tree_passes(tmp_path):
    assert graph.violations(graph.modules(_tree(tmp_path, CLEAN))) == []


@pytest.mark.parametrize(("change", "expected"), [
    # a cycle through a lazy import inside a function
    ({"control/master.py": "def app():\n    from control.marathon_api import routes\n"},
     "import cycle: control.marathon_api ↔ control.master"),
    # a cycle through a type-only import
    ({"minuteman/api.py": "from minuteman.reconciler import LoadBalancer\n",
      "minuteman/reconciler.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from minuteman.api import r\n"},
     "import cycle: minuteman.api ↔ minuteman.reconciler"),
    ({"control/vips.py": "from minuteman.labels import parse_vip\n"},
     "control.vips imports minuteman: control/ must not depend on a dataplane"),
    ({"spartan_dns/api.py": "from navstar import __version__\n"},
     "spartan_dns.api imports navstar: components must not import the composition root"),
    ({"cluster/view.py": "from control.master import Master\n"},
     "cluster.view imports control: cluster/ is the bottom layer"),
    ({"minuteman/reconciler.py": "from pyroute2 import IPRoute\n"},
     "minuteman.reconciler imports pyroute2: only the kernel-layer modules may"),
    ({"overlay/agent.py": "import bcc\n"}, "overlay.agent imports bcc: only the kernel-layer modules may"),
    ({"minuteman/nfqueue.py": "def f():\n    import netfilterqueue\n"},
     "minuteman.nfqueue imports netfilterqueue: only the kernel-layer modules may"),
    ({"spartan_dns/service.py": "import nftables\n"},
     "spartan_dns.service imports nftables: only the kernel-layer modules may"),
    ({"cosmos/service.py": "from control.master import Master\n"},
     "cosmos.service imports control: packages reach the cluster only through Marathon's API"),
    ({"universe/render.py": "from cosmos.errors import CosmosError\n"},
     "universe.render imports cosmos: the Universe is data and its format, below the service"),
    # a relative import is resolved like any other
    ({"control/agent/__init__.py": "", "control/agent/api.py": "from ...navstar import lab\n"},
     "control.agent.api imports navstar: components must not import the composition root"),
])
def test_each_breach_is_caught(tmp_path, change, expected):
    problems = graph.violations(graph.modules(_tree(tmp_path, {**CLEAN, **change})))
    assert expected in problems


def test_the_report_names_packages_sizes_and_violations(tmp_path):
    text = graph.report(_tree(tmp_path, {**CLEAN, "control/vips.py": "import minuteman.model\n"}))
    assert "control      → cluster" in text
    assert "largest files:" in text
    assert "violations: 1" in text
