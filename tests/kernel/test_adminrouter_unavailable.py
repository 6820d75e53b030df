"""Admin Router's nginx (the rendered template) in a namespace of the test's, in front of a real
master: an upstream that does not answer, and then the token validator (the master's backend)
gone, are JSON 503s with ``Retry-After`` — never nginx's HTML 500/502."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from adminrouter.config import Settings, render
from adminrouter.routes import ServiceRoute
from adminrouter.supervisor import Supervisor
from tests.waiting import wait_until

FRONT = "127.0.0.1:8480"
SECRET = "kernel-test-secret"


def get(netns, path: str, token: str) -> tuple[int, dict[str, str], str]:
    """``curl`` inside the namespace: status, headers (lower-case names), body."""
    out = netns.run("curl", "-s", "-m", "5", "-D", "-", "-H", f"Authorization: token={token}",
                    f"http://{FRONT}{path}").stdout
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    status_line, *lines = head.split("\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.fixture
def front(netns, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A master (Marathon on :8088, its validator on :8101) and nginx whose Marathon upstream is
    :8089, where nothing listens. Yields the master's process."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    log = open(tmp_path / "master.log", "wb")
    master = netns.popen(sys.executable, "-m", "navstar", "master", "--marathon-listen", "127.0.0.1:8088",
                         "--mesos-listen", "127.0.0.1:5050", "--token-file", str(secret),
                         "--adminrouter-listen", "127.0.0.1:8101", stdout=log, stderr=subprocess.STDOUT)
    settings = Settings(listen=FRONT, run_dir=str(tmp_path / "ar"), marathon="127.0.0.1:8089", secret=SECRET,
                        user="root", workers="1")
    supervisor = Supervisor(settings, master="http://127.0.0.1:5050")
    supervisor.prepare()
    # /service/idle/: an app whose one task is not running yet.
    supervisor.conf.write_text(render(settings, [ServiceRoute("idle", "http", (), "/idle")]))
    nginx = netns.popen("nginx", "-c", str(supervisor.conf), "-e", str(supervisor.run_dir / "error.log"),
                        stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: netns.run("curl", "-s", "-m", "1", "http://127.0.0.1:8088/ping", check=False).stdout
                   == "pong", timeout=30, message="the master answering")
        wait_until(lambda: netns.run("curl", "-s", "-m", "1", "-o", "/dev/null", f"http://{FRONT}/metadata",
                                     check=False).returncode == 0, timeout=10, message="nginx answering")
        yield master
    finally:
        for proc in (nginx, master):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def test_an_unanswering_upstream_and_then_an_unanswering_validator_are_json_503s(netns, front) -> None:
    # The validator accepts the cluster secret; Marathon's upstream refuses the connection.
    status, headers, body = get(netns, "/marathon/v2/apps", SECRET)
    assert status == 503 and headers["content-type"].startswith("application/json"), (status, body)
    assert headers["retry-after"] == "1" and json.loads(body)["code"] == "ERR_UPSTREAM_UNAVAILABLE"
    assert get(netns, "/marathon/v2/apps", "not-a-token")[0] == 401      # the validator answers

    front.send_signal(signal.SIGKILL)       # the master, and with it the validator, is gone
    front.wait(timeout=10)
    # A token nginx has not cached a verdict for: auth_request cannot ask anyone.
    status, headers, body = get(netns, "/marathon/v2/apps", "eyJhbGciOiJIUzI1NiJ9.e30.c2ln")
    assert status == 503 and headers["content-type"].startswith("application/json"), (status, body)
    assert headers["retry-after"] == "1"
    answer = json.loads(body)
    assert answer["code"] == "ERR_AUTH_UNAVAILABLE" and "token validator" in answer["description"]
    status, _headers, body = get(netns, "/mesos/master/state", "another-uncached-token")
    assert status == 503 and json.loads(body)["code"] == "ERR_AUTH_UNAVAILABLE"


def test_a_service_without_a_task_or_without_a_route_asks_for_the_token_first(netns, front) -> None:
    # nginx's ``return`` would answer before auth_request and tell a stranger what exists.
    for path in ("/service/idle/", "/service/none/"):
        status, headers, body = get(netns, path, "not-a-token")
        assert status == 401 and json.loads(body)["code"] == "ERR_MISSING_AUTH_TOKEN", (path, status, body)
    status, headers, body = get(netns, "/service/idle/index.html", SECRET)
    assert status == 503 and headers["retry-after"] == "1", (status, body)
    answer = json.loads(body)
    assert answer["code"] == "ERR_SERVICE_UNAVAILABLE" and "/idle" in answer["description"]
    status, _headers, body = get(netns, "/service/none/", SECRET)
    assert status == 404 and json.loads(body)["code"] == "ERR_UNKNOWN_SERVICE", (status, body)
