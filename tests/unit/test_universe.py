"""The local Universe: its packages build into DC/OS' repository format, malformed packages are
refused naming the file and field, options are checked against config.json and templates render
as Cosmos renders them."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from universe.render import describe_error, options_with_defaults, render_app, render_template, schema_errors
from universe.repository import SOURCE, UniverseError, build, parse_repository

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_universe_builds_into_a_v3_repository() -> None:
    repository = build()
    names = [p["name"] for p in repository["packages"]]
    assert names == ["marathon-lb", "marathon-lb-autoscale", "nginx", "static-site"]
    for package in repository["packages"]:
        assert package["packagingVersion"] == "3.0" and package["releaseVersion"] == 0
        template = base64.b64decode(package["marathon"]["v2AppMustacheTemplate"]).decode()
        app = render_app(template, options_with_defaults(package["config"], None), package.get("resource"))
        assert app["id"] and isinstance(app.get("cpus"), int | float)
    lb = next(p for p in repository["packages"] if p["name"] == "marathon-lb")
    app = render_app(base64.b64decode(lb["marathon"]["v2AppMustacheTemplate"]).decode(),
                     options_with_defaults(lb["config"], {"marathon-lb": {"instances": 2, "haproxy-group": "edge"}}),
                     None)
    assert app["acceptedResourceRoles"] == ["slave_public"] and app["instances"] == 2
    assert "--group edge" in app["cmd"] and app["cmd"].split()[1:3] == ["navstar", "marathon-lb"]


def _default_app(name: str) -> dict:
    package = next(p for p in build()["packages"] if p["name"] == name)
    template = base64.b64decode(package["marathon"]["v2AppMustacheTemplate"]).decode()
    return render_app(template, options_with_defaults(package["config"], None), package.get("resource"))


@pytest.mark.parametrize("name", ["marathon-lb", "marathon-lb-autoscale"])
def test_the_edge_packages_render_the_examples_apps(name: str) -> None:
    """With its defaults, the package is examples/<name>.json: same placement, ports, health check and
    credential (the cluster secret as a Marathon secret); the command line the example's, with the
    package's ports (marathon-lb) or marathon-lb-autoscale's own defaults (the example's are short
    test intervals)."""
    app, example = _default_app(name), json.loads((REPO / "examples" / f"{name}.json").read_text())
    command, example_command = app.pop("cmd").split(), example.pop("cmd").split()
    assert app == example
    assert command[:4] == example_command[:4] == ["exec", "navstar", name, "--marathon"]
    flags = {f for f in command if f.startswith("--")}
    assert flags >= {f for f in example_command if f.startswith("--")}
    if name == "marathon-lb":
        assert command == [*example_command, "--http-port", "80", "--stats-port", "9090"]


def test_navstar_universe_build_writes_the_repository_file(tmp_path: Path) -> None:
    out = tmp_path / "repo.json"
    done = subprocess.run([sys.executable, "-m", "navstar", "universe", "build", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == build()


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "packages"
    shutil.copytree(SOURCE, root)
    return root


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(("change", "expected"), [
    (lambda root: _edit(root / "N/nginx/0/package.json", lambda d: d.pop("maintainer")),
     "N/nginx/0/package.json: maintainer: required"),
    (lambda root: _edit(root / "N/nginx/0/package.json", lambda d: d.update(tags=["two words"])),
     "N/nginx/0/package.json: tags.0: 'two words' does not match"),
    (lambda root: _edit(root / "N/nginx/0/package.json", lambda d: d.update(colour="red")),
     "N/nginx/0/package.json: colour: unknown field"),
    (lambda root: _edit(root / "N/nginx/0/package.json", lambda d: d.update(name="nginy")),
     "N/nginx/0/package.json: name: 'nginy' but the folder is 'nginx'"),
    (lambda root: _edit(root / "N/nginx/0/config.json",
                        lambda d: d["properties"]["service"]["properties"]["mem"].update(default=1)),
     "N/nginx/0: config: the default of service/mem breaks the schema: 1 is less than the minimum of 16"),
    (lambda root: _edit(root / "N/nginx/0/config.json", lambda d: d.update(type="nonsense")),
     "N/nginx/0: config: type: not a valid JSON schema"),
    (lambda root: (root / "N/nginx/0/marathon.json.mustache").write_text('{"id": "x", {{service.name}}}'),
     "N/nginx/0: marathon.json.mustache: the rendered template is not JSON"),
    (lambda root: (root / "N/nginx/0/package.json").write_text("{not json"), "N/nginx/0/package.json: not JSON"),
    (lambda root: (root / "N/nginx/0/notes.txt").write_text("hi"), "N/nginx/0: unknown file(s) notes.txt"),
    (lambda root: (root / "N/nginx/0").rename(root / "N/nginx/first"), "N/nginx/first: a package version folder"),
])
def test_a_malformed_package_is_refused_naming_file_and_field(tmp_path: Path, change, expected: str) -> None:
    root = _copy(tmp_path)
    change(root)
    with pytest.raises(UniverseError) as refused:
        build(root)
    assert expected in str(refused.value).replace(str(root) + "/", "")


def test_navstar_universe_build_refuses_a_malformed_package(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _edit(root / "S/static-site/0/package.json", lambda d: d.pop("description"))
    done = subprocess.run([sys.executable, "-m", "navstar", "universe", "build", "--source", str(root)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert "universe build refused" in done.stderr and "package.json: description: required" in done.stderr


def test_a_fetched_repository_is_checked_the_same_way() -> None:
    package = dict(build()["packages"][2])
    package["marathon"] = {"v2AppMustacheTemplate": "not base64!"}
    with pytest.raises(UniverseError, match=r"http://x/repo: packages\[0\] \(nginx\): marathon.v2AppMustacheTemplate"):
        parse_repository({"packages": [package]}, "http://x/repo")
    with pytest.raises(UniverseError, match="not a Universe repository"):
        parse_repository({"apps": []}, "http://x/repo")


SCHEMA = json.loads((SOURCE / "S/static-site/0/config.json").read_text())


def test_defaults_fill_nested_options_under_the_users() -> None:
    merged = options_with_defaults(SCHEMA, {"site": {"title": "T"}, "service": {"mem": 64}})
    assert merged == {"service": {"name": "static-site", "instances": 1, "cpus": 0.05, "mem": 64},
                      "site": {"title": "T", "theme": "light"}}


def test_schema_errors_name_each_field_in_cosmos_shape() -> None:
    options = options_with_defaults(SCHEMA, {"service": {"instances": 0, "extra": 1},
                                             "site": {"theme": "neon", "title": 5}})
    errors = schema_errors(SCHEMA, options)
    by_path = {(e["instance"]["pointer"], e["keyword"]): e for e in errors}
    assert by_path[("/service/instances", "minimum")]["minimum"] == 1
    assert by_path[("/service/instances", "minimum")]["found"] == 0
    assert by_path[("/service", "additionalProperties")]["unwanted"] == ["extra"]
    assert by_path[("/site/theme", "enum")]["enum"] == ["light", "dark"]
    assert by_path[("/site/title", "type")]["expected"] == ["string"]
    assert by_path[("/site/title", "type")]["found"] == "integer"
    lines = [describe_error(e) for e in errors]
    assert "service.instances: 0 is less than the minimum of 1" in lines
    assert "site.theme: 'neon' is not one of ['light', 'dark']" in lines
    missing = schema_errors(SCHEMA, options_with_defaults(SCHEMA, None))
    assert [describe_error(e) for e in missing] == ["site.title: required"]
    assert missing[0]["missing"] == ["title"] and missing[0]["instance"]["pointer"] == "/site"
    assert schema_errors(SCHEMA, options_with_defaults(SCHEMA, {"site": {"title": "ok"}})) == []


def test_templates_render_as_cosmos_does() -> None:
    template = ('{"id": "{{name}}", "on": {{flag}}, "off": {{other}}, "n": {{n}}, '
                '"tags": [{{#tags}}{{.}},{{/tags}}"end"], {{#flag}}"yes": true,{{/flag}}{{^other}}"no": true,{{/other}}'
                '"raw": {{#asJson}}nested{{/asJson}}}')
    data = {"name": 'a "quoted" <b> & c\\d', "flag": True, "other": False, "n": 0.5, "tags": ["x", 'y"z'],
            "nested": {"k": [1, "v"]}}
    assert render_template(template, data) == {
        "id": 'a "quoted" <b> & c\\d', "on": True, "off": False, "n": 0.5, "tags": ["x", 'y"z', "end"],
        "yes": True, "no": True, "raw": {"k": [1, "v"]}}


def test_a_template_that_is_not_a_json_object_is_an_error() -> None:
    from universe.render import TemplateError

    with pytest.raises(TemplateError, match="must be a JSON object"):
        render_template("[1, 2]", {})
    with pytest.raises(TemplateError, match="partials"):
        render_template('{"a": "{{> other}}"}', {})
