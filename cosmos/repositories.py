"""The package repositories Cosmos reads, in order, and their packages.

``RepositoryList`` keeps ``[{"name", "uri"}]`` in a JSON file (``<state dir>/repositories.json``,
written by rename; in memory without a state dir), starting from the defaults it is given.
``Repositories.packages()`` fetches every repository over HTTP (``Accept`` the Universe v4/v3
repository media types), checks each with ``universe.repository.parse_repository`` and caches it
for ``ttl`` seconds; a repository that cannot be read fails the request with an error naming it
(``RepositoryUriConnection``) — packages are never silently missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from cosmos.errors import (
    RepoNameOrUriMissing,
    RepositoryAddIndexOutOfBounds,
    RepositoryAlreadyPresent,
    RepositoryContentInvalid,
    RepositoryNotPresent,
    RepositoryUriConnection,
    UnsupportedRepositoryUri,
)
from universe.repository import UniverseError, parse_repository

REPOSITORY_ACCEPT = ("application/vnd.dcos.universe.repo+json;charset=utf-8;version=v4,"
                     "application/vnd.dcos.universe.repo+json;charset=utf-8;version=v3;q=0.9,"
                     "application/json;q=0.5")
_ACCEPTED_CONTENT = ("application/vnd.dcos.universe.repo+json", "application/json")


class RepositoryList:
    def __init__(self, defaults: list[dict[str, str]], path: Path | None = None) -> None:
        self.path = path
        self._repos = [dict(r) for r in defaults]
        if path is not None and path.exists():
            self._repos = [{"name": r["name"], "uri": r["uri"]} for r in json.loads(path.read_text())]

    def all(self) -> list[dict[str, str]]:
        return [dict(r) for r in self._repos]

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._repos, indent=2) + "\n")
        os.replace(tmp, self.path)

    def check_new(self, name: str, uri: str, index: int | None) -> None:
        """Raises the error ``add`` would, before anything is fetched."""
        if urlsplit(uri).scheme not in ("http", "https") or not urlsplit(uri).netloc:
            raise UnsupportedRepositoryUri(uri)
        same_name = any(r["name"] == name for r in self._repos)
        same_uri = any(r["uri"] == uri for r in self._repos)
        if same_name or same_uri:
            raise RepositoryAlreadyPresent(name if same_name else None, uri if same_uri else None)
        if index is not None and not 0 <= index <= len(self._repos):
            raise RepositoryAddIndexOutOfBounds(index, len(self._repos))

    def add(self, name: str, uri: str, index: int | None = None) -> list[dict[str, str]]:
        self.check_new(name, uri, index)
        self._repos.insert(len(self._repos) if index is None else index, {"name": name, "uri": uri})
        self._save()
        return self.all()

    def delete(self, name: str | None, uri: str | None) -> list[dict[str, str]]:
        if not name and not uri:
            raise RepoNameOrUriMissing()
        kept = [r for r in self._repos if not ((name and r["name"] == name) or (uri and r["uri"] == uri))]
        if len(kept) == len(self._repos):
            raise RepositoryNotPresent(name, uri)
        self._repos = kept
        self._save()
        return self.all()


class Repositories:
    """The repository list and a cache of what each repository holds."""

    def __init__(self, repo_list: RepositoryList, client: httpx.AsyncClient, ttl: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.list = repo_list
        self.client = client
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    async def fetch(self, name: str, uri: str) -> list[dict[str, Any]]:
        """The packages at ``uri``, fetched now (no cache); errors name the repository."""
        try:
            response = await self.client.get(uri, headers={"Accept": REPOSITORY_ACCEPT}, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise RepositoryUriConnection(name, uri, str(exc) or type(exc).__name__) from None
        if response.status_code != 200:
            raise RepositoryUriConnection(name, uri, f"HTTP {response.status_code}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in _ACCEPTED_CONTENT:
            raise RepositoryContentInvalid(name, uri, f"unsupported Content-Type {content_type or '(none)'}")
        try:
            return parse_repository(response.json(), uri)
        except ValueError as exc:   # UniverseError, or not JSON at all
            cause = str(exc) if isinstance(exc, UniverseError) else f"not JSON: {exc}"
            raise RepositoryContentInvalid(name, uri, cause) from None

    async def _cached(self, name: str, uri: str) -> list[dict[str, Any]]:
        hit = self._cache.get(uri)
        if hit is not None and self.clock() - hit[0] < self.ttl:
            return hit[1]
        packages = await self.fetch(name, uri)
        self._cache[uri] = (self.clock(), packages)
        return packages

    async def packages(self) -> list[tuple[dict[str, Any], str]]:
        """Every package of every repository with the URI it came from, in repository order
        (a name and version met twice: the first repository's wins)."""
        repos = self.list.all()
        fetched = await asyncio.gather(*(self._cached(r["name"], r["uri"]) for r in repos))
        seen: set[tuple[str, str]] = set()
        out: list[tuple[dict[str, Any], str]] = []
        for repo, packages in zip(repos, fetched, strict=True):
            for package in packages:
                key = (package["name"], package["version"])
                if key not in seen:
                    seen.add(key)
                    out.append((package, repo["uri"]))
        return out

    async def add(self, name: str, uri: str, index: int | None) -> list[dict[str, str]]:
        """Adds a repository once it has been read successfully (as Cosmos checks it works)."""
        self.list.check_new(name, uri, index)
        packages = await self.fetch(name, uri)
        self._cache[uri] = (self.clock(), packages)
        return self.list.add(name, uri, index)

    def delete(self, name: str | None, uri: str | None) -> list[dict[str, str]]:
        repos = self.list.delete(name, uri)
        kept = {r["uri"] for r in repos}
        self._cache = {u: v for u, v in self._cache.items() if u in kept}
        return repos
