"""``navstar user add|list|remove``: the cluster's users through Admin Router's IAM API.

``--master URL`` is Admin Router (``http://198.18.0.2``); without it the lab's (``--lab``, default
``lab``), logged in by itself. ``--token`` (default ``$NAVSTAR_TOKEN``) overrides the credential.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

user_cli = typer.Typer(no_args_is_help=True, help="Users who may log in (Admin Router's IAM API).")
err = Console(stderr=True)

# Admin Router's URL and an Authorization header for a lab, by name (None: not up). Set by the
# composition root (``navstar.cli``), which knows about labs.
LabFrontDoor = Callable[[str], tuple[str, dict[str, str]] | None]
_lab_front_door: LabFrontDoor | None = None


def use_lab_front_door(locate: LabFrontDoor) -> None:
    global _lab_front_door
    _lab_front_door = locate


MasterOpt = Annotated[str | None, typer.Option("--master", help="Admin Router URL (default: the lab's)")]
LabOpt = Annotated[str, typer.Option("--lab", help="lab to use when --master is not given")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="login token (default: $NAVSTAR_TOKEN, or the lab's)")]


def front_door(master: str | None, lab: str, token: str | None) -> tuple[str, dict[str, str]]:
    """Admin Router's URL and the Authorization header to send (``--master``/``--token``, else the
    lab's, logged in by itself); exits 2 naming what is missing. ``navstar package`` uses it too."""
    token = token or os.environ.get("NAVSTAR_TOKEN")
    if master is None:
        found = _lab_front_door(lab) if _lab_front_door is not None and token is None else None
        if found is None and token is None:
            err.print(f"[red]no --master given and lab {lab!r} is not up[/] (or give --master and --token)")
            raise typer.Exit(2)
        if found is not None:
            return found
        err.print("[red]--token needs --master[/]")
        raise typer.Exit(2)
    return master.rstrip("/"), ({"Authorization": f"token={token}"} if token else {})


def _call(method: str, url: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
    try:
        response = httpx.request(method, url, headers=headers, timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach {url}:[/] {exc}")
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        try:
            body = response.json()
            message = body.get("description") or body.get("message") or response.text
        except ValueError:
            message = response.text[:300]
        err.print(f"[red]HTTP {response.status_code}:[/] {message}")
        raise typer.Exit(1)
    return response


@user_cli.command("add")
def user_add(name: Annotated[str, typer.Argument(help="uid")],
             password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
             description: Annotated[str, typer.Option(help="who this is")] = "",
             master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None) -> None:
    """Create a user; the password comes from stdin (first line)."""
    if not password_stdin:
        err.print("--password-stdin is required (passwords are never taken on the command line)")
        raise typer.Exit(2)
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        err.print("empty password on stdin")
        raise typer.Exit(2)
    url, headers = front_door(master, lab, token)
    _call("PUT", f"{url}/acs/api/v1/users/{name}", headers, json={"password": password, "description": description})
    Console().print(f"user [bold]{name}[/] created")


@user_cli.command("list")
def user_list(master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The users who may log in."""
    url, headers = front_door(master, lab, token)
    users = _call("GET", f"{url}/acs/api/v1/users", headers).json()["array"]
    if as_json:
        sys.stdout.write(json.dumps(users, indent=2) + "\n")
        return
    table = Table()
    table.add_column("uid", overflow="fold")
    table.add_column("description", overflow="fold")
    for user in users:
        table.add_row(user["uid"], user.get("description", ""))
    Console().print(table)


@user_cli.command("remove")
def user_remove(name: Annotated[str, typer.Argument(help="uid")],
                master: MasterOpt = None, lab: LabOpt = "lab", token: TokenOpt = None) -> None:
    """Remove a user; their tokens stop working at once."""
    url, headers = front_door(master, lab, token)
    _call("DELETE", f"{url}/acs/api/v1/users/{name}", headers)
    Console().print(f"user [bold]{name}[/] removed")
