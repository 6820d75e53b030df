"""``navstar dns records``: the conformance vectors through the real command, output shapes, and
clear exit-2 errors for bad files, bad JSON, bad state and bad options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from navstar.cli import app
from tests.reference import CONFORMANCE_VECTORS, REPO, conformance, conformance_state

STATE = {
    "leader": "master@10.0.0.1:5050",
    "frameworks": [{"name": "marathon", "pid": "scheduler@10.0.0.2:8080", "tasks": [{
        "id": "web.1", "name": "web", "slave_id": "S-1", "state": "TASK_RUNNING",
        "statuses": [{"state": "TASK_RUNNING", "timestamp": 1.0}],
        "resources": {"ports": "[31000-31000]"},
    }]}],
    "slaves": [{"id": "S-1", "hostname": "a1", "pid": "slave(1)@10.0.1.1:5051"}],
}

runner = CliRunner()


def navstar(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "navstar", *args], capture_output=True, text=True,
                          input=stdin, cwd=REPO, timeout=60, check=False)


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(STATE))
    return path


# -- the conformance vectors through the command --------------------------------------------------
@pytest.fixture(scope="module")
def cli_records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, str]]]:
    """``navstar dns records --json`` once per IP-source setting the vectors use."""
    vectors = conformance()
    params = vectors["params"]
    state = conformance_state()
    path = tmp_path_factory.mktemp("mesos") / "fake-leader.json"
    path.write_text(json.dumps(state))
    outputs = {}
    for ip_sources in sorted({vector["ip_sources"] for vector in vectors["vectors"]}):
        result = navstar("dns", "records", "--mesos-state", str(path), "--domain", params["domain"],
                         "--ip-sources", ip_sources, "--label-spec", params["label_spec"].lower(),
                         "--masters", ",".join(params["masters"]), "--ns", params["ns"],
                         "--listener", params["listener"], "--json")
        assert result.returncode == 0, result.stderr
        outputs[ip_sources] = json.loads(result.stdout)
    return outputs


def test_all_vectors_hold_through_the_cli(cli_records: dict[str, list[dict[str, str]]]) -> None:
    vectors = conformance()["vectors"]
    assert len(vectors) == CONFORMANCE_VECTORS
    failures = []
    for vector in vectors:
        rows = cli_records[vector["ip_sources"]]
        got = sorted(row["value"] for row in rows
                     if row["name"].lower() == vector["name"] and row["rtype"] == vector["rtype"])
        if got != sorted(vector["want"]):
            failures.append(f"{vector['rtype']} {vector['name']} [{vector['ip_sources']}]: "
                            f"got {got}, want {sorted(vector['want'])}")
    assert not failures, "\n".join(failures)


def test_cli_json_shape(cli_records: dict[str, list[dict[str, str]]]) -> None:
    for rows in cli_records.values():
        assert rows
        for row in rows:
            assert set(row) == {"name", "rtype", "value"}
            assert row["rtype"] in {"A", "AAAA", "SRV"}
            assert row["name"].endswith(".")


# -- output ---------------------------------------------------------------------------------------
def test_table_output_lists_the_records(state_file: Path) -> None:
    result = runner.invoke(app, ["dns", "records", "--mesos-state", str(state_file)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "records in mesos." in result.output
    assert "leader.mesos." in result.output
    assert "web.marathon.mesos." in result.output


def test_stdin_and_options_reach_the_generator() -> None:
    result = navstar("dns", "records", "--mesos-state", "-", "--domain", "dcos", "--masters",
                     "10.0.0.9:5050,10.0.0.1:5050", "--json", stdin=json.dumps(STATE))
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    pairs = {(row["name"], row["value"]) for row in rows}
    assert ("master0.dcos.", "10.0.0.9") in pairs
    assert ("master1.dcos.", "10.0.0.1") in pairs
    assert ("web.marathon.dcos.", "10.0.1.1") in pairs


# -- bad input: exit 2 and say what is wrong ------------------------------------------------------
def test_missing_file_is_exit_2() -> None:
    result = navstar("dns", "records", "--mesos-state", "/nonexistent/state.json", "--json")
    assert result.returncode == 2
    assert "cannot read --mesos-state /nonexistent/state.json: No such file or directory" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ("", "is not valid JSON"),
    ("[1, 2]", "is not a Mesos state: state: expected a JSON object"),
    ('{"slaves": [{"id": "S-1", "pid": "nonsense"}]}', "state.slaves[0].pid: expected one '@'"),
    ('{"frameworks": [{"tasks": [{"statuses": [{"timestamp": "x"}]}]}]}',
     "state.frameworks[0].tasks[0].statuses[0].timestamp"),
])
def test_bad_state_files_are_exit_2_with_the_reason(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    result = runner.invoke(app, ["dns", "records", "--mesos-state", str(path)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_binary_file_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    result = runner.invoke(app, ["dns", "records", "--mesos-state", str(path)])
    assert result.exit_code == 2
    assert "is not UTF-8 text" in result.output


@pytest.mark.parametrize(("option", "message"), [
    (["--ip-sources", "netinfo,dns"], "--ip-sources: expected some of netinfo, mesos, host, docker"),
    (["--domain", "a..b"], "--domain: expected a DNS name"),
    (["--listener", "0.0.0.0"], "--listener: expected this resolver's concrete IP address"),
    (["--label-spec", "rfc3986"], "'rfc3986' is not one of 'rfc1123', 'rfc952'"),
])
def test_bad_options_are_exit_2_naming_the_option(state_file: Path, option: list[str], message: str) -> None:
    result = runner.invoke(app, ["dns", "records", "--mesos-state", str(state_file), *option])
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())


def test_missing_mesos_state_option_is_exit_2() -> None:
    result = runner.invoke(app, ["dns", "records"])
    assert result.exit_code == 2
    assert "--mesos-state" in result.output
