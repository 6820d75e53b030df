"""Cosmos against the real Marathon API (in-process master) and the local Universe served over
ASGI: media types as the dcos CLI sends them, install → a Marathon app with DC/OS' package labels,
list and uninstall from Marathon's apps alone, schema failures, repositories."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cosmos.api import ERROR_MEDIA_TYPE, cosmos_app
from cosmos.marathon import MarathonApps
from cosmos.repositories import Repositories, RepositoryList
from cosmos.service import Cosmos, open_envelope
from tests.unit.master_harness import Cluster
from universe.repository import build
from universe.server import universe_app

UNIVERSE = "http://universe/repo"


def media(name: str, version: int = 1) -> str:
    return f"application/vnd.dcos.{name}+json;charset=utf-8;version=v{version}"


def headers(op: str, version: int = 1) -> dict[str, str]:
    return {"Content-Type": media(f"package.{op}-request"), "Accept": media(f"package.{op}-response", version)}


def repository_transport(repos: dict[str, dict[str, Any]]) -> httpx.MockTransport:
    """``http://<host>/repo`` answers ``repos[host]`` as a Universe v3 repository; other hosts refuse."""
    async def handle(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host not in repos:
            raise httpx.ConnectError("connection refused", request=request)
        return await httpx.ASGITransport(universe_app(repos[host])).handle_async_request(request)
    return httpx.MockTransport(handle)


class Setup:
    def __init__(self, state_dir: Path | None = None, repos: dict[str, dict[str, Any]] | None = None,
                 cluster: Cluster | None = None) -> None:
        self.cluster = cluster or Cluster()
        self.repos = repos if repos is not None else {"universe": build()}
        self.state_dir = state_dir
        self.cosmos = self.make()
        self.api = httpx.AsyncClient(transport=httpx.ASGITransport(cosmos_app(self.cosmos)), base_url="http://cosmos")

    def make(self) -> Cosmos:
        repo_list = RepositoryList([{"name": "Universe", "uri": UNIVERSE}],
                                   self.state_dir / "repositories.json" if self.state_dir else None)
        fetch = httpx.AsyncClient(transport=repository_transport(self.repos))
        return Cosmos(Repositories(repo_list, fetch), MarathonApps(self.cluster.marathon))

    async def call(self, op: str, body: dict[str, Any], version: int = 1) -> httpx.Response:
        return await self.api.post(f"/package/{op}", json=body, headers=headers(op.replace("/", "."), version))

    async def apps(self) -> list[dict[str, Any]]:
        return (await self.cluster.marathon.get("/v2/apps")).json()["apps"]


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    made = Setup()
    yield made
    await made.api.aclose()


def labels_of(app: dict[str, Any]) -> dict[str, str]:
    return app["labels"]


async def test_capabilities_and_search(setup: Setup) -> None:
    resp = await setup.api.get("/capabilities", headers={"Accept": media("capabilities")})
    assert resp.status_code == 200 and resp.headers["content-type"] == media("capabilities")
    assert {"name": "PACKAGE_MANAGEMENT"} in resp.json()["capabilities"]
    resp = await setup.call("search", {"query": "nginx"})
    assert resp.headers["content-type"] == media("package.search-response")
    found = resp.json()["packages"]
    assert [p["name"] for p in found] == ["nginx"]        # marathon-lb's text names no nginx
    assert found[0]["versions"] == {"1.7.7-0.1": 0} and found[0]["currentVersion"] == "1.7.7-0.1"
    everything = (await setup.call("search", {})).json()["packages"]
    assert [p["name"] for p in everything] == ["marathon-lb", "nginx", "marathon-lb-autoscale", "static-site"]
    wildcard = (await setup.call("search", {"query": "marathon-lb*"})).json()["packages"]
    assert sorted(p["name"] for p in wildcard) == ["marathon-lb", "marathon-lb-autoscale"]


async def test_describe_answers_v3_or_v2_as_asked(setup: Setup) -> None:
    v3 = await setup.call("describe", {"packageName": "nginx"}, 3)
    assert v3.headers["content-type"] == media("package.describe-response", 3)
    assert v3.json()["package"]["releaseVersion"] == 0 and v3.json()["package"]["config"]["type"] == "object"
    v2 = await setup.call("describe", {"packageName": "nginx"}, 2)
    assert v2.headers["content-type"] == media("package.describe-response", 2)
    assert v2.json()["name"] == "nginx" and "releaseVersion" not in v2.json() and v2.json()["marathon"]
    both = await setup.api.post("/package/describe", json={"packageName": "nginx"}, headers={
        "Content-Type": media("package.describe-request"),
        "Accept": f"{media('package.describe-response', 2)};q=0.9,{media('package.describe-response', 3)};q=0.1"})
    assert both.headers["content-type"] == media("package.describe-response", 2)
    for body, kind, message in (({"packageName": "nope"}, "PackageNotFound", "Package [nope] not found"),
                                ({"packageName": "nginx", "packageVersion": "9"}, "VersionNotFound",
                                 "Version [9] of package [nginx] not found")):
        resp = await setup.call("describe", body, 3)
        assert resp.status_code == 400 and resp.headers["content-type"] == ERROR_MEDIA_TYPE
        assert resp.json()["type"] == kind and resp.json()["message"] == message


async def test_wrong_media_types_and_bodies_are_400s_in_cosmos_error_shape(setup: Setup) -> None:
    wrong_accept = await setup.api.post("/package/list", json={}, headers={
        "Content-Type": media("package.list-request"), "Accept": media("package.list-response", 9)})
    assert wrong_accept.status_code == 400 and wrong_accept.headers["content-type"] == ERROR_MEDIA_TYPE
    assert wrong_accept.json()["type"] == "not_valid" and "Item header 'Accept'" in wrong_accept.json()["message"]
    assert media("package.list-response") in wrong_accept.json()["message"]
    wrong_type = await setup.api.post("/package/list", json={}, headers={
        "Content-Type": "application/json", "Accept": media("package.list-response")})
    assert wrong_type.status_code == 400 and "Item header 'Content-Type'" in wrong_type.json()["message"]
    nothing = await setup.api.post("/package/install", content=b"", headers={"Accept": ""})
    assert nothing.status_code == 400 and nothing.json()["type"] == "multiple_errors"
    assert [e["type"] for e in nothing.json()["data"]["errors"]] == ["not_present"] * 3
    no_name = await setup.call("install", {"options": {}}, 2)
    assert no_name.status_code == 400 and no_name.json() == {
        "type": "not_parsed", "message": "Item 'body' unable to be parsed: packageName: required"}
    bad_type = await setup.call("uninstall", {"packageName": "nginx", "all": "yes"})
    assert bad_type.status_code == 400 and "all: 'yes' is not of type" in bad_type.json()["message"]
    capabilities = await setup.api.get("/capabilities", headers={"Accept": "text/html"})
    assert capabilities.status_code == 400 and capabilities.json()["type"] == "not_valid"
    assert (await setup.api.get("/capabilities", headers={"Accept": ""})).json()["type"] == "not_present"
    # curl's */* takes the preferred type
    assert (await setup.api.get("/capabilities", headers={"Accept": "*/*"})).headers["content-type"] == \
        media("capabilities")


async def test_install_posts_the_rendered_app_with_dcos_package_labels(setup: Setup) -> None:
    options = {"service": {"name": "site-a", "instances": 2}, "site": {"title": "Hi \"there\" <you>"}}
    resp = await setup.call("install", {"packageName": "static-site", "options": options}, 2)
    assert resp.status_code == 200 and resp.headers["content-type"] == media("package.install-response", 2)
    assert resp.json() == {"packageName": "static-site", "packageVersion": "1.0.0", "appId": "/site-a",
                           "postInstallNotes": "static-site is starting; Admin Router serves it at /service/<name>/."}
    (app,) = await setup.apps()
    assert app["id"] == "/site-a" and app["instances"] == 2 and app["env"]["SITE_TITLE"] == 'Hi "there" <you>'
    labels = labels_of(app)
    assert labels["DCOS_SERVICE_NAME"] == "site-a"               # the template's own labels are kept
    assert labels["DCOS_PACKAGE_NAME"] == "static-site" and labels["DCOS_PACKAGE_VERSION"] == "1.0.0"
    assert labels["DCOS_PACKAGE_SOURCE"] == UNIVERSE
    assert json.loads(base64.b64decode(labels["DCOS_PACKAGE_OPTIONS"])) == options
    metadata = json.loads(base64.b64decode(labels["DCOS_PACKAGE_METADATA"]))
    assert metadata["name"] == "static-site" and metadata["maintainer"] == "navstar"
    definition = open_envelope(json.loads(base64.b64decode(labels["DCOS_PACKAGE_DEFINITION"])))
    assert definition == next(p for p in build()["packages"] if p["name"] == "static-site")
    v1 = await setup.call("install", {"packageName": "nginx", "appId": "/web/nginx-b"}, 1)
    assert v1.headers["content-type"] == media("package.install-response", 1)
    assert v1.json() == {"packageName": "nginx", "packageVersion": "1.7.7-0.1", "appId": "/web/nginx-b"}


async def test_schema_failures_name_each_path_and_install_nothing(setup: Setup) -> None:
    resp = await setup.call("install", {"packageName": "static-site", "options": {
        "service": {"instances": 0}, "site": {"title": "x", "theme": "neon"}}}, 2)
    assert resp.status_code == 400 and resp.json()["type"] == "JsonSchemaMismatch"
    assert resp.json()["message"] == ("Options JSON failed validation: service.instances: 0 is less than the "
                                      "minimum of 1; site.theme: 'neon' is not one of ['light', 'dark']")
    pointers = [e["instance"]["pointer"] for e in resp.json()["data"]["errors"]]
    assert pointers == ["/service/instances", "/site/theme"]
    render = await setup.call("render", {"packageName": "static-site"})
    assert render.status_code == 400 and render.json()["message"].endswith("site.title: required")
    assert await setup.apps() == []


async def test_an_app_id_taken_is_409_and_marathons_refusal_leaves_nothing(setup: Setup) -> None:
    assert (await setup.call("install", {"packageName": "nginx"}, 2)).status_code == 200
    again = await setup.call("install", {"packageName": "nginx"}, 2)
    assert again.status_code == 409 and again.json()["type"] == "PackageAlreadyInstalled"
    refused = await setup.call("install", {"packageName": "nginx", "appId": "/Not Valid!"}, 2)
    assert refused.status_code == 400 and refused.json()["type"] == "MarathonBadResponse"
    assert [a["id"] for a in await setup.apps()] == ["/nginx"]


async def test_list_and_uninstall_come_from_marathon_alone(setup: Setup) -> None:
    for body in ({"packageName": "nginx"}, {"packageName": "nginx", "appId": "/nginx-2"},
                 {"packageName": "static-site", "options": {"site": {"title": "t"}}}):
        assert (await setup.call("install", body, 2)).status_code == 200
    await setup.cluster.marathon.post("/v2/apps", json={"id": "/plain", "cmd": "sleep 1000"})   # not a package
    restarted = Setup(cluster=setup.cluster)            # a new Cosmos: nothing but Marathon's apps to go on
    listed = (await restarted.call("list", {})).json()["packages"]
    assert [(i["packageInformation"]["packageDefinition"]["name"], i["appId"]) for i in listed] == \
        [("nginx", "/nginx"), ("nginx", "/nginx-2"), ("static-site", "/static-site")]
    assert listed[0]["packageInformation"]["resourceDefinition"]["assets"]
    only = (await restarted.call("list", {"appId": "nginx-2"})).json()["packages"]
    assert [i["appId"] for i in only] == ["/nginx-2"]
    ambiguous = await restarted.call("uninstall", {"packageName": "nginx"})
    assert ambiguous.status_code == 400 and ambiguous.json()["type"] == "AmbiguousAppId"
    one = await restarted.call("uninstall", {"packageName": "static-site"})
    assert one.json() == {"results": [{"packageName": "static-site", "appId": "/static-site",
                                       "packageVersion": "1.0.0"}]}
    missing = await restarted.call("uninstall", {"packageName": "nginx", "appId": "/nope"})
    assert missing.json()["type"] == "UninstallNonExistentAppForPackage"
    not_a_package = await restarted.call("uninstall", {"packageName": "nginx", "appId": "/plain"})
    assert not_a_package.json()["type"] == "PackageNotInstalled"
    everything = await restarted.call("uninstall", {"packageName": "nginx", "all": True})
    assert sorted(r["appId"] for r in everything.json()["results"]) == ["/nginx", "/nginx-2"]
    assert [a["id"] for a in await setup.apps()] == ["/plain"]
    assert (await restarted.call("uninstall", {"packageName": "nginx"})).json()["type"] == "PackageNotInstalled"


async def test_repositories_add_delete_and_unreadable_ones(tmp_path: Path) -> None:
    site = next(p for p in build()["packages"] if p["name"] == "static-site")
    extra = {"packages": [dict(build()["packages"][2], name="nginx-extra", version="2.0"),
                          dict(site, version="2.0.0")]}
    setup = Setup(state_dir=tmp_path, repos={"universe": build(), "extra": extra, "junk": {"apps": []}})
    listed = await setup.call("repository/list", {})
    assert listed.headers["content-type"] == media("package.repository.list-response")
    assert listed.json() == {"repositories": [{"name": "Universe", "uri": UNIVERSE}]}
    added = await setup.call("repository/add", {"name": "extra", "uri": "http://extra/repo", "index": "0"})
    assert added.json()["repositories"][0] == {"name": "extra", "uri": "http://extra/repo"}
    assert (await setup.call("describe", {"packageName": "nginx-extra"}, 3)).status_code == 200
    # The first repository with the package answers; a version only the other has is still found.
    assert (await setup.call("describe", {"packageName": "static-site"}, 3)).json()["package"]["version"] == "2.0.0"
    older = await setup.call("describe", {"packageName": "static-site", "packageVersion": "1.0.0"}, 3)
    assert older.json()["package"]["version"] == "1.0.0"
    assert (await setup.call("search", {"query": "static-site"})).json()["packages"][0]["versions"] == \
        {"2.0.0": 0, "1.0.0": 0}
    for body, kind, words in (
            ({"name": "down", "uri": "http://nowhere/repo"}, "RepositoryUriConnection",
             "Could not access data at URI for repository [down]: http://nowhere/repo"),
            ({"name": "junk", "uri": "http://junk/repo"}, "UniverseClientHttpError", "not a Universe repository"),
            ({"name": "extra", "uri": "http://other/repo"}, "RepositoryAlreadyPresent", "name [extra]"),
            ({"name": "ftp", "uri": "ftp://x/repo"}, "UnsupportedRepositoryUri", "ftp://x/repo"),
            ({"name": "far", "uri": "http://extra/other", "index": 7}, "RepositoryAddIndexOutOfBounds", "(7)"),
            ({"name": "neg", "uri": "http://extra/other", "index": "-1"}, "not_parsed", "index: '-1' does not match")):
        resp = await setup.call("repository/add", body)
        assert resp.status_code == 400 and resp.json()["type"] == kind and words in resp.json()["message"], resp.json()
    # Kept across a restart of Cosmos.
    assert [r["name"] for r in setup.make().repository_list()["repositories"]] == ["extra", "Universe"]
    deleted = await setup.call("repository/delete", {"name": "Universe"})
    assert deleted.json() == {"repositories": [{"name": "extra", "uri": "http://extra/repo"}]}
    gone = await setup.call("describe", {"packageName": "nginx"}, 3)
    assert gone.json()["type"] == "PackageNotFound"
    unknown = await setup.call("repository/delete", {"name": "Universe"})
    assert unknown.json()["type"] == "RepositoryNotPresent"
    assert (await setup.call("repository/delete", {})).json()["type"] == "RepoNameOrUriMissing"


async def test_metrics_count_requests_by_operation_and_result(setup: Setup) -> None:
    await setup.call("search", {})
    await setup.call("describe", {"packageName": "nope"}, 3)
    await setup.api.post("/package/list", json={}, headers={"Accept": "text/plain"})
    text = (await setup.api.get("/metrics")).text
    assert 'navstar_cosmos_requests_total{operation="search",result="ok"} 1.0' in text
    assert 'navstar_cosmos_requests_total{operation="describe",result="PackageNotFound"} 1.0' in text
    assert 'navstar_cosmos_requests_total{operation="list",result="multiple_errors"} 1.0' in text


async def test_an_unreadable_repository_fails_the_request_naming_it(tmp_path: Path) -> None:
    setup = Setup(repos={})
    resp = await setup.call("search", {})
    assert resp.status_code == 400 and resp.json()["type"] == "RepositoryUriConnection"
    assert "[Universe]" in resp.json()["message"] and UNIVERSE in resp.json()["message"]
