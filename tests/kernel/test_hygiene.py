"""The end-of-run hygiene check names what a test left behind, and nothing once it is gone."""

from __future__ import annotations

import subprocess
import uuid

from control.agent.cgroups import Cgroup
from tests import hygiene


def test_a_left_namespace_and_cgroup_are_named_until_removed() -> None:
    name = f"nvt-{uuid.uuid4().hex[:8]}"
    cgroup = Cgroup(f"navstar-test/{name}")
    hygiene.made_namespace(name, cgroup.relpath)
    subprocess.run(["ip", "netns", "add", name], check=True)
    cgroup.create()
    try:
        left = hygiene.leftovers()
        assert f"namespace {name}" in left
        assert any(item.startswith("cgroup ") and item.endswith(name) for item in left), left
    finally:
        cgroup.remove()
        subprocess.run(["ip", "netns", "del", name], check=True)
    assert not [item for item in hygiene.leftovers() if name in item]


def test_a_left_lab_is_named_by_its_bpf_pins() -> None:
    lab = f"h{uuid.uuid4().hex[:6]}"
    hygiene.made_lab(lab)
    pins = hygiene.BPFFS_ROOT / lab
    pins.mkdir(parents=True)
    try:
        assert f"lab {lab}: BPF pins under {pins}" in hygiene.leftovers()
    finally:
        pins.rmdir()
    assert not [item for item in hygiene.leftovers() if lab in item]
