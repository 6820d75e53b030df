"""The local Universe: packages as folders, built into one repository file (DC/OS's format).

Layout (as DC/OS's Universe repository has it)::

    universe/packages/<Initial>/<name>/<releaseVersion>/
        package.json             metadata (packagingVersion "3.0", name, version, maintainer, ...)
        config.json              JSON schema (draft 4) of the options, with defaults
        marathon.json.mustache   the Marathon app, rendered with the options
        resource.json            assets, images (optional)

``build(root)`` checks every package and returns the repository
``{"packages": [{...package.json, "releaseVersion", "config", "marathon":
{"v2AppMustacheTemplate": base64}, "resource"}]}``, served with media type
``application/vnd.dcos.universe.repo+json;charset=utf-8;version=v3``. A malformed package is
refused with ``UniverseError`` naming the file and the field. ``parse_repository`` checks a
repository fetched from elsewhere the same way (without the folder rules).
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator
from jsonschema.exceptions import SchemaError

from universe.render import TemplateError, options_with_defaults, render_app, schema_errors

REPO_MEDIA_TYPE = "application/vnd.dcos.universe.repo+json;charset=utf-8;version=v3"
SOURCE = Path(__file__).resolve().parent / "packages"
PACKAGE_FILES = ("package.json", "config.json", "marathon.json.mustache", "resource.json")

_NAME = r"^[a-z][a-z0-9-]*[a-z0-9]$"
_VERSION = r"^[-a-zA-Z0-9.]+$"
_URL = {"type": "string", "pattern": "^https?://"}

# The fields of a packaging-version 3.0 package this project reads and serves (Universe's v3
# package, as facts of the format; its CLI sections are not supported here).
PACKAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "packagingVersion": {"enum": ["3.0"]},
        "name": {"type": "string", "pattern": _NAME},
        "version": {"type": "string", "pattern": _VERSION},
        "releaseVersion": {"type": "integer", "minimum": 0},
        "maintainer": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "tags": {"type": "array", "items": {"type": "string", "pattern": r"^[^\s]+$"}},
        "scm": {"type": "string"},
        "website": {"type": "string"},
        "framework": {"type": "boolean"},
        "selected": {"type": "boolean"},
        "preInstallNotes": {"type": "string"},
        "postInstallNotes": {"type": "string"},
        "postUninstallNotes": {"type": "string"},
        "licenses": {"type": "array", "items": {
            "type": "object", "required": ["name", "url"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "url": _URL}}},
        "minDcosReleaseVersion": {"type": "string", "pattern": r"^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*$"},
        "hasKnownIssues": {"type": "boolean"},
        "lastUpdated": {"type": "number"},
        "marathon": {"type": "object", "required": ["v2AppMustacheTemplate"], "additionalProperties": False,
                     "properties": {"v2AppMustacheTemplate": {"type": "string"}}},
        "config": {"type": "object"},
        "resource": {"type": "object", "additionalProperties": False, "properties": {
            "assets": {"type": "object", "additionalProperties": False, "properties": {
                "uris": {"type": "object", "additionalProperties": {"type": "string"}},
                "container": {"type": "object", "additionalProperties": False, "properties": {
                    "docker": {"type": "object", "additionalProperties": {"type": "string"}}}}}},
            "images": {"type": "object", "additionalProperties": False, "properties": {
                "icon-small": {"type": "string"}, "icon-medium": {"type": "string"},
                "icon-large": {"type": "string"},
                "screenshots": {"type": "array", "items": {"type": "string"}}}}}},
    },
    "required": ["packagingVersion", "name", "version", "releaseVersion", "maintainer", "description", "tags"],
    "additionalProperties": False,
}
_FROM_OTHER_FILES = ("releaseVersion", "marathon", "config", "resource")


class UniverseError(ValueError):
    """A package that cannot go into the repository; the message names the file and the field."""


def _field_problems(where: str, document: Any, schema: dict[str, Any]) -> list[str]:
    problems = []
    for entry in schema_errors(schema, document):
        path = entry["instance"]["pointer"].lstrip("/").replace("/", ".")
        if entry["keyword"] == "required":
            problems += [f"{where}: {(path + '.') if path else ''}{name}: required" for name in entry["missing"]]
        elif entry["keyword"] == "additionalProperties":
            problems += [f"{where}: {(path + '.') if path else ''}{name}: unknown field" for name in entry["unwanted"]]
        else:
            problems.append(f"{where}: {path or '(top level)'}: {entry['message']}")
    return problems


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise UniverseError(f"{path}: not JSON: {exc}") from None


def check_package(package: dict[str, Any], where: str) -> None:
    """Raises ``UniverseError`` unless ``package`` is a well-formed repository entry: its fields,
    its options schema (a valid draft-4 schema whose defaults satisfy it) and its template
    (rendered with the defaults into a JSON object)."""
    problems = _field_problems(where, package, PACKAGE_SCHEMA)
    if problems:
        raise UniverseError("; ".join(problems))
    config = package.get("config")
    if config is not None:
        try:
            Draft4Validator.check_schema(config)
        except SchemaError as exc:
            field = ".".join(str(p) for p in exc.absolute_path) or "(top level)"
            raise UniverseError(f"{where}: config: {field}: not a valid JSON schema: {exc.message}") from None
        if config.get("type", "object") != "object":
            raise UniverseError(f"{where}: config: type: the options schema must describe an object")
        defaults = options_with_defaults(config, None)
        bad = [e for e in schema_errors(config, defaults) if e["keyword"] != "required"]
        if bad:
            first = bad[0]
            raise UniverseError(f"{where}: config: the default of {first['instance']['pointer'].lstrip('/')} "
                                f"breaks the schema: {first['message']}")
    marathon = package.get("marathon")
    if marathon is not None:
        try:
            template = base64.b64decode(marathon["v2AppMustacheTemplate"], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise UniverseError(f"{where}: marathon.v2AppMustacheTemplate: not base64 of UTF-8 text") from None
        defaults = options_with_defaults(config, None)
        try:
            app = render_app(template, defaults, package.get("resource"))
        except TemplateError as exc:
            raise UniverseError(f"{where}: marathon.json.mustache: {exc}") from None
        if "id" not in app:
            raise UniverseError(f"{where}: marathon.json.mustache: the rendered app has no id")


def load_package(directory: Path) -> dict[str, Any]:
    """One package folder (``<name>/<releaseVersion>/``) as a repository entry."""
    try:
        release = int(directory.name)
    except ValueError:
        raise UniverseError(f"{directory}: a package version folder is named by its release number (0, 1, …)") from None
    meta_path = directory / "package.json"
    if not meta_path.exists():
        raise UniverseError(f"{meta_path}: missing (every package has package.json)")
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise UniverseError(f"{meta_path}: must be a JSON object")
    for name in _FROM_OTHER_FILES:
        if name in meta:
            raise UniverseError(f"{meta_path}: {name}: comes from the folder and the other files, not package.json")
    problems = _field_problems(str(meta_path), {**meta, "releaseVersion": release}, PACKAGE_SCHEMA)
    if problems:
        raise UniverseError("; ".join(problems))
    if meta["name"] != directory.parent.name:
        raise UniverseError(f"{meta_path}: name: {meta['name']!r} but the folder is {directory.parent.name!r}")
    package: dict[str, Any] = {**meta, "releaseVersion": release}
    config_path = directory / "config.json"
    if config_path.exists():
        package["config"] = _read_json(config_path)
    template_path = directory / "marathon.json.mustache"
    if template_path.exists():
        package["marathon"] = {"v2AppMustacheTemplate": base64.b64encode(template_path.read_bytes()).decode()}
    resource_path = directory / "resource.json"
    if resource_path.exists():
        package["resource"] = _read_json(resource_path)
    unknown = sorted(p.name for p in directory.iterdir() if p.name not in PACKAGE_FILES)
    if unknown:
        raise UniverseError(f"{directory}: unknown file(s) {', '.join(unknown)} (a package has {', '.join(PACKAGE_FILES)})")
    check_package(package, str(directory))
    return package


def build(root: Path = SOURCE) -> dict[str, Any]:
    """The repository of every package under ``root`` (``<Initial>/<name>/<release>/``), sorted by
    name and release. Raises ``UniverseError`` for the first malformed package."""
    if not root.is_dir():
        raise UniverseError(f"{root}: no such folder")
    packages = []
    for initial in sorted(p for p in root.iterdir() if p.is_dir()):
        for folder in sorted(p for p in initial.iterdir() if p.is_dir()):
            if initial.name != folder.name[:1].upper():
                raise UniverseError(f"{folder}: belongs under {folder.name[:1].upper()}/ (packages are filed by initial)")
            for release in sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name):
                packages.append(load_package(release))
    seen: set[tuple[str, str]] = set()
    for package in packages:
        key = (package["name"], package["version"])
        if key in seen:
            raise UniverseError(f"{root}: {package['name']} version {package['version']} appears twice")
        seen.add(key)
    packages.sort(key=lambda p: (p["name"], p["releaseVersion"]))
    return {"packages": packages}


def parse_repository(document: Any, where: str) -> list[dict[str, Any]]:
    """The packages of a repository read from ``where``; ``UniverseError`` names the bad entry."""
    if not isinstance(document, dict) or not isinstance(document.get("packages"), list):
        raise UniverseError(f"{where}: not a Universe repository (expected {{\"packages\": [...]}})")
    packages = document["packages"]
    for index, package in enumerate(packages):
        name = package.get("name", "?") if isinstance(package, dict) else "?"
        check_package(package, f"{where}: packages[{index}] ({name})")
    return list(packages)
