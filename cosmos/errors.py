"""Cosmos' errors: ``{"type", "message", "data"}`` with media type
``application/vnd.dcos.package.error+json;charset=utf-8;version=v1`` and Cosmos' status codes
(400 unless said otherwise). ``type`` is Cosmos' own error name, which the ``dcos`` CLI reads
(``JsonSchemaMismatch`` lists each failing path from ``data.errors``)."""

from __future__ import annotations

from typing import Any


class CosmosError(Exception):
    status = 400

    def __init__(self, message: str, data: dict[str, Any] | None = None, status: int | None = None,
                 kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        self.kind = kind or type(self).__name__
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


class PackageNotFound(CosmosError):
    def __init__(self, name: str) -> None:
        super().__init__(f"Package [{name}] not found", {"packageName": name})


class VersionNotFound(CosmosError):
    def __init__(self, name: str, version: str) -> None:
        super().__init__(f"Version [{version}] of package [{name}] not found",
                         {"packageName": name, "packageVersion": version})


class JsonSchemaMismatch(CosmosError):
    def __init__(self, errors: list[dict[str, Any]], summary: str) -> None:
        super().__init__(f"Options JSON failed validation: {summary}", {"errors": errors})


class OptionsNotAllowed(CosmosError):
    def __init__(self) -> None:
        super().__init__("No schema available to validate the provided options")


class PackageAlreadyInstalled(CosmosError):
    status = 409

    def __init__(self, app_id: str) -> None:
        super().__init__(f"Package is already installed: a Marathon app [{app_id}] exists", {"appId": app_id})


class PackageNotInstalled(CosmosError):
    def __init__(self, name: str) -> None:
        super().__init__(f"Package [{name}] is not installed", {"packageName": name})


class UninstallNonExistentAppForPackage(CosmosError):
    def __init__(self, name: str, app_id: str) -> None:
        super().__init__(f"Package [{name}] with id [{app_id}] is not installed",
                         {"packageName": name, "appId": app_id})


class AmbiguousAppId(CosmosError):
    def __init__(self, name: str, app_ids: list[str]) -> None:
        super().__init__(f"Multiple apps named [{name}] are installed: [{', '.join(app_ids)}]",
                         {"packageName": name, "appIds": app_ids})


class MarathonTemplateMustBeJsonObject(CosmosError):
    def __init__(self, problem: str) -> None:
        super().__init__(f"Rendered Marathon JSON must be a JSON object: {problem}")


class ServiceMarathonTemplateNotFound(CosmosError):
    def __init__(self, name: str, version: str) -> None:
        super().__init__(f"Package: [{name}] version: [{version}] does not have a Marathon template defined "
                         "and can not be rendered", {"packageName": name, "packageVersion": version})


class MarathonBadResponse(CosmosError):
    """Marathon refused the rendered app; ``data.errors`` carries Marathon's details."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else None
        details = body.get("details", []) if isinstance(body, dict) else []
        errors = [{"path": d.get("path"), "errors": d.get("errors", [])} for d in details if isinstance(d, dict)]
        super().__init__(f"Received response status code {status} from Marathon: {message or body}",
                         {"errors": errors}, status=400)


class MarathonUnavailable(CosmosError):
    status = 503

    def __init__(self, problem: str) -> None:
        super().__init__(f"Marathon is unavailable: {problem}", kind="ServiceUnavailable")


class RepositoryAlreadyPresent(CosmosError):
    def __init__(self, name: str | None, uri: str | None) -> None:
        if name and uri:
            message = f"Repository name [{name}] and URI [{uri}] are both already present in the list"
        elif name:
            message = f"Repository name [{name}] is already present in the list"
        else:
            message = f"Repository URI [{uri}] is already present in the list"
        super().__init__(message, {k: v for k, v in (("name", name), ("uri", uri)) if v})


class RepositoryNotPresent(CosmosError):
    def __init__(self, name: str | None, uri: str | None) -> None:
        if name and uri:
            message = f"Neither repository name [{name}] nor URI [{uri}] are present in the list"
        elif name:
            message = f"Repository name [{name}] is not present in the list"
        else:
            message = f"Repository URI [{uri}] is not present in the list"
        super().__init__(message, {k: v for k, v in (("name", name), ("uri", uri)) if v})


class RepoNameOrUriMissing(CosmosError):
    def __init__(self) -> None:
        super().__init__("Must specify either the name or URI of the repository")


class RepositoryAddIndexOutOfBounds(CosmosError):
    def __init__(self, index: int, maximum: int) -> None:
        super().__init__(f"Index ({index}) is out of range. Index value must be between 0 and {maximum} inclusive.",
                         {"attempted": index, "max": maximum})


class UnsupportedRepositoryUri(CosmosError):
    def __init__(self, uri: str) -> None:
        super().__init__(f"Repository URI [{uri}] uses an unsupported scheme. Only http and https are supported",
                         {"uri": uri})


class RepositoryUriConnection(CosmosError):
    def __init__(self, name: str, uri: str, cause: str) -> None:
        super().__init__(f"Could not access data at URI for repository [{name}]: {uri}: {cause}",
                         {"repository": {"name": name, "uri": uri}, "cause": cause})


class RepositoryContentInvalid(CosmosError):
    """What a repository URI answered is not a Universe repository (named by the fetch)."""

    def __init__(self, name: str, uri: str, cause: str) -> None:
        super().__init__(f"Repository [{name}] at {uri} is not a usable Universe repository: {cause}",
                         {"repository": {"name": name, "uri": uri}, "cause": cause},
                         kind="UniverseClientHttpError")


class RequestInvalid(CosmosError):
    """A request Cosmos cannot take: its media types or its body (Cosmos' ``not_valid``,
    ``not_present``, ``not_parsed`` and ``multiple_errors``)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        if len(problems) == 1:
            kind, message = problems[0]
            super().__init__(message, kind=kind)
        else:
            super().__init__("Multiple errors while processing request",
                             {"errors": [{"type": k, "message": m} for k, m in problems]}, kind="multiple_errors")
