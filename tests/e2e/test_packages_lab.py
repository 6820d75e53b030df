"""Issue 14 in a real lab, from the root namespace through Admin Router, with the real ``dcos``
CLI 0.6.1: the local Universe searched and described, packages installed (defaults and
``--options``), listed and uninstalled from Marathon's apps, options that break a package's
schema refused naming the field, marathon-lb installed from the Universe serving nginx on the
public agent's service port, and the repository list edited. One lab (an agent and a public
agent) for the module; every app is removed at the end."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO, LabHandle, dcos_runner, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lab(lab_factory) -> LabHandle:
    return lab_factory(agents=1, public_agents=1)


@pytest.fixture(scope="module")
def dcos(lab: LabHandle, dcos_cli: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    run = dcos_runner(dcos_cli, tmp_path_factory.mktemp("dcos"))

    state = lab.state
    password = (state.directory / "admin-password").read_text().strip()
    run("cluster", "setup", state.front_door, "--username", "admin", f"--password={password}")
    token = json.loads(httpx.post(f"{state.front_door}/acs/api/v1/auth/login",
                                  json={"uid": "admin", "password": password}, timeout=30).text)["token"]

    def cosmos_ready() -> bool:
        resp = httpx.get(f"{state.front_door}/capabilities", timeout=5, headers={
            "Authorization": f"token={token}",
            "Accept": "application/vnd.dcos.capabilities+json;charset=utf-8;version=v1"})
        return resp.status_code == 200
    wait_until(cosmos_ready, 30, message="Cosmos answers /capabilities through Admin Router")
    yield run
    for app_id in ("/nginx", "/site-a", "/marathon-lb"):
        lab.remove_app(app_id)


def marathon_app(lab: LabHandle, app_id: str) -> dict | None:
    with lab.marathon() as client:
        resp = client.get(f"/v2/apps/{app_id.strip('/')}")
    return resp.json()["app"] if resp.status_code == 200 else None


def test_search_describe_and_render_the_local_universe(dcos) -> None:
    table = dcos("package", "search").stdout
    for name in ("marathon-lb", "marathon-lb-autoscale", "nginx", "static-site"):
        assert name in table
    found = json.loads(dcos("package", "search", "marathon-lb*", "--json").stdout)["packages"]
    assert sorted(p["name"] for p in found) == ["marathon-lb", "marathon-lb-autoscale"]
    described = json.loads(dcos("package", "describe", "marathon-lb").stdout)["package"]
    assert described["name"] == "marathon-lb" and described["releaseVersion"] == 0
    options = described["config"]["properties"]["marathon-lb"]["properties"]
    assert {"name", "instances", "cpus", "mem", "haproxy-group", "http-port", "stats-port"} <= set(options)
    template = base64.b64decode(described["marathon"]["v2AppMustacheTemplate"]).decode()
    assert "{{marathon-lb.haproxy-group}}" in template
    # Rendered (not run: the lab has no public agent): on slave_public, running navstar marathon-lb.
    app = json.loads(dcos("package", "describe", "marathon-lb", "--app", "--render").stdout)
    assert app["id"] == "marathon-lb" and app["acceptedResourceRoles"] == ["slave_public"]
    assert "marathon-lb" in app["cmd"] and "--group external" in app["cmd"]
    assert app["labels"]["DCOS_PACKAGE_NAME"] == "marathon-lb"
    assert json.loads(dcos("package", "describe", "nginx", "--package-versions").stdout) == ["1.7.7-0.1"]
    config = json.loads(dcos("package", "describe", "static-site", "--config").stdout)
    assert config["properties"]["site"]["required"] == ["title"]
    missing = dcos("package", "describe", "no-such-package", check=False)
    assert missing.returncode != 0 and "Package [no-such-package] not found" in missing.stderr


def test_install_list_and_uninstall_through_marathon(lab: LabHandle, dcos, tmp_path: Path) -> None:
    out = dcos("package", "install", "nginx", "--yes").stdout
    assert "Installing Marathon app for package [nginx]" in out
    lab.running("/nginx", 1)
    labels = marathon_app(lab, "/nginx")["labels"]
    assert labels["DCOS_PACKAGE_NAME"] == "nginx" and labels["DCOS_PACKAGE_VERSION"] == "1.7.7-0.1"
    assert labels["DCOS_PACKAGE_SOURCE"] == f"http://{lab.state.master.ip}:8082/repo"
    assert json.loads(base64.b64decode(labels["DCOS_PACKAGE_METADATA"]))["name"] == "nginx"
    assert json.loads(base64.b64decode(labels["DCOS_PACKAGE_OPTIONS"])) == {}
    again = dcos("package", "install", "nginx", "--yes", check=False)
    assert again.returncode != 0 and "already installed" in again.stderr

    options = tmp_path / "site.json"
    options.write_text(json.dumps({"service": {"name": "site-a"}, "site": {"title": "Hello packages", "theme": "dark"}}))
    dcos("package", "install", "static-site", f"--options={options}", "--yes")
    lab.running("/site-a", 1, healthy=True)
    site = marathon_app(lab, "/site-a")
    assert site["env"]["SITE_TITLE"] == "Hello packages"
    assert json.loads(base64.b64decode(site["labels"]["DCOS_PACKAGE_OPTIONS"]))["site"]["theme"] == "dark"
    state = lab.state
    password = (state.directory / "admin-password").read_text().strip()
    token = httpx.post(f"{state.front_door}/acs/api/v1/auth/login", json={"uid": "admin", "password": password},
                       timeout=30).json()["token"]

    def page() -> str | None:
        resp = httpx.get(f"{state.front_door}/service/site-a/", headers={"Authorization": f"token={token}"}, timeout=5)
        return resp.text if resp.status_code == 200 else None
    assert "<h1>Hello packages</h1>" in wait_until(page, 30, message="the installed site through /service/site-a/")

    listed = json.loads(dcos("package", "list", "--json").stdout)
    assert sorted((p["name"], p["apps"][0]) for p in listed) == [("nginx", "/nginx"), ("static-site", "/site-a")]
    table = dcos("package", "list").stdout
    assert "/site-a" in table and "/nginx" in table

    dcos("package", "uninstall", "nginx", "--yes")
    dcos("package", "uninstall", "static-site", "--app-id=/site-a", "--yes")
    assert marathon_app(lab, "/nginx") is None and marathon_app(lab, "/site-a") is None
    empty = dcos("package", "list", check=False)
    assert empty.returncode == 1 and "no installed packages" in empty.stderr
    gone = dcos("package", "uninstall", "nginx", "--yes", check=False)
    assert gone.returncode != 0 and "not installed" in (gone.stdout + gone.stderr)


def test_marathon_lb_from_the_universe_serves_nginx_on_the_public_agent(lab: LabHandle, dcos) -> None:
    """The issue's acceptance: ``dcos package install marathon-lb --yes`` runs it on the public agent,
    and the nginx app with servicePort 10000 (examples/nginx-marathon-lb.json) answers there from
    the root namespace; uninstalled, the port goes quiet."""
    public = lab.ip("public-agent-1")
    out = dcos("package", "install", "marathon-lb", "--yes").stdout
    assert "Installing Marathon app for package [marathon-lb]" in out
    lab.add_app(json.loads((REPO / "examples" / "nginx-marathon-lb.json").read_text()))

    def page() -> str | None:
        try:
            resp = httpx.get(f"http://{public}:10000/", timeout=2)
        except httpx.HTTPError:
            return None
        return resp.text if resp.status_code == 200 else None
    try:
        (task,) = lab.running("/marathon-lb", 1, timeout=60)
        assert task["slaveId"] == "public-agent-1"
        (nginx,) = lab.running("/nginx", 1, timeout=60, healthy=True)
        body = wait_until(page, 60, message=f"nginx through marathon-lb at http://{public}:10000/")
        assert "Welcome to nginx!" in body and nginx["id"] in body
        listed = json.loads(dcos("package", "list", "--json").stdout)
        assert [(p["name"], p["apps"]) for p in listed] == [("marathon-lb", ["/marathon-lb"])]
    finally:
        lab.remove_app("/nginx")
        dcos("package", "uninstall", "marathon-lb", "--yes", check=False)
    assert marathon_app(lab, "/marathon-lb") is None
    wait_until(lambda: page() is None, 30, message=f"http://{public}:10000/ quiet once marathon-lb is uninstalled")


def test_options_breaking_the_schema_are_refused_naming_the_field(lab: LabHandle, dcos, tmp_path: Path) -> None:
    no_title = dcos("package", "install", "static-site", "--yes", check=False)
    assert no_title.returncode != 0
    assert "Required parameter missing: title" in no_title.stderr and "Path: site" in no_title.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"service": {"instances": 0, "mem": 4}, "site": {"title": "x", "theme": "neon"}}))
    refused = dcos("package", "install", "static-site", f"--options={bad}", "--yes", check=False)
    assert refused.returncode != 0
    for line in ("Options JSON failed validation", "Path: service.instances", "Path: service.mem",
                 "Path: site.theme", "Required minimum: 1"):
        assert line in refused.stderr, refused.stderr
    assert marathon_app(lab, "/static-site") is None      # nothing half installed


def test_repositories_add_remove_and_unreadable(lab: LabHandle, dcos) -> None:
    universe = f"http://{lab.state.master.ip}:8082/repo"
    assert dcos("package", "repo", "list").stdout.strip() == f"Universe: {universe}"
    twice = dcos("package", "repo", "add", "copy", universe, check=False)
    assert twice.returncode != 0 and "already present" in twice.stderr
    nowhere = f"http://{lab.state.master.ip}:8083/repo"
    unreadable = dcos("package", "repo", "add", "nowhere", nowhere, check=False)
    assert unreadable.returncode != 0 and "[nowhere]" in unreadable.stderr and nowhere in unreadable.stderr
    dcos("package", "repo", "remove", "Universe")
    try:
        assert dcos("package", "search", check=False).returncode == 1
        gone = dcos("package", "describe", "nginx", check=False)
        assert gone.returncode != 0 and "Package [nginx] not found" in gone.stderr
    finally:
        dcos("package", "repo", "add", "Universe", universe, "--index=0")
    assert json.loads(dcos("package", "repo", "list", "--json").stdout)["repositories"] == \
        [{"name": "Universe", "uri": universe}]
    assert "nginx" in dcos("package", "search", "nginx").stdout


def test_the_navstar_package_cli(lab: LabHandle, dcos, tmp_path: Path) -> None:
    found = json.loads(lab.cli("package", "search", "nginx", "--json").stdout)["packages"]
    assert [p["name"] for p in found] == ["nginx"]
    app = json.loads(lab.cli("package", "render", "marathon-lb").stdout)
    assert app["acceptedResourceRoles"] == ["slave_public"] and app["labels"]["DCOS_PACKAGE_NAME"] == "marathon-lb"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"site": {"title": "", "theme": "neon"}}))
    refused = lab.cli("package", "install", "static-site", "--options", str(bad), "--yes")
    assert refused.returncode == 1 and "JsonSchemaMismatch" in refused.stderr
    assert "site.theme" in refused.stderr and "site.title" in refused.stderr
    installed = lab.cli("package", "install", "nginx", "--app-id", "/cli-nginx", "--yes")
    assert installed.returncode == 0 and "/cli-nginx" in installed.stdout, installed.stderr
    try:
        listed = json.loads(lab.cli("package", "list", "--json").stdout)["packages"]
        assert [i["appId"] for i in listed] == ["/cli-nginx"]
        # The same install, seen by the real CLI.
        assert json.loads(dcos("package", "list", "--json").stdout)[0]["apps"] == ["/cli-nginx"]
    finally:
        removed = lab.cli("package", "uninstall", "nginx", "--yes")
    assert removed.returncode == 0 and marathon_app(lab, "/cli-nginx") is None
