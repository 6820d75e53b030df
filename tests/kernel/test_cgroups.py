"""The cgroup seam against the real hierarchies, and the per-test namespace fixture itself."""

import subprocess

from control.agent.cgroups import Cgroup


def test_fixture_gives_a_private_namespace(netns):
    links = netns.run("ip", "-o", "link").stdout
    assert "lo" in links and "eth0" not in links
    proc = netns.popen("sleep", "30")
    assert proc.pid in netns.cgroup.pids()


def test_cgroup_limits_and_removal(netns):
    group = Cgroup(f"navstar-test/{netns.name}/task")
    group.create()
    group.set_limits(cpus=0.5, mem_mb=64)
    proc = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: group.add_pid(__import__("os").getpid()))
    try:
        assert proc.pid in group.pids()
        if group.layout.pure_v2:
            assert (group.unified_path / "cpu.max").read_text().split()[0] == "50000"
        elif group.layout.cpu is not None:
            assert (group.layout.cpu / group.relpath / "cpu.cfs_quota_us").read_text().strip() == "50000"
        if group.layout.memory is not None and not group.layout.pure_v2:
            limit = int((group.layout.memory / group.relpath / "memory.limit_in_bytes").read_text())
            assert limit == 64 * 1024 * 1024
    finally:
        proc.kill()
        proc.wait()
    group.remove()
    assert not any(p.exists() for p in group.paths())
