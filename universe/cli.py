"""``navstar universe build``: the local Universe's packages checked and built into one repository file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from universe.repository import SOURCE, UniverseError, build

universe_cli = typer.Typer(no_args_is_help=True, help="The local Universe (packages as folders).")
err = Console(stderr=True)


@universe_cli.command("build")
def universe_build(
    source: Annotated[Path, typer.Option(help="the packages folder (<Initial>/<name>/<release>/)")] = SOURCE,
    out: Annotated[Path | None, typer.Option(help="write the repository here (default: stdout)")] = None,
) -> None:
    """Check every package and write the repository in DC/OS' Universe format (``{"packages": […]}``)."""
    try:
        repository = build(source)
    except UniverseError as exc:
        err.print(f"[red]universe build refused:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    text = json.dumps(repository, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text)
    names = ", ".join(f"{p['name']} {p['version']}" for p in repository["packages"])
    err.print(f"{out}: {len(repository['packages'])} packages ({names})", soft_wrap=True)
