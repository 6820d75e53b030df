"""Cosmos' operations over the repositories and Marathon (no HTTP framing here; ``api`` does that).

Installed packages are Marathon apps carrying DC/OS' package labels, so ``list`` and
``uninstall`` read Marathon's apps alone and survive any restart of Cosmos:

| label | value |
|---|---|
| ``DCOS_PACKAGE_NAME`` / ``DCOS_PACKAGE_VERSION`` | the package's name and version |
| ``DCOS_PACKAGE_SOURCE`` | the URI of the repository it came from |
| ``DCOS_PACKAGE_METADATA`` | base64 of the package's metadata JSON (package.json's fields and ``images``) |
| ``DCOS_PACKAGE_OPTIONS`` | base64 of the options the user gave (defaults not included) |
| ``DCOS_PACKAGE_DEFINITION`` | base64 of a storage envelope: ``{"metadata": {"Content-Type", "Content-Encoding": "gzip"}, "data": base64(gzip(package JSON))}`` |

The template's own labels are kept; these win over any of the same name.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import logging
import re
from collections.abc import Iterable
from typing import Any

from cosmos.errors import (
    AmbiguousAppId,
    JsonSchemaMismatch,
    MarathonTemplateMustBeJsonObject,
    OptionsNotAllowed,
    PackageAlreadyInstalled,
    PackageNotFound,
    PackageNotInstalled,
    ServiceMarathonTemplateNotFound,
    UninstallNonExistentAppForPackage,
    VersionNotFound,
)
from cosmos.marathon import MarathonApps
from cosmos.repositories import Repositories
from universe.render import TemplateError, describe_error, options_with_defaults, render_app, schema_errors

log = logging.getLogger("navstar.cosmos")

NAME_LABEL = "DCOS_PACKAGE_NAME"
VERSION_LABEL = "DCOS_PACKAGE_VERSION"
SOURCE_LABEL = "DCOS_PACKAGE_SOURCE"
METADATA_LABEL = "DCOS_PACKAGE_METADATA"
OPTIONS_LABEL = "DCOS_PACKAGE_OPTIONS"
DEFINITION_LABEL = "DCOS_PACKAGE_DEFINITION"
PACKAGE_MEDIA_TYPE = "application/vnd.dcos.universe.package+json;charset=utf-8;version=v3"

CAPABILITIES = [{"name": "PACKAGE_MANAGEMENT"}]
# The metadata fields of a package (Cosmos' installed-package details), in Cosmos' order.
DETAIL_FIELDS = ("packagingVersion", "name", "version", "maintainer", "description", "tags", "selected", "scm",
                 "website", "framework", "preInstallNotes", "postInstallNotes", "postUninstallNotes", "licenses")


def encode_label(value: Any) -> str:
    return base64.b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()


def decode_label(text: str) -> Any:
    return json.loads(base64.b64decode(text, validate=True))


def package_details(package: dict[str, Any]) -> dict[str, Any]:
    details = {k: package[k] for k in DETAIL_FIELDS if k in package}
    details.setdefault("tags", [])
    details.setdefault("selected", False)
    details.setdefault("framework", False)
    return details


def package_metadata(package: dict[str, Any]) -> dict[str, Any]:
    metadata = package_details(package)
    images = (package.get("resource") or {}).get("images")
    if images:
        metadata["images"] = images
    return metadata


def storage_envelope(package: dict[str, Any]) -> dict[str, Any]:
    data = gzip.compress(json.dumps(package, separators=(",", ":")).encode(), mtime=0)
    return {"metadata": {"Content-Type": PACKAGE_MEDIA_TYPE, "Content-Encoding": "gzip"},
            "data": base64.b64encode(data).decode()}


def open_envelope(envelope: dict[str, Any]) -> dict[str, Any]:
    data = base64.b64decode(envelope["data"], validate=True)
    if envelope.get("metadata", {}).get("Content-Encoding") == "gzip":
        data = gzip.decompress(data)
    package = json.loads(data)
    if not isinstance(package, dict):
        raise ValueError("the envelope holds no package object")
    return package


def installed_package(app: dict[str, Any]) -> dict[str, Any] | None:
    """What an app's labels say was installed (the full package when the definition label is
    there, else the metadata label); None for an app no package made, or labels that do not
    decode (logged)."""
    labels = app.get("labels") or {}
    if NAME_LABEL not in labels:
        return None
    try:
        if DEFINITION_LABEL in labels:
            return open_envelope(decode_label(labels[DEFINITION_LABEL]))
        if METADATA_LABEL in labels:
            metadata = decode_label(labels[METADATA_LABEL])
            if isinstance(metadata, dict):
                return metadata
    except (ValueError, KeyError, TypeError, binascii.Error, OSError) as exc:
        log.warning("app %s: package labels do not decode: %s", app.get("id"), exc)
    return None


def normalize_app_id(app_id: str) -> str:
    return "/" + app_id.strip("/")


def _matches(query: str, result: dict[str, Any]) -> bool:
    fields = [result["name"], result["description"], *result["tags"]]
    if "*" in query:
        pattern = re.compile("^" + ".*".join(re.escape(part) for part in query.split("*")) + "$")
        return any(pattern.search(f) for f in fields)
    return any(query.lower() in f.lower() for f in fields)


class Cosmos:
    def __init__(self, repositories: Repositories, marathon: MarathonApps) -> None:
        self.repositories = repositories
        self.marathon = marathon

    # -- the catalogue
    async def _packages(self) -> list[tuple[dict[str, Any], str]]:
        return await self.repositories.packages()

    async def find(self, name: str, version: str | None = None) -> tuple[dict[str, Any], str]:
        """The package and its repository URI: the version asked for, else the highest release in the
        first repository (in list order) that has the package."""
        candidates = [(p, uri) for p, uri in await self._packages() if p["name"] == name]
        if not candidates:
            raise PackageNotFound(name)
        if version is not None:
            for package, uri in candidates:
                if package["version"] == version:
                    return package, uri
            raise VersionNotFound(name, version)
        first = candidates[0][1]
        return max((c for c in candidates if c[1] == first), key=lambda c: c[0]["releaseVersion"])

    async def search(self, query: str | None) -> dict[str, Any]:
        results: dict[str, dict[str, Any]] = {}
        for package, _uri in await self._packages():
            result = results.get(package["name"])
            if result is None or package["releaseVersion"] > result["_release"]:
                images = (package.get("resource") or {}).get("images")
                versions = result["versions"] if result else {}
                result = {"name": package["name"], "currentVersion": package["version"], "versions": versions,
                          "description": package["description"], "framework": package.get("framework", False),
                          "tags": package.get("tags", []), "selected": package.get("selected", False),
                          **({"images": images} if images else {}), "_release": package["releaseVersion"]}
                results[package["name"]] = result
            result["versions"][package["version"]] = package["releaseVersion"]
        found = [{k: v for k, v in r.items() if k != "_release"} for r in results.values()
                 if not query or _matches(query, r)]
        found.sort(key=lambda r: (not r["selected"], r["name"]))
        return {"packages": found}

    async def describe(self, name: str, version: str | None) -> dict[str, Any]:
        package, _uri = await self.find(name, version)
        return package

    async def list_versions(self, name: str) -> dict[str, Any]:
        versions = {p["version"]: p["releaseVersion"] for p, _ in await self._packages() if p["name"] == name}
        if not versions:
            raise PackageNotFound(name)
        return {"results": {v: str(r) for v, r in versions.items()}}

    # -- rendering
    async def render(self, name: str, version: str | None, options: dict[str, Any] | None,
                     app_id: str | None) -> dict[str, Any]:
        """The Marathon app ``install`` would post: options checked (defaults filled), template
        rendered, package labels added."""
        package, uri = await self.find(name, version)
        return self.render_package(package, uri, options, app_id)

    def render_package(self, package: dict[str, Any], source: str, options: dict[str, Any] | None,
                       app_id: str | None) -> dict[str, Any]:
        marathon = package.get("marathon")
        if not marathon:
            raise ServiceMarathonTemplateNotFound(package["name"], package["version"])
        config = package.get("config")
        if options and config is None:
            raise OptionsNotAllowed()
        merged = options_with_defaults(config, options)
        if config is not None:
            errors = schema_errors(config, merged)
            if errors:
                raise JsonSchemaMismatch(errors, "; ".join(describe_error(e) for e in errors))
        template = base64.b64decode(marathon["v2AppMustacheTemplate"]).decode()
        try:
            app = render_app(template, merged, package.get("resource"))
        except TemplateError as exc:
            raise MarathonTemplateMustBeJsonObject(str(exc)) from None
        labels = app.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise MarathonTemplateMustBeJsonObject("its labels must map names to strings")
        if app_id is not None:
            app["id"] = app_id
        app["labels"] = {**labels,
                         METADATA_LABEL: encode_label(package_metadata(package)),
                         NAME_LABEL: package["name"],
                         VERSION_LABEL: package["version"],
                         SOURCE_LABEL: source,
                         OPTIONS_LABEL: encode_label(options or {}),
                         DEFINITION_LABEL: encode_label(storage_envelope(package))}
        return app

    # -- installs: Marathon's apps
    async def install(self, name: str, version: str | None, options: dict[str, Any] | None,
                      app_id: str | None) -> dict[str, Any]:
        package, uri = await self.find(name, version)
        app = self.render_package(package, uri, options, app_id)
        created = await self.marathon.create(app)
        if created is None:
            raise PackageAlreadyInstalled(normalize_app_id(str(app.get("id", ""))))
        log.info("installed %s %s as %s", package["name"], package["version"], created.get("id"))
        answer: dict[str, Any] = {"packageName": package["name"], "packageVersion": package["version"],
                                  "appId": normalize_app_id(str(created.get("id") or app["id"]))}
        if package.get("postInstallNotes"):
            answer["postInstallNotes"] = package["postInstallNotes"]
        return answer

    async def installations(self, name: str | None = None, app_id: str | None = None) -> list[dict[str, Any]]:
        wanted = normalize_app_id(app_id) if app_id else None
        found: list[dict[str, Any]] = []
        for app in await self.marathon.list():
            package = installed_package(app)
            if package is None or (name and package.get("name") != name):
                continue
            if wanted and normalize_app_id(app["id"]) != wanted:
                continue
            info: dict[str, Any] = {"packageDefinition": package_details(package)}
            if package.get("resource") is not None:
                info["resourceDefinition"] = package["resource"]
            found.append({"appId": normalize_app_id(app["id"]), "packageInformation": info})
        found.sort(key=lambda i: (str(i["packageInformation"]["packageDefinition"].get("name", "")), str(i["appId"])))
        return found

    async def list(self, name: str | None, app_id: str | None) -> dict[str, Any]:
        return {"packages": await self.installations(name, app_id)}

    async def uninstall(self, name: str, app_id: str | None, remove_all: bool) -> dict[str, Any]:
        if app_id is not None:
            app = await self.marathon.get(app_id)
            if app is None:
                raise UninstallNonExistentAppForPackage(name, normalize_app_id(app_id))
            apps: Iterable[dict[str, Any]] = [app]
        else:
            apps = await self.marathon.list()
        targets = [(app, installed_package(app) or {}) for app in apps
                   if (app.get("labels") or {}).get(NAME_LABEL) == name]
        if not targets:
            raise PackageNotInstalled(name)
        if len(targets) > 1 and not remove_all:
            raise AmbiguousAppId(name, sorted(normalize_app_id(a["id"]) for a, _ in targets))
        results = []
        for app, package in targets:
            await self.marathon.destroy(app["id"])
            log.info("uninstalled %s from app %s", name, app["id"])
            result: dict[str, Any] = {"packageName": name, "appId": normalize_app_id(app["id"]),
                                      "packageVersion": (app.get("labels") or {}).get(VERSION_LABEL)}
            if package.get("postUninstallNotes"):
                result["postUninstallNotes"] = package["postUninstallNotes"]
            results.append(result)
        return {"results": results}

    # -- repositories
    def repository_list(self) -> dict[str, Any]:
        return {"repositories": self.repositories.list.all()}

    async def repository_add(self, name: str, uri: str, index: int | None) -> dict[str, Any]:
        return {"repositories": await self.repositories.add(name, uri, index)}

    def repository_delete(self, name: str | None, uri: str | None) -> dict[str, Any]:
        return {"repositories": self.repositories.delete(name, uri)}
