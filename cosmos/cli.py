"""``navstar package …``: the package service (Cosmos) through Admin Router, as ``dcos package`` uses it.

``--master URL`` is Admin Router (default: the lab's, logged in by itself; ``--lab``), ``--token``
(default ``$NAVSTAR_TOKEN``). Errors print Cosmos' message (and each failing option's path) and
exit 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from adminrouter.cli import LabOpt, MasterOpt, TokenOpt, front_door

package_cli = typer.Typer(no_args_is_help=True, help="Packages from the Universe (Cosmos, through Admin Router).")
repo_cli = typer.Typer(no_args_is_help=True, help="The package repositories Cosmos reads, in order.")
package_cli.add_typer(repo_cli, name="repo")
err = Console(stderr=True)
out = Console()

JsonOpt = Annotated[bool, typer.Option("--json", help="print Cosmos' JSON answer")]


def _media(name: str, version: int) -> str:
    return f"application/vnd.dcos.{name}+json;charset=utf-8;version=v{version}"


class _Cosmos:
    def __init__(self, master: str | None, lab: str, token: str | None) -> None:
        self.url, self.headers = front_door(master, lab, token)     # Admin Router's, as `navstar user` finds it

    def call(self, operation: str, body: dict[str, Any], version: int = 1) -> Any:
        name = "package." + operation.replace("/", ".")
        headers = {**self.headers, "Content-Type": _media(name + "-request", 1),
                   "Accept": _media(name + "-response", version)}
        url = f"{self.url}/package/{operation}"
        try:
            response = httpx.post(url, json=body, headers=headers, timeout=60)
        except httpx.HTTPError as exc:
            err.print(f"[red]cannot reach {url}:[/] {exc}")
            raise typer.Exit(1) from None
        try:
            answer = response.json()
        except ValueError:
            answer = {"message": response.text[:300]}
        if response.status_code >= 400:
            message = answer.get("message") or answer.get("description") or response.text[:300]
            err.print(f"[red]{answer.get('type') or answer.get('code') or response.status_code}:[/] {message}",
                      soft_wrap=True)
            for entry in (answer.get("data") or {}).get("errors", []) if isinstance(answer.get("data"), dict) else []:
                if isinstance(entry, dict) and "instance" in entry:
                    path = entry["instance"].get("pointer", "").lstrip("/").replace("/", ".") or "(options)"
                    missing = f" (missing: {', '.join(entry['missing'])})" if entry.get("missing") else ""
                    err.print(f"  {path}: {entry.get('message', '')}{missing}", soft_wrap=True)
            raise typer.Exit(1)
        return answer


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _options(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        err.print(f"--options: {path}: {exc}")
        raise typer.Exit(2) from None
    if not isinstance(value, dict):
        err.print(f"--options: {path}: must hold a JSON object")
        raise typer.Exit(2)
    return value


@package_cli.command("search")
def search(query: Annotated[str, typer.Argument()] = "", master: MasterOpt = None, lab: LabOpt = "lab",
           token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Packages whose name, description or tags match (``*`` is a wildcard)."""
    answer = _Cosmos(master, lab, token).call("search", {"query": query})
    if as_json:
        return _print_json(answer)
    table = Table("name", "version", "selected", "framework", "description")
    for package in answer["packages"]:
        table.add_row(package["name"], package["currentVersion"], str(package.get("selected", False)),
                      str(package["framework"]), package["description"])
    out.print(table)


@package_cli.command("describe")
def describe(name: str, package_version: Annotated[str | None, typer.Option("--package-version")] = None,
             config: Annotated[bool, typer.Option("--config", help="only the options schema")] = False,
             master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None) -> None:
    """A package's metadata, options schema and template (JSON)."""
    answer = _Cosmos(master, lab, token).call("describe", {"packageName": name, "packageVersion": package_version}, 3)
    _print_json(answer["package"].get("config") if config else answer)


@package_cli.command("render")
def render(name: str, options: Annotated[Path | None, typer.Option("--options")] = None,
           app_id: Annotated[str | None, typer.Option("--app-id")] = None,
           master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None) -> None:
    """The Marathon app an install would post (options checked), without posting it."""
    body = {"packageName": name, "options": _options(options), "appId": app_id}
    _print_json(_Cosmos(master, lab, token).call("render", body)["marathonJson"])


@package_cli.command("install")
def install(name: str, options: Annotated[Path | None, typer.Option("--options", help="JSON file of options")] = None,
            package_version: Annotated[str | None, typer.Option("--package-version")] = None,
            app_id: Annotated[str | None, typer.Option("--app-id")] = None,
            yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
            master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None) -> None:
    """Install a package: its app, rendered with the options, posted to Marathon."""
    cosmos = _Cosmos(master, lab, token)
    body = {"packageName": name, "packageVersion": package_version, "options": _options(options), "appId": app_id}
    package = cosmos.call("describe", {"packageName": name, "packageVersion": package_version}, 3)["package"]
    if package.get("preInstallNotes"):
        out.print(package["preInstallNotes"], soft_wrap=True)
    if not yes and not typer.confirm(f"Install {name} {package['version']}?", default=True):
        raise typer.Exit(1)
    answer = cosmos.call("install", body, 2)
    out.print(f"installed [bold]{answer['packageName']}[/] {answer['packageVersion']} as app {answer['appId']}")
    if answer.get("postInstallNotes"):
        out.print(answer["postInstallNotes"], soft_wrap=True)


@package_cli.command("list")
def list_installed(name: Annotated[str | None, typer.Argument()] = None,
                   app_id: Annotated[str | None, typer.Option("--app-id")] = None,
                   master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None,
                   as_json: JsonOpt = False) -> None:
    """Installed packages (from Marathon's apps and their package labels)."""
    answer = _Cosmos(master, lab, token).call("list", {"packageName": name, "appId": app_id})
    if as_json:
        return _print_json(answer)
    table = Table("name", "version", "app", "description")
    for item in answer["packages"]:
        definition = item["packageInformation"]["packageDefinition"]
        table.add_row(definition["name"], definition["version"], item["appId"], definition["description"])
    out.print(table)


@package_cli.command("uninstall")
def uninstall(name: str, app_id: Annotated[str | None, typer.Option("--app-id")] = None,
              remove_all: Annotated[bool, typer.Option("--all", help="every app of the package")] = False,
              yes: Annotated[bool, typer.Option("--yes")] = False,
              master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None) -> None:
    """Remove a package's app(s) from Marathon."""
    if not yes and not typer.confirm(f"Uninstall {name}?", default=False):
        raise typer.Exit(1)
    answer = _Cosmos(master, lab, token).call("uninstall", {"packageName": name, "appId": app_id, "all": remove_all})
    for result in answer["results"]:
        out.print(f"uninstalled [bold]{result['packageName']}[/] {result.get('packageVersion') or ''} "
                  f"(app {result['appId']})")


@repo_cli.command("list")
def repo_list(master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    answer = _Cosmos(master, lab, token).call("repository/list", {})
    if as_json:
        return _print_json(answer)
    for repo in answer["repositories"]:
        out.print(f"{repo['name']}: {repo['uri']}", soft_wrap=True)


@repo_cli.command("add")
def repo_add(name: str, uri: str, index: Annotated[int | None, typer.Option("--index")] = None,
             master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None) -> None:
    """Add a repository (Cosmos reads it first: an unreadable URI is refused)."""
    _Cosmos(master, lab, token).call("repository/add", {"name": name, "uri": uri, "index": index})
    out.print(f"repository {name} added")


@repo_cli.command("remove")
def repo_remove(name: str, master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None) -> None:
    _Cosmos(master, lab, token).call("repository/delete", {"name": name})
    out.print(f"repository {name} removed")
